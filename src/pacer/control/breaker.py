"""A circuit breaker per upstream, as a pure state machine (time is passed in).

``closed`` lets everything through and watches outcomes; it opens on
``failure_threshold`` consecutive failures, or when the failure share of the last
``window`` outcomes reaches ``failure_rate`` (judged only once ``min_calls`` are in).
A streak of failures is judged against the failure share seen before it: an
upstream that fails a third of its attempts at random (and serves the rest) makes
five in a row every few hundred attempts, so the streak needed grows to what such a
share makes less likely than ``streak_chance`` (at most that of a share of one half;
the share weighs ``min_calls`` outcomes at one half beside those seen, so that a
cold start's first streak is judged as at one half).
``open`` refuses everything until its cool-down has elapsed; the next ``allow`` then
moves it to ``half_open``, which lets at most ``half_open_probes`` attempts be in
flight at once. ``success_to_close`` probe successes close it; one probe failure
opens it again. The first opening of a series waits ``base_cooldown``; a reopening
waits as long as the upstream has been failing (since that first opening), at least
``base_cooldown``: a probe goes out each time the outage's age doubles (1, 2, 4, 8 s
...), so a recovery is found within about the outage's own length. (A cool-down
doubled per probe instead made the recovery hang on the jitter: a 1 s outage whose
first probe came 0.1 s before the end was found 2 s late, one the probe missed by
0.1 s at once.) Each cool-down is jittered by a factor in ``[1 - jitter, 1 +
jitter]`` so that several daemons facing the same upstream do not probe it at the
same instant, and never exceeds ``max_cooldown``. Closing ends the series.

A streak is judged once it has lasted a success's rtt (smoothed) since the first of
its attempts started: answers arrive in the order they are ready, not in the order
the attempts were sent, and of a bunch sent together the fast failures (a reset, a
500) come back before the successes. A streak shorter than that may be such a
bunch, whose successes are still on their way (a flaky upstream's slow start sent
24 at once, and ten resets came back before any success).

Every admitted attempt must be reported exactly once: ``on_success``,
``on_failure`` or ``on_ignore`` (cancelled, or says nothing about health); a probe
that is never reported keeps its half-open slot taken. Outcomes that arrive while
``open``, and in ``half_open`` beyond the probes handed out, come from attempts
admitted before the breaker opened: they are stale and ignored.

The breaker owns no clock and does no I/O; every state move is reported once to
each subscribed hook as a :class:`BreakerTransition`.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# Outcomes (while closed) the failure share before a streak is taken from.
_HISTORY = 100
# Weight of one success's rtt in the smoothed one a streak must last.
_RTT_SMOOTHING = 0.1

__all__ = [
    "Breaker",
    "BreakerHook",
    "BreakerSettings",
    "BreakerState",
    "BreakerTransition",
    "TransitionReason",
]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class TransitionReason(enum.StrEnum):
    """Reasons the breaker itself uses; :meth:`Breaker.trip` takes any string."""

    CONSECUTIVE_FAILURES = "consecutive_failures"
    FAILURE_RATE = "failure_rate"
    COOLDOWN_ELAPSED = "cooldown_elapsed"
    PROBE_SUCCEEDED = "probe_succeeded"
    PROBE_FAILED = "probe_failed"
    AUTH = "auth"  # 401/403: retrying will not help until someone fixes the key
    RATE_LIMITED_AT_MIN = "rate_limited_at_min"  # 429s persist at the minimum limit


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    failure_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    base_cooldown: float = 1.0
    max_cooldown: float = 60.0
    half_open_probes: int = 1
    success_to_close: int = 1
    jitter: float = 0.2
    streak_chance: float = 1e-4

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.window < 1 or not 1 <= self.min_calls <= self.window:
            raise ValueError("need 1 <= min_calls <= window")
        if not 0.0 < self.base_cooldown <= self.max_cooldown:
            raise ValueError("need 0 < base_cooldown <= max_cooldown")
        if self.half_open_probes < 1 or self.success_to_close < 1:
            raise ValueError("half_open_probes and success_to_close must be >= 1")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if not 0.0 < self.streak_chance < 1.0:
            raise ValueError("streak_chance must be in (0, 1)")


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state move. ``cooldown`` is set when moving to ``open``; ``detail`` carries
    the last failure's reason (e.g. ``timeout``) when failures caused the move."""

    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float
    cooldown: float | None = None
    detail: str = ""


BreakerHook = Callable[[BreakerTransition], None]


class Breaker:
    def __init__(
        self, settings: BreakerSettings | None = None, rng: random.Random | None = None
    ) -> None:
        self.settings = settings if settings is not None else BreakerSettings()
        self._rng = rng if rng is not None else random.Random()
        self._hooks: list[BreakerHook] = []
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._last_success_start = -math.inf
        self._success_rtt: float | None = None  # smoothed, of successes with a start
        self._streak_started: float | None = None  # the streak's first attempt's start
        self._outcomes: deque[bool] = deque(maxlen=self.settings.window)  # True = failure
        # A longer record, kept across closes: the share a streak is judged against.
        self._history: deque[bool] = deque(maxlen=_HISTORY)
        self._open_until: float | None = None
        self._openings = 0  # openings in a row without a close
        self._failing_since = 0.0  # the first opening of the series
        self._probes_out = 0
        self._probe_successes = 0

    # --- observation -------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state as of the last call; ``open`` moves on only in :meth:`allow`."""
        return self._state

    @property
    def open_until(self) -> float | None:
        """End of the current cool-down while ``open``, else ``None``."""
        return self._open_until if self._state is BreakerState.OPEN else None

    def retry_at(self, now: float) -> float:
        """Earliest time an attempt may be admitted. In ``half_open`` with every probe
        slot taken that depends on a probe's outcome; ``now + base_cooldown`` is then
        only a hint for when to ask again."""
        if self._state is BreakerState.CLOSED:
            return now
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            return max(now, self._open_until)
        if self._probes_out < self.settings.half_open_probes:
            return now
        return now + self.settings.base_cooldown

    def subscribe(self, hook: BreakerHook) -> None:
        """Call ``hook`` with a :class:`BreakerTransition` after every state move."""
        self._hooks.append(hook)

    # --- admission and outcomes ----------------------------------------------------

    def allow(self, now: float) -> bool:
        """May an attempt go now? A True in ``half_open`` takes a probe slot."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            if now < self._open_until:
                return False
            self._probes_out = 0
            self._probe_successes = 0
            self._move(BreakerState.HALF_OPEN, TransitionReason.COOLDOWN_ELAPSED, now)
        if self._probes_out < self.settings.half_open_probes:
            self._probes_out += 1
            return True
        return False

    def on_success(self, now: float, started: float | None = None) -> None:
        """A success; ``started``: when its attempt started (failures of attempts
        started before it then say nothing about the upstream now)."""
        if started is not None:
            self._last_success_start = max(self._last_success_start, started)
            rtt = max(0.0, now - started)
            self._success_rtt = rtt if self._success_rtt is None else (
                self._success_rtt + _RTT_SMOOTHING * (rtt - self._success_rtt))
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._outcomes.append(False)
            self._history.append(False)
        elif self._state is BreakerState.HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1  # a finished probe frees its slot for the next one
            self._probe_successes += 1
            if self._probe_successes >= self.settings.success_to_close:
                self._close(now)

    def on_failure(self, now: float, reason: str, started: float | None = None) -> None:
        """A failure; ``started``: when its attempt started. One that started before
        an attempt that has since succeeded is stale (a timeout that lands after
        the upstream answered later requests): it is not counted."""
        if started is not None and started < self._last_success_start:
            if self._state is BreakerState.HALF_OPEN and self._probes_out > 0:
                self._probes_out -= 1
            return
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures += 1
            if self._consecutive_failures == 1:
                self._streak_started = now if started is None else started
            self._outcomes.append(True)
            self._history.append(True)
            if self._consecutive_failures >= self.streak_needed() and self._streak_settled(now):
                self._open(now, TransitionReason.CONSECUTIVE_FAILURES, reason)
            elif self._failure_rate_reached():
                self._open(now, TransitionReason.FAILURE_RATE, reason)
        elif self._state is BreakerState.HALF_OPEN and self._probes_out > 0:
            self._open(now, TransitionReason.PROBE_FAILED, reason)

    def on_ignore(self, now: float) -> None:
        """An admitted attempt ended without a verdict: give its probe slot back."""
        if self._state is BreakerState.HALF_OPEN and self._probes_out > 0:
            self._probes_out -= 1

    def trip(self, now: float, reason: str, min_cooldown: float | None = None) -> bool:
        """Open from outside (``auth``, ``rate_limited_at_min``); the cool-down is at
        least ``min_cooldown`` (e.g. the server's Retry-After). Returns False, and
        changes nothing, if already open."""
        if self._state is BreakerState.OPEN:
            return False
        self._open(now, reason, "", min_cooldown)
        return True

    def hold_open(self, until: float) -> bool:
        """Keep an ``open`` breaker open until at least ``until`` (a fleet whose one
        half-open probe is another node's); no transition, the cool-downs' growth is
        untouched. Returns False, and changes nothing, unless open."""
        if self._state is not BreakerState.OPEN or self._open_until is None:
            return False
        self._open_until = max(self._open_until, until)
        return True

    def close(self, now: float, reason: str) -> bool:
        """Close from outside (a fleet's probe succeeded elsewhere). Returns False, and
        changes nothing, if already closed."""
        if self._state is BreakerState.CLOSED:
            return False
        self._close(now, reason)
        return True

    # --- internals -----------------------------------------------------------------

    def streak_needed(self) -> int:
        """Failures in a row that open the breaker: ``failure_threshold``, or more
        when the share of failures before this streak makes such a streak likely
        by chance (``share ** n >= streak_chance``).

        The share counts ``min_calls`` outcomes at one half (the most a streak is
        judged against) beside those seen: before any record (a cold start) a
        streak is judged as at one half, and the record takes over as it grows.
        (Counted as a clean record instead, a cold start's first five failures in
        a row opened the breaker on a flaky upstream that serves two thirds of
        its attempts, and an upstream's first outcomes are the least known.)"""
        s = self.settings
        streak = min(self._consecutive_failures, len(self._history))
        before = len(self._history) - streak
        failures = sum(self._history) - streak
        share = min(0.5, (failures + 0.5 * s.min_calls) / (before + s.min_calls))
        return max(s.failure_threshold, math.ceil(math.log(s.streak_chance) / math.log(share)))

    def _streak_settled(self, now: float) -> bool:
        """Has the streak lasted a success's rtt since its first attempt started (the
        successes sent with it would be back by now)?"""
        if self._success_rtt is None or self._streak_started is None:
            return True
        return now >= self._streak_started + self._success_rtt

    def _failure_rate_reached(self) -> bool:
        n = len(self._outcomes)
        # A division, not rate * n: 3 / 10 rounds to the same float as 0.3 does.
        return (
            n >= self.settings.min_calls and sum(self._outcomes) / n >= self.settings.failure_rate
        )

    def _cooldown(self, openings: int, now: float) -> float:
        s = self.settings
        age = 0.0 if openings == 1 else now - self._failing_since
        raw = min(s.max_cooldown, max(s.base_cooldown, age))
        jittered = raw * self._rng.uniform(1.0 - s.jitter, 1.0 + s.jitter)
        return min(s.max_cooldown, jittered)

    def _open(
        self, now: float, reason: str, detail: str, min_cooldown: float | None = None
    ) -> None:
        self._openings += 1
        if self._openings == 1:
            self._failing_since = now
        cooldown = self._cooldown(self._openings, now)
        if min_cooldown is not None and min_cooldown > cooldown:
            cooldown = min_cooldown
        self._open_until = now + cooldown
        self._probes_out = 0
        self._probe_successes = 0
        self._move(BreakerState.OPEN, reason, now, cooldown, detail)

    def _close(self, now: float, reason: str = TransitionReason.PROBE_SUCCEEDED) -> None:
        self._openings = 0
        self._open_until = None
        self._consecutive_failures = 0
        self._outcomes.clear()  # a fresh start: old failures must not re-trip it
        self._probes_out = 0
        self._probe_successes = 0
        self._move(BreakerState.CLOSED, reason, now)

    def _move(
        self,
        to_state: BreakerState,
        reason: str,
        now: float,
        cooldown: float | None = None,
        detail: str = "",
    ) -> None:
        change = BreakerTransition(
            from_state=self._state,
            to_state=to_state,
            reason=str(reason),
            at=now,
            cooldown=cooldown,
            detail=detail,
        )
        self._state = to_state
        for hook in self._hooks:
            hook(change)
