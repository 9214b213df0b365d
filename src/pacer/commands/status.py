"""``pacer status``: spool folder counts plus the state the daemon last wrote.

:func:`collect` builds one JSON-able dict (``--json`` prints it as is); the text
view renders that same dict with rich, once or live (``--watch``). It works
without a daemon: the folders are counted directly, and the state file says when
the daemon was last seen.

Whether the daemon runs is decided by who holds the spool's ``flock`` (read from
``/proc/locks``, without touching the lock: even a brief probe could make a
daemon starting at that instant think the spool is taken). A pid in the state
file alone is not proof: after a crash or a reboot it may belong to anything.
Where ``/proc/locks`` cannot be read, a live pid plus a fresh state file decide.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

from pacer.config import Config
from pacer.service.state import ServiceState, UpstreamState
from pacer.spool.folders import Spool

# The daemon rewrites the state file every state_interval; this much extra delay
# still counts as fresh (a busy disk, a slow fsync).
STALE_AFTER_S = 5.0
# Counting the requests waiting in incoming/ reads the files: past this many bytes
# the rest is estimated from the bytes per request seen so far.
COUNT_BUDGET_BYTES = 32 * 1024 * 1024
UNKNOWN = -1  # lock_holder: cannot tell


# -- is the daemon running? ------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_holder(
    lock_path: Path, proc_locks: Path = Path("/proc/locks"), hint_pid: int | None = None
) -> int | None:
    """The pid holding an ``flock`` on ``lock_path`` (0: held by a process in another
    pid namespace, which the kernel shows as 0); None if nobody holds it;
    :data:`UNKNOWN` if that cannot be known (no ``/proc/locks``: not Linux)."""
    try:
        text = proc_locks.read_text()
    except OSError:
        return UNKNOWN
    try:
        st = os.stat(lock_path)
    except OSError:
        return None  # no lock file: no daemon ever held this spool
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    inode_only = None
    for line in text.splitlines():
        fields = line.split()
        if "->" in fields:  # a waiter, not the holder
            continue
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            pid = int(fields[4])
        except ValueError:
            continue
        if fields[5] == exact:
            return pid
        # Overlay filesystems may show another device number: accept the inode
        # alone only when it names the pid the state file names.
        if fields[5].rsplit(":", 1)[-1] == str(st.st_ino) and pid == hint_pid:
            inode_only = pid
    return inode_only


def _read_state(spool: Spool) -> ServiceState | None:
    try:
        state = json.loads(spool.state_path.read_bytes())
    except (OSError, ValueError):
        return None
    return ServiceState.from_json(state) if isinstance(state, dict) else None


def _daemon_info(
    spool: Spool, state: ServiceState | None, now: float, state_interval: float
) -> dict[str, Any]:
    st = state or ServiceState()
    pid = st.pid or None
    updated = st.updated_at
    fresh = state is not None and now - updated < STALE_AFTER_S + state_interval
    holder = lock_holder(spool.root / ".lock", hint_pid=pid)
    if holder == UNKNOWN:  # cannot see locks: trust a live pid with a fresh state
        running = pid is not None and _pid_alive(pid) and fresh
        holder_pid = pid if running else None
    else:
        running = holder is not None
        # A holder in another pid namespace shows as 0: take the state file's word.
        holder_pid = (holder or pid) if running else None
    # Live numbers: the state file was written by the daemon that holds the lock.
    live = running and state is not None and holder_pid == pid
    return {
        "running": running,
        "live": live,
        "pid": holder_pid if running else pid,
        "version": st.version or None,
        "started_at": st.started_at if live else None,
        "last_seen": updated or None,
        # running: since it started; not running: since it was last seen.
        "since": st.started_at if live else (None if running else updated or None),
        "stale_pid": not running and pid is not None,
        "state_age_s": round(now - updated, 1) if state is not None else None,
        "state_fresh": live and fresh,
        "stopping": st.stopping if live else False,
        "drain": st.drain if live else False,
    }


# -- the queue ---------------------------------------------------------------------------


def _count_lines(path: Path, budget: int) -> tuple[int, int]:
    """(non-blank lines, bytes read) of a file, reading at most ``budget`` bytes."""
    lines = 0
    read = 0
    with open(path, "rb") as fh:
        for line in fh:
            read += len(line)
            if line.strip():
                lines += 1
            if read >= budget:
                break
    return lines, read


def incoming_requests(spool: Spool, budget: int = COUNT_BUDGET_BYTES) -> dict[str, Any]:
    """Jobs and requests waiting in incoming/ (one request per non-blank line of a
    ``.jsonl``, one per ``.json``); estimated past ``budget`` bytes read."""
    try:
        candidates, _ = spool.scan("incoming")
    except OSError:
        return {"jobs": 0, "requests": 0, "estimated": False}
    requests = 0
    counted_bytes = 0
    counted_lines = 0
    unread_bytes = 0
    for cand in candidates:
        if cand.name.endswith(".json"):
            requests += 1
            continue
        left = budget - counted_bytes
        if left <= 0:
            unread_bytes += cand.size
            continue
        try:
            lines, read = _count_lines(spool.folder("incoming") / cand.name, left)
        except OSError:  # gone (claimed meanwhile) or unreadable: estimate it
            unread_bytes += cand.size
            continue
        requests += lines
        counted_bytes += read
        counted_lines += lines
        unread_bytes += max(0, cand.size - read)
    estimated = unread_bytes > 0
    if estimated:
        per_line = counted_bytes / counted_lines if counted_lines else 256.0
        requests += round(unread_bytes / per_line)
    return {"jobs": len(candidates), "requests": requests, "estimated": estimated}


# -- collect -------------------------------------------------------------------------------

def _upstream_json(u: UpstreamState) -> dict[str, Any]:
    return dataclasses.asdict(u)


LIVE_KEYS = ("limit", "inflight", "waiting", "queued", "jobs_waiting", "breaker", "last_minute")
TOTAL_KEYS = ("done", "failed", "attempts", "retries", "rate_limited")


def _upstreams(
    config: Config, state: ServiceState | None, live: bool, eta_all: float | None
) -> dict[str, dict[str, Any]]:
    raw = state.upstreams if state else {}
    names = list(config.upstreams) + [n for n in raw if n not in config.upstreams]
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        found = raw.get(name)
        u = _upstream_json(found) if found is not None else {}
        ucfg = config.upstreams.get(name)
        entry: dict[str, Any] = {
            "configured": ucfg is not None,
            "min_limit": ucfg.min_limit if ucfg else None,
            "max_limit": ucfg.max_limit if ucfg else None,
            "adaptive": ucfg.adaptive if ucfg else None,
        }
        for key in LIVE_KEYS:
            entry[key] = u.get(key) if live else None
        # Totals of a stopped daemon are still true: they describe its last run.
        for key in TOTAL_KEYS:
            entry[key] = u.get(key)
        fleet = u.get("fleet") if live else None  # fleet: this node's view of it
        entry["fleet"] = ({**fleet, "nodes": list(fleet.get("nodes") or ())}
                          if isinstance(fleet, dict) else None)
        rate = found.last_minute.throughput_rps if live and found is not None else 0.0
        queued = u.get("queued")
        if not live:
            entry["eta_s"] = None
        elif len(names) == 1:
            entry["eta_s"] = eta_all
        elif isinstance(queued, int) and queued and rate > 0:
            entry["eta_s"] = round(queued / rate, 1)
        else:
            entry["eta_s"] = None
        out[name] = entry
    return out


def collect(config: Config, *, now: float | None = None) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able object."""
    now = time.time() if now is None else now
    spool = Spool(config.spool.dir)
    state = _read_state(spool)
    daemon = _daemon_info(spool, state, now, config.daemon.state_interval)
    # The numbers of the state file are shown live only when the running daemon
    # wrote them (a fresh daemon may not have written its first state yet).
    live = bool(daemon["live"])
    waiting = incoming_requests(spool)
    jobs = dataclasses.asdict(state.jobs) if live and state else None
    ups_raw = state.upstreams if live and state else {}
    rate = sum(u.last_minute.throughput_rps for u in ups_raw.values())
    in_active = state.jobs.remaining_requests if live and state else 0
    left = in_active + int(waiting["requests"])
    eta = round(left / rate, 1) if live and rate > 0 and left else None
    completed = sum(u.done + u.failed for u in ups_raw.values())
    return {
        "spool": str(spool.root),
        "checked_at": now,
        "daemon": daemon,
        "folders": spool.counts(),
        "queue": {
            "jobs_waiting": waiting["jobs"],
            "jobs_active": state.jobs.active if live and state else None,
            "requests_waiting": waiting["requests"],
            "requests_waiting_estimated": waiting["estimated"],
            "requests_in_active_jobs": in_active if jobs else None,
            "requests_left": left,
            "throughput_rps": round(rate, 3) if live else None,
        },
        "progress": {"completed": completed, "total": completed + left} if live else None,
        "eta_s": eta,
        "jobs": jobs,
        "upstreams": _upstreams(config, state, live, eta),
    }


# -- text ------------------------------------------------------------------------------------


def _iso(ts: Any) -> str:
    if not isinstance(ts, int | float) or not ts:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def _cell(value: Any, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value)


def _header(info: dict[str, Any]) -> Text:
    d = info["daemon"]
    now = info["checked_at"]
    text = Text(f"pacer {d['version']} " if d["version"] else "pacer ")
    if d["running"]:
        text.append("● running", style="bold green")
        text.append(f"  pid {d['pid']}")
        if d["since"]:
            text.append(f"  up {duration(now - d['since'])} since {_iso(d['since'])}")
        if d["stopping"]:
            text.append("  stopping", style="bold yellow")
        elif d["drain"]:
            text.append("  draining")
        if d["live"] and not d["state_fresh"]:
            text.append(
                f"\nstate file not updated for {duration(d['state_age_s'])}", style="yellow"
            )
    else:
        text.append("○ not running", style="bold red")
        if d["since"]:
            text.append(f"  since {_iso(d['since'])} ({duration(now - d['since'])} ago)")
        else:
            text.append("  (never ran on this spool)")
    text.append(f"\nspool {info['spool']}", style="dim")
    return text


def _folders(info: dict[str, Any]) -> Table:
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    folders: Mapping[str, int] = info["folders"]
    styles = {"failed": "red", "rejected": "red", "done": "green"}
    for name in folders:
        table.add_column(name, justify="right", style=styles.get(name) if folders[name] else None)
    table.add_row(*(str(n) for n in folders.values()))
    return table


def _upstream_table(info: dict[str, Any]) -> Table:
    live = info["progress"] is not None
    # One space between columns: the whole table fits 80 columns (a pipe, watch(1)).
    table = Table(
        box=None,
        header_style="bold",
        pad_edge=False,
        padding=(0, 1, 0, 0),
        title=None if info["daemon"]["running"] else "upstreams (totals of the last run)",
        caption="429% and req/s: the last minute" if live else None,
        title_justify="left",
        caption_justify="left",
    )
    for col in (
        "upstream",
        "limit",
        "inflight",
        "wait",
        "breaker",
        "done",
        "failed",
        "retries",
        "429%",
        "req/s",
        "ETA",
    ):
        table.add_column(
            col, justify="left" if col in ("upstream", "breaker") else "right", no_wrap=True
        )
    breaker_style = {"closed": "green", "open": "bold red", "half_open": "yellow"}
    for name, u in info["upstreams"].items():
        lm = u["last_minute"] or {}
        limit = _cell(u["limit"])
        if u["limit"] is not None and u["max_limit"] is not None:
            limit = f"{u['limit']}/{u['max_limit']}"
        breaker = u["breaker"]
        share = lm.get("rate_limited_share")
        table.add_row(
            name + ("" if u["configured"] else " (removed)"),
            limit,
            _cell(u["inflight"]),
            _cell(u["waiting"]),
            Text(_cell(breaker), style=breaker_style.get(breaker or "", "")),
            _cell(u["done"]),
            Text(_cell(u["failed"]), style="red" if u["failed"] else ""),
            _cell(u["retries"]),
            "–" if share is None else f"{100 * share:.1f}%",
            _cell(lm.get("throughput_rps"), "{:.1f}"),
            duration(u["eta_s"]) if u["eta_s"] is not None else "–",
        )
    return table


def _fleet(info: dict[str, Any]) -> RenderableType | None:
    """fleet: per shared upstream, the shared limit and every live node's share."""
    parts: list[RenderableType] = []
    for name, u in info["upstreams"].items():
        f = u.get("fleet")
        if not f:
            continue
        nodes = f.get("nodes") or []
        head = Text(f"fleet {f.get('fleet_key')} ({name}): shared limit {_cell(f.get('limit'))}, "
                    f"{len(nodes)} nodes, {_cell(f.get('fleet_inflight'))} slots leased")
        if f.get("rate") is not None:
            head.append(f"; learned rate {_cell(f.get('rate'))}/s, this node's pace "
                        f"{_cell(f.get('pace'))}/s")
        if f.get("quota_share") is not None:
            head.append(f"; this node spends {_cell(f.get('quota_share'))} of header quotas")
        if f.get("degraded"):
            head.append(f"; Redis unreachable: this node works on a safe share of "
                        f"{_cell(f.get('share'))}", style="bold red")
        table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1, 0, 0))
        for col in ("node", "share", "inflight", "wants"):
            table.add_column(col, justify="left" if col == "node" else "right", no_wrap=True)
        for n in nodes:
            me = n.get("node") == f.get("node")
            table.add_row(Text(f"{n.get('node')}{' (this one)' if me else ''}",
                               style="bold" if me else ""),
                          _cell(n.get("share")), _cell(n.get("inflight")), _cell(n.get("demand")))
        parts += [head, table, Text("")]
    return Group(*parts) if parts else None


def _queue(info: dict[str, Any]) -> RenderableType:
    q = info["queue"]
    approx = "~" if q["requests_waiting_estimated"] else ""
    line = Text(
        f"queue: {q['jobs_waiting']} jobs waiting ({approx}{q['requests_waiting']} requests)"
    )
    if q["jobs_active"] is not None:
        line.append(f", {q['jobs_active']} active ({q['requests_in_active_jobs']} requests left)")
    jobs = info["jobs"]
    if jobs:
        line.append(
            f"\njobs since start: {jobs.get('done', 0)} done, "
            f"{jobs.get('failed', 0)} failed, {jobs.get('rejected', 0)} rejected"
        )
    prog = info["progress"]
    if prog is None:
        return line
    progress = Progress(
        TextColumn("requests"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("ETA {task.fields[eta]}"),
        auto_refresh=False,
        expand=True,
    )
    progress.add_task(
        "requests",
        total=max(1, prog["total"]),
        completed=prog["completed"],
        rate=f"{info['queue']['throughput_rps'] or 0:.1f} req/s",
        eta=duration(info["eta_s"]) if info["eta_s"] is not None else "–",
    )
    return Group(line, progress)


def render(info: dict[str, Any]) -> RenderableType:
    """The text view of :func:`collect`'s dict, as one rich renderable."""
    fleet = _fleet(info)  # fleet
    return Group(
        _header(info), _folders(info), Text(""), _upstream_table(info), Text(""),
        *([fleet] if fleet is not None else []), _queue(info)
    )


def render_text(info: dict[str, Any], width: int = 120) -> str:
    """:func:`render` as plain text (no colours)."""
    console = Console(width=width, file=io.StringIO(), color_system=None)
    console.print(render(info))
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


# -- the command --------------------------------------------------------------------------------


def status(
    config: Config, *, as_json: bool = False, watch: bool = False, interval: float = 1.0
) -> int:
    """``pacer status``: print once, or redraw every ``interval`` s with ``watch``
    (JSON: one object per line, for scripts). Ctrl-C ends watching with 0."""
    interval = max(0.1, interval)
    try:
        if as_json:
            while True:
                print(json.dumps(collect(config), indent=None if watch else 2), flush=True)
                if not watch:
                    return 0
                time.sleep(interval)
        console = Console()
        if not watch:
            console.print(render(collect(config)))
            return 0
        if not console.is_terminal:
            # No cursor control on a pipe: a fresh report each time.
            while True:
                console.print(render(collect(config)))
                console.print()
                sys.stdout.flush()
                time.sleep(interval)
        from rich.live import Live

        with Live(
            render(collect(config)), console=console, auto_refresh=False, screen=False
        ) as live:
            while True:
                time.sleep(interval)
                live.update(render(collect(config)), refresh=True)
    except KeyboardInterrupt:
        return 0


__all__ = ["collect", "incoming_requests", "lock_holder", "render", "render_text", "status"]
