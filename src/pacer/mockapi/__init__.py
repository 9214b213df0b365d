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
  start; or, with ``rate_window``, a fixed window of ``rate x rate_window``
  requests, all back at its end): a request past it gets a 429;
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

Where each part lives: :mod:`~pacer.mockapi.settings` (what it simulates, and the
parsers of the flags' lists), :mod:`~pacer.mockapi.behaviour` (:class:`MockUpstream`),
:mod:`~pacer.mockapi.answers` (the answer value, counters, canned bodies),
:mod:`~pacer.mockapi.headers` (rate-limit header rendering),
:mod:`~pacer.mockapi.tokens` (a request's token cost),
:mod:`~pacer.mockapi.transport` (the httpx ``MockTransport``),
:mod:`~pacer.mockapi.server` (the h11 server) and :mod:`~pacer.mockapi.cli` (the flags).
"""

from pacer.mockapi.answers import MockResponse, MockStats
from pacer.mockapi.behaviour import MockUpstream
from pacer.mockapi.cli import add_arguments, main, run, settings_from_args
from pacer.mockapi.headers import format_go_duration
from pacer.mockapi.server import serve
from pacer.mockapi.settings import (
    DEFAULT_MAX_TOKENS,
    FAULT_KINDS,
    HANG_MAX_S,
    HEADER_STYLES,
    HUGE_BODY_BYTES,
    IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    OUTAGE_DELAY_S,
    OUTAGE_KINDS,
    RESET_PAUSE_S,
    STATS_PATH,
    STORM_LENGTH_S,
    STORM_PERIOD_S,
    TPM_WINDOW_S,
    TRICKLE_INTERVAL_S,
    Fault,
    MockSettings,
    Outage,
    parse_faults,
    parse_outages,
    parse_schedule,
)
from pacer.mockapi.tokens import token_cost
from pacer.mockapi.transport import mock_transport

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FAULT_KINDS",
    "HANG_MAX_S",
    "HEADER_STYLES",
    "HUGE_BODY_BYTES",
    "IDLE_TIMEOUT_S",
    "MAX_BODY_BYTES",
    "OUTAGE_DELAY_S",
    "OUTAGE_KINDS",
    "RESET_PAUSE_S",
    "STATS_PATH",
    "STORM_LENGTH_S",
    "STORM_PERIOD_S",
    "TPM_WINDOW_S",
    "TRICKLE_INTERVAL_S",
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
