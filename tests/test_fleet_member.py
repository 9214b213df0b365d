"""A node's side of the fleet against a real redis-server, in real time (each test
lasts a fraction of a second): shares, the local reaction to a refusal, shared
pauses and breaker openings, Redis lost and found, and the daemon wired to a fleet.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import trio
from structlog.testing import capture_logs

from conftest import BASE_URL, MakeConfig, SpoolHelper, jsonl, req
from fleet_redis import (  # noqa: F401 (fixtures)
    RedisServer,
    collect_failed_connections_fixture,
    free_port,
    redis_fixture,
    redis_module_fixture,
)
from pacer.config import FleetConfig, UpstreamConfig, load_config
from pacer.control.breaker import BreakerSettings, BreakerState
from pacer.control.limit import Outcome, Sample
from pacer.fleet.degraded import DegradedSettings, DegradedShare
from pacer.fleet.fleet import Fleet
from pacer.fleet.member import FleetMember, MemberSettings
from pacer.fleet.store import Bounds, FleetStore
from pacer.service.daemon import Daemon
from pacer.service.systemd import Notifier
from pacer.service.upstream import Upstream

KEY = "api"
# coredis 6.9 leaves three anyio memory streams unclosed per failed connection: their
# ResourceWarning, when the garbage collector meets them, is no failure of pacer's.
REDIS_DOWN_LEAKS = pytest.mark.filterwarnings("ignore::ResourceWarning")


def ok_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=BASE_URL, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, json={"ok": True})))


def upstream(name: str = "api") -> Upstream:
    return Upstream(UpstreamConfig(name=name, base_url=BASE_URL), ok_client())


def member(store: FleetStore, node: str, up: Upstream, initial: int = 8) -> FleetMember:
    bounds = Bounds(initial_limit=initial, min_limit=1, max_limit=100, lease_ttl=5.0,
                    probe_interval=5.0)
    return FleetMember(store, KEY, node, up, bounds, MemberSettings(redis_timeout=0.3))


async def hold_slots(nursery: trio.Nursery, up: Upstream, n: int) -> trio.Event:
    """``n`` tasks that want a slot of ``up`` and keep it until the event is set."""
    done = trio.Event()

    async def one() -> None:
        async with up.limiter.acquire():
            await done.wait()

    for _ in range(n):
        nursery.start_soon(one)
    with trio.fail_after(1):
        while up.limiter.inflight + up.limiter.waiting < n:
            await trio.sleep(0.001)
    return done


def keep_busy(nursery: trio.Nursery, up: Upstream, n: int, hold: float = 0.1) -> None:
    """``n`` workers that take a slot of ``up`` for ``hold`` seconds, again and again
    (until the nursery is cancelled)."""

    async def worker() -> None:
        while True:
            async with up.limiter.acquire():
                await trio.sleep(hold)

    for _ in range(n):
        nursery.start_soon(worker)


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as captured:
        yield captured


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_two_nodes_share_one_limit_and_the_fleets_limit_is_in_force(
        redis: RedisServer) -> None:
    a_up, b_up = upstream(), upstream()
    async with FleetStore(redis.url) as store, trio.open_nursery() as nursery:
        a, b = member(store, "a", a_up), member(store, "b", b_up)
        assert a_up.limiter.cap == 0  # before the fleet answers: no slot at all
        keep_busy(nursery, a_up, 10)
        keep_busy(nursery, b_up, 10)
        peak = 0
        for _ in range(20):
            await a.tick()
            await b.tick()
            await trio.sleep(0.03)
            peak = max(peak, a_up.limiter.inflight + b_up.limiter.inflight)
        assert a_up.limit.limit == b_up.limit.limit == 8  # the fleet's, not their own
        assert a_up.limiter.cap == b_up.limiter.cap == 4
        assert peak <= 8  # a held all 8 until b asked, then gave back as attempts ended
        nursery.cancel_scope.cancel()


async def test_an_idle_node_holds_no_capacity(redis: RedisServer) -> None:
    a_up, b_up = upstream(), upstream()
    async with FleetStore(redis.url) as store, trio.open_nursery() as nursery:
        a, b = member(store, "a", a_up), member(store, "b", b_up)
        keep_busy(nursery, a_up, 10)
        for _ in range(4):
            await a.tick()
            await b.tick()  # b has nothing to send
            await trio.sleep(0.03)
        assert b_up.limiter.cap == 0 and a_up.limiter.cap == 8
        nursery.cancel_scope.cancel()


async def test_a_refused_slot_rests_until_the_next_tick(redis: RedisServer) -> None:
    up = upstream()
    async with FleetStore(redis.url) as store, trio.open_nursery() as nursery:
        m = member(store, "a", up, initial=4)
        done = await hold_slots(nursery, up, 6)
        await m.tick()
        assert up.limiter.cap == 4
        now = trio.current_time()
        for _ in range(2):
            for listener in up.limiter.sample_listeners:
                listener(Sample(start=now, rtt=0.01, inflight=4, outcome=Outcome.DROPPED,
                                reason="rate_limited"))
        assert up.limiter.cap == 2  # no more refusals from slots that were just refused
        grant = await m.tick()
        assert grant is not None and grant.cut and grant.limit == 3
        assert up.limit.limit == 3
        done.set()


async def test_a_429_of_a_quota_announced_as_spent_neither_cuts_nor_rests_a_slot(
        redis: RedisServer) -> None:
    up = upstream()
    async with FleetStore(redis.url) as store, trio.open_nursery() as nursery:
        m = member(store, "a", up, initial=4)
        done = await hold_slots(nursery, up, 6)
        await m.tick()
        now = trio.current_time()
        for _ in range(2):
            for listener in up.limiter.sample_listeners:
                listener(Sample(start=now, rtt=0.01, inflight=4, outcome=Outcome.IGNORE,
                                reason="quota"))
        assert up.limiter.cap == 4  # the quota's window holds the starts, not the slots
        grant = await m.tick()
        assert grant is not None and not grant.cut and grant.limit == 4
        done.set()


async def test_a_pause_and_a_breaker_opening_reach_the_other_nodes(
        redis: RedisServer) -> None:
    a_up, b_up = upstream(), upstream()
    async with FleetStore(redis.url) as store:
        a, b = member(store, "a", a_up), member(store, "b", b_up)
        await a.tick()
        await b.tick()
        a_up.gate.pause(2.0, "retry_after")
        a_up.breaker.trip(trio.current_time(), "auth", min_cooldown=3.0)
        await a.tick()
        await b.tick()
        until = b_up.pacer.paused_until
        assert until is not None and until >= trio.current_time() + 1.5
        assert b_up.breaker.state is BreakerState.OPEN
        open_until = b_up.breaker.open_until
        assert open_until is not None and open_until >= trio.current_time() + 2.5
        # The fleet's own pause does not echo back as a new one.
        await b.tick()
        grant = await a.tick()
        assert grant is not None and grant.pause_left <= 2.0


@REDIS_DOWN_LEAKS
async def test_redis_lost_degrades_once_and_rejoins_by_itself(
        tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    server = RedisServer(tmp_path, port=free_port())
    server.start()
    up = upstream()
    try:
        async with FleetStore(server.url, timeout=0.2) as store, trio.open_nursery() as n:
            m = member(store, "a", up, initial=6)
            done = await hold_slots(n, up, 10)
            await m.tick()
            assert up.limiter.cap == 6 and len(events(logs, "fleet.joined")) == 1
            server.stop()
            for _ in range(3):
                assert await m.tick() is None
            assert len(events(logs, "fleet.degraded")) == 1  # once, not per tick
            # The last share, not the whole limit, and not nothing either.
            assert up.limiter.cap == 6 and up.limit.limit == 6
            server.start()  # empty: it lost the fleet's state
            grant = None
            with trio.fail_after(5):
                while grant is None:
                    grant = await m.tick()
            assert len(events(logs, "fleet.restored")) == 1
            assert grant.limit == 6  # seeded with what the node knew, not from 1
            assert up.limiter.cap == 6
            done.set()
    finally:
        server.stop()


@REDIS_DOWN_LEAKS
async def test_a_node_that_never_reached_redis_works_on_the_floor(
        logs: list[dict[str, Any]]) -> None:
    up = upstream()
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    async with FleetStore(url, timeout=0.2) as store:
        m = member(store, "a", up)
        assert await m.tick() is None
        assert up.limiter.cap == 1  # the floor: never the whole limit
        assert [e["node"] for e in events(logs, "fleet.degraded")] == ["a"]


def test_the_degraded_share_decays_to_the_floor_and_never_grows() -> None:
    s = DegradedSettings(floor=1, half_life=10.0, decrease=0.5, cut_gap=1.0)
    share = DegradedShare(9, now=0.0, settings=s)
    assert share.cap(0.0) == 9
    assert share.cap(10.0) == 5  # 1 + 8 / 2
    assert share.cap(20.0) == 3
    assert share.cap(200.0) == 1
    assert share.on_drop(20.0) and share.cap(20.0) == 1  # floor(3 * 0.5) = 1
    assert not share.on_drop(20.5)  # one cut per cut_gap
    assert all(share.cap(t) <= 3 for t in (21.0, 50.0, 1e6))
    assert DegradedShare(0, now=0.0, settings=s).cap(0.0) == 1


async def test_the_daemon_shares_through_the_fleet_and_shows_it_in_its_state(
        redis: RedisServer, make_config: MakeConfig, spool: SpoolHelper,
        logs: list[dict[str, Any]]) -> None:
    path = make_config(upstream={"initial_limit": 4})
    path.write_text(path.read_text() + f'\n[fleet]\nredis = "{redis.url}"\nnode = "host-a"\n')
    config = load_config(path)
    assert config.fleet == FleetConfig(redis=redis.url, node="host-a")
    spool.drop("job.jsonl", jsonl([req(f"r{i}") for i in range(20)]))
    daemon = Daemon(config, drain=True, clients={"default": ok_client()},
                    notifier=Notifier(None))
    with trio.fail_after(20):
        assert await daemon.run() == 0
    assert len(spool.results("job")) == 20
    assert [e["node"] for e in events(logs, "fleet.joined")] == ["host-a"]
    assert [e["node"] for e in events(logs, "fleet.left")] == ["host-a"]
    state = json.loads((spool.root / "state.json").read_text())
    fleet = state["upstreams"]["default"]["fleet"]
    assert fleet["node"] == "host-a" and fleet["fleet_key"] == "default"
    assert fleet["limit"] >= 4 and not fleet["degraded"]
    # It left: nothing of it holds a slot any more.
    async with FleetStore(redis.url) as store:
        view = await store.describe("default")
    assert view.inflight == 0 and view.nodes == ()
    assert view.limit is not None and math.isfinite(view.limit)


def test_fleet_config_is_checked(make_config: MakeConfig) -> None:
    path = make_config()
    path.write_text(path.read_text() + '\n[fleet]\nredis = "http://x"\nlease_ttl = 0\n')
    with pytest.raises(Exception) as info:
        load_config(path)
    text = str(info.value)
    assert "fleet.redis" in text and "fleet.lease_ttl" in text


def test_a_password_in_the_redis_url_is_not_printed(make_config: MakeConfig) -> None:
    path = make_config()
    path.write_text(path.read_text() + '\n[fleet]\nredis = "redis://:s3cret@h:6379/0"\n')
    shown = json.dumps(load_config(path).to_dict())
    assert "s3cret" not in shown


async def test_the_fleet_runner_joins_ticks_and_leaves(redis: RedisServer) -> None:
    up = upstream("default")
    fleet = Fleet(FleetConfig(redis=redis.url, node="n1", tick_interval=0.01))
    fleet.join(up)
    with structlog.testing.capture_logs() as captured:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            with trio.fail_after(5):
                while up.limiter.cap is None or (up.limiter.cap == 0 and not [
                        e for e in captured if e["event"] == "fleet.joined"]):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    names = [e["event"] for e in captured]
    assert "fleet.joined" in names and names[-1] == "fleet.left"
    assert fleet.state()["default"].node == "n1"


def test_status_shows_the_fleet(make_config: MakeConfig, spool: SpoolHelper) -> None:
    from pacer.commands.status import collect, render_text
    from pacer.spool.folders import Spool
    from test_status import upstream_state, write_state

    config = load_config(make_config())
    fleet = {"fleet_key": "default", "node": "host-b", "limit": 12.0, "epoch": 3,
             "share": 4, "degraded": False, "fleet_inflight": 12, "live_nodes": 2,
             "rate": 24.5, "pace": 8.167, "quota_share": 0.3333,
             "nodes": [{"node": "host-a", "share": 8, "inflight": 7, "demand": 30},
                       {"node": "host-b", "share": 4, "inflight": 4, "demand": 4}]}
    held = Spool(spool.root)
    held.lock()  # as a running daemon does
    try:
        write_state(spool.root, os.getpid(), default=upstream_state(fleet=fleet))
        info = collect(config)
    finally:
        held.unlock()
    assert info["upstreams"]["default"]["fleet"] == fleet
    text = render_text(info)
    assert "fleet default (default): shared limit 12.0, 2 nodes, 12 slots leased" in text
    assert "learned rate 24.5/s, this node's pace 8.167/s" in text
    assert "this node spends 0.3333 of header quotas" in text
    assert "host-b (this one)" in text
    row = next(line for line in text.splitlines() if line.startswith("host-a"))
    assert row.split() == ["host-a", "8", "7", "30"]
    fleet["degraded"] = True
    held.lock()
    try:
        write_state(spool.root, os.getpid(), default=upstream_state(fleet=fleet))
        assert "Redis unreachable" in render_text(collect(config))
    finally:
        held.unlock()


async def test_a_fixed_limit_is_shared_as_it_is(redis: RedisServer) -> None:
    up = Upstream(UpstreamConfig(name="api", base_url=BASE_URL, initial_limit=3,
                                 adaptive=False), ok_client())
    fleet = Fleet(FleetConfig(redis=redis.url, node="n1"))
    joined = fleet.join(up)
    assert (joined.bounds.min_limit, joined.bounds.max_limit) == (3, 3)


def test_the_fleet_state_survives_the_state_file() -> None:
    from pacer.fleet.state import FleetNodeState, FleetState
    from pacer.service.state import ServiceState, UpstreamState

    fleet = FleetState(fleet_key="api", node="a", limit=12.0, epoch=3, share=4,
                       degraded=False, fleet_inflight=12, quota_share=0.25,
                       nodes=(FleetNodeState("a", 4, 4, 9), FleetNodeState("b", 8, 7, 30)))
    state = ServiceState(upstreams={"api": UpstreamState(fleet=fleet),
                                    "alone": UpstreamState()})
    back = ServiceState.from_json(json.loads(json.dumps(state.to_json())))
    assert back.upstreams["api"].fleet == fleet
    assert back.upstreams["alone"].fleet is None


async def test_each_node_paces_at_its_share_of_the_fleets_rate(redis: RedisServer) -> None:
    a_up, b_up = upstream(), upstream()
    async with FleetStore(redis.url) as store, trio.open_nursery() as nursery:
        a, b = member(store, "a", a_up), member(store, "b", b_up)
        a.known_rate = 20.0  # what a knew: an empty Redis is seeded with it
        await hold_slots(nursery, a_up, 20)
        await a.tick()
        now = trio.current_time()
        assert a_up.pacer.status(now).rate == pytest.approx(20.0)  # alone: all of it
        await hold_slots(nursery, b_up, 20)
        for _ in range(3):
            await b.tick()
            await a.tick()
        ra, rb = a_up.pacer.status(now).rate, b_up.pacer.status(now).rate
        assert ra is not None and rb is not None
        assert ra + rb == pytest.approx(20.0) and ra == pytest.approx(rb)
        assert a_up.pacer.learned_rate is None  # the fleet's, never a local one
        st = a.state()  # for the state file, `pacer status` and /metrics
        assert st.rate == 20.0 and st.pace == pytest.approx(ra) and st.live_nodes == 2
        nursery.cancel_scope.cancel()


async def test_the_fleets_breaker_sends_one_probe_and_closes_everywhere(
        redis: RedisServer, logs: list[dict[str, Any]]) -> None:
    a_up, b_up, c_up = upstream(), upstream(), upstream()
    for up in (a_up, b_up, c_up):  # short cool-downs: the test runs in real time
        up.breaker.settings = BreakerSettings(base_cooldown=0.1, max_cooldown=0.2, jitter=0.0)
    async with FleetStore(redis.url) as store:
        nodes = [member(store, n, u) for n, u in (("a", a_up), ("b", b_up), ("c", c_up))]
        for m in nodes:
            await m.tick()
        a_up.breaker.trip(trio.current_time(), "auth", min_cooldown=0.2)
        for m in nodes:
            await m.tick()
        assert all(u.breaker.state is BreakerState.OPEN for u in (a_up, b_up, c_up))
        await trio.sleep(0.25)
        for m in nodes:  # the cool-down is over: a asks first and holds the probe
            await m.tick()
        assert [m.grant.probe for m in nodes if m.grant] == [1, 0, 0]
        now = trio.current_time()
        assert a_up.breaker.allow(now)  # a half-opens: its probe goes
        assert not b_up.breaker.allow(now) and not c_up.breaker.allow(now)
        a_up.breaker.on_success(trio.current_time())
        assert a_up.breaker.state is BreakerState.CLOSED
        for m in nodes:
            await m.tick()
        assert all(u.breaker.state is BreakerState.CLOSED for u in (b_up, c_up))
        closed = [e for e in events(logs, "breaker.transition") if e["to"] == "closed"]
        assert sorted(e["reason"] for e in closed) == ["fleet", "fleet", "probe_succeeded"]


@REDIS_DOWN_LEAKS
async def test_without_redis_a_nodes_own_breaker_takes_over(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, port=free_port())
    server.start()
    a_up, b_up = upstream(), upstream()
    for up in (a_up, b_up):
        up.breaker.settings = BreakerSettings(base_cooldown=0.1, max_cooldown=0.2, jitter=0.0)
    try:
        async with FleetStore(server.url, timeout=0.2) as store:
            a, b = member(store, "a", a_up), member(store, "b", b_up)
            await a.tick()
            await b.tick()
            a_up.breaker.trip(trio.current_time(), "auth", min_cooldown=0.2)
            await a.tick()
            await b.tick()
            await trio.sleep(0.25)
            await a.tick()  # a holds the fleet's one probe...
            await b.tick()  # ...so b is held open
            assert b.grant is not None and b.grant.probe == 0
            assert not b_up.breaker.allow(trio.current_time())
            server.stop()
            assert await b.tick() is None  # degraded: nobody holds b open any more
            await trio.sleep(0.2)
            assert b_up.breaker.allow(trio.current_time())  # its own half-open probe
    finally:
        server.stop()


async def test_each_node_spends_its_part_of_a_quota_announced_in_headers(
        redis: RedisServer) -> None:
    a_up, b_up = upstream(), upstream()
    async with FleetStore(redis.url) as store, trio.open_nursery() as nursery:
        a, b = member(store, "a", a_up), member(store, "b", b_up)
        a_done = await hold_slots(nursery, a_up, 20)
        await a.tick()
        assert a_up.pacer.quota_share == 1.0  # alone: the whole quota, as one pacer
        await hold_slots(nursery, b_up, 20)
        for _ in range(3):
            await b.tick()
            await a.tick()
        # Both read the fleet-wide remaining: each spends its half of it.
        assert a_up.pacer.quota_share == b_up.pacer.quota_share == 0.5
        assert a.state().quota_share == 0.5
        a_done.set()
        for _ in range(3):
            await a.tick()
            await b.tick()
        assert b_up.pacer.quota_share == 1.0  # a is idle: b may spend it all
        nursery.cancel_scope.cancel()


@REDIS_DOWN_LEAKS
async def test_without_redis_a_node_keeps_its_part_of_a_quota_shrinking_never_all(
        tmp_path: Path) -> None:
    server = RedisServer(tmp_path, port=free_port())
    server.start()
    a_up, b_up = upstream(), upstream()
    clock = [0.0]
    try:
        async with FleetStore(server.url, timeout=0.2) as store, trio.open_nursery() as n:
            settings = MemberSettings(redis_timeout=0.3, degraded=DegradedSettings(
                floor=1, half_life=10.0))
            b_ = Bounds(initial_limit=8, min_limit=1, max_limit=100, lease_ttl=5.0,
                        probe_interval=5.0)
            a = FleetMember(store, KEY, "a", a_up, b_, settings, clock=lambda: clock[0])
            b = FleetMember(store, KEY, "b", b_up, b_, settings)
            await hold_slots(n, a_up, 20)
            await hold_slots(n, b_up, 20)
            for _ in range(3):
                await a.tick()
                await b.tick()
            # (a came first and still has its 8 slots in use, above its share of 4)
            assert a.held == 8 and a_up.pacer.quota_share == 0.5
            server.stop()
            assert await a.tick() is None
            assert a_up.pacer.quota_share == 0.5  # its last part, not the whole quota
            clock[0] = 10.0  # a half-life: 8 slots -> 1 + 7 / 2 = 4.5, rounded to 5
            assert await a.tick() is None
            assert a_up.limiter.cap == 5
            assert a_up.pacer.quota_share == pytest.approx(0.5 * 5 / 8)
            clock[0] = 1000.0
            assert await a.tick() is None
            assert a_up.pacer.quota_share == pytest.approx(0.5 * 1 / 8)  # at the floor
            n.cancel_scope.cancel()
    finally:
        server.stop()


@REDIS_DOWN_LEAKS
async def test_a_node_that_never_reached_redis_spends_one_slots_worth_of_a_quota() -> None:
    up = upstream()
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    async with FleetStore(url, timeout=0.2) as store:
        m = member(store, "a", up)
        assert await m.tick() is None
        # The fleet's size is unknown: one slot (the floor) of the largest limit.
        assert up.pacer.quota_share == pytest.approx(1 / 100)
