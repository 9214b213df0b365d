"""Tests of the mock API: behaviour under Trio's virtual clock, then over real sockets."""

from __future__ import annotations

import argparse
import functools
import itertools
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
from pacer.control.ratelimit_headers import parse_rate_limit_headers
from pacer.mockapi import (
    FAULT_KINDS,
    HEADER_STYLES,
    HUGE_BODY_BYTES,
    OUTAGE_DELAY_S,
    STATS_PATH,
    TRICKLE_INTERVAL_S,
    Fault,
    MockSettings,
    MockUpstream,
    Outage,
    add_arguments,
    format_go_duration,
    mock_transport,
    parse_faults,
    parse_outages,
    parse_schedule,
    run,
    serve,
    settings_from_args,
    token_cost,
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


async def test_rate_window_is_a_fixed_quota_back_whole_at_the_windows_end(
        autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(rate=2, rate_window=5, latency=0))
    async with client_for(upstream) as client:
        assert statuses(await burst(client, 12)) == {200: 10, 429: 2}
        await trio.sleep(4.0 - upstream.elapsed())  # no refill within the window
        last = await client.post(CHAT)
        assert last.status_code == 429
        assert last.headers["x-ratelimit-limit-requests"] == "10"
        assert last.headers["x-ratelimit-remaining-requests"] == "0"
        assert parse_go_duration(last.headers["x-ratelimit-reset-requests"]) == pytest.approx(1.0)
        await trio.sleep(5.0 - upstream.elapsed())  # the next window: all of it back
        first = await client.post(CHAT)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-requests"] == "9"
        assert parse_go_duration(first.headers["x-ratelimit-reset-requests"]) == pytest.approx(5.0)
    assert upstream.stats.rate_limited_rate == 3
    with pytest.raises(ValueError, match="rate_window needs a rate"):
        MockSettings(rate_window=5)


async def test_rate_burst_sizes_the_bucket_whatever_the_rate(
        autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(rate=20, rate_burst=2, latency=0))
    async with client_for(upstream) as client:
        assert statuses(await burst(client, 5)) == {200: 2, 429: 3}
        await trio.sleep(0.05)  # one token back (20/s)
        assert statuses(await burst(client, 3)) == {200: 1, 429: 2}
    for bad in ({"rate_burst": 2}, {"rate": 20, "rate_burst": 0.5},
                {"rate": 2, "rate_window": 5, "rate_burst": 2}):
        with pytest.raises(ValueError, match="rate_burst"):
            MockSettings(**bad)  # type: ignore[arg-type]


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
    upstream = MockUpstream(MockSettings(error_rate=1.0, latency=0.3, rate=100))
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


async def test_a_concurrency_cap_is_not_announced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Real APIs publish rate quotas, never how many requests may be in flight."""
    upstream = MockUpstream(MockSettings(concurrency=4, latency=0.1))
    async with client_for(upstream) as client:
        results = await burst(client, 6)
    assert statuses(results) == {200: 4, 429: 2}
    for response, _ in results:
        assert not [name for name in response.headers if name.startswith("x-ratelimit")]
        assert response.headers["x-request-id"].startswith("req_")
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"


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
        "tokens_limited": 0,
        "tokens_too_large": 0,
        "tokens_used": 0,
        "unauthorized": 0,
        "outage": 0,
        "outage_by_kind": {},
        "faults": 0,
        "faults_by_kind": {},
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


# ------------------------------------------- virtual clock: tokens, styles, outages

WALL = 1_700_000_000.0  # a fixed wall clock, for the absolute resets


def fixed_wall() -> float:
    return WALL


def costly(max_tokens: int, chars: int) -> dict[str, Any]:
    return {
        **PAYLOAD,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x" * chars}],
    }


async def sleep_until(upstream: MockUpstream, at: float) -> None:
    await trio.sleep(max(0.0, at - upstream.elapsed()))


@pytest.mark.parametrize(
    ("body", "cost"),
    [
        (b"", 16),
        (b"{not json", 16),
        (b"[1, 2]", 16),
        (json.dumps(PAYLOAD).encode(), 16 + 1),  # "hi": ceil(2 / 4)
        (json.dumps(costly(100, 40)).encode(), 110),
        (json.dumps(costly(0, 41)).encode(), 11),
        (json.dumps({"max_tokens": True, "messages": []}).encode(), 16),
        (json.dumps({"max_tokens": -3}).encode(), 16),
        (json.dumps({"max_completion_tokens": 50}).encode(), 50),
        (
            json.dumps(
                {
                    "max_tokens": 10,
                    "system": "abcd" * 3,
                    "messages": [
                        {"role": "user", "content": [{"type": "text", "text": "x" * 8}, "yy"]},
                        {"role": "assistant", "content": "z" * 6},
                        {"role": "user", "content": [{"type": "image", "source": {}}]},
                        "not a message",
                    ],
                }
            ).encode(),
            10 + 7,  # 12 + 8 + 2 + 6 = 28 characters
        ),
    ],
)
def test_token_cost(body: bytes, cost: int) -> None:
    assert token_cost(body) == cost


async def test_tpm_admits_then_429s_with_the_right_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 600 tokens a minute = 10 a second; each request costs 100 + 10 = 110 tokens.
    upstream = MockUpstream(MockSettings(tpm=600, latency=0))
    async with client_for(upstream) as client:
        admitted = [await client.post(CHAT, json=costly(100, 40)) for _ in range(5)]
        limited = await client.post(CHAT, json=costly(100, 40))
        small = await client.post(CHAT, json=costly(30, 0))  # 30 <= 50 left: fits
        await trio.sleep(7.9)  # 20 left + 79 back = 99 < 110
        still = await client.post(CHAT, json=costly(100, 40))
        await trio.sleep(1.1)  # just what the Retry-After said
        again = await client.post(CHAT, json=costly(100, 40))
    assert [r.status_code for r in admitted] == [200] * 5
    last = admitted[-1]
    assert last.headers["x-ratelimit-limit-tokens"] == "600"
    assert last.headers["x-ratelimit-remaining-tokens"] == "50"
    assert last.headers["x-ratelimit-reset-tokens"] == "55s"  # 550 tokens at 10/s
    assert "x-ratelimit-limit-requests" not in last.headers  # no request cap configured
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "6"  # 60 tokens missing at 10/s
    assert limited.headers["retry-after-ms"] == "6000"
    assert limited.headers["x-ratelimit-remaining-tokens"] == "50"
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded"
    assert "Limit 600" in error["message"] and "Requested 110" in error["message"]
    assert small.status_code == 200
    assert still.status_code == 429
    assert still.headers["retry-after-ms"] == "1100"  # 11 tokens missing
    assert still.headers["retry-after"] == "2"
    assert again.status_code == 200
    stats = upstream.stats.snapshot()
    assert stats["tokens_limited"] == 2
    assert stats["rate_limited"] == 2
    assert stats["tokens_used"] == 6 * 110 + 30
    assert stats["ok"] == 7


async def test_tpm_refills_continuously(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(tpm=60, latency=0))  # one token a second
    async with client_for(upstream) as client:
        assert (await client.post(CHAT, json=costly(60, 0))).status_code == 200
        await trio.sleep(20)
        response = await client.post(CHAT, json=costly(20, 0))
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining-tokens"] == "0"
        assert (await client.post(CHAT, json=costly(1, 0))).status_code == 429


async def test_tpm_request_larger_than_the_bucket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(tpm=100, latency=0))
    async with client_for(upstream) as client:
        response = await client.post(CHAT, json=costly(101, 0))
        fine = await client.post(CHAT, json=costly(100, 0))
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert "retry-after-ms" not in response.headers
    assert response.json()["error"]["code"] == "request_too_large"
    assert fine.status_code == 200
    assert upstream.stats.tokens_too_large == 1
    assert upstream.stats.tokens_limited == 0


async def test_tpm_with_a_rate_cap_takes_no_tokens_from_refused_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(rate=1, tpm=600, latency=0))
    async with client_for(upstream) as client:
        first = await client.post(CHAT, json=costly(84, 0))
        second = await client.post(CHAT, json=costly(84, 0))  # refused by the rate cap
    assert (first.status_code, second.status_code) == (200, 429)
    assert second.headers["retry-after"] == "1"
    assert second.headers["x-ratelimit-remaining-tokens"] == "516"
    assert upstream.stats.rate_limited_rate == 1
    assert upstream.stats.tokens_used == 84


def expected_quotas(style: str) -> tuple[bool, bool]:
    """Whether a style reports (requests, tokens)."""
    return style != "none", style in ("openai", "anthropic")


@pytest.mark.parametrize("style", HEADER_STYLES)
async def test_header_styles_parse_into_the_values_sent(
    style: str, autojump_clock: trio.testing.MockClock
) -> None:
    upstream = MockUpstream(
        MockSettings(rate=5, tpm=600, latency=0, header_style=style), wall_clock=fixed_wall
    )
    async with client_for(upstream) as client:
        await client.post(CHAT, json=PAYLOAD)
        response = await client.post(CHAT, json=PAYLOAD)  # 3 requests and 566 tokens left
    assert response.status_code == 200
    info = parse_rate_limit_headers(response.headers, now=WALL)
    assert info.retry_after is None
    has_requests, has_tokens = expected_quotas(style)
    if not has_requests:
        assert info.is_empty
        return
    assert info.requests is not None
    assert (info.requests.limit, info.requests.remaining) == (5, 3)
    # 2 requests to refill at 5/s: 0.4 s, rounded up to whole seconds where the style must
    exact = style in ("openai", "anthropic")
    assert info.requests.reset == pytest.approx(0.4 if exact else 1.0, abs=1e-6)
    if has_tokens:
        assert info.tokens is not None
        assert (info.tokens.limit, info.tokens.remaining) == (600, 566)
        assert info.tokens.reset == pytest.approx(3.4, abs=1e-6)  # 34 tokens at 10/s
    else:
        assert info.tokens is None


@pytest.mark.parametrize("style", HEADER_STYLES)
async def test_header_styles_on_a_429(style: str, autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(
        MockSettings(rate=1, latency=0, retry_after=2.5, header_style=style),
        wall_clock=fixed_wall,
    )
    async with client_for(upstream) as client:
        await client.post(CHAT, json=PAYLOAD)
        response = await client.post(CHAT, json=PAYLOAD)
    assert response.status_code == 429
    info = parse_rate_limit_headers(response.headers, now=WALL)
    assert info.retry_after == pytest.approx(2.5 if style in ("openai", "none") else 3.0)
    assert response.headers["retry-after"] == "3"
    assert ("retry-after-ms" in response.headers) == (style in ("openai", "none"))
    if style != "none":
        assert info.requests is not None
        assert info.requests.remaining == 0
        assert info.requests.exhausted


async def test_header_styles_exact_text(autojump_clock: trio.testing.MockClock) -> None:
    async def headers(style: str) -> httpx.Headers:
        upstream = MockUpstream(
            MockSettings(rate=5, tpm=600, latency=0, header_style=style), wall_clock=fixed_wall
        )
        async with client_for(upstream) as client:
            return (await client.post(CHAT, json=PAYLOAD)).headers

    anthropic = await headers("anthropic")
    assert anthropic["anthropic-ratelimit-requests-limit"] == "5"
    assert anthropic["anthropic-ratelimit-requests-remaining"] == "4"
    assert anthropic["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:13:20.200Z"
    assert anthropic["anthropic-ratelimit-tokens-limit"] == "600"
    assert anthropic["anthropic-ratelimit-tokens-remaining"] == "583"
    assert anthropic["anthropic-ratelimit-tokens-reset"] == "2023-11-14T22:13:21.700Z"
    assert not [name for name in anthropic if name.startswith("x-ratelimit")]
    github = await headers("github")
    assert [github[f"x-ratelimit-{name}"] for name in ("limit", "remaining", "used")] == [
        "5",
        "4",
        "1",
    ]
    assert github["x-ratelimit-reset"] == str(int(WALL) + 1)
    assert github["x-ratelimit-resource"] == "core"
    ietf = await headers("ietf")
    assert ietf["ratelimit-policy"] == '"default";q=5;w=1'
    assert ietf["ratelimit"] == '"default";r=4;t=1'
    legacy = await headers("legacy")
    assert [legacy[f"ratelimit-{name}"] for name in ("limit", "remaining", "reset")] == [
        "5",
        "4",
        "1",
    ]


async def test_outage_windows_at_the_right_virtual_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outages = parse_outages("1:2:500, 3:4:502 ,5:6,7:8:reset,9:10:refuse")
    upstream = MockUpstream(MockSettings(latency=0.1, outages=outages))
    seen: list[tuple[float, int | str, float]] = []
    async with client_for(upstream) as client:
        for at in (0.5, 1.0, 1.99, 2.0, 3.5, 4.0, 5.0, 5.999, 7.0, 7.5, 9.0, 9.999, 10.0):
            await sleep_until(upstream, at)
            start = trio.current_time()
            try:
                response = await client.post(CHAT, json=PAYLOAD)
                outcome: int | str = response.status_code
                if response.status_code == 502:
                    assert response.headers["content-type"] == "text/html"
                    assert b"502 Bad Gateway" in response.content
                elif response.status_code != 200:
                    assert response.json()["error"]["type"] == "server_error"
            except httpx.TransportError as exc:
                outcome = type(exc).__name__
            seen.append((at, outcome, trio.current_time() - start))
        stats = (await client.get(STATS_PATH)).json()  # answered whatever the outage
    assert [(at, outcome) for at, outcome, _ in seen] == [
        (0.5, 200),
        (1.0, 500),
        (1.99, 500),
        (2.0, 200),
        (3.5, 502),
        (4.0, 200),
        (5.0, 503),
        (5.999, 503),
        (7.0, "RemoteProtocolError"),
        (7.5, "RemoteProtocolError"),
        (9.0, "ConnectError"),
        (9.999, "ConnectError"),
        (10.0, 200),
    ]
    for _, outcome, duration in seen:
        if outcome == 200:
            assert duration == pytest.approx(0.1)
        elif isinstance(outcome, int):
            assert duration == pytest.approx(OUTAGE_DELAY_S)
        else:
            assert duration == 0
    assert stats["outage"] == 9
    assert stats["outage_by_kind"] == {"500": 2, "502": 1, "503": 2, "reset": 2, "refuse": 2}
    assert stats["requests"] == 13
    assert stats["ok"] == 4
    assert stats["errors"] == 0


def test_outage_lookup_and_refuse_windows() -> None:
    upstream = MockUpstream(
        MockSettings(outages=parse_outages("5:6:refuse,1:2,6:7:refuse,9:9.5:refuse")),
        clock=lambda: 0.0,
    )
    assert [o.start for o in upstream.settings.outages] == [1, 5, 6, 9]  # sorted
    assert upstream.outage_at(0.999) is None
    assert upstream.outage_at(1) == Outage(1, 2, "503")
    assert upstream.outage_at(2) is None
    assert upstream.outage_at(6.5) == Outage(6, 7, "refuse")
    assert upstream.refuse_windows() == [(5, 7), (9, 9.5)]  # touching windows merged


async def test_api_key(autojump_clock: trio.testing.MockClock) -> None:
    key = "sk-mock-Secret42"
    settings = MockSettings(auth_key=key, latency=0, concurrency=0)
    assert key not in repr(settings)
    assert key not in json.dumps(settings.as_dict())
    assert settings.as_dict()["auth_key"] == "<hidden>"
    upstream = MockUpstream(settings)
    async with client_for(upstream) as client:
        missing = await client.post(CHAT, json=PAYLOAD)
        wrong = await client.post(CHAT, json=PAYLOAD, headers={"authorization": f"Bearer {key}x"})
        basic = await client.post(CHAT, json=PAYLOAD, headers={"authorization": f"Basic {key}"})
        x_api_key = await client.post(CHAT, json=PAYLOAD, headers={"x-api-key": key})
        right = await client.post(CHAT, json=PAYLOAD, headers={"Authorization": f"bearer {key}"})
        stats = (await client.get(STATS_PATH)).json()  # needs no key
    for response in (missing, wrong, basic, x_api_key):
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "invalid_request_error"
        assert key not in response.text
        assert not any(key in value for value in response.headers.values())
    assert right.status_code == 429  # past the key, the cap (0) applies
    assert stats["unauthorized"] == 4
    assert stats["rate_limited"] == 1


async def test_api_key_anthropic_style_takes_x_api_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = MockUpstream(MockSettings(auth_key="k-1", latency=0, header_style="anthropic"))
    async with client_for(upstream) as client:
        assert (await client.post(CHAT, headers={"x-api-key": "k-1"})).status_code == 200
        assert (await client.post(CHAT, headers={"x-api-key": "k-2"})).status_code == 401
        assert (await client.post(CHAT, headers={"authorization": "Bearer k-1"})).status_code == 200


async def test_outage_comes_before_the_key(autojump_clock: trio.testing.MockClock) -> None:
    upstream = MockUpstream(MockSettings(auth_key="k", outages=(Outage(0, 1, "503"),)))
    async with client_for(upstream) as client:
        assert (await client.post(CHAT)).status_code == 503
    assert upstream.stats.unauthorized == 0


# ------------------------------------------------------- virtual clock: faults


def faulty(*faults: Fault, **settings: Any) -> MockUpstream:
    return MockUpstream(MockSettings(latency=0, faults=faults, **settings))


async def test_fault_malformed_and_wrong_type(autojump_clock: trio.testing.MockClock) -> None:
    for kind in ("malformed", "wrong-type"):
        upstream = faulty(Fault(kind), rate=5)
        async with client_for(upstream) as client:
            response = await client.post(CHAT, json=PAYLOAD)
        assert response.status_code == 200
        assert "x-ratelimit-limit-requests" in response.headers
        with pytest.raises(ValueError):
            json.loads(response.content)
        if kind == "malformed":
            assert response.headers["content-type"] == "application/json"
            assert response.content.startswith(b'{"id":"chatcmpl-')
        else:
            assert response.headers["content-type"].startswith("text/html")
            assert response.text.lstrip().lower().startswith("<!doctype html>")
        assert upstream.stats.faults_by_kind == {kind: 1}
        assert (upstream.stats.faults, upstream.stats.ok) == (1, 0)


async def test_fault_huge_is_a_streamed_valid_body(autojump_clock: trio.testing.MockClock) -> None:
    upstream = faulty(Fault("huge"))
    async with (
        client_for(upstream) as client,
        client.stream("POST", CHAT, json=PAYLOAD) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(HUGE_BODY_BYTES)
        chunks = [chunk async for chunk in response.aiter_raw()]
    assert len(chunks) > 100  # streamed, not one block
    assert sum(len(chunk) for chunk in chunks) == HUGE_BODY_BYTES
    # a chat completion whose reply is all "a": without the padding it is still valid
    assert all(chunk == b"a" * len(chunk) for chunk in chunks[1:-1])
    body = json.loads(chunks[0] + chunks[-1])
    assert body["model"] == "gpt-test"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert upstream.stats.faults_by_kind == {"huge": 1}


async def test_fault_close_and_reset_raise(autojump_clock: trio.testing.MockClock) -> None:
    async with client_for(faulty(Fault("close"))) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(CHAT, json=PAYLOAD)
    upstream = faulty(Fault("reset"))
    async with client_for(upstream) as client:
        with pytest.raises(httpx.ReadError):
            await client.post(CHAT, json=PAYLOAD)
        async with client.stream("POST", CHAT, json=PAYLOAD) as response:
            assert response.status_code == 200  # the headers came, then the body broke
            with pytest.raises(httpx.ReadError):
                await response.aread()
    assert upstream.stats.faults_by_kind == {"reset": 2}


async def test_fault_hang_until_the_client_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = faulty(Fault("hang"))
    async with httpx.AsyncClient(
        transport=mock_transport(upstream), base_url="http://mock", timeout=2.5
    ) as client:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(CHAT, json=PAYLOAD)
        assert trio.current_time() - start == pytest.approx(2.5)
    async with httpx.AsyncClient(
        transport=mock_transport(upstream), base_url="http://mock", timeout=None
    ) as client:
        with trio.move_on_after(1000) as scope:
            await client.post(CHAT, json=PAYLOAD)
    assert scope.cancelled_caught  # no timeout: it hangs for ever
    assert upstream.stats.faults_by_kind == {"hang": 2}
    assert upstream.stats.in_service == 0


async def test_fault_trickle(autojump_clock: trio.testing.MockClock) -> None:
    upstream = faulty(Fault("trickle"))
    async with client_for(upstream) as client:
        start = trio.current_time()
        response = await client.post(CHAT, json=PAYLOAD)
        duration = trio.current_time() - start
        assert response.json()["model"] == "gpt-test"
        assert duration == pytest.approx(TRICKLE_INTERVAL_S * len(response.content))
        with pytest.raises(httpx.ReadTimeout):
            await client.post(CHAT, json=PAYLOAD, timeout=httpx.Timeout(5, read=0.2))


async def test_fault_storm_runs_at_the_right_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = faulty(Fault("storm"), seed=1)
    outcomes: list[tuple[float, int]] = []
    async with client_for(upstream) as client:
        for step in range(44):
            await sleep_until(upstream, step * 0.25)
            at = upstream.elapsed()
            outcomes.append((at, (await client.post(CHAT, json=PAYLOAD)).status_code))
    stormy = [at for at, status in outcomes if status != 200]
    assert stormy == [4.0, 4.25, 4.5, 4.75, 9.0, 9.25, 9.5, 9.75]
    assert {status for _, status in outcomes if status != 200} <= {500, 502, 503}
    assert upstream.stats.faults_by_kind == {"storm": 8}
    assert [upstream.in_storm(t) for t in (3.99, 4, 4.99, 5, 14.5)] == [
        False,
        True,
        True,
        False,
        True,
    ]


async def test_fault_shares_are_seeded_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def outcome(seed: int) -> tuple[list[str], dict[str, Any]]:
        upstream = faulty(Fault("malformed", 0.3), Fault("wrong-type", 0.2), seed=seed)
        kinds: list[str] = []
        async with client_for(upstream) as client:
            for _ in range(200):
                response = await client.post(CHAT, json=PAYLOAD)
                if response.headers["content-type"].startswith("text/html"):
                    kinds.append("wrong-type")
                else:
                    try:
                        response.json()
                        kinds.append("ok")
                    except ValueError:
                        kinds.append("malformed")
        return kinds, upstream.stats.snapshot()

    kinds, stats = await outcome(3)
    assert (kinds, stats) == await outcome(3)
    counts = Counter(kinds)
    assert 35 < counts["malformed"] < 85
    assert 20 < counts["wrong-type"] < 60
    assert stats["faults_by_kind"] == {"malformed": counts["malformed"],
                                       "wrong-type": counts["wrong-type"]}  # fmt: skip
    assert stats["faults"] == counts["malformed"] + counts["wrong-type"]
    assert stats["ok"] == counts["ok"]


async def test_faults_spare_429s_and_500s(autojump_clock: trio.testing.MockClock) -> None:
    upstream = faulty(Fault("malformed"), concurrency=0)
    async with client_for(upstream) as client:
        response = await client.post(CHAT, json=PAYLOAD)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    upstream = faulty(Fault("huge"), error_rate=1.0)
    async with client_for(upstream) as client:
        response = await client.post(CHAT, json=PAYLOAD)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert upstream.stats.faults == 0


async def test_faults_leave_the_seeded_errors_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def errors(*faults: Fault) -> list[bool]:
        upstream = MockUpstream(MockSettings(error_rate=0.5, latency=0, seed=9, faults=faults))
        async with client_for(upstream) as client:
            return [(await client.post(CHAT)).status_code == 500 for _ in range(30)]

    assert await errors() == await errors(Fault("wrong-type", 0.5))


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


def test_parse_outages() -> None:
    assert parse_outages("10:15") == (Outage(10.0, 15.0, "503"),)
    assert parse_outages(" 0:0.5:RESET , 1:2:refuse,3:4:502") == (
        Outage(0.0, 0.5, "reset"),
        Outage(1.0, 2.0, "refuse"),
        Outage(3.0, 4.0, "502"),
    )


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty item"),
        ("1:2,", "empty item"),
        ("5", "START:END[:KIND]"),
        ("1:2:503:4", "START:END[:KIND]"),
        ("a:2", "must be numbers"),
        ("-1:2", "start must be"),
        ("3:2", "end must be"),
        ("2:2", "end must be"),
        ("1:inf", "end must be"),
        ("1:2:404", "kind must be one of"),
    ],
)
def test_parse_outages_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_outages(text)


def test_parse_faults() -> None:
    assert parse_faults("reset:0.05, hang:0.01,storm") == (
        Fault("reset", 0.05),
        Fault("hang", 0.01),
        Fault("storm", 1.0),
    )
    assert {fault.kind for fault in parse_faults(",".join(FAULT_KINDS))} == set(FAULT_KINDS)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty item"),
        ("nope", "kind must be one of"),
        ("reset:x", "not a number"),
        ("reset:1.5", "between 0 and 1"),
        ("hang:-0.1", "between 0 and 1"),
    ],
)
def test_parse_faults_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_faults(text)


def test_settings_sort_outages_and_show_them() -> None:
    settings = MockSettings(outages=(Outage(5, 6, "refuse"), Outage(1, 2)))
    assert settings.outages == (Outage(1, 2), Outage(5, 6, "refuse"))
    assert settings.as_dict()["outages"] == [
        {"start": 1, "end": 2, "kind": "503"},
        {"start": 5, "end": 6, "kind": "refuse"},
    ]
    storm_and_all = MockSettings(faults=(Fault("storm"), Fault("reset", 0.5), Fault("hang", 0.5)))
    assert storm_and_all.as_dict()["faults"][0] == {"kind": "storm", "probability": 1.0}
    assert MockSettings().as_dict()["auth_key"] is None


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
        {"header_style": "bogus"},
        {"tpm": 0},
        {"tpm": -5},
        {"outages": (Outage(1, 3), Outage(2, 4, "reset"))},
        {"faults": (Fault("reset", 0.6), Fault("hang", 0.5))},
        {"faults": (Fault("reset", 0.1), Fault("reset", 0.2))},
        {"auth_key": ""},
        {"auth_key": "has space"},
        {"auth_key": "line\nbreak"},
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


def test_cli_new_flags_build_settings() -> None:
    args = cli_args(
        "--tpm", "90000", "--outage", "1:2", "--outage", "3:4:reset,5:6:refuse",
        "--fault", "reset:0.1", "--fault", "storm,huge:0.01", "--auth-key", "sk-abc",
        "--header-style", "anthropic",
    )  # fmt: skip
    assert settings_from_args(args) == MockSettings(
        tpm=90000,
        outages=(Outage(1, 2), Outage(3, 4, "reset"), Outage(5, 6, "refuse")),
        faults=(Fault("reset", 0.1), Fault("storm"), Fault("huge", 0.01)),
        auth_key="sk-abc",
        header_style="anthropic",
    )
    # a namespace from an older parser still works
    legacy = argparse.Namespace(**{k: v for k, v in vars(cli_args()).items()
                                   if k not in ("tpm", "outage", "fault", "auth_key")})  # fmt: skip
    assert settings_from_args(legacy) == MockSettings()


def test_cli_help_lists_every_flag() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    for flag in ("--header-style", "--tpm", "--outage", "--fault", "--auth-key"):
        assert flag in text
    for name in (*HEADER_STYLES, *FAULT_KINDS, "refuse"):
        assert name in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--tpm", "0"],
        ["--outage", "2:1"],
        ["--outage", "0:5,4:6"],
        ["--fault", "nope"],
        ["--fault", "reset:2"],
        ["--fault", "reset:0.6", "--fault", "hang:0.6"],
        ["--auth-key", "sk bad key"],
    ],
)
def test_cli_bad_new_values_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(cli_args(*argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mock-api: ")
    assert "bad key" not in captured.err  # never echo the key


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


async def test_serve_outages_503_refuse_and_back(nursery: trio.Nursery) -> None:
    # Windows of a second or so: a loaded machine may take a tenth to answer.
    outages = parse_outages("0:0.8:refuse,1.2:2.2:503,3:4:refuse")
    upstream = MockUpstream(MockSettings(latency=0.0, outages=outages))
    port = await nursery.start(serve, upstream)
    outcomes: list[int | str] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        for at in (0.0, 1.5, 2.5, 2.75, 3.25, 4.5, 4.75):
            await sleep_until(upstream, at)
            try:
                outcomes.append((await client.post(CHAT, json=PAYLOAD)).status_code)
            except httpx.TransportError as exc:
                outcomes.append(type(exc).__name__)
        stats = (await client.get(STATS_PATH)).json()
    assert outcomes == [
        "ConnectError",  # refused from the start
        503,
        200,
        200,  # on the kept-alive connection
        "ConnectError",  # that connection was dropped, and the port is closed
        200,  # listening again, on the same port
        200,
    ]
    assert stats["outage_by_kind"] == {"503": 1}  # refused connections never reach it
    assert stats["requests"] == 5


async def test_serve_fault_reset_mid_response(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(latency=0.0, faults=(Fault("reset"),)))
    port = await nursery.start(serve, upstream)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        async with client.stream("POST", CHAT, json=PAYLOAD) as response:
            assert response.status_code == 200
            assert int(response.headers["content-length"]) > 0
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                await response.aread()
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await client.post(CHAT, json=PAYLOAD)
    assert upstream.stats.faults_by_kind == {"reset": 2}


async def test_serve_fault_close_before_any_response(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(latency=0.0, faults=(Fault("close", 0.5),), seed=2))
    port = await nursery.start(serve, upstream)
    outcomes: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        for _ in range(20):
            try:
                outcomes[str((await client.post(CHAT, json=PAYLOAD)).status_code)] += 1
            except httpx.RemoteProtocolError:
                outcomes["closed"] += 1
    assert outcomes["closed"] == upstream.stats.faults_by_kind["close"] > 0
    assert outcomes["200"] == upstream.stats.ok > 0


async def test_serve_fault_hang_gives_a_read_timeout(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(latency=0.0, faults=(Fault("hang"),)))
    port = await nursery.start(serve, upstream)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=0.3) as client:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(CHAT, json=PAYLOAD)
        assert 0.25 < trio.current_time() - start < 2
        stats = (await client.get(STATS_PATH)).json()  # the server is fine
    assert stats["faults_by_kind"] == {"hang": 1}


async def test_serve_fault_trickle(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(latency=0.0, faults=(Fault("trickle"),)))
    port = await nursery.start(serve, upstream)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        with trio.fail_after(2):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some()
            assert head.startswith(b"HTTP/1.1 200 ")
            assert head.endswith(b"\r\n\r\n")  # the headers come at once, alone
            times = [trio.current_time()]
            chunks = []
            chunks.append(await stream.receive_some())
            times.append(trio.current_time())
    assert chunks == [b"{"]  # one byte at a time
    for before, after in itertools.pairwise(times):
        assert after - before == pytest.approx(TRICKLE_INTERVAL_S, abs=0.2)


async def test_serve_fault_huge(nursery: trio.Nursery) -> None:
    upstream = MockUpstream(MockSettings(latency=0.0, faults=(Fault("huge"),)))
    port = await nursery.start(serve, upstream)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client,
        client.stream("POST", CHAT, json=PAYLOAD) as response,
    ):
        assert response.headers["content-length"] == str(HUGE_BODY_BYTES)
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
    assert size == HUGE_BODY_BYTES


async def test_serve_api_key_is_never_logged(
    nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "sk-live-TopSecret"
    upstream = MockUpstream(MockSettings(latency=0.0, auth_key=key))
    port = await nursery.start(functools.partial(serve, upstream, log_requests=True))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        denied = await client.post(CHAT, json=PAYLOAD, headers={"authorization": "Bearer nope"})
        allowed = await client.post(CHAT, json=PAYLOAD, headers={"authorization": f"Bearer {key}"})
    assert (denied.status_code, allowed.status_code) == (401, 200)
    assert key not in denied.text
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["status"] for line in lines] == [401, 200]
    assert all(line["authorization"] == "present" for line in lines)
    assert key not in json.dumps(lines)


@pytest.mark.slow
def test_module_cli_listens_and_stops_on_sigterm() -> None:
    key = "sk-cli-NeverPrinted"
    src = str(Path(pacer.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pacer.mockapi",
            "--port",
            "0",
            "--concurrency",
            "3",
            "--rate",
            "50",
            "--auth-key",
            key,
            "--log",
        ],
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
        assert line["auth_key"] == "<hidden>"
        url = f"http://127.0.0.1:{line['port']}{CHAT}"
        assert httpx.post(url, json=PAYLOAD, timeout=5).status_code == 401
        auth = {"authorization": f"Bearer {key}"}
        response = httpx.post(url, json=PAYLOAD, headers=auth, timeout=5)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-requests"] == "50"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    events = [json.loads(text)["event"] for text in out.splitlines()]
    assert events == ["mock_api.request"] * 2 + ["mock_api.stopping", "mock_api.stopped"]
    assert key not in out + err
    assert json.loads(out.splitlines()[-1])["unauthorized"] == 1
