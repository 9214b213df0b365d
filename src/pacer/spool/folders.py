"""The spool: a maildir/Postfix-style set of folders on one filesystem.

A job moves ``incoming/ -> active/ -> done/ | failed/ | rejected/`` by atomic
renames. Only the daemon writes ``active/`` and the final folders (one daemon per
spool, held by an ``flock`` on ``.lock``), so "is the name free?" followed by
``rename`` cannot race. Every publish is durable: write, fsync the file, rename,
fsync the folder. All functions here are blocking; the daemon batches them into
``trio.to_thread.run_sync`` calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import operator
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from pacer.spool.access import hand_over, spool_identity
from pacer.spool.durable import TEMP_NAME, dumps_bytes, fsync_dir, write_durable
from pacer.spool.names import JOB_SUFFIXES, job_stem, job_weight

__all__ = [
    "DEFAULT_DIR_MODE", "DIR_MODES", "FOLDERS", "JOB_SUFFIXES", "NAME_MAX", "STATE_FILE",
    "Candidate", "Skipped", "Spool", "SpoolLocked", "dumps_bytes", "fsync_dir",
    "iter_result_ids", "job_stem", "job_weight", "write_durable",
]

FOLDERS = ("incoming", "tmp", "active", "done", "failed", "rejected", "results")
STATE_FILE = "state.json"
# Only the service user (and its group, for dropping jobs) may touch the spool;
# sticky, so that submitters cannot remove each other's files.
DIR_MODES = {"incoming": 0o1770, "tmp": 0o1770}
DEFAULT_DIR_MODE = 0o750
NAME_MAX = 255


class SpoolLocked(Exception):
    """Another daemon already runs on this spool."""


class Candidate(NamedTuple):
    """A file in incoming/ that looks like a job, as scanned. (A tuple: a scan of
    100,000 files makes one each, and a frozen dataclass costs 4x more to make.)"""

    name: str
    mtime_ns: int
    size: int


@dataclass(frozen=True, slots=True)
class Skipped:
    """An entry of incoming/ that is not a job file, with the reason."""

    name: str
    reason: str


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock_fd: int | None = None

    def folder(self, name: str) -> Path:
        return self.root / name

    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def ensure(self) -> None:
        """Create the folders (idempotent) with modes that keep others out.
        Folders that already exist keep their modes (an admin may have chosen them)."""
        if not self.root.is_dir():
            self.root.mkdir(parents=True, exist_ok=True, mode=DEFAULT_DIR_MODE)
            # The umask could leave the group without x on the root, and the
            # submitters in it without a way to reach incoming/.
            os.chmod(self.root, DEFAULT_DIR_MODE)
        for name in FOLDERS:
            path = self.folder(name)
            if not path.is_dir():
                path.mkdir(mode=DIR_MODES.get(name, DEFAULT_DIR_MODE))
                # mkdir's mode is filtered by the umask; set what we mean.
                os.chmod(path, DIR_MODES.get(name, DEFAULT_DIR_MODE))

    def remove_stale_temps(self) -> list[str]:
        """Remove temp files that a crash mid-:func:`write_durable` left behind (only
        the daemon writes those: the spool root and rejected/). Call with the lock."""
        removed = []
        for folder in (self.root, self.folder("rejected"), self.folder("results")):
            with os.scandir(folder) as it:
                for entry in it:
                    if TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed.append(os.path.relpath(entry.path, self.root))
        return removed

    def lock(self) -> None:
        """Hold the spool for this process (released when the process exits)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"another pacer daemon is running on {self.root}") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def scan(self, folder: str = "incoming", *,
             on_first: Callable[[list[Candidate]], None] | None = None,
             first: int = 1024) -> tuple[list[Candidate], list[Skipped]]:
        """Job files in ``folder``, oldest first; dot-files are ignored silently,
        and anything not a regular file (symlink, FIFO, folder, device) is skipped.

        ``on_first``: called once with the first ``first`` job files found (oldest
        first among them) while the rest of a big folder is still being read: work
        can start before a scan of 100,000 files (``lstat`` each: about a second)
        ends. Not called when the folder holds fewer."""
        jobs: list[Candidate] = []
        skipped: list[Skipped] = []
        with os.scandir(self.folder(folder)) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    what = ("a symbolic link (symlink)" if stat.S_ISLNK(st.st_mode) else
                            "a folder" if stat.S_ISDIR(st.st_mode) else
                            "a FIFO" if stat.S_ISFIFO(st.st_mode) else
                            "a device or socket")
                    skipped.append(Skipped(entry.name, f"is {what}, not a regular file: pacer "
                                           "never follows or opens those (use pacer submit)"))
                elif job_stem(entry.name) is None:
                    skipped.append(Skipped(entry.name, "is not a job file: its name does not "
                                           "end in .json or .jsonl"))
                else:
                    jobs.append(Candidate(entry.name, st.st_mtime_ns, st.st_size))
                    if on_first is not None and len(jobs) == first:
                        on_first(sorted(jobs, key=operator.itemgetter(1, 0)))
        jobs.sort(key=operator.itemgetter(1, 0))  # oldest first, then by name
        return jobs, skipped

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in FOLDERS:
            try:
                with os.scandir(self.folder(name)) as it:
                    out[name] = sum(1 for e in it if not e.name.startswith(".")
                                    and not e.name.endswith(".error.json"))
            except FileNotFoundError:
                out[name] = 0
        return out

    # -- names ---------------------------------------------------------------

    def stem_taken(self, stem: str) -> bool:
        """Whether a job with this stem exists anywhere past incoming/, or its results do.
        (``lexists``: a rejected symlink is a name taken, wherever it points.)"""
        # Plain strings: ten lookups per claim, and a Path for each cost more than
        # the system calls.
        root = os.fspath(self.root)
        lexists = os.path.lexists
        if lexists(f"{root}/results/{stem}.jsonl"):
            return True
        if lexists(f"{root}/results/.{stem}.jsonl.part"):
            return True
        for folder in ("active", "done", "failed", "rejected"):
            for suffix in JOB_SUFFIXES:
                if lexists(f"{root}/{folder}/{stem}{suffix}"):
                    return True
        return False

    def free_name(self, name: str) -> str:
        """``name`` if its stem is unused, else ``stem~2.json``, ``stem~3.json``, ..."""
        stem = job_stem(name)
        assert stem is not None
        suffix = name[len(stem):]
        candidate, n = stem, 1
        while self.stem_taken(candidate):
            n += 1
            candidate = f"{stem}~{n}"
        return candidate + suffix

    # -- moves ---------------------------------------------------------------

    def claim(self, name: str) -> str | None:
        """Move ``incoming/name`` into ``active/`` under a free name.

        Returns the active name, or None if the file vanished or is no longer a
        regular file (it is then left where it is).
        """
        claimed, error = self.claim_many([name])
        if error is not None:
            raise error
        return claimed[0]

    def claim_many(self, names: list[str]) -> tuple[list[str | None], OSError | None]:
        """Claim ``names`` in order as :meth:`claim` does, with one fsync of each
        folder for all of them: a burst of small jobs must not cost two fsyncs each.

        Returns the claims made (the active name, or None) and the error that
        stopped the batch, if any: the names after it were not tried. Every claim
        returned is durable; on a failed fsync none is returned (those files stay
        in ``active/`` and are resumed at the next start, as a claim that failed
        after its rename always was).
        """
        claimed: list[str | None] = []
        error: OSError | None = None
        for name in names:
            try:
                claimed.append(self._move_in(name))
            except OSError as exc:
                error = exc
                break
        if any(c is not None for c in claimed):
            try:
                # Two fsyncs, not a syncfs (spool/durable.Barrier): a claim is on
                # the way to an idle daemon's first request, and syncfs also writes
                # back what other programs left dirty (pick-up 11 ms -> 24-93 ms).
                fsync_dir(self.folder("active"))
                fsync_dir(self.folder("incoming"))
            except OSError as exc:
                return [], exc
        return claimed, error

    def _move_in(self, name: str) -> str | None:
        src = self.folder("incoming") / name
        if job_stem(name) is None:
            return None
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        target = self.free_name(name)
        try:
            os.rename(src, self.folder("active") / target)
        except FileNotFoundError:
            return None
        return target

    def finish(self, name: str, folder: str) -> str:
        """Move ``active/name`` into ``folder`` (done, failed or rejected), never
        replacing a file already there; returns the name it got."""
        target = self.move_out(name, folder)
        fsync_dir(self.folder(folder))
        fsync_dir(self.folder("active"))
        return target

    def move_out(self, name: str, folder: str) -> str:
        """:meth:`finish` without the fsyncs: the caller fsyncs ``folder`` and
        ``active/`` before it counts on the move (once for many moves)."""
        dest = self.folder(folder)
        stem = job_stem(name) or name
        suffix = name[len(stem):]
        if folder == "rejected":
            # NAME.error.json (and its temp name) must fit in a file name too.
            room = NAME_MAX - len(".error.json") - len("..12345678.tmp") - len("~99")
            while len(os.fsencode(stem + suffix)) > room:
                stem = stem[:-1]
        target = stem + suffix
        n = 1
        while (os.path.lexists(dest / target)
               or os.path.lexists(dest / f"{target}.error.json")):
            n += 1
            target = f"{stem}~{n}{suffix}"
        os.rename(self.folder("active") / name, dest / target)
        return target

    def write_error(self, name: str, info: dict[str, Any]) -> None:
        data = dumps_bytes(info, indent=2) + b"\n"
        write_durable(self.folder("rejected") / f"{name}.error.json", data)

    def reject_from_incoming(self, name: str, info: dict[str, Any]) -> str:
        """Move an unusable entry of incoming/ (not a regular file) into rejected/
        without opening it, and explain why next to it."""
        target = name
        dest = self.folder("rejected")
        n = 1
        stem = job_stem(name) or name
        suffix = name[len(stem):]
        while (os.path.lexists(dest / target)
               or os.path.lexists(dest / f"{target}.error.json")):
            n += 1
            target = f"{stem}~{n}{suffix}"
        os.rename(self.folder("incoming") / name, dest / target)
        self.write_error(target, info)
        fsync_dir(self.folder("incoming"))
        return target

    def submit(self, data: bytes, name: str) -> str:
        """Producer side: write under tmp/, fsync, then rename into incoming/ under a
        name nobody has (``os.link`` fails rather than replace); returns that name."""
        stem = job_stem(name)
        if stem is None:
            raise ValueError(f"job file names end in .json or .jsonl, not {name!r}")
        if "/" in name or "\0" in name or name.startswith("."):
            # A dot-name would be ignored forever; a slash would leave incoming/.
            raise ValueError(f"a job file name is one name, not starting with '.': {name!r}")
        tmp = self.folder("tmp") / f".{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            # The daemon reads the file as the spool's owner and group (the spool has no
            # setgid bit): hand it over, or refuse rather than publish what it cannot read.
            hand_over(fd, spool_identity(self.folder("incoming")))
            with os.fdopen(fd, "wb") as fh:
                fd = -1  # the file object owns it now
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            # No half-written temp file left behind (a full disk, say).
            if fd != -1:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        suffix = name[len(stem):]
        n = 1
        target = name
        try:
            while True:
                try:
                    os.link(tmp, self.folder("incoming") / target)
                    break
                except FileExistsError:
                    n += 1
                    target = f"{stem}~{n}{suffix}"
        finally:
            os.unlink(tmp)
        fsync_dir(self.folder("incoming"))
        return target


def iter_result_ids(path: Path) -> Iterator[tuple[str, bool]]:
    """``(custom_id, is_error)`` of every complete line of a results file."""
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return  # a torn last line from a crash: not an answer
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
                yield obj["custom_id"], obj.get("error") is not None
