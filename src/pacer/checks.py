"""Checks on values that the config and the parts using them share (no pacer imports:
``config`` depends on nothing above it)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# RFC 9110 field names are tokens; values are visible ASCII, space and tab
# (httpx encodes header values as ASCII, and h11 refuses control characters).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e]*")


def header_problem(name: str, value: str) -> str | None:
    """Why ``name: value`` cannot be sent as an HTTP header, or None if it can.

    The message never quotes the value (it could be a secret)."""
    if not _TOKEN.fullmatch(name):
        return f"header name {name!r} is not a valid HTTP token"
    if not _FIELD_VALUE.fullmatch(value):
        return (f"the value of header {name!r} has a line break, a control character "
                "or a non-ASCII character")
    if value != value.strip(" \t"):  # h11 refuses it when sending
        return f"the value of header {name!r} starts or ends with whitespace"
    return None


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
