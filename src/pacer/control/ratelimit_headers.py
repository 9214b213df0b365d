"""Read the rate-limit state an upstream reports in its response headers.

Pure: no I/O and no clock; the caller passes ``now`` (epoch seconds) in, which is
used only to turn absolute reset times (HTTP-date, RFC 3339, epoch) into seconds
from now. Header styles understood:

- ``Retry-After`` (seconds or HTTP-date) and ``retry-after-ms`` (read first, as the
  OpenAI and Anthropic SDKs do);
- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, reset as a Go
  duration (``6m0s``);
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
  {limit,remaining,reset}``, reset as RFC 3339;
- GitHub: ``x-ratelimit-{limit,remaining,used,reset}``, reset in epoch seconds;
- IETF draft: ``RateLimit-Policy`` / ``RateLimit`` (structured-field lists, and the
  draft-07 dictionary form) and the older ``RateLimit-{Limit,Remaining,Reset}``.

Upstream headers are untrusted text: anything that does not parse becomes ``None``
for that field and the parser never raises. When several sources describe the same
quota (several policies, or several header families at once), the tightest one wins,
because that is the one that will stop us first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

__all__ = [
    "Quota",
    "RateLimitInfo",
    "parse_go_duration",
    "parse_rate_limit_headers",
]

# An epoch timestamp (2001-09-09 onwards) rather than a delta in seconds: GitHub's rule
# of thumb, and no real window is 31 years long.
EPOCH_THRESHOLD = 1e9

_NUMBER = re.compile(r"\d+(?:\.\d+)?", re.ASCII)
# Capped at 18 digits so that int() never meets Python's int-string-length limit.
_COUNT = re.compile(r"(\d{1,18})(?:\.\d+)?", re.ASCII)
_GO_UNITS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign, which Go accepts
    "\u03bcs": 1e-6,  # Greek mu, which Go accepts too
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"([-+]?)((?:{_GO_PART})+)", re.ASCII)
_GO_PART_RE = re.compile(_GO_PART, re.ASCII)
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?",
    re.ASCII | re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Quota:
    """One quota as the upstream reports it; any field may be unknown.

    ``reset`` is in seconds from ``now`` until the window resets (never negative).
    """

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None

    @property
    def fraction_remaining(self) -> float | None:
        """``remaining / limit``; 0 when exhausted even if the limit is unknown."""
        if self.remaining is None:
            return None
        if self.remaining == 0:
            return 0.0
        if self.limit is None:
            return None
        if self.limit == 0:
            return 0.0
        return self.remaining / self.limit

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What one response said about rate limits; ``None`` means not said (or unparseable).

    ``retry_after`` is in seconds from ``now`` and never negative.
    """

    retry_after: float | None = None
    requests: Quota | None = None
    tokens: Quota | None = None

    @property
    def is_empty(self) -> bool:
        """True when the response carried no usable rate-limit header at all."""
        return self.retry_after is None and self.requests is None and self.tokens is None

    @property
    def wait_hint(self) -> float | None:
        """Seconds to hold off: ``retry_after`` if given, else the longest reset among
        exhausted quotas; ``None`` when nothing says to wait."""
        if self.retry_after is not None:
            return self.retry_after
        resets = [
            q.reset
            for q in (self.requests, self.tokens)
            if q is not None and q.exhausted and q.reset is not None
        ]
        return max(resets) if resets else None


# --- scalar parsers: each returns None rather than raising --------------------------


def _finite_nonneg(value: float) -> float | None:
    return value if math.isfinite(value) and value >= 0 else None


def _parse_number(raw: str | None) -> float | None:
    if raw is None:
        return None
    s = raw.strip()
    if not _NUMBER.fullmatch(s):
        return None
    return _finite_nonneg(float(s))


def _parse_count(raw: str | None) -> int | None:
    if raw is None:
        return None
    m = _COUNT.fullmatch(raw.strip())
    # Some servers send "100.0"; the fraction of a request count means nothing.
    return int(m.group(1)) if m else None


def parse_go_duration(s: str) -> float | None:
    """Parse a Go ``time.Duration`` string (``1h2m3.5s``, ``12ms``, ``250us``) to seconds.

    Follows Go's ``time.ParseDuration``: an optional sign, then one or more
    number+unit parts; a bare ``0`` is allowed. Returns ``None`` if it does not parse.
    """
    text = s.strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    m = _GO_DURATION.fullmatch(text)
    if m is None:
        return None
    total = 0.0
    for part in _GO_PART_RE.finditer(m.group(2)):
        total += float(part.group(1)) * _GO_UNITS[part.group(2)]
    if not math.isfinite(total):
        return None
    return -total if m.group(1) == "-" else total


def _parse_rfc3339(raw: str) -> datetime | None:
    s = raw.strip()
    if not _RFC3339.fullmatch(s):
        return None
    s = s.upper().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    # Without an offset we assume UTC rather than the host's local time.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _seconds_until(dt: datetime, now: float) -> float | None:
    try:
        delta = dt.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return max(0.0, delta) if math.isfinite(delta) else None


def _delta_or_epoch(value: float, now: float) -> float:
    return max(0.0, value - now) if value > EPOCH_THRESHOLD else value


def _parse_reset(raw: str | None, now: float) -> float | None:
    """A reset in whichever form it comes: a number (delta seconds, or an epoch when
    large), a Go duration, or an RFC 3339 time. Clamped at 0: a reset in the past
    means the window has already reset."""
    if raw is None:
        return None
    number = _parse_number(raw)
    if number is not None:
        return _delta_or_epoch(number, now)
    duration = parse_go_duration(raw)
    if duration is not None:
        return max(0.0, duration)
    dt = _parse_rfc3339(raw)
    return _seconds_until(dt, now) if dt is not None else None


def _parse_retry_after(h: Mapping[str, str], now: float) -> float | None:
    ms = _parse_number(h.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = h.get("retry-after")
    if raw is None:
        return None
    seconds = _parse_number(raw)
    if seconds is not None:
        return seconds
    try:
        dt = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt.tzinfo is None:  # "-0000" means UTC with no claim about local time
        dt = dt.replace(tzinfo=UTC)
    return _seconds_until(dt, now)


def _quota(limit: int | None, remaining: int | None, reset: float | None) -> Quota | None:
    if limit is None and remaining is None and reset is None:
        return None
    return Quota(limit=limit, remaining=remaining, reset=reset)


def _tightness(q: Quota) -> tuple[float, float, float]:
    # Lowest remaining fraction first; among equals the longer reset binds longer,
    # then the smaller limit. An unknown fraction counts as untouched.
    frac = q.fraction_remaining
    return (
        1.0 if frac is None else frac,
        -(q.reset if q.reset is not None else 0.0),
        float(q.limit) if q.limit is not None else math.inf,
    )


def _tightest(quotas: Iterable[Quota | None]) -> Quota | None:
    present = [q for q in quotas if q is not None]
    return min(present, key=_tightness) if present else None


# --- header families ---------------------------------------------------------------


def _openai(h: Mapping[str, str], kind: str, now: float) -> Quota | None:
    return _quota(
        _parse_count(h.get(f"x-ratelimit-limit-{kind}")),
        _parse_count(h.get(f"x-ratelimit-remaining-{kind}")),
        _parse_reset(h.get(f"x-ratelimit-reset-{kind}"), now),
    )


def _anthropic(h: Mapping[str, str], kind: str, now: float) -> Quota | None:
    prefix = f"anthropic-ratelimit-{kind}-"
    return _quota(
        _parse_count(h.get(prefix + "limit")),
        _parse_count(h.get(prefix + "remaining")),
        _parse_reset(h.get(prefix + "reset"), now),
    )


def _github(h: Mapping[str, str], now: float) -> Quota | None:
    limit = _parse_count(h.get("x-ratelimit-limit"))
    remaining = _parse_count(h.get("x-ratelimit-remaining"))
    if remaining is None and limit is not None:
        used = _parse_count(h.get("x-ratelimit-used"))
        if used is not None:
            remaining = max(0, limit - used)
    return _quota(limit, remaining, _parse_reset(h.get("x-ratelimit-reset"), now))


def _split_outside_quotes(s: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    quoted = escaped = False
    for ch in s:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return parts


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return s[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return s


def _sf_list(raw: str | None) -> list[tuple[str, dict[str, str]]]:
    """A lenient structured-field list: ``item;k=v;k=v, item;...`` → (item, params)."""
    if raw is None:
        return []
    members: list[tuple[str, dict[str, str]]] = []
    for member in _split_outside_quotes(raw, ","):
        pieces = _split_outside_quotes(member, ";")
        params: dict[str, str] = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip().lower()] = _unquote(value)
        members.append((pieces[0].strip(), params))
    return members


def _ietf(h: Mapping[str, str], now: float) -> Quota | None:
    quotas: list[Quota | None] = []

    # Policies by name; draft-06/07 policies are unnamed ("100;w=10"), keyed by position.
    policy_limits: dict[str, int | None] = {}
    other_units: set[str] = set()
    for index, (item, params) in enumerate(_sf_list(h.get("ratelimit-policy"))):
        unit = params.get("qu", "requests").lower()
        if unit != "requests":  # content-bytes / concurrent-requests are not request rates
            other_units.add(_unquote(item))
            continue
        old_style_limit = _parse_count(item)
        if old_style_limit is not None:
            policy_limits[f"#{index}"] = old_style_limit
        else:
            policy_limits[_unquote(item)] = _parse_count(params.get("q"))

    current = _sf_list(h.get("ratelimit"))
    old_dict: dict[str, str] = {}
    for item, _params in current:
        key, eq, value = item.partition("=")
        if eq and not item.startswith('"'):
            old_dict[key.strip().lower()] = _unquote(value)
    if old_dict:  # draft-07 dictionary: "limit=100, remaining=50, reset=30"
        quotas.append(
            _quota(
                _parse_count(old_dict.get("limit")),
                _parse_count(old_dict.get("remaining")),
                _parse_reset(old_dict.get("reset"), now),
            )
        )
    else:
        seen: set[str] = set()
        for item, params in current:
            name = _unquote(item)
            seen.add(name)
            if name in other_units:
                continue
            quotas.append(
                _quota(
                    policy_limits.get(name),
                    _parse_count(params.get("r")),
                    _parse_reset(params.get("t"), now),
                )
            )
        # Policies with no current state still tell the limit.
        quotas.extend(
            _quota(q, None, None) for name, q in policy_limits.items() if name not in seen
        )

    # Older drafts; RateLimit-Limit may also carry policies ("100, 100;w=60").
    legacy_limit = h.get("ratelimit-limit")
    quotas.append(
        _quota(
            _parse_count(legacy_limit.split(",")[0].split(";")[0]) if legacy_limit else None,
            _parse_count(h.get("ratelimit-remaining")),
            _parse_reset(h.get("ratelimit-reset"), now),
        )
    )
    return _tightest(quotas)


def parse_rate_limit_headers(headers: Mapping[str, str], now: float) -> RateLimitInfo:
    """Read rate-limit headers of any known style; never raises.

    ``headers`` may be an ``httpx.Headers`` or any str→str mapping, in any letter
    case; ``now`` is the current time in epoch seconds.
    """
    h = {str(k).lower(): str(v) for k, v in headers.items()}
    requests = _tightest(
        [
            _anthropic(h, "requests", now),
            _openai(h, "requests", now),
            _github(h, now),
            _ietf(h, now),
        ]
    )
    tokens = _tightest(
        [
            _anthropic(h, "tokens", now),
            _anthropic(h, "input-tokens", now),
            _anthropic(h, "output-tokens", now),
            _openai(h, "tokens", now),
        ]
    )
    return RateLimitInfo(retry_after=_parse_retry_after(h, now), requests=requests, tokens=tokens)
