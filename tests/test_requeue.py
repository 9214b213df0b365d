"""``pacer requeue``: only the requests that ended in an error go out again, as a new
job with their custom_ids; the old job and its results stay as they were."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from conftest import BASE_URL, BODY, MakeConfig, SpoolHelper, jsonl, read_jsonl, req
from pacer.commands.requeue import requeue
from pacer.config import Config, load_config
from pacer.service.daemon import Daemon
from pacer.service.systemd import Notifier
from pacer.spool.results import result_line


@pytest.fixture
def config(make_config: MakeConfig, spool: SpoolHelper) -> Config:
    return load_config(make_config())


def ok(cid: str) -> bytes:
    return result_line(cid, "default", 1, status=200, body={"ok": True})


def err(cid: str, code: str = "http_500") -> bytes:
    return result_line(
        cid,
        "default",
        5,
        status=500,
        body={"error": "boom"},
        error_code=code,
        error_message="Internal Server Error",
    )


def failed_job(spool: SpoolHelper, name: str, data: bytes, results: list[bytes]) -> Path:
    stem = name.rsplit(".", 1)[0]
    path = spool.folder("failed") / name
    path.write_bytes(data)
    (spool.folder("results") / f"{stem}.jsonl").write_bytes(b"".join(results))
    return path


def incoming(spool: SpoolHelper) -> dict[str, list[dict[str, Any]]]:
    return {n: read_jsonl(spool.root / "incoming" / n) for n in spool.jobs("incoming")}


def test_round_trip_only_the_failed_request(
    config: Config, spool: SpoolHelper, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = [
        req("r-1", body={**BODY, "n": 1}),
        req("r-2", body={**BODY, "n": 2}),
        req("r-3", body={**BODY, "n": 3}),
    ]
    job = failed_job(spool, "job.jsonl", jsonl(requests), [ok("r-1"), err("r-2"), ok("r-3")])
    results = spool.root / "results" / "job.jsonl"
    before = (job.read_bytes(), results.read_bytes())

    assert requeue(config, "failed/job.jsonl") == 0  # relative to the spool

    out = capsys.readouterr()
    assert out.out.strip() == "job.requeue-1.jsonl"
    assert "requeued 1 of 1 failed request" in out.err
    assert incoming(spool) == {"job.requeue-1.jsonl": [requests[1]]}
    assert (job.read_bytes(), results.read_bytes()) == before  # untouched
    assert spool.dotfiles("tmp") == [] and spool.jobs("tmp") == []


def test_default_custom_ids_are_written_out(config: Config, spool: SpoolHelper) -> None:
    lines = [
        json.dumps(req()),
        "",
        json.dumps(req(body={**BODY, "n": 3})),
        json.dumps(req(body={**BODY, "n": 4})),
    ]
    data = ("\n".join(lines) + "\n").encode()
    # Line numbers count the blank line, as the daemon's do: ids b:1, b:3, b:4.
    failed_job(spool, "b.jsonl", data, [ok("b:1"), err("b:3", "timeout"), err("b:4")])
    assert requeue(config, str(spool.root / "failed" / "b.jsonl")) == 0  # absolute path
    [(name, got)] = incoming(spool).items()
    assert name == "b.requeue-1.jsonl"
    assert got == [
        {"custom_id": "b:3", **req(body={**BODY, "n": 3})},
        {"custom_id": "b:4", **req(body={**BODY, "n": 4})},
    ]
    assert next(iter(got[0])) == "custom_id"  # written first, for people reading it


def test_single_request_job(
    config: Config, spool: SpoolHelper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed_job(
        spool, "one.json", json.dumps(req(headers={"x-a": "1"})).encode(), [err("one", "http_400")]
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "one.json").write_text("{}")  # a same-named file here does not shadow it
    assert requeue(config, "one.json") == 0  # a bare name: looked up in failed/
    assert incoming(spool) == {
        "one.requeue-1.jsonl": [{"custom_id": "one", **req(headers={"x-a": "1"})}]
    }


def test_invalid_lines_are_reported_and_skipped(
    config: Config, spool: SpoolHelper, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (
        json.dumps(req("r-1")) + "\n{not json\n" + json.dumps(req("r-3", upstream="nowhere")) + "\n"
    ).encode()
    failed_job(
        spool,
        "mixed.jsonl",
        data,
        [err("r-1"), err("mixed:2", "invalid_json"), err("r-3", "unknown_upstream")],
    )
    assert requeue(config, "failed/mixed.jsonl") == 0
    err_out = capsys.readouterr().err
    assert "left out mixed:2 (line 2, was invalid_json)" in err_out
    assert "left out r-3 (line 3, was unknown_upstream)" in err_out
    assert "requeued 1 of 3 failed requests" in err_out
    assert incoming(spool) == {"mixed.requeue-1.jsonl": [req("r-1")]}


def test_an_upstream_configured_since_is_requeued(
    make_config: MakeConfig,
    spool: SpoolHelper,
) -> None:
    data = jsonl([req("r-1", upstream="other")])
    failed_job(spool, "later.jsonl", data, [err("r-1", "unknown_upstream")])
    config = load_config(make_config(upstreams={"other": {"base_url": "http://other.test"}}))
    assert requeue(config, "failed/later.jsonl") == 0
    assert incoming(spool) == {"later.requeue-1.jsonl": [req("r-1", upstream="other")]}


def test_nothing_to_requeue(
    config: Config, spool: SpoolHelper, capsys: pytest.CaptureFixture[str]
) -> None:
    failed_job(spool, "fine.jsonl", jsonl([req("a")]), [ok("a")])
    assert requeue(config, "failed/fine.jsonl") == 1
    assert "nothing to requeue" in capsys.readouterr().err
    failed_job(
        spool,
        "junk.jsonl",
        b"{nope\n" + jsonl([req("a")]),
        [err("junk:1", "invalid_json"), ok("a")],
    )
    assert requeue(config, "failed/junk.jsonl") == 1
    assert "can be sent as they are" in capsys.readouterr().err
    (spool.folder("failed") / "nores.jsonl").write_bytes(jsonl([req("a")]))
    assert requeue(config, "failed/nores.jsonl") == 1
    assert spool.jobs("incoming") == []


def test_bad_usage(
    config: Config, spool: SpoolHelper, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool.drop("waiting.jsonl", [req("a")])
    assert requeue(config, "incoming/waiting.jsonl") == 2
    assert "only jobs in the spool's failed/" in capsys.readouterr().err
    assert requeue(config, "failed/missing.jsonl") == 2
    assert "no such job" in capsys.readouterr().err
    (spool.folder("failed") / "notes.txt").write_text("{}")
    assert requeue(config, "failed/notes.txt") == 2
    assert "end in .json or .jsonl" in capsys.readouterr().err
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_bytes(jsonl([req("a")]))
    assert requeue(config, str(outside)) == 2
    (spool.folder("done") / "d.jsonl").write_bytes(jsonl([req("a")]))
    assert requeue(config, "done/d.jsonl") == 1
    assert "every request succeeded" in capsys.readouterr().err
    assert spool.jobs("incoming") == ["waiting.jsonl"]


def test_names_count_on_and_dry_run(
    config: Config, spool: SpoolHelper, capsys: pytest.CaptureFixture[str]
) -> None:
    failed_job(spool, "n.jsonl", jsonl([req("a"), req("b")]), [err("a"), err("b")])
    assert requeue(config, "failed/n.jsonl", dry_run=True) == 0
    out = capsys.readouterr()
    assert [json.loads(x)["custom_id"] for x in out.out.splitlines()] == ["a", "b"]
    assert "would requeue 2" in out.err and spool.jobs("incoming") == []
    assert requeue(config, "failed/n.jsonl") == 0
    assert requeue(config, "failed/n.jsonl") == 0  # twice: a second new job
    # A requeue that failed again counts on from the original name.
    failed_job(spool, "n.requeue-1.jsonl", jsonl([req("a")]), [err("a")])
    os.unlink(spool.root / "incoming" / "n.requeue-1.jsonl")
    assert requeue(config, "failed/n.requeue-1.jsonl") == 0
    assert spool.jobs("incoming") == ["n.requeue-2.jsonl", "n.requeue-3.jsonl"]


async def test_through_the_daemon(config: Config, spool: SpoolHelper) -> None:
    """Fail one request for real, requeue it, and let it succeed the second time."""
    broken = {"r-2"}
    sent: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        cid = json.loads(await request.aread())["tag"]
        sent.append(cid)
        if cid in broken:
            return httpx.Response(400, json={"error": {"message": "bad model"}})
        return httpx.Response(200, json={"echo": cid})

    async def drain() -> int:
        client = httpx.AsyncClient(base_url=BASE_URL, transport=httpx.MockTransport(handler))
        daemon = Daemon(config, drain=True, clients={"default": client}, notifier=Notifier(None))
        with trio.fail_after(30):
            return await daemon.run()

    spool.drop("job.jsonl", [req(c, body={**BODY, "tag": c}) for c in ("r-1", "r-2", "r-3")])
    assert await drain() == 1
    assert spool.jobs("failed") == ["job.jsonl"]
    first = (spool.root / "results" / "job.jsonl").read_bytes()

    broken.clear()  # the cause is fixed
    assert requeue(config, "failed/job.jsonl") == 0
    sent.clear()
    assert await drain() == 0
    assert sent == ["r-2"]
    assert spool.jobs("done") == ["job.requeue-1.jsonl"]
    [line] = spool.results("job.requeue-1")
    assert line["custom_id"] == "r-2" and line["error"] is None
    assert line["response"]["body"] == {"echo": "r-2"}
    assert (spool.root / "results" / "job.jsonl").read_bytes() == first
    assert spool.jobs("failed") == ["job.jsonl"]
