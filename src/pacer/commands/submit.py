"""``pacer submit``: put job files into the spool the safe way.

Each file is written under ``tmp/``, fsynced, then linked into ``incoming/``
under a name nobody has (``os.link`` fails rather than replace), so the daemon
never sees half a file and no earlier job is overwritten. The file is handed to the
spool's group (mode 0640) so that the daemon can read it; a job it could not read is
refused here, with a non-zero exit, never accepted and rejected later.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

from pacer.config import Config
from pacer.spool.access import NotReadableByService, group_name
from pacer.spool.folders import Spool, job_stem

EXIT_REFUSED = 2


def _with_upstream(data: bytes, name: str, upstream: str) -> bytes:
    """Set ``"upstream"`` on every request that has none (lines that are not JSON
    objects are left as they are: the daemon reports them)."""

    def patch(text: str) -> str:
        try:
            obj = json.loads(text)
        except ValueError:
            return text
        if isinstance(obj, dict) and "upstream" not in obj:
            obj["upstream"] = upstream
            return json.dumps(obj, ensure_ascii=False)
        return text

    text = data.decode("utf-8")
    if name.endswith(".json"):
        return patch(text).encode()
    return "".join(patch(line.rstrip("\r\n")) + "\n" if line.strip() else line
                   for line in text.splitlines(keepends=True)).encode()


def _stdin_name(data: bytes) -> str:
    try:
        json.loads(data)
        suffix = ".json"
    except ValueError:
        suffix = ".jsonl"
    return f"stdin-{uuid.uuid4().hex[:12]}{suffix}"


def _no_access(spool: Spool, exc: PermissionError) -> str:
    """Why a submitter may not write into the spool, and what to do about it."""
    where = exc.filename or spool.root
    group = "GROUP"
    # The spool itself may be out of sight (inside another 0750 folder, as an instance's
    # spool is): its nearest visible ancestor shows the group.
    for path in (spool.root, *spool.root.parents):
        try:
            group = group_name(os.stat(path).st_gid)
            break
        except OSError:
            continue
    return (f"pacer submit: cannot write into the spool ({where}: permission denied): "
            f"jobs are submitted by root or by members of the spool's group, {group} "
            f"(usermod -aG {group} USER, then log in again)")


def submit(config: Config, paths: list[str], *, upstream: str | None = None,
           name: str | None = None) -> int:
    spool = Spool(config.spool.dir)
    try:
        if not spool.folder("incoming").is_dir():
            spool.ensure()
    except PermissionError as exc:
        print(_no_access(spool, exc), file=sys.stderr)
        return EXIT_REFUSED
    if upstream is not None and upstream not in config.upstreams:
        print(f"pacer submit: unknown upstream {upstream!r} "
              f"(configured: {', '.join(sorted(config.upstreams))})", file=sys.stderr)
        return 2
    jobs: list[tuple[str, bytes]] = []
    for path in paths:
        if path == "-":
            data = sys.stdin.buffer.read()
            jobs.append((name or _stdin_name(data), data))
            continue
        p = Path(path)
        if job_stem(p.name) is None:
            print(f"pacer submit: {path}: job files end in .json or .jsonl", file=sys.stderr)
            return 2
        try:
            jobs.append((p.name, p.read_bytes()))
        except OSError as exc:
            print(f"pacer submit: {path}: {exc.strerror}", file=sys.stderr)
            return 2
    for job_name, data in jobs:
        if job_stem(job_name) is None:
            print(f"pacer submit: {job_name}: job files end in .json or .jsonl", file=sys.stderr)
            return 2
        if upstream is not None:
            try:
                data = _with_upstream(data, job_name, upstream)
            except UnicodeDecodeError:
                print(f"pacer submit: {job_name}: not UTF-8", file=sys.stderr)
                return 2
        try:
            given = spool.submit(data, job_name)
        except NotReadableByService as exc:
            print(f"pacer submit: {job_name}: refused: {exc.strerror}", file=sys.stderr)
            return EXIT_REFUSED
        except PermissionError as exc:
            print(_no_access(spool, exc), file=sys.stderr)
            return EXIT_REFUSED
        print(given)
    return 0
