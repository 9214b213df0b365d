"""Hostile inputs through the real daemon: every file of ``tests/corpus/bad_jobs/``
plus special entries made at test time, dropped into ``incoming/`` next to a few
good jobs, one ``--drain`` run (in-process, real clock, the upstream an
``httpx.MockTransport``: no traffic leaves the process).

What must hold: every bad input ends in ``rejected/`` with ``NAME.error.json``
(a ``code`` and a ``message`` a person understands: no traceback, no Python
repr) or, for a ``.jsonl`` whose good lines can still be sent, in ``failed/``
with one error line per bad line; the good jobs end in ``done/``; the daemon
exits normally (1: some jobs failed); nothing is left in ``incoming/`` (but the
dot-name, which the contract says is ignored) or ``active/``; no file outside the
spool is opened (every ``open`` of the process is recorded), so a symlink's
target is never read, and its error says "symlink".

The spool runs with ``max_line_bytes = 4096`` (the corpus means the same here
as in ``tests/test_jobs.py``) and ``max_job_bytes = 160 MiB`` (so that the
100 MB line is judged as a line; the 1 GiB file is still rejected by size, and
``test_one_gib_file_is_rejected_unread_at_the_default_limit`` checks it at the
default limit too). Upstreams as in ``test_jobs.py``: ``default`` at
``http://127.0.0.1:8000`` and ``api`` (auth header ``X-Api-Key``).

Outcome per input ("rejected CODE", or "failed" with the codes of the error lines;
the other lines of a failed job are answered 200):

=================================  ================================================
corpus file (tests/corpus/bad_jobs)  outcome
=================================  ================================================
all_lines_bad.jsonl                rejected no_valid_request
api_key_header.jsonl               failed: k2 header_not_allowed (api's X-Api-Key)
array.json                         rejected invalid_request
auth_header.json                   rejected header_not_allowed
bad_method.json                    rejected invalid_request
bad_utf8.json                      rejected invalid_utf8
bad_utf8_line.jsonl                failed: bad_utf8_line:2 invalid_utf8
bom_bad.json                       rejected invalid_json (BOM, then broken JSON)
bom_crlf_one_bad.jsonl             failed: b invalid_request
comments.jsonl                     rejected no_valid_request
cookie_header.json                 rejected header_not_allowed
crlf_bad_line.jsonl                failed: crlf_bad_line:2 invalid_json
custom_id_number.json              rejected invalid_request
custom_id_too_long.json            rejected invalid_request
deep_nesting.json                  rejected invalid_json (nested too deeply)
deep_nesting_line.jsonl            failed: deep_nesting_line:2 invalid_json
depth_65.json                      rejected invalid_json (deeper than 64)
dotdot.json                        rejected url_not_allowed
duplicate_ids.jsonl                rejected duplicate_custom_id
duplicate_keys.json                rejected invalid_json
empty.json                         rejected empty (zero bytes)
empty.jsonl                        rejected empty (zero bytes)
escaped_nul_url.json               rejected invalid_url
fragment_url.json                  rejected invalid_url
header_crlf.json                   rejected invalid_request
header_injection.jsonl             failed: b invalid_request
host_header.json                   rejected header_not_allowed
huge_exponent_line.jsonl           failed: e2 invalid_json (1e999999)
huge_int.json                      rejected invalid_json (5000 digits)
id_collides_with_default.jsonl     rejected duplicate_custom_id
infinity.json                      rejected invalid_json
ipv6_unclosed.json                 rejected invalid_url
lone_surrogate.json                rejected invalid_json
lone_surrogate_line.jsonl          failed: s2 invalid_json
long_line.jsonl                    failed: long_line:2 line_too_long
missing_url.json                   rejected invalid_request
nan_body.json                      rejected invalid_json
nan_line.jsonl                     failed: n2 invalid_json
not_json.json                      rejected invalid_json
nul_byte.json                      rejected invalid_json
one_bad_line.jsonl                 failed: b url_not_allowed
outside_host.json                  rejected url_not_allowed
overflow_float.json                rejected invalid_json
overlong_utf8.json                 rejected invalid_utf8
top_level_null.json                rejected invalid_request
trailing_garbage.json              rejected invalid_json
truncated.json                     rejected invalid_json
two_objects.json                   rejected invalid_json
unknown_key.json                   rejected invalid_request
unknown_upstream.json              rejected unknown_upstream
upstream_list.json                 rejected unknown_upstream
url_backslash.json                 rejected invalid_url
url_schemeless.json                rejected url_not_allowed
url_userinfo.json                  rejected url_not_allowed
utf16.json                         rejected invalid_utf8
whitespace_only.json               rejected empty
whitespace_only.jsonl              rejected empty
=================================  ================================================

=================================  ================================================
made at test time                  outcome
=================================  ================================================
line-100mb.jsonl                   failed: line-100mb:2 line_too_long (100 MB line
                                   between two good ones; skipped, never in memory)
sparse-1gib.jsonl                  rejected too_large (sparse; never read)
shadow.json                        rejected not_a_job_file "symlink" (-> /etc/shadow)
outside.json                       rejected not_a_job_file "symlink" (-> a valid
                                   job outside the spool; never opened)
zero.jsonl                         rejected not_a_job_file "symlink" (-> /dev/zero)
dangling.json                      rejected not_a_job_file "symlink" (-> nothing)
etc.json                           rejected not_a_job_file "symlink" (-> /etc)
pipe.jsonl                         rejected not_a_job_file "not a regular file" (FIFO)
socket.json                        rejected not_a_job_file "not a regular file"
device.json                        rejected not_a_job_file "not a regular file"
                                   (char device 1:3; left out if mknod is refused)
folder.json                        rejected not_a_job_file "not a regular file"
folder-with-job.jsonl              rejected not_a_job_file (a folder holding a good
                                   job: moved whole, the job inside is not run)
newline-name                       rejected invalid_json (name "new\\nline.json")
dotdot-name                        rejected url_not_allowed (name "a..b.json")
non-utf8-name                      rejected invalid_json (name b"bad-\\xff.json")
notes.txt                          rejected not_a_job_file "does not end in .json"
trailing-space                     rejected not_a_job_file (name "x.json ")
blank-lines.jsonl                  rejected empty (200 000 empty lines)
many-bad-lines.jsonl               rejected no_valid_request (20 000 bad lines; the
                                   message names only the first five)
dot-name                           ignored: "..json" is a dot-name, which the
                                   contract says producers use for temp files; it
                                   stays in incoming/, never opened
long-name                          rejected name_too_long (a 255-byte name: no room for
                                   its results file; tested on its own below)
changed-while-read                 tested on its own below: lines appended after the
                                   validation are not read, lines gone get one
                                   ``job_changed`` error line each (failed); a file
                                   rewritten in place sends each validated
                                   custom_id once
=================================  ================================================

Good jobs next to them: ``good.json``, ``good-lines.jsonl`` (3 lines),
``bom-good.json`` (UTF-8 BOM), ``crlf-good.jsonl`` (CRLF line ends),
``name with spaces.json``: all end in ``done/``.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import shutil
import socket
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trio

from conftest import CHAT, MakeConfig, SpoolHelper, read_jsonl
from pacer.config import load_config
from pacer.service.daemon import Daemon
from pacer.service.systemd import Notifier
from pacer.spool import claimed as claimed_mod

CORPUS = Path(__file__).parent / "corpus" / "bad_jobs"
MAX_LINE = 4096
MAX_JOB = 160 * 1024 * 1024
DEFAULT_URL = "http://127.0.0.1:8000"
API_URL = "https://api.example.com/v1"
RUN_TIMEOUT = 120.0  # real seconds: a wedged daemon fails the test, not the suite

Outcome = tuple[str, Any]  # ("rejected", code) | ("failed", ({cid: code}, [good cids]))


def rejected(code: str, *words: str) -> Outcome:
    return ("rejected", (code, words))


def failed(bad: dict[str, str], good: list[str]) -> Outcome:
    return ("failed", (bad, good))


CORPUS_OUTCOMES: dict[str, Outcome] = {
    "all_lines_bad.jsonl": rejected("no_valid_request"),
    "api_key_header.jsonl": failed({"k2": "header_not_allowed"}, ["k1"]),
    "array.json": rejected("invalid_request"),
    "auth_header.json": rejected("header_not_allowed"),
    "bad_method.json": rejected("invalid_request"),
    "bad_utf8.json": rejected("invalid_utf8"),
    "bad_utf8_line.jsonl": failed({"bad_utf8_line:2": "invalid_utf8"}, ["a"]),
    "bom_bad.json": rejected("invalid_json"),
    "bom_crlf_one_bad.jsonl": failed({"b": "invalid_request"}, ["a", "c"]),
    "comments.jsonl": rejected("no_valid_request"),
    "cookie_header.json": rejected("header_not_allowed"),
    "crlf_bad_line.jsonl": failed({"crlf_bad_line:2": "invalid_json"}, ["c1", "c3"]),
    "custom_id_number.json": rejected("invalid_request"),
    "custom_id_too_long.json": rejected("invalid_request"),
    "deep_nesting.json": rejected("invalid_json"),
    "deep_nesting_line.jsonl": failed({"deep_nesting_line:2": "invalid_json"}, ["d1"]),
    "depth_65.json": rejected("invalid_json"),
    "dotdot.json": rejected("url_not_allowed"),
    "duplicate_ids.jsonl": rejected("duplicate_custom_id"),
    "duplicate_keys.json": rejected("invalid_json"),
    "empty.json": rejected("empty"),
    "empty.jsonl": rejected("empty"),
    "escaped_nul_url.json": rejected("invalid_url"),
    "fragment_url.json": rejected("invalid_url"),
    "header_crlf.json": rejected("invalid_request"),
    "header_injection.jsonl": failed({"b": "invalid_request"}, ["a"]),
    "host_header.json": rejected("header_not_allowed"),
    "huge_exponent_line.jsonl": failed({"e2": "invalid_json"}, ["e1"]),
    "huge_int.json": rejected("invalid_json"),
    "id_collides_with_default.jsonl": rejected("duplicate_custom_id"),
    "infinity.json": rejected("invalid_json"),
    "ipv6_unclosed.json": rejected("invalid_url"),
    "lone_surrogate.json": rejected("invalid_json"),
    "lone_surrogate_line.jsonl": failed({"s2": "invalid_json"}, ["s1"]),
    "long_line.jsonl": failed({"long_line:2": "line_too_long"}, ["a", "c"]),
    "missing_url.json": rejected("invalid_request"),
    "nan_body.json": rejected("invalid_json"),
    "nan_line.jsonl": failed({"n2": "invalid_json"}, ["n1"]),
    "not_json.json": rejected("invalid_json"),
    "nul_byte.json": rejected("invalid_json"),
    "one_bad_line.jsonl": failed({"b": "url_not_allowed"}, ["a", "c"]),
    "outside_host.json": rejected("url_not_allowed"),
    "overflow_float.json": rejected("invalid_json"),
    "overlong_utf8.json": rejected("invalid_utf8"),
    "top_level_null.json": rejected("invalid_request"),
    "trailing_garbage.json": rejected("invalid_json"),
    "truncated.json": rejected("invalid_json"),
    "two_objects.json": rejected("invalid_json"),
    "unknown_key.json": rejected("invalid_request"),
    "unknown_upstream.json": rejected("unknown_upstream"),
    "upstream_list.json": rejected("unknown_upstream"),
    "url_backslash.json": rejected("invalid_url"),
    "url_schemeless.json": rejected("url_not_allowed"),
    "url_userinfo.json": rejected("url_not_allowed"),
    "utf16.json": rejected("invalid_utf8"),
    "whitespace_only.json": rejected("empty"),
    "whitespace_only.jsonl": rejected("empty"),
}

GOOD_JOBS = {"good.json": ["good"], "good-lines.jsonl": ["g1", "g2", "g3"],
             "bom-good.json": ["bom-good"], "crlf-good.jsonl": ["cr1", "cr2"],
             "name with spaces.json": ["name with spaces"]}

# Words (lower case) a person needs to see in a message that says what went wrong.
NOT_FOR_PEOPLE = ("traceback", "error(", "object at 0x", "exception", "errno")


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix in (".json", ".jsonl"))


def line(cid: str | None, **extra: Any) -> bytes:
    obj: dict[str, Any] = {"method": "POST", "url": CHAT,
                           "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
    if cid is not None:
        obj["custom_id"] = cid
    obj.update(extra)
    return json.dumps(obj).encode()


def id_first_line(cid: str) -> bytes:
    """A request line the quick pass reads (``spool/prescan.py``): custom_id first."""
    return json.dumps({"custom_id": cid, "method": "POST", "url": CHAT,
                       "body": {"model": "m", "messages": []}}).encode()


# The file checked whole by the quick pass, or (custom_id not first) line by line.
LINE_OF = pytest.mark.parametrize("line_of", [line, id_first_line],
                                  ids=["every-line", "quick-pass"])


# --------------------------------------------------------------- the fake upstream


@dataclass
class Upstream:
    """Answers 200 to everything and records what it got."""

    seen: list[httpx.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        self.seen.append(request)
        await trio.sleep(0.001)
        return httpx.Response(200, json={"object": "chat.completion", "choices": []})

    def clients(self) -> dict[str, httpx.AsyncClient]:
        transport = httpx.MockTransport(self.handler)
        return {"default": httpx.AsyncClient(base_url=DEFAULT_URL, transport=transport),
                "api": httpx.AsyncClient(base_url=API_URL, transport=transport)}


# ------------------------------------------------------------- who opens what


@dataclass
class Opens:
    """Every path the process opens (``os.open``, ``open``), and which file objects
    it makes from descriptors (``os.fdopen``): reading starts there."""

    paths: list[str] = field(default_factory=list)
    fds: dict[int, str] = field(default_factory=dict)
    fdopened: list[str] = field(default_factory=list)

    def outside(self, root: Path) -> list[str]:
        top = os.path.abspath(root)
        return sorted({p for p in self.paths
                       if not (p == top or p.startswith(top + os.sep))})


@contextlib.contextmanager
def record_opens() -> Iterator[Opens]:
    opens = Opens()
    real_os_open, real_open, real_fdopen = os.open, builtins.open, os.fdopen

    def as_text(path: Any) -> str:
        return os.path.abspath(os.fsdecode(path)) if not isinstance(path, int) else f"fd:{path}"

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        opens.paths.append(as_text(path))
        fd = real_os_open(path, flags, mode, dir_fd=dir_fd)
        opens.fds[fd] = as_text(path)
        return fd

    def py_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(file, int):
            opens.paths.append(as_text(file))
        return real_open(file, *args, **kwargs)

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        opens.fdopened.append(opens.fds.get(fd, f"fd:{fd}"))
        return real_fdopen(fd, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "open", os_open)
        mp.setattr(builtins, "open", py_open)
        mp.setattr(io, "open", py_open)
        mp.setattr(os, "fdopen", fdopen)
        yield opens


# ------------------------------------------------------------------ running it


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        yield logs


def hostile_config(make_config: MakeConfig, **spool: Any) -> Path:
    return make_config(DEFAULT_URL, spool={"max_line_bytes": MAX_LINE, **spool},
                       upstreams={"api": {"base_url": API_URL, "auth_header": "X-Api-Key"}})


def make_daemon(cfg: Path, upstream: Upstream) -> Daemon:
    return Daemon(load_config(cfg), drain=True, clients=upstream.clients(),
                  notifier=Notifier(None))


async def drain(cfg: Path | Daemon, upstream: Upstream) -> tuple[int, float]:
    daemon = cfg if isinstance(cfg, Daemon) else make_daemon(cfg, upstream)
    started = time.monotonic()
    with trio.fail_after(RUN_TIMEOUT):
        rc = await daemon.run()
    return rc, time.monotonic() - started


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


def check_message(name: str, info: dict[str, Any], code: str, words: tuple[str, ...]) -> None:
    assert info["code"] == code, (name, info)
    message = info["message"]
    assert isinstance(message, str) and 3 < len(message) < 1500, (name, message)
    lowered = message.lower()
    for bad in NOT_FOR_PEOPLE:
        assert bad not in lowered, (name, message)
    for word in words:
        assert word.lower() in lowered, (name, word, message)


# ---------------------------------------------------------- making the entries


def write_100mb_line(path: Path) -> None:
    with open(path, "wb") as fh:
        fh.write(line("big-1") + b"\n")
        fh.write(b'{"custom_id": "big-2", "url": "/v1/chat/completions", "body": "')
        chunk = b"a" * (1 << 20)
        for _ in range(100):
            fh.write(chunk)
        fh.write(b'"}\n')
        fh.write(line("big-3") + b"\n")


def make_specials(spool: SpoolHelper, outside: Path) -> dict[str, tuple[str, Outcome]]:
    """Make the entries of the second table; label -> (name in incoming/, outcome)."""
    incoming = spool.folder("incoming")
    made: dict[str, tuple[str, Outcome]] = {}

    def add(label: str, name: str, outcome: Outcome) -> Path:
        made[label] = (name, outcome)
        return incoming / name

    write_100mb_line(add("line-100mb.jsonl", "line-100mb.jsonl",
                         failed({"line-100mb:2": "line_too_long"}, ["big-1", "big-3"])))
    with open(add("sparse-1gib.jsonl", "sparse-1gib.jsonl",
                  rejected("too_large", "bytes", "max_job_bytes")), "wb") as fh:
        fh.truncate(1 << 30)
    symlink = rejected("not_a_job_file", "symlink")
    os.symlink("/etc/shadow", add("shadow.json", "shadow.json", symlink))
    os.symlink(outside, add("outside.json", "outside.json", symlink))
    os.symlink("/dev/zero", add("zero.jsonl", "zero.jsonl", symlink))
    os.symlink(incoming.parent / "no-such-file", add("dangling.json", "dangling.json", symlink))
    os.symlink("/etc", add("etc.json", "etc.json", symlink))
    not_regular = rejected("not_a_job_file", "not a regular file")
    os.mkfifo(add("pipe.jsonl", "pipe.jsonl", not_regular))
    # AF_UNIX paths are short (108 bytes): bind by a name relative to incoming/.
    with pytest.MonkeyPatch.context() as mp, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        mp.chdir(incoming)
        sock.bind(add("socket.json", "socket.json", not_regular).name)
    with contextlib.suppress(PermissionError):
        os.mknod(incoming / "device.json", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        add("device.json", "device.json", not_regular)
    add("folder.json", "folder.json", not_regular).mkdir()
    folder = add("folder-with-job.jsonl", "folder-with-job.jsonl", not_regular)
    folder.mkdir()
    (folder / "inner.json").write_bytes(line("inner"))
    bad_json = b'{"url": "/v1/chat/completions", "body": '
    add("newline-name", "new\nline.json", rejected("invalid_json")).write_bytes(bad_json)
    add("dotdot-name", "a..b.json", rejected("url_not_allowed")).write_bytes(
        line("dd", url="/v1/../admin"))
    non_utf8 = os.fsdecode(b"bad-\xff.json")
    add("non-utf8-name", non_utf8, rejected("invalid_json")).write_bytes(bad_json)
    add("notes.txt", "notes.txt",
        rejected("not_a_job_file", "does not end in .json")).write_bytes(line("n"))
    add("trailing-space", "x.json ",
        rejected("not_a_job_file", "does not end in .json")).write_bytes(line("t"))
    add("blank-lines.jsonl", "blank-lines.jsonl",
        rejected("empty", "no requests")).write_bytes(b"\n" * 200_000)
    add("many-bad-lines.jsonl", "many-bad-lines.jsonl",
        rejected("no_valid_request", "line 1", "line 5")).write_bytes(b"{oops\n" * 20_000)
    return made


def drop_good_jobs(spool: SpoolHelper) -> None:
    spool.drop("good.json", line("good"))
    spool.drop("good-lines.jsonl", b"".join(line(f"g{i}") + b"\n" for i in (1, 2, 3)))
    spool.drop("bom-good.json", b"\xef\xbb\xbf" + line(None))
    spool.drop("crlf-good.jsonl", line("cr1") + b"\r\n" + line("cr2") + b"\r\n")
    spool.drop("name with spaces.json", line(None))


# ------------------------------------------------------------------------- tests


def test_docstring_table_lists_every_input() -> None:
    doc = __doc__ or ""
    for path in corpus_files():
        assert f"\n{path.name} " in doc, f"{path.name} is not in the docstring table"
    assert sorted(CORPUS_OUTCOMES) == [p.name for p in corpus_files()], (
        "every corpus file needs an expected outcome in CORPUS_OUTCOMES")


def test_corpus_readme_lists_every_file() -> None:
    readme = (CORPUS / "README.md").read_text()
    for path in corpus_files():
        assert f"`{path.name}`" in readme, f"{path.name} is not in the corpus README"


async def test_hostile_spool_drains_cleanly(
        make_config: MakeConfig, spool: SpoolHelper, tmp_path: Path,
        captured: list[dict[str, Any]]) -> None:
    cfg = hostile_config(make_config, max_job_bytes=MAX_JOB)
    outside = tmp_path / "outside.json"
    outside.write_bytes(line("outside"))
    outside_before = (outside.read_bytes(), outside.stat().st_mtime_ns)
    incoming = spool.folder("incoming")
    for path in corpus_files():
        shutil.copyfile(path, incoming / path.name)
    specials = make_specials(spool, outside)
    (incoming / "..json").write_bytes(line("dot"))  # a dot-name: ignored by contract
    drop_good_jobs(spool)
    inputs: dict[str, Outcome] = dict(CORPUS_OUTCOMES)
    inputs.update({name: outcome for name, outcome in specials.values()})
    assert len(inputs) >= 40
    upstream = Upstream()
    daemon = make_daemon(cfg, upstream)

    with record_opens() as opens:
        rc, elapsed = await drain(daemon, upstream)

    assert rc == 1, "some jobs end in failed/: --drain exits 1"
    assert elapsed < 60, f"the drain took {elapsed:.1f} s"
    assert spool.names("incoming") == ["..json"], "only the ignored dot-name may stay"
    assert spool.names("active") == []
    assert spool.dotfiles("results") == []
    # Nothing outside the spool was opened, so no symlink was followed.
    assert opens.outside(spool.root) == []
    assert (outside.read_bytes(), outside.stat().st_mtime_ns) == outside_before
    assert str(incoming / "..json") not in opens.paths

    # Where each input went: jobs may be claimed under a new name (a stem shared by
    # a.json and a.jsonl), which job.renamed tells.
    renamed = {e["original"]: e["job"] for e in events(captured, "job.renamed")}
    sent_ok = 0
    for name, (where, expected) in sorted(inputs.items()):
        final = renamed.get(name, name)
        if where == "rejected":
            code, words = expected
            assert os.path.lexists(spool.root / "rejected" / final), (name, spool.names("rejected"))
            info = json.loads((spool.root / "rejected" / f"{final}.error.json").read_bytes())
            check_message(name, info, code, words)
            assert info["job"] == final
            stem = final.rsplit(".", 1)[0]
            assert not (spool.root / "results" / f"{stem}.jsonl").exists(), name
        else:
            bad, good = expected
            assert final == name, f"{name} was renamed; its default custom_ids would change"
            assert (spool.root / "failed" / name).is_file(), name
            stem = name.rsplit(".", 1)[0]
            lines = read_jsonl(spool.root / "results" / f"{stem}.jsonl")
            counts = Counter(ln["custom_id"] for ln in lines)
            assert counts == dict.fromkeys([*bad, *good], 1), (name, counts)
            for ln in lines:
                cid = ln["custom_id"]
                if cid in bad:
                    assert ln["error"]["code"] == bad[cid], (name, ln)
                    assert ln["response"] is None and ln["attempts"] == 0, (name, ln)
                    check_message(name, ln["error"], bad[cid], ())
                else:
                    assert ln["error"] is None and ln["response"]["status_code"] == 200, ln
                    sent_ok += 1
    for name, cids in GOOD_JOBS.items():
        assert (spool.root / "done" / name).is_file(), (name, spool.names("done"))
        stem = name.rsplit(".", 1)[0]
        lines = read_jsonl(spool.root / "results" / f"{stem}.jsonl")
        assert sorted(ln["custom_id"] for ln in lines) == sorted(cids)
        assert all(ln["error"] is None for ln in lines)
        sent_ok += len(cids)
    # Only the valid requests were sent, each once, and nothing a job may not set.
    assert len(upstream.seen) == sent_ok
    for request in upstream.seen:
        assert request.url.host in ("127.0.0.1", "api.example.com")
        assert ".." not in request.url.path
        for header in ("cookie", "x-api-key", "x-evil", "x-a"):
            assert header not in request.headers, (header, request.headers)
        assert "authorization" not in request.headers
    # The folder's contents were not run: it went to rejected/ whole.
    assert (spool.root / "rejected" / "folder-with-job.jsonl" / "inner.json").is_file()
    assert not (spool.root / "results" / "inner.jsonl").exists()
    # A symlink is moved, not followed: the rejected entry is still the link.
    for label in ("shadow.json", "outside.json", "zero.jsonl", "dangling.json", "etc.json"):
        assert (spool.root / "rejected" / label).is_symlink(), label
    # Every rejection is logged with its reason.
    logged = {e["job"] for e in events(captured, "job.rejected")}
    expected_rejected = {renamed.get(n, n) for n, (w, _) in inputs.items() if w == "rejected"}
    assert logged == expected_rejected


async def test_one_gib_file_is_rejected_unread_at_the_default_limit(
        make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = hostile_config(make_config)  # spool.max_job_bytes at its default (64 MiB)
    big = spool.folder("incoming") / "huge.jsonl"
    with open(big, "wb") as fh:
        fh.write(line("first") + b"\n")
        fh.truncate(1 << 30)  # sparse: costs no disk
    spool.drop("good.json", line("good"))
    upstream = Upstream()
    daemon = make_daemon(cfg, upstream)

    with record_opens() as opens:
        rc, elapsed = await drain(daemon, upstream)

    assert rc == 0
    assert elapsed < 10
    info = spool.error("huge.jsonl")
    check_message("huge.jsonl", info, "too_large", (str(1 << 30), "max_job_bytes"))
    # It was opened (to fstat it) but no file object was made to read it.
    active = str(spool.root / "active" / "huge.jsonl")
    assert active in opens.paths
    assert active not in opens.fdopened
    assert len(upstream.seen) == 1


async def test_dot_names_stay_untouched_in_incoming(
        make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = hostile_config(make_config)
    for name in ("..json", ".hidden.jsonl", "...jsonl"):
        (spool.folder("incoming") / name).write_bytes(line("x"))
    upstream = Upstream()
    daemon = make_daemon(cfg, upstream)
    with record_opens() as opens:
        rc, _ = await drain(daemon, upstream)
    assert rc == 0
    assert spool.names("incoming") == ["...jsonl", "..json", ".hidden.jsonl"]
    assert not any(os.path.basename(p).startswith(".") and "incoming" in p
                   for p in opens.paths)


# ------------------------------------------ found by this file (since fixed in src)


async def test_very_long_job_name_is_rejected_not_retried_forever(
        make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = hostile_config(make_config)
    long_name = "L" * 250 + ".json"  # 255 bytes: the longest name Linux allows
    (spool.folder("incoming") / long_name).write_bytes(line("long"))  # as `pacer submit` does
    spool.drop("good.json", line("good"))
    upstream = Upstream()

    daemon = Daemon(load_config(cfg), drain=True, clients=upstream.clients(),
                    notifier=Notifier(None))
    with trio.move_on_after(5) as scope:
        await daemon.run()
    assert not scope.cancelled_caught, "--drain did not finish within 5 s"
    assert spool.names("active") == []
    assert spool.names("incoming") == []
    rejected_names = spool.jobs("rejected")
    assert len(rejected_names) == 1
    info = json.loads((spool.root / "rejected" / f"{rejected_names[0]}.error.json")
                      .read_bytes())
    assert "name" in info["message"] and "long" in info["message"]


@dataclass
class ChangeAfterValidation:
    """Change a job file right after its validation pass (a producer that still
    holds it open, or writes into incoming/ directly)."""

    root: Path
    change: Callable[[Path], None]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Whichever pass checks the file whole (the quick one, or every line).
        for name in ("prescan_jsonl", "validate_jsonl"):
            monkeypatch.setattr(claimed_mod, name, self._then_change(getattr(claimed_mod, name)))

    def _then_change(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def check(fh: Any, stem: str, *args: Any) -> Any:
            summary = real(fh, stem, *args)
            if summary is not None:
                self.change(self.root / "active" / f"{stem}.jsonl")
            return summary

        return check


@LINE_OF
async def test_job_appended_after_validation_keeps_one_line_per_custom_id(
        make_config: MakeConfig, spool: SpoolHelper,
        monkeypatch: pytest.MonkeyPatch, line_of: Callable[[str], bytes]) -> None:
    cfg = hostile_config(make_config)
    spool.drop("chg.jsonl", b"".join(line_of(c) + b"\n" for c in ("a", "b", "c")))

    def append(path: Path) -> None:
        with open(path, "ab") as fh:
            fh.write(line_of("a") + b"\n" + line_of("d") + b"\n")

    ChangeAfterValidation(spool.root, append).install(monkeypatch)
    upstream = Upstream()
    await drain(cfg, upstream)

    assert spool.names("active") == []
    final = spool.jobs("done") + spool.jobs("failed") + spool.jobs("rejected")
    assert final == ["chg.jsonl"]
    if spool.jobs("rejected"):
        return  # refusing the changed job whole is fine too
    counts = Counter(ln["custom_id"] for ln in spool.results("chg"))
    assert max(counts.values()) == 1, counts
    assert len(upstream.seen) == sum(counts.values())


@LINE_OF
async def test_job_truncated_after_validation_does_not_stay_in_active(
        make_config: MakeConfig, spool: SpoolHelper,
        monkeypatch: pytest.MonkeyPatch, line_of: Callable[[str], bytes]) -> None:
    cfg = hostile_config(make_config)
    first = line_of("a") + b"\n"
    spool.drop("chg.jsonl", first + line_of("b") + b"\n" + line_of("c") + b"\n")
    ChangeAfterValidation(spool.root,
                          lambda path: os.truncate(path, len(first))).install(monkeypatch)
    rc, _ = await drain(cfg, Upstream())

    assert spool.names("active") == []
    assert spool.jobs("failed") + spool.jobs("rejected") == ["chg.jsonl"]
    assert rc == 1 or spool.jobs("rejected")


async def test_huge_int_message_is_for_people(
        make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = hostile_config(make_config)
    shutil.copyfile(CORPUS / "huge_int.json", spool.folder("incoming") / "huge_int.json")
    await drain(cfg, Upstream())
    message = spool.error("huge_int.json")["message"]
    assert "sys." not in message and "digits" in message


@LINE_OF
async def test_job_rewritten_in_place_after_validation_keeps_one_line_per_custom_id(
        make_config: MakeConfig, spool: SpoolHelper,
        monkeypatch: pytest.MonkeyPatch, line_of: Callable[[str], bytes]) -> None:
    """The same bytes count, other lines: every line now says custom_id "a"."""
    cfg = hostile_config(make_config)
    spool.drop("chg.jsonl", b"".join(line_of(c) + b"\n" for c in ("a", "b", "c")))

    def rewrite(path: Path) -> None:
        path.write_bytes(b"".join(line_of("a") + b"\n" for _ in range(3)))

    ChangeAfterValidation(spool.root, rewrite).install(monkeypatch)
    upstream = Upstream()
    await drain(cfg, upstream)

    assert spool.names("active") == []
    assert spool.jobs("failed") + spool.jobs("rejected") + spool.jobs("done") == ["chg.jsonl"]
    if spool.jobs("rejected"):
        return
    counts = Counter(ln["custom_id"] for ln in spool.results("chg"))
    assert counts == {"a": 1, "b": 1, "c": 1}, counts
    assert len(upstream.seen) <= 3


# ------------------------------------------- a big .jsonl checked by the quick pass


async def test_duplicate_ids_far_apart_reject_a_big_job_with_nothing_sent(
        make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = hostile_config(make_config)
    rows = [id_first_line(f"r{i}") for i in range(3000)] + [id_first_line("r7")]
    spool.drop("dup.jsonl", b"\n".join(rows) + b"\n")
    upstream = Upstream()
    await drain(cfg, upstream)

    assert spool.jobs("rejected") == ["dup.jsonl"]
    info = spool.error("dup.jsonl")
    assert info["code"] == "duplicate_custom_id" and "line 3001" in info["message"]
    assert upstream.seen == []
    assert spool.names("results") == []


async def test_a_bad_line_at_the_end_of_a_big_job_gets_its_error_line(
        make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = hostile_config(make_config)
    rows = [id_first_line(f"r{i}") for i in range(2000)] + [b'{"custom_id": "last", "url": ']
    spool.drop("tail.jsonl", b"\n".join(rows) + b"\n")
    upstream = Upstream()
    rc, _ = await drain(cfg, upstream)

    assert rc == 1 and spool.jobs("failed") == ["tail.jsonl"]
    results = spool.results("tail")
    assert len(results) == len({r["custom_id"] for r in results}) == 2001
    errors = [r for r in results if r["error"]]
    # Not JSON: the id cannot be read off the line, so it is the default one.
    assert [(r["custom_id"], r["error"]["code"]) for r in errors] == [
        ("tail:2001", "invalid_json")]
    assert len(upstream.seen) == 2000
