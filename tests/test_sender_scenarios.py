"""Scenario simulations of the real sender, :class:`pacer.upstream.Upstream`, under
virtual time: the AIMD limit, the pacing gate, the retries and the breaker together.

``run_sender`` keeps ``workers`` tasks calling ``await upstream.send(Request(...))``
for ``duration`` virtual seconds against the mock API (``MockUpstream`` through
``mock_transport``), with a fresh request after each answer; a recording transport
notes every attempt (start, end, status) as the mock saw it. The bands are the
project's targets; ``tests/test_scenarios.py`` holds those of the limit alone.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from pacer.breaker import BreakerTransition
from pacer.config import UpstreamConfig
from pacer.jobs import Request
from pacer.limit import LimitChange
from pacer.mockapi import MockSettings, MockUpstream, Outage, mock_transport
from pacer.pacing import PauseEvent, RateChange
from pacer.upstream import Answer, Upstream

CHAT = "/v1/chat/completions"
BODY: dict[str, Any] = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}
SEEDS = [1, 2, 3]


# ----------------------------------------------------------------------- harness


@dataclass(frozen=True, slots=True)
class Attempt:
    start: float
    end: float
    status: int | None  # None: no HTTP answer (a transport error)


@dataclass(slots=True)
class SenderRun:
    """What one run did; times are seconds since the mock started."""

    duration: float
    attempts: list[Attempt] = field(default_factory=list)
    answers: list[tuple[float, Answer]] = field(default_factory=list)
    limits: list[tuple[float, int]] = field(default_factory=list)
    rates: list[RateChange] = field(default_factory=list)
    pauses: list[PauseEvent] = field(default_factory=list)
    breaker: list[BreakerTransition] = field(default_factory=list)
    # Rate-limited attempts whose 429 the pacer put down to a rate cap or a quota.
    paced_429s: int = 0
    learned_rate: float | None = None
    final_limit: int = 0

    def limit_at(self, t: float) -> int:
        times = [at for at, _ in self.limits]
        return self.limits[bisect.bisect_right(times, t) - 1][1]

    def mean_limit(self, t0: float, t1: float) -> float:
        """Time-weighted mean of the limit over [t0, t1)."""
        points = [(t0, self.limit_at(t0))] + [(t, v) for t, v in self.limits if t0 < t < t1]
        total = 0.0
        for (t, v), (t_next, _) in itertools.pairwise([*points, (t1, 0)]):
            total += v * (t_next - t)
        return total / (t1 - t0)

    def first_time(self, t0: float, predicate: Callable[[int], bool]) -> float | None:
        """First time >= t0 at which the limit satisfies ``predicate``."""
        if predicate(self.limit_at(t0)):
            return t0
        return next((t for t, v in self.limits if t > t0 and predicate(v)), None)

    def ok(self, t0: float, t1: float) -> int:
        """Successful attempts completed within [t0, t1)."""
        return sum(1 for a in self.attempts if a.status == 200 and t0 <= a.end < t1)

    def goodput(self, t0: float, t1: float) -> float:
        return self.ok(t0, t1) / (t1 - t0)

    def count(self, t0: float, t1: float, status: int | None | str = "any") -> int:
        """Attempts started within [t0, t1) (with that status, unless ``"any"``)."""
        return sum(1 for a in self.attempts
                   if t0 <= a.start < t1 and (status == "any" or a.status == status))

    def share_429(self, t0: float, t1: float) -> float:
        total = self.count(t0, t1)
        return self.count(t0, t1, 429) / total if total else 0.0

    def failed(self) -> list[Answer]:
        return [a for _, a in self.answers if not a.ok]


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on to ``inner`` and notes each one's start, end and status."""

    def __init__(self, inner: httpx.AsyncBaseTransport, run: SenderRun, t0: float) -> None:
        self.inner = inner
        self.run = run
        self.t0 = t0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        start = trio.current_time() - self.t0
        status: int | None = None
        try:
            response = await self.inner.handle_async_request(request)
            status = response.status_code
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
                     cfg: UpstreamConfig | None = None) -> SenderRun:
    """Keep ``workers`` requests going through one real ``Upstream`` for ``duration``
    virtual seconds; must run under the ``autojump_clock`` fixture."""
    body = body if body is not None else BODY
    api = MockUpstream(mock)
    api.start()
    t0 = trio.current_time()
    run = SenderRun(duration)
    transport = RecordingTransport(mock_transport(api), run, t0)
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
                request = Request(custom_id=f"r{i}", method="POST", url=CHAT,
                                  upstream="default", body=body, line=i + 1)
                answer = await upstream.send(request)
                assert answer is not None
                run.answers.append((trio.current_time() - t0, answer))

        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(worker)
        run.learned_rate = upstream.pacer.learned_rate
        run.final_limit = upstream.limit.limit
    return run
