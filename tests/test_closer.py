"""Ending jobs in batches: results published before job files move, one barrier
per batch after each kind of rename (a syncfs, or each folder's fsync), failures
confined to their jobs. Every test runs with and without syncfs."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio
import trio.testing

from pacer.service.closer import JobCloser
from pacer.spool.durable import Barrier
from pacer.spool.folders import Spool
from pacer.spool.results import JobResults, result_line


def make_job(spool: Spool, stem: str) -> JobResults:
    (spool.folder("active") / f"{stem}.json").write_text("{}")
    jr = JobResults(spool.folder("results"), stem)
    jr.open()
    jr.append([result_line(stem, "u", 1, status=200)])
    return jr


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


@pytest.fixture(params=[True, False], ids=["syncfs", "fsync"])
def syncfs(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch, spool: Spool) -> list[str]:
    """What happened, in order: each barrier with the folders it was to cover, and
    moves seen with what was published (and made durable) at the time."""
    events: list[str] = []
    real_sync, real_move = Barrier.sync, Spool.move_out

    def sync(self: Barrier, folders: Iterable[Path] = (), files: Iterable[int] = ()) -> None:
        folders = list(folders)
        real_sync(self, folders, files)
        events.append("sync " + " ".join(sorted(Path(f).name for f in folders)))

    def move_out(self: Spool, name: str, folder: str) -> str:
        stem = name.removesuffix(".json")
        assert (self.folder("results") / f"{stem}.jsonl").exists()
        # The results are durable before the move: a barrier came after their
        # rename, and none yet after a move.
        assert events and events[-1].startswith(("sync results", "move"))
        assert any(e == "sync results" for e in events)
        events.append(f"move {name}")
        return real_move(self, name, folder)

    monkeypatch.setattr(Barrier, "sync", sync)
    monkeypatch.setattr(Spool, "move_out", move_out)
    return events


async def test_jobs_ending_together_share_the_barriers(spool: Spool, log: list[str],
                                                       syncfs: bool) -> None:
    closer = JobCloser(spool, syncfs=syncfs)
    jobs = {f"j{i}": make_job(spool, f"j{i}") for i in range(6)}
    finals: dict[str, str] = {}

    async def end(stem: str, folder: str) -> None:
        finals[stem] = await closer.close(jobs[stem], f"{stem}.json", folder)

    async with trio.open_nursery() as nursery:
        for i, stem in enumerate(jobs):
            nursery.start_soon(end, stem, "failed" if i == 3 else "done")
    assert finals == {stem: f"{stem}.json" for stem in jobs}
    assert sorted(os.listdir(spool.folder("done"))) == [f"j{i}.json" for i in (0, 1, 2, 4, 5)]
    assert os.listdir(spool.folder("failed")) == ["j3.json"]
    assert os.listdir(spool.folder("active")) == []
    assert sorted(os.listdir(spool.folder("results"))) == [f"j{i}.jsonl" for i in range(6)]
    syncs = [e for e in log if e.startswith("sync")]
    # Jobs that end while a batch is being written share the next one: two
    # barriers per batch (after the publishes, after the moves), not per job.
    assert 1 <= closer.batches <= 2
    assert syncs.count("sync results") == closer.batches
    assert len(syncs) == 2 * closer.batches
    assert all(s.startswith("sync active") for s in syncs[1::2])


async def close_all(closer: JobCloser, jobs: list[JobResults]) -> dict[str, object]:
    """Close ``jobs`` together into done/; each one's outcome: its name there, or the
    error its closing raised."""
    outcomes: dict[str, object] = {}

    async def end(jr: JobResults) -> None:
        try:
            outcomes[jr.stem] = await closer.close(jr, f"{jr.stem}.json", "done")
        except OSError as exc:
            outcomes[jr.stem] = exc

    async with trio.open_nursery() as nursery:
        for jr in jobs:
            nursery.start_soon(end, jr)
    return outcomes


async def test_a_failure_is_the_outcome_of_its_job_only(spool: Spool, log: list[str],
                                                        syncfs: bool) -> None:
    closer = JobCloser(spool, syncfs=syncfs)
    good, bad = make_job(spool, "good"), make_job(spool, "bad")
    bad.close()
    bad.part.unlink()  # its publish will fail
    bad._fh = open(os.devnull, "ab")  # noqa: SIM115 - looks open, so publish renames
    outcomes = await close_all(closer, [good, bad])
    assert outcomes["good"] == "good.json"
    assert isinstance(outcomes["bad"], FileNotFoundError)
    assert os.listdir(spool.folder("active")) == ["bad.json"]  # left for a restart


async def test_a_failed_fsync_fails_every_job_of_its_batch_before_any_move(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, syncfs: bool) -> None:
    def failing(_self: Barrier, *_args: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Barrier, "sync", failing)
    closer = JobCloser(spool, syncfs=syncfs)
    jr = make_job(spool, "a")
    with pytest.raises(OSError) as info:
        await closer.close(jr, "a.json", "done")
    assert info.value.errno == errno.EIO
    assert os.listdir(spool.folder("active")) == ["a.json"]  # not moved
    assert os.listdir(spool.folder("done")) == []


async def test_a_crash_between_the_barriers_is_finished_by_the_next_start(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, syncfs: bool) -> None:
    """Stopped after the results' barrier, before any move (a kill -9 there): the
    results are published and the job files still in active/. The next start reads
    each job as answered from its published results and only moves the file: no
    line lost, none written twice."""
    jobs = [make_job(spool, f"j{i}") for i in range(4)]
    real_move = Spool.move_out

    def crash(self: Spool, name: str, folder: str) -> str:
        raise OSError(errno.EIO, "the process died here")

    monkeypatch.setattr(Spool, "move_out", crash)
    closer = JobCloser(spool, syncfs=syncfs)
    async with trio.open_nursery() as nursery:
        for jr in jobs:
            nursery.start_soon(_close_quietly, closer, jr)
    assert sorted(os.listdir(spool.folder("active"))) == [f"j{i}.json" for i in range(4)]
    assert sorted(os.listdir(spool.folder("results"))) == [f"j{i}.jsonl" for i in range(4)]
    closer.release()

    monkeypatch.setattr(Spool, "move_out", real_move)
    restarted = JobCloser(spool, syncfs=syncfs)
    for i in range(4):
        jr = JobResults(spool.folder("results"), f"j{i}")
        jr.open()
        assert jr.answered == {f"j{i}": False}  # nothing to send again
        assert await restarted.close(jr, f"j{i}.json", "done") == f"j{i}.json"
    assert os.listdir(spool.folder("active")) == []
    assert sorted(os.listdir(spool.folder("done"))) == [f"j{i}.json" for i in range(4)]
    for i in range(4):
        lines = (spool.folder("results") / f"j{i}.jsonl").read_text().splitlines()
        assert len(lines) == 1


async def test_a_failed_move_leaves_only_its_job_in_active(
        spool: Spool, monkeypatch: pytest.MonkeyPatch, syncfs: bool) -> None:
    real_move = Spool.move_out

    def move_out(self: Spool, name: str, folder: str) -> str:
        if name == "bad.json":
            raise OSError(errno.EACCES, "Permission denied")
        return real_move(self, name, folder)

    monkeypatch.setattr(Spool, "move_out", move_out)
    closer = JobCloser(spool, syncfs=syncfs)
    jobs = [make_job(spool, stem) for stem in ("a", "bad", "b")]
    outcomes = await close_all(closer, jobs)
    assert outcomes["a"] == "a.json" and outcomes["b"] == "b.json"
    assert isinstance(outcomes["bad"], PermissionError)
    assert os.listdir(spool.folder("active")) == ["bad.json"]
    assert sorted(os.listdir(spool.folder("done"))) == ["a.json", "b.json"]
    # Its results are published (durably, before any move): a restart moves it.
    assert sorted(os.listdir(spool.folder("results"))) == ["a.jsonl", "b.jsonl", "bad.jsonl"]
    closer.release()


async def _close_quietly(closer: JobCloser, jr: JobResults) -> None:
    with contextlib.suppress(OSError):
        await closer.close(jr, f"{jr.stem}.json", "done")
