"""One upstream of this node in the fleet: the bridge between the local limiter and
the fleet's controller in Redis.

Every ``tick_interval`` it sends one script call with everything since the last
tick (demand, slots in use, congestion signals stamped with the epoch they started
in, successes, 429s, the starts the pace held, the lowest rtt, a pause or breaker
opening to share, its half-open probe's outcome) and gets back how many leases it
holds: the limiter's slots (:meth:`Limiter.set_cap`), and its share of the fleet's
learned request rate: its pacing gate's pace (:meth:`Pacer.impose_rate`), and its
part of the slots shared out: the part of every quota announced in headers it may
spend (:meth:`Pacer.share_quota`: all nodes read the same fleet-wide ``remaining``,
and each spending all of it would overshoot the quota up to N times). Between
ticks the hot path touches no Redis: finished attempts hand their slot to the next
waiter locally. When Redis cannot be reached it falls back to a
:class:`~pacer.fleet.degraded.DegradedShare` and rejoins by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
import trio

from pacer.control.aimd import PACED
from pacer.control.breaker import BreakerState, BreakerTransition, TransitionReason
from pacer.control.limit import Outcome, Sample
from pacer.control.pacing import PauseEvent
from pacer.fleet.degraded import DegradedSettings, DegradedShare
from pacer.fleet.shared_limit import SharedLimit
from pacer.fleet.state import FleetNodeState, FleetState
from pacer.fleet.store import REDIS_DOWN, UNREACHABLE, Bounds, FleetStore, FleetView, Grant, Report

if TYPE_CHECKING:
    from pacer.service.upstream import Upstream

log = structlog.get_logger("pacer.fleet")

FLEET_CAUSE = "fleet"  # pauses and breaker openings that came from the fleet
# Drops that say the upstream failed, not that it refused this concurrency.
FAILURE_REASONS = frozenset({"server_error", "connection"})
# A rate change is logged when it moved by at least this share since the last logged.
RATE_LOG_STEP = 0.05


@dataclass(frozen=True, slots=True)
class MemberSettings:
    tick_interval: float = 0.05
    redis_timeout: float = 0.5
    describe_interval: float = 1.0
    degraded: DegradedSettings = field(default_factory=DegradedSettings)


class FleetMember:
    def __init__(self, store: FleetStore, key: str, node: str, upstream: Upstream,
                 bounds: Bounds, settings: MemberSettings | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.store = store
        self.key = key
        self.node = node
        self.upstream = upstream
        self.bounds = bounds
        self.settings = settings or MemberSettings()
        self.clock = clock
        self.epoch = 0
        self._epoch_seen_at = -math.inf
        self._drops = 0
        self._successes = 0
        self._min_rtt: float | None = None
        self._pause = 0.0
        self._breaker = 0.0
        self._refused = self._refused_in_epoch = self._failed_in_epoch = 0
        self._served = self._paced = self._finished = 0
        self._probe_result = 0
        self.joined = False
        self.grant: Grant | None = None
        self.held = 0  # leases held: this node's slots
        # The fleet's limit as last seen: it seeds a Redis that has none (a new fleet,
        # or one that lost its data); at first, a limit this node remembered.
        remembered = upstream.limit.limit
        self.known_limit = float(remembered) if remembered > bounds.initial_limit else 0.0
        self.known_rate = 0.0  # the fleet's learned rate as last seen (0: none)
        self.pace: float | None = None  # this node's share of it, in force
        # This node's part of a quota announced in headers (of the fleet-wide
        # remaining every node reads): its part of the slots, as last granted. Before
        # the fleet ever answered (Redis down from the start), the size of the fleet is
        # unknown: one slot of the limit it remembers, or of the largest allowed.
        floor = max(1, self.settings.degraded.floor)
        self.part = min(1.0, floor / max(floor, self.known_limit or bounds.max_limit))
        self._part_in_force: float | None = None  # as told to the pacing gate
        self._logged_rate: float | None = None
        self.degraded: DegradedShare | None = None
        self._rejoin_until = -math.inf
        self._rejoin_cap = 0
        self._degraded_at = 0.0
        self.view: FleetView | None = None
        self._described_at = -math.inf
        # The limit in force is the fleet's; until the fleet answers, no slot: a node
        # never assumes the limit is its own.
        self.shared = SharedLimit(upstream.limit.limit)
        upstream.use_limit(self.shared)
        upstream.limiter.set_cap(0)
        upstream.limiter.sample_listeners.append(self._on_sample)
        # A node sees only its own share of the load, so it cannot tell a rate cap
        # from the fleet's concurrency cap by what it has in flight: 429s without
        # quota headers go to the fleet, which learns one rate for all and gives each
        # node its share (never a local learned rate).
        upstream.pacer.settings = dataclasses.replace(upstream.pacer.settings,
                                                      learn_rate=False)
        upstream.pacer.subscribe_pause(self._on_pause)
        upstream.breaker.subscribe(self._on_breaker)

    # -- hooks from the upstream ------------------------------------------------------

    def _on_sample(self, s: Sample) -> None:
        # A 429 the pacing gate put down to a rate is congestion for the fleet all
        # the same: the fleet tells its limit's from its rate's. One of a quota the
        # headers said was spent (reason QUOTA) is neither: its window holds this
        # node's starts until the reset, as one pacer's.
        self._finished += 1
        refused = s.reason == "rate_limited"
        self._refused += refused
        if s.outcome is Outcome.SUCCESS:
            self._served += 1
            self._paced += s.reason == PACED
        if s.outcome is Outcome.DROPPED or refused:
            if s.start >= self._epoch_seen_at:  # older ones belong to a cut already made
                self._drops += 1
                self._refused_in_epoch += refused
                self._failed_in_epoch += s.reason in FAILURE_REASONS
            if self.degraded is not None:
                # (only attempts sent since: earlier ones are the fleet's to judge)
                if s.start >= self._degraded_at and self.degraded.on_drop(self.clock()):
                    self._set_cap(self.degraded.cap(self.clock()))
            elif self.upstream.limiter.cap:
                # The slot that was refused is not used again before the fleet has
                # heard of it (next tick): a refusal comes back at once, and 20
                # waiting requests would otherwise meet 20 refusals in a few ms.
                self.upstream.limiter.set_cap(self.upstream.limiter.cap - 1)
        elif s.outcome is Outcome.SUCCESS and s.reason != PACED:
            self._successes += 1
            # Net of this node's own loop lag: the fleet's no-load rtt is the upstream's.
            rtt = s.upstream_rtt
            self._min_rtt = rtt if self._min_rtt is None else min(self._min_rtt, rtt)

    def _on_pause(self, e: PauseEvent) -> None:
        if e.cause != FLEET_CAUSE:
            self._pause = max(self._pause, e.duration)

    def _on_breaker(self, t: BreakerTransition) -> None:
        if t.to_state is BreakerState.OPEN and t.reason != FLEET_CAUSE:
            self._breaker = max(self._breaker, t.cooldown or 0.0)
        if t.from_state is BreakerState.HALF_OPEN:
            if t.reason == TransitionReason.PROBE_SUCCEEDED:
                self._probe_result = 1
            elif t.reason == TransitionReason.PROBE_FAILED:
                self._probe_result = -1

    # -- the tick -------------------------------------------------------------------

    def _report(self) -> Report:
        lim = self.upstream.limiter
        # In use: sending, not waiting for the pace inside a slot.
        in_use = max(0, lim.inflight - self.upstream.gate.waiting)
        demand = lim.inflight + lim.waiting
        now = self.clock()
        if self.degraded is not None or now < self._rejoin_until:
            # Back from a Redis that may have lost every node's place: ask for no more
            # than the safe share until the others have had time to come back too.
            safe = self._rejoin_cap if self.degraded is None else self.degraded.cap(now)
            demand = min(demand, max(in_use, safe))
        return Report(node=self.node, demand=demand, in_use=in_use,
                      seen_epoch=self.epoch, drops=self._drops, successes=self._successes,
                      min_rtt=self._min_rtt, pause=self._pause, breaker=self._breaker,
                      refused=self._refused, refused_in_epoch=self._refused_in_epoch,
                      failed_in_epoch=self._failed_in_epoch,
                      served=self._served, paced=self._paced, finished=self._finished,
                      want_probe=self.upstream.breaker.state is not BreakerState.CLOSED,
                      probe_result=self._probe_result)

    async def tick(self) -> Grant | None:
        """One exchange with the fleet; None when Redis could not be reached."""
        report = self._report()
        self._drops = self._successes = 0
        self._refused = self._refused_in_epoch = self._failed_in_epoch = 0
        self._served = self._paced = self._finished = 0
        self._probe_result = 0
        self._min_rtt = None
        try:
            with trio.fail_after(self.settings.redis_timeout * 2):
                grant = await self.store.tick(self.key, report, self.bounds, self.known_limit,
                                              self.known_rate)
                if self.clock() - self._described_at >= self.settings.describe_interval:
                    self.view = await self.store.describe(self.key)
                    self._described_at = self.clock()
        except UNREACHABLE as exc:
            self._lost(exc)
            return None
        # Told now; one that came up during the call is told next tick.
        if report.pause and self._pause == report.pause:
            self._pause = 0.0
        if report.breaker and self._breaker == report.breaker:
            self._breaker = 0.0
        self._apply(grant)
        self.upstream.limiter.elsewhere = max(0, grant.used - report.in_use)
        return grant

    def _apply(self, g: Grant) -> None:
        now = self.clock()
        if self.degraded is not None:
            self._rejoin_cap = self.degraded.cap(now)
            self._rejoin_until = now + 2 * self.bounds.node_ttl
            self.degraded = None
            log.info("fleet.restored", upstream=self.upstream.name, fleet_key=self.key,
                     node=self.node, down_s=round(now - self._degraded_at, 3),
                     limit=round(g.limit, 2), share=g.held, nodes=g.nodes)
        if not self.joined:
            self.joined = True
            log.info("fleet.joined", upstream=self.upstream.name, fleet_key=self.key,
                     node=self.node, limit=round(g.limit, 2), share=g.held,
                     fair_share=g.share, nodes=g.nodes, epoch=g.epoch)
        if g.epoch != self.epoch:
            self.epoch = g.epoch
            self._epoch_seen_at = now
            self._drops = self._refused_in_epoch = self._failed_in_epoch = 0
        if self.upstream.limit is not self.shared:  # a reload gave it a limit of its own
            self.upstream.use_limit(self.shared)
        # limit.changed, as for any limit (the upstream logs it).
        self.shared.set(math.floor(g.limit), now, "fleet_cut" if g.cut else "fleet", g.used)
        self.known_limit = g.limit
        self.grant = g
        self.held = g.held
        # Leases kept above the share only cover attempts already out: as they end,
        # the slots go back (next tick), not to new attempts.
        self._set_cap(g.held if g.share is None else min(g.held, g.share))
        self.part = g.part
        self._share_quota(g.part)
        self._apply_rate(g, now)
        if g.pause_left > 0:
            until = self.upstream.pacer.paused_until
            if until is None or until < now + g.pause_left - 0.05:
                self.upstream.gate.pause(g.pause_left, FLEET_CAUSE)
        self._apply_breaker(g, now)

    def _apply_rate(self, g: Grant, now: float) -> None:
        """This node's share of the fleet's learned rate becomes its gate's pace."""
        self.known_rate = g.rate or 0.0
        if g.pace != self.pace:
            self.pace = g.pace
            self.upstream.pacer.impose_rate(now, g.pace)
        last = self._logged_rate
        if g.rate_cut or (g.rate is None) != (last is None) or (
                g.rate is not None and last is not None
                and abs(g.rate - last) >= RATE_LOG_STEP * last):
            self._logged_rate = g.rate
            if last is None or g.rate is None:
                reason = "learned" if last is None else "forgotten"
            else:
                reason = "rate_limited" if g.rate < last else "probe"
            log.info("fleet.rate_changed", upstream=self.upstream.name, fleet_key=self.key,
                     node=self.node, reason=reason,
                     old_rate=None if last is None else round(last, 3),
                     new_rate=None if g.rate is None else round(g.rate, 3),
                     pace=None if g.pace is None else round(g.pace, 3))

    def _apply_breaker(self, g: Grant, now: float) -> None:
        """One breaker for the fleet, one half-open probe: the node that holds the
        probe half-opens when its cool-down is over; the others stay open (a hold of
        a few ticks, renewed every tick: without Redis their own breaker takes over)
        until the fleet's breaker closes, and then close with it."""
        breaker = self.upstream.breaker
        if g.breaker_open and g.probe != 1:
            if breaker.state is BreakerState.CLOSED and (g.breaker_left > 0 or g.probe == 0):
                breaker.trip(now, FLEET_CAUSE,
                             min_cooldown=max(g.breaker_left, 3 * self.settings.tick_interval))
            breaker.hold_open(now + max(g.breaker_left, 3 * self.settings.tick_interval))
        elif not g.breaker_open and breaker.state is not BreakerState.CLOSED and (
                self._breaker == 0.0):
            breaker.close(now, FLEET_CAUSE)  # the fleet's probe succeeded

    def _lost(self, exc: BaseException) -> None:
        now = self.clock()
        if self.degraded is None:
            self.degraded = DegradedShare(self.held, now, self.settings.degraded)
            self._degraded_at = now
            self.upstream.limiter.elsewhere = 0  # unknown now
            log.warning("fleet.degraded", upstream=self.upstream.name, fleet_key=self.key,
                        node=self.node, error=f"{type(exc).__name__}: {exc}"[:200],
                        share=self.degraded.cap(now), floor=self.settings.degraded.floor)
        self._set_cap(self.degraded.cap(now))
        # Its last part of the quotas, shrinking with its slots: never the whole quota.
        self._share_quota(self.part * self.degraded.fraction(now))

    def _share_quota(self, part: float) -> None:
        part = min(1.0, max(part, 1e-6))
        if part != self._part_in_force:
            self._part_in_force = part
            self.upstream.gate.share_quota(part)

    def _set_cap(self, cap: int) -> None:
        if self.upstream.limiter.cap != cap:
            self.upstream.limiter.set_cap(cap)
        if self.degraded is not None:  # the limit in force is the safe local share
            self.shared.set(cap, self.clock(), "fleet_degraded")

    # -- life -------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until cancelled (then :meth:`leave`)."""
        while True:
            await self.tick()
            await trio.sleep(self.settings.tick_interval)

    async def leave(self) -> None:
        """Release exactly this node's leases and its place in the shares."""
        released = None
        with trio.move_on_after(self.settings.redis_timeout * 2):
            with contextlib.suppress(*REDIS_DOWN):
                released = await self.store.leave(self.key, self.node)
        log.info("fleet.left", upstream=self.upstream.name, fleet_key=self.key, node=self.node,
                 released=released)
        self.joined = False

    def state(self) -> FleetState:
        """This upstream's fleet, for the state file and ``pacer status``."""
        view = self.view
        return FleetState(
            fleet_key=self.key, node=self.node,
            limit=None if self.grant is None else round(self.grant.limit, 2),
            epoch=self.epoch,
            share=self.held if self.degraded is None else self.upstream.limiter.cap,
            degraded=self.degraded is not None,
            fleet_inflight=None if self.grant is None else self.grant.fleet_inflight,
            nodes=() if view is None else tuple(
                FleetNodeState(n.node, n.held, n.in_use, n.demand) for n in view.nodes),
            live_nodes=None if self.grant is None else self.grant.nodes,
            rate=None if self.grant is None or self.grant.rate is None
            else round(self.grant.rate, 3),
            pace=None if self.pace is None else round(self.pace, 3),
            quota_share=None if self._part_in_force is None else round(self._part_in_force, 4),
        )
