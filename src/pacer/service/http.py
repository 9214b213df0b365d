"""The HTTP edge: the upstream's client, and one exchange of a request for an answer.

httpx is used here and nowhere else in the send path; its exceptions are translated
here, once, into a :data:`pacer.control.outcome.TransportFailure` name, so the control
code never sees an HTTP library.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import trio

from pacer.config import UpstreamConfig
from pacer.control.outcome import TransportFailure
from pacer.service.http1 import WIRE_TIMING, Http1Transport
from pacer.spool.jobs import Request

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
# Connections per pool shard. httpcore's pool walks all its connections and queued
# requests on every request and every release: one pool of 600 connections costs
# O(600) per request (18.9 ms of CPU at 600 in flight; 1.8 ms even at 32). Pools
# of one HTTP/1.1 connection each make that walk constant. An HTTP/2 connection
# carries many requests at once, so there a pool holds more places.
SHARD_CONNECTIONS = 1
SHARD_CONNECTIONS_HTTP2 = 32


class ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its pool's place back once, when closed."""

    def __init__(self, inner: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._release is not None:
                self._release()
                self._release = None


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several connection pools behind one transport. Each pool has ``slots``
    places; a request takes the most recently freed place (its connection is the
    warmest) and holds it until its body is closed, so no pool queues while
    another has room, and choosing costs O(1)."""

    def __init__(self, shards: list[httpx.AsyncBaseTransport], slots: int) -> None:
        if not shards or slots < 1:
            raise ValueError("at least one shard of at least one slot")
        self.shards = shards
        self.open = [0] * len(shards)
        # Free places as a stack of shard indexes, the first shards on top.
        self._free = [i for _ in range(slots) for i in reversed(range(len(shards)))]

    def _take(self) -> tuple[int, bool]:
        """A pool for one request, and whether it got a place of its own."""
        if self._free:
            index, placed = self._free.pop(), True
        else:  # more requests than places: queue in the least busy pool
            index, placed = self.open.index(min(self.open)), False
        self.open[index] += 1
        return index, placed

    def _release(self, index: int, placed: bool) -> None:
        self.open[index] -= 1
        if placed:
            self._free.append(index)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index, placed = self._take()
        try:
            response = await self.shards[index].handle_async_request(request)
        except BaseException:
            self._release(index, placed)
            raise
        if response.is_closed:  # answered whole (a mock transport): nothing is held
            self._release(index, placed)
        else:
            assert isinstance(response.stream, httpx.AsyncByteStream)
            response.stream = ReleasingStream(response.stream,
                                               lambda: self._release(index, placed))
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


def build_transport(cfg: UpstreamConfig,
                    shard_connections: int | None = None) -> httpx.AsyncBaseTransport:
    """The upstream's transport, for up to ``max_limit`` requests at once.

    HTTP/1.1 (the default): pacer's lean :class:`~pacer.service.http1.Http1Transport`
    (about half the CPU per request of httpx's default transport). HTTP/2: httpx's
    own transport (httpcore), in pools of at most ``shard_connections`` places (one
    plain pool when that is enough). ``shard_connections`` given for HTTP/1.1 asks
    for httpcore's pools there too (benchmarks compare the two)."""
    if not cfg.http2 and shard_connections is None:
        # Its TLS context is made at its first https connection (loading the CA
        # bundle takes ~30 ms: not at start, and not at all for plain http).
        return Http1Transport(max_connections=cfg.max_limit)
    # One TLS context for all the pools: loading the CA bundle costs ~30 ms each.
    tls = httpx.create_ssl_context(trust_env=False)
    if shard_connections is None:
        shard_connections = SHARD_CONNECTIONS_HTTP2 if cfg.http2 else SHARD_CONNECTIONS
    count = max(1, math.ceil(cfg.max_limit / shard_connections))
    size = math.ceil(cfg.max_limit / count)

    def pool() -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(
            verify=tls,
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
            http2=cfg.http2, trust_env=False)

    return pool() if count == 1 else ShardedTransport([pool() for _ in range(count)], size)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: pacer's requests are independent (and may
    be different users' jobs), so a cookie one answer sets is not sent with the
    others. It also spares a cookie-jar pass per answer (4% of the CPU)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def build_client(cfg: UpstreamConfig, api_key: str | None) -> httpx.AsyncClient:
    """The upstream's one client: pools for the highest limit, no redirects
    (they could lead a request off its upstream), auth header set here only."""
    headers = dict(cfg.headers)
    if api_key:
        headers[cfg.auth_header] = cfg.auth_format.replace("{key}", api_key)
    client = httpx.AsyncClient(
        base_url=cfg.base_url,
        headers=headers,
        timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
        transport=build_transport(cfg),
        follow_redirects=False,
        trust_env=False,
    )
    # The ``cookies`` setter would copy into a plain jar: replace the jar itself.
    client._cookies = _NoCookies()
    return client


# Each client's absolute URLs by request path: jobs send to a few paths, and
# joining a path to base_url (a full URL parse) is 6% of the CPU per request.
_absolute_urls: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[str, httpx.URL]] = (
    weakref.WeakKeyDictionary())
_MAX_CACHED_URLS = 256


def _absolute_url(client: httpx.AsyncClient, path: str) -> httpx.URL:
    urls = _absolute_urls.get(client)
    if urls is None:
        urls = _absolute_urls[client] = {}
    url = urls.get(path)
    if url is None:
        if len(urls) >= _MAX_CACHED_URLS:
            urls.clear()
        url = urls[path] = client.build_request("GET", path).url
    return url


def _decode_body(data: bytes, content_type: str) -> Any:
    if not data:
        return None
    if "json" in content_type or data[:1] in (b"{", b"["):
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            pass
    return data.decode("utf-8", errors="replace")


def transport_failure(exc: httpx.HTTPError) -> TransportFailure:
    """The one translation of httpx's exceptions (a connect timeout is a connection
    failure: the request never reached the upstream)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    return "internal"


async def exchange(client: httpx.AsyncClient, req: Request, timeout: float) -> tuple[
        int | None, httpx.Headers | None, Any, TransportFailure | None, str | None,
        float | None]:
    """Send and read the whole answer, under one deadline (httpx's timeouts are
    per read: a body trickling in byte by byte would never trip them). The last
    value is the upstream's own time as the kernel saw it, when the transport
    measured it (:mod:`pacer.service.wire_time`)."""
    status: int | None = None
    headers: httpx.Headers | None = None
    with trio.move_on_after(timeout) as scope:
        try:
            request = client.build_request(
                req.method, _absolute_url(client, req.url), headers=req.headers,
                json=req.body if req.body is not None else None)
        except (ValueError, UnicodeError, httpx.HTTPError) as exc:
            # Validation should have caught it: final, and says nothing about load.
            return (None, None, None, "invalid_request",
                    f"cannot send: {type(exc).__name__}: {exc}", None)
        try:
            response = await client.send(request, stream=True)
            try:
                status, headers = response.status_code, response.headers
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE_BYTES:
                        return (None, headers, None, "response_too_large",
                                f"response body larger than {MAX_RESPONSE_BYTES} bytes", None)
                timing = response.extensions.get(WIRE_TIMING)
                return (status, headers,
                        _decode_body(bytes(data), headers.get("content-type", "")),
                        None, None, None if timing is None else timing.seconds)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None, None, None, transport_failure(exc), text, None
    assert scope.cancelled_caught
    return None, None, None, "timeout", f"no complete answer within {timeout} s", None
