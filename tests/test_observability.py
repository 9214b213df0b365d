"""Watching a running daemon: `pacer status --json` and the Prometheus endpoint,
against the real daemon and mock API as subprocesses on loopback."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from conftest import (
    BODY,
    CHAT,
    MockAPI,
    Proc,
    SpoolHelper,
    toml_text,
    wait_for,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text exposition."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_status_and_metrics_follow_a_running_daemon(
        tmp_path: Path, spool: SpoolHelper, mock_api: Callable[..., MockAPI],
        start_pacer: Callable[..., Proc],
        run_pacer: Callable[..., Any]) -> None:
    api = mock_api("--latency", "0.2", "--concurrency", "8", "--header-style", "none")
    port = free_port()
    config = tmp_path / "pacer.toml"
    config.write_text(toml_text({
        "spool": {"dir": "spool"},
        "daemon": {"state_interval": 0.2},
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "upstreams.default": {"base_url": api.base_url, "initial_limit": 1},
    }))
    for j in range(3):
        requests = [{"custom_id": f"j{j}-{i}", "url": CHAT, "body": BODY} for i in range(40)]
        spool.drop(f"j{j}.jsonl", requests)

    pacer = start_pacer("run", "--config", config)
    pacer.wait_event("metrics.listening", timeout=15)
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> str:
        with httpx.Client(trust_env=False, timeout=5) as client:
            return client.get(url).text

    def succeeded(text: str) -> float:
        return metric(text, "pacer_upstream_requests_total", upstream="default",
                      outcome="succeeded") or 0.0

    def scrape_when(at_least: float) -> Callable[[], str | None]:
        def probe() -> str | None:
            text = scrape()
            return text if succeeded(text) >= at_least else None
        return probe

    first = wait_for(scrape_when(1), 20, what="a first success in /metrics")
    status = json.loads(run_pacer("status", "--config", config, "--json").stdout)
    assert status["daemon"]["running"] is True
    up = status["upstreams"]["default"]
    assert up["limit"] >= 1 and up["breaker"] == "closed"
    assert set(up) >= {"limit", "inflight", "done", "failed", "retries", "rate_limited"}
    folders = status["folders"]
    assert folders["incoming"] + folders["active"] + folders["done"] == 3

    wait_for(lambda: len(spool.jobs("done")) == 3, 60, what="all jobs done")
    last = wait_for(scrape_when(120), 10, what="120 successes in /metrics")
    assert succeeded(last) > succeeded(first)
    assert (metric(last, "pacer_upstream_limit", upstream="default") or 0) >= 2
    assert metric(last, "pacer_spool_files", folder="done") == 3
    hist = metric(last, "pacer_upstream_attempt_duration_seconds_count",
                  upstream="default", outcome="ok")
    assert hist is not None and hist >= 120

    def final_status() -> dict[str, Any] | None:
        s = json.loads(run_pacer("status", "--config", config, "--json").stdout)
        return s if s["upstreams"]["default"]["done"] == 120 else None

    after = wait_for(final_status, 10, what="status to show 120 done")
    assert after["folders"]["done"] == 3 and after["folders"]["active"] == 0
    assert api.stats()["ok"] == after["upstreams"]["default"]["done"]

    pacer.signal(signal.SIGTERM)
    assert pacer.wait(15) == 0
    stopped = json.loads(run_pacer("status", "--config", config, "--json").stdout)
    assert stopped["daemon"]["running"] is False
    text = run_pacer("status", "--config", config).stdout
    assert "not running" in text
