"""FailureLevels alone: do failures grow with concurrency, or come at every level?"""

from __future__ import annotations

import math
import random

import pytest

from pacer.control.failure_levels import FOUR_SIGMA, FailureLevels, binomial_tail


def test_no_evidence_below_is_no_growth() -> None:
    levels = FailureLevels()
    levels.record(3, True)  # a first failure, nothing below to compare with
    assert not levels.grows_at(3)


def test_failures_only_above_a_cap_grow() -> None:
    levels = FailureLevels()
    for inflight in range(1, 6):
        for _ in range(6):
            levels.record(inflight, False)
    levels.record(6, True)  # dropped past a cap of 5
    assert not levels.grows_at(6)  # one drop: 1 in 60 by chance at a clean record
    for inflight in (6, 7, 6):
        levels.record(inflight, True)
    assert levels.grows_at(6)  # four: beyond 4 standard deviations
    assert levels.counts(6) == (30, 0, 4, 4)


def test_a_few_failures_among_few_attempts_are_chance() -> None:
    """A probe's few attempts above the plateau: one or two failures among them at
    a 35 % failure share below are what chance gives (the normal approximation at
    3 standard deviations read them as growth)."""
    levels = FailureLevels()
    for k in range(60):
        levels.record(1 + k % 8, k % 3 == 0)
    levels.record(9, False)
    levels.record(9, True)
    levels.record(10, True)
    assert not levels.grows_at(9)


def test_only_settled_attempts_are_compared() -> None:
    """Hangs are known a timeout after they start, successes at once: as of a
    timeout, attempts started after it are left out, at every level alike."""
    levels = FailureLevels()
    for k in range(40):  # before 10 s: a third fail at every level
        levels.record(1 + k % 8, k % 3 == 0, start=k / 8)
    for k in range(40):  # since then at levels 1-4 only successes are back so far
        levels.record(1 + k % 4, False, start=10.0 + k / 20)
    for _ in range(6):  # ... and the hangs of the levels left, 5-8, come late
        levels.record(7, True, start=8.0)
    assert levels.grows_at(7)  # unsettled successes below make a level look clean
    assert not levels.grows_at(7, settled_by=8.0)
    assert levels.counts(7, settled_by=8.0)[0] < levels.counts(7)[0]


def test_binomial_tail_is_exact() -> None:
    assert binomial_tail(0, 5, 0.3) == 1.0
    assert binomial_tail(6, 5, 0.3) == 0.0
    assert math.isclose(binomial_tail(5, 5, 0.5), 1 / 32)
    assert math.isclose(binomial_tail(1, 3, 0.5), 7 / 8)
    assert math.isclose(binomial_tail(2, 4, 0.25), 1 - 0.75 ** 4 - 4 * 0.25 * 0.75 ** 3)
    assert binomial_tail(3000, 4000, 0.35) < 1e-300 or binomial_tail(3000, 4000, 0.35) == 0.0
    assert pytest.approx(3.167e-5, rel=1e-3) == FOUR_SIGMA


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
    assert grew == 0  # 4 standard deviations, exact: no false alarm here


def test_faults_that_start_later_are_seen_below_once_recorded() -> None:
    levels = FailureLevels(per_level=8)
    for inflight in range(1, 9):
        for _ in range(8):
            levels.record(inflight, False)
    for _ in range(4):
        levels.record(8, True)
    assert levels.grows_at(8)  # clean below: at first it reads as congestion
    for inflight in range(1, 9):
        for k in range(8):
            levels.record(inflight, k % 3 == 0)  # then the same share everywhere
    assert not levels.grows_at(8)


def test_a_busy_level_keeps_its_settled_successes() -> None:
    """Per level the last attempts *by start* are judged: kept by arrival, a busy
    level's newer successes (not settled yet) pushed its older ones out while its
    older hangs, arriving a timeout late, stayed; the level read as all failures."""
    levels = FailureLevels(per_level=8)
    for k in range(24):  # levels 1-3: a third fail
        levels.record(1 + k % 3, k % 3 == 0, start=k / 10)
    for k in range(8):  # level 4 until 1 s: a quarter hang, the rest succeed
        levels.record(4, k % 4 == 0, start=k / 8)
    for k in range(20):  # since then, successes at level 4 arrive at once...
        levels.record(4, False, start=2.0 + k / 20)
    levels.record(4, True, start=1.0)  # ... and a hang sent at 1 s times out at 3 s
    _, _, n_hi, f_hi = levels.counts(4, settled_by=1.0)
    assert (n_hi, f_hi) == (8, 2)  # the 8 latest sent by 1 s: 2 hangs, 6 successes
    assert not levels.grows_at(4, settled_by=1.0)
