"""What pacer learned about each upstream, kept in the spool across restarts.

``spool/learned.json`` holds, per upstream name, the concurrency limit, the request
rate learned from 429s and the no-load rtt, with the wall-clock time they were
saved. It is rewritten atomically (write, fsync, rename, fsync the folder) when
what it holds changes. A restart resumes from it instead of from 1, discounted by
its age: the capacity may have changed meanwhile, so a memory loses half its weight
every ``half_life`` seconds (the limit falls toward 1, the rate toward nothing) and
is forgotten after ``max_age``. A missing, unreadable or malformed file is no
memory at all: pacer starts as if new.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol

import structlog
import trio

from pacer.spool.folders import write_durable

__all__ = ["LEARNED_FILE", "Learned", "LearnedStore", "discounted"]

log = structlog.get_logger("pacer.service.memory")

LEARNED_FILE: Final = "learned.json"
HALF_LIFE: Final = 600.0  # seconds after which a memory counts half
MAX_AGE: Final = 86400.0  # older memories are forgotten


@dataclass(frozen=True, slots=True)
class Learned:
    """One upstream's learned state; ``saved_at`` is wall-clock (epoch) seconds."""

    limit: int
    rate: float | None = None  # requests/s learned from 429s (None: no rate cap seen)
    min_rtt: float | None = None  # the no-load rtt, seconds
    saved_at: float = 0.0

    @classmethod
    def from_json(cls, obj: Any) -> Learned | None:
        """The value of one upstream in the file, or ``None`` if it is malformed."""
        if not isinstance(obj, dict):
            return None
        limit, rate = obj.get("limit"), obj.get("rate")
        min_rtt, saved_at = obj.get("min_rtt"), obj.get("saved_at")
        if not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
            return None
        if not _positive_or_none(rate) or not _positive_or_none(min_rtt):
            return None
        if not _positive_or_none(saved_at) or saved_at is None:
            return None
        return cls(limit, rate, min_rtt, float(saved_at))


def _positive_or_none(value: Any) -> bool:
    if value is None:
        return True
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def discounted(learned: Learned, now: float, *, half_life: float = HALF_LIFE,
               max_age: float = MAX_AGE) -> Learned | None:
    """``learned`` as far as it still counts at wall-clock ``now``: the limit and the
    rate weighed by ``0.5 ** (age / half_life)`` (a limit never below 1), ``None``
    when older than ``max_age``. A time in the future (a clock set back) counts as
    age 0."""
    age = max(0.0, now - learned.saved_at)
    if age > max_age:
        return None
    weight = 0.5 ** (age / half_life)
    return replace(learned, limit=max(1, math.floor(learned.limit * weight)),
                   rate=None if learned.rate is None else learned.rate * weight)


class Learner(Protocol):
    """What the store reads and resumes (an :class:`~pacer.service.upstream.Upstream`)."""

    def learned(self) -> Learned: ...

    def resume(self, learned: Learned | None) -> None: ...


class LearnedStore:
    """``learned.json`` in one spool: load once at start, save when it changed."""

    def __init__(self, spool_root: Path) -> None:
        self.path = spool_root / LEARNED_FILE
        self._written: dict[str, Learned] | None = None

    def load(self) -> dict[str, Learned]:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("memory.unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(raw, dict):
            log.warning("memory.unreadable", path=str(self.path), error="not an object")
            return {}
        out: dict[str, Learned] = {}
        for name, value in raw.items():
            learned = Learned.from_json(value)
            if learned is not None:
                out[str(name)] = learned
        self._written = dict(out)
        return out

    def save(self, learned: dict[str, Learned]) -> bool:
        """Write ``learned`` durably unless it holds what was last written (the times
        aside); True if it wrote. Blocking: run it in a thread."""
        if self._written is not None and _same(self._written, learned):
            return False
        data = json.dumps({name: asdict(v) for name, v in sorted(learned.items())},
                          indent=1).encode()
        write_durable(self.path, data)
        self._written = dict(learned)
        return True


    def resume(self, upstreams: Mapping[str, Learner]) -> None:
        """Resume each upstream from what the file holds for it (blocking: a small
        read, once at start)."""
        learned = self.load()
        for name, up in upstreams.items():
            up.resume(learned.get(name))

    async def write(self, upstreams: Mapping[str, Learner]) -> None:
        """Save what the upstreams have learned now (in a thread), if it changed."""
        learned = {name: up.learned() for name, up in upstreams.items()}
        if self._written is not None and _same(self._written, learned):
            return  # unchanged: no thread hop, no disk write
        await trio.to_thread.run_sync(self.save, learned)

    async def loop(self, upstreams: Mapping[str, Learner],
                   interval: Callable[[], float]) -> None:
        """Save every ``interval()`` seconds; a disk that refuses is logged and tried
        again next time (the state file's writer reports disk trouble)."""
        while True:
            try:
                await self.write(upstreams)
            except OSError as exc:
                log.warning("memory.write_failed", path=str(self.path), error=str(exc))
            await trio.sleep(interval())


def _same(a: dict[str, Learned], b: dict[str, Learned]) -> bool:
    def key(v: Learned) -> tuple[int, float | None, float | None]:
        rate = None if v.rate is None else round(v.rate, 3)
        rtt = None if v.min_rtt is None else round(v.min_rtt, 3)
        return v.limit, rate, rtt

    return a.keys() == b.keys() and all(key(a[n]) == key(b[n]) for n in a)
