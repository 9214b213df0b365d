"""When the adaptive limit probes above its plateau, by how much, and how a probe
step is judged (pure: times are passed in).

At the plateau, a probe is due after ``probe_rounds`` clean round trips in which the
limit was used, or ``max_probe_interval`` seconds (never before ``probe_rounds``
round trips), or at once while regrowing toward a level that ran clean before an
outage cut it. A failed probe that gained nothing doubles the clean round trips
needed before the next (up to :data:`MAX_PROBE_WAIT`). A series of probes starts
with a step of 1/32 of the limit (at least 1) and doubles it after each step that
ran clean, up to half the plateau. A step is judged on the attempts sent half a
smoothed rtt after it, that ran at its concurrency (those sent at once met the old
queue: on a slow link the first takes the old rtt): it only queued when their mean
rtt grew past a share of the relative step over the plateau's.
"""

from __future__ import annotations

import math
from typing import Final

from pacer.control.moments import Moments

__all__ = ["MAX_PROBE_WAIT", "ProbeSchedule"]

# Failed probes double the wait, up to this many round trips (the time bound rules anyway).
MAX_PROBE_WAIT: Final = 1024
# A step is judged on attempts sent this share of a smoothed rtt after it: by then
# most attempts sent before it have left (a whole rtt made each step cost two).
_SETTLE_SHARE: Final = 0.5
# A probe series starts with a step of the limit over this (at least 1).
_FIRST_STEP_DIVISOR: Final = 32


class ProbeSchedule:
    """The plateau's probes (see the module docstring)."""

    def __init__(self, probe_rounds: int, max_probe_interval: float, base: int) -> None:
        self.probe_rounds = probe_rounds
        self.max_probe_interval = max_probe_interval
        self.wait = probe_rounds  # clean round trips required before the next probe
        self.clean_rounds = 0
        self.plateau_since = -math.inf
        # The step of the next probe: doubled after each probe that ran clean.
        self.step = 1
        # The plateau the current series of probes started from.
        self.base = base
        # A limit that ran clean before failures cut it: probes double back to it.
        self.regrow_to = 0
        self.ref_rtt: float | None = None  # the plateau's rtt as the series began
        self.ref_stderr = 0.0  # ... and its standard error (a mean of few rtts)
        # rtts of the successes sent once the last step had settled
        self.rtts = Moments()
        self.stepped_at = -math.inf
        self.settled_at = -math.inf

    def held(self, now: float) -> None:
        """The limit holds a (new) plateau from ``now``."""
        self.plateau_since = now
        self.clean_rounds = 0

    def soon(self) -> None:
        """A capacity found or fallen: probe after the fewest round trips."""
        self.wait = self.probe_rounds

    def clean_round(self, now: float, limit: int) -> bool:
        """A clean round trip at the plateau that used the limit: is a probe due?"""
        self.clean_rounds += 1
        regrow = self.regrow_to > limit
        due = regrow or self.clean_rounds >= self.wait or (
            now - self.plateau_since >= self.max_probe_interval
        )
        return due and (regrow or self.clean_rounds >= self.probe_rounds)

    def start(self, limit: int, ref_rtt: float | None, ref_stderr: float = 0.0) -> int:
        """A series of probes starts from ``limit``, whose rtt was ``ref_rtt`` (a
        mean, of standard error ``ref_stderr``); its first step."""
        self.base = limit
        self.ref_rtt = ref_rtt
        self.ref_stderr = ref_stderr
        self.step = self._next_step(max(1, limit // _FIRST_STEP_DIVISOR), limit)
        return self.step

    def ran_clean(self, limit: int) -> int:
        """The step to ``limit`` ran clean (it becomes the plateau); the next step."""
        self.step = self._next_step(min(2 * self.step, max(1, limit // 2)), limit)
        return self.step

    def failed(self, plateau: int) -> None:
        """A step failed (back to ``plateau``): a series that found nothing waits
        longer before the next; one that gained capacity probes again soon."""
        gained = plateau > self.base
        self.wait = self.probe_rounds if gained else min(2 * self.wait, MAX_PROBE_WAIT)

    def stepped(self, now: float, srtt: float) -> None:
        """The limit stepped up at ``now``: judge it on attempts sent once most of
        the attempts sent before it left (half a smoothed rtt on)."""
        self.stepped_at = now
        self.settled_at = now + _SETTLE_SHARE * srtt
        self.rtts = Moments()

    def record(self, start: float, inflight: int, limit: int, rtt: float) -> None:
        """A success while probing: counts if it ran at the step's concurrency."""
        if start >= self.settled_at and inflight >= limit:
            self.rtts.add(rtt)

    def only_queued(self, limit: int, share: float, z: float) -> bool:
        """Did the step's attempts take longer in proportion to the concurrency it
        added? Their mean rtt against the plateau's when the series began: growth
        past ``share`` of the relative step, by more than ``z`` times the mean's
        standard error (and the plateau's: heavy-tailed rtts made a round's mean
        of a dozen read half the true one, and failed every probe for 20 s),
        means the extra attempts only queued."""
        ref, rtts = self.ref_rtt, self.rtts
        if ref is None or rtts.count < 2:
            return False
        step = (limit - self.base) / self.base
        allowed = ref * (1.0 + share * step)
        return rtts.mean > allowed + z * math.hypot(rtts.stderr, self.ref_stderr)

    def _next_step(self, step: int, limit: int) -> int:
        """``step``, or, while regrowing toward a level that ran clean before failures
        cut it (an outage), up to a doubling toward it."""
        if self.regrow_to > limit:
            return max(step, min(limit, self.regrow_to - limit))
        self.regrow_to = 0
        return step
