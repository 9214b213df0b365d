"""The scheduler's headroom counts only requests still at the upstream: one whose
answer is in and whose result line waits for the writer's fsync must not hold
back the next dispatch."""

from __future__ import annotations

from collections.abc import Callable

import trio
import trio.testing

from pacer.service.scheduler import MIN_HEADROOM, FairScheduler, JobQueue, UpstreamLoad
from pacer.spool.jobs import Request


def request(i: int) -> Request:
    return Request(custom_id=f"r{i}", method="POST", url="/x", upstream="u")


LIMIT = 1
# What the lane lets be dispatched at once (none waiting for a slot).
CAP = 2 * LIMIT + max(MIN_HEADROOM, LIMIT)


async def run(answer_first: bool) -> tuple[int, int]:
    """Push 3 x the lane's cap of requests to an upstream that has nothing in
    flight; each send blocks afterwards (a line waiting to be written). How many
    were started, and how many once they are let go."""
    started: list[str] = []
    release = trio.Event()

    async def send(_q: JobQueue, req: Request, answered: Callable[[], None]) -> None:
        started.append(req.custom_id)
        if answer_first:
            answered()
        await release.wait()

    scheduler = FairScheduler(send, lambda _up: UpstreamLoad(LIMIT, 0, 0), slots=1000)
    total = 3 * CAP
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        queue = scheduler.open_job("job")
        for i in range(total):
            scheduler.push(queue, request(i))
        await trio.testing.wait_all_tasks_blocked()
        blocked = len(started)
        release.set()
        with trio.fail_after(5):
            while queue.outstanding:
                await queue.changed.wait()
        nursery.cancel_scope.cancel()
    return blocked, len(started)


async def test_answered_requests_do_not_count_against_the_headroom() -> None:
    blocked, finally_started = await run(answer_first=True)
    assert blocked == 3 * CAP
    assert finally_started == 3 * CAP


async def test_requests_still_at_the_upstream_do() -> None:
    blocked, finally_started = await run(answer_first=False)
    assert blocked == CAP
    assert finally_started == 3 * CAP
