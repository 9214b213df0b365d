"""How long the upstream took, as the kernel saw it: from the request's last byte
handed to the kernel to its answer's last byte arriving in it.

pacer's own delays are not in it: when its event loop is busy (hundreds of answers
a second on two cores), an answer waits in the socket until its task runs, and an
rtt timed by the task grows although the upstream answered on time (issue 10,
cause 5: the limit was cut for latency the upstream never added). The kernel
stamps each packet as it arrives (``SO_TIMESTAMPNS``); reading with ``recvmsg``
returns the stamp of the data read. :class:`StampedStream` reads a TCP connection
so, under TLS too (the TLS layer reads its records through it). Linux only;
elsewhere :func:`enable` says no and the caller falls back on the loop's measured
lag (:mod:`pacer.service.loop_lag`).
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
import time

import trio

__all__ = ["StampedStream", "WireTiming", "enable"]

# Not in Python's socket module: the asm-generic values, which x86, arm and riscv
# use (alpha, mips, parisc and sparc differ: not enabled there).
_SO_TIMESTAMPNS = 35
_GENERIC_ABI = ("x86_64", "aarch64", "armv7l", "armv8l", "riscv64", "i686", "ppc64le")
_TIMESPEC = struct.Struct("@ll")  # struct timespec: time_t tv_sec, long tv_nsec
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)


def _supported() -> bool:
    import platform

    return sys.platform == "linux" and platform.machine() in _GENERIC_ABI


_SUPPORTED = _supported()


def enable(sock: trio.socket.SocketType) -> bool:
    """Ask the kernel to stamp what arrives on ``sock``; False when it cannot."""
    if not _SUPPORTED:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS \
                and len(payload) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
            return float(seconds + nanoseconds / 1e9)
    return None


class StampedStream(trio.abc.HalfCloseableStream):
    """A TCP stream (a :class:`trio.SocketStream` whose socket :func:`enable` d
    stamps) whose reads note when their bytes arrived: ``last_arrival``, on
    ``time.time()``'s clock."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.last_arrival: float | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = 65536 if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        try:
            data, ancillary, _flags, _address = await self.socket.recvmsg(size, _ANCILLARY_SIZE)
        except OSError as exc:  # as trio.SocketStream translates them
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("this stream was closed") from None
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        at = _stamp(ancillary)
        if at is not None:
            self.last_arrival = at
        return data


class WireTiming:
    """One exchange's times on the wire, as the transport reads its answer."""

    __slots__ = ("last_arrival", "sent_at")

    def __init__(self) -> None:
        self.sent_at = time.time()  # the request's last byte handed to the kernel
        self.last_arrival: float | None = None

    def arrived(self, stream: StampedStream) -> None:
        """The answer's bytes read so far came through ``stream``."""
        if stream.last_arrival is not None:
            self.last_arrival = stream.last_arrival

    @property
    def seconds(self) -> float | None:
        """The upstream's time, ``None`` when unknown (or the clock stepped back)."""
        if self.last_arrival is None or self.last_arrival < self.sent_at:
            return None
        return self.last_arrival - self.sent_at
