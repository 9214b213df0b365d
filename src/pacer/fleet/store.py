"""The Redis side of the fleet: a thin typed wrapper over coredis and the Lua scripts.

coredis 6 is the client because it runs under Trio (through anyio); redis-py's
asyncio client does not. Every call here is one script call, one round trip: a node
sends one per tick for all its acquires, releases, renewals and samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import coredis
import coredis.exceptions
import trio

from pacer.fleet import scripts

# What a lost or sick Redis raises; anything else is a bug and propagates.
REDIS_DOWN: tuple[type[BaseException], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
)
# The same, and a call that overran the fleet's own deadline.
UNREACHABLE: tuple[type[BaseException], ...] = (*REDIS_DOWN, trio.TooSlowError)


@dataclass(frozen=True, slots=True)
class Report:
    """What one node tells the fleet in one tick."""

    node: str
    demand: int  # attempts in flight plus waiting for a slot
    in_use: int  # slots in use (held by an attempt)
    seen_epoch: int  # the controller's epoch this node last saw
    drops: int  # congestion signals from attempts started in ``seen_epoch``
    successes: int  # successes that may grow the limit
    min_rtt: float | None  # seconds
    pause: float = 0.0  # a pause this node was asked for (seconds)
    breaker: float = 0.0  # a breaker cool-down this node started (seconds)
    refused: int = 0  # 429s since the last tick
    refused_in_epoch: int = 0  # those of them counted in ``drops``
    failed_in_epoch: int = 0  # failures (5xx, refused connections) counted in ``drops``
    served: int = 0  # successes, the paced ones too
    paced: int = 0  # successes whose start the pace held back
    finished: int = 0  # attempts ended
    want_probe: bool = False  # its breaker is not closed
    probe_result: int = 0  # 1: its half-open probe closed its breaker, -1: it failed


@dataclass(frozen=True, slots=True)
class Bounds:
    """The controller's fixed settings, sent with every tick (the first sets it up)."""

    initial_limit: int
    min_limit: int
    max_limit: int
    lease_ttl: float
    probe_interval: float
    node_ttl: float = 1.5
    tick_interval: float = 0.05
    decrease: float = 0.9
    state_ttl: float = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Grant:
    """The fleet's answer to one tick."""

    held: int  # leases this node now holds: its capacity
    limit: float  # the fleet's shared limit
    epoch: int
    share: int | None  # this node's fair share (None: every demand is met)
    pause_left: float  # seconds the fleet stays paused
    breaker_left: float  # seconds the fleet's breaker stays open
    fleet_inflight: int  # live leases of the whole fleet
    nodes: int  # live nodes
    plateau: int
    rtt_noload: float | None  # seconds
    cut: bool  # this tick cut the limit
    used: int  # slots in use over the live nodes (this node's as reported now)
    rate: float | None = None  # the fleet's learned request rate (requests/s)
    pace: float | None = None  # this node's share of it
    rate_cut: bool = False  # this tick lowered (or first learned) the rate
    probe: int = -1  # the breaker's one probe: 1 this node's, 0 another's, -1 none
    breaker_open: bool = False  # the fleet's breaker is open (or half-open)
    # this node's part of the slots shared out, (0, 1]: the part of a quota announced
    # in headers (fleet-wide) it may spend
    part: float = 1.0


@dataclass(frozen=True, slots=True)
class NodeView:
    node: str
    demand: int
    in_use: int
    held: int


@dataclass(frozen=True, slots=True)
class FleetView:
    limit: float | None
    epoch: int
    inflight: int
    nodes: tuple[NodeView, ...]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FleetKeys:
    """The Redis keys of one fleet key (one upstream shared by the fleet)."""

    def __init__(self, prefix: str, key: str) -> None:
        base = f"{prefix}:{{{key}}}"
        self.ctl = f"{base}:ctl"
        self.leases = f"{base}:leases"
        self.nodes = f"{base}:nodes"
        self.info = f"{base}:info"
        self._base = base

    def node(self, name: str) -> str:
        return f"{self._base}:node:{name}"


class FleetStore:
    """One Redis, all of this node's fleet keys. Enter it (``async with``) in the
    task that owns the fleet; calls raise one of :data:`REDIS_DOWN` when Redis is
    unreachable."""

    def __init__(self, url: str, *, timeout: float = 0.5, prefix: str = "pacer:fleet",
                 skew_ms: int = 0) -> None:
        self.url = url
        self.prefix = prefix
        # Only tests move the fleet's clock (to check what a TIME jump does).
        self.skew_ms = skew_ms
        self.client: coredis.Redis[bytes] = coredis.Redis.from_url(
            url, connect_timeout=timeout, stream_timeout=timeout,
            retry_policy=coredis.retry.NoRetryPolicy())
        self._tick = self.client.register_script(scripts.TICK)
        self._leave = self.client.register_script(scripts.LEAVE)
        self._describe = self.client.register_script(scripts.DESCRIBE)

    async def __aenter__(self) -> FleetStore:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(None, None, None)

    def keys(self, key: str) -> FleetKeys:
        return FleetKeys(self.prefix, key)

    async def tick(self, key: str, report: Report, bounds: Bounds,
                   seed_limit: float = 0.0, seed_rate: float = 0.0) -> Grant:
        k = self.keys(key)
        rtt_ms = -1 if report.min_rtt is None else round(report.min_rtt * 1000, 3)
        args: list[str | int | float] = [
            report.node, report.demand, report.in_use, report.seen_epoch, report.drops,
            report.successes, rtt_ms, round(report.pause * 1000), round(report.breaker * 1000),
            round(bounds.lease_ttl * 1000), bounds.initial_limit, bounds.min_limit,
            bounds.max_limit, round(seed_limit, 3), self.skew_ms,
            round(bounds.probe_interval * 1000), round(bounds.state_ttl * 1000), bounds.decrease,
            k.node(""), round(bounds.node_ttl * 1000),
            report.refused, report.refused_in_epoch, report.served, report.paced,
            report.finished, round(seed_rate, 3), int(report.want_probe), report.probe_result,
            # a node silent for three ticks (and 150 ms) has no slot "in use"
            max(150, round(3 * bounds.tick_interval * 1000)), report.failed_in_epoch,
        ]
        raw: Any = await self._tick([k.ctl, k.leases, k.nodes, k.info, k.node(report.node)], args)
        r = list(raw)
        level = int(r[3])
        rtt = float(_text(r[9]))
        rate, pace = float(_text(r[12])), float(_text(r[13]))
        return Grant(held=int(r[0]), limit=float(_text(r[1])), epoch=int(r[2]),
                     share=None if level < 0 else level, pause_left=int(r[4]) / 1000,
                     breaker_left=int(r[5]) / 1000, fleet_inflight=int(r[6]), nodes=int(r[7]),
                     plateau=int(r[8]), rtt_noload=None if rtt < 0 else rtt / 1000,
                     cut=bool(int(r[10])), used=int(r[11]),
                     rate=rate if rate > 0 else None, pace=pace if pace > 0 else None,
                     rate_cut=bool(int(r[14])), probe=int(r[15]),
                     breaker_open=bool(int(r[16])), part=float(_text(r[17])))

    async def leave(self, key: str, node: str) -> int:
        """Release exactly this node's leases and its place; the count released."""
        k = self.keys(key)
        released: Any = await self._leave([k.leases, k.nodes, k.info, k.node(node)], [node])
        return int(released)

    async def describe(self, key: str) -> FleetView:
        k = self.keys(key)
        raw: Any = await self._describe([k.ctl, k.leases, k.nodes, k.info], [self.skew_ms])
        r = list(raw)
        limit_text = _text(r[0])
        pairs = list(r[3])
        nodes = []
        for i in range(0, len(pairs), 2):
            demand, in_use, held = (int(x) for x in _text(pairs[i + 1]).split()[:3])
            nodes.append(NodeView(_text(pairs[i]), demand, in_use, held))
        return FleetView(limit=float(limit_text) if limit_text else None, epoch=int(r[1]),
                         inflight=int(r[2]), nodes=tuple(sorted(nodes, key=lambda n: n.node)))
