"""One decision per attempt: the classification of statuses and transport failures,
and what a refusal means once the pacing gate has put it down to a cause."""

from __future__ import annotations

import pytest

from pacer.control.aimd import PACED
from pacer.control.limit import Outcome
from pacer.control.outcome import (
    RETRYABLE_STATUS,
    classify,
    decide,
    is_rate_limited,
)
from pacer.control.ratelimit_headers import Quota, RateLimitInfo


def test_retryable_statuses_are_exactly_the_documented_ones() -> None:
    retryable = {s for s in range(100, 600) if classify(s).retry}
    assert retryable == RETRYABLE_STATUS == {408, 425, 429, 500, 502, 503, 504}


def test_auth_failures_are_final_and_stop_the_upstream() -> None:
    for status in (401, 403):
        verdict = classify(status)
        assert verdict.reason == "auth" and verdict.stop_upstream and verdict.failure
        decision = decide(verdict)
        # Regression: the retry loop used to retry them (retry or stop_upstream).
        assert not decision.retry and not decision.requeue


def test_github_style_403_is_a_rate_limit_not_auth() -> None:
    empty = RateLimitInfo()
    assert is_rate_limited(429, empty)
    assert not is_rate_limited(403, empty)
    assert is_rate_limited(403, RateLimitInfo(retry_after=60.0))
    assert is_rate_limited(403, RateLimitInfo(requests=Quota(5000, 0, 100.0)))
    assert not is_rate_limited(403, RateLimitInfo(requests=Quota(5000, 12, 100.0)))
    assert not is_rate_limited(503, RateLimitInfo(retry_after=1.0))
    limited = classify(403, RateLimitInfo(retry_after=60.0))
    assert limited.reason == "rate_limited" and limited.retry and not limited.stop_upstream
    assert limited.outcome is Outcome.DROPPED


@pytest.mark.parametrize(
    ("failure", "reason", "outcome", "retry"),
    [
        ("connect_timeout", "connection", Outcome.DROPPED, True),
        ("timeout", "timeout", Outcome.DROPPED, True),
        ("connection", "connection", Outcome.DROPPED, True),
        ("invalid_request", "invalid_request", Outcome.IGNORE, False),
        ("response_too_large", "response_too_large", Outcome.IGNORE, False),
        ("internal", "internal_error", Outcome.IGNORE, False),
        (None, "internal_error", Outcome.IGNORE, False),
    ],
)
def test_transport_failures(failure: str | None, reason: str, outcome: Outcome,
                            retry: bool) -> None:
    verdict = classify(None, None, failure)  # type: ignore[arg-type]
    assert (verdict.reason, verdict.outcome, verdict.retry) == (reason, outcome, retry)


def test_a_500_is_retried_and_counted_but_is_not_congestion() -> None:
    verdict = classify(500)
    assert verdict.retry and verdict.failure and verdict.outcome is Outcome.IGNORE


def test_a_rate_cap_refusal_does_not_shrink_the_concurrency_limit() -> None:
    for cause in ("rate", "quota"):
        d = decide(classify(429), cause)  # type: ignore[arg-type]
        assert d.limit_outcome is Outcome.IGNORE and d.retry and not d.requeue


def test_a_refusal_of_a_quota_announced_as_spent_says_so() -> None:
    assert decide(classify(429), "quota").limit_reason == "quota"
    assert decide(classify(429), "rate").limit_reason == "rate_limited"


def test_a_concurrency_refusal_is_requeued_not_held_for_its_retry_after() -> None:
    d = decide(classify(429, RateLimitInfo(retry_after=60.0)), "concurrency")
    assert d.limit_outcome is Outcome.DROPPED and d.limit_reason == "rate_limited"
    assert d.retry and d.requeue
    # Unless its Retry-After binds the whole upstream now (all refused, a storm).
    assert not decide(classify(429), "concurrency", paused=True).requeue


def test_a_held_success_is_paced_and_others_keep_their_reason() -> None:
    assert decide(classify(200), held=True).limit_reason == PACED
    assert decide(classify(200)).limit_reason == "ok"
    assert decide(classify(503), held=True).limit_reason == "server_error"
