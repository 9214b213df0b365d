"""The quick pass over a .jsonl job (spool/prescan.py), and a claimed job that is
checked whole by it, then validated line by line as it is read (spool/claimed.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacer.spool import claimed as claimed_mod
from pacer.spool.claimed import ClaimedJob, claim_job_file
from pacer.spool.jobs import (
    BadRequest,
    JobFileError,
    Request,
    UpstreamView,
    iter_jsonl,
    validate_jsonl,
)
from pacer.spool.prescan import prescan_jsonl

VIEW = UpstreamView(base_urls={"default": "http://127.0.0.1:8000"},
                    auth_headers={"default": "authorization"}, default="default")
MAX_LINE = 4096
CHAT = "/v1/chat/completions"


def good(cid: str) -> bytes:
    return json.dumps({"custom_id": cid, "method": "POST", "url": CHAT,
                       "body": {"model": "m", "messages": []}}).encode()


def join(*rows: bytes, newline_at_end: bool = True) -> bytes:
    return b"\n".join(rows) + (b"\n" if newline_at_end else b"")


def claim(tmp_path: Path, data: bytes, stem: str = "j") -> ClaimedJob:
    path = tmp_path / f"{stem}.jsonl"
    path.write_bytes(data)
    return claim_job_file(path, stem, VIEW, max_bytes=1 << 30, max_line=MAX_LINE,
                          results_name=f".{stem}.jsonl.part")


def read_all(job: ClaimedJob) -> list[Request | BadRequest]:
    out: list[Request | BadRequest] = []
    while not job.exhausted:
        out += job.read(64)
    job.close()
    return out


# ------------------------------------------------------------------ the quick pass


def test_reads_ids_lines_and_end() -> None:
    data = join(good("a"), good("b"), good("c"), newline_at_end=False)
    quick = prescan_jsonl(io.BytesIO(data), "j", MAX_LINE)
    assert quick is not None
    assert (quick.lines, quick.line_ids, quick.end) == (3, ["a", "b", "c"], len(data))


@pytest.mark.parametrize("data", [
    b"",  # empty: the full validation says so
    join(good("a"), b"", good("b")),  # a blank line
    join(good("a"), good("a")),  # a duplicate
    join(good("a"), b'{"url": "/x", "custom_id": "b"}'),  # custom_id not first
    join(good("a"), b'{"custom_id": "b", "custom_id": "c", "url": "/x"}'),  # key twice
    join(good("a"), b'{"custom_id": "b", "custom\\u005fid": "c", "url": "/x"}'),  # escaped
    join(good("a"), good("caf\u00e9")),  # not ASCII (json.dumps escapes it)
    join(good("a"), good("j:5")),  # could be a broken line's default id
    b"\xef\xbb\xbf" + join(good("a")),  # a BOM
    join(good("a"), good("b" * 5000)),  # over max_line
], ids=["empty", "blank", "duplicate", "id-not-first", "key-twice", "escape", "non-ascii",
        "default-like", "bom", "long-line"])
def test_leaves_to_the_full_validation_what_it_cannot_be_sure_of(data: bytes) -> None:
    assert prescan_jsonl(io.BytesIO(data), "j", MAX_LINE) is None


def test_blocks_split_lines_anywhere() -> None:
    data = join(*(good(f"r{i}") for i in range(300)))
    whole = prescan_jsonl(io.BytesIO(data), "j", MAX_LINE)
    for block in (120, 173, 1000, 4096):  # each longer than a line
        assert prescan_jsonl(io.BytesIO(data), "j", MAX_LINE, block=block) == whole


def test_a_line_longer_than_a_block_leaves_it_to_the_full_validation() -> None:
    data = join(good("a"), good("b" * 500))
    assert prescan_jsonl(io.BytesIO(data), "j", MAX_LINE, block=64) is None


# Lines the quick pass can be fooled by, if anything can: broken JSON after a
# readable id, ids that look like default ids, bad requests, escapes, blank lines.
LINE = st.sampled_from([
    good("a"), good("b"), good("c"), good("j:2"), good("j:3"),
    b'{"custom_id": "a", "url": ', b'{"custom_id": "b"} trailing', b'{"custom_id": "c"',
    b'{"custom_id": "d", "url": "/x", "bogus": 1}', b'{"custom_id": "e", "url": "../x"}',
    b'{"custom_id": "f", "url": "/x", "body": NaN}', b'{"custom_id": "g\xff", "url": "/x"}',
    b'{"custom_id": "h", "url": "/x", "custom_id": "a"}', b'{"url": "/x"}', b"", b"nope",
    b'{"custom_id": "\\u0061", "url": "/x"}', b'  {"custom_id": "i", "url": "/x"}\r',
])


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, min_size=1, max_size=8))
def test_when_it_answers_it_agrees_with_the_full_validation(rows: list[bytes]) -> None:
    data = join(*rows)
    quick = prescan_jsonl(io.BytesIO(data), "j", MAX_LINE)
    try:
        summary = validate_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE)
    except JobFileError as exc:
        # Whatever rejects a file whole for a duplicate, the quick pass must not miss.
        if exc.code == "duplicate_custom_id":
            assert quick is None
        return
    if quick is None:
        return
    assert quick.lines == summary.requests + summary.bad
    assert quick.end == summary.end == len(data)
    for item in iter_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE):
        read_off = quick.line_ids[item.line - 1]
        # The id read off a line is its id, unless the line is not JSON after all:
        # then it has its default id, which no id read off a line can equal.
        assert item.custom_id == read_off or (
            isinstance(item, BadRequest) and item.custom_id == f"j:{item.line}"
            and item.custom_id not in quick.line_ids)


# ---------------------------------------------------------- a claimed job, streamed


def test_duplicate_ids_far_apart_reject_the_file_whole(tmp_path: Path) -> None:
    rows = [good(f"r{i}") for i in range(20_000)] + [good("r3")]
    with pytest.raises(JobFileError) as info:
        claim(tmp_path, join(*rows))
    assert info.value.code == "duplicate_custom_id"
    assert "'r3'" in info.value.message and "line 20001" in info.value.message


def test_a_bad_line_at_the_end_of_a_big_job_gets_its_error_line(tmp_path: Path) -> None:
    rows = [good(f"r{i}") for i in range(20_000)] + [b'{"custom_id": "last", "url": ']
    job = claim(tmp_path, join(*rows))
    assert job.line_ids is not None  # the quick pass checked it
    items = read_all(job)
    assert len(items) == job.requests == 20_001
    assert sum(isinstance(i, Request) for i in items) == 20_000
    last = items[-1]
    assert isinstance(last, BadRequest)
    # Not JSON: its id cannot be read off it, so it is the default one.
    assert (last.custom_id, last.code, last.line) == ("j:20001", "invalid_json", 20001)
    assert job.vanished() == []  # "last" is not reported as gone: its line answered


def test_bad_lines_before_the_first_valid_one_come_first(tmp_path: Path) -> None:
    data = join(b'{"custom_id": "x", "url": "../up"}', good("a"), b'{"custom_id": "y"', good("b"))
    job = claim(tmp_path, data)
    assert job.line_ids is not None
    items = read_all(job)
    assert [(i.custom_id, type(i).__name__) for i in items] == [
        ("x", "BadRequest"), ("a", "Request"), ("j:3", "BadRequest"), ("b", "Request")]


def test_a_file_whose_lines_are_all_bad_is_rejected_whole(tmp_path: Path) -> None:
    data = join(b'{"custom_id": "x", "url": "../up"}', b'{"custom_id": "y", "url": ')
    with pytest.raises(JobFileError) as info:
        claim(tmp_path, data)
    assert info.value.code == "no_valid_request"
    assert "line 1" in info.value.message and "line 2" in info.value.message


def test_many_bad_lines_first_fall_back_to_validating_every_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(claimed_mod, "HOLD_BAD_LINES", 3)
    rows = [b'{"custom_id": "b%d", "url": "../up"}' % i for i in range(5)] + [good("a")]
    job = claim(tmp_path, join(*rows))
    assert job.line_ids is None  # validated line by line first
    items = read_all(job)
    assert [i.custom_id for i in items] == ["b0", "b1", "b2", "b3", "b4", "a"]
    rows = [b'{"custom_id": "b%d", "url": "../up"}' % i for i in range(5)]
    with pytest.raises(JobFileError, match="no line is a valid request"):
        claim(tmp_path, join(*rows), stem="k")
