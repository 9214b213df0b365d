"""Unit tests of the adaptive limit's parts, each alone: moments, the rtt estimate,
the delivery log, the round tracker and the probe schedule."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from pacer.control.delivery import DeliveryLog
from pacer.control.moments import Moments
from pacer.control.probes import MAX_PROBE_WAIT, ProbeSchedule
from pacer.control.rounds import RoundTracker
from pacer.control.rtt_estimate import RttEstimate, ewma_memory

# ---- Moments


def test_moments_mean_spread_and_standard_error() -> None:
    values = [1.0, 2.0, 4.0, 7.0]
    m = Moments()
    for v in values:
        m.add(v)
    assert m.count == 4 and m.mean == pytest.approx(3.5)
    assert m.deviations == pytest.approx(sum((v - 3.5) ** 2 for v in values))
    assert m.stderr == pytest.approx(statistics.stdev(values) / 2.0)


# ---- RttEstimate


def test_rtt_estimate_is_a_plain_mean_until_warm_then_an_ewma() -> None:
    est = RttEstimate(smoothing=0.1, window=30.0)
    assert est.srtt is None and not est.warm and est.min_rtt is None
    for rtt in (1.0, 2.0, 3.0):
        est.observe(rtt)
    assert est.srtt == pytest.approx(2.0)  # the mean of the first three
    assert est.warm_count == ewma_memory(0.1) == 19
    for _ in range(16):
        est.observe(2.0)
    assert est.warm
    est.observe(12.0)
    assert est.srtt == pytest.approx(2.0 + 0.1 * 10.0, rel=1e-3)  # weight 0.1 now
    est.restart()
    assert not est.warm and est.srtt is not None  # the value carries on


def test_no_load_rtt_is_the_windowed_minimum_of_the_slow_ewma() -> None:
    est = RttEstimate(smoothing=0.1, window=10.0)
    est.seed = 0.5
    assert est.min_rtt == 0.5  # remembered from an earlier run, until there is one
    est.offer_round_mean(0.2, 2)
    est.offer_round_mean(0.3, 8)  # not lower: ignored
    assert est.min_rtt == 0.2 and est.first_min == 0.2
    for _ in range(20):
        est.observe(0.3)
    # slow start's lowest round mean of 2 rtts is uncertain: its standard error counts
    assert est.base_noise() == pytest.approx(1.25 * est.dev / math.sqrt(2))
    est.record_baseline(0.0, needed=16)
    assert est.min_rtt == pytest.approx(0.3) and est.base_noise() == 0.0
    for _ in range(200):
        est.observe(0.6)
    est.record_baseline(5.0, needed=16)
    assert est.min_rtt == pytest.approx(0.3)  # still within the window
    est.record_baseline(10.5, needed=16)
    assert est.min_rtt == pytest.approx(0.6, rel=1e-2)  # the old minimum expired
    est.restart()
    est.record_baseline(11.0, needed=16)  # too few samples since: not entered
    assert est.min_rtt == pytest.approx(0.6, rel=1e-2)


def test_an_old_minimum_expires_although_no_new_value_enters() -> None:
    # Decreases faster than the samples a value needs: nothing enters the window,
    # and the minimum slow start left (the short answers first) must still expire.
    est = RttEstimate(smoothing=0.1, window=10.0)
    for _ in range(20):
        est.observe(0.3)
    est.record_baseline(0.0, needed=16)
    assert est.min_rtt == pytest.approx(0.3)
    est.restart()
    est.observe(1.0)
    est.record_baseline(10.5, needed=16)  # too few samples to enter
    assert est.min_rtt is None or est.min_rtt != pytest.approx(0.3)


def test_a_baseline_carries_the_standard_error_of_the_rtts_it_averaged() -> None:
    # Heavy-tailed rtts: the baseline entered after 16 of them is uncertain by their
    # spread then; a spread that comes later (a knee's queue) is not the baseline's.
    est = RttEstimate(smoothing=0.1, window=30.0)
    rng = random.Random(2)
    for _ in range(16):
        est.observe(rng.lognormvariate(0.0, 1.0))
    est.record_baseline(1.0, needed=16)
    spread_then = est.dev
    assert est.base_noise() == pytest.approx(1.25 * spread_then / math.sqrt(16))
    for i in range(200):
        est.observe(5.0 + (i % 2) * 5.0)
    assert est.dev > spread_then
    assert est.base_noise() == pytest.approx(1.25 * spread_then / math.sqrt(16))


def test_rtt_noise_shrinks_with_the_smoothing() -> None:
    est = RttEstimate(smoothing=0.1, window=30.0)
    rng = random.Random(1)
    for _ in range(500):
        est.observe(rng.uniform(0.5, 1.5))
    assert 0.2 < est.dev < 0.3  # the mean absolute deviation of U(0.5, 1.5) is 0.25
    assert est.noise() == pytest.approx(1.25 * est.dev * math.sqrt(0.1 / 1.9))


# ---- DeliveryLog


def test_delivered_counts_the_last_smoothed_rtt_and_the_best_window_sizes_a_cut() -> None:
    log = DeliveryLog()
    for i in range(100):  # 100 successes a second for a second
        log.record(i / 100, srtt=0.1)
    assert log.delivered(0.99, srtt=0.1) == 10  # Little: 100/s x 0.1 s
    # 100/s x a no-load rtt of 0.05 s: 5 served without a queue
    assert log.unqueued_concurrency(0.99, srtt=0.1, base=0.05) == 5


def test_delivery_log_forgets_what_no_window_needs() -> None:
    log = DeliveryLog()
    for i in range(1000):
        log.record(i / 100, srtt=0.1)
    assert log.delivered(9.99, srtt=5.0) <= 51  # kept: (2 + 3) x 0.1 s of history


# ---- RoundTracker


def test_a_round_gathers_its_successes_and_begins_afresh() -> None:
    r = RoundTracker(limit=4)
    assert r.start == -math.inf and r.limit == 4
    r.add(4, 0.1, fresh=True, shows_use=True)
    r.add(9, 0.3, fresh=False, shows_use=False)  # sent before the last decrease
    assert (r.max_inflight, r.done, r.fresh.count) == (4, 2, 1)
    assert r.rtt_sum == pytest.approx(0.4)
    r.begin(1.0, 8, slow_start=False)
    assert (r.start, r.limit, r.max_inflight, r.done, r.fresh.count) == (1.0, 8, 0, 0, 0)


def _slow_start_round(r: RoundTracker, at: float, inflight: int, rtts: list[float]) -> None:
    for rtt in rtts:
        r.add(inflight, rtt, fresh=True, shows_use=True)
    r.begin(at, 2 * inflight, slow_start=True)


def test_slow_starts_delay_test_finds_a_pure_queue() -> None:
    """Concurrency doubled and so did the rtt (a slow link): a queue."""
    r = RoundTracker(limit=1)
    _slow_start_round(r, 0.1, 2, [0.19, 0.2, 0.21])
    for rtt in (0.39, 0.4, 0.41, 0.4):
        r.add(4, rtt, fresh=True, shows_use=True)
    assert r.only_queued(0.5, 2.0, 4, 0.5)


def test_slow_starts_delay_test_passes_a_link_that_scales() -> None:
    r = RoundTracker(limit=1)
    _slow_start_round(r, 0.1, 2, [0.19, 0.2, 0.21])
    for rtt in (0.2, 0.21, 0.19, 0.2):  # twice the concurrency, the same rtt
        r.add(4, rtt, fresh=True, shows_use=True)
    assert not r.only_queued(0.5, 2.0, 4, 0.5)


def test_slow_starts_delay_test_needs_growth_samples_and_beats_the_noise() -> None:
    r = RoundTracker(limit=1)
    _slow_start_round(r, 0.1, 4, [0.1, 0.9, 0.2, 1.6])  # heavy-tailed rtts
    for rtt in (0.3, 2.0, 0.4, 1.2):
        r.add(8, rtt, fresh=True, shows_use=True)
    assert not r.only_queued(0.5, 2.0, 4, 0.5)  # within the pooled noise
    r2 = RoundTracker(limit=1)
    _slow_start_round(r2, 0.1, 4, [0.1, 0.1, 0.1])
    for rtt in (0.4, 0.4, 0.4, 0.4):
        r2.add(5, rtt, fresh=True, shows_use=True)  # 25 % more: too little growth
    assert not r2.only_queued(0.5, 2.0, 4, 0.5)


# ---- ProbeSchedule


def test_a_probe_is_due_after_clean_rounds_or_the_interval() -> None:
    p = ProbeSchedule(probe_rounds=3, max_probe_interval=2.0, base=10)
    p.held(0.0)
    assert [p.clean_round(t, 10) for t in (0.1, 0.2, 0.3)] == [False, False, True]
    p.failed(plateau=10)  # found nothing: twice the wait
    assert p.wait == 6
    p.held(1.0)
    assert not any(p.clean_round(1.0 + t / 10, 10) for t in range(1, 6))
    p.held(1.0)
    assert not p.clean_round(3.5, 10) and not p.clean_round(3.6, 10)
    assert p.clean_round(3.7, 10)  # past 2 s, and at least probe_rounds rounds
    for _ in range(20):
        p.failed(plateau=10)
    assert p.wait == MAX_PROBE_WAIT
    p.soon()
    assert p.wait == 3


def test_probe_steps_start_small_and_double_while_clean() -> None:
    p = ProbeSchedule(probe_rounds=3, max_probe_interval=2.0, base=10)
    assert p.start(320, ref_rtt=0.1) == 10  # 1/32 of the limit
    assert p.ran_clean(330) == 20
    assert p.ran_clean(350) == 40
    assert p.start(10, ref_rtt=0.1) == 1
    assert p.ran_clean(11) == 2 and p.ran_clean(13) == 4
    assert p.ran_clean(4) == 2  # at most half the plateau


def test_probes_regrow_toward_a_level_an_outage_cut() -> None:
    p = ProbeSchedule(probe_rounds=3, max_probe_interval=2.0, base=10)
    p.regrow_to = 40
    p.held(0.0)
    assert p.clean_round(0.1, 10)  # due at once while regrowing
    assert p.start(10, ref_rtt=0.1) == 10  # a doubling toward 40
    assert p.ran_clean(20) == 20
    assert p.ran_clean(40) == 20 and p.regrow_to == 0  # reached: plain steps


def test_a_probe_step_is_judged_on_attempts_sent_once_it_settled() -> None:
    p = ProbeSchedule(probe_rounds=3, max_probe_interval=2.0, base=10)
    p.start(10, ref_rtt=0.1)
    p.stepped(1.0, srtt=0.1)
    p.record(1.0, 11, 11, 0.1)  # sent with the step: met the old queue
    p.record(1.2, 10, 11, 0.5)  # not at the step's concurrency
    assert p.rtts.count == 0
    for _ in range(11):
        p.record(1.2, 11, 11, 0.11)  # 10 % more in flight, 10 % slower: only queued
    assert p.only_queued(11, 0.5, 2.0)
    p.stepped(2.0, srtt=0.1)
    for _ in range(11):
        p.record(2.2, 11, 11, 0.1)
    assert not p.only_queued(11, 0.5, 2.0)


def test_a_probe_step_weighs_the_plateaus_own_standard_error() -> None:
    # Heavy-tailed rtts: the plateau's mean of a dozen read low (the short ones), and
    # a step whose rtts are no slower than the true mean must not read as queued.
    steps = [1.1, 0.3, 2.5, 0.8, 1.6, 0.5, 1.2, 3.0, 0.7, 1.4, 0.9, 1.9]
    for ref_stderr, queued in ((0.0, True), (0.4, False)):
        p = ProbeSchedule(probe_rounds=3, max_probe_interval=2.0, base=20)
        p.start(20, ref_rtt=0.8, ref_stderr=ref_stderr)
        p.stepped(1.0, srtt=1.2)
        for rtt in steps:
            p.record(2.0, 21, 21, rtt)
        assert p.only_queued(21, 0.5, 2.0) is queued


def test_slow_starts_lowest_round_mean_carries_its_standard_error() -> None:
    est = RttEstimate(smoothing=0.1, window=30.0)
    assert est.first_min_noise() == 0.0
    for rtt in (0.2, 0.4, 1.8, 0.3):
        est.observe(rtt)
    est.offer_round_mean(0.3, 3)
    assert est.first_min_noise() == pytest.approx(1.25 * est.dev / math.sqrt(3))
    assert est.base_noise() == est.first_min_noise()  # nothing in the window yet


def test_the_quiet_spread_is_the_lowest_since_warm() -> None:
    est = RttEstimate(smoothing=0.1, window=30.0)
    est.observe(0.2)  # a slow first answer: spread before warm does not count
    for _ in range(30):
        est.observe(0.1)
    quiet = est.quiet_dev
    assert quiet == pytest.approx(est.dev)
    for i in range(1, 10):
        est.observe(0.1 + 0.01 * i)  # a queue: the spread grows, the quiet one stays
    assert est.dev > quiet and est.quiet_dev == quiet
