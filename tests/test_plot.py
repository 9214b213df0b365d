"""``pacer plot``: exact series from log lines, and a real PNG from a recorded log."""

from __future__ import annotations

import io
import json
import random
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from pacer.commands.plot import (
    MISSING_MATPLOTLIB,
    UNKNOWN_UPSTREAM,
    add_arguments,
    bin_width,
    extract,
    histogram,
    parse_timestamp,
    plot_command,
)
from pacer.logs import configure_logging

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def line(t: float, event: str, **fields: Any) -> str:
    return json.dumps({"timestamp": iso(t), "level": "info", "event": event, **fields})


def limit(
    t: float,
    up: str,
    old: int,
    new: int,
    inflight: int,
    reason: str = "slow_start",
) -> str:
    return line(
        T0 + t,
        "limit.changed",
        upstream=up,
        old_limit=old,
        new_limit=new,
        reason=reason,
        inflight=inflight,
        rtt=0.05,
    )


def retry(t: float, up: str | None, reason: str = "rate_limited") -> str:
    fields: dict[str, Any] = {"custom_id": "r", "attempt": 1, "delay_s": 0.5, "reason": reason}
    if up is not None:
        fields["upstream"] = up
    return line(T0 + t, "request.retry", **fields)


def breaker(t: float, up: str, frm: str, to: str) -> str:
    return line(T0 + t, "breaker.transition", upstream=up, reason="x", **{"from": frm, "to": to})


def test_parse_timestamp() -> None:
    assert parse_timestamp("2023-11-14T22:13:20.500000Z") == T0 + 0.5
    assert parse_timestamp("2023-11-14T22:13:20") == T0  # naive: UTC
    assert parse_timestamp("2023-11-14T23:13:20+01:00") == T0
    assert parse_timestamp("yesterday") is None
    assert parse_timestamp(5) is None


def test_extract_exact_series() -> None:
    lines = [
        "pacer starting up (not JSON)",
        line(T0, "daemon.started", pid=1),
        limit(1, "a", 1, 2, 1),
        limit(2, "a", 2, 4, 2),
        retry(2.5, "a"),
        retry(2.6, "a", reason="server_error"),  # not a 429
        retry(2.7, None),  # no upstream field: only one upstream, so it is a's
        limit(3, "a", 4, 3, 4, reason="rate_limited"),
        f"Nov 14 22:13:24 host pacer[1]: {breaker(4, 'a', 'closed', 'open')}",  # syslog prefix
        breaker(6, "a", "open", "half_open"),
        breaker(6.5, "a", "half_open", "closed"),
        breaker(8, "a", "closed", "open"),  # still open when the log ends
        '{"event": "limit.changed", "upstream": "a"}',  # no timestamp
        '{"truncated": ',
        line(T0 + 10, "job.completed", job="j", requests=3, succeeded=3, failed=0),
    ]
    data = extract(lines)
    assert data.first == T0 and data.last == T0 + 10
    assert data.events == 12 and data.skipped == 3
    assert data.starts == [T0]
    assert list(data.upstreams) == ["a"]
    a = data.upstreams["a"]
    # The first value holds since the daemon started.
    assert a.limit == [(T0, 1), (T0 + 1, 2), (T0 + 2, 4), (T0 + 3, 3)]
    assert a.changes == 3
    assert a.inflight == [(T0 + 1, 1), (T0 + 2, 2), (T0 + 3, 4)]
    assert a.rate_limited == [T0 + 2.5, T0 + 2.7]
    assert a.breaker == [
        (T0 + 4, T0 + 6, "open"),
        (T0 + 6, T0 + 6.5, "half_open"),
        (T0 + 8, T0 + 10, "open"),
    ]
    assert a.opens == 2


def test_extract_restart_and_several_upstreams() -> None:
    lines = [
        limit(0, "a", 4, 8, 4),  # no daemon.started before: the old value starts here
        limit(1, "b", 1, 2, 1),
        breaker(2, "b", "closed", "open"),
        line(T0 + 5, "daemon.started"),  # a restart: limits start over, breakers close
        limit(6, "a", 1, 2, 1),
        retry(7, None),  # two upstreams: cannot tell whose
        retry(7.5, "b"),
    ]
    data = extract(lines)
    assert sorted(data.upstreams) == sorted(["a", "b", UNKNOWN_UPSTREAM])
    assert data.upstreams["a"].limit == [(T0, 4), (T0, 8), (T0 + 5, 1), (T0 + 6, 2)]
    assert data.upstreams["b"].limit == [(T0 + 1, 1), (T0 + 1, 2)]
    assert data.upstreams["b"].breaker == [(T0 + 2, T0 + 5, "open")]
    assert data.upstreams["b"].rate_limited == [T0 + 7.5]
    assert data.upstreams[UNKNOWN_UPSTREAM].rate_limited == [T0 + 7]


def test_bins() -> None:
    assert bin_width(60) == 1.0
    assert bin_width(600) == 10.0
    assert bin_width(3) == 0.1
    assert bin_width(10**9) == 86400.0
    assert histogram([0.0, 0.4, 1.0, 2.9, 3.0, -1.0, 9.0], 0.0, 3.0, 1.0) == [
        (0.0, 3),
        (1.0, 1),
        (2.0, 3),
    ]
    assert histogram([], 5.0, 5.0, 1.0) == [(5.0, 0)]


def test_lines_from_pacers_own_logging_are_understood() -> None:
    saved = structlog.get_config()
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    try:
        log = structlog.get_logger("pacer.test")
        log.info("daemon.started", pid=1)
        log.info(
            "limit.changed",
            upstream="default",
            old_limit=1,
            new_limit=2,
            reason="slow_start",
            inflight=1,
            rtt=0.01,
        )
        with structlog.contextvars.bound_contextvars(upstream="default", custom_id="r-1"):
            log.info(
                "request.retry",
                custom_id="r-1",
                attempt=1,
                delay_s=0.1,
                reason="rate_limited",
                status=429,
            )
        log.warning(
            "breaker.transition",
            upstream="default",
            **{"from": "closed"},
            to="open",
            reason="consecutive_failures",
            cooldown_s=1.0,
        )
    finally:
        structlog.configure(**saved)
    data = extract(buf.getvalue().splitlines())
    s = data.upstreams["default"]
    assert [v for _, v in s.limit] == [1, 2]
    assert len(s.rate_limited) == 1 and [b[2] for b in s.breaker] == ["open"]
    assert data.skipped == 0


def recorded_log(seed: int = 7) -> list[str]:
    """Ten minutes of a daemon against two upstreams: slow start, 429s and cuts,
    probing, a breaker opening on one of them, a restart at 400 s."""
    rng = random.Random(seed)
    out = [line(T0, "daemon.started", pid=10), line(T0 + 400, "daemon.started", pid=11)]
    for up, cap in (("openai", 24), ("local", 6)):
        for begin, end in ((0.5, 399.0), (400.5, 600.0)):
            t, lim = begin, 1
            while t < end:
                if lim < cap:
                    new = lim * 2 if t < begin + 20 else lim + 1
                    reason = "slow_start" if t < begin + 20 else "probe"
                else:
                    for _ in range(rng.randint(1, 5)):
                        out.append(retry(t + rng.random() * 0.1, up))
                    new = max(1, int(lim * 0.8))
                    reason = "rate_limited"
                out.append(limit(t, up, lim, new, max(1, new - rng.randint(0, 2)), reason))
                lim = new
                t += rng.uniform(0.5, 4.0)
    out.append(breaker(200, "local", "closed", "open"))
    out.append(breaker(230, "local", "open", "half_open"))
    out.append(breaker(231, "local", "half_open", "closed"))
    out.append(line(T0 + 601, "daemon.stopped"))
    out.sort(key=lambda x: json.loads(x)["timestamp"])
    return ["journal noise", *out]


def test_recorded_log_series() -> None:
    data = extract(recorded_log())
    local = data.upstreams["local"]
    assert data.starts == [T0, T0 + 400]
    assert max(v for _, v in local.limit) <= 12 and local.opens == 1
    # The restart shows as the limit starting over from 1 at the daemon's start.
    assert (T0 + 400, 1) in local.limit


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "pacer.log"
    log.write_text("\n".join(recorded_log()) + "\n")
    out = tmp_path / "out.png"
    assert plot_command(str(log), str(out)) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
    printed = capsys.readouterr().out
    assert "wrote" in printed and "openai" in printed and "local" in printed


def test_plot_reads_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(recorded_log(seed=3))))
    out = tmp_path / "stdin.png"
    assert plot_command("-", str(out)) == 0
    assert out.stat().st_size > 10_000


def test_plot_without_events_or_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.log"
    empty.write_text("hello\n" + line(T0, "daemon.started") + "\n")
    assert plot_command(str(empty), str(tmp_path / "x.png")) == 1
    assert "no limit.changed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
    assert plot_command(str(tmp_path / "missing.log"), str(tmp_path / "x.png")) == 2
    assert "cannot read" in capsys.readouterr().err


def test_missing_matplotlib_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    log = tmp_path / "pacer.log"
    log.write_text("\n".join(recorded_log()))
    assert plot_command(str(log), str(tmp_path / "x.png")) == 2
    assert capsys.readouterr().err.strip() == MISSING_MATPLOTLIB


def test_add_arguments() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--log", "-", "-o", "x.png"])
    assert (args.log, args.output) == ("-", "x.png")
    assert parser.parse_args(["--log", "f"]).output == "pacer-plot.png"
