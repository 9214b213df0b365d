"""Durable writes: a file is published only once it is on disk, and so is its name.

Write order (power-cut safe): write, ``fsync`` the file, ``rename``, ``fsync`` the
folder. Blocking; the daemon runs these in worker threads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
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
