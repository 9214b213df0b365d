"""Speed benchmark: how many requests per second, and how much client CPU per
request, pacer and bare HTTP loops get through against a fast loopback API.

Run from the repository root (needs the ``bench`` extra: ``pip install -e '.[bench]'``)::

    .venv/bin/python bench/speed_bench.py [--scenario wide,fast,adaptive] [--runs 3]
                                          [--contenders httpx,httpx2,aiohttp,pacer]

Scenarios (issue 11's targets):

* ``wide``: 600 requests in flight, 1 s latency: the ideal is 600 req/s.
* ``fast``: 32 in flight, instant answers.
* ``adaptive``: pacer alone, adaptive, against a hidden cap of 600 (the server answers
  429 above it), 1 s latency; throughput once the cold start is over.

Spool scenarios, the real daemon (``pacer run --drain``, limit pinned at 32, instant
answers) in a process of its own, its CPU time from ``wait4``:

* ``files``: 2000 single-request job files: files/s and CPU per file;
* ``bigfiles``: 100,000 single-request job files, and ``bigjsonl``: one ``.jsonl`` of
  100,000 lines: when the first request reached the server after the start, peak
  resident memory (``ru_maxrss``), requests/s;
* ``pickup``: an idle daemon; 20 files renamed into ``incoming/`` one at a time: how
  long until each request reached the server (median, max);
* ``firstjsonl``, ``firstfiles``: the spools of ``bigjsonl`` and ``bigfiles``, but the
  daemon (not draining) is stopped (SIGTERM) once its first request reached the
  server: only the time to the first request, so that many runs are cheap.

Every spool run checks that each request has exactly one result line.

Contenders, each in a process of its own (CPU time is the process's, all threads):

* ``httpx``: a bare loop of N Trio tasks on one ``httpx.AsyncClient`` (httpx 0.28);
  ``httpx-sharded``: the same over httpcore pools of one connection each (pacer's
  ``ShardedTransport``, what pacer used before ``Http1Transport``); ``httpx-lean``:
  the same over pacer's HTTP/1.1 transport (``build_transport``: ``Http1Transport``);
* ``httpx2``: the same loop on ``httpx2`` (pydantic's continuation of httpx);
* ``aiohttp``: N asyncio tasks on one ``aiohttp.ClientSession`` (limit N);
* ``pacer``: N Trio tasks calling ``Upstream.send`` (the real send path: limiter,
  pacing gate, breaker, classification, rate-limit headers) with pacer's client,
  the limit pinned (adaptive off) unless the scenario is adaptive.

Every loop posts a small chat request, reads and decodes the JSON answer and writes
one JSON result line to a file (pacer's ``result_line`` for pacer). Each run warms up,
then measures a window: requests completed in it / its length, and the process's CPU
time in it / those requests. The server (``bench/speed_server.py``, aiohttp on
uvloop) runs in its own process; its CPU per request in the same window is reported
so that it can be seen not to be the bottleneck. The load average at the start of
each run is recorded: the machine may be shared. Results: a table on stdout and
``bench/out/speed_bench.json``. The loops' result lines go to ``bench/out/`` (with
``SPEED_BENCH_NULL=1``: to ``/dev/null``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
CHAT = "/v1/chat/completions"
BODY = {"model": "bench", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Say ok."}]}
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    name: str
    inflight: int
    latency: float
    warmup: float
    window: float
    cap: int | None = None
    adaptive: bool = False
    ideal: float | None = None


SCENARIOS = {
    "wide": Scenario("wide", 600, 1.0, warmup=3.0, window=6.0, ideal=600.0),
    "fast": Scenario("fast", 32, 0.0, warmup=1.5, window=5.0),
    # 700 workers against a cap of 600: pacer must find the cap by itself.
    "adaptive": Scenario("adaptive", 700, 1.0, warmup=12.0, window=8.0, cap=600,
                         adaptive=True, ideal=600.0),
}
CONTENDERS = ["httpx", "httpx-sharded", "httpx-lean", "httpx2", "aiohttp", "pacer"]
SPOOL_SCENARIOS = {"files": ("json", 2000), "bigfiles": ("json", 100_000),
                   "bigjsonl": ("jsonl", 100_000), "pickup": ("json", 20),
                   "firstjsonl": ("jsonl", 100_000), "firstfiles": ("json", 100_000)}
SPOOL_LIMIT = 32


# ------------------------------------------------------------------ the clients


class Meter:
    """Counts completions; marks the measured window on stdout for the parent."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.done = 0
        self.errors = 0
        self.statuses: dict[int, int] = {}
        self.result: dict[str, Any] = {}

    def count(self, status: int | None) -> None:
        if status == 200:
            self.done += 1
        else:
            self.errors += 1
            key = status or 0
            self.statuses[key] = self.statuses.get(key, 0) + 1

    def start(self) -> tuple[float, float, int]:
        print("mark start", flush=True)
        return time.monotonic(), time.process_time(), self.done

    def end(self, begun: tuple[float, float, int]) -> None:
        t0, cpu0, done0 = begun
        t1, cpu1, done1 = time.monotonic(), time.process_time(), self.done
        print("mark end", flush=True)
        n = done1 - done0
        self.result = {"requests": n, "seconds": t1 - t0, "req_per_s": n / (t1 - t0),
                       "cpu_ms_per_req": 1000 * (cpu1 - cpu0) / n if n else None,
                       "cpu_share": (cpu1 - cpu0) / (t1 - t0), "errors": self.errors,
                       "statuses": self.statuses}


def _line(out: Any, payload: dict[str, Any]) -> None:
    out.write(json.dumps(payload) + "\n")


def run_trio_httpx(module_name: str, url: str, sc: Scenario, meter: Meter, out: Any,
                   transport: str | None = None) -> None:
    import importlib

    import trio

    httpx: Any = importlib.import_module(module_name)

    async def main() -> None:
        n = sc.inflight
        if transport is not None:
            from pacer.config import UpstreamConfig
            from pacer.service.http import build_transport
            # "sharded": httpcore pools of one connection; "lean": Http1Transport.
            shards = 1 if transport == "sharded" else None
            pools = build_transport(UpstreamConfig(name="b", base_url=url, max_limit=n), shards)
            client = httpx.AsyncClient(base_url=url, transport=pools, timeout=60)
        else:
            client = httpx.AsyncClient(
                base_url=url, timeout=60,
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
        async with client, trio.open_nursery() as nursery:
            async def worker(i: int) -> None:
                while True:
                    try:
                        r = await client.post(CHAT, json=BODY)
                        body = r.json()
                        status: int | None = r.status_code
                    except httpx.HTTPError:
                        body, status = None, None
                    meter.count(status)
                    _line(out, {"custom_id": f"w{i}", "status": status, "body": body})

            for i in range(n):
                nursery.start_soon(worker, i)
            await trio.sleep(sc.warmup)
            begun = meter.start()
            await trio.sleep(sc.window)
            meter.end(begun)
            nursery.cancel_scope.cancel()

    trio.run(main)


def run_aiohttp(url: str, sc: Scenario, meter: Meter, out: Any) -> None:
    import asyncio

    import aiohttp

    async def main() -> None:
        n = sc.inflight
        connector = aiohttp.TCPConnector(limit=n)
        async with aiohttp.ClientSession(url, connector=connector) as session:
            async def worker(i: int) -> None:
                while True:
                    try:
                        async with session.post(CHAT, json=BODY) as r:
                            body = await r.json()
                            status: int | None = r.status
                    except aiohttp.ClientError:
                        body, status = None, None
                    meter.count(status)
                    _line(out, {"custom_id": f"w{i}", "status": status, "body": body})

            tasks = [asyncio.create_task(worker(i)) for i in range(n)]
            await asyncio.sleep(sc.warmup)
            begun = meter.start()
            await asyncio.sleep(sc.window)
            meter.end(begun)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def run_pacer(url: str, sc: Scenario, meter: Meter, out: Any) -> None:
    import trio

    from pacer.config import UpstreamConfig
    from pacer.control.limit import FixedLimit
    from pacer.logs import configure_logging
    from pacer.service.http import build_client
    from pacer.service.upstream import Upstream
    from pacer.spool.jobs import Request
    from pacer.spool.results import result_line

    configure_logging("info", "json", stream=out)  # logs cost what they cost in the daemon

    async def main() -> None:
        n = sc.inflight
        cfg = UpstreamConfig(name="bench", base_url=url, adaptive=sc.adaptive,
                             initial_limit=1 if sc.adaptive else n, max_limit=max(n, 1000),
                             max_attempts=1000, give_up_after=0)
        client = build_client(cfg, None)
        upstream = Upstream(cfg, client, limit=None if sc.adaptive else FixedLimit(n))
        series: list[tuple[float, int, int]] = []
        async with client, trio.open_nursery() as nursery:
            async def worker(i: int) -> None:
                k = 0
                while True:
                    k += 1
                    req = Request(custom_id=f"w{i}-{k}", method="POST", url=CHAT,
                                  upstream="bench", body=BODY)
                    answer = await upstream.send(req)
                    assert answer is not None
                    meter.count(answer.status if answer.ok else None)
                    out.write(result_line(req.custom_id, "bench", answer.attempts,
                                          status=answer.status, body=answer.body,
                                          request_id=answer.request_id,
                                          error_code=answer.error_code,
                                          error_message=answer.error_message).decode())

            async def sample() -> None:
                t0 = trio.current_time()
                while True:
                    series.append((round(trio.current_time() - t0, 2), meter.done,
                                   upstream.limit.limit))
                    await trio.sleep(1.0)

            nursery.start_soon(sample)
            for i in range(n):
                nursery.start_soon(worker, i)
            await trio.sleep(sc.warmup)
            begun = meter.start()
            await trio.sleep(sc.window)
            meter.end(begun)
            meter.result["series"] = series
            meter.result["final_limit"] = upstream.limit.limit
            nursery.cancel_scope.cancel()

    trio.run(main)


def client_main(contender: str, url: str, sc: Scenario) -> None:
    meter = Meter(sc)
    with open(os.devnull if os.environ.get("SPEED_BENCH_NULL") else
              OUT / f".speed_{contender}.jsonl", "w") as out:
        runners: dict[str, Callable[[], None]] = {
            "httpx": lambda: run_trio_httpx("httpx", url, sc, meter, out),
            "httpx-sharded": lambda: run_trio_httpx("httpx", url, sc, meter, out,
                                                    transport="sharded"),
            "httpx-lean": lambda: run_trio_httpx("httpx", url, sc, meter, out, transport="lean"),
            "httpx2": lambda: run_trio_httpx("httpx2", url, sc, meter, out),
            "aiohttp": lambda: run_aiohttp(url, sc, meter, out),
            "pacer": lambda: run_pacer(url, sc, meter, out),
        }
        runners[contender]()
    print("result " + json.dumps(meter.result), flush=True)


# ---------------------------------------------------------------- orchestration


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


@dataclass
class Run:
    scenario: str
    contender: str
    load: float
    result: dict[str, Any] = field(default_factory=dict)
    server_cpu_ms_per_req: float | None = None


class Server:
    def __init__(self, sc: Scenario) -> None:
        cmd = [sys.executable, str(HERE / "speed_server.py"), "--latency", str(sc.latency)]
        if sc.cap is not None:
            cmd += ["--cap", str(sc.cap)]
        # Its stderr is dropped: clients stopped mid-request make aiohttp log resets.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_one(sc: Scenario, contender: str, server: Server) -> Run:
    run = Run(sc.name, contender, load=os.getloadavg()[0])
    proc = subprocess.Popen([sys.executable, __file__, "--client", contender, "--url", server.url,
                             "--scenario", sc.name], stdout=subprocess.PIPE, text=True,
                            cwd=HERE.parent)
    assert proc.stdout is not None
    cpu0 = 0.0
    for line in proc.stdout:
        if line.startswith("mark start"):
            cpu0 = cpu_seconds(server.proc.pid)
        elif line.startswith("mark end"):
            server_cpu = cpu_seconds(server.proc.pid) - cpu0
        elif line.startswith("result "):
            run.result = json.loads(line[len("result "):])
    if proc.wait(60) != 0 or not run.result:
        raise RuntimeError(f"{contender} failed (exit {proc.returncode})")
    if run.result.get("requests"):
        run.server_cpu_ms_per_req = 1000 * server_cpu / run.result["requests"]
    return run


def spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    med = round(statistics.median(values), digits)
    if len(values) == 1:
        return f"{med}"
    return f"{med} ({round(min(values), digits)}–{round(max(values), digits)})"


def report(runs: list[Run]) -> str:
    rows = ["| scenario | contender | req/s | client CPU ms/req | server CPU ms/req | load |",
            "|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r.scenario, r.contender) for r in runs))
    for scenario, contender in keys:
        mine = [r for r in runs if (r.scenario, r.contender) == (scenario, contender)]
        rate = [r.result["req_per_s"] for r in mine]
        cpu = [r.result["cpu_ms_per_req"] for r in mine if r.result["cpu_ms_per_req"]]
        server = [r.server_cpu_ms_per_req for r in mine if r.server_cpu_ms_per_req]
        loads = [r.load for r in mine]
        rows.append(f"| {scenario} | {contender} | {spread(rate, 0)} | {spread(cpu, 2)} | "
                    f"{spread([s for s in server if s is not None], 3)} | "
                    f"{min(loads):.1f}–{max(loads):.1f} |")
    return "\n".join(rows)



# ------------------------------------------------------------ spool scenarios


def pacer_command() -> list[str]:
    script = Path(sys.executable).parent / "pacer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pacer"]


def server_stats(url: str, reset: bool = False) -> dict[str, Any]:
    import urllib.request
    with urllib.request.urlopen(url + "/_stats" + ("?reset" if reset else ""),
                                timeout=5) as r:
        stats: dict[str, Any] = json.loads(r.read())
        return stats


def spool_config(root: Path, url: str) -> Path:
    cfg = root / "pacer.toml"
    cfg.write_text(f"""[spool]
dir = "spool"

[upstreams.default]
base_url = "{url}"
adaptive = false
initial_limit = {SPOOL_LIMIT}
max_limit = {SPOOL_LIMIT}
""")
    return cfg


def job_line(custom_id: str) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": BODY})


def fill_spool(spool: Path, kind: str, count: int) -> None:
    incoming = spool / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        (incoming / "big.jsonl").write_text(
            "".join(job_line(f"r{i}") + "\n" for i in range(count)))
        return
    for i in range(count):
        (incoming / f"job-{i:06d}.json").write_text(job_line(f"r{i}"))


def count_results(spool: Path) -> tuple[int, int]:
    """(result lines, distinct custom_ids) over every results file."""
    ids: list[str] = []
    for path in (spool / "results").glob("*.jsonl"):
        ids += [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]
    return len(ids), len(set(ids))


def log_times(log: Path, event: str) -> list[float]:
    from datetime import datetime
    out = []
    for line in log.read_text().splitlines():
        if f'"{event}"' in line:
            ts = json.loads(line)["timestamp"]
            out.append(datetime.fromisoformat(ts).timestamp())
    return out


def run_drain(sc_name: str, url: str, root: Path) -> dict[str, Any]:
    kind, count = SPOOL_SCENARIOS[sc_name]
    cfg = spool_config(root, url)
    spool = root / "spool"
    fill_spool(spool, kind, count)
    log = root / "pacer.log"
    before = server_stats(url, reset=True)["requests"]
    with log.open("w") as out:
        started = time.time()
        proc = subprocess.Popen([*pacer_command(), "run", "--config", str(cfg), "--drain"],
                                stdout=out, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stats = server_stats(url)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"pacer exited {proc.returncode}: {log.read_text()[-2000:]}")
    lines, distinct = count_results(spool)
    claimed = log_times(log, "job.claimed")
    completed = log_times(log, "job.completed")
    busy = (max(completed) - min(claimed)) if claimed and completed else None
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "exit": proc.returncode, "requests": count, "result_lines": lines,
        "distinct_ids": distinct, "sent": stats["requests"] - before,
        "seconds": ended - started,
        "per_s": count / (ended - started),
        "per_s_busy": count / busy if busy else None,
        "cpu_ms_per_request": 1000 * cpu / count,
        "sys_ms_per_request": 1000 * usage.ru_stime / count,
        "first_request_after_s": stats["first_at"] - started if stats["first_at"] else None,
        "max_rss_mb": usage.ru_maxrss / 1024,
    }


def run_first(sc_name: str, url: str, root: Path) -> dict[str, Any]:
    """Start the daemon on a big spool; stop it once its first request arrived."""
    kind, count = SPOOL_SCENARIOS[sc_name]
    cfg = spool_config(root, url)
    fill_spool(root / "spool", kind, count)
    server_stats(url, reset=True)
    with (root / "pacer.log").open("w") as out:
        started = time.time()
        proc = subprocess.Popen([*pacer_command(), "run", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = started + 60
            while (first := server_stats(url)["first_at"]) is None and time.time() < deadline:
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    # A stopped daemon answers no more: these runs check only the first request.
    return {"requests": 0, "result_lines": 0, "distinct_ids": 0,
            "first_request_after_s": first - started if first else None}


def run_pickup(url: str, root: Path) -> dict[str, Any]:
    cfg = spool_config(root, url)
    spool = root / "spool"
    (spool / "incoming").mkdir(parents=True, exist_ok=True)
    log = root / "pacer.log"
    latencies: list[float] = []
    with log.open("w") as out:
        proc = subprocess.Popen([*pacer_command(), "run", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while '"daemon.started"' not in log.read_text():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the daemon did not start")
                time.sleep(0.05)
            time.sleep(0.5)  # let the first scan and the watcher settle: idle now
            _, count = SPOOL_SCENARIOS["pickup"]
            for i in range(count):
                seen = server_stats(url)["requests"]
                tmp = spool / "tmp" / f"pick-{i}.json"
                tmp.write_text(job_line(f"p{i}"))
                t0 = time.time()
                os.rename(tmp, spool / "incoming" / tmp.name)
                limit = time.monotonic() + 10
                while (stats := server_stats(url))["requests"] == seen:
                    if time.monotonic() > limit:
                        raise RuntimeError(f"pick-{i}.json was not sent within 10 s")
                    time.sleep(0.002)
                latencies.append(stats["last_at"] - t0)
                time.sleep(0.3)  # idle again before the next one
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    lines, distinct = count_results(spool)
    return {"requests": len(latencies), "result_lines": lines, "distinct_ids": distinct,
            "median_ms": 1000 * statistics.median(latencies),
            "max_ms": 1000 * max(latencies), "all_ms": [round(1000 * x, 1) for x in latencies]}


def run_spool_scenario(name: str, runs: int) -> list[Run]:
    import tempfile
    out: list[Run] = []
    server = Server(Scenario(name, SPOOL_LIMIT, 0.0, 0.0, 0.0))
    try:
        for i in range(runs):
            run = Run(name, "pacer-daemon", load=os.getloadavg()[0])
            with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
                root = Path(tmp)
                run.result = (run_pickup(server.url, root) if name == "pickup"
                              else run_first(name, server.url, root)
                              if name.startswith("first")
                              else run_drain(name, server.url, root))
            r = run.result
            ok = r["result_lines"] == r["distinct_ids"] == r["requests"]
            r["exactly_once"] = ok
            print(f"{name} #{i + 1}: " + json.dumps(
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()
                 if k != "all_ms"}), flush=True)
            if not ok:
                raise RuntimeError(f"{name}: results not exactly once: {r}")
            out.append(run)
    finally:
        server.close()
    return out


def spool_report(runs: list[Run]) -> str:
    rows = ["| scenario | files or lines/s (whole run) | /s first claim to last completion | "
            "CPU ms per request | first request after | peak RSS MB | pick-up median / max ms "
            "| load |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r.scenario for r in runs):
        mine = [r.result for r in runs if r.scenario == name]
        loads = [r.load for r in runs if r.scenario == name]

        def col(key: str, digits: int, rs: list[dict[str, Any]] = mine) -> str:
            return spread([r[key] for r in rs if r.get(key) is not None], digits)

        rows.append(f"| {name} | {col('per_s', 0)} | {col('per_s_busy', 0)} | "
                    f"{col('cpu_ms_per_request', 2)} | {col('first_request_after_s', 2)} | "
                    f"{col('max_rss_mb', 0)} | {col('median_ms', 1)} / {col('max_ms', 1)} | "
                    f"{min(loads):.1f}–{max(loads):.1f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="wide,fast,adaptive")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    if args.client:
        client_main(args.client, args.url, SCENARIOS[args.scenario])
        return
    runs: list[Run] = []
    spool_runs: list[Run] = []
    for name in args.scenario.split(","):
        if name in SPOOL_SCENARIOS:
            spool_runs += run_spool_scenario(name, args.runs)
            continue
        sc = SCENARIOS[name]
        contenders = ["pacer"] if sc.adaptive else args.contenders.split(",")
        server = Server(sc)
        try:
            for i in range(args.runs):
                for contender in contenders:
                    run = run_one(sc, contender, server)
                    runs.append(run)
                    r = run.result
                    print(f"{name} #{i + 1} {contender}: {r['req_per_s']:.0f} req/s, "
                          f"{r['cpu_ms_per_req'] or 0:.2f} ms CPU/req, server "
                          f"{run.server_cpu_ms_per_req or 0:.3f} ms/req, errors {r['errors']}, "
                          f"load {run.load:.1f}", flush=True)
        finally:
            server.close()
    if runs:
        print(report(runs))
    if spool_runs:
        print(spool_report(spool_runs))
    (OUT / "speed_bench.json").write_text(json.dumps([asdict(r) for r in runs + spool_runs],
                                                     indent=1))


if __name__ == "__main__":
    main()
