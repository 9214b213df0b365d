"""``pacer status``: spool folder counts plus the state the daemon last wrote."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from pacer.config import Config
from pacer.spool import Spool

STALE_AFTER_S = 5.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(config: Config) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able object."""
    spool = Spool(config.spool.dir)
    out: dict[str, Any] = {"spool": str(spool.root), "folders": spool.counts()}
    try:
        state = json.loads(spool.state_path.read_bytes())
    except (OSError, ValueError):
        state = None
    now = time.time()
    running = bool(state) and _pid_alive(int(state.get("pid", 0))) and (
        now - float(state.get("updated_at", 0)) < STALE_AFTER_S + config.daemon.state_interval)
    out["daemon"] = {
        "running": running,
        "pid": state.get("pid") if state else None,
        "since": state.get("started_at") if running and state else None,
        "last_seen": state.get("updated_at") if state else None,
    }
    if state:
        ups = state.get("upstreams", {})
        jobs = state.get("jobs", {})
        rate = sum(u.get("last_minute", {}).get("throughput_rps", 0.0) for u in ups.values())
        remaining = jobs.get("remaining_requests", 0)
        out["jobs"] = jobs
        out["upstreams"] = ups
        out["eta_s"] = round(remaining / rate, 1) if running and rate > 0 and remaining else None
    return out


def render(info: dict[str, Any]) -> str:
    d = info["daemon"]
    lines = []
    if d["running"]:
        lines.append(f"pacer daemon running (pid {d['pid']}, since {_iso(d['since'])})")
    elif d["last_seen"]:
        lines.append(f"pacer daemon not running (last seen {_iso(d['last_seen'])})")
    else:
        lines.append("pacer daemon not running (never ran on this spool)")
    lines.append(f"spool {info['spool']}")
    lines.append("  " + "  ".join(f"{k} {v}" for k, v in info["folders"].items()))
    jobs = info.get("jobs")
    if jobs:
        lines.append(f"jobs: {jobs.get('active', 0)} active, {jobs.get('pending_incoming', 0)} "
                     f"waiting, {jobs.get('remaining_requests', 0)} requests to go"
                     + (f", ETA {info['eta_s']:.0f} s" if info.get("eta_s") else ""))
    ups = info.get("upstreams") or {}
    if ups:
        lines.append(f"{'upstream':<12} {'limit':>5} {'inflight':>8} {'breaker':>9} "
                     f"{'done':>8} {'failed':>7} {'retries':>7} {'429%':>6} {'req/s':>7}")
        for name, u in ups.items():
            lm = u.get("last_minute", {})
            lines.append(f"{name:<12} {u['limit']:>5} {u['inflight']:>8} {u['breaker']:>9} "
                         f"{u['done']:>8} {u['failed']:>7} {u['retries']:>7} "
                         f"{100 * lm.get('rate_limited_share', 0):>5.1f}% "
                         f"{lm.get('throughput_rps', 0):>7.1f}")
    return "\n".join(lines)


def _iso(ts: float | None) -> str:
    if not ts:
        return "?"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def status(config: Config, *, as_json: bool = False, watch: bool = False,
           interval: float = 1.0) -> int:
    while True:
        info = collect(config)
        text = json.dumps(info, indent=2) if as_json else render(info)
        if watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text, flush=True)
        if not watch:
            return 0
        time.sleep(interval)
