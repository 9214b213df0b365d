"""What one attempt means, decided once, for everyone who needs to know.

The limit wants to know whether the attempt says something about load (success /
ignore / dropped); the retry loop whether to try again and whether a refusal may
go straight back to the queue; the breaker whether it was a failure; the result
line what error to report. Two pure functions hold all of it:

- :func:`classify` reads what came back: a status and its rate-limit headers, or a
  :data:`TransportFailure` (the HTTP edge translates its library's exceptions into
  one of these names, in one place, so nothing here imports an HTTP library);
- :func:`decide` adds what the pacing gate made of a refusal (a concurrency cap,
  a rate cap, an exhausted quota) and whether the pace held the attempt, and says
  what the limit records and how a retry waits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from pacer.control.aimd import PACED
from pacer.control.limit import Outcome
from pacer.control.ratelimit_headers import RateLimitInfo

__all__ = [
    "AUTH_STATUS",
    "QUOTA",
    "RETRYABLE_STATUS",
    "Decision",
    "TransportFailure",
    "Verdict",
    "classify",
    "decide",
    "is_rate_limited",
]

# Back-pressure that a later attempt may get past.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Bad credentials: every job would fail the same way, so stop the upstream.
AUTH_STATUS = frozenset({401, 403})

TransportFailure = Literal[
    "connect_timeout",  # no connection within the connect timeout
    "timeout",  # no complete answer within the attempt's deadline
    "connection",  # refused, reset, closed, or bytes that are not HTTP
    "invalid_request",  # could not even be built (validation should have caught it)
    "response_too_large",  # the body passed the size cap
    "internal",  # anything else: a bug of ours, says nothing about the upstream
]

Cause = Literal["quota", "concurrency", "rate"]


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome  # what the limit learns from it
    reason: str  # ok, rate_limited, server_error, timeout, connection, client_error, ...
    retry: bool  # worth another attempt
    failure: bool  # counts against the upstream's health (breaker, retry budget)
    stop_upstream: bool = False  # auth failure: open the breaker; never retried

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def is_rate_limited(status: int, info: RateLimitInfo) -> bool:
    """A 429, or a 403 that carries rate-limit evidence (GitHub answers rate limits with
    403 plus Retry-After or ``x-ratelimit-remaining: 0``)."""
    if status == 429:
        return True
    if status != 403:
        return False
    return info.retry_after is not None or (
        info.requests is not None and info.requests.remaining == 0
    )


_TRANSPORT: Final[dict[str, Verdict]] = {
    "connect_timeout": Verdict(Outcome.DROPPED, "connection", retry=True, failure=True),
    "timeout": Verdict(Outcome.DROPPED, "timeout", retry=True, failure=True),
    "connection": Verdict(Outcome.DROPPED, "connection", retry=True, failure=True),
    "invalid_request": Verdict(Outcome.IGNORE, "invalid_request", retry=False, failure=False),
    "response_too_large": Verdict(Outcome.IGNORE, "response_too_large", retry=False,
                                  failure=False),
    "internal": Verdict(Outcome.IGNORE, "internal_error", retry=False, failure=False),
}


def classify(status: int | None, info: RateLimitInfo | None = None,
             failure: TransportFailure | None = None) -> Verdict:
    """Classify an HTTP status (with its rate-limit headers), or a transport failure
    when there was no response."""
    if status is None:
        return _TRANSPORT[failure or "internal"]
    if 200 <= status < 300:
        return Verdict(Outcome.SUCCESS, "ok", retry=False, failure=False)
    if is_rate_limited(status, info or RateLimitInfo()):
        # A 403 with rate-limit evidence is GitHub's 429: the same verdict.
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
        # Final, as for any request: the breaker stops the upstream instead.
        return Verdict(Outcome.IGNORE, "auth", retry=False, failure=True, stop_upstream=True)
    if 400 <= status < 500:
        return Verdict(Outcome.IGNORE, "client_error", retry=False, failure=False)
    if status >= 500:
        return Verdict(Outcome.IGNORE, "server_error", retry=False, failure=True)
    # 1xx/3xx as a final answer: redirects are not followed (they could lead off
    # the upstream), so the caller sees them as they are.
    return Verdict(Outcome.IGNORE, "unexpected_status", retry=False, failure=False)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one attempt means for each part that acts on it.

    ``limit_outcome``/``limit_reason``: the sample the concurrency limit records.
    ``retry``: another attempt is worth it. ``requeue``: the refusal was the
    concurrency cap's while the upstream kept serving others, so a retry goes back
    to the queue for the next free slot at once instead of waiting out a
    ``Retry-After`` meant for the whole upstream (or for a rate cap).
    """

    verdict: Verdict
    limit_outcome: Outcome
    limit_reason: str
    retry: bool
    requeue: bool


QUOTA = "quota"  # the limit's reason for a 429 of a quota announced as spent


def decide(verdict: Verdict, cause: Cause | None = None, *, held: bool = False,
           paused: bool = False) -> Decision:
    """Combine the verdict with what the pacing gate made of it (``cause``, for a
    refusal), whether the pace held the attempt before it started, and whether the
    gate now pauses the whole upstream (a ``Retry-After`` that binds everyone: all
    attempts refused, a storm: then a refused request waits it out too)."""
    outcome, reason = verdict.outcome, verdict.reason
    if cause in ("rate", "quota"):
        # A rate cap is the pacing gate's to handle: shrinking the concurrency for
        # it would only make the limit oscillate.
        outcome = Outcome.IGNORE
        if cause == "quota":
            # A quota the headers said was spent: its window holds the starts until
            # its reset, and a fleet's controller learns nothing from it either.
            reason = QUOTA
    elif outcome is Outcome.SUCCESS and held:
        reason = PACED  # the pace bound, not the limit: no growth from it
    requeue = verdict.reason == "rate_limited" and cause == "concurrency" and not paused
    return Decision(verdict, outcome, reason, retry=verdict.retry and not verdict.stop_upstream,
                    requeue=requeue)
