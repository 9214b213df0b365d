"""Command line: ``pacer run | submit | status | check-config | mock-api | plot | requeue``.

Exit codes: 0 success, 1 work failed (``run --drain``), 2 bad usage or bad config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

from pacer import __version__
from pacer.config import ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 as the contract wants
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``command`` given) one in which only that command's
    options are defined in full: the mock API's and plot's definitions import Trio,
    h11 and the mock, which other commands should not pay for at start-up."""
    parser = _Parser(prog="pacer", description="Send spooled HTTP jobs to rate-limited APIs "
                     "at the fastest safe pace, learned by itself.")
    parser.add_argument("--version", action="version", version=f"pacer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the daemon in the foreground (JSON logs on stdout)")
    run.add_argument("--config", required=True, type=Path)
    run.add_argument("--drain", action="store_true",
                     help="process what is in the spool, then exit (1 if any job failed)")
    run.add_argument("--log-format", choices=("json", "console"), default="json")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    submit = sub.add_parser("submit", help="put job files into the spool safely")
    submit.add_argument("--config", required=True, type=Path)
    submit.add_argument("--upstream", help="set \"upstream\" on every request without one")
    submit.add_argument("--name", help="job file name to use for stdin (default: stdin-<uuid>)")
    submit.add_argument("paths", nargs="+", metavar="PATH", help="job files; - reads stdin")

    status = sub.add_parser("status", help="show spool counts and per-upstream state")
    status.add_argument("--config", required=True, type=Path)
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true")
    status.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)

    check = sub.add_parser("check-config", help="validate a config and print it resolved")
    check.add_argument("--config", required=True, type=Path)

    mock = sub.add_parser("mock-api", help="a local rate-limited OpenAI-like API")
    if command in (None, "mock-api"):
        from pacer.mockapi.cli import add_arguments as add_mock_arguments

        add_mock_arguments(mock)

    plot = sub.add_parser("plot", help="plot limit, in flight and 429s from pacer's JSON logs")
    if command in (None, "plot"):
        from pacer.commands.plot import add_arguments as add_plot_arguments

        add_plot_arguments(plot)

    requeue = sub.add_parser("requeue",
                             help="send the failed requests of a failed job again, as a new job")
    requeue.add_argument("--config", required=True, type=Path)
    requeue.add_argument("--dry-run", action="store_true",
                         help="print the requests instead of submitting them")
    requeue.add_argument("job", metavar="JOB", help="failed/STEM.jsonl (or a bare name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    try:
        if args.command == "mock-api":
            from pacer import mockapi

            return mockapi.run(args)
        if args.command == "plot":
            from pacer.commands.plot import plot_command

            return plot_command(args.log, args.output)
        config = load_config(args.config)
        if args.command == "check-config":
            print(json.dumps(config.to_dict(), indent=2))
            return EXIT_OK
        if args.command == "run":
            if args.log_format == "json":
                from pacer.startup import import_structlog_lean

                import_structlog_lean()
            from pacer.service.runner import run_daemon

            return run_daemon(config, drain=args.drain, log_format=args.log_format,
                              log_level=args.log_level)
        if args.command == "submit":
            from pacer.commands.submit import submit

            return submit(config, args.paths, upstream=args.upstream, name=args.name)
        if args.command == "requeue":
            from pacer.commands.requeue import requeue

            return requeue(config, args.job, dry_run=args.dry_run)
        if args.command == "status":
            from pacer.commands.status import status

            return status(config, as_json=args.json, watch=args.watch, interval=args.interval)
    except ConfigError as exc:
        print(f"pacer: bad config:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover


def main_entry() -> None:
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `pacer status | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
