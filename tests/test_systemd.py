"""sd_notify protocol: exact datagrams on a fake NOTIFY_SOCKET, no-op outside systemd."""

from __future__ import annotations

import os
import re
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pacer.service.systemd import Notifier, watchdog_loop

MAX_SUN_PATH = 100  # sockaddr_un.sun_path is 108 bytes; keep a margin


@dataclass
class FakeSystemd:
    """A bound datagram socket standing in for systemd's notify socket."""

    sock: socket.socket
    notify_socket: str  # the value for $NOTIFY_SOCKET

    def environ(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.notify_socket, **extra}

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def drain(self) -> list[bytes]:
        """Every datagram already queued, without waiting."""
        out: list[bytes] = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096))
        except BlockingIOError:
            return out
        finally:
            self.sock.settimeout(2.0)


def _path_socket(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    short_dir: tempfile.TemporaryDirectory[str] | None = None
    if len(os.fsencode(path)) > MAX_SUN_PATH:  # a very long --basetemp
        short_dir = tempfile.TemporaryDirectory(prefix="pacer-")
        path = Path(short_dir.name) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield FakeSystemd(sock, str(path))
    finally:
        sock.close()
        if short_dir is not None:
            short_dir.cleanup()


def _abstract_socket() -> Iterator[FakeSystemd]:
    name = f"pacer-test-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        yield FakeSystemd(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def fake_systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        yield from _path_socket(tmp_path)
    else:
        yield from _abstract_socket()


@pytest.fixture
def path_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    yield from _path_socket(tmp_path)


# -- exact datagrams ---------------------------------------------------------------


def test_helpers_send_exact_datagrams(fake_systemd: FakeSystemd) -> None:
    with Notifier.from_environ(fake_systemd.environ()) as notifier:
        assert notifier.enabled
        assert notifier.ready() is True
        assert fake_systemd.recv() == b"READY=1"
        assert notifier.stopping() is True
        assert fake_systemd.recv() == b"STOPPING=1"
        assert notifier.watchdog() is True
        assert fake_systemd.recv() == b"WATCHDOG=1"
        assert notifier.status("draining: 3 jobs left") is True
        assert fake_systemd.recv() == b"STATUS=draining: 3 jobs left"
        assert notifier.reloading(123456) is True
        assert fake_systemd.recv() == b"RELOADING=1\nMONOTONIC_USEC=123456"
        assert notifier.extend_timeout(2.5) is True
        assert fake_systemd.recv() == b"EXTEND_TIMEOUT_USEC=2500000"


def test_reloading_sends_current_monotonic_usec(fake_systemd: FakeSystemd) -> None:
    with Notifier.from_environ(fake_systemd.environ()) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=([0-9]+)", fake_systemd.recv())
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_status_is_one_line(fake_systemd: FakeSystemd) -> None:
    with Notifier.from_environ(fake_systemd.environ()) as notifier:
        notifier.status("upstream default:\n  limit 8\r\n")
    assert fake_systemd.recv() == b"STATUS=upstream default:   limit 8"


def test_notify_fields_and_send_lines(fake_systemd: FakeSystemd) -> None:
    with Notifier.from_environ(fake_systemd.environ()) as notifier:
        assert notifier.notify(READY=True, STATUS="up", MAINPID=42)
        assert fake_systemd.recv() == b"READY=1\nSTATUS=up\nMAINPID=42"
        assert notifier.send("READY=1", "STATUS=x")
        assert fake_systemd.recv() == b"READY=1\nSTATUS=x"
        assert notifier.send() is False  # nothing to send


def test_notify_rejects_malformed_fields_even_when_disabled() -> None:
    for notifier in (Notifier.from_environ({}), Notifier.from_environ({"NOTIFY_SOCKET": "@x"})):
        with notifier, pytest.raises(ValueError, match="name"):
            notifier.notify(ready=1)
        with notifier, pytest.raises(ValueError, match="newline"):
            notifier.notify(STATUS="a\nb")


def test_socket_is_kept_open_between_sends(path_systemd: FakeSystemd) -> None:
    notifier = Notifier.from_environ(path_systemd.environ())
    notifier.ready()
    first = notifier._sock
    notifier.watchdog()
    assert first is not None and notifier._sock is first and first.fileno() >= 0
    notifier.close()
    assert first.fileno() == -1
    assert not notifier.enabled
    assert notifier.ready() is False
    assert path_systemd.drain() == [b"READY=1", b"WATCHDOG=1"]


# -- outside systemd / failures ----------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "@"},
        {"NOTIFY_SOCKET": "relative/sock"},
        {"NOTIFY_SOCKET": "vsock:2:1234"},
    ],
)
def test_noop_without_a_usable_notify_socket(environ: dict[str, str]) -> None:
    environ = {**environ, "WATCHDOG_USEC": "30000000"}
    with Notifier.from_environ(environ) as notifier:
        assert notifier.enabled is False
        assert notifier.ready() is False
        assert notifier.reloading() is False
        assert notifier.stopping() is False
        assert notifier.status("x") is False
        assert notifier.watchdog() is False
        assert notifier.notify(READY=1) is False
        assert notifier.watchdog_interval() is None
        assert notifier.errors == 0


def test_default_environ_is_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier.from_environ().enabled is False


def test_send_error_is_swallowed_and_reported_once(tmp_path: Path) -> None:
    reported: list[OSError] = []
    missing = tmp_path / "gone.sock"  # nothing listens there
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(missing)}, on_error=reported.append)
    assert notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.errors == 3
    assert len(reported) == 1 and isinstance(reported[0], OSError)
    notifier.close()


def test_broken_error_callback_does_not_raise(tmp_path: Path) -> None:
    def explode(exc: OSError) -> None:
        raise RuntimeError("reporter broke")

    notifier = Notifier.from_environ(
        {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}, on_error=explode
    )
    assert notifier.ready() is False
    notifier.close()


def test_receiver_going_away_later_is_swallowed(path_systemd: FakeSystemd) -> None:
    reported: list[OSError] = []
    with Notifier.from_environ(path_systemd.environ(), on_error=reported.append) as notifier:
        assert notifier.ready()
        path_systemd.sock.close()
        Path(path_systemd.notify_socket).unlink()
        assert notifier.watchdog() is False
        assert len(reported) == 1


# -- watchdog ------------------------------------------------------------------------


def _watchdog_notifier(usec: str, pid: str | None = None) -> Notifier:
    environ = {"NOTIFY_SOCKET": "@pacer-test-unused", "WATCHDOG_USEC": usec}
    if pid is not None:
        environ["WATCHDOG_PID"] = pid
    return Notifier.from_environ(environ)


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert _watchdog_notifier("30000000").watchdog_interval() == 15.0
    assert _watchdog_notifier("1000").watchdog_interval() == 0.0005
    assert _watchdog_notifier("30000000", str(os.getpid())).watchdog_interval() == 15.0


def test_watchdog_interval_off_for_another_pid_or_bad_values() -> None:
    assert _watchdog_notifier("30000000", str(os.getpid() + 1)).watchdog_interval() is None
    assert _watchdog_notifier("30000000", "1").watchdog_interval() is None
    assert _watchdog_notifier("30000000", "garbage").watchdog_interval() is None
    assert _watchdog_notifier("0").watchdog_interval() is None
    assert _watchdog_notifier("-5").watchdog_interval() is None
    assert _watchdog_notifier("soon").watchdog_interval() is None
    no_usec = Notifier.from_environ({"NOTIFY_SOCKET": "@pacer-test-unused"})
    assert no_usec.watchdog_interval() is None


@given(st.integers(min_value=1, max_value=2**63 - 1))
def test_watchdog_interval_math(usec: int) -> None:
    interval = _watchdog_notifier(str(usec)).watchdog_interval()
    assert interval is not None
    assert interval == pytest.approx(usec / 2_000_000)


async def test_watchdog_loop_pings_at_half_the_timeout(
    fake_systemd: FakeSystemd, autojump_clock: trio.testing.MockClock
) -> None:
    # WatchdogSec=10 -> a ping every 5 s: at 0, 5, 10, 15 and 20 s within 22 s.
    # (Kept under net.unix.max_dgram_qlen = 10 datagrams, as nobody reads meanwhile.)
    notifier = Notifier.from_environ(fake_systemd.environ(WATCHDOG_USEC="10000000"))
    start = trio.current_time()
    with trio.move_on_after(22):
        await watchdog_loop(notifier)
    assert trio.current_time() - start == pytest.approx(22)
    assert fake_systemd.drain() == [b"WATCHDOG=1"] * 5
    notifier.close()


async def test_watchdog_loop_in_a_nursery_stops_with_it(
    fake_systemd: FakeSystemd, autojump_clock: trio.testing.MockClock
) -> None:
    notifier = Notifier.from_environ(
        fake_systemd.environ(WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()))
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog_loop, notifier)
        await trio.sleep(59)  # WatchdogSec=30: pings at 0, 15, 30 and 45 s
        nursery.cancel_scope.cancel()
    assert fake_systemd.drain() == [b"WATCHDOG=1"] * 4
    notifier.close()


async def test_watchdog_loop_returns_at_once_when_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    for notifier in (
        Notifier.from_environ({}),
        Notifier.from_environ({"NOTIFY_SOCKET": "@pacer-test-unused"}),
        _watchdog_notifier("30000000", str(os.getpid() + 1)),
    ):
        start = trio.current_time()
        with trio.fail_after(1):
            await watchdog_loop(notifier)
        assert trio.current_time() == start
