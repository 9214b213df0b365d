"""Tests of the pacing gate: exact tests of the pure core, the Trio gate under the
virtual clock, and scenario simulations against the mock API (``MockUpstream`` +
``mock_transport``) with N workers that ``await gate.wait(...)`` before each attempt
and retry 429s through the gate again.

The Retry-After storm of scenario (c2) needs 429s that come back *after* a service
time, for requests already in flight; the mock answers its 429s at once, so that
scenario uses a small fake upstream (``storm_transport``) defined here.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
import trio
import trio.testing

from pacer.control.pacing import Pacer, PacerSettings, PacerStatus, PauseEvent, RateChange
from pacer.control.ratelimit_headers import Quota, RateLimitInfo
from pacer.control.tokens import estimate_tokens, tokens_used
from pacer.mockapi import MockSettings, MockUpstream, mock_transport
from pacer.service.pacing_gate import STOP_POLL, PacingGate

EMPTY = RateLimitInfo()
# The learned rate's backoff, and the first rate learned from 20 successes a second.
B = PacerSettings().backoff
FIRST = 20.0 * B
CHAT = "/v1/chat/completions"


def requests_info(limit: int | None, remaining: int | None, reset: float | None,
                  retry_after: float | None = None) -> RateLimitInfo:
    return RateLimitInfo(retry_after=retry_after, requests=Quota(limit, remaining, reset))


def tokens_info(limit: int | None, remaining: int | None, reset: float | None) -> RateLimitInfo:
    return RateLimitInfo(tokens=Quota(limit, remaining, reset))


def exact(**overrides: Any) -> PacerSettings:
    """Settings whose header pace is exactly remaining / reset, and no resume jitter."""
    values: dict[str, Any] = {"margin": 1.0, "resume_jitter": 0.0}
    values.update(overrides)
    return PacerSettings(**values)


def approx(value: float) -> float:
    """``pytest.approx`` typed as the float it stands for (to sit in a dataclass)."""
    return cast(float, pytest.approx(value))


def recorder(pacer: Pacer) -> tuple[list[PauseEvent], list[RateChange]]:
    pauses: list[PauseEvent] = []
    rates: list[RateChange] = []
    pacer.subscribe_pause(pauses.append)
    pacer.subscribe_rate(rates.append)
    return pauses, rates


def greedy(pacer: Pacer, t0: float, t1: float, tokens: float = 0.0,
           limit: int = 10_000) -> list[float]:
    """A client that starts whenever the pacer allows, from t0 until t1: the starts."""
    starts: list[float] = []
    t = t0
    while len(starts) < limit:
        t = pacer.next_start(t, tokens)
        if t >= t1:
            break
        if pacer.next_start(t, tokens) <= t:  # a lower bound may need a second look
            pacer.commit(t, tokens)
            starts.append(t)
    return starts


def feed_successes(pacer: Pacer, t0: float, t1: float, every: float,
                   inflight: int = 1) -> float:
    """Start and succeed one attempt every ``every`` seconds in [t0, t1); returns t1."""
    n = round((t1 - t0) / every)
    for i in range(n):
        t = t0 + i * every
        pacer.commit(t)
        pacer.on_response(t, EMPTY, 200, inflight=inflight)
    return t1


# ------------------------------------------------------------------ pure core


def test_a_fresh_pacer_does_not_hold_anything() -> None:
    pacer = Pacer()
    assert pacer.next_start(5.0) == 5.0
    assert pacer.next_start(5.0, tokens=10_000) == 5.0
    assert pacer.status(5.0).rate is None
    status = pacer.status(5.0)
    assert status == PacerStatus(rate=None, learned_rate=None, header_rate=None,
                                 token_rate=None, paused_until=None, resume_at=None,
                                 requests_left=None, tokens_left=None,
                                 requests_reset_at=None, tokens_reset_at=None, tokens_used=0.0)


def test_a_request_quota_is_spread_evenly_then_holds_until_its_reset() -> None:
    pacer = Pacer(exact())
    pacer.on_response(10.0, requests_info(100, 4, 2.0), 200)
    assert pacer.status(10.0).rate == 2.0  # 4 starts left in 2 s
    assert greedy(pacer, 10.0, 11.99) == [10.0, 10.5, 11.0, 11.5]
    # All four spent: nothing until the reset, then the window has lapsed.
    assert pacer.next_start(11.5) == 12.0
    assert pacer.status(11.9).requests_left == 0
    assert pacer.next_start(12.0) == 12.0
    assert pacer.status(12.0).rate is None


def test_the_header_pace_keeps_a_safety_margin() -> None:
    pacer = Pacer()  # margin 0.9
    pacer.on_response(0.0, requests_info(100, 10, 2.0), 200)
    assert pacer.status(0.0).rate == pytest.approx(4.5)
    pacer.commit(0.0)
    assert pacer.next_start(0.0) == pytest.approx(1 / 4.5)


def test_remaining_zero_holds_until_the_reset() -> None:
    pacer = Pacer(exact())
    pacer.on_response(5.0, requests_info(60, 0, 3.0), 200)
    assert pacer.next_start(5.0) == 8.0
    assert pacer.next_start(7.999) == 8.0
    assert pacer.next_start(8.0) == 8.0


def test_remaining_zero_without_a_reset_holds_for_the_default_hold() -> None:
    pacer = Pacer(exact(default_hold=1.5))
    pacer.on_response(0.0, requests_info(None, 0, None), 200)
    assert pacer.next_start(0.0) == 1.5


def test_each_response_replaces_the_window_and_a_reset_of_zero_lifts_it() -> None:
    pacer = Pacer(exact())
    pacer.on_response(0.0, requests_info(10, 0, 5.0), 200)
    assert pacer.next_start(0.5) == 5.0
    pacer.on_response(1.0, requests_info(10, 10, 0.0), 200)  # full again
    assert pacer.next_start(1.0) == 1.0
    # A quota that tells only its limit changes nothing.
    pacer.on_response(1.0, requests_info(10, 0, 5.0), 200)
    pacer.on_response(1.5, requests_info(10, None, None), 200)
    assert pacer.next_start(1.5) == 6.0


def test_token_quota_paces_by_the_token_estimate_and_holds_when_spent() -> None:
    pacer = Pacer(exact())
    pacer.on_response(0.0, tokens_info(1000, 1000, 10.0), 200)  # 100 tokens/s
    assert pacer.status(0.0).token_rate == 100.0
    assert pacer.next_start(0.0, 250) == 0.0
    pacer.commit(0.0, 250)
    # 250 tokens at 100/s: the next start waits 2.5 s, whatever it costs.
    assert pacer.next_start(0.0, 100) == 2.5
    assert pacer.next_start(0.0, 1) == 2.5
    pacer.commit(2.5, 600)
    assert pacer.status(2.5).tokens_left == 150
    # 150 tokens left until the reset at 10 s: 200 must wait for it, 100 need not.
    assert pacer.next_start(2.5, 200) == 10.0
    assert pacer.next_start(2.5, 100) == 8.5
    # A start that costs no tokens is not held by the token quota.
    assert pacer.next_start(2.5, 0) == 2.5


def test_the_tighter_of_the_request_and_token_paces_wins() -> None:
    pacer = Pacer(exact())
    info = RateLimitInfo(requests=Quota(100, 10, 1.0), tokens=Quota(1000, 100, 1.0))
    pacer.on_response(0.0, info, 200)  # 10 requests/s, 100 tokens/s
    pacer.commit(0.0, 50)
    assert pacer.next_start(0.0, 50) == 0.5  # tokens bind
    assert pacer.next_start(0.0, 0) == 0.1  # requests bind


def test_retry_after_pauses_everything_with_a_seeded_jitter() -> None:
    pacer = Pacer(rng=random.Random(7))
    pauses, _ = recorder(pacer)
    pacer.on_response(0.0, RateLimitInfo(retry_after=2.0), 429)
    jitter = random.Random(7).uniform(0.0, 0.1 * 2.0)
    assert pauses == [PauseEvent("retry_after", 2.0, 2.0, 2.0 + jitter, 0.0)]
    assert pacer.paused_until == 2.0
    assert pacer.status(1.0).resume_at == 2.0 + jitter
    assert pacer.paused(1.0)
    for t in (0.0, 1.0, 2.0):
        assert pacer.next_start(t) == 2.0 + jitter
    assert pacer.next_start(2.0 + jitter) == 2.0 + jitter


def test_the_resume_jitter_stays_in_its_band() -> None:
    resumes = []
    for seed in range(200):
        pacer = Pacer(rng=random.Random(seed))
        pacer.pause(0.0, 10.0, "test")
        resume = pacer.next_start(0.0)
        assert 10.0 <= resume <= 11.0  # until + 10 % of the pause
        resumes.append(resume)
    assert max(resumes) - min(resumes) > 0.8  # spread, not all at once
    long = Pacer(rng=random.Random(1))
    long.pause(0.0, 3600.0, "test")
    assert 3600.0 <= long.next_start(0.0) <= 3605.0  # capped by max_resume_jitter


def test_a_longer_pause_is_never_shortened() -> None:
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    assert pacer.pause(0.0, 10.0, "first") is not None
    assert pacer.pause(1.0, 2.0, "shorter") is None
    pacer.on_response(2.0, RateLimitInfo(retry_after=1.0), 429)
    assert pacer.paused_until == 10.0
    assert pacer.next_start(3.0) == 10.0
    assert [p.cause for p in pauses] == ["first"]


def test_a_storm_of_retry_afters_is_one_pause() -> None:
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    for i in range(50):
        pacer.on_response(i * 0.002, RateLimitInfo(retry_after=1.0), 429)
    assert len(pauses) == 1
    # The end follows the latest Retry-After (the server's word), silently.
    assert pacer.paused_until == pytest.approx(49 * 0.002 + 1.0)
    assert pacer.next_start(0.5) == pytest.approx(49 * 0.002 + 1.0)


def test_a_pause_that_moves_the_end_much_later_is_a_new_pause() -> None:
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    pacer.pause(0.0, 1.0, "a")
    pacer.pause(0.5, 5.0, "b")
    assert [(p.cause, p.until) for p in pauses] == [("a", 1.0), ("b", 5.5)]
    assert pacer.next_start(0.5) == 5.5


@pytest.mark.parametrize("seconds", [0.0, -1.0, math.nan, math.inf])
def test_a_pause_of_no_time_or_nonsense_is_ignored(seconds: float) -> None:
    pacer = Pacer()
    pauses, _ = recorder(pacer)
    assert pacer.pause(0.0, seconds, "x") is None
    assert pauses == []
    assert pacer.next_start(0.0) == 0.0


def test_an_absurd_pause_is_clamped() -> None:
    pacer = Pacer(exact(max_pause=60.0))
    event = pacer.pause(0.0, 1e9, "x")
    assert event is not None and event.duration == 60.0 and event.until == 60.0


def test_a_503_with_retry_after_pauses_too() -> None:
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    pacer.on_response(0.0, RateLimitInfo(retry_after=3.0), 503)
    assert [(p.cause, p.until) for p in pauses] == [("unavailable", 3.0)]
    assert pacer.on_response(5.0, RateLimitInfo(retry_after=3.0), 200) is None  # no pause
    assert len(pauses) == 1


def test_after_a_pause_starts_come_back_gradually() -> None:
    pacer = Pacer(exact())
    t = feed_successes(pacer, 0.0, 2.0, 0.1)  # 10 successes/s before the pause
    pacer.pause(t, 1.0, "test")
    starts = greedy(pacer, t, 5.0, limit=200)
    assert starts[0] == 3.0  # the resume
    # The ramp begins at the success rate before the pause (10/s) for a stage of
    # 0.5 s, then doubles while it binds.
    first = [s for s in starts if s < 3.5]
    assert first == pytest.approx([3.0, 3.1, 3.2, 3.3, 3.4])
    second = [s for s in starts if 3.5 <= s < 4.0]
    assert len(second) == 10
    assert min(b - a for a, b in itertools.pairwise(second)) == pytest.approx(0.05)
    # Never two starts at the same instant: no burst.
    assert len(set(starts)) == len(starts)


def test_after_a_pause_the_learned_rate_applies_from_the_resume() -> None:
    pacer = Pacer(exact())
    t = feed_successes(pacer, 0.0, 2.0, 0.05)  # 20/s
    pacer.on_response(t, EMPTY, 429, inflight=1)
    assert pacer.learned_rate == pytest.approx(FIRST)
    pacer.pause(t, 1.0, "test")
    starts = greedy(pacer, t, 3.5)
    assert starts[0] == 3.0
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) == pytest.approx(1 / FIRST)


def test_the_rate_is_learned_from_429s_and_lowered_at_most_once_a_second() -> None:
    pacer = Pacer()
    _, rates = recorder(pacer)
    t = feed_successes(pacer, 0.0, 2.0, 0.05)  # 40 successes in 2 s
    pacer.on_response(t, EMPTY, 429, inflight=1)
    assert rates == [RateChange(None, approx(FIRST), "rate_limited", 2.0)]
    assert pacer.status(2.0).rate == pytest.approx(FIRST)
    pacer.on_response(2.5, EMPTY, 429, inflight=1)  # within a second: no change
    assert len(rates) == 1
    # A second later: down to the success rate x B (10/s measured over [1, 3]),
    # but by at most two backoffs at once.
    pacer.on_response(3.0, EMPTY, 429, inflight=1)
    assert rates[-1] == RateChange(approx(FIRST), approx(FIRST * B * B), "rate_limited", 3.0)


def test_the_learned_rate_is_probed_upward_while_it_binds() -> None:
    pacer = Pacer()
    _, rates = recorder(pacer)
    t = feed_successes(pacer, 0.0, 2.0, 0.05)
    pacer.on_response(t, EMPTY, 429, inflight=1)
    # First a quick search (x1.1, then x1.2, ...: the growth doubles per clean, busy
    # half second in a row)...
    greedy(pacer, 2.0, 3.3)
    probes = [r for r in rates if r.reason == "probe"]
    assert [r.new_rate for r in probes] == pytest.approx([FIRST * 1.1, FIRST * 1.1 * 1.2])
    assert 2.5 <= probes[0].at < 2.6 and 3.0 <= probes[1].at < 3.1
    greedy(pacer, 3.3, 4.5)
    # ...then, after the next decrease, additive steps of 2 % of the rate set then.
    pacer.on_response(4.5, EMPTY, 429, inflight=1)
    top = FIRST * 1.1 * 1.2 * 1.4 * 1.8
    assert rates[-1] == RateChange(approx(top), approx(top * B * B), "rate_limited", 4.5)
    base = top * B * B
    greedy(pacer, 4.5, 6.6)
    assert [r.reason for r in rates[-2:]] == ["probe", "probe"]
    assert [r.new_rate for r in rates[-2:]] == pytest.approx([base * 1.02, base * 1.04])


def test_the_learned_rate_grows_only_while_the_pace_holds_starts_back() -> None:
    pacer = Pacer()
    _, rates = recorder(pacer)
    t = feed_successes(pacer, 0.0, 2.0, 0.05)
    pacer.on_response(t, EMPTY, 429, inflight=1)  # 18/s
    # Starts at the full rate, but none held back by the pace: something else (the
    # concurrency limit) binds, and raising the rate would change nothing.
    for i in range(1, 40):
        pacer.commit(2.0 + i / 18.0, held=False)
    pacer.status(4.3)  # the interval ends
    assert [r.reason for r in rates] == ["rate_limited"]
    for i in range(40, 80):
        pacer.commit(2.0 + i / 18.0, held=True)
    pacer.status(6.5)  # the interval ends
    assert [r.reason for r in rates][:2] == ["rate_limited", "probe"]


def test_a_429_to_an_attempt_sent_after_the_last_decrease_lowers_the_rate_sooner() -> None:
    pacer = Pacer()
    _, rates = recorder(pacer)
    t = feed_successes(pacer, 0.0, 2.0, 0.05)
    pacer.on_response(t, EMPTY, 429, inflight=1, started=1.9)
    assert len(rates) == 1
    # Sent before the decrease at 2.0: the same signal, within a second.
    pacer.on_response(2.3, EMPTY, 429, inflight=1, started=1.95)
    assert len(rates) == 1
    # Sent at the rate set then: new evidence.
    pacer.on_response(2.5, EMPTY, 429, inflight=1, started=2.4)
    assert len(rates) == 2 and rates[-1].new_rate < rates[0].new_rate


def test_an_idle_learned_rate_is_not_raised() -> None:
    pacer = Pacer()
    _, rates = recorder(pacer)
    t = feed_successes(pacer, 0.0, 2.0, 0.05)
    pacer.on_response(t, EMPTY, 429, inflight=1)
    pacer.commit(3.0)
    assert pacer.status(10.0).rate == pytest.approx(FIRST)
    assert [r.reason for r in rates] == ["rate_limited"]


RETRY = RateLimitInfo(retry_after=1.0)


def serve(pacer: Pacer, t0: float, t1: float, every: float, inflight: int) -> float:
    """Every ``every`` s in [t0, t1), start ``inflight`` attempts together, each back
    ``every`` s later a success (told when it started and how many were in flight:
    all of them were in service together); returns t1."""
    t = t0
    while t < t1 - 1e-9:
        for _ in range(inflight):
            pacer.commit(t)
        for _ in range(inflight):
            pacer.on_response(t + every, EMPTY, 200, inflight=inflight, started=t)
        t += every
    return t1


def test_a_429_at_a_new_concurrency_peak_is_left_to_the_concurrency_limit() -> None:
    pacer = Pacer(exact())
    pauses, rates = recorder(pacer)
    for i, n in enumerate([1, 2, 3, 4, 5] * 4):
        pacer.commit(i * 0.05)
        pacer.on_response(i * 0.05, EMPTY, 200, inflight=n)
    assert pacer.on_response(1.0, RETRY, 429, inflight=6) == "concurrency"
    # So is one well below what just succeeded, once: in-flight counts are blurred
    # by answers in transit, and it may be a capacity that fell. (This used to learn
    # a rate and pause the upstream at once.)
    assert pacer.on_response(1.0, RETRY, 429, inflight=4) == "concurrency"
    assert pacer.learned_rate is None and pauses == [] and rates == []
    assert pacer.next_start(1.0) == 1.0


def test_429s_well_below_what_just_succeeded_learn_a_rate_when_they_recur() -> None:
    pacer = Pacer(exact())
    pauses, rates = recorder(pacer)
    t = serve(pacer, 0.0, 1.0, 0.05, inflight=6)
    # 3 in flight is well below the 6 just served (by max(1, 50 %)): evidence, but
    # once is no rate (a capacity that fell looks the same).
    assert pacer.on_response(t, RETRY, 429, inflight=3) == "concurrency"
    # A burst of refusals is one piece of evidence: nothing was sent since.
    assert pacer.on_response(t, RETRY, 429, inflight=2) == "concurrency"
    assert pacer.learned_rate is None
    t = serve(pacer, t, t + 0.5, 0.05, inflight=6)
    # Again, after successes sent since: a rate cap. A lone 429 amid successes lowers
    # the rate, but does not pause the whole upstream (only that request waits).
    assert pacer.on_response(t, RETRY, 429, inflight=3) == "rate"
    assert pacer.learned_rate is not None
    assert [r.reason for r in rates] == ["rate_limited"]
    assert pauses == []


def test_a_429_long_after_the_limit_last_moved_is_evidence_of_a_rate_cap() -> None:
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    t = serve(pacer, 0.0, 2.0, 0.1, inflight=4)  # successes take 0.1 s
    # Sent 0.04 s after the concurrency limit rose: its probe, refused at once.
    assert pacer.on_response(t, RETRY, 429, inflight=5, started=1.99,
                             limit_changed_at=1.95) == "concurrency"
    # Sent long (>= 0.75 x 0.1 s) after the limit last moved, which a concurrency cap
    # does not refuse: evidence (the first piece).
    assert pacer.on_response(t, RETRY, 429, inflight=4, started=1.99,
                             limit_changed_at=1.0) == "concurrency"
    # Sent before that evidence: the same burst.
    assert pacer.on_response(t, RETRY, 429, inflight=4, started=1.98,
                             limit_changed_at=1.0) == "concurrency"
    assert pacer.learned_rate is None
    t = serve(pacer, t, 2.5, 0.1, inflight=4)
    assert pacer.on_response(t, RETRY, 429, inflight=4, started=2.45,
                             limit_changed_at=1.0) == "rate"
    assert pacer.learned_rate is not None and pauses == []


def test_a_429_with_nothing_else_in_flight_is_a_rate_signal() -> None:
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    t = serve(pacer, 0.0, 1.0, 0.05, inflight=5)
    assert pacer.on_response(t, RETRY, 429, inflight=1) == "rate"
    assert pacer.learned_rate is not None
    assert len(pauses) == 1  # and its Retry-After holds every start


def test_more_429s_in_a_row_than_were_in_flight_are_a_storm() -> None:
    """A storm's Retry-After holds the whole upstream; but it is no evidence of a
    rate cap (issue 10, cause 3: a slow start that overshot a concurrency cap gets
    such a burst, and the rate learned from it held pacer far below the capacity)."""
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    t = serve(pacer, 0.0, 1.0, 0.05, inflight=3)
    causes = [pacer.on_response(t + i * 0.001, RETRY, 429, inflight=3) for i in range(6)]
    assert causes == ["concurrency"] * 6
    # The upstream served a moment ago: its Retry-After does not bind everyone yet.
    assert pauses == []
    # Once nothing has been served for a typical service time (0.05 s), it does.
    assert pacer.on_response(t + 0.1, RETRY, 429, inflight=3) == "concurrency"
    assert len(pauses) == 1
    assert pacer.learned_rate is None


def test_once_a_rate_is_known_a_429_to_an_attempt_the_pace_held_is_its_doing() -> None:
    pacer = Pacer(exact())
    t = feed_successes(pacer, 0.0, 2.0, 0.05)
    assert pacer.on_response(t, EMPTY, 429, inflight=1) == "rate"
    # At a new concurrency peak, sent when the concurrency limit bound: the limit's.
    assert pacer.on_response(2.1, EMPTY, 429, inflight=6) == "concurrency"
    # The same when the pace held it back: the learned rate is too high.
    assert pacer.on_response(2.2, EMPTY, 429, inflight=6, held=True) == "rate"


def test_a_flood_of_429s_at_a_new_peak_teaches_no_rate() -> None:
    pacer = Pacer(exact())
    pacer.commit(0.0)
    pacer.on_response(0.0, EMPTY, 200, inflight=1)
    causes = [pacer.on_response(0.1 + i * 0.01, EMPTY, 429, inflight=10) for i in range(8)]
    # A flood of 429s at a new peak (a slow start's overshoot) is still no evidence
    # of a rate cap: it teaches no rate (issue 10, cause 3); it does pause, below.
    assert causes == ["concurrency"] * 8
    assert pacer.learned_rate is None


def test_a_flood_of_429s_with_retry_after_pauses_the_upstream() -> None:
    pacer = Pacer(exact())
    pauses, _ = recorder(pacer)
    pacer.commit(0.0)
    pacer.on_response(0.0, EMPTY, 200, inflight=1)
    for i in range(8):
        pacer.on_response(0.1 + i * 0.01, RETRY, 429, inflight=10)
    assert len(pauses) == 1 and pacer.learned_rate is None


def test_a_429_with_an_exhausted_quota_holds_without_learning_a_rate() -> None:
    pacer = Pacer(exact())
    _, rates = recorder(pacer)
    feed_successes(pacer, 0.0, 2.0, 0.05)
    assert pacer.on_response(2.0, requests_info(20, 0, 0.5), 429, inflight=1) == "quota"
    assert rates == [] and pacer.learned_rate is None
    assert pacer.next_start(2.0) == 2.5


def test_no_rate_is_learned_before_anything_succeeded() -> None:
    pacer = Pacer(exact())
    pacer.commit(0.0)
    pacer.on_response(0.0, RateLimitInfo(retry_after=1.0), 429, inflight=1)
    assert pacer.learned_rate is None
    assert pacer.next_start(0.0) == 1.0  # but the Retry-After holds


def test_status_reports_the_pace_the_pause_and_the_budgets() -> None:
    pacer = Pacer(exact())
    info = RateLimitInfo(requests=Quota(100, 50, 10.0), tokens=Quota(10_000, 4000, 20.0))
    pacer.on_response(0.0, info, 200, tokens_used=123)
    pacer.commit(0.0, 1000)
    status = pacer.status(1.0)
    assert status.rate == 5.0 and status.header_rate == 5.0 and status.learned_rate is None
    assert status.token_rate == 200.0
    assert status.paused_until is None and status.resume_at is None
    pacer.pause(1.0, 2.0, "test")
    status = pacer.status(2.0)
    assert status.paused_until == 3.0 and status.resume_at == 3.0
    # Nothing has succeeded yet: the ramp after the pause starts at its minimum.
    assert status.rate == PacerSettings().ramp_min_rate
    assert status.requests_left == 49 and status.tokens_left == 3000
    assert status.requests_reset_at == 10.0 and status.tokens_reset_at == 20.0
    assert status.tokens_used == 123
    later = pacer.status(30.0)
    assert later.paused_until is None and later.requests_left is None
    assert later.tokens_left is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="margin"):
        PacerSettings(margin=0.0)
    with pytest.raises(ValueError, match="backoff"):
        PacerSettings(backoff=1.0)
    with pytest.raises(ValueError, match="min_rate"):
        PacerSettings(min_rate=0.0)
    with pytest.raises(ValueError, match="burst"):
        PacerSettings(burst=0.5)
    with pytest.raises(ValueError, match="coalesce"):
        PacerSettings(coalesce=-1.0)


# ------------------------------------------------------------- token estimate


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_tokens": 100, "messages": [{"role": "user", "content": "abcdefgh"}]}, 102),
        ({"max_tokens": 100, "messages": [{"role": "user", "content": "abcdefghi"}]}, 103),
        ({"max_completion_tokens": 50, "messages": [{"content": "a" * 40}]}, 60),
        ({"max_output_tokens": 10, "input": "a" * 8}, 12),
        ({"max_tokens": 7, "prompt": ["abcd", "efgh"]}, 9),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a" * 12},
                                                     {"type": "image_url"}]}]}, 3),
        ({"max_tokens": 1, "system": "a" * 4, "messages": [{"content": "b" * 4}]}, 3),
        ({"input": [{"role": "user", "content": [{"type": "input_text", "text": "a" * 16}]}]},
         4),
        ({"model": "m", "messages": []}, 1),
        ({"max_tokens": 0, "messages": []}, 1),
        ({"max_tokens": True, "messages": [{"content": "abcd"}]}, 1),
        ({}, 1),
        ([1, 2, 3], 1),
        (None, 1),
        ("text", 1),
    ],
)
def test_estimate_tokens(body: object, expected: int) -> None:
    assert estimate_tokens(body) == expected


def test_estimate_tokens_default_max_tokens_and_deep_bodies() -> None:
    assert estimate_tokens({"messages": [{"content": "abcd"}]}, default_max_tokens=16) == 17
    assert estimate_tokens({"max_tokens": 5}, default_max_tokens=16) == 5
    deep: Any = "a" * 400
    for _ in range(5000):
        deep = [deep]
    assert estimate_tokens({"messages": [{"content": deep}]}) == 1  # too deep: not read


def test_tokens_used_reads_usage() -> None:
    assert tokens_used({"usage": {"prompt_tokens": 3, "completion_tokens": 4,
                                  "total_tokens": 7}}) == 7
    assert tokens_used({"usage": {"input_tokens": 10, "output_tokens": 5}}) == 15
    assert tokens_used({"usage": "x"}) is None
    assert tokens_used({"id": "x"}) is None
    assert tokens_used([1]) is None


# ------------------------------------------------------------------ the gate


async def test_the_gate_releases_waiters_in_order_and_evenly(
        autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(exact())
    gate = PacingGate(pacer)
    t0 = trio.current_time()
    gate.on_response(requests_info(1000, 100, 10.0), 200)  # 10 starts/s
    arrived: list[int] = []
    released: list[tuple[int, float]] = []

    async def task(i: int) -> None:
        arrived.append(i)
        await gate.wait()
        released.append((i, trio.current_time() - t0))

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(task, i)
    assert [i for i, _ in released] == arrived
    assert [t for _, t in released] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert gate.waiting == 0


async def test_a_cancelled_waiter_takes_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(exact())
    gate = PacingGate(pacer)
    t0 = trio.current_time()
    gate.on_response(requests_info(1000, 20, 10.0), 200)  # 2 starts/s
    times: dict[str, float] = {}

    async def task(name: str, give_up_after: float | None) -> None:
        with trio.move_on_after(give_up_after if give_up_after is not None else math.inf):
            await gate.wait()
            times[name] = trio.current_time() - t0

    async with trio.open_nursery() as nursery:
        nursery.start_soon(task, "a", None)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(task, "b", 0.2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(task, "c", None)
    assert times == {"a": 0.0, "c": pytest.approx(0.5)}
    assert pacer.status(trio.current_time()).requests_left == 18


async def test_the_gate_wakes_early_when_a_hold_is_lifted(
        autojump_clock: trio.testing.MockClock) -> None:
    gate = PacingGate(Pacer(exact()))
    t0 = trio.current_time()
    gate.on_response(requests_info(10, 0, 10.0), 200)
    passed: list[float] = []

    async def waiter() -> None:
        await gate.wait()
        passed.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(1.0)
        assert passed == []
        gate.on_response(requests_info(10, 10, 0.0), 200)  # the quota is back
    assert passed == [pytest.approx(1.0)]


async def test_a_pause_holds_a_waiter_that_was_about_to_go(
        autojump_clock: trio.testing.MockClock) -> None:
    gate = PacingGate(Pacer(exact()))
    t0 = trio.current_time()
    gate.on_response(requests_info(100, 10, 1.0), 200)  # 10 starts/s
    await gate.wait()
    passed: list[float] = []

    async def waiter() -> None:
        await gate.wait()
        passed.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.05)
        event = gate.pause(5.0, "test")
        assert event is not None and event.until == pytest.approx(t0 + 5.05)
    assert passed == [pytest.approx(5.05)]
    assert gate.status().paused_until is None


async def test_the_gate_says_whether_the_pace_held_a_start(
        autojump_clock: trio.testing.MockClock) -> None:
    gate = PacingGate(Pacer(exact()))
    gate.pacer.on_response(trio.current_time(), requests_info(10, 10, 1.0), 200)  # 10/s
    assert await gate.wait() is False  # one start's worth of credit
    t0 = trio.current_time()
    assert await gate.wait() is True
    assert trio.current_time() - t0 == pytest.approx(0.1)


async def test_wait_unless_stop_leaves_a_pause_at_once_in_order_taking_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    gate = PacingGate(Pacer(exact()))
    gate.pacer.on_response(trio.current_time(), requests_info(100, 100, 10.0), 200)  # 10/s
    assert await gate.wait_unless(trio.Event()) is False  # the pace open: no wait
    gate.pause(60.0, "test")
    stop = trio.Event()
    t0 = trio.current_time()
    left: list[tuple[int, bool | None, float]] = []

    async def waiter(i: int) -> None:
        left.append((i, await gate.wait_unless(stop), trio.current_time() - t0))

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1.0)
        assert left == [] and gate.waiting == 3 and gate.held_back == 3
        stop.set()
    assert [(i, held) for i, held, _ in left] == [(0, None), (1, None), (2, None)]
    assert all(1.0 <= t <= 1.0 + STOP_POLL for _, _, t in left)
    assert gate.waiting == 0
    assert gate.pacer.status(trio.current_time()).requests_left == 99  # none taken
    stopped = trio.Event()
    stopped.set()
    assert await gate.wait_unless(stopped) is None


async def test_on_http_response_parses_headers(autojump_clock: trio.testing.MockClock) -> None:
    gate = PacingGate(Pacer(exact()))
    info = gate.on_http_response(200, httpx.Headers({
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "30",
        "x-ratelimit-reset-requests": "15s",
    }))
    assert info.requests == Quota(60, 30, 15.0)
    assert gate.status().header_rate == 2.0
    assert gate.on_http_response(None, None) == RateLimitInfo()


# --------------------------------------------------------------- scenarios


@dataclass
class Run:
    """What a scenario did; times are seconds since its start."""

    duration: float
    ok: int = 0
    rate_limited: int = 0
    attempts: int = 0
    starts: list[float] = field(default_factory=list)
    pauses: list[PauseEvent] = field(default_factory=list)
    rates: list[RateChange] = field(default_factory=list)
    max_inflight: int = 0


async def run_workers(transport: httpx.AsyncBaseTransport, gate: PacingGate, *,
                      workers: int, duration: float,
                      body: dict[str, Any] | None = None) -> Run:
    """N workers, each with an endless backlog: wait at the gate, send, feed the answer
    back; a 429 is simply retried (through the gate again). Attempts that end after
    ``duration`` are not counted."""
    body = body if body is not None else {"model": "m", "messages": []}
    tokens = estimate_tokens(body)
    t0 = trio.current_time()
    run = Run(duration)
    gate.pacer.subscribe_pause(run.pauses.append)
    gate.pacer.subscribe_rate(run.rates.append)
    inflight = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal inflight
        while True:
            await gate.wait(tokens)
            run.starts.append(trio.current_time() - t0)
            inflight += 1
            run.max_inflight = max(run.max_inflight, inflight)
            started_with = inflight
            begun = trio.current_time()
            try:
                response = await client.post(CHAT, json=body)
            finally:
                inflight -= 1
            if trio.current_time() - t0 <= duration:
                run.attempts += 1
                run.ok += response.status_code == 200
                run.rate_limited += response.status_code == 429
            gate.on_http_response(response.status_code, response.headers,
                                  tokens_used(response.json()), inflight=started_with,
                                  started=begun)

    async with httpx.AsyncClient(transport=transport, base_url="http://mock.test") as client:
        with trio.move_on_after(duration):
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(worker, client)
    for event in run.pauses:  # report pauses relative to the start too
        assert event.at >= t0
    run.pauses = [PauseEvent(p.cause, p.duration, p.until - t0, p.resume_at - t0, p.at - t0)
                  for p in run.pauses]
    return run


async def test_scenario_a_hidden_rate_cap_without_headers(
        autojump_clock: trio.testing.MockClock) -> None:
    """(a) 20 requests/s, no rate-limit headers: the rate is learned from 429s."""
    rate, duration = 20.0, 30.0
    upstream = MockUpstream(MockSettings(rate=rate, header_style="none", latency=0.05,
                                         seed=1))
    gate = PacingGate(Pacer(rng=random.Random(1)))
    run = await run_workers(mock_transport(upstream), gate, workers=10, duration=duration)
    goodput = run.ok / (rate * duration)
    assert goodput >= 0.90, (goodput, run.rate_limited, run.attempts)
    assert run.rate_limited <= 0.05 * run.attempts, (run.rate_limited, run.attempts)
    assert gate.pacer.learned_rate is not None
    assert any(r.reason == "rate_limited" for r in run.rates)


async def test_scenario_b_rate_cap_with_openai_headers(
        autojump_clock: trio.testing.MockClock) -> None:
    """(b) 20 requests/s announced in OpenAI-style headers: paced by them."""
    rate, duration = 20.0, 30.0
    upstream = MockUpstream(MockSettings(rate=rate, header_style="openai", latency=0.05,
                                         seed=1))
    gate = PacingGate(Pacer(rng=random.Random(1)))
    run = await run_workers(mock_transport(upstream), gate, workers=10, duration=duration)
    capacity = rate * duration + rate  # the refill plus the full bucket at the start
    assert run.ok >= 0.97 * capacity, (run.ok, capacity, run.rate_limited)
    assert run.rate_limited <= 0.005 * run.attempts, (run.rate_limited, run.attempts)
    assert gate.pacer.learned_rate is None  # the headers were enough


async def test_scenario_c1_a_retry_after_storm_pauses_once(
        autojump_clock: trio.testing.MockClock) -> None:
    """(c) The mock refuses everything from 5 s to 6 s, with Retry-After: 2."""
    upstream = MockUpstream(MockSettings(concurrency=1000, schedule=((5.0, 0), (6.0, 1000)),
                                         header_style="none", latency=0.05, retry_after=2.0,
                                         seed=1))
    gate = PacingGate(Pacer(rng=random.Random(1)))
    run = await run_workers(mock_transport(upstream), gate, workers=20, duration=10.0)
    assert len(run.pauses) == 1
    pause = run.pauses[0]
    assert 4.99 <= pause.at < 5.1 and pause.duration == 2.0
    assert run.rate_limited <= 20  # only attempts that had passed the gate already
    assert not [s for s in run.starts if pause.at < s < pause.resume_at]
    resumed = [s for s in run.starts if s >= pause.resume_at]
    assert resumed[0] == pytest.approx(pause.resume_at)
    # Before the storm the 20 workers started in lockstep, 20 at an instant; after
    # the resume the starts are spread: never two at the same instant at first.
    assert len(set(resumed[:20])) == 20


@dataclass
class StormUpstream:
    """A fake upstream: answers 200 after ``latency``, but every answer due in
    ``[storm_start, storm_end)`` is a 429 with ``Retry-After`` (in flight or not)."""

    storm_start: float
    storm_end: float
    retry_after: float = 2.0
    latency: float = 0.05
    t0: float = 0.0
    arrivals: list[float] = field(default_factory=list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.arrivals.append(trio.current_time() - self.t0)
        await trio.sleep(self.latency)
        now = trio.current_time() - self.t0
        if self.storm_start <= now < self.storm_end:
            return httpx.Response(429, headers={"retry-after": f"{self.retry_after:g}"},
                                  json={"error": {"message": "slow down"}})
        return httpx.Response(200, json={"usage": {"total_tokens": 1}})


def storm_transport(fake: StormUpstream) -> httpx.MockTransport:
    return httpx.MockTransport(fake.handle)


async def test_scenario_c2_in_flight_requests_all_429_one_pause_for_all(
        autojump_clock: trio.testing.MockClock) -> None:
    """(c) 20 requests in flight all come back 429 + Retry-After: 2 at staggered times:
    one pause, everyone resumes together after it (not each on its own clock)."""
    fake = StormUpstream(storm_start=5.0, storm_end=5.2, t0=trio.current_time())
    gate = PacingGate(Pacer(rng=random.Random(3)))
    run = await run_workers(storm_transport(fake), gate, workers=20, duration=10.0)
    assert len(run.pauses) == 1
    pause = run.pauses[0]
    assert run.rate_limited >= 20  # every worker had a 429...
    assert pause.duration == 2.0
    assert gate.pacer.paused_until is not None
    # ...but nobody started again before the (extended) end of the one pause.
    after = [s for s in run.starts if s > pause.at]
    assert min(after) >= pause.resume_at - 1e-9
    assert min(after) >= 7.0


async def test_scenario_d_tokens_per_minute_from_headers(
        autojump_clock: trio.testing.MockClock) -> None:
    """(d) A tokens-per-minute quota announced in headers paces by the token estimate."""
    tpm, duration = 6000, 300.0
    upstream = MockUpstream(MockSettings(tpm=tpm, header_style="openai", latency=0.05,
                                         seed=1))
    body = {"model": "m", "max_tokens": 100, "messages": [{"role": "user",
                                                           "content": "x" * 400}]}
    assert estimate_tokens(body) == 200
    gate = PacingGate(Pacer(rng=random.Random(1)))
    run = await run_workers(mock_transport(upstream), gate, workers=10, duration=duration,
                            body=body)
    capacity = (tpm + tpm / 60 * duration) / 200  # the full bucket plus the refill
    assert run.ok >= 0.88 * capacity, (run.ok, capacity, run.rate_limited)
    assert run.rate_limited <= 0.01 * run.attempts
    assert gate.status().token_rate is not None



async def test_a_bunch_through_an_open_gate_is_not_counted_as_waiting() -> None:
    """Slots freed together pass the gate's lock one by one; while the pace holds no
    one back they are not waiting for it, so an attempt's recorded concurrency
    (slots held minus tasks the pace holds) counts them (a cap of 600 at 1 s was
    read as a few dozen in flight, and its probes never ran)."""
    gate = PacingGate(Pacer(rng=random.Random(1)))
    seen: list[int] = []

    async def one() -> None:
        await gate.wait()
        seen.append(gate.held_back)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert seen == [0] * 5


async def test_tasks_behind_a_held_start_count_as_waiting(
        autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer(rng=random.Random(1))
    gate = PacingGate(pacer)
    now = trio.current_time()
    pacer.on_response(now, RateLimitInfo(retry_after=1.0), 503)  # a pause binds everyone
    waiting: list[int] = []

    async def one() -> None:
        await gate.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
        await trio.sleep(0.5)
        waiting.append(gate.held_back)
    assert waiting == [3]
