"""The long-running service: spool in, HTTP out, results back.

Structure (one Trio nursery):

- the *result writer* makes answers durable in batches;
- the *intake* claims jobs from ``incoming/`` (inotify watcher plus a periodic
  full rescan) while fewer than ``max_active_jobs`` run, after first resuming
  whatever a previous run left in ``active/``;
- each *job* task validates its file, then streams its requests, one task per
  request, bounded by ``max_pending_requests`` so a huge spool is never loaded
  into memory at once;
- each request goes through its :class:`~pacer.service.upstream.Upstream` (limit,
  breaker, retries) and ends as exactly one result line;
- the *state writer* rewrites ``state.json`` for ``pacer status`` about once a
  second, and the signal task turns SIGTERM/SIGINT into a graceful stop (a second
  one stops at once) and SIGHUP into a config reload.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any

import httpx
import structlog
import trio

from pacer import __version__
from pacer.config import Config, ConfigError, UpstreamConfig, load_config, read_api_key
from pacer.fleet import Fleet
from pacer.logs import configure_logging, register_secret
from pacer.service.http import build_client
from pacer.service.metrics import Metrics
from pacer.service.systemd import Notifier, watchdog_loop
from pacer.service.upstream import Answer, Upstream
from pacer.spool.folders import Spool, job_stem, write_durable
from pacer.spool.jobs import (
    BadRequest,
    Bounded,
    JobFileError,
    Request,
    UpstreamView,
    iter_jsonl,
    read_single,
    validate_jsonl,
)
from pacer.spool.results import JobResults, ResultWriter, result_line

log = structlog.get_logger("pacer.service.daemon")

READ_BATCH = 256  # request lines read per thread hop
# Errors that say the spool's disk is in trouble (and may recover), not the job.
DISK_TROUBLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES,
                          errno.EPERM, errno.ENOMEM})


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
    custom_ids: set[str] = field(default_factory=set)  # validated, not yet read again
    end: int = 0  # bytes of the .jsonl that were validated


@dataclass
class RunSummary:
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_rejected: int = 0
    started_at: float = field(default_factory=time.time)


class Daemon:
    def __init__(self, config: Config, *, drain: bool = False,
                 clients: Mapping[str, httpx.AsyncClient] | None = None,
                 notifier: Notifier | None = None, log_format: str = "json",
                 log_level: str | None = None) -> None:
        self.config = config
        self.drain = drain
        self.spool = Spool(config.spool.dir)
        self.notifier = notifier or Notifier.from_environ()
        self.log_format = log_format
        self.log_level_override = log_level
        self._given_clients = dict(clients or {})
        self.upstreams: dict[str, Upstream] = {}
        self.writer = ResultWriter(config.results.flush_interval,
                                   config.results.flush_max_lines,
                                   on_trouble=self._writer_trouble)
        # The spool's disk refused a write (full, I/O error, permissions): claim
        # nothing new until a write succeeds again.
        self.disk_trouble: OSError | None = None
        # Jobs in active/ whose start the disk refused; restarted once it works.
        self._deferred: deque[str] = deque()
        self.jobs: dict[str, Job] = {}
        self.pending: deque[str] = deque()
        self.summary = RunSummary()
        self.stopping = False
        self._stop_event = trio.Event()
        self._wake = trio.Event()
        self._request_slots = trio.Semaphore(config.daemon.max_pending_requests)
        self._jobs_scope = trio.CancelScope()
        self.ready = trio.Event()
        self._last_state: dict[str, Any] = {}
        self.spool_errors: dict[str, int] = {}
        self.metrics = Metrics(lambda: self._last_state, folders=self.spool.counts)
        # fleet: limits shared with other pacers through Redis ([fleet] redis).
        self.fleet: Fleet | None = Fleet(config.fleet) if config.fleet.redis else None

    # -- set-up ---------------------------------------------------------------

    def _view(self) -> UpstreamView:
        cfg = self.config
        return UpstreamView(
            base_urls={n: u.base_url for n, u in cfg.upstreams.items()},
            auth_headers={n: u.auth_header.lower() for n, u in cfg.upstreams.items()},
            default=cfg.default_upstream(),
        )

    def _build_upstreams(self) -> None:
        for name, ucfg in self.config.upstreams.items():
            client = self._given_clients.get(name)
            if client is None:
                key = read_api_key(ucfg, self.config.path.parent)
                register_secret(key)
                client = build_client(ucfg, key)
            self.upstreams[name] = self._new_upstream(ucfg, client)

    def _new_upstream(self, ucfg: UpstreamConfig, client: httpx.AsyncClient) -> Upstream:
        up = Upstream(ucfg, client)
        up.on_attempt = self.metrics.observe_attempt
        if self.fleet is not None:  # fleet
            self.fleet.join(up)
        return up

    # -- entry point ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        await trio.to_thread.run_sync(self.spool.ensure)
        self.spool.lock()
        try:
            removed = await trio.to_thread.run_sync(self.spool.remove_stale_temps)
            if removed:
                log.info("spool.temps_removed", files=removed)
            self._build_upstreams()
            self._last_state = self.state()
            if self.config.metrics.listen:
                self.metrics.start(self.config.metrics.listen)
                log.info("metrics.listening", listen=self.config.metrics.listen,
                         port=self.metrics.port)
            log.info("daemon.started", version=__version__, pid=os.getpid(),
                     spool=str(self.spool.root), drain=self.drain,
                     upstreams=sorted(self.upstreams))
            async with trio.open_nursery() as services:
                services.start_soon(self.writer.run)
                services.start_soon(self._state_loop)
                services.start_soon(watchdog_loop, self.notifier)
                services.start_soon(self._signal_loop)
                if self.fleet is not None:  # fleet
                    await services.start(self.fleet.run)
                if not self.drain:
                    services.start_soon(self._watch_incoming)
                    services.start_soon(self._rescan_loop)
                await self._rescan()
                self.notifier.ready()
                self.ready.set()
                task_status.started()
                with self._jobs_scope:
                    await self._intake()
                # Whatever was answered is made durable, even after a hard stop.
                with trio.CancelScope(shield=True):
                    await self.writer.flush()
                    await self._write_state()
                services.cancel_scope.cancel()
        finally:
            for up in self.upstreams.values():
                with trio.CancelScope(shield=True):
                    await up.client.aclose()
            self.spool.unlock()
            self.notifier.close()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.metrics.stop)
        log.info("daemon.stopped", jobs_done=self.summary.jobs_done,
                 jobs_failed=self.summary.jobs_failed, jobs_rejected=self.summary.jobs_rejected)
        return 1 if self.drain and self.summary.jobs_failed else 0

    def request_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self._stop_event.set()
        self._wake.set()
        self.notifier.stopping()
        log.info("daemon.stopping", reason=reason, drain_timeout_s=self.config.daemon.drain_timeout,
                 inflight=sum(u.limiter.inflight for u in self.upstreams.values()))
        # In-flight requests get drain_timeout to finish; then everything is cut.
        self._jobs_scope.deadline = trio.current_time() + self.config.daemon.drain_timeout

    # -- intake -------------------------------------------------------------------

    async def _intake(self) -> None:
        async with trio.open_nursery() as jobs:
            # First what a previous run left claimed: resume, do not repeat.
            leftovers, _ = await trio.to_thread.run_sync(self.spool.scan, "active")
            for cand in leftovers:
                log.info("job.resumed", job=cand.name)
                await self._start_job(jobs, cand.name)
            while not self.stopping:
                if self._deferred and self.disk_trouble is None:
                    name = self._deferred.popleft()
                    if name not in self.jobs:
                        log.info("job.resumed", job=name)
                        await self._start_job(jobs, name)
                    continue
                if self.pending and self._wants_more_work():
                    name = self.pending.popleft()
                    try:
                        claimed = await trio.to_thread.run_sync(self.spool.claim, name)
                    except OSError as exc:  # the next rescan tries again
                        self.count_error("claim_failed")
                        log.error("job.claim_failed", job=name,
                                  error=f"{type(exc).__name__}: {exc}")
                        if exc.errno in DISK_TROUBLE:
                            self._disk_failed(exc, "claim")
                        continue
                    if claimed is None:
                        continue
                    if claimed != name:
                        log.warning("job.renamed", job=claimed, original=name,
                                    reason="a job or results with this name already exist")
                    await self._start_job(jobs, claimed)
                    continue
                if self.drain and not self.pending and not self.jobs and not self._deferred:
                    await self._rescan()
                    if not self.pending:
                        return
                    continue
                self._wake = trio.Event()
                await self._wake.wait()

    def _wants_more_work(self) -> bool:
        """Claim another job only while the requests already read run short of what
        the upstreams could take: a deep spool stays on disk, not in memory."""
        if self.disk_trouble is not None:
            return False
        if len(self.jobs) >= self.config.spool.max_active_jobs:
            return False
        queued = sum(j.queued for j in self.jobs.values())
        capacity = sum(u.limit.limit for u in self.upstreams.values())
        return queued < max(64, 4 * capacity)

    async def _start_job(self, nursery: trio.Nursery, name: str) -> None:
        stem = job_stem(name) or name
        job = Job(name, stem, JobResults(self.spool.folder("results"), stem))
        self.jobs[name] = job
        nursery.start_soon(self._run_job, job)

    async def _rescan(self) -> None:
        candidates, skipped = await trio.to_thread.run_sync(self.spool.scan, "incoming")
        self.pending = deque(c.name for c in candidates)
        for entry in skipped:
            await self._reject_entry(entry.name, entry.reason)
        self._wake.set()

    async def _reject_entry(self, name: str, reason: str) -> None:
        info = {"job": name, "code": "not_a_job_file", "message": f"{name!r}: {reason}",
                "rejected_at": _now_iso()}
        try:
            target = await trio.to_thread.run_sync(self.spool.reject_from_incoming, name, info)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.count_error("reject_failed")
            log.error("spool.reject_failed", job=name, error=f"{type(exc).__name__}: {exc}")
            return
        self.summary.jobs_rejected += 1
        log.warning("job.rejected", job=target, reason=info["message"], code=info["code"])

    async def _rescan_loop(self) -> None:
        while True:
            await trio.sleep(self.config.spool.rescan_interval)
            try:
                await self._rescan()
            except OSError as exc:  # e.g. incoming/ removed by hand: say so, keep going
                self.count_error("scan_failed")
                log.error("spool.scan_failed", error=f"{type(exc).__name__}: {exc}")

    async def _watch_incoming(self) -> None:
        """inotify via watchfiles: new files are seen within ~0.1 s. The periodic
        rescan remains the safety net (inotify can overflow)."""
        from watchfiles import Change, awatch

        incoming = str(self.spool.folder("incoming"))
        try:
            async for changes in awatch(incoming, debounce=50, step=10, recursive=False,
                                        rust_timeout=500,
                                        stop_event=self._stop_event):
                queued = set(self.pending)
                for change, path in sorted(changes, key=lambda c: c[1]):
                    name = os.path.basename(path)
                    # Only job names: anything else is for the rescan to reject.
                    if (change == Change.added and job_stem(name) is not None
                            and not name.startswith(".") and name not in queued):
                        self.pending.append(name)
                self._wake.set()
        except Exception as exc:  # the rescan still finds everything
            self.count_error("watch_failed")
            log.warning("spool.watch_failed", error=f"{type(exc).__name__}: {exc}")

    # -- one job ----------------------------------------------------------------------

    async def _run_job(self, job: Job) -> None:
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
                self._disk_failed(exc, "job")
                self._deferred.append(job.name)
                log.warning("job.deferred", reason=f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                # A bug must not take the daemon down: the job stays in active/ and
                # is resumed at the next start.
                self.count_error("job_crashed")
                log.exception("job.crashed", error=f"{type(exc).__name__}: {exc}")
            finally:
                job.results.close()  # cheap, and must happen even when cancelled
                self.jobs.pop(job.name, None)
                self._wake.set()

    def _open_job(self, job: Job) -> tuple[IO[bytes], int]:
        """Open the claimed file without following links or blocking on a FIFO."""
        path = self.spool.folder("active") / job.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise JobFileError("unreadable", f"cannot open the job file: {exc.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise JobFileError("not_a_regular_file", "the job is not a regular file")
        if st.st_size > self.config.spool.max_job_bytes:
            os.close(fd)
            raise JobFileError("too_large", f"the job file has {st.st_size} bytes, more than "
                               f"spool.max_job_bytes = {self.config.spool.max_job_bytes}")
        return os.fdopen(fd, "rb"), st.st_size

    def _prepare(self, job: Job) -> tuple[IO[bytes], list[Request | BadRequest]]:
        """Validate the whole file before anything is sent, and open its results."""
        if len(os.fsencode(job.results.part.name)) > 255:
            raise JobFileError("name_too_long", "the job's name is too long to name its "
                               "results file after it: keep names under 230 bytes")
        fh, _size = self._open_job(job)
        try:
            singles: list[Request | BadRequest] = []
            if job.name.endswith(".jsonl"):
                summary = validate_jsonl(fh, job.stem, self._view(),
                                         self.config.spool.max_line_bytes)
                job.requests = summary.requests + summary.bad
                job.custom_ids = summary.custom_ids
                job.end = summary.end
                fh.seek(0)
            else:
                singles = [read_single(fh.read(), job.stem, self._view())]
                job.requests = 1
                fh.close()  # read whole: no need to hold it open
            job.results.open()
        except BaseException:
            fh.close()
            raise
        return fh, singles

    async def _process(self, job: Job) -> None:
        fh, singles = await trio.to_thread.run_sync(self._prepare, job)
        try:
            answered = job.results.answered
            job.succeeded = sum(1 for err in answered.values() if not err)
            job.failed = len(answered) - job.succeeded
            if answered:
                log.info("job.claimed", requests=job.requests, already_answered=len(answered))
            else:
                log.info("job.claimed", requests=job.requests)
            # What was validated is what is sent: lines appended since are not read.
            items: Iterator[Request | BadRequest] = (
                iter(singles) if singles else
                iter_jsonl(Bounded(fh, job.end), job.stem, self._view(),
                           self.config.spool.max_line_bytes))
            async with trio.open_nursery() as requests:
                while not self.stopping:
                    batch = await trio.to_thread.run_sync(
                        lambda: list(islice(items, READ_BATCH)))
                    if not batch:
                        break
                    for item in batch:
                        if not singles:
                            # Each validated custom_id once: a file rewritten in place
                            # since validation must not send a line twice.
                            if item.custom_id not in job.custom_ids:
                                continue
                            job.custom_ids.discard(item.custom_id)
                        if item.custom_id in answered or self.stopping:
                            continue
                        await self._request_slots.acquire()
                        job.queued += 1
                        up = item.upstream or ""
                        job.queued_by_upstream[up] = job.queued_by_upstream.get(up, 0) + 1
                        requests.start_soon(self._request, job, item)
                if not self.stopping and singles == []:
                    # Lines validated but gone on the second read: the file changed
                    # under us. Each still gets its one (error) line.
                    for cid in sorted(job.custom_ids - answered.keys()):
                        await self._request_slots.acquire()
                        job.queued += 1
                        job.queued_by_upstream[""] = job.queued_by_upstream.get("", 0) + 1
                        requests.start_soon(self._request, job, BadRequest(
                            cid, 0, "job_changed", "the job file changed while pacer read "
                            "it: this request was no longer in it (write job files in tmp/ "
                            "and rename them into incoming/)"))
        finally:
            fh.close()
        if job.succeeded + job.failed < job.requests:
            log.info("job.interrupted", requests=job.requests,
                     answered=job.succeeded + job.failed)
            return
        await trio.to_thread.run_sync(job.results.publish)
        folder = "failed" if job.failed else "done"
        final = await trio.to_thread.run_sync(self.spool.finish, job.name, folder)
        if folder == "failed":
            self.summary.jobs_failed += 1
        else:
            self.summary.jobs_done += 1
        log.info("job.completed", job=final, folder=folder, requests=job.requests,
                 succeeded=job.succeeded, failed=job.failed)

    async def _request(self, job: Job, item: Request | BadRequest) -> None:
        try:
            with structlog.contextvars.bound_contextvars(custom_id=item.custom_id,
                                                         upstream=item.upstream):
                if isinstance(item, BadRequest):
                    line = result_line(item.custom_id, item.upstream, 0,
                                       error_code=item.code, error_message=item.message)
                    ok = False
                else:
                    try:
                        answer = await self.upstreams[item.upstream].send(item, self._stop_event)
                    except Exception as exc:  # a bug must cost one request, not the daemon
                        self.count_error("request_crashed")
                        log.exception("request.crashed", error=f"{type(exc).__name__}: {exc}")
                        answer = Answer(0, error_code="internal_error",
                                        error_message=f"{type(exc).__name__} inside pacer")
                    if answer is None:
                        return  # stopping: left for the next run
                    ok = answer.ok
                    line = result_line(item.custom_id, item.upstream, answer.attempts,
                                       status=answer.status, body=answer.body,
                                       request_id=answer.request_id,
                                       error_code=answer.error_code,
                                       error_message=answer.error_message)
                await self.writer.write(job.results, line)
                if ok:
                    job.succeeded += 1
                else:
                    job.failed += 1
        finally:
            job.queued -= 1
            job.queued_by_upstream[item.upstream or ""] -= 1
            self._request_slots.release()
            self._wake.set()  # the intake may claim more work now

    async def _reject(self, job: Job, code: str, message: str) -> None:
        info = {"job": job.name, "code": code, "message": message, "rejected_at": _now_iso()}

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

    # -- signals, reload, state --------------------------------------------------------

    async def _signal_loop(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    await self.reload()
                elif self.stopping:
                    log.warning("daemon.stopping", reason="second signal: stopping now")
                    self._jobs_scope.cancel()
                else:
                    self.request_stop(signal.Signals(signum).name)

    async def reload(self) -> None:
        if self.stopping:
            log.info("config.reload_skipped", reason="the daemon is stopping")
            return
        self.notifier.reloading()
        try:
            new = await trio.to_thread.run_sync(load_config, self.config.path)
            self.apply_config(new)
        except ConfigError as exc:
            log.error("config.reload_failed", problems=exc.problems,
                      message="the new config was refused; the old one stays in force")
        except Exception as exc:  # whatever it is, the daemon keeps the old config
            log.exception("config.reload_failed", problems=[f"{type(exc).__name__}: {exc}"],
                          message="the new config was refused; the old one stays in force")
        self.notifier.ready()

    def apply_config(self, new: Config) -> None:
        """Take a new config: unchanged upstreams keep their learned limits.

        Raises ConfigError (and changes nothing) if an API key cannot be read."""
        if new.spool.dir != self.config.spool.dir:
            raise ConfigError(new.path, ["spool.dir cannot change on reload: restart pacer"])
        changed = [n for n in new.upstreams if n in self.upstreams
                   and new.upstreams[n] != self.config.upstreams[n]]
        added = [n for n in new.upstreams if n not in self.upstreams]
        removed = [n for n in self.upstreams if n not in new.upstreams]
        client_keys = ("base_url", "api_key_env", "api_key_file", "auth_header", "auth_format",
                       "headers", "http2", "max_limit")
        clients: dict[str, httpx.AsyncClient] = {}
        # Read every key first: a missing one refuses the whole reload.
        for name in added + changed:
            ucfg = new.upstreams[name]
            old = self.config.upstreams.get(name)
            if name in self._given_clients:
                continue
            if old is None or any(getattr(old, k) != getattr(ucfg, k) for k in client_keys):
                key = read_api_key(ucfg, new.path.parent)
                register_secret(key)
                clients[name] = build_client(ucfg, key)
        for name in changed:
            self.upstreams[name].reconfigure(new.upstreams[name], clients.get(name))
        for name in added:
            self.upstreams[name] = self._new_upstream(new.upstreams[name], clients[name])
        # Removed upstreams keep serving requests already queued for them; new
        # requests naming them are refused by validation.
        # Settings read once at start: say so rather than ignore the change silently.
        restart_needed = [name for name, a, b in (
            ("metrics.listen", new.metrics.listen, self.config.metrics.listen),
            ("daemon.max_pending_requests", new.daemon.max_pending_requests,
             self.config.daemon.max_pending_requests),
        ) if a != b]
        self.config = new
        self.writer.flush_interval = new.results.flush_interval
        self.writer.flush_max_lines = new.results.flush_max_lines
        # Logged before the level changes, so that a quieter level still shows it.
        log.info("config.reloaded", changed=changed, added=added, removed=removed,
                 log_level=new.daemon.log_level, needs_restart=restart_needed)
        configure_logging(self.log_level_override or new.daemon.log_level, self.log_format)

    def state(self) -> dict[str, Any]:
        ups = {}
        queued: dict[str, int] = {}
        for job in self.jobs.values():
            for name, n in job.queued_by_upstream.items():
                queued[name] = queued.get(name, 0) + n
        for name, up in self.upstreams.items():
            s = up.stats
            pacing = up.gate.status()
            ups[name] = {
                "limit": up.limit.limit,
                "inflight": up.limiter.inflight,
                "waiting": up.limiter.waiting,
                "breaker": str(up.breaker.state),
                "done": s.done,
                "failed": s.failed,
                "attempts": s.attempts,
                "retries": s.retries,
                "rate_limited": s.rate_limited,
                "queued": queued.get(name, 0),
                "pauses": s.pauses + s.breaker_openings,
                "rate_rps": _round(pacing.rate),
                "paused_for_s": _round(max(0.0, (pacing.resume_at or 0) - trio.current_time())),
                "last_minute": s.last_minute(),
            }
            if self.fleet is not None and name in self.fleet.members:  # fleet
                ups[name]["fleet"] = self.fleet.members[name].state()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.summary.started_at,
            "updated_at": time.time(),
            "stopping": self.stopping,
            "drain": self.drain,
            "jobs": {
                "active": len(self.jobs),
                "pending_incoming": len(self.pending),
                "queued_requests": sum(j.queued for j in self.jobs.values()),
                "remaining_requests": sum(max(0, j.requests - j.succeeded - j.failed)
                                          for j in self.jobs.values()),
                "done": self.summary.jobs_done,
                "failed": self.summary.jobs_failed,
                "rejected": self.summary.jobs_rejected,
            },
            "upstreams": ups,
            "spool_errors": dict(self.spool_errors),
        }

    async def _write_state(self) -> None:
        # One snapshot, shared with the metrics thread: it is swapped, never mutated.
        state = self._last_state = self.state()
        data = json.dumps(state, indent=1).encode()
        await trio.to_thread.run_sync(write_durable, self.spool.state_path, data)
        if self.config.metrics.textfile:
            await trio.to_thread.run_sync(self.metrics.write_textfile,
                                          self.config.metrics.textfile)

    def count_error(self, kind: str) -> None:
        self.spool_errors[kind] = self.spool_errors.get(kind, 0) + 1

    # -- disk trouble -------------------------------------------------------------

    def _writer_trouble(self, error: OSError | None) -> None:
        if error is not None:
            self._disk_failed(error, "results")
        else:
            self._disk_recovered("results")

    def _disk_failed(self, error: OSError, what: str) -> None:
        if self.disk_trouble is None:
            self.count_error("disk")
            log.error("spool.write_failed", what=what, errno=errno.errorcode.get(error.errno or 0),
                      error=str(error), message="pacer stops claiming new work and keeps "
                      "what it has; it resumes by itself once writes succeed again")
        self.disk_trouble = error

    def _disk_recovered(self, what: str) -> None:
        if self.disk_trouble is not None and self.writer.trouble is None:
            self.disk_trouble = None
            log.info("spool.write_recovered", what=what)
            self._wake.set()

    async def _state_loop(self) -> None:
        while True:
            try:
                await self._write_state()
            except OSError as exc:
                self._disk_failed(exc, "state")
            else:
                self._disk_recovered("state")
            st = self.state()
            parts = [f"{n}: limit {u['limit']} inflight {u['inflight']} {u['breaker']}"
                     for n, u in st["upstreams"].items()]
            self.notifier.status(f"{st['jobs']['active']} active jobs, "
                                 f"{st['jobs']['pending_incoming']} queued; " + "; ".join(parts))
            await trio.sleep(self.config.daemon.state_interval)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
