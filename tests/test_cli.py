"""The ``pacer`` commands as subprocesses, in real time, against the mock API
subprocess on 127.0.0.1. Each test is bounded by timeouts of a few seconds."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    MakeConfig,
    MockAPI,
    Proc,
    SpoolHelper,
    jsonl,
    read_jsonl,
    req,
    wait_for,
)

pytestmark = pytest.mark.slow

RunPacer = Callable[..., Any]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ------------------------------------------------------------------- check-config


def test_check_config_prints_resolved_settings(
    make_config: MakeConfig, run_pacer: RunPacer, tmp_path: Path
) -> None:
    make_config("http://127.0.0.1:9", upstream={"max_attempts": 3})

    done = run_pacer("check-config", "--config", "pacer.toml")  # relative to the cwd

    assert done.returncode == 0, done.stderr
    settings = json.loads(done.stdout)
    assert Path(settings["spool"]["dir"]) == (tmp_path / "spool").resolve()
    up = settings["upstreams"]["default"]
    assert up["base_url"] == "http://127.0.0.1:9"
    assert up["max_attempts"] == 3
    for key in ("initial_limit", "min_limit", "max_limit", "timeout"):
        assert key in up, key  # defaults are shown resolved too


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        (
            '[spool]\ndir = "s"\n[upstreams.default]\nbase_url = "http://h"\nmax_attempt = 3\n',
            "max_attempt",
        ),
        (
            '[spool]\ndir = "s"\n[upstreams.default]\nbase_url = "http://h"\ninitial_limit = "x"\n',
            "upstreams.default.initial_limit",
        ),
        ('[spool]\ndir = "s"\n[upstreams.default]\nbase_url = "ftp://h"\n', "base_url"),
        ('[spool]\ndir = "s"\n[upstreams.default]\n', "base_url"),
        (
            '[spool]\ndir = "s"\nmax_job_byte = 5\n[upstreams.default]\nbase_url = "http://h"\n',
            "max_job_byte",
        ),
        ('[spool]\ndir = "s"\n[upstream.default]\nbase_url = "http://h"\n', "upstream"),
        ("[spool\n", "TOML"),
    ],
)
def test_check_config_bad_config_exits_2_naming_the_key(
    run_pacer: RunPacer, tmp_path: Path, toml: str, named: str
) -> None:
    (tmp_path / "bad.toml").write_text(toml)

    done = run_pacer("check-config", "--config", "bad.toml")

    assert done.returncode == 2
    assert named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_check_config_missing_file_and_bad_usage_exit_2(run_pacer: RunPacer) -> None:
    missing = run_pacer("check-config", "--config", "nowhere.toml")
    assert missing.returncode == 2 and "not found" in missing.stderr
    assert run_pacer("no-such-command").returncode == 2
    assert run_pacer("run").returncode == 2  # --config is required


# ------------------------------------------------------------------------- submit


def test_submit_prints_names_and_files_appear_in_incoming(
    make_config: MakeConfig, run_pacer: RunPacer, tmp_path: Path
) -> None:
    cfg = make_config("http://127.0.0.1:9")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes(jsonl([req("a-1"), req("a-2")]))
    (src / "b.json").write_text(json.dumps(req("b")))

    first = run_pacer("submit", "--config", cfg, src / "a.jsonl", src / "b.json")
    again = run_pacer("submit", "--config", cfg, src / "a.jsonl")

    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == ["a.jsonl", "b.json"]
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["a~2.jsonl"], "an earlier job is never replaced"
    incoming = tmp_path / "spool" / "incoming"
    assert sorted(p.name for p in incoming.iterdir()) == ["a.jsonl", "a~2.jsonl", "b.json"]
    assert (incoming / "a.jsonl").read_bytes() == (src / "a.jsonl").read_bytes()
    assert (incoming / "a~2.jsonl").read_bytes() == (src / "a.jsonl").read_bytes()
    assert (incoming / "b.json").read_bytes() == (src / "b.json").read_bytes()
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_submit_reads_stdin(make_config: MakeConfig, run_pacer: RunPacer, tmp_path: Path) -> None:
    cfg = make_config("http://127.0.0.1:9")
    one = json.dumps(req("from-stdin"))
    many = jsonl([req("s-1"), req("s-2")]).decode()

    single = run_pacer("submit", "--config", cfg, "-", input=one)
    lines = run_pacer("submit", "--config", cfg, "-", input=many)

    assert single.returncode == 0 and lines.returncode == 0, (single.stderr, lines.stderr)
    (name1,) = single.stdout.split()
    (name2,) = lines.stdout.split()
    assert name1.endswith(".json") and name2.endswith(".jsonl")
    incoming = tmp_path / "spool" / "incoming"
    assert (incoming / name1).read_text() == one
    assert (incoming / name2).read_text() == many


def test_submit_refuses_a_name_that_is_not_a_job(
    make_config: MakeConfig, run_pacer: RunPacer, tmp_path: Path
) -> None:
    cfg = make_config("http://127.0.0.1:9")
    (tmp_path / "notes.txt").write_text("{}")
    done = run_pacer("submit", "--config", cfg, tmp_path / "notes.txt")
    assert done.returncode == 2 and ".json" in done.stderr
    assert list((tmp_path / "spool" / "incoming").iterdir()) == []


# ---------------------------------------------------------------------- run --drain


def test_run_drain_processes_50_jobs_then_status_shows_them(
    make_config: MakeConfig,
    run_pacer: RunPacer,
    spool: SpoolHelper,
    mock_api: Callable[..., MockAPI],
) -> None:
    api = mock_api("--latency", "0.005")
    cfg = make_config(api.base_url, upstream={"initial_limit": 8})
    for j in range(50):
        spool.drop(f"job-{j:02d}.jsonl", [req(f"j{j}-r{r}") for r in range(3)])

    done = run_pacer("run", "--config", cfg, "--drain", timeout=30)

    assert done.returncode == 0, done.stderr + done.stdout[-2000:]
    logs = json_lines(done.stdout)
    assert logs[0]["event"] == "daemon.started" and logs[-1]["event"] == "daemon.stopped"
    assert len([e for e in logs if e["event"] == "job.completed"]) == 50
    assert spool.jobs("done") == [f"job-{j:02d}.jsonl" for j in range(50)]
    assert spool.names("incoming") == [] and spool.names("active") == []
    assert spool.dotfiles("results") == []
    for j in range(50):
        lines = spool.results(f"job-{j:02d}")
        assert sorted(line["custom_id"] for line in lines) == [f"j{j}-r{r}" for r in range(3)]
        assert all(line["response"]["status_code"] == 200 for line in lines)
    stats = api.stats()
    assert stats["requests"] == stats["ok"] == 150

    status = run_pacer("status", "--config", cfg, "--json")

    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["folders"]["done"] == 50
    assert info["folders"]["incoming"] == info["folders"]["active"] == 0
    assert info["folders"]["failed"] == info["folders"]["rejected"] == 0
    up = info["upstreams"]["default"]
    for key in ("limit", "inflight", "breaker", "done", "failed"):
        assert key in up, key
    # Totals of the last run stay true after it; live values may be shown as unknown.
    assert up["done"] == 150 and up["failed"] == 0
    assert up["inflight"] in (None, 0) and up["breaker"] in (None, "closed")
    assert info["daemon"]["running"] is False

    text = run_pacer("status", "--config", cfg)
    assert text.returncode == 0, text.stderr
    assert "default" in text.stdout and "done" in text.stdout


def test_run_drain_exits_1_when_a_job_failed(
    make_config: MakeConfig,
    run_pacer: RunPacer,
    spool: SpoolHelper,
    mock_api: Callable[..., MockAPI],
) -> None:
    api = mock_api("--latency", "0.005", "--error-rate", "1")
    cfg = make_config(api.base_url, upstream={"max_attempts": 1})
    spool.drop("doomed.json", req("d"))

    done = run_pacer("run", "--config", cfg, "--drain", timeout=30)

    assert done.returncode == 1, done.stderr
    assert spool.jobs("failed") == ["doomed.json"]
    (line,) = spool.results("doomed")
    assert line["error"]["code"] == "http_500" and line["response"]["status_code"] == 500
    assert line["attempts"] == 1
    assert api.stats()["requests"] == 1


def test_second_daemon_on_the_same_spool_is_refused(
    make_config: MakeConfig,
    run_pacer: RunPacer,
    start_pacer: Callable[..., Proc],
    mock_api: Callable[..., MockAPI],
) -> None:
    api = mock_api("--latency", "0.005")
    cfg = make_config(api.base_url)
    first = start_pacer("run", "--config", cfg)
    first.wait_event("daemon.started")

    second = run_pacer("run", "--config", cfg, "--drain", timeout=20)

    assert second.returncode == 2
    assert any(e["event"] == "daemon.refused" for e in json_lines(second.stdout))
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0


# ------------------------------------------------------------------ run (watching)


def test_run_picks_up_new_jobs_and_stops_on_sigterm(
    make_config: MakeConfig,
    spool: SpoolHelper,
    start_pacer: Callable[..., Proc],
    run_pacer: RunPacer,
    mock_api: Callable[..., MockAPI],
) -> None:
    api = mock_api("--latency", "0.005")
    # A rescan only every minute: the job below must be seen by the watcher.
    cfg = make_config(api.base_url, spool={"rescan_interval": 60.0})
    daemon = start_pacer("run", "--config", cfg)
    daemon.wait_event("daemon.started")
    time.sleep(0.5)  # let the watcher settle (see the report: no "watching" event)

    dropped = time.monotonic()
    # Not a job: the watcher must pass it over (regression: claiming it crashed).
    (spool.folder("incoming") / "notes.txt").write_text("not a job")
    spool.drop("late.jsonl", [req("late-1"), req("late-2")])
    daemon.wait_event("job.completed", timeout=5)
    took = time.monotonic() - dropped

    assert took < 2.5, f"a new job took {took:.2f} s to be processed"
    wait_for(lambda: spool.jobs("done") == ["late.jsonl"], 2, what="late.jsonl in done/")
    assert sorted(line["custom_id"] for line in spool.results("late")) == ["late-1", "late-2"]

    def live_status() -> dict[str, Any] | None:
        done = run_pacer("status", "--config", cfg, "--json", timeout=20)
        assert done.returncode == 0, done.stderr
        info: dict[str, Any] = json.loads(done.stdout)
        return info if info["upstreams"]["default"].get("done") == 2 else None

    info = wait_for(live_status, 10, interval=0.2, what="status to show the daemon's work")
    assert info["daemon"]["running"] is True and info["daemon"]["pid"] == daemon.pid
    assert info["folders"]["done"] == 1
    up = info["upstreams"]["default"]
    assert isinstance(up["limit"], int) and up["limit"] >= 1
    assert up["inflight"] == 0 and up["breaker"] == "closed" and up["failed"] == 0

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    events = [e["event"] for e in daemon.events()]
    assert "daemon.stopping" in events
    assert events[-1] == "daemon.stopped"
    for e in daemon.events():
        assert {"timestamp", "level", "event"} <= set(e)
    assert read_jsonl(spool.root / "results" / "late.jsonl")
