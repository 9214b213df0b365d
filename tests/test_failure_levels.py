"""FailureLevels alone: do failures grow with concurrency, or come at every level?"""

from __future__ import annotations

import random

from pacer.control.failure_levels import FailureLevels


def test_no_evidence_below_is_no_growth() -> None:
    levels = FailureLevels()
    levels.record(3, True)  # a first failure, nothing below to compare with
    assert not levels.grows_at(3)


def test_failures_only_above_a_cap_grow() -> None:
    levels = FailureLevels()
    for inflight in (1, 2, 2, 3, 3, 4, 4, 5, 5):
        levels.record(inflight, False)
    levels.record(6, True)  # dropped past a cap of 5
    assert levels.grows_at(6)
    assert levels.counts(6) == (9, 0, 1, 1)


def test_random_faults_at_every_level_do_not_grow() -> None:
    rng = random.Random(7)
    levels = FailureLevels()
    grew = 0
    for _ in range(400):
        inflight = rng.randint(1, 12)
        failed = rng.random() < 0.35
        levels.record(inflight, failed)
        if failed and levels.grows_at(inflight):
            grew += 1
    assert grew <= 2  # 3 standard deviations: a rare false alarm at most


def test_faults_that_start_later_are_seen_below_once_recorded() -> None:
    levels = FailureLevels(per_level=8)
    for inflight in range(1, 9):
        for _ in range(8):
            levels.record(inflight, False)
    levels.record(8, True)
    assert levels.grows_at(8)  # clean below: at first it reads as congestion
    for inflight in range(1, 9):
        for k in range(8):
            levels.record(inflight, k % 3 == 0)  # then the same share everywhere
    assert not levels.grows_at(8)
