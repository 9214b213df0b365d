"""A claimed job file in ``active/``: opened safely, checked whole, then read lazily.

Blocking code, run in a worker thread. The file is opened with ``O_NOFOLLOW`` (a
symlink is never followed) and ``O_NONBLOCK`` (a FIFO never blocks the open), and
``fstat`` on the open descriptor decides: only a regular file within
``max_job_bytes`` is read. Before the first request is sent, a ``.jsonl`` is
checked whole for what rejects it whole: the quick pass (``spool/prescan.py``)
counts its lines and proves its ``custom_id`` s distinct, and its lines are then
validated as they are read in small batches, up to the first valid one before
anything is handed out (a file with none is rejected whole); when the quick pass
cannot tell, every line is validated first. Either way the requests are read only
up to the end that was checked, each checked ``custom_id`` once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
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
from pacer.spool.prescan import prescan_jsonl

MAX_NAME_BYTES = 255
# Bad lines held back while the first valid line of a quickly checked ``.jsonl`` is
# looked for (a file without one is rejected whole, and its bad lines get no result
# lines); past this many the whole file is validated first instead.
HOLD_BAD_LINES = 1024


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
    # From the quick pass: the custom_id read off line N is line_ids[N - 1] (a line
    # that turns out not to be JSON gets its default id instead).
    line_ids: list[str] | None = None
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
                if item.custom_id in self.custom_ids:
                    self.custom_ids.discard(item.custom_id)
                elif (cid := self._read_off(item)) is not None and cid in self.custom_ids:
                    self.custom_ids.discard(cid)  # its error line stands for that id
                else:
                    continue  # not what was checked: the file changed meanwhile
                out.append(item)
        return out

    def _read_off(self, item: Request | BadRequest) -> str | None:
        """The id the quick pass read off a bad line's line (one not JSON after all)."""
        if (isinstance(item, BadRequest) and self.line_ids is not None
                and 0 < item.line <= len(self.line_ids)):
            return self.line_ids[item.line - 1]
        return None

    def vanished(self) -> list[str]:
        """The ``custom_id`` s validated but not found on the second read (the file
        changed under pacer), once the file has been read through."""
        return sorted(self.custom_ids) if self._jsonl else []

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _until_first_valid(items: Iterator[Request | BadRequest],
                       ) -> Iterator[Request | BadRequest] | None:
    """``items`` again, once its first valid line was found (the bad lines before it
    held back); None if more than ``HOLD_BAD_LINES`` come first. Raises
    :class:`JobFileError` when no line is valid."""
    held: list[Request | BadRequest] = []
    for item in items:
        held.append(item)
        if isinstance(item, Request):
            return chain(held, items)
        if len(held) > HOLD_BAD_LINES:
            return None
    errors = [item.message for item in held[:5] if isinstance(item, BadRequest)]
    raise JobFileError("no_valid_request", "no line is a valid request: " + "; ".join(errors))


def claim_job_file(path: Path, stem: str, view: UpstreamView, *, max_bytes: int,
                   max_line: int, results_name: str) -> ClaimedJob:
    """Check the job file at ``path`` for what rejects it whole, before anything of
    it is sent.

    Raises :class:`JobFileError` for a file that is rejected whole."""
    if len(os.fsencode(results_name)) > MAX_NAME_BYTES:
        raise JobFileError("name_too_long", "the job's name is too long to name its "
                           "results file after it: keep names under 230 bytes")
    fh, _size = open_job_file(path, max_bytes)
    try:
        if path.name.endswith(".jsonl"):
            quick = prescan_jsonl(fh, stem, max_line)
            if quick is not None:
                fh.seek(0)
                items = _until_first_valid(
                    iter_jsonl(Bounded(fh, quick.end), stem, view, max_line))
                if items is not None:
                    return ClaimedJob(quick.lines, quick.ids, items, fh,
                                      _jsonl=True, line_ids=quick.line_ids)
            fh.seek(0)  # the quick pass could not tell: validate every line first
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
