"""The benchmarks' HTTP side: the mock API as a subprocess on 127.0.0.1, and a client
that does not stall on bursts.

:func:`start_mock` runs ``python -m pacer.mockapi`` with the given flags and waits for
it to listen; :func:`stop_mock` ends it. :func:`make_client` builds the client
settings of :func:`pacer.service.http.build_client` over a :class:`FreeListTransport`.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

import httpx
import trio

from pacer.config import UpstreamConfig
from pacer.service.http import ReleasingStream, build_client

__all__ = ["FreeListTransport", "make_client", "start_mock", "stop_mock"]


class FreeListTransport(httpx.AsyncBaseTransport):
    """One keep-alive connection per request in flight, taken from a free list.

    httpcore's pool (what ``build_client`` gets) assigns *every* queued request to the
    first idle connection, since assigning does not make it busy; they then queue on
    that connection's lock, one wins, the others fail over with
    ``ConnectionNotAvailable`` and go round again, and each round rescans every
    connection. A burst of n requests (a wave of retries waking together) costs
    O(n^2) and stalls: with a fixed limit of 128 against a cap of 32, ~100 requests
    sat in that convoy for seconds while the mock served 11 of its 32 slots (34 % of
    the capacity, the client at 79 % CPU, successes taking 7.5x L). Here each
    request takes an idle single-connection transport (or a new one) and gives it
    back when its response is closed: O(1), whatever the burst. They all share one
    SSL context: httpx builds one per transport otherwise (loading the CA bundle,
    ~26 ms each), which stalled the event loop for seconds when a fixed limit of 128
    opened its connections at once.
    """

    def __init__(self, keepalive_expiry: float = 30.0) -> None:
        self._limits = httpx.Limits(max_connections=1, max_keepalive_connections=1,
                                    keepalive_expiry=keepalive_expiry)
        self._ssl = ssl.create_default_context()
        self._idle: list[httpx.AsyncHTTPTransport] = []
        self._all: list[httpx.AsyncHTTPTransport] = []

    @property
    def connections(self) -> int:
        return len(self._all)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._idle:
            transport = self._idle.pop()
        else:
            transport = httpx.AsyncHTTPTransport(limits=self._limits, trust_env=False,
                                                 verify=self._ssl)
            self._all.append(transport)
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            self._idle.append(transport)  # its pool drops a broken connection itself
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=ReleasingStream(response.stream,
                                                      lambda: self._idle.append(transport)),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        for transport in self._all:
            await transport.aclose()


def make_client(cfg: UpstreamConfig, kind: str) -> httpx.AsyncClient:
    """``build_client(cfg)`` itself (``kind == "build"``), or the same client settings
    over a :class:`FreeListTransport` (no auth and no extra headers for this config,
    no redirects, no proxies from the environment, the same timeouts)."""
    if kind == "build":
        return build_client(cfg, None)
    return httpx.AsyncClient(
        base_url=cfg.base_url,
        timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
        follow_redirects=False,
        trust_env=False,
        transport=FreeListTransport(),
    )


async def start_mock(args: Sequence[str], stderr: IO[bytes] | None = None
                     ) -> tuple[trio.Process, int, float]:
    """Start the mock (its log to ``stderr``, else inherited); return the process,
    its port and the Trio time it started."""
    cmd = [sys.executable, "-m", "pacer.mockapi", "--host", "127.0.0.1", "--port", "0", *args]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE, stderr=stderr)
    assert proc.stdout is not None
    buf = b""
    with trio.fail_after(15):
        while b"\n" not in buf:
            chunk = await proc.stdout.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"the mock exited before listening: {cmd}")
            buf += chunk
    started = trio.current_time()  # the mock's clock started a few ms before
    line = json.loads(buf.split(b"\n", 1)[0])
    if line.get("event") != "mock_api.listening":
        raise RuntimeError(f"unexpected first line from the mock: {line}")
    return proc, int(line["port"]), started


async def stop_mock(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.stdout is not None:
        await proc.stdout.aclose()
