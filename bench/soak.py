"""Soak benchmark: one long ``pacer run --drain`` against the mock API, watching the
daemon's memory, file descriptors and sockets.

Run from the repository root::

    .venv/bin/python bench/soak.py [--requests 50000] [--jobs 50] [--quick]

The mock API (``python -m pacer.mockapi``, hidden concurrency cap 64, latency
0.05 s) and ``pacer run --drain`` run as subprocesses on 127.0.0.1; the spool (a
temporary folder, removed afterwards unless ``--keep``) holds ``--jobs`` ``.jsonl``
jobs sharing ``--requests`` requests. Every second the script samples the pacer
process: resident memory (``VmRSS`` of ``/proc/PID/status``), open descriptors
(``/proc/PID/fd``), its TCP sockets (descriptors whose inode is in
``/proc/PID/net/tcp{,6}``, and how many of them are established), CPU time, and
progress (``state.json``). When pacer exits it checks that every request has
exactly one result line, and reports:

* total time and requests per second;
* RSS once warmed up (the first sample with 10 % of the requests answered) against
  RSS at the end, and the peak: growth over the run is what a leak would show;
* the most descriptors and TCP sockets the process held;
* the mock's counters (429s) and the result lines' error codes.

A table goes to stdout and everything (with the samples) to ``bench/out/soak.json``.
``--quick``: 5 jobs x 200 requests, for trying the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CHAT = "/v1/chat/completions"
MOCK_CAP = 64
MOCK_LATENCY = 0.05
WARM_SHARE = 0.10


# ------------------------------------------------------------------- processes


def pacer_command() -> list[str]:
    script = Path(sys.executable).parent / "pacer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pacer"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
           and not k.lower().endswith("_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Child:
    popen: subprocess.Popen[bytes]
    stdout: Path
    files: list[IO[bytes]] = field(default_factory=list)

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)
        for fh in self.files:
            fh.close()
        return self.popen.returncode


def start(argv: list[str], folder: Path, label: str) -> Child:
    out, err = folder / f"{label}.stdout", folder / f"{label}.stderr"
    fo, fe = open(out, "wb"), open(err, "wb")  # noqa: SIM115 - closed by Child.stop
    popen = subprocess.Popen(argv, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                             env=child_env(), cwd=folder)
    return Child(popen, out, [fo, fe])


def start_mock(folder: Path, cap: int = MOCK_CAP,
               latency: float = MOCK_LATENCY) -> tuple[Child, int]:
    mock = start([sys.executable, "-m", "pacer.mockapi", "--host", "127.0.0.1", "--port", "0",
                  "--concurrency", str(cap), "--latency", str(latency),
                  "--seed", "1"], folder, "mockapi")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in mock.stdout.read_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == "mock_api.listening":
                    return mock, int(event["port"])
        if mock.popen.poll() is not None:
            break
        time.sleep(0.05)
    mock.stop()
    raise SystemExit("the mock API did not start")


# --------------------------------------------------------------------- sampling


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def socket_inodes(pid: int) -> tuple[int, int, list[str]]:
    """(descriptors, TCP sockets, their states) of ``pid``."""
    inodes: list[str] = []
    fds = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            fds += 1
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.append(target[8:-1])
    except OSError:
        return 0, 0, []
    tcp: dict[str, str] = {}
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = row.split()
                if len(cols) > 9:
                    tcp[cols[9]] = cols[3]
    states = [tcp[i] for i in inodes if i in tcp]
    return fds, len(states), states


def progress(spool: Path) -> tuple[int | None, int | None, int | None]:
    """(requests answered, limit, in flight) so far, from the daemon's state file."""
    try:
        state = json.loads((spool / "state.json").read_text())
    except (OSError, ValueError):
        return None, None, None
    ups = state.get("upstreams", {})
    answered = sum(int(u.get("done", 0)) + int(u.get("failed", 0)) for u in ups.values())
    up = ups.get("default", {})
    return answered, up.get("limit"), up.get("inflight")


@dataclass
class Sample:
    t: float
    rss_kib: int | None
    fds: int
    tcp: int
    tcp_established: int
    cpu_s: float | None
    answered: int | None
    limit: int | None
    inflight: int | None
    mock_cpu_s: float | None


# ------------------------------------------------------------------------ run


def write_jobs(spool: Path, jobs: int, per_job: int) -> list[str]:
    (spool / "tmp").mkdir(parents=True, exist_ok=True)
    (spool / "incoming").mkdir(parents=True, exist_ok=True)
    names = []
    for j in range(jobs):
        name = f"soak-{j:03d}.jsonl"
        tmp = spool / "tmp" / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            for r in range(per_job):
                line = {"custom_id": f"s{j:03d}-{r:05d}", "method": "POST", "url": CHAT,
                        "body": {"model": "m", "messages": [{"role": "user",
                                                             "content": f"hi {r}"}]}}
                fh.write(json.dumps(line).encode() + b"\n")
        os.rename(tmp, spool / "incoming" / name)
        names.append(name)
    return names


def verify(spool: Path, jobs: int, per_job: int) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    attempts: Counter[int] = Counter()
    bad_lines = 0
    for path in sorted((spool / "results").glob("*.jsonl")):
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    line = json.loads(raw)
                except ValueError:
                    bad_lines += 1
                    continue
                counts[line["custom_id"]] += 1
                codes[(line.get("error") or {}).get("code", "ok")] += 1
                attempts[int(line.get("attempts", 0))] += 1
    expected = {f"s{j:03d}-{r:05d}" for j in range(jobs) for r in range(per_job)}
    missing = len(expected - set(counts))
    duplicated = sum(1 for n in counts.values() if n > 1)
    unexpected = len(set(counts) - expected)
    folders = {name: len([n for n in os.listdir(spool / name) if not n.startswith(".")])
               for name in ("incoming", "active", "done", "failed", "rejected")}
    return {
        "result_lines": sum(counts.values()),
        "missing": missing,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "unparseable_lines": bad_lines,
        "exactly_once": missing == duplicated == unexpected == bad_lines == 0,
        "codes": dict(codes),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "folders": folders,
        "part_files_left": len(list((spool / "results").glob(".*.part"))),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    jobs = args.jobs
    per_job = max(1, args.requests // jobs)
    total = jobs * per_job
    work = Path(tempfile.mkdtemp(prefix="pacer-soak-"))
    spool = work / "spool"
    mock: Child | None = None
    pacer: Child | None = None
    samples: list[Sample] = []
    try:
        mock, port = start_mock(work)
        (work / "pacer.toml").write_text(
            f'[spool]\ndir = "spool"\n\n[upstreams.default]\n'
            f'base_url = "http://127.0.0.1:{port}"\n')
        write_jobs(spool, jobs, per_job)
        print(f"soak: {jobs} jobs x {per_job} requests = {total}; mock cap {MOCK_CAP}, "
              f"latency {MOCK_LATENCY} s; spool in {work}", flush=True)
        load_before = os.getloadavg()
        mock_cpu_before = cpu_seconds(mock.popen.pid) or 0.0
        started = time.monotonic()
        pacer = start([*pacer_command(), "run", "--config", "pacer.toml", "--drain"],
                      work, "pacer")
        pid = pacer.popen.pid
        deadline = started + args.max_seconds
        next_print = started
        while pacer.popen.poll() is None and time.monotonic() < deadline:
            fds, tcp, states = socket_inodes(pid)
            answered, limit, inflight = progress(spool)
            sample = Sample(round(time.monotonic() - started, 2), rss_kib(pid), fds, tcp,
                            sum(1 for s in states if s == "01"), cpu_seconds(pid),
                            answered, limit, inflight, cpu_seconds(mock.popen.pid))
            if pacer.popen.poll() is None:  # a sample of a dead process is not one
                samples.append(sample)
            if time.monotonic() >= next_print:
                print(f"  t={sample.t:6.1f}s answered={sample.answered} "
                      f"rss={(sample.rss_kib or 0) / 1024:.1f}MiB fds={fds} tcp={tcp} "
                      f"limit={limit} inflight={inflight}", flush=True)
                next_print += args.print_every
            time.sleep(args.interval)
        finished = pacer.popen.poll() is not None
        elapsed = time.monotonic() - started
        mock_cpu = (cpu_seconds(mock.popen.pid) or 0.0) - mock_cpu_before
        load_after = os.getloadavg()
        rc = pacer.stop()
        try:
            with httpx.Client(trust_env=False, timeout=5) as client:
                mock_stats = client.get(f"http://127.0.0.1:{port}/_mock/stats").json()
        except httpx.HTTPError as exc:
            mock_stats = {"error": str(exc)}
        check = verify(spool, jobs, per_job)
        log_lines = pacer.stdout.read_text(errors="replace").splitlines()
        events = Counter()
        for line in log_lines:
            with contextlib.suppress(ValueError):
                events[json.loads(line).get("event", "?")] += 1
        stderr = (work / "pacer.stderr").read_text(errors="replace")
    finally:
        for child in (pacer, mock):
            if child is not None:
                child.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    warm = next((s for s in samples if s.answered is not None and s.answered >= WARM_SHARE * total),
                samples[0] if samples else None)
    last = samples[-1] if samples else None
    rss = [s.rss_kib for s in samples if s.rss_kib]
    cpu = last.cpu_s if last and last.cpu_s is not None else None
    report = {
        "command": " ".join(["bench/soak.py", *sys.argv[1:]]),
        "jobs": jobs,
        "requests_per_job": per_job,
        "requests": total,
        "finished": finished,
        "exit_code": rc,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(total / elapsed, 1) if elapsed else None,
        "rss_warm_mib": round(warm.rss_kib / 1024, 1) if warm and warm.rss_kib else None,
        "rss_warm_at_s": warm.t if warm else None,
        "rss_end_mib": round(last.rss_kib / 1024, 1) if last and last.rss_kib else None,
        "rss_peak_mib": round(max(rss) / 1024, 1) if rss else None,
        "max_fds": max((s.fds for s in samples), default=None),
        "max_tcp_sockets": max((s.tcp for s in samples), default=None),
        "max_tcp_established": max((s.tcp_established for s in samples), default=None),
        "pacer_cpu_s": round(cpu, 1) if cpu is not None else None,
        "pacer_cpu_share": round(cpu / elapsed, 2) if cpu is not None and elapsed else None,
        "mock": {k: mock_stats.get(k) for k in ("requests", "ok", "rate_limited",
                                                "max_in_service", "errors")},
        "mock_cpu_share": round(mock_cpu / elapsed, 2) if elapsed else None,
        "limit_median": median([s.limit for s in samples if s.limit is not None]),
        "limit_max": max((s.limit for s in samples if s.limit is not None), default=None),
        "inflight_median": median([s.inflight for s in samples if s.inflight is not None]),
        "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "log_events": dict(events.most_common(12)),
        "pacer_stderr": stderr[-2000:],
        "check": check,
        "samples": [asdict(s) for s in samples],
    }
    if report["rss_warm_mib"] and report["rss_end_mib"]:
        report["rss_growth_mib"] = round(report["rss_end_mib"] - report["rss_warm_mib"], 1)
        report["rss_growth_pct"] = round(100 * report["rss_growth_mib"]
                                         / report["rss_warm_mib"], 1)
    return report


def median(values: list[int]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def print_table(r: dict[str, Any]) -> None:
    c = r["check"]
    rows = [
        ("requests (jobs x per job)", f"{r['requests']} ({r['jobs']} x {r['requests_per_job']})"),
        ("finished / exit code", f"{r['finished']} / {r['exit_code']}"),
        ("total time", f"{r['elapsed_s']} s"),
        ("requests/s", r["requests_per_s"]),
        ("RSS warmed up (10 % answered)", f"{r['rss_warm_mib']} MiB at {r['rss_warm_at_s']} s"),
        ("RSS at the end", f"{r['rss_end_mib']} MiB"),
        ("RSS growth warm -> end", f"{r.get('rss_growth_mib')} MiB "
                                   f"({r.get('rss_growth_pct')} %)"),
        ("RSS peak", f"{r['rss_peak_mib']} MiB"),
        ("max open fds", r["max_fds"]),
        ("max TCP sockets (established)", f"{r['max_tcp_sockets']} "
                                          f"({r['max_tcp_established']})"),
        ("pacer CPU", f"{r['pacer_cpu_s']} s ({r['pacer_cpu_share']} of a core)"),
        ("mock CPU", f"{r['mock_cpu_share']} of a core"),
        ("pacer's limit: median / max", f"{r['limit_median']} / {r['limit_max']} "
                                        f"(in flight, median: {r['inflight_median']})"),
        ("load average (1 min) before / after",
         " / ".join(str(x) for x in r["loadavg_1m_before_after"])
         + f" ({r['cpus']} CPUs)"),
        ("mock requests / 429s", f"{r['mock']['requests']} / {r['mock']['rate_limited']}"),
        ("mock max in service (cap)", f"{r['mock']['max_in_service']} ({MOCK_CAP})"),
        ("result lines", c["result_lines"]),
        ("every result exactly once", c["exactly_once"]),
        ("missing / duplicated / unexpected", f"{c['missing']} / {c['duplicated']} / "
                                              f"{c['unexpected']}"),
        ("error codes", ", ".join(f"{k}: {v}" for k, v in sorted(c["codes"].items()))),
        ("jobs done / failed / left", f"{c['folders']['done']} / {c['folders']['failed']} / "
                                      f"{c['folders']['incoming'] + c['folders']['active']}"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="5 jobs x 200 requests")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--print-every", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=1800.0,
                        help="stop pacer (and report it unfinished) after this long")
    parser.add_argument("--keep", action="store_true", help="keep the spool and the logs")
    parser.add_argument("--out", type=Path, default=OUT / "soak.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.requests = 5, 1000
    if args.jobs < 1 or args.requests < args.jobs:
        parser.error("need --jobs >= 1 and --requests >= --jobs")
    report = run(args)
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwritten: {os.path.relpath(args.out)}")
    ok = report["finished"] and report["check"]["exactly_once"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
