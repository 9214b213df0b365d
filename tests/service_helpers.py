"""Helpers for tests that run ``pacer run`` as a service: a fake systemd notify socket.

:class:`NotifyListener` binds an ``AF_UNIX``/``SOCK_DGRAM`` socket (a filesystem path,
the form systemd uses) and a background thread records every datagram with the
``time.monotonic()`` of its arrival, so a test can wait for a message, count pings
over a window and compare arrival times with what the daemon logged.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_SUN_PATH = 100  # sockaddr_un.sun_path is 108 bytes; keep a margin


@dataclass(frozen=True)
class Datagram:
    """One sd_notify datagram: its arrival time and its ``KEY=VALUE`` fields."""

    at: float  # time.monotonic() on arrival
    raw: bytes

    @property
    def fields(self) -> dict[str, str]:
        out = {}
        for line in self.raw.decode(errors="replace").split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def has(self, key: str, value: str | None = None) -> bool:
        fields = self.fields
        return key in fields and (value is None or fields[key] == value)


class NotifyListener:
    """Stands in for systemd's ``$NOTIFY_SOCKET`` and records what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._messages: list[Datagram] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="fake-systemd", daemon=True)
        self._thread.start()

    @property
    def notify_socket(self) -> str:
        """The value for ``$NOTIFY_SOCKET``."""
        return str(self.path)

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append(Datagram(time.monotonic(), data))

    def messages(self) -> list[Datagram]:
        with self._lock:
            return list(self._messages)

    def matching(self, key: str, value: str | None = None,
                 since: float = 0.0) -> list[Datagram]:
        return [m for m in self.messages() if m.at >= since and m.has(key, value)]

    def wait_for(self, key: str, value: str | None = None, *, timeout: float = 10.0,
                 since: float = 0.0, alive: Callable[[], bool] | None = None) -> Datagram:
        """The first datagram at or after ``since`` with ``key`` (= ``value``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(key, value, since)
            if found:
                return found[0]
            if alive is not None and not alive():
                found = self.matching(key, value, since)
                if found:
                    return found[0]
                raise AssertionError(f"the daemon exited before {key}={value or '*'}; "
                                     f"received: {self.summary()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {key}={value or '*'} within {timeout} s; "
                                     f"received: {self.summary()}")
            time.sleep(0.01)

    def summary(self) -> list[bytes]:
        return [m.raw for m in self.messages()][-20:]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@contextlib.contextmanager
def open_notify_listener(folder: Path) -> Iterator[NotifyListener]:
    """A fake systemd notify socket (path form) in ``folder`` (or in a short
    temporary folder if that path would not fit in ``sun_path``)."""
    path = folder / "notify.sock"
    short_dir: tempfile.TemporaryDirectory[str] | None = None
    if len(os.fsencode(path)) > MAX_SUN_PATH:
        short_dir = tempfile.TemporaryDirectory(prefix="pacer-")
        path = Path(short_dir.name) / "notify.sock"
    listener = NotifyListener(path)
    try:
        yield listener
    finally:
        listener.close()
        if short_dir is not None:
            short_dir.cleanup()
