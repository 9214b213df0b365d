"""A local rate-limited, OpenAI-like HTTP API: for demos, tests and benchmarks.

The behaviour lives in :class:`MockUpstream`, which knows nothing about sockets:
``handle(method, path, headers, body)`` answers one request. It sleeps with
``trio.sleep`` and reads time from an injectable clock, so it runs the same
under Trio's virtual clock (through :func:`mock_transport`, an
``httpx.MockTransport``) and behind the real HTTP/1.1 server of :func:`serve`.

What it simulates (see :class:`MockSettings`; everything but latency is off by
default):

* a hidden concurrency cap: a request that arrives while the cap is full gets a
  429 at once, with ``Retry-After``; the cap may follow a schedule over time;
* a rate cap (a token bucket of ``rate`` tokens refilled at ``rate``/s, full at
  start): a request past it gets a 429;
* a tokens-per-minute cap (``tpm``): a bucket of ``tpm`` tokens, full at start,
  refilled *continuously* at ``tpm``/60 per second (not all at once each
  minute). A request costs :func:`token_cost` tokens; when the bucket holds
  fewer, it gets a 429 whose ``Retry-After`` is the time until it would hold
  enough; a request costing more than ``tpm`` can never pass and gets a 429
  with code ``request_too_large`` and no ``Retry-After`` (as OpenAI does);
* latency with jitter, and a latency *knee*: past ``knee`` requests in service
  every new request is slower, but never refused;
* random 500s;
* rate-limit headers in several styles (``header_style``): ``openai``
  (``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, Go durations),
  ``anthropic`` (``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``,
  RFC 3339 resets), ``github`` (``x-ratelimit-{limit,remaining,used,reset}``,
  epoch seconds, ``x-ratelimit-resource: core``), ``ietf``
  (``RateLimit-Policy: "default";q=N;w=W`` and ``RateLimit: "default";r=R;t=T``),
  ``legacy`` (``RateLimit-{Limit,Remaining,Reset}``) or ``none``. Only
  ``openai`` and ``anthropic`` report the tokens quota;
* outage windows (:class:`Outage`): from ``start`` to ``end`` seconds after
  start every request gets a 500/502/503 (after :data:`OUTAGE_DELAY_S`), or its
  connection is closed without an answer (``reset``), or the server refuses
  connections (``refuse``: :func:`serve` closes its listening socket for the
  window, drops its idle keep-alive connections, closes any connection a request
  still arrives on, and listens again on the same port afterwards);
* faults (:class:`Fault`) hitting a share of the requests: ``close`` (closed
  before any answer), ``hang`` (never answered), ``reset`` (the connection is
  reset in the middle of the body), ``trickle`` (the body comes one byte every
  :data:`TRICKLE_INTERVAL_S`), ``malformed`` (a 200 with invalid JSON),
  ``huge`` (a 200 whose body is :data:`HUGE_BODY_BYTES` long, streamed),
  ``wrong-type`` (a 200 with an HTML page), ``storm`` (runs of 5xx:
  :data:`STORM_LENGTH_S` in every :data:`STORM_PERIOD_S`);
* an API key (``auth_key``): requests without ``Authorization: Bearer KEY``
  (or ``x-api-key: KEY`` with the ``anthropic`` style) get a 401. The key is
  never logged nor echoed.

The order of checks for one request: outage, then key, then storm, then the
``close``/``hang`` faults, then the caps (concurrency, rate, tokens), then the
service time, then the 500s of ``error_rate``, then the other faults, which
only replace what would have been a 200.

Socket faults live in the transports: :func:`serve` really closes, resets,
hangs or trickles; :func:`mock_transport` raises the matching httpx exception
(``ConnectError`` for ``refuse``, ``RemoteProtocolError`` for ``close`` and
outage ``reset``, ``ReadError`` in the middle of the body for ``reset``,
``ReadTimeout`` after the request's read timeout for ``hang``), and trickles
with ``trio.sleep``.

``GET /_mock/stats`` answers the counters of :class:`MockStats`; it is never
counted, limited, faulted nor locked. Run it with ``python -m pacer.mockapi --help``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import datetime
import errno
import functools
import hmac
import http
import itertools
import json
import math
import random
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import trio

__all__ = [
    "FAULT_KINDS",
    "HEADER_STYLES",
    "OUTAGE_KINDS",
    "STATS_PATH",
    "Fault",
    "MockResponse",
    "MockSettings",
    "MockStats",
    "MockUpstream",
    "Outage",
    "add_arguments",
    "format_go_duration",
    "main",
    "mock_transport",
    "parse_faults",
    "parse_outages",
    "parse_schedule",
    "run",
    "serve",
    "settings_from_args",
    "token_cost",
]

STATS_PATH = "/_mock/stats"
HEADER_STYLES = ("openai", "anthropic", "github", "ietf", "legacy", "none")
OUTAGE_KINDS = ("500", "502", "503", "reset", "refuse")
FAULT_KINDS = (
    "reset",
    "hang",
    "trickle",
    "malformed",
    "huge",
    "wrong-type",
    "close",
    "storm",
)
MAX_BODY_BYTES = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 120.0
DEFAULT_MAX_TOKENS = 16
"""Tokens a request costs for its answer when its body names no ``max_tokens``."""
TPM_WINDOW_S = 60.0
OUTAGE_DELAY_S = 0.01
"""The delay before an outage's (or a storm's) 5xx."""
TRICKLE_INTERVAL_S = 0.5
HUGE_BODY_BYTES = 64 * 1024 * 1024
STORM_PERIOD_S = 5.0
STORM_LENGTH_S = 1.0
"""A storm runs from ``4 s`` to ``5 s`` of every ``5 s`` after start."""
HANG_MAX_S = 3600.0
"""A hung connection is dropped after this long even if the client waits on."""
RESET_PAUSE_S = 0.05
"""Between the partial body of a ``reset`` and the reset itself (so it arrives)."""
_RECEIVE_SIZE = 65536
_CHUNK_SIZE = 65536
_BACKLOG = 128
_REBIND_TIMEOUT_S = 5.0
_EPS = 1e-9


# --------------------------------------------------------------------- settings


def parse_schedule(text: str) -> tuple[tuple[float, int], ...]:
    """Parse a capacity schedule such as ``"0:20,6:5,12:40"``.

    Each item is ``SECONDS:CAP``: from ``SECONDS`` after server start the
    concurrency cap is ``CAP``. Times must be finite, non-negative and strictly
    increasing; caps are integers >= 0. Raises :class:`ValueError` otherwise.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError("schedule is empty; expected items like '0:20,6:5,12:40'")
    result: list[tuple[float, int]] = []
    for item in items:
        at_text, sep, cap_text = item.partition(":")
        if not sep:
            raise ValueError(f"schedule item {item!r} is not of the form SECONDS:CAP")
        try:
            at = float(at_text)
        except ValueError:
            raise ValueError(
                f"schedule item {item!r}: {at_text.strip()!r} is not a number"
            ) from None
        try:
            cap = int(cap_text)
        except ValueError:
            raise ValueError(
                f"schedule item {item!r}: {cap_text.strip()!r} is not an integer"
            ) from None
        if not math.isfinite(at) or at < 0:
            raise ValueError(f"schedule item {item!r}: time must be a finite number >= 0")
        if cap < 0:
            raise ValueError(f"schedule item {item!r}: cap must be >= 0")
        if result and at <= result[-1][0]:
            raise ValueError(
                f"schedule item {item!r}: times must be strictly increasing "
                f"(previous was {result[-1][0]:g})"
            )
        result.append((at, cap))
    return tuple(result)


@dataclass(frozen=True, slots=True)
class Outage:
    """From ``start`` (inclusive) to ``end`` (exclusive) seconds after start, every
    request gets ``kind``: one of :data:`OUTAGE_KINDS`."""

    start: float
    end: float
    kind: str = "503"

    def __post_init__(self) -> None:
        if not math.isfinite(self.start) or self.start < 0:
            raise ValueError(f"outage start must be a finite number >= 0, got {self.start!r}")
        if not math.isfinite(self.end) or self.end <= self.start:
            raise ValueError(
                f"outage end must be a finite number > start ({self.start:g}), got {self.end!r}"
            )
        if self.kind not in OUTAGE_KINDS:
            raise ValueError(
                f"outage kind must be one of {', '.join(OUTAGE_KINDS)}, got {self.kind!r}"
            )


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault (one of :data:`FAULT_KINDS`) hitting a share ``probability`` of the
    requests (for ``storm``: of the requests during a storm)."""

    kind: str
    probability: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}"
            )
        if not (0.0 <= self.probability <= 1.0):
            raise ValueError(
                f"fault {self.kind} probability must be between 0 and 1, got {self.probability!r}"
            )


def _split_items(text: str, what: str, example: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise ValueError(f"{what} has an empty item; expected items like {example!r}")
    return items


def parse_outages(text: str) -> tuple[Outage, ...]:
    """Parse outage windows such as ``"10:15,30:31:reset,40:45:refuse"``.

    Each item is ``START:END[:KIND]`` in seconds since start; ``KIND`` is one of
    :data:`OUTAGE_KINDS` (default ``503``). Raises :class:`ValueError` on bad input.
    """
    result: list[Outage] = []
    for item in _split_items(text, "outage list", "10:15,30:31:reset"):
        parts = [part.strip() for part in item.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError(f"outage {item!r} is not of the form START:END[:KIND]")
        try:
            start, end = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"outage {item!r}: START and END must be numbers") from None
        try:
            result.append(Outage(start, end, parts[2].lower() if len(parts) == 3 else "503"))
        except ValueError as exc:
            raise ValueError(f"outage {item!r}: {exc}") from None
    return tuple(result)


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse faults such as ``"reset:0.05,hang:0.01,storm"``.

    Each item is ``KIND[:P]``: ``KIND`` one of :data:`FAULT_KINDS`, ``P`` the
    share of requests it hits (default 1: every request). Raises
    :class:`ValueError` on bad input.
    """
    result: list[Fault] = []
    for item in _split_items(text, "fault list", "reset:0.05,storm"):
        kind, sep, p_text = item.partition(":")
        try:
            probability = float(p_text) if sep else 1.0
        except ValueError:
            raise ValueError(f"fault {item!r}: {p_text.strip()!r} is not a number") from None
        try:
            result.append(Fault(kind.strip().lower(), probability))
        except ValueError as exc:
            raise ValueError(f"fault {item!r}: {exc}") from None
    return tuple(result)


@dataclass(frozen=True, slots=True)
class MockSettings:
    """How the mock behaves. All times are in seconds. Invalid values raise ValueError.

    ``concurrency``: hidden cap on requests in service (``None``: no cap).
    ``rate``: requests per second (token bucket, burst = ``max(1, rate)``).
    ``latency``/``jitter``: service time, uniform in ``latency ± jitter`` (>= 0).
    ``error_rate``: probability that an admitted request ends in a 500.
    ``schedule``: ``((t, cap), ...)``: from ``t`` after start the cap is ``cap``
    (before the first entry, ``concurrency`` applies).
    ``knee``/``knee_slope``: past ``knee`` requests in service, latency is
    multiplied by ``1 + knee_slope * (in_service - knee)``; never a 429.
    ``header_style``: one of :data:`HEADER_STYLES`.
    ``retry_after``: the delay announced in ``Retry-After`` on a 429 of the
    concurrency or rate cap.
    ``seed``: seed of the random generators (jitter, errors, faults), for repeatable runs.
    ``tpm``: tokens per minute (``None``: no cap); see :func:`token_cost`.
    ``outages``: :class:`Outage` windows, which must not overlap (kept sorted).
    ``faults``: :class:`Fault` s, one per kind; the shares of all but ``storm``
    add up to at most 1 (one draw per request picks at most one of them).
    ``auth_key``: the API key requests must carry (``None``: no check); never
    shown by ``repr`` nor :meth:`as_dict`.
    """

    concurrency: int | None = None
    rate: float | None = None
    latency: float = 0.05
    jitter: float = 0.0
    error_rate: float = 0.0
    schedule: tuple[tuple[float, int], ...] = ()
    knee: int | None = None
    knee_slope: float = 0.1
    header_style: str = "openai"
    retry_after: float = 1.0
    seed: int | None = None
    tpm: int | None = None
    outages: tuple[Outage, ...] = ()
    faults: tuple[Fault, ...] = ()
    auth_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        def finite_nonneg(name: str, value: float) -> None:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

        if self.concurrency is not None and self.concurrency < 0:
            raise ValueError(f"concurrency must be >= 0, got {self.concurrency!r}")
        if self.rate is not None and (not math.isfinite(self.rate) or self.rate <= 0):
            raise ValueError(f"rate must be a finite number > 0, got {self.rate!r}")
        finite_nonneg("latency", self.latency)
        finite_nonneg("jitter", self.jitter)
        finite_nonneg("knee_slope", self.knee_slope)
        finite_nonneg("retry_after", self.retry_after)
        if not (0.0 <= self.error_rate <= 1.0):
            raise ValueError(f"error_rate must be between 0 and 1, got {self.error_rate!r}")
        if self.knee is not None and self.knee < 0:
            raise ValueError(f"knee must be >= 0, got {self.knee!r}")
        if self.header_style not in HEADER_STYLES:
            raise ValueError(
                f"header_style must be one of {', '.join(HEADER_STYLES)}, got {self.header_style!r}"
            )
        times = [at for at, _ in self.schedule]
        if any(cap < 0 for _, cap in self.schedule) or any(
            not math.isfinite(at) or at < 0 for at in times
        ):
            raise ValueError("schedule entries must be (time >= 0, cap >= 0)")
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError("schedule times must be strictly increasing")
        if self.tpm is not None and (isinstance(self.tpm, bool) or self.tpm <= 0):
            raise ValueError(f"tpm must be an integer > 0, got {self.tpm!r}")
        outages = tuple(sorted(self.outages, key=lambda o: (o.start, o.end)))
        for before, after in itertools.pairwise(outages):
            if after.start < before.end:
                raise ValueError(
                    f"outage windows must not overlap: {before.start:g}-{before.end:g} "
                    f"and {after.start:g}-{after.end:g}"
                )
        object.__setattr__(self, "outages", outages)
        kinds = [fault.kind for fault in self.faults]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each fault kind may be given only once")
        share = sum(fault.probability for fault in self.faults if fault.kind != "storm")
        if share > 1.0 + _EPS:
            raise ValueError(f"the fault shares (all but storm) add up to {share:g}, past 1")
        key = self.auth_key
        if key is not None and not (
            key and key.isascii() and key.isprintable() and not any(c.isspace() for c in key)
        ):  # never show the key itself
            raise ValueError("auth_key must be a non-empty printable ASCII string without spaces")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (the schedule as a list of ``[t, cap]`` pairs, the key hidden)."""
        data = dataclasses.asdict(self)
        data["schedule"] = [[at, cap] for at, cap in self.schedule]
        data["outages"] = [dataclasses.asdict(outage) for outage in self.outages]
        data["faults"] = [dataclasses.asdict(fault) for fault in self.faults]
        data["auth_key"] = None if self.auth_key is None else "<hidden>"
        return data


# ------------------------------------------------------------------------ stats


@dataclass(slots=True)
class MockStats:
    """Counters of the mock; ``GET /_mock/stats`` answers :meth:`snapshot`.

    ``rate_limited`` counts every 429 (concurrency, rate and tokens alike);
    ``errors`` counts only the 500s of ``error_rate``; outages and faults have
    their own counters (a total and one per kind).
    """

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    rate_limited_concurrency: int = 0
    rate_limited_rate: int = 0
    errors: int = 0
    in_service: int = 0
    max_in_service: int = 0
    current_cap: int | None = None
    tokens_limited: int = 0
    tokens_too_large: int = 0
    tokens_used: int = 0
    unauthorized: int = 0
    outage: int = 0
    outage_by_kind: dict[str, int] = field(default_factory=dict)
    faults: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the counters."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class MockResponse:
    """One answer of :meth:`MockUpstream.handle` (header names are lower case).

    ``fault`` tells the transport to misbehave: ``close`` (close without an
    answer), ``refuse`` (as if the connection had been refused), ``hang`` (never
    answer), ``reset`` (reset in the middle of the body), ``trickle`` (send the
    body slowly). ``stream``, when set, yields a body of ``stream_length`` bytes
    in place of ``body``.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fault: str | None = None
    stream: Callable[[], Iterator[bytes]] | None = None
    stream_length: int = 0

    @property
    def content_length(self) -> int:
        return self.stream_length if self.stream is not None else len(self.body)

    def iter_body(self) -> Iterator[bytes]:
        """The body in chunks."""
        if self.stream is None:
            yield self.body
        else:
            yield from self.stream()

    def json(self) -> Any:
        return json.loads(self.body)


# ------------------------------------------------------------------ go duration


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


# ----------------------------------------------------------------------- tokens


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
        return total
    return 0


def token_cost(body: bytes) -> int:
    """What a request costs against ``tpm``: ``max_tokens`` (or
    ``max_completion_tokens``; :data:`DEFAULT_MAX_TOKENS` when absent or not an
    integer >= 0) + ceil(characters of all message contents / 4).

    Message contents are the ``content`` of each of ``messages`` (a string, or a
    list of parts whose ``text`` counts) and Anthropic's top-level ``system``.
    A body that is not a JSON object costs :data:`DEFAULT_MAX_TOKENS`.
    """
    try:
        request = json.loads(body) if body else None
    except (ValueError, RecursionError):
        request = None
    if not isinstance(request, dict):
        return DEFAULT_MAX_TOKENS
    max_tokens = request.get("max_tokens", request.get("max_completion_tokens"))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        max_tokens = DEFAULT_MAX_TOKENS
    chars = _content_chars(request.get("system"))
    messages = request.get("messages")
    if isinstance(messages, list):
        chars += sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    return max_tokens + math.ceil(chars / 4)


# --------------------------------------------------------------------- upstream

_REPLY = "This is a mock reply from pacer's mock API."
_REPLY_TOKENS = len(_REPLY.split())
_STORM_STATUSES = (500, 502, 503)
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx (mock)</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_WRONG_TYPE_HTML = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
    b"<body><h1>Please sign in to continue</h1>"
    b'<form method="post" action="/login"><input name="user"></form></body></html>\n'
)


@dataclass(frozen=True, slots=True)
class _Quota:
    limit: int
    remaining: int
    reset: float  # seconds until full again
    window: float  # seconds for the whole quota to refill


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, item in headers.items():
        if key.lower() == name:
            return item
    return None


class MockUpstream:
    """The mock's behaviour, independent of the transport.

    ``clock`` returns seconds (``trio.current_time`` by default, so Trio's
    virtual clock drives it in tests). The schedule and the outage windows count
    from :meth:`start`, which happens at construction when the clock can be read
    then (inside ``trio.run`` with the default clock), else at the first
    request, or when :func:`serve` starts listening. ``wall_clock`` (epoch
    seconds) only dates the absolute resets of the ``anthropic`` and ``github``
    header styles.
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        clock: Callable[[], float] = trio.current_time,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings if settings is not None else MockSettings()
        self.stats = MockStats()
        self._clock = clock
        self._wall_clock = wall_clock
        seed = self.settings.seed
        self._rng = random.Random(seed)
        # A generator of its own, so that faults leave seeded jitter and errors alone.
        self._fault_rng = random.Random(None if seed is None else f"faults:{seed}")
        self._schedule_times = [at for at, _ in self.settings.schedule]
        self._outage_starts = [outage.start for outage in self.settings.outages]
        self._t0: float | None = None
        self._ids = itertools.count(1)
        self._bucket_size = max(1.0, self.settings.rate) if self.settings.rate else 0.0
        self._tokens = self._bucket_size
        self._bucket_at = 0.0
        self._tpm_size = float(self.settings.tpm or 0)
        self._tpm_tokens = self._tpm_size
        self._tpm_at = 0.0
        self._storm: float | None = None
        self._draws: list[Fault] = []
        for fault in self.settings.faults:
            if fault.kind == "storm":
                self._storm = fault.probability
            elif fault.probability > 0:
                self._draws.append(fault)
        with contextlib.suppress(RuntimeError):
            self.start()
        self.stats.current_cap = self.cap_at(0.0)

    # ---- time and limits

    def start(self) -> None:
        """Mark the start of the schedule, the outages and the rate windows (once)."""
        if self._t0 is None:
            self._t0 = self._clock()
            self._bucket_at = self._t0
            self._tpm_at = self._t0

    def elapsed(self) -> float:
        """Seconds since :meth:`start` (starting now if not started yet)."""
        self.start()
        assert self._t0 is not None
        return self._clock() - self._t0

    def cap_at(self, elapsed: float) -> int | None:
        """The concurrency cap ``elapsed`` seconds after start (``None``: unlimited)."""
        index = bisect.bisect_right(self._schedule_times, elapsed + _EPS)
        if index == 0:
            return self.settings.concurrency
        return self.settings.schedule[index - 1][1]

    def outage_at(self, elapsed: float) -> Outage | None:
        """The outage window ``elapsed`` seconds after start, if any."""
        index = bisect.bisect_right(self._outage_starts, elapsed + _EPS)
        if index == 0:
            return None
        outage = self.settings.outages[index - 1]
        return outage if elapsed + _EPS < outage.end else None

    def in_storm(self, elapsed: float) -> bool:
        """Whether a ``storm`` fault is configured and storming ``elapsed`` s after start."""
        if self._storm is None:
            return False
        phase = math.fmod(elapsed + _EPS, STORM_PERIOD_S)
        return phase >= STORM_PERIOD_S - STORM_LENGTH_S

    def refuse_windows(self) -> list[tuple[float, float]]:
        """The ``refuse`` outage windows as ``(start, end)``, sorted, touching ones merged."""
        windows: list[tuple[float, float]] = []
        for outage in self.settings.outages:
            if outage.kind != "refuse":
                continue
            if windows and outage.start <= windows[-1][1] + _EPS:
                windows[-1] = (windows[-1][0], outage.end)
            else:
                windows.append((outage.start, outage.end))
        return windows

    def _refill(self) -> None:
        rate = self.settings.rate
        if rate is None:
            return
        now = self._clock()
        self._tokens = min(self._bucket_size, self._tokens + (now - self._bucket_at) * rate)
        self._bucket_at = now

    def _refill_tpm(self) -> None:
        tpm = self.settings.tpm
        if tpm is None:
            return
        now = self._clock()
        refill = (now - self._tpm_at) * tpm / TPM_WINDOW_S
        self._tpm_tokens = min(self._tpm_size, self._tpm_tokens + refill)
        self._tpm_at = now

    def _requests_quota(self, cap: int | None) -> _Quota | None:
        rate = self.settings.rate
        if rate is not None:
            self._refill()
            return _Quota(
                limit=math.floor(self._bucket_size + _EPS),
                remaining=max(0, math.floor(self._tokens + _EPS)),
                reset=(self._bucket_size - self._tokens) / rate,
                window=self._bucket_size / rate,
            )
        # A concurrency cap is not announced: real APIs publish rate quotas
        # (requests or tokens per window), never how many may be in flight.
        return None

    def _tokens_quota(self) -> _Quota | None:
        tpm = self.settings.tpm
        if tpm is None:
            return None
        self._refill_tpm()
        return _Quota(
            limit=tpm,
            remaining=max(0, math.floor(self._tpm_tokens + _EPS)),
            reset=(self._tpm_size - self._tpm_tokens) * TPM_WINDOW_S / tpm,
            window=TPM_WINDOW_S,
        )

    def _rfc3339(self, delta: float) -> str:
        moment = datetime.datetime.fromtimestamp(self._wall_clock() + delta, datetime.UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _limit_headers(self, cap: int | None) -> list[tuple[str, str]]:
        style = self.settings.header_style
        if style == "none":
            return []
        requests = self._requests_quota(cap)
        headers: list[tuple[str, str]] = []
        if style in ("openai", "anthropic"):
            for kind, quota in (("requests", requests), ("tokens", self._tokens_quota())):
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
                        (f"anthropic-ratelimit-{kind}-reset", self._rfc3339(quota.reset)),
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
                ("x-ratelimit-reset", str(math.ceil(self._wall_clock() + requests.reset))),
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

    def _retry_headers(self, wait: float) -> list[tuple[str, str]]:
        headers = [("retry-after", str(max(0, math.ceil(wait - _EPS))))]
        if self.settings.header_style in ("openai", "none"):
            headers.append(("retry-after-ms", str(round(wait * 1000))))
        return headers

    # ---- requests

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> MockResponse:
        """Answer one request (``headers`` are read only for the API key)."""
        route = path.split("?", 1)[0]
        if route == STATS_PATH and method.upper() == "GET":
            self.stats.current_cap = self.cap_at(self.elapsed())
            return _json_response(200, [], self.stats.snapshot())

        stats = self.stats
        stats.requests += 1
        request_id = f"req_mock_{next(self._ids)}"
        elapsed = self.elapsed()
        cap = self.cap_at(elapsed)
        stats.current_cap = cap

        outage = self.outage_at(elapsed)
        if outage is not None:
            stats.outage += 1
            _bump(stats.outage_by_kind, outage.kind)
            if outage.kind == "reset":
                return MockResponse(0, [], b"", fault="close")
            if outage.kind == "refuse":
                return MockResponse(0, [], b"", fault="refuse")
            await trio.sleep(OUTAGE_DELAY_S)
            return _server_error(int(outage.kind), [("x-request-id", request_id)])
        if not self._authorized(headers):
            stats.unauthorized += 1
            return _unauthorized(request_id)
        if self._storm_hits(elapsed):
            self._count_fault("storm")
            await trio.sleep(OUTAGE_DELAY_S)
            status = self._fault_rng.choice(_STORM_STATUSES)
            return _server_error(status, [("x-request-id", request_id)])
        fault = self._draw_fault()
        if fault in ("close", "hang"):
            self._count_fault(fault)
            return MockResponse(0, [], b"", fault=fault)

        in_service = stats.in_service + 1
        reason: str | None = None
        wait = self.settings.retry_after
        cost = 0
        if cap is not None and in_service > cap:
            reason = "concurrency"
            stats.rate_limited_concurrency += 1
        else:
            self._refill()
            if self.settings.rate is not None and self._tokens < 1.0 - _EPS:
                reason = "rate"
                stats.rate_limited_rate += 1
            elif (tpm := self.settings.tpm) is not None:
                cost = token_cost(body)
                self._refill_tpm()
                if cost > tpm:
                    reason = "too_large"
                    stats.tokens_too_large += 1
                elif self._tpm_tokens + _EPS < cost:
                    reason = "tokens"
                    stats.tokens_limited += 1
                    wait = (cost - self._tpm_tokens) * TPM_WINDOW_S / tpm
        if reason is not None:
            stats.rate_limited += 1
            return self._too_many(cap, request_id, reason, wait, cost)
        if self.settings.rate is not None:
            self._tokens = max(0.0, self._tokens - 1.0)
        if self.settings.tpm is not None:
            self._tpm_tokens = max(0.0, self._tpm_tokens - cost)
            stats.tokens_used += cost

        stats.in_service = in_service
        stats.max_in_service = max(stats.max_in_service, in_service)
        try:
            await trio.sleep(self._service_time(in_service))
            extra = [("x-request-id", request_id), *self._limit_headers(cap)]
            if self.settings.error_rate > 0 and self._rng.random() < self.settings.error_rate:
                stats.errors += 1
                return _server_error(500, extra)
            completion = self._completion(body, request_id)
            if fault is not None:
                self._count_fault(fault)
                return _faulty(fault, extra, completion)
            stats.ok += 1
            return _json_response(200, extra, completion)
        finally:
            stats.in_service -= 1

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        key = self.settings.auth_key
        if key is None:
            return True
        expected = key.encode()
        value = _header(headers, "authorization")
        if value is not None:
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
                return True
        if self.settings.header_style == "anthropic":
            value = _header(headers, "x-api-key")
            if value is not None and hmac.compare_digest(value.strip().encode(), expected):
                return True
        return False

    def _storm_hits(self, elapsed: float) -> bool:
        if self._storm is None or not self.in_storm(elapsed):
            return False
        return self._storm >= 1.0 or self._fault_rng.random() < self._storm

    def _draw_fault(self) -> str | None:
        if not self._draws:
            return None
        draw = self._fault_rng.random()
        for fault in self._draws:
            if draw < fault.probability:
                return fault.kind
            draw -= fault.probability
        return None

    def _count_fault(self, kind: str) -> None:
        self.stats.faults += 1
        _bump(self.stats.faults_by_kind, kind)

    def _service_time(self, in_service: int) -> float:
        settings = self.settings
        seconds = settings.latency
        if settings.jitter > 0:
            seconds += self._rng.uniform(-settings.jitter, settings.jitter)
        seconds = max(0.0, seconds)
        if settings.knee is not None and in_service > settings.knee:
            seconds *= 1.0 + settings.knee_slope * (in_service - settings.knee)
        return seconds

    def _too_many(
        self, cap: int | None, request_id: str, reason: str, wait: float, cost: int
    ) -> MockResponse:
        retry = [] if reason == "too_large" else self._retry_headers(wait)
        headers = [*retry, ("x-request-id", request_id), *self._limit_headers(cap)]
        code = "rate_limit_exceeded"
        tpm = self.settings.tpm
        if reason == "rate":
            message = f"Rate limit reached for requests: limit {self.settings.rate:g} per second."
        elif reason == "tokens":
            used = max(0, (tpm or 0) - math.floor(self._tpm_tokens + _EPS))
            message = (
                f"Rate limit reached for tokens per min (TPM): Limit {tpm}, Used {used}, "
                f"Requested {cost}. Please try again in {wait:.3f}s."
            )
        elif reason == "too_large":
            code = "request_too_large"
            message = (
                f"Request too large for tokens per min (TPM): Limit {tpm}, Requested {cost}. "
                "The input or output tokens must be reduced."
            )
        else:
            message = f"Rate limit reached: too many requests in service (limit {cap})."
        message += (
            " (mock)" if reason in ("tokens", "too_large") else " Please try again later (mock)."
        )
        error = {
            "message": message,
            "type": "rate_limit_error",
            "param": None,
            "code": code,
        }
        return _json_response(429, headers, {"error": error})

    def _completion(self, body: bytes, request_id: str) -> dict[str, Any]:
        model = "mock-model"
        try:
            request = json.loads(body) if body else None
        except (ValueError, RecursionError):
            request = None
        if isinstance(request, dict) and isinstance(request.get("model"), str):
            model = request["model"]
        prompt_tokens = max(1, len(body) // 4)
        return {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _REPLY},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": _REPLY_TOKENS,
                "total_tokens": prompt_tokens + _REPLY_TOKENS,
            },
        }


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


def _json_response(
    status: int, headers: list[tuple[str, str]], payload: dict[str, Any]
) -> MockResponse:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return MockResponse(status, [("content-type", "application/json"), *headers], body)


def _server_error(status: int, headers: list[tuple[str, str]]) -> MockResponse:
    """A 500 or 503 in OpenAI's JSON, a 502 as a proxy's HTML page."""
    if status == 502:
        return MockResponse(502, [("content-type", "text/html"), *headers], _BAD_GATEWAY_HTML)
    if status == 503:
        message = "The engine is currently overloaded, please try again later (mock)."
    else:
        message = "The server had an error while processing your request (mock)."
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    return _json_response(status, headers, {"error": error})


def _unauthorized(request_id: str) -> MockResponse:
    error = {
        "message": "Incorrect or missing API key (mock).",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    headers = [("www-authenticate", 'Bearer realm="mock"'), ("x-request-id", request_id)]
    return _json_response(401, headers, {"error": error})


def _faulty(fault: str, headers: list[tuple[str, str]], completion: dict[str, Any]) -> MockResponse:
    """What would have been a 200 with ``completion``, spoilt by ``fault``."""
    good = _json_response(200, headers, completion)
    if fault == "malformed":  # cut in the middle: never valid JSON
        return dataclasses.replace(good, body=good.body[: len(good.body) // 2])
    if fault == "wrong-type":
        return MockResponse(200, [("content-type", "text/html; charset=utf-8"), *headers],
                            _WRONG_TYPE_HTML)  # fmt: skip
    if fault == "huge":
        return dataclasses.replace(
            good,
            body=b"",
            stream=functools.partial(_huge_body, completion, HUGE_BODY_BYTES),
            stream_length=HUGE_BODY_BYTES,
        )
    return dataclasses.replace(good, fault=fault)  # reset, trickle: up to the transport


def _huge_body(completion: dict[str, Any], size: int) -> Iterator[bytes]:
    """A valid chat completion of exactly ``size`` bytes (its reply padded with ``a``)."""
    marker = "\x00PAD\x00"
    payload = {**completion, "choices": [{**completion["choices"][0]}]}
    payload["choices"][0]["message"] = {"role": "assistant", "content": marker}
    text = json.dumps(payload, separators=(",", ":"))
    prefix, suffix = (part.encode() for part in text.split(json.dumps(marker)[1:-1], 1))
    padding = size - len(prefix) - len(suffix)
    yield prefix
    filler = b"a" * _CHUNK_SIZE
    while padding > 0:
        chunk = filler[: min(padding, _CHUNK_SIZE)]
        padding -= len(chunk)
        yield chunk
    yield suffix


# -------------------------------------------------------------------- transports


def _read_timeout(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        value = timeout.get("read")
        if isinstance(value, int | float):
            return float(value)
    return None


class _MockBody(httpx.AsyncByteStream):
    """The body of a streamed, trickled or reset answer, for :func:`mock_transport`."""

    def __init__(self, answer: MockResponse, request: httpx.Request) -> None:
        self._answer = answer
        self._request = request
        self._chunks: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._chunks = self._generate()
        return self._chunks

    async def aclose(self) -> None:
        if self._chunks is not None:
            await self._chunks.aclose()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        answer = self._answer
        if answer.fault == "reset":
            yield answer.body[: len(answer.body) // 2]
            raise httpx.ReadError(
                "[Errno 104] Connection reset by peer (mock)", request=self._request
            )
        if answer.fault == "trickle":
            read_timeout = _read_timeout(self._request)
            for index in range(len(answer.body)):
                if read_timeout is not None and read_timeout < TRICKLE_INTERVAL_S:
                    await trio.sleep(read_timeout)
                    raise httpx.ReadTimeout("timed out (mock trickle)", request=self._request)
                await trio.sleep(TRICKLE_INTERVAL_S)
                yield answer.body[index : index + 1]
            return
        for chunk in answer.iter_body():
            yield chunk


async def _to_httpx(answer: MockResponse, request: httpx.Request) -> httpx.Response:
    fault = answer.fault
    if fault == "refuse":
        raise httpx.ConnectError("[Errno 111] Connection refused (mock outage)", request=request)
    if fault == "close":
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response (mock).", request=request
        )
    if fault == "hang":
        timeout = _read_timeout(request)
        if timeout is None:
            await trio.sleep_forever()
        await trio.sleep(timeout)
        raise httpx.ReadTimeout("timed out (mock hang)", request=request)
    if fault is None and answer.stream is None:
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)
    headers = [*answer.headers, ("content-length", str(answer.content_length))]
    return httpx.Response(answer.status, headers=headers, stream=_MockBody(answer, request))


def mock_transport(upstream: MockUpstream) -> httpx.MockTransport:
    """An ``httpx.MockTransport`` that answers through ``upstream.handle``.

    Socket faults become httpx exceptions: ``refuse`` → ``ConnectError``,
    ``close`` (and outage ``reset``) → ``RemoteProtocolError``, ``reset`` →
    ``ReadError`` after half the body, ``hang`` → ``ReadTimeout`` after the
    request's read timeout (never, without one); ``trickle`` sleeps
    :data:`TRICKLE_INTERVAL_S` before each byte (``ReadTimeout`` when the read
    timeout is shorter).
    """

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        answer = await upstream.handle(
            request.method, request.url.raw_path.decode("ascii"), request.headers, body
        )
        return await _to_httpx(answer, request)

    return httpx.MockTransport(handler)


@functools.cache
def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


class _ConnectionDone(Exception):
    """The peer closed, went idle too long, or broke the protocol (answered)."""


async def _send(stream: trio.SocketStream, conn: h11.Connection, *events: h11.Event) -> None:
    data = b"".join(conn.send(event) or b"" for event in events)
    await stream.send_all(data)


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Event):
            return event
        if event is h11.PAUSED:  # not reached: we never read past one request
            raise _ConnectionDone
        conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))


async def _send_simple(
    stream: trio.SocketStream, conn: h11.Connection, status: int, message: str
) -> None:
    """Answer an error and close (only when a response may still be sent)."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
    with contextlib.suppress(h11.LocalProtocolError):
        await _send(stream, conn, response, h11.Data(data=body), h11.EndOfMessage())
    # Close gently: a close with unread input would reset the connection, and the
    # peer could lose the answer. Half-close, then drain briefly.
    await stream.send_eof()
    with trio.move_on_after(1.0):
        while await stream.receive_some(_RECEIVE_SIZE):
            pass


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request, bytes]:
    """Read one whole request; raise _ConnectionDone when there is none to serve."""
    try:
        event = await _next_event(stream, conn)
        if not isinstance(event, h11.Request):  # ConnectionClosed
            raise _ConnectionDone
        if conn.they_are_waiting_for_100_continue:
            await _send(stream, conn, h11.InformationalResponse(status_code=100, headers=[]))
        chunks: list[bytes] = []
        size = 0
        while True:
            part = await _next_event(stream, conn)
            if isinstance(part, h11.Data):
                size += len(part.data)
                if size > MAX_BODY_BYTES:
                    await _send_simple(stream, conn, 413, "request body too large")
                    raise _ConnectionDone
                chunks.append(bytes(part.data))
            elif isinstance(part, h11.EndOfMessage):
                return event, b"".join(chunks)
            else:
                raise _ConnectionDone
    except h11.RemoteProtocolError as exc:
        status = exc.error_status_hint if 400 <= exc.error_status_hint < 600 else 400
        await _send_simple(stream, conn, status, f"malformed HTTP request: {exc}")
        raise _ConnectionDone from None


@dataclass(slots=True)
class _Server:
    upstream: MockUpstream
    log_requests: bool
    idle: set[trio.CancelScope] = field(default_factory=set)

    def drop_idle(self) -> None:
        """Close every connection that waits for its next request."""
        for scope in self.idle:
            scope.cancel()


async def _wait_until_closed(stream: trio.SocketStream) -> None:
    with trio.move_on_after(HANG_MAX_S):
        while await stream.receive_some(_RECEIVE_SIZE):
            pass


def _reset_on_close(stream: trio.SocketStream) -> None:
    """Make the coming close send a TCP RST rather than a FIN."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _send_answer(
    stream: trio.SocketStream, conn: h11.Connection, answer: MockResponse, method: str
) -> bool:
    """Send ``answer`` (or misbehave as it says); False when the connection must close."""
    fault = answer.fault
    if fault in ("close", "refuse"):
        return False
    if fault == "hang":
        await _wait_until_closed(stream)
        return False
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    headers.append((b"content-length", str(answer.content_length).encode()))
    head = h11.Response(status_code=answer.status, headers=headers, reason=_reason(answer.status))
    if fault == "reset":
        partial = b"" if method == "HEAD" else answer.body[: len(answer.body) // 2]
        await _send(stream, conn, head, h11.Data(data=partial))
        await trio.sleep(RESET_PAUSE_S)
        _reset_on_close(stream)
        return False
    if method == "HEAD":
        await _send(stream, conn, head, h11.EndOfMessage())
    elif fault == "trickle":
        await _send(stream, conn, head)
        for index in range(len(answer.body)):
            await trio.sleep(TRICKLE_INTERVAL_S)
            await _send(stream, conn, h11.Data(data=answer.body[index : index + 1]))
        await _send(stream, conn, h11.EndOfMessage())
    elif answer.stream is not None:
        await _send(stream, conn, head)
        for chunk in answer.iter_body():
            await _send(stream, conn, h11.Data(data=chunk))
        await _send(stream, conn, h11.EndOfMessage())
    else:
        await _send(stream, conn, head, h11.Data(data=answer.body), h11.EndOfMessage())
    return True


async def _serve_connection(stream: trio.SocketStream, server: _Server) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    try:
        while True:
            received: tuple[h11.Request, bytes] | None = None
            with trio.move_on_after(IDLE_TIMEOUT_S) as idle:
                server.idle.add(idle)
                try:
                    received = await _read_request(stream, conn)
                finally:
                    server.idle.discard(idle)
            if received is None:  # idle (or too slow) for IDLE_TIMEOUT_S, or dropped
                return
            request, body = received
            started = trio.current_time()
            headers = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers
            }
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            try:
                answer = await server.upstream.handle(method, target, headers, body)
            except Exception as exc:  # a bug in the mock must not kill the server
                answer = _json_response(
                    500, [], {"error": {"message": f"mock internal error: {exc!r}"}}
                )
            keep_going = await _send_answer(stream, conn, answer, method)
            if server.log_requests:
                _log_request(method, target, headers, answer, started)
            if not keep_going:
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (_ConnectionDone, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        return
    except h11.LocalProtocolError:
        return
    finally:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(stream)


def _log_request(
    method: str, target: str, headers: Mapping[str, str], answer: MockResponse, started: float
) -> None:
    socket_fault = answer.fault in ("close", "refuse", "hang")
    line = {
        "timestamp": _now_iso(),
        "level": "info",
        "event": "mock_api.request",
        "method": method,
        "path": target,
        "status": None if socket_fault else answer.status,
        "duration_ms": round((trio.current_time() - started) * 1000, 3),
        "authorization": "present" if "authorization" in headers else "absent",
    }
    if answer.fault is not None:
        line["fault"] = answer.fault
    print(json.dumps(line), flush=True)


async def _listen_again(
    addresses: list[tuple[socket.AddressFamily, Any]],
) -> list[trio.SocketListener]:
    """Listen again on the very addresses of closed listeners (same ports)."""
    deadline = trio.current_time() + _REBIND_TIMEOUT_S
    while True:
        listeners: list[trio.SocketListener] = []
        try:
            for family, sockaddr in addresses:
                sock = trio.socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    await sock.bind(sockaddr)
                    sock.listen(_BACKLOG)
                except BaseException:
                    sock.close()
                    raise
                listeners.append(trio.SocketListener(sock))
            return listeners
        except OSError as exc:
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            if exc.errno != errno.EADDRINUSE or trio.current_time() >= deadline:
                raise
            await trio.sleep(0.05)


async def serve(
    upstream: MockUpstream,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_requests: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``upstream`` over HTTP/1.1 (keep-alive) until cancelled.

    Reports the bound port with ``task_status.started(port)`` (useful with
    ``port=0``). With ``log_requests``, prints one JSON line per request (it
    never prints header values). During ``refuse`` outages the listening
    sockets are closed (connections are refused) and idle connections dropped;
    afterwards it listens again on the same port.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:  # each address got its own random port
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_port: int = listeners[0].socket.getsockname()[1]
    upstream.start()
    server = _Server(upstream, log_requests)
    handler = functools.partial(_serve_connection, server=server)
    task_status.started(bound_port)
    windows = upstream.refuse_windows()
    if not windows:
        await trio.serve_listeners(handler, listeners)
        return
    addresses = [(listener.socket.family, listener.socket.getsockname()) for listener in listeners]
    async with trio.open_nursery() as connections:
        for start, end in windows:
            if end <= upstream.elapsed():
                continue
            wait = start - upstream.elapsed()
            if wait > 0:  # serve_listeners closes the listeners when cancelled
                with trio.move_on_after(wait):
                    await trio.serve_listeners(handler, listeners, handler_nursery=connections)
            for listener in listeners:
                await trio.aclose_forcefully(listener)
            server.drop_idle()
            await trio.sleep(max(0.0, end - upstream.elapsed()))
            listeners = await _listen_again(addresses)
        await trio.serve_listeners(handler, listeners, handler_nursery=connections)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mock-api flags to ``parser``."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add(
        "--port", type=int, default=8000, help="port to listen on, 0 for any (default: %(default)s)"
    )
    add(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="hidden cap: requests in service past N get 429 with Retry-After",
    )
    add(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="requests per second past R get 429 (token bucket, burst R)",
    )
    add(
        "--latency",
        type=float,
        default=0.05,
        metavar="S",
        help="service time in seconds (default: %(default)s)",
    )
    add(
        "--jitter",
        type=float,
        default=0.0,
        metavar="S",
        help="uniform ± jitter on the latency, seconds (default: %(default)s)",
    )
    add(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a 500 (default: %(default)s)",
    )
    add(
        "--schedule",
        default=None,
        metavar="T:N,...",
        help="concurrency cap over time, e.g. '0:20,6:5,12:40' (seconds since start:cap)",
    )
    add(
        "--knee",
        type=int,
        default=None,
        metavar="K",
        help="past K requests in service latency grows (never a 429)",
    )
    add(
        "--knee-slope",
        type=float,
        default=0.1,
        metavar="F",
        help="latency × (1 + F × (in_service - K)) past the knee (default: %(default)s)",
    )
    add(
        "--header-style",
        choices=HEADER_STYLES,
        default="openai",
        help="rate-limit headers to send (default: %(default)s)",
    )
    add(
        "--retry-after",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds announced in Retry-After on a 429 of the concurrency or rate cap"
        " (default: %(default)s)",
    )
    add("--seed", type=int, default=None, help="random seed for jitter, errors and faults")
    add(
        "--tpm",
        type=int,
        default=None,
        metavar="N",
        help="tokens per minute: a bucket of N tokens refilled continuously (N/60 per s);"
        " a request costs max_tokens (default 16) + ceil(message chars / 4); past it 429",
    )
    add(
        "--outage",
        action="append",
        default=None,
        metavar="START:END[:KIND]",
        help="outage window in seconds since start (repeatable, or comma-separated);"
        " KIND: 500, 502, 503 (default), reset (closed without answer)"
        " or refuse (listening socket closed)",
    )
    add(
        "--fault",
        action="append",
        default=None,
        metavar="KIND[:P]",
        help="a fault for a share P (default 1) of requests (repeatable): reset, hang,"
        " trickle, malformed, huge, wrong-type, close, storm (5xx runs of 1 s every 5 s)",
    )
    add(
        "--auth-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (else 401); the key is never logged",
    )
    add("--log", action="store_true", help="print one JSON line per request")


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    """Build :class:`MockSettings` from parsed flags; raises ValueError on bad values."""
    schedule = parse_schedule(args.schedule) if args.schedule is not None else ()
    outage_items: list[str] | None = getattr(args, "outage", None)
    fault_items: list[str] | None = getattr(args, "fault", None)
    return MockSettings(
        concurrency=args.concurrency,
        rate=args.rate,
        latency=args.latency,
        jitter=args.jitter,
        error_rate=args.error_rate,
        schedule=schedule,
        knee=args.knee,
        knee_slope=args.knee_slope,
        header_style=args.header_style,
        retry_after=args.retry_after,
        seed=args.seed,
        tpm=getattr(args, "tpm", None),
        outages=parse_outages(",".join(outage_items)) if outage_items else (),
        faults=parse_faults(",".join(fault_items)) if fault_items else (),
        auth_key=getattr(args, "auth_key", None),
    )


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _emit(event: str, **fields: Any) -> None:
    line = {"timestamp": _now_iso(), "level": "info", "event": event, **fields}
    print(json.dumps(line), flush=True)


async def _run_async(settings: MockSettings, host: str, port: int, log_requests: bool) -> int:
    upstream = MockUpstream(settings)
    listen_error: str | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    functools.partial(serve, upstream, host, port, log_requests=log_requests)
                )
                _emit("mock_api.listening", host=host, port=bound, **settings.as_dict())
                async for signum in signals:
                    _emit("mock_api.stopping", signal=signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
        except* OSError as group:
            listen_error = str(group.exceptions[0])
    if listen_error is not None:
        print(f"mock-api: cannot listen on {host}:{port}: {listen_error}", file=sys.stderr)
        return 1
    _emit("mock_api.stopped", **upstream.stats.snapshot())
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the mock API from parsed flags until SIGINT/SIGTERM; return the exit code."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"mock-api: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"mock-api: port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    return trio.run(_run_async, settings, args.host, args.port, bool(args.log))


def main(argv: list[str] | None = None) -> int:
    """``python -m pacer.mockapi [flags]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pacer.mockapi",
        description="A local rate-limited, OpenAI-like HTTP API for trying pacer.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
