"""The controllers pacer is measured against, as :class:`pacer.control.limit.Limit` s.

Each is fed the same samples as pacer's own limit (one per finished attempt: start,
rtt, in flight at its start, outcome) by the same sender, so only the algorithm
differs. Both are ports of published algorithms, written from their descriptions
and source, with their published defaults except where noted:

- :class:`VectorArcLimit`: Vector's adaptive request concurrency (ARC,
  ``src/sinks/util/adaptive_concurrency/controller.rs``). One decision per mean
  round trip: the interval's mean rtt against an exponentially weighted mean and
  variance of past intervals (West's recurrence, alpha 0.4); +1 when the limit was
  reached without back-pressure and the mean rtt did not exceed the past mean;
  x0.9 (floor, at least 1) on back-pressure (a dropped attempt: 429, 503, a
  timeout) or when the mean rtt exceeds the past mean by 2.5 standard deviations.
  Initial limit 1, maximum 200 (Vector's defaults).
- :class:`Gradient2Limit`: Netflix concurrency-limits' ``Gradient2Limit``. Per
  sample: a long-window exponential average of the rtt (window 600 samples, the
  first 10 a plain mean), decayed x0.95 when it exceeds twice the sample; no
  change while fewer than half the limit are in flight; otherwise gradient
  ``clamp(1.5 * long / sample, 0.5, 1)``, new limit ``limit * gradient + 4``,
  smoothed ``0.8 * limit + 0.2 * new``. Drops feed it like any sample (Netflix's
  ``SimpleLimiter`` does: their near-zero rtts are its known weakness, #176).
  Netflix's defaults start at 20 with a floor of 20; here both are 1, like every
  contender, so that the comparison is of finding the limit, not of being told.
"""

from __future__ import annotations

import math

from pacer.control.limit import HookedLimit, HookList, LimitChange, Outcome, Sample

__all__ = ["Gradient2Limit", "VectorArcLimit"]


class _EwmaVar:
    """Exponentially weighted mean and variance (West), as Vector's ``EwmaVar``."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.mean: float | None = None
        self.variance = 0.0

    def update(self, x: float) -> None:
        if self.mean is None:
            self.mean, self.variance = x, 0.0
            return
        diff = x - self.mean
        increment = self.alpha * diff
        self.mean += increment
        self.variance = (1.0 - self.alpha) * (self.variance + diff * increment)


class VectorArcLimit(HookedLimit):
    """Vector's ARC controller (see the module docstring)."""

    def __init__(self, *, initial_limit: int = 1, max_limit: int = 200,
                 decrease_ratio: float = 0.9, ewma_alpha: float = 0.4,
                 rtt_deviation_scale: float = 2.5) -> None:
        self._limit = initial_limit
        self.max_limit = max_limit
        self.decrease_ratio = decrease_ratio
        self.deviation_scale = rtt_deviation_scale
        self._past = _EwmaVar(ewma_alpha)
        self._next_update = -math.inf
        self._rtt_sum = 0.0
        self._rtt_count = 0
        self._back_pressure = False
        self._reached_limit = False
        self._hooks = HookList()

    def on_sample(self, sample: Sample) -> int:
        now = sample.start + sample.rtt
        # Vector marks the limit reached when a start brings the in-flight count to it.
        if sample.inflight >= self._limit:
            self._reached_limit = True
        if sample.outcome is Outcome.DROPPED:
            self._back_pressure = True
        elif sample.outcome is Outcome.SUCCESS:
            self._rtt_sum += sample.rtt
            self._rtt_count += 1
        current = self._rtt_sum / self._rtt_count if self._rtt_count else None
        if self._past.mean is None:
            if current is not None:
                self._past.update(current)
                self._next_update = now + current
            return self._limit
        if now < self._next_update:
            return self._limit
        self._manage(current, sample, now)
        if current is not None:
            self._past.update(current)
        self._next_update = now + self._past.mean
        self._rtt_sum, self._rtt_count = 0.0, 0
        self._back_pressure = self._reached_limit = False
        return self._limit

    def _manage(self, current: float | None, sample: Sample, now: float) -> None:
        past_mean = self._past.mean
        assert past_mean is not None
        threshold = math.sqrt(self._past.variance) * self.deviation_scale
        old = self._limit
        if (old < self.max_limit and self._reached_limit and not self._back_pressure
                and current is not None and current <= past_mean):
            new, reason = old + 1, "increase"
        elif old > 1 and (self._back_pressure
                          or (current if current is not None else 0.0)
                          >= past_mean + threshold):
            new = max(1, math.floor(old * self.decrease_ratio))
            reason = "back_pressure" if self._back_pressure else "latency"
        else:
            return
        self._limit = new
        self._hooks.emit(LimitChange(old, new, reason, sample.inflight, sample.rtt, now))


class Gradient2Limit(HookedLimit):
    """Netflix's Gradient2 limit (see the module docstring)."""

    def __init__(self, *, initial_limit: int = 1, min_limit: int = 1, max_limit: int = 200,
                 smoothing: float = 0.2, rtt_tolerance: float = 1.5, long_window: int = 600,
                 queue_size: int = 4) -> None:
        self._estimate = float(initial_limit)
        self._limit = initial_limit
        self.min_limit, self.max_limit = min_limit, max_limit
        self.smoothing = smoothing
        self.rtt_tolerance = rtt_tolerance
        self.queue_size = queue_size
        self._long_factor = 2.0 / (long_window + 1)
        self._long: float | None = None
        self._long_count = 0
        self._warmup = 10
        self._hooks = HookList()

    def _add_long(self, rtt: float) -> float:
        self._long_count += 1
        if self._long is None:
            self._long = rtt
        elif self._long_count <= self._warmup:
            self._long += (rtt - self._long) / self._long_count  # a plain mean first
        else:
            self._long = self._long * (1 - self._long_factor) + rtt * self._long_factor
        return self._long

    def on_sample(self, sample: Sample) -> int:
        if sample.outcome is Outcome.IGNORE:
            return self._limit
        short = max(sample.rtt, 1e-9)
        long = self._add_long(short)
        if long / short > 2.0:
            self._long = long = long * 0.95
        if sample.inflight < self._estimate / 2:
            return self._limit  # application-limited: no change
        gradient = max(0.5, min(1.0, self.rtt_tolerance * long / short))
        new = self._estimate * gradient + self.queue_size
        new = self._estimate * (1 - self.smoothing) + new * self.smoothing
        self._estimate = max(self.min_limit, min(self.max_limit, new))
        old, self._limit = self._limit, int(self._estimate)
        if self._limit != old:
            now = sample.start + sample.rtt
            self._hooks.emit(LimitChange(old, self._limit, "gradient", sample.inflight,
                                         sample.rtt, now))
        return self._limit
