"""What a node may use while Redis is unreachable: a safe local share.

It starts at the node's last share of the fleet's limit and decays toward a floor
(halving its distance to the floor every ``half_life`` seconds), so a node cut off
from a fleet that goes on without it gives its capacity back over time; a drop
(429, 503, timeout) cuts it at once, at most once per ``cut_gap``. It never grows:
a node that cannot see the fleet never assumes the whole limit is its own. Its
part of a quota announced in headers shrinks with it (:meth:`DegradedShare.fraction`).
Pure: time is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DegradedSettings:
    floor: int = 1
    half_life: float = 20.0
    decrease: float = 0.7
    cut_gap: float = 0.5


class DegradedShare:
    def __init__(self, start: int, now: float, settings: DegradedSettings) -> None:
        self.settings = settings
        self._start = float(max(start, settings.floor))
        self._origin = self._start  # the share it started from
        self._since = now
        self._last_cut = -math.inf

    def cap(self, now: float) -> int:
        s = self.settings
        elapsed = max(0.0, now - self._since)
        level = s.floor + (self._start - s.floor) * 0.5 ** (elapsed / s.half_life)
        return max(s.floor, int(level + 0.5))  # rounded (level >= 0): 2 stays 2 a half-life

    def fraction(self, now: float) -> float:
        """What is left of the share it started from, in (0, 1]: the node's part of
        a quota shrinks by as much as its slots."""
        return min(1.0, self.cap(now) / self._origin)

    def on_drop(self, now: float) -> bool:
        """A congestion signal seen locally; True if it cut the share."""
        if now - self._last_cut < self.settings.cut_gap:
            return False
        current = self.cap(now)
        self._start = float(max(self.settings.floor, math.floor(current * self.settings.decrease)))
        self._since = now
        self._last_cut = now
        return True
