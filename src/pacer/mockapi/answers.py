"""What the mock answers: the answer value, its counters, and the canned bodies."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pacer.mockapi.settings import HUGE_BODY_BYTES

_CHUNK_SIZE = 65536
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx (mock)</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_WRONG_TYPE_HTML = (
    b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head>\n"
    b"<body><h1>Please sign in to continue</h1>"
    b'<form method="post" action="/login"><input name="user"></form></body></html>\n'
)


@dataclass(slots=True)
class MockStats:
    """Counters of the mock; ``GET /_mock/stats`` answers :meth:`snapshot`.

    ``rate_limited`` counts every 429 (concurrency, rate and tokens alike);
    ``errors`` counts only the 500s of ``error_rate``; outages and faults have
    their own counters (a total and one per kind).
    """

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    rate_limited_concurrency: int = 0
    rate_limited_rate: int = 0
    errors: int = 0
    in_service: int = 0
    max_in_service: int = 0
    current_cap: int | None = None
    tokens_limited: int = 0
    tokens_too_large: int = 0
    tokens_used: int = 0
    unauthorized: int = 0
    outage: int = 0
    outage_by_kind: dict[str, int] = field(default_factory=dict)
    faults: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of the counters."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class MockResponse:
    """One answer of :meth:`MockUpstream.handle` (header names are lower case).

    ``fault`` tells the transport to misbehave: ``close`` (close without an
    answer), ``refuse`` (as if the connection had been refused), ``hang`` (never
    answer), ``reset`` (reset in the middle of the body), ``trickle`` (send the
    body slowly). ``stream``, when set, yields a body of ``stream_length`` bytes
    in place of ``body``.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    fault: str | None = None
    stream: Callable[[], Iterator[bytes]] | None = None
    stream_length: int = 0

    @property
    def content_length(self) -> int:
        return self.stream_length if self.stream is not None else len(self.body)

    def iter_body(self) -> Iterator[bytes]:
        """The body in chunks."""
        if self.stream is None:
            yield self.body
        else:
            yield from self.stream()

    def json(self) -> Any:
        return json.loads(self.body)


def _json_response(
    status: int, headers: list[tuple[str, str]], payload: dict[str, Any]
) -> MockResponse:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return MockResponse(status, [("content-type", "application/json"), *headers], body)


def _server_error(status: int, headers: list[tuple[str, str]]) -> MockResponse:
    """A 500 or 503 in OpenAI's JSON, a 502 as a proxy's HTML page."""
    if status == 502:
        return MockResponse(502, [("content-type", "text/html"), *headers], _BAD_GATEWAY_HTML)
    if status == 503:
        message = "The engine is currently overloaded, please try again later (mock)."
    else:
        message = "The server had an error while processing your request (mock)."
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    return _json_response(status, headers, {"error": error})


def _unauthorized(request_id: str) -> MockResponse:
    error = {
        "message": "Incorrect or missing API key (mock).",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    headers = [("www-authenticate", 'Bearer realm="mock"'), ("x-request-id", request_id)]
    return _json_response(401, headers, {"error": error})


def _faulty(fault: str, headers: list[tuple[str, str]], completion: dict[str, Any]) -> MockResponse:
    """What would have been a 200 with ``completion``, spoilt by ``fault``."""
    good = _json_response(200, headers, completion)
    if fault == "malformed":  # cut in the middle: never valid JSON
        return dataclasses.replace(good, body=good.body[: len(good.body) // 2])
    if fault == "wrong-type":
        return MockResponse(200, [("content-type", "text/html; charset=utf-8"), *headers],
                            _WRONG_TYPE_HTML)  # fmt: skip
    if fault == "huge":
        return dataclasses.replace(
            good,
            body=b"",
            stream=functools.partial(_huge_body, completion, HUGE_BODY_BYTES),
            stream_length=HUGE_BODY_BYTES,
        )
    return dataclasses.replace(good, fault=fault)  # reset, trickle: up to the transport


def _huge_body(completion: dict[str, Any], size: int) -> Iterator[bytes]:
    """A valid chat completion of exactly ``size`` bytes (its reply padded with ``a``)."""
    marker = "\x00PAD\x00"
    payload = {**completion, "choices": [{**completion["choices"][0]}]}
    payload["choices"][0]["message"] = {"role": "assistant", "content": marker}
    text = json.dumps(payload, separators=(",", ":"))
    prefix, suffix = (part.encode() for part in text.split(json.dumps(marker)[1:-1], 1))
    padding = size - len(prefix) - len(suffix)
    yield prefix
    filler = b"a" * _CHUNK_SIZE
    while padding > 0:
        chunk = filler[: min(padding, _CHUNK_SIZE)]
        padding -= len(chunk)
        yield chunk
    yield suffix
