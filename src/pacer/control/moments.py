"""Count, mean and spread of a set of values, added one at a time (pure)."""

from __future__ import annotations

import math

__all__ = ["Moments"]


class Moments:
    """Count, mean, squared deviations and standard error of the mean of some values."""

    __slots__ = ("count", "squares", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.squares += value * value

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def deviations(self) -> float:
        """Sum of the squared deviations from the mean."""
        return max(0.0, self.squares - self.total * self.total / self.count)

    @property
    def stderr(self) -> float:
        n = self.count
        return math.sqrt(self.deviations / (n - 1) / n)
