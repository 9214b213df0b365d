"""The pacing gate's share of a quota announced in headers: a fleet node spends only
its part of the fleet-wide ``remaining`` every node reads, so the nodes together
spend the quota as one pacer would."""

from __future__ import annotations

import math

import pytest

from pacer.control.pacing import Pacer
from pacer.control.quota import HeaderQuotas
from pacer.control.ratelimit_headers import Quota, RateLimitInfo

FIXED = RateLimitInfo(requests=Quota(limit=100, remaining=30, reset=10.0))


def test_a_share_scales_the_pace_and_what_may_be_spent_before_the_reset() -> None:
    quotas = HeaderQuotas(margin=1.0)
    quotas.update(0.0, FIXED)
    assert quotas.request_rate(0.0) == pytest.approx(3.0)
    quotas.share = 0.25
    assert quotas.request_rate(0.0) == pytest.approx(0.75)
    for _ in range(7):  # 0.25 x 30 = 7.5: seven starts, not an eighth
        assert quotas.blocked_until(1.0, 0.0) == 1.0
        quotas.take(0.0)
    assert quotas.blocked_until(1.0, 0.0) == 10.0  # until the reset
    quotas.share = 1.0
    assert quotas.blocked_until(1.0, 0.0) == 1.0  # the whole quota: 23 left


def test_a_share_applies_to_the_tokens_quota_too() -> None:
    quotas = HeaderQuotas(margin=1.0)
    quotas.update(0.0, RateLimitInfo(tokens=Quota(limit=1000, remaining=600, reset=6.0)))
    quotas.share = 0.5
    assert quotas.token_rate(0.0) == pytest.approx(50.0)
    assert quotas.blocked_until(0.0, 300.0) == 0.0
    assert quotas.blocked_until(0.0, 301.0) == 6.0


def starts_before(pacer: Pacer, until: float) -> list[float]:
    """Every start the pacer allows before ``until``, taken as soon as allowed."""
    starts: list[float] = []
    t = 0.0
    while True:
        t = pacer.next_start(t)
        if t >= until:
            return starts
        pacer.commit(t)
        starts.append(t)


def test_three_nodes_with_a_third_each_spend_the_quota_as_one_pacer() -> None:
    alone = Pacer()
    alone.on_response(0.0, FIXED, 200)
    one = starts_before(alone, 10.0)
    nodes = [Pacer() for _ in range(3)]
    for p in nodes:
        p.share_quota(0.0, 1 / 3)
        p.on_response(0.0, FIXED, 200)  # every node reads the same fleet-wide remaining
    each = [starts_before(p, 10.0) for p in nodes]
    assert len(one) == 27  # 0.9 x 30 spread over the 10 s
    assert sum(len(s) for s in each) == len(one)  # not 3 x 27
    # ...at the pace of one pacer: a third of it each.
    assert all(s[1] - s[0] == pytest.approx(3 * (one[1] - one[0])) for s in each)


def test_without_a_share_every_node_spends_the_whole_quota() -> None:
    nodes = [Pacer() for _ in range(3)]
    for p in nodes:
        p.on_response(0.0, FIXED, 200)
    assert sum(len(starts_before(p, 10.0)) for p in nodes) == 3 * 27  # the overshoot


def test_a_share_must_lie_in_zero_to_one() -> None:
    p = Pacer()
    assert p.quota_share == 1.0
    for bad in (0.0, -0.5, 1.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="quota share"):
            p.share_quota(0.0, bad)
    p.share_quota(0.0, 0.5)
    assert p.quota_share == 0.5
