"""The job runner: one task per claimed job, one task per request it sends.

A job task checks its file whole (nothing is sent from a file rejected whole),
opens its results, then feeds its requests to the fair scheduler a few dozen at a
time, topping up as they are dispatched, and waits until each has its result line.
Then the results are published and the job file moved to ``done/`` or ``failed/``.
Requests already answered by a previous run are not sent again; lines that cannot
be sent get their error line at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import structlog
import trio

from pacer.config import Config
from pacer.service.closer import JobCloser
from pacer.service.disk import DISK_TROUBLE, DiskTrouble
from pacer.service.intake import now_iso
from pacer.service.scheduler import FairScheduler, JobQueue
from pacer.service.summary import RunSummary
from pacer.service.thread_batch import ThreadBatch
from pacer.service.upstream import Answer, Upstream
from pacer.spool import claimed as claimed_mod
from pacer.spool.claimed import ClaimedJob
from pacer.spool.folders import Spool
from pacer.spool.jobs import BadRequest, JobFileError, Request, UpstreamView
from pacer.spool.names import job_stem, job_weight
from pacer.spool.results import JobResults, ResultWriter, result_line

log = structlog.get_logger("pacer.service.job_runner")

# Requests of one job held in memory, waiting for their turn: read again from the
# file when fewer than READ_LOW wait.
READ_HIGH = 64
READ_LOW = 32


@dataclass(eq=False)
class Job:
    name: str
    stem: str
    results: JobResults
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    queued: int = 0  # requests read but not answered yet
    queued_by_upstream: dict[str, int] = field(default_factory=dict)

    def count_queued(self, upstream: str, n: int) -> None:
        """``n`` more (or fewer) requests read and not answered, for ``upstream``."""
        self.queued += n
        self.queued_by_upstream[upstream] = self.queued_by_upstream.get(upstream, 0) + n


class JobRunner:
    def __init__(self, *, spool: Spool, config: Callable[[], Config], writer: ResultWriter,
                 scheduler: FairScheduler, upstreams: Mapping[str, Upstream],
                 summary: RunSummary, disk: DiskTrouble, stop: trio.Event,
                 on_job_end: Callable[[], None]) -> None:
        self.spool = spool
        self.config = config
        self.writer = writer
        self.scheduler = scheduler
        self.upstreams = upstreams
        self.summary = summary
        self.disk = disk
        self.stop = stop  # set when the daemon stops: read nothing more
        self.on_job_end = on_job_end
        self.jobs: dict[str, Job] = {}
        self._queues: dict[Job, JobQueue] = {}
        self.closer = JobCloser(spool)
        self._preparing: ThreadBatch[ClaimedJob] = ThreadBatch()

    def start(self, nursery: trio.Nursery, name: str) -> None:
        stem = job_stem(name) or name
        job = Job(name, stem, JobResults(self.spool.folder("results"), stem))
        self.jobs[name] = job
        nursery.start_soon(self._run, job)

    def view(self) -> UpstreamView:
        cfg = self.config()
        return UpstreamView(
            base_urls={n: u.base_url for n, u in cfg.upstreams.items()},
            auth_headers={n: u.auth_header.lower() for n, u in cfg.upstreams.items()},
            default=cfg.default_upstream(),
        )

    # -- the job task ------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        with structlog.contextvars.bound_contextvars(job=job.name):
            try:
                await self._process(job)
            except JobFileError as exc:
                await self._reject(job, exc.code, exc.message)
            except OSError as exc:
                if exc.errno not in DISK_TROUBLE:
                    await self._reject(job, "unreadable", f"cannot process the job: {exc}")
                    return
                # The disk refused (full, I/O error): keep the job in active/, claim
                # nothing until writes work again, then start it over.
                self.disk.failed(exc, "job")
                self.disk.deferred.append(job.name)
                log.warning("job.deferred", reason=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                # A bug must not take the daemon down: the job stays in active/ and
                # is resumed at the next start.
                self.summary.count_error("job_crashed")
                log.exception("job.crashed", error=f"{type(exc).__name__}: {exc}")
            finally:
                job.results.close()  # cheap, and must happen even when cancelled
                self.jobs.pop(job.name, None)
                self.on_job_end()

    def _prepare(self, job: Job) -> ClaimedJob:
        """Check the whole file before anything is sent (``claim_job_file``), and
        open its results."""
        cfg = self.config().spool
        claimed = claimed_mod.claim_job_file(
            self.spool.folder("active") / job.name, job.stem, self.view(),
            max_bytes=cfg.max_job_bytes, max_line=cfg.max_line_bytes,
            results_name=job.results.part.name)
        try:
            job.requests = claimed.requests
            job.results.open()
        except BaseException:
            claimed.close()
            raise
        return claimed

    async def _process(self, job: Job) -> None:
        # Jobs claimed together are prepared together, in one thread hop.
        claimed = await self._preparing.run(partial(self._prepare, job))
        try:
            answered = job.results.answered
            job.succeeded = sum(1 for err in answered.values() if not err)
            job.failed = len(answered) - job.succeeded
            weight = job_weight(job.name)
            extra = {"weight": weight} if weight != 1.0 else {}
            if answered:
                extra["already_answered"] = len(answered)
            log.info("job.claimed", requests=job.requests, **extra)
            queue = self.scheduler.open_job(job.name, weight)
            self._queues[job] = queue
            try:
                await self._feed(job, queue, claimed)
                await self._wait_answered(job, queue)
            finally:
                self._withdraw(job, queue)
                try:
                    # Whatever ends this task (a disk error, a bug) waits for the
                    # requests handed out: a restarted job must not send them again.
                    while queue.dispatched:
                        await queue.changed.wait()
                finally:
                    del self._queues[job]
        finally:
            claimed.close()
        if job.succeeded + job.failed < job.requests:
            log.info("job.interrupted", requests=job.requests,
                     answered=job.succeeded + job.failed)
            return
        folder = "failed" if job.failed else "done"
        final = await self.closer.close(job.results, job.name, folder)
        if folder == "failed":
            self.summary.jobs_failed += 1
        else:
            self.summary.jobs_done += 1
        log.info("job.completed", job=final, folder=folder, requests=job.requests,
                 succeeded=job.succeeded, failed=job.failed)

    async def _feed(self, job: Job, queue: JobQueue, claimed: ClaimedJob) -> None:
        """Read the requests lazily into the scheduler: at most READ_HIGH wait."""
        answered = job.results.answered
        while not self.stop.is_set() and not claimed.exhausted:
            if queue.count >= READ_LOW:
                await queue.changed.wait()
                continue
            if claimed.in_memory:  # a .json job: no thread hop for it
                batch = claimed.read(READ_HIGH)
            else:
                batch = await trio.to_thread.run_sync(claimed.read, READ_HIGH - queue.count)
            if not batch:
                break
            bad: list[BadRequest] = []
            for item in batch:
                if item.custom_id in answered or self.stop.is_set():
                    continue
                if isinstance(item, BadRequest):
                    bad.append(item)
                else:
                    job.count_queued(item.upstream, 1)
                    self.scheduler.push(queue, item)
            await self._write_errors(job, bad)
        if not self.stop.is_set():
            # Lines validated but gone on the second read: the file changed under
            # us. Each still gets its one (error) line.
            await self._write_errors(job, [BadRequest(
                cid, 0, "job_changed", "the job file changed while pacer read it: this "
                "request was no longer in it (write job files in tmp/ and rename them "
                "into incoming/)") for cid in claimed.vanished() if cid not in answered])

    async def _wait_answered(self, job: Job, queue: JobQueue) -> None:
        while queue.outstanding:
            if self.stop.is_set():
                self._withdraw(job, queue)  # left for the next run
                if not queue.outstanding:
                    break
            await queue.changed.wait()

    def _withdraw(self, job: Job, queue: JobQueue) -> None:
        for upstream, n in self.scheduler.withdraw(queue).items():
            job.count_queued(upstream, -n)

    def stopping(self) -> None:
        """The daemon stops: every job task stops feeding and waits only for what
        was dispatched."""
        for queue in self._queues.values():
            queue.notify()

    async def _write_errors(self, job: Job, bad: list[BadRequest]) -> None:
        """One error line per request that cannot be sent (written together)."""
        if not bad:
            return
        async with trio.open_nursery() as nursery:
            for item in bad:
                job.count_queued(item.upstream or "", 1)
                nursery.start_soon(self._answer_bad, job, item)

    async def _answer_bad(self, job: Job, item: BadRequest) -> None:
        try:
            with structlog.contextvars.bound_contextvars(custom_id=item.custom_id,
                                                         upstream=item.upstream):
                line = result_line(item.custom_id, item.upstream, 0,
                                   error_code=item.code, error_message=item.message)
                await self.writer.write(job.results, line)
                job.failed += 1
        finally:
            job.count_queued(item.upstream or "", -1)

    # -- one request ----------------------------------------------------------------

    async def send(self, queue: JobQueue, item: Request,
                   answered: Callable[[], None] = lambda: None) -> None:
        """The request task the scheduler starts: send, say it is ``answered()``,
        then write the result line."""
        job = self.jobs[queue.name]
        try:
            with structlog.contextvars.bound_contextvars(job=job.name, custom_id=item.custom_id,
                                                         upstream=item.upstream):
                try:
                    answer = await self.upstreams[item.upstream].send(item, self.stop)
                except Exception as exc:  # a bug must cost one request, not the daemon
                    self.summary.count_error("request_crashed")
                    log.exception("request.crashed", error=f"{type(exc).__name__}: {exc}")
                    answer = Answer(0, error_code="internal_error",
                                    error_message=f"{type(exc).__name__} inside pacer")
                if answer is None:
                    return  # stopping: left for the next run
                answered()
                line = result_line(item.custom_id, item.upstream, answer.attempts,
                                   status=answer.status, body=answer.body,
                                   request_id=answer.request_id,
                                   error_code=answer.error_code,
                                   error_message=answer.error_message)
                await self.writer.write(job.results, line)
                if answer.ok:
                    job.succeeded += 1
                else:
                    job.failed += 1
        finally:
            job.count_queued(item.upstream, -1)

    # -- rejection ----------------------------------------------------------------------

    async def _reject(self, job: Job, code: str, message: str) -> None:
        info = {"job": job.name, "code": code, "message": message, "rejected_at": now_iso()}

        def move() -> str:
            job.results.close()
            # (OSError: also a name too long to have a results file at all.)
            with contextlib.suppress(OSError):
                if job.results.part.stat().st_size == 0:
                    # Nothing was sent for a rejected job: drop the empty file.
                    job.results.part.unlink()
                else:
                    # A resumed job that no longer validates (e.g. its upstream was
                    # removed): what was answered before stays visible.
                    job.results.publish_partial()
            target = self.spool.finish(job.name, "rejected")
            self.spool.write_error(target, {**info, "job": target})
            return target

        target = await trio.to_thread.run_sync(move)
        self.summary.jobs_rejected += 1
        log.warning("job.rejected", job=target, reason=message, code=code)
