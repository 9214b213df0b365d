"""One upstream API: its HTTP client, limit, limiter, breaker, retries and counters.

``Upstream.send(request)`` runs one request to its final answer: it waits for the
breaker, holds a slot of the limiter for each attempt, classifies the attempt
once (:func:`pacer.control.outcome.classify`, then :func:`~pacer.control.outcome.decide`
with the pacing gate's view of a refusal), feeds the limit and the breaker, and retries
with full-jitter backoff while the outcome is retryable and attempts remain. HTTP
exceptions are translated at the edge (:mod:`pacer.service.http`).
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import structlog
import trio

from pacer.config import UpstreamConfig
from pacer.control.aimd import AimdLimit, AimdSettings
from pacer.control.breaker import Breaker, BreakerSettings, BreakerTransition
from pacer.control.limit import FixedLimit, Limit, LimitChange
from pacer.control.outcome import Decision, Verdict, classify, decide
from pacer.control.pacing import Pacer, PauseEvent, RateChange
from pacer.control.rate_learner import room_for
from pacer.control.ratelimit_headers import RateLimitInfo, parse_rate_limit_headers
from pacer.control.retry import RetryBudget, RetrySettings, backoff_delay
from pacer.control.tokens import estimate_tokens, tokens_used
from pacer.service.http import exchange
from pacer.service.limiter import Limiter
from pacer.service.memory import Learned, discounted
from pacer.service.pacing_gate import PacingGate
from pacer.service.stats import UpstreamStats
from pacer.spool.jobs import Request

log = structlog.get_logger("pacer.service.upstream")

# 429s in a row at min_limit before the breaker opens (reason rate_limited_at_min).
RATE_LIMITED_AT_MIN_TRIP = 5
BREAKER_MAX_COOLDOWN = 5.0
BREAKER_FAILURE_RATE = 0.8


@dataclass(frozen=True, slots=True)
class Answer:
    """The final outcome of one request, as its result line reports it."""

    attempts: int
    status: int | None = None
    body: Any = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


def make_limit(cfg: UpstreamConfig) -> Limit:
    if not cfg.adaptive:
        return FixedLimit(cfg.initial_limit)
    return AimdLimit(AimdSettings(initial_limit=cfg.initial_limit, min_limit=cfg.min_limit,
                                  max_limit=cfg.max_limit))


class Upstream:
    def __init__(self, cfg: UpstreamConfig, client: httpx.AsyncClient, *,
                 limit: Limit | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = trio.current_time,
                 wall_clock: Callable[[], float] = time.time,
                 loop_lag: Callable[[], float] | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.client = client
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.limit = limit or make_limit(cfg)
        self.limiter = Limiter(self.limit, clock, lag=loop_lag)
        self.retry = _retry_settings(cfg)
        self.budget = RetryBudget(self.retry)
        # Cool-downs 1, 1, 2, 4 s (the outage's age), at most 5 s (jittered): an API
        # back from an outage is found within seconds, at one probe per cool-down. The breaker is
        # for an upstream that stopped serving: one that still serves one attempt in
        # five is flaky, and retries (not a stop) serve its requests.
        self.breaker = Breaker(BreakerSettings(max_cooldown=BREAKER_MAX_COOLDOWN,
                                               failure_rate=BREAKER_FAILURE_RATE), rng=self.rng)
        self.stats = UpstreamStats(clock)
        self.limit.subscribe(self._on_limit_change)
        self.breaker.subscribe(self._on_breaker)
        # Called after every attempt with (upstream, seconds, outcome): metrics.
        self.on_attempt: Callable[[str, float, str], None] | None = None
        self._limited_at_min = 0
        # Retries the budget holds back, oldest first. Recovery is shown by the
        # upstream answering, not by a timer: each success lets one go (all of them
        # once the budget allows retries again), and when nothing is in flight that
        # could succeed, one goes anyway and is itself the test (a 1 s outage's last
        # retry waited out retry_max_delay, 16-28 s, with nothing left to succeed).
        self._held: deque[trio.Event] = deque()
        self.pacer = Pacer(rng=self.rng)
        self.gate = PacingGate(self.pacer, clock, wall_clock)
        self.pacer.subscribe_pause(self._on_pause)
        self.pacer.subscribe_rate(self._on_rate)

    # -- hooks: the algorithms stay free of I/O, logging hangs off them ---------

    def _on_limit_change(self, change: LimitChange) -> None:
        log.info("limit.changed", upstream=self.name, old_limit=change.old_limit,
                 new_limit=change.new_limit, reason=change.reason, inflight=change.inflight,
                 rtt=None if change.rtt is None else round(change.rtt, 4))

    def _on_pause(self, e: PauseEvent) -> None:
        self.stats.pauses += 1
        log.warning("upstream.paused", upstream=self.name, cause=e.cause,
                    duration_s=round(e.duration, 3), resume_in_s=round(e.resume_at - e.at, 3))

    def _on_rate(self, c: RateChange) -> None:
        log.info("rate.changed", upstream=self.name, reason=c.reason,
                 old_rate=None if c.old_rate is None else round(c.old_rate, 3),
                 new_rate=None if c.new_rate is None else round(c.new_rate, 3))
        if isinstance(self.limit, AimdLimit) and c.new_rate is not None \
                and self.limit.smoothed_rtt:
            self.limit.make_room(room_for(c.new_rate, self.limit.smoothed_rtt), c.at)

    def _on_breaker(self, t: BreakerTransition) -> None:
        self.stats.breaker_transitions += 1
        if t.to_state == "open":
            self.stats.breaker_openings += 1
        log.warning("breaker.transition", upstream=self.name, **{"from": str(t.from_state)},
                    to=str(t.to_state), reason=t.reason, cooldown_s=round(t.cooldown or 0, 3))

    # -- sending ------------------------------------------------------------------

    async def _wait_for_breaker(self, stop: trio.Event, deadline: float) -> bool:
        """Wait until the breaker admits an attempt; False if ``stop`` or the
        ``deadline`` came first."""
        while not stop.is_set() and self.clock() < deadline:
            if self.breaker.allow(self.clock()):
                return True
            wake = min(deadline, max(self.clock() + 0.01, self.breaker.retry_at(self.clock())))
            with trio.move_on_at(wake):
                await stop.wait()
        return False

    def reconfigure(self, cfg: UpstreamConfig, client: httpx.AsyncClient | None = None) -> None:
        """Take new settings on reload; the learned limit stays (clamped to the new
        bounds). A new ``client`` serves new attempts; attempts in flight finish on
        the old one, which is then left to close by itself."""
        old, self.cfg = self.cfg, cfg
        if client is not None:
            self.client = client
        self.retry = _retry_settings(cfg)
        self.client.timeout = httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout)
        bounds = ("adaptive", "min_limit", "max_limit", "initial_limit")
        if any(getattr(old, k) != getattr(cfg, k) for k in bounds):
            # A new algorithm with the new bounds, starting from what was learned.
            learned = min(max(self.limit.limit, cfg.min_limit), cfg.max_limit)
            self.use_limit(make_limit(replace(cfg, initial_limit=learned)))

    def use_limit(self, limit: Limit) -> None:
        """Follow ``limit`` from now on (a reload's new bounds; fleet: the shared one)."""
        self.limit.unsubscribe(self._on_limit_change)
        self.limit = limit
        limit.subscribe(self._on_limit_change)
        self.limiter.retarget(limit)

    def learned(self, now_wall: float | None = None) -> Learned:
        """What this upstream has learned, for :class:`~pacer.service.memory.LearnedStore`."""
        min_rtt = self.limit.min_rtt if isinstance(self.limit, AimdLimit) else None
        return Learned(limit=self.limit.limit, rate=self.pacer.learned_rate, min_rtt=min_rtt,
                       saved_at=self.wall_clock() if now_wall is None else now_wall)

    def resume(self, learned: Learned | None) -> None:
        """Start from what an earlier run learned (discounted by its age) instead of
        from ``initial_limit``; call before the first request. Only an adaptive
        limit is resumed; a fixed one stays as configured."""
        if learned is None:
            return
        now_wall = self.wall_clock()
        still = discounted(learned, now_wall)
        if still is None:
            return
        if isinstance(self.limit, AimdLimit) and still.limit > self.limit.limit:
            self.limit.resume(still.limit, self.clock(), still.min_rtt)
        if still.rate is not None:
            self.pacer.resume_rate(self.clock(), still.rate)
        log.info("upstream.resumed", upstream=self.name, limit=self.limit.limit,
                 rate=None if still.rate is None else round(still.rate, 3),
                 min_rtt=still.min_rtt, age_s=round(max(0.0, now_wall - learned.saved_at), 1))

    async def send(self, req: Request, stop: trio.Event | None = None) -> Answer | None:
        """Run ``req`` to its final answer; None if ``stop`` is set before that
        (the request is then left unanswered, for the next run).

        At most ``max_attempts`` attempts are sent. A retry the retry budget refuses
        (retries must not amplify an overload) waits instead until a success lets
        it go, or nothing else is in flight, at most ``retry_max_delay``; while
        the breaker is open requests wait without
        attempting, so a short outage fails no job; ``give_up_after`` bounds it all.
        """
        stop = stop if stop is not None else trio.Event()
        sent = 0
        give_up_at = math.inf
        last: _Tried | None = None
        while True:
            if not await self._wait_for_breaker(stop, give_up_at):
                if last is None or stop.is_set():
                    return None
                return self._give_up(req, last, sent)
            admitted = self.stats.breaker_openings
            try:
                tried = await self._attempt(req, stop, admitted)
            except BaseException:
                self.breaker.on_ignore(self.clock())  # give a half-open probe slot back
                raise
            if tried is None:  # stopping: it never went out
                self.breaker.on_ignore(self.clock())
                return None
            if isinstance(tried, _Revoked):
                continue  # the breaker opened while it waited for its turn: ask again
            sent += 1
            last = tried
            decision = tried.decision
            verdict = decision.verdict
            now = self.clock()
            if sent == 1 and self.cfg.give_up_after > 0:
                give_up_at = now + self.cfg.give_up_after
            self.stats.record_attempt(rate_limited=verdict.reason == "rate_limited")
            self._feed_breaker(verdict, tried, now)
            if verdict.ok:
                self.stats.record_done(ok=True)
                return Answer(sent, tried.status, tried.body, _request_id(tried.headers))
            if verdict.failure:
                self.budget.on_failure(tried.started)
            if decision.retry and sent < self.retry.max_attempts and now < give_up_at:
                why = verdict.reason
                held_back = 0.0
                if decision.requeue:
                    # The concurrency cap's refusal while others are served: back to
                    # the queue when the next slot frees (an answer comes back), or
                    # after a plain backoff if none does, whatever Retry-After said
                    # (it was not about the whole upstream).
                    delay = 0.0
                    held_back = backoff_delay(sent, self.retry, self.rng)
                    why = f"{verdict.reason}, concurrency: requeued"
                else:
                    delay = backoff_delay(sent, self.retry, self.rng, tried.info.retry_after)
                    if verdict.failure and not self.budget.try_spend():
                        # Too many failures lately: hold this retry back until the
                        # upstream serves again (a success anywhere lets one go), or
                        # nothing else is in flight, at most the backoff's ceiling,
                        # so retries do not add to an overload but follow a recovery.
                        held_back = self.rng.uniform(0.5, 1.0) * self.retry.max_delay
                        why = f"{verdict.reason}, retry budget exhausted: until a success"
                self.stats.retries += 1
                log.info("request.retry", custom_id=req.custom_id, attempt=sent,
                         delay_s=round(max(delay, held_back), 3), reason=why,
                         status=tried.status)
                with trio.move_on_after(delay):
                    await stop.wait()
                if held_back > delay:
                    await self._until_served(stop, held_back - delay)
                continue
            self._release_if_idle()
            return self._give_up(req, tried, sent)

    async def _until_served(self, stop: trio.Event, seconds: float) -> None:
        """Wait until this held retry is let go (a success, or nothing else in
        flight), ``stop`` is set, or ``seconds`` pass."""
        turn = trio.Event()
        self._held.append(turn)
        self._release_if_idle()
        try:
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:
                    async def wake_on(event: trio.Event) -> None:
                        await event.wait()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(wake_on, stop)
                    nursery.start_soon(wake_on, turn)
        finally:
            if not turn.is_set():
                self._held.remove(turn)

    def _release_held(self, everyone: bool) -> None:
        """Let the oldest held retry go, or all of them."""
        while self._held:
            self._held.popleft().set()
            if not everyone:
                return

    def _release_if_idle(self) -> None:
        """Nothing in flight could bring the success held retries wait for: the
        oldest goes, and its own answer is the evidence."""
        if self.limiter.inflight == 0:
            self._release_held(everyone=False)

    def _give_up(self, req: Request, tried: _Tried, sent: int) -> Answer:
        """The request's final answer is its last error."""
        self.stats.record_done(ok=False)
        code = tried.verdict.reason if tried.status is None else f"http_{tried.status}"
        return Answer(sent, tried.status, tried.body, _request_id(tried.headers),
                      error_code=code, error_message=tried.message or tried.verdict.reason)

    def _feed_breaker(self, verdict: Verdict, tried: _Tried, now: float) -> None:
        """Tell the breaker (and the retry budget) how the attempt went."""
        if verdict.ok:
            self.breaker.on_success(now, tried.started)
            self.budget.on_success(tried.started)
            self._limited_at_min = 0
            self._release_held(everyone=self.budget.can_retry())
            return
        if verdict.failure:
            self.breaker.on_failure(now, verdict.reason, tried.started)
        else:
            self.breaker.on_ignore(now)
        if verdict.stop_upstream:
            self.breaker.trip(now, "auth")
        elif verdict.reason == "rate_limited" and self.limit.limit <= self.cfg.min_limit:
            # 429s even at the lowest concurrency: stop for a while rather than
            # keep knocking (the cool-down is at least what the server asked for).
            self._limited_at_min += 1
            if self._limited_at_min >= RATE_LIMITED_AT_MIN_TRIP:
                self._limited_at_min = 0
                self.breaker.trip(now, "rate_limited_at_min",
                                  min_cooldown=tried.info.retry_after)

    async def _attempt(self, req: Request, stop: trio.Event,
                       admitted: int) -> _Tried | _Revoked | None:
        """One attempt under the limiter and the pacing gate; exceptions become a
        classification here. None when ``stop`` came before anything was sent;
        ``_REVOKED`` when the breaker opened (its opening count is no longer
        ``admitted``) while the attempt waited for a slot and the gate."""
        async with self.limiter.acquire() as slot:
            # The gate sits inside the slot: during a pause, no task that already
            # holds a slot can send.
            held = None if stop.is_set() else await self.gate.wait_unless(
                stop, estimate_tokens(req.body))
            if held is None:
                return None
            # One more scheduling round before the in-flight counts below are read:
            # attempts admitted together (a burst of freed slots) are all counted.
            await trio.lowlevel.cancel_shielded_checkpoint()
            if self.stats.breaker_openings != admitted:
                # Admitted before the breaker opened: going now would make one more
                # probe per waiting request. (The opening voided its admission.)
                return _REVOKED
            slot.start = self.clock()  # the rtt leaves the pacing wait out
            # The limit's concurrency leaves out only tasks the pace holds back (see
            # PacingGate.held_back); the gate's own 429 attribution keeps its count.
            # (fleet: shared_inflight counts the other nodes' attempts too)
            slot.inflight = max(1, self.limiter.shared_inflight - self.gate.held_back)
            gate_inflight = max(1, self.limiter.shared_inflight - self.gate.waiting)
            status, headers, body, failure, message, slot.wire = await exchange(
                self.client, req, self.cfg.timeout)
            info = (parse_rate_limit_headers(headers, self.wall_clock())
                    if headers is not None else RateLimitInfo())
            verdict = classify(status, info, failure)
            # The pacing gate sees a rate-limiting 403 (GitHub's) as the 429 it means.
            refused = verdict.reason == "rate_limited"
            status_for_gate = 429 if refused else status
            # A success proves the upstream served the attempts in flight when it
            # started (later ones may not have arrived yet, e.g. on a new connection);
            # a 429 came with at least those in flight when it ended (they include any
            # sent later that overtook it), and with the bunch that passed the gate
            # with it (slot.inflight: they may reach the upstream first).
            with_it = gate_inflight
            if refused:
                with_it = max(with_it, slot.inflight,
                              self.limiter.shared_inflight - self.gate.waiting)
            cause = self.gate.on_response(info, status_for_gate, tokens_used(body),
                                          inflight=with_it, started=slot.start,
                                          limit_changed_at=getattr(self.limit, "changed_at",
                                                                   None),
                                          held=held)
            decision = decide(verdict, cause, held=held,
                              paused=self.pacer.paused(self.clock()))
            slot.record(decision.limit_outcome, decision.limit_reason)
            if self.on_attempt is not None:
                self.on_attempt(self.name, self.clock() - slot.start, verdict.reason)
            return _Tried(status, headers, body, decision, message, info, slot.start)

class _Revoked:
    """What ``_attempt`` answers when the breaker opened while the attempt waited."""


_REVOKED = _Revoked()


@dataclass(frozen=True, slots=True)
class _Tried:
    """What one attempt brought back."""

    status: int | None
    headers: httpx.Headers | None
    body: Any
    decision: Decision
    message: str | None
    info: RateLimitInfo
    started: float

    @property
    def verdict(self) -> Verdict:
        return self.decision.verdict


def _retry_settings(cfg: UpstreamConfig) -> RetrySettings:
    base = max(cfg.retry_base_delay, 1e-3)
    return RetrySettings(max_attempts=cfg.max_attempts, base_delay=base,
                         max_delay=max(cfg.retry_max_delay, base))


def _request_id(headers: httpx.Headers | None) -> str | None:
    if headers is None:
        return None
    value = headers.get("x-request-id") or headers.get("request-id")
    return str(value) if value else None
