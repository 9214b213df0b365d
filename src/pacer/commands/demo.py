"""The demo behind ``scripts/demo``: pacer against the mock API, start to finish.

Starts ``pacer mock-api`` with a hidden concurrency cap, submits single-request
jobs, runs ``pacer run --drain`` until the spool is empty, and prints a summary:
jobs, requests, done, failed, 429s, elapsed, and the limit pacer learned next to
the mock's hidden cap (which pacer was never told).

Everything goes under ``--dir`` (default ``demo-run`` in the current folder): the
demo's config (unless ``--config`` names one), its spool and pacer's log. It only
ever deletes a spool that a previous demo created (marked with :data:`MARKER`);
any other spool with files in it is left alone and the demo refuses to run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pacer.config import Config, load_config
from pacer.spool.folders import FOLDERS, Spool

MARKER = ".pacer-demo"
"""A file in the root of a spool the demo created: only such a spool is ever removed."""

DEMO_CONFIG = """\
# The demo's config (written by the demo). pacer is NOT told the mock API's hidden
# cap: it starts at one request in flight and learns the pace by itself.
[spool]
dir = "spool"

[results]
flush_interval = 0.05

[daemon]
drain_timeout = 10

[upstreams.default]
base_url = "http://127.0.0.1:8765"
initial_limit = 1
max_limit = 256
max_attempts = 8
timeout = 30
"""


class DemoRefused(Exception):
    """The demo would have to delete or reuse something that is not its own."""


# What the demo puts in a spool: its jobs, their results and error files (and the
# part files of an interrupted run). Demos before the marker left only these.
_DEMO_FILE = re.compile(r"\.?demo-\d{4}(~\d+)?\.json(l|l\.part|\.error\.json)?")


def _empty_or_demo_spool(root: Path, *, demo_files: bool) -> bool:
    """Nothing in ``root`` but spool folders (and the daemon's own files), holding
    nothing at all, or (``demo_files``) only what a demo writes."""
    for entry in root.iterdir():
        if entry.name in (".lock", "state.json") and entry.is_file():
            continue
        if entry.name not in FOLDERS or entry.is_symlink() or not entry.is_dir():
            return False
        for item in entry.iterdir():
            if not (demo_files and item.is_file() and not item.is_symlink()
                    and _DEMO_FILE.fullmatch(item.name)):
                return False
    return True


def prepare(run_dir: Path, config_path: Path | None) -> tuple[Path, Config, Spool]:
    """The config to use (the demo's own, written under ``run_dir``, unless one is
    given) and a fresh, empty spool for it, marked as the demo's."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if config_path is None:
        config_path = run_dir / "demo.toml"
        config_path.write_text(DEMO_CONFIG, encoding="utf-8")
    config = load_config(config_path)
    root = config.spool.dir
    if root.exists():
        if (root / MARKER).exists() or _empty_or_demo_spool(root, demo_files=True):
            shutil.rmtree(root)  # a previous demo's (or nothing at all)
        elif not _empty_or_demo_spool(root, demo_files=False):
            raise DemoRefused(
                f"the spool {root} holds files and was not made by the demo: it is left "
                "alone. Give the demo a config whose spool is empty or its own (--config), "
                "or none at all (it then writes its own under --dir)")
    spool = Spool(root)
    spool.ensure()
    (root / MARKER).write_text("made by pacer's demo; it may delete this spool\n")
    return config_path, config, spool


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
    ap.add_argument("--dir", type=Path, default=Path("demo-run"),
                    help="folder for the demo's config, spool and log (default: %(default)s)")
    ap.add_argument("--config", type=Path, default=None,
                    help="a config to use instead of the demo's own; its spool must be "
                    "empty or a previous demo's")
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--cap", type=int, default=16, help="the mock API's hidden concurrency cap")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--jitter", type=float, default=0.02)
    args = ap.parse_args(argv)

    try:
        config_path, config, spool = prepare(args.dir, args.config)
    except DemoRefused as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    run_dir = args.dir
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
                                  str(config_path), "--drain"], stdout=log)
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
