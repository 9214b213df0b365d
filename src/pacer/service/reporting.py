"""The state snapshot, built about once a second: ``state.json``, the metrics
textfile and systemd's STATUS line all come from the same :class:`ServiceState`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio

from pacer import __version__
from pacer.config import Config
from pacer.service.disk import DiskTrouble
from pacer.service.job_runner import Job
from pacer.service.metrics import Metrics
from pacer.service.scheduler import FairScheduler
from pacer.service.state import JobsState, LastMinute, ServiceState, UpstreamState
from pacer.service.summary import RunSummary
from pacer.service.systemd import Notifier
from pacer.service.upstream import Upstream
from pacer.spool.durable import write_durable
from pacer.spool.folders import Spool

if TYPE_CHECKING:  # imported only with [fleet] redis set (coredis: 0.2 s at start)
    from pacer.fleet.fleet import Fleet


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class StateReporter:
    def __init__(self, *, spool: Spool, config: Callable[[], Config], summary: RunSummary,
                 upstreams: Mapping[str, Upstream], jobs: Mapping[str, Job],
                 pending: Callable[[], int], scheduler: FairScheduler, notifier: Notifier,
                 metrics: Metrics, disk: DiskTrouble, drain: bool,
                 stopping: Callable[[], bool],
                 fleet: Callable[[], Fleet | None] = lambda: None) -> None:
        self.spool = spool
        self.config = config
        self.summary = summary
        self.upstreams = upstreams
        self.jobs = jobs
        self.pending = pending
        self.scheduler = scheduler
        self.notifier = notifier
        self.metrics = metrics
        self.disk = disk
        self.drain = drain
        self.stopping = stopping
        self.fleet = fleet  # fleet
        # The last snapshot, shared with the metrics thread: swapped, never mutated.
        self.last: ServiceState | None = None

    def state(self) -> ServiceState:
        queued: dict[str, int] = {}
        for job in self.jobs.values():
            for name, n in job.queued_by_upstream.items():
                queued[name] = queued.get(name, 0) + n
        ups = {}
        fleet = self.fleet()  # fleet
        for name, up in self.upstreams.items():
            s = up.stats
            pacing = up.gate.status()
            lane = self.scheduler.lanes.get(name)
            lm = s.last_minute()
            ups[name] = UpstreamState(
                limit=up.limit.limit,
                inflight=up.limiter.inflight,
                waiting=up.limiter.waiting,
                breaker=str(up.breaker.state),
                done=s.done,
                failed=s.failed,
                attempts=s.attempts,
                retries=s.retries,
                rate_limited=s.rate_limited,
                queued=queued.get(name, 0),
                pauses=s.pauses + s.breaker_openings,
                rate_rps=_round(pacing.rate),
                paused_for_s=_round(max(0.0, (pacing.resume_at or 0) - trio.current_time())),
                jobs_waiting=len(lane.ring) if lane is not None else 0,
                last_minute=LastMinute(float(lm["throughput_rps"]),
                                       float(lm["rate_limited_share"]), int(lm["attempts"])),
                fleet=fleet.members[name].state()
                if fleet is not None and name in fleet.members else None,
            )
        jobs = self.jobs.values()
        return ServiceState(
            pid=os.getpid(),
            version=__version__,
            started_at=self.summary.started_at,
            updated_at=time.time(),
            stopping=self.stopping(),
            drain=self.drain,
            jobs=JobsState(
                active=len(self.jobs),
                pending_incoming=self.pending(),
                queued_requests=sum(j.queued for j in jobs),
                remaining_requests=sum(max(0, j.requests - j.succeeded - j.failed)
                                       for j in jobs),
                done=self.summary.jobs_done,
                failed=self.summary.jobs_failed,
                rejected=self.summary.jobs_rejected,
            ),
            upstreams=ups,
            spool_errors=dict(self.summary.errors),
            notify_errors=self.notifier.errors,
        )

    async def write(self) -> None:
        state = self.last = self.state()
        data = json.dumps(state.to_json(), indent=1).encode()
        await trio.to_thread.run_sync(write_durable, self.spool.state_path, data)
        textfile = self.config().metrics.textfile
        if textfile:
            await trio.to_thread.run_sync(self.metrics.write_textfile, textfile)

    async def loop(self) -> None:
        while True:
            try:
                await self.write()
            except OSError as exc:
                self.disk.failed(exc, "state")
            else:
                self.disk.recovered("state")
            st = self.last
            if st is not None:
                parts = [f"{n}: limit {u.limit} inflight {u.inflight} {u.breaker}"
                         for n, u in st.upstreams.items()]
                self.notifier.status(f"{st.jobs.active} active jobs, "
                                     f"{st.jobs.pending_incoming} queued; " + "; ".join(parts))
            await trio.sleep(self.config().daemon.state_interval)
