"""The fleet's limit as the node's upstream sees it.

A node of a fleet does not learn a limit of its own: the fleet's controller in Redis
does. This :class:`~pacer.control.limit.Limit` holds the shared limit as of the last
tick (or, while Redis is away, the node's safe local share), so whatever reads
``upstream.limit`` (the breaker's "429s at the minimum" rule, the state file, the
daemon's read-ahead, ``limit.changed`` logs) sees the limit actually in force.
"""

from __future__ import annotations

from pacer.control.limit import HookList, LimitChange, LimitHook, Sample


class SharedLimit:
    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._hooks = HookList()
        self.changed_at: float | None = None  # read by the pacing gate

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, sample: Sample) -> int:
        return self._limit  # the fleet learns from samples, in Redis

    def subscribe(self, hook: LimitHook) -> None:
        self._hooks.subscribe(hook)

    def unsubscribe(self, hook: LimitHook) -> None:
        self._hooks.unsubscribe(hook)

    def set(self, value: int, at: float, reason: str, inflight: int = 0) -> None:
        value = max(1, value)
        old, self._limit = self._limit, value
        if old != value:
            self.changed_at = at
            self._hooks.emit(LimitChange(old, value, reason, inflight, None, at))
