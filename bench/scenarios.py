"""The controller's scenario suite: each scenario defined once, as data.

A :class:`Scenario` says how the upstream behaves (:class:`Behaviour`: service
times, caps and what happens past them, rate caps, knees, outages, faults), how the
work arrives (a backlog of ``workers`` requests always waiting, or one request every
``interval`` seconds), how long it runs and what it is judged on (:class:`Bands`).
The same definitions run two ways: in virtual time by ``tests/test_scenario_suite.py``
(:func:`run_virtual`: a :class:`SimUpstream` behind an ``httpx`` transport, Trio's
mock clock, deterministic bands asserted), and over real sockets by
``bench/scenario_bench.py`` against the mock API, which serves the same behaviours.

The first thirteen are Vector's public adaptive-concurrency suite
(``tests/data/adaptive-concurrency/*.yaml`` in vectordotdev/vector: 100 ms links,
caps of 5 that answer a 429 after the service time ("defer") or never ("drop"), a
rate cap of 100/s, a knee where latency grows x1.1 per request past 10, a link whose
latency is 100 ms x the requests in flight, jittery links, slow senders); Vector's
bands are kept beside each (``vector_band``) as the floor. The rest are pacer's own:
LLM-like heavy-tailed service times, concurrency caps answered at once, capacity
steps, rate caps with Retry-After, a proxy whose 429s all say ``retry-after: 60``,
a short outage, random faults that do not grow with concurrency; rate caps without
headers (large and small bursts, LLM-like service times, 429s at once or after the
service time, under and over a concurrency cap), request and token quotas announced
in headers, a cold start to 32, capacity steps without Retry-After and 30 s outages
(what ``bench/limit_bench.py`` and ``bench/pacing_bench.py`` measured before).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import trio

from pacer.mockapi.headers import Quota as HeaderQuota
from pacer.mockapi.headers import render_limit_headers
from pacer.mockapi.settings import TPM_WINDOW_S
from pacer.mockapi.tokens import token_cost

__all__ = ["SCENARIOS", "Bands", "Behaviour", "Scenario", "SimTransport", "SimUpstream"]

Action = Literal["429", "defer", "drop"]
CHAT_BODY: dict[str, Any] = {"model": "sim", "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a simulated upstream answers. Times in seconds.

    Service time: ``latency`` (the median when ``lognormal_sigma`` is set: then each
    request takes ``latency x lognormal(0, sigma)``), times ``1 + uniform(-jitter,
    jitter)``, times ``knee_exp ** (n - knee_start)`` past a knee, times ``n`` on a
    ``slow_link`` (n: requests in service, this one included).
    ``cap``: requests in service at most (``schedule`` ``((t, cap), ...)`` moves it);
    past it ``cap_action``: ``429`` at once, ``defer`` (a 429 after the service
    time), ``drop`` (never answered). ``rate``: starts per second (a token bucket
    holding ``rate_burst``, by default ``max(1, rate / 10)``: ``bucket_size()``, which
    the mock API is told with ``--rate-burst``); past it ``rate_action`` (``429`` or
    ``defer``).
    ``retry_after``: sent on every 429 (a rate or quota 429 without it says the
    exact wait). ``tpm``: tokens per minute (a bucket holding a minute's worth, each
    request costing :func:`pacer.mockapi.tokens.token_cost` of its body).
    ``quota_headers``: every answer announces the rate and token quotas in OpenAI's
    headers (limit, remaining, time until full); else no quota is announced.
    ``outage``: ``(start, end)`` of 503s (``outage_kind`` ``refuse``: refused
    connections). ``fault_rate``: share of requests that fail at random whatever the
    load (a reset, a hang, a 500, a cut connection, in turn).
    """

    latency: float = 0.1
    jitter: float = 0.0
    lognormal_sigma: float | None = None
    cap: int | None = None
    cap_action: Action = "429"
    schedule: tuple[tuple[float, int], ...] = ()
    rate: float | None = None
    rate_burst: float | None = None  # the rate bucket's size; None: max(1, rate / 10)
    rate_action: Action = "429"
    retry_after: float | None = None
    knee_start: int | None = None
    knee_exp: float = 1.1
    slow_link: bool = False
    outage: tuple[float, float] | None = None
    outage_kind: Literal["503", "refuse"] = "503"
    tpm: int | None = None
    quota_headers: bool = False
    fault_rate: float = 0.0

    def bucket_size(self) -> float:
        """How many starts the rate's bucket holds (0: no rate cap)."""
        if self.rate is None:
            return 0.0
        return self.rate_burst if self.rate_burst is not None else max(1.0, self.rate / 10)

    def cap_at(self, t: float) -> int | None:
        cap = self.cap
        for at, value in self.schedule:
            if t >= at:
                cap = value
        return cap


@dataclass(frozen=True, slots=True)
class Bands:
    """What a run is judged on; ``None``: not judged. Goodput is successes per
    second counted by the upstream, as a share of ``Scenario.capacity``."""

    min_goodput: float | None = None
    max_429_share: float | None = None
    max_mean_inflight: float | None = None
    min_mean_inflight: float | None = None
    max_mean_rtt: float | None = None  # x the unloaded service time
    max_p90_rtt: float | None = None  # x the unloaded service time
    max_failed: int | None = 0
    max_duration: float | None = None  # x the oracle's time, for a fixed amount of work


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    behaviour: Behaviour
    duration: float = 10.0
    steady_from: float = 2.0
    workers: int = 60  # a backlog: this many requests always waiting (closed loop)
    interval: float | None = None  # or: one new request every interval s (open loop)
    requests: int | None = None  # or: a fixed amount of work, run until answered
    capacity: float | None = None  # successes/s the upstream can give at best
    timeout: float = 30.0
    bands: Bands = field(default_factory=Bands)
    vector_band: str = ""  # Vector's own figures for this scenario, for the table
    oracle_limit: int | None = None  # the concurrency an oracle is told
    seeds: tuple[int, ...] = (1,)
    max_limit: int = 256  # pacer's configured ceiling (upstreams.max_limit)
    # The backoff's ceiling (upstreams.retry_max_delay); pacer's default is 30 s.
    retry_max_delay: float = 1.0
    body: dict[str, Any] = field(default_factory=lambda: dict(CHAT_BODY))

    @property
    def unloaded(self) -> float:
        return self.behaviour.latency


L = 0.1  # Vector's 100 ms links
# A body of known token cost: max_tokens 84 + 64 characters / 4 = 100 tokens, by
# pacer's estimate and the upstream's count alike.
TPM_BODY: dict[str, Any] = {"model": "sim", "max_tokens": 84,
                            "messages": [{"role": "user", "content": "x" * 64}]}

SCENARIOS: tuple[Scenario, ...] = (
    # --- Vector's suite -------------------------------------------------------------
    Scenario("constant-link", Behaviour(latency=L), workers=30, capacity=30 / L,
             bands=Bands(min_mean_inflight=20.0),
             vector_band="in flight mean 15-16"),
    Scenario("defers-at-high-concurrency", Behaviour(latency=L, cap=5, cap_action="defer"),
             capacity=5 / L, oracle_limit=5,
             bands=Bands(min_goodput=0.95, max_429_share=0.02),
             vector_band="86-88% of capacity"),
    Scenario("defers-at-high-rate", Behaviour(latency=L, rate=100, rate_action="defer"),
             capacity=100, duration=20.0, steady_from=5.0, oracle_limit=10,
             bands=Bands(min_goodput=0.90),
             vector_band="74-78% of the rate"),
    Scenario("drops-at-high-concurrency", Behaviour(latency=L, cap=5, cap_action="drop"),
             capacity=5 / L, timeout=1.0, duration=20.0, steady_from=5.0, oracle_limit=5,
             bands=Bands(min_goodput=0.90),
             vector_band="62-108% of capacity"),
    Scenario("fixed-concurrency-jitter", Behaviour(latency=L, jitter=0.5, cap=10),
             capacity=10 / L, oracle_limit=10,
             bands=Bands(min_goodput=0.90, max_429_share=0.03),
             vector_band="rate mean 55-66/s"),
    Scenario("fixed-concurrency-simple", Behaviour(latency=L, cap=10),
             capacity=10 / L, oracle_limit=10,
             bands=Bands(min_goodput=0.95, max_429_share=0.02),
             vector_band="(a fixed limit of 10)"),
    Scenario("jittery-link-small", Behaviour(latency=L, jitter=0.5), workers=30,
             capacity=30 / L, bands=Bands(min_mean_inflight=12.0),
             vector_band="in flight mean 8-20"),
    Scenario("medium-send", Behaviour(latency=L), interval=0.025, workers=0,
             capacity=1 / 0.025, bands=Bands(min_goodput=0.95, max_mean_inflight=5.0),
             vector_band="in flight mean 4-4.5"),
    # Vector's band is on the rtt its controller records (the attempt's, not the
    # retry sequence's, which pacer times per attempt too).
    Scenario("retried-request-rtt", Behaviour(latency=L, outage=(0.15, 0.6), cap=1),
             requests=20, workers=1, capacity=1 / L, oracle_limit=1,
             bands=Bands(max_mean_rtt=1.2, max_p90_rtt=3.0),
             vector_band="observed rtt <= 0.3 s"),
    Scenario("shallow-knee", Behaviour(latency=L, knee_start=10, knee_exp=1.1),
             capacity=10 / L, oracle_limit=10,
             bands=Bands(min_goodput=0.95, max_mean_rtt=1.2, max_p90_rtt=1.5),
             vector_band="87-89% of best, rtt <= 1.2x"),
    Scenario("slow-link", Behaviour(latency=L, slow_link=True), workers=30,
             capacity=1 / L, oracle_limit=1,
             bands=Bands(max_mean_inflight=2.5),
             vector_band="in flight mean 1.5-5"),
    Scenario("slow-send-1", Behaviour(latency=0.05), interval=0.1, workers=0,
             capacity=10, bands=Bands(min_goodput=0.95, max_mean_inflight=1.0),
             vector_band="in flight mean 0.5-0.55"),
    Scenario("slow-send-2", Behaviour(latency=0.1), interval=0.05, workers=0,
             capacity=20, bands=Bands(min_goodput=0.95, max_mean_inflight=3.0),
             vector_band="in flight 2-3"),
    # --- beyond Vector's suite ------------------------------------------------------
    Scenario("cap-immediate", Behaviour(latency=L, jitter=0.2, cap=16), capacity=16 / L,
             oracle_limit=16, bands=Bands(min_goodput=0.95, max_429_share=0.02)),
    Scenario("llm-lognormal-1.0", Behaviour(latency=1.0, lognormal_sigma=1.0, cap=40),
             capacity=40 / math.exp(0.5), duration=120.0, steady_from=20.0, workers=120,
             oracle_limit=40, bands=Bands(min_goodput=0.85, max_429_share=0.03)),
    Scenario("llm-lognormal-0.5", Behaviour(latency=1.0, lognormal_sigma=0.5, cap=40),
             capacity=40 / math.exp(0.125), duration=60.0, steady_from=10.0, workers=120,
             oracle_limit=40, bands=Bands(min_goodput=0.88, max_429_share=0.03)),
    # Issue 10's target: >= 90 % of a raised cap within 5 s of the rise (at 5.5 s).
    Scenario("capacity-steps-retry-after",
             Behaviour(latency=0.2, jitter=0.2, cap=20, schedule=((2.5, 5), (5.5, 40)),
                       retry_after=1.0),
             duration=13.0, steady_from=10.5, capacity=40 / 0.2, workers=100,
             oracle_limit=40, bands=Bands(min_goodput=0.90, max_429_share=0.03)),
    Scenario("rate-50-retry-after", Behaviour(latency=L, rate=50, retry_after=1.0),
             capacity=50, duration=30.0, steady_from=10.0, oracle_limit=5,
             bands=Bands(min_goodput=0.90, max_429_share=0.05)),
    Scenario("proxy-retry-after-60", Behaviour(latency=0.5, cap=5, retry_after=60.0),
             requests=300, workers=50, capacity=5 / 0.5, oracle_limit=5,
             bands=Bands(max_duration=1.25)),
    # 5 s of work at the cap, a 1 s outage, back to full pace within 2 s of the
    # recovery, and the cold start's ~0.5 s: 8.5 s, 1.7x the oracle's 5 s.
    # Whether the breaker's first (jittered) probe lands just before or after the
    # end used to decide the run (1.43x or 1.85x): several seeds keep it decided.
    Scenario("outage-1s", Behaviour(latency=L, cap=8, outage=(2.0, 3.0)), requests=400,
             workers=16, capacity=8 / L, oracle_limit=8, timeout=2.0,
             retry_max_delay=30.0,  # pacer's default, as issue 10 measured it
             bands=Bands(max_duration=1.7), seeds=(1, 2, 3, 4, 5, 6, 7)),
    # Issue 10's reference is a fixed concurrency of 8 with immediate retries: with a
    # hang in every ~11 attempts holding a slot for the 2 s timeout, it needs about
    # 0.375 s of slot time per request, 500 x 0.375 / 8 = 23 s, 3.7x the fault-free
    # 6.25 s. The band, 2.5x that fault-free time, is 0.68x that reference (target:
    # at most 2x it); pacer may run more than 8 at once: the upstream has no cap.
    # A wide upstream (issue 11's adaptive run): a hidden cap of 600 at 1 s; after
    # the cold start (1 -> 600 takes ~10 round trips) at least 80 % of 600/s.
    Scenario("wide-cap-600", Behaviour(latency=1.0, cap=600), capacity=600 / 1.0,
             workers=700, duration=40.0, steady_from=15.0, oracle_limit=600,
             max_limit=1024, bands=Bands(min_goodput=0.80, max_429_share=0.03)),
    Scenario("flaky-35pct", Behaviour(latency=L, fault_rate=0.35), requests=500, workers=40,
             capacity=8 / L, oracle_limit=8, timeout=2.0,
             bands=Bands(max_duration=2.5), seeds=(1, 2, 3, 4, 5)),
    # --- rate caps ------------------------------------------------------------------
    # A hidden rate cap at 0.4 s (it looks like a concurrency cap of 8 until its
    # bucket lets a burst through and refuses below it), with the mock API's bucket
    # of a second's worth...
    Scenario("rate-20-no-headers",
             Behaviour(latency=0.4, jitter=0.1, rate=20, rate_burst=20),
             capacity=20, duration=30.0, steady_from=10.0, workers=82, oracle_limit=8,
             bands=Bands(min_goodput=0.90, max_429_share=0.05)),
    # ...and with a bucket of 2: starts that bunch (answers that come back together)
    # are refused at any concurrency.
    Scenario("rate-20-small-burst", Behaviour(latency=0.4, jitter=0.1, rate=20),
             capacity=20, duration=30.0, steady_from=10.0, workers=82, oracle_limit=8,
             bands=Bands(min_goodput=0.90, max_429_share=0.05)),
    # A rate cap under a looser concurrency cap (60/s of the 100/s the cap allows):
    # the rate binds...
    Scenario("rate-under-cap", Behaviour(latency=L, jitter=0.2, cap=10, rate=60),
             capacity=60, duration=20.0, steady_from=5.0, oracle_limit=6,
             bands=Bands(min_goodput=0.90, max_429_share=0.05)),
    # ...and a concurrency cap under a looser rate cap (40/s of the 60/s): the cap
    # binds, and no rate may be learned below it.
    Scenario("cap-under-rate", Behaviour(latency=L, jitter=0.2, cap=4, rate=60),
             capacity=4 / L, duration=20.0, steady_from=5.0, oracle_limit=4,
             bands=Bands(min_goodput=0.90, max_429_share=0.03)),
    # LLM-like service times (lognormal, sigma 0.5) under a rate cap whose 429s come
    # at once, or after a service time.
    Scenario("rate-lognormal-429",
             Behaviour(latency=0.2, lognormal_sigma=0.5, rate=50),
             capacity=50, duration=30.0, steady_from=10.0, workers=80, oracle_limit=12,
             bands=Bands(min_goodput=0.90, max_429_share=0.05)),
    Scenario("rate-lognormal-defer",
             Behaviour(latency=0.2, lognormal_sigma=0.5, rate=50, rate_action="defer"),
             capacity=50, duration=30.0, steady_from=10.0, workers=80, oracle_limit=12,
             bands=Bands(min_goodput=0.90, max_429_share=0.05)),
    # The rate cap and a tokens-per-minute quota announced in OpenAI's headers: the
    # headers are enough (nothing to learn from 429s); no 429 after the first minute.
    Scenario("rate-20-openai-headers",
             Behaviour(latency=0.4, jitter=0.1, rate=20, rate_burst=20, quota_headers=True),
             capacity=20, duration=30.0, steady_from=10.0, workers=82, oracle_limit=8,
             bands=Bands(min_goodput=0.95, max_429_share=0.005)),
    Scenario("tpm-30000-openai-headers",
             Behaviour(latency=0.4, jitter=0.1, tpm=30_000, quota_headers=True),
             body=TPM_BODY, capacity=30_000 / 60 / 100, duration=100.0, steady_from=60.0,
             workers=82, oracle_limit=2,
             bands=Bands(min_goodput=0.80, max_429_share=0.0)),
    # --- cold start, capacity steps, long outages -----------------------------------
    # Cold start to a cap of 32 within 10 round trips (5 s at 0.5 s): judged from then.
    Scenario("cap-32-cold-start", Behaviour(latency=0.5, jitter=0.1, cap=32),
             capacity=32 / 0.5, duration=15.0, steady_from=5.0, workers=178,
             oracle_limit=32, bands=Bands(min_goodput=0.92, max_429_share=0.02)),
    # Capacity 20 -> 5 -> 40 at 0.5 s without Retry-After: >= 90 % of the raised cap
    # within 5 s of the rise (the probe series that finds it overshoots once: 40 ->
    # 60 costs 20 429s).
    Scenario("capacity-steps", Behaviour(latency=0.5, jitter=0.1, cap=20,
                                         schedule=((8.0, 5), (16.0, 40))),
             capacity=40 / 0.5, duration=30.0, steady_from=21.0, workers=210,
             oracle_limit=40, bands=Bands(min_goodput=0.90, max_429_share=0.05)),
    # A 30 s outage under a rate cap announced in headers, as 503s or as refused
    # connections: full rate within 10 s of the recovery, nothing fails.
    Scenario("outage-30s-503",
             Behaviour(latency=0.4, jitter=0.1, rate=20, rate_burst=20, quota_headers=True,
                       outage=(10.0, 40.0)),
             capacity=20, duration=60.0, steady_from=50.0, workers=82, oracle_limit=8,
             bands=Bands(min_goodput=0.90)),
    Scenario("outage-30s-refuse",
             Behaviour(latency=0.4, jitter=0.1, rate=20, rate_burst=20, quota_headers=True,
                       outage=(10.0, 40.0), outage_kind="refuse"),
             capacity=20, duration=60.0, steady_from=50.0, workers=82, oracle_limit=8,
             bands=Bands(min_goodput=0.90)),
)


def by_name(name: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(name)


# ------------------------------------------------------------------ the simulation


class SimUpstream:
    """A :class:`Behaviour` served under Trio (virtual or real time): counts the
    requests in service (time-weighted), successes, refusals."""

    def __init__(self, behaviour: Behaviour, rng: random.Random,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.b = behaviour
        self.rng = rng
        self.clock = clock
        self.t0 = clock()
        self.in_service = 0
        self._area = 0.0
        self._last = self.t0
        self.successes: list[float] = []  # completion times, since t0
        self.refused = 0
        self.attempts = 0
        self._tokens = self._bucket_size = behaviour.bucket_size()
        self._stamp = self.t0
        self._tpm_tokens = float(behaviour.tpm or 0)
        self._tpm_stamp = self.t0
        self._faults = 0

    def now(self) -> float:
        return self.clock() - self.t0

    def _move(self, delta: int) -> None:
        t = self.clock()
        self._area += self.in_service * (t - self._last)
        self._last = t
        self.in_service += delta

    def mean_in_service(self, t0: float, t1: float) -> float:
        """Time-weighted mean since the start (``t0``/``t1`` are kept for a window
        sampler; the integral is over the whole run up to now)."""
        self._move(0)
        span = self._last - self.t0
        return self._area / span if span > 0 else 0.0

    def _service_time(self, n: int) -> float:
        b = self.b
        base = b.latency
        if b.lognormal_sigma is not None:
            base *= self.rng.lognormvariate(0.0, b.lognormal_sigma)
        if b.jitter:
            base *= 1.0 + self.rng.uniform(-b.jitter, b.jitter)
        if b.knee_start is not None and n > b.knee_start:
            base *= b.knee_exp ** (n - b.knee_start)
        if b.slow_link:
            base *= n
        return max(0.0, base)

    def _refill(self) -> None:
        t = self.clock()
        if self.b.rate is not None:
            self._tokens = min(self._bucket_size,
                               self._tokens + (t - self._stamp) * self.b.rate)
        self._stamp = t
        if self.b.tpm is not None:
            self._tpm_tokens = min(float(self.b.tpm), self._tpm_tokens
                                   + (t - self._tpm_stamp) * self.b.tpm / TPM_WINDOW_S)
        self._tpm_stamp = t

    def _rate_ok(self) -> bool:
        if self.b.rate is None:
            return True
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _tpm_wait(self, cost: int) -> float:
        """Seconds until the token bucket holds ``cost`` (0: take it now)."""
        tpm = self.b.tpm
        if tpm is None:
            return 0.0
        self._refill()
        if self._tpm_tokens >= cost:
            self._tpm_tokens -= cost
            return 0.0
        return (cost - self._tpm_tokens) * TPM_WINDOW_S / tpm

    def _quota_headers(self) -> dict[str, str]:
        """The quotas left, in OpenAI's headers (when the behaviour announces them)."""
        b = self.b
        if not b.quota_headers:
            return {}
        self._refill()
        requests = tokens = None
        if b.rate is not None:
            requests = HeaderQuota(limit=math.floor(self._bucket_size),
                                   remaining=math.floor(self._tokens),
                                   reset=(self._bucket_size - self._tokens) / b.rate,
                                   window=self._bucket_size / b.rate)
        if b.tpm is not None:
            tokens = HeaderQuota(limit=b.tpm, remaining=math.floor(self._tpm_tokens),
                                 reset=(b.tpm - self._tpm_tokens) * TPM_WINDOW_S / b.tpm,
                                 window=TPM_WINDOW_S)
        return dict(render_limit_headers("openai", requests, tokens, time.time))

    def _refusal_headers(self, wait: float | None = None) -> dict[str, str]:
        ra = self.b.retry_after if wait is None else wait
        return {} if ra is None else {"retry-after": f"{ra:g}"}

    async def handle(self, body: bytes = b"") -> tuple[int, dict[str, str]]:
        """Serve one request: its status and headers (or hang, or raise a
        transport error, as the behaviour says)."""
        b = self.b
        self.attempts += 1
        t = self.now()
        if b.outage is not None and b.outage[0] <= t < b.outage[1]:
            if b.outage_kind == "refuse":
                raise httpx.ConnectError("connection refused")
            return 503, {}
        if b.fault_rate and self.rng.random() < b.fault_rate:
            self._faults += 1
            kind = self._faults % 4
            if kind == 0:
                raise httpx.ReadError("connection reset by peer")
            if kind == 1:
                await trio.sleep_forever()
            if kind == 2:
                return 500, {}
            await trio.sleep(b.latency / 2)
            raise httpx.RemoteProtocolError("peer closed connection without response")
        cap = b.cap_at(t)
        over_cap = cap is not None and self.in_service >= cap
        over_rate = not over_cap and not self._rate_ok()
        if over_cap or over_rate:
            self.refused += 1
            action = b.cap_action if over_cap else b.rate_action
            if action == "drop":
                await trio.sleep_forever()
            if action == "defer":
                await trio.sleep(self._service_time(1))
            return 429, {**self._quota_headers(), **self._refusal_headers()}
        wait = self._tpm_wait(token_cost(body))
        if wait > 0:
            self.refused += 1
            return 429, {**self._quota_headers(), **self._refusal_headers(wait)}
        self._move(+1)
        try:
            await trio.sleep(self._service_time(self.in_service))
        finally:
            self._move(-1)
        self.successes.append(self.now())
        return 200, self._quota_headers()


class SimTransport(httpx.AsyncBaseTransport):
    """An httpx transport answering from a :class:`SimUpstream`; each way takes
    ``transit`` seconds, as on a network."""

    def __init__(self, upstream: SimUpstream, transit: float = 0.0005) -> None:
        self.upstream = upstream
        self.transit = transit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await trio.sleep(self.transit)
        status, headers = await self.upstream.handle(await request.aread())
        await trio.sleep(self.transit)
        body = (b'{"object":"chat.completion","choices":[]}' if status == 200
                else b'{"error":{"message":"refused"}}')
        return httpx.Response(status, headers={**headers, "content-type": "application/json"},
                              content=body)


# --------------------------------------------------------------- the harness


@dataclass(slots=True)
class Outcome:
    """What one run of a scenario did, judged against its bands."""

    scenario: str
    contender: str
    seed: int
    goodput: float | None  # share of the capacity, over the steady part
    share_429: float
    mean_inflight: float  # at the upstream, time-weighted, over the steady part
    mean_rtt: float | None  # of successes, x the unloaded service time
    p90_rtt: float | None
    failed: int
    duration: float  # seconds the run took (fixed work: until all answered)
    duration_ratio: float | None  # x the oracle's time, for a fixed amount of work
    latency_cuts: int | None = None  # decreases of the limit for latency, if counted
    # Over real sockets, of successes, x the unloaded service time: the upstream's
    # own time (the mock's server-timing) and the rtt the limit judged (net of lag).
    upstream_rtt: float | None = None
    judged_rtt: float | None = None

    def misses(self, bands: Bands) -> list[str]:
        """The bands this run misses, as readable strings (empty: all met)."""
        out: list[str] = []

        def check(name: str, value: float | None, bound: float | None, low: bool) -> None:
            if bound is None or value is None:
                return
            if (value < bound) if low else (value > bound):
                out.append(f"{name} {value:.3g} {'<' if low else '>'} {bound:g}")

        check("goodput", self.goodput, bands.min_goodput, True)
        check("429 share", self.share_429, bands.max_429_share, False)
        check("mean in flight", self.mean_inflight, bands.max_mean_inflight, False)
        check("mean in flight", self.mean_inflight, bands.min_mean_inflight, True)
        check("mean rtt", self.mean_rtt, bands.max_mean_rtt, False)
        check("p90 rtt", self.p90_rtt, bands.max_p90_rtt, False)
        check("failed", float(self.failed),
              None if bands.max_failed is None else float(bands.max_failed), False)
        check("duration", self.duration_ratio, bands.max_duration, False)
        return out


CONTENDERS = ("pacer", "vector-arc", "gradient2", "oracle", "fixed-4x")


def make_limit(contender: str, scenario: Scenario) -> object | None:
    """The limit a contender runs with (``None``: pacer's own, from its config)."""
    from contenders import Gradient2Limit, VectorArcLimit

    from pacer.control.limit import FixedLimit

    if contender == "pacer":
        return None
    if contender == "vector-arc":
        return VectorArcLimit()
    if contender == "gradient2":
        return Gradient2Limit()
    told = scenario.oracle_limit or scenario.workers or 1
    if contender == "oracle":
        return FixedLimit(told)
    if contender == "fixed-4x":
        return FixedLimit(4 * told)
    raise KeyError(contender)


def seed_trio_scheduler(seed: int) -> None:
    """Make the order in which Trio runs tasks that are ready together a function of
    ``seed``. Trio shuffles it on purpose (to flush out ordering bugs), so without
    this a run in virtual time differs from run to run (flaky-35pct seed 1: 2.31x,
    2.32x and 2.66x). This is the hook Trio keeps for Hypothesis (private)."""
    import trio._core._run as trio_run

    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(seed)


async def run_virtual(scenario: Scenario, contender: str = "pacer", seed: int = 1,
                      transit: float = 0.0005) -> Outcome:
    """Run ``scenario`` once through pacer's real sender
    (:class:`pacer.service.upstream.Upstream`, with ``contender``'s limit) against a
    :class:`SimUpstream`; must run under Trio's mock clock (``autojump_clock``)."""
    import itertools
    import statistics

    from pacer.config import UpstreamConfig
    from pacer.service.upstream import Upstream
    from pacer.spool.jobs import Request

    seed_trio_scheduler(seed)
    rng = random.Random(seed)
    sim = SimUpstream(scenario.behaviour, random.Random(rng.random()))
    t0 = sim.t0
    attempts: list[tuple[float, float, int | None]] = []
    samples: list[tuple[float, int]] = []

    class Recording(SimTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            start = trio.current_time() - t0
            status: int | None = None
            try:
                response = await super().handle_async_request(request)
                status = response.status_code
                return response
            finally:
                attempts.append((start, trio.current_time() - t0, status))

    cfg = UpstreamConfig(name="default", base_url="http://sim", initial_limit=1,
                         max_attempts=1000, retry_base_delay=0.05,
                         retry_max_delay=scenario.retry_max_delay, timeout=scenario.timeout,
                         max_limit=scenario.max_limit)
    answers: list[tuple[float, bool]] = []
    ids = itertools.count()
    body = scenario.body
    async with httpx.AsyncClient(transport=Recording(sim, transit),
                                 base_url="http://sim") as client:
        limit = make_limit(contender, scenario)
        up = Upstream(cfg, client, rng=random.Random(rng.random()),
                      limit=limit)  # type: ignore[arg-type]

        async def one() -> None:
            i = next(ids)
            req = Request(custom_id=f"r{i}", method="POST", url="/v1/chat/completions",
                          upstream="default", body=body, line=i + 1)
            answer = await up.send(req)
            assert answer is not None
            answers.append((trio.current_time() - t0, answer.ok))

        async def worker() -> None:
            while scenario.requests is None or next(budget) < scenario.requests:
                await one()

        budget = itertools.count()

        async def sampler() -> None:
            while True:
                samples.append((trio.current_time() - t0, sim.in_service))
                await trio.sleep(0.01)

        bound = scenario.duration if scenario.requests is None else 3600.0
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
    end = trio.current_time() - t0
    lo, hi = (scenario.steady_from, scenario.duration) if scenario.requests is None else (
        0.0, end)
    ok = [s for s in sim.successes if lo <= s < hi]
    goodput = (len(ok) / (hi - lo) / scenario.capacity
               if scenario.capacity and hi > lo else None)
    window = [a for a in attempts if lo <= a[0] < hi]
    share = sum(1 for a in window if a[2] == 429) / len(window) if window else 0.0
    inflight = [n for t, n in samples if lo <= t < hi]
    rtts = sorted((e - s) / scenario.unloaded for s, e, st in window if st == 200)
    p90 = rtts[int(0.9 * (len(rtts) - 1))] if rtts else None
    oracle_time = (scenario.requests / scenario.capacity
                   if scenario.requests is not None and scenario.capacity else None)
    return Outcome(
        scenario=scenario.name, contender=contender, seed=seed, goodput=goodput,
        share_429=share,
        mean_inflight=statistics.fmean(inflight) if inflight else 0.0,
        mean_rtt=statistics.fmean(rtts) if rtts else None, p90_rtt=p90,
        failed=sum(1 for _, good in answers if not good), duration=end,
        duration_ratio=None if oracle_time is None else end / oracle_time)
