"""The limiter on its own: it enforces whatever the limit says, follows changes at
once, and turns each held slot into exactly one sample."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from pacer.control.limit import FixedLimit, LimitChange, Outcome, Sample
from pacer.service.limiter import Limiter


class Recording(FixedLimit):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.samples: list[Sample] = []

    def on_sample(self, sample: Sample) -> int:
        self.samples.append(sample)
        return self.limit


def test_fixed_limit_set_emits_one_change() -> None:
    limit = FixedLimit(3)
    seen: list[LimitChange] = []
    limit.subscribe(seen.append)
    limit.set(5, at=1.5, reason="operator")
    limit.set(5, at=2.0)  # no change, no event
    assert limit.limit == 5
    assert seen == [LimitChange(3, 5, "operator", 0, None, 1.5)]
    with pytest.raises(ValueError):
        limit.set(0, at=3.0)


async def test_admits_at_most_the_limit_and_follows_changes(autojump_clock: MockClock) -> None:
    limit = Recording(2)
    limiter = Limiter(limit)
    peak = 0
    started: list[float] = []

    async def one() -> None:
        nonlocal peak
        async with limiter.acquire() as slot:
            started.append(trio.current_time())
            peak = max(peak, limiter.inflight)
            await trio.sleep(1)
            slot.success()

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(one)
        await trio.sleep(0.5)
        assert limiter.inflight == 2 and limiter.waiting == 4
        limit.set(4, at=trio.current_time())  # raising wakes waiters at once
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.inflight == 4 and trio.current_time() == 0.5
    assert peak == 4
    assert started == [0, 0, 0.5, 0.5, 1, 1]
    assert [s.outcome for s in limit.samples] == [Outcome.SUCCESS] * 6
    assert [s.rtt for s in limit.samples] == [1.0] * 6
    # The first two finish together, in either order: in flight at their starts, 1 and 2.
    assert sorted(s.inflight for s in limit.samples[:2]) == [1, 2]


async def test_shrinking_lets_holders_finish(autojump_clock: MockClock) -> None:
    limit = Recording(3)
    limiter = Limiter(limit)
    done: list[float] = []

    async def one() -> None:
        async with limiter.acquire() as slot:
            await trio.sleep(1)
            slot.dropped("rate_limited")
            done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
        await trio.sleep(0.1)
        limit.set(1, at=trio.current_time())
    # The three holders finished; the fourth ran alone after them.
    assert done == [1, 1, 1, 2]
    assert {s.reason for s in limit.samples} == {"rate_limited"}


async def test_leaving_without_a_verdict_is_ignore_and_one_sample_only(
        autojump_clock: MockClock) -> None:
    limit = Recording(1)
    limiter = Limiter(limit)
    with trio.move_on_after(0.5):
        async with limiter.acquire():
            await trio.sleep(1)  # cancelled: says nothing about load
    async with limiter.acquire() as slot:
        slot.success()
        slot.dropped("timeout")  # a second verdict is ignored
    assert [(s.outcome, s.reason) for s in limit.samples] == [
        (Outcome.IGNORE, "ignored"), (Outcome.SUCCESS, "ok")]
    assert limiter.inflight == 0


async def test_a_sample_tells_when_the_oldest_other_attempt_started(
        autojump_clock: MockClock) -> None:
    """An upstream that drops what it cannot serve says nothing until the timeout:
    the samples of the others tell that an attempt is still out, and since when."""
    limit = Recording(3)
    limiter = Limiter(limit)
    hung = trio.Event()

    async def dropped() -> None:
        async with limiter.acquire():
            await hung.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dropped)
        await trio.sleep(0.5)
        async with limiter.acquire() as slot:
            await trio.sleep(0.1)
            slot.success()
        hung.set()
    async with limiter.acquire() as slot:
        slot.success()
    t0 = limit.samples[0].start - 0.5
    assert limit.samples[0].oldest_start == pytest.approx(t0)  # the hung one's start
    assert limit.samples[1].oldest_start is None  # the hung one ended first (ignore)
    assert limit.samples[2].oldest_start is None  # alone


async def test_the_kernels_time_leaves_the_rest_of_the_rtt_to_pacer(
        autojump_clock: MockClock) -> None:
    """When the transport measured the upstream's own time, the rest of the rtt was
    pacer's (its loop busy, parsing): the limit judges only the upstream's."""
    limit = Recording(1)
    limiter = Limiter(limit, lag=lambda: 0.0)
    async with limiter.acquire() as slot:
        await trio.sleep(0.5)
        slot.wire = 0.1
        slot.success()
    async with limiter.acquire() as slot:  # not measured: the loop's lag (none)
        await trio.sleep(0.5)
        slot.success()
    first, second = limit.samples
    assert (first.rtt, first.lag, first.upstream_rtt) == pytest.approx((0.5, 0.4, 0.1))
    assert (second.lag, second.upstream_rtt) == pytest.approx((0.0, 0.5))


class Tracking(Recording):
    """A limit that shows who listens to it."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.hooks: list[Callable[[LimitChange], None]] = []

    def subscribe(self, hook: Callable[[LimitChange], None]) -> None:
        super().subscribe(hook)
        self.hooks.append(hook)

    def unsubscribe(self, hook: Callable[[LimitChange], None]) -> None:
        super().unsubscribe(hook)
        self.hooks.remove(hook)


async def test_retarget_follows_the_new_limit(autojump_clock: MockClock) -> None:
    # Was: old.set(1) on a limit already at 1 (no change at all), and the old
    # limit's hook was never removed.
    old, new = Tracking(1), Tracking(3)
    limiter = Limiter(old)
    limiter.retarget(new)
    assert old.hooks == [] and len(new.hooks) == 1
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(_hold, limiter)
        await trio.sleep(0.1)
        assert limiter.inflight == 3
        old.set(5, at=0.2)  # the old limit no longer steers
        await trio.sleep(0.1)
        assert limiter.inflight == 3
        new.set(4, at=0.3)  # the new one does
        await trio.sleep(0.1)
        assert limiter.inflight == 4
    assert len(new.samples) == 5 and old.samples == []


async def _hold(limiter: Limiter) -> None:
    await _hold_for(limiter, 1.0, [])


class Spreading(Recording):
    """A limit that asks for its starts to be spread (as AimdLimit.spread_rate)."""

    def __init__(self, limit: int, spread_rate: float | None) -> None:
        super().__init__(limit)
        self.spread_rate = spread_rate


async def _hold_for(limiter: Limiter, seconds: float, started: list[float]) -> None:
    async with limiter.acquire() as slot:
        started.append(trio.current_time())
        await trio.sleep(seconds)
        slot.success()


def _start(nursery: trio.Nursery, n: int, limiter: Limiter, seconds: float,
           started: list[float]) -> None:
    for _ in range(n):
        nursery.start_soon(_hold_for, limiter, seconds, started)


async def test_the_slots_a_rise_opens_are_let_in_spread_out(autojump_clock: MockClock) -> None:
    """Issue 10: a probe's extra start sent right beside the refill of the answer that
    stepped it was refused by a rate cap with a burst of 2 (every probe past 3 in
    flight, for 10 s). The slots a rise opens go one per 1/spread_rate, from every
    admission; a slot in use before the rise is refilled at once."""
    limit = Spreading(2, spread_rate=10.0)
    limiter = Limiter(limit)
    started: list[float] = []
    async with trio.open_nursery() as nursery:
        _start(nursery, 2, limiter, 1.0, started)
        await trio.sleep(0.5)
        _start(nursery, 3, limiter, 1.0, started)
        await trio.testing.wait_all_tasks_blocked()
        limit.set(5, at=trio.current_time())
        await trio.sleep(0.5)  # t = 1.0: the first two end, two waiters refill at once
        _start(nursery, 2, limiter, 1.0, started)
    assert started == pytest.approx([0.0, 0.0, 0.5, 0.6, 0.7, 1.0, 1.0])


async def test_a_cut_closes_the_slots_and_a_rise_spreads_them_again(
        autojump_clock: MockClock) -> None:
    limit = Spreading(3, spread_rate=10.0)
    limiter = Limiter(limit)
    started: list[float] = []
    async with trio.open_nursery() as nursery:
        _start(nursery, 3, limiter, 0.1, started)
    limit.set(1, at=trio.current_time())  # t = 0.1
    limit.set(3, at=trio.current_time())
    async with trio.open_nursery() as nursery:
        _start(nursery, 3, limiter, 0.1, started)
    # The first slot refills at once; the two reopened ones wait their turn, after
    # the four admissions before them (a debt of 2 at t = 0.1, paid by t = 0.4).
    assert started == pytest.approx([0.0, 0.0, 0.0, 0.1, 0.4, 0.5])


async def test_without_a_spread_rate_a_rise_admits_at_once(autojump_clock: MockClock) -> None:
    limit = Spreading(1, spread_rate=None)
    limiter = Limiter(limit)
    started: list[float] = []
    async with trio.open_nursery() as nursery:
        _start(nursery, 4, limiter, 1.0, started)
        await trio.testing.wait_all_tasks_blocked()
        limit.set(4, at=trio.current_time())
    assert started == [0.0, 0.0, 0.0, 0.0]


async def test_cancelled_while_spread_gives_its_slot_back(autojump_clock: MockClock) -> None:
    limit = Spreading(1, spread_rate=0.1)  # one admission past the open slots per 10 s
    limiter = Limiter(limit)
    started: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold_for, limiter, 100.0, started)
        await trio.testing.wait_all_tasks_blocked()
        limit.set(2, at=trio.current_time())
        with trio.move_on_after(1.0):
            await _hold_for(limiter, 1.0, started)
        assert started == [0.0] and limiter.inflight == 1
        assert limiter._capacity.borrowed_tokens == 1  # the cancelled one gave it back
        nursery.cancel_scope.cancel()
    assert [s.outcome for s in limit.samples] == [Outcome.IGNORE]
