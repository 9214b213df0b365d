"""The intake: finds job files in ``incoming/`` and claims them into ``active/``.

New files are seen through inotify (watchfiles) within about 0.1 s; a periodic full
rescan is the safety net (inotify can overflow) and also moves what is not a job
file (a symlink, a FIFO, a folder) to ``rejected/``. At start, jobs a previous run
left in ``active/`` are resumed first. Claims stop while the disk is in trouble,
and while as many jobs run as the upstreams could serve at once.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from functools import partial

import structlog
import trio

from pacer.config import Config
from pacer.service.disk import DISK_TROUBLE, DiskTrouble
from pacer.service.summary import RunSummary
from pacer.spool.folders import Candidate, Spool
from pacer.spool.names import job_stem

log = structlog.get_logger("pacer.service.intake")

# Jobs claimed in one thread hop, with one fsync of active/ and incoming/ for all.
CLAIM_BATCH = 64
# A scan of incoming/ hands over the oldest of the first this many job files it
# finds while it goes on (see Intake.rescan).
FIRST_SCAN_BATCH = 1024
WATCH_STEP_MS = 2


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Intake:
    def __init__(self, spool: Spool, config: Callable[[], Config], summary: RunSummary,
                 disk: DiskTrouble, capacity: Callable[[], int], *, drain: bool) -> None:
        self.spool = spool
        self.config = config
        self.capacity = capacity  # the sum of the upstreams' concurrency limits
        self.summary = summary
        self.disk = disk
        self.drain = drain
        self.pending: deque[str] = deque()  # names seen in incoming/, not claimed yet
        self.stopping = False
        self._wake = trio.Event()
        self._scanning: trio.Event | None = None  # set when the running scan ends

    def wake(self) -> None:
        self._wake.set()

    async def run(self, start_job: Callable[[str], None], active: Callable[[], int],
                  running: Callable[[str], bool]) -> None:
        """Claim jobs and start them with ``start_job(name)`` until stopping (or, when
        draining, until the spool is empty and no job runs); ``active()`` counts the
        jobs running, ``running(name)`` says whether that one runs."""
        # First what a previous run left claimed: resume, do not repeat.
        leftovers, _ = await trio.to_thread.run_sync(self.spool.scan, "active")
        for cand in leftovers:
            log.info("job.resumed", job=cand.name)
            start_job(cand.name)
        claims = 0
        while not self.stopping:
            if self.disk.deferred and self.disk.error is None:
                name = self.disk.deferred.popleft()
                if not running(name):
                    log.info("job.resumed", job=name)
                    start_job(name)
                continue
            if self.pending and (room := self._room(active())) > 0:
                # The first batches are small (1, 1, 2, 4, ... CLAIM_BATCH): the first
                # job is on its way before 64 files were claimed and prepared.
                size = min(room, len(self.pending), CLAIM_BATCH, max(1, claims))
                names = [self.pending.popleft() for _ in range(size)]
                started = await self._claim(names)
                claims += len(started)
                for claimed in started:
                    start_job(claimed)
                continue
            if self.drain and not self.pending and not active() and not self.disk.deferred:
                await self.rescan()
                if not self.pending:
                    return
                continue
            self._wake = trio.Event()
            await self._wake.wait()

    def _room(self, active: int) -> int:
        """How many more jobs to claim: while fewer run than the upstreams could serve
        at once (4 x their limits, at least 64; at most ``max_active_jobs``). Each
        job holds only a short queue of requests (the scheduler reads lazily), and a
        spool of many small jobs is started at the pace they are answered, not in
        one burst that the limit would then have to absorb."""
        if self.disk.error is not None:
            return 0
        most = min(self.config().spool.max_active_jobs, max(64, 4 * self.capacity()))
        return most - active

    async def _claim(self, names: list[str]) -> list[str]:
        """Claim ``names`` in one thread hop (one fsync per folder for all); the
        names a failure left untried go back to the front of the queue."""
        claims, error = await trio.to_thread.run_sync(self.spool.claim_many, names)
        started: list[str] = []
        for name, claimed in zip(names, claims, strict=False):
            if claimed is not None and claimed != name:
                log.warning("job.renamed", job=claimed, original=name,
                            reason="a job or results with this name already exist")
            if claimed is not None:
                started.append(claimed)
        if error is not None:  # the next rescan tries the failed one again
            failed = names[len(claims)]
            self.pending.extendleft(reversed(names[len(claims) + 1:]))
            self.summary.count_error("claim_failed")
            log.error("job.claim_failed", job=failed, error=f"{type(error).__name__}: {error}")
            if error.errno in DISK_TROUBLE:
                self.disk.failed(error, "claim")
        return started

    async def rescan(self, handed: trio.Event | None = None) -> None:
        """Read ``incoming/`` whole: ``pending`` becomes its job files, oldest first.

        A big folder takes a while (an ``lstat`` per file: about a second for
        100,000): the oldest of the first ``FIRST_SCAN_BATCH`` job files found are
        pending (and ``handed`` is set) as soon as they are found, so claims start;
        the whole folder's order follows when the scan ends. A rescan asked for
        while one runs waits for that one."""
        if self._scanning is not None:
            await self._scanning.wait()
            if handed is not None:
                handed.set()
            return
        self._scanning = done = trio.Event()
        early: set[str] = set()

        def first(batch: list[Candidate]) -> None:  # in the scan's thread
            def give() -> None:
                early.update(c.name for c in batch)
                self.pending = deque(c.name for c in batch)
                self._wake.set()
                if handed is not None:
                    handed.set()

            trio.from_thread.run_sync(give)

        try:
            candidates, skipped = await trio.to_thread.run_sync(
                partial(self.spool.scan, "incoming", on_first=first, first=FIRST_SCAN_BATCH))
            # The early ones not claimed yet keep their place at the front.
            self.pending = deque([n for n in self.pending if n in early]
                                 + [c.name for c in candidates if c.name not in early])
        finally:
            self._scanning = None
            done.set()
        for entry in skipped:
            await self._reject_entry(entry.name, entry.reason)
        self._wake.set()
        if handed is not None:
            handed.set()

    async def _reject_entry(self, name: str, reason: str) -> None:
        info = {"job": name, "code": "not_a_job_file", "message": f"{name!r}: {reason}",
                "rejected_at": now_iso()}
        try:
            target = await trio.to_thread.run_sync(self.spool.reject_from_incoming, name, info)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.summary.count_error("reject_failed")
            log.error("spool.reject_failed", job=name, error=f"{type(exc).__name__}: {exc}")
            return
        self.summary.jobs_rejected += 1
        log.warning("job.rejected", job=target, reason=info["message"], code=info["code"])

    async def rescan_loop(self) -> None:
        while True:
            await trio.sleep(self.config().spool.rescan_interval)
            try:
                await self.rescan()
            except OSError as exc:  # e.g. incoming/ removed by hand: say so, keep going
                self.summary.count_error("scan_failed")
                log.error("spool.scan_failed", error=f"{type(exc).__name__}: {exc}")

    async def watch(self, stop: trio.Event) -> None:
        """inotify via watchfiles: new files are seen within ~0.1 s. The periodic
        rescan remains the safety net (inotify can overflow)."""
        from watchfiles import Change, awatch

        incoming = str(self.spool.folder("incoming"))
        try:
            # step: changes are handed over once the folder has been quiet this many
            # ms. 2 ms puts a file on the wire ~10 ms after its rename (10 ms: ~23);
            # the watcher thread then wakes 500 times a second: ~1% of a core idle.
            async for changes in awatch(incoming, debounce=50, step=WATCH_STEP_MS,
                                        recursive=False, rust_timeout=500, stop_event=stop):
                queued = set(self.pending)
                for change, path in sorted(changes, key=lambda c: c[1]):
                    name = os.path.basename(path)
                    # Only job names: anything else is for the rescan to reject.
                    if (change == Change.added and job_stem(name) is not None
                            and not name.startswith(".") and name not in queued):
                        self.pending.append(name)
                self._wake.set()
        except Exception as exc:  # the rescan still finds everything
            self.summary.count_error("watch_failed")
            log.warning("spool.watch_failed", error=f"{type(exc).__name__}: {exc}")
