"""``pacer run`` as a systemd service would run it: a subprocess with a fake
``$NOTIFY_SOCKET``, real signals and the real mock API on 127.0.0.1.

- READY=1 comes after the first spool scan (and after ``daemon.started``); STATUS=
  lines show each upstream's limit.
- WATCHDOG=1 pings at half of ``$WATCHDOG_USEC``.
- SIGHUP reloads the config (RELOADING=1 + MONOTONIC_USEC, then READY=1); a broken
  config is refused and the old one stays in force.
- SIGTERM drains: STOPPING=1, in-flight requests finish, the rest stays in active/
  for the next run; a second SIGTERM stops at once without losing an answer.
- ``--log-format console`` and ``--log-level``.

Real time, but every wait is bounded; every child process is stopped at teardown
(the ``procs`` fixture of conftest).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    MakeConfig,
    MockAPI,
    Proc,
    SpoolHelper,
    read_jsonl,
    req,
    subprocess_env,
    toml_text,
    wait_for,
)
from service_helpers import NotifyListener, open_notify_listener

pytestmark = pytest.mark.slow

StartPacer = Callable[..., Proc]
StartMock = Callable[..., MockAPI]


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    with open_notify_listener(tmp_path) as listener:
        yield listener


def service_env(notify: NotifyListener, **extra: str) -> dict[str, str]:
    """The environment systemd gives a Type=notify service (no WATCHDOG_PID: that is
    only needed when the main pid differs from the one systemd started)."""
    return subprocess_env(NOTIFY_SOCKET=notify.notify_socket, **extra)


def start_service(start_pacer: StartPacer, cfg: Path, notify: NotifyListener,
                  *args: str, **env: str) -> Proc:
    return start_pacer("run", "--config", cfg, *args, env=service_env(notify, **env))


def alive(proc: Proc) -> Callable[[], bool]:
    return lambda: proc.popen.poll() is None


def events_named(proc: Proc, name: str) -> list[dict[str, Any]]:
    return [e for e in proc.events() if e.get("event") == name]


def part_lines(spool: SpoolHelper) -> dict[str, list[dict[str, Any]]]:
    """The result lines of unfinished jobs (``results/.STEM.jsonl.part``), by stem."""
    out = {}
    for name in spool.dotfiles("results"):
        if name.endswith(".jsonl.part"):
            out[name[1:-len(".jsonl.part")]] = read_jsonl(spool.root / "results" / name)
    return out


def all_result_ids(spool: SpoolHelper) -> dict[str, str]:
    """custom_id -> the result line's ``id``, over part and published results."""
    out: dict[str, str] = {}
    for lines in part_lines(spool).values():
        for line in lines:
            assert line["custom_id"] not in out, f"two lines for {line['custom_id']}"
            out[line["custom_id"]] = line["id"]
    for name in spool.jobs("results"):
        for line in read_jsonl(spool.root / "results" / name):
            assert line["custom_id"] not in out, f"two lines for {line['custom_id']}"
            out[line["custom_id"]] = line["id"]
    return out


def assert_one_line_per_request(spool: SpoolHelper, expected: dict[str, list[str]]) -> None:
    """Every job in done/ and its results file holding each custom_id exactly once."""
    assert spool.jobs("done") == sorted(f"{stem}.jsonl" for stem in expected)
    for folder in ("incoming", "active", "failed", "rejected"):
        assert spool.jobs(folder) == [], folder
    assert spool.dotfiles("results") == [], "no part files left"
    for stem, ids in expected.items():
        lines = spool.results(stem)
        counts = Counter(line["custom_id"] for line in lines)
        assert counts == dict.fromkeys(ids, 1), (
            f"{stem}: duplicates {sorted(c for c, n in counts.items() if n > 1)}, "
            f"missing {sorted(set(ids) - set(counts))}")
        for line in lines:
            assert line["error"] is None and line["response"]["status_code"] == 200, line


# ------------------------------------------------------------------------ start-up


def test_ready_after_the_spool_scan_and_status_shows_the_limit(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, notify: NotifyListener,
) -> None:
    api = mock_api("--latency", "0.01")
    cfg = make_config(api.base_url, upstream={"adaptive": False, "initial_limit": 3},
                      daemon={"state_interval": 0.2})
    for j in range(3):
        spool.drop(f"early-{j}.jsonl", [req(f"e{j}-{r}") for r in range(2)])
    # Not a job: the first scan moves it to rejected/ (a warning) before READY=1.
    (spool.folder("incoming") / "notes.txt").write_text("not a job\n")

    daemon = start_service(start_pacer, cfg, notify)
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))

    # Whatever the daemon printed before sending READY=1 is in the file by now.
    before_ready = [e["event"] for e in daemon.events()]
    assert "daemon.started" in before_ready, before_ready
    assert "job.rejected" in before_ready, "READY=1 came before the first spool scan"
    assert before_ready.index("daemon.started") < before_ready.index("job.rejected")
    assert len(notify.matching("READY")) == 1

    wait_for(lambda: len(spool.jobs("done")) == 3, 10, what="the 3 early jobs in done/")
    # STATUS= lines keep coming (every state_interval) and name the upstream's limit.
    notify.wait_for("STATUS", timeout=5, since=time.monotonic())
    statuses = [m.fields["STATUS"] for m in notify.matching("STATUS")]
    assert len(statuses) >= 2, statuses
    assert all("default: limit 3" in s for s in statuses), statuses
    assert not notify.matching("STOPPING")
    assert daemon.popen.poll() is None

    daemon.signal(signal.SIGINT)  # like SIGTERM (Ctrl-C in a terminal)
    assert daemon.wait(10) == 0
    notify.wait_for("STOPPING", "1", timeout=2)
    assert events_named(daemon, "daemon.stopping")[0]["reason"] == "SIGINT"


def test_watchdog_pings_at_half_of_watchdog_usec(
    make_config: MakeConfig, mock_api: StartMock, start_pacer: StartPacer,
    notify: NotifyListener,
) -> None:
    api = mock_api("--latency", "0.01")
    cfg = make_config(api.base_url)
    daemon = start_service(start_pacer, cfg, notify, WATCHDOG_USEC="400000")
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))

    window_start = time.monotonic()
    time.sleep(1.5)
    window_end = time.monotonic()
    pings = [m.at for m in notify.matching("WATCHDOG", "1")
             if window_start <= m.at < window_end]

    assert daemon.popen.poll() is None
    assert 5 <= len(pings) <= 10, f"{len(pings)} pings in 1.5 s (expected ~7 at 0.2 s)"
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.1 <= statistics.median(gaps) <= 0.3, gaps
    # No ping skipped (that would be a 0.4 s gap: systemd's limit), with room for
    # scheduling noise on a busy machine.
    assert max(gaps) < 0.35, gaps


def test_no_watchdog_pings_when_watchdog_pid_is_another_process(
    make_config: MakeConfig, mock_api: StartMock, start_pacer: StartPacer,
    notify: NotifyListener,
) -> None:
    api = mock_api("--latency", "0.01")
    cfg = make_config(api.base_url)
    # Not pacer's pid: the watchdog is meant for another process of the unit.
    daemon = start_service(start_pacer, cfg, notify, WATCHDOG_USEC="400000",
                           WATCHDOG_PID=str(os.getpid()))
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))
    time.sleep(0.6)

    assert daemon.popen.poll() is None
    assert notify.matching("WATCHDOG") == []


# -------------------------------------------------------------------------- reload


def reload_and_wait(daemon: Proc, notify: NotifyListener) -> None:
    """SIGHUP, then RELOADING=1 with the current MONOTONIC_USEC, then READY=1."""
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sent = time.monotonic()
    daemon.signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", "1", timeout=5, since=sent, alive=alive(daemon))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    usec_text = reloading.fields.get("MONOTONIC_USEC", "")
    assert usec_text.isdigit(), reloading.raw
    usec = int(usec_text)
    assert before <= usec <= after, (before, usec, after)
    ready = notify.wait_for("READY", "1", timeout=5, since=reloading.at, alive=alive(daemon))
    assert ready.at >= reloading.at


def test_sighup_applies_a_changed_config(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, notify: NotifyListener,
) -> None:
    failing = mock_api("--latency", "0.01", "--error-rate", "1.0")  # always 500
    healthy = mock_api("--latency", "0.01")
    cfg = make_config(failing.base_url, upstream={"max_attempts": 2, "timeout": 10.0},
                      daemon={"log_level": "info", "state_interval": 0.2})
    daemon = start_service(start_pacer, cfg, notify)
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))
    spool.drop("before.json", req("before", upstream="default"))
    daemon.wait_event("job.completed", timeout=5)
    assert spool.results("before")[0]["attempts"] == 2

    make_config(failing.base_url, upstream={"max_attempts": 1, "timeout": 20.0},
                daemon={"log_level": "debug", "state_interval": 0.2},
                upstreams={"second": {"base_url": healthy.base_url, "initial_limit": 2}})
    reload_and_wait(daemon, notify)

    reloaded = daemon.wait_event("config.reloaded", timeout=5)
    assert reloaded["level"] == "info"
    assert reloaded["changed"] == ["default"]
    assert reloaded["added"] == ["second"]
    assert reloaded["removed"] == []
    # STATUS= lines name the new upstream from now on.
    notify.wait_for("STATUS", timeout=5, since=time.monotonic())
    assert "second: limit 2" in notify.matching("STATUS")[-1].fields["STATUS"]

    spool.drop("to-second.json", req("to-second", upstream="second"))
    spool.drop("to-default.json", req("to-default"))
    wait_for(lambda: len(events_named(daemon, "job.completed")) == 3, 5,
             what="both new jobs completed")
    assert spool.jobs("done") == ["to-second.json"]
    assert spool.jobs("failed") == ["before.json", "to-default.json"]
    [second] = spool.results("to-second")
    assert second["upstream"] == "second" and second["error"] is None
    assert second["response"]["status_code"] == 200
    [default] = spool.results("to-default")
    assert default["error"]["code"] == "http_500"
    assert default["attempts"] == 1, "the new max_attempts is in force"
    assert healthy.stats()["ok"] == 1
    assert daemon.popen.poll() is None

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0


def test_sighup_with_a_broken_config_keeps_the_old_one(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, notify: NotifyListener,
) -> None:
    api = mock_api("--latency", "0.01")
    cfg = make_config(api.base_url, upstream={"max_attempts": 2})
    good_text = cfg.read_text()
    daemon = start_service(start_pacer, cfg, notify)
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))

    # 1. Not TOML at all.
    cfg.write_text(good_text + "\n[upstreams.second\nbase_url = 'x'\n")
    reload_and_wait(daemon, notify)
    failed = daemon.wait_event("config.reload_failed", timeout=5)
    assert failed["level"] == "error"
    assert any("not valid TOML" in p for p in failed["problems"]), failed

    # 2. Valid TOML, an unknown key (next to a new upstream that must not appear).
    cfg.write_text(good_text + "\n" + toml_text({
        "upstreams.second": {"base_url": api.base_url, "max_attemps": 3}}))
    reload_and_wait(daemon, notify)
    failed = daemon.wait_event("config.reload_failed", timeout=5,
                               where=lambda e: any("max_attemps" in p for p in e["problems"]))
    assert any("unknown key" in p for p in failed["problems"]), failed
    assert events_named(daemon, "config.reloaded") == []
    assert daemon.popen.poll() is None, "a refused reload must not stop the daemon"

    # The old config is in force: "second" does not exist, "default" works.
    spool.drop("mixed.jsonl", [req("ok-1"), req("to-second", upstream="second"), req("ok-2")])
    daemon.wait_event("job.completed", timeout=5)
    assert spool.jobs("failed") == ["mixed.jsonl"]
    lines = {line["custom_id"]: line for line in spool.results("mixed")}
    assert lines["ok-1"]["response"]["status_code"] == 200
    assert lines["ok-2"]["response"]["status_code"] == 200
    assert lines["to-second"]["error"]["code"] == "unknown_upstream"
    assert len(notify.matching("RELOADING")) == 2
    assert daemon.popen.poll() is None

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0


def test_sighup_with_a_deeply_nested_config_is_refused(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, notify: NotifyListener,
) -> None:
    """tomllib parses nested arrays recursively: a few hundred levels raise
    RecursionError, which is no ConfigError. A reload must refuse it like any other
    broken config. (Before load_config caught it, the signal task died and took the
    daemon down with a traceback.)"""
    api = mock_api("--latency", "0.01")
    cfg = make_config(api.base_url)
    good_text = cfg.read_text()
    daemon = start_service(start_pacer, cfg, notify)
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))

    cfg.write_text(good_text + "\n[metrics]\nlisten = " + "[" * 2000 + "]" * 2000 + "\n")
    daemon.signal(signal.SIGHUP)

    failed = daemon.wait_event("config.reload_failed", timeout=2)
    assert failed["problems"], failed
    spool.drop("after.json", req("after"))
    daemon.wait_event("job.completed", timeout=5)
    assert spool.jobs("done") == ["after.json"]
    assert daemon.popen.poll() is None


# ---------------------------------------------------------------------------- stop


def slow_setup(make_config: MakeConfig, spool: SpoolHelper, api: MockAPI, *,
               jobs: int, requests: int, limit: int, drain_timeout: float,
               ) -> tuple[Path, dict[str, list[str]]]:
    cfg = make_config(api.base_url,
                      upstream={"adaptive": False, "initial_limit": limit, "max_limit": limit,
                                "timeout": 20.0, "max_attempts": 3},
                      results={"flush_interval": 0.02},
                      daemon={"drain_timeout": drain_timeout, "state_interval": 0.2})
    expected = {}
    for j in range(jobs):
        ids = [f"s{j}-{r:02d}" for r in range(requests)]
        spool.drop(f"slow-{j}.jsonl", [req(i) for i in ids])
        expected[f"slow-{j}"] = ids
    return cfg, expected


def sigterm_when_busy(start_pacer: StartPacer, cfg: Path, notify: NotifyListener,
                      api: MockAPI, limit: int, drain_timeout: float,
                      ) -> tuple[Proc, int, float, float]:
    """Start the service, wait until ``limit`` requests are in service, send SIGTERM
    and wait for the exit: (daemon, exit code, when sent, seconds it took)."""
    daemon = start_service(start_pacer, cfg, notify)
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))
    wait_for(lambda: api.stats()["in_service"] == limit, 5, interval=0.05,
             what=f"{limit} requests in flight")
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait(drain_timeout + 3)
    return daemon, code, sent, time.monotonic() - sent


def result_ids(spool: SpoolHelper, expected: dict[str, list[str]]) -> dict[str, str]:
    """custom_id -> result line id, over every job's published results."""
    return {line["custom_id"]: line["id"] for stem in expected for line in spool.results(stem)}


def finish_with_drain(cfg: Path, slow: MockAPI, mock_api: StartMock,
                      run_pacer: Callable[..., Any]) -> None:
    """``pacer run --drain`` on the same spool, against a fast mock (to save time)."""
    fast = mock_api("--latency", "0.01")
    cfg.write_text(cfg.read_text().replace(slow.base_url, fast.base_url))
    final = run_pacer("run", "--config", cfg, "--drain", timeout=30)
    assert final.returncode == 0, final.stderr


def test_sigterm_drains_in_flight_requests_and_keeps_the_rest(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, run_pacer: Callable[..., Any], notify: NotifyListener,
) -> None:
    latency, drain_timeout, limit = 1.0, 1.6, 8
    api = mock_api("--latency", str(latency))
    cfg, expected = slow_setup(make_config, spool, api, jobs=3, requests=10, limit=limit,
                               drain_timeout=drain_timeout)
    daemon, code, sent, _took = sigterm_when_busy(start_pacer, cfg, notify, api, limit,
                                                  drain_timeout)

    assert code == 0, daemon.stderr()
    notify.wait_for("STOPPING", "1", timeout=1, since=sent)
    names = [e["event"] for e in daemon.events()]
    assert "daemon.stopping" in names and names[-1] == "daemon.stopped", names[-5:]
    assert events_named(daemon, "daemon.stopping")[0]["inflight"] == limit
    # Unfinished jobs stay claimed, with what was answered in their part files.
    assert spool.jobs("done") == [] and spool.jobs("incoming") == []
    assert spool.jobs("active") == sorted(f"{stem}.jsonl" for stem in expected)
    answered = all_result_ids(spool)
    assert len(answered) >= limit, "the requests in flight finish during the drain"
    assert set(part_lines(spool)) == set(expected)

    finish_with_drain(cfg, api, mock_api, run_pacer)
    assert_one_line_per_request(spool, expected)
    after = result_ids(spool, expected)
    assert {c: after[c] for c in answered} == answered, "an answer on disk was replaced"


def test_sigterm_starts_no_new_request(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, notify: NotifyListener,
) -> None:
    """SIGTERM means "finish in-flight requests, keep the rest for later": requests
    queued behind the concurrency limit are not sent once it came, so the stop takes
    one latency, not drain_timeout, and nothing is sent only to be cut and sent
    again. (This failed before Upstream._attempt looked at the stop event once it
    had a slot: all 30 requests were sent during the drain.)"""
    latency, drain_timeout, limit = 1.0, 4.0, 8
    api = mock_api("--latency", str(latency))
    cfg, _expected = slow_setup(make_config, spool, api, jobs=3, requests=10, limit=limit,
                                drain_timeout=drain_timeout)
    daemon, code, _sent, took = sigterm_when_busy(start_pacer, cfg, notify, api, limit,
                                                  drain_timeout)

    assert code == 0, daemon.stderr()
    stats = api.stats()
    assert stats["requests"] == limit, f"requests sent after SIGTERM: {stats}"
    assert len(all_result_ids(spool)) == limit
    assert took < latency + 1.0, f"exit took {took:.2f} s after SIGTERM"


def test_second_sigterm_stops_at_once_and_loses_no_answer(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, run_pacer: Callable[..., Any], notify: NotifyListener,
) -> None:
    limit = 8
    # Answers spread over 0.1-1.9 s: some arrive before the signals, some are cut.
    api = mock_api("--latency", "1.0", "--jitter", "0.9", "--seed", "7")
    cfg, expected = slow_setup(make_config, spool, api, jobs=2, requests=8, limit=limit,
                               drain_timeout=60.0)
    daemon = start_service(start_pacer, cfg, notify)
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))
    wait_for(lambda: api.stats()["ok"] >= 2, 8, interval=0.05, what="two answers")

    daemon.signal(signal.SIGTERM)
    daemon.wait_event("daemon.stopping", timeout=5)
    notify.wait_for("STOPPING", "1", timeout=2)
    time.sleep(0.2)
    assert daemon.popen.poll() is None, "still draining (drain_timeout is 60 s)"
    before = all_result_ids(spool)
    assert before, "some answers are on disk before the second signal"

    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    code = daemon.wait(5)
    took = time.monotonic() - sent

    assert code == 0, daemon.stderr()
    assert took < 2.0, f"second SIGTERM: exit took {took:.2f} s"
    names = [e["event"] for e in daemon.events()]
    assert names[-1] == "daemon.stopped", names[-5:]
    assert any(e.get("reason", "").startswith("second signal")
               for e in events_named(daemon, "daemon.stopping"))
    assert daemon.stderr().strip() == ""
    kept = all_result_ids(spool)
    assert {c: kept.get(c) for c in before} == before, "an answer on disk was lost"

    finish_with_drain(cfg, api, mock_api, run_pacer)
    assert_one_line_per_request(spool, expected)
    after = result_ids(spool, expected)
    assert {c: after[c] for c in kept} == kept, "an answer already on disk was replaced"


def test_hard_stop_writes_answers_still_waiting_for_a_flush(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    start_pacer: StartPacer, run_pacer: Callable[..., Any], notify: NotifyListener,
) -> None:
    """With flush_interval = 5 s no answer is durable yet when the second SIGTERM
    comes: the final flush must still write every answer the daemon received."""
    limit = 8
    api = mock_api("--latency", "0.3", "--jitter", "0.25", "--seed", "11")
    cfg, expected = slow_setup(make_config, spool, api, jobs=2, requests=12, limit=limit,
                               drain_timeout=60.0)
    cfg.write_text(cfg.read_text().replace("flush_interval = 0.02", "flush_interval = 5.0"))
    daemon = start_service(start_pacer, cfg, notify)
    notify.wait_for("READY", "1", timeout=10, alive=alive(daemon))
    wait_for(lambda: api.stats()["ok"] >= 3, 5, interval=0.02, what="three answers")

    daemon.signal(signal.SIGTERM)
    daemon.wait_event("daemon.stopping", timeout=5)
    time.sleep(0.1)
    received = api.stats()["ok"]  # answered by the mock, so read by pacer 0.2 s later
    time.sleep(0.2)
    assert all_result_ids(spool) == {}, "nothing flushed yet (flush_interval = 5 s)"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 0, daemon.stderr()

    kept = all_result_ids(spool)
    assert len(kept) >= received, f"{received} answers received, {len(kept)} on disk"
    cfg.write_text(cfg.read_text().replace("flush_interval = 5.0", "flush_interval = 0.02"))
    finish_with_drain(cfg, api, mock_api, run_pacer)
    assert_one_line_per_request(spool, expected)
    after = result_ids(spool, expected)
    assert {c: after[c] for c in kept} == kept, "an answer already on disk was replaced"


# ------------------------------------------------------------------------ logging


def test_console_log_format_is_for_humans(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    run_pacer: Callable[..., Any],
) -> None:
    api = mock_api("--latency", "0.01")
    cfg = make_config(api.base_url)
    spool.drop("one.json", req("one"))

    done = run_pacer("run", "--config", cfg, "--drain", "--log-format", "console", timeout=30)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines
    for line in lines:
        with pytest.raises(ValueError):
            json.loads(line)
    text = done.stdout
    for event in ("daemon.started", "job.claimed", "job.completed", "daemon.stopped"):
        assert event in text, event
    assert "\x1b[" not in text, "no colour codes when stdout is not a terminal"
    assert spool.jobs("done") == ["one.json"]


def test_log_level_warning_hides_info_events(
    make_config: MakeConfig, spool: SpoolHelper, mock_api: StartMock,
    run_pacer: Callable[..., Any],
) -> None:
    api = mock_api("--latency", "0.01")
    cfg = make_config(api.base_url, daemon={"log_level": "info"})
    spool.drop("one.json", req("one"))
    (spool.folder("incoming") / "notes.txt").write_text("not a job\n")

    done = run_pacer("run", "--config", cfg, "--drain", "--log-level", "warning", timeout=30)

    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert "job.rejected" in [e["event"] for e in events], events
    assert {e["level"] for e in events} <= {"warning", "error"}, events
    for name in ("daemon.started", "job.claimed", "job.completed", "daemon.stopped"):
        assert name not in [e["event"] for e in events], name
    assert spool.jobs("done") == ["one.json"]
