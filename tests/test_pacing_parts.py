"""Unit tests of the pacing gate's parts, each alone: the recent traffic, the 429
attribution, the rate learner, the pauses and their ramp, the header quotas.
(``tests/test_pacing.py`` tests them together behind :class:`~pacer.control.pacing.Pacer`.)"""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from pacer.control.attribution import AttributionSettings, RefusalJudge
from pacer.control.pacing import Pacer, PacerSettings
from pacer.control.pauses import PauseEvent, Pauses, PauseSettings
from pacer.control.quota import HeaderQuotas
from pacer.control.rate_learner import RateChange, RateLearner, RateLearnerSettings
from pacer.control.ratelimit_headers import Quota, RateLimitInfo
from pacer.control.traffic import RecentTraffic, TrafficSettings

# ------------------------------------------------------------------ recent traffic


def served(traffic: RecentTraffic, t0: float, t1: float, every: float,
           inflight: int) -> float:
    """Every ``every`` s in [t0, t1), ``inflight`` attempts start together, each a
    success ``every`` s later (all in service together); returns t1."""
    t = t0
    while t < t1 - 1e-9:
        for _ in range(inflight):
            traffic.on_start(t)
        for _ in range(inflight):
            traffic.on_success(t + every, inflight, t)
        t += every
    return t1


def test_rates_count_since_the_first_start_over_at_least_the_minimum_span() -> None:
    traffic = RecentTraffic(TrafficSettings(success_window=2.0, min_success_span=1.0))
    assert traffic.success_rate(0.0) == 0.0
    for i in range(5):
        traffic.on_start(10.0 + 0.1 * i)
        traffic.on_success(10.0 + 0.1 * i, 1, None)
    # 5 in 0.4 s since the first start, but over at least 1 s.
    assert traffic.success_rate(10.4) == pytest.approx(5.0)
    assert traffic.start_rate(10.4) == pytest.approx(5.0)
    # 1.6 s after the first start: over 1.6 s.
    assert traffic.success_rate(11.6) == pytest.approx(5 / 1.6)
    # The window moves on: 3 s later nothing is left in it.
    assert traffic.success_rate(13.0) == 0.0


def test_the_proven_concurrency_is_the_second_highest_recent_success() -> None:
    traffic = RecentTraffic(TrafficSettings(concurrency_window=5.0, proof_successes=2))
    # Successes told 3, 8, 5 and (unknown) in flight, all in service together.
    for n in (3, 8, 5, None, 9):
        traffic.on_success(0.3, n, 0.0)
    assert traffic.proven_concurrency(0.3) == 5  # 8 and 9 were never served at once
    # Only the successes sent after ``since`` count.
    assert traffic.proven_concurrency(0.3, since=0.0) is None
    # Nor those older than the window.
    assert traffic.proven_concurrency(5.4) is None


def test_a_success_proves_no_more_than_were_in_service_with_it() -> None:
    """Issue 10, cause 2: over a cap of 5 that answers its 429s after the service time,
    8 in flight get 5 successes told 8; the 3 refused were never in service, and
    must not make a later 429 at 6 look like one below a served concurrency."""
    traffic = RecentTraffic()
    for _ in range(5):
        traffic.on_success(0.1, 8, 0.0)
    assert traffic.proven_concurrency(0.1) == 5
    # One after another, each alone in service: a concurrency of 1, whatever told.
    lone = RecentTraffic()
    for i in range(5):
        lone.on_success(0.1 * (i + 1), 4, 0.1 * i)
    assert lone.proven_concurrency(0.5) == 1


def test_an_answer_on_its_way_back_is_not_in_service() -> None:
    """A cap of 2 at 0.1 s: two more are sent the moment the first two answers leave
    the upstream (they reach the client 1 ms later, and were counted in flight);
    2 were ever in service, not 4."""
    traffic = RecentTraffic()
    for _ in range(2):
        traffic.on_success(0.101, 2, 0.0)
    for _ in range(2):
        traffic.on_success(0.201, 4, 0.1)
    assert traffic.proven_concurrency(0.201) == 2


def test_the_typical_rtt_is_the_median_success_time() -> None:
    traffic = RecentTraffic()
    assert traffic.typical_rtt(0.0) == math.inf
    for rtt in (0.1, 0.5, 0.2):
        traffic.on_success(1.0, 2, 1.0 - rtt)
    assert traffic.typical_rtt(1.0) == pytest.approx(0.2)


def test_refusals_in_a_row_reset_at_a_success() -> None:
    traffic = RecentTraffic()
    traffic.on_refusal(0.0)
    traffic.on_refusal(0.1)
    assert traffic.refusals_in_a_row == 2 and traffic.refusals_since(0.0) == 2
    traffic.on_success(0.2, 1, 0.1)
    assert traffic.refusals_in_a_row == 0 and traffic.last_success() == 0.2


# ------------------------------------------------------------------- attribution


def judge_after(inflight: int, until: float = 1.0) -> tuple[RecentTraffic, RefusalJudge]:
    traffic = RecentTraffic()
    served(traffic, 0.0, until, 0.05, inflight)
    return traffic, RefusalJudge(traffic, AttributionSettings())


def refuse(traffic: RecentTraffic, judge: RefusalJudge, now: float, inflight: int | None,
           started: float | None = None, limit_changed_at: float | None = None, *,
           rate_known: bool = False, pace_bound: bool = False) -> str:
    traffic.on_refusal(now)
    return judge.judge(now, inflight, started, limit_changed_at, rate_known=rate_known,
                       pace_bound=pace_bound).cause


def test_one_429_at_or_below_what_just_succeeded_is_the_concurrency_limits() -> None:
    for inflight in (6, 5, 2):
        traffic, judge = judge_after(5)
        assert refuse(traffic, judge, 1.0, inflight) == "concurrency"


def test_a_429_with_nothing_to_go_by_or_alone_is_a_rate_signal_that_holds() -> None:
    for inflight in (None, 1):
        traffic, judge = judge_after(5)
        traffic.on_refusal(1.0)
        verdict = judge.judge(1.0, inflight, None, None, rate_known=False, pace_bound=False)
        assert verdict.cause == "rate" and verdict.hold


def test_well_below_twice_is_a_rate_cap_once_is_not() -> None:
    traffic, judge = judge_after(6)
    traffic.on_refusal(1.0)
    first = judge.judge(1.0, 3, None, None, rate_known=False, pace_bound=False)
    assert first.cause == "concurrency" and first.evidence and not first.hold
    served(traffic, 1.0, 1.5, 0.05, 6)
    assert refuse(traffic, judge, 1.5, 3) == "rate"


def test_evidence_confirmed_by_serving_its_concurrency_again_is_a_rate_cap() -> None:
    """A rate cap with a tiny burst refuses now and then at a plateau it serves (a
    fallen capacity would refuse it from then on): served again soon after, the one
    refusal is enough (issue 10, rate-20-small-burst: the second refusal took 7 s)."""
    traffic, judge = judge_after(4)
    traffic.on_refusal(1.0)
    first = judge.judge(1.0, 4, 0.99, 0.5, rate_known=False, pace_bound=False)
    assert first.cause == "concurrency" and first.evidence
    assert not judge.confirmed(1.05, 2)  # fewer in flight: proves nothing
    served(traffic, 1.0, 1.3, 0.05, 3)  # served one below the refused concurrency
    assert judge.confirmed(1.3, 3)
    assert not judge.confirmed(1.35, 3)  # once


def test_a_capacity_that_fell_is_not_confirmed_as_a_rate() -> None:
    # Refused at 20 after serving 20; from then on only 5 are served.
    traffic, judge = judge_after(20)
    refuse(traffic, judge, 1.0, 20, 0.99, 0.5)
    served(traffic, 1.0, 2.0, 0.05, 5)
    assert not judge.confirmed(2.0, 5)
    # A capacity that rose again many round trips later is no confirmation either.
    served(traffic, 2.0, 3.0, 0.05, 20)
    assert not judge.confirmed(3.0, 20)


def test_evidence_older_than_its_window_is_forgotten() -> None:
    traffic, judge = judge_after(6)
    refuse(traffic, judge, 1.0, 3)
    served(traffic, 1.0, 12.0, 0.05, 6)
    assert refuse(traffic, judge, 12.0, 3) == "concurrency"  # the first is > 10 s old


def test_a_429_long_after_the_limit_moved_is_evidence_one_right_after_is_not() -> None:
    traffic, judge = judge_after(4)
    traffic.on_refusal(1.0)
    assert not judge.judge(1.0, 5, 0.99, 0.95, rate_known=False, pace_bound=False).evidence
    traffic.on_refusal(1.0)
    assert judge.judge(1.0, 4, 0.99, 0.5, rate_known=False, pace_bound=False).evidence


def test_once_a_rate_is_known_a_paced_429_is_the_rates() -> None:
    traffic, judge = judge_after(5)
    assert refuse(traffic, judge, 1.0, 6, rate_known=True) == "concurrency"
    assert refuse(traffic, judge, 1.0, 6, rate_known=True, pace_bound=True) == "rate"


def test_a_storm_holds_only_once_the_upstream_serves_no_one() -> None:
    traffic, judge = judge_after(3)
    holds = []
    for i in range(6):
        traffic.on_refusal(1.0 + i * 0.001)
        holds.append(judge.judge(1.0 + i * 0.001, 3, None, None, rate_known=False,
                                 pace_bound=False).hold)
    assert holds == [False] * 6
    traffic.on_refusal(1.1)
    assert judge.judge(1.1, 3, None, None, rate_known=False, pace_bound=False).hold


# ------------------------------------------------------------------ rate learner


def test_the_first_rate_is_the_success_rate_times_the_backoff() -> None:
    learner = RateLearner(RateLearnerSettings(backoff=0.9))
    assert learner.on_rate_limited(1.0, None, 0.0) is None  # nothing to start from
    change = learner.on_rate_limited(1.0, None, 20.0)
    assert change == RateChange(None, pytest.approx(18.0), "rate_limited", 1.0)
    assert learner.rate == pytest.approx(18.0)


def test_decreases_come_once_per_interval_unless_sent_after_the_last() -> None:
    learner = RateLearner(RateLearnerSettings(backoff=0.5, decrease_interval=1.0))
    learner.on_rate_limited(0.0, None, 20.0)  # 10
    assert learner.on_rate_limited(0.5, -0.1, 20.0) is None  # sent before it
    change = learner.on_rate_limited(0.6, 0.1, 20.0)  # sent after it: new evidence
    assert change is not None and change.new_rate == pytest.approx(5.0)
    # At most two backoffs at once, even if the success rate is far lower.
    change = learner.on_rate_limited(2.0, None, 0.1)
    assert change is not None and change.new_rate == pytest.approx(1.25)


def busy_interval(learner: RateLearner, starts: int, held: bool | None) -> None:
    for _ in range(starts):
        learner.on_start(held)


def test_a_bound_clean_interval_raises_the_rate_searching_then_additively() -> None:
    s = RateLearnerSettings(backoff=0.5, search_growth=0.1, increase_step=0.02,
                            increase_interval=1.0, busy_starts=5)
    learner = RateLearner(s)
    learner.on_rate_limited(0.0, None, 20.0)  # 10/s
    busy_interval(learner, 10, held=True)
    change = learner.maybe_increase(1.0, paused=False)
    assert change is not None and change.new_rate == pytest.approx(11.0)  # x1.1
    learner.on_rate_limited(1.5, None, 20.0)  # 5.5/s: the search is over
    busy_interval(learner, 10, held=True)
    change = learner.maybe_increase(2.5, paused=False)
    assert change is not None and change.new_rate == pytest.approx(5.5 + 0.02 * 5.5)


def test_no_increase_when_idle_refused_paused_or_not_held() -> None:
    cases: list[tuple[int, bool | None, bool, bool]] = [
        (2, None, False, False),  # idle: 2 starts at 10/s over 1 s
        (10, None, True, False),  # a 429 in the interval
        (10, None, False, True),  # paused
        (10, False, False, False),  # busy, but the pace held none (something else bound)
    ]
    for starts, held, refused, paused in cases:
        learner = RateLearner(RateLearnerSettings(backoff=0.5))
        learner.on_rate_limited(0.0, None, 20.0)
        busy_interval(learner, starts, held)
        if refused:
            learner.on_refusal()
        assert learner.maybe_increase(1.0, paused=paused) is None
        assert learner.rate == pytest.approx(10.0)


def test_the_search_growth_doubles_while_it_runs_clean() -> None:
    """A first rate measured while the concurrency limit bound (far below the cap)
    must not take a minute to find the cap at +10 % a second."""
    learner = RateLearner(RateLearnerSettings(backoff=0.5, search_growth=0.1))
    learner.on_rate_limited(0.0, None, 20.0)  # 10/s
    seen = []
    for second in range(1, 7):
        assert learner.rate is not None
        busy_interval(learner, math.ceil(learner.rate), held=True)
        change = learner.maybe_increase(float(second), paused=False)
        assert change is not None
        seen.append(change.new_rate)
    assert seen == pytest.approx([11.0, 13.2, 18.48, 33.264, 66.528, 133.056])


def test_a_learned_rate_that_keeps_binding_clean_is_searched_again() -> None:
    """A rate learned from a concurrency cap's burst of 429s (or a cap that rose)
    binds clean second after second: after ``research_after`` additive steps in a
    row the search starts over, instead of +2 % a second for minutes."""
    s = RateLearnerSettings(backoff=0.5, search_growth=0.1, increase_step=0.02,
                            research_after=3)
    learner = RateLearner(s)
    learner.on_rate_limited(0.0, None, 20.0)  # 10/s, searching
    learner.on_rate_limited(0.5, 0.6, 20.0)  # 5/s: the search is over
    seen = []
    for second in range(1, 7):
        assert learner.rate is not None
        busy_interval(learner, math.ceil(learner.rate), held=True)
        if second == 2:
            learner.on_refusal()  # a 429: the run of clean steps starts over
        change = learner.maybe_increase(0.5 + second, paused=False)
        seen.append(None if change is None else change.new_rate)
    assert seen == pytest.approx([5.1, None, 5.2, 5.3, 5.4, 5.94])


def test_a_resumed_rate_is_searched_upward() -> None:
    learner = RateLearner()
    learner.resume(0.0, 0.0)
    assert learner.rate == learner.settings.min_rate
    learner.resume(0.0, 10.0)
    busy_interval(learner, 10, held=True)
    change = learner.maybe_increase(1.0, paused=False)
    assert change is not None and change.new_rate == pytest.approx(11.0)


# ------------------------------------------------------------------------ pauses


def test_a_pause_is_jittered_never_shortened_and_a_nudge_is_silent() -> None:
    pauses = Pauses(PauseSettings(resume_jitter=0.1, coalesce=1.0), random.Random(1))
    first = pauses.pause(0.0, 10.0, "retry_after", pace=5.0)
    assert first is not None and first.event is not None
    assert 10.0 <= first.resume_at <= 11.0 and pauses.paused(5.0)
    assert pauses.pause(1.0, 2.0, "retry_after", pace=5.0) is None  # shorter
    nudge = pauses.pause(1.0, 9.5, "retry_after", pace=5.0)
    assert nudge is not None and nudge.event is None  # 0.5 s later: the same storm
    later = pauses.pause(1.0, 20.0, "retry_after", pace=5.0)
    assert later is not None and later.event == PauseEvent("retry_after", 20.0, 21.0,
                                                           later.resume_at, 1.0)
    for nonsense in (0.0, -1.0, math.inf, math.nan):
        assert pauses.pause(2.0, nonsense, "x", pace=5.0) is None


def test_the_ramp_doubles_while_it_binds_and_ends_when_it_does_not() -> None:
    s = PauseSettings(resume_jitter=0.0, ramp_step=0.5, ramp_min_rate=1.0, busy_starts=5,
                      busy_fraction=0.8)
    pauses = Pauses(s)
    paused = pauses.pause(0.0, 1.0, "retry_after", pace=20.0)
    assert paused is not None and paused.resume_at == 1.0
    assert pauses.ramp_rate(1.0) == 20.0 and pauses.stage_end == pytest.approx(1.5)
    for _ in range(10):  # 10 starts at 20/s over 0.5 s: it bound
        pauses.on_start()
    pauses.next_stage()
    assert pauses.ramp_rate(1.6) == 40.0 and pauses.stage_end == pytest.approx(2.0)
    pauses.next_stage()  # no start in that stage: the ramp lapses
    assert pauses.ramp_rate(2.1) is None and pauses.stage_end is None


def test_pause_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="coalesce"):
        PauseSettings(coalesce=-1.0)
    with pytest.raises(ValueError, match="resume_jitter"):
        PauseSettings(resume_jitter=2.0)


# ------------------------------------------------------------------ header quotas


def test_header_quotas_spread_hold_and_lapse() -> None:
    quotas = HeaderQuotas(margin=1.0)
    quotas.update(0.0, RateLimitInfo(requests=Quota(100, 10, 2.0),
                                     tokens=Quota(1000, 0, 5.0)))
    assert quotas.request_rate(1.0) == pytest.approx(5.0)
    assert quotas.token_rate(1.0) is None  # spent: nothing to spread
    assert quotas.blocked_until(1.0, tokens=0.0) == 1.0
    assert quotas.blocked_until(1.0, tokens=10.0) == 5.0  # the tokens reset at 5 s
    for _ in range(10):
        quotas.take(0.0)
    assert quotas.blocked_until(1.0, tokens=0.0) == 2.0  # 10 starts used
    assert sorted(quotas.resets()) == [2.0, 5.0]
    quotas.lapse(3.0)
    assert quotas.requests is None and quotas.tokens is not None


def test_each_part_checks_its_settings_and_the_facade_checks_them_all() -> None:
    with pytest.raises(ValueError, match="margin"):
        HeaderQuotas(margin=0.0)
    with pytest.raises(ValueError, match="backoff"):
        RateLearnerSettings(backoff=1.0)
    with pytest.raises(ValueError, match="proof_successes"):
        TrafficSettings(proof_successes=0)
    with pytest.raises(ValueError, match="rate_evidence"):
        AttributionSettings(rate_evidence=0)
    with pytest.raises(ValueError, match="settle_share"):
        PacerSettings(settle_share=-1.0)


def test_a_429_a_little_below_a_served_concurrency_is_evidence() -> None:
    """A rate cap of 20/s at 0.5 s looks like a concurrency cap of 10; its bucket
    lets bursts of 12 through, then refuses at 10 (issue 10: such 429s were left to
    the concurrency limit, whose probes then cost 6.7 % of the attempts)."""
    traffic, judge = judge_after(12)
    traffic.on_refusal(1.0)
    at_it = judge.judge(1.0, 12, None, None, rate_known=False, pace_bound=False)
    assert not at_it.evidence  # what a concurrency cap of 11 would do
    traffic.on_refusal(1.0)
    assert judge.judge(1.0, 10, None, None, rate_known=False, pace_bound=False).evidence


def test_new_settings_reach_every_part() -> None:
    """A fleet's member turns learning off after the pacer was built."""
    pacer = Pacer(PacerSettings())
    pacer.settings = dataclasses.replace(pacer.settings, learn_rate=False, backoff=0.5,
                                         coalesce=2.0, proof_successes=3,
                                         rate_evidence=4, margin=0.5)
    assert pacer._learner.settings.backoff == 0.5
    assert pacer._pauses.settings.coalesce == 2.0
    assert pacer._traffic.settings.proof_successes == 3
    assert pacer._judge.settings.rate_evidence == 4
    assert pacer._quotas.margin == 0.5
    # No rate is learned from a 429 alone any more (it would be, learning on).
    for i in range(20):
        pacer.commit(i * 0.05)
        pacer.on_response(i * 0.05, RateLimitInfo(), 200, inflight=1)
    assert pacer.on_response(1.0, RateLimitInfo(), 429, inflight=1) == "rate"
    assert pacer.learned_rate is None
