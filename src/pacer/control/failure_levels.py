"""Do failures grow with concurrency? The evidence that tells congestion from noise.

An upstream past its capacity fails (drops, 503s, timeouts) only above some
concurrency; a flaky one (resets, cut bodies, 500s at random) fails as often with
one request in flight as with forty. :class:`FailureLevels` keeps, per concurrency
(the attempts in flight when an attempt started), the outcomes of its last
``per_level`` attempts, and :meth:`FailureLevels.grows_at` asks whether failures
at a concurrency and above are more common than below it, beyond chance (a
one-sided binomial test at ``z`` standard deviations). A failure that is not more
common than below says nothing about the concurrency: the limit need not move.

Pure: no clock, no I/O; memory is bounded by the levels seen times ``per_level``.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["FailureLevels"]


class FailureLevels:
    def __init__(self, per_level: int = 32, z: float = 3.0, min_below: int = 3) -> None:
        self._per_level = per_level
        self._z = z
        self._min_below = min_below
        self._levels: dict[int, deque[bool]] = {}  # concurrency -> recent outcomes (True: failed)

    def record(self, inflight: int, failed: bool) -> None:
        """One attempt's outcome, at the concurrency it started with."""
        level = self._levels.get(inflight)
        if level is None:
            level = self._levels[inflight] = deque(maxlen=self._per_level)
        level.append(failed)

    def counts(self, inflight: int) -> tuple[int, int, int, int]:
        """(attempts, failures) below ``inflight``, then at or above it."""
        n_lo = f_lo = n_hi = f_hi = 0
        for level, outcomes in self._levels.items():
            if level < inflight:
                n_lo += len(outcomes)
                f_lo += sum(outcomes)
            else:
                n_hi += len(outcomes)
                f_hi += sum(outcomes)
        return n_lo, f_lo, n_hi, f_hi

    def grows_at(self, inflight: int) -> bool:
        """Are failures at ``inflight`` and above more common than below it, beyond
        chance? Without ``min_below`` outcomes below there is nothing to compare
        with: no evidence that they grow (a first failure alone proves nothing)."""
        n_lo, f_lo, n_hi, f_hi = self.counts(inflight)
        if n_lo < self._min_below or n_hi == 0:
            return False
        # The share below, pulled slightly toward one half so that a clean record
        # below still allows a single failure above to be chance-free evidence.
        p = (f_lo + 0.5) / (n_lo + 1)
        expected = p * n_hi
        spread = math.sqrt(n_hi * p * (1.0 - p))
        return f_hi > expected + self._z * spread
