"""Fairness benchmark: a small job dropped beside a big one, real daemon, real mock API.

Run from the repository root::

    .venv/bin/python bench/fairness_bench.py [--runs 5] [--big 3000] [--small 5]

Per run, in a fresh temporary spool: the mock API (``python -m pacer.mockapi`` on
127.0.0.1, a hidden concurrency cap of 10 and 0.1 s per request: a capacity of
100 requests/s that pacer is never told) and ``pacer run`` as subprocesses; a
``--big``-request ``.jsonl`` is submitted first, and ``--settle`` seconds after it
started, a ``--small``-request ``.jsonl`` is dropped into ``incoming/`` (written in
``tmp/``, renamed). The script watches the spool every 10 ms and reports:

* the small job's completion time: from its rename into ``incoming/`` to its move
  into ``done/`` (the target: within 3 s, whatever the size of the big job);
* the big job's throughput (result lines per second, counted in its results part
  file) over the ``--window`` seconds before the drop and after it, and over its
  whole run: it should lose no more than the small job's share.

A table goes to stdout and everything to ``bench/out/fairness.json``; ``--quick``
makes it 2 runs with a 600-request big job (the small one dropped after 3 s),
for trying the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import soak
from soak import Child, pacer_command, start

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CHAT = "/v1/chat/completions"
MOCK_CAP = 10
MOCK_LATENCY = 0.1
POLL_S = 0.01


def start_mock(folder: Path) -> tuple[Child, int]:
    return soak.start_mock(folder, MOCK_CAP, MOCK_LATENCY)


def job_bytes(prefix: str, count: int) -> bytes:
    lines = []
    for i in range(count):
        body = {"model": "bench", "max_tokens": 16,
                "messages": [{"role": "user", "content": f"{prefix} {i}"}]}
        lines.append(json.dumps({"custom_id": f"{prefix}-{i}", "method": "POST",
                                 "url": CHAT, "body": body}))
    return ("\n".join(lines) + "\n").encode()


def drop(spool: Path, name: str, data: bytes) -> float:
    """Write in tmp/, rename into incoming/ (as producers should); the rename's time."""
    tmp = spool / "tmp" / f".{name}.tmp"
    tmp.write_bytes(data)
    os.rename(tmp, spool / "incoming" / name)
    return time.monotonic()


def lines_of(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


@dataclass
class Run:
    small_done_s: float
    big_rps_before: float
    big_rps_after: float
    big_rps_overall: float
    big_elapsed_s: float
    small_results: int
    big_results: int


def one_run(big: int, small: int, settle: float, window: float, keep: bool) -> Run:
    folder = Path(tempfile.mkdtemp(prefix="pacer-fairness-"))
    spool = folder / "spool"
    for name in ("incoming", "tmp"):
        (spool / name).mkdir(parents=True)
    mock, port = start_mock(folder)
    pacer: Child | None = None
    try:
        (folder / "pacer.toml").write_text(
            f'[spool]\ndir = "spool"\n\n[upstreams.default]\n'
            f'base_url = "http://127.0.0.1:{port}"\n')
        started = drop(spool, "big.jsonl", job_bytes("big", big))
        pacer = start([*pacer_command(), "run", "--config", str(folder / "pacer.toml")],
                      folder, "pacer")
        part = spool / "results" / ".big.jsonl.part"
        samples: list[tuple[float, int]] = []  # (time, big's result lines)
        small_at: float | None = None
        small_done: float | None = None
        big_done: float | None = None
        deadline = time.monotonic() + 60 + 2 * big / (MOCK_CAP / MOCK_LATENCY)
        while time.monotonic() < deadline:
            now = time.monotonic()
            done = set(os.listdir(spool / "done")) if (spool / "done").is_dir() else set()
            if big_done is None:
                samples.append((now, lines_of(part)))
                if "big.jsonl" in done:
                    big_done = now
                    samples.append((now, big))
            if small_at is None and now - started >= settle:
                small_at = drop(spool, "small.jsonl", job_bytes("small", small))
            if small_at is not None and small_done is None and "small.jsonl" in done:
                small_done = now
            if big_done is not None and small_done is not None:
                break
            if pacer.popen.poll() is not None:
                raise SystemExit(f"pacer exited with {pacer.popen.returncode}; see {folder}")
            time.sleep(POLL_S)
        if small_at is None or small_done is None or big_done is None:
            raise SystemExit(f"the jobs did not finish in time; see {folder}")

        def rate(t0: float, t1: float) -> float:
            inside = [(t, n) for t, n in samples if t0 <= t <= t1]
            if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
                return float("nan")
            return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

        results = spool / "results"
        return Run(
            small_done_s=round(small_done - small_at, 3),
            big_rps_before=round(rate(small_at - window, small_at), 1),
            big_rps_after=round(rate(small_at, min(small_at + window, big_done)), 1),
            big_rps_overall=round(big / (big_done - started), 1),
            big_elapsed_s=round(big_done - started, 2),
            small_results=lines_of(results / "small.jsonl"),
            big_results=lines_of(results / "big.jsonl"),
        )
    finally:
        if pacer is not None:
            pacer.stop()
        mock.stop()
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def spread(values: list[float]) -> str:
    values = [v for v in values if v == v]  # a window with no samples is NaN
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.2f} (min {min(values):.2f}, max {max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--big", type=int, default=3000, help="requests of the big job")
    ap.add_argument("--small", type=int, default=5, help="requests of the small job")
    ap.add_argument("--settle", type=float, default=8.0,
                    help="seconds after the big job's drop before the small one's")
    ap.add_argument("--window", type=float, default=3.0,
                    help="seconds before and after the drop over which the big job's "
                    "throughput is measured")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.big, args.settle = 2, 600, 3.0
    load = os.getloadavg()
    runs: list[Run] = []
    for i in range(args.runs):
        run = one_run(args.big, args.small, args.settle, args.window, args.keep)
        runs.append(run)
        print(f"run {i + 1}: small done in {run.small_done_s:.2f} s; big "
              f"{run.big_rps_before:.1f} req/s before, {run.big_rps_after:.1f} after, "
              f"{run.big_rps_overall:.1f} overall ({run.big_elapsed_s:.1f} s); "
              f"result lines {run.small_results}/{args.small}, "
              f"{run.big_results}/{args.big}", flush=True)
    load_after = os.getloadavg()
    summary = {
        "small_done_s": spread([r.small_done_s for r in runs]),
        "big_rps_before": spread([r.big_rps_before for r in runs]),
        "big_rps_after": spread([r.big_rps_after for r in runs]),
        "big_rps_overall": spread([r.big_rps_overall for r in runs]),
    }
    print(f"\n{args.runs} runs, big {args.big}, small {args.small}, capacity "
          f"{MOCK_CAP / MOCK_LATENCY:.0f} req/s; load {load[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1-min average)")
    for key, value in summary.items():
        print(f"{key:<18} median {value}")
    OUT.mkdir(exist_ok=True)
    (OUT / "fairness.json").write_text(json.dumps(
        {"args": vars(args), "load": [load, load_after], "summary": summary,
         "runs": [asdict(r) for r in runs]}, indent=1))
    ok = all(r.small_results == args.small and r.big_results == args.big for r in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
