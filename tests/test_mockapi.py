"""Tests of the mock API: behaviour under Trio's virtual clock, then over real sockets."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing

import pacer
from pacer.mockapi import (
    MockSettings,
    MockUpstream,
    add_arguments,
    format_go_duration,
    mock_transport,
    parse_schedule,
    run,
    serve,
    settings_from_args,
)

CHAT = "/v1/chat/completions"
PAYLOAD = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
GO_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)(ms|us|µs|ns|s))?$")
UNIT = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_go_duration(text: str) -> float:
    match = GO_DURATION.match(text)
    assert match and text, f"not a Go duration: {text!r}"
    hours, minutes, amount, unit = match.groups()
    seconds: float = int(hours or 0) * 3600 + int(minutes or 0) * 60
    if amount is not None:
        seconds += float(amount) * UNIT[unit]
    return seconds


def client_for(upstream: MockUpstream) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=mock_transport(upstream), base_url="http://mock")


async def burst(client: httpx.AsyncClient, n: int) -> list[tuple[httpx.Response, float]]:
    """Send n requests at once; return each response with its duration (clock seconds)."""
    results: list[tuple[httpx.Response, float]] = []

    async def one() -> None:
        start = trio.current_time()
        response = await client.post(CHAT, json=PAYLOAD)
        results.append((response, trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return results


def statuses(results: list[tuple[httpx.Response, float]]) -> Counter[int]:
    return Counter(response.status_code for response, _ in results)


# ------------------------------------------------------------ virtual-clock tests


async def test_concurrency_cap_rejects_the_excess_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(concurrency=3, latency=0.5))
    async with client_for(upstream) as client:
        results = await burst(client, 10)
    assert statuses(results) == {200: 3, 429: 7}
    for response, duration in results:
        if response.status_code == 429:
            assert duration == 0
            assert response.headers["retry-after"] == "1"
            assert response.headers["retry-after-ms"] == "1000"
            error = response.json()["error"]
            assert error["type"] == "rate_limit_error"
            assert error["code"] == "rate_limit_exceeded"
            assert error["message"]
        else:
            assert duration == pytest.approx(0.5)
    stats = upstream.stats.snapshot()
    assert stats["requests"] == 10
    assert stats["ok"] == 3
    assert stats["rate_limited"] == stats["rate_limited_concurrency"] == 7
    assert stats["max_in_service"] == 3
    assert stats["in_service"] == 0
    assert stats["current_cap"] == 3


async def test_slots_free_up_after_service(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(concurrency=2, latency=1.0))
    async with client_for(upstream) as client:
        assert statuses(await burst(client, 4)) == {200: 2, 429: 2}
        assert statuses(await burst(client, 2)) == {200: 2}


async def test_schedule_changes_the_cap_at_the_right_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(schedule=parse_schedule("0:2,5:4,10:1"), latency=0.1))
    async with client_for(upstream) as client:
        assert statuses(await burst(client, 6)) == {200: 2, 429: 4}
        await trio.sleep(4.8 - upstream.elapsed())  # just before t=5: cap still 2
        assert statuses(await burst(client, 6)) == {200: 2, 429: 4}
        await trio.sleep(5.0 - upstream.elapsed())  # exactly t=5: cap 4
        assert statuses(await burst(client, 6)) == {200: 4, 429: 2}
        await trio.sleep(10.0 - upstream.elapsed())
        assert statuses(await burst(client, 6)) == {200: 1, 429: 5}
        stats = (await client.get("/_mock/stats")).json()
    assert stats["current_cap"] == 1
    assert [upstream.cap_at(t) for t in (0, 4.99, 5, 9.99, 10, 1e6)] == [2, 2, 4, 4, 1, 1]


async def test_schedule_before_first_entry_uses_concurrency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(concurrency=5, schedule=((3.0, 1),)))
    assert upstream.cap_at(0) == 5
    assert upstream.cap_at(3) == 1
    assert MockUpstream(MockSettings()).cap_at(100) is None


async def test_knee_raises_latency_without_429(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(latency=0.1, knee=2, knee_slope=0.5))
    async with client_for(upstream) as client:
        results = await burst(client, 4)
    assert statuses(results) == {200: 4}
    durations = sorted(duration for _, duration in results)
    assert durations == pytest.approx([0.1, 0.1, 0.15, 0.2])
    # limit headers do not reveal the knee (no cap: no limit headers at all)
    assert all("x-ratelimit-limit-requests" not in r.headers for r, _ in results)


async def test_rate_cap_admits_rate_per_second(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(rate=5, latency=0.01))
    async with client_for(upstream) as client:
        first = await burst(client, 10)
        assert statuses(first) == {200: 5, 429: 5}
        await trio.sleep(1.0 - upstream.elapsed())
        second = await burst(client, 10)
        assert statuses(second) == {200: 5, 429: 5}
        await trio.sleep(0.4)  # two tokens back
        assert statuses(await burst(client, 5)) == {200: 2, 429: 3}
    assert upstream.stats.rate_limited_rate == 13
    for response, _ in first + second:
        assert response.headers["x-ratelimit-limit-requests"] == "5"
        remaining = int(response.headers["x-ratelimit-remaining-requests"])
        assert 0 <= remaining <= 5
        reset = parse_go_duration(response.headers["x-ratelimit-reset-requests"])
        assert 0 <= reset <= 1.0
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            assert remaining == 0


async def test_fractional_rate(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(rate=0.5, latency=0))
    async with client_for(upstream) as client:
        assert statuses(await burst(client, 3)) == {200: 1, 429: 2}
        await trio.sleep(1.0)
        assert (await client.post(CHAT)).status_code == 429
        await trio.sleep(1.0)
        response = await client.post(CHAT)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit-requests"] == "1"
    assert response.headers["x-ratelimit-reset-requests"] == "2s"


async def test_error_rate_one_gives_500_after_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(error_rate=1.0, latency=0.3, concurrency=10))
    async with client_for(upstream) as client:
        results = await burst(client, 5)
    assert statuses(results) == {500: 5}
    for response, duration in results:
        assert duration == pytest.approx(0.3)
        assert response.json()["error"]["type"] == "server_error"
        assert "x-ratelimit-remaining-requests" in response.headers
    assert upstream.stats.errors == 5
    assert upstream.stats.ok == 0


async def test_error_rate_is_seeded(autojump_clock: trio.testing.MockClock) -> None:
    async def outcome(seed: int) -> list[int]:
        upstream = MockUpstream(MockSettings(error_rate=0.5, latency=0, seed=seed))
        async with client_for(upstream) as client:
            return [(await client.post(CHAT)).status_code for _ in range(40)]

    first = await outcome(7)
    assert first == await outcome(7)
    assert 5 < first.count(500) < 35


async def test_jitter_stays_in_bounds_and_is_seeded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def durations(seed: int) -> list[float]:
        upstream = MockUpstream(MockSettings(latency=0.2, jitter=0.1, seed=seed))
        async with client_for(upstream) as client:
            return sorted(d for _, d in await burst(client, 30))

    first = await durations(3)
    assert all(0.1 - 1e-9 <= d <= 0.3 + 1e-9 for d in first)
    assert max(first) - min(first) > 0.05
    assert first == pytest.approx(await durations(3))


async def test_openai_headers_for_a_concurrency_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(concurrency=4, latency=0.1))
    async with client_for(upstream) as client:
        results = await burst(client, 6)
        alone = await client.post(CHAT, json=PAYLOAD)
    assert alone.headers["x-ratelimit-limit-requests"] == "4"
    assert alone.headers["x-ratelimit-remaining-requests"] == "3"  # itself is in service
    assert alone.headers["x-ratelimit-reset-requests"] == "0s"
    assert alone.headers["x-request-id"].startswith("req_")
    for response, _ in results:
        assert response.headers["x-ratelimit-limit-requests"] == "4"
        assert 0 <= int(response.headers["x-ratelimit-remaining-requests"]) <= 3
        parse_go_duration(response.headers["x-ratelimit-reset-requests"])
        if response.status_code == 429:
            assert response.headers["x-ratelimit-remaining-requests"] == "0"
            assert response.headers["x-ratelimit-reset-requests"] == "1s"


async def test_header_style_none(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(concurrency=1, rate=10, header_style="none"))
    async with client_for(upstream) as client:
        results = await burst(client, 2)
    assert statuses(results) == {200: 1, 429: 1}
    for response, _ in results:
        assert not [name for name in response.headers if name.startswith("x-ratelimit")]
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"


async def test_retry_after_rounds_up_and_ms_is_exact(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(concurrency=0, retry_after=2.5))
    async with client_for(upstream) as client:
        response = await client.post(CHAT)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["retry-after-ms"] == "2500"


async def test_chat_completion_body(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream()
    async with client_for(upstream) as client:
        response = await client.post(CHAT, json=PAYLOAD)
        bad = await client.post(CHAT, content=b"{not json", headers={"authorization": "Bearer x"})
        other = await client.get("/anything/else?x=1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-test"
    assert body["id"]
    assert isinstance(body["created"], int)
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert bad.status_code == 200
    assert bad.json()["model"] == "mock-model"
    assert other.status_code == 200
    assert upstream.stats.requests == 3


async def test_stats_endpoint_is_never_counted_nor_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(concurrency=1, rate=1, latency=1.0))
    async with client_for(upstream) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.post, CHAT)
            await trio.sleep(0.5)
            snapshots = [(await client.get("/_mock/stats")).json() for _ in range(5)]
        final = (await client.get("/_mock/stats")).json()
    assert snapshots[-1]["in_service"] == 1
    assert snapshots[-1]["requests"] == 1
    assert final == {
        "requests": 1,
        "ok": 1,
        "rate_limited": 0,
        "rate_limited_concurrency": 0,
        "rate_limited_rate": 0,
        "errors": 0,
        "in_service": 0,
        "max_in_service": 1,
        "current_cap": 1,
    }


async def test_cancelled_request_frees_its_slot(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(concurrency=1, latency=10))
    with trio.move_on_after(1):
        await upstream.handle("POST", CHAT, {}, b"")
    assert upstream.stats.in_service == 0
    response = await upstream.handle("GET", "/_mock/stats", {}, b"")
    assert response.status == 200
    assert response.json()["max_in_service"] == 1


def test_custom_clock_starts_at_construction() -> None:
    now = [100.0]
    upstream = MockUpstream(MockSettings(schedule=((0, 3), (2, 1))), clock=lambda: now[0])
    now[0] = 101.0
    assert upstream.elapsed() == 1.0
    assert upstream.cap_at(upstream.elapsed()) == 3


# ------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.012, "12ms"),
        (0.02, "20ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (17.28, "17.28s"),
        (60, "1m0s"),
        (61.25, "1m1.25s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723, "1h2m3s"),
        (-1, "0s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text
    assert parse_go_duration(text) == pytest.approx(max(0, round(seconds, 3)))


def test_parse_schedule() -> None:
    assert parse_schedule("0:20,6:5,12:40") == ((0.0, 20), (6.0, 5), (12.0, 40))
    assert parse_schedule(" 0 : 1 , 2.5:0 ") == ((0.0, 1), (2.5, 0))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("0:20,", "SECONDS:CAP"),
        ("5", "SECONDS:CAP"),
        ("x:3", "not a number"),
        ("0:three", "not an integer"),
        ("0:2.5", "not an integer"),
        ("-1:3", ">= 0"),
        ("nan:3", "finite"),
        ("inf:3", "finite"),
        ("0:-3", "cap must be >= 0"),
        ("0:1,5:2,5:3", "strictly increasing"),
        ("6:1,2:3", "strictly increasing"),
    ],
)
def test_parse_schedule_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_schedule(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": -1},
        {"rate": 0},
        {"rate": -2.0},
        {"rate": math.inf},
        {"latency": -0.1},
        {"latency": math.nan},
        {"jitter": -1},
        {"error_rate": 1.5},
        {"error_rate": -0.1},
        {"knee": -1},
        {"knee_slope": -1},
        {"header_style": "anthropic"},
        {"retry_after": -1},
        {"schedule": ((5.0, 1), (1.0, 2))},
        {"schedule": ((0.0, -1),)},
    ],
)
def test_settings_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MockSettings(**kwargs)


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_arguments_build_settings() -> None:
    args = cli_args(
        "--concurrency", "7", "--rate", "2.5", "--latency", "0.2", "--jitter", "0.05",
        "--error-rate", "0.1", "--schedule", "0:3,4:9", "--knee", "4", "--knee-slope", "0.3",
        "--header-style", "none", "--retry-after", "2", "--seed", "11",
    )  # fmt: skip
    assert (args.host, args.port, args.log) == ("127.0.0.1", 8000, False)
    assert settings_from_args(args) == MockSettings(
        concurrency=7, rate=2.5, latency=0.2, jitter=0.05, error_rate=0.1,
        schedule=((0.0, 3), (4.0, 9)), knee=4, knee_slope=0.3, header_style="none",
        retry_after=2.0, seed=11,
    )  # fmt: skip
    assert settings_from_args(cli_args()) == MockSettings()


@pytest.mark.parametrize(
    "argv",
    [
        ["--schedule", "0:1,oops"],
        ["--error-rate", "2"],
        ["--rate", "0"],
        ["--concurrency", "-3"],
        ["--port", "70000"],
    ],
)
def test_cli_bad_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cli_args(*argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mock-api: ")


# ------------------------------------------------------------------ real sockets


async def test_serve_keep_alive_and_post(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(latency=0.0))
    port = await nursery.start(serve, upstream)
    assert isinstance(port, int) and port > 0
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:
        streams = set()
        for i in range(5):
            response = await client.post(CHAT, json={**PAYLOAD, "model": f"m{i}"})
            assert response.status_code == 200
            assert response.json()["model"] == f"m{i}"
            streams.add(id(response.extensions["network_stream"]))
        assert len(streams) == 1  # all on one kept-alive connection
        get = await client.get("/v1/models", headers={"authorization": "Bearer secret"})
        assert get.status_code == 200
        stats = (await client.get("/_mock/stats")).json()
    assert stats["requests"] == 6
    assert stats["ok"] == 6


async def test_serve_concurrency_cap_over_sockets(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(concurrency=2, latency=0.5))
    port = await nursery.start(serve, upstream)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        results = await burst(client, 5)
    assert statuses(results) == {200: 2, 429: 3}
    limited = next(r for r, _ in results if r.status_code == 429)
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, half-close, and read everything until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                received += chunk
    return received


def parse_responses(raw: bytes, methods: list[str]) -> list[tuple[h11.Response, bytes]]:
    """Parse the answers to requests of these methods, sent on one connection."""
    conn = h11.Connection(h11.CLIENT)
    conn.receive_data(raw)
    conn.receive_data(b"")
    out: list[tuple[h11.Response, bytes]] = []
    for method in methods:
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if isinstance(event, h11.ConnectionClosed):
            return out
        assert isinstance(event, h11.Response)
        body = b""
        while not isinstance(part := conn.next_event(), h11.EndOfMessage):
            assert isinstance(part, h11.Data)
            body += part.data
        out.append((event, body))
        if conn.our_state is h11.MUST_CLOSE:
            break
        conn.start_next_cycle()
    assert isinstance(conn.next_event(), h11.ConnectionClosed)
    return out


async def test_serve_raw_keep_alive_chunked_and_close(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve, MockUpstream(MockSettings(latency=0.0)))
    body = json.dumps(PAYLOAD).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    raw = await raw_exchange(
        port,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
        + b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /_mock/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )  # fmt: skip
    responses = parse_responses(raw, ["POST", "POST", "HEAD", "GET"])
    assert [r.status_code for r, _ in responses] == [200, 200, 200, 200]
    assert json.loads(responses[0][1])["model"] == "gpt-test"
    assert json.loads(responses[1][1])["model"] == "gpt-test"
    assert responses[2][1] == b""
    assert json.loads(responses[3][1])["requests"] == 3


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not http\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ],
)
async def test_serve_malformed_request_gets_400(nursery: trio.Nursery, garbage: bytes) -> None:
    upstream = MockUpstream(MockSettings(latency=0.0))
    port = await nursery.start(serve, upstream)
    raw = await raw_exchange(port, garbage)  # returns only once the server closed
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in raw.lower()
    # the server is still alive and well
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.post(CHAT, json=PAYLOAD)).status_code == 200
    assert upstream.stats.requests == 1


async def test_serve_survives_abrupt_disconnects(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(latency=0.2))
    port = await nursery.start(serve, upstream)
    for data in (b"", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial",
                 b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):  # fmt: skip
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(data)
        await trio.aclose_forcefully(stream)  # gone before (or while) being served
    await trio.sleep(0.3)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/")).status_code == 200


@pytest.mark.slow
def test_module_cli_listens_and_stops_on_sigterm() -> None:
    src = str(Path(pacer.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "pacer.mockapi", "--port", "0", "--concurrency", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        assert line["event"] == "mock_api.listening"
        assert line["host"] == "127.0.0.1"
        assert line["concurrency"] == 3
        assert line["schedule"] == []
        response = httpx.post(f"http://127.0.0.1:{line['port']}{CHAT}", json=PAYLOAD, timeout=5)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "3"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    events = [json.loads(text)["event"] for text in out.splitlines()]
    assert events == ["mock_api.stopping", "mock_api.stopped"]
