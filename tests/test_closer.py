"""Ending jobs in batches: results published before job files move, each folder
fsynced once per batch after its renames, failures confined to their jobs."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing

import pacer.service.closer as closer_mod
from pacer.service.closer import JobCloser
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


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch, spool: Spool) -> list[str]:
    """What happened, in order: fsyncs by folder, and moves seen with what was
    published (and fsynced) at the time."""
    events: list[str] = []
    real_fsync, real_move = closer_mod.fsync_dir, Spool.move_out

    def fsync_dir(path: Path) -> None:
        events.append(f"fsync {Path(path).name}")
        real_fsync(path)

    def move_out(self: Spool, name: str, folder: str) -> str:
        stem = name.removesuffix(".json")
        assert (self.folder("results") / f"{stem}.jsonl").exists()
        assert "fsync results" in events  # the results are durable before the move
        events.append(f"move {name}")
        return real_move(self, name, folder)

    monkeypatch.setattr(closer_mod, "fsync_dir", fsync_dir)
    monkeypatch.setattr(Spool, "move_out", move_out)
    return events


async def test_jobs_ending_together_share_the_fsyncs(spool: Spool, log: list[str]) -> None:
    closer = JobCloser(spool)
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
    fsyncs = [e for e in log if e.startswith("fsync")]
    # Jobs that end while a batch is being written share the next one: at most
    # four fsyncs per batch (results, done, failed, active), not three per job.
    assert 1 <= closer.batches <= 2
    assert fsyncs.count("fsync results") == closer.batches
    assert len(fsyncs) <= 4 * closer.batches


async def test_a_failure_is_the_outcome_of_its_job_only(spool: Spool, log: list[str]) -> None:
    closer = JobCloser(spool)
    good, bad = make_job(spool, "good"), make_job(spool, "bad")
    bad.close()
    bad.part.unlink()  # its publish will fail
    bad._fh = open(os.devnull, "ab")  # noqa: SIM115 - looks open, so publish renames
    outcomes: dict[str, object] = {}

    async def end(jr: JobResults) -> None:
        try:
            outcomes[jr.stem] = await closer.close(jr, f"{jr.stem}.json", "done")
        except OSError as exc:
            outcomes[jr.stem] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(end, good)
        nursery.start_soon(end, bad)
    assert outcomes["good"] == "good.json"
    assert isinstance(outcomes["bad"], FileNotFoundError)
    assert os.listdir(spool.folder("active")) == ["bad.json"]  # left for a restart


async def test_a_failed_fsync_fails_every_job_of_its_batch_before_any_move(
        spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(_path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(closer_mod, "fsync_dir", failing)
    closer = JobCloser(spool)
    jr = make_job(spool, "a")
    with pytest.raises(OSError) as info:
        await closer.close(jr, "a.json", "done")
    assert info.value.errno == errno.EIO
    assert os.listdir(spool.folder("active")) == ["a.json"]  # not moved
    assert os.listdir(spool.folder("done")) == []
