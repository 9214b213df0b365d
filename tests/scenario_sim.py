"""A Vector-style harness: a limit, the Trio limiter and the mock API under virtual time.

``run_scenario`` must run inside Trio with the ``autojump_clock`` fixture: N worker
tasks keep a backlog of requests going through ``limiter.acquire()`` to the mock via
``httpx.AsyncClient(transport=mock_transport(...))``; a 429 is retried after a full-
jitter wait. Everything that happened is recorded for the assertions.
"""

from __future__ import annotations

import bisect
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio

from pacer.control.limit import Limit, LimitChange
from pacer.mockapi import MockSettings, MockUpstream, mock_transport
from pacer.service.limiter import Limiter

CHAT = "/v1/chat/completions"
# The capacity-steps scenario: 20 in service, down to 5, up to 40.
STEP_L = 0.2
STEP_DROP_AT, STEP_RISE_AT, STEP_RUN = 2.5, 5.5, 10.5
STEP_SCHEDULE = ((0.0, 20), (STEP_DROP_AT, 5), (STEP_RISE_AT, 40))
PAYLOAD = {"model": "mock", "messages": [{"role": "user", "content": "hi"}]}


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    start: float
    end: float
    status: int


class LimitSeries:
    """The limit's step function, for a run record with ``limits`` ((time, limit) after
    each change, starting with the initial limit)."""

    __slots__ = ()
    limits: list[tuple[float, int]]

    def limit_at(self, t: float) -> int:
        times = [at for at, _ in self.limits]
        return self.limits[bisect.bisect_right(times, t) - 1][1]

    def mean_limit(self, t0: float, t1: float) -> float:
        """Time-weighted mean of the limit over [t0, t1)."""
        total = 0.0
        points = [(t0, self.limit_at(t0))] + [(t, v) for t, v in self.limits if t0 < t < t1]
        for (t, v), (t_next, _) in zip(points, [*points[1:], (t1, 0)], strict=True):
            total += v * (t_next - t)
        return total / (t1 - t0)

    def first_time(self, t0: float, predicate: Callable[[int], bool]) -> float | None:
        """First time >= t0 at which the limit satisfies ``predicate``."""
        if predicate(self.limit_at(t0)):
            return t0
        for t, v in self.limits:
            if t > t0 and predicate(v):
                return t
        return None

    def mean_in_service(self, t0: float, t1: float) -> float:
        raise NotImplementedError


def check_capacity_steps(r: LimitSeries) -> tuple[float, float, float]:
    """The capacity-steps targets up to the rise: the drop to 5 settles within +-10 %
    within 10 round trips and stays there; >= 90 % of the rise to 40 within 5 s.
    Returns the drop's round trips, the time the rise was reached and its seconds."""
    # The drop to 5: within +-10 % within 10 round trips, and it stays there.
    within = r.first_time(STEP_DROP_AT, lambda v: 4.5 <= v <= 5.5)
    assert within is not None
    drop_rtts = (within - STEP_DROP_AT) / STEP_L
    settled = STEP_DROP_AT + 10 * STEP_L
    assert drop_rtts <= 10
    assert 4.5 <= r.mean_limit(settled, STEP_RISE_AT) <= 5.5
    assert 4.5 <= r.mean_in_service(settled, STEP_RISE_AT) <= 5.5

    # The rise to 40: >= 90 % of it within 5 s, and the goodput follows.
    reached = r.first_time(STEP_RISE_AT, lambda v: v >= 36)
    assert reached is not None
    rise_s = reached - STEP_RISE_AT
    assert rise_s <= 5.0
    return drop_rtts, reached, rise_s


@dataclass(slots=True)
class ScenarioResult(LimitSeries):
    """What one run did; times are seconds since the mock started."""

    duration: float
    attempts: list[AttemptRecord] = field(default_factory=list)
    # (time, limit) after each change, starting with the initial limit.
    limits: list[tuple[float, int]] = field(default_factory=list)
    # (time, requests in service at the mock), sampled every ``sample_every`` s.
    in_service: list[tuple[float, int]] = field(default_factory=list)

    def mean_in_service(self, t0: float, t1: float) -> float:
        values = [n for t, n in self.in_service if t0 <= t < t1]
        return statistics.fmean(values)

    def ok(self, t0: float, t1: float) -> list[AttemptRecord]:
        return [a for a in self.attempts if a.status == 200 and t0 <= a.end < t1]

    def goodput(self, t0: float, t1: float) -> float:
        """Successes completed per second within [t0, t1)."""
        return len(self.ok(t0, t1)) / (t1 - t0)

    def count(self, t0: float, t1: float, status: int | None = None) -> int:
        return sum(
            1
            for a in self.attempts
            if t0 <= a.start < t1 and (status is None or a.status == status)
        )

    def share_429(self, t0: float, t1: float) -> float:
        """429s among the attempts started within [t0, t1)."""
        total = self.count(t0, t1)
        return self.count(t0, t1, 429) / total if total else 0.0

    def median_latency(self, t0: float, t1: float) -> float:
        return statistics.median(a.end - a.start for a in self.ok(t0, t1))


async def run_scenario(
    mock: MockSettings,
    limit: Limit,
    *,
    duration: float,
    workers: int,
    seed: int,
    retry_base: float = 0.1,
    retry_cap: float = 1.0,
    sample_every: float = 0.02,
) -> ScenarioResult:
    """Keep ``workers`` requests going for ``duration`` virtual seconds."""
    upstream = MockUpstream(mock)
    upstream.start()
    t0 = trio.current_time()
    result = ScenarioResult(duration=duration, limits=[(0.0, limit.limit)])

    def on_change(change: LimitChange) -> None:
        result.limits.append((change.at - t0, change.new_limit))

    limit.subscribe(on_change)
    limiter = Limiter(limit)
    rng = random.Random(seed)

    async def worker(client: httpx.AsyncClient) -> None:
        while True:  # one request, retried until it succeeds
            failures = 0
            while True:
                async with limiter.acquire() as attempt:
                    start = trio.current_time()
                    response = await client.post(CHAT, json=PAYLOAD)
                    end = trio.current_time()
                    status = response.status_code
                    if status == 429:
                        attempt.dropped("rate_limited")
                    elif status in (502, 503, 504):
                        attempt.dropped("server_error")
                    elif status < 400:
                        attempt.success()
                    else:
                        attempt.ignore()
                result.attempts.append(AttemptRecord(start - t0, end - t0, status))
                if status < 400:
                    break
                failures += 1
                # Full jitter (the retry policy's job, not the limit's).
                await trio.sleep(rng.uniform(0.0, min(retry_cap, retry_base * 2**failures)))

    async def sampler() -> None:
        while True:
            result.in_service.append((trio.current_time() - t0, upstream.stats.in_service))
            await trio.sleep(sample_every)

    transport = mock_transport(upstream)
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sampler)
                for _ in range(workers):
                    nursery.start_soon(worker, client)
    return result
