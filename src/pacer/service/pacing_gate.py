"""The Trio face of the pure :class:`~pacer.control.pacing.Pacer`: ``await gate.wait()``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import trio

from pacer.control.pacing import Cause, Pacer, PacerStatus, PauseEvent
from pacer.control.ratelimit_headers import RateLimitInfo, parse_rate_limit_headers

__all__ = ["PacingGate"]

# How often a start the pace holds back looks whether the daemon is stopping.
STOP_POLL = 0.05


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
        self._sleeping = 0  # tasks the pace holds back now (asleep in wait)

    @property
    def waiting(self) -> int:
        """Tasks inside :meth:`wait` now."""
        return self._waiting

    @property
    def held_back(self) -> int:
        """Tasks inside :meth:`wait` now, counted only while the pace holds one back.
        (Without a hold they only pass the lock one by one: a bunch of slots freed
        together would count each other as waiting, and the first attempts of the
        bunch would record a concurrency of a few where hundreds were about to be
        sent.)"""
        return self._waiting if self._sleeping else 0

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, tokens: float = 0.0) -> bool:
        """Sleep until the pacer allows a start costing ``tokens``; take it. Returns
        whether the pace held this start back (a pause, a quota, a rate): then the
        pace, not the concurrency limit, is what binds."""
        held = await self._wait(tokens, None)
        assert held is not None
        return held

    async def wait_unless(self, stop: trio.Event, tokens: float = 0.0) -> bool | None:
        """:meth:`wait`, unless ``stop`` is set first: then None, and nothing taken.

        It needs no watcher task (a nursery per start cost 7% of the CPU per
        request): a task the pace holds back looks at ``stop`` at least every
        ``STOP_POLL`` s, keeping its place, and each queued behind it looks as soon
        as its turn comes, which is at once when those ahead leave."""
        return await self._wait(tokens, stop)

    async def _wait(self, tokens: float, stop: trio.Event | None) -> bool | None:
        self._waiting += 1
        held = False
        try:
            async with self._lock:
                while True:
                    if stop is not None and stop.is_set():
                        return None
                    now = self.clock()
                    at = self.pacer.next_start(now, tokens)
                    if at <= now:
                        self.pacer.commit(now, tokens, held=held)
                        return held
                    held = True
                    changed = self._changed
                    self._sleeping += 1
                    try:
                        with trio.move_on_at(at if stop is None else min(at, now + STOP_POLL)):
                            await changed.wait()
                    finally:
                        self._sleeping -= 1
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

    def share_quota(self, share: float) -> None:
        """:meth:`Pacer.share_quota` at the current time (a waiting start looks again:
        a larger share may let it go now)."""
        self.pacer.share_quota(self.clock(), share)
        self._poke()

    def pause(self, seconds: float, cause: str) -> PauseEvent | None:
        """:meth:`Pacer.pause` at the current time."""
        event = self.pacer.pause(self.clock(), seconds, cause)
        self._poke()
        return event

    def status(self) -> PacerStatus:
        return self.pacer.status(self.clock())
