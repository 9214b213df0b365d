"""The adaptive limit: AIMD with a fast start, a plateau below the last congestion
point, timed probes above it, and a latency signal.

:class:`AimdLimit` is a pure :class:`~pacer.control.limit.Limit`: one
:class:`~pacer.control.limit.Sample`
per finished attempt, time taken from the samples (``now = start + rtt``), no I/O.
It learns the fastest safe concurrency of an upstream that never says its limit.

1. **Slow start.** From ``initial_limit``, +1 per success whose attempt used at least
   half the limit (Netflix's ``inflight * 2 >= limit``): the limit doubles every round
   trip (1 -> 32 in 5). A success whose start a pacing gate held back (reason
   :data:`PACED`) never grows it: then the pace binds, not the limit. Slow start ends
   at the first congestion signal, just below the concurrency that was refused
   (``inflight - 1``, never below half): everything under it was just accepted.
   A round whose mean rtt grew in proportion to the concurrency it added (past
   half of it, beyond the noise of the rtts within rounds, pooled) is a pure queue
   (a slow link): slow start ends there (``latency``), one round after the queue
   began, not three (the full-pipe test).
2. **Congestion** is a drop (429, 503, timeout, connection error: the change's reason)
   or queueing (point 5). A burst of drops is one signal: drops of attempts sent
   before (or as) the last decrease was made are ignored, so each decrease rests on
   a round trip that started after the previous one. An immediate 429 to an attempt
   sent after a decrease is such a round trip: it is new evidence.
3. **Decrease by the evidence.** At the plateau, a drop means the capacity fell: the
   limit becomes the least of ``limit * backoff_ratio`` (the AIMD step), the refused
   concurrency minus one, and the concurrency delivered (successes completed within
   the last smoothed rtt, by Little's law). A 4x capacity drop is absorbed within a
   round trip or two, not the ~13 of repeated x0.9 steps. But the first drop within a
   smoothed rtt of leaving slow start only says that slow start left a little too
   high (in-flight counts are blurred by answers in transit; the delivered count
   still shows the ramp of a round trip ago): it is sized as slow start's exit.
4. **Plateau and probes** (:mod:`pacer.control.probes`). After a decrease the limit
   holds (``phase == "steady"``); after a few clean round trips that used it (at
   least every ``max_probe_interval`` s) it probes (``"probe"``) in steps of 1/32 of
   the limit that double while they run clean, up to half the plateau; a step whose
   attempts failed or only queued falls back to the last plateau that ran clean, and
   a series that found nothing waits twice as long for the next. (Resuming slow
   start instead overshot by up to 2x and fell back far below: 17 -> 58 -> 17.)
   A step with an attempt it sent still out past a retransmission timeout's worth
   of rtts (:attr:`~pacer.control.limit.Sample.oldest_start`) waits for it: an
   upstream that drops what it cannot serve says nothing until the timeout.
5. **Latency** (:mod:`pacer.control.rtt_estimate`). The smoothed rtt of successes
   sent since the last decrease above ``latency_tolerance`` x the no-load rtt, by
   more than the noise of both, is queueing (Vegas/Gradient): checked on every
   sample in slow start (growth outruns a round trip), at the end of a probe's round
   trip, and for two round trips in a row at the plateau (noise must not cut a limit
   that does not queue). The cut, reason ``latency``, goes to the delivered rate x
   the no-load rtt (:mod:`pacer.control.delivery`: the concurrency served without a
   queue), at most ``limit * backoff_ratio``. The rtt judged is the sample's net of
   the caller's own event-loop lag (:attr:`~pacer.control.limit.Sample.upstream_rtt`).

:attr:`AimdLimit.changed_at` tells when the limit last moved (the pacing gate takes a
429 long after that as a sign of a rate cap: over a concurrency cap a limit that holds
is not refused).

A round trip (:mod:`pacer.control.rounds`) ends with the first success of an attempt
sent after it began, once a smoothed rtt has passed (the fastest of varied rtts is not
a round trip). Only successes of attempts that used the limit raise it. Every change is clamped to
``[min_limit, max_limit]`` and emits exactly one :class:`~pacer.control.limit.LimitChange`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Final, Literal

from pacer.control.delivery import DeliveryLog
from pacer.control.failure_levels import FailureLevels
from pacer.control.limit import HookedLimit, HookList, LimitChange, Outcome, Sample
from pacer.control.probes import ProbeSchedule
from pacer.control.rounds import RoundTracker
from pacer.control.rtt_estimate import DEV_TO_SD, RttEstimate

__all__ = ["PACED", "AimdLimit", "AimdSettings", "Phase"]

Phase = Literal["slow_start", "steady", "probe"]

PACED: Final = "paced"
"""The reason of a success whose start a pacing gate held back: the pace bound, not
the limit, so the sample feeds the rtt but never grows the limit."""

# Slow start's first samples are the surest no-load ones: there a mean of at least
# this many may enter the baseline (fewer are too noisy when rtts vary a lot); at the
# plateau only a warm slow EWMA does.
_FIRST_BASELINE_SAMPLES: Final = 16
# At the plateau, queueing must last this many round trips before a cut: noise must
# not cut a limit that does not queue (latency cuts are deep and would cascade).
_STEADY_QUEUED_ROUNDS: Final = 2
# Drops that say the upstream failed, not that this concurrency was refused.
_FAILURE_REASONS: Final = frozenset({"server_error", "timeout", "connection"})
# Of those, the ones an outage gives at once (a timeout may be a dropped request
# past a concurrency cap: a capacity signal, not an outage).
_OUTAGE_REASONS: Final = frozenset({"server_error", "connection"})
# A fast failure is judged on the attempts sent this many smoothed rtts before it
# arrived: their successes are back (failure_levels: settled attempts only).
_SETTLE_RTTS: Final = 2.0
# Slow start's full-pipe test: a round must serve this much more concurrency than
# the best before it, or it is a stall; this many stalls in a row end slow start.
_PIPE_GROWTH: Final = 1.25
_PIPE_STALLS: Final = 3
# A latency signal must clear its noise by this many standard deviations.
_NOISE_Z: Final = 2.0
# A probe fails when its round's rtt grew by more than this share of the relative
# concurrency it added (a pure queue: the whole share; no queue: none).
_PROBE_RTT_SHARE: Final = 0.5
# A probe step is judged on at least this many of its attempts (and half the limit).
_PROBE_MIN_SAMPLES: Final = 4
# A probe step waits for an attempt it sent that is still out after at least this
# many smoothed rtts (it may have been dropped) before it is held as clean.
_STRAGGLER_RTTS: Final = 1.5
# The slots a rise opens are spread at this many times the limit's own pace (TCP's
# pacing gain in slow start; at 3 a rate cap with a burst of 2 refused the probes
# again, on 3 seeds of 8).
_SPREAD_GAIN: Final = 2.0
# Slow start's round delay test judges a round on at least this many rtts.
_ROUND_TEST_SAMPLES: Final = 4
# ... and only when its concurrency grew by this share over the last round's (a
# round that added little shows the bias of its few, early, short answers more than
# what the step bought).
_ROUND_TEST_GROWTH: Final = 0.5


@dataclass(frozen=True, slots=True)
class AimdSettings:
    """Tuning of :class:`AimdLimit`; invalid values raise ``ValueError``.

    ``initial_limit``, ``min_limit``, ``max_limit``: the limit starts at the first and
    always stays within the other two.
    ``backoff_ratio``: the multiplicative decrease on congestion at the plateau, in
    ``[0.5, 1)`` (Netflix's default 0.9); the evidence may cut deeper.
    ``latency_tolerance``: smoothed rtt over no-load rtt above which queueing counts
    as congestion; ``None`` turns the latency signal off.
    ``rtt_smoothing``: EWMA weight of one rtt sample, in ``(0, 1]``.
    ``min_rtt_window``: seconds over which the no-load rtt is the minimum.
    ``probe_rounds``: clean round trips at the plateau before the first probe (and
    always at least that many between probes).
    ``max_probe_interval``: seconds after which a probe is due however many probes
    failed before.
    """

    initial_limit: int = 1
    min_limit: int = 1
    max_limit: int = 256
    backoff_ratio: float = 0.9
    latency_tolerance: float | None = 1.15
    rtt_smoothing: float = 0.1
    min_rtt_window: float = 30.0
    probe_rounds: int = 3
    max_probe_interval: float = 2.0

    def __post_init__(self) -> None:
        if self.min_limit < 1:
            raise ValueError(f"min_limit must be >= 1, got {self.min_limit}")
        if self.max_limit < self.min_limit:
            raise ValueError(f"max_limit must be >= min_limit, got {self.max_limit}")
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                f"initial_limit must lie within [{self.min_limit}, {self.max_limit}], "
                f"got {self.initial_limit}"
            )
        if not 0.5 <= self.backoff_ratio < 1.0:
            raise ValueError(f"backoff_ratio must lie within [0.5, 1), got {self.backoff_ratio}")
        if self.latency_tolerance is not None and not (
            math.isfinite(self.latency_tolerance) and self.latency_tolerance > 1.0
        ):
            raise ValueError(
                f"latency_tolerance must be > 1 (or None), got {self.latency_tolerance}"
            )
        if not 0.0 < self.rtt_smoothing <= 1.0:
            raise ValueError(f"rtt_smoothing must lie within (0, 1], got {self.rtt_smoothing}")
        if not (math.isfinite(self.min_rtt_window) and self.min_rtt_window > 0.0):
            raise ValueError(f"min_rtt_window must be > 0, got {self.min_rtt_window}")
        if self.probe_rounds < 1:
            raise ValueError(f"probe_rounds must be >= 1, got {self.probe_rounds}")
        if not (math.isfinite(self.max_probe_interval) and self.max_probe_interval > 0.0):
            raise ValueError(f"max_probe_interval must be > 0, got {self.max_probe_interval}")


class AimdLimit(HookedLimit):
    """The adaptive concurrency limit (see the module docstring)."""

    def __init__(self, settings: AimdSettings | None = None) -> None:
        s = settings if settings is not None else AimdSettings()
        self.settings: Final = s
        self._hooks = HookList()
        self._limit = s.initial_limit
        self._phase: Phase = "slow_start"
        self._ceiling: int | None = None
        self._plateau = s.initial_limit
        self._last_decrease_at = -math.inf
        # Smoothed rtt of successes started after the last decrease, the no-load rtt.
        self._rtt = RttEstimate(s.rtt_smoothing, s.min_rtt_window)
        self._queued_rounds = 0
        self._delivery = DeliveryLog()
        # A round trip ends with the first success of an attempt sent since it began,
        # once a smoothed rtt has passed.
        self._round = RoundTracker(s.initial_limit)
        self._ss_best_rate = 0.0  # the best delivered rate of a slow-start round
        self._ss_stalls = 0
        self._probes = ProbeSchedule(s.probe_rounds, s.max_probe_interval, s.initial_limit)
        self._changed_at: float | None = None  # when the limit last moved
        # Until then the drops are those of leaving slow start (a smoothed rtt after).
        self._ramp_until = -math.inf
        # Failures per concurrency: do they grow with it (congestion) or not (faults)?
        self._failure_levels = FailureLevels()

    @classmethod
    def from_values(
        cls,
        initial_limit: int = 1,
        min_limit: int = 1,
        max_limit: int = 256,
        **tuning: Any,
    ) -> AimdLimit:
        """Build from plain values (e.g. a config file's); ``tuning`` takes any other
        :class:`AimdSettings` field by name. Unknown names raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(AimdSettings)}
        unknown = sorted(set(tuning) - names)
        if unknown:
            raise ValueError(f"unknown AIMD settings: {', '.join(unknown)}")
        settings = AimdSettings(
            initial_limit=initial_limit, min_limit=min_limit, max_limit=max_limit
        )
        return cls(dataclasses.replace(settings, **tuning))

    # ---- the Limit protocol

    def on_sample(self, sample: Sample) -> int:
        now = sample.start + sample.rtt
        if sample.outcome is Outcome.SUCCESS or sample.reason in _FAILURE_REASONS:
            self._failure_levels.record(sample.inflight, sample.outcome is not Outcome.SUCCESS,
                                        sample.start)
        if (sample.outcome is Outcome.DROPPED and sample.reason in _FAILURE_REASONS
                and not self._failure_levels.grows_at(sample.inflight, self._settled_by(sample))):
            # Failures as common below this concurrency as at it (random resets,
            # hangs, 500s of a flaky upstream) are not congestion: no cut.
            return self._limit
        if sample.outcome is Outcome.SUCCESS:
            self._on_success(sample, now)
        # Attempts sent before the last decrease belong to the episode already answered:
        # a burst of 429s from one window is one signal.
        # One admitted with more in flight than the limit allows now was admitted
        # before the last decrease, however late it was stamped (hundreds of slots
        # pass the pacing gate one by one: a burst of immediate 429s from one
        # overshoot cut 699 -> 500 -> 450 -> ... -> 191 within milliseconds).
        elif (sample.outcome is Outcome.DROPPED and sample.start > self._last_decrease_at
              and sample.inflight <= self._limit):
            refused_at = max(1, min(self._limit, sample.inflight))
            self._congestion(sample.reason, sample, now, refused_at)
        return self._limit

    def resume(self, limit: int, at: float, min_rtt: float | None = None) -> None:
        """Start from a limit learned before (a restart): hold it as the plateau and
        probe above it, rather than slow-start from it (which would overshoot a cap
        it had already found). ``min_rtt`` seeds the no-load rtt until this run has
        its own. Call before the first sample; the change (reason ``resumed``) goes
        to the hooks like any other."""
        s = self.settings
        old = self._limit
        self._limit = self._plateau = max(s.min_limit, min(limit, s.max_limit))
        self._phase = "steady"
        self._probes.soon()
        self._probes.held(at)
        self._rtt.seed = min_rtt
        if self._limit != old:
            self._changed_at = at
            self._hooks.emit(LimitChange(old, self._limit, "resumed", 0, None, at))

    def make_room(self, concurrency: int, at: float) -> None:
        """Raise the limit to ``concurrency`` if it is lower (reason ``rate_room``),
        held as the plateau: a pacing gate's learned rate grew, and it can only be
        searched further while the concurrency limit leaves room for its starts
        (each waits for the other to bind: 10 s at 10/s under a cap of 20/s)."""
        s = self.settings
        new = max(s.min_limit, min(concurrency, s.max_limit))
        if new <= self._limit or self._phase == "slow_start":
            return
        old = self._limit
        self._limit = self._plateau = new
        self._phase = "steady"
        self._probes.held(at)
        self._new_round(at)
        self._changed_at = at
        self._hooks.emit(LimitChange(old, new, "rate_room", 0, None, at))

    # ---- introspection, for status

    @property
    def phase(self) -> Phase:
        """``slow_start`` (growing fast), ``steady`` (holding the plateau) or ``probe``."""
        return self._phase

    @property
    def ceiling(self) -> int | None:
        """The concurrency of the last congestion signal (``None`` before any)."""
        return self._ceiling

    @property
    def plateau(self) -> int:
        """The last limit known to be safe; a failed probe falls back to it."""
        return self._plateau

    @property
    def min_rtt(self) -> float | None:
        """The no-load rtt: minimum of the slow EWMA over the last ``min_rtt_window`` s
        (before it has one: slow start's lowest round-mean rtt, else the one
        remembered from an earlier run, if any)."""
        return self._rtt.min_rtt

    @property
    def smoothed_rtt(self) -> float | None:
        """EWMA of the rtt of successes sent since the last decrease (before: older)."""
        return self._rtt.srtt

    @property
    def spread_rate(self) -> float | None:
        """How fast the slots a rise opens may be used (starts per second; the
        limiter spreads them): ``_SPREAD_GAIN`` times the limit's own pace, limit /
        smoothed rtt. A probe's extra start sent right beside the refill of the
        answer that stepped it reaches a rate cap with a small burst as a burst (one
        of 20/s with a burst of 2 refused every probe past 3 in flight for 10 s).
        ``None`` (no spreading) before an rtt is known, and in slow start, whose
        round tests read the rtt growth of each doubling: spread, a link whose
        latency grows with load left slow start at 4 in flight, not 1."""
        srtt = self._rtt.srtt
        if not srtt or self._phase == "slow_start":
            return None
        return _SPREAD_GAIN * self._limit / srtt

    @property
    def changed_at(self) -> float | None:
        """When the limit last moved (``None``: never). Over a concurrency cap, a limit
        that has not moved for a while is no longer refused: a refusal then comes
        at once after a rise (a probe) or not at all. (The pacing gate reads a 429
        to an attempt sent well after the last move as a sign of a rate cap.)"""
        return self._changed_at

    @property
    def probe_wait(self) -> int:
        """Clean round trips required at the plateau before the next probe."""
        return self._probes.wait

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for status files."""
        return {
            "limit": self._limit,
            "phase": self._phase,
            "ceiling": self._ceiling,
            "plateau": self._plateau,
            "min_rtt": self.min_rtt,
            "smoothed_rtt": self._rtt.srtt,
            "probe_wait": self._probes.wait,
        }

    # ---- the algorithm

    def _settled_by(self, sample: Sample) -> float:
        """Attempts started by then have their answers in, as the failure ``sample``
        arrives: all of them for a timeout (none takes longer), and for a fast
        failure (a reset, a 500) the successes sent with it or before, once
        ``_SETTLE_RTTS`` smoothed rtts have passed (of a bunch sent together the
        resets come back first: judged at once, the levels a slow start just
        opened held nothing but failures)."""
        now = sample.start + sample.rtt
        srtt = self._rtt.srtt
        if srtt is None:
            return sample.start
        return min(sample.start, now - _SETTLE_RTTS * srtt)

    def _on_success(self, sample: Sample, now: float) -> None:
        fresh = sample.start > self._last_decrease_at
        if fresh:
            self._rtt.observe(sample.upstream_rtt)
        self._delivery.record(now, self._rtt.srtt)
        # (The pace held a paced one back: it does not show the limit used.) Any
        # attempt back within the round shows the limit in use, also one sent just
        # before it began: when answers come back in bunches (equal service times),
        # the first of a bunch ends the round and was sent first, seeing few of its
        # bunch in flight.
        self._round.add(sample.inflight, sample.upstream_rtt, fresh=fresh,
                        shows_use=sample.start >= self._round.start
                        and sample.reason != PACED)
        if self._phase == "probe":
            self._probes.record(sample.start, sample.inflight, self._limit, sample.upstream_rtt)
        if self._phase == "slow_start" and fresh and self._queueing():
            # Growth outruns a round-end check: test the queueing on every sample.
            self._congestion("latency", sample, now, self._limit)
            return
        # A round trip: an attempt sent after the round began is back, and (when rtts
        # vary a lot) the first one back is not just the fastest.
        before = self._limit
        srtt = self._rtt.srtt
        if sample.start >= self._round.start and (srtt is None or now - self._round.start >= srtt):
            self._end_round(sample, now)
        if (self._phase == "slow_start" and fresh and self._limit == before
                and 2 * sample.inflight >= self._limit and not self._sample_queued(sample)
                and self._limit < self.settings.max_limit and sample.reason != PACED):
            self._change(self._limit + 1, "slow_start", sample, now)

    def _end_round(self, sample: Sample, now: float) -> None:
        s = self.settings
        used = self._round.max_inflight >= self._limit
        if self._phase == "slow_start" and self._round_only_queued():
            # The round's rtt grew in proportion to the concurrency added: a queue
            # (a slow link), however fast the rate still seems to grow.
            self._congestion("latency", sample, now, self._limit)
            return
        if self._phase == "slow_start" and self._pipe_full(now):
            # The delivered rate stopped growing while the limit doubled: whatever
            # lies past it (drops that only time out later, a link or a knee that
            # only gets slower) gives nothing more.
            self._congestion("saturated", sample, now, self._limit)
            return
        self._rtt.record_baseline(now, _FIRST_BASELINE_SAMPLES if self._phase == "slow_start"
                                  else self._rtt.baseline_warm_count)
        self._queued_rounds = self._queued_rounds + 1 if self._queueing() else 0
        if self._queued_rounds >= (_STEADY_QUEUED_ROUNDS if self._phase == "steady" else 1):
            self._congestion("latency", sample, now, self._limit)
            return
        if self._phase == "steady" and used:
            if self._probes.clean_round(now, self._limit) and self._limit < s.max_limit:
                self._plateau = self._limit
                # The plateau's own rtt: the mean of its last round's attempts sent
                # under it (the smoothed rtt may still carry a higher limit's).
                fresh = self._round.fresh
                step = self._probes.start(
                    self._limit, fresh.mean if fresh.count else self._rtt.srtt,
                    fresh.stderr if fresh.count > 1 else 0.0)
                self._phase = "probe"
                self._new_round(now)
                self._change(self._limit + step, "probe", sample, now)
                return
        elif self._phase == "probe" and used:
            if self._probes.rtts.count < max(_PROBE_MIN_SAMPLES, self._limit // 2):
                # Half a window of the step's attempts: the test weighs their
                # standard error, and a full window cost a round trip per step
                # (a capacity rise took 8 s to find at 0.5 s rtts).
                return
            if self._step_unanswered(sample, now):
                # An attempt the step sent is still out long after its like came
                # back: the upstream may have dropped it (no answer until the
                # timeout). Wait for it rather than hold the step as clean (a cap of
                # 5 that drops the rest crept to a limit of 57 so).
                return
            if self._probe_only_queued():
                # More concurrency, proportionally more latency: past a knee, or a
                # link whose latency grows with load. Not capacity: back down.
                self._congestion("latency", sample, now, self._limit)
                return
            # A round trip at the probe limit without congestion: the capacity rose.
            # Hold what ran clean, and step further at once.
            self._plateau = self._limit
            step = self._probes.ran_clean(self._limit)
            self._new_round(now)
            if self._limit < s.max_limit:
                self._change(self._limit + step, "probe", sample, now)
            return
        self._new_round(now)

    def _queueing(self) -> bool:
        """Is the smoothed rtt past the tolerance over the no-load rtt, by more than
        its own noise? (When service times vary 10x from request to request, as LLM
        answers do, a smoothed rtt over a windowed minimum reads variance as
        queueing; the noise term keeps it from cutting for that.)"""
        tolerance, base = self.settings.latency_tolerance, self.min_rtt
        rtt = self._rtt
        if tolerance is None or base is None or not rtt.warm:
            return False
        assert rtt.srtt is not None
        noise = math.hypot(rtt.noise(), tolerance * rtt.base_noise())
        return rtt.srtt > tolerance * base + _NOISE_Z * noise

    def _sample_queued(self, sample: Sample) -> bool:
        """Did this one attempt queue: its rtt past the tolerance over the no-load
        rtt by more than twice the rtt's own spread? In slow start such a success
        does not grow the limit (HyStart's delay test, per sample): the smoothed rtt
        lags, and a steep knee is 10 rounds of x1.1 deep before it crosses."""
        tolerance, base = self.settings.latency_tolerance, self.min_rtt
        if tolerance is None or base is None or not self._rtt.warm:
            return False
        # The rtt's spread at its quietest, not now: a queue that grows spreads the
        # rtts too, and a new connection's first answers are slow, and with the
        # current spread slow start ran to 36-48 past a knee of 10 over real sockets.
        dev = min(self._rtt.dev, self._rtt.quiet_dev)
        return sample.upstream_rtt > tolerance * base + _NOISE_Z * DEV_TO_SD * dev

    def _step_unanswered(self, sample: Sample, now: float) -> bool:
        """Is an attempt sent since the probe step (every attempt sent before it
        answered) still out past a retransmission timeout's worth of its like
        (TCP's: smoothed rtt + 4 x mean deviation, and at least ``_STRAGGLER_RTTS``
        smoothed rtts)? (An older one still out says nothing of the step: heavy-tailed
        service times.)"""
        oldest, srtt = sample.oldest_start, self._rtt.srtt
        if oldest is None or srtt is None or oldest < self._probes.stepped_at:
            return False
        return now - oldest > max(_STRAGGLER_RTTS * srtt, srtt + 4.0 * self._rtt.dev)

    def _probe_only_queued(self) -> bool:
        """Did the probe step's attempts only queue (:meth:`ProbeSchedule.only_queued`:
        their rtt grew past ``_PROBE_RTT_SHARE`` of the relative step)?"""
        if self.settings.latency_tolerance is None:
            return False
        return self._probes.only_queued(self._limit, _PROBE_RTT_SHARE, _NOISE_Z)

    def _round_only_queued(self) -> bool:
        """Slow start's delay test per round (:meth:`RoundTracker.only_queued`): the
        round's rtt grew past ``_PROBE_RTT_SHARE`` of the concurrency it added. (The
        per-sample test misses a ramp: the rtt's spread across rounds grows with it;
        the full-pipe test needs three rounds, a doubling each.)"""
        if self.settings.latency_tolerance is None:
            return False
        return self._round.only_queued(_PROBE_RTT_SHARE, _NOISE_Z, _ROUND_TEST_SAMPLES,
                                       _ROUND_TEST_GROWTH)

    def _delivered(self, now: float) -> int | None:
        """Successes completed within the last smoothed rtt (Little's law)."""
        srtt = self._rtt.srtt
        return None if srtt is None else self._delivery.delivered(now, srtt)

    def _unqueued_concurrency(self, now: float) -> int:
        """Delivered rate x no-load rtt: the concurrency served without a queue."""
        base, srtt = self.min_rtt, self._rtt.srtt
        assert base is not None and srtt is not None
        return self._delivery.unqueued_concurrency(now, srtt, base)

    def _congestion(self, reason: str, sample: Sample, now: float, refused_at: int) -> None:
        s = self.settings
        old = self._limit
        cut = math.floor(old * s.backoff_ratio)
        if self._phase == "probe":
            # The probe failed: back to the last plateau that ran clean. Probes that
            # found nothing wait longer before the next; a series that gained
            # capacity probes again soon.
            new = self._plateau
            self._probes.failed(self._plateau)
        else:
            # Within a round trip of leaving slow start, a drop says that it left a
            # little too high (the in-flight counts are blurred by answers in
            # transit, and attempts admitted before that exit still go out), not
            # that the capacity fell (a cut sized by what was delivered, after a
            # slow start that ramped up within the last rtt, went 33 -> 18 under a
            # cap of 32).
            ramped = now < self._ramp_until
            if reason == "saturated":
                # The concurrency that delivers the best rate without a queue.
                # (That rtt read to its upper noise bound: a round of a few
                # heavy-tailed rtts, the short ones back first, reads low, and the
                # cut went 23 -> 5 under a cap of 40.)
                no_load = self._rtt.first_min + self._rtt.first_min_noise()
                new = max(1, math.floor(self._ss_best_rate * no_load + 0.5))
            elif reason == "latency":
                new = min(cut, self._unqueued_concurrency(now))
            elif self._phase == "slow_start" or ramped:
                # Everything below the refused concurrency was just accepted.
                new = max(refused_at - 1, old // 2)
            else:
                # The capacity fell: size the cut by what the upstream still served,
                # but never below half at once: in-flight and delivered counts are
                # blurred (refusals that come a service time late, answers in
                # transit), and a cut by a misread count went 5 -> 2. A real drop
                # to a quarter is reached in two round trips.
                new = min(cut, refused_at - 1)
                delivered = self._delivered(now)
                if delivered is not None:
                    new = min(new, delivered)
                new = max(new, old // 2)
        new = max(s.min_limit, min(new, old, s.max_limit))
        if self._phase == "slow_start":
            self._ramp_until = now + (self._rtt.srtt or 0.0)
        if self._phase != "probe":
            # A capacity found or fallen: probe soon.
            self._probes.soon()
        if reason in _OUTAGE_REASONS and self._phase == "steady":
            # Failures at a limit that ran clean (an outage, errors that do not
            # measure the capacity): come back to it fast once answers are clean.
            self._probes.regrow_to = max(self._probes.regrow_to, old)
        elif reason not in _OUTAGE_REASONS:
            self._probes.regrow_to = 0  # the capacity itself spoke
        self._ceiling = refused_at
        self._plateau = new
        self._phase = "steady"
        self._last_decrease_at = now
        self._probes.held(now)
        # The smoothed rtt restarts from attempts sent under the new limit.
        self._rtt.restart()
        self._queued_rounds = 0
        self._new_round(now)
        self._change(new, reason, sample, now)

    def _new_round(self, now: float) -> None:
        self._round.begin(now, self._limit, slow_start=self._phase == "slow_start")

    def _pipe_full(self, now: float) -> bool:
        """In slow start, at the end of a round the limit was used in (half of it in
        flight, as growth needs): did the delivered rate (successes per second over
        the round) stop growing? Each round that adds less than ``_PIPE_GROWTH``
        over the best rate so far is a stall; ``_PIPE_STALLS`` in a row fill the
        pipe (BBR's full-pipe test). The lowest round-mean rtt seen stands for the
        unloaded rtt (slow start's first rounds ran nearly alone)."""
        r = self._round
        span = now - r.start
        if (not math.isfinite(span) or span <= 0 or r.done == 0
                or 2 * r.max_inflight < r.limit or self._limit <= r.limit):
            return False  # not used, or the limit did not grow: no test of the pipe
        self._rtt.offer_round_mean(r.rtt_sum / r.done, r.done)
        rate = r.done / span
        if rate >= _PIPE_GROWTH * self._ss_best_rate:
            self._ss_best_rate = rate
            self._ss_stalls = 0
            return False
        self._ss_best_rate = max(self._ss_best_rate, rate)
        self._ss_stalls += 1
        return self._ss_stalls >= _PIPE_STALLS

    def _change(self, new: int, reason: str, sample: Sample, now: float) -> None:
        old = self._limit
        if new == old:
            return
        if reason == "probe":
            # Attempts sent within a smoothed rtt of the step met the queue of the
            # attempts sent before it (on a slow link the first takes the old rtt):
            # the step is judged on those sent once they left.
            self._probes.stepped(now, self._rtt.srtt or 0.0)
        self._limit = new
        self._changed_at = now
        self._hooks.emit(
            LimitChange(
                old_limit=old,
                new_limit=new,
                reason=reason,
                inflight=sample.inflight,
                rtt=sample.rtt,
                at=now,
            )
        )
