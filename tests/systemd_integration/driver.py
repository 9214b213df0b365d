#!/usr/bin/env python3
"""pacer under a real systemd: boot Debian 12 in a container, install the checkout as the
README says, and check what a user relies on.

Run as root: ``python3 tests/systemd_integration/driver.py``. Exit 0: every check passed;
1: a check failed, or the container did not finish booting (the journal and unit status
are printed); 77: skipped, with the reason (not root, no systemd-nspawn/debootstrap and
no apt-get to install them, no package index, or systemd-nspawn cannot run here).

How: ``debootstrap --variant=minbase`` makes a bookworm rootfs once (cached under
``$PACER_NSPAWN_CACHE``, default ``/var/tmp/pacer-nspawn``); ``systemd-nspawn -b
--volatile=overlay`` boots it with systemd 252 as PID 1, so every run starts from the
same clean system and leaves the cache untouched; commands run inside with ``nsenter``.
pip inside the container cannot reach the package index over TLS, so the wheels are
downloaded on the host and pip inside finds them through ``PIP_NO_INDEX`` and
``PIP_FIND_LINKS``: the README's own ``pip install .`` then runs unchanged. The mock API
runs inside as a transient unit. Every wait is bounded, the whole run has a deadline, and
the container and temporary files are removed on every way out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = os.environ.get("PACER_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What a fresh Debian 12 server has that minbase lacks (systemd as init, D-Bus for
# systemctl, ca-certificates); python3-venv is installed by the README's own first line.
PACKAGES = ["systemd", "systemd-sysv", "dbus", "ca-certificates", "apt-utils"]
CACHE = Path(os.environ.get("PACER_NSPAWN_CACHE", "/var/tmp/pacer-nspawn"))
SKIP = 77
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SPOOL = "/var/lib/pacer"
CONFIG = "/etc/pacer/pacer.toml"
MAX_EXPOSURE = 2.0
MEMBER, STRANGER = "alice", "bob"
SLOW_LATENCY_S = 6.0  # the request in flight while the unit is stopped
DEADLINE_S = 900  # the whole run, container build included


class Skipped(Exception):
    """This machine cannot run the test; the message says why."""


class CheckFailed(AssertionError):
    """A check of the product failed."""


def say(text: str) -> None:
    print(text, flush=True)


def host(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, check=False,
                          **kwargs)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    """A free TCP port on the loopback (the container shares the host's network)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the machine: tools, rootfs, wheels --------------------------------------------------


def ensure_tools() -> None:
    if os.geteuid() != 0:
        raise Skipped("needs root (systemd-nspawn boots a container)")
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter") if not shutil.which(t)]
    if not missing:
        return
    if not shutil.which("apt-get"):
        raise Skipped(f"{', '.join(missing)} missing and no apt-get to install them")
    say(f"# installing debootstrap and systemd-container (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "debootstrap", "systemd-container"]):
        done = host(cmd, timeout=600, env=env)
        if done.returncode != 0:
            raise Skipped(f"could not install the container tools: {done.stderr[-500:]}")


def rootfs() -> Path:
    """The cached bookworm rootfs, built once (atomically: a half-built one is never used)."""
    key = hashlib.sha256(" ".join([SUITE, MIRROR, *PACKAGES]).encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    if (root / "etc" / "os-release").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{SUITE}-building-", dir=CACHE))
    say(f"# debootstrap {SUITE} into {root} (once; about a minute)")
    try:
        done = host(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                     SUITE, str(building), MIRROR], timeout=900)
        if done.returncode != 0:
            raise Skipped(f"debootstrap failed: {done.stdout[-800:]}{done.stderr[-800:]}")
        try:
            building.rename(root)
        except OSError:
            if not (root / "etc" / "os-release").exists():  # not a concurrent run's
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return root


def download_wheels(dest: Path) -> None:
    """pacer's dependencies and its build backend, for ``pip install --no-index``."""
    done = host([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest),
                 str(REPO), "setuptools>=69", "wheel"], timeout=600)
    if done.returncode != 0:
        raise Skipped(f"pip download failed (no package index?): {done.stderr[-800:]}")


def copy_checkout(dest: Path) -> None:
    """The working tree as git sees it (tracked and new files, not ignored ones)."""
    listed = host(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                   "--exclude-standard"], timeout=60)
    if listed.returncode != 0:
        raise Skipped(f"not a git checkout: {listed.stderr.strip()}")
    for name in filter(None, listed.stdout.split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


# -- the container -------------------------------------------------------------------


@dataclass
class Container:
    """A booted container; ``sh`` runs a shell command inside as root (or ``user``)."""

    proc: subprocess.Popen[bytes]
    leader: int
    env: dict[str, str] = field(default_factory=dict)

    def sh(self, script: str, *, user: str | None = None, timeout: float = 60,
           check: bool = True, env: dict[str, str] | None = None,
           cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        home = "/root" if user is None else f"/home/{user}"
        cwd = cwd or home
        base = {"PATH": PATH, "HOME": home, "LANG": "C.UTF-8", **self.env, **(env or {})}
        inner = ["bash", "-c", f"cd {cwd} && {script}"]
        if user is not None:
            # runuser starts a login-like session: the user's groups from /etc/group.
            inner = ["runuser", "-u", user, "--", *inner]
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i",
               *(f"{k}={v}" for k, v in base.items()), *inner]
        done = host(cmd, timeout=timeout)
        if check and done.returncode != 0:
            raise CheckFailed(f"`{script}` exited {done.returncode}:\n{done.stdout}"
                              f"{done.stderr}")
        return done

    def out(self, script: str, **kwargs: Any) -> str:
        return self.sh(script, **kwargs).stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        text = self.out(f"systemctl show {unit} -p {','.join(props)}")
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@contextlib.contextmanager
def booted(root: Path, binds: dict[Path, str], log: Path) -> Iterator[Container]:
    cmd = ["systemd-nspawn", "-D", str(root), "--keep-unit", "--register=no",
           "--volatile=overlay", "--console=read-only", f"--machine=pacer-it-{os.getpid()}",
           *(f"--bind-ro={src}:{dst}" for src, dst in binds.items()), "-b"]
    with open(log, "wb") as console:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                                start_new_session=True)
    leader = 0
    try:
        def find_leader() -> int:
            if proc.poll() is not None:
                raise Skipped(f"systemd-nspawn exited {proc.returncode}: "
                              f"{log.read_text(errors='replace')[-800:]}")
            # nspawn's first child sets the container up and forks PID 1, which is ours
            # once it has exec'd systemd (entering the first child would be too early).
            for kid in host(["pgrep", "-P", str(proc.pid)], timeout=10).stdout.split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{kid}/comm").read_text().strip() == "systemd":
                        return int(kid)
            return 0

        leader = wait_until(find_leader, 60, "the container's PID 1")
        box = Container(proc, leader)
        last: list[str] = []

        def booted_up() -> bool:
            done = box.sh("systemctl is-system-running", check=False, timeout=30)
            last[:] = [done.stdout.strip(), done.stderr.strip()]
            return last[0] in ("running", "degraded")

        try:
            wait_until(booted_up, 120, "the container to boot", interval=0.5)
        except CheckFailed:
            # nspawn runs here, so this is a failure to see, not a machine to skip.
            raise CheckFailed(f"the container did not finish booting: {last}\n"
                              f"{log.read_text(errors='replace')[-1500:]}") from None
        if last[0] == "degraded":
            say("# note: booted degraded: " + box.out("systemctl --failed --no-legend"))
        yield box
    finally:
        stop_container(proc, leader)


def stop_container(proc: subprocess.Popen[bytes], leader: int) -> None:
    """SIGTERM makes systemd-nspawn power the container off; then force it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            if leader:  # PID 1 of the container: its death ends every process in it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leader, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=30)


# -- the README's steps --------------------------------------------------------------


def readme_blocks() -> list[list[str]]:
    """The ``sh`` blocks of the README section "Running under systemd", as lines."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Running under systemd\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [[line for line in b.splitlines() if line.strip()] for b in blocks]


def run_readme_block(box: Container, lines: list[str], *, env: dict[str, str],
                     stop_before: str | None = None) -> list[str]:
    """Run ``lines`` verbatim as root in the checkout until one starts with ``stop_before``;
    returns the rest. ``journalctl -f`` (it never ends) is the one line not run."""
    for i, line in enumerate(lines):
        if stop_before is not None and line.startswith(stop_before):
            return lines[i:]
        if re.search(r"journalctl .*-f\b", line):
            continue
        say(f"#   $ {line}")
        box.sh(line, cwd="/root/pacer", env=env, timeout=300)
    return []


# -- the checks ----------------------------------------------------------------------


def job_lines(stem: str, n: int, upstream: str | None = None) -> str:
    reqs = []
    for i in range(n):
        r: dict[str, Any] = {"custom_id": f"{stem}-{i}", "method": "POST",
                             "url": "/v1/chat/completions",
                             "body": {"model": "m", "messages": [{"role": "user",
                                                                  "content": f"hi {i}"}]}}
        if upstream:
            r["upstream"] = upstream
        reqs.append(json.dumps(r))
    return "\n".join(reqs) + "\n"


def put_file(box: Container, path: str, text: str, user: str | None = None) -> None:
    box.sh(f"cat > {path} <<'EOF'\n{text}EOF", user=user)


def exists(box: Container, path: str) -> bool:
    return box.sh(f"test -e {path}", check=False).returncode == 0


def count(box: Container, folder: str) -> int:
    out = box.out(f"find {folder} -maxdepth 1 -type f -name '*.json*' "
                  "! -name '*.error.json' | wc -l")
    return int(out)


def journal(box: Container, unit: str, *extra: str) -> list[dict[str, Any]]:
    text = box.out(f"journalctl -u {unit} -o json --no-pager {' '.join(extra)}", timeout=60)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def pacer_events(box: Container, unit: str, event: str) -> list[dict[str, Any]]:
    found = []
    for entry in journal(box, unit):
        msg = entry.get("MESSAGE")
        if isinstance(msg, str) and msg.startswith("{"):
            with contextlib.suppress(ValueError):
                obj = json.loads(msg)
                if obj.get("event") == event:
                    found.append(obj)
    return found


def job_done(box: Container, spool: str, name: str, timeout: float = 60) -> None:
    """Wait for job ``name`` to end, and expect it in done/ (else say where and why)."""
    def where() -> str | None:
        for folder in ("done", "failed", "rejected"):
            if box.sh(f"test -f {spool}/{folder}/{name}", check=False).returncode == 0:
                return folder
        return None

    folder = wait_until(where, timeout, f"{spool}/incoming/{name} to end")
    if folder == "rejected":
        why = box.out(f"cat {spool}/rejected/{name}.error.json")
        raise CheckFailed(f"{name} was rejected: {why}")
    expect(folder == "done", f"{name} ended in {folder}/")


def start_mock(box: Container, name: str, port: int, key: str, *extra: str) -> None:
    box.sh(f"systemctl stop {name} 2>/dev/null; systemctl reset-failed {name} 2>/dev/null; "
           f"systemd-run --unit={name} --description={name} "
           f"/opt/pacer/bin/pacer mock-api --host 127.0.0.1 --port {port} "
           f"--auth-key {key} {' '.join(extra)}", check=True)
    wait_until(lambda: box.sh(f"exec 3<>/dev/tcp/127.0.0.1/{port}", check=False).returncode
               == 0, 30, f"the mock API {name} on port {port}")


def mock_stats(box: Container, port: int) -> dict[str, Any]:
    text = box.out(f"/opt/pacer/bin/python -c 'import urllib.request,sys; sys.stdout.write("
                   f"urllib.request.urlopen(\"http://127.0.0.1:{port}/_mock/stats\")"
                   f".read().decode())'")
    result: dict[str, Any] = json.loads(text)
    return result


def check_results(box: Container, spool: str, stem: str, n: int) -> None:
    text = box.out(f"cat {spool}/results/{stem}.jsonl")
    lines = [json.loads(line) for line in text.splitlines()]
    expect(len(lines) == n, f"{stem}: {len(lines)} result lines, expected {n}")
    bad = [r for r in lines if r["error"] is not None or r["response"]["status_code"] != 200]
    expect(not bad, f"{stem}: requests failed: {bad[:2]}")
    expect(len({r["custom_id"] for r in lines}) == n, f"{stem}: duplicate result lines")


@dataclass
class Run:
    box: Container
    key: str
    port: int
    slow_port: int
    timings: list[tuple[str, float]] = field(default_factory=list)

    def step(self, name: str, fn: Callable[[], None]) -> None:
        say(f"# {name}")
        t0 = time.monotonic()
        fn()
        took = time.monotonic() - t0
        self.timings.append((name, took))
        say(f"ok - {name} ({took:.1f} s)")


def notify_and_ready(box: Container, unit: str) -> None:
    p = box.show(unit, "Type", "ActiveState", "SubState", "StatusText", "NRestarts",
                 "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic")
    expect(p["Type"] == "notify", f"{unit}: Type={p['Type']}")
    expect((p["ActiveState"], p["SubState"]) == ("active", "running"), f"{unit}: {p}")
    expect(p["StatusText"] != "", f"{unit}: no STATUS= from the daemon")
    # Type=notify: systemd waited for READY=1 (after pacer's start-up and first spool
    # scan), so "active" came measurably after the process started.
    waited = (int(p["ActiveEnterTimestampMonotonic"])
              - int(p["ExecMainStartTimestampMonotonic"])) / 1e6
    expect(waited > 0.05, f"{unit}: active {waited:.3f} s after start: READY not awaited?")
    started = pacer_events(box, unit, "daemon.started")
    expect(bool(started), f"{unit}: no daemon.started in the journal")
    say(f"#   READY {waited:.2f} s after exec; status: {p['StatusText']}")


def reload_keeps_pid(box: Container, unit: str) -> None:
    before = box.show(unit, "MainPID")["MainPID"]
    reloads = len(pacer_events(box, unit, "config.reloaded"))
    box.sh(f"systemctl reload {unit}", timeout=60)
    wait_until(lambda: len(pacer_events(box, unit, "config.reloaded")) > reloads, 30,
               f"config.reloaded from {unit}")
    p = box.show(unit, "MainPID", "ActiveState")
    expect(p["MainPID"] == before, f"{unit}: PID {before} became {p['MainPID']} on reload")
    expect(p["ActiveState"] == "active", f"{unit}: {p['ActiveState']} after reload")


def watchdog_fed(box: Container, unit: str) -> None:
    p = box.show(unit, "WatchdogUSec", "ActiveEnterTimestampMonotonic")
    expect(p["WatchdogUSec"] == "30s", f"{unit}: WatchdogUSec={p['WatchdogUSec']}")
    since = int(p["ActiveEnterTimestampMonotonic"])
    # systemd stamps the last WATCHDOG=1; pacer pings every 15 s.
    wait_until(lambda: int(box.show(unit, "WatchdogTimestampMonotonic")
                           ["WatchdogTimestampMonotonic"] or 0) > since + 1_000_000,
               40, f"a watchdog ping from {unit} after READY", interval=1.0)


def json_logs(box: Container, unit: str) -> None:
    pid = box.show(unit, "MainPID")["MainPID"]
    lines = [e["MESSAGE"] for e in journal(box, unit, f"_PID={pid}")]
    expect(len(lines) >= 5, f"{unit}: only {len(lines)} lines from PID {pid}")
    for msg in lines:
        expect(isinstance(msg, str), f"{unit}: a non-text journal line: {msg!r}")
        obj = json.loads(msg)
        expect({"timestamp", "level", "event"} <= obj.keys(), f"{unit}: {msg}")
    say(f"#   {len(lines)} journal lines from PID {pid}, each one JSON object")


def exposure(box: Container, unit: str) -> None:
    text = box.out(f"systemd-analyze security {unit} --no-pager", timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", text)
    expect(m is not None, f"no exposure level in: {text[-400:]}")
    assert m is not None
    expect(float(m.group(1)) <= MAX_EXPOSURE, f"{unit}: exposure {m.group(1)}")
    say(f"#   systemd-analyze security {unit}: {m.group(1)}")


def secret_kept(box: Container, key: str, spool: str) -> None:
    hits = box.sh(f"journalctl -o cat --no-pager | grep -cF -- '{key}'", check=False)
    expect(hits.stdout.strip() == "0", f"the API key is in the journal ({hits.stdout} lines)")
    hits = box.sh(f"grep -rlF -- '{key}' {spool}", check=False)
    expect(hits.stdout.strip() == "", f"the API key is in the spool: {hits.stdout}")


def batch(box: Container, spool: str, config: str, jobs: int, per_job: int,
          prefix: str) -> None:
    """``jobs`` jobs by root in one ``pacer submit``, and two by the group member."""
    def ended() -> int:
        return sum(count(box, f"{spool}/{f}") for f in ("done", "failed", "rejected"))

    ended_before = ended()
    box.sh(f"mkdir -p /root/{prefix}")
    for j in range(jobs):
        put_file(box, f"/root/{prefix}/{prefix}-{j}.jsonl", job_lines(f"{prefix}-{j}", per_job))
    box.out(f"pacer submit --config {config} /root/{prefix}/*.jsonl")
    home = f"/home/{MEMBER}"
    for j in range(2):
        put_file(box, f"{home}/{prefix}-m{j}.jsonl", job_lines(f"{prefix}-m{j}", per_job),
                 user=MEMBER)
    names = box.out(f"pacer submit --config {config} {home}/{prefix}-m0.jsonl "
                    f"{home}/{prefix}-m1.jsonl", user=MEMBER)
    expect(names.split() == [f"{prefix}-m0.jsonl", f"{prefix}-m1.jsonl"], names)
    total = jobs + 2
    wait_until(lambda: ended() >= ended_before + total, 120, f"{total} jobs to end",
               interval=0.5)
    expect(count(box, f"{spool}/rejected") == 0,
           "jobs rejected: " + box.out(f"cat {spool}/rejected/*.error.json || true"))
    expect(count(box, f"{spool}/failed") == 0, "jobs ended in failed/")
    for j in range(jobs):
        check_results(box, spool, f"{prefix}-{j}", per_job)
    # The member reads her results (group pacer, mode 0640 under UMask=0027).
    text = box.out(f"cat {spool}/results/{prefix}-m1.jsonl", user=MEMBER)
    expect(len(text.splitlines()) == per_job, "the member could not read her results")
    status = json.loads(box.out(f"pacer status --config {config} --json", user=MEMBER))
    expect(status["folders"]["done"] >= total and status["daemon"]["running"] is True,
           f"pacer status as the member: {status}")
    say(f"#   {total} jobs x {per_job} requests done, none rejected or failed")


def stranger_refused(box: Container, config: str) -> None:
    home = f"/home/{STRANGER}"
    put_file(box, f"{home}/x.json", job_lines("x", 1), user=STRANGER)
    done = box.sh(f"pacer submit --config {config} {home}/x.json", user=STRANGER,
                  check=False)
    expect(done.returncode == 2, f"a non-member's submit exited {done.returncode}")
    expect(done.stdout == "", f"a refused submit printed {done.stdout!r}")
    expect("members of the spool's group, pacer" in done.stderr, done.stderr)


def root_submit_and_hand_drop(box: Container, unit: str, spool: str, config: str) -> None:
    """With the unit stopped: root's submitted job is pacer's group, mode 0640; files
    copied in by hand with mode 0600 (by root, by the member) are rejected at start, each
    with the fix in its error file."""
    put_file(box, "/root/by-root.json", job_lines("by-root", 1).strip() + "\n")
    name = box.out(f"umask 077; pacer submit --config {config} /root/by-root.json")
    expect(name == "by-root.json", name)
    mode = box.out(f"stat -c '%U:%G %a' {spool}/incoming/by-root.json")
    expect(mode == "root:pacer 640", f"root's submitted job is {mode}")
    box.sh(f"install -m 0600 /root/by-root.json {spool}/incoming/by-hand.json")
    put_file(box, f"/home/{MEMBER}/mine.json", job_lines("mine", 1), user=MEMBER)
    box.sh(f"install -m 0600 mine.json {spool}/incoming/by-member.json", user=MEMBER)
    box.sh(f"systemctl start {unit}", timeout=60)
    job_done(box, spool, "by-root.json")
    # The service sees root as root, and the member (PrivateUsers=yes) as nobody.
    for name, owner in (("by-hand.json", "root:root"),
                        ("by-member.json", "another user (the service sees nobody:")):
        err_path = f"{spool}/rejected/{name}.error.json"
        wait_until(functools.partial(exists, box, err_path), 60,
                   f"the hand-dropped {name} in rejected/")
        message = json.loads(box.out(f"cat {err_path}"))["message"]
        expect(f"owned by {owner}" in message
               and f"chgrp pacer {name} && chmod g+r {name}" in message,
               f"the error file does not say what to change: {message}")
        say(f"#   {message}")


def graceful_stop(run: Run, unit: str, spool: str, config: str) -> None:
    """A request in flight on SIGTERM is finished, its result written, exit 0."""
    box = run.box
    put_file(box, "/root/slow.json", job_lines("slow", 1, upstream="slow").strip() + "\n")
    in_service = mock_stats(box, run.slow_port)["in_service"]
    box.out(f"pacer submit --config {config} /root/slow.json")
    wait_until(lambda: mock_stats(box, run.slow_port)["in_service"] > in_service, 30,
               "the slow request in flight")
    t0 = time.monotonic()
    box.sh(f"systemctl stop {unit}", timeout=90)
    took = time.monotonic() - t0
    p = box.show(unit, "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    expect(p["ActiveState"] == "inactive" and p["Result"] == "success",
           f"{unit} after stop: {p}")
    expect(p["ExecMainStatus"] == "0", f"{unit} exited {p['ExecMainStatus']} on stop")
    check_results(box, spool, "slow", 1)
    expect(box.sh(f"test -f {spool}/done/slow.json", check=False).returncode == 0,
           "the drained job is not in done/")
    expect(bool(pacer_events(box, unit, "daemon.stopped")), "no daemon.stopped")
    say(f"#   stop took {took:.1f} s with a {SLOW_LATENCY_S:.0f} s request in flight; "
        "its result is 200, exit 0")


def crash_restarts(run: Run, unit: str, spool: str, config: str) -> None:
    """Exit 2 is the only status kept from restarting: a SIGKILL mid-request is restarted
    after RestartSec=, and the job left in active/ ends with exactly one result line."""
    box = run.box
    put_file(box, "/root/crash.json", job_lines("crash", 1, upstream="slow").strip() + "\n")
    in_service = mock_stats(box, run.slow_port)["in_service"]
    box.out(f"pacer submit --config {config} /root/crash.json")
    wait_until(lambda: mock_stats(box, run.slow_port)["in_service"] > in_service, 30,
               "the request in flight")
    before = box.show(unit, "MainPID", "NRestarts")
    box.sh(f"systemctl kill --signal=KILL {unit}")
    wait_until(lambda: box.show(unit, "NRestarts", "ActiveState")
               == {"NRestarts": str(int(before["NRestarts"]) + 1), "ActiveState": "active"},
               30, f"{unit} restarted after SIGKILL", interval=0.5)
    expect(box.show(unit, "MainPID")["MainPID"] != before["MainPID"], "same PID")
    job_done(box, spool, "crash.json", timeout=60)
    check_results(box, spool, "crash", 1)
    expect(bool(pacer_events(box, unit, "job.resumed")), "no job.resumed after the restart")


def bad_config_stops(box: Container, unit: str, config: str) -> None:
    """The issue's case: the key expected from $OPENAI_API_KEY, which a unit never has."""
    box.sh(f"cp {config} {config}.good && sed -i "
           f"'s/^api_key_file = .*/api_key_env = \"OPENAI_API_KEY\"/' {config}")
    try:
        started = box.sh(f"systemctl start {unit}", check=False, timeout=60)
        expect(started.returncode != 0, "systemctl start succeeded with a bad config")
        # systemctl start has returned: the exit happened. Past RestartSec=5s a restart
        # loop would show as "activating" and NRestarts > 0.
        time.sleep(7)
        p = box.show(unit, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        expect(p == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "2",
                     "NRestarts": "0"}, f"{unit} with a bad config: {p}")
        why = box.out(f"journalctl -u {unit} -o cat --no-pager | tail -n 20")
        expect("OPENAI_API_KEY is not set" in why, f"the reason is not in the journal: {why}")
    finally:
        box.sh(f"mv {config}.good {config} && systemctl reset-failed {unit}")


def template_instance(run: Run, block: list[str]) -> None:
    """pacer@.service from the README's second block, then the same checks."""
    box = run.box
    run_readme_block(box, block, env={"OPENAI_API_KEY": run.key})
    unit = box.out("systemctl list-units --no-legend --plain 'pacer@*' | awk '{print $1}'")
    expect(unit.startswith("pacer@") and "\n" not in unit, f"instance units: {unit!r}")
    name = unit.removeprefix("pacer@").removesuffix(".service")
    spool, config = f"{SPOOL}/{name}", f"/etc/pacer/{name}.toml"
    expect(box.show("pacer.service", "ActiveState")["ActiveState"] == "inactive",
           "pacer.service still runs next to the instance")
    job_done(box, spool, "job.jsonl")
    notify_and_ready(box, unit)
    batch(box, spool, config, jobs=5, per_job=10, prefix="inst")
    reload_keeps_pid(box, unit)
    watchdog_fed(box, unit)
    json_logs(box, unit)
    exposure(box, unit)
    secret_kept(box, run.key, spool)
    stranger_refused(box, config)
    graceful_stop(run, unit, spool, config)
    root_submit_and_hand_drop(box, unit, spool, config)
    crash_restarts(run, unit, spool, config)
    stop(box, unit)
    bad_config_stops(box, unit, config)


def scenario(box: Container) -> Run:
    key = "sk-it-" + secrets.token_hex(16)
    run = Run(box, key, free_port(), free_port())
    box.sh("mkdir /root/pacer && cp -a /mnt/pacer-src/. /root/pacer/")
    box.env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/mnt/wheels",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for user in (MEMBER, STRANGER):
        box.sh(f"useradd --create-home --shell /bin/bash {user}")
    put_file(box, "/root/pacer/job.jsonl", job_lines("job", 10))
    install, template = readme_blocks()

    def install_as_readme_says() -> None:
        rest = run_readme_block(box, install, stop_before="systemctl enable",
                                env={"OPENAI_API_KEY": key})
        # An admin points the example config at their API: here, the mock inside.
        start_mock(box, "mock-api", run.port, key, "--latency", "0.05", "--concurrency", "8")
        start_mock(box, "mock-slow", run.slow_port, key, "--latency", str(SLOW_LATENCY_S))
        box.sh(f"sed -i 's|^base_url = .*|base_url = \"http://127.0.0.1:{run.port}\"|' "
               f"{CONFIG} && cat >> {CONFIG} <<'EOF'\n\n[upstreams.slow]\n"
               f"base_url = \"http://127.0.0.1:{run.slow_port}\"\napi_key_file = \"api-key\"\n"
               "EOF")
        rest = run_readme_block(box, rest, stop_before="systemctl reload",
                                env={"OPENAI_API_KEY": key})
        # What is left (reload, stop) is checked step by step below.
        expect([line.split()[:3] for line in rest]
               == [["systemctl", "reload", "pacer"], ["systemctl", "stop", "pacer"]],
               f"the README's last lines are not reload and stop: {rest}")
        job_done(box, SPOOL, "job.jsonl")
        check_results(box, SPOOL, "job", 10)

    run.step("README install steps, verbatim, as root", install_as_readme_says)
    run.step("notify: READY, STATUS", lambda: notify_and_ready(box, "pacer.service"))
    run.step("a batch by root and by a member of group pacer",
             lambda: batch(box, SPOOL, CONFIG, jobs=30, per_job=20, prefix="b"))
    run.step("a non-member is refused, exit 2", lambda: stranger_refused(box, CONFIG))
    run.step("reload keeps the PID, logs config.reloaded",
             lambda: reload_keeps_pid(box, "pacer.service"))
    run.step("watchdog fed", lambda: watchdog_fed(box, "pacer.service"))
    run.step("journal: JSON lines", lambda: json_logs(box, "pacer.service"))
    run.step("exposure score", lambda: exposure(box, "pacer.service"))
    run.step("LoadCredential: key used, never in journal or spool",
             lambda: secret_kept(box, key, SPOOL))
    run.step("stop drains a request in flight, exit 0",
             lambda: graceful_stop(run, "pacer.service", SPOOL, CONFIG))
    run.step("root submit: group pacer 0640; a hand-dropped 0600 file's error says the fix",
             lambda: root_submit_and_hand_drop(box, "pacer.service", SPOOL, CONFIG))
    run.step("a crash mid-request is restarted; the job resumes, one result",
             lambda: crash_restarts(run, "pacer.service", SPOOL, CONFIG))
    run.step("stop again", lambda: stop(box, "pacer.service"))
    run.step("bad config: failed with status 2, no restart loop",
             lambda: bad_config_stops(box, "pacer.service", CONFIG))
    run.step("pacer@.service as the README says", lambda: template_instance(run, template))
    return run


def stop(box: Container, unit: str) -> None:
    box.sh(f"systemctl stop {unit}", timeout=90)
    p = box.show(unit, "ActiveState", "ExecMainStatus")
    expect(p == {"ActiveState": "inactive", "ExecMainStatus": "0"}, f"{unit} stopped: {p}")


def diagnostics(box: Container) -> None:
    for script in ("systemctl --no-pager -l status 'pacer*' 'mock-*'",
                   "journalctl --no-pager -o short-monotonic -n 80 -u 'pacer*'",
                   f"ls -la {SPOOL} {SPOOL}/* 2>&1 | tail -n 60"):
        done = box.sh(script, check=False, timeout=60)
        say(f"--- {script}\n{done.stdout}{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def on_deadline(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"the whole run took more than {DEADLINE_S} s")

    old_term = signal.signal(signal.SIGTERM, on_signal)
    old_alarm = signal.signal(signal.SIGALRM, on_deadline)
    signal.alarm(DEADLINE_S)
    t0 = time.monotonic()
    try:
        ensure_tools()
        root = rootfs()
        with tempfile.TemporaryDirectory(prefix="pacer-it-") as tmp:
            wheels, src = Path(tmp, "wheels"), Path(tmp, "src")
            wheels.mkdir()
            src.mkdir()
            download_wheels(wheels)
            copy_checkout(src)
            binds = {wheels: "/mnt/wheels", src: "/mnt/pacer-src"}
            with booted(root, binds, Path(tmp, "console.log")) as box:
                say(f"# container up ({time.monotonic() - t0:.0f} s): "
                    + box.out("systemctl --version | head -n 1"))
                try:
                    run = scenario(box)
                except (CheckFailed, subprocess.TimeoutExpired, TimeoutError) as exc:
                    say(f"FAIL - {exc}")
                    diagnostics(box)
                    return 1
    except CheckFailed as exc:  # before the scenario: the container itself
        say(f"FAIL - {exc}")
        return 1
    except Skipped as exc:
        say(f"SKIPPED: the systemd integration test: {exc}")
        return SKIP
    except KeyboardInterrupt as exc:
        say(f"INTERRUPTED ({exc or 'SIGINT'}): the container is stopped and removed")
        return 130
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGALRM, old_alarm)
    total = time.monotonic() - t0
    say(f"PASS - pacer under systemd: {len(run.timings)} checks, {total:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
