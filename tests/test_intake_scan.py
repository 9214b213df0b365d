"""The first scan of a big ``incoming/``: work starts from its first batch.

``Spool.scan`` hands over the oldest of the first job files it finds while it goes
on; ``Intake.rescan`` makes them pending at once, then the whole folder's order
once the scan ends (early names not claimed yet keep their place at the front),
and a rescan asked for meanwhile waits for the running one instead of reading the
folder again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, cast

import trio
import trio.testing

from pacer.config import Config
from pacer.service.disk import DiskTrouble
from pacer.service.intake import Intake
from pacer.service.summary import RunSummary
from pacer.spool.folders import Candidate, Skipped, Spool


def fill(spool: Spool, count: int) -> list[str]:
    """``count`` job files, written newest first (so that the folder's order and
    the age order differ); their names oldest first."""
    names = [f"job-{i:03d}.json" for i in range(count)]
    for age, name in enumerate(names):
        path = spool.folder("incoming") / name
        path.write_text("{}")
        os.utime(path, ns=(10**9 * (1000 - age),) * 2)
    return list(reversed(names))


def test_scan_hands_over_its_first_batch_oldest_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    oldest_first = fill(spool, 10)
    batches: list[list[Candidate]] = []
    jobs, _ = spool.scan(on_first=batches.append, first=4)
    assert [c.name for c in jobs] == oldest_first
    assert len(batches) == 1 and len(batches[0]) == 4
    found = [c.name for c in batches[0]]
    assert found == [n for n in oldest_first if n in found]  # oldest first among them
    # A folder smaller than the batch: no early hand-over, only the result.
    spool.scan(on_first=batches.append, first=11)
    assert len(batches) == 1


class PausedSpool(Spool):
    """A spool whose scan stops after its first batch until ``resume`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.resume = threading.Event()
        self.scans = 0

    def scan(self, folder: str = "incoming", **kw: Any) -> tuple[list[Candidate],
                                                                 list[Skipped]]:
        self.scans += 1
        on_first = kw.pop("on_first", None)

        def first(batch: list[Candidate]) -> None:
            assert on_first is not None
            on_first(batch)
            assert self.resume.wait(10)

        return super().scan(folder, on_first=first if on_first else None, **kw)


async def test_rescan_makes_the_first_batch_pending_then_the_whole_order(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("pacer.service.intake.FIRST_SCAN_BATCH", 4)
    spool = PausedSpool(tmp_path / "spool")
    spool.ensure()
    oldest_first = fill(spool, 10)
    summary = RunSummary()
    intake = Intake(spool, cast("Any", lambda: cast(Config, None)), summary,
                    DiskTrouble(summary, lambda: None, lambda: None), lambda: 1, drain=True)
    handed = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(intake.rescan, handed)
        await handed.wait()
        early = list(intake.pending)
        assert len(early) == 4 and early == [n for n in oldest_first if n in early]
        claimed = intake.pending.popleft()  # one is claimed meanwhile
        # Asked again while the scan runs: it waits for that scan, reads nothing.
        again = trio.Event()
        nursery.start_soon(intake.rescan, again)
        await trio.testing.wait_all_tasks_blocked()
        assert not again.is_set()
        spool.resume.set()
    assert again.is_set() and spool.scans == 1
    rest = [n for n in oldest_first if n not in early]
    assert list(intake.pending) == early[1:] + rest
    assert claimed not in intake.pending
