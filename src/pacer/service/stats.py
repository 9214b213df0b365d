"""Counters that ``pacer status`` and the state file report, per upstream."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_S = 60


@dataclass
class _Second:
    at: int
    done: int = 0
    failed: int = 0
    attempts: int = 0
    rate_limited: int = 0


@dataclass
class UpstreamStats:
    """Totals since start, plus one-second buckets for the last minute."""

    clock: Callable[[], float]
    done: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    breaker_transitions: int = 0
    breaker_openings: int = 0
    pauses: int = 0
    _recent: deque[_Second] = field(default_factory=deque)

    def _bucket(self) -> _Second:
        now = int(self.clock())
        if not self._recent or self._recent[-1].at != now:
            self._recent.append(_Second(now))
            while self._recent and self._recent[0].at <= now - WINDOW_S:
                self._recent.popleft()
        return self._recent[-1]

    def record_attempt(self, rate_limited: bool) -> None:
        bucket = self._bucket()
        self.attempts += 1
        bucket.attempts += 1
        if rate_limited:
            self.rate_limited += 1
            bucket.rate_limited += 1

    def record_done(self, ok: bool) -> None:
        bucket = self._bucket()
        if ok:
            self.done += 1
            bucket.done += 1
        else:
            self.failed += 1
            bucket.failed += 1

    def last_minute(self) -> dict[str, float]:
        now = int(self.clock())
        buckets = [b for b in self._recent if b.at > now - WINDOW_S]
        if not buckets:
            return {"throughput_rps": 0.0, "rate_limited_share": 0.0, "attempts": 0}
        span = max(1, min(WINDOW_S, now - buckets[0].at + 1))
        done = sum(b.done + b.failed for b in buckets)
        attempts = sum(b.attempts for b in buckets)
        limited = sum(b.rate_limited for b in buckets)
        return {
            "throughput_rps": round(done / span, 3),
            "rate_limited_share": round(limited / attempts, 4) if attempts else 0.0,
            "attempts": attempts,
        }
