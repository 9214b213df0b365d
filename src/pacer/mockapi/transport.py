"""An ``httpx.MockTransport`` over :class:`MockUpstream`, for tests on the virtual clock."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import httpx
import trio

from pacer.mockapi.answers import MockResponse
from pacer.mockapi.behaviour import MockUpstream
from pacer.mockapi.settings import TRICKLE_INTERVAL_S


def _read_timeout(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        value = timeout.get("read")
        if isinstance(value, int | float):
            return float(value)
    return None


class _MockBody(httpx.AsyncByteStream):
    """The body of a streamed, trickled or reset answer, for :func:`mock_transport`."""

    def __init__(self, answer: MockResponse, request: httpx.Request) -> None:
        self._answer = answer
        self._request = request
        self._chunks: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._chunks = self._generate()
        return self._chunks

    async def aclose(self) -> None:
        if self._chunks is not None:
            await self._chunks.aclose()

    async def _generate(self) -> AsyncGenerator[bytes, None]:
        answer = self._answer
        if answer.fault == "reset":
            yield answer.body[: len(answer.body) // 2]
            raise httpx.ReadError(
                "[Errno 104] Connection reset by peer (mock)", request=self._request
            )
        if answer.fault == "trickle":
            read_timeout = _read_timeout(self._request)
            for index in range(len(answer.body)):
                if read_timeout is not None and read_timeout < TRICKLE_INTERVAL_S:
                    await trio.sleep(read_timeout)
                    raise httpx.ReadTimeout("timed out (mock trickle)", request=self._request)
                await trio.sleep(TRICKLE_INTERVAL_S)
                yield answer.body[index : index + 1]
            return
        for chunk in answer.iter_body():
            yield chunk


async def _to_httpx(answer: MockResponse, request: httpx.Request) -> httpx.Response:
    fault = answer.fault
    if fault == "refuse":
        raise httpx.ConnectError("[Errno 111] Connection refused (mock outage)", request=request)
    if fault == "close":
        raise httpx.RemoteProtocolError(
            "Server disconnected without sending a response (mock).", request=request
        )
    if fault == "hang":
        timeout = _read_timeout(request)
        if timeout is None:
            await trio.sleep_forever()
        await trio.sleep(timeout)
        raise httpx.ReadTimeout("timed out (mock hang)", request=request)
    if fault is None and answer.stream is None:
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body)
    headers = [*answer.headers, ("content-length", str(answer.content_length))]
    return httpx.Response(answer.status, headers=headers, stream=_MockBody(answer, request))


def mock_transport(upstream: MockUpstream) -> httpx.MockTransport:
    """An ``httpx.MockTransport`` that answers through ``upstream.handle``.

    Socket faults become httpx exceptions: ``refuse`` → ``ConnectError``,
    ``close`` (and outage ``reset``) → ``RemoteProtocolError``, ``reset`` →
    ``ReadError`` after half the body, ``hang`` → ``ReadTimeout`` after the
    request's read timeout (never, without one); ``trickle`` sleeps
    :data:`TRICKLE_INTERVAL_S` before each byte (``ReadTimeout`` when the read
    timeout is shorter).
    """

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        answer = await upstream.handle(
            request.method, request.url.raw_path.decode("ascii"), request.headers, body
        )
        return await _to_httpx(answer, request)

    return httpx.MockTransport(handler)
