"""The fleet's Lua scripts against a real redis-server: leases, shares, the shared
controller's cuts and growth, pauses, and what expiry and jumps of Redis ``TIME`` do.

Time jumps are made with the store's ``skew_ms`` (added to Redis ``TIME`` inside the
scripts), so no test sleeps.
"""

from __future__ import annotations

import pytest

from fleet_redis import (  # noqa: F401 (fixtures)
    RedisServer,
    collect_failed_connections_fixture,
    redis_fixture,
    redis_module_fixture,
)
from pacer.fleet.store import Bounds, FleetStore, Grant, Report

KEY = "api"
TTL = 5.0


def bounds(initial: int = 1, lo: int = 1, hi: int = 256, probe: float = 5.0) -> Bounds:
    return Bounds(initial_limit=initial, min_limit=lo, max_limit=hi, lease_ttl=TTL,
                  probe_interval=probe)


def report(node: str, demand: int, in_use: int = 0, *, epoch: int = 0, drops: int = 0,
           oks: int = 0, rtt: float | None = None, pause: float = 0.0) -> Report:
    return Report(node=node, demand=demand, in_use=in_use, seen_epoch=epoch, drops=drops,
                  successes=oks, min_rtt=rtt, pause=pause)


async def tick(store: FleetStore, r: Report, b: Bounds | None = None, seed: float = 0.0,
               skew: float = 0.0) -> Grant:
    store.skew_ms = round(skew * 1000)
    return await store.tick(KEY, r, b or bounds(), seed)


async def test_first_tick_sets_up_the_limit_and_grants_at_most_the_demand(
        redis: RedisServer) -> None:
    async with FleetStore(redis.url) as store:
        g = await tick(store, report("a", demand=3), bounds(initial=8))
        assert g.limit == 8 and g.epoch == 0 and g.nodes == 1
        assert g.held == 3 and g.fleet_inflight == 3
        g = await tick(store, report("a", demand=20), bounds(initial=8))
        assert g.held == 8 and g.fleet_inflight == 8


async def test_leases_never_exceed_the_limit_and_shares_follow_demand(
        redis: RedisServer) -> None:
    b = bounds(initial=8)
    async with FleetStore(redis.url) as store:
        a = await tick(store, report("a", demand=50), b)
        assert a.held == 8
        bb = await tick(store, report("b", demand=50), b)
        assert bb.held == 0 and bb.share == 4  # nothing free yet, but a fair share of 4
        a = await tick(store, report("a", demand=50, in_use=2), b)
        assert a.held == 4  # a gives back what is above its share and not in use
        bb = await tick(store, report("b", demand=50), b)
        assert bb.held == 4 and bb.fleet_inflight == 8
        # An idle node holds no capacity: its share goes to the one that wants it.
        bb = await tick(store, report("b", demand=0), b)
        assert bb.held == 0
        a = await tick(store, report("a", demand=50, in_use=4), b)
        assert a.held == 8 and a.share == 8


async def test_slots_in_use_are_kept_even_above_the_share(redis: RedisServer) -> None:
    b = bounds(initial=6)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=6), b)
        await tick(store, report("b", demand=6), b)
        a = await tick(store, report("a", demand=6, in_use=6), b)
        assert a.held == 6  # all six are out: none can be given back yet
        bb = await tick(store, report("b", demand=6), b)
        assert bb.held == 0 and bb.fleet_inflight == 6


async def test_a_dead_nodes_leases_are_freed_when_its_heartbeat_lapses(
        redis: RedisServer) -> None:
    b = bounds(initial=10)
    async with FleetStore(redis.url) as store:
        a = await tick(store, report("a", demand=10), b)
        assert a.held == 10
        # "a" dies. Just before its heartbeat lapses, "b" gets nothing...
        bb = await tick(store, report("b", demand=10), b, skew=b.node_ttl - 0.2)
        assert bb.held == 0 and bb.nodes == 2
        # ...once it has (well within the lease TTL), "b" gets all, "a" is no node.
        assert b.node_ttl < TTL
        bb = await tick(store, report("b", demand=10), b, skew=b.node_ttl + 0.01)
        assert bb.held == 10 and bb.nodes == 1
        view = await store.describe(KEY)
        assert [n.node for n in view.nodes] == ["b"] and view.inflight == 10
        assert not await store.client.exists([store.keys(KEY).node("a")])


async def test_a_lease_renewed_after_expiry_is_not_revived(redis: RedisServer) -> None:
    b = bounds(initial=4)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=4, in_use=0), b)
        # "a" was cut off for longer than the TTL; nobody reaped its leases meanwhile.
        a = await tick(store, report("a", demand=4, in_use=0), b, skew=TTL + 1)
        # Its expired leases were not renewed: it holds new ones (ids it never had).
        assert a.held == 4
        keys = store.keys(KEY)
        members = await store.client.zrange(keys.leases, 0, -1)
        assert sorted(m.decode() for m in members) == ["a#5", "a#6", "a#7", "a#8"]
        # Meanwhile "b" took the capacity: "a" coming back late gets nothing.
        bb = await tick(store, report("b", demand=4), b, skew=2 * TTL + 2)
        assert bb.held == 4
        a = await tick(store, report("a", demand=4), b, skew=2 * TTL + 2.1)
        assert a.held == 0


async def test_one_cut_per_epoch_however_many_nodes_saw_the_drops(
        redis: RedisServer) -> None:
    b = bounds(initial=20)
    async with FleetStore(redis.url) as store:
        for node in "abcd":
            await tick(store, report(node, demand=5, in_use=5), b)
        # All four saw 429s in epoch 0: one cut, not four.
        g = await tick(store, report("a", demand=5, in_use=5, drops=3), b)
        assert g.cut and g.epoch == 1 and g.limit == 18  # 20 * 0.9
        for node in "bcd":
            g = await tick(store, report(node, demand=5, in_use=5, drops=2), b)
            assert not g.cut and g.epoch == 1 and g.limit == 18
        # Drops seen in the new epoch cut again (once the news had time to spread:
        # three ticks here, no rtt known yet).
        g = await tick(store, report("b", demand=5, in_use=5, drops=1, epoch=1), b, skew=0.1)
        assert not g.cut
        g = await tick(store, report("b", demand=5, in_use=5, drops=1, epoch=1), b, skew=0.2)
        assert g.cut and g.epoch == 2 and g.limit < 18


async def test_the_limit_grows_only_when_the_fleet_uses_it(redis: RedisServer) -> None:
    b = bounds(initial=4)
    async with FleetStore(redis.url) as store:
        for _ in range(5):  # one request at a time: successes, but 1 of 4 slots used
            g = await tick(store, report("a", demand=1, in_use=1, oks=10, rtt=0.3), b)
        assert g.limit == 4
        g = await tick(store, report("a", demand=40, in_use=0), b)
        g = await tick(store, report("a", demand=40, in_use=4, oks=4, rtt=0.3), b)
        assert g.limit == 8  # slow start: +1 per success while the fleet is full
        assert g.rtt_noload == pytest.approx(0.3)


async def test_after_a_cut_it_returns_to_the_plateau_and_probes_above_it_rarely(
        redis: RedisServer) -> None:
    b = bounds(initial=13, probe=5.0)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=40), b)
        g = await tick(store, report("a", demand=40, in_use=13, drops=1), b)
        assert g.cut and g.limit == 11 and g.plateau == 12
        g = await tick(store, report("a", demand=40, in_use=11, oks=11, rtt=0.3), b, skew=0.4)
        assert g.limit == 12  # +1 per round trip's worth of successes, up to the plateau
        g = await tick(store, report("a", demand=40, in_use=12, oks=12, rtt=0.3), b, skew=1)
        assert g.limit == 12  # held at the plateau...
        g = await tick(store, report("a", demand=40, in_use=12, oks=12, rtt=0.3), b, skew=5.1)
        assert g.limit == 13  # ...until the probe interval has passed
        # A refused probe goes back to the plateau (not 10% below: nothing fell)...
        g = await tick(store, report("a", demand=40, in_use=13, drops=1, epoch=g.epoch), b,
                       skew=5.5)
        assert g.cut and g.limit == 12 and g.plateau == 12
        # ...and a drop at the plateau itself lowers both.
        g = await tick(store, report("a", demand=40, in_use=12, drops=1, epoch=g.epoch), b,
                       skew=6.0)
        assert g.cut and g.limit == 10 and g.plateau == 11


async def test_a_fleet_that_lost_its_state_starts_from_what_a_node_knew(
        redis: RedisServer) -> None:
    async with FleetStore(redis.url) as store:
        g = await tick(store, report("a", demand=40), bounds(initial=1), seed=12.0)
        assert g.limit == 12 and g.plateau == 12 and g.held == 12


async def test_a_joining_node_starts_at_its_share_of_the_learned_limit(
        redis: RedisServer) -> None:
    b = bounds(initial=1)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=100), b, seed=12.0)
        g = await tick(store, report("b", demand=100), b)
        assert g.limit == 12 and g.share == 6  # not 1: half of what the fleet learned
        await tick(store, report("a", demand=100, in_use=0), b)
        g = await tick(store, report("b", demand=100), b)
        assert g.held == 6


async def test_leave_releases_exactly_its_own_leases(redis: RedisServer) -> None:
    b = bounds(initial=8)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=3), b)
        await tick(store, report("b", demand=5), b)
        assert await store.leave(KEY, "a") == 3
        view = await store.describe(KEY)
        assert view.inflight == 5 and [(n.node, n.held) for n in view.nodes] == [("b", 5)]
        assert await store.leave(KEY, "a") == 0


async def test_a_pause_seen_by_one_node_pauses_all(redis: RedisServer) -> None:
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=1, pause=2.0))
        g = await tick(store, report("b", demand=1), skew=0.5)
        assert 1.4 <= g.pause_left <= 1.5
        g = await tick(store, report("b", demand=1), skew=2.1)
        assert g.pause_left == 0


async def test_redis_time_jumping_back_does_not_keep_leases_or_pauses_alive(
        redis: RedisServer) -> None:
    b = bounds(initial=6)
    async with FleetStore(redis.url) as store:
        # Everything written while the clock was an hour ahead...
        await tick(store, report("a", demand=6, pause=30.0), b, skew=3600)
        # ...after the jump back no lease lasts longer than one TTL from now.
        g = await tick(store, report("b", demand=6), b)
        assert g.held == 0 and g.fleet_inflight == 6
        assert g.pause_left <= 600
        g = await tick(store, report("b", demand=6), b, skew=b.node_ttl + 0.01)
        assert g.held == 6  # "a" stopped ticking: gone one node TTL later
        # A cut is not blocked by a last decrease stamped in the "future".
        g = await tick(store, report("b", demand=6, in_use=6, drops=1), b, skew=TTL + 0.02)
        assert g.cut


async def test_redis_time_jumping_forward_expires_leases_that_nodes_take_again(
        redis: RedisServer) -> None:
    b = bounds(initial=6)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=3), b)
        await tick(store, report("b", demand=3), b)
        g = await tick(store, report("a", demand=3, in_use=3), b, skew=3600)
        assert g.held == 3 and g.fleet_inflight == 3  # b's expired, a's taken again
        g = await tick(store, report("b", demand=3, in_use=3), b, skew=3600)
        assert g.held == 3 and g.fleet_inflight == 6


# ------------------------------------------------------------------- the learned rate


def rated(node: str, demand: int = 40, in_use: int = 0, *, epoch: int = 0, refused: int = 0,
          served: int = 0, paced: int = 0, finished: int | None = None,
          want_probe: bool = False, probe_result: int = 0, breaker: float = 0.0) -> Report:
    """A tick's report with 429s (all counted as drops of ``epoch``) and successes."""
    return Report(node=node, demand=demand, in_use=in_use, seen_epoch=epoch, drops=refused,
                  successes=served - paced, min_rtt=0.3 if served else None,
                  refused=refused, refused_in_epoch=refused, served=served, paced=paced,
                  finished=served + refused if finished is None else finished,
                  want_probe=want_probe, probe_result=probe_result, breaker=breaker)


async def learn_a_rate(store: FleetStore, b: Bounds) -> Grant:
    """Two 429s at the plateau, a cut apart, the limit not risen: a rate cap (the
    fleet served 20 requests/s meanwhile)."""
    await tick(store, rated("a", served=0), b, seed=10.0)
    # (5 of 10 slots in use: the limit does not grow)
    g = await tick(store, rated("a", in_use=5, served=20), b, skew=1.0)
    assert g.rate is None and g.plateau == 10 and g.limit == 10
    g = await tick(store, rated("a", in_use=10, refused=2, epoch=g.epoch), b, skew=1.5)
    assert g.cut and g.rate is None  # the first: left to the concurrency limit
    g = await tick(store, rated("a", in_use=9, refused=2, epoch=g.epoch), b, skew=2.0)
    return g


async def test_429s_at_a_steady_plateau_twice_learn_one_rate_for_the_fleet(
        redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        g = await learn_a_rate(store, b)
        assert g.rate_cut and not g.cut  # the rate's: the concurrency limit stays
        assert g.limit == 9
        # The fleet's success rate (20 in the last second) x 0.9.
        assert g.rate == pytest.approx(20 * 0.9, rel=0.01)
        assert g.pace == pytest.approx(g.rate)  # one node: all of it


async def test_429s_after_a_rise_or_from_a_probe_are_the_concurrency_limits(
        redis: RedisServer) -> None:
    b = bounds(initial=16, probe=1.0)
    async with FleetStore(redis.url) as store:
        # A slow start that overshot: cut, then 429s just after the climb back.
        await tick(store, rated("a"), b)
        g = await tick(store, rated("a", in_use=16, refused=4), b, skew=0.4)
        assert g.cut and g.limit == 14 and g.plateau == 15
        g = await tick(store, rated("a", in_use=14, served=14), b, skew=0.8)
        assert g.limit == 15
        g = await tick(store, rated("a", in_use=15, refused=3, epoch=g.epoch), b, skew=0.85)
        assert g.cut and g.rate is None
        redis.flush()
        # A probe above the plateau refused, twice, long after it rose: concurrency's.
        await tick(store, rated("a"), b, seed=10.0)
        t = 1.5
        for _ in range(2):
            g = await tick(store, rated("a", in_use=10, served=10), b, skew=t)
            assert g.limit == g.plateau + 1 == 11  # probing
            g = await tick(store, rated("a", in_use=11, refused=1, epoch=g.epoch), b,
                           skew=t + 1.5)
            assert g.cut and g.limit == g.plateau == 10 and g.rate is None
            t += 2.6


async def test_429s_while_the_rate_binds_lower_it_once_a_second_not_the_limit(
        redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        g = await learn_a_rate(store, b)
        first = g.rate
        assert first is not None
        # The pace holds the starts (paced successes): 429s now are the rate's.
        g = await tick(store, rated("a", in_use=5, served=10, paced=10), b, skew=2.5)
        g = await tick(store, rated("a", in_use=5, refused=1, epoch=g.epoch), b, skew=2.6)
        assert not g.rate_cut and g.rate == first  # within a second of the last cut
        g = await tick(store, rated("a", in_use=5, refused=1, epoch=g.epoch), b, skew=3.1)
        assert g.rate_cut and not g.cut and g.limit == 9
        assert g.rate is not None and g.rate < first


async def test_a_learned_rate_is_probed_upward_and_searched_again_when_capacity_rose(
        redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        g = await learn_a_rate(store, b)
        rate = g.rate
        assert rate is not None
        t = 2.0

        async def clean_second() -> Grant:
            # A second in which the pace bound (every start held) and nothing was refused.
            nonlocal t, rate
            t += 1.0
            n = round(rate * 1.05)
            g = await tick(store, rated("a", in_use=5, served=n, paced=n), b, skew=t)
            assert g.rate is not None and g.rate > rate
            return g

        # A first estimate is searched: x 1.1 a clean second...
        for _ in range(3):
            g = await clean_second()
            assert g.rate == pytest.approx(rate * 1.1)
            rate = g.rate
        # ...until a 429 (here at 30 % above the rate learned):
        refused_at = rate
        g = await tick(store, rated("a", in_use=5, refused=1, epoch=g.epoch), b, skew=t + 0.5)
        assert g.rate_cut and not g.cut and g.rate is not None
        rate, base = g.rate, g.rate
        t += 0.6
        # then +2 % of the rate set at that cut per clean second, up to 10 % above the
        # rate refused; past that, without a 429, the capacity rose: searched again.
        while rate < 1.1 * refused_at:
            g = await clean_second()
            assert g.rate == pytest.approx(rate + 0.02 * base)
            rate = g.rate
        g = await clean_second()
        assert g.rate == pytest.approx(rate * 1.1)


async def test_a_rate_that_does_not_bind_is_not_raised(redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        g = await learn_a_rate(store, b)
        rate = g.rate
        for i in range(4):  # successes the pace did not hold: something else binds
            g = await tick(store, rated("a", in_use=5, served=20), b, skew=3.0 + i)
            assert g.rate == rate


async def test_pace_shares_follow_the_slot_shares_and_add_up_to_the_rate(
        redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        g = await learn_a_rate(store, b)
        rate = g.rate
        assert rate is not None
        b1 = await tick(store, rated("b", demand=40), b, skew=2.01)
        c1 = await tick(store, rated("c", demand=2), b, skew=2.02)
        a1 = await tick(store, rated("a", demand=40), b, skew=2.03)
        b1 = await tick(store, rated("b", demand=40), b, skew=2.04)
        # 9 slots: c wants 2, a and b share the other 7 (4 and 3, or 3 and 4).
        assert c1.pace == pytest.approx(rate * 2 / 9)
        assert a1.pace is not None and b1.pace is not None
        assert a1.pace + b1.pace + c1.pace == pytest.approx(rate)
        assert {round(a1.pace / rate * 9), round(b1.pace / rate * 9)} == {3, 4}
        # A node that joins gets its share of the rate at its first tick.
        d1 = await tick(store, rated("d", demand=40), b, skew=2.05)
        assert d1.rate == rate and d1.pace is not None and 0 < d1.pace < rate / 2


async def test_a_fleet_that_lost_its_state_starts_from_the_rate_a_node_knew(
        redis: RedisServer) -> None:
    async with FleetStore(redis.url) as store:
        g = await store.tick(KEY, rated("a"), bounds(), seed_limit=9.0, seed_rate=21.5)
        assert g.rate == pytest.approx(21.5) and g.pace == pytest.approx(21.5)


async def test_redis_time_jumping_back_does_not_block_rate_cuts(redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        await tick(store, rated("a"), b, seed=10.0, skew=3600)
        g = await tick(store, rated("a", in_use=5, served=20), b, skew=3601)
        g = await tick(store, rated("a", in_use=10, refused=2, epoch=g.epoch), b, skew=3601.5)
        g = await tick(store, rated("a", in_use=9, refused=2, epoch=g.epoch), b, skew=3602)
        assert g.rate is not None
        rate = g.rate
        g = await tick(store, rated("a", in_use=5, served=10, paced=10), b, skew=0)
        # After the jump back, the last cut is not "in the future": a 429 cuts at once.
        g = await tick(store, rated("a", in_use=5, refused=1, epoch=g.epoch), b, skew=0.1)
        assert g.rate_cut and g.rate is not None and g.rate < rate


# --------------------------------------------------------- one breaker, one probe


async def test_one_half_open_probe_for_the_whole_fleet(redis: RedisServer) -> None:
    async with FleetStore(redis.url) as store:
        for node in "abc":
            await tick(store, rated(node, demand=1))
        g = await tick(store, rated("a", demand=1, breaker=2.0, want_probe=True))
        assert g.breaker_open and g.breaker_left == pytest.approx(2.0, abs=0.05)
        assert g.probe == -1  # cooling down: nobody probes
        # The cool-down is over: the first node that wants to probe holds the probe.
        g = await tick(store, rated("b", demand=1, want_probe=True), skew=2.1)
        assert g.probe == 1 and g.breaker_open
        for node in "ac":
            g = await tick(store, rated(node, demand=1, want_probe=True), skew=2.2)
            assert g.probe == 0 and g.breaker_open
        # The holder renews it while its breaker is not closed; nobody else gets it.
        g = await tick(store, rated("b", demand=1, want_probe=True), skew=4.0)
        assert g.probe == 1
        g = await tick(store, rated("c", demand=1, want_probe=True), skew=4.1)
        assert g.probe == 0
        # Its probe succeeded: the fleet's breaker closes, for everyone.
        g = await tick(store, rated("b", demand=1, probe_result=1), skew=4.2)
        assert not g.breaker_open and g.probe == -1
        g = await tick(store, rated("c", demand=1, want_probe=True), skew=4.3)
        assert not g.breaker_open and g.probe == -1


async def test_a_failed_probe_reopens_and_frees_the_probe(redis: RedisServer) -> None:
    async with FleetStore(redis.url) as store:
        await tick(store, rated("a", demand=1, breaker=1.0, want_probe=True))
        g = await tick(store, rated("a", demand=1, want_probe=True), skew=1.1)
        assert g.probe == 1
        # Its probe failed: its breaker reopened with a longer cool-down.
        g = await tick(store, rated("a", demand=1, probe_result=-1, breaker=2.0,
                                    want_probe=True), skew=1.2)
        assert g.breaker_open and g.probe == -1 and g.breaker_left == pytest.approx(2.0, abs=0.05)
        g = await tick(store, rated("b", demand=1, want_probe=True), skew=3.3)
        assert g.probe == 1  # after the new cool-down, whoever asks first


async def test_the_probe_of_a_node_that_died_is_freed(redis: RedisServer) -> None:
    b = bounds()
    async with FleetStore(redis.url) as store:
        await tick(store, rated("a", demand=1, breaker=1.0, want_probe=True), b)
        await tick(store, rated("b", demand=1, want_probe=True), b, skew=0.5)
        g = await tick(store, rated("a", demand=1, want_probe=True), b, skew=1.1)
        assert g.probe == 1
        g = await tick(store, rated("b", demand=1, want_probe=True), b, skew=1.2)
        assert g.probe == 0
        # "a" stops ticking: once it is gone (node TTL), "b" may probe.
        g = await tick(store, rated("b", demand=1, want_probe=True), b,
                       skew=1.1 + b.node_ttl + 0.05)
        assert g.probe == 1


async def test_a_silent_node_does_not_make_a_probe_look_held(redis: RedisServer) -> None:
    b = bounds(initial=1, probe=1.0)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=20, in_use=0), b, seed=12.0)
        await tick(store, report("b", demand=20, in_use=0), b)
        await tick(store, report("b", demand=20, in_use=6, oks=6, rtt=0.3), b, skew=1.0)
        g = await tick(store, report("a", demand=20, in_use=6, oks=6, rtt=0.3), b, skew=1.01)
        assert g.limit == 13 and g.plateau == 12  # a probe above the plateau
        # "b" was killed: its last report says 6 in use, but it has not ticked since.
        # "a" alone uses 7 of the 13: the probe has not been tried, so it has not held.
        g = await tick(store, report("a", demand=20, in_use=7, oks=7, rtt=0.3), b, skew=2.3)
        assert g.nodes == 2 and g.plateau == 12 and g.used == 7
        # Heard from recently (within three ticks), its slots count: then it held.
        await tick(store, report("b", demand=20, in_use=6, oks=6, rtt=0.3), b, skew=2.35)
        g = await tick(store, report("a", demand=20, in_use=7, oks=7, rtt=0.3), b, skew=2.4)
        assert g.used == 13 and g.plateau == 13


async def test_429s_at_a_level_the_fleet_held_are_a_rates_even_while_it_climbs(
        redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        await tick(store, rated("a"), b, seed=12.0)
        # 12 held in use, unrefused, for over two round trips: proven.
        # (successes the pace held back: they do not grow the limit, no probe here)
        await tick(store, rated("a", in_use=12, served=40, paced=40), b, skew=0.1)
        g = await tick(store, rated("a", in_use=12, served=40, paced=40), b, skew=1.2)
        # A timeout cuts (10, plateau 11); the climb back reaches 11...
        drop = Report(node="a", demand=40, in_use=12, seen_epoch=g.epoch, drops=1,
                      successes=0, min_rtt=None)
        g = await tick(store, drop, b, skew=1.3)
        assert g.cut and g.limit == 10 and g.plateau == 11
        g = await tick(store, rated("a", in_use=10, served=10), b, skew=1.7)
        assert g.limit == 11
        # ...and is refused at once: not a probe, but no more than the 12 held before
        # (a rate cap's bucket ran dry): evidence, and a cut...
        g = await tick(store, rated("a", in_use=11, refused=3, epoch=g.epoch), b, skew=1.75)
        assert g.cut and g.rate is None
        # ...and 429s again, no rise since: a rate is learned.
        g = await tick(store, rated("a", in_use=9, refused=2, epoch=g.epoch), b, skew=2.3)
        assert g.rate is not None and g.rate_cut and not g.cut


async def test_429s_above_the_level_held_are_the_concurrency_limits(
        redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        await tick(store, rated("a"), b, seed=12.0)
        # (successes the pace held back: they do not grow the limit, no probe here)
        await tick(store, rated("a", in_use=12, served=40, paced=40), b, skew=0.1)
        g = await tick(store, rated("a", in_use=12, served=40, paced=40), b, skew=1.2)
        # A capacity that fell to 10: a first cut (evidence, but only once)...
        g = await tick(store, rated("a", in_use=12, refused=3, epoch=g.epoch), b, skew=1.3)
        assert g.cut and g.limit == 10 and g.plateau == 11
        # ...10 held and proven; the climb to the plateau (11) refused: above what
        # was proven since, and just after a rise: the concurrency limit's.
        g = await tick(store, rated("a", in_use=10, served=30, paced=30), b, skew=1.4)
        g = await tick(store, rated("a", in_use=10, served=30, paced=30), b, skew=2.5)
        g = await tick(store, rated("a", in_use=10, served=30), b, skew=2.6)
        assert g.limit == 11
        g = await tick(store, rated("a", in_use=11, refused=1, epoch=g.epoch), b, skew=2.7)
        assert g.cut and g.rate is None


async def test_an_outage_lowers_the_limit_but_not_the_plateau_and_it_regrows_fast(
        redis: RedisServer) -> None:
    b = bounds(initial=1, probe=30.0)
    async with FleetStore(redis.url) as store:
        g = await tick(store, rated("a"), b, seed=12.0)
        t = 0.0
        for _ in range(6):  # 503s, epoch after epoch (the breaker's probes among them)
            t += 0.4
            failed = Report(node="a", demand=40, in_use=int(g.limit), seen_epoch=g.epoch,
                            drops=3, successes=0, min_rtt=None, failed_in_epoch=3)
            g = await tick(store, failed, b, skew=t)
            assert g.cut and g.plateau == 12
        assert g.limit == 5
        # Answers are clean again: x2 per round trip back to the plateau, not +1.
        g = await tick(store, rated("a", in_use=5, served=5), b, skew=t + 0.3)
        assert g.limit == 10
        g = await tick(store, rated("a", in_use=10, served=10), b, skew=t + 0.6)
        assert g.limit == 12 and g.plateau == 12


async def test_a_probe_whose_slot_was_never_used_has_not_held(redis: RedisServer) -> None:
    b = bounds(initial=1, probe=1.0)
    async with FleetStore(redis.url) as store:
        await tick(store, report("a", demand=12, in_use=0), b, seed=12.0)
        g = await tick(store, report("a", demand=12, in_use=12, oks=12, rtt=0.3), b, skew=0.1)
        assert g.limit == 13 and g.plateau == 12  # probing
        # The nodes only want 12 (a node just back from a lost Redis asks for its safe
        # share, say): the 13th slot is never tried, the probe cannot have held.
        g = await tick(store, report("a", demand=12, in_use=12, oks=12, rtt=0.3), b, skew=1.5)
        assert g.limit == 13 and g.plateau == 12
        g = await tick(store, report("a", demand=13, in_use=13, oks=13, rtt=0.3), b, skew=1.6)
        assert g.plateau == 13  # used, unrefused, long enough: capacity rose


async def test_each_nodes_part_of_a_header_quota_follows_its_slots_and_adds_up_to_one(
        redis: RedisServer) -> None:
    b = bounds(initial=9)
    async with FleetStore(redis.url) as store:
        g = await tick(store, report("a", demand=40), b)
        assert g.part == 1.0  # alone: the whole quota, as one pacer
        await tick(store, report("b", demand=40), b)
        c = await tick(store, report("c", demand=2), b)
        a = await tick(store, report("a", demand=40), b)
        bb = await tick(store, report("b", demand=40), b)
        # 9 slots: c wants 2, a and b share the other 7 (4 and 3, or 3 and 4).
        assert c.part == pytest.approx(2 / 9)
        assert a.part + bb.part + c.part == pytest.approx(1.0)
        assert {round(a.part * 9), round(bb.part * 9)} == {3, 4}
        # An idle node has no slot and gets one slot's worth (it spends nothing).
        idle = await tick(store, report("d", demand=0), b)
        assert idle.held == 0 and idle.part == pytest.approx(1 / 9)


async def test_more_nodes_than_slots_a_node_without_one_gets_one_slots_worth(
        redis: RedisServer) -> None:
    b = bounds(initial=2)
    async with FleetStore(redis.url) as store:
        for n in "abc":
            await tick(store, report(n, demand=5), b)
        grants = {n: await tick(store, report(n, demand=5), b) for n in "abc"}
        assert sorted(g.held for g in grants.values()) == [0, 1, 1]
        # Every part is one slot of the two shared out; the node without a slot
        # cannot spend its part (it has nothing to send with) until it gets one.
        assert all(g.part == pytest.approx(0.5) for g in grants.values())


async def test_with_no_demand_anywhere_a_node_holds_nothing_and_its_part_is_one(
        redis: RedisServer) -> None:
    async with FleetStore(redis.url) as store:
        g = await tick(store, report("a", demand=0), bounds(initial=4))
        # (nothing shared out: its part, 1, is the part of nothing; with demand, its
        # next grant brings its slots and its part together)
        assert g.held == 0 and g.part == 1.0
