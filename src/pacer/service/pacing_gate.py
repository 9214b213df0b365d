"""The Trio face of the pure :class:`~pacer.control.pacing.Pacer`: ``await gate.wait()``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import trio

from pacer.control.pacing import Cause, Pacer, PacerStatus, PauseEvent
from pacer.control.ratelimit_headers import RateLimitInfo, parse_rate_limit_headers

__all__ = ["PacingGate"]


class PacingGate:
    """The Trio face of a :class:`Pacer`.

    ``await gate.wait(tokens)`` returns when this start may happen, and takes it.
    Waiting tasks are served strictly in arrival order (a FIFO :class:`trio.Lock`),
    one at a time, so a crowd never bursts through; the head re-checks whenever the
    pacer learns something (a pause, new headers) and when its time comes.
    Cancelling a waiting task takes nothing.
    """

    def __init__(self, pacer: Pacer | None = None,
                 clock: Callable[[], float] = trio.current_time,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.pacer = pacer if pacer is not None else Pacer()
        self.clock = clock
        self.wall_clock = wall_clock
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Tasks inside :meth:`wait` now."""
        return self._waiting

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, tokens: float = 0.0) -> bool:
        """Sleep until the pacer allows a start costing ``tokens``; take it. Returns
        whether the pace held this start back (a pause, a quota, a rate): then the
        pace, not the concurrency limit, is what binds."""
        self._waiting += 1
        held = False
        try:
            async with self._lock:
                while True:
                    now = self.clock()
                    at = self.pacer.next_start(now, tokens)
                    if at <= now:
                        self.pacer.commit(now, tokens, held=held)
                        return held
                    held = True
                    changed = self._changed
                    with trio.move_on_at(at):
                        await changed.wait()
        finally:
            self._waiting -= 1

    def on_response(self, info: RateLimitInfo, status: int | None,
                    tokens_used: float | None = None, *,
                    inflight: int | None = None,
                    started: float | None = None,
                    limit_changed_at: float | None = None,
                    held: bool = False) -> Cause | None:
        """:meth:`Pacer.on_response` at the current time."""
        cause = self.pacer.on_response(self.clock(), info, status, tokens_used,
                                       inflight=inflight, started=started,
                                       limit_changed_at=limit_changed_at, held=held)
        self._poke()
        return cause

    def on_http_response(self, status: int | None, headers: Mapping[str, str] | None,
                         tokens_used: float | None = None, *,
                         inflight: int | None = None,
                         started: float | None = None,
                         limit_changed_at: float | None = None,
                         held: bool = False) -> RateLimitInfo:
        """Parse ``headers`` (with the wall clock, for absolute reset times) and feed
        them; returns what was parsed."""
        info = (parse_rate_limit_headers(headers, self.wall_clock())
                if headers is not None else RateLimitInfo())
        self.on_response(info, status, tokens_used, inflight=inflight, started=started,
                         limit_changed_at=limit_changed_at, held=held)
        return info

    def pause(self, seconds: float, cause: str) -> PauseEvent | None:
        """:meth:`Pacer.pause` at the current time."""
        event = self.pacer.pause(self.clock(), seconds, cause)
        self._poke()
        return event

    def status(self) -> PacerStatus:
        return self.pacer.status(self.clock())
