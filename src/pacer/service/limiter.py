"""The *limiter*: enforces whatever a :class:`~pacer.control.limit.Limit` currently says.

It follows the limit through its change hook by reassigning
``trio.CapacityLimiter.total_tokens``: lowering it lets in-flight holders finish and
blocks new ones; the slots a rise opens are let in spread out (see
:meth:`Limiter.acquire`). Each acquired slot is an
:class:`Attempt`, on which the caller records exactly one outcome (success with an
rtt, ignore, dropped), like Netflix's ``Limiter.Listener``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from pacer.control.bucket import TokenBucket
from pacer.control.limit import Limit, LimitChange, Outcome, Sample


class Attempt:
    """One slot held under the limiter; record its outcome once."""

    __slots__ = ("_done", "_lag_at_start", "_limiter", "_start", "inflight", "wire")

    def __init__(self, limiter: Limiter, start: float, inflight: int) -> None:
        self._limiter = limiter
        self._done = False
        self.start = start
        self.inflight = inflight
        # The upstream's own time as the kernel saw it (service.wire_time), when the
        # transport measured it: then the rest of the rtt was pacer's own.
        self.wire: float | None = None

    @property
    def start(self) -> float:
        return self._start

    @start.setter
    def start(self, at: float) -> None:
        """When the attempt started (the caller may restamp it, e.g. after a pacing
        wait); the loop lag it carries is counted from the same moment."""
        self._start = at
        lag = self._limiter.lag
        self._lag_at_start = 0.0 if lag is None else lag()

    def success(self) -> None:
        self._finish(Outcome.SUCCESS, "ok")

    def ignore(self) -> None:
        self._finish(Outcome.IGNORE, "ignored")

    def dropped(self, reason: str) -> None:
        self._finish(Outcome.DROPPED, reason)

    def record(self, outcome: Outcome, reason: str) -> None:
        self._finish(outcome, reason)

    @property
    def done(self) -> bool:
        return self._done

    def _finish(self, outcome: Outcome, reason: str) -> None:
        if self._done:
            return
        self._done = True
        now = self._limiter.clock()
        lag = self._limiter.lag
        rtt = now - self.start
        if self.wire is not None:
            own = min(rtt, max(0.0, rtt - self.wire))
        else:
            own = 0.0 if lag is None else max(0.0, lag() - self._lag_at_start)
        sample = Sample(
            start=self.start,
            rtt=rtt,
            inflight=self.inflight,
            outcome=outcome,
            reason=reason,
            lag=own,
            oldest_start=self._limiter.oldest_start(self),
        )
        self._limiter.limit.on_sample(sample)
        for listener in self._limiter.sample_listeners:  # fleet: the shared controller
            listener(sample)


class Limiter:
    """Admits at most ``limit.limit`` concurrent attempts."""

    def __init__(self, limit: Limit, clock: Callable[[], float] = trio.current_time,
                 lag: Callable[[], float] | None = None) -> None:
        self.limit = limit
        self.clock = clock
        # Seconds the current task has waited for the event loop so far (a counter,
        # service.loop_lag): each sample carries what its attempt waited, so the
        # limit never reads pacer's own delays as the upstream's latency.
        self.lag = lag
        self._capacity = trio.CapacityLimiter(limit.limit)
        # Slots a rise of the limit opened are let in spread out, one start's
        # share of the limit's spread rate apart from every other admission; the
        # slots in use before it are refilled at once. ``_open``: how many are.
        self._open = max(1, limit.limit)
        self._spacing = TokenBucket(1.0)
        # The attempts in flight, oldest admitted first (a dict keeps that order).
        self._outstanding: dict[Attempt, None] = {}
        # fleet: a slot source outside this process (a fleet's leases) may bound the
        # slots instead of the limit (``set_cap``); the limit still learns from every
        # sample, and ``sample_listeners`` hear them too.
        self._cap: int | None = None
        self.sample_listeners: list[Callable[[Sample], None]] = []
        # fleet: attempts in flight on the other nodes sharing the limit (as of the
        # last exchange with them), so that 429s are judged against the fleet's load.
        self.elsewhere = 0
        limit.subscribe(self._follow)

    def retarget(self, limit: Limit) -> None:
        """Follow another limit from now on (a reload changed the algorithm's bounds)."""
        self.limit.unsubscribe(self._follow)
        self.limit = limit
        limit.subscribe(self._follow)
        self._capacity.total_tokens = self._tokens()

    def _follow(self, change: LimitChange) -> None:
        self._capacity.total_tokens = self._tokens()
        self._open = min(self._open, max(1, change.new_limit))

    def set_cap(self, cap: int | None) -> None:
        """fleet: hold at most ``cap`` slots (0 allowed: none now), whatever the
        limit says; ``None`` gives the slots back to the limit."""
        self._cap = cap
        self._capacity.total_tokens = self._tokens()

    @property
    def cap(self) -> int | None:
        return self._cap

    def _tokens(self) -> int:
        return max(1, self.limit.limit) if self._cap is None else max(0, self._cap)

    @property
    def shared_inflight(self) -> int:
        """In flight here and (fleet) on the other nodes sharing the limit."""
        return self.inflight + self.elsewhere

    @property
    def inflight(self) -> int:
        return len(self._outstanding)

    def oldest_start(self, besides: Attempt) -> float | None:
        """When the attempt admitted first of those still in flight, ``besides``
        left out, started (``None``: no other)."""
        for attempt in self._outstanding:
            if attempt is not besides:
                return attempt.start
        return None

    @property
    def waiting(self) -> int:
        return self._capacity.statistics().tasks_waiting

    async def _spread(self) -> None:
        """A rise of the limit (a probe) opens slots at the moment an answer frees
        one: sent at once beside that refill, the bunch reaches a rate cap with a
        small burst as a burst (one of 20/s with a burst of 2 refused every probe
        past 3 in flight for 10 s). An admission past the slots open waits its turn
        at the limit's spread rate (:attr:`AimdLimit.spread_rate
        <pacer.control.aimd.AimdLimit.spread_rate>`), counted from every admission;
        a refill of a slot open before goes at once."""
        rate = getattr(self.limit, "spread_rate", None)
        now = self.clock()
        self._spacing.set_rate(now, rate)
        if rate is not None and self.inflight >= self._open:
            at = self._spacing.earliest(now, 1.0)
            self._spacing.take(now, 1.0)  # its turn is taken now: others queue after
            if at > now:
                await trio.sleep_until(at)
            self._open = min(self._open + 1, self._tokens())
        else:
            self._spacing.take(now, 1.0)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Attempt]:
        """Hold one slot for the body of the ``async with``.

        Leaving without recording an outcome (cancellation, an unexpected error)
        counts as *ignore*: it says nothing about the upstream's load.
        """
        borrower = object()
        await self._capacity.acquire_on_behalf_of(borrower)
        try:
            await self._spread()
        except BaseException:
            self._capacity.release_on_behalf_of(borrower)
            raise
        attempt = Attempt(self, self.clock(), self.inflight + 1)
        self._outstanding[attempt] = None
        try:
            yield attempt
        finally:
            del self._outstanding[attempt]
            self._capacity.release_on_behalf_of(borrower)
            if not attempt.done:
                attempt.ignore()
