"""ThreadBatch: calls made together run in one worker-thread hop, each with its
own result or exception; cancelling a caller does not lose its call."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

from pacer.service import thread_batch
from pacer.service.thread_batch import ThreadBatch


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each hop's batch."""
    sizes: list[int] = []
    run_all = thread_batch._run_all

    def counting(calls: list[Any]) -> None:
        sizes.append(len(calls))
        run_all(calls)

    monkeypatch.setattr(thread_batch, "_run_all", counting)
    return sizes


async def test_calls_made_together_share_one_hop(hops: list[int]) -> None:
    batch: ThreadBatch[tuple[int, int]] = ThreadBatch()
    trio_thread = threading.get_ident()
    got: dict[int, tuple[int, int]] = {}

    async def one(i: int) -> None:
        got[i] = await batch.run(lambda: (i * i, threading.get_ident()))

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(one, i)
    assert {i: v for i, (v, _) in got.items()} == {i: i * i for i in range(10)}
    assert all(thread != trio_thread for _, thread in got.values())
    assert hops == [10]
    # Later calls make a hop of their own.
    assert (await batch.run(lambda: (7, 0)))[0] == 7
    assert hops == [10, 1]


async def test_a_batch_holds_at_most_limit_calls(hops: list[int]) -> None:
    batch: ThreadBatch[int] = ThreadBatch(limit=4)
    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(batch.run, lambda i=i: i)
    assert sorted(hops) == [2, 4, 4]


async def test_each_caller_gets_its_own_exception(hops: list[int]) -> None:
    batch: ThreadBatch[int] = ThreadBatch()
    results: dict[int, object] = {}

    def fn(i: int) -> int:
        if i % 2:
            raise ValueError(f"odd {i}")
        return i

    async def one(i: int) -> None:
        try:
            results[i] = await batch.run(lambda: fn(i))
        except ValueError as exc:
            results[i] = str(exc)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, i)
    assert results == {0: 0, 1: "odd 1", 2: 2, 3: "odd 3"}
    assert hops == [4]


async def test_a_cancelled_caller_does_not_lose_its_call(hops: list[int]) -> None:
    batch: ThreadBatch[str] = ThreadBatch()
    ran: list[str] = []
    release = threading.Event()

    def fn(name: str) -> str:
        if name == "leader":
            assert release.wait(5)
        ran.append(name)
        return name

    async def call(name: str, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            await batch.run(lambda: fn(name))
            await trio.lowlevel.checkpoint()  # where a cancel takes effect

    follower = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "leader")
        nursery.start_soon(call, "follower", follower)
        await trio.testing.wait_all_tasks_blocked()
        follower.cancel()
        await trio.sleep(0.01)
        release.set()
    assert sorted(ran) == ["follower", "leader"]
    assert follower.cancelled_caught
    assert hops == [2]
