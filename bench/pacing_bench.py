"""Benchmark of pacer's pacing gate (rate caps, quotas in headers, outages), in real time.

Run from the repository root::

    .venv/bin/python bench/pacing_bench.py [--quick] [--scenario NAME] [--contender NAME]

The companion of ``bench/limit_bench.py`` (concurrency caps), whose machinery it
imports: the mock API subprocess (``python -m pacer.mockapi`` on 127.0.0.1, fixed
``--seed``), the HTTP client (:class:`limit_bench.FreeListTransport`: build_client's
settings, one keep-alive connection per request in flight), :class:`limit_bench.RunRecord`
and :class:`limit_bench.Analysis` (goodput, 429 share, latency, per-second counts),
the never-waiting gate, the CPU / loop-lag bookkeeping and the git state. For every
scenario and contender a fresh mock is started and a :class:`pacer.service.upstream.Upstream`
(the daemon's sender: limiter, pacing gate, breaker, retries honouring Retry-After)
sends to it from ``4 x C + 50`` worker tasks (``C``, below), each awaiting
``upstream.send(request)`` in a loop, for a fixed duration.

Every run happens in a child process of its own (this script with ``--child``), which
prints its record as JSON. The CPU-sensitive rate scenarios run their contenders one
after another; ``tpm`` and the outages, whose targets are in seconds and whose rates
are modest, run their three contenders at once (each its own client process and
mock), which keeps the whole run under ~8 minutes. The CPU share and the event loop's
lateness of every run are recorded (and warned about when high).

Contenders
----------
* ``pacer``: the sender as shipped: :class:`pacer.control.aimd.AimdLimit` from
  ``initial_limit = 1`` and the pacing gate (:mod:`pacer.control.pacing`), never told the
  rate. Its targets are checked.
* ``oracle``: the best fixed setting for the scenario: a client-side rate limiter at
  the capacity (starts evenly spaced at exactly R per second, FIFO; TPM: the refill
  rate / the known cost of a request) under a fixed concurrency ``2 x C + 4``, where
  ``C = ceil(capacity x L)`` is the concurrency that exactly matches rate x latency.
  (Its FIFO spaces every start, including those of requests the breaker's opening
  then revokes, so its first half-open probe waits for the queue: ~3 s at 82
  workers, which shifts its cool-down cycles in the outages.)
* ``fixed-4x``: ``FixedLimit(4 x C)`` without a gate: a semaphore told 4x too
  high, relying on the jittered retries that honour Retry-After.
* ``aimd-only`` (only with ``--contender``): pacer's limit without the gate.

Mock and client settings, and why
---------------------------------
* ``R = 20`` requests/s, latency ``L = 0.4 s`` +-0.04 (uniform), so ``C = 8``,
  82 workers: the rates asked of the client stay far below what httpx does on the
  2-core machine this was written on (limit_bench explains the constraints); the
  latency jitter keeps starts from moving in lockstep.
* ``--retry-after 0.2`` on the mock's rate 429s, as in limit_bench (the TPM 429s
  carry the mock's own exact wait until enough tokens).
* Rate and TPM scenarios: limit_bench's client settings (``max_attempts`` 10^6,
  ``retry_base_delay`` 0.05, ``retry_max_delay`` 1): nothing fails, goodput and
  429s are measured. Outages: pacer's defaults (``max_attempts`` 5,
  ``retry_base_delay`` 0.5, ``retry_max_delay`` 30, ``give_up_after`` 600, breaker
  defaults): the claim "an outage shorter than give_up_after fails no request" is
  about the configuration users get.
* A request body of known token cost: ``max_tokens`` 84 + 64 characters of prompt =
  100 tokens, by both pacer's :func:`~pacer.control.tokens.estimate_tokens` and the mock's
  :func:`~pacer.mockapi.token_cost` (checked at import).

Scenarios (``--quick`` halves every time except tpm's, which needs its minute)
-----------------------------------------------------------------------------
* ``hidden-rate``: ``--rate 20 --header-style none``, 30 s: 429s are the only signal.
  Targets: goodput >= 90 % of R, 429s <= 5 % of the attempts (window).
* ``openai-rate``: ``--rate 20 --header-style openai``, 30 s: the requests quota is
  announced (limit 20, remaining, time until full). Targets: goodput >= 97 % of
  R, 429s <= 0.5 % of the attempts (window).
* ``tpm``: ``--tpm 30000 --header-style openai``, 100 s (quick: 70): 100-token
  requests, so the refill allows 5 req/s; the bucket starts full (300 requests).
  Target: no 429 received after the first minute.
* ``outage-503`` / ``outage-refuse``: ``--rate 20 --header-style openai`` and
  ``--outage 10:40:503`` (every request a 503 after 10 ms) or ``10:40:refuse``
  (listening socket closed), healthy again from 40 s; 60 s. The breaker's
  transitions are captured by subscribing to ``upstream.breaker``. Targets: at most
  one attempt started per cool-down cycle (from a move to ``open`` to the next move
  to ``open`` or ``closed``; the probe of the half-open state included) and none
  while strictly open; full rate again within 10 s of the recovery; no request fails.

Definitions (times in seconds since the mock started)
-----------------------------------------------------
* **window**: rate scenarios: the last two thirds of the run; tpm: from 60 s; outages:
  from the end of the outage (E) to the end of the run.
* **goodput**: successful attempts completed within the window, per second; **% cap**:
  over the capacity (R; tpm: the refill, 5 req/s), which the mock's burst (its bucket
  starts full and refills during pauses: R requests; tpm: 300) can push past 100 %
  by up to burst / window; **% orcl**: over the oracle's.
* **429 %**: 429s among the attempts *started* within the window; **429 all**: whole run.
* **429>60s**: 429s received at or after 60 s (tpm's target).
* **full again**: the end of the first 2-s window starting at or after E whose goodput
  is at least 90 % of the run's own goodput over ``[0.4 x S, S)`` before the outage
  (S its start), as seconds after E (so 2.0 is the best possible reading).
* **probes**: the most attempts started in one cool-down cycle / attempts started while
  strictly open (before the cool-down elapsed), over all cycles.
* **failed**: requests whose final answer was an error (requests cut by the end of
  the run are not counted).
* **limit**: pacer's concurrency limit, time-mean over the window; **rate**: the
  request rate the gate learned from 429s at the end (``-``: none learned).
* **cpu** / **lag99**: as limit_bench (client / mock CPU share; p99 of the 10 Hz
  sampler's oversleep, ms).

Outputs: the table on stdout with PASS/FAIL per target for pacer,
``bench/out/pacing_bench.json`` (every figure, the series, the breaker transitions,
the git commit and uncommitted source files, a digest of ``src/pacer`` per run) and
``bench/out/pacing_bench.png`` (per scenario: pacer's goodput and 429s per second,
its concurrency limit, learned rate and pace in force, the oracle's goodput, the
capacity, the outage and pacer's breaker-open periods shaded).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from limit_bench import (
    BUSY_LAG_MS,
    RETRY_AFTER,
    Analysis,
    OpenGate,
    RunRecord,
    _busy,
    _costs,
    _drive,
    _figure,
    _finish,
    _gather_legend,
    _git_state,
    _header,
    _measured,
    _num,
    _pct,
    _print_outcome,
    _sampler,
    _shown,
    _start_mock,
    _stop_mock,
    _subscribe,
    _targets_doc,
    _verdict_lines,
    _vs_oracle,
    _worker,
    make_client,
)
from limit_bench import _row as _limit_row

from pacer.config import UpstreamConfig
from pacer.control.aimd import AimdLimit, AimdSettings
from pacer.control.breaker import BreakerTransition
from pacer.control.limit import FixedLimit, Limit
from pacer.control.tokens import estimate_tokens
from pacer.logs import configure_logging
from pacer.mockapi import token_cost
from pacer.service.upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path(__file__).resolve().parent / "out"
RATE = 20.0
LATENCY = 0.4
JITTER = 0.04
TPM = 30_000
TOKEN_COST = 100
BODY = {"model": "mock", "messages": [{"role": "user", "content": "x" * 64}], "max_tokens": 84}
RATE_DURATION = 30.0
TPM_DURATION = 100.0
TPM_QUICK_DURATION = 70.0
TPM_GRACE = 60.0  # "no 429s after the first minute"
OUTAGE = (10.0, 40.0)
OUTAGE_DURATION = 60.0
RECOVERY_SPAN = 2.0  # the window over which "full rate again" is judged
RECOVERY_SHARE = 0.9  # of the goodput before the outage
RECOVERY_TARGET = 10.0
MAX_LIMIT = 256
CONTENDERS = ("pacer", "oracle", "fixed-4x")
ALL_CONTENDERS = (*CONTENDERS, "aimd-only")
CHECKED = ("pacer",)
ADAPTIVE = ("pacer", "aimd-only")
# The bench's own budget for one child run beyond its duration (start-up, shutdown).
CHILD_SLACK = 60.0

if estimate_tokens(BODY) != TOKEN_COST or token_cost(json.dumps(BODY).encode()) != TOKEN_COST:
    raise SystemExit("pacing_bench: BODY no longer costs TOKEN_COST tokens on both sides")


# ----------------------------------------------------------------------------- scenarios


@dataclass(frozen=True, slots=True)
class Scenario:
    """One mock configuration; times already scaled."""

    name: str
    title: str
    duration: float
    header_style: str
    rate: float | None = None
    tpm: int | None = None
    outage: tuple[float, float, str] | None = None
    parallel: bool = False  # run the contenders at once
    defaults: bool = False  # pacer's default retry settings
    latency: float = LATENCY
    jitter: float = JITTER

    def mock_args(self, seed: int) -> list[str]:
        args = ["--latency", f"{self.latency:g}", "--jitter", f"{self.jitter:g}",
                "--seed", str(seed), "--retry-after", f"{RETRY_AFTER:g}",
                "--header-style", self.header_style]
        if self.rate is not None:
            args += ["--rate", f"{self.rate:g}"]
        if self.tpm is not None:
            args += ["--tpm", str(self.tpm)]
        if self.outage is not None:
            start, end, kind = self.outage
            args += ["--outage", f"{start:g}:{end:g}:{kind}"]
        return args

    @property
    def capacity(self) -> float:
        """Requests per second the mock lets through in the long run."""
        if self.rate is not None:
            return self.rate
        assert self.tpm is not None
        return self.tpm / 60.0 / TOKEN_COST

    @property
    def window(self) -> tuple[float, float]:
        if self.outage is not None:
            return self.outage[1], self.duration
        if self.tpm is not None:
            return TPM_GRACE, self.duration
        return round(self.duration / 3.0, 3), self.duration

    def concurrency(self) -> int:
        """``C``: the concurrency that exactly matches the capacity x the latency."""
        return math.ceil(self.capacity * self.latency - 1e-9)

    def oracle_limit(self) -> int:
        return 2 * self.concurrency() + 4

    def fixed4x(self) -> int:
        return 4 * self.concurrency()

    def workers(self) -> int:
        return 4 * self.concurrency() + 50


def scenarios(scale: float) -> dict[str, Scenario]:
    def s(t: float) -> float:
        return round(t * scale, 3)

    lat = f"L={LATENCY:g}±{JITTER:g} s"
    rate = f"R={RATE:g}/s"
    o0, o1 = s(OUTAGE[0]), s(OUTAGE[1])
    tpm_duration = TPM_DURATION if scale >= 1.0 else TPM_QUICK_DURATION
    out: dict[str, Scenario] = {
        "hidden-rate": Scenario("hidden-rate", f"hidden rate cap {rate}, no headers, {lat}",
                                s(RATE_DURATION), "none", rate=RATE),
        "openai-rate": Scenario("openai-rate", f"rate cap {rate} in OpenAI headers, {lat}",
                                s(RATE_DURATION), "openai", rate=RATE),
        "tpm": Scenario("tpm", f"{TPM} tokens/min in OpenAI headers, {TOKEN_COST}-token "
                               f"requests (refill {TPM / 60 / TOKEN_COST:g} req/s), {lat}",
                        tpm_duration, "openai", tpm=TPM, parallel=True),
    }
    for kind in ("503", "refuse"):
        out[f"outage-{kind}"] = Scenario(
            f"outage-{kind}", f"outage {o0:g}-{o1:g} s ({kind}), {rate} in OpenAI headers, "
                              f"{lat}, pacer's default retry settings",
            s(OUTAGE_DURATION), "openai", rate=RATE, outage=(o0, o1, kind), parallel=True,
            defaults=True)
    return out


# ----------------------------------------------------------------------------- contenders


class RateGate:
    """The oracle's gate: a client-side rate limiter at ``rate`` starts per second,
    evenly spaced, FIFO, no burst credit. Has the part of
    :class:`~pacer.service.pacing_gate.PacingGate` that
    :class:`~pacer.service.upstream.Upstream` uses."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._interval = 1.0 / rate
        self._next = -math.inf
        self._lock = trio.Lock()
        self.waiting = 0

    async def wait(self, *_args: Any, **_kwargs: Any) -> bool:
        self.waiting += 1
        try:
            async with self._lock:
                now = trio.current_time()
                at = max(now, self._next)
                self._next = at + self._interval
                if at > now:
                    await trio.sleep_until(at)
                    return True
                await trio.lowlevel.checkpoint()
                return False
        finally:
            self.waiting -= 1

    def on_response(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def make_limit(contender: str, scn: Scenario) -> Limit:
    if contender in ADAPTIVE:
        return AimdLimit(AimdSettings(initial_limit=1, min_limit=1, max_limit=MAX_LIMIT))
    if contender == "oracle":
        return FixedLimit(scn.oracle_limit())
    return FixedLimit(scn.fixed4x())


def make_config(scn: Scenario, base_url: str) -> UpstreamConfig:
    if scn.defaults:  # pacer's defaults, but a cold start from limit 1 as everywhere
        return UpstreamConfig(name="bench", base_url=base_url, initial_limit=1, min_limit=1,
                              max_limit=max(MAX_LIMIT, scn.fixed4x()))
    return UpstreamConfig(name="bench", base_url=base_url, initial_limit=1, min_limit=1,
                          max_limit=max(MAX_LIMIT, scn.fixed4x()), max_attempts=1_000_000,
                          timeout=60.0, retry_base_delay=0.05, retry_max_delay=1.0)


# ----------------------------------------------------------------------------- one run


@dataclass(slots=True)
class PacingRecord(RunRecord):
    """limit_bench's record, plus what the pacing bench needs."""

    # t, from, to, reason, cool-down
    breaker: list[tuple[float, str, str, str, float | None]] = field(default_factory=list)
    failures: list[tuple[float, str, int]] = field(default_factory=list)  # t, code, attempts
    # t, learned rate, request pace in force, token pace in force (req/s for this body)
    paces: list[tuple[float, float | None, float | None, float | None]] = field(
        default_factory=list)
    src_digest: str = ""


def _src_digest() -> str:
    """A digest of ``src/pacer/*.py`` as this process found them (the tree moves)."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "src" / "pacer").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _paces(upstream: Upstream, now: float) -> tuple[float | None, float | None, float | None]:
    """The shipped gate's learned rate and the paces in force, read without moving its
    state (``status()`` would sync it); ``None`` where this tree's gate has no such
    thing. The oracle's pace is its fixed rate."""
    gate: Any = upstream.gate
    if isinstance(gate, RateGate):
        return None, gate.rate, None
    if isinstance(gate, OpenGate):
        return None, None, None
    pacer: Any = upstream.pacer
    learned = getattr(pacer, "learned_rate", None)
    try:
        req = pacer._request_rate_at(now)
        tok = pacer._token_rate_at(now)
    except (AttributeError, TypeError):
        return learned, None, None
    return learned, req, None if tok is None else tok / TOKEN_COST


async def run_one(scn: Scenario, contender: str, seed: int) -> PacingRecord:
    proc, port, t0 = await _start_mock(scn.mock_args(seed))
    rec = PacingRecord(scn.name, contender, scn.duration, src_digest=_src_digest())
    try:
        base_url = f"http://127.0.0.1:{port}"
        cfg = make_config(scn, base_url)
        limit = make_limit(contender, scn)
        client = make_client(cfg, "freelist")
        upstream = Upstream(cfg, client, limit=limit, rng=random.Random(seed))
        rec.limits.append((0.0, limit.limit))

        def on_breaker(t: BreakerTransition) -> None:
            rec.breaker.append((t.at - t0, str(t.from_state), str(t.to_state), t.reason,
                                t.cooldown))

        _subscribe(rec, t0, limit, upstream, paced=contender == "pacer")
        upstream.breaker.subscribe(on_breaker)
        if contender == "oracle":
            upstream.gate = RateGate(scn.capacity)  # type: ignore[assignment]
        elif contender != "pacer":
            upstream.gate = OpenGate()  # type: ignore[assignment]
        ids = iter(range(10**12))

        def on_failure(answer: Any) -> None:
            rec.failures.append((trio.current_time() - t0,
                                 "none" if answer is None else str(answer.error_code),
                                 0 if answer is None else answer.attempts))

        def on_sample(now: float) -> None:
            rec.paces.append((now - t0, *_paces(upstream, now)))

        async def worker() -> None:
            await _worker(upstream, rec, ids, BODY, on_failure)

        async def sampler() -> None:
            await _sampler(upstream, rec, t0, on_sample)

        await _drive(rec, proc, client, base_url, t0 + scn.duration,
                     [sampler, *[worker] * scn.workers()])
    finally:
        with trio.CancelScope(shield=True):
            await _stop_mock(proc)
    rec.limits.sort()
    return rec


def _child_cmd(name: str, contender: str, seed: int, quick: bool) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", f"{name}:{contender}",
            "--seed", str(seed), *(["--quick"] if quick else [])]


def run_children(scn: Scenario, contenders: Sequence[str], seed: int,
                 quick: bool) -> dict[str, PacingRecord]:
    """Run each contender in a child process: at once if the scenario says so, else
    one after the other."""
    batches = [list(contenders)] if scn.parallel else [[c] for c in contenders]
    records: dict[str, PacingRecord] = {}
    for batch in batches:
        print(f"running {scn.name} / {', '.join(batch)} ({scn.duration:g} s"
              f"{', at once' if len(batch) > 1 else ''}) ...", file=sys.stderr, flush=True)
        procs = {c: subprocess.Popen(_child_cmd(scn.name, c, seed, quick),
                                     stdout=subprocess.PIPE, cwd=ROOT) for c in batch}
        for contender, child in procs.items():
            try:
                out, _ = child.communicate(timeout=scn.duration + CHILD_SLACK)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                raise RuntimeError(f"{scn.name}/{contender}: the child run did not end") from None
            if child.returncode != 0:
                raise RuntimeError(f"{scn.name}/{contender}: the child run failed "
                                   f"(exit {child.returncode})")
            records[contender] = PacingRecord(**json.loads(out))
    return {c: records[c] for c in contenders}


# ----------------------------------------------------------------------------- figures


def _mean_step(points: Sequence[Sequence[float]], t0: float, t1: float) -> float | None:
    """Time-weighted mean over ``[t0, t1)`` of a step function given as ``(t, v)``."""
    if not points:
        return None
    value = points[0][1]
    for at, v in points:
        if at > t0:
            break
        value = v
    pts = [(t0, value), *((t, v) for t, v in points if t0 < t < t1), (t1, 0.0)]
    total = sum(v * (b - a) for (a, v), (b, _) in itertools.pairwise(pts))
    return total / (t1 - t0)


def breaker_cycles(rec: PacingRecord, duration: float) -> list[dict[str, Any]]:
    """Every cool-down cycle: from a move to ``open`` to the next move to ``open`` or
    ``closed`` (or the end of the run), with the attempts started in it (while
    strictly open, and in all)."""
    cycles: list[dict[str, Any]] = []
    moves = sorted(rec.breaker)
    for i, (at, _, to, reason, cooldown) in enumerate(moves):
        if to != "open":
            continue
        half = next((t for t, _, to2, _, _ in moves[i + 1:] if to2 == "half_open"), None)
        end = next((t for t, _, to2, _, _ in moves[i + 1:] if to2 in ("open", "closed")),
                   duration)
        if half is not None and half > end:
            half = None
        open_until = half if half is not None else end
        starts = [s for s, _, _ in rec.attempts if at < s <= end]
        cycles.append({
            "opened_at": at, "reason": reason, "cooldown_s": cooldown, "half_open_at": half,
            "ended_at": end, "attempts": len(starts),
            "attempts_while_open": sum(1 for s in starts if s < open_until),
        })
    return cycles


def open_periods(rec: PacingRecord, duration: float) -> list[tuple[float, float, str]]:
    """``(from, to, state)`` for every non-closed period of the breaker."""
    periods: list[tuple[float, float, str]] = []
    moves = sorted(rec.breaker)
    if not moves:
        return periods
    ends = [t for t, *_ in moves[1:]] + [duration]
    for (at, _, to, _, _), end in zip(moves, ends, strict=True):
        if to != "closed":
            periods.append((at, end, to))
    return periods


def figures(scn: Scenario, rec: PacingRecord) -> dict[str, Any]:
    an = Analysis(scn, rec)  # type: ignore[arg-type]  # reads only the record
    w0, w1 = scn.window
    good = an.goodput(w0, w1)
    median = an.median_latency(w0, w1)
    reasons: dict[str, int] = {}
    for *_, why in rec.attempts:
        reasons[why] = reasons.get(why, 0) + 1
    failures: dict[str, int] = {}
    for _, code, _ in rec.failures:
        failures[code] = failures.get(code, 0) + 1
    out: dict[str, Any] = {
        "window_s": [w0, w1],
        "capacity_rps": scn.capacity,
        "goodput_rps": good,
        "goodput_share": good / scn.capacity,
        "goodput_all_rps": an.goodput(0.0, rec.duration),
        "share_429_window": an.share_429(w0, w1),
        "share_429_all": an.share_429(0.0, rec.duration),
        "attempts": len(rec.attempts),
        "attempts_window": sum(1 for s, _, _ in rec.attempts if w0 <= s < w1),
        "outcomes": reasons,
        "rate_limited": reasons.get("rate_limited", 0),
        "failed_requests": rec.failed,
        "failures_by_code": failures,
        "median_latency_x": None if median is None else median / scn.latency,
        "p90_latency_x": (None if (q := an.latency_quantile(w0, w1, 0.9)) is None
                          else q / scn.latency),
        "median_request_time_s": (statistics.median(rec.request_times)
                                  if rec.request_times else None),
        "mean_limit_window": _mean_step(rec.limits, w0, w1),
        "final_limit": rec.limits[-1][1] if rec.limits else None,
        "limit_changes": len(rec.limits) - 1,
        "learned_rate_final": rec.rates[-1][1] if rec.rates else None,
        "learned_rate_changes": len(rec.rates),
        "mean_learned_rate_window": (None if not rec.rates else _mean_step(
            [(0.0, math.nan), *((t, math.nan if r is None else r) for t, r in rec.rates)],
            w0, w1)),
        "gate_pauses": len(rec.pauses),
        "gate_paused_s": sum(d for _, d, _ in rec.pauses),
        **_costs(rec),
        "mock_stats": rec.mock_stats,
        "src_digest": rec.src_digest,
        "rate_limited_after_grace": None,
        "last_429_s": max((e for _, e, why in rec.attempts if why == "rate_limited"),
                          default=None),
        "breaker_transitions": [list(t) for t in sorted(rec.breaker)],
        "breaker_openings": sum(1 for *_, to, _, _ in rec.breaker if to == "open"),
    }
    if out["mean_learned_rate_window"] is not None and math.isnan(out["mean_learned_rate_window"]):
        out["mean_learned_rate_window"] = None
    if scn.tpm is not None:
        out["rate_limited_after_grace"] = sum(
            1 for _, e, why in rec.attempts if why == "rate_limited" and e >= TPM_GRACE)
    if scn.outage is not None:
        start, end, _ = scn.outage
        pre = an.goodput(0.4 * start, start)
        full_at = None
        k = 0
        while end + 0.1 * k + RECOVERY_SPAN <= rec.duration + 1e-9:
            t = end + 0.1 * k
            if pre > 0 and an.goodput(t, t + RECOVERY_SPAN) >= RECOVERY_SHARE * pre:
                full_at = t + RECOVERY_SPAN
                break
            k += 1
        cycles = breaker_cycles(rec, rec.duration)
        closed_after = next((t for t, _, to, _, _ in sorted(rec.breaker)
                             if to == "closed" and t >= end), None)
        first_ok = min((e for _, e, why in rec.attempts if why == "ok" and e >= end),
                       default=None)
        out |= {
            "pre_outage_goodput_rps": pre,
            "full_again_s": None if full_at is None else full_at - end,
            "full_again_measurable_until_s": rec.duration - end,
            "breaker_closed_after_s": None if closed_after is None else closed_after - end,
            "first_success_after_s": None if first_ok is None else first_ok - end,
            "cycles": cycles,
            "max_attempts_per_cycle": max((c["attempts"] for c in cycles), default=0),
            "attempts_while_open": sum(c["attempts_while_open"] for c in cycles),
            "attempts_during_outage": sum(1 for s, _, _ in rec.attempts if start <= s < end),
            "goodput_during_outage_rps": an.goodput(start, end),
        }
    return out


def check_targets(scn: Scenario, f: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(figure, target, met)`` for one contender's figures in ``scn``."""
    checks: list[tuple[str, str, bool]] = []
    if scn.name == "hidden-rate":
        checks += [
            (f"goodput {_pct(f['goodput_share'])} of R", ">= 90 %", f["goodput_share"] >= 0.90),
            (f"429s {_pct(f['share_429_window'], 2)} of attempts", "<= 5 %",
             f["share_429_window"] <= 0.05),
        ]
    elif scn.name == "openai-rate":
        checks += [
            (f"goodput {_pct(f['goodput_share'])} of R", ">= 97 %", f["goodput_share"] >= 0.97),
            (f"429s {_pct(f['share_429_window'], 2)} of attempts", "<= 0.5 %",
             f["share_429_window"] <= 0.005),
        ]
    elif scn.tpm is not None:
        last = f["last_429_s"]
        checks.append((f"{f['rate_limited_after_grace']} 429s after {TPM_GRACE:g} s "
                       f"(last 429 at {_num(last)} s)", "none",
                       f["rate_limited_after_grace"] == 0))
    if scn.outage is not None:
        full = f["full_again_s"]
        shown = (_num(full) if full is not None
                 else f">{f['full_again_measurable_until_s']:.0f}")
        checks += [
            (f"at most {f['max_attempts_per_cycle']} attempt(s) per cool-down, "
             f"{f['attempts_while_open']} while open ({f['breaker_openings']} openings)",
             "<= 1, 0", f["max_attempts_per_cycle"] <= 1 and f["attempts_while_open"] == 0),
            (f"full rate again {shown} s after recovery "
             f"(pre-outage {f['pre_outage_goodput_rps']:.1f}/s)", f"<= {RECOVERY_TARGET:g} s",
             full is not None and full <= RECOVERY_TARGET),
            (f"{f['failed_requests']} requests failed", "none", f["failed_requests"] == 0),
        ]
    return checks


# ----------------------------------------------------------------------------- output


COLUMNS = (
    ("scenario", 13), ("contender", 9), ("goodput/s", 9), ("% cap", 6), ("% orcl", 6),
    ("429 %", 6), ("429 all", 7), ("429>60s", 7), ("failed", 6), ("lat p50", 7),
    ("limit", 5), ("rate", 5), ("full again", 10), ("probes", 6), ("cpu cli/mock", 12),
    ("lag99", 5),
)
TARGETS = {
    "hidden-rate": {"% cap": ">=90%", "429 %": "<=5%"},
    "openai-rate": {"% cap": ">=97%", "429 %": "<=0.5%"},
    "tpm": {"429>60s": "0"},
    "outage-503": {"failed": "0", "full again": "<=10 s", "probes": "<=1/0"},
    "outage-refuse": {"failed": "0", "full again": "<=10 s", "probes": "<=1/0"},
}


def _row(cells: Sequence[str]) -> str:
    return _limit_row(cells, COLUMNS)


def table(scns: dict[str, Scenario], results: dict[str, dict[str, dict[str, Any]]],
          verdicts: dict[str, dict[str, list[tuple[str, str, bool]]]]) -> str:
    lines = _header(COLUMNS)
    for name, per in results.items():
        scn = scns[name]
        for contender, f in per.items():
            full = f.get("full_again_s")
            full_shown = ("-" if scn.outage is None else _num(full) if full is not None
                          else f">{f['full_again_measurable_until_s']:.0f}")
            lines.append(_row([
                name, contender, f"{f['goodput_rps']:.1f}", _pct(f["goodput_share"]),
                _pct(f.get("goodput_vs_oracle"), 0),
                _pct(f["share_429_window"], 2), _pct(f["share_429_all"], 2),
                "-" if f["rate_limited_after_grace"] is None
                else str(f["rate_limited_after_grace"]),
                str(f["failed_requests"]), _num(f["median_latency_x"], 2),
                _num(f["mean_limit_window"], 0), _num(f["learned_rate_final"], 1),
                full_shown,
                "-" if scn.outage is None
                else f"{f['max_attempts_per_cycle']}/{f['attempts_while_open']}",
                f"{_pct(f['cpu_client'], 0)}/{_pct(f['cpu_mock'], 0)}",
                _num(f["loop_lag_p99_ms"], 0),
            ]))
        lines += _verdict_lines(name, TARGETS.get(name, {}), verdicts[name], 14, COLUMNS)
        w0, w1 = scn.window
        lines.append(f"{'':14}[{scn.title}; window {w0:g}-{w1:g} s; capacity "
                     f"{scn.capacity:g} req/s; C={scn.concurrency()}: oracle rate limiter at "
                     f"{scn.capacity:g}/s under {scn.oracle_limit()}, fixed-4x {scn.fixed4x()}; "
                     f"{scn.workers()} workers"
                     f"{'; contenders ran at once' if scn.parallel else ''}]")
        lines.append("")
    return "\n".join(lines)


def draw(scns: dict[str, Scenario], records: dict[str, dict[str, PacingRecord]],
         output: Path) -> None:
    names = [n for n in records if "pacer" in records[n]]
    fig, axes = _figure(len(names), 3.0,
                        "pacer's pacing against the mock API (real time, loopback)")
    legend: dict[str, Any] = {}
    for ax, name in zip(axes, names, strict=False):
        scn, rec = scns[name], records[name]["pacer"]
        if scn.outage is not None:
            ax.axvspan(scn.outage[0], scn.outage[1], fill=False, hatch="//", ec="0.6", lw=0,
                       label="mock's outage")
        first_open = True
        for a, b, state in open_periods(rec, rec.duration):
            ax.axvspan(a, b, color="tab:red" if state == "open" else "tab:orange",
                       alpha=0.25 if state == "open" else 0.15, lw=0,
                       label=("pacer's breaker open" if state == "open" and first_open
                              else "pacer's breaker half-open" if state != "open" else None))
            first_open = first_open and state != "open"
        ax.axhline(scn.capacity, color="black", ls="--", lw=1.1, label="capacity (req/s)")
        per = Analysis(scn, rec).per_second()  # type: ignore[arg-type]
        secs = list(range(len(per["ok"])))
        ax.bar(secs, per["rate_limited"], width=1.0, align="edge", color="tab:red",
               alpha=0.45, label="pacer's 429s per second")
        ax.step([*secs, len(secs)], [*per["ok"], per["ok"][-1] if per["ok"] else 0],
                where="post", color="tab:green", lw=1.6, label="pacer's goodput (2xx/s)")
        oracle = records[name].get("oracle")
        if oracle is not None:
            ok = Analysis(scn, oracle).per_second()["ok"]  # type: ignore[arg-type]
            ax.step([*range(len(ok)), len(ok)], [*ok, ok[-1] if ok else 0], where="post",
                    color="0.45", lw=0.9, label="oracle's goodput (2xx/s)")
        learned = [(t, r) for t, r, _, _ in rec.paces]
        if any(r is not None for _, r in learned):
            ax.plot([t for t, _ in learned], [math.nan if r is None else r for _, r in learned],
                    color="tab:purple", lw=1.4, label="pacer's learned rate (req/s)")
        pace = [(t, min((v for v in (req, tok) if v is not None), default=None))
                for t, _, req, tok in rec.paces]
        if any(v is not None for _, v in pace):
            ax.plot([t for t, _ in pace], [math.nan if v is None else v for _, v in pace],
                    color="tab:purple", lw=0.9, ls=":", label="pacer's pace in force (req/s)")
        for i, (at, _, _) in enumerate(rec.pauses):
            ax.axvline(at, color="tab:brown", lw=0.8, ls="-.",
                       label="pacer's gate pauses" if i == 0 else None)
        top = max([scn.capacity * 1.6, *per["ok"], *per["rate_limited"]])
        ax.set_ylim(0, min(top, scn.capacity * 4) * 1.05)
        ax.set_xlim(0, rec.duration)
        ax.set_ylabel("per second")
        ax.grid(True, alpha=0.3)
        ax2 = ax.twinx()
        pts = [*rec.limits, (rec.duration, rec.limits[-1][1])]
        ax2.step([t for t, _ in pts], [v for _, v in pts], where="post", color="tab:blue",
                 lw=1.2, alpha=0.8, label="pacer's concurrency limit (right)")
        ax2.set_ylabel("concurrency limit")
        ax2.set_ylim(bottom=0)
        ax.set_title(f"{name}: {scn.title}", loc="left", fontsize=9)
        _gather_legend(legend, ax, ax2)
    _finish(fig, axes, legend, output)


# ----------------------------------------------------------------------------- main


def child_main(spec: str, seed: int, scale: float) -> int:
    name, _, contender = spec.partition(":")
    scn = scenarios(scale)[name]
    configure_logging(level="error", stream=sys.stderr)
    rec = trio.run(run_one, scn, contender, seed)
    sys.stdout.write(json.dumps(dataclasses.asdict(rec)) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark pacer's pacing (rate caps, quotas, outages) against fixed "
                    "baselines (see the module docstring).")
    parser.add_argument("--quick", action="store_true",
                        help="halve every duration (tpm: 70 s, it needs its first minute)")
    parser.add_argument("--scenario", action="append", choices=sorted(scenarios(1.0)),
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--contender", action="append", choices=ALL_CONTENDERS,
                        help=f"run only this contender (repeatable; default: "
                             f"{', '.join(CONTENDERS)})")
    parser.add_argument("--seed", type=int, default=1, help="the mock's --seed and the rng's")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    parser.add_argument("--child", metavar="SCENARIO:CONTENDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scale = 0.5 if args.quick else 1.0
    if args.child:
        return child_main(args.child, args.seed, scale)
    all_scns = scenarios(scale)
    scns = {n: all_scns[n] for n in all_scns if n in (args.scenario or all_scns)}
    contenders = [c for c in ALL_CONTENDERS if c in (args.contender or CONTENDERS)]
    started = time.perf_counter()
    git = _git_state()
    records: dict[str, dict[str, PacingRecord]] = {}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, scn in scns.items():
        records[name] = run_children(scn, contenders, args.seed, args.quick)
        results[name] = {c: figures(scn, rec) for c, rec in records[name].items()}
        _vs_oracle(results[name])
    wall = time.perf_counter() - started
    git_after = _git_state()
    verdicts = {name: {c: check_targets(scns[name], results[name][c])
                       for c in contenders if c in CHECKED} for name in scns}
    print(table(scns, results, verdicts))
    busy = _busy(results)
    if busy:
        print(f"warning: the client's event loop lagged (p99 > {BUSY_LAG_MS:g} ms) in "
              f"{', '.join(busy)}: read those rows with care")
    digests = sorted({f["src_digest"] for per in results.values() for f in per.values()})
    if len(digests) > 1:
        print(f"warning: src/pacer changed during the benchmark (digests {', '.join(digests)}); "
              f"the JSON has each run's digest")
    args.out.mkdir(parents=True, exist_ok=True)
    argv_shown = list(argv) if argv is not None else sys.argv[1:]
    doc = {
        "command": " ".join(["bench/pacing_bench.py", *argv_shown]),
        "seed": args.seed,
        "git": git,
        "git_after": git_after,
        "src_digests": digests,
        "wall_s": wall,
        "retry_after_s": RETRY_AFTER,
        "body": BODY,
        "token_cost": TOKEN_COST,
        "scenarios": {
            name: {
                "title": scn.title, "duration_s": scn.duration, "latency_s": scn.latency,
                "jitter_s": scn.jitter, "window_s": scn.window, "capacity_rps": scn.capacity,
                "concurrency_c": scn.concurrency(), "oracle_limit": scn.oracle_limit(),
                "fixed4x_limit": scn.fixed4x(), "workers": scn.workers(),
                "mock_args": scn.mock_args(args.seed), "parallel": scn.parallel,
                "pacer_default_retry_settings": scn.defaults,
                "targets": _targets_doc(verdicts[name]),
                "contenders": results[name],
                "series": {
                    c: {
                        "per_second": Analysis(scn, rec).per_second(),  # type: ignore[arg-type]
                        "limit": rec.limits,
                        "samples_10hz": [[round(t, 3), held, sent, lim]
                                         for t, held, sent, lim in rec.samples],
                        "paces_10hz": [[round(t, 3), *(None if v is None else round(v, 4)
                                                       for v in vals)]
                                       for t, *vals in rec.paces],
                        "learned_rate": rec.rates,
                        "gate_pauses": rec.pauses,
                        "breaker": rec.breaker,
                        "failures": rec.failures,
                    }
                    for c, rec in records[name].items()
                },
            }
            for name, scn in scns.items()
        },
    }
    json_path = args.out / "pacing_bench.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    png_path = args.out / "pacing_bench.png"
    draw(scns, records, png_path)
    print(f"wall time {wall:.0f} s; wrote {_shown(json_path)} and {_shown(png_path)}")
    if git["commit"]:
        print(_measured(git) + f" (src/pacer digest {', '.join(digests)})")
    _print_outcome(verdicts, CHECKED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
