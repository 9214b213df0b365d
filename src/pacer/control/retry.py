"""Retry delays and the retry budget, pure (no I/O, no clock).

Delays use AWS's "full jitter": ``uniform(0, min(cap, base * 2**(attempt-1)))``,
which spreads a crowd of clients best and does the least work. When the server said
when to come back (Retry-After), we wait at least that long, plus a small jitter
proportional to it so that every client told "60 s" does not return in the same
instant.

The budget follows gRPC's retry throttling (gRFC A6) rather than Finagle's
``RetryBudget`` (a deposit per request, a withdrawal per retry, a minimum rate per
second over a time window):

- it is driven by outcomes, not time, so it is one number, needs no clock, and its
  tests are exact;
- it recovers from successes, which keep coming since first attempts are never
  gated;
- it cuts retries off while failures outnumber successes by more than half its
  tokens, which is exactly when retries would add load to a struggling upstream.
  Finagle's minimum retries per second would keep poking an upstream that is
  down; here the circuit breaker decides when to probe it instead.

Every failed attempt costs one token, every success gives back ``ratio`` (by default
one: each success pays back one failure); retries are allowed only while the tokens
are above half of ``max_tokens``. gRPC's ratio of 0.1 (ten successes per failure)
held every retry of an upstream that fails a third of its attempts at random and
serves the rest at full speed, and took 51 successes to reopen after a 1 s outage
(issue 10). A failure of an attempt that started before one that has since
succeeded is not charged: the upstream answered after it (a timeout that lands
once the upstream is back says nothing about it now). As in grpc-java, the tokens
are kept in thousandths so that the arithmetic is exact.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

__all__ = [
    "RetryBudget",
    "RetrySettings",
    "backoff_delay",
    "has_attempts_left",
]

_SCALE = 1000  # tokens are counted in thousandths, as grpc-java does


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """``max_attempts`` counts the first attempt too. ``retry_after_jitter`` is the
    largest extra wait on top of a Retry-After, as a share of it (at least of
    ``base_delay``); ``max_retry_after`` clamps absurd Retry-After values.
    ``budget_max_tokens`` and ``budget_ratio`` are gRPC's ``maxTokens`` and
    ``tokenRatio`` (its default 0.1; here one success pays back one failure)."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    retry_after_jitter: float = 0.1
    max_retry_after: float = 600.0
    budget_max_tokens: float = 10.0
    budget_ratio: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not 0.0 < self.base_delay <= self.max_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        if not 0.0 <= self.retry_after_jitter <= 1.0:
            raise ValueError("retry_after_jitter must be in [0, 1]")
        if not self.max_retry_after > 0.0:
            raise ValueError("max_retry_after must be > 0")
        if not 0.0 < self.budget_max_tokens <= 1000.0:  # gRPC's bounds
            raise ValueError("budget_max_tokens must be in (0, 1000]")
        if not 0.0 < self.budget_ratio <= 1.0:
            raise ValueError("budget_ratio must be in (0, 1]")


def has_attempts_left(attempts_made: int, settings: RetrySettings) -> bool:
    """May another attempt follow ``attempts_made`` (first one included)?"""
    return attempts_made < settings.max_attempts


def backoff_delay(
    attempt: int,
    settings: RetrySettings,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    Without ``retry_after``: full jitter, ``uniform(0, min(max_delay, base * 2**(attempt-1)))``.
    With it: ``retry_after`` (clamped to ``max_retry_after``) plus
    ``uniform(0, retry_after_jitter * max(retry_after, base_delay))``.
    """
    if attempt < 1:
        raise ValueError("attempt counts retries from 1")
    if retry_after is not None and not math.isnan(retry_after):
        wait = min(max(retry_after, 0.0), settings.max_retry_after)
        spread = settings.retry_after_jitter * max(wait, settings.base_delay)
        return wait + rng.uniform(0.0, spread)
    # Exponent capped so that 2**n never overflows; the cap is reached long before.
    ceiling = min(settings.max_delay, settings.base_delay * 2.0 ** min(attempt - 1, 1000))
    return rng.uniform(0.0, ceiling)


class RetryBudget:
    """gRPC-style retry throttling: report every attempt's outcome, ask before retrying.

    First attempts are never gated, only retries. Report only failures that say
    something about the upstream's health (retryable statuses, timeouts,
    connection errors), not e.g. a 400. ``started`` (when the attempt started, on
    any clock the caller keeps) lets a stale failure go uncharged.
    """

    def __init__(self, settings: RetrySettings | None = None) -> None:
        s = settings if settings is not None else RetrySettings()
        self._max = round(s.budget_max_tokens * _SCALE)
        self._gain = round(s.budget_ratio * _SCALE)
        self._threshold = self._max // 2
        self._tokens = self._max
        self._last_success_start = -math.inf
        self.granted = 0  # retries allowed by try_spend, for metrics
        self.denied = 0  # retries refused by try_spend, for metrics

    @property
    def tokens(self) -> float:
        return self._tokens / _SCALE

    def on_success(self, started: float | None = None) -> None:
        if started is not None:
            self._last_success_start = max(self._last_success_start, started)
        self._tokens = min(self._max, self._tokens + self._gain)

    def on_failure(self, started: float | None = None) -> bool:
        """Charge a failure; returns False (nothing charged) when its attempt started
        before one that has since succeeded."""
        if started is not None and started < self._last_success_start:
            return False
        self._tokens = max(0, self._tokens - _SCALE)
        return True

    def can_retry(self) -> bool:
        """Are retries allowed now (tokens above half)? Does not count anything."""
        return self._tokens > self._threshold

    def try_spend(self) -> bool:
        """Ask for one retry. The failure that prompted it has already paid its token,
        so this only checks, and counts grants and denials."""
        if self.can_retry():
            self.granted += 1
            return True
        self.denied += 1
        return False
