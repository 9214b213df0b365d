"""Scenario simulations of the AIMD limit against the mock API, under virtual time.

Each run drives the real Trio limiter and httpx client through the mock (see
``scenario_sim``); the bands are the project's targets. One round trip is the mock's
mean latency ``L``; "unloaded latency" is ``L`` too.
"""

from __future__ import annotations

import pytest
import trio.testing

from pacer.control.aimd import AimdLimit
from pacer.control.limit import FixedLimit, Limit
from pacer.mockapi import MockSettings
from scenario_sim import (
    STEP_L,
    STEP_RUN,
    STEP_SCHEDULE,
    ScenarioResult,
    check_capacity_steps,
    run_scenario,
)

SEEDS = [1, 2, 3]

# Constant cap: C requests in service at most, latency L +- 20 %.
CAP, CAP_L = 10, 0.1
CAP_RUN, CAP_STEADY_FROM = 10.0, 2.0

# Capacity steps 20 -> 5 -> 40; a slower L keeps the request count modest.

# Cold start against a cap of 32.
COLD_CAP, COLD_L, COLD_RUN = 32, 0.1, 1.5

# Latency knee: past K in service, latency x (1 + slope x (n - K)); never a 429.
KNEE, KNEE_SLOPE, KNEE_L = 10, 0.1, 0.1
KNEE_RUN, KNEE_STEADY_FROM = 10.0, 3.0
# The comparison with a fixed limit runs shorter.
COMPARE_RUN, COMPARE_STEADY_FROM = 5.0, 2.0


def knee_latency(n: int) -> float:
    return KNEE_L * (1.0 + KNEE_SLOPE * max(0, n - KNEE))


def knee_best_goodput() -> float:
    """The best achievable goodput on the knee, in requests/s.

    At a steady concurrency n every request arrives with n in service, so it takes
    ``knee_latency(n)`` and the goodput is ``n / knee_latency(n)`` (Little's law). The
    best is the maximum over the n whose latency meets the 1.5x bound; with
    slope = 1/K the goodput is flat past the knee, so this is K / L.
    """
    return max(n / knee_latency(n) for n in range(1, 200) if knee_latency(n) <= 1.5 * KNEE_L)


def cap_mock(seed: int) -> MockSettings:
    return MockSettings(concurrency=CAP, latency=CAP_L, jitter=0.2 * CAP_L, seed=seed)


def step_mock(seed: int) -> MockSettings:
    return MockSettings(schedule=STEP_SCHEDULE, latency=STEP_L, jitter=0.2 * STEP_L, seed=seed)


def cold_mock(seed: int) -> MockSettings:
    return MockSettings(concurrency=COLD_CAP, latency=COLD_L, jitter=0.2 * COLD_L, seed=seed)


def knee_mock(seed: int) -> MockSettings:
    return MockSettings(
        knee=KNEE, knee_slope=KNEE_SLOPE, latency=KNEE_L, jitter=0.2 * KNEE_L, seed=seed
    )


async def run_cap(limit: Limit, seed: int, duration: float = CAP_RUN) -> ScenarioResult:
    return await run_scenario(cap_mock(seed), limit, duration=duration, workers=50, seed=seed)


async def run_step(limit: Limit, seed: int) -> ScenarioResult:
    return await run_scenario(
        step_mock(seed), limit, duration=STEP_RUN, workers=100, seed=seed, retry_base=STEP_L
    )


async def run_knee(limit: Limit, seed: int, duration: float = KNEE_RUN) -> ScenarioResult:
    return await run_scenario(knee_mock(seed), limit, duration=duration, workers=50, seed=seed)


@pytest.mark.parametrize("seed", SEEDS)
async def test_constant_cap(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    r = await run_cap(AimdLimit(), seed)
    goodput = r.goodput(CAP_STEADY_FROM, CAP_RUN) / (CAP / CAP_L)
    share_429 = r.share_429(0.0, CAP_RUN)
    print(f"constant cap seed={seed}: goodput {goodput:.1%} of C/L, 429s {share_429:.2%}")
    assert goodput >= 0.95
    assert share_429 <= 0.02


@pytest.mark.parametrize("seed", SEEDS)
async def test_capacity_steps(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    r = await run_step(AimdLimit(), seed)

    drop_rtts, reached, rise_s = check_capacity_steps(r)
    assert r.mean_in_service(reached + STEP_L, STEP_RUN) >= 36
    print(f"steps seed={seed}: drop settled in {drop_rtts:.1f} rtt, rise reached in {rise_s:.2f} s")


@pytest.mark.parametrize("seed", SEEDS)
async def test_cold_start(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    r = await run_scenario(cold_mock(seed), AimdLimit(), duration=COLD_RUN, workers=80, seed=seed)
    reached = r.first_time(0.0, lambda v: v >= COLD_CAP)
    assert reached is not None
    rtts = reached / COLD_L
    print(f"cold start seed={seed}: 1 -> {COLD_CAP} in {rtts:.1f} rtt")
    assert rtts <= 10
    assert r.mean_in_service(10 * COLD_L, COLD_RUN) >= 0.9 * COLD_CAP


@pytest.mark.parametrize("seed", SEEDS)
async def test_latency_knee(autojump_clock: trio.testing.MockClock, seed: int) -> None:
    r = await run_knee(AimdLimit(), seed)
    median = r.median_latency(KNEE_STEADY_FROM, KNEE_RUN) / KNEE_L
    goodput = r.goodput(KNEE_STEADY_FROM, KNEE_RUN) / knee_best_goodput()
    print(f"knee seed={seed}: median latency {median:.2f}x unloaded, goodput {goodput:.1%}")
    assert r.count(0.0, KNEE_RUN, 429) == 0
    assert median <= 1.5
    assert goodput >= 0.9


async def test_compare_with_a_fixed_limit(autojump_clock: trio.testing.MockClock) -> None:
    """pacer against a fixed limit of 4x the capacity, same harness and seed: a printed
    table (run with -s to see it); only pacer's bands are asserted."""
    seed = SEEDS[0]
    rows: list[tuple[str, str, ScenarioResult, float, float]] = []
    for name, limit in (("pacer", AimdLimit()), ("fixed 4x", FixedLimit(4 * CAP))):
        r = await run_cap(limit, seed, COMPARE_RUN)
        rows.append((f"cap {CAP}", name, r, CAP / CAP_L, CAP_L))
    for name, limit in (("pacer", AimdLimit()), ("fixed 4x", FixedLimit(4 * KNEE))):
        r = await run_knee(limit, seed, COMPARE_RUN)
        rows.append((f"knee {KNEE}", name, r, knee_best_goodput(), KNEE_L))
    print(f"\nsteady part: {COMPARE_STEADY_FROM:g}-{COMPARE_RUN:g} s, 429s over the whole run")
    print(f"{'scenario':<9} {'limit':<9} {'goodput':>8} {'429s':>7} {'median latency':>15}")
    for scenario, name, r, best, unloaded in rows:
        goodput = r.goodput(COMPARE_STEADY_FROM, COMPARE_RUN) / best
        median = r.median_latency(COMPARE_STEADY_FROM, COMPARE_RUN) / unloaded
        share_429 = r.share_429(0.0, COMPARE_RUN)
        print(f"{scenario:<9} {name:<9} {goodput:>8.1%} {share_429:>7.2%} {median:>14.2f}x")
    assert rows[0][2].share_429(0.0, COMPARE_RUN) <= 0.02
