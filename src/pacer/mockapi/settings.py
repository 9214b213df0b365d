"""The mock's settings: what it simulates, validated; the schedule, outage and fault parsers."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

STATS_PATH = "/_mock/stats"
HEADER_STYLES = ("openai", "anthropic", "github", "ietf", "legacy", "none")
OUTAGE_KINDS = ("500", "502", "503", "reset", "refuse")
FAULT_KINDS = (
    "reset",
    "hang",
    "trickle",
    "malformed",
    "huge",
    "wrong-type",
    "close",
    "storm",
)
MAX_BODY_BYTES = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 120.0
DEFAULT_MAX_TOKENS = 16
"""Tokens a request costs for its answer when its body names no ``max_tokens``."""
TPM_WINDOW_S = 60.0
OUTAGE_DELAY_S = 0.01
"""The delay before an outage's (or a storm's) 5xx."""
TRICKLE_INTERVAL_S = 0.5
HUGE_BODY_BYTES = 64 * 1024 * 1024
STORM_PERIOD_S = 5.0
STORM_LENGTH_S = 1.0
"""A storm runs from ``4 s`` to ``5 s`` of every ``5 s`` after start."""
HANG_MAX_S = 3600.0
"""A hung connection is dropped after this long even if the client waits on."""
RESET_PAUSE_S = 0.05
"""Between the partial body of a ``reset`` and the reset itself (so it arrives)."""
_RECEIVE_SIZE = 65536
_CHUNK_SIZE = 65536
_BACKLOG = 128
_REBIND_TIMEOUT_S = 5.0
_EPS = 1e-9


def parse_schedule(text: str) -> tuple[tuple[float, int], ...]:
    """Parse a capacity schedule such as ``"0:20,6:5,12:40"``.

    Each item is ``SECONDS:CAP``: from ``SECONDS`` after server start the
    concurrency cap is ``CAP``. Times must be finite, non-negative and strictly
    increasing; caps are integers >= 0. Raises :class:`ValueError` otherwise.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise ValueError("schedule is empty; expected items like '0:20,6:5,12:40'")
    result: list[tuple[float, int]] = []
    for item in items:
        at_text, sep, cap_text = item.partition(":")
        if not sep:
            raise ValueError(f"schedule item {item!r} is not of the form SECONDS:CAP")
        try:
            at = float(at_text)
        except ValueError:
            raise ValueError(
                f"schedule item {item!r}: {at_text.strip()!r} is not a number"
            ) from None
        try:
            cap = int(cap_text)
        except ValueError:
            raise ValueError(
                f"schedule item {item!r}: {cap_text.strip()!r} is not an integer"
            ) from None
        if not math.isfinite(at) or at < 0:
            raise ValueError(f"schedule item {item!r}: time must be a finite number >= 0")
        if cap < 0:
            raise ValueError(f"schedule item {item!r}: cap must be >= 0")
        if result and at <= result[-1][0]:
            raise ValueError(
                f"schedule item {item!r}: times must be strictly increasing "
                f"(previous was {result[-1][0]:g})"
            )
        result.append((at, cap))
    return tuple(result)


# What a request past a cap gets: a 429 at once, after a service time, or nothing.
CAP_ACTIONS = ("429", "defer", "drop")

@dataclass(frozen=True, slots=True)
class Outage:
    """From ``start`` (inclusive) to ``end`` (exclusive) seconds after start, every
    request gets ``kind``: one of :data:`OUTAGE_KINDS`."""

    start: float
    end: float
    kind: str = "503"

    def __post_init__(self) -> None:
        if not math.isfinite(self.start) or self.start < 0:
            raise ValueError(f"outage start must be a finite number >= 0, got {self.start!r}")
        if not math.isfinite(self.end) or self.end <= self.start:
            raise ValueError(
                f"outage end must be a finite number > start ({self.start:g}), got {self.end!r}"
            )
        if self.kind not in OUTAGE_KINDS:
            raise ValueError(
                f"outage kind must be one of {', '.join(OUTAGE_KINDS)}, got {self.kind!r}"
            )


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault (one of :data:`FAULT_KINDS`) hitting a share ``probability`` of the
    requests (for ``storm``: of the requests during a storm)."""

    kind: str
    probability: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"fault kind must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}"
            )
        if not (0.0 <= self.probability <= 1.0):
            raise ValueError(
                f"fault {self.kind} probability must be between 0 and 1, got {self.probability!r}"
            )


def _split_items(text: str, what: str, example: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(items):
        raise ValueError(f"{what} has an empty item; expected items like {example!r}")
    return items


def parse_outages(text: str) -> tuple[Outage, ...]:
    """Parse outage windows such as ``"10:15,30:31:reset,40:45:refuse"``.

    Each item is ``START:END[:KIND]`` in seconds since start; ``KIND`` is one of
    :data:`OUTAGE_KINDS` (default ``503``). Raises :class:`ValueError` on bad input.
    """
    result: list[Outage] = []
    for item in _split_items(text, "outage list", "10:15,30:31:reset"):
        parts = [part.strip() for part in item.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError(f"outage {item!r} is not of the form START:END[:KIND]")
        try:
            start, end = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(f"outage {item!r}: START and END must be numbers") from None
        try:
            result.append(Outage(start, end, parts[2].lower() if len(parts) == 3 else "503"))
        except ValueError as exc:
            raise ValueError(f"outage {item!r}: {exc}") from None
    return tuple(result)


def parse_faults(text: str) -> tuple[Fault, ...]:
    """Parse faults such as ``"reset:0.05,hang:0.01,storm"``.

    Each item is ``KIND[:P]``: ``KIND`` one of :data:`FAULT_KINDS`, ``P`` the
    share of requests it hits (default 1: every request). Raises
    :class:`ValueError` on bad input.
    """
    result: list[Fault] = []
    for item in _split_items(text, "fault list", "reset:0.05,storm"):
        kind, sep, p_text = item.partition(":")
        try:
            probability = float(p_text) if sep else 1.0
        except ValueError:
            raise ValueError(f"fault {item!r}: {p_text.strip()!r} is not a number") from None
        try:
            result.append(Fault(kind.strip().lower(), probability))
        except ValueError as exc:
            raise ValueError(f"fault {item!r}: {exc}") from None
    return tuple(result)


@dataclass(frozen=True, slots=True)
class MockSettings:
    """How the mock behaves. All times are in seconds. Invalid values raise ValueError.

    ``concurrency``: hidden cap on requests in service (``None``: no cap).
    ``rate``: requests per second (token bucket, burst = ``max(1, rate)``).
    ``rate_burst``: the bucket's size instead (a provider that allows a burst of a
    couple of requests, however high its rate; ``None``: ``max(1, rate)``).
    ``rate_window``: the rate cap is a fixed window instead: ``rate x rate_window``
    requests per window of ``rate_window`` seconds from start, all back at once at
    the window's end, which the headers announce as the reset (as GitHub's hourly
    quota; ``None``: the bucket).
    ``latency``/``jitter``: service time, uniform in ``latency ± jitter`` (>= 0).
    ``error_rate``: probability that an admitted request ends in a 500.
    ``schedule``: ``((t, cap), ...)``: from ``t`` after start the cap is ``cap``
    (before the first entry, ``concurrency`` applies).
    ``knee``/``knee_slope``: past ``knee`` requests in service, latency is
    multiplied by ``1 + knee_slope * (in_service - knee)``; never a 429
    (``knee_exp``: by ``knee_exp ** (in_service - knee)`` instead, Vector's knee).
    ``slow_link``: latency is multiplied by the requests in service (more
    concurrency only adds latency). ``lognormal``: the service time is ``latency x
    lognormal(0, sigma)`` (``latency`` is then the median), as LLM answers vary.
    ``cap_action``/``rate_action``: what a request past the concurrency (rate) cap
    gets: ``429`` at once, ``defer`` (the 429 after a service time) or ``drop``
    (never answered).
    ``header_style``: one of :data:`HEADER_STYLES`.
    ``retry_after``: the delay announced in ``Retry-After`` on a 429 of the
    concurrency or rate cap.
    ``seed``: seed of the random generators (jitter, errors, faults), for repeatable runs.
    ``tpm``: tokens per minute (``None``: no cap); see :func:`token_cost`.
    ``outages``: :class:`Outage` windows, which must not overlap (kept sorted).
    ``faults``: :class:`Fault` s, one per kind; the shares of all but ``storm``
    add up to at most 1 (one draw per request picks at most one of them).
    ``auth_key``: the API key requests must carry (``None``: no check); never
    shown by ``repr`` nor :meth:`as_dict`.
    """

    concurrency: int | None = None
    rate: float | None = None
    rate_window: float | None = None
    rate_burst: float | None = None
    latency: float = 0.05
    jitter: float = 0.0
    error_rate: float = 0.0
    schedule: tuple[tuple[float, int], ...] = ()
    knee: int | None = None
    knee_slope: float = 0.1
    knee_exp: float | None = None
    slow_link: bool = False
    lognormal: float | None = None
    cap_action: str = "429"
    rate_action: str = "429"
    header_style: str = "openai"
    retry_after: float = 1.0
    seed: int | None = None
    tpm: int | None = None
    outages: tuple[Outage, ...] = ()
    faults: tuple[Fault, ...] = ()
    auth_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        def finite_nonneg(name: str, value: float) -> None:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

        if self.concurrency is not None and self.concurrency < 0:
            raise ValueError(f"concurrency must be >= 0, got {self.concurrency!r}")
        if self.rate is not None and (not math.isfinite(self.rate) or self.rate <= 0):
            raise ValueError(f"rate must be a finite number > 0, got {self.rate!r}")
        if self.rate_window is not None:
            if not (math.isfinite(self.rate_window) and self.rate_window > 0):
                raise ValueError(
                    f"rate_window must be a finite number > 0, got {self.rate_window!r}")
            if self.rate is None:
                raise ValueError("rate_window needs a rate")
        if self.rate_burst is not None:
            if not (math.isfinite(self.rate_burst) and self.rate_burst >= 1):
                raise ValueError(
                    f"rate_burst must be a finite number >= 1, got {self.rate_burst!r}")
            if self.rate is None or self.rate_window is not None:
                raise ValueError("rate_burst needs a rate (a bucket, not a window)")
        finite_nonneg("latency", self.latency)
        finite_nonneg("jitter", self.jitter)
        finite_nonneg("knee_slope", self.knee_slope)
        if self.knee_exp is not None and not (math.isfinite(self.knee_exp)
                                              and self.knee_exp >= 1.0):
            raise ValueError(f"knee_exp must be a finite number >= 1, got {self.knee_exp!r}")
        if self.lognormal is not None:
            finite_nonneg("lognormal", self.lognormal)
        for name in ("cap_action", "rate_action"):
            if getattr(self, name) not in CAP_ACTIONS:
                raise ValueError(f"{name} must be one of {', '.join(CAP_ACTIONS)}, "
                                 f"got {getattr(self, name)!r}")
        finite_nonneg("retry_after", self.retry_after)
        if not (0.0 <= self.error_rate <= 1.0):
            raise ValueError(f"error_rate must be between 0 and 1, got {self.error_rate!r}")
        if self.knee is not None and self.knee < 0:
            raise ValueError(f"knee must be >= 0, got {self.knee!r}")
        if self.header_style not in HEADER_STYLES:
            raise ValueError(
                f"header_style must be one of {', '.join(HEADER_STYLES)}, got {self.header_style!r}"
            )
        times = [at for at, _ in self.schedule]
        if any(cap < 0 for _, cap in self.schedule) or any(
            not math.isfinite(at) or at < 0 for at in times
        ):
            raise ValueError("schedule entries must be (time >= 0, cap >= 0)")
        if any(b <= a for a, b in itertools.pairwise(times)):
            raise ValueError("schedule times must be strictly increasing")
        if self.tpm is not None and (isinstance(self.tpm, bool) or self.tpm <= 0):
            raise ValueError(f"tpm must be an integer > 0, got {self.tpm!r}")
        outages = tuple(sorted(self.outages, key=lambda o: (o.start, o.end)))
        for before, after in itertools.pairwise(outages):
            if after.start < before.end:
                raise ValueError(
                    f"outage windows must not overlap: {before.start:g}-{before.end:g} "
                    f"and {after.start:g}-{after.end:g}"
                )
        object.__setattr__(self, "outages", outages)
        kinds = [fault.kind for fault in self.faults]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each fault kind may be given only once")
        share = sum(fault.probability for fault in self.faults if fault.kind != "storm")
        if share > 1.0 + _EPS:
            raise ValueError(f"the fault shares (all but storm) add up to {share:g}, past 1")
        key = self.auth_key
        if key is not None and not (
            key and key.isascii() and key.isprintable() and not any(c.isspace() for c in key)
        ):  # never show the key itself
            raise ValueError("auth_key must be a non-empty printable ASCII string without spaces")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (the schedule as a list of ``[t, cap]`` pairs, the key hidden)."""
        data = dataclasses.asdict(self)
        data["schedule"] = [[at, cap] for at, cap in self.schedule]
        data["outages"] = [dataclasses.asdict(outage) for outage in self.outages]
        data["faults"] = [dataclasses.asdict(fault) for fault in self.faults]
        data["auth_key"] = None if self.auth_key is None else "<hidden>"
        return data
