"""``pacer status``: JSON consistent with the spool and the state file, and the
rich view, with the daemon running, never run, or gone (stale pid)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import MakeConfig, SpoolHelper, req
from pacer.commands import status as status_mod
from pacer.commands.status import (
    collect,
    incoming_requests,
    lock_holder,
    render,
    render_text,
    status,
)
from pacer.config import Config, load_config
from pacer.spool.folders import Spool

NOW = time.time()


def write_state(
    root: Path,
    pid: int,
    *,
    updated_at: float = NOW,
    **ups: dict[str, Any],
) -> dict[str, Any]:
    upstreams = ups or {"default": upstream_state()}
    state = {
        "pid": pid,
        "version": "0.1.0",
        "started_at": NOW - 125,
        "updated_at": updated_at,
        "stopping": False,
        "drain": False,
        "jobs": {
            "active": 1,
            "pending_incoming": 2,
            "queued_requests": 6,
            "remaining_requests": 10,
            "done": 4,
            "failed": 1,
            "rejected": 0,
        },
        "upstreams": upstreams,
    }
    (root / "state.json").write_text(json.dumps(state))
    return state


def upstream_state(**extra: Any) -> dict[str, Any]:
    out = {
        "limit": 12,
        "inflight": 11,
        "waiting": 3,
        "breaker": "closed",
        "done": 90,
        "failed": 2,
        "attempts": 120,
        "retries": 28,
        "rate_limited": 25,
        "last_minute": {"throughput_rps": 2.0, "rate_limited_share": 0.125, "attempts": 80},
    }
    out.update(extra)
    return out


@pytest.fixture
def config(make_config: MakeConfig, spool: SpoolHelper) -> Config:
    cfg = load_config(make_config(upstream={"max_limit": 64}))
    assert cfg.spool.dir == spool.root
    return cfg


@pytest.fixture
def held(spool: SpoolHelper) -> Iterator[Spool]:
    """This test process holds the spool's lock, as a running daemon does."""
    s = Spool(spool.root)
    s.lock()
    try:
        yield s
    finally:
        s.unlock()


def fill(spool: SpoolHelper) -> None:
    spool.drop("a.jsonl", b'{"url": "/x"}\n\n{"url": "/y"}\n{"url": "/z"}\n')  # 3 requests
    spool.drop("b.json", req("b"))
    (spool.folder("done") / "old.json").write_text("{}")
    (spool.folder("failed") / "bad.jsonl").write_text("{}\n")
    (spool.folder("rejected") / "x.json").write_text("")
    (spool.folder("rejected") / "x.json.error.json").write_text("{}")


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


# ----------------------------------------------------------------------------- JSON


def test_never_ran(config: Config, spool: SpoolHelper) -> None:
    fill(spool)
    info = collect(config, now=NOW)
    assert info["daemon"]["running"] is False
    assert info["daemon"]["since"] is None and info["daemon"]["pid"] is None
    assert info["folders"] == {
        "incoming": 2,
        "tmp": 0,
        "active": 0,
        "done": 1,
        "failed": 1,
        "rejected": 1,
        "results": 0,
    }
    assert info["queue"]["jobs_waiting"] == 2
    assert info["queue"]["requests_waiting"] == 4
    assert info["queue"]["requests_left"] == 4
    assert info["eta_s"] is None and info["progress"] is None
    up = info["upstreams"]["default"]
    assert up["limit"] is None and up["done"] is None and up["max_limit"] == 64
    assert "never ran" in render_text(info)
    json.dumps(info)  # JSON-able


def test_running(config: Config, spool: SpoolHelper, held: Spool) -> None:
    fill(spool)
    write_state(spool.root, os.getpid())
    info = collect(config, now=NOW)
    d = info["daemon"]
    assert d["running"] and d["live"] and d["state_fresh"]
    assert d["pid"] == os.getpid()
    assert d["since"] == pytest.approx(NOW - 125)
    up = info["upstreams"]["default"]
    assert (up["limit"], up["inflight"], up["waiting"], up["breaker"]) == (12, 11, 3, "closed")
    assert (up["done"], up["failed"], up["retries"]) == (90, 2, 28)
    assert up["last_minute"]["rate_limited_share"] == 0.125
    q = info["queue"]
    assert q["jobs_active"] == 1 and q["requests_in_active_jobs"] == 10
    assert q["requests_left"] == 10 + 4
    assert q["throughput_rps"] == 2.0
    assert info["eta_s"] == pytest.approx(14 / 2.0)
    assert up["eta_s"] == info["eta_s"]  # the only upstream carries the whole queue
    assert info["progress"] == {"completed": 92, "total": 92 + 14}
    assert info["jobs"]["done"] == 4


def test_running_two_upstreams_eta_from_queued(
    make_config: MakeConfig, spool: SpoolHelper, held: Spool
) -> None:
    cfg = load_config(make_config(upstreams={"b": {"base_url": "http://b.test"}}))
    write_state(
        spool.root,
        os.getpid(),
        default=upstream_state(queued=8),
        b=upstream_state(breaker="open", last_minute={"throughput_rps": 0.0}),
        gone=upstream_state(),
    )
    info = collect(cfg, now=NOW)
    ups = info["upstreams"]
    assert list(ups) == ["default", "b", "gone"]
    assert ups["default"]["eta_s"] == pytest.approx(4.0)
    assert ups["b"]["eta_s"] is None  # no queued field, no throughput
    assert ups["gone"]["configured"] is False
    text = render_text(info)
    assert "open" in text and "gone (removed)" in text


def test_running_without_a_state_file_yet(config: Config, spool: SpoolHelper, held: Spool) -> None:
    info = collect(config, now=NOW)
    assert info["daemon"]["running"] and not info["daemon"]["live"]
    assert info["upstreams"]["default"]["limit"] is None


def test_stale_pid_dead_process(config: Config, spool: SpoolHelper) -> None:
    fill(spool)
    pid = dead_pid()
    write_state(spool.root, pid, updated_at=NOW - 3600)
    info = collect(config, now=NOW)
    d = info["daemon"]
    assert d["running"] is False and d["stale_pid"] is True and d["pid"] == pid
    assert d["since"] == pytest.approx(NOW - 3600)  # not running since it was last seen
    assert info["eta_s"] is None and info["progress"] is None
    up = info["upstreams"]["default"]
    assert up["limit"] is None and up["breaker"] is None
    assert up["done"] == 90  # totals of the last run stay true
    text = render_text(info)
    assert "not running" in text and "1 h 00 min ago" in text and "last run" in text


def test_pid_alive_but_not_holding_the_lock_is_not_pacer(
    config: Config, spool: SpoolHelper
) -> None:
    # After a reboot the old pid may belong to anything (here: this test process).
    write_state(spool.root, os.getpid())
    info = collect(config, now=NOW)
    assert info["daemon"]["running"] is False and info["daemon"]["stale_pid"] is True


def test_without_proc_locks_a_live_pid_and_fresh_state_decide(
    config: Config, spool: SpoolHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_mod, "lock_holder", lambda *a, **k: status_mod.UNKNOWN)
    write_state(spool.root, os.getpid())
    assert collect(config, now=NOW)["daemon"]["running"] is True
    write_state(spool.root, os.getpid(), updated_at=NOW - 60)
    assert collect(config, now=NOW)["daemon"]["running"] is False
    write_state(spool.root, dead_pid())
    assert collect(config, now=NOW)["daemon"]["running"] is False


def test_lock_holder_reads_proc_locks(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    lock.write_text("")
    st = os.stat(lock)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    locks = tmp_path / "locks"
    locks.write_text(
        f"1: POSIX  ADVISORY  WRITE 77 {dev}:{st.st_ino} 0 EOF\n"
        f"2: FLOCK  ADVISORY  WRITE 4242 {dev}:{st.st_ino} 0 EOF\n"
        f"2: -> FLOCK  ADVISORY  WRITE 5151 {dev}:{st.st_ino} 0 EOF\n"
    )
    assert lock_holder(lock, locks) == 4242
    locks.write_text(f"1: FLOCK  ADVISORY  WRITE 99 ff:ff:{st.st_ino} 0 EOF\n")
    assert lock_holder(lock, locks) is None  # another device
    assert lock_holder(lock, locks, hint_pid=99) == 99  # overlayfs: inode and pid agree
    locks.write_text(f"1: FLOCK  ADVISORY  WRITE 0 {dev}:{st.st_ino} 0 EOF\n")
    assert lock_holder(lock, locks) == 0  # held from another pid namespace
    assert lock_holder(lock, tmp_path / "missing") == status_mod.UNKNOWN
    assert lock_holder(tmp_path / "no-lock", locks) is None


def test_incoming_requests_estimates_past_the_budget(spool: SpoolHelper) -> None:
    line = json.dumps(req()).encode() + b"\n"
    spool.drop("big.jsonl", line * 1000)
    spool.drop("one.json", req())
    exact = incoming_requests(Spool(spool.root))
    assert exact == {"jobs": 2, "requests": 1001, "estimated": False}
    rough = incoming_requests(Spool(spool.root), budget=len(line) * 100)
    assert rough["estimated"] is True
    assert rough["requests"] == pytest.approx(1001, rel=0.02)


# ------------------------------------------------------------------------------ text


def test_rich_rendering(config: Config, spool: SpoolHelper, held: Spool) -> None:
    fill(spool)
    write_state(spool.root, os.getpid(), default=upstream_state(breaker="half_open", failed=0))
    info = collect(config, now=NOW)
    console = Console(file=io.StringIO(), width=140, record=True, color_system="truecolor")
    console.print(render(info))
    text = console.export_text()
    for expected in (
        "● running",
        f"pid {os.getpid()}",
        "up 2 min 05 s",
        "12/64",
        "half_open",
        "12.5%",
        "2.0",
        "queue: 2 jobs waiting (4 requests)",
        "1 active (10 requests left)",
        "90/104",
        "ETA 7 s",
    ):
        assert expected in text, (expected, text)
    assert "\x1b[" in console.file.getvalue()  # type: ignore[attr-defined]  # coloured


def test_status_command_json_and_text(
    config: Config, spool: SpoolHelper, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(spool)
    assert status(config, as_json=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["folders"]["incoming"] == 2 and out["daemon"]["running"] is False
    assert status(config) == 0
    assert "not running" in capsys.readouterr().out


def test_watch_json_prints_one_object_per_tick(
    config: Config,
    spool: SpoolHelper,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = []

    def sleep(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    assert status(config, as_json=True, watch=True, interval=0.5) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(json.loads(x)["spool"] for x in lines)
    ticks.clear()
    assert status(config, watch=True, interval=0.5) == 0  # not a terminal: one report a tick
    assert capsys.readouterr().out.count("not running") == 2


def test_holder_in_another_pid_namespace(
    config: Config, spool: SpoolHelper, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(status_mod, "lock_holder", lambda *a, **k: 0)
    write_state(spool.root, 4321)
    d = collect(config, now=NOW)["daemon"]
    assert d["running"] and d["live"] and d["pid"] == 4321
