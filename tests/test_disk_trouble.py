"""Disk trouble: when result writes fail (ENOSPC, EIO, EACCES), pacer stops claiming
new work, logs one clear error, keeps what it has, and resumes by itself."""

from __future__ import annotations

import errno
import os
from collections import Counter
from typing import Any

import pytest
from trio.testing import MockClock

import pacer.spool.results
from conftest import MakeConfig, SpoolHelper
from test_daemon import (
    Recorder,
    captured,  # noqa: F401 (fixture)
    events,
    make_daemon,
    run_daemon,
    tagged,
    virtual_clock,  # noqa: F401 (fixture)
)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES])
async def test_failing_result_writes_pause_claims_and_recover(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,  # noqa: F811
        captured: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        code: int) -> None:
    cfg = make_config(upstream={"initial_limit": 4},
                      spool={"max_active_jobs": 1})
    for j in range(4):
        spool.drop(f"j{j}.jsonl", [tagged(f"j{j}-{i}") for i in range(3)])
    calls = Counter[str]()

    class FlakyOs:
        """``os`` as pacer.spool.results sees it, with a few failing writes: each writes
        half its data first (a torn line), then fails."""

        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def write(self, fd: int, data: bytes | memoryview) -> int:
            calls["write"] += 1
            if 2 <= calls["write"] <= 5:
                os.write(fd, bytes(data[: len(data) // 2]))
                raise OSError(code, os.strerror(code))
            return os.write(fd, data)

    monkeypatch.setattr(pacer.spool.results, "os", FlakyOs())
    daemon = make_daemon(cfg, Recorder())

    rc = await run_daemon(daemon)

    assert rc == 0
    assert spool.jobs("done") == ["j0.jsonl", "j1.jsonl", "j2.jsonl", "j3.jsonl"]
    for j in range(4):
        lines = spool.results(f"j{j}")
        assert Counter(line["custom_id"] for line in lines) == {
            f"j{j}-{i}": 1 for i in range(3)}
    failed = events(captured, "spool.write_failed")
    assert len(failed) == 1, failed  # one clear error, not one per retry
    assert failed[0]["errno"] == errno.errorcode[code]
    assert len(events(captured, "spool.write_recovered")) == 1
    # Nothing was claimed while writes were failing.
    names = [e["event"] for e in captured
             if e["event"] in ("spool.write_failed", "spool.write_recovered", "job.claimed")]
    trouble = names[names.index("spool.write_failed"):names.index("spool.write_recovered")]
    assert "job.claimed" not in trouble
