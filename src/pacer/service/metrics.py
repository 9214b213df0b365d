"""Prometheus metrics: ``/metrics`` served in-process, or a node_exporter textfile.

The hot path costs one histogram observation per attempt and nothing else:
gauges and counters are not updated as things happen but read at scrape time
from a *snapshot* callable (the daemon's typed :class:`ServiceState`, the one it
writes to ``state.json``), by a custom collector. The HTTP server is
prometheus_client's WSGI server in a daemon thread, beside Trio; it serves a
registry of its own, never the global one (tests and embedders may create several
:class:`Metrics`).

Names follow the Prometheus conventions: ``pacer_`` prefix, base units
(``_seconds``), ``_total`` for counters.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
    write_to_textfile,
)
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from pacer.checks import parse_listen
from pacer.fleet.state import FleetState
from pacer.service.state import ServiceState, UpstreamState

__all__ = ["LATENCY_BUCKETS", "Metrics", "StateCollector", "parse_listen"]

Snapshot = Callable[[], ServiceState | None]
FolderCounts = Callable[[], Mapping[str, int]]

# From fast APIs (~10 ms) to LLM calls of minutes: past the default 60 s timeout,
# since a timeout can be configured higher.
LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
BREAKER_STATES = ("closed", "open", "half_open")

log = structlog.get_logger("pacer.service.metrics")




class StateCollector:
    """Turns a state snapshot into metric families at scrape time."""

    def __init__(self, snapshot: Snapshot, folders: FolderCounts | None = None) -> None:
        self.snapshot = snapshot
        self.folders = folders

    def describe(self) -> Iterable[Metric]:
        # Registering must not call the snapshot (the daemon may not be up yet).
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            state = self.snapshot() or ServiceState()
        except Exception as exc:  # a scrape must never take the daemon down
            log.exception("metrics.snapshot_failed", error=f"{type(exc).__name__}: {exc}")
            state = ServiceState()
        yield from self._upstreams(state.upstreams)
        yield from self._jobs(state)
        yield from self._spool(state)

    def _upstreams(self, ups: Mapping[str, UpstreamState]) -> Iterable[Metric]:
        def family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str,
                   doc: str, value: Callable[[UpstreamState], float]) -> Metric:
            fam = kind(name, doc, labels=["upstream"])
            for up, u in ups.items():
                fam.add_metric([up], float(value(u)))
            return fam

        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        yield family(gauge, "pacer_upstream_limit", "Current concurrency limit.",
                     lambda u: u.limit)
        yield family(gauge, "pacer_upstream_inflight", "Attempts in flight.",
                     lambda u: u.inflight)
        yield family(gauge, "pacer_upstream_waiting",
                     "Requests waiting for a slot under the limit.", lambda u: u.waiting)
        yield family(gauge, "pacer_upstream_queued_requests",
                     "Requests read from job files and not answered yet.", lambda u: u.queued)
        yield family(gauge, "pacer_upstream_jobs_waiting",
                     "Jobs with requests waiting for their fair share of this upstream.",
                     lambda u: u.jobs_waiting)
        breaker = GaugeMetricFamily(
            "pacer_upstream_breaker_state",
            "Circuit breaker state: 1 for the current state, 0 for the others.",
            labels=["upstream", "state"],
        )
        for up, u in ups.items():
            for st in BREAKER_STATES:
                breaker.add_metric([up, st], 1.0 if u.breaker == st else 0.0)
        yield breaker
        requests = CounterMetricFamily(
            "pacer_upstream_requests",
            "Requests answered, by final outcome.",
            labels=["upstream", "outcome"],
        )
        for up, u in ups.items():
            requests.add_metric([up, "succeeded"], float(u.done))
            requests.add_metric([up, "failed"], float(u.failed))
        yield requests
        yield family(counter, "pacer_upstream_attempts",
                     "HTTP attempts made (retries included).", lambda u: u.attempts)
        yield family(counter, "pacer_upstream_retries", "Attempts that were retried.",
                     lambda u: u.retries)
        yield family(counter, "pacer_upstream_rate_limited",
                     "Attempts answered with 429 Too Many Requests.", lambda u: u.rate_limited)
        yield family(counter, "pacer_upstream_pauses",
                     "Times sending was paused because the circuit breaker opened.",
                     lambda u: u.pauses)
        yield from self._fleet(ups)

    def _fleet(self, ups: Mapping[str, UpstreamState]) -> Iterable[Metric]:
        """fleet: the upstreams shared through Redis, as this node sees them."""
        shared = {up: u.fleet for up, u in ups.items() if u.fleet is not None}
        if not shared:
            return
        gauges: tuple[tuple[str, str, Callable[[FleetState], float | None]], ...] = (
            ("pacer_fleet_limit", "The fleet's shared concurrency limit.", lambda f: f.limit),
            ("pacer_fleet_leased_slots", "Slots leased by the whole fleet.",
             lambda f: f.fleet_inflight),
            ("pacer_fleet_share", "Slots this node holds (its safe local share while "
             "degraded).", lambda f: f.share),
            ("pacer_fleet_nodes", "Fleet nodes alive.", lambda f: f.live_nodes),
            ("pacer_fleet_degraded", "1 while Redis is unreachable and this node works "
             "on a safe local share.", lambda f: float(f.degraded)),
            ("pacer_fleet_rate", "The fleet's learned request rate, requests/s (absent: "
             "none learned).", lambda f: f.rate),
            ("pacer_fleet_pace", "This node's share of the fleet's learned rate, "
             "requests/s.", lambda f: f.pace),
            ("pacer_fleet_quota_share", "This node's part of the quotas announced in "
             "rate-limit headers (which every node reads fleet-wide), 0 to 1.",
             lambda f: f.quota_share),
        )
        for name, doc, value in gauges:
            fam = GaugeMetricFamily(name, doc, labels=["upstream", "fleet_key"])
            for up, f in shared.items():
                v = value(f)
                if v is not None:  # not known yet: no sample rather than a made-up 0
                    fam.add_metric([up, f.fleet_key], float(v))
            yield fam

    def _jobs(self, state: ServiceState) -> Iterable[Metric]:
        jobs = state.jobs
        done = CounterMetricFamily(
            "pacer_jobs", "Jobs finished since the daemon started.", labels=["outcome"]
        )
        done.add_metric(["done"], float(jobs.done))
        done.add_metric(["failed"], float(jobs.failed))
        done.add_metric(["rejected"], float(jobs.rejected))
        yield done
        for name, v, doc in (
            ("pacer_jobs_active", jobs.active, "Jobs claimed and running."),
            ("pacer_jobs_pending", jobs.pending_incoming,
             "Jobs seen in incoming/, not claimed yet."),
            ("pacer_requests_queued", jobs.queued_requests,
             "Requests read from active jobs and not answered yet."),
            ("pacer_requests_remaining", jobs.remaining_requests,
             "Requests of active jobs not answered yet (read or not)."),
        ):
            yield GaugeMetricFamily(name, doc, value=float(v))
        if state.started_at:
            yield GaugeMetricFamily(
                "pacer_start_time_seconds",
                "When the daemon started, in seconds since the epoch.",
                value=state.started_at,
            )
        yield GaugeMetricFamily("pacer_stopping", "1 while the daemon drains to stop.",
                                value=float(state.stopping))
        if state.version:
            info = GaugeMetricFamily("pacer_build_info", "pacer's version.", labels=["version"])
            info.add_metric([state.version], 1.0)
            yield info

    def _spool(self, state: ServiceState) -> Iterable[Metric]:
        counts: Mapping[str, int] | None = None
        if self.folders is not None:
            try:
                counts = self.folders()
            except OSError as exc:
                log.warning("metrics.folders_failed", error=f"{type(exc).__name__}: {exc}")
        if counts:
            fam = GaugeMetricFamily(
                "pacer_spool_files", "Job files in each spool folder.", labels=["folder"]
            )
            for folder, n in counts.items():
                fam.add_metric([folder], float(n))
            yield fam
        errors = CounterMetricFamily(
            "pacer_spool_errors",
            "Spool problems since the daemon started, by kind.",
            labels=["kind"],
        )
        for kind, n in state.spool_errors.items():
            errors.add_metric([kind], float(n))
        yield errors


class Metrics:
    """pacer's metrics: build once, then ``start``/``observe_attempt``/``stop``.

    ``snapshot`` is called from the HTTP server's thread at scrape time, so it must
    be safe to call from another thread: return a dict that is not mutated
    afterwards (e.g. the last one the state loop built), not a live view.
    ``folders`` (optional, e.g. ``Spool.counts``) is called there too, to count
    the spool folders.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        folders: FolderCounts | None = None,
        process_metrics: bool = True,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.registry = CollectorRegistry()
        self.collector = StateCollector(snapshot, folders)
        self.registry.register(self.collector)
        if process_metrics:
            ProcessCollector(registry=self.registry)
        self.latency = Histogram(
            "pacer_upstream_attempt_duration_seconds",
            "Duration of one HTTP attempt (slot held, response read), by outcome.",
            ["upstream", "outcome"],
            buckets=buckets,
            registry=self.registry,
        )
        # labels() costs a lock and a tuple per call; keep the children.
        self._children: dict[tuple[str, str], Histogram] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe_attempt(self, upstream: str, seconds: float, outcome: str) -> None:
        """Record one finished attempt. ``outcome`` should come from a small fixed set
        (``Verdict.reason``: ok, rate_limited, server_error, timeout, ...): every
        distinct value is a time series."""
        key = (upstream, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.latency.labels(upstream, outcome)
        child.observe(seconds)

    # -- serving ---------------------------------------------------------------------

    def start(self, listen: str) -> None:
        """Serve ``/metrics`` on ``HOST:PORT`` from a daemon thread (port 0 picks a
        free one, see :attr:`port`). Raises ValueError for a bad address and OSError
        if it cannot bind."""
        if self._server is not None:
            raise RuntimeError("metrics server already started")
        host, port = parse_listen(listen)
        self._server, self._thread = start_http_server(port, host, registry=self.registry)

    @property
    def port(self) -> int | None:
        """The port actually bound (useful after listening on port 0)."""
        if self._server is None:
            return None
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def write_textfile(self, path: str | os.PathLike[str]) -> None:
        """Write every metric to ``path`` (ends in ``.prom``) for node_exporter's
        textfile collector, atomically (temp file in the same folder, rename)."""
        write_to_textfile(os.fspath(path), self.registry)

    def render(self) -> bytes:
        """The text exposition, as a scrape would get it."""
        return generate_latest(self.registry)
