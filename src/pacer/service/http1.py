"""A lean HTTP/1.1 transport for httpx: Trio streams, answers parsed by httptools.

httpx's default transport (httpcore's pool over h11) spends about two thirds of
pacer's CPU per request: a pool walk, h11's pure-Python state machine and
validation, two socket sends per request, several wrapper layers per body chunk.
This transport keeps httpx's API (it is an :class:`httpx.AsyncBaseTransport`, the
documented extension point) and replaces only the connection layer:

* a pool of kept-alive connections per origin, most recently used first (a stack:
  O(1) per request), at most ``max_connections`` requests at once (more wait, FIFO,
  up to the pool timeout);
* the request written in one ``send_all`` (head and body together);
* the answer parsed by httptools (llhttp, the parser uvicorn uses): content-length,
  chunked and read-until-close bodies, 1xx interim answers skipped, keep-alive as
  the answer says;
* a connection is reused only after its answer was read whole and the server kept
  it alive; an idle one is dropped when the server closed it (it turned readable)
  or it has been idle for ``keepalive_expiry``;
* failures raise the httpx exceptions httpcore raises for them (``ConnectError``,
  ``ConnectTimeout``, ``ReadError``, ``ReadTimeout``, ``WriteError``,
  ``WriteTimeout``, ``PoolTimeout``, ``RemoteProtocolError``, ``LocalProtocolError``),
  so the edge translates them the same way.

HTTP/2 is not spoken here: ``http2 = true`` keeps httpx's own transport.
"""

from __future__ import annotations

import math
import re
import select
import ssl
from collections import deque
from collections.abc import AsyncIterator

import httptools
import httpx
import trio

from pacer.service import wire_time
from pacer.service.wire_time import StampedStream, WireTiming

__all__ = ["WIRE_TIMING", "Http1Transport"]

# The response extension holding its :class:`~pacer.service.wire_time.WireTiming`
# (Linux, plain TCP and TLS; else None): the upstream's own time, once the body is read.
WIRE_TIMING = "pacer.wire_timing"

_READ_SIZE = 64 * 1024
# An answer's status line and headers, at most (h11 allows 16 KiB by default;
# llhttp sets no bound of its own): a server sending headers without end must not
# fill the memory before the deadline.
MAX_HEAD_BYTES = 256 * 1024
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
# RFC 9110 token: what a header name may hold (h11 checks the same).
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+").fullmatch
_NO_RESPONSE = "Server disconnected without sending a response."
_CUT_BODY = "peer closed connection without sending complete message body"

Origin = tuple[bytes, bytes, int]
_TcpStream = trio.SocketStream | StampedStream


def _timeout(timeouts: dict[str, float | None], key: str) -> float:
    value = timeouts.get(key)
    return math.inf if value is None else value


class _Answer:
    """httptools' callbacks for one answer: what has been parsed so far."""

    __slots__ = (
        "body",
        "complete",
        "extra",
        "framed",
        "head_done",
        "headers",
        "keep_alive",
        "parser",
        "reason",
        "status",
        "timing",
    )

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.body: list[bytes] = []
        self.framed = False  # a content-length or chunked body (else: until close)
        self.extra = False  # bytes after the answer: the connection is not reusable
        self.timing: WireTiming | None = None  # when the connection is stamped

    # -- httptools' callbacks (they must not raise) --

    def on_message_begin(self) -> None:
        if self.head_done:
            self.extra = True

    def on_status(self, data: bytes) -> None:
        self.reason += data

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self.reason, self.headers = b"", []
            return
        if not self.head_done:
            self.status, self.head_done = status, True
            # A body ends at its length or last chunk; otherwise only the close ends
            # it (a transfer coding other than chunked last included, as llhttp reads it).
            self.framed = status in (204, 304) or any(
                key == b"content-length"
                or (key == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked"))
                for key, value in ((n.lower(), v) for n, v in self.headers))

    def on_body(self, data: bytes) -> None:
        if not self.extra:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if self.head_done and not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    def feed(self, data: bytes | bytearray) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # 101 Switching Protocols: not spoken here; the answer ends at its head.
            self.complete, self.keep_alive = True, False
        except httptools.HttpParserError as exc:
            raise httpx.RemoteProtocolError(f"malformed answer: {exc}") from exc


class _Connection:
    """One kept-alive stream to an origin."""

    __slots__ = ("_poll", "idle_since", "stamped", "stream")

    def __init__(self, stream: _TcpStream | trio.SSLStream[_TcpStream]) -> None:
        self.stream = stream
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        sock = tcp.socket
        # The kernel stamps what arrives, for the upstream's own time (Linux).
        self.stamped = tcp if isinstance(tcp, StampedStream) else None
        # Reused connections are checked for readability (the server closed them,
        # or sent something unasked) with one poll of their own.
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)
        self.idle_since = 0.0

    def is_readable(self) -> bool:
        return bool(self._poll.poll(0))

    def close(self) -> None:
        """Close now, without a TLS close_notify (a synchronous close cannot be
        cancelled halfway, and it is what a dropped connection needs)."""
        stream = self.stream
        tcp = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        tcp.socket.close()


class _Body(httpx.AsyncByteStream):
    """The answer's body, read on demand; gives the connection back when closed."""

    def __init__(self, pool: Http1Transport, origin: Origin, conn: _Connection,
                 answer: _Answer, read_timeout: float) -> None:
        self._pool = pool
        self._origin = origin
        self._conn: _Connection | None = conn
        self._answer = answer
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        answer = self._answer
        while True:
            if answer.body:
                chunks, answer.body = answer.body, []
                for chunk in chunks:
                    yield chunk
            if answer.complete or self._conn is None:
                return
            data = await _receive(self._conn, self._read_timeout, answer.timing)
            if not data:
                if answer.framed:
                    raise httpx.RemoteProtocolError(_CUT_BODY)
                answer.complete, answer.keep_alive = True, False  # ends at close
            else:
                answer.feed(data)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            answer = self._answer
            self._pool._give_back(self._origin, conn,
                                  reuse=answer.complete and answer.keep_alive
                                  and not answer.extra)


async def _receive(conn: _Connection, timeout: float,
                   timing: WireTiming | None = None) -> bytes | bytearray:
    with trio.move_on_after(timeout) as scope:
        try:
            data = await conn.stream.receive_some(_READ_SIZE)
            if timing is not None and conn.stamped is not None:
                timing.arrived(conn.stamped)
            return data
        except (trio.BrokenResourceError, OSError) as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        except trio.ClosedResourceError as exc:
            raise httpx.ReadError("connection closed") from exc
    assert scope.cancelled_caught
    raise httpx.ReadTimeout("timed out reading the answer")


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over Trio for :class:`httpx.AsyncClient` (see the module's notes)."""

    def __init__(self, *, max_connections: int, ssl_context: ssl.SSLContext | None = None,
                 keepalive_expiry: float = 5.0) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._places = trio.Semaphore(max_connections)
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._idle_count = 0
        self._closed = False

    # -- connections --

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    @property
    def in_flight(self) -> int:
        """Requests that hold a place now (until their body is closed)."""
        return self.max_connections - self._places.value

    def _idle_one(self, origin: Origin) -> _Connection | None:
        """The most recently used live idle connection to ``origin``, if any."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        stale_before = trio.current_time() - self.keepalive_expiry
        while idle and idle[0].idle_since < stale_before:  # the oldest first
            self._idle_count -= 1
            idle.popleft().close()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.is_readable():
                return conn
            conn.close()  # closed by the server (or it sent something unasked)
        return None

    async def _connect(self, origin: Origin, timeout: float) -> _Connection:
        scheme, host, port = origin
        name = host.decode("ascii")
        with trio.move_on_after(timeout):
            try:
                plain = await trio.open_tcp_stream(name.strip("[]"), port)
            except OSError as exc:
                raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
            tcp: _TcpStream = (StampedStream(plain) if wire_time.enable(plain.socket)
                               else plain)
            if scheme != b"https":
                return _Connection(tcp)
            tls = trio.SSLStream(tcp, self._tls(), server_hostname=name.strip("[]"),
                                 https_compatible=True)
            try:
                await tls.do_handshake()
            except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
                tcp.socket.close()
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                raise httpx.ConnectError(str(cause) or type(cause).__name__) from exc
            except BaseException:
                tcp.socket.close()
                raise
            return _Connection(tls)
        raise httpx.ConnectTimeout("timed out connecting")

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
            self._ssl_context.set_alpn_protocols(["http/1.1"])
        return self._ssl_context

    def _give_back(self, origin: Origin, conn: _Connection, *, reuse: bool) -> None:
        self._places.release()
        if not reuse or self._closed:
            conn.close()
            return
        conn.idle_since = trio.current_time()
        self._idle.setdefault(origin, deque()).append(conn)
        self._idle_count += 1
        if self._idle_count > self.max_connections:  # other origins' left-overs
            for idle in self._idle.values():
                if idle:
                    idle.popleft().close()
                    self._idle_count -= 1
                    break

    # -- one exchange --

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported scheme {scheme!r}")
        if not url.raw_host:
            raise httpx.UnsupportedProtocol("a URL without a host")
        origin: Origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _head(request)
        body = request.content if _is_read(request) else await request.aread()
        if request.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"

        await self._take_place(_timeout(timeouts, "pool"))
        try:
            conn = self._idle_one(origin)
            if conn is None:
                conn = await self._connect(origin, _timeout(timeouts, "connect"))
        except BaseException:
            self._places.release()
            raise
        try:
            answer = await self._exchange(conn, head + body, request.method == "HEAD",
                                          _timeout(timeouts, "write"),
                                          _timeout(timeouts, "read"))
        except BaseException:
            self._give_back(origin, conn, reuse=False)
            raise
        return httpx.Response(
            answer.status, headers=answer.headers,
            stream=_Body(self, origin, conn, answer, _timeout(timeouts, "read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": answer.reason,
                        WIRE_TIMING: answer.timing})

    async def _take_place(self, timeout: float) -> None:
        try:
            self._places.acquire_nowait()
        except trio.WouldBlock:
            with trio.move_on_after(timeout):
                await self._places.acquire()
                return
            raise httpx.PoolTimeout("no free connection within the pool timeout") from None

    async def _exchange(self, conn: _Connection, data: bytes, head_only: bool,
                        write_timeout: float, read_timeout: float) -> _Answer:
        with trio.move_on_after(write_timeout) as scope:
            try:
                await conn.stream.send_all(data)
            except (trio.BrokenResourceError, OSError) as exc:
                cause = exc.__cause__ if exc.__cause__ is not None else exc
                raise httpx.WriteError(str(cause) or type(cause).__name__) from exc
        if scope.cancelled_caught:
            raise httpx.WriteTimeout("timed out sending the request")
        answer = _Answer()
        if conn.stamped:
            answer.timing = WireTiming()
        got = 0
        while not answer.head_done and not answer.complete:
            if got > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(
                    f"the answer's head is larger than {MAX_HEAD_BYTES} bytes")
            chunk = await _receive(conn, read_timeout, answer.timing)
            if not chunk:
                if got:
                    raise httpx.RemoteProtocolError(
                        "peer closed connection in the middle of the answer's head")
                raise httpx.RemoteProtocolError(_NO_RESPONSE)
            got += len(chunk)
            answer.feed(chunk)
        if head_only and not answer.complete:
            # A HEAD answer's length headers describe a body that is not sent; the
            # parser cannot know that: the answer ends here, and so does the connection.
            answer.body, answer.complete, answer.keep_alive = [], True, False
        return answer

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle_count = 0


def _is_read(request: httpx.Request) -> bool:
    try:
        _ = request.content
    except httpx.RequestNotRead:
        return False
    return True


_checked_names: set[bytes] = set()


def _head(request: httpx.Request) -> bytes:
    """The request line and headers, checked: no line breaks smuggled in a name,
    a value or the target, names are tokens."""
    raw = request.headers.raw
    for name, value in raw:
        if name not in _checked_names:
            if not _TOKEN(name):
                raise httpx.LocalProtocolError(f"illegal header name {name!r}")
            if len(_checked_names) < 1024:
                _checked_names.add(name)
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise httpx.LocalProtocolError(f"illegal header value for {name!r}")
    method = request.method.encode("ascii", "replace")
    target = request.url.raw_path
    if not _TOKEN(method) or any(c in target for c in b" \r\n\0"):
        raise httpx.LocalProtocolError("illegal request line")
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    lines += [b"%s: %s" % pair for pair in raw]
    lines.append(b"\r\n")
    return b"\r\n".join(lines)

