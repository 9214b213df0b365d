"""A request rate learned from 429s, for upstreams that cap the rate without saying so.

Pure: every call takes the time. An AIMD on the rate (the concurrency limit has
its own, :mod:`pacer.control.aimd`): there is no rate until the first refusal that
the attribution (:mod:`pacer.control.attribution`) pins on a rate cap. Then it is
set to the recent success rate x ``backoff`` and searched upward: x(1 +
``search_growth``) after the first clean interval in which it bound, and a growth
that doubles with each further one in a row (x1.1, x1.2, x1.4, x1.8, then at most
x2: that success rate may have been measured early, or while the concurrency limit
bound, far below the cap). A search interval is ``search_interval`` s (over a rate
cap of 20/s first learned at 8/s, the search at one step a second left the first
3 s of the steady part below 90 % in 2 runs of 11 over real sockets).
From the next decrease on, each such refusal multiplies it by ``backoff`` (from the
success rate if that is lower, by at most ``backoff²`` at once; at most one decrease
per ``decrease_interval``, unless the refused attempt started after the last
decrease, at the rate set then: new evidence), and each clean interval (no 429 at
all) in which the rate bound adds ``increase_step`` x the rate set at the last
decrease; after ``research_after`` such intervals in a row the search starts again
(the cap may have risen, or the rate was learned from a concurrency cap's burst of
429s: 2% a second took minutes back from 9/s to a capacity of 80/s).
It bound when ``busy_fraction`` of it was used over at least
``increase_interval`` s and ``busy_starts`` starts, and, when the caller says which
starts the pace held back (as :class:`~pacer.service.pacing_gate.PacingGate` does),
that share of the starts was held: something else, such as the concurrency limit,
may bind instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = ["RateChange", "RateLearner", "RateLearnerSettings", "room_for"]

_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class RateChange:
    """One change of the request rate learned from 429s (log it as ``rate.changed``).

    Rates are in requests per second; ``None`` means no learned limit. ``reason`` is
    ``rate_limited`` (a decrease after a 429) or ``probe`` (an additive increase).
    """

    old_rate: float | None
    new_rate: float | None
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class RateLearnerSettings:
    """Times in seconds, rates in requests per second (see the module docstring)."""

    backoff: float = 0.93
    decrease_interval: float = 1.0
    increase_interval: float = 1.0
    search_interval: float = 0.5
    increase_step: float = 0.02
    search_growth: float = 0.1
    min_increase: float = 0.001
    busy_fraction: float = 0.8
    busy_starts: int = 5
    min_rate: float = 0.1
    research_after: int = 4


    def __post_init__(self) -> None:
        if not 0.0 < self.backoff < 1.0:
            raise ValueError("backoff must be in (0, 1)")
        if not 0.0 <= self.busy_fraction <= 1.0:
            raise ValueError("busy_fraction must be in [0, 1]")
        if self.busy_starts < 1:
            raise ValueError("busy_starts must be >= 1")
        if self.research_after < 1:
            raise ValueError("research_after must be >= 1")
        for name in ("decrease_interval", "increase_interval", "search_interval", "min_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("increase_step", "min_increase", "search_growth"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def room_for(rate: float, rtt: float, headroom: float = 1.25) -> int:
    """The concurrency a rate of ``rate`` starts/s needs at ``rtt`` s each (Little's
    law), with ``headroom``: enough that the rate, not the concurrency, binds."""
    return max(1, math.ceil(rate * rtt * headroom))


class RateLearner:
    """The learned request rate (``rate``: ``None`` until a rate cap is found)."""

    def __init__(self, settings: RateLearnerSettings | None = None) -> None:
        self.settings = settings if settings is not None else RateLearnerSettings()
        self.rate: float | None = None
        self._base = 0.0  # the rate set at the last decrease
        self._searching = False  # growing multiplicatively until the second decrease
        self._search_step = 0  # clean, bound intervals in a row while searching
        self._additive_run = 0  # ... and while growing additively
        self._last_decrease = -math.inf
        # The current increase interval: its start, its starts, how many of them the
        # caller said whether the pace held, how many it held, and no 429 in it.
        self._mark: float | None = None
        self._starts = 0
        self._told = 0
        self._held = 0
        self._clean = True

    def resume(self, now: float, rate: float) -> None:
        """Start from a rate learned before (a restart). It is searched upward again,
        as a first estimate is, in case the capacity rose meanwhile."""
        rate = max(self.settings.min_rate, rate)
        self.rate = self._base = rate
        self._searching = True
        self._search_step = 0
        self._mark = now

    def on_start(self, held: bool | None) -> None:
        """A start was taken; ``held``: whether the pace kept it waiting (``None``:
        not told)."""
        self._starts += 1
        if held is not None:
            self._told += 1
            self._held += held

    def on_refusal(self) -> None:
        """A 429, whatever it is put down to: no increase in this interval."""
        self._clean = False

    def _new_interval(self, now: float) -> None:
        self._mark = now
        self._starts = self._told = self._held = 0
        self._clean = True

    def on_rate_limited(self, now: float, started: float | None,
                        success_rate: float) -> RateChange | None:
        """A 429 put down to a rate cap, to an attempt sent at ``started`` (``None``:
        unknown), while ``success_rate`` successes per second came through."""
        s = self.settings
        self._clean = False
        # One decrease per decrease_interval; sooner only for an attempt sent after
        # the last decrease (at the rate set then: new evidence, as in the AIMD).
        sent_since = started is not None and started > self._last_decrease
        if now - self._last_decrease < s.decrease_interval and not sent_since:
            return None
        old = self.rate
        if old is None:
            if success_rate <= 0:
                return None  # nothing succeeded yet: nothing to start from
            new = success_rate * s.backoff
            self._searching = True
        else:
            # The success rate is what the upstream let through: when the learned rate
            # is above it, come down to it (but by at most two backoffs at once).
            new = max(min(old, success_rate) * s.backoff, old * s.backoff**2)
            self._searching = False
        new = max(s.min_rate, new)
        self._search_step = 0
        self._additive_run = 0
        self._last_decrease = now
        self.rate = self._base = new
        self._new_interval(now)
        return None if new == old else RateChange(old, new, "rate_limited", now)

    def maybe_increase(self, now: float, paused: bool) -> RateChange | None:
        """At the end of an interval in which the rate bound and nothing was refused,
        raise it (not while the upstream is ``paused``)."""
        s = self.settings
        if self.rate is None:
            return None
        if self._mark is None:
            self._mark = now
        elapsed = now - self._mark
        interval = s.search_interval if self._searching else s.increase_interval
        if elapsed < max(interval, s.busy_starts / self.rate):
            return None
        busy = self._starts >= s.busy_fraction * self.rate * elapsed - _EPS
        if self._told:
            busy = busy and self._held >= s.busy_fraction * self._told - _EPS
        change = None
        if self._clean and busy and not paused:
            old = self.rate
            if self._searching:
                growth = min(1.0, s.search_growth * 2.0 ** self._search_step)
                self.rate = old * (1.0 + growth)
                self._search_step += 1
            else:
                self.rate = old + max(s.min_increase, s.increase_step * self._base)
                self._additive_run += 1
                if self._additive_run >= s.research_after:
                    self._searching = True
                    self._search_step = 0
            change = RateChange(old, self.rate, "probe", now)
        elif not self._clean:
            self._additive_run = 0
        self._new_interval(now)
        return change
