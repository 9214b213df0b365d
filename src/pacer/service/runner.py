"""``pacer run``: set up logging and run the daemon under ``trio.run``."""

from __future__ import annotations

import sys

import structlog
import trio

from pacer.config import Config, ConfigError
from pacer.logs import configure_logging
from pacer.service.daemon import Daemon
from pacer.spool.folders import SpoolLocked


def run_daemon(config: Config, *, drain: bool = False, log_format: str = "json",
               log_level: str | None = None) -> int:
    configure_logging(log_level or config.daemon.log_level, log_format)
    log = structlog.get_logger("pacer")
    daemon = Daemon(config, drain=drain, log_format=log_format, log_level=log_level)
    try:
        return trio.run(daemon.run)
    except SpoolLocked as exc:
        log.error("daemon.refused", reason=str(exc))
        return 2
    except ConfigError as exc:
        log.error("daemon.refused", reason="bad config", problems=exc.problems)
        print(f"pacer: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.exception("daemon.crashed", error=f"{type(exc).__name__}: {exc}")
        return 1
