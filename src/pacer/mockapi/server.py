"""The mock's real HTTP/1.1 server (h11 on Trio sockets), with its socket faults."""

from __future__ import annotations

import contextlib
import datetime
import errno
import functools
import http
import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from pacer.mockapi.answers import MockResponse, _json_response
from pacer.mockapi.behaviour import MockUpstream
from pacer.mockapi.settings import (
    HANG_MAX_S,
    IDLE_TIMEOUT_S,
    MAX_BODY_BYTES,
    RESET_PAUSE_S,
    TRICKLE_INTERVAL_S,
)

_RECEIVE_SIZE = 65536
_BACKLOG = 128
_REBIND_TIMEOUT_S = 5.0


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
    stream: trio.SocketStream, conn: h11.Connection, answer: MockResponse, method: str,
    started: float,
) -> bool:
    """Send ``answer`` (or misbehave as it says); False when the connection must close.
    A ``server-timing: app;dur=MS`` header says how long the mock took from reading
    the request to answering it (its own event loop's delays included): benchmarks
    tell the upstream's latency from their own with it."""
    fault = answer.fault
    if fault in ("close", "refuse"):
        return False
    if fault == "hang":
        await _wait_until_closed(stream)
        return False
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    headers.append((b"content-length", str(answer.content_length).encode()))
    took_ms = (trio.current_time() - started) * 1000.0
    headers.append((b"server-timing", f"app;dur={took_ms:.3f}".encode()))
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
            keep_going = await _send_answer(stream, conn, answer, method, started)
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


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
