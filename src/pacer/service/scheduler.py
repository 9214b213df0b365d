"""Fair share of each upstream between jobs: deficit round robin.

Every job holds a short queue of requests read from its file (read lazily, a few
dozen at a time, so memory stays bounded however large the file). Per upstream, a
*lane* keeps a ring of the jobs that have requests waiting for it and hands out
requests in turn: each job, when its turn comes, earns its weight (1 by default)
in credit and sends one request per credit, then goes to the back of the ring. A
job that arrives later joins the ring at once, so a 5-request job dropped beside a
3000-request one is served within a round or two, not after it.

A lane dispatches only while few of its requests wait for a slot under the
upstream's concurrency limit (about one limit's worth: enough that a raised limit
fills at once and that the limit, not the lane, decides how many are in flight),
and while it has not handed out more than twice the limit plus that headroom in
all (requests in a retry's backoff or a breaker's cool-down count there). So the
order of service is decided here, by the ring, and not by a long first-come queue
in front of the limiter.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import trio

from pacer.spool.jobs import Request

# Requests allowed to wait for a slot: max(MIN_HEADROOM, limit). Enough to fill a
# doubled limit at once (slow start), few enough that a new job waits about one
# round trip for its first turn.
MIN_HEADROOM = 16
# While a lane is blocked, look again this often: a request waiting at the upstream
# takes a slot without telling the lane (e.g. when the limit rises).
POLL_S = 0.05


class UpstreamLoad(NamedTuple):
    limit: int  # the concurrency limit now
    inflight: int  # attempts holding a slot
    waiting: int  # requests waiting for a slot


@dataclass(eq=False)
class JobQueue:
    """One job's requests read and not dispatched yet, per upstream."""

    name: str
    weight: float = 1.0
    waiting: dict[str, deque[Request]] = field(default_factory=dict)
    count: int = 0  # waiting, all upstreams
    dispatched: int = 0  # handed to the upstream, not finished yet
    changed: trio.Event = field(default_factory=trio.Event)  # count or dispatched fell

    @property
    def outstanding(self) -> int:
        return self.count + self.dispatched

    def notify(self) -> None:
        """Wake the job task waiting for its requests to finish."""
        self.changed.set()
        self.changed = trio.Event()


Load = Callable[[], UpstreamLoad]
# send(queue, request, answered): answered() tells the lane the upstream is done
# with the request (its result line may still be waiting to be made durable).
Send = Callable[[JobQueue, Request, Callable[[], None]], Awaitable[None]]


class Lane:
    """One upstream's ring of jobs with requests waiting, served by deficit round robin."""

    def __init__(self, upstream: str, load: Load) -> None:
        self.upstream = upstream
        self.load = load
        self.ring: deque[JobQueue] = deque()
        self.credit: dict[JobQueue, float] = {}
        self.dispatched = 0
        self.wake = trio.Event()

    @property
    def waiting(self) -> int:
        return sum(len(q.waiting.get(self.upstream, ())) for q in self.ring)

    def push(self, queue: JobQueue, request: Request) -> None:
        queue.waiting.setdefault(self.upstream, deque()).append(request)
        queue.count += 1
        if queue not in self.credit:
            self.credit[queue] = 0.0
            self.ring.append(queue)
        self.wake.set()

    def pop(self) -> tuple[JobQueue, Request] | None:
        """The next request by deficit round robin (each request costs 1)."""
        ring, credit = self.ring, self.credit
        while ring:
            queue = ring[0]
            items = queue.waiting.get(self.upstream)
            if not items:
                self._leave(queue)
                continue
            if credit[queue] < 1.0:  # its turn begins: earn its weight
                credit[queue] += queue.weight
                if credit[queue] < 1.0:  # a weight below 1 saves up over rounds
                    ring.rotate(-1)
                    continue
            credit[queue] -= 1.0
            request = items.popleft()
            queue.count -= 1
            if not items:
                self._leave(queue)  # as in DRR, an emptied queue keeps no credit
            elif credit[queue] < 1.0:
                ring.rotate(-1)  # its turn is over
            return queue, request
        return None

    def withdraw(self, queue: JobQueue) -> int:
        """Drop ``queue``'s waiting requests from this lane; how many there were."""
        items = queue.waiting.pop(self.upstream, None)
        if queue in self.credit:
            self._leave(queue)
        return len(items) if items else 0

    def _leave(self, queue: JobQueue) -> None:
        self.ring.remove(queue)
        del self.credit[queue]

    def can_dispatch(self) -> bool:
        if not self.ring:
            return False
        limit, _inflight, waiting = self.load()
        headroom = max(MIN_HEADROOM, limit)
        return waiting < headroom and self.dispatched < 2 * limit + headroom


class FairScheduler:
    """The lanes of all upstreams, and their dispatcher tasks.

    ``send(queue, request, answered)`` runs in a task of its own per dispatched
    request; the lane counts it as dispatched until it calls ``answered()`` (or
    returns), the job and ``slots`` until it returns. ``slots`` bounds the requests
    dispatched over all upstreams together.
    """

    def __init__(self, send: Send, load: Callable[[str], UpstreamLoad],
                 slots: int) -> None:
        self._send = send
        self._load = load
        self._slots = trio.Semaphore(slots)
        self.lanes: dict[str, Lane] = {}
        self.stopping = False
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Host the dispatchers and the request tasks until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for lane in self.lanes.values():
                nursery.start_soon(self._dispatch, lane)
            task_status.started()
            await trio.sleep_forever()

    def open_job(self, name: str, weight: float = 1.0) -> JobQueue:
        return JobQueue(name, weight)

    def push(self, queue: JobQueue, request: Request) -> None:
        self._lane(request.upstream).push(queue, request)

    def withdraw(self, queue: JobQueue) -> dict[str, int]:
        """Take back every request of ``queue`` not dispatched yet (stopping); how
        many per upstream."""
        dropped = {up: self._lane(up).withdraw(queue) for up in list(queue.waiting)}
        queue.count -= sum(dropped.values())
        queue.notify()
        return dropped

    def stop(self) -> None:
        """Dispatch nothing more; what was dispatched runs on."""
        self.stopping = True
        for lane in self.lanes.values():
            lane.wake.set()

    def _lane(self, upstream: str) -> Lane:
        lane = self.lanes.get(upstream)
        if lane is None:
            lane = self.lanes[upstream] = Lane(upstream, lambda: self._load(upstream))
            if self._nursery is not None:
                self._nursery.start_soon(self._dispatch, lane)
        return lane

    async def _dispatch(self, lane: Lane) -> None:
        assert self._nursery is not None
        while True:
            if not self.stopping and lane.can_dispatch():
                await self._slots.acquire()
                picked = None if self.stopping else lane.pop()
                if picked is None:
                    self._slots.release()
                    continue
                queue, request = picked
                lane.dispatched += 1
                queue.dispatched += 1
                self._nursery.start_soon(self._run_one, lane, queue, request)
                continue
            lane.wake = trio.Event()
            if lane.ring and not self.stopping:
                with trio.move_on_after(POLL_S):
                    await lane.wake.wait()
            else:
                await lane.wake.wait()

    async def _run_one(self, lane: Lane, queue: JobQueue, request: Request) -> None:
        at_upstream = True

        def answered() -> None:
            # Only requests still at the upstream count against the lane's cap: one
            # waiting for the result writer's fsync must not hold back the next
            # (that capped a big job at ~380 requests/s with a 50 ms flush interval).
            nonlocal at_upstream
            if at_upstream:
                at_upstream = False
                lane.dispatched -= 1
                lane.wake.set()

        try:
            await self._send(queue, request, answered)
        finally:
            answered()
            queue.dispatched -= 1
            self._slots.release()
            queue.notify()
            lane.wake.set()
