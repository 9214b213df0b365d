"""Whose doing is a 429 without an exhausted quota header: a rate cap or a concurrency
cap? And does its ``Retry-After`` bind the whole upstream?

Pure: every call takes the time. The concurrency limit (AIMD) finds a concurrency
cap by probing: it raises its limit, gets a 429 at once, and comes back down. Such
429s are the concurrency limit's, and so is any 429 that cannot be pinned on a rate.
A concurrency cap C refuses only when C are in service, so its 429s come with more
than C in flight (the caller counts the bunch sent with the attempt, which may
reach the upstream first), and no success ever shows more than C in service at
once. A rate cap refuses at whatever concurrency its bucket runs dry, often below
one it served a moment before (its bucket let a burst through). So a 429 is
**evidence of a rate cap** when it came back

- *at or below* what the upstream proved it serves: at most ``proven -
  max(concurrency_slack, floor(concurrency_margin x proven))`` in flight, where
  ``proven`` is what the successes sent since the last evidence proved
  (:meth:`~pacer.control.traffic.RecentTraffic.proven_concurrency`: no more than
  were in service together, so neither the refusals that come a service time late
  nor the answers on their way back, which were in flight with them, count; the
  margin absorbs what blur is left at high concurrency). After the evidence the
  capacity may have fallen: a fallen capacity is found by the concurrency limit,
  and gives one such 429, not a series; or
- *long after the limit last moved*: its attempt started at least ``settle_share``
  x the median success time after the concurrency limit last changed (over a
  concurrency cap, 429s come at once after a rise, and each lowers the limit
  again until none comes; over a rate cap, once the upstream's burst is spent).

``rate_evidence`` such 429s within ``rate_evidence_window`` s teach a rate; so does
one whose concurrency (or one less) the successes sent after it prove again within
``confirm_rtts`` typical service times (:meth:`RefusalJudge.confirmed`: a capacity
that fell keeps refusing it, a rate cap's burst refills). Until then they are left
to the concurrency limit. Once a rate is known, a 429 is put down
to it when it is evidence, or when the pace bound at its start.

Apart from that, its ``Retry-After`` pauses the whole upstream (``hold``) when
nothing else was in flight, when the in-flight count is unknown, when nothing
succeeded in the last ``concurrency_window`` s, or during a burst of refusals (more
than ``max(concurrency_429s, concurrency_429_ratio x successes)`` in the success
window, or more in a row than were in flight) while the upstream serves no one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

from pacer.control.traffic import RecentTraffic

__all__ = ["Attribution", "AttributionSettings", "Cause", "RefusalJudge"]

Cause = Literal["quota", "concurrency", "rate"]


@dataclass(frozen=True, slots=True)
class AttributionSettings:
    """``concurrency_429s``/``concurrency_429_ratio``: 429s are left to the
    concurrency limit only while they are rare (see the module docstring).
    ``concurrency_margin``/``concurrency_slack``: how far below the proven
    concurrency a 429 must come to be evidence. ``settle_share``: how many median
    success times after the limit last moved a 429 is evidence. ``rate_evidence``:
    how many pieces of evidence within ``rate_evidence_window`` seconds teach a rate."""

    concurrency_429s: int = 5
    concurrency_429_ratio: float = 1.0
    concurrency_margin: float = 0.1
    concurrency_slack: int = 0
    rate_evidence: int = 2
    rate_evidence_window: float = 10.0
    settle_share: float = 1.5
    confirm_rtts: float = 8.0

    def __post_init__(self) -> None:
        if self.rate_evidence < 1:
            raise ValueError("rate_evidence must be >= 1")
        if not (math.isfinite(self.rate_evidence_window) and self.rate_evidence_window > 0):
            raise ValueError("rate_evidence_window must be a finite number > 0, "
                             f"got {self.rate_evidence_window!r}")
        for name in ("concurrency_429s", "concurrency_429_ratio", "concurrency_margin",
                     "concurrency_slack", "settle_share", "confirm_rtts"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Attribution:
    """What a 429 was put down to; ``evidence``: it is new evidence of a rate cap;
    ``hold``: its Retry-After holds every start (a pause)."""

    cause: Cause
    evidence: bool = False
    hold: bool = False


class RefusalJudge:
    """Puts each 429 down to a rate cap or a concurrency cap, remembering the
    evidence of a rate cap it has seen."""

    def __init__(self, traffic: RecentTraffic,
                 settings: AttributionSettings | None = None) -> None:
        self.traffic = traffic
        self.settings = settings if settings is not None else AttributionSettings()
        self._evidence: deque[float] = deque()  # times of 429s evidencing a rate cap
        self._last_evidence = -math.inf
        # The last evidence not yet enough to teach a rate: (when, in flight).
        self._unconfirmed: tuple[float, int] | None = None

    def judge(self, now: float, inflight: int | None, started: float | None,
              limit_changed_at: float | None, *, rate_known: bool,
              pace_bound: bool) -> Attribution:
        """Judge a 429 the traffic has just recorded, and remember it if it is
        evidence. ``inflight``: attempts in flight with it (at least as many as when
        it ended); ``started``: when its attempt started (``None``: now);
        ``limit_changed_at``: when the concurrency limit last moved (``None``: never);
        ``rate_known``: a rate is learned already; ``pace_bound``: the pace held
        its attempt, or held starts back when it started."""
        verdict = self._judge(now, inflight, started, limit_changed_at,
                              rate_known=rate_known, pace_bound=pace_bound)
        if verdict.evidence:
            self._evidence.append(now)
            self._last_evidence = now
            self._unconfirmed = (None if verdict.cause == "rate" or inflight is None
                                 else (now, inflight))
        return verdict

    def confirmed(self, now: float, inflight: int | None) -> bool:
        """After a success of ``inflight``: does it confirm the last evidence that was
        not enough by itself? A capacity that fell refuses that concurrency from then
        on; a rate cap serves it again as soon as its burst refills. So once the
        successes sent since prove that concurrency again (and the evidence is still
        fresh: ``confirm_rtts`` typical service times), it was a rate cap, without
        waiting for a second refusal (which, at a limit the refusals keep low, took
        7 s over a rate cap of 20/s with a burst of 2)."""
        pending = self._unconfirmed
        if pending is None or inflight is None:
            return False
        at, refused_at = pending
        # One below it, too: the refusal cut the limit, and at a few in flight a
        # capacity that fell by one is as well served by a rate just under it.
        enough = max(2, refused_at - 1)
        if inflight < enough:
            return False
        if now - at > min(self.settings.rate_evidence_window,
                          self.settings.confirm_rtts * self.traffic.typical_rtt(now)):
            # Long enough for a capacity that fell to have risen again.
            self._unconfirmed = None
            return False
        proof = self.traffic.proven_concurrency(now, at)
        if proof is None or proof < enough:
            return False
        self._unconfirmed = None
        return True

    def _judge(self, now: float, inflight: int | None, started: float | None,
               limit_changed_at: float | None, *, rate_known: bool,
               pace_bound: bool) -> Attribution:
        s = self.settings
        traffic = self.traffic
        while self._evidence and self._evidence[0] < now - s.rate_evidence_window:
            self._evidence.popleft()
        if inflight is None or inflight <= 1:
            # Nothing to go by, or refused with nothing else in flight.
            return Attribution("rate", hold=True)
        recent = now - traffic.settings.success_window
        successes = traffic.successes_since(recent)
        refusals = traffic.refusals_since(recent)
        # Whether its Retry-After binds the whole upstream: a flood (no concurrency
        # probe does that), more refused in a row than in flight, or nothing to go
        # by. That alone is no evidence of a *rate* cap, though: a slow start that
        # overshot a concurrency cap gets such a burst too, and a rate learned from
        # it held the upstream far below its capacity.
        # And it binds the whole upstream only while the upstream serves no one: no
        # success for a typical service time, or twice the refusals in a row that
        # make a storm (a proxy that refuses its sixth concurrent request with
        # "retry-after: 60" keeps serving the other five).
        run = traffic.refusals_in_a_row
        typical = traffic.typical_rtt(now)
        starving = (now - traffic.last_success() > typical
                    or run > 2 * max(s.concurrency_429s, inflight))
        burst = (refusals > max(s.concurrency_429s, s.concurrency_429_ratio * successes)
                 or run > max(s.concurrency_429s, inflight))
        hold = (burst and starving) or traffic.successes_since(
            now - traffic.settings.concurrency_window) == 0
        # Evidence of a rate cap: refused below the concurrency that successes sent
        # since the last evidence were served at...
        proof = traffic.proven_concurrency(now, self._last_evidence)
        below = proof is not None and inflight <= proof - max(
            s.concurrency_slack, math.floor(s.concurrency_margin * proof))
        # ...or sent well after the concurrency limit last moved: over a concurrency
        # cap the refusals come at once after a rise (a probe, or a slow start that
        # went too far), and a limit that has held for a while is not refused at
        # all; over a rate cap they come once the burst the upstream allows is spent.
        # (Not at a new peak, though: a concurrency cap that answers after the
        # service time refuses a probe's extra attempt as late as a rate cap would.)
        at_peak = proof is not None and inflight > proof
        settled = (limit_changed_at is not None and started is not None
                   and started > self._last_evidence and not at_peak
                   and started - limit_changed_at >= s.settle_share * typical)
        if rate_known:
            # A rate cap is known: this 429 is its doing if it is evidence as above,
            # or if the pace bound (the concurrency limit did not). A lone 429 amid
            # successes does not mean its quota is spent, though: it lowers the rate
            # but holds nothing.
            if below or settled or pace_bound:
                return Attribution("rate", evidence=below or settled, hold=hold)
            return Attribution("concurrency", hold=hold)
        if not (below or settled):
            # A new peak: the concurrency limit's probe (or slow start's overshoot).
            return Attribution("concurrency", hold=hold)
        # A rate cap, or a capacity that fell (which the concurrency limit finds within
        # a round trip or two): only when it recurs is it a rate.
        evidence = 1 + len(self._evidence)
        return Attribution("rate" if evidence >= s.rate_evidence else "concurrency",
                           evidence=True, hold=hold)
