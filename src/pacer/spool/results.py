"""Result lines and their durable, batched writing.

While a job runs, its answers are appended to ``results/.STEM.jsonl.part`` (a
dot-name, so readers skip it) and fsynced in batches: one thread hop writes and
fsyncs every job's pending lines at once, so durability costs one fsync per job
per batch, not one per request; on Linux 5.8+ (ext4, xfs, btrfs) a batch is one
``syncfs`` of the spool's filesystem instead, however many jobs it holds (see
:class:`~pacer.spool.durable.Barrier`). When the job ends the part file is renamed
to ``results/STEM.jsonl`` and the folder fsynced. After a crash, a torn last line
is cut off and the custom_ids already answered are not sent again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import trio

from pacer.spool.durable import Barrier, fsync_dir
from pacer.spool.folders import iter_result_ids

_T = TypeVar("_T")


# Result ids: 32 hex digits as a uuid4's, a random half per process and a counter
# (a uuid4 per line cost a urandom call each: 2% of the daemon's loop per file).
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count()


def result_line(custom_id: str, upstream: str | None, attempts: int, *,
                status: int | None = None, body: Any = None, request_id: str | None = None,
                error_code: str | None = None, error_message: str | None = None) -> bytes:
    """One line of the OpenAI Batch output format, plus pacer's ``attempts``/``upstream``."""
    response = None
    if status is not None:
        response = {"status_code": status, "request_id": request_id, "body": body}
    error = None
    if error_code is not None:
        error = {"code": error_code, "message": error_message or error_code}
    obj = {
        "id": f"batch_req_{_ID_PREFIX}{next(_id_counter):016x}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
        "attempts": attempts,
        "upstream": upstream,
    }
    return _dumps_line(obj)


def _dumps_line(obj: dict[str, Any]) -> bytes:
    """Strict JSON, one line. The body comes from the upstream and may hold what
    Python's JSON reader lets in but a strict writer refuses: NaN/Infinity (become
    the strings "NaN", "Infinity", "-Infinity") and lone surrogates (kept as
    ``\\u`` escapes). Neither may cost the line, let alone crash the daemon."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return text.encode("utf-8") + b"\n"
    except ValueError:  # UnicodeEncodeError included
        text = json.dumps(_finite(obj), ensure_ascii=True, allow_nan=False,
                          separators=(",", ":"))
        return text.encode("ascii") + b"\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@dataclass(eq=False)
class JobResults:
    """The results file of one job; blocking methods run in a worker thread."""

    folder: Path
    stem: str
    answered: dict[str, bool] = field(default_factory=dict)  # custom_id -> is_error
    _fh: IO[bytes] | None = None
    # False while the part file's name may not be on disk yet: the result writer
    # fsyncs the folder once per batch for all new part files, before it
    # acknowledges their first lines (one folder fsync per job would cap files/s).
    entry_durable: bool = True

    @property
    def part(self) -> Path:
        return self.folder / f".{self.stem}.jsonl.part"

    @property
    def final(self) -> Path:
        return self.folder / f"{self.stem}.jsonl"

    @property
    def published(self) -> bool:
        return self._fh is None and self.final.exists()

    def open(self) -> None:
        """Open for appending, resuming what a previous run already answered."""
        if self.final.exists() and not self.part.exists():
            # Published before a crash; only the job file's move was missing.
            self.answered = dict(iter_result_ids(self.final))
            return
        if self.part.exists():
            _cut_torn_tail(self.part)
            self.answered = dict(iter_result_ids(self.part))
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._fh = os.fdopen(fd, "ab", buffering=0)
        if not self.answered:
            self.entry_durable = False

    def append(self, lines: list[bytes]) -> None:
        """Write and fsync ``lines``, all or nothing: on an error (disk full, I/O
        error) the file is cut back to where it was, so a retry appends whole lines
        and no torn fragment ends up glued to the next line.

        After :meth:`close` (a job task that ended while its last answers were still
        pending in the writer) the part file is opened for just this append; after
        :meth:`publish` appending is an error."""
        self._on_part(_append_all_or_nothing, b"".join(lines))

    def write_unsynced(self, lines: list[bytes]) -> int:
        """Write ``lines`` without fsync (a :class:`Barrier` makes them durable
        with others'); returns where they start, for :meth:`cut_back`. All or
        nothing, as :meth:`append`."""
        return self._on_part(_write_all_or_nothing, b"".join(lines))

    def _on_part(self, write: Callable[[int, bytes], _T], data: bytes) -> _T:
        """``write(fd, data)`` on the part file: the open one, or, after
        :meth:`close`, opened for just this write."""
        if self._fh is not None:
            return write(self._fh.fileno(), data)
        if self.final.exists() and not self.part.exists():
            raise RuntimeError(f"the results of {self.stem!r} are already published")
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            return write(fd, data)
        finally:
            os.close(fd)

    def cut_back(self, size: int) -> None:
        """Drop what was written from ``size`` on (lines whose barrier failed)."""
        if self._fh is not None:
            os.ftruncate(self._fh.fileno(), size)
        else:
            os.truncate(self.part, size)

    def publish(self, sync: bool = True) -> None:
        """Make the results visible as ``STEM.jsonl`` (durably; with ``sync=False``
        the caller fsyncs the folder, once for many jobs)."""
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        os.rename(self.part, self.final)
        if sync:
            fsync_dir(self.folder)

    def publish_partial(self) -> None:
        """Publish whatever the part file holds (a job that will not complete)."""
        self.close()
        if self.part.exists() and not self.final.exists():
            _cut_torn_tail(self.part)
            os.rename(self.part, self.final)
            fsync_dir(self.folder)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _append_all_or_nothing(fd: int, data: bytes) -> None:
    start = _write_all_or_nothing(fd, data)
    try:
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


def _write_all_or_nothing(fd: int, data: bytes) -> int:
    """Append ``data``; returns the size before it. On an error nothing is left."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise
    return start


def _cut_torn_tail(path: Path) -> None:
    """Drop a partial last line (a crash mid-write) so appends start clean."""
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        pos = size
        while pos > 0:
            step = min(65536, pos)
            fh.seek(pos - step)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl != -1:
                end = pos - step + nl + 1
                if end != size:
                    fh.truncate(end)
                    os.fsync(fh.fileno())
                return
            pos -= step
        fh.truncate(0)
        os.fsync(fh.fileno())


class ResultWriter:
    """Collects result lines from every job and makes them durable in batches.

    ``await write(job, line)`` returns once the line is on disk. A flush happens
    ``flush_interval`` after the first pending line, or at once when
    ``flush_max_lines`` are pending.
    """

    def __init__(self, flush_interval: float, flush_max_lines: int,
                 on_trouble: Callable[[OSError | None], None] | None = None,
                 retry_interval: float = 2.0, syncfs: bool | None = None) -> None:
        self.flush_interval = flush_interval
        # One barrier per results folder, each opened before its first batch is
        # written (None: syncfs where it is safe; False: fsync each file).
        self.syncfs = syncfs
        self._barriers: dict[Path, Barrier] = {}
        self.flush_max_lines = flush_max_lines
        # Called with the error when writing starts failing, with None once it works
        # again: the daemon stops claiming work meanwhile.
        self.on_trouble = on_trouble
        self.retry_interval = retry_interval
        self.trouble: OSError | None = None
        self._pending: dict[JobResults, list[bytes]] = {}
        self._count = 0
        self._done = trio.Event()  # set when the pending batch is durable
        # Events of writers whose lines a failed flush put back: set with the next
        # successful one (the writers that came meanwhile wait on ``_done``).
        self._carried: list[trio.Event] = []
        self._wake = trio.Event()
        self._full = trio.Event()
        # One batch at a time: the final flush at shutdown must not write a job's
        # file from a second thread while the flusher task's batch is still going.
        self._flush_lock = trio.Lock()
        self.lines_written = 0
        self.flushes = 0

    async def write(self, job: JobResults, line: bytes) -> None:
        self._pending.setdefault(job, []).append(line)
        self._count += 1
        done = self._done
        self._wake.set()
        if self._count >= self.flush_max_lines:
            self._full.set()
        await done.wait()

    async def run(self) -> None:
        """The flusher task; run it in a nursery that outlives every writer."""
        while True:
            await self._wake.wait()
            with trio.move_on_after(self.flush_interval):
                await self._full.wait()
            if not await self.flush():
                await trio.sleep(self.retry_interval)
                self._wake.set()

    async def flush(self) -> bool:
        """Write what is pending; False if the disk refused (the lines stay pending
        and their writers keep waiting: nothing answered is dropped)."""
        async with self._flush_lock:
            batch, self._pending, self._count = self._pending, {}, 0
            done, self._done = self._done, trio.Event()
            carried, self._carried = self._carried, []
            self._wake, self._full = trio.Event(), trio.Event()
            if batch:
                written = await trio.to_thread.run_sync(self._write_batch, batch)
                if isinstance(written, OSError):
                    # Put the batch back in front of whatever came meanwhile.
                    for job, lines in self._pending.items():
                        batch.setdefault(job, []).extend(lines)
                    self._pending = batch
                    self._count = sum(len(v) for v in batch.values())
                    # Both the batch's writers and those that came meanwhile wait
                    # for the next successful flush.
                    self._carried = [*carried, done, *self._carried]
                    if self.trouble is None and self.on_trouble is not None:
                        self.on_trouble(written)
                    self.trouble = written
                    return False
                self.lines_written += written
                self.flushes += 1
            if self.trouble is not None:
                self.trouble = None
                if self.on_trouble is not None:
                    self.on_trouble(None)
            done.set()
            for event in carried:
                event.set()
            return True

    def _write_batch(self, batch: dict[JobResults, list[bytes]]) -> int | OSError:
        """Append each job's lines; jobs done are dropped from ``batch``, so that on
        an error what is left in it is exactly what still has to be written."""
        barriers: list[Barrier] = []
        try:
            for folder in {job.folder for job in batch}:
                if folder not in self._barriers:
                    self._barriers[folder] = Barrier(folder, use_syncfs=self.syncfs)
                barriers.append(self._barriers[folder])
        except OSError as exc:
            return exc
        if all(b.syncfs for b in barriers):
            return _write_batch_syncfs(batch, barriers)
        return _write_batch(batch)

    def close(self) -> None:
        for barrier in self._barriers.values():
            barrier.close()
        self._barriers.clear()


def _write_batch_syncfs(batch: dict[JobResults, list[bytes]],
                        barriers: list[Barrier]) -> int | OSError:
    """Every job's lines written, then one ``syncfs`` for them all (and for the
    names of new part files). On an error every job's file is cut back to where
    it was and the whole batch stays pending: what syncfs failed to write back is
    not known per file."""
    starts: list[tuple[JobResults, int]] = []
    try:
        for job, lines in batch.items():
            starts.append((job, job.write_unsynced(lines)))
        for barrier in barriers:
            barrier.sync()
    except OSError as exc:
        for job, start in starts:
            with contextlib.suppress(OSError):
                job.cut_back(start)
        return exc
    written = 0
    for job, lines in batch.items():
        job.entry_durable = True
        written += len(lines)
    batch.clear()
    return written


def _write_batch(batch: dict[JobResults, list[bytes]]) -> int | OSError:
    """Without syncfs: the new part files' folders fsynced, then each job's file."""
    try:
        # New part files' names first, one fsync per folder: a line counts as
        # durable only once its file can be found after a crash.
        for folder in {job.folder for job in batch if not job.entry_durable}:
            fsync_dir(folder)
    except OSError as exc:
        return exc
    for job in batch:
        job.entry_durable = True
    written = 0
    for job in list(batch):
        try:
            job.append(batch[job])
        except OSError as exc:
            return exc
        written += len(batch.pop(job))
    return written
