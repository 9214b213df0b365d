"""Job file names: which names are jobs, their stems, and the weight a name asks for."""

from __future__ import annotations

import re

JOB_SUFFIXES = (".json", ".jsonl")


def job_stem(name: str) -> str | None:
    """``a.jsonl`` -> ``a``; None for names that are not job files."""
    for suffix in JOB_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


# A job's share of each upstream, from its name: "report.w4.jsonl" gets 4 times the
# share of a plain job, "backfill.w0.25.jsonl" a quarter (after a collision rename
# too: "report.w4~2.jsonl").
_WEIGHT = re.compile(r"\.w(\d{1,3}(?:\.\d{1,3})?)(?:~\d+)?\.jsonl?$")
MIN_WEIGHT = 0.01
MAX_WEIGHT = 100.0


def job_weight(name: str) -> float:
    """The weight a job's name asks for (``STEM.wN.jsonl``), else 1; clamped to
    [:data:`MIN_WEIGHT`, :data:`MAX_WEIGHT`]."""
    match = _WEIGHT.search(name)
    if match is None:
        return 1.0
    return min(MAX_WEIGHT, max(MIN_WEIGHT, float(match.group(1))))
