"""Rendering rate-limit quotas as response headers, in each style the mock speaks."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass

from pacer.mockapi.settings import _EPS

TOKEN_STYLES = ("openai", "anthropic")
"""The header styles that report the tokens quota as well as the requests quota."""


@dataclass(frozen=True, slots=True)
class Quota:
    """One quota as the headers announce it."""

    limit: int
    remaining: int
    reset: float  # seconds until full again
    window: float  # seconds for the whole quota to refill


def format_go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String``, rounded to the millisecond.

    ``0`` -> ``0s``, ``0.02`` -> ``20ms``, ``1`` -> ``1s``, ``17.28`` -> ``17.28s``,
    ``360`` -> ``6m0s``, ``3600`` -> ``1h0m0s``.
    """
    ms = max(0, round(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    sec_text = f"{secs}.{millis:03d}".rstrip("0") if millis else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"


def _rfc3339(epoch_seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def render_limit_headers(
    style: str,
    requests: Quota | None,
    tokens: Quota | None,
    wall_clock: Callable[[], float],
) -> list[tuple[str, str]]:
    """The rate-limit headers of ``style`` announcing ``requests`` (and, in the
    :data:`TOKEN_STYLES`, ``tokens``). ``wall_clock`` (epoch seconds) dates the
    absolute resets of the ``anthropic`` and ``github`` styles."""
    headers: list[tuple[str, str]] = []
    if style == "none":
        return headers
    if style in TOKEN_STYLES:
        for kind, quota in (("requests", requests), ("tokens", tokens)):
            if quota is None:
                continue
            if style == "openai":
                headers += [
                    (f"x-ratelimit-limit-{kind}", str(quota.limit)),
                    (f"x-ratelimit-remaining-{kind}", str(quota.remaining)),
                    (f"x-ratelimit-reset-{kind}", format_go_duration(quota.reset)),
                ]
            else:
                headers += [
                    (f"anthropic-ratelimit-{kind}-limit", str(quota.limit)),
                    (f"anthropic-ratelimit-{kind}-remaining", str(quota.remaining)),
                    (f"anthropic-ratelimit-{kind}-reset", _rfc3339(wall_clock() + quota.reset)),
                ]
        return headers
    if requests is None:
        return headers
    reset = max(0, math.ceil(requests.reset - _EPS))
    if style == "github":
        headers += [
            ("x-ratelimit-limit", str(requests.limit)),
            ("x-ratelimit-remaining", str(requests.remaining)),
            ("x-ratelimit-used", str(requests.limit - requests.remaining)),
            ("x-ratelimit-reset", str(math.ceil(wall_clock() + requests.reset))),
            ("x-ratelimit-resource", "core"),
        ]
    elif style == "ietf":
        window = max(1, math.ceil(requests.window - _EPS))
        headers += [
            ("ratelimit-policy", f'"default";q={requests.limit};w={window}'),
            ("ratelimit", f'"default";r={requests.remaining};t={reset}'),
        ]
    else:  # legacy
        headers += [
            ("ratelimit-limit", str(requests.limit)),
            ("ratelimit-remaining", str(requests.remaining)),
            ("ratelimit-reset", str(reset)),
        ]
    return headers


def render_retry_headers(style: str, wait: float) -> list[tuple[str, str]]:
    """``Retry-After`` for a wait of ``wait`` seconds (and ``retry-after-ms``, which
    OpenAI's SDKs read first, in the ``openai`` and ``none`` styles)."""
    headers = [("retry-after", str(max(0, math.ceil(wait - _EPS))))]
    if style in ("openai", "none"):
        headers.append(("retry-after-ms", str(round(wait * 1000))))
    return headers
