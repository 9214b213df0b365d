"""Classify one attempt's result, once, for everyone who needs to know.

The limit wants to know whether the attempt says something about load
(success / ignore / dropped); the retry loop wants to know whether to try again;
the breaker whether it was a failure; the result line what error to report.
Keeping all of it in one tested function keeps them from disagreeing.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from pacer.control.limit import Outcome

# Back-pressure that a later attempt may get past.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Bad credentials: every job would fail the same way, so stop the upstream.
AUTH_STATUS = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome  # what the limit learns from it
    reason: str  # ok, rate_limited, server_error, timeout, connection, client_error, ...
    retry: bool  # worth another attempt
    failure: bool  # counts against the upstream's health (breaker)
    stop_upstream: bool = False  # auth failure: open the breaker

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def classify(status: int | None, error: BaseException | None = None) -> Verdict:
    """Classify an HTTP status, or a transport error when there was no response."""
    if status is None:
        if isinstance(error, httpx.ConnectTimeout):
            return Verdict(Outcome.DROPPED, "connection", retry=True, failure=True)
        if isinstance(error, httpx.TimeoutException):
            return Verdict(Outcome.DROPPED, "timeout", retry=True, failure=True)
        if isinstance(error, httpx.TransportError):
            return Verdict(Outcome.DROPPED, "connection", retry=True, failure=True)
        return Verdict(Outcome.IGNORE, "internal_error", retry=False, failure=False)
    if 200 <= status < 300:
        return Verdict(Outcome.SUCCESS, "ok", retry=False, failure=False)
    if status == 429:
        return Verdict(Outcome.DROPPED, "rate_limited", retry=True, failure=False)
    if status == 408:
        return Verdict(Outcome.DROPPED, "timeout", retry=True, failure=True)
    if status in (502, 503, 504):
        return Verdict(Outcome.DROPPED, "server_error", retry=True, failure=True)
    if status == 500:
        # Usually a fault of this request or the server, not load: retry it, and let
        # the breaker count it, but do not shrink the limit for it.
        return Verdict(Outcome.IGNORE, "server_error", retry=True, failure=True)
    if status == 425:
        return Verdict(Outcome.IGNORE, "too_early", retry=True, failure=False)
    if status in AUTH_STATUS:
        return Verdict(Outcome.IGNORE, "auth", retry=False, failure=True, stop_upstream=True)
    if 400 <= status < 500:
        return Verdict(Outcome.IGNORE, "client_error", retry=False, failure=False)
    if status >= 500:
        return Verdict(Outcome.IGNORE, "server_error", retry=False, failure=True)
    # 1xx/3xx as a final answer: redirects are not followed (they could lead off
    # the upstream), so the caller sees them as they are.
    return Verdict(Outcome.IGNORE, "unexpected_status", retry=False, failure=False)
