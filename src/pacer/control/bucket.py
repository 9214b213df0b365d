"""A token bucket whose rate may change: the pace of starts (or of tokens).

Pure: every call takes the time. Holding at most ``cap`` of credit, it spreads starts
evenly instead of letting them burst; a start that costs more than the credit puts
it into debt that later starts wait out.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["TokenBucket"]

_EPS: Final = 1e-9


class TokenBucket:
    """A token bucket whose rate may change (``None`` = unlimited).

    ``level`` is the credit in units (starts or tokens), at most ``cap``; it may go
    negative (debt) when a start costs more than the credit. ``stamp`` is the time the
    level refers to; it may lie in the future after :meth:`restart` (a resume).
    """

    __slots__ = ("cap", "level", "rate", "stamp")

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.rate: float | None = None
        self.level = cap
        self.stamp = -math.inf

    def advance(self, t: float) -> None:
        if t <= self.stamp:
            return
        if self.rate is None:
            self.level = self.cap
        else:
            self.level = min(self.cap, self.level + (t - self.stamp) * self.rate)
        self.stamp = t

    def set_rate(self, t: float, rate: float | None) -> None:
        self.advance(t)
        self.rate = rate

    def restart(self, t: float, level: float) -> None:
        """Start over at ``t`` (future allowed) with ``level`` credit."""
        self.stamp = t
        self.level = min(self.cap, level)

    def earliest(self, t: float, cost: float) -> float:
        """Earliest time >= ``t`` at which a start of ``cost`` may go, at this rate."""
        if self.rate is None or cost <= 0:
            return t
        base = max(t, self.stamp)
        level = self.level
        if base > self.stamp:
            level = min(self.cap, level + (base - self.stamp) * self.rate)
        need = min(cost, self.cap)
        if level >= need - _EPS:
            return base
        return base + (need - level) / self.rate

    def take(self, t: float, cost: float) -> None:
        self.advance(t)
        if self.rate is not None:
            self.level -= cost

    def credit(self, t: float) -> float | None:
        if self.rate is None:
            return None
        if t <= self.stamp:
            return self.level
        return min(self.cap, self.level + (t - self.stamp) * self.rate)
