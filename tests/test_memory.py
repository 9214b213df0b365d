"""What pacer learned survives a restart: ``spool/learned.json``, its discount by age,
the resume of an upstream from it, and a daemon that restarts where it left off."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import httpx
import pytest
import structlog
import trio
from trio.testing import MockClock

from conftest import MakeConfig, SpoolHelper, req
from pacer.config import UpstreamConfig, load_config
from pacer.control.aimd import AimdLimit
from pacer.control.limit import Outcome, Sample
from pacer.mockapi import MockSettings, MockUpstream, mock_transport
from pacer.service.daemon import Daemon
from pacer.service.memory import LEARNED_FILE, Learned, LearnedStore, discounted
from pacer.service.systemd import Notifier
from pacer.service.upstream import Upstream

NOW = 1_800_000_000.0


def test_store_round_trip_and_only_writes_changes(tmp_path: Path) -> None:
    store = LearnedStore(tmp_path)
    assert store.load() == {}
    learned = {"a": Learned(12, 3.5, 0.25, NOW), "b": Learned(1, None, None, NOW)}
    assert store.save(learned)
    assert not store.save({**learned, "a": Learned(12, 3.5, 0.25, NOW + 5)})  # times aside
    assert store.save({**learned, "a": Learned(13, 3.5, 0.25, NOW + 5)})
    again = LearnedStore(tmp_path).load()
    assert again["a"] == Learned(13, 3.5, 0.25, NOW + 5) and again["b"] == learned["b"]
    assert [p.name for p in tmp_path.iterdir()] == [LEARNED_FILE]  # no temp file left
    assert oct(os.stat(tmp_path / LEARNED_FILE).st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("text", ["", "{", "[1]", '"x"', json.dumps({
    "bad-limit": {"limit": 0, "saved_at": NOW},
    "bool": {"limit": True, "saved_at": NOW},
    "nan-rate": {"limit": 3, "rate": float("nan"), "saved_at": NOW},
    "no-time": {"limit": 3},
    "neg-rtt": {"limit": 3, "min_rtt": -1, "saved_at": NOW},
    "not-obj": 5,
})])
def test_a_malformed_file_is_no_memory(tmp_path: Path, text: str) -> None:
    (tmp_path / LEARNED_FILE).write_text(text)
    assert LearnedStore(tmp_path).load() == {}


def test_discount_by_age() -> None:
    learned = Learned(40, 20.0, 0.1, NOW)
    assert discounted(learned, NOW) == learned
    assert discounted(learned, NOW - 100) == learned  # a clock set back: age 0
    half = discounted(learned, NOW + 600)
    assert half is not None and half.limit == 20 and half.rate == pytest.approx(10.0)
    assert half.min_rtt == 0.1
    old = discounted(learned, NOW + 6 * 3600)
    assert old is not None and old.limit == 1
    assert discounted(learned, NOW + 2 * 86400) is None


def test_aimd_resume_holds_the_plateau_and_probes_above_it() -> None:
    limit = AimdLimit.from_values(initial_limit=1, max_limit=100)
    changes = []
    limit.subscribe(changes.append)
    limit.resume(24, at=0.0, min_rtt=0.1)
    assert limit.limit == 24 and limit.phase == "steady" and limit.min_rtt == 0.1
    assert [(c.old_limit, c.new_limit, c.reason) for c in changes] == [(1, 24, "resumed")]
    # Used, clean round trips at the plateau: a probe of +1, not a doubling.
    t = 0.0
    for _ in range(40):
        for _ in range(24):
            limit.on_sample(Sample(t, 0.1, 24, Outcome.SUCCESS))
        t += 0.1
        if limit.phase != "steady":
            break
    assert limit.limit == 25 and limit.phase == "probe"


async def test_upstream_resumes_limit_and_rate(autojump_clock: MockClock) -> None:
    cfg = UpstreamConfig(name="default", base_url="http://mock", initial_limit=1)
    api = MockUpstream(MockSettings(latency=0.01))
    async with httpx.AsyncClient(transport=mock_transport(api), base_url="http://mock") as c:
        up = Upstream(cfg, c, rng=random.Random(1), wall_clock=lambda: NOW + 600)
        with structlog.testing.capture_logs() as logs:
            up.resume(Learned(32, 8.0, 0.05, NOW))
        assert up.limit.limit == 16  # half: saved 10 minutes ago
        assert up.pacer.learned_rate == pytest.approx(4.0)
        assert up.limiter.limit.limit == 16
        assert [e["event"] for e in logs] == ["limit.changed", "upstream.resumed"]
        saved = up.learned()
        assert saved.limit == 16 and saved.rate == pytest.approx(4.0)
        assert saved.saved_at == NOW + 600


@pytest.fixture
def virtual_clock() -> MockClock:
    """Virtual time that jumps only after 10 ms of real idleness (the daemon waits
    for worker threads: fsyncs), as in test_daemon."""
    return MockClock(autojump_threshold=0.01)


async def drain(path: Path) -> Daemon:
    api = MockUpstream(MockSettings(concurrency=8, latency=0.1, header_style="none", seed=1))
    client = httpx.AsyncClient(transport=mock_transport(api), base_url="http://mock.test")
    daemon = Daemon(load_config(path), drain=True, clients={"default": client},
                    notifier=Notifier(None))

    async def ticker() -> None:
        # A deadline never far away: while the daemon waits for a worker thread (an
        # fsync) the clock jumps to the next deadline, which must not be fail_after's.
        while True:
            await trio.sleep(0.5)

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            assert await daemon.run() == 0
            nursery.cancel_scope.cancel()
    return daemon


async def test_a_restarted_daemon_resumes_what_it_learned(
        virtual_clock: MockClock, make_config: MakeConfig, spool: SpoolHelper) -> None:
    """Two drains against a hidden cap of 8: the second starts at the limit the
    first learned (written to learned.json), not at 1."""
    path = make_config(upstream={"initial_limit": 1})
    spool.drop("a.jsonl", [req(f"a-{i}") for i in range(200)])
    await drain(path)
    saved = json.loads((spool.root / LEARNED_FILE).read_text())["default"]
    assert 5 <= saved["limit"] <= 12 and saved["min_rtt"] is not None, saved

    spool.drop("b.jsonl", [req(f"b-{i}") for i in range(10)])
    with structlog.testing.capture_logs() as logs:
        await drain(path)
    resumed = [e for e in logs if e["event"] == "limit.changed" and e["reason"] == "resumed"]
    assert resumed, [e for e in logs if e["event"] == "limit.changed"][:3]
    assert resumed[0]["old_limit"] == 1 and resumed[0]["new_limit"] >= 4, resumed
