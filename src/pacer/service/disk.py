"""Disk trouble: when the spool's disk refuses writes, claim nothing new until it works.

Results, claims, job starts and the state file all report here. While the disk is
in trouble the intake claims nothing and jobs whose start the disk refused wait in
:attr:`DiskTrouble.deferred`; they start over once a write succeeds again.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable

import structlog

from pacer.service.summary import RunSummary

log = structlog.get_logger("pacer.service.disk")

# Errors that say the spool's disk is in trouble (and may recover), not the job.
DISK_TROUBLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES,
                          errno.EPERM, errno.ENOMEM})


class DiskTrouble:
    def __init__(self, summary: RunSummary, writer_trouble: Callable[[], OSError | None],
                 on_recovered: Callable[[], None]) -> None:
        self._summary = summary
        self._writer_trouble = writer_trouble
        self._on_recovered = on_recovered
        self.error: OSError | None = None
        self.deferred: deque[str] = deque()  # jobs in active/ whose start the disk refused

    def writer_changed(self, error: OSError | None) -> None:
        """The result writer's trouble callback."""
        if error is not None:
            self.failed(error, "results")
        else:
            self.recovered("results")

    def failed(self, error: OSError, what: str) -> None:
        if self.error is None:
            self._summary.count_error("disk")
            log.error("spool.write_failed", what=what, errno=errno.errorcode.get(error.errno or 0),
                      error=str(error), message="pacer stops claiming new work and keeps "
                      "what it has; it resumes by itself once writes succeed again")
        self.error = error

    def recovered(self, what: str) -> None:
        if self.error is not None and self._writer_trouble() is None:
            self.error = None
            log.info("spool.write_recovered", what=what)
            self._on_recovered()
