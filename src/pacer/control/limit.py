"""The limit *algorithm* interface, in the shape of Netflix's concurrency-limits ``Limit``.

A limit is a pure object: it is fed one :class:`Sample` per finished attempt and
answers with the current concurrency limit. It does no I/O and owns no clock (the
caller passes times in), so it can be tested with exact values. Whoever needs to
react to a change (the limiter that enforces it, the log) registers a hook.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Outcome(enum.Enum):
    """What one attempt says about the upstream's load (Netflix's Listener verbs)."""

    SUCCESS = "success"  # answered normally: the rtt is a valid load sample
    IGNORE = "ignore"  # says nothing about load (e.g. a 404, a cancelled attempt)
    DROPPED = "dropped"  # back-pressure: 429, 503, timeout, connection error


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished attempt.

    ``start`` and ``rtt`` are seconds on the caller's monotonic clock; ``inflight``
    is the number of attempts in flight when this one started (itself included);
    ``reason`` says why an attempt was dropped (``rate_limited``, ``timeout``,
    ``server_error``, ``connection``) and is ``ok`` otherwise. ``lag`` is the part
    of ``rtt`` that was the caller's own lateness (its event loop busy when the
    answer came), measured by the caller: the upstream did not add it.
    ``oldest_start``: when the longest-outstanding other attempt started, as this
    one finished (``None``: none, or not told): an upstream that drops what it
    cannot serve says nothing of it until the timeout.
    """

    start: float
    rtt: float
    inflight: int
    outcome: Outcome
    reason: str = "ok"
    lag: float = 0.0
    oldest_start: float | None = None

    @property
    def upstream_rtt(self) -> float:
        """The rtt net of the caller's own lag: what the upstream's latency signal
        may judge."""
        return max(0.0, self.rtt - self.lag)


@dataclass(frozen=True, slots=True)
class LimitChange:
    """Frozen record of one change of the limit, handed to change hooks."""

    old_limit: int
    new_limit: int
    reason: str
    inflight: int
    rtt: float | None
    at: float


LimitHook = Callable[[LimitChange], None]


class Limit(Protocol):
    """A concurrency-limit algorithm."""

    @property
    def limit(self) -> int: ...

    def on_sample(self, sample: Sample) -> int:
        """Account for one finished attempt; return the (possibly new) limit."""
        ...

    def subscribe(self, hook: LimitHook) -> None:
        """Call ``hook`` with a :class:`LimitChange` after every change of the limit."""
        ...

    def unsubscribe(self, hook: LimitHook) -> None:
        """Stop calling ``hook`` (one that was subscribed)."""
        ...


class HookList:
    """The change-hook plumbing every limit shares."""

    def __init__(self) -> None:
        self._hooks: list[LimitHook] = []

    def subscribe(self, hook: LimitHook) -> None:
        self._hooks.append(hook)

    def unsubscribe(self, hook: LimitHook) -> None:
        self._hooks.remove(hook)

    def emit(self, change: LimitChange) -> None:
        for hook in self._hooks:
            hook(change)


class HookedLimit:
    """The read side every limit shares: its current value and its change hooks
    (subclasses set ``_limit`` and ``_hooks`` and emit through ``_hooks``)."""

    _limit: int
    _hooks: HookList

    @property
    def limit(self) -> int:
        return self._limit

    def subscribe(self, hook: LimitHook) -> None:
        self._hooks.subscribe(hook)

    def unsubscribe(self, hook: LimitHook) -> None:
        self._hooks.unsubscribe(hook)


class FixedLimit(HookedLimit):
    """A limit that moves only when told to (the baseline of benchmarks and tests)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._hooks = HookList()

    def on_sample(self, sample: Sample) -> int:
        return self._limit

    def set(self, value: int, at: float, reason: str = "set") -> None:
        """Move the limit by hand (an operator, or a benchmark's oracle that knows
        the upstream's schedule); hooks see the change like any other."""
        if value < 1:
            raise ValueError("limit must be >= 1")
        old, self._limit = self._limit, value
        if old != value:
            self._hooks.emit(LimitChange(old, value, reason, 0, None, at))
