"""Prometheus metrics: scraped over loopback from a snapshot that changes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from pacer.service.metrics import Metrics, parse_listen
from pacer.service.state import ServiceState
from pacer.spool.folders import Spool


def state(**up: Any) -> dict[str, Any]:
    """``state.json``'s content with one upstream ``a`` (read as a typed snapshot
    with :func:`snapshot`)."""
    upstream = {
        "limit": 8,
        "inflight": 3,
        "waiting": 2,
        "breaker": "closed",
        "done": 10,
        "failed": 1,
        "attempts": 14,
        "retries": 3,
        "rate_limited": 2,
        "last_minute": {"throughput_rps": 1.5, "rate_limited_share": 0.1, "attempts": 14},
    }
    upstream.update(up)
    return {
        "pid": 1,
        "version": "0.1.0",
        "started_at": 1700000000.0,
        "updated_at": 1700000100.0,
        "stopping": False,
        "drain": False,
        "jobs": {
            "active": 2,
            "pending_incoming": 5,
            "queued_requests": 7,
            "remaining_requests": 40,
            "done": 3,
            "failed": 1,
            "rejected": 2,
        },
        "upstreams": {"a": upstream},
    }


def snapshot(data: dict[str, Any]) -> ServiceState:
    return ServiceState.from_json(data)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def served() -> Iterator[tuple[Metrics, dict[str, Any], httpx.Client]]:
    snap: dict[str, Any] = {"state": state()}
    metrics = Metrics(lambda: snapshot(snap["state"]))
    metrics.start("127.0.0.1:0")
    assert metrics.port
    client = httpx.Client(base_url=f"http://127.0.0.1:{metrics.port}", trust_env=False, timeout=5)
    try:
        yield metrics, snap, client
    finally:
        client.close()
        metrics.stop()


def scrape(client: httpx.Client) -> str:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return resp.text


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("localhost:0") == ("localhost", 0)
    for bad in ("127.0.0.1", "9464", "", "host:99999", "host:x", "a@b:1", "h:1/metrics"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_gauges_and_counters_follow_the_snapshot(
    served: tuple[Metrics, dict[str, Any], httpx.Client],
) -> None:
    _metrics, snap, client = served
    text = scrape(client)
    assert value(text, "pacer_upstream_limit", upstream="a") == 8
    assert value(text, "pacer_upstream_inflight", upstream="a") == 3
    assert value(text, "pacer_upstream_waiting", upstream="a") == 2
    assert value(text, "pacer_upstream_requests_total", upstream="a", outcome="succeeded") == 10
    assert value(text, "pacer_upstream_requests_total", upstream="a", outcome="failed") == 1
    assert value(text, "pacer_upstream_attempts_total", upstream="a") == 14
    assert value(text, "pacer_upstream_retries_total", upstream="a") == 3
    assert value(text, "pacer_upstream_rate_limited_total", upstream="a") == 2
    assert value(text, "pacer_upstream_breaker_state", upstream="a", state="closed") == 1
    assert value(text, "pacer_upstream_breaker_state", upstream="a", state="open") == 0
    assert value(text, "pacer_jobs_total", outcome="rejected") == 2
    assert value(text, "pacer_requests_remaining") == 40
    assert value(text, "pacer_start_time_seconds") == 1700000000.0
    assert value(text, "pacer_build_info", version="0.1.0") == 1
    # The typed snapshot always has every field: absent ones read as zero.
    assert value(text, "pacer_upstream_pauses_total", upstream="a") == 0
    assert value(text, "pacer_upstream_queued_requests", upstream="a") == 0

    snap["state"] = state(limit=21, inflight=20, breaker="open", done=55, pauses=4, queued=9)
    snap["state"]["spool_errors"] = {"rejected": 2, "watch_failed": 1}
    text = scrape(client)
    assert value(text, "pacer_upstream_limit", upstream="a") == 21
    assert value(text, "pacer_upstream_inflight", upstream="a") == 20
    assert value(text, "pacer_upstream_breaker_state", upstream="a", state="open") == 1
    assert value(text, "pacer_upstream_breaker_state", upstream="a", state="closed") == 0
    assert value(text, "pacer_upstream_requests_total", upstream="a", outcome="succeeded") == 55
    assert value(text, "pacer_upstream_pauses_total", upstream="a") == 4
    assert value(text, "pacer_upstream_queued_requests", upstream="a") == 9
    assert value(text, "pacer_spool_errors_total", kind="watch_failed") == 1


def test_histogram_buckets_count_observations(
    served: tuple[Metrics, dict[str, Any], httpx.Client],
) -> None:
    metrics, _snap, client = served
    for seconds in (0.03, 0.07, 0.3, 0.3, 4.0):
        metrics.observe_attempt("a", seconds, "ok")
    metrics.observe_attempt("a", 0.2, "rate_limited")
    text = scrape(client)
    name = "pacer_upstream_attempt_duration_seconds"

    def bucket(le: str, outcome: str = "ok") -> float:
        return value(text, f"{name}_bucket", upstream="a", outcome=outcome, le=le)

    assert bucket("0.05") == 1
    assert bucket("0.1") == 2
    assert bucket("0.25") == 2
    assert bucket("0.5") == 4
    assert bucket("5.0") == 5
    assert bucket("+Inf") == 5
    assert value(text, f"{name}_count", upstream="a", outcome="ok") == 5
    assert value(text, f"{name}_sum", upstream="a", outcome="ok") == pytest.approx(4.7)
    assert bucket("0.25", "rate_limited") == 1
    assert bucket("0.1", "rate_limited") == 0


def test_spool_folder_counts_and_textfile(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    (spool.folder("incoming") / "a.json").write_text("{}")
    (spool.folder("incoming") / "b.jsonl").write_text("{}\n")
    (spool.folder("failed") / "c.json").write_text("{}")
    metrics = Metrics(lambda: snapshot(state()), folders=spool.counts)
    metrics.observe_attempt("a", 0.1, "ok")
    out = tmp_path / "pacer.prom"
    metrics.write_textfile(out)
    text = out.read_text()
    assert value(text, "pacer_spool_files", folder="incoming") == 2
    assert value(text, "pacer_spool_files", folder="failed") == 1
    assert value(text, "pacer_spool_files", folder="done") == 0
    assert (
        value(text, "pacer_upstream_attempt_duration_seconds_count", upstream="a", outcome="ok")
        == 1
    )
    assert [p.name for p in tmp_path.iterdir() if p.name != "spool"] == ["pacer.prom"]


def test_a_failing_snapshot_costs_the_scrape_nothing() -> None:
    def broken() -> ServiceState:
        raise RuntimeError("dictionary changed size during iteration")

    metrics = Metrics(broken, process_metrics=False)
    metrics.observe_attempt("a", 1.0, "ok")
    text = metrics.render().decode()
    assert (
        value(text, "pacer_upstream_attempt_duration_seconds_count", upstream="a", outcome="ok")
        == 1
    )
    assert "pacer_upstream_limit" in text  # the family is there, without samples


def test_separate_registries_and_stop_releases_the_port() -> None:
    one, two = Metrics(lambda: snapshot(state(limit=1))), Metrics(
        lambda: snapshot(state(limit=2)))
    one.start("127.0.0.1:0")
    try:
        port = one.port
        assert port
        with pytest.raises(OSError):
            two.start(f"127.0.0.1:{port}")  # taken
        with pytest.raises(RuntimeError):
            one.start("127.0.0.1:0")
        assert b'pacer_upstream_limit{upstream="a"} 2.0' in two.render()
    finally:
        one.stop()
        one.stop()  # idempotent
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(2)
        s.connect(("127.0.0.1", port))


def test_observe_attempt_is_cheap() -> None:
    metrics = Metrics(lambda: None, process_metrics=False)
    n = 20000
    start = time.perf_counter()
    for i in range(n):
        metrics.observe_attempt("a", 0.001 * (i % 500), "ok")
    per_call = (time.perf_counter() - start) / n
    assert per_call < 50e-6, per_call


def test_a_failing_snapshot_is_logged() -> None:
    # Was: the scrape swallowed any error of the snapshot without a word.
    def broken() -> ServiceState:
        raise RuntimeError("dictionary changed size during iteration")

    metrics = Metrics(broken, process_metrics=False)
    with structlog.testing.capture_logs() as logs:
        metrics.render()
    failed = [e for e in logs if e["event"] == "metrics.snapshot_failed"]
    assert len(failed) == 1 and "dictionary changed size" in failed[0]["error"]
