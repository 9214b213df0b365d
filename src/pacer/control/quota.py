"""One quota window announced in rate-limit headers: ``remaining`` until ``reset``.

Pure. :func:`quota_window` turns a parsed :class:`~pacer.control.ratelimit_headers.Quota`
into the window it allows from now: at most ``remaining`` more starts (or tokens)
before ``now + reset``, spread at ``margin × remaining / reset``; with
``remaining = 0`` nothing until the reset (or the Retry-After, or ``default_hold``
when neither is given). :class:`HeaderQuotas` holds the request and the token
window in force, and the ``share`` of each that this pacer may spend: all of it
alone; a node of a fleet, whose every member reads the same fleet-wide
``remaining``, spends only its share of it, so that the fleet together spends
the quota as one pacer would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from pacer.control.ratelimit_headers import Quota, RateLimitInfo

__all__ = ["HeaderQuotas", "QuotaWindow", "quota_window"]

_EPS: Final = 1e-9


@dataclass(slots=True)
class QuotaWindow:
    """What one response's quota headers allow until their reset."""

    remaining: float
    reset_at: float
    rate: float | None  # margin × remaining / reset; None: nothing to spread
    limit: int | None
    used: float = 0.0

    def active(self, t: float) -> bool:
        return t < self.reset_at

    def left(self) -> float:
        return max(0.0, self.remaining - self.used)


def quota_window(now: float, q: Quota, retry_after: float | None, *, margin: float,
                 default_hold: float, max_reset: float) -> QuotaWindow | None:
    """The window ``q`` allows from ``now`` (``None``: nothing to enforce)."""
    remaining = q.remaining
    assert remaining is not None
    reset = q.reset
    if reset is None:
        if remaining > 0:
            return None  # nothing to spread it over
        reset = retry_after if retry_after is not None else default_hold
    reset = min(reset, max_reset)
    if reset <= 0:
        return None  # the window has just reset
    rate = margin * remaining / reset if remaining > 0 else None
    return QuotaWindow(float(remaining), now + reset, rate, q.limit)


class HeaderQuotas:
    """The request and token quota windows the last response's headers announced.

    Each response replaces the previous window (of its kind); a window that has
    reset lapses. (For a quota that refills continuously, as OpenAI's, Anthropic's
    and the mock's do, ``reset`` is the time until full, and this rule settles with
    the quota about half full and the pace equal to the refill rate.)
    """

    def __init__(self, *, margin: float = 0.9, default_hold: float = 1.0,
                 max_reset: float = 86400.0) -> None:
        if not 0.0 < margin <= 1.0:
            raise ValueError("margin must be in (0, 1]")
        for name, value in (("default_hold", default_hold), ("max_reset", max_reset)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.margin = margin
        self.default_hold = default_hold
        self.max_reset = max_reset
        self.requests: QuotaWindow | None = None
        self.tokens: QuotaWindow | None = None
        # The part of every announced quota this pacer may spend, in [0, 1].
        self.share = 1.0

    def update(self, now: float, info: RateLimitInfo) -> None:
        """Take the windows announced in ``info`` (those it does not mention stay)."""
        if info.requests is not None and info.requests.remaining is not None:
            self.requests = self._window(now, info.requests, info.retry_after)
        if info.tokens is not None and info.tokens.remaining is not None:
            self.tokens = self._window(now, info.tokens, info.retry_after)

    def _window(self, now: float, q: Quota, retry_after: float | None) -> QuotaWindow | None:
        return quota_window(now, q, retry_after, margin=self.margin,
                            default_hold=self.default_hold, max_reset=self.max_reset)

    def resets(self) -> list[float]:
        """When the windows in force reset (the pace only ever loosens then)."""
        return [w.reset_at for w in (self.requests, self.tokens) if w is not None]

    def lapse(self, now: float) -> None:
        """Drop the windows that have reset by ``now``."""
        if self.requests is not None and not self.requests.active(now):
            self.requests = None
        if self.tokens is not None and not self.tokens.active(now):
            self.tokens = None

    def request_rate(self, t: float) -> float | None:
        return self._rate(self.requests, t)

    def token_rate(self, t: float) -> float | None:
        return self._rate(self.tokens, t)

    def _rate(self, w: QuotaWindow | None, t: float) -> float | None:
        if w is None or not w.active(t) or w.rate is None:
            return None
        return w.rate * self.share

    def blocked_until(self, t: float, tokens: float) -> float:
        """The earliest time >= ``t`` the remaining quotas allow a start of ``tokens``
        (a spent quota, or this pacer's share of it, holds until its reset)."""
        for window, cost in ((self.requests, 1.0), (self.tokens, tokens)):
            if window is not None and cost > 0 and (
                    window.used + cost > self.share * window.remaining + _EPS):
                t = max(t, window.reset_at)
        return t

    def take(self, tokens: float) -> None:
        if self.requests is not None:
            self.requests.used += 1.0
        if self.tokens is not None:
            self.tokens.used += tokens
