"""One quota window announced in rate-limit headers: ``remaining`` until ``reset``.

Pure. :func:`quota_window` turns a parsed :class:`~pacer.control.ratelimit_headers.Quota`
into the window it allows from now: at most ``remaining`` more starts (or tokens)
before ``now + reset``, spread at ``margin × remaining / reset``; with
``remaining = 0`` nothing until the reset (or the Retry-After, or ``default_hold``
when neither is given).
"""

from __future__ import annotations

from dataclasses import dataclass

from pacer.control.ratelimit_headers import Quota

__all__ = ["QuotaWindow", "quota_window"]


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
