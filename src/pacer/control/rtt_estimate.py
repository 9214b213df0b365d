"""The rtt estimates the adaptive limit judges latency by (pure: times are passed in).

:class:`RttEstimate` holds

- the *smoothed rtt* of the samples since the last restart (the limit restarts it at
  each decrease, so each decrease is judged on its own round trips): a plain mean
  until it is warm, then an EWMA of weight ``smoothing``; and the EWMA of their mean
  deviation (TCP's rttvar, Vector's deviation), which sizes the noise;
- the *no-load rtt*: the minimum, over the last ``window`` seconds, of a 4x slower
  EWMA of the same samples (a minimum of noisy values is biased low). Before that
  window has a value: slow start's lowest round-mean rtt (with the standard error of
  its few rtts), else one remembered from an earlier run.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

__all__ = ["DEV_TO_SD", "RttEstimate", "ewma_memory"]

# The no-load rtt follows an EWMA this many times slower than the smoothed rtt: a
# minimum of noisy values is biased low, and a low baseline cuts too deep.
_BASELINE_SLOWER: Final = 4.0
# A mean absolute deviation is about 0.8 standard deviations (normal): sd = 1.25 x it.
DEV_TO_SD: Final = 1.25


def ewma_memory(weight: float) -> int:
    """Samples an EWMA of this weight remembers: its variance is that of their mean."""
    return math.ceil((2.0 - weight) / weight - 1e-9)


class RttEstimate:
    """Smoothed rtt, its deviation, and the no-load rtt (see the module docstring)."""

    def __init__(self, smoothing: float, window: float) -> None:
        self.smoothing = smoothing
        self.window = window
        self.srtt: float | None = None
        self.count = 0  # samples since the last restart
        self.dev = 0.0  # mean deviation of the rtt samples (EWMA)
        self.quiet_dev = math.inf  # the lowest it has been since it was warm
        self.warm_count = ewma_memory(smoothing)
        # A slower EWMA of the same samples feeds the no-load rtt.
        self._brtt: float | None = None
        self._brtt_weight = smoothing / _BASELINE_SLOWER
        self.baseline_warm_count = ewma_memory(self._brtt_weight)
        # Monotonic deque of (at, slow EWMA, its standard error then): its head is
        # the windowed minimum.
        self._window: deque[tuple[float, float, float]] = deque()
        self.first_min = math.inf  # slow start's lowest round-mean rtt
        self._first_min_count = 0  # ... and how many rtts that mean took
        self.seed: float | None = None  # a remembered no-load rtt (resume)

    def observe(self, rtt: float) -> None:
        # A plain mean until warm, then an EWMA: no bias toward the first sample.
        self.count += 1
        weight = max(self.smoothing, 1.0 / self.count)
        if self.srtt is None:
            self.srtt, self.dev = rtt, 0.0
        else:
            self.dev += weight * (abs(rtt - self.srtt) - self.dev)
            self.srtt += weight * (rtt - self.srtt)
        if self.warm:
            self.quiet_dev = min(self.quiet_dev, self.dev)
        weight = max(self._brtt_weight, 1.0 / self.count)
        self._brtt = rtt if self._brtt is None else self._brtt + weight * (rtt - self._brtt)

    def restart(self) -> None:
        """Count the samples afresh (the smoothed value carries on until they come)."""
        self.count = 0

    @property
    def warm(self) -> bool:
        return self.srtt is not None and self.count >= self.warm_count

    def record_baseline(self, now: float, needed: int) -> None:
        """Enter the slow EWMA into the window, once ``needed`` samples fed it.
        Old values expire either way: when decreases come faster than ``needed``
        samples, no new value enters, and the old minimum must not rule on."""
        window = self._window
        while window and window[0][0] < now - self.window:
            window.popleft()
        if self._brtt is None or self.count < needed:
            return
        rtt = self._brtt
        while window and window[-1][1] >= rtt:
            window.pop()
        samples = min(self.count, self.baseline_warm_count)
        window.append((now, rtt, DEV_TO_SD * self.dev / math.sqrt(samples)))

    def offer_round_mean(self, mean: float, count: int) -> None:
        """A slow-start round's mean rtt, of ``count`` rtts."""
        if mean < self.first_min:
            self.first_min, self._first_min_count = mean, count

    @property
    def min_rtt(self) -> float | None:
        if self._window:
            return self._window[0][1]
        if math.isfinite(self.first_min):
            return self.first_min
        return self.seed

    def noise(self) -> float:
        """Standard deviation of the smoothed rtt: an EWMA of weight w has the
        variance of its samples times w / (2 - w); a mean deviation is ~0.8 sd."""
        w = self.smoothing
        return DEV_TO_SD * self.dev * math.sqrt(w / (2.0 - w))

    def base_noise(self) -> float:
        """Standard error of the no-load rtt, a mean of a few rtts: slow start's
        lowest round (three heavy-tailed rtts, the first answers back, the short
        ones, may be half the true mean) or the slow EWMA as it entered the window
        (16 samples in slow start, again the short ones first), by the spread of
        the rtts then. Taken as exact, either reads every later rtt of a
        heavy-tailed upstream as queued; the spread of a later queue (a knee's) is
        not the baseline's."""
        if self._window:
            return self._window[0][2]
        return self.first_min_noise()

    def first_min_noise(self) -> float:
        """Standard error of slow start's lowest round mean (0: none yet)."""
        if not math.isfinite(self.first_min):
            return 0.0
        return DEV_TO_SD * self.dev / math.sqrt(self._first_min_count)
