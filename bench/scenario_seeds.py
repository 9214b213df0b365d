"""The virtual-time scenario suite over many seeds: how often each scenario holds.

Run from the repository root::

    .venv/bin/python bench/scenario_seeds.py [--seeds 1-20] [--contender pacer]
                                             [NAME ...]

``tests/test_scenario_suite.py`` asserts each scenario's bands on one to seven
seeds; a result that holds on the seeds the suite picked and misses on others is
not met. This runs each scenario (all of them, or those named) over a range of
seeds in virtual time, prints one line per run (``ok`` or ``MISS`` with the bands
missed), then a summary per scenario: misses, and the spread of goodput, 429 share,
in flight and duration ratio over the seeds.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys

import structlog
import trio
import trio.testing

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenarios import SCENARIOS, Outcome, Scenario, run_virtual


def seed_range(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def spread(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def summary(scenario: Scenario, outcomes: list[Outcome]) -> str:
    missed = [o.seed for o in outcomes if o.misses(scenario.bands)]
    parts = [f"{scenario.name:28} misses {len(missed)}/{len(outcomes)}"
             + (f" (seeds {','.join(map(str, missed))})" if missed else "")]
    goodput = [o.goodput for o in outcomes if o.goodput is not None]
    if goodput:
        parts.append(f"goodput {spread(goodput, '.1%')}")
    parts.append(f"429s {spread([o.share_429 for o in outcomes], '.2%')}")
    parts.append(f"in flight {spread([o.mean_inflight for o in outcomes], '.1f')}")
    ratios = [o.duration_ratio for o in outcomes if o.duration_ratio is not None]
    if ratios:
        parts.append(f"time {spread(ratios, '.2f')}x")
    return "  ".join(parts)


async def run_one(scenario: Scenario, contender: str, seed: int) -> Outcome:
    return await run_virtual(scenario, contender, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="scenarios (default: all)")
    parser.add_argument("--seeds", default="1-10", help="a seed or a range, e.g. 1-20")
    parser.add_argument("--contender", default="pacer")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    chosen = [s for s in SCENARIOS if not args.names or s.name in args.names]
    unknown = set(args.names) - {s.name for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    summaries: list[str] = []
    misses = 0
    for scenario in chosen:
        outcomes: list[Outcome] = []
        for seed in seed_range(args.seeds):
            outcome = trio.run(run_one, scenario, args.contender, seed,
                               clock=trio.testing.MockClock(autojump_threshold=0))
            missed = outcome.misses(scenario.bands)
            print(f"{scenario.name} seed {seed}: {'MISS ' + '; '.join(missed) if missed else 'ok'}"
                  f"  {outcome}", flush=True)
            outcomes.append(outcome)
            misses += bool(missed)
        summaries.append(summary(scenario, outcomes))
    print()
    print("\n".join(summaries))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
