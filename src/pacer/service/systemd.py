"""systemd integration: the ``sd_notify`` protocol, stdlib only, a no-op outside systemd.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: an ``AF_UNIX`` datagram
socket (a filesystem path, or an abstract name written with a leading ``@``). Each
datagram is one or more ``KEY=VALUE`` lines: ``READY=1``, ``RELOADING=1`` (with
``MONOTONIC_USEC=``), ``STOPPING=1``, ``STATUS=...``, ``WATCHDOG=1``...

:class:`Notifier` holds one socket for its whole lifetime and never raises on a send
error: the send returns ``False`` and the first failure is reported once through the
``on_error`` callback (later failures are counted in :attr:`Notifier.errors` only).

:func:`watchdog_loop` pings ``WATCHDOG=1`` at half of ``$WATCHDOG_USEC``. Run it in the
daemon's main nursery so that a wedged event loop stops the pings and systemd restarts the
daemon. systemd enforces the watchdog only between ``READY=1`` and the stop request
(start-up is bounded by ``TimeoutStartSec=``, the drain on stop by ``TimeoutStopSec=``),
so pings sent before ``READY=1`` or during the drain are harmless: start the loop early
and let it end with the nursery.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType

import trio

__all__ = ["Notifier", "watchdog_loop"]

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def _monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, the clock systemd uses for ``MONOTONIC_USEC``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


class Notifier:
    """Sends sd_notify datagrams to ``$NOTIFY_SOCKET``; does nothing when it is unset.

    Build it with :meth:`from_environ`. ``enabled`` is ``True`` when a usable notify
    socket address was given. Every send is synchronous (one datagram, ``timeout``
    seconds at most), never raises, and returns whether the datagram went out.
    """

    def __init__(
        self,
        address: str | bytes | None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        on_error: Callable[[OSError], None] | None = None,
        timeout: float = 1.0,
    ) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._watchdog_pid = watchdog_pid
        self.on_error = on_error
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._closed = False
        self.errors = 0

    @classmethod
    def from_environ(
        cls,
        environ: Mapping[str, str] = os.environ,
        *,
        on_error: Callable[[OSError], None] | None = None,
        timeout: float = 1.0,
    ) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from ``environ``.

        ``NOTIFY_SOCKET`` must be an absolute path or ``@abstract-name``; anything else
        (unset, empty, relative, ``vsock:``) gives a disabled notifier.
        """
        raw = environ.get("NOTIFY_SOCKET", "")
        address: str | bytes | None
        if raw.startswith("@") and len(raw) > 1:
            address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            address = raw
        else:
            address = None
        pid_text = environ.get("WATCHDOG_PID")
        # A WATCHDOG_PID that is set but unreadable names no process of ours: pid 0.
        watchdog_pid = None if pid_text is None else (_parse_int(pid_text) or 0)
        return cls(
            address,
            watchdog_usec=_parse_int(environ.get("WATCHDOG_USEC")),
            watchdog_pid=watchdog_pid,
            on_error=on_error,
            timeout=timeout,
        )

    @property
    def enabled(self) -> bool:
        """``True`` when there is a notify socket to send to (and it is not closed)."""
        return self._address is not None and not self._closed

    # -- sending ---------------------------------------------------------------

    def send(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=VALUE`` each) as one datagram; ``False`` if not sent."""
        if not self.enabled or not lines:
            return False
        assert self._address is not None
        payload = "\n".join(lines).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(self._timeout)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            self.errors += 1
            if self.errors == 1 and self.on_error is not None:
                # A broken reporter must not break the daemon either.
                with contextlib.suppress(Exception):
                    self.on_error(exc)
            return False
        return True

    def notify(self, **fields: str | int | bool) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram, e.g. ``notify(READY=1, STATUS="up")``.

        ``True``/``False`` are sent as ``1``/``0``. A malformed field name (not
        ``[A-Z][A-Z0-9_]*``) or a value with a newline is a programming error and raises
        :class:`ValueError`, even when the notifier is disabled.
        """
        lines = []
        for key, value in fields.items():
            if not _FIELD_NAME.match(key):
                raise ValueError(f"bad sd_notify field name: {key!r}")
            text = str(int(value)) if isinstance(value, bool) else str(value)
            if "\n" in text or "\r" in text:
                raise ValueError(f"sd_notify field {key} has a newline")
            lines.append(f"{key}={text}")
        return self.send(*lines)

    # -- helpers ---------------------------------------------------------------

    def ready(self) -> bool:
        """``READY=1``: start-up (or a reload) is complete."""
        return self.send("READY=1")

    def reloading(self, monotonic_usec: int | None = None) -> bool:
        """``RELOADING=1`` + ``MONOTONIC_USEC=`` (now, on ``CLOCK_MONOTONIC``); send
        :meth:`ready` when the reload is done."""
        usec = _monotonic_usec() if monotonic_usec is None else monotonic_usec
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """``STOPPING=1``: the daemon has begun shutting down."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """``STATUS=text`` (shown by ``systemctl status``); newlines become spaces."""
        one_line = " ".join(text.splitlines()).strip()
        return self.send(f"STATUS={one_line}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the keep-alive ping."""
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for ``seconds`` more for start-up or stop."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or ``None``.

        ``None`` when the notifier is disabled, ``WATCHDOG_USEC`` is unset or not a
        positive integer, or ``WATCHDOG_PID`` is set to another process's id.
        """
        if not self.enabled or self._watchdog_usec is None or self._watchdog_usec <= 0:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; later sends are no-ops returning ``False``."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Notifier(address={self._address!r}, enabled={self.enabled})"


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping ``WATCHDOG=1`` now and then every ``watchdog_interval()`` seconds, forever.

    Returns at once when the watchdog is off. Run it in the daemon's main nursery so a
    wedged event loop stops the pings; it ends by cancellation.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await trio.sleep(interval)
