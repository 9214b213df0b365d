"""The HTTP edge: sharded connection pools (places taken and given back, overflow,
errors), how ``build_transport`` sizes them, and a real exchange over loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import trio

from pacer.config import UpstreamConfig
from pacer.service.http import (
    SHARD_CONNECTIONS_HTTP2,
    ShardedTransport,
    build_client,
    build_transport,
    exchange,
)
from pacer.service.http1 import Http1Transport
from pacer.spool.jobs import Request

URL = "http://shard.test"


class Gate:
    """Shards whose answers wait until released; records which shard got what."""

    def __init__(self, shards: int) -> None:
        self.hits: list[list[str]] = [[] for _ in range(shards)]
        self.release = trio.Event()

    def shard(self, index: int) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            self.hits[index].append(request.url.path)
            if request.url.path.startswith("/fail"):
                raise httpx.ConnectError("refused", request=request)
            await self.release.wait()
            return httpx.Response(200, json={"shard": index})

        return httpx.MockTransport(handler)


def sharded(gate: Gate, slots: int) -> ShardedTransport:
    return ShardedTransport([gate.shard(i) for i in range(len(gate.hits))], slots)


async def test_each_request_takes_a_free_place_until_its_body_is_closed() -> None:
    gate = Gate(3)
    transport = sharded(gate, slots=1)
    seen: list[int] = []
    async with httpx.AsyncClient(base_url=URL, transport=transport) as client:
        async def one(path: str) -> None:
            r = await client.get(path)
            seen.append(r.json()["shard"])

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, f"/r{i}")
            await trio.testing.wait_all_tasks_blocked()
            # Three requests, three pools of one place: one each, none queued.
            assert [len(h) for h in gate.hits] == [1, 1, 1]
            assert transport.open == [1, 1, 1]
            gate.release.set()
        assert sorted(seen) == [0, 1, 2]
        assert transport.open == [0, 0, 0]
        # Freed places are taken again, the most recently freed first.
        await client.get("/again")
        assert transport.open == [0, 0, 0]
        assert sum(len(h) for h in gate.hits) == 4


async def test_low_load_stays_on_one_pool() -> None:
    gate = Gate(4)
    gate.release.set()
    transport = sharded(gate, slots=1)
    async with httpx.AsyncClient(base_url=URL, transport=transport) as client:
        for i in range(5):
            await client.get(f"/seq{i}")
    # One request at a time reuses the warm pool rather than opening others.
    assert [len(h) for h in gate.hits] == [5, 0, 0, 0]


async def test_more_requests_than_places_queue_in_the_least_busy_pool() -> None:
    gate = Gate(2)
    transport = sharded(gate, slots=2)
    async with httpx.AsyncClient(base_url=URL, transport=transport) as client:
        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(client.get, f"/r{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert transport.open == [3, 3]
            gate.release.set()
        assert transport.open == [0, 0]
        # The overflow requests gave back no place they did not have: still two
        # per pool, so four requests at once spread two and two.
        gate.release = trio.Event()
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(client.get, f"/s{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert transport.open == [2, 2]
            gate.release.set()


async def test_a_failed_request_gives_its_place_back() -> None:
    gate = Gate(1)
    transport = sharded(gate, slots=1)
    async with httpx.AsyncClient(base_url=URL, transport=transport) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get("/fail")
        assert transport.open == [0]
        gate.release.set()
        assert (await client.get("/ok")).json() == {"shard": 0}


async def test_a_cancelled_request_gives_its_place_back() -> None:
    gate = Gate(2)
    transport = sharded(gate, slots=1)
    async with httpx.AsyncClient(base_url=URL, transport=transport) as client:
        with trio.move_on_after(0.01):
            await client.get("/hang")
        assert transport.open == [0, 0]


def test_sizes_of_the_pools() -> None:
    lean = build_transport(UpstreamConfig(name="u", base_url=URL, max_limit=8))
    assert isinstance(lean, Http1Transport) and lean.max_connections == 8
    one = build_transport(UpstreamConfig(name="u", base_url=URL, max_limit=8), 1)
    assert isinstance(one, ShardedTransport) and len(one.shards) == 8
    h2 = build_transport(UpstreamConfig(name="u", base_url=URL, max_limit=100, http2=True))
    assert isinstance(h2, ShardedTransport)
    assert len(h2.shards) == -(-100 // SHARD_CONNECTIONS_HTTP2)
    single = build_transport(UpstreamConfig(name="u", base_url=URL, max_limit=1), 1)
    assert isinstance(single, httpx.AsyncHTTPTransport)
    with pytest.raises(ValueError):
        ShardedTransport([], 1)


# ------------------------------------------------------------- over loopback


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        payload = json.dumps({"got": json.loads(body), "port": self.client_address[1],
                              "auth": self.headers.get("authorization"),
                              "cookie": self.headers.get("cookie")}).encode()
        self.send_response(200)
        self.send_header("set-cookie", "session=from-an-earlier-answer; Path=/")
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    assert isinstance(host, str) and host == socket.gethostbyname("127.0.0.1")
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("shards", [None, 1], ids=["http1", "sharded-httpcore"])
async def test_exchange_over_loopback_reuses_connections(echo_url: str,
                                                         shards: int | None) -> None:
    cfg = UpstreamConfig(name="u", base_url=echo_url, max_limit=4, adaptive=False)
    client = build_client(cfg, "sk-test-key")
    if shards is not None:
        client._transport = build_transport(cfg, shards)
    ports: list[int] = []
    async with client:
        async def one(i: int) -> None:
            req = Request(custom_id=f"c{i}", method="POST", url="/v1/x", upstream="u",
                          body={"i": i})
            status, _headers, body, error, _msg, _wire = await exchange(client, req, 10.0)
            assert (status, error) == (200, None)
            assert body["got"] == {"i": i}
            assert body["auth"] == "Bearer sk-test-key"
            # A cookie set by an earlier answer (maybe another user's job) is not sent.
            assert body["cookie"] is None
            ports.append(body["port"])

        for round_ in range(3):
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(one, 4 * round_ + i)
        transport = client._transport
        # Every place came back once its answer was read.
        if isinstance(transport, ShardedTransport):
            assert transport.open == [0, 0, 0, 0]
        else:
            assert isinstance(transport, Http1Transport)
            assert transport.in_flight == 0 and 1 <= transport.idle_connections <= 4
    # Twelve requests, four at a time, over at most four kept-alive connections.
    assert len(ports) == 12
    assert len(set(ports)) <= 4
