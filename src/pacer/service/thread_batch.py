"""Blocking calls made at about the same time, run together in one thread hop.

A burst of small jobs starts together (claims come in batches), and each job's
first step is blocking file work (validate the file, open its results). One
``trio.to_thread`` hop each costs more than that work for a one-request file: a
wake-up of a worker thread, the GIL handed back and forth, the answer carried back
to the Trio thread. Here the first caller of a burst waits one scheduling round for
the others, then runs every queued call in one hop, each with its own outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


class _Call(Generic[T]):
    __slots__ = ("done", "fn", "result")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.result: outcome.Outcome[T] | None = None
        self.done = trio.Event()


def _run_all(calls: list[_Call[T]]) -> None:
    for call in calls:
        call.result = outcome.capture(call.fn)


class ThreadBatch(Generic[T]):
    """``await batch.run(fn)``: ``fn()`` in a worker thread, together with the other
    calls made in the same scheduling round (at most ``limit`` in one hop).

    Like ``trio.to_thread.run_sync``, a started call is not abandoned: cancelling
    a caller takes effect once its call has run (so what it opened is not lost)."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._open: list[_Call[T]] | None = None  # the batch that still takes calls

    async def run(self, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _Call(fn)
        batch = self._open
        if batch is not None and len(batch) < self.limit:
            batch.append(call)
            with trio.CancelScope(shield=True):  # the leader runs it whatever happens
                await call.done.wait()
        else:
            self._open = batch = [call]
            try:
                # One round for the rest of the burst to join; shielded, so that
                # the batch always runs once it has callers.
                await trio.lowlevel.cancel_shielded_checkpoint()
            finally:
                if self._open is batch:
                    self._open = None
            try:
                await trio.to_thread.run_sync(_run_all, batch)
            finally:
                for queued in batch:
                    if queued.result is None:  # the hop itself failed
                        queued.result = outcome.Error(RuntimeError("the thread hop failed"))
                    queued.done.set()
        assert call.result is not None
        return call.result.unwrap()
