"""Log rendering: secrets stay out of both formats, tracebacks included."""

from __future__ import annotations

import io
import json
import secrets

import pytest
import structlog

from pacer.logs import configure_logging, get_logger, register_secret


def _fail_holding(api_key: str) -> None:
    held_in_a_local = {"authorization": f"Bearer {api_key}"}
    raise RuntimeError(f"upstream refused {held_in_a_local['authorization'][:6]}")


def _log_a_failure(api_key: str) -> None:
    log = get_logger("pacer.test")
    try:
        _fail_holding(api_key)
    except RuntimeError:
        log.exception("test.failed", note=f"key {api_key}")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_tracebacks_show_no_locals_and_no_secret(fmt: str) -> None:
    key = f"sk-logs-{secrets.token_hex(12)}"
    register_secret(key)
    out = io.StringIO()
    configure_logging("info", fmt, stream=out)
    try:
        _log_a_failure(key)
    finally:
        structlog.reset_defaults()
    text = out.getvalue()
    assert "RuntimeError" in text and "_fail_holding" in text  # the traceback is there
    assert key not in text
    assert "[REDACTED]" in text
    if fmt == "json":
        event = json.loads(text)
        assert event["event"] == "test.failed"
        assert "locals" not in json.dumps(event["exception"])


def test_console_exception_message_is_redacted() -> None:
    """A secret in the exception's own message is masked in the console too."""
    key = f"sk-msg-{secrets.token_hex(12)}"
    register_secret(key)
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    try:
        try:
            raise ValueError(f"bad key {key}")
        except ValueError:
            get_logger("pacer.test").exception("test.failed")
    finally:
        structlog.reset_defaults()
    assert "ValueError" in out.getvalue()
    assert key not in out.getvalue()


def test_the_daemon_starts_without_rich_and_the_console_still_draws_tracebacks() -> None:
    """``pacer run`` imports structlog without rich (pacer.startup: 50 ms of start-up);
    JSON logs do not need it, the console format loads it back."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import io, json, sys
        from pacer.startup import import_structlog_lean
        import_structlog_lean()
        import pacer.service.runner
        from pacer.logs import configure_logging, get_logger
        assert "rich" not in sys.modules, "rich was imported"
        for fmt in ("json", "console"):
            out = io.StringIO()
            configure_logging("info", fmt, out)
            try:
                1 / 0
            except ZeroDivisionError:
                get_logger("t").exception("t.failed")
            print(json.dumps([fmt, out.getvalue(), "rich" in sys.modules]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    (fmt1, text1, rich1), (fmt2, text2, rich2) = map(json.loads, done.stdout.splitlines())
    assert fmt1 == "json" and not rich1
    assert json.loads(text1)["exception"][0]["exc_type"] == "ZeroDivisionError"
    assert fmt2 == "console" and rich2
    assert "Traceback" in text2 and "ZeroDivisionError" in text2
