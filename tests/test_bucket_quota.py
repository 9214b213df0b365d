"""The pacing gate's single-purpose parts, each alone: the token bucket and the
header quota window."""

from __future__ import annotations

import math

import pytest

from pacer.control.bucket import TokenBucket
from pacer.control.quota import quota_window
from pacer.control.ratelimit_headers import Quota


def test_an_unlimited_bucket_never_holds() -> None:
    bucket = TokenBucket(1.0)
    for t in range(5):
        assert bucket.earliest(float(t), 100.0) == t
        bucket.take(float(t), 100.0)
    assert bucket.credit(5.0) is None


def test_a_bucket_spreads_starts_evenly_and_debt_is_waited_out() -> None:
    bucket = TokenBucket(1.0)
    bucket.set_rate(0.0, 10.0)  # 10 starts/s, one start of credit
    assert bucket.earliest(0.0, 1.0) == 0.0
    bucket.take(0.0, 1.0)
    assert bucket.earliest(0.0, 1.0) == pytest.approx(0.1)
    bucket.take(0.1, 3.0)  # costs more than the credit: debt of 2
    assert bucket.credit(0.1) == pytest.approx(-2.0)
    assert bucket.earliest(0.1, 1.0) == pytest.approx(0.4)


def test_a_restart_in_the_future_holds_until_then() -> None:
    bucket = TokenBucket(1.0)
    bucket.set_rate(0.0, 2.0)
    bucket.restart(5.0, 1.0)
    assert bucket.earliest(1.0, 1.0) == 5.0


def test_a_quota_window_spreads_what_remains_until_the_reset() -> None:
    w = quota_window(10.0, Quota(100, 50, 5.0), None, margin=0.9, default_hold=1.0,
                     max_reset=60.0)
    assert w is not None
    assert w.reset_at == 15.0 and w.rate == pytest.approx(0.9 * 50 / 5.0) and w.limit == 100
    assert w.active(14.9) and not w.active(15.0)
    w.used = 60.0
    assert w.left() == 0.0


def test_an_exhausted_quota_holds_until_its_reset_or_retry_after_or_default() -> None:
    held = quota_window(0.0, Quota(100, 0, None), 7.0, margin=0.9, default_hold=1.0,
                        max_reset=60.0)
    assert held is not None and held.reset_at == 7.0 and held.rate is None
    fallback = quota_window(0.0, Quota(100, 0, None), None, margin=0.9, default_hold=1.5,
                            max_reset=60.0)
    assert fallback is not None and fallback.reset_at == 1.5
    clamped = quota_window(0.0, Quota(100, 0, 1e9), None, margin=0.9, default_hold=1.0,
                           max_reset=60.0)
    assert clamped is not None and clamped.reset_at == 60.0


def test_nothing_to_enforce() -> None:
    assert quota_window(0.0, Quota(100, 5, None), None, margin=0.9, default_hold=1.0,
                        max_reset=math.inf) is None  # nothing to spread it over
    assert quota_window(0.0, Quota(100, 5, 0.0), None, margin=0.9, default_hold=1.0,
                        max_reset=60.0) is None  # has just reset
