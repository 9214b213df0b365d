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
4. **Plateau and probes.** After a decrease the limit holds (``phase == "steady"``):
   plain AIMD probes +1 every round trip, and a hard cap refuses 1 request in C+1.
   After ``probe_rounds`` clean round trips in which the limit was used, it probes
   +1 (``"probe"``). A failed probe returns to the plateau and doubles the clean
   round trips needed before the next; a probe is still due every
   ``max_probe_interval`` seconds (but never before ``probe_rounds`` round trips), so
   a capacity rise is found within seconds. A step is judged on its attempts sent
   a smoothed rtt after it (those sent at once met the old queue: on a slow link
   the first takes the old rtt). A probe that ran a clean, used round trip
   means the capacity rose: that limit becomes the plateau and the next probe, at
   once, steps twice as far (1, 2, 4, ... but at most half the plateau), until one
   fails and the limit falls back to the last plateau that ran clean. (Resuming
   slow start instead overshot by up to 2x and fell back far below: 17 -> 58 -> 17.)
5. **Latency.** Successes sent after the last decrease feed an EWMA of the rtt
   (weight ``rtt_smoothing``, a plain mean until it is warm), so each decrease is
   judged on its own round trips. The no-load rtt is the minimum, over the last
   ``min_rtt_window`` seconds, of a 4x slower EWMA of the same samples (a minimum of
   noisy values is biased low), seeded by slow start's first 16 samples; old values
   expire, so it cannot go stale. The smoothed rtt above ``latency_tolerance``
   x the no-load rtt, by more than the noise of both (until the window has a
   value, the no-load rtt is slow start's lowest round mean, as noisy as its few
   rtts), is queueing (Vegas/Gradient): checked on every sample in slow
   start (growth outruns a round trip), at the end of the probe's round trip, and for
   two round trips in a row at the plateau (noise must not cut a limit that does not
   queue). The cut, reason ``latency``, goes to the delivered rate x the no-load rtt
   (the concurrency served without a queue; the best of a few recent windows), at
   most ``limit * backoff_ratio``.

:attr:`AimdLimit.changed_at` tells when the limit last moved (the pacing gate takes a
429 long after that as a sign of a rate cap: over a concurrency cap a limit that holds
is not refused).

A round trip ends with the first success of an attempt sent after it began, once a
smoothed rtt has passed (the fastest of varied rtts is not a round trip). Only
successes of attempts that used the limit raise it. Every change is clamped to
``[min_limit, max_limit]`` and emits exactly one :class:`~pacer.control.limit.LimitChange`.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Literal

from pacer.control.failure_levels import FailureLevels
from pacer.control.limit import HookedLimit, HookList, LimitChange, Outcome, Sample

__all__ = ["PACED", "AimdLimit", "AimdSettings", "Phase"]

Phase = Literal["slow_start", "steady", "probe"]

PACED: Final = "paced"
"""The reason of a success whose start a pacing gate held back: the pace bound, not
the limit, so the sample feeds the rtt but never grows the limit."""

# Successes kept for the delivered count, whatever the rtt (bounds memory).
_MAX_COMPLETIONS: Final = 100_000
# Failed probes double the wait, up to this many round trips (the time bound rules anyway).
_MAX_PROBE_WAIT: Final = 1024
# The no-load rtt follows an EWMA this many times slower than the smoothed rtt: a
# minimum of noisy values is biased low, and a low baseline cuts too deep.
_BASELINE_SLOWER: Final = 4.0
# Slow start's first samples are the surest no-load ones: there a mean of at least
# this many may enter the baseline (fewer are too noisy when rtts vary a lot); at the
# plateau only a warm slow EWMA does.
_FIRST_BASELINE_SAMPLES: Final = 16
# At the plateau, queueing must last this many round trips before a cut: noise must
# not cut a limit that does not queue (latency cuts are deep and would cascade).
_STEADY_QUEUED_ROUNDS: Final = 2
# A latency cut sizes the limit by the delivered rate (the best of a few windows of
# this many smoothed rtts: the latest may be a dip caused by the overshoot) times the
# no-load rtt. No headroom on top: a plateau that queues would feed its own rtt to
# the baseline when the old minimum expires, and the baseline would creep up.
_RATE_SPAN: Final = 2.0
_RATE_WINDOWS: Final = 3
# Drops that say the upstream failed, not that this concurrency was refused.
_FAILURE_REASONS: Final = frozenset({"server_error", "timeout", "connection"})
# Of those, the ones an outage gives at once (a timeout may be a dropped request
# past a concurrency cap: a capacity signal, not an outage).
_OUTAGE_REASONS: Final = frozenset({"server_error", "connection"})
# Slow start's full-pipe test: a round must serve this much more concurrency than
# the best before it, or it is a stall; this many stalls in a row end slow start.
_PIPE_GROWTH: Final = 1.25
_PIPE_STALLS: Final = 3
# A latency signal must clear its noise by this many standard deviations.
_NOISE_Z: Final = 2.0
# A mean absolute deviation is about 0.8 standard deviations (normal): sd = 1.25 x it.
_DEV_TO_SD: Final = 1.25
# A probe fails when its round's rtt grew by more than this share of the relative
# concurrency it added (a pure queue: the whole share; no queue: none).
_PROBE_RTT_SHARE: Final = 0.5
# Slow start's round delay test judges a round on at least this many rtts.
_ROUND_TEST_SAMPLES: Final = 4
# ... and only when its concurrency grew by this share over the last round's (a
# round that added little shows the bias of its few, early, short answers more than
# what the step bought).
_ROUND_TEST_GROWTH: Final = 0.5
# A probe series starts with a step of the limit over this (at least 1).
_FIRST_STEP_DIVISOR: Final = 32


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
    latency_tolerance: float | None = 1.25
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


class _Moments:
    """Count, mean and standard error of the mean of some values."""

    __slots__ = ("count", "squares", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.squares = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.squares += value * value

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def deviations(self) -> float:
        """Sum of the squared deviations from the mean."""
        return max(0.0, self.squares - self.total * self.total / self.count)

    @property
    def stderr(self) -> float:
        n = self.count
        return math.sqrt(self.deviations / (n - 1) / n)


def _memory(weight: float) -> int:
    """Samples an EWMA of this weight remembers: its variance is that of their mean."""
    return math.ceil((2.0 - weight) / weight - 1e-9)


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
        # Smoothed rtt of successes started after the last decrease.
        self._srtt: float | None = None
        self._srtt_count = 0
        self._warm_count = _memory(s.rtt_smoothing)
        # A slower EWMA of the same samples feeds the no-load rtt (see _BASELINE_SLOWER).
        self._brtt: float | None = None
        self._brtt_weight = s.rtt_smoothing / _BASELINE_SLOWER
        self._brtt_warm_count = _memory(self._brtt_weight)
        self._queued_rounds = 0
        # Monotonic deque of (at, slow EWMA): its head is the windowed minimum.
        self._baseline: deque[tuple[float, float]] = deque()
        self._completions: deque[float] = deque(maxlen=_MAX_COMPLETIONS)
        # A round trip ends with the first success of an attempt sent since it began,
        # once a smoothed rtt has passed.
        self._round_start = -math.inf
        self._round_max_inflight = 0
        self._round_done = 0  # successes within this round
        self._round_rtt_sum = 0.0  # ... and their rtts
        self._round_fresh = _Moments()  # ... of those sent since the last decrease
        self._round_fresh_inflight = _Moments()  # ... and their concurrency
        # Slow start's previous round (fresh rtts, their concurrency): its delay test.
        self._prev_round: tuple[_Moments, _Moments] | None = None
        # Squared deviations of slow start's rtts from their round's mean, and their
        # degrees of freedom: the rtt's spread at a given concurrency, pooled (a
        # round of 3 heavy-tailed rtts may show almost none).
        self._ss_spread = 0.0
        self._ss_spread_df = 0
        self._round_limit = s.initial_limit
        self._ss_best_rate = 0.0  # the best delivered rate of a slow-start round
        self._ss_min_rtt = math.inf  # the lowest round-mean rtt in slow start
        self._ss_min_rtt_count = 0  # ... and how many rtts that mean took
        self._ss_stalls = 0
        # rtts of the successes sent once the last probe step had settled
        self._probe_rtts = _Moments()
        self._probe_settled_at = -math.inf
        # A limit that ran clean before failures cut it: probes double back to it.
        self._regrow_to = 0
        self._rttdev = 0.0  # mean deviation of the rtt samples (EWMA)
        self._probe_ref_rtt: float | None = None  # the plateau's srtt as probes began
        self._clean_rounds = 0
        self._probe_wait = s.probe_rounds
        self._plateau_since = -math.inf
        # The step of the next probe: 1, doubled after each probe that ran clean.
        self._probe_step = 1
        # The plateau the current series of probes started from.
        self._probe_base = s.initial_limit
        self._changed_at: float | None = None  # when the limit last moved
        self._slow_start_left_at = -math.inf
        self._seed_min_rtt: float | None = None  # a remembered no-load rtt (resume)
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
            self._failure_levels.record(sample.inflight, sample.outcome is not Outcome.SUCCESS)
        if (sample.outcome is Outcome.DROPPED and sample.reason in _FAILURE_REASONS
                and not self._failure_levels.grows_at(sample.inflight)):
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
        self._probe_wait = s.probe_rounds
        self._plateau_since = at
        self._seed_min_rtt = min_rtt
        if self._limit != old:
            self._changed_at = at
            self._hooks.emit(LimitChange(old, self._limit, "resumed", 0, None, at))

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
        if self._baseline:
            return self._baseline[0][1]
        if math.isfinite(self._ss_min_rtt):
            return self._ss_min_rtt
        return self._seed_min_rtt

    @property
    def smoothed_rtt(self) -> float | None:
        """EWMA of the rtt of successes sent since the last decrease (before: older)."""
        return self._srtt

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
        return self._probe_wait

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view for status files."""
        return {
            "limit": self._limit,
            "phase": self._phase,
            "ceiling": self._ceiling,
            "plateau": self._plateau,
            "min_rtt": self.min_rtt,
            "smoothed_rtt": self._srtt,
            "probe_wait": self._probe_wait,
        }

    # ---- the algorithm

    def _on_success(self, sample: Sample, now: float) -> None:
        fresh = sample.start > self._last_decrease_at
        if fresh:
            self._observe_rtt(sample.upstream_rtt)
        self._completions.append(now)
        if self._srtt is not None:
            # Enough history for the rate windows of a latency cut.
            horizon = now - (_RATE_SPAN + _RATE_WINDOWS) * self._srtt
            while self._completions[0] < horizon:
                self._completions.popleft()
        if sample.start >= self._round_start and sample.reason != PACED:
            # (The pace held a paced one back: it does not show the limit used.) Any
            # attempt back within the round shows the limit in use, also one sent
            # just before it began: when answers come back in bunches (equal service
            # times), the first of a bunch ends the round and was sent first, seeing
            # few of its bunch in flight.
            self._round_max_inflight = max(self._round_max_inflight, sample.inflight)
        self._round_done += 1
        self._round_rtt_sum += sample.upstream_rtt
        if fresh:
            self._round_fresh.add(sample.upstream_rtt)
            self._round_fresh_inflight.add(sample.inflight)
        if (self._phase == "probe" and sample.start >= self._probe_settled_at
                and sample.inflight >= self._limit):
            self._probe_rtts.add(sample.upstream_rtt)  # it ran at the probe's concurrency
        if self._phase == "slow_start" and fresh and self._queueing():
            # Growth outruns a round-end check: test the queueing on every sample.
            self._congestion("latency", sample, now, self._limit)
            return
        # A round trip: an attempt sent after the round began is back, and (when rtts
        # vary a lot) the first one back is not just the fastest.
        before = self._limit
        if sample.start >= self._round_start and (
            self._srtt is None or now - self._round_start >= self._srtt
        ):
            self._end_round(sample, now)
        if (self._phase == "slow_start" and fresh and self._limit == before
                and 2 * sample.inflight >= self._limit and not self._sample_queued(sample)
                and self._limit < self.settings.max_limit and sample.reason != PACED):
            self._change(self._limit + 1, "slow_start", sample, now)

    def _observe_rtt(self, rtt: float) -> None:
        # A plain mean until warm, then an EWMA: no bias toward the first sample.
        self._srtt_count += 1
        weight = max(self.settings.rtt_smoothing, 1.0 / self._srtt_count)
        if self._srtt is None:
            self._srtt, self._rttdev = rtt, 0.0
        else:
            # The mean deviation (TCP's rttvar, Vector's deviation) sizes the noise.
            self._rttdev += weight * (abs(rtt - self._srtt) - self._rttdev)
            self._srtt += weight * (rtt - self._srtt)
        weight = max(self._brtt_weight, 1.0 / self._srtt_count)
        self._brtt = rtt if self._brtt is None else self._brtt + weight * (rtt - self._brtt)

    def _end_round(self, sample: Sample, now: float) -> None:
        s = self.settings
        used = self._round_max_inflight >= self._limit
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
        needed = _FIRST_BASELINE_SAMPLES if self._phase == "slow_start" else self._brtt_warm_count
        if self._brtt is not None and self._srtt_count >= needed:
            self._record_baseline(now, self._brtt)
        self._queued_rounds = self._queued_rounds + 1 if self._queueing() else 0
        if self._queued_rounds >= (_STEADY_QUEUED_ROUNDS if self._phase == "steady" else 1):
            self._congestion("latency", sample, now, self._limit)
            return
        if self._phase == "steady" and used:
            self._clean_rounds += 1
            regrow = self._regrow_to > self._limit
            due = regrow or self._clean_rounds >= self._probe_wait or (
                now - self._plateau_since >= s.max_probe_interval
            )
            if due and (regrow or self._clean_rounds >= s.probe_rounds) and (
                    self._limit < s.max_limit):
                self._plateau = self._probe_base = self._limit
                # The plateau's own rtt: the mean of its last round's attempts sent
                # under it (the smoothed rtt may still carry a higher limit's).
                fresh = self._round_fresh
                self._probe_ref_rtt = fresh.mean if fresh.count else self._srtt
                self._phase = "probe"
                self._probe_step = self._next_step(self._first_step())
                self._new_round(now)
                self._change(self._limit + self._probe_step, "probe", sample, now)
                return
        elif self._phase == "probe" and used:
            if self._probe_rtts.count < self._limit:
                return  # judge the step on a full window of its attempts
            if self._probe_only_queued():
                # More concurrency, proportionally more latency: past a knee, or a
                # link whose latency grows with load. Not capacity: back down.
                self._congestion("latency", sample, now, self._limit)
                return
            # A round trip at the probe limit without congestion: the capacity rose.
            # Hold what ran clean, and step further at once.
            self._plateau = self._limit
            self._probe_step = self._next_step(min(2 * self._probe_step,
                                                   max(1, self._limit // 2)))
            self._new_round(now)
            if self._limit < s.max_limit:
                self._change(self._limit + self._probe_step, "probe", sample, now)
            return
        self._new_round(now)

    def _first_step(self) -> int:
        """A probe series' first step, proportional to the limit (1 up to 63, then
        1/32 of it): +1 at 600 would take minutes to find a capacity rise."""
        return max(1, self._limit // _FIRST_STEP_DIVISOR)

    def _next_step(self, step: int) -> int:
        """The next probe step: ``step``, or, while regrowing toward a level that ran
        clean before failures cut it (an outage), up to a doubling toward it."""
        if self._regrow_to > self._limit:
            return max(step, min(self._limit, self._regrow_to - self._limit))
        self._regrow_to = 0
        return step

    def _warm(self) -> bool:
        return self._srtt is not None and self._srtt_count >= self._warm_count

    def _queueing(self) -> bool:
        """Is the smoothed rtt past the tolerance over the no-load rtt, by more than
        its own noise? (When service times vary 10x from request to request, as LLM
        answers do, a smoothed rtt over a windowed minimum reads variance as
        queueing; the noise term keeps it from cutting for that.)"""
        tolerance, base = self.settings.latency_tolerance, self.min_rtt
        if tolerance is None or base is None or not self._warm():
            return False
        assert self._srtt is not None
        noise = math.hypot(self._srtt_noise(), tolerance * self._base_noise())
        return self._srtt > tolerance * base + _NOISE_Z * noise

    def _base_noise(self) -> float:
        """Standard error of the no-load rtt while it is still slow start's lowest
        round mean: a round of three heavy-tailed rtts (the first answers back, the
        short ones) may be half the true mean, and read every later rtt as queued.
        The windowed baseline (a warm slow EWMA) counts as exact."""
        if self._baseline or not math.isfinite(self._ss_min_rtt):
            return 0.0
        return _DEV_TO_SD * self._rttdev / math.sqrt(self._ss_min_rtt_count)

    def _sample_queued(self, sample: Sample) -> bool:
        """Did this one attempt queue: its rtt past the tolerance over the no-load
        rtt by more than twice the rtt's own spread? In slow start such a success
        does not grow the limit (HyStart's delay test, per sample): the smoothed rtt
        lags, and a steep knee is 10 rounds of x1.1 deep before it crosses."""
        tolerance, base = self.settings.latency_tolerance, self.min_rtt
        if tolerance is None or base is None or not self._warm():
            return False
        return sample.upstream_rtt > tolerance * base + _NOISE_Z * _DEV_TO_SD * self._rttdev

    def _srtt_noise(self) -> float:
        """Standard deviation of the smoothed rtt: an EWMA of weight w has the
        variance of its samples times w / (2 - w); a mean deviation is ~0.8 sd."""
        w = self.settings.rtt_smoothing
        return _DEV_TO_SD * self._rttdev * math.sqrt(w / (2.0 - w))

    def _probe_only_queued(self) -> bool:
        """Did the probe step's attempts take longer in proportion to the concurrency
        it added? Their mean rtt against the plateau's smoothed rtt when the probes
        began: growth past ``_PROBE_RTT_SHARE`` of the relative step, by more than
        twice the round mean's standard error, means the extra attempts only
        queued (the goodput did not grow with them)."""
        ref, rtts = self._probe_ref_rtt, self._probe_rtts
        if self.settings.latency_tolerance is None or ref is None or rtts.count < 2:
            return False
        step = (self._limit - self._probe_base) / self._probe_base
        allowed = ref * (1.0 + _PROBE_RTT_SHARE * step)
        return rtts.mean > allowed + _NOISE_Z * rtts.stderr

    def _round_only_queued(self) -> bool:
        """Slow start's delay test per round (HyStart's, made proportional): did this
        round's attempts take longer than the last round's in proportion to the
        concurrency added? Rate = concurrency / rtt (Little's law): an rtt that grows
        by past ``_PROBE_RTT_SHARE`` of the relative growth, by more than twice the
        noise of both means, delivered little of the growth: a queue. The noise is
        the spread of rtts within slow start's rounds, pooled: a round of three
        heavy-tailed rtts may by chance show none. (The per-sample test misses a
        ramp: the rtt's spread across rounds grows with it; the full-pipe test needs
        three rounds, a doubling each.)"""
        prev, rtts, inflight = self._prev_round, self._round_fresh, self._round_fresh_inflight
        if (self.settings.latency_tolerance is None or prev is None
                or rtts.count < _ROUND_TEST_SAMPLES):
            return False
        growth = inflight.mean / prev[1].mean - 1.0
        df = self._ss_spread_df + rtts.count - 1
        if growth < _ROUND_TEST_GROWTH or df < _ROUND_TEST_SAMPLES:
            return False
        variance = (self._ss_spread + rtts.deviations) / df
        factor = 1.0 + _PROBE_RTT_SHARE * growth
        noise = math.sqrt(variance * (1.0 / rtts.count + factor * factor / prev[0].count))
        return rtts.mean > factor * prev[0].mean + _NOISE_Z * noise

    def _record_baseline(self, now: float, rtt: float) -> None:
        window = self._baseline
        while window and window[-1][1] >= rtt:
            window.pop()
        window.append((now, rtt))
        while window[0][0] < now - self.settings.min_rtt_window:
            window.popleft()

    def _delivered(self, now: float) -> int | None:
        """Successes completed within the last smoothed rtt: the concurrency delivered
        (Little's law)."""
        if self._srtt is None:
            return None
        since = now - self._srtt
        count = 0
        for at in reversed(self._completions):
            if at <= since:
                break
            count += 1
        return count

    def _unqueued_concurrency(self, now: float) -> int:
        """Delivered rate x no-load rtt: the concurrency served without a queue."""
        base, srtt = self.min_rtt, self._srtt
        assert base is not None and srtt is not None
        span = _RATE_SPAN * srtt
        best = max(
            sum(1 for at in self._completions if end - span < at <= end)
            for end in (now - k * srtt for k in range(_RATE_WINDOWS))
        )
        return math.floor(best / span * base + 0.5)

    def _congestion(self, reason: str, sample: Sample, now: float, refused_at: int) -> None:
        s = self.settings
        old = self._limit
        cut = math.floor(old * s.backoff_ratio)
        if self._phase == "probe":
            # The probe failed: back to the last plateau that ran clean. Probes that
            # found nothing wait longer before the next; a series that gained
            # capacity probes again soon.
            new = self._plateau
            gained = self._plateau > self._probe_base
            self._probe_wait = (s.probe_rounds if gained
                                else min(2 * self._probe_wait, _MAX_PROBE_WAIT))
        else:
            # Within a round trip of leaving slow start, a first drop says that it
            # left a little too high (the in-flight counts are blurred by answers
            # in transit), not that the capacity fell.
            ramped = now - self._slow_start_left_at < (self._srtt or 0.0)
            self._slow_start_left_at = -math.inf
            if reason == "saturated":
                # The concurrency that delivers the best rate without a queue.
                new = max(1, math.floor(self._ss_best_rate * self._ss_min_rtt + 0.5))
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
            self._slow_start_left_at = now
        if self._phase != "probe":
            # A capacity found or fallen: probe soon.
            self._probe_wait = s.probe_rounds
        if reason in _OUTAGE_REASONS and self._phase == "steady":
            # Failures at a limit that ran clean (an outage, errors that do not
            # measure the capacity): come back to it fast once answers are clean.
            self._regrow_to = max(self._regrow_to, old)
        elif reason not in _OUTAGE_REASONS:
            self._regrow_to = 0  # the capacity itself spoke
        self._ceiling = refused_at
        self._plateau = new
        self._phase = "steady"
        self._last_decrease_at = now
        self._plateau_since = now
        self._clean_rounds = 0
        # The smoothed rtt restarts from attempts sent under the new limit.
        self._srtt_count = 0
        self._queued_rounds = 0
        self._new_round(now)
        self._change(new, reason, sample, now)

    def _new_round(self, now: float) -> None:
        if self._phase == "slow_start" and self._round_fresh.count:
            self._prev_round = (self._round_fresh, self._round_fresh_inflight)
            self._ss_spread += self._round_fresh.deviations
            self._ss_spread_df += self._round_fresh.count - 1
        self._round_start = now
        self._round_max_inflight = 0
        self._round_done = 0
        self._round_rtt_sum = 0.0
        self._round_fresh = _Moments()
        self._round_fresh_inflight = _Moments()
        self._round_limit = self._limit

    def _pipe_full(self, now: float) -> bool:
        """In slow start, at the end of a round the limit was used in (half of it in
        flight, as growth needs): did the delivered rate (successes per second over
        the round) stop growing? Each round that adds less than ``_PIPE_GROWTH``
        over the best rate so far is a stall; ``_PIPE_STALLS`` in a row fill the
        pipe (BBR's full-pipe test). The lowest round-mean rtt seen stands for the
        unloaded rtt (slow start's first rounds ran nearly alone)."""
        span = now - self._round_start
        if (not math.isfinite(span) or span <= 0 or self._round_done == 0
                or 2 * self._round_max_inflight < self._round_limit
                or self._limit <= self._round_limit):
            return False  # not used, or the limit did not grow: no test of the pipe
        round_rtt = self._round_rtt_sum / self._round_done
        if round_rtt < self._ss_min_rtt:
            self._ss_min_rtt, self._ss_min_rtt_count = round_rtt, self._round_done
        rate = self._round_done / span
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
            self._probe_settled_at = now + (self._srtt or 0.0)
            self._probe_rtts = _Moments()
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
