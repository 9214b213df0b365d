"""The pacing gate of one upstream: decides *when* the next attempt may start.

The concurrency limit (:mod:`pacer.control.limit`, :mod:`pacer.service.limiter`) bounds how many
attempts are in flight; the pacing gate bounds how fast they *start*. :class:`Pacer`
is its pure facade (no I/O, no clock of its own, every call takes ``now``, seconds on
a monotonic clock): it is fed what responses say and answers with the earliest time
the next start may happen (:meth:`Pacer.next_start`), which the caller then takes
(:meth:`Pacer.commit`). Its Trio face, which sleeps until a start is allowed, is
:class:`pacer.service.pacing_gate.PacingGate`.

The pace is the tightest of: a pause of the whole upstream and the ramp after it
(:mod:`pacer.control.pauses`); the quotas announced in headers, for requests and
for tokens (:mod:`pacer.control.quota`); and a request rate learned from 429s
(:mod:`pacer.control.rate_learner`), for upstreams that cap the rate without
saying so. Which 429s teach that rate, and whose ``Retry-After`` pauses the whole
upstream, :mod:`pacer.control.attribution` decides from the recent traffic
(:mod:`pacer.control.traffic`); a lone 429 amid successes is that request's retry
delay only, and a 429 with an exhausted quota header is the quota's.

Both paces are token buckets (:mod:`pacer.control.bucket`) holding at most ``burst``
start (one token) of credit, so starts are spread evenly instead of bursting. A
request's token cost is :func:`~pacer.control.tokens.estimate_tokens` of its body,
which is what OpenAI charges against the TPM quota when the request arrives;
``tokens_used`` of responses is counted for status, not refunded.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pacer.control.attribution import AttributionSettings, Cause, RefusalJudge
from pacer.control.bucket import TokenBucket
from pacer.control.pauses import PauseEvent, Pauses, PauseSettings
from pacer.control.quota import HeaderQuotas
from pacer.control.rate_learner import RateChange, RateLearner, RateLearnerSettings
from pacer.control.ratelimit_headers import RateLimitInfo
from pacer.control.traffic import RecentTraffic, TrafficSettings

__all__ = [
    "Cause",
    "Pacer",
    "PacerSettings",
    "PacerStatus",
    "PauseEvent",
    "PauseHook",
    "RateChange",
    "RateHook",
]

# Statuses whose Retry-After pauses the whole upstream.
PAUSE_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class PacerStatus:
    """A snapshot for ``pacer status``.

    ``rate``: the request pace in force now (requests/s, ``None`` if unlimited), the
    tightest of ``learned_rate``, ``header_rate``, the post-pause ramp and a rate
    imposed from outside (a fleet's share);
    ``token_rate``: the token pace from headers (tokens/s) or ``None``;
    ``paused_until``/``resume_at``: the current pause (``None`` when not paused);
    ``requests_left``/``tokens_left``: what the last quota headers leave until their
    reset (``None`` when unknown or reset).
    """

    rate: float | None
    learned_rate: float | None
    header_rate: float | None
    token_rate: float | None
    paused_until: float | None
    resume_at: float | None
    requests_left: float | None
    tokens_left: float | None
    requests_reset_at: float | None
    tokens_reset_at: float | None
    tokens_used: float


E = TypeVar("E")
PauseHook = Callable[[PauseEvent], None]
RateHook = Callable[[RateChange], None]


class _Hooks(Generic[E]):
    """Change-hook plumbing, as :class:`pacer.control.limit.HookList`."""

    def __init__(self) -> None:
        self._hooks: list[Callable[[E], None]] = []

    def subscribe(self, hook: Callable[[E], None]) -> None:
        self._hooks.append(hook)

    def emit(self, event: E | None) -> None:
        if event is None:
            return
        for hook in self._hooks:
            hook(event)


@dataclass(frozen=True, slots=True)
class PacerSettings:
    """Tuning of :class:`Pacer`, one flat set; each part takes its share (and checks
    it). Times in seconds, rates in requests per second.

    Header quotas (:class:`~pacer.control.quota.HeaderQuotas`): ``margin``, the share
    of the announced pace (``remaining / reset``) used; ``default_hold``, how long
    ``remaining=0`` holds when no reset time is given; ``max_reset`` clamps absurd
    resets. The learned rate: :class:`~pacer.control.rate_learner.RateLearnerSettings`.
    Pauses: :class:`~pacer.control.pauses.PauseSettings`. The 429 attribution:
    :class:`~pacer.control.attribution.AttributionSettings` and
    :class:`~pacer.control.traffic.TrafficSettings`. ``busy_fraction`` and
    ``busy_starts`` say when a rate binds, for the learned rate and the ramp alike.
    ``burst``: request credit the pace may hold (1 = strictly evenly spaced).
    ``learn_rate``: False leaves 429s without quota headers to a shared concurrency
    limit (a fleet: a node sees only its share of the load, and cannot tell a rate cap).
    """

    margin: float = 0.9
    backoff: float = 0.93
    decrease_interval: float = 1.0
    increase_interval: float = 1.0
    search_interval: float = 0.5
    increase_step: float = 0.02
    search_growth: float = 0.1
    min_increase: float = 0.001
    busy_fraction: float = 0.8
    busy_starts: int = 5
    min_rate: float = 0.1
    success_window: float = 2.0
    min_success_span: float = 1.0
    concurrency_window: float = 5.0
    concurrency_429s: int = 5
    concurrency_429_ratio: float = 1.0
    proof_successes: int = 2
    concurrency_margin: float = 0.1
    concurrency_slack: int = 0
    rate_evidence: int = 2
    rate_evidence_window: float = 10.0
    settle_share: float = 1.5
    resume_jitter: float = 0.1
    max_resume_jitter: float = 5.0
    ramp_step: float = 0.5
    ramp_start: float = 1.0
    ramp_min_rate: float = 1.0
    ramp_max_stages: int = 12
    coalesce: float = 1.0
    max_pause: float = 3600.0
    max_reset: float = 86400.0
    default_hold: float = 1.0
    burst: float = 1.0
    learn_rate: bool = True

    def __post_init__(self) -> None:
        if self.burst < 1.0:
            raise ValueError("burst must be >= 1")
        self.quotas()
        self.learner()
        self.pauses()
        self.traffic()
        self.attribution()

    def quotas(self) -> HeaderQuotas:
        return HeaderQuotas(margin=self.margin, default_hold=self.default_hold,
                            max_reset=self.max_reset)

    def learner(self) -> RateLearnerSettings:
        return RateLearnerSettings(
            backoff=self.backoff, decrease_interval=self.decrease_interval,
            increase_interval=self.increase_interval, search_interval=self.search_interval,
            increase_step=self.increase_step,
            search_growth=self.search_growth, min_increase=self.min_increase,
            busy_fraction=self.busy_fraction, busy_starts=self.busy_starts,
            min_rate=self.min_rate)

    def pauses(self) -> PauseSettings:
        return PauseSettings(
            resume_jitter=self.resume_jitter, max_resume_jitter=self.max_resume_jitter,
            ramp_step=self.ramp_step, ramp_start=self.ramp_start,
            ramp_min_rate=self.ramp_min_rate, ramp_max_stages=self.ramp_max_stages,
            busy_fraction=self.busy_fraction, busy_starts=self.busy_starts,
            coalesce=self.coalesce, max_pause=self.max_pause)

    def traffic(self) -> TrafficSettings:
        return TrafficSettings(
            success_window=self.success_window, min_success_span=self.min_success_span,
            concurrency_window=self.concurrency_window,
            proof_successes=self.proof_successes)

    def attribution(self) -> AttributionSettings:
        return AttributionSettings(
            concurrency_429s=self.concurrency_429s,
            concurrency_429_ratio=self.concurrency_429_ratio,
            concurrency_margin=self.concurrency_margin,
            concurrency_slack=self.concurrency_slack, rate_evidence=self.rate_evidence,
            rate_evidence_window=self.rate_evidence_window, settle_share=self.settle_share)


class Pacer:
    """The pure pacing gate of one upstream (see the module docstring).

    Every method takes ``now``, seconds on the caller's monotonic clock, which must
    not go backwards between calls.
    """

    def __init__(self, settings: PacerSettings | None = None,
                 rng: random.Random | None = None) -> None:
        s = settings if settings is not None else PacerSettings()
        self._traffic = RecentTraffic(s.traffic())
        self._judge = RefusalJudge(self._traffic, s.attribution())
        self._learner = RateLearner(s.learner())
        self._pauses = Pauses(s.pauses(), rng)
        self._quotas = s.quotas()
        self._settings = s
        self._req_bucket = TokenBucket(s.burst)
        self._tok_bucket = TokenBucket(1.0)
        self._imposed: float | None = None  # a rate set from outside (a fleet's share)
        self._last_held = -math.inf  # the last start the pace held back
        self._last_sync = -math.inf
        self._tokens_used = 0.0
        self._pause_hooks: _Hooks[PauseEvent] = _Hooks()
        self._rate_hooks: _Hooks[RateChange] = _Hooks()

    @property
    def settings(self) -> PacerSettings:
        return self._settings

    @settings.setter
    def settings(self, s: PacerSettings) -> None:
        """New tuning for every part (what each has learned stays)."""
        self._settings = s
        self._traffic.settings = s.traffic()
        self._judge.settings = s.attribution()
        self._learner.settings = s.learner()
        self._pauses.settings = s.pauses()
        fresh = s.quotas()
        self._quotas.margin = fresh.margin
        self._quotas.default_hold = fresh.default_hold
        self._quotas.max_reset = fresh.max_reset

    # ---- hooks

    def subscribe_pause(self, hook: PauseHook) -> None:
        """Call ``hook`` with a :class:`PauseEvent` for every (new) pause."""
        self._pause_hooks.subscribe(hook)

    def subscribe_rate(self, hook: RateHook) -> None:
        """Call ``hook`` with a :class:`RateChange` for every change of the learned rate."""
        self._rate_hooks.subscribe(hook)

    def resume_rate(self, now: float, rate: float) -> None:
        """Start from a request rate learned before (a restart)."""
        self._learner.resume(now, rate)
        self._set_rates(now)

    def impose_rate(self, now: float, rate: float | None) -> None:
        """Never pace faster than ``rate`` (requests/s), a rate set from outside: a
        fleet's share of the rate it learned as a whole; ``None`` lifts it."""
        self._sync(now)
        self._imposed = rate
        self._set_rates(now)

    def share_quota(self, now: float, share: float) -> None:
        """Spend only ``share`` (in (0, 1]) of every quota announced in headers, of
        its remaining and of its pace: a fleet node's part of a quota the whole fleet
        reads (every node sees the fleet-wide ``remaining``); 1 is all of it."""
        if not (math.isfinite(share) and 0.0 < share <= 1.0):
            raise ValueError(f"a quota share must lie in (0, 1], got {share!r}")
        self._sync(now)
        self._quotas.share = share
        self._set_rates(now)

    @property
    def quota_share(self) -> float:
        return self._quotas.share

    # ---- introspection

    @property
    def learned_rate(self) -> float | None:
        return self._learner.rate

    @property
    def paused_until(self) -> float | None:
        """The end of the last pause asked for (``None`` if there never was one)."""
        until = self._pauses.paused_until
        return None if until == -math.inf else until

    def paused(self, now: float) -> bool:
        return self._pauses.paused(now)

    def status(self, now: float) -> PacerStatus:
        self._sync(now)
        req, tok = self._quotas.requests, self._quotas.tokens
        paused = self._pauses.paused(now)
        return PacerStatus(
            rate=self._req_bucket.rate,
            learned_rate=self._learner.rate,
            header_rate=req.rate if req is not None else None,
            token_rate=self._tok_bucket.rate,
            paused_until=self._pauses.paused_until if paused else None,
            resume_at=self._pauses.resume_at if paused else None,
            requests_left=req.left() if req is not None else None,
            tokens_left=tok.left() if tok is not None else None,
            requests_reset_at=req.reset_at if req is not None else None,
            tokens_reset_at=tok.reset_at if tok is not None else None,
            tokens_used=self._tokens_used,
        )

    # ---- time

    def _boundaries(self) -> list[float]:
        """Times at which a constraint lapses (it only ever loosens then)."""
        stage_end = self._pauses.stage_end
        times = [] if stage_end is None else [stage_end]
        times.extend(self._quotas.resets())
        return times

    def _request_rate_at(self, t: float) -> float | None:
        rates = [r for r in (self._learner.rate, self._quotas.request_rate(t),
                             self._pauses.ramp_rate(t), self._imposed) if r is not None]
        return min(rates) if rates else None

    def _set_rates(self, t: float) -> None:
        self._req_bucket.set_rate(t, self._request_rate_at(t))
        self._tok_bucket.set_rate(t, self._quotas.token_rate(t))

    def _sync(self, now: float) -> None:
        """Bring the state to ``now``: lapse what has expired (refilling the buckets at
        the rate in force before each change) and probe the learned rate upward."""
        if now < self._last_sync:
            now = self._last_sync
        cursor = self._last_sync
        while True:
            due = [b for b in self._boundaries() if cursor < b <= now]
            if not due:
                break
            b = min(due)
            self._req_bucket.advance(b)
            self._tok_bucket.advance(b)
            if b == self._pauses.stage_end:
                self._pauses.next_stage()
            self._set_rates(b)
            cursor = b
        self._quotas.lapse(now)
        self._rate_hooks.emit(self._learner.maybe_increase(now, self._pauses.paused(now)))
        self._set_rates(now)
        self._last_sync = now

    # ---- starting

    def next_start(self, now: float, tokens: float = 0.0) -> float:
        """The earliest time (>= ``now``) a start costing ``tokens`` may happen.

        Exact unless a constraint lapses on the way (a quota reset, the end of the
        ramp); then it returns that time, a lower bound at which to ask again
        (:class:`PacingGate` does).
        """
        self._sync(now)
        t = self._quotas.blocked_until(max(now, self._pauses.resume_at), tokens)
        changes = [b for b in self._boundaries() if now < b]
        if any(b <= t for b in changes) and t > now:
            return t  # the state changes before t: ask again then
        candidate = max(self._req_bucket.earliest(t, 1.0),
                        self._tok_bucket.earliest(t, tokens))
        sooner = [b for b in changes if t < b < candidate]
        return min(sooner) if sooner else candidate

    def commit(self, now: float, tokens: float = 0.0, *, held: bool | None = None) -> None:
        """Take a start at ``now`` costing ``tokens`` (whether or not it was allowed:
        a premature start just puts the pace into debt). ``held``: whether the pace
        kept this start waiting (:class:`PacingGate` says); when told, the learned
        rate grows only over intervals in which it held most starts (it binds),
        not merely ones in which most of it was used (something else may bind)."""
        self._sync(now)
        tokens = max(0.0, tokens)
        self._req_bucket.take(now, 1.0)
        self._tok_bucket.take(now, tokens)
        self._quotas.take(tokens)
        self._learner.on_start(held)
        if held:
            self._last_held = now
        self._pauses.on_start()
        self._traffic.on_start(now)

    # ---- learning

    def on_response(self, now: float, info: RateLimitInfo, status: int | None,
                    tokens_used: float | None = None, *,
                    inflight: int | None = None,
                    started: float | None = None,
                    limit_changed_at: float | None = None,
                    held: bool = False) -> Cause | None:
        """Learn from one finished attempt.

        ``info``: its parsed rate-limit headers (empty when there was no response);
        ``status``: its HTTP status (``None``: no response); ``tokens_used``: the tokens
        the response reports (counted only). To tell a concurrency cap from a rate cap
        (:mod:`pacer.control.attribution`): ``inflight``, the attempts in flight with
        it, itself included (for a success, as many as when it started; for a 429, at
        least as many as when it ended); ``started``, when it started (``None``: now);
        ``limit_changed_at``, when the caller's concurrency limit last moved
        (``None``: never, or there is no adaptive limit);
        ``held``, whether the pace kept it waiting before it started (then the pace,
        not the concurrency limit, was what bound).
        A Retry-After on a 503, or on a 429 whose attribution says it binds the whole
        upstream, pauses it (:meth:`pause`).

        For a 429, returns what it was put down to: ``"quota"`` (an exhausted quota in
        its headers), ``"concurrency"`` (left to the concurrency limit) or ``"rate"``
        (the learned rate); ``None`` for any other status.
        """
        self._sync(now)
        if tokens_used is not None and math.isfinite(tokens_used) and tokens_used > 0:
            self._tokens_used += tokens_used
        self._quotas.update(now, info)
        if status is not None and 200 <= status < 300:
            self._traffic.on_success(now, inflight, started)
            if (self._learner.rate is None and self.settings.learn_rate
                    and self._judge.confirmed(now, inflight)):
                self._rate_hooks.emit(self._learner.on_rate_limited(
                    now, None, self._traffic.success_rate(now)))
        if status == 429:
            self._traffic.on_refusal(now)
            self._learner.on_refusal()  # whatever it is put down to: no increase now
        self._traffic.prune(now)
        cause: Cause | None = None
        hold = status in PAUSE_STATUSES  # whether its Retry-After holds every start
        if status == 429:
            if any(q is not None and q.exhausted for q in (info.requests, info.tokens)):
                cause = "quota"  # the quota window holds until its reset
            else:
                verdict = self._judge.judge(
                    now, inflight, started, limit_changed_at,
                    rate_known=self._learner.rate is not None,
                    pace_bound=held or self._binding_at(now if started is None else started))
                cause = verdict.cause
                if cause == "rate" and self.settings.learn_rate:
                    self._rate_hooks.emit(self._learner.on_rate_limited(
                        now, started, self._traffic.success_rate(now)))
                # A concurrency 429 is the retry delay of that request only; so is a
                # lone refusal amid successes, which lowers the learned rate.
                hold = verdict.hold
        if hold and info.retry_after is not None and info.retry_after > 0:
            self.pause(now, info.retry_after, "retry_after" if status == 429 else "unavailable")
        self._set_rates(now)
        return cause

    def _binding_at(self, started: float) -> bool:
        """Whether the pace held starts back around ``started`` (the last start it
        held was at most one start's time before)."""
        rate = self._req_bucket.rate
        return rate is not None and self._last_held >= started - 1.0 / rate

    # ---- pauses

    def pause(self, now: float, seconds: float, cause: str) -> PauseEvent | None:
        """Pause the whole upstream for ``seconds`` from ``now``.

        Never shortens a pause already in force. A pause that only moves the end of an
        ongoing one later by up to ``coalesce`` seconds extends it silently (returns
        ``None``); otherwise the new pause is announced to the hooks and returned.
        """
        self._sync(now)
        # Before anything succeeded, half the pace of the starts stands in.
        pace = self._traffic.success_rate(now) or 0.5 * self._traffic.start_rate(now)
        paused = self._pauses.pause(now, seconds, cause, pace)
        if paused is None:
            return None
        # Resume without a burst: one start's worth of credit at the resume, then the
        # pace, under the ramp.
        self._req_bucket.restart(paused.resume_at, 1.0)
        self._tok_bucket.restart(paused.resume_at, 1.0)
        self._set_rates(now)
        self._pause_hooks.emit(paused.event)
        return paused.event
