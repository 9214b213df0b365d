"""A claimed job file in ``active/``: opened safely, validated whole, then read lazily.

Blocking code, run in a worker thread. The file is opened with ``O_NOFOLLOW`` (a
symlink is never followed) and ``O_NONBLOCK`` (a FIFO never blocks the open), and
``fstat`` on the open descriptor decides: only a regular file within
``max_job_bytes`` is read. Everything is validated before the first request is
sent; afterwards the requests are read again in small batches, and only up to the
end that was validated, each validated ``custom_id`` once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO

from pacer.spool.access import why_unreadable
from pacer.spool.jobs import (
    BadRequest,
    Bounded,
    JobFileError,
    Request,
    UpstreamView,
    iter_jsonl,
    read_single,
    validate_jsonl,
)

MAX_NAME_BYTES = 255


def open_job_file(path: Path, max_bytes: int) -> tuple[IO[bytes], int]:
    """Open ``path`` for reading without following links or blocking on a FIFO;
    raise :class:`JobFileError` unless it is a regular file of at most ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except PermissionError as exc:  # dropped by hand with the wrong owner or mode
        raise JobFileError("unreadable", f"cannot open the job file: {exc.strerror}: "
                           f"{why_unreadable(path)}") from None
    except OSError as exc:
        raise JobFileError("unreadable", f"cannot open the job file: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise JobFileError("not_a_regular_file", "the job is not a regular file")
    if st.st_size > max_bytes:
        os.close(fd)
        raise JobFileError("too_large", f"the job file has {st.st_size} bytes, more than "
                           f"spool.max_job_bytes = {max_bytes}")
    return os.fdopen(fd, "rb"), st.st_size


@dataclass(eq=False)
class ClaimedJob:
    """A validated job file, open for the lazy second read of its requests."""

    requests: int
    custom_ids: set[str] = field(default_factory=set)  # validated, not yet read again
    _items: Iterator[Request | BadRequest] = field(default_factory=lambda: iter(()))
    _fh: IO[bytes] | None = None
    _jsonl: bool = False
    exhausted: bool = False  # read through: nothing more will come

    @property
    def in_memory(self) -> bool:
        """Whether reading needs no I/O (a ``.json`` job is read whole at the claim)."""
        return not self._jsonl

    def read(self, count: int) -> list[Request | BadRequest]:
        """The next ``count`` requests at most (fewer only at the end); in a ``.jsonl``
        each validated ``custom_id`` once: a file rewritten in place since validation
        must not send a line twice."""
        out: list[Request | BadRequest] = []
        if not self._jsonl:  # one request, read whole at the claim
            self.exhausted = True
            return list(islice(self._items, count))
        while len(out) < count:
            batch = list(islice(self._items, count - len(out)))
            if not batch:
                self.exhausted = True
                break
            for item in batch:
                if self._jsonl:
                    if item.custom_id not in self.custom_ids:
                        continue
                    self.custom_ids.discard(item.custom_id)
                out.append(item)
        return out

    def vanished(self) -> list[str]:
        """The ``custom_id`` s validated but not found on the second read (the file
        changed under pacer), once the file has been read through."""
        return sorted(self.custom_ids) if self._jsonl else []

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def claim_job_file(path: Path, stem: str, view: UpstreamView, *, max_bytes: int,
                   max_line: int, results_name: str) -> ClaimedJob:
    """Validate the whole job file at ``path`` before anything is sent.

    Raises :class:`JobFileError` for a file that is rejected whole."""
    if len(os.fsencode(results_name)) > MAX_NAME_BYTES:
        raise JobFileError("name_too_long", "the job's name is too long to name its "
                           "results file after it: keep names under 230 bytes")
    fh, _size = open_job_file(path, max_bytes)
    try:
        if path.name.endswith(".jsonl"):
            summary = validate_jsonl(fh, stem, view, max_line)
            fh.seek(0)
            # What was validated is what is sent: lines appended since are not read.
            items = iter_jsonl(Bounded(fh, summary.end), stem, view, max_line)
            return ClaimedJob(summary.requests + summary.bad, summary.custom_ids,
                              items, fh, _jsonl=True)
        single = read_single(fh.read(), stem, view)
        fh.close()  # read whole: no need to hold it open
        return ClaimedJob(1, _items=iter([single]))  # read() returns it, then nothing
    except BaseException:
        fh.close()
        raise
