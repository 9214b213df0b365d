"""Shared fixtures for the daemon, CLI and crash tests.

- ``make_config``: write a pacer TOML config under ``tmp_path`` (spool next to it).
- ``spool``: a :class:`SpoolHelper` to drop job files into ``incoming/`` and read
  back folders and results.
- ``mock_api``: start the real mock API (``python -m pacer.mockapi --port 0``) in a
  subprocess on 127.0.0.1; it is stopped at teardown.
- ``run_pacer`` / ``start_pacer``: run the ``pacer`` console script (or
  ``python -m pacer``) as a subprocess, with stdout going to a file that tests poll.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

BASE_URL = "http://mock.test"  # in-process tests: what the MockTransport client answers
CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


# --------------------------------------------------------------------------- jobs


def req(custom_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """One request of a job file (OpenAI Batch input format)."""
    obj: dict[str, Any] = {"method": "POST", "url": CHAT, "body": BODY}
    if custom_id is not None:
        obj["custom_id"] = custom_id
    obj.update(extra)
    return obj


def jsonl(requests: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in requests)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


# ------------------------------------------------------------------------- config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


MakeConfig = Callable[..., Path]


@pytest.fixture(autouse=True)
def _no_syncfs_on_virtual_time(request: pytest.FixtureRequest,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A test on a virtual clock that jumps once the daemon has been idle a few ms
    of real time: its barriers fsync. A syncfs writes back whatever the whole
    filesystem holds dirty (other tests' files too) and can take long enough under
    load for virtual time to race ahead while it runs."""
    if {"virtual_clock", "autojump_clock"} & set(request.fixturenames):
        import pacer.spool.durable as durable_mod

        monkeypatch.setattr(durable_mod, "SYNCFS_ALLOWED", False)


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    """``make_config(base_url=..., upstream={...}, spool={...}, daemon={...},
    results={...}, upstreams={name: {...}})`` writes ``tmp_path/pacer.toml`` with
    ``spool.dir = "spool"`` (relative: resolved against the config's folder) and
    returns its path."""

    def make(base_url: str = BASE_URL, *, upstream: Mapping[str, Any] | None = None,
             spool: Mapping[str, Any] | None = None, daemon: Mapping[str, Any] | None = None,
             results: Mapping[str, Any] | None = None,
             upstreams: Mapping[str, Mapping[str, Any]] | None = None,
             name: str = "pacer.toml") -> Path:
        sections: dict[str, dict[str, Any]] = {"spool": {"dir": "spool", **(spool or {})}}
        if results:
            sections["results"] = dict(results)
        if daemon:
            sections["daemon"] = dict(daemon)
        sections["upstreams.default"] = {"base_url": base_url, "retry_base_delay": 0.05,
                                         **(upstream or {})}
        for up_name, values in (upstreams or {}).items():
            sections[f"upstreams.{up_name}"] = dict(values)
        path = tmp_path / name
        path.write_text(toml_text(sections))
        return path

    return make


# -------------------------------------------------------------------------- spool


@dataclass
class SpoolHelper:
    root: Path

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def drop(self, name: str, content: bytes | dict[str, Any] | list[dict[str, Any]]) -> Path:
        """Put a job into ``incoming/`` the way producers should: write a dot-name in
        tmp/, then rename. A dict is a single request, a list a .jsonl job."""
        if isinstance(content, dict):
            data = json.dumps(content).encode()
        elif isinstance(content, list):
            data = jsonl(content)
        else:
            data = content
        tmp = self.folder("tmp") / f".{name}.tmp"
        tmp.write_bytes(data)
        target = self.folder("incoming") / name
        os.rename(tmp, target)
        return target

    def names(self, folder: str) -> list[str]:
        path = self.root / folder
        return sorted(os.listdir(path)) if path.is_dir() else []

    def jobs(self, folder: str) -> list[str]:
        return [n for n in self.names(folder) if not n.startswith(".")
                and not n.endswith(".error.json")]

    def dotfiles(self, folder: str) -> list[str]:
        return [n for n in self.names(folder) if n.startswith(".")]

    def results(self, stem: str) -> list[dict[str, Any]]:
        return read_jsonl(self.root / "results" / f"{stem}.jsonl")

    def error(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.root / "rejected" / f"{name}.error.json")
                                          .read_text())
        return data


@pytest.fixture
def spool(tmp_path: Path) -> SpoolHelper:
    """The spool of the config ``make_config`` writes (``tmp_path/spool``)."""
    from pacer.spool.folders import Spool

    root = tmp_path / "spool"
    Spool(root).ensure()
    return SpoolHelper(root)


# --------------------------------------------------------------------- processes


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: no systemd or proxy variables leaking in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")
           and not k.lower().endswith("_proxy")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def pacer_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m pacer``."""
    script = Path(sys.executable).parent / "pacer"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "pacer"]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Proc:
    """A child process whose stdout/stderr go to files (no pipe can fill up)."""

    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _files: list[IO[bytes]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The complete JSON lines of stdout so far (a torn last line is skipped)."""
        out = []
        for line in self.stdout().splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def wait_event(self, event: str, timeout: float = 10.0,
                   where: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for e in self.events():
                if e.get("event") == event and where(e):
                    return e
            if self.popen.poll() is not None:
                # One more look: the line may have landed just before the exit.
                for e in self.events():
                    if e.get("event") == event and where(e):
                        return e
                raise AssertionError(f"process exited ({self.popen.returncode}) before "
                                     f"{event!r}; stderr:\n{self.stderr()}")
            return None

        found: dict[str, Any] = wait_for(find, timeout, what=f"log event {event!r}")
        return found

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process did not exit within {timeout} s; stdout tail:\n"
                                 f"{self.stdout()[-2000:]}\nstderr:\n{self.stderr()}") from None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def stop(self) -> None:
        """Terminate (then kill) if still running, and close the files."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for fh in self._files:
            fh.close()
        self._files.clear()


class ProcFactory:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[Proc] = []
        self.count = 0

    def start(self, argv: list[str], *, label: str = "proc", env: dict[str, str] | None = None,
              stdin: int | None = subprocess.DEVNULL) -> Proc:
        self.count += 1
        out = self.folder / f"{label}-{self.count}.stdout"
        err = self.folder / f"{label}-{self.count}.stderr"
        fo, fe = open(out, "wb"), open(err, "wb")  # noqa: SIM115 - closed by Proc.stop
        try:
            popen = subprocess.Popen(argv, stdout=fo, stderr=fe, stdin=stdin,
                                     env=env or subprocess_env(), cwd=self.folder)
        except BaseException:
            fo.close()
            fe.close()
            raise
        proc = Proc(popen, out, err, [fo, fe])
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcFactory]:
    """Start child processes that are all stopped at teardown."""
    folder = tmp_path / "procs"
    folder.mkdir()
    factory = ProcFactory(folder)
    try:
        yield factory
    finally:
        factory.close()


@dataclass
class MockAPI:
    proc: Proc
    port: int
    settings: dict[str, Any]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        with httpx.Client(trust_env=False, timeout=5) as client:
            data: dict[str, Any] = client.get(f"{self.base_url}/_mock/stats").json()
        return data


@pytest.fixture
def mock_api(procs: ProcFactory) -> Callable[..., MockAPI]:
    """``mock_api("--latency", "0.01", ...)`` starts ``python -m pacer.mockapi`` on
    127.0.0.1 and a free port (from its first JSON line); stopped at teardown."""

    def start(*args: str) -> MockAPI:
        proc = procs.start([sys.executable, "-m", "pacer.mockapi", "--host", "127.0.0.1",
                            "--port", "0", *args], label="mockapi")
        line = proc.wait_event("mock_api.listening", timeout=15)
        return MockAPI(proc, int(line["port"]), line)

    return start


@pytest.fixture
def run_pacer(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_pacer("check-config", "--config", path, input=..., timeout=...)``."""

    def run(*args: str | os.PathLike[str], input: str | None = None,
            timeout: float = 30.0, env: dict[str, str] | None = None,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*pacer_command(), *map(str, args)], capture_output=True,
                              text=True, input=input, timeout=timeout, cwd=tmp_path,
                              env=env or subprocess_env())

    return run


@pytest.fixture
def start_pacer(procs: ProcFactory) -> Callable[..., Proc]:
    """``start_pacer("run", "--config", path)``: a background ``pacer`` process."""

    def start(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Proc:
        return procs.start([*pacer_command(), *map(str, args)], label="pacer", env=env)

    return start
