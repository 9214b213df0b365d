"""structlog set-up: one JSON object per line on stdout, secrets redacted.

Events are named ``area.what_happened`` (``limit.changed``, ``job.claimed``...).
Context such as ``job``, ``custom_id`` and ``upstream`` is bound with
``structlog.contextvars`` (per Trio task) rather than passed around.
"""

from __future__ import annotations

import importlib
import io
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger

# Keys whose values are never logged, whatever they hold.
SECRET_KEYS = frozenset(
    {"authorization", "api_key", "apikey", "x-api-key", "api-key", "token", "password", "secret",
     "cookie", "set-cookie", "proxy-authorization"}
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")

_secret_values: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret (an API key) so that it is masked wherever it shows up."""
    if value and len(value) >= 4:
        _secret_values.add(value)


def redact_text(text: str) -> str:
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, "[REDACTED]")
    return _BEARER.sub(r"\1 [REDACTED]", text)


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if str(k).lower() in SECRET_KEYS else _redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    return value


def redact_secrets(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secret keys, registered secrets and bearer tokens."""
    out: MutableMapping[str, Any] = event_dict
    for key in list(out):
        out[key] = "[REDACTED]" if key.lower() in SECRET_KEYS else _redact(out[key])
    return event_dict


def _console_traceback(exc_info: ExcInfo) -> str:
    out = io.StringIO()
    structlog.dev.RichTracebackFormatter(show_locals=False, color_system=None,
                                         width=100)(out, exc_info)
    return out.getvalue().rstrip("\n")


def _with_rich() -> None:
    """structlog's console part with rich, if it was imported without it
    (``pacer.startup``) and rich is there."""
    if getattr(structlog.dev, "rich", None) is not None:
        return
    try:
        import rich  # noqa: F401
    except ImportError:
        return
    importlib.reload(structlog.dev)


def configure_logging(level: str = "info", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Configure structlog for the process (call again to change level or format)."""
    stream = stream or sys.stdout
    renderer: Processor
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console":
        _with_rich()
        # The traceback becomes text before redaction (the renderer would draw it
        # after), without local variables (rich shows them by default, and one may
        # hold a key) and without colour codes (they could split a secret).
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        processors += [structlog.processors.ExceptionRenderer(_console_traceback),
                       redact_secrets, renderer]
    else:
        # Tracebacks as data, without local variables (they could hold a key).
        processors += [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            redact_secrets,
            structlog.processors.JSONRenderer(),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "pacer") -> Any:
    return structlog.get_logger(name)
