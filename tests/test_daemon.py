"""The daemon in-process under Trio's virtual clock, against the mock API's
``MockUpstream`` behind an ``httpx.MockTransport``: spool in, results out."""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trio
from trio.testing import MockClock

from conftest import BASE_URL, BODY, CHAT, MakeConfig, SpoolHelper, jsonl, read_jsonl, req
from pacer.config import load_config
from pacer.logs import configure_logging
from pacer.mockapi import MockSettings, MockUpstream
from pacer.service.daemon import Daemon
from pacer.service.reporting import StateReporter
from pacer.service.systemd import Notifier
from pacer.spool.results import result_line


@pytest.fixture
def virtual_clock() -> MockClock:
    """pytest-trio runs the test under this clock: Trio's virtual time, which jumps to
    the next deadline once every task has been idle for 10 ms of real time. (With
    pytest-trio's ``autojump_clock``, threshold 0, the clock also jumps while the
    daemon waits for a worker thread, e.g. an fsync: on a loaded machine virtual time
    then races ahead, and timeouts fire that never would in real time.)"""
    return MockClock(autojump_threshold=0.01)


# A generous bound in *virtual* seconds: a hang shows up as a failure, not a stuck run.
VIRTUAL_TIMEOUT = 600
# The ticker keeps a deadline at most this far away: virtual time keeps moving (so a
# hang meets VIRTUAL_TIMEOUT) and no jump is ever bigger than this.
TICK = 0.5


@dataclass
class Seen:
    method: str
    url: httpx.URL
    headers: httpx.Headers
    body: bytes

    @property
    def tag(self) -> Any:
        return json.loads(self.body).get("tag") if self.body else None


@dataclass
class Recorder:
    """Answers through a ``MockUpstream`` and records every request it got."""

    settings: MockSettings = field(default_factory=lambda: MockSettings(latency=0.01))
    too_many_first: int = 0  # answer this many first requests with 429, Retry-After: 1
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.upstream = MockUpstream(self.settings)  # built inside trio.run: virtual clock

    async def handler(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.seen.append(Seen(request.method, request.url, request.headers, body))
        if len(self.seen) <= self.too_many_first:
            return httpx.Response(429, headers={"retry-after": "1"},
                                  json={"error": {"message": "slow down", "type": "rate_limit"}})
        answer = await self.upstream.handle(request.method, request.url.raw_path.decode(),
                                            request.headers, body)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=BASE_URL, transport=self.transport())

    @property
    def tags(self) -> list[Any]:
        return [s.tag for s in self.seen]


def tagged(cid: str, **extra: Any) -> dict[str, Any]:
    """A request whose body carries its custom_id, so the mock side can tell them apart."""
    return req(cid, body={**BODY, "tag": cid}, **extra)


def close_leftovers(daemon: Daemon) -> None:
    """Close results files a cut-off daemon may have left open (a regression of
    test_hard_stop_closes_results_files), so that such a leak fails that test and
    does not surface later, in another test, as an unraisable ResourceWarning."""
    for job in list(daemon.jobs.values()):
        job.results.close()


def make_daemon(config_path: Path, recorder: Recorder | None, *, drain: bool = True) -> Daemon:
    clients = {"default": recorder.client()} if recorder is not None else None
    return Daemon(load_config(config_path), drain=drain, clients=clients, notifier=Notifier(None))


async def ticker() -> None:
    while True:
        await trio.sleep(TICK)


async def run_daemon(daemon: Daemon, timeout: float = VIRTUAL_TIMEOUT,
                     tick: bool = True) -> int:
    rc: list[int] = []
    with trio.fail_after(timeout):
        async with trio.open_nursery() as nursery:
            if tick:
                nursery.start_soon(ticker)
            rc.append(await daemon.run())
            nursery.cancel_scope.cancel()
    return rc[0]


def one_line_each(lines: list[dict[str, Any]], expected: list[str]) -> None:
    counts = Counter(line["custom_id"] for line in lines)
    assert counts == dict.fromkeys(expected, 1), counts


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == name]


@pytest.fixture
def captured() -> Iterator[list[dict[str, Any]]]:
    """structlog events as dicts, with the per-task context (job, custom_id) merged."""
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        yield logs


@pytest.fixture
def json_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """pacer's real log set-up (JSON lines, redaction) into a buffer; parsed lines."""
    saved = structlog.get_config()
    buf = io.StringIO()
    configure_logging("debug", "json", stream=buf)
    try:
        yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    finally:
        structlog.configure(**saved)


# ----------------------------------------------------------------------- the basics


async def test_jobs_end_in_done_with_one_result_line_per_request(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = make_config(upstream={"initial_limit": 4})
    spool.drop("a.jsonl", [tagged(f"a-{i}") for i in range(5)])
    spool.drop("b.json", tagged("b-only"))
    spool.drop("c.jsonl", [req(), req()])  # no custom_id: c:1, c:2
    spool.drop("d.json", req())  # no custom_id: d
    rec = Recorder()

    rc = await run_daemon(make_daemon(cfg, rec))

    assert rc == 0
    assert spool.jobs("done") == ["a.jsonl", "b.json", "c.jsonl", "d.json"]
    for folder in ("incoming", "active", "failed", "rejected"):
        assert spool.jobs(folder) == [], folder
    assert spool.dotfiles("results") == []
    one_line_each(spool.results("a"), [f"a-{i}" for i in range(5)])
    one_line_each(spool.results("b"), ["b-only"])
    one_line_each(spool.results("c"), ["c:1", "c:2"])
    one_line_each(spool.results("d"), ["d"])
    for stem in "abcd":
        for line in spool.results(stem):
            assert line["error"] is None
            assert line["response"]["status_code"] == 200
            assert line["response"]["body"]["object"] == "chat.completion"
            assert line["attempts"] == 1
            assert line["upstream"] == "default"
            assert line["id"]
    assert len(rec.seen) == 9
    assert all(s.url.path == CHAT and s.method == "POST" for s in rec.seen)


async def test_bad_lines_in_jsonl_get_error_lines_and_job_fails(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = make_config()
    data = b"\n".join([
        json.dumps(tagged("ok-1")).encode(),
        b"{this is not json",
        json.dumps(tagged("ok-2")).encode(),
        json.dumps(req("rel", url="v1/chat/completions")).encode(),
        json.dumps(req("far", upstream="nope")).encode(),
        json.dumps(tagged("ok-3")).encode(),
    ]) + b"\n"
    spool.drop("mixed.jsonl", data)
    rec = Recorder()

    rc = await run_daemon(make_daemon(cfg, rec))

    assert rc == 1, "--drain exits 1 when a job ended in failed/"
    assert spool.jobs("failed") == ["mixed.jsonl"]
    assert spool.jobs("done") == []
    lines = {line["custom_id"]: line for line in spool.results("mixed")}
    one_line_each(list(lines.values()), ["ok-1", "mixed:2", "ok-2", "rel", "far", "ok-3"])
    for cid in ("ok-1", "ok-2", "ok-3"):
        assert lines[cid]["error"] is None and lines[cid]["response"]["status_code"] == 200
    assert lines["mixed:2"]["error"]["code"] == "invalid_json"
    assert "line 2" in lines["mixed:2"]["error"]["message"]
    assert lines["rel"]["error"]["code"] == "invalid_url"
    assert lines["far"]["error"]["code"] == "unknown_upstream"
    assert "'nope'" in lines["far"]["error"]["message"]
    for cid in ("mixed:2", "rel", "far"):
        assert lines[cid]["response"] is None
    assert sorted(rec.tags) == ["ok-1", "ok-2", "ok-3"]


# ------------------------------------------------------------------------ rejections


def _outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside.json"
    path.write_text(json.dumps(tagged("outside")))
    return path


# name -> (make the entry in incoming/, words the error message must contain)
REJECTS: dict[str, tuple[Callable[[SpoolHelper, Path], None], list[str]]] = {
    "invalid-json.json": (lambda sp, _: sp.drop("invalid-json.json", b'{"url": "/v1/x", '),
                          ["not valid json"]),
    "invalid-jsonl.jsonl": (lambda sp, _: sp.drop("invalid-jsonl.jsonl", b"{oops\n[1,\n"),
                            ["no line is a valid request", "not valid json"]),
    "empty.json": (lambda sp, _: sp.drop("empty.json", b""), ["empty"]),
    "empty.jsonl": (lambda sp, _: sp.drop("empty.jsonl", b"\n\n"), ["no requests"]),
    "big.jsonl": (lambda sp, _: sp.drop("big.jsonl", jsonl([req(f"r{i}") for i in range(40)])),
                  ["bytes", "max_job_bytes"]),
    "link.json": (lambda sp, tmp: os.symlink(_outside(tmp), sp.folder("incoming") / "link.json"),
                  ["symbolic link"]),
    "pipe.json": (lambda sp, _: os.mkfifo(sp.folder("incoming") / "pipe.json"),
                  ["not a regular file"]),
    "folder.json": (lambda sp, _: (sp.folder("incoming") / "folder.json").mkdir(),
                    ["not a regular file"]),
    "dup.jsonl": (lambda sp, _: sp.drop("dup.jsonl", [req("same"), req("other"), req("same")]),
                  ["'same'", "more than once", "line 3"]),
    "unknown-up.json": (lambda sp, _: sp.drop("unknown-up.json", req("u", upstream="nope")),
                        ["'nope'", "not configured"]),
    "abs-url.json": (lambda sp, _: sp.drop("abs-url.json",
                                           req("x", url="http://evil.example/v1/chat")),
                     ["http://evil.example/v1/chat", "outside", BASE_URL]),
    "abs-url-lookalike.json": (
        lambda sp, _: sp.drop("abs-url-lookalike.json",
                              req("x", url="http://mock.test.evil.example/v1/chat")),
        ["outside"]),
    "auth.json": (lambda sp, _: sp.drop("auth.json",
                                        req("a", headers={"Authorization": "Bearer mine"})),
                  ["'authorization'", "may not set"]),
    "host.json": (lambda sp, _: sp.drop("host.json", req("h", headers={"host": "other"})),
                  ["'host'", "may not set"]),
}


@pytest.mark.parametrize("name", sorted(REJECTS))
async def test_unusable_job_is_rejected_with_an_explanation(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper, tmp_path: Path,
        captured: list[dict[str, Any]], name: str) -> None:
    make_entry, words = REJECTS[name]
    cfg = make_config(spool={"max_job_bytes": 1000})
    make_entry(spool, tmp_path)
    spool.drop("good.json", tagged("good"))
    rec = Recorder()

    rc = await run_daemon(make_daemon(cfg, rec))

    assert rc == 0  # rejected is not failed
    assert spool.jobs("rejected") == [name]
    assert os.path.lexists(spool.root / "rejected" / name)
    err = spool.error(name)
    assert err["job"] == name
    assert err["code"] and isinstance(err["code"], str)
    message = err["message"]
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    assert "Traceback" not in message and "Error(" not in message
    # The good job next to it went through; nothing of the rejected one was sent.
    assert spool.jobs("done") == ["good.json"]
    one_line_each(spool.results("good"), ["good"])
    assert rec.tags == ["good"]
    stem = name.rsplit(".", 1)[0]
    assert not (spool.root / "results" / f"{stem}.jsonl").exists()
    assert spool.dotfiles("results") == []
    assert spool.names("incoming") == [] and spool.names("active") == []
    rejected = events(captured, "job.rejected")
    assert [(e["job"], e["reason"]) for e in rejected] == [(name, message)]


async def test_symlink_target_is_left_alone(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        tmp_path: Path) -> None:
    cfg = make_config()
    target = _outside(tmp_path)
    before = target.read_bytes()
    os.symlink(target, spool.folder("incoming") / "link.json")
    rec = Recorder()

    await run_daemon(make_daemon(cfg, rec))

    assert (spool.root / "rejected" / "link.json").is_symlink()
    assert target.read_bytes() == before
    assert rec.seen == []


# ----------------------------------------------------------------------------- names


async def test_existing_results_make_the_job_take_a_new_name(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        captured: list[dict[str, Any]]) -> None:
    cfg = make_config()
    earlier = result_line("old", "default", 1, status=200, body={"earlier": True})
    (spool.root / "results" / "a.jsonl").write_bytes(earlier)
    spool.drop("a.json", tagged("new"))

    rc = await run_daemon(make_daemon(cfg, Recorder()))

    assert rc == 0
    assert spool.jobs("done") == ["a~2.json"]
    assert (spool.root / "results" / "a.jsonl").read_bytes() == earlier
    one_line_each(spool.results("a~2"), ["new"])
    renamed = events(captured, "job.renamed")
    assert len(renamed) == 1
    assert renamed[0]["job"] == "a~2.json" and renamed[0]["original"] == "a.json"


async def test_same_name_twice_keeps_both_jobs_and_results(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = make_config()
    spool.drop("same.jsonl", [tagged("first")])
    assert await run_daemon(make_daemon(cfg, Recorder())) == 0
    spool.drop("same.jsonl", [tagged("second")])
    assert await run_daemon(make_daemon(cfg, Recorder())) == 0

    assert spool.jobs("done") == ["same.jsonl", "same~2.jsonl"]
    one_line_each(spool.results("same"), ["first"])
    one_line_each(spool.results("same~2"), ["second"])


# ---------------------------------------------------------------------------- resume


async def test_resume_sends_only_unanswered_requests(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        captured: list[dict[str, Any]]) -> None:
    cfg = make_config(upstream={"initial_limit": 3})
    ids = [f"r-{i}" for i in range(10)]
    (spool.root / "active" / "a.jsonl").write_bytes(jsonl([tagged(cid) for cid in ids]))
    kept = b"".join(result_line(cid, "default", 1, status=200, body={"kept": cid})
                    for cid in ids[:4])
    torn = result_line("r-4", "default", 1, status=200, body={"torn": True})[:-15]
    (spool.root / "results" / ".a.jsonl.part").write_bytes(kept + torn)
    rec = Recorder()

    rc = await run_daemon(make_daemon(cfg, rec))

    assert rc == 0
    assert sorted(rec.tags) == ids[4:]
    assert spool.jobs("done") == ["a.jsonl"]
    assert spool.dotfiles("results") == []
    data = (spool.root / "results" / "a.jsonl").read_bytes()
    assert data.startswith(kept), "answers from before the crash are kept as they were"
    one_line_each(read_jsonl(spool.root / "results" / "a.jsonl"), ids)
    assert [e["job"] for e in events(captured, "job.resumed")] == ["a.jsonl"]


async def test_resume_after_results_were_published_sends_nothing(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    """A crash after the results were published but before the job file moved."""
    cfg = make_config()
    ids = ["p-1", "p-2"]
    (spool.root / "active" / "p.jsonl").write_bytes(jsonl([tagged(cid) for cid in ids]))
    published = b"".join(result_line(cid, "default", 1, status=200, body={}) for cid in ids)
    (spool.root / "results" / "p.jsonl").write_bytes(published)
    rec = Recorder()

    assert await run_daemon(make_daemon(cfg, rec)) == 0

    assert rec.seen == []
    assert spool.jobs("done") == ["p.jsonl"]
    assert (spool.root / "results" / "p.jsonl").read_bytes() == published
    assert spool.names("active") == [] and spool.dotfiles("results") == []


# ---------------------------------------------------------------- errors and retries


async def test_upstream_always_500_puts_job_in_failed(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        captured: list[dict[str, Any]]) -> None:
    # Two requests: their four failures stay within the retry budget (see the
    # many-requests test below for what happens past it).
    cfg = make_config(upstream={"max_attempts": 2, "initial_limit": 2})
    spool.drop("bad.jsonl", [tagged(f"e-{i}") for i in range(2)])
    rec = Recorder(MockSettings(latency=0.01, error_rate=1.0))

    rc = await run_daemon(make_daemon(cfg, rec))

    assert rc == 1
    assert spool.jobs("failed") == ["bad.jsonl"] and spool.jobs("done") == []
    lines = spool.results("bad")
    one_line_each(lines, ["e-0", "e-1"])
    for line in lines:
        assert line["error"]["code"] == "http_500"
        assert line["error"]["message"]
        assert line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["type"] == "server_error"
        assert line["attempts"] == 2
    assert len(rec.seen) == 4
    (done,) = events(captured, "job.completed")
    assert (done["job"], done["requests"], done["succeeded"], done["failed"]) == (
        "bad.jsonl", 2, 0, 2)


async def test_upstream_always_500_many_requests_all_end_in_failed(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    # While the breaker is open requests wait (an outage fails no job), but not
    # forever: give_up_after bounds how long a failing request keeps trying.
    cfg = make_config(upstream={"max_attempts": 2, "initial_limit": 4, "give_up_after": 120},
                      daemon={"state_interval": 30.0})
    ids = [f"m-{i:02d}" for i in range(12)]
    spool.drop("down.jsonl", [tagged(cid) for cid in ids])
    rec = Recorder(MockSettings(latency=0.01, error_rate=1.0))

    # Virtual: 10 minutes is ages for 24 failing attempts, even with the breaker's
    # cool-downs (at most 60 s each). No ticker: the cool-downs move the clock.
    try:
        rc = await run_daemon(make_daemon(cfg, rec), timeout=600, tick=False)
    except trio.TooSlowError:
        lines = read_jsonl(spool.root / "results" / ".down.jsonl.part")
        pytest.fail(f"the job did not end in 600 virtual s: {len(lines)} of {len(ids)} "
                    f"requests answered after {len(rec.seen)} attempts")

    assert rc == 1
    assert spool.jobs("failed") == ["down.jsonl"]
    lines = spool.results("down")
    one_line_each(lines, ids)
    assert all(line["error"]["code"] == "http_500" for line in lines)


async def test_429_then_success_is_retried(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        captured: list[dict[str, Any]]) -> None:
    cfg = make_config(upstream={"initial_limit": 2, "max_attempts": 5})
    spool.drop("busy.jsonl", [tagged("x-1"), tagged("x-2")])
    rec = Recorder(too_many_first=4)

    rc = await run_daemon(make_daemon(cfg, rec))

    assert rc == 0
    assert spool.jobs("done") == ["busy.jsonl"]
    lines = spool.results("busy")
    one_line_each(lines, ["x-1", "x-2"])
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["attempts"] >= 2
    assert len(rec.seen) >= 5
    retries = events(captured, "request.retry")
    assert {e["custom_id"] for e in retries} == {"x-1", "x-2"}
    for e in retries:
        assert e["reason"] == "rate_limited"
        assert e["attempt"] >= 1
        assert e["delay_s"] >= 1.0, "Retry-After is honoured"


# ------------------------------------------------------------------------------- logs


async def test_contract_log_events(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        json_logs: Callable[[], list[dict[str, Any]]]) -> None:
    cfg = make_config()
    spool.drop("good.jsonl", [tagged("g-1"), tagged("g-2")])
    spool.drop("broken.json", b"{")

    assert await run_daemon(make_daemon(cfg, Recorder())) == 0

    logs = json_logs()
    for line in logs:
        assert {"timestamp", "level", "event"} <= set(line), line
        assert line["timestamp"].endswith(("Z", "+00:00")), line["timestamp"]
    names = [e["event"] for e in logs]
    assert names[0] == "daemon.started" and names[-1] == "daemon.stopped"
    claimed = events(logs, "job.claimed")
    assert [e.get("job") for e in claimed] == ["good.jsonl"]
    (completed,) = events(logs, "job.completed")
    assert {k: completed[k] for k in ("job", "requests", "succeeded", "failed")} == {
        "job": "good.jsonl", "requests": 2, "succeeded": 2, "failed": 0}
    (rejected,) = events(logs, "job.rejected")
    assert rejected["job"] == "broken.json" and "JSON" in rejected["reason"]


async def test_stop_leaves_queued_requests_for_the_next_run(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    """A graceful stop lets the requests in flight finish, sends no new ones, and
    the next run answers the rest: still exactly one line per request."""
    cfg = make_config(upstream={"initial_limit": 1}, daemon={"drain_timeout": 30.0})
    ids = [f"q-{i:02d}" for i in range(40)]
    spool.drop("slow.jsonl", [tagged(cid) for cid in ids])
    rec = Recorder(MockSettings(latency=1.0))
    daemon = make_daemon(cfg, rec, drain=False)
    rc: list[int] = []

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rc.append(await daemon.run(task_status=task_status))

    with trio.fail_after(VIRTUAL_TIMEOUT):
        async with trio.open_nursery() as outer:
            outer.start_soon(ticker)
            async with trio.open_nursery() as nursery:
                await nursery.start(run)
                while len(rec.seen) < 3:
                    await trio.sleep(0.01)
                sent_before = len(rec.seen)
                stop_at = trio.current_time()
                daemon.request_stop("test")
            stopped_after = trio.current_time() - stop_at
            outer.cancel_scope.cancel()
    close_leftovers(daemon)

    assert rc == [0]
    assert spool.jobs("active") == ["slow.jsonl"]
    assert len(rec.seen) <= sent_before + 1, (
        f"{len(rec.seen) - sent_before} requests were sent after the stop"
    )
    # Virtual seconds; generous because the clock also jumps while threads work.
    assert stopped_after < 10, f"stop took {stopped_after:.1f} s with one request in flight"

    rec2 = Recorder(MockSettings(latency=0.01))
    assert await run_daemon(make_daemon(cfg, rec2)) == 0
    one_line_each(spool.results("slow"), ids)
    assert len(rec.seen) + len(rec2.seen) == len(ids)


def open_files_under(folder: Path) -> list[str]:
    """Paths under ``folder`` this process holds open (Linux /proc)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                out.append(target)
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_hard_stop_closes_results_files(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    """drain_timeout cuts requests in flight: what was answered is kept, no file is
    left open, and the next run answers the rest. (Regression: the results file was
    closed through an unshielded thread hop in a cancelled scope, i.e. never.)"""
    cfg = make_config(upstream={"initial_limit": 4, "adaptive": False},
                      daemon={"drain_timeout": 0.2})
    ids = [f"h-{i:02d}" for i in range(12)]
    spool.drop("cut.jsonl", [tagged(cid) for cid in ids])
    rec = Recorder(MockSettings(latency=1.0))
    daemon = make_daemon(cfg, rec, drain=False)
    rc: list[int] = []

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        rc.append(await daemon.run(task_status=task_status))

    async with trio.open_nursery() as outer:
        outer.start_soon(ticker)
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            while len(rec.seen) < 6:  # the second round of 4 is in flight
                await trio.sleep(0.01)
            daemon.request_stop("test")  # they need 1 s, the drain only 0.2 s
        outer.cancel_scope.cancel()

    leaked = open_files_under(spool.root)
    close_leftovers(daemon)
    assert rc == [0]
    assert spool.jobs("active") == ["cut.jsonl"]
    answered = read_jsonl(spool.root / "results" / ".cut.jsonl.part")
    # The next run answers the rest: still one line per request.
    assert await run_daemon(make_daemon(cfg, Recorder())) == 0
    one_line_each(spool.results("cut"), ids)
    assert len(answered) >= 4
    assert leaked == [], f"files left open after the daemon returned: {leaked}"


async def test_start_removes_temp_files_of_interrupted_writes(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    cfg = make_config()
    stale = [spool.root / ".state.json.0badc0de.tmp",
             spool.root / "rejected" / ".x.json.error.json.0badc0de.tmp"]
    for path in stale:
        path.write_text('{"half": ')
    spool.drop("ok.json", tagged("ok"))

    assert await run_daemon(make_daemon(cfg, Recorder())) == 0

    assert spool.jobs("done") == ["ok.json"]
    left = [str(p.relative_to(spool.root)) for p in stale if p.exists()]
    assert left == [], f"temp files of interrupted writes are still there: {left}"


# ---------------------------------------------------------------------------- secrets


async def test_api_key_is_sent_as_bearer_and_never_leaks(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        monkeypatch: pytest.MonkeyPatch, json_logs: Callable[[], list[dict[str, Any]]]) -> None:
    key = f"sk-pacer-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("PACER_TEST_API_KEY", key)
    cfg = make_config(upstream={"api_key_env": "PACER_TEST_API_KEY", "max_attempts": 2})
    rec = Recorder(MockSettings(latency=0.01))
    built: list[dict[str, Any]] = []
    real_client = httpx.AsyncClient

    class RoutedClient(real_client):  # type: ignore[misc, valid-type]
        """The client pacer builds itself, with its transport swapped for the recorder."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(kwargs)
            super().__init__(*args, **{**kwargs, "transport": rec.transport()})

    monkeypatch.setattr(httpx, "AsyncClient", RoutedClient)
    spool.drop("ok.jsonl", [tagged("k-1"), tagged("k-2")])
    spool.drop("nope.json", tagged("k-3", url="/v1/../admin"))  # rejected
    spool.drop("steal.json", tagged("k-4", headers={"Authorization": f"Bearer {key}"}))
    daemon = Daemon(load_config(cfg), drain=True, notifier=Notifier(None))

    assert await run_daemon(daemon) == 0

    assert len(built) == 1
    assert built[0]["follow_redirects"] is False
    assert sorted(rec.tags) == ["k-1", "k-2"]
    for seen in rec.seen:
        assert seen.headers["authorization"] == f"Bearer {key}"
    logs = json_logs()
    assert logs, "the daemon logged nothing?"
    texts = {"logs": "\n".join(json.dumps(line) for line in logs)}
    for path in spool.root.rglob("*"):
        if path.is_file() and path.name != "steal.json":  # the user's own file
            texts[str(path.relative_to(spool.root))] = path.read_text(errors="replace")
    for where, text in texts.items():
        assert key not in text, f"the API key leaked into {where}"
    assert spool.jobs("rejected") == ["nope.json", "steal.json"]


async def test_reload_adds_an_upstream_whose_client_was_injected(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    # Was: KeyError in apply_config, since an injected client was never looked up
    # for an upstream that the reload added.
    default, second = Recorder(), Recorder()
    path = make_config()
    daemon = Daemon(load_config(path), drain=False, notifier=Notifier(None),
                    clients={"default": default.client(), "second": second.client()})
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        make_config(upstreams={"second": {"base_url": BASE_URL}})
        await daemon.reload()
        assert sorted(daemon.upstreams) == ["default", "second"]
        spool.drop("one.json", req("r1", upstream="second"))
        with trio.fail_after(VIRTUAL_TIMEOUT):
            while spool.names("done") != ["one.json"]:
                await trio.sleep(TICK)
        daemon.request_stop("test")
    assert len(second.seen) == 1 and default.seen == []


async def test_a_failing_notify_socket_is_reported(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        captured: list[dict[str, Any]], tmp_path: Path) -> None:
    # Was: sd_notify failures were counted by the notifier, never reported.
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    daemon = Daemon(load_config(make_config()), drain=True, notifier=notifier,
                    clients={"default": Recorder().client()})
    assert await run_daemon(daemon) == 0
    failed = events(captured, "systemd.notify_failed")
    assert len(failed) == 1 and failed[0]["log_level"] == "warning"
    assert notifier.errors >= 2  # READY, STOPPING...: counted, reported once


async def test_state_is_built_once_per_tick(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: the state loop built the state twice per tick (file, then systemd STATUS).
    calls = [0]
    real = StateReporter.state

    def counting(self: StateReporter) -> Any:
        calls[0] += 1
        return real(self)

    class Ticks(Notifier):
        statuses = 0

        def status(self, text: str) -> bool:
            Ticks.statuses += 1
            return False

    monkeypatch.setattr(StateReporter, "state", counting)
    daemon = Daemon(load_config(make_config(daemon={"state_interval": 1.0})), drain=False,
                    notifier=Ticks(None), clients={"default": Recorder().client()})
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        while Ticks.statuses < 5:
            await trio.sleep(0.5)
        daemon.request_stop("test")
    # One per tick, plus the one before the first tick and the one at the end.
    assert calls[0] <= Ticks.statuses + 2, (calls[0], Ticks.statuses)
