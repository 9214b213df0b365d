"""Fair share of an upstream between jobs: the deficit round robin on its own, then
the daemon on Trio's virtual clock against the mock API (capacity 100 requests/s:
a hidden cap of 10 in flight, 0.1 s each)."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio.testing import MockClock

from conftest import BASE_URL, MakeConfig, SpoolHelper, req
from pacer.config import load_config
from pacer.mockapi import MockSettings, MockUpstream, mock_transport
from pacer.service.daemon import Daemon
from pacer.service.job_runner import READ_HIGH
from pacer.service.scheduler import MIN_HEADROOM, JobQueue, Lane, UpstreamLoad
from pacer.service.systemd import Notifier
from pacer.spool.claimed import ClaimedJob
from pacer.spool.jobs import Request
from pacer.spool.names import job_weight


def request(cid: str) -> Request:
    return Request(cid, "POST", "/v1/chat/completions", "default")


def fill(lane: Lane, queue: JobQueue, n: int) -> None:
    for i in range(n):
        lane.push(queue, request(f"{queue.name}-{i}"))


def drain(lane: Lane) -> Iterator[str]:
    while (picked := lane.pop()) is not None:
        yield picked[0].name


# ------------------------------------------------------------------ the round robin


def test_jobs_take_turns_whatever_their_size_and_order() -> None:
    lane = Lane("default", lambda: UpstreamLoad(10, 0, 0))
    big, small = JobQueue("big"), JobQueue("small")
    fill(lane, big, 6)
    fill(lane, small, 2)
    assert list(drain(lane)) == ["big", "small", "big", "small", "big", "big", "big", "big"]
    assert big.count == small.count == 0 and not lane.ring


def test_a_job_arriving_later_is_served_in_the_next_round() -> None:
    lane = Lane("default", lambda: UpstreamLoad(10, 0, 0))
    big, late = JobQueue("big"), JobQueue("late")
    fill(lane, big, 100)
    first = [lane.pop() for _ in range(50)]
    assert all(p is not None and p[0] is big for p in first)
    fill(lane, late, 3)
    nxt = [p[0].name for p in (lane.pop() for _ in range(6)) if p is not None]
    assert nxt == ["big", "late", "big", "late", "big", "late"]


def test_weights_share_in_proportion() -> None:
    lane = Lane("default", lambda: UpstreamLoad(10, 0, 0))
    heavy, light, slow = JobQueue("heavy", 2.0), JobQueue("light"), JobQueue("slow", 0.5)
    for queue in (heavy, light, slow):
        fill(lane, queue, 40)
    order = [lane.pop() for _ in range(35)]
    names = [p[0].name for p in order if p is not None]
    assert (names.count("heavy"), names.count("light"), names.count("slow")) == (20, 10, 5)


def test_withdraw_takes_back_only_what_waits() -> None:
    lane = Lane("default", lambda: UpstreamLoad(10, 0, 0))
    a, b = JobQueue("a"), JobQueue("b")
    fill(lane, a, 3)
    fill(lane, b, 2)
    assert lane.withdraw(a) == 3
    assert list(drain(lane)) == ["b", "b"]


def test_a_lane_dispatches_only_while_few_wait_at_the_upstream() -> None:
    load = UpstreamLoad(limit=10, inflight=0, waiting=0)
    lane = Lane("default", lambda: load)
    assert not lane.can_dispatch()  # nothing to send
    fill(lane, JobQueue("a"), 100)
    assert lane.can_dispatch()
    load = UpstreamLoad(10, 10, MIN_HEADROOM)  # the limit is full and enough wait
    assert not lane.can_dispatch()
    load = UpstreamLoad(64, 64, 63)  # the headroom grows with the limit
    lane.dispatched = 64 + 63
    assert lane.can_dispatch()
    # Requests in a retry's backoff or a breaker's cool-down wait for no slot: the
    # lane still stops at twice the limit plus the headroom.
    load = UpstreamLoad(10, 0, 0)
    lane.dispatched = 2 * 10 + MIN_HEADROOM
    assert not lane.can_dispatch()


# ----------------------------------------------------------------------- the daemon


@pytest.fixture
def virtual_clock() -> MockClock:
    """Virtual time that jumps once every task has idled 10 ms of real time (the
    daemon's worker threads, e.g. fsyncs, must not let it race ahead)."""
    return MockClock(autojump_threshold=0.01)


def capped_client() -> httpx.AsyncClient:
    mock = MockUpstream(MockSettings(concurrency=10, latency=0.1))
    return httpx.AsyncClient(base_url=BASE_URL, transport=mock_transport(mock))


def fair_config(make_config: MakeConfig) -> Path:
    return make_config(upstream={"initial_limit": 10, "adaptive": False},
                       spool={"rescan_interval": 0.1})


async def wait_done(spool: SpoolHelper, name: str, timeout: float = 300) -> float:
    with trio.fail_after(timeout):
        while name not in spool.jobs("done"):
            await trio.sleep(0.05)
    return trio.current_time()


async def test_a_small_job_does_not_wait_behind_a_big_one(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    # Was: the 5 requests queued behind the whole big job (about 10 s here).
    config = fair_config(make_config)
    spool.drop("big.jsonl", [req(f"b{i}") for i in range(1000)])  # 10 s at capacity
    daemon = Daemon(load_config(config), drain=False, notifier=Notifier(None),
                    clients={"default": capped_client()})
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        await trio.sleep(2.0)
        dropped = trio.current_time()
        spool.drop("small.jsonl", [req(f"s{i}") for i in range(5)])
        small_done = await wait_done(spool, "small.jsonl")
        assert "big.jsonl" not in spool.jobs("done")
        big_done = await wait_done(spool, "big.jsonl")
        daemon.request_stop("test")
    # Found within a rescan, then 5 requests in a shared round robin at 100/s.
    assert small_done - dropped < 1.0, small_done - dropped
    # The big one lost no more than the small one's share: 1005 requests at 100/s.
    assert big_done < 10.05 + 2.0, big_done


async def test_requests_are_read_lazily(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    # Was: a job's requests were read ahead by the thousand (max_pending_requests).
    config = fair_config(make_config)
    spool.drop("big.jsonl", [req(f"b{i}") for i in range(1500)])
    spool.drop("other.jsonl", [req(f"o{i}") for i in range(500)])
    daemon = Daemon(load_config(config), drain=True, notifier=Notifier(None),
                    clients={"default": capped_client()})
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, daemon.state().jobs.queued_requests)
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with trio.fail_after(300):
            assert await daemon.run() == 0
        nursery.cancel_scope.cancel()
    assert spool.jobs("done") == ["big.jsonl", "other.jsonl"]
    # Per job at most READ_HIGH wait for their turn; per upstream at most twice the
    # limit and a headroom are handed out.
    assert 10 < most <= 2 * READ_HIGH + 2 * 10 + MIN_HEADROOM, most


@pytest.mark.parametrize(("name", "weight"), [
    ("a.jsonl", 1.0), ("a.w4.jsonl", 4.0), ("a.w0.25.json", 0.25), ("a.w4~2.jsonl", 4.0),
    ("a.w0.jsonl", 0.01), ("a.w999.jsonl", 100.0), ("w4.jsonl", 1.0), ("a.w4.txt", 1.0),
    ("a.w4x.jsonl", 1.0), ("a.W4.jsonl", 1.0),
])
def test_weight_from_the_name(name: str, weight: float) -> None:
    assert job_weight(name) == weight


async def test_a_weighted_job_gets_its_share(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    config = fair_config(make_config)
    spool.drop("heavy.w3.jsonl", [req(f"h{i}") for i in range(300)])
    spool.drop("plain.jsonl", [req(f"p{i}") for i in range(300)])
    daemon = Daemon(load_config(config), drain=False, notifier=Notifier(None),
                    clients={"default": capped_client()})
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        await wait_done(spool, "heavy.w3.jsonl")
        plain_answered = len((spool.root / "results" / ".plain.jsonl.part")
                             .read_bytes().splitlines())
        await wait_done(spool, "plain.jsonl")
        daemon.request_stop("test")
    # 3 to 1: when the heavy job's 300 are done, about 100 of the plain one's are.
    assert 70 <= plain_answered <= 140, plain_answered


async def test_many_small_jobs_are_started_at_the_pace_they_are_answered(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    # 4 x the limit of 10 is below 64: at most 64 jobs run at once, not 256.
    config = fair_config(make_config)
    for i in range(150):
        spool.drop(f"one-{i:03d}.json", req(f"one-{i}"))
    daemon = Daemon(load_config(config), drain=True, notifier=Notifier(None),
                    clients={"default": capped_client()})
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, len(daemon.jobs))
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        with trio.fail_after(300):
            assert await daemon.run() == 0
        nursery.cancel_scope.cancel()
    assert len(spool.jobs("done")) == 150
    assert 10 < most <= 64, most


async def test_a_job_deferred_by_the_disk_sends_nothing_twice(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The job task ends on a disk error while its first requests are still out;
    # started again once the disk works, it must not send those a second time.
    real = ClaimedJob.read
    reads = [0]

    def read(self: ClaimedJob, count: int) -> list[Any]:
        reads[0] += 1
        if reads[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, count)

    monkeypatch.setattr(ClaimedJob, "read", read)
    seen: list[str] = []
    mock = MockUpstream(MockSettings(latency=0.5))

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["tag"])
        answer = await mock.handle(request.method, request.url.raw_path.decode(),
                                   request.headers, request.content)
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

    client = httpx.AsyncClient(base_url=BASE_URL, transport=httpx.MockTransport(handler))
    config = fair_config(make_config)
    spool.drop("big.jsonl", [req(f"b{i}", body={"tag": f"b{i}"}) for i in range(200)])
    daemon = Daemon(load_config(config), drain=True, notifier=Notifier(None),
                    clients={"default": client})

    async def ticker() -> None:
        # A near deadline at all times: while the daemon waits for a worker thread
        # with no deadline of its own, virtual time must not jump to fail_after's.
        while True:
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        with trio.fail_after(300):
            assert await daemon.run() == 0
        nursery.cancel_scope.cancel()
    assert reads[0] > 2  # it did fail once, and was started again
    assert sorted(seen) == sorted(f"b{i}" for i in range(200))
    lines = spool.results("big")
    assert sorted(line["custom_id"] for line in lines) == sorted(f"b{i}" for i in range(200))
