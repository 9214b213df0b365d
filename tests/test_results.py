"""Result lines, per-job results files (crash resume included) and batched writing."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import pacer.spool.durable as durable_mod
import pacer.spool.results as results_mod
from pacer.spool.durable import Barrier
from pacer.spool.results import JobResults, ResultWriter, result_line


def decode(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj: dict[str, Any] = json.loads(line)
    return obj


def strict_loads(line: bytes) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in a result line")

    return json.loads(line.decode("utf-8"), parse_constant=refuse)


# -------------------------------------------------------------------- result_line


def test_success_line_is_openai_batch_output_plus_pacer_fields() -> None:
    obj = decode(
        result_line("r-1", "default", 2, status=200, body={"choices": []}, request_id="req_9")
    )
    assert set(obj) == {"id", "custom_id", "response", "error", "attempts", "upstream"}
    assert obj["id"].startswith("batch_req_")
    assert obj["custom_id"] == "r-1"
    assert obj["response"] == {"status_code": 200, "request_id": "req_9", "body": {"choices": []}}
    assert obj["error"] is None
    assert obj["attempts"] == 2
    assert obj["upstream"] == "default"


def test_ids_are_unique() -> None:
    ids = {decode(result_line("a", "u", 1, status=200))["id"] for _ in range(100)}
    assert len(ids) == 100


def test_error_line_without_response() -> None:
    obj = decode(
        result_line(
            "r-2", None, 0, error_code="invalid_json", error_message="line 2: not valid JSON"
        )
    )
    assert obj["response"] is None
    assert obj["error"] == {"code": "invalid_json", "message": "line 2: not valid JSON"}
    assert obj["attempts"] == 0 and obj["upstream"] is None


def test_error_line_with_the_last_response() -> None:
    obj = decode(
        result_line(
            "r-3", "default", 5, status=429, body={"error": "slow down"}, error_code="http_429"
        )
    )
    assert obj["response"]["status_code"] == 429
    assert obj["response"]["body"] == {"error": "slow down"}
    assert obj["error"] == {"code": "http_429", "message": "http_429"}


def test_line_is_compact_utf8() -> None:
    line = result_line("é", "default", 1, status=200, body={"text": "naïve ✓"})
    assert "naïve ✓".encode() in line
    assert b": " not in line


@pytest.mark.parametrize(
    "body",
    [
        float("nan"),
        {"a": [float("inf"), -float("inf")]},
        {"s": "\ud800"},
        ["\udfff", 1.5],
    ],
)
def test_odd_bodies_from_the_upstream_still_make_one_strict_line(body: Any) -> None:
    # Was: NaN/Infinity written as bare NaN (not JSON), and a lone surrogate (which
    # Python's json reader accepts from a response) raised UnicodeEncodeError.
    line = result_line("r", "default", 1, status=200, body=body)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    obj = strict_loads(line)
    assert obj["custom_id"] == "r" and obj["response"]["status_code"] == 200


def test_non_finite_numbers_become_strings() -> None:
    obj = strict_loads(
        result_line(
            "r",
            "u",
            1,
            status=200,
            body={"a": float("nan"), "b": [float("inf"), -float("inf")], "c": 1.5},
        )
    )
    assert obj["response"]["body"] == {"a": "NaN", "b": ["Infinity", "-Infinity"], "c": 1.5}


def test_surrogates_survive_as_escapes() -> None:
    line = result_line("r\ud800", "u", 1, status=200, body="x\udc80")
    assert json.loads(line)["custom_id"] == "r\ud800"


# --------------------------------------------------------------------- JobResults


def test_open_append_publish(tmp_path: Path) -> None:
    jr = JobResults(tmp_path, "job")
    jr.open()
    assert jr.part == tmp_path / ".job.jsonl.part" and jr.part.exists()
    assert jr.answered == {}
    assert not jr.published
    jr.append([result_line("a", "u", 1, status=200)])
    jr.append([result_line("b", "u", 1, error_code="x"), result_line("c", "u", 1, status=201)])
    assert not jr.final.exists()
    jr.publish()
    assert jr.published
    assert not jr.part.exists()
    ids = [json.loads(line)["custom_id"] for line in jr.final.read_bytes().splitlines()]
    assert ids == ["a", "b", "c"]
    jr.publish()  # idempotent
    assert jr.final.exists()


def test_append_is_on_disk_before_close(tmp_path: Path) -> None:
    jr = JobResults(tmp_path, "job")
    jr.open()
    jr.append([result_line("a", "u", 1, status=200)])
    assert jr.part.read_bytes().count(b"\n") == 1  # flushed, not in a Python buffer
    jr.close()
    jr.close()


def test_append_after_close_still_lands_and_leaves_nothing_open(tmp_path: Path) -> None:
    # Was: AssertionError. The daemon closes a job's results when its task ends,
    # also when a hard stop cancels it with answers still pending in the writer;
    # the final flush at shutdown must still write them.
    jr = JobResults(tmp_path, "job")
    jr.open()
    jr.append([result_line("a", "u", 1, status=200)])
    jr.close()
    jr.append([result_line("b", "u", 1, status=200)])
    assert jr._fh is None  # opened for the append only
    assert [json.loads(x)["custom_id"] for x in jr.part.read_bytes().splitlines()] == ["a", "b"]
    jr.publish()  # nothing open: nothing to publish here (the daemon resumes it)
    assert not jr.final.exists()


def test_append_after_publish_is_an_error(tmp_path: Path) -> None:
    jr = JobResults(tmp_path, "job")
    jr.open()
    jr.publish()
    with pytest.raises(RuntimeError, match="already published"):
        jr.append([result_line("a", "u", 1, status=200)])
    assert not jr.part.exists()


def test_resume_cuts_a_torn_last_line_and_reads_answered_ids(tmp_path: Path) -> None:
    part = tmp_path / ".job.jsonl.part"
    good = result_line("a", "u", 1, status=200) + result_line("b", "u", 3, error_code="e")
    part.write_bytes(good + result_line("c", "u", 1, status=200)[:25])
    jr = JobResults(tmp_path, "job")
    jr.open()
    assert jr.answered == {"a": False, "b": True}
    assert part.read_bytes() == good
    jr.append([result_line("c", "u", 1, status=200)])
    jr.publish()
    lines = jr.final.read_bytes().splitlines()
    assert [json.loads(line)["custom_id"] for line in lines] == ["a", "b", "c"]


def test_resume_with_only_a_torn_line(tmp_path: Path) -> None:
    part = tmp_path / ".job.jsonl.part"
    part.write_bytes(b'{"custom_id": "a", "resp')
    jr = JobResults(tmp_path, "job")
    jr.open()
    assert jr.answered == {}
    assert part.read_bytes() == b""
    jr.close()


def test_resume_with_a_long_torn_line(tmp_path: Path) -> None:
    part = tmp_path / ".job.jsonl.part"
    good = result_line("a", "u", 1, status=200)
    part.write_bytes(good + b"x" * 200_000)  # longer than one backwards read
    jr = JobResults(tmp_path, "job")
    jr.open()
    assert jr.answered == {"a": False}
    assert part.read_bytes() == good
    jr.close()


def test_resume_of_a_clean_part_file_changes_nothing(tmp_path: Path) -> None:
    part = tmp_path / ".job.jsonl.part"
    good = result_line("a", "u", 1, status=200)
    part.write_bytes(good)
    jr = JobResults(tmp_path, "job")
    jr.open()
    assert part.read_bytes() == good and jr.answered == {"a": False}
    jr.close()


def test_published_final_without_part_is_read_as_answered(tmp_path: Path) -> None:
    final = tmp_path / "job.jsonl"
    final.write_bytes(
        result_line("a", "u", 1, status=200) + result_line("b", "u", 1, error_code="x")
    )
    jr = JobResults(tmp_path, "job")
    jr.open()
    assert jr.answered == {"a": False, "b": True}
    assert jr.published
    assert not jr.part.exists()
    jr.publish()  # nothing to do; the final file stays as it is
    assert final.exists() and not jr.part.exists()


# ------------------------------------------------------------------- ResultWriter


def lines_of(jr: JobResults) -> list[str]:
    path = jr.final if jr.final.exists() else jr.part
    return [json.loads(line)["custom_id"] for line in path.read_bytes().splitlines()]


async def test_write_returns_only_after_the_line_is_on_disk(tmp_path: Path) -> None:
    jr = JobResults(tmp_path, "job")
    jr.open()
    writer = ResultWriter(flush_interval=10, flush_max_lines=100)
    returned = trio.Event()

    async def write() -> None:
        await writer.write(jr, result_line("a", "u", 1, status=200))
        assert jr.part.read_bytes().count(b"\n") == 1
        returned.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        assert not returned.is_set()
        assert jr.part.read_bytes() == b""  # not flushed: write() still waits
        await writer.flush()
    assert returned.is_set()
    assert lines_of(jr) == ["a"]
    jr.close()


async def test_writes_are_batched_into_one_flush(tmp_path: Path) -> None:
    jobs = [JobResults(tmp_path, f"job{i}") for i in range(3)]
    for jr in jobs:
        jr.open()
    writer = ResultWriter(flush_interval=0.2, flush_max_lines=1000)
    async with trio.open_nursery() as services:
        services.start_soon(writer.run)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(
                        writer.write, jobs[i % 3], result_line(f"r{i}", "u", 1, status=200)
                    )
        services.cancel_scope.cancel()
    assert writer.flushes == 1
    assert writer.lines_written == 30
    for k, jr in enumerate(jobs):
        assert sorted(lines_of(jr)) == sorted(f"r{i}" for i in range(k, 30, 3))
        jr.close()


async def test_flush_max_lines_flushes_early(tmp_path: Path) -> None:
    jr = JobResults(tmp_path, "job")
    jr.open()
    writer = ResultWriter(flush_interval=60, flush_max_lines=4)

    def line(i: int) -> bytes:
        return result_line(f"r{i}", "u", 1, status=200)

    async with trio.open_nursery() as services:
        services.start_soon(writer.run)
        async with trio.open_nursery() as nursery:
            for i in range(3):  # below the threshold: they wait for the interval
                nursery.start_soon(writer.write, jr, line(i))
            await trio.sleep(0.2)
            assert writer.flushes == 0 and jr.part.read_bytes() == b""
            with trio.fail_after(5):  # far less than flush_interval
                await writer.write(jr, line(3))  # the 4th line: flushed at once
        assert writer.flushes == 1
        assert sorted(lines_of(jr)) == [f"r{i}" for i in range(4)]
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:  # more than the threshold at once
                for i in range(4, 13):
                    nursery.start_soon(writer.write, jr, line(i))
        services.cancel_scope.cancel()
    assert writer.flushes == 2  # one batch, however far past the threshold
    assert sorted(lines_of(jr)) == sorted(f"r{i}" for i in range(13))
    jr.close()


async def test_writes_during_a_flush_go_into_the_next_batch(tmp_path: Path) -> None:
    jr = JobResults(tmp_path, "job")
    jr.open()
    writer = ResultWriter(flush_interval=0.01, flush_max_lines=1000)
    async with trio.open_nursery() as services:
        services.start_soon(writer.run)
        with trio.fail_after(5):
            for i in range(5):  # one after the other: each waits for its own flush
                await writer.write(jr, result_line(f"r{i}", "u", 1, status=200))
        services.cancel_scope.cancel()
    assert writer.flushes == 5
    assert lines_of(jr) == [f"r{i}" for i in range(5)]
    jr.close()


async def test_empty_flush_is_harmless() -> None:
    writer = ResultWriter(flush_interval=0.01, flush_max_lines=10)
    await writer.flush()
    assert writer.flushes == 0


async def test_flushes_never_overlap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: the daemon's final flush at shutdown could write a job's file from a
    # second thread while the flusher task's batch was still being written.
    real = ResultWriter._write_batch
    gate = threading.Event()
    lock = threading.Lock()
    active = [0, 0]  # now, most at once

    def slow_batch(self: ResultWriter, batch: dict[JobResults, list[bytes]]) -> int | OSError:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        gate.wait(5)
        try:
            return real(self, batch)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(ResultWriter, "_write_batch", slow_batch)
    jr = JobResults(tmp_path, "job")
    jr.open()
    writer = ResultWriter(flush_interval=10, flush_max_lines=100)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.write, jr, result_line("a", "u", 1, status=200))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(writer.flush)  # the flusher's batch: held in its thread
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(writer.write, jr, result_line("b", "u", 1, status=200))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(writer.flush)  # the final flush at shutdown
            await trio.sleep(0.1)
            gate.set()
    assert active[1] == 1
    assert lines_of(jr) == ["a", "b"]
    assert writer.flushes == 2
    jr.close()


def test_part_file_mode(tmp_path: Path) -> None:
    jr = JobResults(tmp_path, "job")
    jr.open()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(jr.part).st_mode & 0o777 == 0o640 & ~umask
    jr.close()


async def test_a_writer_arriving_during_a_failing_flush_still_wakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: a writer that arrived while a flush was failing (ENOSPC) waited on an
    # event that the failed flush threw away; its line reached the file with the
    # next flush, but the writer never woke (the job never completed).
    real = ResultWriter._write_batch
    gate = threading.Event()
    calls = [0]

    def failing_once(self: ResultWriter, batch: dict[JobResults, list[bytes]]) -> int | OSError:
        calls[0] += 1
        if calls[0] == 1:
            gate.wait(5)  # slow: the second writer arrives meanwhile
            return OSError(errno.ENOSPC, "No space left on device")
        return real(self, batch)

    monkeypatch.setattr(ResultWriter, "_write_batch", failing_once)
    jr = JobResults(tmp_path, "job")
    jr.open()
    writer = ResultWriter(flush_interval=10, flush_max_lines=100)
    woke: list[str] = []

    async def write(custom_id: str) -> None:
        await writer.write(jr, result_line(custom_id, "u", 1, status=200))
        woke.append(custom_id)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, "a")
            await trio.testing.wait_all_tasks_blocked()
            failing = trio.Event()

            async def first_flush() -> None:
                assert not await writer.flush()
                failing.set()

            nursery.start_soon(first_flush)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, "b")  # arrives while the failing batch is written
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
            await failing.wait()
            assert await writer.flush()
            await trio.testing.wait_all_tasks_blocked()
            assert lines_of(jr) == ["a", "b"]
            assert sorted(woke) == ["a", "b"]
            nursery.cancel_scope.cancel()
    jr.close()


async def test_new_part_files_folder_is_fsynced_once_per_batch_before_acknowledging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part file's name must be on disk before its first line counts as durable;
    one folder fsync covers every new part file of the batch."""
    events: list[str] = []
    real_fsync_dir = results_mod.fsync_dir
    fail_next = [True]

    def fsync_dir(path: Path) -> None:
        if fail_next[0]:
            fail_next[0] = False
            raise OSError(errno.EIO, "Input/output error")
        events.append(f"fsync {Path(path).name}")
        real_fsync_dir(path)

    monkeypatch.setattr(results_mod, "fsync_dir", fsync_dir)
    jobs = [JobResults(tmp_path, f"job{i}") for i in range(5)]
    for jr in jobs:
        jr.open()
    assert events == []  # opening defers the folder's fsync to the writer
    writer = ResultWriter(flush_interval=10, flush_max_lines=1000, syncfs=False)
    acknowledged: list[str] = []

    async def write(jr: JobResults) -> None:
        await writer.write(jr, result_line(jr.stem, "u", 1, status=200))
        acknowledged.append(jr.stem)

    async with trio.open_nursery() as nursery:
        for jr in jobs:
            nursery.start_soon(write, jr)
        await trio.testing.wait_all_tasks_blocked()
        assert not await writer.flush()  # the folder's fsync failed: nobody is told done
        await trio.testing.wait_all_tasks_blocked()
        assert acknowledged == []
        assert await writer.flush()
    assert events == [f"fsync {tmp_path.name}"]  # once, for five new part files
    assert sorted(acknowledged) == [jr.stem for jr in jobs]
    for jr in jobs:
        assert lines_of(jr) == [jr.stem]
        assert jr.entry_durable
        jr.close()
    # A resumed part file (already on disk) needs no folder fsync.
    again = JobResults(tmp_path, "job0")
    again.open()
    assert again.entry_durable
    again.close()


# ------------------------------------------------------------ one barrier per batch


async def test_a_batch_is_every_line_written_then_one_barrier_then_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With syncfs: no fsync per file; the lines of every job of the batch are in
    their files before the one barrier, and nobody is told done before it."""
    events: list[str] = []
    real_sync = Barrier.sync
    jobs = [JobResults(tmp_path, f"job{i}") for i in range(5)]

    def sync(self: Barrier, folders: Any = (), files: Any = ()) -> None:
        assert self.syncfs
        events.append("sync " + ",".join(str(len(lines_of(jr))) for jr in jobs))
        real_sync(self, folders, files)

    def no_fsync(_fd: int) -> None:
        raise AssertionError("a file fsynced on its own")

    monkeypatch.setattr(Barrier, "sync", sync)
    for jr in jobs:
        jr.open()
    monkeypatch.setattr(results_mod.os, "fsync", no_fsync)
    writer = ResultWriter(flush_interval=10, flush_max_lines=1000, syncfs=True)

    async def write(jr: JobResults) -> None:
        await writer.write(jr, result_line(jr.stem, "u", 1, status=200))
        events.append(f"done {jr.stem}")

    async with trio.open_nursery() as nursery:
        for jr in jobs:
            nursery.start_soon(write, jr)
        await trio.testing.wait_all_tasks_blocked()
        assert events == []
        assert await writer.flush()
    assert events[0] == "sync 1,1,1,1,1"  # every file written, then one barrier
    assert sorted(events[1:]) == [f"done {jr.stem}" for jr in jobs]
    assert writer.flushes == 1
    writer.close()
    for jr in jobs:
        jr.close()


async def test_a_failed_barrier_cuts_every_file_back_and_keeps_the_batch_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What syncfs failed to write back is not known per file: every job's lines
    of the batch are taken back, the batch stays pending, nobody is acknowledged,
    and the next flush writes each line once."""
    real_sync = Barrier.sync
    fail = [True]

    def sync(self: Barrier, folders: Any = (), files: Any = ()) -> None:
        if fail[0]:
            raise OSError(errno.EIO, "Input/output error")
        real_sync(self, folders, files)

    monkeypatch.setattr(Barrier, "sync", sync)
    old = JobResults(tmp_path, "old")
    old.open()
    old.append([result_line("o1", "u", 1, status=200)])  # durable before the batch
    jobs = [old, *(JobResults(tmp_path, f"job{i}") for i in range(3))]
    for jr in jobs[1:]:
        jr.open()
    writer = ResultWriter(flush_interval=10, flush_max_lines=1000, syncfs=True)
    acknowledged: list[str] = []

    async def write(jr: JobResults, custom_id: str) -> None:
        await writer.write(jr, result_line(custom_id, "u", 1, status=200))
        acknowledged.append(custom_id)

    async with trio.open_nursery() as nursery:
        for jr in jobs:
            nursery.start_soon(write, jr, f"{jr.stem}-a")
        await trio.testing.wait_all_tasks_blocked()
        assert not await writer.flush()
        await trio.testing.wait_all_tasks_blocked()
        assert acknowledged == []
        assert lines_of(old) == ["o1"]  # cut back to before the batch
        assert all(lines_of(jr) == [] for jr in jobs[1:])
        assert writer.trouble is not None
        fail[0] = False
        assert await writer.flush()
    assert sorted(acknowledged) == sorted(f"{jr.stem}-a" for jr in jobs)
    assert lines_of(old) == ["o1", "old-a"]
    assert all(lines_of(jr) == [f"{jr.stem}-a"] for jr in jobs[1:])
    writer.close()
    for jr in jobs:
        jr.close()


def test_barrier_without_syncfs_fsyncs_each_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[object] = []
    monkeypatch.setattr(durable_mod.os, "fsync", lambda fd: synced.append(fd))
    barrier = Barrier(tmp_path, use_syncfs=False)
    assert not barrier.syncfs
    barrier.sync([tmp_path, tmp_path], [7])
    assert synced[0] == 7 and len(synced) == 2  # the file, then the folder once


def test_barrier_with_syncfs_on_this_filesystem(tmp_path: Path) -> None:
    barrier = Barrier(tmp_path)
    if not barrier.syncfs:
        pytest.skip("no syncfs here (kernel before 5.8, or a filesystem not listed)")
    (tmp_path / "a").write_bytes(b"x")
    barrier.sync([tmp_path])  # returns: what was written is on disk
    barrier.close()
    assert not barrier.syncfs
