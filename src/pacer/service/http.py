"""The HTTP edge: the upstream's client, and one exchange of a request for an answer.

httpx is used here and nowhere else in the send path; its exceptions are translated
here, once, into a :data:`pacer.control.outcome.TransportFailure` name, so the control
code never sees an HTTP library.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from pacer.config import UpstreamConfig
from pacer.control.outcome import TransportFailure
from pacer.spool.jobs import Request

MAX_RESPONSE_BYTES = 32 * 1024 * 1024


def build_client(cfg: UpstreamConfig, api_key: str | None) -> httpx.AsyncClient:
    """The upstream's one client: pool sized to the highest limit, no redirects
    (they could lead a request off its upstream), auth header set here only."""
    headers = dict(cfg.headers)
    if api_key:
        headers[cfg.auth_header] = cfg.auth_format.replace("{key}", api_key)
    return httpx.AsyncClient(
        base_url=cfg.base_url,
        headers=headers,
        timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
        limits=httpx.Limits(max_connections=cfg.max_limit,
                            max_keepalive_connections=cfg.max_limit),
        follow_redirects=False,
        http2=cfg.http2,
        trust_env=False,
    )


def _decode_body(data: bytes, content_type: str) -> Any:
    if not data:
        return None
    if "json" in content_type or data[:1] in (b"{", b"["):
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            pass
    return data.decode("utf-8", errors="replace")


def transport_failure(exc: httpx.HTTPError) -> TransportFailure:
    """The one translation of httpx's exceptions (a connect timeout is a connection
    failure: the request never reached the upstream)."""
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    return "internal"


async def exchange(client: httpx.AsyncClient, req: Request, timeout: float) -> tuple[
        int | None, httpx.Headers | None, Any, TransportFailure | None, str | None]:
    """Send and read the whole answer, under one deadline (httpx's timeouts are
    per read: a body trickling in byte by byte would never trip them)."""
    status: int | None = None
    headers: httpx.Headers | None = None
    with trio.move_on_after(timeout) as scope:
        try:
            request = client.build_request(
                req.method, req.url, headers=req.headers,
                json=req.body if req.body is not None else None)
        except (ValueError, UnicodeError, httpx.HTTPError) as exc:
            # Validation should have caught it: final, and says nothing about load.
            return (None, None, None, "invalid_request",
                    f"cannot send: {type(exc).__name__}: {exc}")
        try:
            response = await client.send(request, stream=True)
            try:
                status, headers = response.status_code, response.headers
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > MAX_RESPONSE_BYTES:
                        return (None, headers, None, "response_too_large",
                                f"response body larger than {MAX_RESPONSE_BYTES} bytes")
                return (status, headers,
                        _decode_body(bytes(data), headers.get("content-type", "")),
                        None, None)
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None, None, None, transport_failure(exc), text
    assert scope.cancelled_caught
    return None, None, None, "timeout", f"no complete answer within {timeout} s"
