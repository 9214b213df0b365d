"""What the daemon counts over its run: jobs finished, and spool problems by kind."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RunSummary:
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_rejected: int = 0
    started_at: float = field(default_factory=time.time)
    errors: dict[str, int] = field(default_factory=dict)  # spool problems by kind

    def count_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
