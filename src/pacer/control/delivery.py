"""What the upstream delivered lately: success times, counted per smoothed rtt (pure).

By Little's law the successes completed within the last smoothed rtt are the
concurrency the upstream served; the best rate over a few recent windows times the
no-load rtt is the concurrency it served without a queue.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

__all__ = ["DeliveryLog"]

# Successes kept, whatever the rtt (bounds memory).
_MAX_COMPLETIONS: Final = 100_000
# A latency cut sizes the limit by the delivered rate (the best of a few windows of
# this many smoothed rtts: the latest may be a dip caused by the overshoot) times the
# no-load rtt. No headroom on top: a plateau that queues would feed its own rtt to
# the baseline when the old minimum expires, and the baseline would creep up.
_RATE_SPAN: Final = 2.0
_RATE_WINDOWS: Final = 3


class DeliveryLog:
    """Completion times of successes, as far back as the rate windows need."""

    def __init__(self) -> None:
        self._completions: deque[float] = deque(maxlen=_MAX_COMPLETIONS)

    def record(self, now: float, srtt: float | None) -> None:
        self._completions.append(now)
        if srtt is not None:
            # Enough history for the rate windows of a latency cut.
            horizon = now - (_RATE_SPAN + _RATE_WINDOWS) * srtt
            while self._completions[0] < horizon:
                self._completions.popleft()

    def delivered(self, now: float, srtt: float) -> int:
        """Successes completed within the last smoothed rtt: the concurrency
        delivered (Little's law)."""
        since = now - srtt
        count = 0
        for at in reversed(self._completions):
            if at <= since:
                break
            count += 1
        return count

    def unqueued_concurrency(self, now: float, srtt: float, base: float) -> int:
        """Delivered rate x no-load rtt: the concurrency served without a queue."""
        span = _RATE_SPAN * srtt
        best = max(
            sum(1 for at in self._completions if end - span < at <= end)
            for end in (now - k * srtt for k in range(_RATE_WINDOWS))
        )
        return math.floor(best / span * base + 0.5)
