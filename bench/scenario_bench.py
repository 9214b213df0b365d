"""The scenario suite over real sockets: pacer beside its contenders, per scenario.

Run from the repository root::

    .venv/bin/python bench/scenario_bench.py [--scenario NAME ...] [--contender NAME ...]
                                             [--runs N] [--json FILE]

Each scenario of ``bench/scenarios.py`` (the same definitions the virtual-time suite
in ``tests/test_scenario_suite.py`` asserts) is served by the mock API
(``python -m pacer.mockapi``, a subprocess on 127.0.0.1, its flags derived from the
scenario's :class:`~scenarios.Behaviour`), and pacer's real sender
(:class:`pacer.service.upstream.Upstream`: limiter, pacing gate, breaker, retries)
sends to it with each contender's limit: ``pacer`` (its own, never told the
capacity), ``vector-arc`` and ``gradient2`` (``bench/contenders.py``), ``oracle``
(a fixed limit told the cap) and ``fixed-4x``. Goodput is successes per second as the
client received them, over the scenario's steady part, as a share of its capacity;
in flight is the client's attempts on the wire, time-weighted; rtts are per attempt.
Every run prints one line; ``--runs`` repeats each (the spread is reported), and the
machine's load average is printed with each line. Beside the rtt each line shows the
rtt the limit judged (net of the loop's measured lag) and the upstream's own time
(the mock's ``server-timing`` header), both as means over successes.

``--answer-cpu MS`` makes pacer's own CPU busy: each answer costs the sending task MS
ms of CPU (a busy loop, as parsing and bookkeeping hundreds of answers a second on
two cores is), during which no other task runs. Pacer's sender measures its loop's
lag (``pacer.service.loop_lag``, as the daemon does) and its limit judges the rtt
net of it; ``--no-lag`` neither measures nor subtracts it, for comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import structlog
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mock_client import start_mock, stop_mock
from scenarios import (
    CONTENDERS,
    SCENARIOS,
    Bands,
    Behaviour,
    Outcome,
    Scenario,
    by_name,
    make_limit,
)

from pacer.config import UpstreamConfig
from pacer.service.http1 import Http1Transport
from pacer.service.loop_lag import LoopLag
from pacer.service.upstream import Upstream
from pacer.spool.jobs import Request


def mock_args(b: Behaviour, seed: int) -> list[str]:
    """The mock API's flags for a behaviour (Retry-After: the mock always sends one;
    without ``retry_after`` its default of 1 s)."""
    style = "openai" if b.quota_headers else "none"
    args = ["--header-style", style, "--seed", str(seed), "--latency", f"{b.latency:g}",
            "--jitter", f"{b.jitter * b.latency:g}"]
    if b.lognormal_sigma is not None:
        args += ["--lognormal", f"{b.lognormal_sigma:g}"]
    if b.cap is not None:
        args += ["--concurrency", str(b.cap), "--cap-action", b.cap_action]
    if b.schedule:
        args += ["--schedule", ",".join(f"{t:g}:{c}" for t, c in b.schedule)]
    if b.rate is not None:
        args += ["--rate", f"{b.rate:g}", "--rate-action", b.rate_action]
        args += ["--rate-burst", f"{b.bucket_size():g}"]
    if b.retry_after is not None:
        args += ["--retry-after", f"{b.retry_after:g}"]
    if b.knee_start is not None:
        args += ["--knee", str(b.knee_start), "--knee-exp", f"{b.knee_exp:g}"]
    if b.slow_link:
        args += ["--slow-link"]
    if b.tpm is not None:
        args += ["--tpm", str(b.tpm)]
    if b.outage is not None:
        args += ["--outage", f"{b.outage[0]:g}:{b.outage[1]:g}:{b.outage_kind}"]
    if b.fault_rate:
        share = b.fault_rate / 4
        for kind in ("reset", "hang", "close", "malformed"):
            args += ["--fault", f"{kind}:{share:g}"]
    return args


def burn(seconds: float) -> None:
    """Hold the CPU (and the event loop) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def run_real(scenario: Scenario, contender: str, seed: int, answer_cpu: float = 0.0,
                   measure_lag: bool = True) -> Outcome:
    proc, port, t0 = await start_mock(mock_args(scenario.behaviour, seed))
    lag = LoopLag()
    if measure_lag:
        lag.install()
    attempts: list[tuple[float, float, int | None]] = []
    samples: list[tuple[float, int]] = []
    answers: list[bool] = []
    cuts: list[int] = []
    upstream_ms: list[float] = []  # the mock's own time per success (server-timing)
    judged: list[float] = []  # the rtt the limit judged per success (net of the lag)
    try:
        cfg = UpstreamConfig(name="default", base_url=f"http://127.0.0.1:{port}",
                             initial_limit=1, max_attempts=1000, retry_base_delay=0.05,
                             retry_max_delay=scenario.retry_max_delay,
                             timeout=scenario.timeout, max_limit=scenario.max_limit)

        class Recording(Http1Transport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                start = trio.current_time() - t0
                status: int | None = None
                try:
                    response = await super().handle_async_request(request)
                    status = response.status_code
                    timing = response.headers.get("server-timing", "")
                    if status == 200 and timing.startswith("app;dur="):
                        upstream_ms.append(float(timing.removeprefix("app;dur=")))
                    if answer_cpu:
                        burn(answer_cpu)
                    return response
                finally:
                    attempts.append((start, trio.current_time() - t0, status))

        client = httpx.AsyncClient(base_url=cfg.base_url, trust_env=False,
                                   timeout=httpx.Timeout(cfg.timeout, connect=5.0),
                                   transport=Recording(max_connections=4096))
        async with client:
            up = Upstream(cfg, client, rng=random.Random(seed),
                          limit=make_limit(contender, scenario),  # type: ignore[arg-type]
                          loop_lag=lag.task_lag if measure_lag else None)
            up.limit.subscribe(lambda c: cuts.append(c.new_limit) if (
                c.reason == "latency" and c.new_limit < c.old_limit) else None)
            up.limiter.sample_listeners.append(
                lambda s: judged.append(s.upstream_rtt) if s.reason == "ok" else None)
            ids = itertools.count()
            budget = itertools.count()
            body = scenario.body

            async def one() -> None:
                i = next(ids)
                req = Request(custom_id=f"r{i}", method="POST", url="/v1/chat/completions",
                              upstream="default", body=body, line=i + 1)
                answer = await up.send(req)
                if answer is not None:
                    answers.append(answer.ok)

            async def worker() -> None:
                while scenario.requests is None or next(budget) < scenario.requests:
                    await one()

            async def sampler() -> None:
                while True:
                    samples.append((trio.current_time() - t0,
                                    up.limiter.inflight - up.gate.waiting))
                    await trio.sleep(0.01)

            bound = scenario.duration if scenario.requests is None else 600.0
            with trio.move_on_after(bound):
                async with trio.open_nursery() as outer:
                    outer.start_soon(sampler)
                    async with trio.open_nursery() as work:
                        if scenario.interval is not None:
                            async def generate() -> None:
                                while True:
                                    work.start_soon(one)
                                    await trio.sleep(scenario.interval or 0.0)
                            work.start_soon(generate)
                        for _ in range(scenario.workers if scenario.interval is None else 0):
                            work.start_soon(worker)
                    outer.cancel_scope.cancel()
    finally:
        if measure_lag:
            lag.uninstall()
        await stop_mock(proc)
    end = trio.current_time() - t0
    lo, hi = ((scenario.steady_from, scenario.duration) if scenario.requests is None
              else (0.0, end))
    ok = [a for a in attempts if a[2] == 200 and lo <= a[1] < hi]
    goodput = len(ok) / (hi - lo) / scenario.capacity if scenario.capacity else None
    window = [a for a in attempts if lo <= a[0] < hi]
    share = sum(1 for a in window if a[2] == 429) / len(window) if window else 0.0
    inflight = [n for t, n in samples if lo <= t < hi]
    rtts = sorted((e - s) / scenario.unloaded for s, e, st in window if st == 200)
    oracle_time = (scenario.requests / scenario.capacity
                   if scenario.requests is not None and scenario.capacity else None)
    return Outcome(
        scenario=scenario.name, contender=contender, seed=seed, goodput=goodput,
        share_429=share, mean_inflight=statistics.fmean(inflight) if inflight else 0.0,
        mean_rtt=statistics.fmean(rtts) if rtts else None,
        p90_rtt=rtts[int(0.9 * (len(rtts) - 1))] if rtts else None,
        failed=sum(1 for good in answers if not good), duration=end,
        duration_ratio=None if oracle_time is None else end / oracle_time,
        latency_cuts=len(cuts),
        upstream_rtt=(statistics.fmean(upstream_ms) / 1000.0 / scenario.unloaded
                      if upstream_ms else None),
        judged_rtt=statistics.fmean(judged) / scenario.unloaded if judged else None)


def _line(o: Outcome, bands: Bands | None) -> str:
    goodput = "" if o.goodput is None else f"{o.goodput:6.1%}"
    ratio = "" if o.duration_ratio is None else f"{o.duration_ratio:5.2f}x"
    misses = "" if bands is None else ("ok" if not o.misses(bands)
                                       else "MISS " + "; ".join(o.misses(bands)))
    return (f"{o.scenario:28} {o.contender:10} goodput {goodput:>7} 429s {o.share_429:6.2%} "
            f"in flight {o.mean_inflight:5.1f} rtt {o.mean_rtt or 0:5.2f}x "
            f"p90 {o.p90_rtt or 0:5.2f}x time {ratio:>6} failed {o.failed} "
            f"latency cuts {o.latency_cuts} judged rtt {o.judged_rtt or 0:5.2f}x "
            f"upstream's {o.upstream_rtt or 0:5.2f}x "
            f"load {os.getloadavg()[0]:.2f} {misses}")


async def bench(names: Sequence[str], contenders: Sequence[str], runs: int,
                seed: int, answer_cpu: float = 0.0,
                measure_lag: bool = True) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name in names:
        scenario = by_name(name)
        for contender in contenders:
            for run in range(runs):
                o = await run_real(scenario, contender, seed + run, answer_cpu, measure_lag)
                print(_line(o, scenario.bands if contender == "pacer" else None), flush=True)
                out.append({**dataclasses.asdict(o), "load": os.getloadavg()[0]})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS])
    parser.add_argument("--contender", action="append", choices=CONTENDERS)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--answer-cpu", type=float, default=0.0, metavar="MS",
                        help="CPU ms each answer costs the sender (a busy loop)")
    parser.add_argument("--no-lag", action="store_true",
                        help="do not measure the loop's lag (it stays in the rtt)")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    names = args.scenario or [s.name for s in SCENARIOS]
    results = trio.run(bench, names, args.contender or list(CONTENDERS), args.runs, args.seed,
                       args.answer_cpu / 1000.0, not args.no_lag)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
