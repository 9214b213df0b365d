"""Job files: parsing and validation of .json and .jsonl, line by line."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pacer.spool.jobs import (
    BadRequest,
    JobFileError,
    Request,
    UpstreamView,
    header_problem,
    iter_jsonl,
    read_single,
    relative_url,
    validate_jsonl,
)

CORPUS = Path(__file__).parent / "corpus" / "bad_jobs"

VIEW = UpstreamView(
    base_urls={"default": "http://127.0.0.1:8000", "api": "https://api.example.com/v1"},
    auth_headers={"default": "authorization", "api": "x-api-key"},
    default="default",
)
NO_DEFAULT = UpstreamView(
    base_urls=dict(VIEW.base_urls), auth_headers=dict(VIEW.auth_headers), default=None
)
MAX_LINE = 4096
CHAT = "/v1/chat/completions"


def req(**fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "custom_id": "r-1",
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": []},
    }
    obj.update(fields)
    return {k: v for k, v in obj.items() if v is not ...}


def lines(*objs: Any) -> bytes:
    return b"".join((o if isinstance(o, bytes) else json.dumps(o).encode()) + b"\n" for o in objs)


def parse(
    data: bytes, stem: str = "job", view: UpstreamView = VIEW, max_line: int = MAX_LINE
) -> list[Request | BadRequest]:
    return list(iter_jsonl(io.BytesIO(data), stem, view, max_line))


def one(obj: Any, view: UpstreamView = VIEW) -> Request | BadRequest:
    items = parse(lines(obj), view=view, max_line=1 << 20)
    assert len(items) == 1
    return items[0]


def bad(obj: Any, view: UpstreamView = VIEW) -> BadRequest:
    item = one(obj, view)
    assert isinstance(item, BadRequest), item
    return item


def single_error(data: bytes | Any, stem: str = "job") -> JobFileError:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    with pytest.raises(JobFileError) as info:
        read_single(raw, stem, VIEW)
    return info.value


# -------------------------------------------------------------------- valid jobs


def test_valid_jsonl_openai_batch_format() -> None:
    data = lines(
        req(custom_id="a"),
        req(custom_id="b", method="get", url="/v1/models?x=1", body=...),
        req(custom_id="c", upstream="api", url="/chat", headers={"X-Trace": "t"}),
    )
    items = parse(data)
    assert all(isinstance(i, Request) for i in items)
    a, b, c = items
    assert isinstance(a, Request) and isinstance(b, Request) and isinstance(c, Request)
    assert (a.custom_id, a.method, a.url, a.upstream, a.line) == ("a", "POST", CHAT, "default", 1)
    assert a.body == {"model": "m", "messages": []}
    assert (b.method, b.url, b.body, b.line) == ("GET", "/v1/models?x=1", None, 2)
    assert (c.upstream, c.url, dict(c.headers)) == ("api", "/chat", {"X-Trace": "t"})


def test_valid_single_json() -> None:
    r = read_single(json.dumps(req()).encode(), "job", VIEW)
    assert (r.custom_id, r.method, r.url, r.upstream) == ("r-1", "POST", CHAT, "default")


def test_default_custom_ids() -> None:
    r = read_single(json.dumps(req(custom_id=...)).encode(), "my-job", VIEW)
    assert r.custom_id == "my-job"
    items = parse(
        lines(req(custom_id=...), req(custom_id="x")) + b"\n" + lines(req(custom_id=...)),
        stem="batch",
    )
    assert [i.custom_id for i in items] == ["batch:1", "x", "batch:4"]
    assert [i.line for i in items] == [1, 2, 4]  # blank line 3 still counts


def test_method_defaults_to_post() -> None:
    item = one(req(method=...))
    assert isinstance(item, Request) and item.method == "POST"


def test_no_default_upstream() -> None:
    b = bad(req(), view=NO_DEFAULT)
    assert b.code == "unknown_upstream"
    ok = one(req(upstream="default"), view=NO_DEFAULT)
    assert isinstance(ok, Request)


def test_validate_jsonl_counts() -> None:
    data = lines(req(custom_id="a"), b"{not json", req(custom_id="c"))
    s = validate_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE)
    assert (s.requests, s.bad) == (2, 1)
    assert "line 2" in s.first_errors[0]


# ---------------------------------------------------------------- file-level errors


def test_invalid_json_single() -> None:
    e = single_error(b'{"url": "/x",')
    assert e.code == "invalid_json"


def test_empty_and_whitespace_files() -> None:
    assert single_error(b"").code == "empty"
    assert single_error(b" \n\t\r\n ").code == "empty"
    for data in (b"", b"\n\n  \r\n\t\n"):
        with pytest.raises(JobFileError) as info:
            validate_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE)
        assert info.value.code == "empty"


def test_no_valid_line_rejects_the_file() -> None:
    with pytest.raises(JobFileError) as info:
        validate_jsonl(io.BytesIO(b"nope\n[1]\n"), "j", VIEW, MAX_LINE)
    assert info.value.code == "no_valid_request"
    assert "line 1" in info.value.message


def test_duplicate_custom_id_rejects_the_file() -> None:
    data = lines(req(custom_id="a"), req(custom_id="b"), req(custom_id="a"))
    with pytest.raises(JobFileError) as info:
        validate_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE)
    assert info.value.code == "duplicate_custom_id"
    assert "'a'" in info.value.message and "line 3" in info.value.message


def test_duplicate_between_explicit_and_default_id() -> None:
    data = lines(req(custom_id=...), req(custom_id="j:1"))
    with pytest.raises(JobFileError, match="duplicate_custom_id"):
        validate_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE)


def test_single_json_errors_are_file_errors() -> None:
    assert single_error(req(url=...)).code == "invalid_request"
    assert single_error(req(upstream="nope")).code == "unknown_upstream"
    assert single_error([req()]).code == "invalid_request"
    assert single_error(b'{"a": 1}\n{"b": 2}').code == "invalid_json"


# ------------------------------------------------------ one bad line among good ones


def test_one_bad_line_among_good_ones() -> None:
    data = lines(req(custom_id="a"), b'{"custom_id": "b", "url": ', req(custom_id="c"))
    items = parse(data)
    assert [type(i).__name__ for i in items] == ["Request", "BadRequest", "Request"]
    b = items[1]
    assert isinstance(b, BadRequest)
    assert b.line == 2 and b.code == "invalid_json"
    assert b.message.startswith("line 2: ")
    assert b.custom_id == "job:2"  # the line cannot be read: the default id


def test_bad_line_keeps_its_custom_id_and_upstream_when_readable() -> None:
    b = bad(req(custom_id="keep-me", url="relative", upstream="api"))
    assert b.custom_id == "keep-me" and b.code == "invalid_url"
    assert b.upstream == "api"
    b = bad(req(custom_id="x", unknown=1))
    assert b.custom_id == "x" and b.upstream == "default"
    b = bad(req(custom_id="x", upstream="nope"))
    assert b.upstream is None


def test_bad_line_with_unusable_custom_id_gets_the_default() -> None:
    b = bad(req(custom_id="x" * 513))
    assert b.custom_id == "job:1"
    b = bad(req(custom_id=""))
    assert b.custom_id == "job:1"
    b = bad(req(custom_id=7))
    assert b.custom_id == "job:1"


@pytest.mark.parametrize(
    ("obj", "code", "needle"),
    [
        (req(url=...), "invalid_request", "url"),
        (req(url=""), "invalid_request", "url"),
        (req(url=5), "invalid_request", "url"),
        (req(upstream="nope"), "unknown_upstream", "nope"),
        (req(upstream=3), "unknown_upstream", "3"),
        (req(method="BREW"), "invalid_request", "method"),
        (req(method=1), "invalid_request", "method"),
        (req(extra=1, also=2), "invalid_request", "'also', 'extra'"),
        (req(headers=["a"]), "invalid_request", "headers"),
        (req(headers={"a": 1}), "invalid_request", "headers"),
        ("a string", "invalid_request", "object"),
        ([req()], "invalid_request", "object"),
    ],
)
def test_bad_request_lines(obj: Any, code: str, needle: str) -> None:
    b = bad(obj)
    assert b.code == code
    assert needle in b.message


# ----------------------------------------------------------------------- urls


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.example.com/v1/chat",  # other host
        "http://127.0.0.1:8001/v1/chat",  # other port
        "https://127.0.0.1:8000/v1/chat",  # other scheme
        "http://127.0.0.1/v1/chat",  # default port is another port
        "http://user@127.0.0.1:8000/v1/chat",  # userinfo
        "//127.0.0.1:8000/v1/chat",  # scheme-relative
        "//evil.example.com/x",
        "javascript:alert(1)",
    ],
)
def test_absolute_url_outside_base_url(url: str) -> None:
    b = bad(req(url=url))
    assert b.code == "url_not_allowed", b


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v10/chat",  # path prefix trick: /v1 vs /v10
        "https://api.example.com/v1x",
        "https://api.example.com/",
        "https://api.example.com/v2/v1/chat",
        "https://api.example.com/v1%2fchat",
    ],
)
def test_absolute_url_outside_base_path(url: str) -> None:
    b = bad(req(url=url, upstream="api"))
    assert b.code == "url_not_allowed", b


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://api.example.com/v1/chat/completions", "/chat/completions"),
        ("https://API.example.com/v1/chat?x=1", "/chat?x=1"),
        ("https://api.example.com/v1", "/"),
        ("https://api.example.com/v1/", "/"),
    ],
)
def test_absolute_url_inside_base_url_is_made_relative(url: str, path: str) -> None:
    r = one(req(url=url, upstream="api"))
    assert isinstance(r, Request) and r.url == path
    assert relative_url("http://127.0.0.1:8000/v1/x", "http://127.0.0.1:8000") == "/v1/x"
    assert relative_url("http://127.0.0.1:8000/v1/x", "http://127.0.0.1:8000/") == "/v1/x"


@pytest.mark.parametrize(
    "url",
    [
        "/v1/../admin",
        "/v1/./chat",
        "/..",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2e/admin",
        "/v1/.%2e/x",
        "/v1/%2e/x",
        "https://api.example.com/v1/../admin",
        "https://api.example.com/v1/%2e%2e/admin",
    ],
)
def test_dot_segments_are_refused(url: str) -> None:
    b = bad(req(url=url, upstream="api"))
    assert b.code == "url_not_allowed", b


@pytest.mark.parametrize(
    "url",
    [
        "v1/chat",
        "chat",
        "/v1\\..\\admin",
        "/v1/%5c..%5cadmin",
        "/v1/%0d%0aX: y",
        "/v1/%00",
        "/v1/chat#frag",
    ],
)
def test_malformed_urls(url: str) -> None:
    b = bad(req(url=url))
    assert b.code in ("invalid_url", "url_not_allowed"), b


def test_unparseable_url_is_a_bad_line_not_a_crash() -> None:
    # Was: urlsplit's ValueError ("Invalid IPv6 URL") escaped iter_jsonl.
    for url in ("http://[::1/v1", "http://[zz]/x"):
        b = bad(req(url=url))
        assert b.code in ("invalid_url", "url_not_allowed")
    e = single_error(req(url="http://[::1/v1"))
    assert e.code == "invalid_url"


# ------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "authorization",
        "HOST",
        "Cookie",
        "Proxy-Authorization",
        "Content-Length",
        " Authorization",
    ],
)
def test_forbidden_headers(name: str) -> None:
    b = bad(req(headers={name: "x"}))
    assert b.code == "header_not_allowed", b


def test_header_values_h11_accepts_are_accepted() -> None:
    ok = one(req(headers={"X-A": "a b\tc", "X-Empty": "", "X-Sym": "!#$%&'*+-.^_`|~\"(),/"}))
    assert isinstance(ok, Request) and len(ok.headers) == 3


def test_the_upstreams_auth_header_is_forbidden() -> None:
    b = bad(req(upstream="api", url="/x", headers={"X-API-Key": "k"}))
    assert b.code == "header_not_allowed"
    ok = one(req(url="/x", headers={"X-API-Key": "k"}))  # not the default's auth header
    assert isinstance(ok, Request)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "line\r\nInjected: 1"},
        {"X-A\nB": "v"},
        {"X:A": "v"},
        {"": "v"},
        {"X A": "v"},
        {"X-A": "caf\u00e9"},
        {"X-A": "\x00"},
        {"Authorization ": "x"},
        {"X-A": " v"},
        {"X-A": "v\t"},
    ],
)
def test_malformed_headers(headers: dict[str, str]) -> None:
    b = bad(req(headers=headers))
    assert b.code in ("invalid_request", "header_not_allowed"), b


# -------------------------------------------------------------- strict JSON


def test_bom_is_accepted() -> None:
    data = b"\xef\xbb\xbf" + lines(req(custom_id="a"), req(custom_id="b"))
    assert [type(i) for i in parse(data)] == [Request, Request]
    r = read_single(b"\xef\xbb\xbf" + json.dumps(req()).encode(), "j", VIEW)
    assert r.custom_id == "r-1"


def test_crlf_lines() -> None:
    data = (
        json.dumps(req(custom_id="a")).encode()
        + b"\r\n"
        + json.dumps(req(custom_id=...)).encode()
        + b"\r\n\r\n"
    )
    items = parse(data)
    assert [i.custom_id for i in items] == ["a", "job:2"]
    assert all(isinstance(i, Request) for i in items)


def test_last_line_without_newline() -> None:
    data = lines(req(custom_id="a")) + json.dumps(req(custom_id="b")).encode()
    assert [i.custom_id for i in parse(data)] == ["a", "b"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"custom_id": "n", "url": "/x", "body": NaN}',
        b'{"custom_id": "n", "url": "/x", "body": Infinity}',
        b'{"custom_id": "n", "url": "/x", "body": [-Infinity]}',
        b'{"custom_id": "n", "url": "/x", "body": 1e400}',  # Infinity by another name
        b'{"custom_id": "n", "url": "/x", "body": -1E999}',
    ],
)
def test_non_finite_numbers(raw: bytes) -> None:
    b = bad(raw)
    assert b.code == "invalid_json" and b.custom_id == "n"


def test_duplicate_keys() -> None:
    b = bad(b'{"custom_id": "d", "url": "/x", "url": "/y"}')
    assert b.code == "invalid_json" and "duplicate key 'url'" in b.message
    b = bad(b'{"custom_id": "d", "url": "/x", "body": {"a": 1, "a": 2}}')
    assert b.code == "invalid_json"


def test_deep_nesting() -> None:
    deep = b'{"url": "/x", "body": ' + b"[" * 100 + b"]" * 100 + b"}"
    assert bad(deep).code == "invalid_json"
    very_deep = b"[" * 100_000 + b"]" * 100_000
    assert bad(very_deep).code == "invalid_json"
    ok = b'{"url": "/x", "body": ' + b"[" * 50 + b"]" * 50 + b"}"
    assert isinstance(one(ok), Request)
    assert single_error(very_deep).code == "invalid_json"


def test_huge_integer() -> None:
    raw = b'{"custom_id": "h", "url": "/x", "body": ' + b"9" * 5000 + b"}"
    b = bad(raw)
    assert b.code == "invalid_json" and b.custom_id == "job:1"
    assert single_error(raw).code == "invalid_json"
    big = b'{"url": "/x", "body": ' + b"9" * 4000 + b"}"
    assert isinstance(one(big), Request)


def test_lone_surrogates_are_refused() -> None:
    # Was: accepted; writing the result line (or the request body) then failed
    # with UnicodeEncodeError, outside any handler.
    raw = b'{"custom_id": "s\\ud800", "url": "/x"}'
    b = bad(raw)
    assert b.code == "invalid_json"
    b.custom_id.encode("utf-8")  # what goes into the results file must encode
    assert bad(b'{"url": "/x", "body": {"\\udfff": 1}}').code == "invalid_json"
    assert bad(b'{"url": "/x", "headers": {"X-A": "\\ud83d"}}').code == "invalid_json"
    ok = one(b'{"url": "/x", "body": "\\ud83d\\ude00 \\\\ud800"}')  # a pair; a literal
    assert isinstance(ok, Request) and ok.body == "\U0001f600 \\ud800"


def test_invalid_utf8() -> None:
    data = (
        lines(req(custom_id="a"))
        + b'{"custom_id": "b\xff", "url": "/x"}\n'
        + lines(req(custom_id="c"))
    )
    items = parse(data)
    b = items[1]
    assert isinstance(b, BadRequest) and b.code == "invalid_utf8" and b.custom_id == "job:2"
    assert isinstance(items[2], Request)
    assert single_error(b'{"url": "/\xc3"}').code == "invalid_utf8"


def test_non_json_whitespace_line_is_not_silently_blank() -> None:
    # U+0085 and U+00A0 are whitespace to str.strip() but not to JSON: a line of
    # them is a (bad) line, not a blank one to skip.
    items = parse(lines(req(custom_id="a")) + "\u0085\u00a0\n".encode() + lines(req(custom_id="c")))
    assert [type(i) for i in items] == [Request, BadRequest, Request]


def test_over_long_line_is_skipped_and_later_lines_parse() -> None:
    long_line = json.dumps(req(custom_id="long", body="x" * (MAX_LINE * 3))).encode()
    data = lines(req(custom_id="a"), long_line, req(custom_id="c"), req(custom_id="d"))
    items = parse(data)
    assert [i.custom_id for i in items] == ["a", "job:2", "c", "d"]
    b = items[1]
    assert isinstance(b, BadRequest) and b.code == "line_too_long" and b.line == 2
    assert [i.line for i in items] == [1, 2, 3, 4]


def test_over_long_last_line_without_newline() -> None:
    data = lines(req(custom_id="a")) + b"x" * (MAX_LINE + 10)
    items = parse(data)
    assert [type(i) for i in items] == [Request, BadRequest]


def test_line_of_exactly_max_line_bytes_is_parsed() -> None:
    base = json.dumps(req(custom_id="e", body="")).encode()
    pad = MAX_LINE - len(base)
    exact = json.dumps(req(custom_id="e", body="x" * pad)).encode()
    assert len(exact) == MAX_LINE
    items = parse(exact + b"\n" + lines(req(custom_id="f")))
    assert [type(i) for i in items] == [Request, Request]
    over = json.dumps(req(custom_id="e", body="x" * (pad + 1))).encode()
    assert isinstance(parse(over + b"\n")[0], BadRequest)


def test_custom_id_limits() -> None:
    assert isinstance(one(req(custom_id="x" * 512)), Request)
    assert bad(req(custom_id="x" * 513)).code == "invalid_request"


# ------------------------------------------------------------------- corpus


def corpus_files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix in (".json", ".jsonl"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_bad_jobs_corpus(path: Path) -> None:
    """Every file of the corpus is either rejected whole with a JobFileError or
    yields at least one BadRequest; nothing else escapes."""
    data = path.read_bytes()
    if path.suffix == ".json":
        with pytest.raises(JobFileError):
            read_single(data, path.stem, VIEW)
        return
    try:
        summary = validate_jsonl(io.BytesIO(data), path.stem, VIEW, MAX_LINE)
    except JobFileError:
        return
    assert summary.bad >= 1


def test_corpus_is_there() -> None:
    assert len(corpus_files()) >= 10


# ------------------------------------------------------------------- fuzzing


def _check_items(items: list[Request | BadRequest]) -> None:
    for item in items:
        assert isinstance(item, Request | BadRequest)
        assert isinstance(item.custom_id, str) and item.custom_id
        item.custom_id.encode("utf-8")
        if isinstance(item, Request):
            assert item.url.startswith("/")
            assert item.upstream in VIEW.base_urls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_iter_jsonl_bytes(data: bytes) -> None:
    try:
        items = list(iter_jsonl(io.BytesIO(data), "f", VIEW, 64))
    except JobFileError:
        return
    _check_items(items)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_read_single_bytes(data: bytes) -> None:
    try:
        item = read_single(data, "f", VIEW)
    except JobFileError:
        return
    _check_items([item])


# Lone surrogates (category Cs) included: JSON can spell them, UTF-8 cannot.
any_text = st.text(
    st.characters(categories=["Cs", "Ll", "Lu", "Nd", "Po", "Zs", "Cc"]), max_size=12
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=8,
)
# Mostly valid requests (url always there), so that the deeper checks are reached.
request_fields = st.fixed_dictionaries(
    {},
    optional={
        "custom_id": any_text | json_scalars,
        "method": st.sampled_from(["GET", "post", "BREW", ""]) | json_scalars,
        "body": json_values,
        "headers": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
        | json_values,
        "upstream": st.sampled_from(["default", "api", "nope"]) | json_scalars,
    },
)
request_like = st.builds(
    lambda url, rest: {"url": url, **rest},
    st.sampled_from(
        [
            "/v1/x",
            "http://127.0.0.1:8000/a",
            "http://[::1",
            "/%2e%2e",
            "https://api.example.com/v1/x",
            "x",
        ]
    )
    | any_text,
    request_fields,
)
odd_request = st.fixed_dictionaries(
    {}, optional={"custom_id": any_text, "url": any_text, "extra": json_values}
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(request_like | odd_request | json_values, max_size=4))
def test_fuzz_iter_jsonl_structured(objs: list[Any]) -> None:
    data = b"".join(
        json.dumps(o, allow_nan=True).encode("utf-8", "surrogatepass") + b"\n" for o in objs
    )
    try:
        items = list(iter_jsonl(io.BytesIO(data), "f", VIEW, 4096))
    except JobFileError:
        return
    _check_items(items)
    assert len(items) == len(objs)


url_pieces = st.sampled_from(
    [
        "/",
        "//",
        "[",
        "]",
        ":",
        "http:",
        "https:",
        "HTTP:",
        "%2e",
        "%2E",
        ".",
        "..",
        "@",
        "?",
        "#",
        "\\",
        "%5c",
        "api.example.com",
        "127.0.0.1",
        ":8000",
        "v1",
        "v10",
        "%",
        "%00",
        "\x00",
        "\t",
        "\n",
        " ",
        "\ud800",
        "é",
        "x",
    ]
)


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, httpx.Client]]:
    out = {name: httpx.Client(base_url=base) for name, base in VIEW.base_urls.items()}
    yield out
    for client in out.values():
        client.close()


@settings(max_examples=300, deadline=None)
@given(
    url=st.lists(url_pieces, max_size=10).map("".join), upstream=st.sampled_from(["default", "api"])
)
def test_fuzz_urls(clients: dict[str, httpx.Client], url: str, upstream: str) -> None:
    """Whatever the url, what httpx sends stays under the upstream's base_url."""
    data = json.dumps({"url": url, "upstream": upstream}).encode()
    item = parse(data + b"\n")[0]
    if isinstance(item, BadRequest):
        return
    path = urlsplit(item.url).path
    assert item.url.startswith("/") and not item.url.startswith("//"), (url, item.url)
    assert all(seg not in (".", "..") for seg in unquote(path).split("/"))
    assert "\\" not in unquote(path)
    sent = clients[upstream].build_request("POST", item.url).url
    base = httpx.URL(VIEW.base_urls[upstream])
    assert (sent.scheme, sent.host, sent.port) == (base.scheme, base.host, base.port)
    assert sent.raw_path.startswith(base.raw_path.rstrip(b"/") + b"/"), (url, sent)


def test_scheme_relative_and_empty_paths() -> None:
    for url in (
        "//",
        "////x",
        "/\t/",
        "//?a=1",
        "http://127.0.0.1:8000//x",
        "/?\x00",
        "/v1/\tx",
        "/v1/x\r\n",
        "/v1?\x7f",
        "\x00/v1",
    ):
        assert bad(req(url=url)).code in ("invalid_url", "url_not_allowed"), url


header_text = st.text(st.characters(codec="latin-1") | st.sampled_from(" \t:\r\n"), max_size=8)


@settings(max_examples=300, deadline=None)
@given(name=header_text, value=header_text)
def test_fuzz_header_check_agrees_with_h11(name: str, value: str) -> None:
    """What header_problem lets through, httpx and h11 accept when sending."""
    from h11._headers import normalize_and_validate

    if header_problem(name, value) is not None:
        return
    headers = httpx.Headers({name: value})  # encodes as httpx does
    normalize_and_validate(headers.raw, _parsed=False)


def test_nesting_at_the_limit_and_just_past_it() -> None:
    """Lines with fewer brackets than the depth limit skip the depth walk: the
    last depth that passes, and the first that does not, are told apart exactly."""
    from pacer.spool.jobs import _MAX_DEPTH

    def nested(lists: int) -> bytes:
        # Depth: the request object 1, each list 1, the number inside 1.
        inner = "[" * lists + "1" + "]" * lists
        return f'{{"url": "/x", "body": {inner}}}'.encode()

    assert isinstance(one(nested(_MAX_DEPTH - 2)), Request)  # 63 brackets: no walk
    assert bad(nested(_MAX_DEPTH - 1)).code == "invalid_json"  # depth 65: refused


def test_a_cached_url_check_still_refuses_every_time() -> None:
    base = "http://127.0.0.1:8000"
    for _ in range(3):
        assert relative_url("/v1/chat/completions", base) == "/v1/chat/completions"
        with pytest.raises(Exception, match="segments"):
            relative_url("/v1/../admin", base)
    long_path = "/v1/" + "a" * 5000
    assert relative_url(long_path, base) == long_path  # not cached, same answer


def test_duplicate_custom_id_names_its_line_past_blank_and_bad_lines() -> None:
    # The validation pass numbers lines as the sending pass does (blank lines count).
    data = lines(req(custom_id="a"), b"", b"{not json", req(custom_id="a"))
    with pytest.raises(JobFileError) as info:
        validate_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE)
    assert "line 4" in info.value.message


def test_validation_and_sending_agree_line_by_line() -> None:
    # Validation checks lines without building requests; it must judge as parsing does.
    data = lines(req(custom_id="a"), req(custom_id="b", headers=None),
                 req(custom_id="c", headers={}), b'{"custom_id": "d", "url": "/x"} []',
                 b'\xef\xbb\xbf{"custom_id": "e", "url": "/x"}',
                 b'{"custom_id": "f", "url": "/x", "body": {"k": [1, {"z": 1, "z": 2}]}}',
                 req(custom_id="g\u00e9"), b'  {"custom_id": "h", "url": "/x"}\t')
    summary = validate_jsonl(io.BytesIO(data), "j", VIEW, MAX_LINE)
    items = parse(data, "j")
    assert summary.requests == sum(isinstance(i, Request) for i in items) == 4
    assert summary.bad == sum(isinstance(i, BadRequest) for i in items) == 4
    assert summary.custom_ids == {i.custom_id for i in items}
    codes = {i.custom_id: i.code for i in items if isinstance(i, BadRequest)}
    # Lines 4 and 5 are not JSON at all: their custom_id cannot be read off them.
    assert codes == {"b": "invalid_request", "j:4": "invalid_json", "j:5": "invalid_json",
                     "f": "invalid_json"}
