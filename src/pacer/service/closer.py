"""Ending jobs together: publish their results and move their files in batches.

A job that ends must publish ``results/STEM.jsonl`` durably (rename, fsync
``results/``) and then move its file out of ``active/`` durably (rename, fsync the
destination and ``active/``). Done one job at a time that is three folder fsyncs
per job; with many small jobs ending together it caps the files per second. Here
the jobs that end while a batch is being written wait for the next batch, which
does every rename of that kind and then each folder's fsync once (group commit):
the order per job, and what is durable when ``close`` returns, are unchanged.

Where ``syncfs`` is safe (:class:`~pacer.spool.durable.Barrier`) each of the two
barriers is one ``syncfs`` of the spool's filesystem instead of a fsync per
folder: a batch costs two journal commits, whatever its size. Per job the order
stays: its results renamed, barrier, its file moved, barrier, then ``close``
returns; a crash between the two barriers leaves results published and the job
file in ``active/``, which the next start finishes without sending anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio

from pacer.spool.durable import Barrier
from pacer.spool.folders import Spool
from pacer.spool.results import JobResults


@dataclass(eq=False)
class _Ending:
    results: JobResults
    name: str
    folder: str  # done or failed
    outcome: str | OSError | None = None  # the final name, or what went wrong


class JobCloser:
    def __init__(self, spool: Spool, *, syncfs: bool | None = None) -> None:
        self.spool = spool
        self.syncfs = syncfs
        # Opened at the first batch, before its renames: from then on it sees every
        # write-back error (held for the daemon's life, one descriptor).
        self.barrier: Barrier | None = None
        self._waiting: list[_Ending] = []
        # Set when the batch being written ends; None while none is. One batch at a
        # time. Not a lock: a lock hands itself to its waiters one scheduling round
        # each, and the jobs of a finished batch, all done, would still wake one
        # after the other (tens of rounds per batch under load).
        self._running: trio.Event | None = None
        self.batches = 0

    async def close(self, results: JobResults, name: str, folder: str) -> str:
        """Publish ``results`` and move ``active/name`` into ``folder``, both durably;
        returns the name the job file got. Raises the OSError that stopped it."""
        ending = _Ending(results, name, folder)
        self._waiting.append(ending)
        while ending.outcome is None:
            if self._running is not None:  # its batch, or the one after: wait
                await self._running.wait()
                continue
            # No batch is being written: lead one with every job waiting (nobody
            # starves: each batch takes all that came before it started).
            batch, self._waiting = self._waiting, []
            self._running = running = trio.Event()
            try:
                await trio.to_thread.run_sync(self._end_batch, batch)
                self.batches += 1
            finally:
                self._running = None
                running.set()
        if isinstance(ending.outcome, OSError):
            raise ending.outcome
        assert ending.outcome is not None
        return ending.outcome

    def _end_batch(self, batch: list[_Ending]) -> None:
        if self.barrier is None:
            try:
                self.barrier = Barrier(self.spool.root, use_syncfs=self.syncfs)
            except OSError as exc:
                for ending in batch:
                    ending.outcome = exc
                return
        _end_batch(self.spool, self.barrier, batch)

    def release(self) -> None:
        """Close the barrier's descriptor (the daemon stops)."""
        if self.barrier is not None:
            self.barrier.close()
            self.barrier = None


def _end_batch(spool: Spool, barrier: Barrier, batch: list[_Ending]) -> None:
    """Every job's results published, then every job file moved; each folder
    fsynced once after its renames. A failure is the outcome of the jobs it
    touches; the others go on."""
    published: list[_Ending] = []
    for ending in batch:
        try:
            ending.results.publish(sync=False)
            published.append(ending)
        except OSError as exc:
            ending.outcome = exc
    if not _sync(barrier, {e.results.folder for e in published}, published):
        return
    moved: list[_Ending] = []
    for ending in published:
        try:
            ending.outcome = spool.move_out(ending.name, ending.folder)
            moved.append(ending)
        except OSError as exc:
            ending.outcome = exc
    folders = {spool.folder(e.folder) for e in moved}
    if moved:
        folders.add(spool.folder("active"))
    _sync(barrier, folders, moved)


def _sync(barrier: Barrier, folders: set[Path], endings: list[_Ending]) -> bool:
    if not endings:
        return True
    try:
        barrier.sync(folders)
    except OSError as exc:
        for ending in endings:
            ending.outcome = exc
        return False
    return True
