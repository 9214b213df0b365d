"""A real ``redis-server`` for the fleet tests, on a free loopback port.

The binary must be installed (``.ci/run`` makes sure it is): the fleet tests run in
CI, they do not skip. Each server keeps nothing on disk, so a restart loses every
key, as a Redis without persistence does.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # pragma: no cover - .ci/run installs it
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


@pytest.fixture(scope="module", name="redis_module")
def redis_module_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="redis")
def redis_fixture(redis_module: RedisServer) -> RedisServer:
    """The module's server, emptied for this test (restarted if a test stopped it)."""
    if redis_module.proc is None:
        redis_module.start()
    redis_module.flush()
    return redis_module


@pytest.fixture(autouse=True, name="collect_failed_connections")
def collect_failed_connections_fixture() -> Iterator[None]:
    """coredis 6.9 makes three anyio memory stream pairs per connection (in
    ``BaseConnection.__init__``) and closes them only inside ``run()``'s ``async
    with``, which a failed ``_connect()`` never enters: each refused connection leaves
    them unclosed, however the client is closed (checked: ``FleetStore`` closes its
    client through ``async with``, and the warnings remain). Redis down is what these
    tests are about, so:
    collect them here, quietly, rather than in whatever test runs next (where their
    ResourceWarning would be an unraisable error)."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
