"""What the state file says about an upstream's fleet (this node's view of it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class FleetNodeState:
    node: str
    share: int  # leases it holds: its slots
    inflight: int
    demand: int  # in flight plus waiting for a slot

    @classmethod
    def from_json(cls, data: Any) -> FleetNodeState:
        d = data if isinstance(data, dict) else {}
        return cls(str(d.get("node", "")), _int(d.get("share")), _int(d.get("inflight")),
                   _int(d.get("demand")))


@dataclass(frozen=True, slots=True)
class FleetState:
    fleet_key: str
    node: str  # this node
    limit: float | None  # the shared limit (None before the fleet first answered)
    epoch: int
    share: int | None  # this node's slots (its safe local share while degraded)
    degraded: bool  # Redis unreachable
    fleet_inflight: int | None  # leases of the whole fleet
    nodes: tuple[FleetNodeState, ...] = ()
    live_nodes: int | None = None  # nodes alive, as of the last tick
    rate: float | None = None  # the fleet's learned request rate (requests/s)
    pace: float | None = None  # this node's share of it
    # this node's part of any quota announced in headers (of the fleet-wide remaining)
    quota_share: float | None = None

    @classmethod
    def from_json(cls, data: Any) -> FleetState | None:
        if not isinstance(data, dict):
            return None
        nodes = data.get("nodes")
        return cls(
            fleet_key=str(data.get("fleet_key", "")), node=str(data.get("node", "")),
            limit=_opt_float(data.get("limit")), epoch=_int(data.get("epoch")),
            share=_opt_int(data.get("share")), degraded=bool(data.get("degraded")),
            fleet_inflight=_opt_int(data.get("fleet_inflight")),
            nodes=tuple(FleetNodeState.from_json(n) for n in nodes)
            if isinstance(nodes, list) else (),
            live_nodes=_opt_int(data.get("live_nodes")), rate=_opt_float(data.get("rate")),
            pace=_opt_float(data.get("pace")), quota_share=_opt_float(data.get("quota_share")),
        )
