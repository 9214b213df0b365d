"""Round trips, as the adaptive limit counts them (pure: times are passed in).

A round trip begins when the limit says (its start and the limit then) and gathers
the successes that come back within it: the most in flight any of them saw (did the
round use the limit?), how many, their rtts, and of those sent since the last
decrease (*fresh*) the rtts and concurrency. Slow start also keeps its previous
round and the spread of rtts within its rounds, pooled, for its delay test
(:meth:`RoundTracker.only_queued`).
"""

from __future__ import annotations

import math

from pacer.control.moments import Moments

__all__ = ["RoundTracker"]


class RoundTracker:
    """The current round trip, and slow start's record of the rounds before it."""

    def __init__(self, limit: int) -> None:
        self.start = -math.inf
        self.limit = limit  # the limit when the round began
        self.max_inflight = 0  # the most in flight a success of the round saw
        self.done = 0  # successes within this round
        self.rtt_sum = 0.0  # ... and their rtts
        self.fresh = Moments()  # ... of those sent since the last decrease
        self.fresh_inflight = Moments()  # ... and their concurrency
        # Slow start's previous round (fresh rtts, their concurrency).
        self._prev: tuple[Moments, Moments] | None = None
        # Squared deviations of slow start's rtts from their round's mean, and their
        # degrees of freedom: the rtt's spread at a given concurrency, pooled (a
        # round of 3 heavy-tailed rtts may show almost none).
        self._spread = 0.0
        self._spread_df = 0

    def add(self, inflight: int, rtt: float, *, fresh: bool, shows_use: bool) -> None:
        """One success back within the round. ``shows_use``: its concurrency counts
        toward the round's use of the limit."""
        if shows_use:
            self.max_inflight = max(self.max_inflight, inflight)
        self.done += 1
        self.rtt_sum += rtt
        if fresh:
            self.fresh.add(rtt)
            self.fresh_inflight.add(inflight)

    def begin(self, now: float, limit: int, *, slow_start: bool) -> None:
        """Start the next round; in slow start, the one ending is remembered."""
        if slow_start and self.fresh.count:
            self._prev = (self.fresh, self.fresh_inflight)
            self._spread += self.fresh.deviations
            self._spread_df += self.fresh.count - 1
        self.start = now
        self.max_inflight = 0
        self.done = 0
        self.rtt_sum = 0.0
        self.fresh = Moments()
        self.fresh_inflight = Moments()
        self.limit = limit

    def only_queued(self, share: float, z: float, min_samples: int,
                    min_growth: float) -> bool:
        """Slow start's delay test per round (HyStart's, made proportional): did this
        round's fresh rtts take longer than the last round's in proportion to the
        concurrency added? Rate = concurrency / rtt (Little's law): an rtt that grows
        by past ``share`` of the relative growth, by more than ``z`` times the noise
        of both means, delivered little of the growth: a queue. The noise is the
        spread of rtts within slow start's rounds, pooled: a round of three
        heavy-tailed rtts may by chance show none. Judged only on ``min_samples``
        rtts or more, and a growth of ``min_growth`` (a round that added little
        shows the bias of its few, early, short answers more than what it bought)."""
        prev, rtts, inflight = self._prev, self.fresh, self.fresh_inflight
        if prev is None or rtts.count < min_samples:
            return False
        growth = inflight.mean / prev[1].mean - 1.0
        df = self._spread_df + rtts.count - 1
        if growth < min_growth or df < min_samples:
            return False
        variance = (self._spread + rtts.deviations) / df
        factor = 1.0 + share * growth
        noise = math.sqrt(variance * (1.0 / rtts.count + factor * factor / prev[0].count))
        return rtts.mean > factor * prev[0].mean + z * noise
