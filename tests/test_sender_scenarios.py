"""Scenario simulations of the real sender, :class:`pacer.service.upstream.Upstream`, under
virtual time: the AIMD limit, the pacing gate, the retries and the breaker together.

``run_sender`` keeps ``workers`` tasks calling ``await upstream.send(Request(...))``
for ``duration`` virtual seconds against the mock API (``MockUpstream`` through
``mock_transport``, each way taking 1 ms as on a network), with a fresh request after
each answer; a recording transport notes every attempt (start, end, status). The
bands are the project's targets; ``tests/test_scenarios.py`` holds those of the
limit alone.

Each scenario runs with one seed so that the file stays at a few seconds; set
``PACER_SCENARIO_SEEDS`` (e.g. ``1,2,3,4,5,6,7,8``) to run every scenario with each
of those seeds instead, and ``-s`` to see the figures.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from pacer.config import UpstreamConfig
from pacer.control.breaker import BreakerTransition
from pacer.control.limit import LimitChange
from pacer.control.pacing import PauseEvent, RateChange
from pacer.mockapi import MockSettings, MockUpstream, Outage, mock_transport
from pacer.service.upstream import Answer, Upstream
from pacer.spool.jobs import Request
from scenario_sim import (
    STEP_L,
    STEP_RUN,
    STEP_SCHEDULE,
    LimitSeries,
    check_capacity_steps,
)

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
SEEDS = [int(x) for x in os.environ.get("PACER_SCENARIO_SEEDS", "").split(",") if x.strip()]


def seeds(default: int) -> list[int]:
    """The seeds a scenario runs with: ``PACER_SCENARIO_SEEDS``, else ``default``."""
    return SEEDS or [default]


# ----------------------------------------------------------------------- harness


@dataclass(frozen=True, slots=True)
class Attempt:
    start: float
    end: float
    status: int | None  # None: no HTTP answer (a transport error)


@dataclass(slots=True)
class SenderRun(LimitSeries):
    """What one run did; times are seconds since the mock started."""

    duration: float
    attempts: list[Attempt] = field(default_factory=list)
    answers: list[tuple[float, Answer]] = field(default_factory=list)
    limits: list[tuple[float, int]] = field(default_factory=list)
    rates: list[RateChange] = field(default_factory=list)
    pauses: list[PauseEvent] = field(default_factory=list)
    breaker: list[BreakerTransition] = field(default_factory=list)
    # (time, requests in service at the mock), sampled every ``sample_every`` s.
    in_service: list[tuple[float, int]] = field(default_factory=list)
    learned_rate: float | None = None
    final_limit: int = 0

    def mean_in_service(self, t0: float, t1: float) -> float:
        values = [n for t, n in self.in_service if t0 <= t < t1]
        return sum(values) / len(values)

    def ok(self, t0: float, t1: float) -> int:
        """Successful attempts completed within [t0, t1)."""
        return sum(1 for a in self.attempts if a.status == 200 and t0 <= a.end < t1)

    def goodput(self, t0: float, t1: float) -> float:
        return self.ok(t0, t1) / (t1 - t0)

    def count(self, t0: float, t1: float, status: int | str | None = "any") -> int:
        """Attempts started within [t0, t1) (with that status, unless ``"any"``)."""
        return sum(1 for a in self.attempts
                   if t0 <= a.start < t1 and (status == "any" or a.status == status))

    def share_429(self, t0: float, t1: float) -> float:
        total = self.count(t0, t1)
        return self.count(t0, t1, 429) / total if total else 0.0

    def failed(self) -> list[Answer]:
        return [a for _, a in self.answers if not a.ok]


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on to ``inner`` and notes each one's start, end and status.

    Each way takes ``transit`` seconds, as on a network: without it a 429 (which
    the mock answers at once) would come back at the very instant it was sent, and
    a whole crowd of retries could be refused within one instant of virtual time,
    which no real client sees.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, run: SenderRun, t0: float,
                 transit: float) -> None:
        self.inner = inner
        self.run = run
        self.t0 = t0
        self.transit = transit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        start = trio.current_time() - self.t0
        status: int | None = None
        try:
            await trio.sleep(self.transit)
            response = await self.inner.handle_async_request(request)
            status = response.status_code
            await trio.sleep(self.transit)
            return response
        finally:
            self.run.attempts.append(Attempt(start, trio.current_time() - self.t0, status))


def sender_config(**overrides: Any) -> UpstreamConfig:
    settings: dict[str, Any] = dict(name="default", base_url="http://mock", initial_limit=1,
                                    max_attempts=10, retry_base_delay=0.05,
                                    retry_max_delay=5.0, timeout=30.0)
    settings.update(overrides)
    return UpstreamConfig(**settings)


async def run_sender(mock: MockSettings, *, duration: float, workers: int, seed: int,
                     body: dict[str, Any] | None = None,
                     cfg: UpstreamConfig | None = None,
                     requests: int | None = None,
                     transit: float = 0.001,
                     sample_every: float | None = None,
                     done: Callable[[SenderRun, float], bool] | None = None) -> SenderRun:
    """Keep ``workers`` requests going through one real ``Upstream`` for ``duration``
    virtual seconds, or until ``requests`` requests are answered, or until
    ``done(run, now)`` says so after an answer (``run.duration`` then becomes the time
    that took); must run under the ``autojump_clock`` fixture."""
    body = body if body is not None else BODY
    api = MockUpstream(mock)
    api.start()
    t0 = trio.current_time()
    run = SenderRun(duration)
    transport = RecordingTransport(mock_transport(api), run, t0, transit)
    ids = itertools.count()
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
        upstream = Upstream(cfg or sender_config(), client, rng=random.Random(seed))
        run.limits.append((0.0, upstream.limit.limit))

        def on_limit(change: LimitChange) -> None:
            run.limits.append((trio.current_time() - t0, change.new_limit))

        def on_rate(change: RateChange) -> None:
            run.rates.append(RateChange(change.old_rate, change.new_rate, change.reason,
                                        change.at - t0))

        def on_pause(e: PauseEvent) -> None:
            run.pauses.append(PauseEvent(e.cause, e.duration, e.until - t0,
                                         e.resume_at - t0, e.at - t0))

        def on_breaker(t: BreakerTransition) -> None:
            run.breaker.append(BreakerTransition(t.from_state, t.to_state, t.reason,
                                                 t.at - t0, t.cooldown, t.detail))

        upstream.limit.subscribe(on_limit)
        upstream.pacer.subscribe_rate(on_rate)
        upstream.pacer.subscribe_pause(on_pause)
        upstream.breaker.subscribe(on_breaker)

        async def worker() -> None:
            while True:
                i = next(ids)
                if requests is not None and i >= requests:
                    return
                request = Request(custom_id=f"r{i}", method="POST", url=CHAT,
                                  upstream="default", body=body, line=i + 1)
                answer = await upstream.send(request)
                assert answer is not None
                run.answers.append((trio.current_time() - t0, answer))
                if done is not None and done(run, trio.current_time() - t0):
                    scope.cancel()

        async def sampler(every: float) -> None:
            while True:
                run.in_service.append((trio.current_time() - t0, api.stats.in_service))
                await trio.sleep(every)

        with trio.move_on_after(duration) as scope:
            async with trio.open_nursery() as nursery:
                if sample_every is not None:
                    nursery.start_soon(sampler, sample_every)
                async with trio.open_nursery() as workers_nursery:
                    for _ in range(workers):
                        workers_nursery.start_soon(worker)
                nursery.cancel_scope.cancel()
        run.duration = trio.current_time() - t0
        run.learned_rate = upstream.pacer.learned_rate
        run.final_limit = upstream.limit.limit
    return run


# --------------------------------------------------------------------- scenarios

# (a) A hidden concurrency cap, no headers (the demo's upstream): capacity C / L.
CAP, CAP_L = 16, 0.1
CAP_RUN, CAP_STEADY_FROM = 6.0, 2.0


def cap_mock(seed: int) -> MockSettings:
    return MockSettings(concurrency=CAP, latency=CAP_L, jitter=0.2 * CAP_L,
                        header_style="none", seed=seed)


def assert_no_binding_rate(r: SenderRun, capacity: float) -> None:
    """No request rate was learned, or none that ever held starts below ``capacity``;
    and nothing paused the upstream."""
    assert all(c.new_rate is None or c.new_rate > 1.2 * capacity for c in r.rates), r.rates
    assert r.pauses == []


@pytest.mark.parametrize("seed", seeds(1))
async def test_concurrency_cap_without_headers(autojump_clock: trio.testing.MockClock,
                                               seed: int) -> None:
    r = await run_sender(cap_mock(seed), duration=CAP_RUN, workers=3 * CAP, seed=seed)
    goodput = r.goodput(CAP_STEADY_FROM, CAP_RUN) / (CAP / CAP_L)
    share_429 = r.share_429(0.0, CAP_RUN)
    mean_limit = r.mean_limit(CAP_STEADY_FROM, CAP_RUN)
    print(f"cap seed={seed}: goodput {goodput:.1%} of C/L, 429s {share_429:.2%}, "
          f"limit {r.final_limit} (mean {mean_limit:.1f}), rates {len(r.rates)}")
    assert goodput >= 0.95
    assert share_429 <= 0.02
    assert_no_binding_rate(r, CAP / CAP_L)
    assert CAP - 2 <= r.final_limit <= CAP + 2
    assert CAP - 2 <= mean_limit <= CAP + 2
    assert r.failed() == []


DEMO_REQUESTS = 500


@pytest.mark.parametrize("seed", seeds(2))
async def test_the_demo_drains_at_the_cap(autojump_clock: trio.testing.MockClock,
                                          seed: int) -> None:
    """``scripts/demo`` in virtual time: 500 requests at once, each in its own task,
    against the same hidden cap; the pacing gate must not get in the way."""
    r = await run_sender(cap_mock(seed), duration=60.0, workers=DEMO_REQUESTS, seed=seed,
                         requests=DEMO_REQUESTS)
    ideal = DEMO_REQUESTS / (CAP / CAP_L)
    share_429 = r.share_429(0.0, r.duration)
    print(f"demo seed={seed}: {r.duration:.2f} s (ideal {ideal:.2f} s), "
          f"429s {share_429:.2%}, limit {r.final_limit}")
    assert len(r.answers) == DEMO_REQUESTS and r.failed() == []
    assert r.duration <= 1.3 * ideal  # a slow start of ~0.5 s, and a short tail
    assert share_429 <= 0.03  # a short run: the slow start's few 429s weigh
    assert_no_binding_rate(r, CAP / CAP_L)
    assert CAP - 2 <= r.final_limit <= CAP + 2


# (b) A hidden rate cap R, no headers; the mock's bucket holds R requests at the start.
# At L = 0.1 it looks like a concurrency cap of 2, at L = 0.5 like one of 10; it is
# told from one by 429s at fewer in flight than the upstream served at once a moment
# before (its bucket lets bursts through), and then paced instead of probed (the
# limit's probes cost a 429 each: 7 % of the attempts at L = 0.1 before).
RATE, RATE_RUN = 20.0, 30.0


@pytest.mark.parametrize(("latency", "seed"), [
    (lat, s) for lat, d in ((0.1, 3), (0.5, 4)) for s in seeds(d)])
async def test_rate_cap_without_headers(autojump_clock: trio.testing.MockClock,
                                        latency: float, seed: int) -> None:
    mock = MockSettings(rate=RATE, latency=latency, jitter=0.2 * latency,
                        header_style="none", seed=seed)
    r = await run_sender(mock, duration=RATE_RUN, workers=64, seed=seed)
    capacity = RATE * RATE_RUN + RATE  # the refill plus the full bucket at the start
    goodput = r.ok(0.0, RATE_RUN) / capacity
    share_429 = r.share_429(0.0, RATE_RUN)
    learned_at = next((c.at for c in r.rates if c.reason == "rate_limited"), None)
    print(f"rate L={latency} seed={seed}: goodput {goodput:.1%} of R, 429s {share_429:.2%}, "
          f"rate learned at {learned_at} s, now {r.learned_rate}, limit {r.final_limit}, "
          f"pauses {len(r.pauses)}")
    assert goodput >= 0.90
    assert share_429 <= 0.05
    assert r.failed() == []


# (c) The same rate cap announced in OpenAI-style headers.
@pytest.mark.parametrize("seed", seeds(5))
async def test_rate_cap_with_openai_headers(autojump_clock: trio.testing.MockClock,
                                            seed: int) -> None:
    mock = MockSettings(rate=RATE, latency=0.1, jitter=0.02, header_style="openai", seed=seed)
    r = await run_sender(mock, duration=RATE_RUN, workers=64, seed=seed)
    capacity = RATE * RATE_RUN + RATE
    goodput = r.ok(0.0, RATE_RUN) / capacity
    share_429 = r.share_429(0.0, RATE_RUN)
    print(f"headers seed={seed}: goodput {goodput:.1%}, 429s {share_429:.2%}, "
          f"limit {r.final_limit}")
    assert goodput >= 0.97
    assert share_429 <= 0.005
    assert r.learned_rate is None and r.pauses == []  # the headers were enough
    assert r.failed() == []


# (d) Capacity steps 20 -> 5 -> 40: the bands of tests/test_scenarios.py.


@pytest.mark.parametrize("seed", seeds(6))
async def test_capacity_steps(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    mock = MockSettings(schedule=STEP_SCHEDULE, latency=STEP_L, jitter=0.2 * STEP_L,
                        header_style="none", seed=seed)
    r = await run_sender(mock, duration=STEP_RUN, workers=100, seed=seed, sample_every=0.02)

    drop_rtts, reached, rise_s = check_capacity_steps(r)
    in_service = r.mean_in_service(reached + STEP_L, STEP_RUN)
    print(f"steps seed={seed}: drop settled in {drop_rtts:.1f} rtt, rise reached in "
          f"{rise_s:.2f} s, {in_service:.1f} in service after, rates {len(r.rates)}")
    assert in_service >= 36
    # A fallen capacity is the concurrency limit's to find: no rate, no pause.
    assert_no_binding_rate(r, 5 / STEP_L)
    assert r.failed() == []


# (e) A tokens-per-minute quota announced in headers (OpenAI style).
TPM, TPM_RUN = 6000, 180.0
TPM_BODY: dict[str, Any] = {"model": "mock", "max_tokens": 100,
                            "messages": [{"role": "user", "content": "x" * 400}]}
TPM_COST = 200  # max_tokens + 400 characters / 4: the mock's cost and pacer's estimate


@pytest.mark.parametrize("seed", seeds(7))
async def test_tokens_per_minute_from_headers(autojump_clock: trio.testing.MockClock,
                                              seed: int) -> None:
    mock = MockSettings(tpm=TPM, latency=0.5, jitter=0.1, header_style="openai", seed=seed)
    r = await run_sender(mock, duration=TPM_RUN, workers=20, seed=seed, body=TPM_BODY)
    capacity = (TPM + TPM / 60 * TPM_RUN) / TPM_COST  # the full bucket plus the refill
    goodput = r.ok(0.0, TPM_RUN) / capacity
    late_429s = r.count(60.0, TPM_RUN, 429)
    print(f"tpm seed={seed}: goodput {goodput:.1%}, 429s {r.count(0.0, TPM_RUN, 429)} "
          f"({late_429s} after the first minute), limit {r.final_limit}")
    assert late_429s == 0
    # The pace keeps a margin (0.9) and settles with the quota about half full.
    assert goodput >= 0.8
    assert r.failed() == []


# (f) An outage: 503s for 30 s, then healthy again. The run ends 15 s after the
# breaker closes (at most ~38 s after the end: its cool-downs reach 32 s +- 20 %).
OUT_CAP, OUT_L = 4, 0.1
OUT_START, OUT_END, OUT_RUN = 5.0, 35.0, 90.0
OUT_AFTER = 15.0


def closed_long_ago(r: SenderRun, now: float) -> bool:
    return any(t.to_state == "closed" and now - t.at >= OUT_AFTER for t in r.breaker)


@pytest.mark.parametrize("seed", seeds(1))
async def test_an_outage_then_recovery(autojump_clock: trio.testing.MockClock,
                                       seed: int) -> None:
    mock = MockSettings(concurrency=OUT_CAP, latency=OUT_L, jitter=0.2 * OUT_L,
                        header_style="none", outages=(Outage(OUT_START, OUT_END, "503"),),
                        seed=seed)
    r = await run_sender(mock, duration=OUT_RUN, workers=4 * OUT_CAP, seed=seed,
                         done=closed_long_ago)
    opened = [t for t in r.breaker if t.to_state == "open"]
    assert opened and OUT_START <= opened[0].at < OUT_START + 1.0
    # While open, nothing goes; each cool-down ends in one probe, and only one (requests
    # that had been admitted before it opened do not go out when their turn comes).
    half_opens = [t.at for t in r.breaker if t.to_state == "half_open"]
    during = [a.start for a in r.attempts if opened[0].at < a.start < OUT_END]
    assert len(during) <= len(half_opens), (during, half_opens)
    for start in during:
        assert any(abs(start - h) < 1e-6 for h in half_opens), (start, half_opens)
    # The first probe after the end closes the breaker. Its cool-downs double (1, 2,
    # 4, ... s, +-20 %): that may come up to one cool-down after the end...
    closed = [t.at for t in r.breaker if t.to_state == "closed"]
    assert closed and closed[-1] >= OUT_END
    recovered = closed[-1]
    last_cooldown = max(t.cooldown or 0.0 for t in opened)
    assert recovered - OUT_END <= last_cooldown
    # ...and then the full rate is back within 10 s.
    capacity = OUT_CAP / OUT_L
    full = r.goodput(recovered + 10.0, recovered + OUT_AFTER) / capacity
    print(f"outage seed={seed}: breaker closed {recovered - OUT_END:.1f} s after the end, "
          f"goodput from 10 s after that {full:.1%}, probes {len(during)}")
    assert full >= 0.9
    assert r.failed() == []


# (g) A proxy with 5 parallel slots whose concurrency 429s all say `retry-after: 60`
# whatever the real wait (cause 3 of issue 10): a refused request goes back to the
# queue for the next free slot while the other slots keep succeeding, instead of
# waiting 60 s. The oracle, a semaphore of 5, needs PROXY_REQUESTS / 5 x L.
PROXY_SLOTS, PROXY_L, PROXY_REQUESTS = 5, 0.5, 300


@pytest.mark.parametrize("seed", seeds(8))
async def test_proxy_retry_after_60_on_concurrency_429s(
        autojump_clock: trio.testing.MockClock, seed: int) -> None:
    mock = MockSettings(concurrency=PROXY_SLOTS, latency=PROXY_L, retry_after=60.0,
                        header_style="none", seed=seed)
    r = await run_sender(mock, duration=600.0, workers=50, seed=seed, requests=PROXY_REQUESTS)
    oracle = PROXY_REQUESTS / PROXY_SLOTS * PROXY_L
    print(f"proxy seed={seed}: {r.duration:.1f} s, {r.duration / oracle:.2f}x the oracle, "
          f"429s {r.count(0.0, r.duration, 429)}, pauses {len(r.pauses)}")
    assert len(r.answers) == PROXY_REQUESTS and r.failed() == []
    assert r.duration <= 1.25 * oracle


# (h) A 1 s outage (503s) in the middle of a short run (cause 6 of issue 10): the
# retry budget, drained by the outage, must not hold the last retries back for up to
# retry_max_delay once the upstream answers again: a success wakes them.
BLIP_CAP, BLIP_L, BLIP_START, BLIP_END = 8, 0.1, 2.0, 3.0


@pytest.mark.parametrize("seed", seeds(9))
async def test_short_outage_recovers_on_evidence_not_a_timer(
        autojump_clock: trio.testing.MockClock, seed: int) -> None:
    mock = MockSettings(concurrency=BLIP_CAP, latency=BLIP_L, header_style="none",
                        outages=(Outage(BLIP_START, BLIP_END, "503"),), seed=seed)
    cfg = sender_config(retry_max_delay=30.0)
    requests = 400  # 5 s of work at the cap
    r = await run_sender(mock, duration=120.0, workers=2 * BLIP_CAP, seed=seed, cfg=cfg,
                         requests=requests)
    closed = [t.at for t in r.breaker if t.to_state == "closed"]
    recovered = closed[-1] if closed else BLIP_END
    last = max(at for at, _ in r.answers)
    print(f"blip seed={seed}: breaker closed {recovered - BLIP_END:.2f} s after the end, "
          f"last answer {last:.2f} s, run {r.duration:.2f} s")
    assert len(r.answers) == requests and r.failed() == []
    # The work left after the outage takes what it takes at the cap; a retry held
    # back for retry_max_delay would end the run ~15-30 s later.
    assert last <= recovered + (requests / (BLIP_CAP / BLIP_L)) + 2.0


# (h') The sharpest case of cause 6: the last requests of a run meet the outage, so
# nothing else is in flight whose success could let their held retries go. A retry
# the budget holds back then goes as soon as nothing is in flight (it is itself the
# test); it used to wait out its share of retry_max_delay (15-30 s here).
@pytest.mark.parametrize("seed", seeds(5))
async def test_the_last_requests_of_a_run_follow_a_recovery(
        autojump_clock: trio.testing.MockClock, seed: int) -> None:
    mock = MockSettings(concurrency=BLIP_CAP, latency=BLIP_L, header_style="none",
                        outages=(Outage(0.0, 1.0, "503"),), seed=seed)
    cfg = sender_config(retry_max_delay=30.0, max_attempts=1000)
    r = await run_sender(mock, duration=120.0, workers=2, seed=seed, cfg=cfg, requests=2)
    closed = [t.at for t in r.breaker if t.to_state == "closed"]
    last = max(at for at, _ in r.answers)
    print(f"tail seed={seed}: breaker closed at {closed}, last answer {last:.2f} s")
    assert len(r.answers) == 2 and r.failed() == []
    # The breaker's cool-downs (1, 1, 2 s, jittered) find the recovery within ~2 s.
    assert last <= 1.0 + 3.0
