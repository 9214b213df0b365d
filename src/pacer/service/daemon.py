"""The long-running service: spool in, HTTP out, results back. :class:`Daemon` only
wires the parts, each in its own module:

- :mod:`~pacer.service.intake`: claims jobs from ``incoming/`` (inotify plus a
  periodic rescan), after resuming whatever a previous run left in ``active/``;
- :mod:`~pacer.service.job_runner`: one task per job (validate, feed its requests,
  publish its results, move it) and the request tasks;
- :mod:`~pacer.service.scheduler`: each upstream shared fairly between the jobs
  (deficit round robin), bounded by ``max_pending_requests``;
- :mod:`~pacer.service.pool`: the upstreams and their clients
  (:mod:`~pacer.service.upstream`: limit, breaker, pacing, retries);
- :mod:`~pacer.spool.results`: the result writer, durable in batches;
- :mod:`~pacer.service.reporting`: the state snapshot, ``state.json``, STATUS;
- :mod:`~pacer.service.disk`: claim nothing while the spool's disk refuses writes;
- signals (below): SIGTERM/SIGINT stop gracefully (a second one stops at once),
  SIGHUP reloads the config.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import httpx
import structlog
import trio

from pacer import __version__
from pacer.config import Config, ConfigError, load_config
from pacer.logs import configure_logging
from pacer.service.disk import DiskTrouble
from pacer.service.intake import Intake
from pacer.service.job_runner import Job, JobRunner
from pacer.service.loop_lag import LoopLag
from pacer.service.memory import LearnedStore
from pacer.service.metrics import Metrics
from pacer.service.pool import UpstreamPool
from pacer.service.reporting import StateReporter
from pacer.service.scheduler import FairScheduler, JobQueue
from pacer.service.state import ServiceState
from pacer.service.summary import RunSummary
from pacer.service.systemd import Notifier, watchdog_loop
from pacer.service.upstream import Upstream
from pacer.spool.folders import Spool
from pacer.spool.jobs import Request
from pacer.spool.results import ResultWriter

if TYPE_CHECKING:  # imported only with [fleet] redis set (coredis: 0.2 s at start)
    from pacer.fleet.fleet import Fleet

log = structlog.get_logger("pacer.service.daemon")


class Daemon:
    def __init__(self, config: Config, *, drain: bool = False,
                 clients: Mapping[str, httpx.AsyncClient] | None = None,
                 notifier: Notifier | None = None, log_format: str = "json",
                 log_level: str | None = None) -> None:
        self.config = config
        self.drain = drain
        self.spool = Spool(config.spool.dir)
        self.notifier = notifier or Notifier.from_environ()
        if self.notifier.on_error is None:
            self.notifier.on_error = _notify_failed
        self.log_format = log_format
        self.log_level_override = log_level
        self.summary = RunSummary()
        self.stopping = False
        self._stop_event = trio.Event()
        self._jobs_scope = trio.CancelScope()
        self.ready = trio.Event()
        self.writer = ResultWriter(config.results.flush_interval,
                                   config.results.flush_max_lines)
        self.disk = DiskTrouble(self.summary, lambda: self.writer.trouble,
                                on_recovered=lambda: self.intake.wake())
        self.writer.on_trouble = self.disk.writer_changed
        self.intake = Intake(self.spool, lambda: self.config, self.summary, self.disk,
                             lambda: sum(u.limit.limit for u in self.upstreams.values()),
                             drain=drain)
        self.memory = LearnedStore(self.spool.root)
        self.metrics = Metrics(lambda: self.reporter.last, folders=self.spool.counts)
        # The loop's own lateness, taken off every rtt the limits judge.
        self.loop_lag = LoopLag()
        self.pool = UpstreamPool(clients, self.metrics.observe_attempt,
                                 self.loop_lag.task_lag)
        self.scheduler = FairScheduler(self._send, self.pool.load,
                                       config.daemon.max_pending_requests)
        self.runner = JobRunner(spool=self.spool, config=lambda: self.config,
                                writer=self.writer, scheduler=self.scheduler,
                                upstreams=self.pool.upstreams, summary=self.summary,
                                disk=self.disk, stop=self._stop_event,
                                on_job_end=self.intake.wake)
        self.reporter = StateReporter(
            spool=self.spool, config=lambda: self.config, summary=self.summary,
            upstreams=self.pool.upstreams, jobs=self.runner.jobs,
            pending=lambda: len(self.intake.pending), scheduler=self.scheduler,
            notifier=self.notifier, metrics=self.metrics, disk=self.disk, drain=drain,
            stopping=lambda: self.stopping, fleet=lambda: self.fleet)
        # fleet: limits shared with other pacers through Redis ([fleet] redis).
        self.fleet: Fleet | None = None
        if config.fleet.redis:
            from pacer.fleet.fleet import Fleet
            self.fleet = Fleet(config.fleet)

    @property
    def upstreams(self) -> dict[str, Upstream]:
        return self.pool.upstreams

    @property
    def jobs(self) -> dict[str, Job]:
        return self.runner.jobs

    def state(self) -> ServiceState:
        return self.reporter.state()

    async def _send(self, queue: JobQueue, request: Request,
                    answered: Callable[[], None]) -> None:
        await self.runner.send(queue, request, answered)

    # -- entry point ------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        await trio.to_thread.run_sync(self.spool.ensure)
        self.spool.lock()
        self.loop_lag.install()
        try:
            removed = await trio.to_thread.run_sync(self.spool.remove_stale_temps)
            if removed:
                log.info("spool.temps_removed", files=removed)
            self.pool.build(self.config)
            self.memory.resume(self.upstreams)
            if self.fleet is not None:  # fleet (after resume: a remembered limit seeds it)
                for up in self.upstreams.values():
                    self.fleet.join(up)
            self.reporter.last = self.reporter.state()
            if self.config.metrics.listen:
                self.metrics.start(self.config.metrics.listen)
                log.info("metrics.listening", listen=self.config.metrics.listen,
                         port=self.metrics.port)
            log.info("daemon.started", version=__version__, pid=os.getpid(),
                     spool=str(self.spool.root), drain=self.drain,
                     upstreams=sorted(self.upstreams))
            async with trio.open_nursery() as services:
                services.start_soon(self.writer.run)
                services.start_soon(self.reporter.loop)
                services.start_soon(self.memory.loop, self.upstreams,
                                    lambda: self.config.daemon.state_interval)
                services.start_soon(watchdog_loop, self.notifier)
                services.start_soon(self._signal_loop)
                if self.fleet is not None:  # fleet
                    await services.start(self.fleet.run)
                if not self.drain:
                    services.start_soon(self.intake.watch, self._stop_event)
                    services.start_soon(self.intake.rescan_loop)
                # Ready once the first jobs are found: a big incoming/ goes on being
                # read (for its order) while they are claimed.
                found = trio.Event()
                services.start_soon(self.intake.rescan, found)
                await found.wait()
                self.notifier.ready()
                self.ready.set()
                task_status.started()
                with self._jobs_scope:
                    await self._work()
                # Whatever was answered is made durable, even after a hard stop.
                with trio.CancelScope(shield=True):
                    await self.writer.flush()
                    await self.reporter.write()
                    await self.memory.write(self.upstreams)
                services.cancel_scope.cancel()
        finally:
            await self.pool.aclose()
            self.loop_lag.uninstall()
            self.spool.unlock()
            self.writer.close()
            self.runner.closer.release()
            self.notifier.close()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.metrics.stop)
        log.info("daemon.stopped", jobs_done=self.summary.jobs_done,
                 jobs_failed=self.summary.jobs_failed, jobs_rejected=self.summary.jobs_rejected)
        return 1 if self.drain and self.summary.jobs_failed else 0

    async def _work(self) -> None:
        """Claim and run jobs until the intake is done and every job task ended."""
        async with trio.open_nursery() as work:
            await work.start(self.scheduler.run)
            async with trio.open_nursery() as jobs:
                await self.intake.run(lambda name: self.runner.start(jobs, name),
                                      active=lambda: len(self.runner.jobs),
                                      running=lambda name: name in self.runner.jobs)
            work.cancel_scope.cancel()  # every job ended: the dispatchers go too

    def request_stop(self, reason: str) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.intake.stopping = True
        self._stop_event.set()
        self.scheduler.stop()
        self.runner.stopping()
        self.intake.wake()
        self.notifier.stopping()
        log.info("daemon.stopping", reason=reason, drain_timeout_s=self.config.daemon.drain_timeout,
                 inflight=sum(u.limiter.inflight for u in self.upstreams.values()))
        # In-flight requests get drain_timeout to finish; then everything is cut.
        self._jobs_scope.deadline = trio.current_time() + self.config.daemon.drain_timeout

    # -- signals and reload ----------------------------------------------------------

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
        changed, added, removed = self.pool.apply(self.config, new)
        if self.fleet is not None:  # fleet: a new upstream shares too
            for name in added:
                self.fleet.join(self.upstreams[name])
        # Settings read once at start: say so rather than ignore the change silently.
        restart_needed = [name for name, a, b in (
            ("metrics.listen", new.metrics.listen, self.config.metrics.listen),
            ("daemon.max_pending_requests", new.daemon.max_pending_requests,
             self.config.daemon.max_pending_requests),
            ("fleet", new.fleet, self.config.fleet),  # fleet: joined once, at start
        ) if a != b]
        self.config = new
        self.writer.flush_interval = new.results.flush_interval
        self.writer.flush_max_lines = new.results.flush_max_lines
        # Logged before the level changes, so that a quieter level still shows it.
        log.info("config.reloaded", changed=changed, added=added, removed=removed,
                 log_level=new.daemon.log_level, needs_restart=restart_needed)
        configure_logging(self.log_level_override or new.daemon.log_level, self.log_format)


def _notify_failed(error: OSError) -> None:
    log.warning("systemd.notify_failed", error=f"{type(error).__name__}: {error}",
                message="systemd may miss READY, STATUS and WATCHDOG; later failures are "
                "only counted (notify_errors in state.json)")
