"""A local rate-limited, OpenAI-like HTTP API: for demos, tests and benchmarks.

The behaviour lives in :class:`MockUpstream`, which knows nothing about sockets:
``handle(method, path, headers, body)`` answers one request. It sleeps with
``trio.sleep`` and reads time from an injectable clock, so it runs the same
under Trio's virtual clock (through :func:`mock_transport`, an
``httpx.MockTransport``) and behind the real HTTP/1.1 server of :func:`serve`.

What it simulates (see :class:`MockSettings`):

* a hidden concurrency cap: a request that arrives while the cap is full gets a
  429 at once, with ``Retry-After``; the cap may follow a schedule over time;
* a rate cap (a token bucket of ``rate`` tokens refilled at ``rate``/s, full at
  start): a request past it gets a 429;
* latency with jitter, and a latency *knee*: past ``knee`` requests in service
  every new request is slower, but never refused;
* random 500s;
* OpenAI's ``x-ratelimit-{limit,remaining,reset}-requests`` headers.

``GET /_mock/stats`` answers the counters of :class:`MockStats`; it is never
counted nor limited. Run it with ``python -m pacer.mockapi --help``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import dataclasses
import datetime
import functools
import http
import itertools
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import httpx
import trio

__all__ = [
    "MockResponse",
    "MockSettings",
    "MockStats",
    "MockUpstream",
    "add_arguments",
    "format_go_duration",
    "main",
    "mock_transport",
    "parse_schedule",
    "run",
    "serve",
    "settings_from_args",
]

STATS_PATH = "/_mock/stats"
HEADER_STYLES = ("openai", "none")
MAX_BODY_BYTES = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 120.0
_RECEIVE_SIZE = 65536
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
    ``header_style``: ``"openai"`` (x-ratelimit-* headers) or ``"none"``.
    ``retry_after``: the delay announced in ``Retry-After`` on a 429.
    ``seed``: seed of the random generator (jitter, errors), for repeatable runs.
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

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (the schedule as a list of ``[t, cap]`` pairs)."""
        data = dataclasses.asdict(self)
        data["schedule"] = [[at, cap] for at, cap in self.schedule]
        return data


# ------------------------------------------------------------------------ stats


@dataclass(slots=True)
class MockStats:
    """Counters of the mock; ``GET /_mock/stats`` answers :meth:`snapshot`."""

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    rate_limited_concurrency: int = 0
    rate_limited_rate: int = 0
    errors: int = 0
    in_service: int = 0
    max_in_service: int = 0
    current_cap: int | None = None

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the counters."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class MockResponse:
    """One answer of :meth:`MockUpstream.handle` (header names are lower case)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

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


# --------------------------------------------------------------------- upstream

_REPLY = "This is a mock reply from pacer's mock API."
_REPLY_TOKENS = len(_REPLY.split())


class MockUpstream:
    """The mock's behaviour, independent of the transport.

    ``clock`` returns seconds (``trio.current_time`` by default, so Trio's
    virtual clock drives it in tests). The schedule counts from :meth:`start`,
    which happens at construction when the clock can be read then (inside
    ``trio.run`` with the default clock), else at the first request, or when
    :func:`serve` starts listening.
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.settings = settings if settings is not None else MockSettings()
        self.stats = MockStats()
        self._clock = clock
        self._rng = random.Random(self.settings.seed)
        self._schedule_times = [at for at, _ in self.settings.schedule]
        self._t0: float | None = None
        self._ids = itertools.count(1)
        self._bucket_size = max(1.0, self.settings.rate) if self.settings.rate else 0.0
        self._tokens = self._bucket_size
        self._bucket_at = 0.0
        with contextlib.suppress(RuntimeError):
            self.start()
        self.stats.current_cap = self.cap_at(0.0)

    # ---- time and limits

    def start(self) -> None:
        """Mark the start of the schedule and of the rate window (once)."""
        if self._t0 is None:
            self._t0 = self._clock()
            self._bucket_at = self._t0

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

    def _refill(self) -> None:
        rate = self.settings.rate
        if rate is None:
            return
        now = self._clock()
        self._tokens = min(self._bucket_size, self._tokens + (now - self._bucket_at) * rate)
        self._bucket_at = now

    def _limit_headers(self, cap: int | None) -> list[tuple[str, str]]:
        if self.settings.header_style != "openai":
            return []
        rate = self.settings.rate
        if rate is not None:
            self._refill()
            limit = math.floor(self._bucket_size + _EPS)
            remaining = max(0, math.floor(self._tokens + _EPS))
            reset = (self._bucket_size - self._tokens) / rate
        elif cap is not None:
            limit = cap
            remaining = max(0, cap - self.stats.in_service)
            reset = 0.0 if remaining > 0 else self.settings.retry_after
        else:
            return []
        return [
            ("x-ratelimit-limit-requests", str(limit)),
            ("x-ratelimit-remaining-requests", str(remaining)),
            ("x-ratelimit-reset-requests", format_go_duration(reset)),
        ]

    # ---- requests

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> MockResponse:
        """Answer one request (``headers`` is not used but kept for the transports)."""
        route = path.split("?", 1)[0]
        if route == STATS_PATH and method.upper() == "GET":
            self.stats.current_cap = self.cap_at(self.elapsed())
            return _json_response(200, [], self.stats.snapshot())

        stats = self.stats
        stats.requests += 1
        request_id = f"req_mock_{next(self._ids)}"
        cap = self.cap_at(self.elapsed())
        stats.current_cap = cap
        in_service = stats.in_service + 1

        reason: str | None = None
        if cap is not None and in_service > cap:
            reason = "concurrency"
            stats.rate_limited_concurrency += 1
        elif self.settings.rate is not None:
            self._refill()
            if self._tokens >= 1.0 - _EPS:
                self._tokens = max(0.0, self._tokens - 1.0)
            else:
                reason = "rate"
                stats.rate_limited_rate += 1
        if reason is not None:
            stats.rate_limited += 1
            return self._too_many(cap, request_id, reason)

        stats.in_service = in_service
        stats.max_in_service = max(stats.max_in_service, in_service)
        try:
            await trio.sleep(self._service_time(in_service))
            extra = [("x-request-id", request_id), *self._limit_headers(cap)]
            if self.settings.error_rate > 0 and self._rng.random() < self.settings.error_rate:
                stats.errors += 1
                error = {
                    "message": "The server had an error while processing your request (mock).",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
                return _json_response(500, extra, {"error": error})
            stats.ok += 1
            return _json_response(200, extra, self._completion(body, request_id))
        finally:
            stats.in_service -= 1

    def _service_time(self, in_service: int) -> float:
        settings = self.settings
        seconds = settings.latency
        if settings.jitter > 0:
            seconds += self._rng.uniform(-settings.jitter, settings.jitter)
        seconds = max(0.0, seconds)
        if settings.knee is not None and in_service > settings.knee:
            seconds *= 1.0 + settings.knee_slope * (in_service - settings.knee)
        return seconds

    def _too_many(self, cap: int | None, request_id: str, reason: str) -> MockResponse:
        wait = self.settings.retry_after
        headers = [
            ("retry-after", str(math.ceil(wait - _EPS))),
            ("retry-after-ms", str(round(wait * 1000))),
            ("x-request-id", request_id),
            *self._limit_headers(cap),
        ]
        if reason == "rate":
            message = f"Rate limit reached for requests: limit {self.settings.rate:g} per second."
        else:
            message = f"Rate limit reached: too many requests in service (limit {cap})."
        error = {
            "message": message + " Please try again later (mock).",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
        return _json_response(429, headers, {"error": error})

    def _completion(self, body: bytes, request_id: str) -> dict[str, Any]:
        model = "mock-model"
        try:
            request = json.loads(body) if body else None
        except ValueError:
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


def _json_response(
    status: int, headers: list[tuple[str, str]], payload: dict[str, Any]
) -> MockResponse:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return MockResponse(status, [("content-type", "application/json"), *headers], body)


# -------------------------------------------------------------------- transports


def mock_transport(upstream: MockUpstream) -> httpx.MockTransport:
    """An ``httpx.MockTransport`` that answers through ``upstream.handle``."""

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        answer = await upstream.handle(
            request.method, request.url.raw_path.decode("ascii"), request.headers, body
        )
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)

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


async def _serve_connection(
    stream: trio.SocketStream, upstream: MockUpstream, log_requests: bool
) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    try:
        while True:
            received: tuple[h11.Request, bytes] | None = None
            with trio.move_on_after(IDLE_TIMEOUT_S):
                received = await _read_request(stream, conn)
            if received is None:  # idle (or too slow) for IDLE_TIMEOUT_S
                return
            request, body = received
            started = trio.current_time()
            headers = {
                name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers
            }
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")
            try:
                answer = await upstream.handle(method, target, headers, body)
            except Exception as exc:  # a bug in the mock must not kill the server
                answer = _json_response(
                    500, [], {"error": {"message": f"mock internal error: {exc!r}"}}
                )
            response_headers = [
                (name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers
            ]
            response_headers.append((b"content-length", str(len(answer.body)).encode()))
            await _send(
                stream,
                conn,
                h11.Response(
                    status_code=answer.status,
                    headers=response_headers,
                    reason=_reason(answer.status),
                ),
                h11.Data(data=b"" if method == "HEAD" else answer.body),
                h11.EndOfMessage(),
            )
            if log_requests:
                _log_request(method, target, headers, answer.status, started)
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
    method: str, target: str, headers: Mapping[str, str], status: int, started: float
) -> None:
    line = {
        "timestamp": _now_iso(),
        "level": "info",
        "event": "mock_api.request",
        "method": method,
        "path": target,
        "status": status,
        "duration_ms": round((trio.current_time() - started) * 1000, 3),
        "authorization": "present" if "authorization" in headers else "absent",
    }
    print(json.dumps(line), flush=True)


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
    never prints header values).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    if port == 0 and len(listeners) > 1:  # each address got its own random port
        for extra in listeners[1:]:
            await extra.aclose()
        listeners = listeners[:1]
    bound_port: int = listeners[0].socket.getsockname()[1]
    upstream.start()
    handler = functools.partial(_serve_connection, upstream=upstream, log_requests=log_requests)
    task_status.started(bound_port)
    await trio.serve_listeners(handler, listeners)


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
        help="seconds announced in Retry-After on a 429 (default: %(default)s)",
    )
    add("--seed", type=int, default=None, help="random seed for jitter and errors")
    add("--log", action="store_true", help="print one JSON line per request")


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    """Build :class:`MockSettings` from parsed flags; raises ValueError on bad values."""
    schedule = parse_schedule(args.schedule) if args.schedule is not None else ()
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
