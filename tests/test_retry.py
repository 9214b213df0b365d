from __future__ import annotations

import math
import random
from collections.abc import Iterator
from itertools import cycle, repeat
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacer.control.retry import (
    RetryBudget,
    RetrySettings,
    backoff_delay,
    has_attempts_left,
)

DEFAULT = RetrySettings()

# --- backoff -------------------------------------------------------------------------


def test_full_jitter_band_per_attempt() -> None:
    rng = random.Random(7)
    mirror = random.Random(7)
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for attempt, ceiling in enumerate(ceilings, start=1):
        delay = backoff_delay(attempt, DEFAULT, rng)
        assert 0.0 <= delay <= ceiling
        assert delay == mirror.uniform(0.0, ceiling)  # exactly one draw, from [0, ceiling]


def test_full_jitter_spreads_over_the_band() -> None:
    rng = random.Random(3)
    delays = [backoff_delay(4, DEFAULT, rng) for _ in range(2000)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 0.1 and max(delays) > 3.9
    assert 1.8 < sum(delays) / len(delays) < 2.2


def test_huge_attempt_does_not_overflow() -> None:
    assert 0.0 <= backoff_delay(10_000, DEFAULT, random.Random(1)) <= 30.0


def test_attempt_counts_from_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, DEFAULT, random.Random(1))


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (10.0, 10.0, 11.0),  # at least Retry-After, plus up to 10 % of it
        (0.0, 0.0, 0.05),  # "now": a small jitter of up to 10 % of base_delay
        (45.0, 45.0, 49.5),  # above max_delay is still honoured
        (10_000.0, 600.0, 660.0),  # absurd values are clamped to max_retry_after
        (math.inf, 600.0, 660.0),
        (-3.0, 0.0, 0.05),
    ],
)
def test_retry_after_honoured(retry_after: float, low: float, high: float) -> None:
    rng = random.Random(11)
    for attempt in (1, 3, 8):
        for _ in range(200):
            delay = backoff_delay(attempt, DEFAULT, rng, retry_after)
            assert low <= delay <= high


def test_retry_after_jitter_spreads_a_crowd() -> None:
    rng = random.Random(5)
    delays = {round(backoff_delay(1, DEFAULT, rng, 60.0), 3) for _ in range(100)}
    assert len(delays) > 90
    assert min(delays) >= 60.0 and max(delays) <= 66.0


def test_nan_retry_after_falls_back_to_full_jitter() -> None:
    assert 0.0 <= backoff_delay(1, DEFAULT, random.Random(2), math.nan) <= 0.5


def test_attempts_left() -> None:
    assert [has_attempts_left(n, DEFAULT) for n in range(1, 7)] == [True] * 4 + [False] * 2


# --- budget --------------------------------------------------------------------------


def simulate(
    budget: RetryBudget, outcomes: Iterator[bool], requests: int, settings: RetrySettings
) -> tuple[int, int]:
    """Send ``requests`` requests, retrying failures while allowed; outcomes say which
    attempts succeed. Returns (attempts, retries)."""
    attempts = retries = 0
    for _ in range(requests):
        made = 0
        while True:
            made += 1
            attempts += 1
            if next(outcomes):
                budget.on_success()
                break
            budget.on_failure()
            if not has_attempts_left(made, settings) or not budget.try_spend():
                break
            retries += 1
    return attempts, retries


def test_budget_under_total_failure_allows_exactly_four_retries() -> None:
    budget = RetryBudget(DEFAULT)
    attempts, retries = simulate(budget, repeat(False), 100, DEFAULT)
    # 10 tokens, retries only above 5: the first request's 4 retries take it to 5.
    assert (attempts, retries) == (104, 4)
    assert budget.granted == 4 and budget.denied == 99
    assert budget.tokens == 0.0
    assert not budget.can_retry()


def test_budget_under_total_failure_one_retry_each() -> None:
    settings = RetrySettings(max_attempts=2)
    budget = RetryBudget(settings)
    assert simulate(budget, repeat(False), 100, settings) == (102, 2)


def test_budget_recovers_after_exactly_6_successes() -> None:
    """Each success pays back one failure (issue 10: gRPC's 0.1 per success took 51
    successes after a short outage)."""
    budget = RetryBudget(DEFAULT)
    for _ in range(20):
        budget.on_failure()
    assert budget.tokens == 0.0
    for _ in range(5):
        budget.on_success()
    assert budget.tokens == 5.0  # exact: kept in thousandths
    assert not budget.can_retry()
    budget.on_success()
    assert budget.can_retry()
    assert budget.try_spend()
    for _ in range(1000):
        budget.on_success()
    assert budget.tokens == 10.0  # capped at max


def test_grpc_ratio_still_available() -> None:
    settings = RetrySettings(budget_ratio=0.1)
    budget = RetryBudget(settings)
    for _ in range(10):
        budget.on_failure()
    for _ in range(50):
        budget.on_success()
    assert budget.tokens == 5.0 and not budget.can_retry()


def test_budget_lets_rare_failures_all_retry() -> None:
    budget = RetryBudget(DEFAULT)
    # 1 failure in 20 attempts, and the retry succeeds.
    outcomes = cycle([False] + [True] * 19)
    attempts, retries = simulate(budget, outcomes, 1000, DEFAULT)
    assert budget.denied == 0
    assert retries == attempts - 1000
    assert retries / attempts < 0.1


def test_budget_lets_a_flaky_upstream_retry_every_failure() -> None:
    """Issue 10's flaky upstream: a third of the attempts fail at random while the
    rest succeed; successes outnumber failures, so every failure may be retried."""
    budget = RetryBudget(DEFAULT)
    attempts, retries = simulate(budget, cycle([False, True, True]), 3000, DEFAULT)
    assert budget.denied == 0
    assert retries == attempts - 3000


def test_budget_holds_retries_while_failures_outnumber_successes() -> None:
    budget = RetryBudget(DEFAULT)
    attempts, retries = simulate(budget, cycle([False, False, True]), 3000, DEFAULT)
    assert budget.denied > 0
    assert retries / attempts < 0.05


def test_a_stale_failure_is_not_charged() -> None:
    """A failure of an attempt started before one that has since succeeded (a
    timeout landing after the upstream came back) costs nothing."""
    budget = RetryBudget(DEFAULT)
    for k in range(6):
        assert budget.on_failure(started=float(k))
    assert not budget.can_retry()
    budget.on_success(started=10.0)
    assert not budget.on_failure(started=9.0)  # sent before the success's attempt
    assert budget.tokens == 5.0
    assert budget.on_failure(started=11.0)  # sent after it: charged
    assert budget.tokens == 4.0


@given(st.lists(st.booleans(), max_size=400), st.integers(1, 6))
def test_budget_bound(outcomes: list[bool], max_attempts: int) -> None:
    """Each granted retry follows a failure with tokens above half, so grants can
    never exceed the initial headroom plus what successes paid back."""
    settings = RetrySettings(max_attempts=max_attempts)
    budget = RetryBudget(settings)
    feed = iter(outcomes)
    successes = 0
    for ok in feed:
        made = 1
        while True:
            if ok:
                budget.on_success()
                successes += 1
                break
            budget.on_failure()
            if not has_attempts_left(made, settings) or not budget.try_spend():
                break
            made += 1
            nxt = next(feed, None)
            if nxt is None:
                break
            ok = nxt
    assert budget.granted <= 5 + successes + 1e-9
    assert 0.0 <= budget.tokens <= 10.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_delay": 0.0},
        {"base_delay": 60.0},
        {"retry_after_jitter": 2.0},
        {"max_retry_after": 0.0},
        {"budget_max_tokens": 0.0},
        {"budget_max_tokens": 1001.0},
        {"budget_ratio": 0.0},
    ],
)
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetrySettings(**kwargs)
