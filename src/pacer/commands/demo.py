"""The demo behind ``scripts/demo``: pacer against the mock API, start to finish.

Starts ``pacer mock-api`` with a hidden concurrency cap, submits single-request
jobs, runs ``pacer run --drain`` until the spool is empty, and prints a summary:
jobs, requests, done, failed, 429s, elapsed, and the limit pacer learned next to
the mock's hidden cap (which pacer was never told).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pacer.config import load_config
from pacer.spool.folders import Spool

REPO = Path(__file__).resolve().parents[3]


def _wait_listening(proc: subprocess.Popen[str], timeout: float = 10.0) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "mock_api.listening":
            return dict(event)
    raise SystemExit(f"the mock API did not start (exit code {proc.poll()})")


def _limit_history(log_path: Path) -> tuple[list[int], int]:
    limits: list[int] = []
    rate_limited = 0
    with open(log_path, encoding="utf-8") as fh:
        for line in fh:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "limit.changed":
                limits.append(int(event["new_limit"]))
            elif event.get("event") == "request.retry" and event.get("reason") == "rate_limited":
                rate_limited += 1
    return limits, rate_limited


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=REPO / "config" / "demo.toml")
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--cap", type=int, default=16, help="the mock API's hidden concurrency cap")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--jitter", type=float, default=0.02)
    args = ap.parse_args(argv)

    config = load_config(args.config)
    spool_root = config.spool.dir
    if spool_root.exists():
        shutil.rmtree(spool_root)
    run_dir = spool_root.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    spool = Spool(spool_root)
    spool.ensure()
    base = urlsplit(config.upstreams["default"].base_url)

    mock = subprocess.Popen(
        [sys.executable, "-m", "pacer.mockapi", "--host", base.hostname or "127.0.0.1",
         "--port", str(base.port), "--concurrency", str(args.cap), "--latency",
         str(args.latency), "--jitter", str(args.jitter), "--seed", "1"],
        stdout=subprocess.PIPE, text=True)
    try:
        _wait_listening(mock)
        print(f"mock API on {base.hostname}:{base.port}: hidden cap {args.cap} in flight, "
              f"latency {args.latency}s ± {args.jitter}s")
        for i in range(args.jobs):
            job = {"custom_id": f"demo-{i}", "method": "POST", "url": "/v1/chat/completions",
                   "body": {"model": "demo", "max_tokens": 16,
                            "messages": [{"role": "user", "content": f"Say hello #{i}"}]}}
            spool.submit(json.dumps(job).encode(), f"demo-{i:04d}.json")
        print(f"submitted {args.jobs} jobs; running pacer until the spool is drained...")
        log_path = run_dir / "pacer.log"
        started = time.monotonic()
        with open(log_path, "w", encoding="utf-8") as log:
            rc = subprocess.call([sys.executable, "-m", "pacer", "run", "--config",
                                  str(args.config), "--drain"], stdout=log)
        elapsed = time.monotonic() - started
        with urllib.request.urlopen(f"http://{base.netloc}/_mock/stats", timeout=5) as resp:
            stats = json.load(resp)
    finally:
        mock.terminate()
        mock.wait(timeout=10)

    counts = spool.counts()
    requests = sum(p.read_bytes().count(b"\n") for p in spool.folder("results").glob("*.jsonl"))
    limits, _ = _limit_history(log_path)
    final = limits[-1] if limits else config.upstreams["default"].initial_limit
    tail = limits[len(limits) // 2:] or [final]
    share = 100 * stats["rate_limited"] / max(1, stats["requests"])
    rows = [
        ("jobs", args.jobs),
        ("requests (result lines)", requests),
        ("jobs done", counts["done"]),
        ("jobs failed", counts["failed"] + counts["rejected"]),
        ("429s from the mock", stats["rate_limited"]),
        ("429 share of attempts", f"{share:.1f}%"),
        ("elapsed", f"{elapsed:.1f} s"),
        ("throughput", f"{requests / elapsed:.1f} req/s (ideal {args.cap / args.latency:.0f})"),
        ("learned limit (final / median of 2nd half)",
         f"{final} / {sorted(tail)[len(tail) // 2]}"),
        ("mock's hidden cap", args.cap),
        ("pacer exit code", rc),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("pacer demo summary")
    print("-" * (width + 16))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print(f"\nlogs: {log_path}\nresults: {spool.folder('results')}")
    return 0 if rc == 0 and counts["done"] == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
