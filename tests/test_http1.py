"""pacer's HTTP/1.1 transport against a scripted server on real loopback sockets.

The server (Trio, raw bytes) reads each request and answers with what the test
scripted for it: well-formed answers of every framing, and the ways answers go
wrong (cut, reset, malformed, silent, closed while idle). Checked each time: what
httpx returns or raises (the same exception classes httpcore raises, so the edge's
translation holds), whether the connection was reused, and that every place in the
pool came back.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme

from pacer.config import UpstreamConfig
from pacer.service import wire_time
from pacer.service.http import build_client, exchange
from pacer.service.http1 import MAX_HEAD_BYTES, WIRE_TIMING, Http1Transport
from pacer.spool.jobs import Request


@dataclass
class Seen:
    """One request as the server read it."""

    conn: int  # which connection (0, 1, ...) it came on
    head: bytes
    body: bytes

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


Stream = trio.abc.Stream
# What the server does with one request: write an answer (raw bytes) and say
# whether to keep reading this connection.
Script = Callable[[Stream, Seen], Awaitable[bool]]


def answer(raw: bytes, keep: bool = True) -> Script:
    async def script(stream: Stream, _seen: Seen) -> bool:
        await stream.send_all(raw)
        return keep

    return script


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"%s\r\n%s" % (len(body), extra, body))


@dataclass
class Server:
    scripts: list[Script]
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def handle(self, stream: Stream) -> None:
        conn = self.connections
        self.connections += 1
        buf = b""
        try:
            if self.tls is not None:
                stream = trio.SSLStream(stream, self.tls, server_side=True)
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                seen = Seen(conn, head, b"")
                length = seen.header(b"content-length")
                if length is not None:
                    while len(buf) < int(length):
                        buf += await stream.receive_some(65536)
                    seen.body, buf = buf[:int(length)], buf[int(length):]
                elif seen.header(b"transfer-encoding") == b"chunked":
                    while b"\r\n0\r\n\r\n" not in buf and not buf.startswith(b"0\r\n\r\n"):
                        buf += await stream.receive_some(65536)
                    raw, _, buf = buf.partition(b"0\r\n\r\n")
                    seen.body = _unchunk(raw)
                self.seen.append(seen)
                script = self.scripts.pop(0)
                if not await script(stream, seen):
                    await stream.aclose()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return


def _unchunk(raw: bytes) -> bytes:
    out = b""
    while raw:
        size, _, raw = raw.partition(b"\r\n")
        n = int(size, 16)
        out, raw = out + raw[:n], raw[n + 2:]
    return out


@pytest.fixture
async def serve(nursery: trio.Nursery) -> Callable[..., Awaitable[Server]]:
    async def start(*scripts: Script, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(list(scripts), tls=tls)
        listeners = await nursery.start(
            partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        return server

    return start


def client_for(server: Server, *, timeout: float = 5.0, max_connections: int = 4,
               verify: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    transport = Http1Transport(max_connections=max_connections, ssl_context=verify)
    return httpx.AsyncClient(base_url=server.url, transport=transport, timeout=timeout)


def transport_of(client: httpx.AsyncClient) -> Http1Transport:
    transport = client._transport
    assert isinstance(transport, Http1Transport)
    return transport


def all_places_back(client: httpx.AsyncClient) -> None:
    assert transport_of(client).in_flight == 0


# ------------------------------------------------------------ well-formed answers


async def test_content_length_answers_reuse_one_connection(serve: Any) -> None:
    server = await serve(*[answer(ok(b'{"n": %d}' % i)) for i in range(3)])
    async with client_for(server) as client:
        for i in range(3):
            r = await client.post("/v1/x", json={"i": i})
            assert (r.status_code, r.json()) == (200, {"n": i})
            assert r.reason_phrase == "OK" and r.http_version == "HTTP/1.1"
        all_places_back(client)
    assert [s.conn for s in server.seen] == [0, 0, 0]
    first = server.seen[0]
    assert first.line == b"POST /v1/x HTTP/1.1"
    assert json.loads(first.body) == {"i": 0}
    assert first.header(b"host") == b"127.0.0.1:%d" % server.port
    assert first.header(b"content-type") == b"application/json"


async def test_chunked_answer_split_across_writes(serve: Any) -> None:
    async def script(stream: Stream, _seen: Seen) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel")
        await trio.sleep(0.01)
        await stream.send_all(b"lo\r\n6\r\n world\r\n0\r\n\r\n")
        return True

    server = await serve(script, answer(ok()))
    async with client_for(server) as client:
        r = await client.get("/a")
        assert r.content == b"hello world"
        assert (await client.get("/b")).json() == {"ok": True}
        all_places_back(client)
    assert [s.conn for s in server.seen] == [0, 0]


@pytest.mark.parametrize("head", [b"HTTP/1.1 200 OK\r\n",
                                  b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n"],
                         ids=["no-length", "not-chunked"])
async def test_body_until_close_is_read_whole_and_the_connection_not_reused(
        serve: Any, head: bytes) -> None:
    server = await serve(answer(head + b"\r\nuntil the end", keep=False), answer(ok()))
    async with client_for(server) as client:
        assert (await client.get("/a")).content == b"until the end"
        assert (await client.get("/b")).status_code == 200
        all_places_back(client)
    assert [s.conn for s in server.seen] == [0, 1]


@pytest.mark.parametrize("raw", [
    ok(extra=b"connection: close\r\n"),
    b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
], ids=["connection-close", "http-1.0"])
async def test_an_answer_that_ends_the_connection_is_not_reused(serve: Any,
                                                                raw: bytes) -> None:
    server = await serve(answer(raw, keep=False), answer(ok()))
    async with client_for(server) as client:
        assert (await client.get("/a")).status_code == 200
        assert (await client.get("/b")).status_code == 200
    assert [s.conn for s in server.seen] == [0, 1]


async def test_interim_answers_are_skipped(serve: Any) -> None:
    server = await serve(answer(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + ok()),
                         answer(ok(b"2")))
    async with client_for(server) as client:
        r = await client.get("/a")
        assert (r.status_code, r.json(), r.headers.get("link")) == (200, {"ok": True}, None)
        assert (await client.get("/b")).content == b"2"
    assert [s.conn for s in server.seen] == [0, 0]


async def test_no_body_answers(serve: Any) -> None:
    server = await serve(answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
                         answer(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
                         answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"),
                         answer(ok()))
    async with client_for(server) as client:
        assert (await client.delete("/a")).content == b""
        assert (await client.get("/b")).status_code == 304
        # HEAD: the length describes a body that is not sent.
        head = await client.head("/c")
        assert (head.status_code, head.content, head.headers["content-length"]) == (
            200, b"", "10")
        assert (await client.get("/d")).json() == {"ok": True}
        all_places_back(client)
    # The HEAD answer's connection is not trusted again.
    assert [s.conn for s in server.seen] == [0, 0, 0, 1]
    assert server.seen[2].line == b"HEAD /c HTTP/1.1"


async def test_gzip_answers_are_decoded_by_httpx(serve: Any) -> None:
    packed = gzip.compress(b'{"zipped": 1}')
    server = await serve(answer(ok(packed, extra=b"content-encoding: gzip\r\n")))
    async with client_for(server) as client:
        assert (await client.get("/a")).json() == {"zipped": 1}


async def test_a_streamed_request_body_is_sent_chunked(serve: Any) -> None:
    server = await serve(answer(ok()))

    async def parts() -> AsyncIterator[bytes]:
        yield b"first,"
        yield b"second"

    async with client_for(server) as client:
        assert (await client.post("/a", content=parts())).status_code == 200
    assert server.seen[0].header(b"transfer-encoding") == b"chunked"
    assert server.seen[0].body == b"first,second"


async def test_a_large_answer_arrives_whole(serve: Any) -> None:
    big = b"x" * (3 * 1024 * 1024 + 7)
    server = await serve(answer(ok(big)), answer(ok()))
    async with client_for(server) as client:
        assert (await client.get("/a")).content == big
        assert (await client.get("/b")).status_code == 200
    assert [s.conn for s in server.seen] == [0, 0]


async def test_tls(serve: Any) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    server = await serve(answer(ok(b"1")), answer(ok(b"2")), tls=server_ctx)
    async with client_for(server, verify=trusting) as client:
        assert (await client.get("/a")).content == b"1"
        assert (await client.get("/b")).content == b"2"
    assert [s.conn for s in server.seen] == [0, 0]
    # A client that does not trust the certificate cannot connect.
    server.scripts.append(answer(ok()))
    async with client_for(server) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get("/c")
        all_places_back(client)


# ------------------------------------------------------------ answers gone wrong


async def close_at_once(stream: Stream, _seen: Seen) -> bool:
    return False


async def reset(stream: Stream, _seen: Seen) -> bool:
    sock = stream.socket  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return False


async def hang(stream: Stream, _seen: Seen) -> bool:
    await trio.sleep_forever()
    return False


@pytest.mark.parametrize(("script", "error", "words"), [
    (close_at_once, httpx.RemoteProtocolError, "disconnected without sending a response"),
    (reset, httpx.ReadError, "reset"),
    (answer(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part", keep=False),
     httpx.RemoteProtocolError, "without sending complete message body"),
    (answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\npart", keep=False),
     httpx.RemoteProtocolError, "without sending complete message body"),
    (answer(b"HTTP/1.1 200 OK\r\ncontent-le", keep=False),
     httpx.RemoteProtocolError, "middle of the answer's head"),
    (answer(b"HTTP/1.1 2x0 OK\r\n\r\n", keep=False), httpx.RemoteProtocolError, "malformed"),
    (answer(b"SMTP ready\r\n\r\n", keep=False), httpx.RemoteProtocolError, "malformed"),
    (answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            keep=False), httpx.RemoteProtocolError, "malformed"),
    (hang, httpx.ReadTimeout, "timed out"),
    (answer(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"y" * MAX_HEAD_BYTES + b"\r\n",
            keep=False), httpx.RemoteProtocolError, "head is larger than"),
], ids=["closed", "reset", "cut-length", "cut-chunked", "cut-head", "bad-status",
        "not-http", "two-lengths", "silent", "endless-head"])
async def test_faults_raise_what_httpcore_raises(serve: Any, script: Script,
                                                 error: type[Exception], words: str) -> None:
    server = await serve(script, answer(ok()))
    async with client_for(server, timeout=0.3) as client:
        with pytest.raises(error, match=words):
            r = await client.get("/fault")
            await r.aread()
        all_places_back(client)
        # The next request gets a new connection and its answer.
        assert (await client.get("/next")).json() == {"ok": True}
    assert [s.conn for s in server.seen] == [0, 1]


async def test_edge_translation_of_faults(serve: Any) -> None:
    """Through ``exchange``: the failure names the control code sees."""
    server = await serve(reset, close_at_once, hang, answer(ok()))
    cfg = UpstreamConfig(name="u", base_url=server.url, max_limit=4, adaptive=False,
                         timeout=0.3)
    client = build_client(cfg, None)
    req = Request(custom_id="c", method="POST", url="/v1/x", upstream="u", body={"a": 1})
    async with client:
        got = [await exchange(client, req, 0.5) for _ in range(4)]
    assert [g[3] for g in got] == ["connection", "connection", "timeout", None]
    assert "reset" in (got[0][4] or "").lower()
    assert "disconnected" in (got[1][4] or "").lower()
    assert (got[3][0], got[3][2]) == (200, {"ok": True})


async def test_connect_refused(nursery: trio.Nursery) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens once it is closed
    transport = Http1Transport(max_connections=2)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")
    assert transport.in_flight == 0


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Any) -> None:
    async def answer_then_close(stream: Stream, seen: Seen) -> bool:
        await stream.send_all(ok())  # says nothing of closing, then closes
        return False

    server = await serve(answer_then_close, answer(ok(b"2")))
    async with client_for(server) as client:
        assert (await client.get("/a")).status_code == 200
        await trio.sleep(0.05)  # the server's FIN arrives
        assert (await client.get("/b")).content == b"2"
    assert [s.conn for s in server.seen] == [0, 1]


async def test_bytes_after_the_answer_make_the_connection_unusable(serve: Any) -> None:
    server = await serve(answer(ok() + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
                         answer(ok(b"2")))
    async with client_for(server) as client:
        assert (await client.get("/a")).json() == {"ok": True}
        assert (await client.get("/b")).content == b"2"
    assert [s.conn for s in server.seen] == [0, 1]


async def test_a_body_closed_unread_drops_its_connection(serve: Any) -> None:
    server = await serve(answer(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x"),
                         answer(ok()))
    async with client_for(server) as client:
        async with client.stream("GET", "/a") as r:
            assert r.status_code == 200
        all_places_back(client)
        assert (await client.get("/b")).status_code == 200
    assert [s.conn for s in server.seen] == [0, 1]


async def test_idle_connections_expire(serve: Any) -> None:
    server = await serve(answer(ok()), answer(ok()))
    async with client_for(server) as client:
        transport_of(client).keepalive_expiry = 0.0
        await client.get("/a")
        await trio.sleep(0.01)
        await client.get("/b")
    assert [s.conn for s in server.seen] == [0, 1]


@pytest.mark.parametrize(("name", "value"), [
    ("x-evil", "a\r\nx-injected: 1"), ("bad name", "v"), ("x-nul", "a\0b")])
async def test_headers_that_would_split_the_request_are_refused(
        serve: Any, name: str, value: str) -> None:
    server = await serve(answer(ok()))
    async with client_for(server) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/a", headers={name: value})
        all_places_back(client)
        assert (await client.get("/b")).status_code == 200
    assert len(server.seen) == 1


# ------------------------------------------------------------ the pool


async def test_the_pool_holds_at_most_max_connections_requests(serve: Any) -> None:
    release = trio.Event()

    async def slow(stream: Stream, _seen: Seen) -> bool:
        await release.wait()
        await stream.send_all(ok())
        return True

    server = await serve(*[slow] * 5)
    async with client_for(server, max_connections=2) as client:
        transport = transport_of(client)
        done: list[int] = []
        async with trio.open_nursery() as nursery:
            async def one(i: int) -> None:
                await client.get(f"/{i}")
                done.append(i)

            for i in range(5):
                nursery.start_soon(one, i)
            await trio.testing.wait_all_tasks_blocked()
            assert transport.in_flight == 2 and len(server.seen) == 2
            release.set()
        assert sorted(done) == [0, 1, 2, 3, 4]
        assert transport.in_flight == 0 and transport.idle_connections == 2
    assert {s.conn for s in server.seen} == {0, 1}


async def test_pool_timeout(serve: Any) -> None:
    server = await serve(hang)
    async with client_for(server, max_connections=1) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.get, "/held")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(httpx.PoolTimeout):
                await client.get("/waits", timeout=httpx.Timeout(5.0, pool=0.05))
            nursery.cancel_scope.cancel()
        all_places_back(client)


async def test_a_cancelled_request_gives_its_place_back(serve: Any) -> None:
    server = await serve(hang, answer(ok()))
    async with client_for(server, max_connections=1) as client:
        with trio.move_on_after(0.05):
            await client.get("/hang")
        all_places_back(client)
        assert (await client.get("/b")).status_code == 200
    assert [s.conn for s in server.seen] == [0, 1]


async def test_unsupported_scheme() -> None:
    async with httpx.AsyncClient(transport=Http1Transport(max_connections=1)) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get("ftp://127.0.0.1/")


# ------------------------------------------------------------ the upstream's own time


async def test_the_kernel_times_the_answer_to_its_last_byte(serve: Any) -> None:
    """On Linux over plain TCP each answer carries the upstream's own time, read
    from the kernel's arrival stamps: up to the last byte of the body."""
    async def slow_body(stream: Stream, _seen: Seen) -> bool:
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe")
        await trio.sleep(0.2)
        await stream.send_all(b"llo")
        return True

    server = await serve(slow_body)
    async with client_for(server) as client:
        req = Request(custom_id="c", method="GET", url="/a", upstream="u")
        status, _headers, _body, failure, _msg, wire = await exchange(client, req, 5.0)
    assert (status, failure) == (200, None)
    with trio.socket.socket() as probe:
        if not wire_time.enable(probe):
            pytest.skip("no kernel arrival stamps here")
    assert wire is not None and wire >= 0.2


async def test_a_tls_answer_is_timed_by_the_kernel_too(serve: Any) -> None:
    async def slow(stream: Stream, _seen: Seen) -> bool:
        await trio.sleep(0.2)
        await stream.send_all(ok())
        return True

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = await serve(slow, answer(ok()), tls=server_ctx)
    async with client_for(server, verify=client_ctx) as client:
        r = await client.get("/a")
        assert r.json() == {"ok": True}
        timing = r.extensions[WIRE_TIMING]
        assert (await client.get("/b")).json() == {"ok": True}  # the stream still works
    with trio.socket.socket() as probe:
        if not wire_time.enable(probe):
            pytest.skip("no kernel arrival stamps here")
    assert timing is not None and timing.seconds is not None and timing.seconds >= 0.2
