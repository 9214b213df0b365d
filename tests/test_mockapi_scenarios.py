"""The mock API's scenario behaviours (the controller's suite needs them): refusals
after the service time or never, Vector's exponential knee, a slow link, lognormal
service times. Virtual time, through the mock's httpx transport."""

from __future__ import annotations

import statistics
from collections import Counter

import httpx
import pytest
import trio
import trio.testing

from pacer.mockapi import MockSettings, MockUpstream, mock_transport

CHAT = "/v1/chat/completions"
PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def burst(upstream: MockUpstream, n: int,
                timeout: float = 5.0) -> list[tuple[int | None, float]]:
    """n requests at once: (status or None for no answer within timeout, seconds)."""
    out: list[tuple[int | None, float]] = []
    async with httpx.AsyncClient(transport=mock_transport(upstream),
                                 base_url="http://mock") as client:
        async def one() -> None:
            start = trio.current_time()
            status: int | None = None
            with trio.move_on_after(timeout):
                status = (await client.post(CHAT, json=PAYLOAD)).status_code
            out.append((status, trio.current_time() - start))

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one)
    return out


async def test_defer_refuses_after_the_service_time(
        autojump_clock: trio.testing.MockClock) -> None:
    up = MockUpstream(MockSettings(concurrency=2, latency=0.1, cap_action="defer"))
    results = await burst(up, 5)
    assert Counter(s for s, _ in results) == {200: 2, 429: 3}
    assert all(d == pytest.approx(0.1) for _, d in results)


async def test_drop_never_answers(autojump_clock: trio.testing.MockClock) -> None:
    up = MockUpstream(MockSettings(concurrency=2, latency=0.1, cap_action="drop"))
    results = await burst(up, 5, timeout=1.0)
    assert Counter(s for s, _ in results) == {200: 2, None: 3}
    assert sorted(d for s, d in results if s is None) == [pytest.approx(1.0)] * 3


async def test_a_rate_cap_can_defer_too(autojump_clock: trio.testing.MockClock) -> None:
    up = MockUpstream(MockSettings(rate=1.0, latency=0.2, rate_action="defer"))
    results = await burst(up, 3)
    assert Counter(s for s, _ in results) == {200: 1, 429: 2}
    assert all(d == pytest.approx(0.2) for _, d in results)


async def test_exponential_knee_and_slow_link(autojump_clock: trio.testing.MockClock) -> None:
    knee = MockUpstream(MockSettings(latency=0.1, knee=2, knee_exp=1.1))
    durations = sorted(d for _, d in await burst(knee, 4))
    # Each arrives with one more in service: 1, 2 (no knee), 3 (x1.1), 4 (x1.21).
    assert durations == [pytest.approx(x) for x in (0.1, 0.1, 0.11, 0.121)]
    slow = MockUpstream(MockSettings(latency=0.1, slow_link=True))
    assert sorted(d for _, d in await burst(slow, 3)) == [
        pytest.approx(x) for x in (0.1, 0.2, 0.3)]


async def test_lognormal_service_times_have_the_latency_as_median(
        autojump_clock: trio.testing.MockClock) -> None:
    up = MockUpstream(MockSettings(latency=1.0, lognormal=1.0, seed=3))
    durations = [d for _, d in await burst(up, 400, timeout=100.0)]
    assert 0.85 <= statistics.median(durations) <= 1.15
    assert max(durations) > 5.0  # the long tail of long outputs


@pytest.mark.parametrize("kwargs", [{"cap_action": "later"}, {"rate_action": "x"},
                                    {"knee_exp": 0.5}, {"lognormal": -1.0}])
def test_bad_scenario_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MockSettings(**kwargs)  # type: ignore[arg-type]
