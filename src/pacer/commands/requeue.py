"""``pacer requeue failed/STEM.jsonl``: send again only what failed, as a new job.

A job ends in ``failed/`` when at least one of its requests ended in an error.
Once the cause is fixed (a key, a quota, a config), this re-submits exactly
those requests, each with its ``custom_id`` written out explicitly (a default
one, ``STEM`` or ``STEM:LINE``, would otherwise change with the new file), as
``STEM.requeue-N.jsonl`` through the spool's safe submit. Nothing of the old job
is touched: its file stays in ``failed/`` and its results in ``results/``; the
new job gets its own results file.

The requests are re-validated against the *current* config: a line that still
cannot be sent (not JSON, an upstream that is still unknown, ...) is reported
and left out, since sending it again could only fail again the same way.

Exit codes: 0 a job was submitted (some requests may have been left out, each
reported); 1 nothing to requeue (no request failed, or none can be sent); 2 bad
usage (not a job in the spool's ``failed/``, unreadable).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pacer.config import Config
from pacer.spool.folders import JOB_SUFFIXES, Spool, job_stem
from pacer.spool.jobs import BadRequest, JobFileError, UpstreamView, iter_jsonl, read_single

_REQUEUED = re.compile(r"\.requeue-\d+(~\d+)?$")


class RequeueError(Exception):
    """Cannot requeue; ``code`` is the exit code, the message is for a person."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass
class Plan:
    """What a requeue would submit, and what it leaves out."""

    job: str  # name in failed/
    failed: int  # requests whose final outcome was an error
    requests: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one message per request left out


def view_of(config: Config) -> UpstreamView:
    """What job validation knows of the upstreams (as the daemon builds it)."""
    return UpstreamView(
        base_urls={n: u.base_url for n, u in config.upstreams.items()},
        auth_headers={n: u.auth_header.lower() for n, u in config.upstreams.items()},
        default=config.default_upstream(),
    )


def locate(spool: Spool, path: str) -> Path:
    """The job file in ``failed/`` that ``path`` names: as given (relative to the
    current folder), relative to the spool, or a bare name in ``failed/``."""
    given = Path(path)
    tries = (
        [given]
        if given.is_absolute()
        else [given, spool.root / given, spool.folder("failed") / given]
    )
    existing = [p for p in tries if os.path.lexists(p)]
    failed = spool.folder("failed").resolve()
    # A same-named file elsewhere under the current folder must not shadow the job.
    found = next(
        (p for p in existing if p.parent.resolve() == failed), existing[0] if existing else None
    )
    if found is None:
        raise RequeueError(
            2,
            f"{path}: no such job (looked in the current folder, the spool and its failed/ folder)",
        )
    if job_stem(found.name) is None:
        raise RequeueError(2, f"{path}: job files end in .json or .jsonl")
    folder = found.parent.resolve()
    if folder == spool.folder("done").resolve():
        raise RequeueError(
            1, f"{path}: the job is in done/: every request succeeded, nothing to requeue"
        )
    if folder != failed:
        raise RequeueError(
            2,
            f"{path}: only jobs in the spool's failed/ folder "
            f"({spool.folder('failed')}) can be requeued",
        )
    return spool.folder("failed") / found.name


def failed_results(results: Path) -> dict[str, Any]:
    """``custom_id -> error`` for every result line whose ``error`` is not null."""
    errors: dict[str, Any] = {}
    try:
        fh = open(results, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise RequeueError(
            1, f"no results file {results}: the job was never completed, nothing to requeue"
        ) from None
    except OSError as exc:
        raise RequeueError(2, f"cannot read {results}: {exc.strerror}") from None
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a torn line is no answer
            try:
                obj = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
                continue
            if obj.get("error") is not None:
                errors[obj["custom_id"]] = obj["error"]
            else:  # a later success for the same id wins
                errors.pop(obj["custom_id"], None)
    return errors


def _read_job(path: Path, max_bytes: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise RequeueError(2, f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RequeueError(2, f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise RequeueError(
                2, f"{path} has {st.st_size} bytes, more than spool.max_job_bytes = {max_bytes}"
            )
        return fh.read()


def _code(error: Any) -> str:
    return str(error.get("code")) if isinstance(error, dict) else "error"


def plan(config: Config, job: Path) -> Plan:
    """Which requests of ``job`` (in failed/) to send again."""
    spool = Spool(config.spool.dir)
    stem = job_stem(job.name)
    assert stem is not None
    errors = failed_results(spool.folder("results") / f"{stem}.jsonl")
    result = Plan(job.name, len(errors))
    if not errors:
        return result
    data = _read_job(job, config.spool.max_job_bytes)
    view = view_of(config)
    matched: set[str] = set()
    if job.name.endswith(".jsonl"):
        # iter_jsonl numbers lines as the daemon did, so the default ids match;
        # its line numbers are physical lines, which index the raw lines.
        raw_lines = data.split(b"\n")
        items = iter_jsonl(io.BytesIO(data), stem, view, config.spool.max_line_bytes)
        for item in items:
            if item.custom_id not in errors or item.custom_id in matched:
                continue
            matched.add(item.custom_id)
            was = _code(errors[item.custom_id])
            if isinstance(item, BadRequest):
                result.skipped.append(
                    f"{item.custom_id} (line {item.line}, was {was}): {item.message}"
                )
                continue
            raw = raw_lines[item.line - 1]
            if item.line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            result.requests.append(_with_id(json.loads(raw), item.custom_id))
    else:
        try:
            request = read_single(data, stem, view)
        except JobFileError as exc:
            cid = next(iter(errors))
            matched.add(cid)
            result.skipped.append(f"{cid} (was {_code(errors[cid])}): {exc.message}")
        else:
            if request.custom_id in errors:
                matched.add(request.custom_id)
                obj = json.loads(data[3:] if data.startswith(b"\xef\xbb\xbf") else data)
                result.requests.append(_with_id(obj, request.custom_id))
    for cid in errors:
        if cid not in matched:
            result.skipped.append(
                f"{cid} (was {_code(errors[cid])}): no request of {job.name} has this custom_id"
            )
    return result


def _with_id(obj: dict[str, Any], custom_id: str) -> dict[str, Any]:
    """The request as it was, with its custom_id made explicit (and first, to read)."""
    return {"custom_id": custom_id, **{k: v for k, v in obj.items() if k != "custom_id"}}


def requeue_name(spool: Spool, stem: str) -> str:
    """``STEM.requeue-N.jsonl`` with the lowest N whose stem is free everywhere
    (a requeue of a requeue counts on from the original stem)."""
    base = _REQUEUED.sub("", stem)
    n = 1
    while True:
        candidate = f"{base}.requeue-{n}"
        in_incoming = any(
            os.path.lexists(spool.folder("incoming") / f"{candidate}{suffix}")
            for suffix in JOB_SUFFIXES
        )
        if not in_incoming and not spool.stem_taken(candidate):
            return f"{candidate}.jsonl"
        n += 1


def requeue(config: Config, path: str, *, dry_run: bool = False) -> int:
    """``pacer requeue``: print the new job's name (stdout) and what was sent
    again or left out (stderr); see the module doc for the exit codes."""
    spool = Spool(config.spool.dir)
    try:
        job = locate(spool, path)
        result = plan(config, job)
    except RequeueError as exc:
        print(f"pacer requeue: {exc}", file=sys.stderr)
        return exc.code
    for message in result.skipped:
        print(f"pacer requeue: left out {message}", file=sys.stderr)
    if not result.failed:
        print(
            f"pacer requeue: no request of {job.name} ended in an error: nothing to requeue",
            file=sys.stderr,
        )
        return 1
    if not result.requests:
        print(
            f"pacer requeue: none of the {result.failed} failed requests of {job.name} "
            "can be sent as they are: fix them and submit them again",
            file=sys.stderr,
        )
        return 1
    data = b"".join(
        json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n" for r in result.requests
    )
    stem = job_stem(job.name)
    assert stem is not None
    name = requeue_name(spool, stem)
    if dry_run:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            name = spool.submit(data, name)
        except OSError as exc:
            print(f"pacer requeue: cannot submit {name}: {exc.strerror}", file=sys.stderr)
            return 2
        print(name, flush=True)
    n = len(result.requests)
    print(
        f"pacer requeue: {'would requeue' if dry_run else 'requeued'} {n} of "
        f"{result.failed} failed request{'s' if result.failed != 1 else ''} of "
        f"failed/{job.name} as incoming/{name}",
        file=sys.stderr,
    )
    return 0
