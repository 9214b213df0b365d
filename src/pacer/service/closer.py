"""Ending jobs together: publish their results and move their files in batches.

A job that ends must publish ``results/STEM.jsonl`` durably (rename, fsync
``results/``) and then move its file out of ``active/`` durably (rename, fsync the
destination and ``active/``). Done one job at a time that is three folder fsyncs
per job; with many small jobs ending together it caps the files per second. Here
the jobs that end while a batch is being written wait for the next batch, which
does every rename of that kind and then each folder's fsync once (group commit):
the order per job, and what is durable when ``close`` returns, are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trio

from pacer.spool.folders import Spool, fsync_dir
from pacer.spool.results import JobResults


@dataclass(eq=False)
class _Ending:
    results: JobResults
    name: str
    folder: str  # done or failed
    outcome: str | OSError | None = None  # the final name, or what went wrong


class JobCloser:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._waiting: list[_Ending] = []
        self._lock = trio.Lock()  # one batch at a time; FIFO, so nobody starves
        self.batches = 0

    async def close(self, results: JobResults, name: str, folder: str) -> str:
        """Publish ``results`` and move ``active/name`` into ``folder``, both durably;
        returns the name the job file got. Raises the OSError that stopped it."""
        ending = _Ending(results, name, folder)
        self._waiting.append(ending)
        async with self._lock:
            if ending.outcome is None:  # no earlier batch took it: lead this one
                batch, self._waiting = self._waiting, []
                await trio.to_thread.run_sync(_end_batch, self.spool, batch)
                self.batches += 1
        if isinstance(ending.outcome, OSError):
            raise ending.outcome
        assert ending.outcome is not None
        return ending.outcome


def _end_batch(spool: Spool, batch: list[_Ending]) -> None:
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
    if not _sync({e.results.folder for e in published}, published):
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
    _sync(folders, moved)


def _sync(folders: set[Path], endings: list[_Ending]) -> bool:
    try:
        for folder in sorted(folders):
            fsync_dir(folder)
    except OSError as exc:
        for ending in endings:
            ending.outcome = exc
        return False
    return True
