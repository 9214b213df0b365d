"""``pacer mock-api`` and ``python -m pacer.mockapi``: flags, settings from flags, run."""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
from typing import Any

import trio

from pacer.mockapi.behaviour import MockUpstream
from pacer.mockapi.server import _now_iso, serve
from pacer.mockapi.settings import (
    CAP_ACTIONS,
    HEADER_STYLES,
    MockSettings,
    parse_faults,
    parse_outages,
    parse_schedule,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mock-api flags to ``parser``."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    add(
        "--port", type=int, default=8000, help="port to listen on, 0 for any (default: %(default)s)"
    )
    add(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="hidden cap: requests in service past N get 429 with Retry-After",
    )
    add(
        "--rate",
        type=float,
        default=None,
        metavar="R",
        help="requests per second past R get 429 (token bucket, burst R)",
    )
    add(
        "--rate-burst",
        type=float,
        default=None,
        metavar="B",
        help="the rate's bucket holds B requests (default R): a provider that allows"
        " a burst of a couple, however high its rate",
    )
    add(
        "--rate-window",
        type=float,
        default=None,
        metavar="S",
        help="the rate cap as a fixed window: R x S requests per S seconds, all back"
        " at the window's end (announced as the reset)",
    )
    add(
        "--latency",
        type=float,
        default=0.05,
        metavar="S",
        help="service time in seconds (default: %(default)s)",
    )
    add(
        "--jitter",
        type=float,
        default=0.0,
        metavar="S",
        help="uniform ± jitter on the latency, seconds (default: %(default)s)",
    )
    add(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of a 500 (default: %(default)s)",
    )
    add(
        "--schedule",
        default=None,
        metavar="T:N,...",
        help="concurrency cap over time, e.g. '0:20,6:5,12:40' (seconds since start:cap)",
    )
    add(
        "--knee",
        type=int,
        default=None,
        metavar="K",
        help="past K requests in service latency grows (never a 429)",
    )
    add(
        "--knee-slope",
        type=float,
        default=0.1,
        metavar="F",
        help="latency × (1 + F × (in_service - K)) past the knee (default: %(default)s)",
    )
    add(
        "--knee-exp",
        type=float,
        default=None,
        metavar="X",
        help="latency × X^(in_service - K) past the knee instead (Vector's knee)",
    )
    add("--slow-link", action="store_true",
        help="latency × the requests in service (more concurrency only adds latency)")
    add(
        "--lognormal",
        type=float,
        default=None,
        metavar="SIGMA",
        help="service time = latency × lognormal(0, SIGMA): latency is the median",
    )
    add("--cap-action", choices=CAP_ACTIONS, default="429",
        help="past the concurrency cap: a 429 at once, after a service time (defer), "
        "or no answer at all (drop) (default: %(default)s)")
    add("--rate-action", choices=CAP_ACTIONS, default="429",
        help="past the rate cap: as --cap-action (default: %(default)s)")
    add(
        "--header-style",
        choices=HEADER_STYLES,
        default="openai",
        help="rate-limit headers to send (default: %(default)s)",
    )
    add(
        "--retry-after",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds announced in Retry-After on a 429 of the concurrency or rate cap"
        " (default: %(default)s)",
    )
    add("--seed", type=int, default=None, help="random seed for jitter, errors and faults")
    add(
        "--tpm",
        type=int,
        default=None,
        metavar="N",
        help="tokens per minute: a bucket of N tokens refilled continuously (N/60 per s);"
        " a request costs max_tokens (default 16) + ceil(message chars / 4); past it 429",
    )
    add(
        "--outage",
        action="append",
        default=None,
        metavar="START:END[:KIND]",
        help="outage window in seconds since start (repeatable, or comma-separated);"
        " KIND: 500, 502, 503 (default), reset (closed without answer)"
        " or refuse (listening socket closed)",
    )
    add(
        "--fault",
        action="append",
        default=None,
        metavar="KIND[:P]",
        help="a fault for a share P (default 1) of requests (repeatable): reset, hang,"
        " trickle, malformed, huge, wrong-type, close, storm (5xx runs of 1 s every 5 s)",
    )
    add(
        "--auth-key",
        default=None,
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (else 401); the key is never logged",
    )
    add("--log", action="store_true", help="print one JSON line per request")


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    """Build :class:`MockSettings` from parsed flags; raises ValueError on bad values."""
    schedule = parse_schedule(args.schedule) if args.schedule is not None else ()
    outage_items: list[str] | None = getattr(args, "outage", None)
    fault_items: list[str] | None = getattr(args, "fault", None)
    return MockSettings(
        concurrency=args.concurrency,
        rate=args.rate,
        rate_window=getattr(args, "rate_window", None),
        rate_burst=getattr(args, "rate_burst", None),
        latency=args.latency,
        jitter=args.jitter,
        error_rate=args.error_rate,
        schedule=schedule,
        knee=args.knee,
        knee_slope=args.knee_slope,
        knee_exp=args.knee_exp,
        slow_link=args.slow_link,
        lognormal=args.lognormal,
        cap_action=args.cap_action,
        rate_action=args.rate_action,
        header_style=args.header_style,
        retry_after=args.retry_after,
        seed=args.seed,
        tpm=getattr(args, "tpm", None),
        outages=parse_outages(",".join(outage_items)) if outage_items else (),
        faults=parse_faults(",".join(fault_items)) if fault_items else (),
        auth_key=getattr(args, "auth_key", None),
    )


def _emit(event: str, **fields: Any) -> None:
    line = {"timestamp": _now_iso(), "level": "info", "event": event, **fields}
    print(json.dumps(line), flush=True)


async def _run_async(settings: MockSettings, host: str, port: int, log_requests: bool) -> int:
    upstream = MockUpstream(settings)
    listen_error: str | None = None
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    functools.partial(serve, upstream, host, port, log_requests=log_requests)
                )
                _emit("mock_api.listening", host=host, port=bound, **settings.as_dict())
                async for signum in signals:
                    _emit("mock_api.stopping", signal=signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
        except* OSError as group:
            listen_error = str(group.exceptions[0])
    if listen_error is not None:
        print(f"mock-api: cannot listen on {host}:{port}: {listen_error}", file=sys.stderr)
        return 1
    _emit("mock_api.stopped", **upstream.stats.snapshot())
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the mock API from parsed flags until SIGINT/SIGTERM; return the exit code."""
    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"mock-api: {exc}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"mock-api: port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    return trio.run(_run_async, settings, args.host, args.port, bool(args.log))


def main(argv: list[str] | None = None) -> int:
    """``python -m pacer.mockapi [flags]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pacer.mockapi",
        description="A local rate-limited, OpenAI-like HTTP API for trying pacer.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
