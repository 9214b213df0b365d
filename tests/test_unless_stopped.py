"""The attempt's wait for the pacing gate: stoppable, and without a watcher task
when the gate admits at once."""

from __future__ import annotations

import trio
import trio.testing

from pacer.service.pacing_gate import PacingGate
from pacer.service.upstream import _unless_stopped


async def test_an_open_gate_is_passed_without_a_watcher() -> None:
    gate = PacingGate()
    stop = trio.Event()
    calls: list[float] = []

    async def wait(tokens: float) -> None:
        calls.append(tokens)
        await gate.wait(tokens)
        # No watcher task was started beside this one: the nursery path would
        # have one child waiting on ``stop``.
        assert not trio.lowlevel.current_task().parent_nursery.child_tasks - {
            trio.lowlevel.current_task()}

    assert await _unless_stopped(stop, wait, 3.0)
    assert calls == [3.0]


async def test_a_pause_falls_back_to_the_watched_wait_and_stop_ends_it(
        autojump_clock: trio.testing.MockClock) -> None:
    gate = PacingGate()
    gate.pause(10.0, "test")
    stop = trio.Event()
    calls = 0

    async def wait(tokens: float) -> None:
        nonlocal calls
        calls += 1
        await gate.wait(tokens)

    async def stop_at_one_second() -> None:
        await trio.sleep(1.0)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_at_one_second)
        start = trio.current_time()
        assert not await _unless_stopped(stop, wait, 0.0)
        assert trio.current_time() - start == 1.0  # not the pause's 10 s
    assert calls == 2  # tried at once, then watched
    assert gate.waiting == 0


async def test_a_pause_that_ends_lets_the_attempt_through(
        autojump_clock: trio.testing.MockClock) -> None:
    gate = PacingGate()
    gate.pause(2.0, "test")
    start = trio.current_time()
    assert await _unless_stopped(trio.Event(), gate.wait, 0.0)
    assert 2.0 <= trio.current_time() - start < 2.5


async def test_a_busy_gate_is_waited_for_in_order(
        autojump_clock: trio.testing.MockClock) -> None:
    # Several attempts on a paused gate: each gets through once, none is lost.
    gate = PacingGate()
    gate.pause(1.0, "test")
    passed: list[int] = []

    async def attempt(i: int) -> None:
        if await _unless_stopped(trio.Event(), gate.wait, 0.0):
            passed.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(attempt, i)
    assert sorted(passed) == [0, 1, 2, 3, 4]
    assert gate.waiting == 0
