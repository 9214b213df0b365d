"""Prometheus metrics: ``/metrics`` served in-process, or a node_exporter textfile.

The hot path costs one histogram observation per attempt and nothing else:
gauges and counters are not updated as things happen but read at scrape time
from a *snapshot* callable (the dict the daemon writes to ``state.json``), by a
custom collector. The HTTP server is prometheus_client's WSGI server in a daemon
thread, beside Trio; it serves a registry of its own, never the global one (tests
and embedders may create several :class:`Metrics`).

Names follow the Prometheus conventions: ``pacer_`` prefix, base units
(``_seconds``), ``_total`` for counters.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit
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

__all__ = ["LATENCY_BUCKETS", "Metrics", "StateCollector", "parse_listen"]

Snapshot = Callable[[], Mapping[str, Any] | None]
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


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"``, ``":9464"`` (all addresses) -> (host, port).

    Raises ValueError with a message for a person (usable for config validation)."""
    text = listen.strip()
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        port = None
        parts = urlsplit("")
    if port is None or not text or "@" in text or parts.path or parts.query or parts.fragment:
        raise ValueError(
            f"metrics listen address {listen!r} must be HOST:PORT "
            "(e.g. 127.0.0.1:9464, [::1]:9464, or :9464 for all addresses)"
        )
    host = parts.hostname or ""
    if not host:
        host = "0.0.0.0" if text.startswith(":") else ""
    if not host:
        raise ValueError(f"metrics listen address {listen!r} has no host")
    return host, port


def _num(value: Any) -> float | None:
    """A number from the snapshot, or None for anything else (a field may be missing
    in a state written by another pacer version: skip it rather than fail the scrape)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


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
            state = self.snapshot() or {}
        except Exception as exc:  # a scrape must never take the daemon down
            log.exception("metrics.snapshot_failed", error=f"{type(exc).__name__}: {exc}")
            state = {}
        yield from self._upstreams(state.get("upstreams") or {})
        yield from self._jobs(state)
        yield from self._spool(state)

    def _upstreams(self, ups: Mapping[str, Any]) -> Iterable[Metric]:
        def gauge(name: str, doc: str, key: str) -> GaugeMetricFamily:
            fam = GaugeMetricFamily(name, doc, labels=["upstream"])
            for up, u in ups.items():
                if (v := _num(u.get(key))) is not None:
                    fam.add_metric([up], v)
            return fam

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=["upstream"])
            for up, u in ups.items():
                if (v := _num(u.get(key))) is not None:
                    fam.add_metric([up], v)
            return fam

        yield gauge("pacer_upstream_limit", "Current concurrency limit.", "limit")
        yield gauge("pacer_upstream_inflight", "Attempts in flight.", "inflight")
        yield gauge(
            "pacer_upstream_waiting", "Requests waiting for a slot under the limit.", "waiting"
        )
        yield gauge(
            "pacer_upstream_queued_requests",
            "Requests read from job files and not answered yet.",
            "queued",
        )
        breaker = GaugeMetricFamily(
            "pacer_upstream_breaker_state",
            "Circuit breaker state: 1 for the current state, 0 for the others.",
            labels=["upstream", "state"],
        )
        for up, u in ups.items():
            current = u.get("breaker")
            if isinstance(current, str):
                for st in BREAKER_STATES:
                    breaker.add_metric([up, st], 1.0 if current == st else 0.0)
        yield breaker
        requests = CounterMetricFamily(
            "pacer_upstream_requests",
            "Requests answered, by final outcome.",
            labels=["upstream", "outcome"],
        )
        for up, u in ups.items():
            for outcome, key in (("succeeded", "done"), ("failed", "failed")):
                if (v := _num(u.get(key))) is not None:
                    requests.add_metric([up, outcome], v)
        yield requests
        yield counter(
            "pacer_upstream_attempts", "HTTP attempts made (retries included).", "attempts"
        )
        yield counter("pacer_upstream_retries", "Attempts that were retried.", "retries")
        yield counter(
            "pacer_upstream_rate_limited",
            "Attempts answered with 429 Too Many Requests.",
            "rate_limited",
        )
        yield counter(
            "pacer_upstream_pauses",
            "Times sending was paused because the circuit breaker opened.",
            "pauses",
        )

    def _jobs(self, state: Mapping[str, Any]) -> Iterable[Metric]:
        jobs = state.get("jobs") or {}
        done = CounterMetricFamily(
            "pacer_jobs", "Jobs finished since the daemon started.", labels=["outcome"]
        )
        for outcome in ("done", "failed", "rejected"):
            if (v := _num(jobs.get(outcome))) is not None:
                done.add_metric([outcome], v)
        yield done
        for name, key, doc in (
            ("pacer_jobs_active", "active", "Jobs claimed and running."),
            ("pacer_jobs_pending", "pending_incoming", "Jobs seen in incoming/, not claimed yet."),
            (
                "pacer_requests_queued",
                "queued_requests",
                "Requests read from active jobs and not answered yet.",
            ),
            (
                "pacer_requests_remaining",
                "remaining_requests",
                "Requests of active jobs not answered yet (read or not).",
            ),
        ):
            if (v := _num(jobs.get(key))) is not None:
                yield GaugeMetricFamily(name, doc, value=v)
        if (v := _num(state.get("started_at"))) is not None:
            yield GaugeMetricFamily(
                "pacer_start_time_seconds",
                "When the daemon started, in seconds since the epoch.",
                value=v,
            )
        if (v := _num(state.get("stopping"))) is not None:
            yield GaugeMetricFamily("pacer_stopping", "1 while the daemon drains to stop.", value=v)
        if isinstance(version := state.get("version"), str):
            info = GaugeMetricFamily("pacer_build_info", "pacer's version.", labels=["version"])
            info.add_metric([version], 1.0)
            yield info

    def _spool(self, state: Mapping[str, Any]) -> Iterable[Metric]:
        counts: Mapping[str, Any] | None = state.get("folders")
        if self.folders is not None:
            try:
                counts = self.folders()
            except OSError as exc:
                log.warning("metrics.folders_failed", error=f"{type(exc).__name__}: {exc}")
                counts = None
        if counts:
            fam = GaugeMetricFamily(
                "pacer_spool_files", "Job files in each spool folder.", labels=["folder"]
            )
            for folder, n in counts.items():
                if (v := _num(n)) is not None:
                    fam.add_metric([folder], v)
            yield fam
        errors = CounterMetricFamily(
            "pacer_spool_errors",
            "Spool problems since the daemon started, by kind.",
            labels=["kind"],
        )
        kinds = state.get("spool_errors")
        if isinstance(kinds, Mapping):
            for kind, n in kinds.items():
                if (v := _num(n)) is not None:
                    errors.add_metric([str(kind)], v)
        elif (v := _num((state.get("jobs") or {}).get("rejected"))) is not None:
            # Older state files: rejected job files are the spool errors we know of.
            errors.add_metric(["rejected"], v)
        yield errors


class Metrics:
    """pacer's metrics: build once, then ``start``/``observe_attempt``/``stop``.

    ``snapshot`` is called from the HTTP server's thread at scrape time, so it must
    be safe to call from another thread: return a dict that is not mutated
    afterwards (e.g. the last one the state loop built), not a live view.
    ``folders`` (optional, e.g. ``Spool.counts``) is called there too, to count
    the spool folders; without it a ``"folders"`` key of the snapshot is used.
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
