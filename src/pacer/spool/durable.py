"""Durable writes: a file is published only once it is on disk, and so is its name.

Write order (power-cut safe): write, ``fsync`` the file, ``rename``, ``fsync`` the
folder. Blocking; the daemon runs these in worker threads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# write_durable's temp names: ".NAME.<8 hex>.tmp".
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Publish ``data`` at ``path`` atomically: temp file, fsync, rename, fsync folder."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def dumps_bytes(obj: Any, **kwargs: Any) -> bytes:
    """``json.dumps(obj).encode()`` that cannot fail on a str holding a lone
    surrogate (a file name that is not UTF-8, read through ``surrogateescape``):
    such text is written with ``\\u`` escapes instead of crashing the caller."""
    try:
        return json.dumps(obj, ensure_ascii=False, **kwargs).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, **kwargs).encode("utf-8")


# -- one barrier for many writes: syncfs ------------------------------------------

# Filesystems whose syncfs() writes back every dirty inode and then commits the
# journal (or the log, or the tree): what it returns makes every earlier write and
# rename on them durable, like an fsync of each file and each folder. Others (FUSE,
# network filesystems) may sync less: they keep the per-file fsyncs.
_SYNCFS_FILESYSTEMS = {
    0xEF53: "ext4",  # also ext2/ext3
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0xF2F52010: "f2fs",
    0x01021994: "tmpfs",  # nothing to write; fsync does nothing there either
}
# False: every Barrier fsyncs (tests on virtual time, where a syncfs that writes
# back the whole filesystem's dirty data can outlast the clock's autojump wait).
SYNCFS_ALLOWED = True
# Before 5.8 syncfs() returned 0 even when writing back failed (an I/O error on
# one file's data would go unseen): only 5.8 on, which reports it.
_SYNCFS_KERNEL = (5, 8)


@functools.cache
def _libc() -> Any:
    """The C library already loaded in this process (``find_library`` would run
    ``ldconfig`` in a subprocess)."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _kernel_at_least(version: tuple[int, int]) -> bool:
    if sys.platform != "linux":
        return False
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return match is not None and (int(match[1]), int(match[2])) >= version


def _filesystem_type(fd: int) -> int | None:
    """``statfs(2)``'s ``f_type``: the first field, a C long on Linux."""
    import ctypes

    libc = _libc()
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit
    if libc.fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class Barrier:
    """Makes the writes and renames done before :meth:`sync` durable, at once.

    With ``syncfs(2)`` (Linux 5.8+, on a filesystem listed above) one call writes
    back the whole filesystem and commits its journal once: one barrier for a
    whole batch of files, instead of one journal commit per file and per folder.
    Elsewhere :meth:`sync` fsyncs each file and folder it is given.

    The descriptor is held from creation on: ``syncfs`` reports a write-back error
    that happened on the filesystem since the previous ``sync`` through this
    descriptor (or since its opening), so one user's batches must go through one
    ``Barrier``, opened before its first write, and two users must not share one
    (the first to sync would take the error the other needs to see). An error may
    come from another file of the same filesystem: the batch then fails, and is
    retried, for nothing lost."""

    def __init__(self, folder: Path, *, use_syncfs: bool | None = None) -> None:
        self.folder = folder
        self._fd: int | None = None
        if (use_syncfs is False or (use_syncfs is None and not SYNCFS_ALLOWED)
                or not _kernel_at_least(_SYNCFS_KERNEL)):
            return
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        if (use_syncfs or _filesystem_type(fd) in _SYNCFS_FILESYSTEMS) and hasattr(
                _libc(), "syncfs"):
            self._fd = fd
            self._syncfs = _libc().syncfs
        else:
            os.close(fd)

    @property
    def syncfs(self) -> bool:
        """Whether :meth:`sync` is one ``syncfs`` (the files need no fsync of their own)."""
        return self._fd is not None

    def sync(self, folders: Iterable[Path] = (), files: Iterable[int] = ()) -> None:
        """Make durable what was written to ``files`` (descriptors) and renamed in
        ``folders`` (and, with syncfs, everything else on the filesystem)."""
        if self._fd is not None:
            if self._syncfs(self._fd) != 0:
                err = _errno()
                raise OSError(err, os.strerror(err))
            return
        for fd in files:
            os.fsync(fd)
        for folder in sorted(set(folders)):
            fsync_dir(folder)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _errno() -> int:
    import ctypes

    return ctypes.get_errno()
