"""The pacing gate of one upstream: decides *when* the next attempt may start.

The concurrency limit (:mod:`pacer.control.limit`, :mod:`pacer.service.limiter`) bounds how many
attempts are in flight; this module bounds how fast they *start*.

:class:`Pacer` is pure: no I/O, no clock of its own, every call takes ``now``
(seconds on a monotonic clock). It is fed what responses say and answers with the
earliest time the next start may happen (:meth:`Pacer.next_start`), which the caller
then takes (:meth:`Pacer.commit`). Its single-purpose parts live in their own modules:
the token buckets (:mod:`pacer.control.bucket`), the header quota windows
(:mod:`pacer.control.quota`) and the token estimates (:mod:`pacer.control.tokens`);
its Trio face, which sleeps until a start is allowed, is
:class:`pacer.service.pacing_gate.PacingGate`.

The pace is the tightest of these constraints:

1. **Pauses.** A ``Retry-After`` on a 503, or on a 429 that says the quota is spent
   (an exhausted quota header, a storm or flood of 429s, or one with nothing to go by:
   point 4), or an explicit :meth:`Pacer.pause`, stops the *whole* upstream until
   then. A lone 429 amid successes does not: it is that request's retry delay, which
   the sender honours. A later, shorter Retry-After never shortens a pause; 429s that
   only nudge the end of an ongoing pause (by up to ``coalesce`` s) extend it silently,
   so a storm is one pause and one :class:`PauseEvent`. The resume is jittered
   (uniform in ``[until, until + min(max_resume_jitter, resume_jitter × duration)]``)
   and gradual: the pace buckets restart with one start's worth of credit, and a
   slow-start ramp caps the pace, starting at the success rate before the pause and
   doubling every stage (``ramp_step`` s, or ``busy_starts`` starts) while it binds.
2. **Quotas from headers**, for requests and for tokens. A response saying
   ``remaining=R, reset=T`` allows at most R more starts (R tokens) before ``now + T``,
   spread evenly at ``margin × R / T``; with ``remaining=0`` nothing starts until the
   reset. Each response replaces the previous window; a window that has reset lapses.
   (For a quota that refills continuously, as OpenAI's, Anthropic's and the mock's
   do, ``reset`` is the time until full, and this rule settles with the quota about
   half full and the pace equal to the refill rate.)
3. **A request rate learned from 429s**, for upstreams that cap the rate without
   saying so. There is none until 429s that neither a quota header (an exhausted
   ``remaining``) nor concurrency (point 4) explains. Then it is set to the recent
   success rate × ``backoff`` and grows ×(1 + ``search_growth``) per clean interval (a
   quick search, in case that success rate was measured too early); from the next
   decrease on, each such 429 multiplies it by ``backoff`` (from the success rate if
   that is lower, by at most ``backoff²`` at once; at most one decrease per
   ``decrease_interval``, unless the 429's attempt started after the last decrease,
   at the rate set then: new evidence), and each clean interval (no 429 at all) in
   which the rate was binding (``busy_fraction`` of it used, and, when the caller
   says which starts the pace held back as :class:`PacingGate` does, that share of
   the starts held: something else, such as the concurrency limit, may bind instead)
   over at least ``increase_interval`` s and ``busy_starts`` starts adds
   ``increase_step`` × the rate set at the last decrease.
4. **Rate cap or concurrency cap?** The concurrency limit (AIMD) finds a concurrency
   cap by probing: it raises its limit, gets a 429 at once, and comes back down. Such
   429s are the concurrency limit's, and so is any 429 this module cannot pin on a
   rate. In-flight counts are blurred by answers in transit (several, for a busy
   client), so one 429 at a concurrency that succeeded a moment ago proves nothing.
   :meth:`Pacer.on_response` takes, for each attempt, ``inflight`` (in flight with it),
   ``started``, ``limit_changed_at`` (when the concurrency limit last moved) and
   ``held`` (the pace kept it waiting). A 429 is **evidence of a rate cap** when it
   came back

   - *well below* what just succeeded: at most ``proven - max(concurrency_slack,
     concurrency_margin × proven)`` in flight, where ``proven`` is the
     ``proof_successes``-th highest ``inflight`` of the successes sent since the last
     evidence (after it the capacity may have fallen: a fallen capacity is found by
     the concurrency limit, and gives one such 429, not a series); or
   - *long after the limit last moved*: its attempt started at least ``settle_share``
     × the median success time after the concurrency limit last changed (over a
     concurrency cap, 429s come at once after a rise, and each lowers the limit
     again until none comes; over a rate cap, once the upstream's burst is spent).

   ``rate_evidence`` such 429s within ``rate_evidence_window`` s (each after the
   previous one) learn a rate (point 3); until then they are left to the concurrency
   limit. Once a rate is known, a 429 is put down to it when it is evidence, or when
   the pace held its attempt (the limit did not bind then). Regardless of that, a 429
   is a rate signal, and its Retry-After pauses the upstream, when nothing else was
   in flight (``inflight <= 1``), when more came in a row than were in flight (a
   storm), when 429s outnumber successes (more than ``max(concurrency_429s,
   concurrency_429_ratio × successes)`` in the last ``success_window`` s: a flood), when
   nothing succeeded in the last ``concurrency_window`` s, or when ``inflight`` is
   not given.

Both paces are token buckets holding at most ``burst`` start (one token) of credit,
so starts are spread evenly instead of bursting; a start that costs more than the
credit puts the bucket into debt that later starts wait out. A request's token cost
is :func:`estimate_tokens` of its body (``max_tokens`` plus prompt characters / 4),
which is what OpenAI charges against the TPM quota when the request arrives;
``tokens_used`` of responses is counted for status, not refunded.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from pacer.control.bucket import TokenBucket
from pacer.control.quota import QuotaWindow, quota_window
from pacer.control.ratelimit_headers import Quota, RateLimitInfo

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

_EPS = 1e-9
# Statuses whose Retry-After pauses the whole upstream.
PAUSE_STATUSES = frozenset({429, 503})


# ------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class PauseEvent:
    """One pause of the whole upstream (log it as ``upstream.paused``).

    ``duration`` is the pause asked for (seconds), ``until`` when it ends (the
    caller's monotonic clock), ``resume_at`` when starts resume (``until`` plus the
    jitter), ``at`` when it was decided.
    """

    cause: str
    duration: float
    until: float
    resume_at: float
    at: float


@dataclass(frozen=True, slots=True)
class RateChange:
    """One change of the request rate learned from 429s (log it as ``rate.changed``).

    Rates are in requests per second; ``None`` means no learned limit. ``reason`` is
    ``rate_limited`` (a decrease after a 429) or ``probe`` (an additive increase).
    """

    old_rate: float | None
    new_rate: float | None
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class PacerStatus:
    """A snapshot for ``pacer status``.

    ``rate``: the request pace in force now (requests/s, ``None`` if unlimited), the
    tightest of ``learned_rate``, ``header_rate`` and the post-pause ramp;
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
Cause = Literal["quota", "concurrency", "rate"]
PauseHook = Callable[[PauseEvent], None]
RateHook = Callable[[RateChange], None]


class _Hooks(Generic[E]):
    """Change-hook plumbing, as :class:`pacer.control.limit.HookList`."""

    def __init__(self) -> None:
        self._hooks: list[Callable[[E], None]] = []

    def subscribe(self, hook: Callable[[E], None]) -> None:
        self._hooks.append(hook)

    def emit(self, event: E) -> None:
        for hook in self._hooks:
            hook(event)


# ---------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class PacerSettings:
    """Tuning of :class:`Pacer`; times in seconds, rates in requests per second.

    ``margin``: share of the header-announced pace (``remaining / reset``) used.
    ``backoff``: multiplicative decrease of the learned rate on a 429.
    ``decrease_interval``: at most one decrease per this many seconds (sooner for a
    429 to an attempt started after the last decrease).
    ``increase_interval``/``increase_step``: every clean, busy interval the learned
    rate grows by ``increase_step`` × the rate set at the last decrease (at least
    ``min_increase``). ``busy_fraction``: share of the rate that must have been used
    in the interval for it to count as busy (and share of the starts the pace held,
    when the caller tells). An interval (and a ramp stage) lasts at
    least long enough to expect ``busy_starts`` starts at its rate.
    ``search_growth``: until its second decrease, the learned rate grows by this share
    per clean, busy interval instead (a quick search from the first estimate).
    ``min_rate``: the learned rate never goes below this.
    ``success_window``: the window of the success (and start) rate that decreases and
    the ramp start from, measured since the first start but over at least
    ``min_success_span`` seconds (paused time counts: a quota refills meanwhile).
    ``concurrency_window``: how long a success at some concurrency counts as proof
    that the upstream serves that concurrency.
    ``concurrency_429s``/``concurrency_429_ratio``: 429s are left to the concurrency
    limit only while they are rare: at most ``max(concurrency_429s,
    concurrency_429_ratio × successes)`` in the last ``success_window``, and no more
    in a row than ``max(concurrency_429s, inflight)``.
    ``proof_successes``: a concurrency counts as proven once this many successes ran
    at it (one may be blurred). ``concurrency_margin``/``concurrency_slack``: how far
    below the proven concurrency a 429 must come to be evidence of a rate cap
    (``max(slack, margin × proven)``; in-flight counts of a busy client are blurred
    by the answers in transit). ``settle_share``: a 429 whose attempt started this
    share of the median success time after the concurrency limit last moved is
    evidence too. ``rate_evidence``: how many pieces of evidence within
    ``rate_evidence_window`` seconds learn a rate.
    ``resume_jitter``/``max_resume_jitter``: a pause of D seconds resumes uniformly in
    ``[until, until + min(max_resume_jitter, resume_jitter × D)]``.
    ``ramp_step``/``ramp_start``/``ramp_min_rate``/``ramp_max_stages``: after a resume
    the pace is also capped by a slow-start ramp that begins at ``max(ramp_min_rate,
    ramp_start × success rate before the pause)`` (half the start rate when nothing
    succeeded yet) and doubles every ``ramp_step`` seconds (or ``busy_starts`` starts)
    as long as it was binding (``busy_fraction`` of it used), at most
    ``ramp_max_stages`` times; it lapses at the first stage that was not binding.
    ``coalesce``: a Retry-After that moves the end of an ongoing pause later by at most
    this many seconds extends it silently (a storm is one pause).
    ``max_pause``/``max_reset``: clamp absurd Retry-After and reset values.
    ``default_hold``: how long ``remaining=0`` holds when no reset time is given.
    ``burst``: request credit the pace may hold (1 = strictly evenly spaced).
    """

    margin: float = 0.9
    backoff: float = 0.9
    decrease_interval: float = 1.0
    increase_interval: float = 1.0
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
    concurrency_margin: float = 0.5
    concurrency_slack: int = 1
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
    # fleet: False leaves 429s without quota headers to a shared concurrency limit
    # (a node of a fleet sees only its share of the load: it cannot tell a rate cap).
    learn_rate: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.margin <= 1.0:
            raise ValueError("margin must be in (0, 1]")
        if not 0.0 < self.backoff < 1.0:
            raise ValueError("backoff must be in (0, 1)")
        if not 0.0 <= self.resume_jitter <= 1.0:
            raise ValueError("resume_jitter must be in [0, 1]")
        if not 0.0 <= self.busy_fraction <= 1.0:
            raise ValueError("busy_fraction must be in [0, 1]")
        if self.busy_starts < 1:
            raise ValueError("busy_starts must be >= 1")
        if self.proof_successes < 1 or self.rate_evidence < 1:
            raise ValueError("proof_successes and rate_evidence must be >= 1")
        if self.ramp_max_stages < 0:
            raise ValueError("ramp_max_stages must be >= 0")
        if self.burst < 1.0:
            raise ValueError("burst must be >= 1")
        positive = ("decrease_interval", "increase_interval", "min_rate", "success_window",
                    "min_success_span", "concurrency_window", "rate_evidence_window",
                    "ramp_min_rate", "ramp_step",
                    "min_rate",
                    "max_pause", "max_reset", "default_hold")
        for name in positive:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        non_negative = ("increase_step", "min_increase", "max_resume_jitter", "ramp_start",
                        "concurrency_429s", "concurrency_429_ratio", "concurrency_margin",
                        "concurrency_slack", "settle_share",
                        "coalesce", "search_growth")
        for name in non_negative:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What a 429 was put down to; ``evidence``: it is new evidence of a rate cap;
    ``hold``: its Retry-After holds every start (a pause)."""

    cause: Cause
    evidence: bool = False
    hold: bool = False


# -------------------------------------------------------------------- the core


class Pacer:
    """The pure pacing core of one upstream (see the module docstring).

    Every method takes ``now``, seconds on the caller's monotonic clock, which must
    not go backwards between calls.
    """

    def __init__(self, settings: PacerSettings | None = None,
                 rng: random.Random | None = None) -> None:
        self.settings = settings if settings is not None else PacerSettings()
        self._rng = rng if rng is not None else random.Random()
        s = self.settings
        self._req_bucket = TokenBucket(s.burst)
        self._tok_bucket = TokenBucket(1.0)
        self._req_window: QuotaWindow | None = None
        self._tok_window: QuotaWindow | None = None
        self._learned: float | None = None
        self._imposed: float | None = None  # a rate set from outside (a fleet's share)
        self._learned_base = 0.0  # the rate set at the last decrease
        self._searching = False  # growing multiplicatively until the second decrease
        self._last_decrease = -math.inf
        self._ai_mark: float | None = None
        self._ai_starts = 0
        self._ai_told = 0  # starts whose caller said whether the pace held them
        self._ai_held = 0  # ... of which the pace held
        self._ai_clean = True
        self._paused_until = -math.inf
        self._resume_at = -math.inf
        self._ramp_rate: float | None = None  # the post-pause ramp's current stage
        self._ramp_next = math.inf  # the end of that stage
        self._ramp_starts = 0  # starts during that stage
        self._ramp_stage = 0
        # (end, inflight, start) of each success.
        self._successes: deque[tuple[float, int | None, float]] = deque()
        self._evidence: deque[float] = deque()  # times of 429s evidencing a rate cap
        self._last_held = -math.inf  # the last start the pace held back
        self._last_evidence = -math.inf
        self._run_429s = 0  # 429s since the last success
        self._starts: deque[float] = deque()
        self._rejections: deque[float] = deque()  # times of 429s
        self._first_start: float | None = None
        self._last_sync = -math.inf
        self._tokens_used = 0.0
        self._pause_hooks: _Hooks[PauseEvent] = _Hooks()
        self._rate_hooks: _Hooks[RateChange] = _Hooks()

    # ---- hooks

    def subscribe_pause(self, hook: PauseHook) -> None:
        """Call ``hook`` with a :class:`PauseEvent` for every (new) pause."""
        self._pause_hooks.subscribe(hook)

    def subscribe_rate(self, hook: RateHook) -> None:
        """Call ``hook`` with a :class:`RateChange` for every change of the learned rate."""
        self._rate_hooks.subscribe(hook)

    def resume_rate(self, now: float, rate: float) -> None:
        """Start from a request rate learned before (a restart). It is searched
        upward again, as a first estimate is, in case the capacity rose meanwhile."""
        rate = max(self.settings.min_rate, rate)
        self._learned = self._learned_base = rate
        self._searching = True
        self._ai_mark = now
        self._set_rates(now)

    def impose_rate(self, now: float, rate: float | None) -> None:
        """Never pace faster than ``rate`` (requests/s), a rate set from outside: a
        fleet's share of the rate it learned as a whole; ``None`` lifts it."""
        self._sync(now)
        self._imposed = rate
        self._set_rates(now)

    # ---- introspection

    @property
    def learned_rate(self) -> float | None:
        return self._learned

    @property
    def paused_until(self) -> float | None:
        """The end of the last pause asked for (``None`` if there never was one)."""
        return None if self._paused_until == -math.inf else self._paused_until

    @property
    def resume_at(self) -> float | None:
        """When starts resume after the last pause (jittered; ``None`` if none)."""
        return None if self._resume_at == -math.inf else self._resume_at

    def paused(self, now: float) -> bool:
        return now < self._resume_at

    def rate(self, now: float) -> float | None:
        """The request pace in force at ``now`` (requests/s), ``None`` if unlimited."""
        self._sync(now)
        return self._req_bucket.rate

    def status(self, now: float) -> PacerStatus:
        self._sync(now)
        req, tok = self._req_window, self._tok_window
        return PacerStatus(
            rate=self._req_bucket.rate,
            learned_rate=self._learned,
            header_rate=req.rate if req is not None else None,
            token_rate=self._tok_bucket.rate,
            paused_until=self._paused_until if now < self._resume_at else None,
            resume_at=self._resume_at if now < self._resume_at else None,
            requests_left=req.left() if req is not None else None,
            tokens_left=tok.left() if tok is not None else None,
            requests_reset_at=req.reset_at if req is not None else None,
            tokens_reset_at=tok.reset_at if tok is not None else None,
            tokens_used=self._tokens_used,
        )

    # ---- time

    def _boundaries(self) -> list[float]:
        """Times at which a constraint lapses (it only ever loosens then)."""
        times = [self._ramp_next] if self._ramp_rate is not None else []
        times.extend(w.reset_at for w in (self._req_window, self._tok_window) if w is not None)
        return times

    def _request_rate_at(self, t: float) -> float | None:
        rates: list[float] = []
        if self._learned is not None:
            rates.append(self._learned)
        if self._imposed is not None:
            rates.append(self._imposed)
        w = self._req_window
        if w is not None and w.active(t) and w.rate is not None:
            rates.append(w.rate)
        if self._ramp_rate is not None and t < self._ramp_next:
            rates.append(self._ramp_rate)
        return min(rates) if rates else None

    def _stage_length(self, rate: float) -> float:
        """A ramp stage lasts long enough to expect ``busy_starts`` starts."""
        s = self.settings
        return max(s.ramp_step, s.busy_starts / rate)

    def _next_ramp_stage(self) -> None:
        """At the end of a ramp stage: double if the stage was binding, else end."""
        s = self.settings
        rate = self._ramp_rate
        if rate is None:
            return
        busy = self._ramp_starts >= s.busy_fraction * rate * self._stage_length(rate) - _EPS
        if busy and self._ramp_stage < s.ramp_max_stages:
            self._ramp_rate = rate * 2.0
            self._ramp_stage += 1
            self._ramp_next += self._stage_length(self._ramp_rate)
        else:
            self._ramp_rate = None
            self._ramp_next = math.inf
        self._ramp_starts = 0

    def _token_rate_at(self, t: float) -> float | None:
        w = self._tok_window
        return w.rate if w is not None and w.active(t) else None

    def _set_rates(self, t: float) -> None:
        self._req_bucket.set_rate(t, self._request_rate_at(t))
        self._tok_bucket.set_rate(t, self._token_rate_at(t))

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
            if b == self._ramp_next:
                self._next_ramp_stage()
            self._set_rates(b)
            cursor = b
        if self._req_window is not None and not self._req_window.active(now):
            self._req_window = None
        if self._tok_window is not None and not self._tok_window.active(now):
            self._tok_window = None
        self._maybe_increase(now)
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
        t = max(now, self._resume_at)
        for window, cost in ((self._req_window, 1.0), (self._tok_window, tokens)):
            if window is not None and cost > 0 and window.used + cost > window.remaining + _EPS:
                t = max(t, window.reset_at)
        changes = [b for b in self._boundaries() if now < b]
        if any(b <= t for b in changes) and t > now:
            return t  # the state changes before t: ask again then
        candidate = max(self._req_bucket.earliest(t, 1.0),
                        self._tok_bucket.earliest(t, tokens))
        sooner = [b for b in changes if t < b < candidate]
        return min(sooner) if sooner else candidate

    def delay(self, now: float, tokens: float = 0.0) -> float:
        """Seconds to wait from ``now`` before the next start (0: go now)."""
        return max(0.0, self.next_start(now, tokens) - now)

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
        if self._req_window is not None:
            self._req_window.used += 1.0
        if self._tok_window is not None:
            self._tok_window.used += tokens
        if self._first_start is None:
            self._first_start = now
        self._ai_starts += 1
        if held is not None:
            self._ai_told += 1
            self._ai_held += held
            if held:
                self._last_held = now
        self._ramp_starts += 1
        self._starts.append(now)
        self._prune(now)

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
        (point 4 of the module docstring): ``inflight``, the attempts in flight with it,
        itself included (for a success, as many as when it started; for a 429, at
        least as many as when it ended); ``started``, when it started (``None``: now);
        ``limit_changed_at``, when the caller's concurrency limit last moved
        (``None``: never, or there is no adaptive limit);
        ``held``, whether the pace kept it waiting before it started (then the pace,
        not the concurrency limit, was what bound).
        A Retry-After on a 503, or on a 429 not put down to concurrency, pauses the
        whole upstream (:meth:`pause`); not a lone 429 amid successes, though.

        For a 429, returns what it was put down to: ``"quota"`` (an exhausted quota in
        its headers), ``"concurrency"`` (left to the concurrency limit) or ``"rate"``
        (the learned rate); ``None`` for any other status.
        """
        self._sync(now)
        if tokens_used is not None and math.isfinite(tokens_used) and tokens_used > 0:
            self._tokens_used += tokens_used
        if info.requests is not None and info.requests.remaining is not None:
            self._req_window = self._window(now, info.requests, info.retry_after)
        if info.tokens is not None and info.tokens.remaining is not None:
            self._tok_window = self._window(now, info.tokens, info.retry_after)
        if status is not None and 200 <= status < 300:
            self._successes.append((now, inflight, now if started is None else started))
            self._run_429s = 0
        if status == 429:
            self._rejections.append(now)
            self._run_429s += 1
            self._ai_clean = False  # whatever it is put down to: no increase now
        self._prune(now)
        cause: Cause | None = None
        hold = status in PAUSE_STATUSES  # whether its Retry-After holds every start
        if status == 429:
            if any(q is not None and q.exhausted for q in (info.requests, info.tokens)):
                cause = "quota"  # the quota window holds until its reset
            else:
                verdict = self._judge(now, inflight, started, limit_changed_at, held)
                cause = verdict.cause
                if verdict.evidence:
                    self._evidence.append(now)
                    self._last_evidence = now
                if cause == "rate" and self.settings.learn_rate:
                    self._on_rate_limited(now, started)
                # A concurrency 429 is the retry delay of that request only; so is a
                # lone refusal amid successes, which lowers the learned rate.
                hold = verdict.hold
        if hold and info.retry_after is not None and info.retry_after > 0:
            self.pause(now, info.retry_after, "retry_after" if status == 429 else "unavailable")
        self._set_rates(now)
        return cause

    def _window(self, now: float, q: Quota, retry_after: float | None) -> QuotaWindow | None:
        s = self.settings
        return quota_window(now, q, retry_after, margin=s.margin,
                            default_hold=s.default_hold, max_reset=s.max_reset)

    def _prune(self, now: float) -> None:
        s = self.settings
        horizon = now - max(s.success_window, s.concurrency_window)
        while self._successes and self._successes[0][0] < horizon:
            self._successes.popleft()
        while self._starts and self._starts[0] < now - s.success_window:
            self._starts.popleft()
        while self._rejections and self._rejections[0] < now - s.success_window:
            self._rejections.popleft()
        while self._evidence and self._evidence[0] < now - s.rate_evidence_window:
            self._evidence.popleft()

    def _span(self, now: float) -> float:
        """Seconds of the success window that have passed since the first start."""
        start = now - self.settings.success_window
        if self._first_start is not None:
            start = max(start, self._first_start)
        return max(0.0, now - start)

    def success_rate(self, now: float) -> float:
        """Successes per second over the last ``success_window`` seconds (or since the
        first start, but over at least ``min_success_span`` seconds). Paused time
        counts: a rate-capped upstream refills its quota during a pause."""
        s = self.settings
        count = sum(1 for t, _, _ in self._successes if t >= now - s.success_window)
        return count / max(s.min_success_span, self._span(now))

    def start_rate(self, now: float) -> float:
        """Starts per second, measured as :meth:`success_rate` is."""
        s = self.settings
        count = sum(1 for t in self._starts if t >= now - s.success_window)
        return count / max(s.min_success_span, self._span(now))

    def proven_concurrency(self, now: float, since: float = -math.inf) -> int | None:
        """The concurrency the upstream has recently proved it serves: the
        ``proof_successes``-th highest ``inflight`` among the successes of the last
        ``concurrency_window`` seconds sent after ``since`` (``None`` when there are
        not that many)."""
        s = self.settings
        horizon = now - s.concurrency_window
        values = [n for t, n, begun in self._successes
                  if t >= horizon and n is not None and begun > since]
        if len(values) < s.proof_successes:
            return None
        return heapq.nlargest(s.proof_successes, values)[-1]

    def explained_by_concurrency(self, now: float, inflight: int | None,
                                 started: float | None = None,
                                 limit_changed_at: float | None = None,
                                 held: bool = False) -> bool:
        """Whether a 429 (see :meth:`on_response` for the arguments) would be left to
        the concurrency limit now; this changes nothing."""
        verdict = self._judge(now, inflight, started, limit_changed_at, held, pending=1)
        return verdict.cause == "concurrency"

    def _binding_at(self, started: float) -> bool:
        """Whether the pace held starts back around ``started`` (the last start it
        held was at most one start's time before)."""
        rate = self._req_bucket.rate
        return rate is not None and self._last_held >= started - 1.0 / rate

    def _typical_rtt(self, now: float) -> float:
        """The median duration of the successes of the last ``concurrency_window``
        seconds (infinite when none is known)."""
        horizon = now - self.settings.concurrency_window
        rtts = sorted(t - begun for t, _, begun in self._successes if t >= horizon)
        return rtts[len(rtts) // 2] if rtts else math.inf

    def _judge(self, now: float, inflight: int | None, started: float | None,
               limit_changed_at: float | None, held: bool, pending: int = 0) -> _Verdict:
        """What a 429 is put down to (arguments as :meth:`on_response`). ``pending``:
        429s to count on top of those recorded (1 when asking about one not recorded
        yet)."""
        s = self.settings
        if inflight is None:
            return _Verdict("rate", hold=True)
        if inflight <= 1:
            return _Verdict("rate", hold=True)  # refused with nothing else in flight
        recent = now - s.success_window
        successes = sum(1 for t, _, _ in self._successes if t >= recent)
        rejections = pending + sum(1 for t in self._rejections if t >= recent)
        # Whether its Retry-After binds the whole upstream: a flood (no concurrency
        # probe does that), more refused in a row than in flight, or nothing to go
        # by. That alone is no evidence of a *rate* cap, though: a slow start that
        # overshot a concurrency cap gets such a burst too, and a rate learned from
        # it held the upstream far below its capacity.
        # And it binds the whole upstream only while the upstream serves no one: no
        # success for a typical service time, or twice the refusals in a row that
        # make a storm (a proxy that refuses its sixth concurrent request with
        # "retry-after: 60" keeps serving the other five).
        last_success = max((t for t, _, _ in self._successes), default=-math.inf)
        run = self._run_429s + pending
        starving = (now - last_success > self._typical_rtt(now)
                    or run > 2 * max(s.concurrency_429s, inflight))
        burst = (rejections > max(s.concurrency_429s, s.concurrency_429_ratio * successes)
                 or run > max(s.concurrency_429s, inflight))
        hold = (burst and starving) or not any(
            t >= now - s.concurrency_window for t, _, _ in self._successes)
        # Evidence of a rate cap (point 4 of the module docstring): refused well below
        # the concurrency that successes sent since the last evidence, and since the
        # limit last moved, ran at (before a move, when refusals come a service time
        # late, the in-flight counts of successes include the refused)...
        since = self._last_evidence
        if limit_changed_at is not None:
            since = max(since, limit_changed_at)
        proof = self.proven_concurrency(now, since)
        below = proof is not None and inflight <= proof - max(
            s.concurrency_slack, math.ceil(s.concurrency_margin * proof))
        # ...or sent well after the concurrency limit last moved: over a concurrency
        # cap the refusals come at once after a rise (a probe, or a slow start that
        # went too far), and a limit that has held for a while is not refused at
        # all; over a rate cap they come once the burst the upstream allows is spent.
        # (Not at a new peak, though: a concurrency cap that answers after the
        # service time refuses a probe's extra attempt as late as a rate cap would.)
        at_peak = proof is not None and inflight > proof
        settled = (limit_changed_at is not None and started is not None
                   and started > self._last_evidence and not at_peak
                   and started - limit_changed_at >= s.settle_share * self._typical_rtt(now))
        if self._learned is not None:
            # A rate cap is known: this 429 is its doing if it is evidence as above,
            # or if the pace held the attempt (the concurrency limit did not bind).
            # A lone 429 amid successes does not mean its quota is spent, though: it
            # lowers the rate but holds nothing.
            if below or settled or held or self._binding_at(now if started is None
                                                             else started):
                return _Verdict("rate", evidence=below or settled, hold=hold)
            return _Verdict("concurrency", hold=hold)
        if not (below or settled):
            # A new peak: the concurrency limit's probe (or slow start's overshoot).
            return _Verdict("concurrency", hold=hold)
        # A rate cap, or a capacity that fell (which the concurrency limit finds within
        # a round trip or two): only when it recurs is it a rate.
        evidence = 1 + sum(1 for t in self._evidence if t >= now - s.rate_evidence_window)
        return _Verdict("rate" if evidence >= s.rate_evidence else "concurrency",
                        evidence=True, hold=hold)

    def _on_rate_limited(self, now: float, started: float | None = None) -> None:
        s = self.settings
        self._ai_clean = False
        # One decrease per decrease_interval; sooner only for an attempt sent after
        # the last decrease (at the rate set then: new evidence, as in the AIMD).
        sent_since = started is not None and started > self._last_decrease
        if now - self._last_decrease < s.decrease_interval and not sent_since:
            return
        old = self._learned
        measured = self.success_rate(now)
        if old is None:
            if measured <= 0:
                return  # nothing succeeded yet: nothing to start from
            new = measured * s.backoff
            self._searching = True
        else:
            # The success rate is what the upstream let through: when the learned rate
            # is above it, come down to it (but by at most two backoffs at once).
            new = max(min(old, measured) * s.backoff, old * s.backoff**2)
            self._searching = False
        new = max(s.min_rate, new)
        self._last_decrease = now
        self._learned = new
        self._learned_base = new
        self._ai_mark = now
        self._ai_starts = self._ai_told = self._ai_held = 0
        self._ai_clean = True
        if new != old:
            self._rate_hooks.emit(RateChange(old, new, "rate_limited", now))

    def _maybe_increase(self, now: float) -> None:
        s = self.settings
        if self._learned is None:
            return
        if self._ai_mark is None:
            self._ai_mark = now
        elapsed = now - self._ai_mark
        if elapsed < max(s.increase_interval, s.busy_starts / self._learned):
            return
        busy = self._ai_starts >= s.busy_fraction * self._learned * elapsed - _EPS
        if self._ai_told:
            busy = busy and self._ai_held >= s.busy_fraction * self._ai_told - _EPS
        if self._ai_clean and busy and not self.paused(now):
            old = self._learned
            if self._searching:
                new = old * (1.0 + s.search_growth)
            else:
                new = old + max(s.min_increase, s.increase_step * self._learned_base)
            # Refill the bucket up to now at the old rate before the new one applies.
            self._req_bucket.advance(now)
            self._learned = new
            self._rate_hooks.emit(RateChange(old, new, "probe", now))
        self._ai_mark = now
        self._ai_starts = self._ai_told = self._ai_held = 0
        self._ai_clean = True

    # ---- pauses

    def pause(self, now: float, seconds: float, cause: str) -> PauseEvent | None:
        """Pause the whole upstream for ``seconds`` from ``now``.

        Never shortens a pause already in force. A pause that only moves the end of an
        ongoing one later by up to ``coalesce`` seconds extends it silently (returns
        ``None``); otherwise the new pause is announced to the hooks and returned.
        """
        self._sync(now)
        s = self.settings
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        seconds = min(seconds, s.max_pause)
        until = now + seconds
        if until <= self._paused_until:
            return None
        ongoing = now < self._resume_at
        jitter = self._rng.uniform(0.0, min(s.max_resume_jitter, s.resume_jitter * seconds))
        resume_at = max(self._resume_at, until + jitter)
        silent = ongoing and until - self._paused_until <= s.coalesce
        self._paused_until = until
        self._resume_at = resume_at
        # Resume without a burst: one start's worth of credit at the resume, then the
        # pace, under a slow-start ramp from half the success rate before the pause.
        if not ongoing or self._ramp_rate is None:
            # Before anything succeeded, half the pace of the starts stands in.
            pace = self.success_rate(now) or 0.5 * self.start_rate(now)
            self._ramp_rate = max(s.ramp_min_rate, s.ramp_start * pace)
        self._ramp_next = resume_at + self._stage_length(self._ramp_rate)
        self._ramp_starts = 0
        self._ramp_stage = 0
        self._req_bucket.restart(resume_at, 1.0)
        self._tok_bucket.restart(resume_at, 1.0)
        self._set_rates(now)
        if silent:
            return None
        event = PauseEvent(cause, seconds, until, resume_at, now)
        self._pause_hooks.emit(event)
        return event
