"""The daemon's state as one typed snapshot, read by ``state.json``, ``/metrics`` and
``pacer status``.

A :class:`ServiceState` is frozen: the daemon builds a new one each tick and swaps
it in, so the metrics thread can read it without locks. :meth:`ServiceState.to_json`
is what ``state.json`` holds; :meth:`ServiceState.from_json` reads it back,
tolerantly (a field missing or of the wrong type, e.g. from another pacer version,
gets its default rather than failing ``pacer status``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pacer.fleet.state import FleetState


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return default


def _float(value: Any, default: float = 0.0) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def _opt_float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True, slots=True)
class LastMinute:
    """An upstream's last minute: answered requests per second, 429 share, attempts."""

    throughput_rps: float = 0.0
    rate_limited_share: float = 0.0
    attempts: int = 0

    @classmethod
    def from_json(cls, data: Any) -> LastMinute:
        d = _mapping(data)
        return cls(_float(d.get("throughput_rps")), _float(d.get("rate_limited_share")),
                   _int(d.get("attempts")))


@dataclass(frozen=True, slots=True)
class UpstreamState:
    """One upstream: what the controller holds now, and totals since start."""

    limit: int = 0
    inflight: int = 0
    waiting: int = 0
    breaker: str = "closed"
    done: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    queued: int = 0  # requests read from job files and not answered yet
    pauses: int = 0
    rate_rps: float | None = None
    paused_for_s: float | None = None
    jobs_waiting: int = 0  # jobs with requests waiting for this upstream (fair share)
    last_minute: LastMinute = field(default_factory=LastMinute)
    fleet: FleetState | None = None  # fleet: shared through Redis ([fleet] redis)

    @classmethod
    def from_json(cls, data: Any) -> UpstreamState:
        d = _mapping(data)
        breaker = d.get("breaker")
        return cls(
            limit=_int(d.get("limit")), inflight=_int(d.get("inflight")),
            waiting=_int(d.get("waiting")),
            breaker=breaker if isinstance(breaker, str) else "closed",
            done=_int(d.get("done")), failed=_int(d.get("failed")),
            attempts=_int(d.get("attempts")), retries=_int(d.get("retries")),
            rate_limited=_int(d.get("rate_limited")), queued=_int(d.get("queued")),
            pauses=_int(d.get("pauses")), rate_rps=_opt_float(d.get("rate_rps")),
            paused_for_s=_opt_float(d.get("paused_for_s")),
            jobs_waiting=_int(d.get("jobs_waiting")),
            last_minute=LastMinute.from_json(d.get("last_minute")),
            fleet=FleetState.from_json(d.get("fleet")),
        )


@dataclass(frozen=True, slots=True)
class JobsState:
    """Jobs now (active, seen in ``incoming/``, requests) and since start."""

    active: int = 0
    pending_incoming: int = 0
    queued_requests: int = 0
    remaining_requests: int = 0
    done: int = 0
    failed: int = 0
    rejected: int = 0

    @classmethod
    def from_json(cls, data: Any) -> JobsState:
        d = _mapping(data)
        return cls(**{f.name: _int(d.get(f.name)) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class ServiceState:
    """Everything ``state.json``, ``/metrics`` and ``pacer status`` report."""

    pid: int = 0
    version: str = ""
    started_at: float = 0.0
    updated_at: float = 0.0
    stopping: bool = False
    drain: bool = False
    jobs: JobsState = field(default_factory=JobsState)
    upstreams: Mapping[str, UpstreamState] = field(default_factory=dict)
    spool_errors: Mapping[str, int] = field(default_factory=dict)
    notify_errors: int = 0

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready dict ``state.json`` holds."""
        data = dataclasses.asdict(self)
        data["upstreams"] = {name: dataclasses.asdict(u) for name, u in self.upstreams.items()}
        data["spool_errors"] = dict(self.spool_errors)
        return data

    @classmethod
    def from_json(cls, data: Any) -> ServiceState:
        """Read ``state.json``'s dict back (tolerant of missing or odd fields)."""
        d = _mapping(data)
        version = d.get("version")
        errors = {str(k): _int(v) for k, v in _mapping(d.get("spool_errors")).items()}
        return cls(
            pid=_int(d.get("pid")),
            version=version if isinstance(version, str) else "",
            started_at=_float(d.get("started_at")),
            updated_at=_float(d.get("updated_at")),
            stopping=bool(d.get("stopping")),
            drain=bool(d.get("drain")),
            jobs=JobsState.from_json(d.get("jobs")),
            upstreams={str(name): UpstreamState.from_json(u)
                       for name, u in _mapping(d.get("upstreams")).items()},
            spool_errors=errors,
            notify_errors=_int(d.get("notify_errors")),
        )
