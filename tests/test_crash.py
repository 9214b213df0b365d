"""kill -9 at random moments, restart, finish with --drain: every request of every
job must end with exactly one result line, and every job file in done/ once.

The kill moments are random but seeded (``PACER_CRASH_SEED``); the number of kills
is ``PACER_CRASH_KILLS`` (default 5; raise it for a longer soak).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from conftest import MakeConfig, MockAPI, Proc, SpoolHelper, read_jsonl, req

pytestmark = pytest.mark.slow

JOBS = 30
REQUESTS = 20
KILLS = int(os.environ.get("PACER_CRASH_KILLS", "5"))
SEED = int(os.environ.get("PACER_CRASH_SEED", "20261128"))


def job_name(j: int) -> str:
    return f"crash-{j:02d}.jsonl"


def drop_job(spool: SpoolHelper, j: int) -> None:
    spool.drop(job_name(j), [req(f"c{j:02d}-{r:02d}") for r in range(REQUESTS)])


def test_sigkill_and_restart_lose_and_repeat_nothing(
    make_config: MakeConfig,
    spool: SpoolHelper,
    mock_api: Callable[..., MockAPI],
    start_pacer: Callable[..., Proc],
    run_pacer: Callable[..., Any],
) -> None:
    rng = random.Random(SEED)
    api = mock_api(
        "--latency",
        "0.03",
        "--jitter",
        "0.01",
        "--concurrency",
        "8",
        "--retry-after",
        "0.05",
        "--seed",
        str(SEED),
    )
    cfg = make_config(
        api.base_url,
        # max_limit = the mock's cap: this test is about crash safety, not pacing. 429s
        # still come right after each restart, from the killed daemon's requests that
        # the mock is still serving. (Above the cap, the pacer may take the mock's
        # concurrency 429s for a rate limit, learn a low rate, and the test then takes
        # two to three times longer.)
        upstream={
            "initial_limit": 4,
            "max_limit": 8,
            "max_attempts": 50,
            "retry_base_delay": 0.01,
            "retry_max_delay": 0.2,
            "timeout": 10.0,
        },
        spool={"rescan_interval": 0.5},
        results={"flush_interval": 0.02},
        daemon={"drain_timeout": 1.0, "state_interval": 0.2},
    )
    for j in range(JOBS // 2):
        drop_job(spool, j)

    kill_log = []
    for k in range(KILLS):
        daemon = start_pacer("run", "--config", cfg)
        daemon.wait_event("daemon.started", timeout=15)
        if k == 0:  # the rest arrives while the daemon runs
            for j in range(JOBS // 2, JOBS):
                drop_job(spool, j)
        time.sleep(rng.uniform(0.05, 0.6))
        assert daemon.popen.poll() is None, f"daemon exited by itself:\n{daemon.stderr()}"
        daemon.signal(signal.SIGKILL)
        daemon.wait(10)
        kill_log.append((len(spool.jobs("done")), len(spool.jobs("active"))))

    final = run_pacer("run", "--config", cfg, "--drain", timeout=60)

    if final.returncode != 0:
        errors = Counter(
            json.dumps(line["error"])
            for path in (spool.root / "results").glob("*.jsonl")
            for line in read_jsonl(path)
            if line["error"] is not None
        )
        pytest.fail(
            f"run --drain exited {final.returncode}; kills (done, active): {kill_log}\n"
            f"errors in results: {errors.most_common(3)}\n"
            f"stdout tail:\n{final.stdout[-1500:]}\nstderr:\n{final.stderr[-1500:]}"
        )
    names = [job_name(j) for j in range(JOBS)]
    assert spool.jobs("done") == names, "every job in done/, exactly once"
    for folder in ("incoming", "active", "failed", "rejected"):
        assert spool.names(folder) == [], folder
    assert spool.dotfiles("results") == [], "no temp files left in results/"
    assert spool.names("tmp") == [], "no temp files left in tmp/"
    assert sorted(spool.jobs("results")) == [f"crash-{j:02d}.jsonl" for j in range(JOBS)]
    for j in range(JOBS):
        raw = (spool.root / "results" / f"crash-{j:02d}.jsonl").read_bytes()
        assert raw.endswith(b"\n")
        lines = [json.loads(line) for line in raw.splitlines()]
        counts = Counter(line["custom_id"] for line in lines)
        assert counts == dict.fromkeys((f"c{j:02d}-{r:02d}" for r in range(REQUESTS)), 1), (
            f"{job_name(j)}: {sorted(c for c, n in counts.items() if n != 1)} "
            f"(kills (done, active): {kill_log})"
        )
        for line in lines:
            assert line["error"] is None and line["response"]["status_code"] == 200, line
    stats = api.stats()
    print(f"kills (done, active) after each: {kill_log}; mock: {stats}")
    # Requests in flight at a kill are sent again (at least once to the upstream),
    # but each has exactly one line in its results.
    assert stats["ok"] >= JOBS * REQUESTS
