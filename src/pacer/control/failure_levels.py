"""Do failures grow with concurrency? The evidence that tells congestion from noise.

An upstream past its capacity fails (drops, 503s, timeouts) only above some
concurrency; a flaky one (resets, cut bodies, 500s at random) fails as often with
one request in flight as with forty. :class:`FailureLevels` keeps, per concurrency
(the attempts in flight when an attempt started), the outcomes of its last
``per_level`` attempts, and :meth:`FailureLevels.grows_at` asks whether failures
at a concurrency and above are more common than below it, beyond chance. A failure
that is not more common than below says nothing about the concurrency: the limit
need not move.

Two things keep a flaky upstream's failures from reading as growth:

- **An exact test.** The failures at and above a concurrency are judged by the
  binomial tail of the share below (``P(X >= failures)``), below ``alpha`` (about
  4 standard deviations, one-sided). A normal approximation at 3 standard
  deviations read one or two failures among a handful of attempts (a probe's few
  attempts above the plateau) as growth far more often than its nominal rate: a
  35 % flaky upstream was cut 8 -> 1 and held there (issue 10).
- **Settled attempts only.** A hang is known only when its timeout fires, a success
  of an attempt started at the same time long before: the levels in use hold their
  successes but not yet their hangs, while the levels just left (after a cut) get
  their hangs late and no successes any more, and look worse than the levels below.
  Judged as of ``settled_by`` (the start of the attempt whose failure is judged:
  a timeout's attempt started a timeout ago, when every attempt started before it
  has its answer), only attempts started by then count, at every level alike:
  per level the last ``per_level`` of those by start, not by arrival (kept by
  arrival, a busy level's old successes were pushed out by newer ones while its
  old hangs, arriving late, stayed: 11 failures of 11 at a level that failed 37 %).

Pure: no clock, no I/O; memory is bounded by the levels seen times ``per_level``.
"""

from __future__ import annotations

import bisect
import math

__all__ = ["FailureLevels", "binomial_tail"]

# One-sided tail of a normal distribution 4 standard deviations out (3.17e-5).
FOUR_SIGMA: float = 0.5 * math.erfc(4.0 / math.sqrt(2.0))


def binomial_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``, exact (summed in log space)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k, n + 1):
        term = math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                        + i * log_p + (n - i) * log_q)
        total += term
        # Past the mode the terms only shrink: stop once they no longer count.
        if i > n * p and term < total * 1e-12:
            break
    return min(1.0, total)


class FailureLevels:
    def __init__(self, per_level: int = 32, alpha: float = FOUR_SIGMA,
                 min_below: int = 3) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        self._per_level = per_level
        self._alpha = alpha
        self._min_below = min_below
        # concurrency -> recent outcomes sorted by start: (when it started, failed?);
        # room for attempts not settled yet beside the settled ones judged.
        self._keep = 4 * per_level
        self._levels: dict[int, list[tuple[float, bool]]] = {}

    def record(self, inflight: int, failed: bool, start: float = -math.inf) -> None:
        """One attempt's outcome, at the concurrency it started with."""
        level = self._levels.get(inflight)
        if level is None:
            level = self._levels[inflight] = []
        bisect.insort(level, (start, failed))  # answers arrive mostly in start order
        if len(level) > self._keep:
            del level[: len(level) - self._keep]

    def counts(self, inflight: int, settled_by: float = math.inf) -> tuple[int, int, int, int]:
        """(attempts, failures) below ``inflight``, then at or above it, of the
        attempts started by ``settled_by``."""
        n_lo = f_lo = n_hi = f_hi = 0
        for level, outcomes in self._levels.items():
            end = bisect.bisect_right(outcomes, (settled_by, True))
            judged = outcomes[max(0, end - self._per_level):end]
            n = len(judged)
            f = sum(failed for _, failed in judged)
            if level < inflight:
                n_lo, f_lo = n_lo + n, f_lo + f
            else:
                n_hi, f_hi = n_hi + n, f_hi + f
        return n_lo, f_lo, n_hi, f_hi

    def grows_at(self, inflight: int, settled_by: float = math.inf) -> bool:
        """Are failures at ``inflight`` and above more common than below it, beyond
        chance, among the attempts started by ``settled_by``? Without ``min_below``
        outcomes below there is nothing to compare with: no evidence that they grow
        (a first failure alone proves nothing)."""
        n_lo, f_lo, n_hi, f_hi = self.counts(inflight, settled_by)
        if n_lo < self._min_below or f_hi == 0:
            return False
        # The share below, pulled slightly toward one half so that a clean record
        # below is not read as a share of exactly zero (any failure a certainty).
        p = (f_lo + 0.5) / (n_lo + 1)
        return binomial_tail(f_hi, n_hi, p) < self._alpha
