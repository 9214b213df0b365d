"""Pauses of a whole upstream, and the gradual resume after one.

Pure: every call takes the time; the resume jitter comes from the caller's
``random.Random``. A pause (a ``Retry-After`` that binds the whole upstream, a 503's,
or an explicit one) stops every start until it ends. A later, shorter pause never
shortens it; one that only nudges its end (by up to ``coalesce`` s) extends it
silently, so a storm of refusals is one pause and one :class:`PauseEvent`. The
resume is jittered (uniform in ``[until, until + min(max_resume_jitter,
resume_jitter x duration)]``) and gradual: a slow-start ramp caps the pace, starting
at the success rate before the pause and doubling every stage (``ramp_step`` s, or
long enough for ``busy_starts`` starts) while it binds (``busy_fraction`` of it
used), at most ``ramp_max_stages`` times; it lapses at the first stage that did not
bind.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

__all__ = ["PauseEvent", "PauseSettings", "Pauses"]

_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class PauseEvent:
    """One pause of the whole upstream (log it as ``upstream.paused``).

    ``duration`` is the pause asked for (seconds), ``until`` when it ends (the
    caller's monotonic clock), ``resume_at`` when starts resume (``until`` plus the
    jitter), ``at`` when it was decided.
    """

    cause: str
    duration: float
    until: float
    resume_at: float
    at: float


@dataclass(frozen=True, slots=True)
class PauseSettings:
    """Times in seconds, rates in starts per second (see the module docstring).
    ``ramp_start``/``ramp_min_rate``: the ramp begins at ``max(ramp_min_rate,
    ramp_start x the pace before the pause)``. ``max_pause`` clamps absurd values."""

    resume_jitter: float = 0.1
    max_resume_jitter: float = 5.0
    ramp_step: float = 0.5
    ramp_start: float = 1.0
    ramp_min_rate: float = 1.0
    ramp_max_stages: int = 12
    busy_fraction: float = 0.8
    busy_starts: int = 5
    coalesce: float = 1.0
    max_pause: float = 3600.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.resume_jitter <= 1.0:
            raise ValueError("resume_jitter must be in [0, 1]")
        if not 0.0 <= self.busy_fraction <= 1.0:
            raise ValueError("busy_fraction must be in [0, 1]")
        if self.busy_starts < 1:
            raise ValueError("busy_starts must be >= 1")
        if self.ramp_max_stages < 0:
            raise ValueError("ramp_max_stages must be >= 0")
        for name in ("ramp_min_rate", "ramp_step", "max_pause"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("max_resume_jitter", "ramp_start", "coalesce"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Paused:
    """What :meth:`Pauses.pause` changed: starts resume at ``resume_at``;
    ``event`` is ``None`` when the pause only extended an ongoing one."""

    resume_at: float
    event: PauseEvent | None


class Pauses:
    """The pause in force and the ramp after it."""

    def __init__(self, settings: PauseSettings | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings if settings is not None else PauseSettings()
        self._rng = rng if rng is not None else random.Random()
        self.paused_until = -math.inf
        self.resume_at = -math.inf
        self._ramp_rate: float | None = None  # the ramp's current stage
        self._ramp_next = math.inf  # the end of that stage
        self._ramp_starts = 0  # starts during that stage
        self._ramp_stage = 0

    def paused(self, now: float) -> bool:
        return now < self.resume_at

    def pause(self, now: float, seconds: float, cause: str, pace: float) -> Paused | None:
        """Pause for ``seconds`` from ``now``; ``pace``: the starts per second before
        it, where the ramp begins. ``None`` when nothing changed (nonsense, or within
        a longer pause already in force)."""
        s = self.settings
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        seconds = min(seconds, s.max_pause)
        until = now + seconds
        if until <= self.paused_until:
            return None
        ongoing = self.paused(now)
        jitter = self._rng.uniform(0.0, min(s.max_resume_jitter, s.resume_jitter * seconds))
        resume_at = max(self.resume_at, until + jitter)
        silent = ongoing and until - self.paused_until <= s.coalesce
        self.paused_until = until
        self.resume_at = resume_at
        if not ongoing or self._ramp_rate is None:
            self._ramp_rate = max(s.ramp_min_rate, s.ramp_start * pace)
        self._ramp_next = resume_at + self._stage_length(self._ramp_rate)
        self._ramp_starts = 0
        self._ramp_stage = 0
        return Paused(resume_at, None if silent else
                      PauseEvent(cause, seconds, until, resume_at, now))

    # ---- the ramp

    def _stage_length(self, rate: float) -> float:
        """A ramp stage lasts long enough to expect ``busy_starts`` starts."""
        s = self.settings
        return max(s.ramp_step, s.busy_starts / rate)

    def on_start(self) -> None:
        self._ramp_starts += 1

    def ramp_rate(self, t: float) -> float | None:
        """The ramp's cap on the pace at ``t`` (``None``: no ramp)."""
        if self._ramp_rate is not None and t < self._ramp_next:
            return self._ramp_rate
        return None

    @property
    def stage_end(self) -> float | None:
        """When the current ramp stage ends (``None``: no ramp)."""
        return self._ramp_next if self._ramp_rate is not None else None

    def next_stage(self) -> None:
        """At the end of a ramp stage: double if the stage bound, else end."""
        s = self.settings
        rate = self._ramp_rate
        if rate is None:
            return
        busy = self._ramp_starts >= s.busy_fraction * rate * self._stage_length(rate) - _EPS
        if busy and self._ramp_stage < s.ramp_max_stages:
            self._ramp_rate = rate * 2.0
            self._ramp_stage += 1
            self._ramp_next += self._stage_length(self._ramp_rate)
        else:
            self._ramp_rate = None
            self._ramp_next = math.inf
        self._ramp_starts = 0
