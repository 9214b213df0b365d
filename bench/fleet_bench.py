"""A fleet of pacers sharing one upstream through Redis, in real time, on loopback.

Run from the repository root::

    .venv/bin/python bench/fleet_bench.py [--scenario NAME ...] [--runs N] [--duration S]

Every run starts its own ``redis-server`` (free port, nothing on disk) and the mock
API (``python -m pacer.mockapi --concurrency 12 --latency 0.3``, no rate-limit
headers: the cap is hidden) as processes, then six pacer nodes, each its own
process (``fleet_bench.py node``): a :class:`pacer.service.upstream.Upstream` (the
daemon's sender: limiter, gate, breaker, retries with the default ``max_attempts =
5``) joined to the fleet with :class:`pacer.fleet.Fleet`, with 20 worker tasks
sending for ever (every node always wants more than its share). The upstream
counts, not pacer: goodput, 429s and requests in service come from the mock's
``/_mock/stats``, polled every 50 ms. Capacity is 12 / 0.3 s = 40 requests/s.

Scenarios:

* ``steady``: six nodes; goodput and 429 share after a 5 s warm-up, the most
  requests ever in service at the mock (target: >= 95 %, <= 1 %, <= 14).
* ``oracle``: the same six nodes without the fleet, each with a fixed limit of
  12 / 6 = 2 (what the best split of the cap gets on this machine).
* ``kill``: ``SIGKILL`` one node at 12 s; how long until the survivors' goodput
  over one second is back at >= 95 % (target: within the lease TTL).
* ``redis-outage``: Redis killed at 10 s and started again (empty) at 20 s;
  requests failed, the most in service during the outage and after it (target:
  none failed, <= 1.2 x 12), each node's ``fleet.restored`` after Redis came back
  (target: <= 5 s).
* ``join``: five nodes, a sixth joins at 10 s: the limit and share it starts with,
  and how long until it holds its share (target: not from 1).
* ``rate``: six nodes against a hidden rate cap of 25 requests/s (``--rate 25``,
  the concurrency cap of 12 above it): goodput as a share of the rate cap and 429s
  after a 5 s warm-up (target: >= 95 %, <= 1 %), and the fleet's learned rate.
* ``quota``: six nodes against a request quota of 25 requests/s announced in
  OpenAI headers (``--rate 25 --header-style openai``: ``x-ratelimit-remaining-
  requests`` is the fleet-wide remaining, the reset the time until the quota is
  full again); ``quota-solo``: one node alone against the same quota, what one
  pacer does. ``quota-window`` and ``quota-window-solo``: the same quota as a fixed
  window of 125 requests per 5 s, all back at the window's end (``--rate-window
  5``, as GitHub's hourly quota), announced as the reset. Goodput as a share of
  the quota, 429s, and how far the attempts overshoot the quota (attempts/s over
  25/s; 429s the quota refused per second), after a 5 s warm-up (target: the fleet
  as one pacer: no more 429s than alone).
* ``outage``: six nodes, the mock answers 503 to everything from 12 s to 27 s of its
  own clock (``--outage 12:27``): attempts that reached it during the outage, and
  after its first second (when the fleet's breaker is open: one half-open probe per
  cool-down for the whole fleet, not one per node), and the nodes' half-open moves.
* ``cpu``: one node in-process, no HTTP, 500 attempts/s of 1 s each against a real
  Redis: process CPU per attempt with the fleet minus without it (3 pairs), and
  the CPU of one tick measured alone (target: <= 0.3 ms per request).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mock_client import make_client, start_mock, stop_mock

from fleet_redis import RedisServer
from pacer.config import FleetConfig, UpstreamConfig
from pacer.fleet.fleet import Fleet
from pacer.logs import configure_logging
from pacer.service.upstream import Upstream
from pacer.spool.jobs import Request

CAP = 12
LATENCY = 0.3
CAPACITY = CAP / LATENCY  # requests/s
# The ``rate`` scenario: a hidden rate cap below the concurrency cap's capacity (at
# 0.3 s it takes 7.5 in flight; the concurrency cap stays at 12, out of reach).
RATE_CAP = 25.0
NODES = 6
WORKERS = 20
LEASE_TTL = FleetConfig().lease_ttl
POLL = 0.05
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


# ----------------------------------------------------------------------------- a node


async def node_main(args: argparse.Namespace) -> None:
    configure_logging("info", "json")
    cfg = UpstreamConfig(name="bench", base_url=args.base_url, initial_limit=args.fixed or 1,
                         adaptive=not args.fixed, timeout=30.0)
    client = make_client(cfg, "freelist")
    up = Upstream(cfg, client)
    fleet = None
    if not args.fixed:  # the oracle split: a fixed share of the cap per node, no fleet
        fleet = Fleet(FleetConfig(redis=args.redis, node=args.name))
        fleet.join(up)
    counts = {"ok": 0, "failed": 0}
    ids = iter(range(10**9))

    async def worker() -> None:
        while True:
            req = Request(custom_id=f"{args.name}-{next(ids)}", method="POST",
                          url="/v1/chat/completions", upstream="bench", body=BODY)
            answer = await up.send(req)
            counts["ok" if answer is not None and answer.ok else "failed"] += 1

    async def watch_peak() -> None:
        """The most attempts out at once in each wall-clock second (sampled at 100 Hz):
        summed over the nodes, an upper bound of what the upstream had in flight."""
        second, peak = int(time.time()), 0
        while True:
            now = time.time()
            if int(now) != second:
                print(json.dumps({"event": "bench.peak", "t": second, "peak": peak}),
                      flush=True)
                second, peak = int(now), 0
            peak = max(peak, up.limiter.inflight - up.gate.waiting)
            await trio.sleep(0.01)

    async def watch_cap() -> None:
        last = None
        samples: list[tuple[int, int, int]] = []
        while True:
            cap = up.limiter.cap
            if cap != last:
                print(json.dumps({"event": "bench.cap", "t": time.time(), "cap": cap}),
                      flush=True)
                last = cap
            samples.append((up.limiter.inflight, up.gate.waiting, up.limiter.waiting))
            if len(samples) == 20:
                print(json.dumps({"event": "bench.load", "t": time.time(), "cap": cap,
                                  "inflight": statistics.mean(x[0] for x in samples),
                                  "gate_waiting": statistics.mean(x[1] for x in samples),
                                  "slot_waiting": statistics.mean(x[2] for x in samples)}),
                      flush=True)
                samples.clear()
            await trio.sleep(POLL)

    async with client, trio.open_nursery() as nursery:
        if fleet is not None:
            await nursery.start(fleet.run)
        for _ in range(WORKERS):
            nursery.start_soon(worker)
        nursery.start_soon(watch_cap)
        nursery.start_soon(watch_peak)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            with trio.move_on_after(args.duration):
                async for _ in signals:
                    break
        nursery.cancel_scope.cancel()
    print(json.dumps({"event": "bench.node_summary", "t": time.time(), "node": args.name,
                      **counts,
                      "attempts": up.stats.attempts, "rate_limited": up.stats.rate_limited}),
          flush=True)


# ----------------------------------------------------------------------------- a run


@dataclass
class Run:
    scenario: str
    t0: float = 0.0  # wall clock at start
    polls: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # seconds since t0
    nodes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    load: float = 0.0


QUOTA_SCENARIOS = ("quota", "quota-solo", "quota-window", "quota-window-solo")
QUOTA_WINDOW = 5.0  # seconds, the fixed window of the quota-window scenarios


def capacity(scenario: str) -> float:
    """What the upstream serves at most, requests/s."""
    return RATE_CAP if scenario in ("rate", *QUOTA_SCENARIOS) else CAPACITY


def node_count(scenario: str) -> int:
    return 1 if scenario.endswith("-solo") else NODES


async def _start_mock(workdir: Path, scenario: str) -> tuple[trio.Process, int]:
    style = "openai" if scenario in QUOTA_SCENARIOS else "none"
    args = ["--concurrency", str(CAP), "--latency", str(LATENCY), "--jitter", "0.03",
            "--header-style", style, "--retry-after", "0.2", "--seed", "1"]
    if scenario in ("rate", *QUOTA_SCENARIOS):
        args += ["--rate", f"{RATE_CAP:g}"]
    if scenario.startswith("quota-window"):
        args += ["--rate-window", f"{QUOTA_WINDOW:g}"]
    if scenario == "outage":
        args += ["--outage", "12:27"]
    with (workdir / "mock.log").open("wb") as log:
        proc, port, _ = await start_mock(args, stderr=log)
    return proc, port


def _start_node(name: str, redis_url: str, base_url: str, duration: float,
                workdir: Path, fixed: int = 0) -> subprocess.Popen[bytes]:
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, __file__, "node", "--name", name, "--redis", redis_url,
         "--base-url", base_url, "--duration", str(duration), "--fixed", str(fixed)],
        stdout=log, stderr=subprocess.STDOUT)


def _read_log(path: Path) -> list[dict[str, Any]]:
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            events.append(obj)
    return events


def _wall(event: dict[str, Any]) -> float:
    if "t" in event:
        return float(event["t"])
    if "timestamp" not in event:
        return math.nan
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


async def run_scenario(name: str, duration: float) -> Run:
    run = Run(name)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        workdir = Path(os.environ.get("FLEET_BENCH_KEEP") or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        redis = RedisServer(workdir)
        redis.start()
        mock, port = await _start_mock(workdir, name)
        base_url = f"http://127.0.0.1:{port}"
        procs: dict[str, subprocess.Popen[bytes]] = {}
        names = [f"n{i}" for i in range(node_count(name))]
        first = names[:-1] if name == "join" else names
        fixed = CAP // NODES if name == "oracle" else 0
        for n in first:
            procs[n] = _start_node(n, redis.url, base_url, duration + 60, workdir, fixed)
        try:
            # Six Python processes take seconds to start on a busy 2-core machine: the
            # clock starts once every node runs (joined the fleet, or sent for 1 s).
            ready = "fleet.joined" if not fixed else "bench.load"
            with trio.fail_after(90):
                while not all(ready in (workdir / f"{n}.log").read_text(errors="replace")
                              for n in first):
                    await trio.sleep(0.1)
            run.t0 = time.time()
            async with httpx.AsyncClient(base_url=base_url, trust_env=False) as stats:
                async def poll() -> None:
                    while True:
                        snap = (await stats.get("/_mock/stats")).json()
                        snap["t"] = time.time() - run.t0
                        run.polls.append(snap)
                        await trio.sleep(POLL)

                async def script() -> None:
                    if name == "kill":
                        await trio.sleep(12)
                        procs["n0"].send_signal(signal.SIGKILL)
                        run.marks["kill"] = time.time() - run.t0
                    elif name == "redis-outage":
                        await trio.sleep(10)
                        redis.stop()
                        run.marks["redis_down"] = time.time() - run.t0
                        await trio.sleep(10)
                        redis.start()
                        run.marks["redis_up"] = time.time() - run.t0
                    elif name == "join":
                        await trio.sleep(10)
                        procs[names[-1]] = _start_node(names[-1], redis.url, base_url,
                                                       duration + 60, workdir)
                        run.marks["join"] = time.time() - run.t0

                with trio.move_on_after(duration):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(poll)
                        nursery.start_soon(script)
            run.marks["end"] = time.time() - run.t0
            run.load = os.getloadavg()[0]
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs.values():
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            await stop_mock(mock)
            redis.stop()
        for n in procs:
            run.nodes[n] = _read_log(workdir / f"{n}.log")
        (workdir / "run.json").write_text(json.dumps({"t0": run.t0, "marks": run.marks,
                                                      "polls": run.polls}))
    return run


# ----------------------------------------------------------------------------- analysis


def _at(run: Run, t: float) -> dict[str, Any]:
    """The last poll at or before ``t`` (seconds since start)."""
    best = run.polls[0]
    for p in run.polls:
        if p["t"] <= t:
            best = p
        else:
            break
    return best


def _goodput(run: Run, a: float, b: float) -> float:
    pa, pb = _at(run, a), _at(run, b)
    span = pb["t"] - pa["t"]
    return ((pb["ok"] - pa["ok"]) / (span * capacity(run.scenario)) if span > 0
            else math.nan)


def _share_429(run: Run, a: float, b: float) -> float:
    pa, pb = _at(run, a), _at(run, b)
    asked = pb["requests"] - pa["requests"]
    return (pb["rate_limited"] - pa["rate_limited"]) / asked if asked else math.nan


def _max_in_service(run: Run, a: float, b: float) -> int:
    return max((p["in_service"] for p in run.polls if a <= p["t"] <= b), default=0)


def _events(run: Run, event: str) -> list[tuple[str, float, dict[str, Any]]]:
    return [(n, _wall(e) - run.t0, e) for n, evs in run.nodes.items() for e in evs
            if e.get("event") == event]


def _peak(run: Run, a: float, b: float) -> int:
    """Upper bound of the attempts out at once, fleet-wide, in [a, b]: the per-second
    peaks of every node, summed."""
    per_second: dict[int, int] = {}
    for _, _, e in _events(run, "bench.peak"):
        if a <= e["t"] - run.t0 <= b:
            per_second[e["t"]] = per_second.get(e["t"], 0) + int(e["peak"])
    return max(per_second.values(), default=0)


def _caps_reach(run: Run, since: float, dead: str, need: int) -> float | None:
    """Seconds after ``since`` until the nodes other than ``dead`` hold ``need`` slots
    between them (from each node's ``bench.cap`` lines)."""
    changes = sorted((t, n, int(e["cap"] or 0)) for n, t, e in _events(run, "bench.cap")
                     if n != dead)
    caps: dict[str, int] = {}
    for t, n, cap in changes:
        caps[n] = cap
        if t >= since and sum(caps.values()) >= need:
            return round(t - since, 2)
    return None


def _failed(run: Run) -> int | None:
    summaries = _events(run, "bench.node_summary")
    return sum(int(e["failed"]) for _, _, e in summaries) if summaries else None


def analyse(run: Run) -> dict[str, Any]:
    end = run.marks["end"]
    out: dict[str, Any] = {
        "load_1min": round(run.load, 2),
        "goodput_after_5s": round(_goodput(run, 5, end), 4),
        "share_429_after_5s": round(_share_429(run, 5, end), 4),
        "share_429_whole_run": round(_share_429(run, 0, end), 4),
        "max_in_service": run.polls[-1]["max_in_service"],
        "max_sent_at_once_upper": _peak(run, 5, end),
        "mean_in_service_after_5s": round(statistics.mean(
            p["in_service"] for p in run.polls if p["t"] >= 5), 2),
        "failed": _failed(run),
    }
    if run.scenario == "kill":
        k = run.marks["kill"]
        out["goodput_before_kill"] = round(_goodput(run, 5, k), 4)
        back = None
        t = k
        while t + 1 <= end:
            if _goodput(run, t, t + 1) >= 0.95 and _goodput(run, t + 1, t + 2) >= 0.95:
                back = t + 1 - k  # the end of the first good second
                break
            t += POLL
        out["back_at_95pct_after_s"] = None if back is None else round(back, 2)
        out["goodput_after_recovery"] = round(_goodput(run, k + LEASE_TTL + 1, end), 4)
        for need in (CAP - 1, CAP):
            out[f"survivors_hold_{need}_after_s"] = _caps_reach(run, k, "n0", need)
        out["failed"] = None  # the killed node never reports; the survivors' is below
        out["failed_survivors"] = sum(int(e["failed"]) for n, _, e in
                                      _events(run, "bench.node_summary") if n != "n0")
    if run.scenario == "redis-outage":
        down, up = run.marks["redis_down"], run.marks["redis_up"]
        out["max_in_service_outage"] = _max_in_service(run, down, up)
        out["max_sent_at_once_upper_outage"] = _peak(run, down, up + 1)
        out["max_in_service_after"] = _max_in_service(run, up, end)
        out["goodput_outage"] = round(_goodput(run, down, up), 4)
        out["goodput_after_restore"] = round(_goodput(run, up + 5, end), 4)
        restored = [t - up for _, t, _ in _events(run, "fleet.restored") if t >= down]
        degraded = _events(run, "fleet.degraded")
        out["degraded_events"] = len(degraded)
        out["restored_events"] = len(restored)
        out["restored_after_s_max"] = round(max(restored), 2) if restored else None
    if run.scenario == "rate":
        changes = sorted((t, e) for n, t, e in _events(run, "fleet.rate_changed") if n == "n0")
        learned = [t for t, e in changes if e.get("old_rate") is None and e.get("new_rate")]
        out["rate_learned_at_s"] = round(learned[0], 2) if learned else None
        out["rate_cuts_seen_by_n0"] = sum(1 for _, e in changes
                                          if e.get("reason") == "rate_limited")
        out["rate_last_share_of_cap"] = (round(changes[-1][1]["new_rate"] / RATE_CAP, 3)
                                         if changes and changes[-1][1].get("new_rate")
                                         else None)
    if run.scenario in QUOTA_SCENARIOS:
        pa, pb = _at(run, 5), _at(run, end)
        span = pb["t"] - pa["t"]
        out["attempts_per_s_over_quota"] = round(
            (pb["requests"] - pa["requests"]) / span / RATE_CAP, 4)
        out["quota_429s_per_s"] = round(
            (pb["rate_limited_rate"] - pa["rate_limited_rate"]) / span, 3)
        # Spread or front-loaded: the best second's goodput over the quota's pace
        # (one pacer spreads a window's quota over it; a fleet pacing as if each
        # node had it all spends it at once, then waits for the reset).
        out["peak_1s_goodput_over_quota"] = round(max(
            (_goodput(run, p["t"], p["t"] + 1) for p in run.polls
             if 5 <= p["t"] <= end - 1), default=math.nan), 3)
    if run.scenario == "outage":
        hit = [p for p in run.polls if p.get("outage", 0) > 0]
        if hit:
            first = hit[0]["t"]
            total = run.polls[-1]["outage"]
            out["outage_attempts"] = total
            out["outage_attempts_after_1s"] = total - _at(run, first + 1)["outage"]
            last = min(p["t"] for p in hit if p["outage"] == total)
            out["outage_seen_s"] = round(last - first, 2)
            back = None
            t = last
            while t + 2 <= run.marks["end"]:
                if _goodput(run, t, t + 1) >= 0.95 and _goodput(run, t + 1, t + 2) >= 0.95:
                    back = t + 1 - last  # the end of the first good second
                    break
                t += POLL
            out["back_at_95pct_after_outage_s"] = None if back is None else round(back, 2)
        moves = _events(run, "breaker.transition")
        out["half_open_moves"] = sum(1 for _, _, e in moves if e.get("to") == "half_open")
        out["closed_by_fleet"] = sum(1 for _, _, e in moves
                                     if e.get("to") == "closed" and e.get("reason") == "fleet")
    if run.scenario == "join":
        j = run.marks["join"]
        joined = [e for n, _, e in _events(run, "fleet.joined") if n == f"n{NODES - 1}"]
        caps = [(t - j, e["cap"]) for n, t, e in _events(run, "bench.cap")
                if n == f"n{NODES - 1}" and e["cap"]]
        if joined:
            out["joiner_started_at_limit"] = joined[0].get("limit")
        full = [t for t, c in caps if c >= CAP // NODES]
        out["joiner_holds_share_after_s"] = round(full[0], 2) if full else None
        out["goodput_after_join"] = round(_goodput(run, j + 2, end), 4)
    return out


# ----------------------------------------------------------------------------- cpu


async def _cpu_once(redis_url: str | None, rate: float, latency: float, seconds: float,
                    seed: int) -> tuple[float, int]:
    """Process CPU and attempts for ``seconds`` of ``rate`` attempts/s, each holding a
    slot for ``latency`` and recording a success: the limiter's hot path, with or
    without the fleet ticking behind it."""
    cfg = UpstreamConfig(name="cpu", base_url="http://127.0.0.1:9", initial_limit=1000,
                         max_limit=1000, adaptive=False)
    client = httpx.AsyncClient(trust_env=False)
    up = Upstream(cfg, client)
    fleet = None
    if redis_url is not None:
        fleet = Fleet(FleetConfig(redis=redis_url, node=f"cpu-{seed}"))
        fleet.join(up)
    rng = random.Random(seed)
    done = 0

    async def one() -> None:
        nonlocal done
        async with up.limiter.acquire() as attempt:
            await trio.sleep(latency * rng.uniform(0.9, 1.1))
            attempt.success()
        done += 1

    async with client, trio.open_nursery() as nursery:
        if fleet is not None:
            await nursery.start(fleet.run)
            await trio.sleep(0.3)
        cpu0 = time.process_time()
        start = trio.current_time()
        n = 0
        while trio.current_time() - start < seconds:
            nursery.start_soon(one)
            n += 1
            await trio.sleep_until(start + n / rate)
        await trio.sleep(latency * 1.2)
        cpu = time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    return cpu, done


async def _tick_cpu(redis_url: str, ticks: int = 2000) -> float:
    """CPU seconds of one member tick (500 slots held), measured back to back."""
    cfg = UpstreamConfig(name="tick", base_url="http://127.0.0.1:9", initial_limit=1000,
                         max_limit=1000)
    async with httpx.AsyncClient(trust_env=False) as client:
        up = Upstream(cfg, client)
        fleet = Fleet(FleetConfig(redis=redis_url, node="tick"))
        member = fleet.join(up)
        async with fleet.store:
            await member.tick()
            cpu0 = time.process_time()
            for _ in range(ticks):
                await member.tick()
            cpu = time.process_time() - cpu0
            await member.leave()
    return cpu / ticks


async def run_cpu(pairs: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        try:
            per_req = []
            for i in range(pairs):
                cpu_off, n_off = await _cpu_once(None, 500, 1.0, seconds, i)
                cpu_on, n_on = await _cpu_once(redis.url, 500, 1.0, seconds, i)
                per_req.append((cpu_on / n_on - cpu_off / n_off) * 1000)
            tick = await _tick_cpu(redis.url)
        finally:
            redis.stop()
    ticks_per_s = 1 / FleetConfig().tick_interval
    return {
        "load_1min": round(os.getloadavg()[0], 2),
        "fleet_cpu_ms_per_request_runs": [round(x, 4) for x in per_req],
        "fleet_cpu_ms_per_request_median": round(statistics.median(per_req), 4),
        "tick_cpu_ms": round(tick * 1000, 4),
        "tick_cpu_ms_per_request_at_500rps": round(tick * 1000 * ticks_per_s / 500, 4),
    }


# ----------------------------------------------------------------------------- main

SCENARIOS = ("steady", "oracle", "kill", "redis-outage", "join", "rate", *QUOTA_SCENARIOS,
             "outage", "cpu")


def _spread(values: Sequence[Any]) -> str:
    nums = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not nums:
        return str(list(values))
    if len(nums) == 1:
        return f"{nums[0]}"
    return f"median {statistics.median(nums):.4g} (min {min(nums):.4g}, max {max(nums):.4g})"


async def bench(scenarios: Sequence[str], runs: int, duration: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in scenarios:
        per_run = []
        for i in range(runs):
            if name == "cpu":
                res = await run_cpu(pairs=3, seconds=min(duration, 10))
            else:
                res = analyse(await run_scenario(name, duration))
            print(json.dumps({"scenario": name, "run": i + 1, **res}), flush=True)
            per_run.append(res)
        keys = per_run[0].keys()
        results[name] = {"runs": per_run,
                         "spread": {k: _spread([r.get(k) for r in per_run]) for k in keys}}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    node = sub.add_parser("node", help="one fleet node (started by the bench)")
    node.add_argument("--name", required=True)
    node.add_argument("--redis", required=True)
    node.add_argument("--base-url", required=True)
    node.add_argument("--duration", type=float, default=60)
    node.add_argument("--fixed", type=int, default=0)
    parser.add_argument("--scenario", action="append", choices=SCENARIOS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.cmd == "node":
        trio.run(node_main, args)
        return 0
    results = trio.run(bench, args.scenario or list(SCENARIOS), args.runs, args.duration)
    for name, res in results.items():
        print(f"\n{name}:")
        for k, v in res["spread"].items():
            print(f"  {k:32} {v}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
