"""Job files: parse and validate requests, streaming, one line at a time.

``STEM.jsonl`` holds one request per line (OpenAI Batch API input format);
``STEM.json`` holds one request. A file-level problem (unreadable, too large,
empty, duplicate ``custom_id``, nothing valid in it) rejects the whole file. In a
``.jsonl`` with some bad lines among good ones, the good ones are sent and each
bad one gets an error line in the results: one malformed line out of ten thousand
should not hold back the rest, and the job then ends in ``failed/`` so the user
sees it and can ``requeue`` once fixed.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, cast
from urllib.parse import unquote, urlsplit

from pacer.checks import header_problem

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
REQUEST_KEYS = frozenset({"custom_id", "method", "url", "body", "headers", "upstream"})
# Headers a job may never set: the upstream's credentials and routing are pacer's.
FORBIDDEN_HEADERS = frozenset(
    {"authorization", "host", "cookie", "proxy-authorization", "content-length",
     "transfer-encoding", "connection"}
)
_MAX_DEPTH = 64
MAX_CUSTOM_ID = 512
# JSON's own whitespace: a line holding anything else is not blank.
_JSON_WS = " \t\r\n"


class JobFileError(Exception):
    """The whole job file is unusable; the message is for a person."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass(frozen=True, slots=True)
class Request:
    custom_id: str
    method: str
    url: str  # a path (with query) relative to the upstream's base_url
    upstream: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    line: int = 1


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A line that cannot be sent; it still gets exactly one (error) result line."""

    custom_id: str
    line: int
    code: str
    message: str
    upstream: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamView:
    """What job validation needs to know of the configured upstreams."""

    base_urls: Mapping[str, str]  # name -> base_url
    auth_headers: Mapping[str, str]  # name -> lower-case auth header name
    default: str | None


class _BadLine(Exception):
    def __init__(self, code: str, message: str, custom_id: str | None = None) -> None:
        self.code = code
        self.message = message
        self.custom_id = custom_id


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # in C; only a shorter dict sends us looking for the key
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _BadLine("invalid_json", f"duplicate key {key!r} in a JSON object")
            seen.add(key)
    return out


def _no_constants(name: str) -> Any:
    raise _BadLine("invalid_json", f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: Infinity by another name
        raise _BadLine("invalid_json", f"number {text[:40]} is out of range")
    return value


def _encodable(text: str) -> bool:
    """False for strings with lone surrogates (JSON "\\ud800"): not valid UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _depth(value: Any, limit: int = _MAX_DEPTH, check_strings: bool = False) -> int:
    """Nesting depth of ``value`` (stops past ``limit``); with ``check_strings``,
    raise on a string or key that is not valid Unicode (a lone surrogate)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if d > limit:
            return d
        if isinstance(item, dict):
            if check_strings and not all(_encodable(k) for k in item):
                raise _BadLine("invalid_json", "a key holds a lone UTF-16 surrogate")
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
        elif check_strings and isinstance(item, str) and not _encodable(item):
            raise _BadLine("invalid_json", "a string holds a lone UTF-16 surrogate")
    return deepest


# One decoder for every line: json.loads with hooks builds a new one per call.
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates,
                                   parse_constant=_no_constants, parse_float=_finite_float)
# The C scanner decode() runs (not in the type stubs): (value, end), or StopIteration.
_scan_once: Callable[[str, int], tuple[Any, int]] = _STRICT_DECODER.scan_once  # type: ignore[attr-defined]


def loads_strict(text: str) -> Any:
    """JSON as the RFC has it: no NaN/Infinity (nor numbers that overflow to it),
    no duplicate keys, no lone surrogates (they cannot be written back as UTF-8),
    bounded depth."""
    try:
        text = text.strip(_JSON_WS)
        if text.startswith("\ufeff"):  # as json.loads: a BOM inside the text is not JSON
            raise json.JSONDecodeError("Unexpected UTF-8 BOM", text, 0)
        # scan_once is what decode() calls after its two whitespace regexes.
        try:
            value, end = _scan_once(text, 0)
        except StopIteration as stop:
            raise json.JSONDecodeError("Expecting value", text, stop.value) from None
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    except _BadLine:
        raise
    except RecursionError:
        raise _BadLine("invalid_json", "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _BadLine("invalid_json", f"not valid JSON: {exc}") from None
    except ValueError:  # Python refuses to convert integers this long
        raise _BadLine("invalid_json", "a number has more than 4300 digits") from None
    # Only a \u escape can produce a lone surrogate from text that decoded as UTF-8.
    # Nesting needs an opening bracket per level: with fewer brackets than the
    # limit the walk cannot fail, and skipping it halves validation time.
    check_strings = "\\u" in text
    if ((check_strings or text.count("{") + text.count("[") >= _MAX_DEPTH)
            and _depth(value, check_strings=check_strings) > _MAX_DEPTH):
        raise _BadLine("invalid_json", f"JSON nested deeper than {_MAX_DEPTH} levels")
    return value


def relative_url(url: str, base_url: str) -> str:
    """The request's URL as a path under ``base_url``; raise if it would leave it.
    (A job's lines mostly share a few URLs: short ones are remembered.)"""
    if len(url) <= _CACHED_URL_CHARS:
        return _relative_url_cached(url, base_url)
    return _relative_url(url, base_url)


_CACHED_URL_CHARS = 512  # bounds the cache's memory: 1024 entries of this size


def _relative_url(url: str, base_url: str) -> str:
    """The request's URL as a path under ``base_url``; raise if it would leave it.

    Absolute URLs are accepted only under ``base_url`` (same scheme, host, port and
    path prefix). No ``.``/``..`` segments (also percent-encoded), no backslashes.
    """
    if any(c < "\x20" or c == "\x7f" for c in url):
        # urlsplit would silently drop tabs and line breaks, and httpx refuses the
        # other control characters with an error that is not an HTTP error.
        raise _BadLine("invalid_url", f"url {url!r} has a control character")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "http://[::1" (an unclosed IPv6 literal)
        raise _BadLine("invalid_url", f"url {url!r} cannot be parsed: {exc}") from None
    base = urlsplit(base_url)
    if parts.scheme or parts.netloc:
        base_path = base.path.rstrip("/")
        same_origin = (parts.scheme.lower(), parts.netloc.lower()) == (
            base.scheme.lower(), base.netloc.lower())
        if not same_origin:
            raise _BadLine("url_not_allowed",
                           f"url {url!r} is outside the upstream's base_url {base_url!r}")
        if parts.path != base_path and not parts.path.startswith(base_path + "/"):
            raise _BadLine("url_not_allowed",
                           f"url {url!r} is outside the upstream's base_url {base_url!r}")
        path = parts.path[len(base_path):] or "/"
    elif url.startswith("/"):
        path = parts.path
    else:
        raise _BadLine("invalid_url", f"url {url!r} must be a path starting with '/'")
    if not path.startswith("/") or path.startswith("//"):
        # "//", "////x", "/\t/": no host, but not a path either (httpx would read
        # "//x" as a host, or send the request to base_url itself).
        raise _BadLine("invalid_url", f"url {url!r} must be a path starting with one '/'")
    if parts.fragment:
        raise _BadLine("invalid_url", "url must not have a fragment")
    decoded = unquote(path)
    if "\\" in decoded or any(c in decoded for c in "\r\n\t\0"):
        raise _BadLine("invalid_url", f"url {url!r} has characters not allowed in a path")
    if any(seg in (".", "..") for seg in decoded.split("/")):
        raise _BadLine("url_not_allowed", f"url {url!r} has '.' or '..' segments")
    return path + (f"?{parts.query}" if parts.query else "")


_relative_url_cached = functools.lru_cache(maxsize=1024)(_relative_url)


def parse_request(obj: Any, default_id: str, line: int, view: UpstreamView) -> Request:
    """Validate one decoded request object."""
    custom_id, method, path, upstream, headers = _checked(obj, default_id, view)
    return Request(custom_id=custom_id, method=method, url=path, upstream=upstream,
                   body=obj.get("body"), headers=headers, line=line)


def _checked(obj: Any, default_id: str, view: UpstreamView,
             ) -> tuple[str, str, str, str, dict[str, str]]:
    """Validate one decoded request object: its custom_id, method, path, upstream
    and headers (the validation pass needs no Request built)."""
    if not isinstance(obj, dict):
        raise _BadLine("invalid_request", "a request must be a JSON object")
    custom_id = obj.get("custom_id", default_id)
    if not _valid_id(custom_id):
        raise _BadLine("invalid_request",
                       f"custom_id must be a non-empty string (<= {MAX_CUSTOM_ID} chars)")
    if not REQUEST_KEYS.issuperset(obj):
        unknown = sorted(set(obj) - REQUEST_KEYS)
        raise _BadLine("invalid_request",
                       f"unknown key(s) {', '.join(map(repr, unknown))}; "
                       f"known: {', '.join(sorted(REQUEST_KEYS))}", custom_id)
    upstream = obj.get("upstream", view.default)
    if upstream is None:
        raise _BadLine("unknown_upstream",
                       "no \"upstream\" given and no default upstream is configured", custom_id)
    if not isinstance(upstream, str) or upstream not in view.base_urls:
        raise _BadLine("unknown_upstream", f"upstream {upstream!r} is not configured", custom_id)
    method = obj.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise _BadLine("invalid_request", f"method {method!r} is not one of "
                       f"{', '.join(sorted(METHODS))}", custom_id)
    if "url" not in obj:
        raise _BadLine("invalid_request", "missing \"url\"", custom_id)
    url = obj["url"]
    if not isinstance(url, str) or not url:
        raise _BadLine("invalid_request", "url must be a non-empty string", custom_id)
    try:
        path = relative_url(url, view.base_urls[upstream])
    except _BadLine as exc:
        exc.custom_id = custom_id
        raise
    if "headers" not in obj:
        return custom_id, method.upper(), path, upstream, {}
    headers = obj["headers"]
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise _BadLine("invalid_request", "headers must be an object of strings", custom_id)
    forbidden = FORBIDDEN_HEADERS | {view.auth_headers.get(upstream, "authorization")}
    for name, value in headers.items():
        if name.strip(_JSON_WS).lower() in forbidden:
            raise _BadLine("header_not_allowed",
                           f"a job may not set the {name!r} header", custom_id)
        problem = header_problem(name, value)
        if problem:
            raise _BadLine("invalid_request", problem, custom_id)
    return custom_id, method.upper(), path, upstream, dict(headers)


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLine("invalid_utf8", f"not valid UTF-8 at byte {exc.start}") from None


def _valid_id(cid: Any) -> bool:
    return (isinstance(cid, str) and 0 < len(cid) <= MAX_CUSTOM_ID
            and (cid.isascii() or _encodable(cid)))


def _guess(text: str, view: UpstreamView) -> tuple[str | None, str | None]:
    """The custom_id and upstream of a line that failed validation, as far as they
    can be read off it (each None when not)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    cid = obj.get("custom_id")
    upstream = obj.get("upstream", view.default)
    return (cid if _valid_id(cid) else None,
            upstream if isinstance(upstream, str) and upstream in view.base_urls else None)


class LineReader(Protocol):
    def readline(self, limit: int = -1, /) -> bytes: ...


def iter_jsonl(fh: LineReader, stem: str, view: UpstreamView, max_line: int,
               ) -> Iterator[Request | BadRequest]:
    """Stream a ``.jsonl`` job: one Request or BadRequest per non-blank line."""
    return cast(Iterator[Request | BadRequest], _scan_jsonl(fh, stem, view, max_line, True))


def _scan_jsonl(fh: LineReader, stem: str, view: UpstreamView, max_line: int, build: bool,
                ) -> Iterator[Request | BadRequest | tuple[str, int]]:
    """One Request (with ``build``; else only its custom_id and line) or BadRequest
    per non-blank line."""
    line_no = 0
    while True:
        raw = fh.readline(max_line + 1)
        if not raw:
            return
        line_no += 1
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 BOM, as some editors write
        if len(raw) > max_line and not raw.endswith(b"\n"):
            while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the rest of the over-long line
            yield BadRequest(f"{stem}:{line_no}", line_no, "line_too_long",
                             f"line {line_no} is longer than {max_line} bytes")
            continue
        default_id = f"{stem}:{line_no}"
        text = ""
        try:
            text = _decode(raw).strip(_JSON_WS)
            if not text:
                continue
            obj = loads_strict(text)
            item: Request | tuple[str, int] = (
                parse_request(obj, default_id, line_no, view) if build
                else (_checked(obj, default_id, view)[0], line_no))
        except _BadLine as exc:
            guessed_id, upstream = _guess(text, view) if text else (None, None)
            cid = exc.custom_id or guessed_id or default_id
            yield BadRequest(cid, line_no, exc.code, f"line {line_no}: {exc.message}", upstream)
            continue
        yield item


def read_single(data: bytes, stem: str, view: UpstreamView) -> Request:
    """Parse a ``.json`` job (one request); raise JobFileError if it is unusable."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = _decode(data)
        if not text.strip(_JSON_WS):
            raise JobFileError("empty", "the job file is empty")
        return parse_request(loads_strict(text), stem, 1, view)
    except _BadLine as exc:
        raise JobFileError(exc.code, exc.message) from None


class Bounded:
    """A binary file seen only up to ``end``: what was validated is what gets sent,
    even if the producer appends to the file meanwhile."""

    def __init__(self, fh: IO[bytes], end: int) -> None:
        self._fh = fh
        self._end = end

    def readline(self, limit: int = -1) -> bytes:
        left = self._end - self._fh.tell()
        if left <= 0:
            return b""
        return self._fh.readline(left if limit < 0 else min(limit, left))

    def tell(self) -> int:
        return self._fh.tell()


@dataclass(slots=True)
class JobSummary:
    """The validation pass over a whole file, before anything is sent."""

    requests: int = 0
    bad: int = 0
    first_errors: list[str] = field(default_factory=list)
    custom_ids: set[str] = field(default_factory=set)  # every line's, bad ones too
    end: int = 0  # bytes validated: the sending pass reads no further


def validate_jsonl(fh: IO[bytes], stem: str, view: UpstreamView, max_line: int) -> JobSummary:
    """First pass over a ``.jsonl``: count, and reject what must be rejected whole."""
    summary = JobSummary()
    seen = summary.custom_ids
    for item in _scan_jsonl(fh, stem, view, max_line, False):
        if isinstance(item, tuple):  # a valid line's custom_id and line number
            cid, line_no = item
            if cid in seen:
                raise JobFileError("duplicate_custom_id",
                                   f"custom_id {cid!r} appears more than once "
                                   f"(again on line {line_no})")
            seen.add(cid)
            summary.requests += 1
            continue
        assert isinstance(item, BadRequest)  # without build, no Request is made
        if item.custom_id in seen:
            raise JobFileError("duplicate_custom_id",
                               f"custom_id {item.custom_id!r} appears more than once "
                               f"(again on line {item.line})")
        seen.add(item.custom_id)
        summary.bad += 1
        if len(summary.first_errors) < 5:
            summary.first_errors.append(item.message)
    summary.end = fh.tell()
    if summary.requests == 0 and summary.bad == 0:
        raise JobFileError("empty", "the job file has no requests")
    if summary.requests == 0:
        raise JobFileError("no_valid_request",
                           "no line is a valid request: " + "; ".join(summary.first_errors))
    return summary
