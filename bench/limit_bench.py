"""Benchmark of pacer's adaptive limit against fixed baselines, in real time.

Run from the repository root::

    .venv/bin/python bench/limit_bench.py [--quick] [--scenario NAME] [--contender NAME]

For every scenario and every contender a fresh mock API (``python -m pacer.mockapi``)
is started as a subprocess on 127.0.0.1 with the scenario's flags and a fixed
``--seed``; a :class:`pacer.service.upstream.Upstream` (the daemon's own sender: limiter,
pacing gate, breaker, retries honouring Retry-After) sends to it. ``4 x the highest
concurrency of the scenario + 50`` worker tasks pull requests from an unbounded
supply and ``await upstream.send(request)`` for a fixed duration, so the limiter
always has more takers than slots. Contenders:

* ``pacer``: the sender as shipped: :class:`pacer.control.aimd.AimdLimit` from
  ``initial_limit = 1`` (defaults otherwise) *and* the pacing gate
  (:mod:`pacer.control.pacing`), never told the capacity. Its targets are checked.
* ``aimd-only``: the same with the pacing gate replaced by one that never waits
  (:class:`OpenGate`): the limit algorithm alone, which is what the targets are
  about. Its targets are checked too.
* ``oracle``: a fixed limit at the hidden cap, ``FixedLimit(C)`` (steps: a limit the
  harness moves to the new cap at each step, the best any limit could do; knee: the
  best concurrency ``n*``, below), without the gate.
* ``fixed-4x``: ``FixedLimit(4 x C)`` (steps: 4 x the first cap = 80; knee: 4 x n*)
  without the gate: a semaphore told 4x too high, relying on the jittered retries.
* ``fixed-4x+gate`` (only with ``--contender``): the same behind the shipped gate.

Mock and client settings, and why
---------------------------------
* ``--header-style none``: the mock announces no quota, so the cap is hidden and
  429s are the only signal (the issue's premise).
* ``--retry-after 0.2`` (default 1 s): a refused request comes back after 0.2-0.22 s
  (``retry-after-ms`` is honoured, plus 10 % jitter), about half a round trip, so
  retries do not dominate a request's time. Waiting retries hold no limiter slot, so
  this changes nobody's goodput; it sets how hard fixed-4x hammers.
* ``max_attempts = 1_000_000`` (nothing fails), ``retry_base_delay = 0.05``,
  ``retry_max_delay = 1`` (only used without Retry-After, which never happens here).
* Latency ``L = 0.5 s`` everywhere, with +-0.05 s uniform jitter (the mean stays L).
  The client must not be the bottleneck: httpx on the 2-core machine this was
  written on does ~1200 req/s at 5 concurrent connections but ~230 at 50, so the
  rates asked of it stay at or below 80 req/s (40 in service / 0.5 s), with the mock
  in its own process on the other core. And the fixed cost of a request over
  loopback (both sides' HTTP handling and the sender's own bookkeeping, ~5-10 ms)
  is a loss of goodput against ``C / L`` that no limit can avoid: ~2 % at 0.5 s,
  4-5 % at 0.25 s (the oracle measured 95-96 % there). Without jitter a fixed
  limit's requests start and end in lockstep, and each cohort of 32 queues for
  ~30 ms of HTTP handling at both ends (median 1.05 L, oracle 94 %); +-10 %
  spreads them (1.01 L, 96-98 %). The oracle's row shows what is reachable.
* The client: the same settings as :func:`pacer.service.http.build_client` (timeouts, no
  redirects, no proxies from the environment) but over :class:`FreeListTransport`,
  one keep-alive connection per request in flight. httpcore's pool (what
  ``build_client`` gets) stalls on bursts of concurrent requests (see the class);
  with it the fixed-4x baseline got 34 % of the capacity at 79 % client CPU
  instead of 91 %: a harness artefact, not what the baseline does to the server.
  ``--client build`` runs with ``build_client`` itself.
* Both processes' CPU (share of one core over the run), the Trio loop's lateness
  (p99 of the 10 Hz sampler's oversleep) and the 1-minute load average are
  recorded per run: other work on the machine shows up there, and a run whose
  loop lag is high has figures to distrust (the script says so).

Scenarios (default duration 25 s per run; ``--quick`` halves every time)
-----------------------------------------------------------------------
* ``cap``: hidden concurrency cap ``C = 32``, cold start from limit 1. Capacity
  ``C / L = 64 req/s``.
* ``steps``: the cap follows ``--schedule 0:20,8:5,16:40``. Capacity ``cap(t) / L``.
  (With ``--quick`` the segments last 4 s: a drop that settles later than 3 s after
  the step shows as ``>3.0``; the 10-RT target is 5 s.)
* ``knee``: no cap, never a 429; past ``K = 16`` requests in service the mock's
  service time is ``L x (1 + 0.05 x (n - K))`` for a request arriving as the n-th in
  service (``MockUpstream._service_time``). At a steady concurrency n every request
  arrives with n in service, so the goodput is ``n / latency(n)`` (Little's law);
  the best achievable is its maximum over the n whose latency is within 1.5x the
  unloaded one: ``n* = 26``, ``26 / 0.75 s = 34.7 req/s``. (The knee itself, n = 16,
  gives 32 req/s, 92 %; the slope is below ``1 / K``, so concurrency past the knee
  still buys throughput, at a latency cost.)

Definitions (times in seconds since the mock started; a round trip, RT, is ``L``)
-------------------------------------------------------------------------------
* **window**: ``cap`` and ``knee``: the last two thirds of the run; ``steps``: from
  the first step to the end (both steps and what follows them).
* **goodput**: successful attempts (2xx) *completed* within the window, per second;
  **% cap**: goodput over the capacity averaged over the window (``C / L``; steps:
  the time-mean of ``cap(t) / L``; knee: ``n* / latency(n*)``).
  **% orcl**: goodput over the oracle's in the same scenario (what was reachable).
* **429 %**: 429s among the attempts *started* within the window; **429 all**: over
  the whole run, cold start included.
* **lat p50/90**: median (and 90th percentile) duration of the successful attempts
  completed within the window (client-side, from sending to the full body; a
  pacing-gate wait is not part of it), over ``L``; the target is on the median.
  **req p50**: median time from a request's first attempt to its final answer,
  retries included.
* **cold RT** ``touch/settle``: from the first attempt's start to the first time
  the limit reaches the scenario's first cap (32; steps: 20), and to the first time
  from which it stays within +-10 % of that cap for at least 1 s, in round trips
  (adaptive contenders only). The target is checked on *settle*: slow start may
  touch the cap and then cut far below it.
* **drop**: after a step down to cap ``c`` at ``ts``, the first ``t >= ts`` from
  which the limit stays within ``[0.9 c, 1.1 c]`` for at least 1 s (before the next
  step), as ``t - ts`` in seconds / round trips. Measured on the limit: the mock
  refuses everything above the cap at once, so what has to converge is the
  contender's own limit (and with it the 429s). For ``c = 5`` the band holds only 5.
* **rise**: after a step up to ``c`` at ``ts``, the first ``t >= ts`` at which the
  mean number of successful attempts in flight over ``[t, t + 1 s]`` (the served
  concurrency: the capacity actually used) is at least ``0.9 c``, as ``t - ts``.
  The JSON also holds the limit-based rise (limit >= 0.9 c held 1 s) and the
  served-based drop.
* **cpu**: CPU seconds of the bench process (client) / of the mock over the run's
  wall time. **lag**: p99 of the sampler's oversleep, in ms.

Targets, checked for ``pacer`` and ``aimd-only``: ``cap``: goodput >= 95 % of
``C / L``, 429 % <= 2, cold RT <= 10; ``steps``: drop <= 10 RT, rise <= 5 s;
``knee``: median latency <= 1.5 L, goodput >= 90 % of the best achievable, no 429.

Outputs: the table on stdout, ``bench/out/limit_bench.json`` (every figure, plus the
limit, in-flight and pacing-gate series and 2xx / 429 counts per second) and
``bench/out/limit_bench.png`` (per scenario: pacer's limit and attempts in flight,
aimd-only's limit, pacer's 429s per second, the mock's cap dashed), drawn with
matplotlib's Agg canvas (no pyplot).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from pacer.config import UpstreamConfig
from pacer.control.aimd import AimdLimit, AimdSettings
from pacer.control.limit import FixedLimit, Limit, LimitChange
from pacer.control.pacing import PauseEvent, RateChange
from pacer.logs import configure_logging
from pacer.service.http import ReleasingStream, build_client
from pacer.service.upstream import Upstream
from pacer.spool.jobs import Request

OUT_DIR = Path(__file__).resolve().parent / "out"
CHAT = "/v1/chat/completions"
BODY = {"model": "mock", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
LATENCY = 0.5
JITTER = 0.05  # uniform +-, so the mean service time stays LATENCY
DURATION = 25.0
RETRY_AFTER = 0.2
SAMPLE_EVERY = 0.1  # in-flight samples: 10 Hz
GRID = 0.01  # resolution of the served-concurrency series
HOLD = 1.0  # seconds a converged value must hold
LATENCY_BOUND = 1.5  # "median latency <= 1.5x unloaded", and the knee's best n
MAX_LIMIT = 256
BUSY_LAG_MS = 50.0  # a loop lag p99 above this: the machine was busy, figures suspect
CONTENDERS = ("pacer", "aimd-only", "oracle", "fixed-4x")
ALL_CONTENDERS = (*CONTENDERS, "fixed-4x+gate")
CHECKED = ("pacer", "aimd-only")  # whose targets are checked
ADAPTIVE = ("pacer", "aimd-only")


# ----------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    """One mock configuration. ``caps`` is the cap schedule ``((t, cap), ...)`` (one
    entry for a constant cap, empty for none); times are already scaled."""

    name: str
    title: str
    latency: float
    duration: float
    caps: tuple[tuple[float, int], ...] = ()
    knee: int | None = None
    knee_slope: float = 0.0
    jitter: float = 0.0

    def mock_args(self, seed: int) -> list[str]:
        args = ["--latency", f"{self.latency:g}", "--jitter", f"{self.jitter:g}",
                "--seed", str(seed), "--retry-after", f"{RETRY_AFTER:g}",
                "--header-style", "none"]
        if len(self.caps) == 1:
            args += ["--concurrency", str(self.caps[0][1])]
        elif self.caps:
            args += ["--schedule", ",".join(f"{t:g}:{c}" for t, c in self.caps)]
        if self.knee is not None:
            args += ["--knee", str(self.knee), "--knee-slope", f"{self.knee_slope:g}"]
        return args

    def cap_at(self, t: float) -> int | None:
        cap: int | None = None
        for at, c in self.caps:
            if at <= t + 1e-9:
                cap = c
        return cap

    def knee_latency(self, n: int) -> float:
        """The mock's service time of a request arriving as the n-th in service."""
        if self.knee is None or n <= self.knee:
            return self.latency
        return self.latency * (1.0 + self.knee_slope * (n - self.knee))

    def best_knee(self) -> tuple[int, float]:
        """``(n*, goodput)``: the steady concurrency with the best goodput
        ``n / latency(n)`` among those whose latency is within LATENCY_BOUND x L."""
        candidates = [n for n in range(1, 4096)
                      if self.knee_latency(n) <= LATENCY_BOUND * self.latency + 1e-12]
        best = max(candidates, key=lambda n: (n / self.knee_latency(n), -n))
        return best, best / self.knee_latency(best)

    @property
    def steps(self) -> list[tuple[float, int, int]]:
        """``(t, old cap, new cap)`` for every change of the cap after the start."""
        return [(t, a, b) for (_, a), (t, b) in itertools.pairwise(self.caps)]

    @property
    def window(self) -> tuple[float, float]:
        if self.steps:
            return self.steps[0][0], self.duration
        return round(self.duration / 3.0, 3), self.duration

    def capacity(self, t0: float, t1: float) -> float:
        """The best achievable goodput (req/s), averaged over ``[t0, t1)``."""
        if self.knee is not None:
            return self.best_knee()[1]
        edges = [t0, *(t for t, _ in self.caps if t0 < t < t1), t1]
        total = sum((self.cap_at(a) or 0) / self.latency * (b - a)
                    for a, b in itertools.pairwise(edges))
        return total / (t1 - t0)

    def oracle(self) -> int:
        return self.best_knee()[0] if self.knee is not None else self.caps[0][1]

    def fixed4x(self) -> int:
        return 4 * self.oracle()

    def first_cap(self) -> int:
        return self.caps[0][1] if self.caps else self.oracle()

    def workers(self) -> int:
        return 4 * max([self.oracle(), *(c for _, c in self.caps)]) + 50


def scenarios(scale: float) -> dict[str, Scenario]:
    def s(t: float) -> float:
        return round(t * scale, 3)

    lat, jit = LATENCY, JITTER
    return {
        "cap": Scenario("cap", f"hidden cap C=32, L={lat:g}±{jit:g} s", lat, s(DURATION),
                        caps=((0.0, 32),), jitter=jit),
        "steps": Scenario("steps", f"cap 20 -> 5 -> 40, L={lat:g}±{jit:g} s", lat,
                          s(DURATION), caps=((0.0, 20), (s(8), 5), (s(16), 40)), jitter=jit),
        "knee": Scenario("knee", f"latency knee K=16, slope 0.05, no cap, L={lat:g}±{jit:g} s",
                         lat, s(DURATION), knee=16, knee_slope=0.05, jitter=jit),
    }


def make_limit(contender: str, scn: Scenario) -> Limit:
    if contender in ADAPTIVE:
        return AimdLimit(AimdSettings(initial_limit=1, min_limit=1, max_limit=MAX_LIMIT))
    if contender == "oracle":
        return FixedLimit(scn.oracle())  # moved along the schedule: see follow_schedule
    return FixedLimit(scn.fixed4x())


class OpenGate:
    """A pacing gate that never holds anything back: the part of
    :class:`~pacer.service.pacing_gate.PacingGate` that
    :class:`~pacer.service.upstream.Upstream` uses
    (loosely typed: that interface is still moving)."""

    waiting = 0

    async def wait(self, *_args: Any, **_kwargs: Any) -> bool:
        await trio.lowlevel.checkpoint()
        return False  # never held back

    def on_response(self, *_args: Any, **_kwargs: Any) -> None:
        return None  # no cause: every outcome is the limit's


def uses_gate(contender: str) -> bool:
    return contender in ("pacer", "fixed-4x+gate")


# ----------------------------------------------------------------------------- client


class FreeListTransport(httpx.AsyncBaseTransport):
    """One keep-alive connection per request in flight, taken from a free list.

    httpcore's pool (what ``build_client`` gets) assigns *every* queued request to the
    first idle connection, since assigning does not make it busy; they then queue on
    that connection's lock, one wins, the others fail over with
    ``ConnectionNotAvailable`` and go round again, and each round rescans every
    connection. A burst of n requests (a wave of retries waking together) costs
    O(n^2) and stalls: with a fixed limit of 128 against a cap of 32, ~100 requests
    sat in that convoy for seconds while the mock served 11 of its 32 slots (34 % of
    the capacity, the client at 79 % CPU, successes taking 7.5x L). Here each
    request takes an idle single-connection transport (or a new one) and gives it
    back when its response is closed: O(1), whatever the burst. They all share one
    SSL context: httpx builds one per transport otherwise (loading the CA bundle,
    ~26 ms each), which stalled the event loop for seconds when a fixed limit of 128
    opened its connections at once.
    """

    def __init__(self, keepalive_expiry: float = 30.0) -> None:
        self._limits = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                                    keepalive_expiry=keepalive_expiry)
        self._ssl = ssl.create_default_context()
        self._idle: list[httpx.AsyncHTTPTransport] = []
        self._all: list[httpx.AsyncHTTPTransport] = []

    @property
    def connections(self) -> int:
        return len(self._all)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._idle:
            transport = self._idle.pop()
        else:
            transport = httpx.AsyncHTTPTransport(limits=self._limits, trust_env=False,
                                                 verify=self._ssl)
            self._all.append(transport)
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            self._idle.append(transport)  # its pool drops a broken connection itself
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=ReleasingStream(response.stream,
                                                      lambda: self._idle.append(transport)),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        for transport in self._all:
            await transport.aclose()


def make_client(cfg: UpstreamConfig, kind: str) -> httpx.AsyncClient:
    """``build_client(cfg)`` itself (``kind == "build"``), or the same client settings
    over a :class:`FreeListTransport` (no auth and no extra headers for this config,
    no redirects, no proxies from the environment, the same timeouts)."""
    if kind == "build":
        return build_client(cfg, None)
    return httpx.AsyncClient(
        base_url=cfg.base_url,
        timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
        follow_redirects=False,
        trust_env=False,
        transport=FreeListTransport(),
    )


# ----------------------------------------------------------------------------- one run


@dataclass(slots=True)
class RunRecord:
    """What one contender did against one scenario; times in s since the mock started."""

    scenario: str
    contender: str
    duration: float
    attempts: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, why
    limits: list[tuple[float, int]] = field(default_factory=list)
    # t, attempts holding a slot, of which sent (not waiting at the gate), limit
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)  # the sampler's oversleep, s
    request_times: list[float] = field(default_factory=list)  # first attempt -> answer
    pauses: list[tuple[float, float, str]] = field(default_factory=list)  # at, seconds, cause
    rates: list[tuple[float, float | None]] = field(default_factory=list)  # gate's learned rate
    failed: int = 0
    wall: float = 0.0
    cpu_client: float = 0.0
    cpu_mock: float | None = None
    loadavg: float | None = None
    connections: int | None = None
    mock_stats: dict[str, Any] = field(default_factory=dict)


def _proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a child process (Linux /proc), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def _start_mock(args: Sequence[str]) -> tuple[trio.Process, int, float]:
    """Start the mock; return the process, its port and the Trio time it started."""
    cmd = [sys.executable, "-m", "pacer.mockapi", "--host", "127.0.0.1", "--port", "0", *args]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(15):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"the mock exited before listening: {cmd}")
            buf += chunk
    started = trio.current_time()  # the mock's clock started a few ms before
    line = json.loads(buf.split(b"\n", 1)[0])
    if line.get("event") != "mock_api.listening":
        raise RuntimeError(f"unexpected first line from the mock: {line}")
    return proc, int(line["port"]), started


async def _stop_mock(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.stdout is not None:
        await proc.stdout.aclose()


def _subscribe(rec: RunRecord, t0: float, limit: Limit, upstream: Upstream,
               paced: bool) -> None:
    """Record the limit's changes and every attempt, and (``paced``) the gate's pauses and
    learned rates, in ``rec`` (times since ``t0``)."""

    def on_change(change: LimitChange) -> None:
        rec.limits.append((change.at - t0, change.new_limit))

    def on_attempt(_name: str, seconds: float, reason: str) -> None:
        end = trio.current_time() - t0
        rec.attempts.append((end - seconds, end, reason))

    def on_pause(event: PauseEvent) -> None:
        rec.pauses.append((event.at - t0, event.duration, event.cause))

    def on_rate(change: RateChange) -> None:
        rec.rates.append((change.at - t0, change.new_rate))

    limit.subscribe(on_change)
    upstream.on_attempt = on_attempt
    if paced:
        upstream.pacer.subscribe_pause(on_pause)
        upstream.pacer.subscribe_rate(on_rate)


async def _worker(upstream: Upstream, rec: RunRecord, ids: Iterator[int], body: dict[str, Any],
                  on_failure: Callable[[Any], None] | None = None) -> None:
    """Send requests one after another for ever; count failures, time the answered ones."""
    while True:
        req = Request(custom_id=f"r{next(ids)}", method="POST", url=CHAT,
                      upstream="bench", body=body)
        began = trio.current_time()
        answer = await upstream.send(req)
        if answer is None or not answer.ok:
            rec.failed += 1
            if on_failure is not None:
                on_failure(answer)
        else:
            rec.request_times.append(trio.current_time() - began)


async def _sampler(upstream: Upstream, rec: RunRecord, t0: float,
                   extra: Callable[[float], None] | None = None) -> None:
    """Sample the slots held and sent at 10 Hz, with the loop's oversleep; ``extra(now)``
    records more at each sample."""
    due = trio.current_time()
    while True:
        now = trio.current_time()
        rec.lags.append(max(0.0, now - due))
        held = upstream.limiter.inflight
        waiting = getattr(upstream.gate, "waiting", 0)
        rec.samples.append((now - t0, held, held - waiting, upstream.limit.limit))
        if extra is not None:
            extra(now)
        due = now + SAMPLE_EVERY
        await trio.sleep_until(due)


async def _drive(rec: RunRecord, proc: trio.Process, client: httpx.AsyncClient, base_url: str,
                 until: float, tasks: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run ``tasks`` until the Trio time ``until``, then record the CPU, wall time, load,
    connections and the mock's own counts in ``rec``."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    mock_cpu0 = _proc_cpu_seconds(proc.pid)
    async with client:
        with trio.move_on_at(until):
            async with trio.open_nursery() as nursery:
                for task in tasks:
                    nursery.start_soon(task)
        rec.cpu_client = time.process_time() - cpu0
        rec.wall = time.perf_counter() - wall0
        mock_cpu1 = _proc_cpu_seconds(proc.pid)
        if mock_cpu0 is not None and mock_cpu1 is not None:
            rec.cpu_mock = mock_cpu1 - mock_cpu0
        rec.loadavg = os.getloadavg()[0]
        transport = client._transport  # only to count connections
        if isinstance(transport, FreeListTransport):
            rec.connections = transport.connections
        async with httpx.AsyncClient(base_url=base_url, trust_env=False) as stats_client:
            rec.mock_stats = (await stats_client.get("/_mock/stats")).json()


async def run_one(scn: Scenario, contender: str, seed: int,
                  client_kind: str = "freelist") -> RunRecord:
    proc, port, t0 = await _start_mock(scn.mock_args(seed))
    rec = RunRecord(scn.name, contender, scn.duration)
    try:
        base_url = f"http://127.0.0.1:{port}"
        cfg = UpstreamConfig(
            name="bench", base_url=base_url, initial_limit=1, min_limit=1,
            max_limit=max(MAX_LIMIT, scn.fixed4x()), max_attempts=1_000_000, timeout=60.0,
            retry_base_delay=0.05, retry_max_delay=1.0,
        )
        limit = make_limit(contender, scn)
        client = make_client(cfg, client_kind)
        upstream = Upstream(cfg, client, limit=limit, rng=random.Random(seed))
        rec.limits.append((0.0, limit.limit))
        _subscribe(rec, t0, limit, upstream, paced=uses_gate(contender))
        if not uses_gate(contender):
            upstream.gate = OpenGate()  # type: ignore[assignment]
        ids = itertools.count()

        async def worker() -> None:
            await _worker(upstream, rec, ids, BODY)

        async def sampler() -> None:
            await _sampler(upstream, rec, t0)

        async def follow_schedule() -> None:
            """The steps' oracle knows the schedule: no algorithm could do better."""
            assert isinstance(limit, FixedLimit)
            for at, cap in scn.caps[1:]:
                await trio.sleep_until(t0 + at)
                limit.set(cap, trio.current_time(), "schedule")

        schedule = contender == "oracle" and scn.steps and isinstance(limit, FixedLimit)
        await _drive(rec, proc, client, base_url, t0 + scn.duration,
                     [sampler, *([follow_schedule] if schedule else []),
                      *[worker] * scn.workers()])
    finally:
        with trio.CancelScope(shield=True):
            await _stop_mock(proc)
    rec.limits.sort()
    return rec


# ----------------------------------------------------------------------------- figures


def _costs(rec: RunRecord) -> dict[str, Any]:
    """What a run cost: CPU shares of the wall time, the loop's lag p99, load, connections."""
    lags = sorted(rec.lags)
    return {
        "cpu_client": rec.cpu_client / rec.wall if rec.wall else None,
        "cpu_mock": None if rec.cpu_mock is None else rec.cpu_mock / rec.wall,
        "loop_lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))] if lags else None,
        "loadavg_1m": rec.loadavg,
        "client_connections": rec.connections,
    }


def _mean_limit(limits: Sequence[tuple[float, int]], t0: float, t1: float) -> float:
    """Time-weighted mean of a step function over ``[t0, t1)``."""
    value = limits[0][1]
    for at, v in limits:
        if at > t0:
            break
        value = v
    points = [(t0, value), *((t, v) for t, v in limits if t0 < t < t1)]
    total = 0.0
    for (t, v), (t_next, _) in itertools.pairwise([*points, (t1, 0)]):
        total += v * (t_next - t)
    return total / (t1 - t0)


def _ratio(v: float | None, by: float) -> float | None:
    return None if v is None else v / by


class Analysis:
    """Figures of one :class:`RunRecord` (see the module docstring for definitions)."""

    def __init__(self, scn: Scenario, rec: RunRecord) -> None:
        self.scn, self.rec = scn, rec
        self.ok = [(s, e) for s, e, why in rec.attempts if why == "ok"]
        n = math.ceil(rec.duration / GRID) + 2
        diff = [0] * (n + 1)
        for s, e in self.ok:
            diff[min(n, max(0, math.ceil(s / GRID)))] += 1
            diff[min(n, max(0, math.ceil(e / GRID)))] -= 1
        self.served = list(itertools.accumulate(diff))  # served[k]: at t = k * GRID

    def limit_at(self, t: float) -> int:
        value = self.rec.limits[0][1]
        for at, v in self.rec.limits:
            if at > t:
                break
            value = v
        return value

    def goodput(self, t0: float, t1: float) -> float:
        return sum(1 for _, e in self.ok if t0 <= e < t1) / (t1 - t0)

    def share_429(self, t0: float, t1: float) -> float:
        started = [why for s, _, why in self.rec.attempts if t0 <= s < t1]
        return sum(1 for why in started if why == "rate_limited") / max(1, len(started))

    def latency_quantile(self, t0: float, t1: float, q: float) -> float | None:
        lat = sorted(e - s for s, e in self.ok if t0 <= e < t1)
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

    def median_latency(self, t0: float, t1: float) -> float | None:
        lat = [e - s for s, e in self.ok if t0 <= e < t1]
        return statistics.median(lat) if lat else None

    def mean_served(self, t0: float, t1: float) -> float:
        cells = self.served[round(t0 / GRID):round(t1 / GRID)]
        return sum(cells) / max(1, len(cells))

    def limit_holds(self, t0: float, t1: float, ok: Callable[[int], bool]) -> bool:
        return ok(self.limit_at(t0)) and all(
            ok(v) for at, v in self.rec.limits if t0 < at <= t1)

    def first_limit_hold(self, ts: float, until: float,
                         ok: Callable[[int], bool]) -> float | None:
        """First t in [ts, until - HOLD] from which the limit satisfies ``ok`` for HOLD s."""
        for t in [ts, *(at for at, _ in self.rec.limits if ts < at <= until - HOLD)]:
            if t + HOLD <= until + 1e-9 and self.limit_holds(t, t + HOLD, ok):
                return t
        return None

    def first_served(self, ts: float, until: float, ok: Callable[[float], bool]) -> float | None:
        """First t on a 50 ms grid in [ts, until - HOLD] whose mean served concurrency
        over [t, t + HOLD] satisfies ``ok``."""
        for k in itertools.count():
            t = ts + 0.05 * k
            if t + HOLD > until + 1e-9:
                return None
            if ok(self.mean_served(t, t + HOLD)):
                return t
        return None  # not reached

    def cold_start(self) -> tuple[float | None, float | None]:
        """Round trips from the first attempt to (touch) the limit first reaching the
        first cap, and (settle) the first time from which it stays within +-10 % of
        it for HOLD s (before the first step); None when it did not happen."""
        if self.rec.contender not in ADAPTIVE or not self.rec.attempts or not self.scn.caps:
            return None, None
        first = min(s for s, _, _ in self.rec.attempts)
        cap = self.scn.first_cap()
        until = self.scn.steps[0][0] if self.scn.steps else self.rec.duration
        touched = next((t for t, v in self.rec.limits if v >= cap), None)
        settled = self.first_limit_hold(
            0.0, until, lambda v: 0.9 * cap - 1e-9 <= v <= 1.1 * cap + 1e-9)

        def rt(t: float | None) -> float | None:
            return None if t is None else max(0.0, t - first) / self.scn.latency

        return rt(touched), rt(settled)

    def figures(self) -> dict[str, Any]:
        scn, rec = self.scn, self.rec
        w0, w1 = scn.window
        capacity = scn.capacity(w0, w1)
        good = self.goodput(w0, w1)
        median = self.median_latency(w0, w1)
        out: dict[str, Any] = {
            "window_s": [w0, w1],
            "goodput_rps": good,
            "capacity_rps": capacity,
            "goodput_share": good / capacity,
            "share_429_window": self.share_429(w0, w1),
            "share_429_all": self.share_429(0.0, rec.duration),
            "attempts": len(rec.attempts),
            "successes": len(self.ok),
            "rate_limited": sum(1 for *_, why in rec.attempts if why == "rate_limited"),
            "other_outcomes": sorted({why for *_, why in rec.attempts} - {"ok", "rate_limited"}),
            "failed_requests": rec.failed,
            "median_latency_s": median,
            "median_latency_x": None if median is None else median / scn.latency,
            "p90_latency_x": _ratio(self.latency_quantile(w0, w1, 0.9), scn.latency),
            "p99_latency_x": _ratio(self.latency_quantile(w0, w1, 0.99), scn.latency),
            "median_request_time_s": (statistics.median(rec.request_times)
                                      if rec.request_times else None),
            "mean_served_window": self.mean_served(w0, w1),
            "mean_limit_window": _mean_limit(rec.limits, w0, w1),
            "final_limit": rec.limits[-1][1],
            "limit_changes": len(rec.limits) - 1,
            "cold_start_touch_rt": self.cold_start()[0],
            "cold_start_rt": self.cold_start()[1],
            "gate_pauses": len(rec.pauses),
            "gate_paused_s": sum(d for _, d, _ in rec.pauses),
            "gate_rate_changes": len(rec.rates),
            "gate_final_rate": rec.rates[-1][1] if rec.rates else None,
            **_costs(rec),
            "mock_max_in_service": rec.mock_stats.get("max_in_service"),
            "mock_rate_limited": rec.mock_stats.get("rate_limited"),
            "mock_ok": rec.mock_stats.get("ok"),
            "steps": [],
        }
        ends = [*(t for t, _, _ in scn.steps[1:]), rec.duration][:len(scn.steps)]
        for (ts, old, new), until in zip(scn.steps, ends, strict=True):
            def band(v: float, c: int = new) -> bool:
                return 0.9 * c - 1e-9 <= v <= 1.1 * c + 1e-9

            def at_least(v: float, c: int = new) -> bool:
                return v >= 0.9 * c - 1e-9

            found = {
                "limit_within_10pct_s": self.first_limit_hold(ts, until, band),
                "limit_at_least_90pct_s": self.first_limit_hold(ts, until, at_least),
                "served_within_10pct_s": self.first_served(ts, until, band),
                "served_at_least_90pct_s": self.first_served(ts, until, at_least),
            }
            step: dict[str, Any] = {
                "at_s": ts, "until_s": until, "from": old, "to": new, "latency": scn.latency,
                "kind": "drop" if new < old else "rise",
                **{k: None if v is None else v - ts for k, v in found.items()},
                "measurable_until_s": until - HOLD - ts,
                "rate_limited_in_segment": sum(
                    1 for s, _, why in rec.attempts if ts <= s < until and why == "rate_limited"),
                "rate_limited_first_10rt": sum(
                    1 for s, _, why in rec.attempts
                    if ts <= s < ts + 10 * scn.latency and why == "rate_limited"),
                "mean_limit_last_half": _mean_limit(rec.limits, (ts + until) / 2, until),
                "mean_served_last_half": self.mean_served((ts + until) / 2, until),
            }
            measure = step["limit_within_10pct_s" if new < old else "served_at_least_90pct_s"]
            step["converged_s"] = measure
            step["converged_rt"] = None if measure is None else measure / scn.latency
            out["steps"].append(step)
        return out

    def per_second(self) -> dict[str, list[int]]:
        n = math.ceil(self.rec.duration)
        ok, limited = [0] * n, [0] * n
        for _, e, why in self.rec.attempts:
            if why == "ok":
                ok[min(n - 1, int(e))] += 1
            elif why == "rate_limited":
                limited[min(n - 1, int(e))] += 1
        return {"ok": ok, "rate_limited": limited}


def check_targets(scn: Scenario, f: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(figure, target, met)`` for one adaptive contender's figures in ``scn``."""
    def ok(v: float | None, pred: Callable[[float], bool]) -> bool:
        return v is not None and pred(v)

    checks: list[tuple[str, str, bool]] = []
    if scn.name == "cap":
        checks += [
            (f"goodput {_pct(f['goodput_share'])} of C/L", ">= 95 %",
             f["goodput_share"] >= 0.95),
            (f"429s {_pct(f['share_429_window'], 2)}", "<= 2 %",
             f["share_429_window"] <= 0.02),
            (f"cold start settled in {_num(f['cold_start_rt'])} RT "
             f"(touched in {_num(f['cold_start_touch_rt'])})", "<= 10 RT",
             ok(f["cold_start_rt"], lambda v: v <= 10)),
        ]
    for step in f["steps"]:
        label = f"{step['from']}->{step['to']}"
        if step["kind"] == "drop":
            checks.append((f"drop {label} {_step(step, rt=True)} RT", "<= 10 RT",
                           ok(step["converged_rt"], lambda v: v <= 10)))
        else:
            checks.append((f"rise {label} {_step(step)} s", "<= 5 s",
                           ok(step["converged_s"], lambda v: v <= 5)))
    if scn.knee is not None:
        checks += [
            (f"median latency {_num(f['median_latency_x'], 2)}x L", "<= 1.5x",
             ok(f["median_latency_x"], lambda v: v <= 1.5)),
            (f"goodput {_pct(f['goodput_share'])} of best", ">= 90 %",
             f["goodput_share"] >= 0.90),
            (f"{f['rate_limited']} 429s", "none", f["rate_limited"] == 0),
        ]
    return checks


# ----------------------------------------------------------------------------- output


def _pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _step(step: dict[str, Any], rt: bool = False) -> str:
    """A step's convergence, or ``>X`` when it did not happen within the segment."""
    if step["converged_s"] is None:
        limit = step["measurable_until_s"]
        return f">{limit / (step['latency'] if rt else 1):.1f}" if limit > 0 else "never"
    return f"{step['converged_rt' if rt else 'converged_s']:.1f}"


COLUMNS = (
    ("scenario", 8), ("contender", 13), ("goodput/s", 9), ("% cap", 6), ("% orcl", 6), ("429 %", 6),
    ("429 all", 7), ("lat p50/90", 10), ("req p50", 7), ("cold RT", 9), ("drop s/RT", 10),
    ("rise s", 6), ("cpu cli/mock", 12), ("lag99", 5),
)
TARGETS = {
    "cap": {"% cap": ">=95%", "429 %": "<=2%", "cold RT": "-/<=10"},
    "steps": {"drop s/RT": "<=10 RT", "rise s": "<=5"},
    "knee": {"% cap": ">=90%", "429 all": "0", "lat p50/90": "<=1.5/-"},
}


def _row(cells: Sequence[str], columns: Sequence[tuple[str, int]] = COLUMNS) -> str:
    return " ".join(
        f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
        for i, (c, (_, w)) in enumerate(zip(cells, columns, strict=True))
    ).rstrip()


def _header(columns: Sequence[tuple[str, int]] = COLUMNS) -> list[str]:
    """The table's header line and its rule."""
    header = _row([name for name, _ in columns], columns)
    return [header, "-" * len(header)]


def _verdict_lines(name: str, targets: dict[str, str],
                   verdicts: dict[str, list[tuple[str, str, bool]]], indent: int,
                   columns: Sequence[tuple[str, int]] = COLUMNS) -> list[str]:
    """A scenario's target row, then each checked contender's PASS/FAIL and details."""
    lines = [_row([name, "target", *(targets.get(col, "") for col, _ in columns[2:])],
                  columns)]
    for contender, checks in verdicts.items():
        status = "PASS" if all(met for *_, met in checks) else "FAIL"
        detail = "; ".join(f"{fig} ({tgt}){'' if met else ' MISSED'}"
                           for fig, tgt, met in checks)
        lines.append(f"{'':{indent}}{contender} {status}: {detail}")
    return lines


def table(scns: dict[str, Scenario], results: dict[str, dict[str, dict[str, Any]]],
          verdicts: dict[str, dict[str, list[tuple[str, str, bool]]]]) -> str:
    lines = _header()
    for name, per in results.items():
        scn = scns[name]
        for contender, f in per.items():
            drops = [s for s in f["steps"] if s["kind"] == "drop"]
            rises = [s for s in f["steps"] if s["kind"] == "rise"]
            drop = ", ".join(
                f"{_step(s)}/{_step(s, rt=True)}" if s["converged_s"] is not None
                else _step(s) for s in drops) or "-"
            rise = ", ".join(_step(s) for s in rises) or "-"
            lines.append(_row([
                name, contender, f"{f['goodput_rps']:.1f}", _pct(f["goodput_share"]),
                _pct(f.get("goodput_vs_oracle"), 0),
                _pct(f["share_429_window"], 2), _pct(f["share_429_all"], 2),
                f"{_num(f['median_latency_x'], 2)}/{_num(f['p90_latency_x'], 2)}",
                _num(f["median_request_time_s"], 2),
                (f"{_num(f['cold_start_touch_rt'])}/{_num(f['cold_start_rt'])}"
                 if f["cold_start_touch_rt"] is not None or f["cold_start_rt"] is not None
                 else "-"), drop, rise,
                f"{_pct(f['cpu_client'], 0)}/{_pct(f['cpu_mock'], 0)}",
                _num(f["loop_lag_p99_ms"], 0),
            ]))
        lines += _verdict_lines(name, TARGETS[name], verdicts[name], 9)
        lines.append(f"{'':9}[{scn.title}; window {scn.window[0]:g}-{scn.window[1]:g} s; "
                     f"capacity {scn.capacity(*scn.window):.1f} req/s; oracle {scn.oracle()}, "
                     f"fixed-4x {scn.fixed4x()}; {scn.workers()} workers]")
        lines.append("")
    return "\n".join(lines)


def _figure(rows: int, row_height: float, title: str) -> tuple[Any, Any]:
    """A figure of ``rows`` panels, one above the other, and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 1.0 + row_height * max(1, rows)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, rows), 1, squeeze=False)[:, 0]
    fig.suptitle(title)
    return fig, axes


def _gather_legend(legend: dict[str, Any], *axes: Any) -> None:
    """Add the axes' labelled artists to ``legend``, the first of each label."""
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)


def _finish(fig: Any, axes: Any, legend: dict[str, Any], output: Path) -> None:
    """Label the time axis, put the shared legend below, and save."""
    axes[-1].set_xlabel("seconds since the mock started")
    fig.legend(list(legend.values()), list(legend), loc="outside lower center",
               ncols=min(len(legend), 4), fontsize=8, frameon=False)
    fig.savefig(output)


def draw(scns: dict[str, Scenario], records: dict[str, dict[str, RunRecord]],
         output: Path) -> None:
    names = [n for n in records if "pacer" in records[n]]
    fig, axes = _figure(len(names), 3.2,
                        "pacer's concurrency limit against the mock API (real time, loopback)")
    legend: dict[str, Any] = {}
    for ax, name in zip(axes, names, strict=False):
        scn, rec = scns[name], records[name]["pacer"]
        if scn.caps:
            cpts = [*scn.caps, (rec.duration, scn.caps[-1][1])]
            ax.step([t for t, _ in cpts], [c for _, c in cpts], where="post", color="black",
                    ls="--", lw=1.2, label="mock's hidden cap")
        else:
            ax.axhline(scn.oracle(), color="black", ls="--", lw=1.2,
                       label="best concurrency within 1.5x latency (knee)")
            ax.axhline(scn.knee or 0, color="0.4", ls=":", lw=1.0, label="knee K")
        other = records[name].get("aimd-only")
        if other is not None:
            pts = [*other.limits, (other.duration, other.limits[-1][1])]
            ax.step([t for t, _ in pts], [v for _, v in pts], where="post",
                    color="tab:purple", lw=1.0, alpha=0.7, label="aimd-only's limit")
        pts = [*rec.limits, (rec.duration, rec.limits[-1][1])]
        ax.step([t for t, _ in pts], [v for _, v in pts], where="post", color="tab:blue",
                lw=1.8, label="pacer's limit")
        ax.plot([s[0] for s in rec.samples], [s[2] for s in rec.samples],
                color="tab:green", lw=0.9, alpha=0.8, label="pacer's attempts sent (10 Hz)")
        for i, (at, _, _) in enumerate(rec.pauses):
            ax.axvline(at, color="tab:orange", lw=1.0, ls="-.",
                       label="pacer's gate pauses" if i == 0 else None)
        ax.set_ylabel("concurrency")
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, rec.duration)
        ax.grid(True, alpha=0.3)
        ax2 = ax.twinx()
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        counts = Analysis(scn, rec).per_second()["rate_limited"]
        ax2.bar(range(len(counts)), counts, width=1.0, align="edge", color="tab:red",
                alpha=0.35, label="pacer's 429s per second")
        ax2.set_ylabel("429s per second")
        ax2.set_ylim(bottom=0, top=max(1, max(counts, default=0)) * 1.15 + 1)
        ax.set_title(f"{name}: {scn.title}", loc="left", fontsize=10)
        _gather_legend(legend, ax, ax2)
    _finish(fig, axes, legend, output)


# ----------------------------------------------------------------------------- main


async def bench(scns: dict[str, Scenario], contenders: Sequence[str], seed: int,
                client_kind: str) -> dict[str, Any]:
    records: dict[str, dict[str, RunRecord]] = {}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    series: dict[str, dict[str, Any]] = {}
    for name, scn in scns.items():
        records[name], results[name], series[name] = {}, {}, {}
        for contender in contenders:
            print(f"running {name} / {contender} ({scn.duration:g} s) ...", file=sys.stderr,
                  flush=True)
            rec = await run_one(scn, contender, seed, client_kind)
            records[name][contender] = rec
            an = Analysis(scn, rec)
            results[name][contender] = an.figures()
            series[name][contender] = {
                "limit": rec.limits,
                "samples_10hz": [[round(t, 3), held, sent, lim]
                                 for t, held, sent, lim in rec.samples],
                "per_second": an.per_second(),
                "gate_pauses": rec.pauses,
                "gate_rates": rec.rates,
            }
        _vs_oracle(results[name])
    verdicts = {name: {c: check_targets(scns[name], results[name][c])
                       for c in contenders if c in CHECKED} for name in scns}
    return {"records": records, "results": results, "series": series, "verdicts": verdicts}


def _vs_oracle(results: dict[str, dict[str, Any]]) -> None:
    """Each contender's goodput as a share of the oracle's, where the oracle ran."""
    oracle = results.get("oracle")
    for figures in results.values():
        figures["goodput_vs_oracle"] = (
            figures["goodput_rps"] / oracle["goodput_rps"]
            if oracle and oracle["goodput_rps"] else None)


def _busy(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The runs whose event loop lagged past BUSY_LAG_MS, with the lag and the load."""
    return [f"{n}/{c} ({f['loop_lag_p99_ms']:.0f} ms, load {f['loadavg_1m']:.1f})"
            for n, per in results.items() for c, f in per.items()
            if f["loop_lag_p99_ms"] is not None and f["loop_lag_p99_ms"] > BUSY_LAG_MS]


def _targets_doc(verdicts: dict[str, list[tuple[str, str, bool]]]) -> dict[str, Any]:
    """A scenario's verdicts as JSON."""
    return {c: [{"figure": fig, "target": tgt, "met": met} for fig, tgt, met in checks]
            for c, checks in verdicts.items()}


def _measured(git: dict[str, Any]) -> str:
    """``measured: commit ...``, with the uncommitted source files if any."""
    return (f"measured: commit {git['commit'][:12]}"
            + (f" + uncommitted changes in {', '.join(git['uncommitted_in_src'])}"
               if git["uncommitted_in_src"] else ""))


def _print_outcome(verdicts: dict[str, dict[str, list[tuple[str, str, bool]]]],
                   checked: Sequence[str]) -> None:
    """One line per checked contender: all targets met, or the scenarios it missed."""
    for contender in checked:
        missed = [n for n, per in verdicts.items()
                  if contender in per and not all(m for *_, m in per[contender])]
        if any(contender in per for per in verdicts.values()):
            print(f"{contender}: " + ("all targets met" if not missed
                                      else f"missed targets in {', '.join(missed)}"))


def _git_state() -> dict[str, Any]:
    """The commit measured, and which source files differed from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_in_src": dirty}


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark pacer's adaptive limit against fixed baselines "
                    "(see the module docstring).")
    parser.add_argument("--quick", action="store_true", help="halve every duration")
    parser.add_argument("--scenario", action="append", choices=sorted(scenarios(1.0)),
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--contender", action="append", choices=ALL_CONTENDERS,
                        help=f"run only this contender (repeatable; default: "
                             f"{', '.join(CONTENDERS)})")
    parser.add_argument("--duration", type=float, default=None,
                        help=f"seconds per run, scaling the schedule too (default "
                             f"{DURATION:g}, {DURATION / 2:g} with --quick)")
    parser.add_argument("--seed", type=int, default=1, help="the mock's --seed and the rng's")
    parser.add_argument("--client", choices=("freelist", "build"), default="freelist",
                        help="HTTP client: build_client's settings over FreeListTransport "
                             "(default), or build_client itself")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)
    scale = (args.duration / DURATION if args.duration is not None
             else 0.5 if args.quick else 1.0)
    all_scns = scenarios(scale)
    scns = {n: all_scns[n] for n in (args.scenario or all_scns)}
    contenders = [c for c in ALL_CONTENDERS if c in (args.contender or CONTENDERS)]
    configure_logging(level="error", stream=sys.stderr)
    started = time.perf_counter()
    git = _git_state()
    run = trio.run(bench, scns, contenders, args.seed, args.client)
    wall = time.perf_counter() - started
    results, verdicts = run["results"], run["verdicts"]
    print(table(scns, results, verdicts))
    busy = _busy(results)
    if busy:
        print(f"warning: the bench's event loop lagged (p99 > {BUSY_LAG_MS:g} ms) in "
              f"{', '.join(busy)}: its own load or other work on the machine slowed the "
              f"client there, read those rows with care")
    args.out.mkdir(parents=True, exist_ok=True)
    argv_shown = list(argv) if argv is not None else sys.argv[1:]
    doc = {
        "command": " ".join(["bench/limit_bench.py", *argv_shown]),
        "seed": args.seed,
        "client": args.client,
        "git": git,
        "wall_s": wall,
        "retry_after_s": RETRY_AFTER,
        "scenarios": {
            name: {
                "title": scn.title, "latency_s": scn.latency, "duration_s": scn.duration,
                "caps": scn.caps, "knee": scn.knee, "knee_slope": scn.knee_slope,
                "window_s": scn.window, "capacity_rps": scn.capacity(*scn.window),
                "oracle_limit": scn.oracle(), "fixed4x_limit": scn.fixed4x(),
                "workers": scn.workers(), "mock_args": scn.mock_args(args.seed),
                "targets": _targets_doc(verdicts[name]),
                "contenders": results[name],
                "series": run["series"][name],
            }
            for name, scn in scns.items()
        },
    }
    json_path = args.out / "limit_bench.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    png_path = args.out / "limit_bench.png"
    draw(scns, run["records"], png_path)
    print(f"wall time {wall:.0f} s; wrote {_shown(json_path)} and {_shown(png_path)}")
    if git["commit"]:
        print(_measured(git))
    _print_outcome(verdicts, CHECKED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
