"""What one upstream did lately: its starts, successes and refusals (429s).

Pure: every call takes the time. The other parts of the pacing gate read it: the
rate learner starts from the success rate, a pause's ramp from the success (or
start) rate, and the refusal attribution from the concurrencies that succeeded and
how long a typical success takes.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass

__all__ = ["RecentTraffic", "TrafficSettings"]


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """``success_window``: the window of the success and start rates, measured since
    the first start but over at least ``min_success_span`` seconds.
    ``concurrency_window``: how long a success at some concurrency counts as proof
    that the upstream serves that concurrency. ``proof_successes``: a concurrency
    counts as proven once this many successes ran at it (one may be blurred)."""

    success_window: float = 2.0
    min_success_span: float = 1.0
    concurrency_window: float = 5.0
    proof_successes: int = 2

    def __post_init__(self) -> None:
        if self.proof_successes < 1:
            raise ValueError("proof_successes must be >= 1")
        for name in ("success_window", "min_success_span", "concurrency_window"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


class RecentTraffic:
    """Starts, successes (end, in flight, start) and refusals of the last few seconds."""

    def __init__(self, settings: TrafficSettings | None = None) -> None:
        self.settings = settings if settings is not None else TrafficSettings()
        # (end, inflight, start) of each success.
        self._successes: deque[tuple[float, int | None, float]] = deque()
        self._starts: deque[float] = deque()
        self._refusals: deque[float] = deque()  # times of 429s
        self.first_start: float | None = None
        self.refusals_in_a_row = 0  # 429s since the last success

    # ---- recording

    def on_start(self, now: float) -> None:
        if self.first_start is None:
            self.first_start = now
        self._starts.append(now)
        self.prune(now)

    def on_success(self, now: float, inflight: int | None, started: float | None) -> None:
        self._successes.append((now, inflight, now if started is None else started))
        self.refusals_in_a_row = 0

    def on_refusal(self, now: float) -> None:
        self._refusals.append(now)
        self.refusals_in_a_row += 1

    def prune(self, now: float) -> None:
        s = self.settings
        horizon = now - max(s.success_window, s.concurrency_window)
        while self._successes and self._successes[0][0] < horizon:
            self._successes.popleft()
        while self._starts and self._starts[0] < now - s.success_window:
            self._starts.popleft()
        while self._refusals and self._refusals[0] < now - s.success_window:
            self._refusals.popleft()

    # ---- reading

    def _span(self, now: float) -> float:
        """Seconds of the success window that have passed since the first start."""
        start = now - self.settings.success_window
        if self.first_start is not None:
            start = max(start, self.first_start)
        return max(0.0, now - start)

    def success_rate(self, now: float) -> float:
        """Successes per second over the last ``success_window`` seconds (or since the
        first start, but over at least ``min_success_span`` seconds). Paused time
        counts: a rate-capped upstream refills its quota during a pause."""
        s = self.settings
        return self.successes_since(now - s.success_window) / max(s.min_success_span,
                                                                  self._span(now))

    def start_rate(self, now: float) -> float:
        """Starts per second, measured as :meth:`success_rate` is."""
        s = self.settings
        count = sum(1 for t in self._starts if t >= now - s.success_window)
        return count / max(s.min_success_span, self._span(now))

    def successes_since(self, t: float) -> int:
        return sum(1 for end, _, _ in self._successes if end >= t)

    def refusals_since(self, t: float) -> int:
        return sum(1 for at in self._refusals if at >= t)

    def last_success(self) -> float:
        """When the last success ended (``-inf``: none in the window)."""
        return max((end for end, _, _ in self._successes), default=-math.inf)

    def proven_concurrency(self, now: float, since: float = -math.inf) -> int | None:
        """The concurrency the upstream has recently proved it serves: the
        ``proof_successes``-th highest concurrency among the successes of the last
        ``concurrency_window`` seconds sent after ``since`` (``None`` when there are
        not that many). A success proves as many as were in flight with it, but no
        more than the successes that were in service with it: attempts whose refusal
        comes a service time late were in flight too, and prove nothing; nor do
        answers that were on their way back (those that ended within a tenth of
        the typical service time after it started)."""
        s = self.settings
        horizon = now - s.concurrency_window
        recent = [(begun, end, n) for end, n, begun in self._successes if end >= horizon]
        starts = sorted(begun for begun, _, _ in recent)
        ends = sorted(end for _, end, _ in recent)
        # An answer on its way back was counted in flight, not in service: those that
        # end within a tenth of a service time of a start do not count at it.
        grace = 0.1 * self.typical_rtt(now)
        values = [min(n, bisect.bisect_right(starts, begun)
                      - bisect.bisect_right(ends, begun + grace))
                  for begun, _, n in recent if n is not None and begun > since]
        if len(values) < s.proof_successes:
            return None
        return heapq.nlargest(s.proof_successes, values)[-1]

    def typical_rtt(self, now: float) -> float:
        """The median duration of the successes of the last ``concurrency_window``
        seconds (infinite when none is known)."""
        horizon = now - self.settings.concurrency_window
        rtts = sorted(t - begun for t, _, begun in self._successes if t >= horizon)
        return rtts[len(rtts) // 2] if rtts else math.inf
