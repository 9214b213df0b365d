"""All of one node's fleet members, on one Redis connection pool."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import trio

from pacer.config import FleetConfig
from pacer.fleet.degraded import DegradedSettings
from pacer.fleet.member import FleetMember, MemberSettings
from pacer.fleet.state import FleetState
from pacer.fleet.store import Bounds, FleetStore

if TYPE_CHECKING:
    from pacer.service.upstream import Upstream


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Fleet:
    """Joins upstreams to the fleet; :meth:`run` ticks them until cancelled, then
    leaves (each member releases exactly its own leases)."""

    def __init__(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.node = cfg.node or default_node_name()
        self.store = FleetStore(cfg.redis, timeout=cfg.redis_timeout, prefix=cfg.key_prefix)
        self.settings = MemberSettings(
            tick_interval=cfg.tick_interval, redis_timeout=cfg.redis_timeout,
            degraded=DegradedSettings(floor=cfg.degraded_floor,
                                      half_life=cfg.degraded_half_life))
        self.members: dict[str, FleetMember] = {}
        self._nursery: trio.Nursery | None = None

    def join(self, up: Upstream) -> FleetMember:
        """Share ``up``'s limits from now on (its fleet key, default its name)."""
        ucfg = up.cfg
        # adaptive = false: the fleet holds initial_limit (a fixed limit, shared).
        lo, hi = ((ucfg.min_limit, ucfg.max_limit) if ucfg.adaptive
                  else (ucfg.initial_limit, ucfg.initial_limit))
        bounds = Bounds(initial_limit=ucfg.initial_limit, min_limit=lo,
                        max_limit=hi, lease_ttl=self.cfg.lease_ttl,
                        probe_interval=self.cfg.probe_interval, node_ttl=self.cfg.node_ttl,
                        tick_interval=self.cfg.tick_interval)
        member = FleetMember(self.store, ucfg.fleet_key or ucfg.name, self.node, up, bounds,
                             self.settings)
        self.members[up.name] = member
        if self._nursery is not None:
            self._nursery.start_soon(member.run)
        return member

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Tick every member until cancelled, then leave. Leaving needs the Redis
        connections, whose tasks a cancellation would close: they run shielded, and
        the cancellation only tells them to stop (leaving is bounded in time)."""
        stop = trio.Event()

        async def serve(task_status: trio.TaskStatus[None]) -> None:
            with trio.CancelScope(shield=True):
                async with self.store:
                    async with trio.open_nursery() as ticks:
                        self._nursery = ticks
                        for member in self.members.values():
                            ticks.start_soon(member.run)
                        task_status.started()
                        await stop.wait()
                        self._nursery = None
                        ticks.cancel_scope.cancel()
                    for member in self.members.values():
                        await member.leave()

        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                stop.set()

    def state(self) -> dict[str, FleetState]:
        return {name: m.state() for name, m in self.members.items()}
