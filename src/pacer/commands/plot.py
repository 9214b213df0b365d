"""``pacer plot``: the limit, in-flight attempts and 429s over time, from pacer's logs.

Two halves: :func:`extract` turns JSON log lines into per-upstream time series
(pure, no matplotlib), and :func:`draw` plots them, one panel per upstream,
with the periods the circuit breaker was open shaded. matplotlib is an optional
extra (``pip install 'pacer[plot]'``), imported only when drawing, and only
through its Agg canvas (no pyplot: no global state, no display needed).

Lines that are not JSON objects with an ``event`` and a ``timestamp`` are skipped,
so a journal with other lines in it can be piped in as it is
(``journalctl -u pacer -o cat | pacer plot --log -``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

MISSING_MATPLOTLIB = "pacer plot needs matplotlib: pip install 'pacer[plot]'"
UNKNOWN_UPSTREAM = "(unknown)"
# Bin widths for the 429 bars, in seconds: about BINS bars across the plot.
NICE_WIDTHS = (
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    14400,
    21600,
    43200,
    86400,
)
BINS = 60


@dataclass
class UpstreamSeries:
    """One upstream's series; times are seconds since the epoch (UTC)."""

    # The limit as a step function: each value holds from its time to the next point.
    limit: list[tuple[float, int]] = field(default_factory=list)
    # Attempts in flight, as reported with each limit change.
    inflight: list[tuple[float, int]] = field(default_factory=list)
    # When a 429 made a request retry.
    rate_limited: list[float] = field(default_factory=list)
    # Periods the breaker was not closed: (start, end, "open" | "half_open").
    breaker: list[tuple[float, float, str]] = field(default_factory=list)
    changes: int = 0  # limit.changed events
    _breaker_since: tuple[float, str] | None = None

    @property
    def opens(self) -> int:
        return sum(1 for _, _, state in self.breaker if state == "open")


@dataclass
class LogSeries:
    upstreams: dict[str, UpstreamSeries] = field(default_factory=dict)
    starts: list[float] = field(default_factory=list)  # daemon.started
    first: float | None = None
    last: float | None = None
    events: int = 0  # JSON log events read
    skipped: int = 0  # lines that were not pacer JSON log events

    def upstream(self, name: str) -> UpstreamSeries:
        if name not in self.upstreams:
            self.upstreams[name] = UpstreamSeries()
        return self.upstreams[name]


def parse_timestamp(value: Any) -> float | None:
    """ISO 8601 (structlog's ``2024-05-01T12:00:00.123456Z``) -> epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    if ts.tzinfo is None:  # pacer logs UTC; a naive time is taken as UTC too
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def parse_line(line: str) -> dict[str, Any] | None:
    """A log event, or None. Text before the first ``{`` (a syslog prefix) is ignored."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        obj = json.loads(line[start:])
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return None
    return obj


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def extract(lines: Iterable[str]) -> LogSeries:
    """Per-upstream time series from pacer's JSON log lines (in the order logged)."""
    data = LogSeries()
    unassigned: list[float] = []  # 429 retries logged without an upstream
    last_start: float | None = None
    for line in lines:
        obj = parse_line(line)
        t = parse_timestamp(obj.get("timestamp")) if obj else None
        if obj is None or t is None:
            data.skipped += 1
            continue
        data.events += 1
        data.first = t if data.first is None else min(data.first, t)
        data.last = t if data.last is None else max(data.last, t)
        event = obj["event"]
        upstream = obj.get("upstream")
        if event == "daemon.started":
            data.starts.append(t)
            last_start = t
            # A new daemon starts with every breaker closed.
            for series in data.upstreams.values():
                _close_breaker(series, t)
        elif event == "limit.changed" and isinstance(upstream, str):
            old, new = _int(obj.get("old_limit")), _int(obj.get("new_limit"))
            if old is None or new is None:
                continue
            series = data.upstream(upstream)
            if not series.limit or series.limit[-1][1] != old:
                # The value before this change: since the daemon started, if it
                # started after the last point (a restart resets the limit).
                after_last = not series.limit or (
                    last_start is not None and last_start > series.limit[-1][0]
                )
                since = last_start if last_start is not None and after_last else t
                series.limit.append((min(since, t), old))
            series.limit.append((t, new))
            series.changes += 1
            inflight = _int(obj.get("inflight"))
            if inflight is not None:
                series.inflight.append((t, inflight))
        elif event == "request.retry" and obj.get("reason") == "rate_limited":
            if isinstance(upstream, str):
                data.upstream(upstream).rate_limited.append(t)
            else:
                unassigned.append(t)
        elif event == "breaker.transition" and isinstance(upstream, str):
            series = data.upstream(upstream)
            _close_breaker(series, t)
            to = obj.get("to")
            if to in ("open", "half_open"):
                series._breaker_since = (t, str(to))
    if unassigned:
        # With a single upstream, a 429 without one can only be its own.
        name = next(iter(data.upstreams)) if len(data.upstreams) == 1 else UNKNOWN_UPSTREAM
        series = data.upstream(name)
        series.rate_limited = sorted(series.rate_limited + unassigned)
    if data.last is not None:
        for series in data.upstreams.values():
            _close_breaker(series, data.last)
    return data


def _close_breaker(series: UpstreamSeries, t: float) -> None:
    if series._breaker_since is not None:
        since, state = series._breaker_since
        series.breaker.append((since, max(since, t), state))
        series._breaker_since = None


def bin_width(span: float, bins: int = BINS) -> float:
    """A round bin width giving about ``bins`` bins over ``span`` seconds."""
    raw = span / bins
    for width in NICE_WIDTHS:
        if width >= raw:
            return float(width)
    return float(NICE_WIDTHS[-1])


def histogram(
    times: Iterable[float], start: float, end: float, width: float
) -> list[tuple[float, int]]:
    """Counts of ``times`` in bins of ``width`` from ``start``: ``[(bin_start, n)]``,
    covering ``start..end`` (times outside go into the first or last bin)."""
    n = max(1, math.ceil((end - start) / width - 1e-9))
    counts = [0] * n
    for t in times:
        i = min(n - 1, max(0, int((t - start) // width)))
        counts[i] += 1
    return [(start + i * width, c) for i, c in enumerate(counts)]


# -- drawing ------------------------------------------------------------------------------


def _time_unit(span: float) -> tuple[str, float]:
    if span <= 600:
        return "s", 1.0
    if span <= 36000:
        return "min", 60.0
    return "h", 3600.0


def draw(data: LogSeries, output: str, *, dpi: int = 110) -> None:
    """Plot ``data`` into ``output`` (PNG, or SVG/PDF by its extension)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    assert data.first is not None and data.last is not None
    first, last = data.first, data.last
    span = max(last - first, 1.0)
    unit, div = _time_unit(span)
    width = bin_width(span)

    def x(t: float) -> float:
        return (t - first) / div

    names = sorted(data.upstreams)
    fig = Figure(figsize=(11, 1.0 + 3.2 * len(names)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    started = datetime.fromtimestamp(first, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    fig.suptitle(f"pacer: concurrency limit, in flight and 429s (from {started})")
    legend: dict[str, Any] = {}  # label -> handle, one figure legend for all panels
    for ax, name in zip(axes, names, strict=True):
        s = data.upstreams[name]
        shaded: set[str] = set()
        for begin, end, state in s.breaker:
            label = {"open": "breaker open", "half_open": "breaker half-open"}[state]
            ax.axvspan(
                x(begin),
                x(max(end, begin + span / 500)),
                color="tab:red" if state == "open" else "tab:orange",
                alpha=0.18 if state == "open" else 0.10,
                lw=0,
                label=None if label in shaded else label,
            )
            shaded.add(label)
        for i, t in enumerate(data.starts):
            ax.axvline(x(t), color="0.5", ls=":", lw=1, label="daemon start" if i == 0 else None)
        if s.limit:
            pts = [*s.limit, (last, s.limit[-1][1])]
            ax.step(
                [x(t) for t, _ in pts],
                [v for _, v in pts],
                where="post",
                color="tab:blue",
                lw=1.8,
                label="limit",
            )
        if s.inflight:
            ax.plot(
                [x(t) for t, _ in s.inflight],
                [v for _, v in s.inflight],
                ".",
                color="tab:green",
                ms=3,
                alpha=0.7,
                label="in flight (at limit changes)",
            )
        ax.set_ylabel("concurrency")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax2 = ax.twinx()
        # The lines go above the 429 bars of the twin axis, not under them.
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        bins = histogram(s.rate_limited, first, last, width)
        width_label = f"{width:g} s"
        ax2.bar(
            [x(t) for t, _ in bins],
            [c for _, c in bins],
            width=width / div,
            align="edge",
            color="tab:red",
            alpha=0.35,
            label=f"429s per {width_label}",
        )
        ax2.set_ylabel(f"429s per {width_label}")
        ax2.set_ylim(bottom=0, top=max(1, max((c for _, c in bins), default=0)) * 1.15)
        final = s.limit[-1][1] if s.limit else None
        top = max((v for _, v in s.limit), default=None)
        ax.set_title(
            f"{name}: final limit {final if final is not None else '–'}, "
            f"highest {top if top is not None else '–'}, "
            f"{len(s.rate_limited)} 429s, breaker opened {s.opens}×",
            loc="left",
            fontsize=10,
        )
        for axis in (ax, ax2):
            for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
    fig.legend(
        list(legend.values()),
        list(legend),
        loc="outside lower center",
        ncols=min(len(legend), 6),
        fontsize=8,
        frameon=False,
    )
    axes[-1].set_xlabel(f"time since start of log ({unit})")
    axes[-1].set_xlim(0, span / div)
    fig.savefig(output)


# -- the command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log",
        required=True,
        metavar="FILE",
        help="pacer's JSON log lines; - reads stdin "
        "(e.g. journalctl -u pacer -o cat | pacer plot --log -)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="pacer-plot.png",
        metavar="OUT",
        help="image to write (PNG; .svg or .pdf by extension); default: pacer-plot.png",
    )


def plot_command(log: str, output: str) -> int:
    """``pacer plot``: 0 written, 1 no pacer events in the log, 2 bad usage
    (matplotlib missing, log unreadable, output not writable)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        return 2
    try:
        if log == "-":
            data = extract(sys.stdin)
        else:
            fh: IO[str]
            with open(log, encoding="utf-8", errors="replace") as fh:
                data = extract(fh)
    except OSError as exc:
        print(f"pacer plot: cannot read {log}: {exc.strerror}", file=sys.stderr)
        return 2
    if not data.upstreams:
        print(
            f"pacer plot: no limit.changed, request.retry or breaker.transition events in "
            f"{'stdin' if log == '-' else log} ({data.events} log events, "
            f"{data.skipped} other lines)",
            file=sys.stderr,
        )
        return 1
    try:
        draw(data, output)
    except OSError as exc:
        print(f"pacer plot: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. an extension matplotlib has no writer for
        print(f"pacer plot: {exc}", file=sys.stderr)
        return 2
    ups = ", ".join(
        f"{n} ({s.changes} limit changes, {len(s.rate_limited)} 429s)"
        for n, s in sorted(data.upstreams.items())
    )
    print(f"wrote {output}: {ups}")
    return 0
