from __future__ import annotations

import math

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacer.control.ratelimit_headers import (
    Quota,
    RateLimitInfo,
    parse_go_duration,
    parse_rate_limit_headers,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def parse(headers: dict[str, str]) -> RateLimitInfo:
    return parse_rate_limit_headers(headers, NOW)


# --- Go durations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),  # micro sign
        ("250μs", 0.00025),  # Greek mu
        ("100ns", 1e-7),
        ("1.5h", 5400.0),
        ("2m59.56s", 179.56),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("+3s", 3.0),
        ("-1.5s", -1.5),
        (" 7s ", 7.0),
    ],
)
def test_go_duration(text: str, seconds: float) -> None:
    result = parse_go_duration(text)
    assert result is not None
    assert math.isclose(result, seconds, rel_tol=1e-12, abs_tol=1e-15)


@pytest.mark.parametrize(
    "text", ["", "1", "s", "1m5", "abc", "1d", "--1s", "1.2.3s", "1 s", "ms", ".s", "1sm", "١s"]
)
def test_go_duration_rejects(text: str) -> None:
    assert parse_go_duration(text) is None


@given(
    st.integers(0, 1000),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
)
def test_go_duration_composes(h: int, m: int, s: int, ms: int) -> None:
    text = f"{h}h{m}m{s}s{ms}ms"
    result = parse_go_duration(text)
    assert result is not None
    assert math.isclose(result, h * 3600 + m * 60 + s + ms / 1000, rel_tol=1e-12)


# --- Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "Tue, 14 Nov 2023 22:14:20 GMT"}, 60.0),
        ({"Retry-After": "Tue, 14 Nov 2023 22:00:00 GMT"}, 0.0),  # in the past
        ({"Retry-After": "14 Nov 2023 22:13:50 -0000"}, 30.0),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # ms first, as the SDKs do
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),  # bad ms falls back
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "Tue, 14 Nov 99999 22:14:20 GMT"}, None),
        ({"Retry-After": "1" * 400}, None),  # overflows a float
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse(headers).retry_after == expected


# --- OpenAI --------------------------------------------------------------------------


def test_openai() -> None:
    headers = httpx.Headers(
        {
            "X-RateLimit-Limit-Requests": "60",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    info = parse_rate_limit_headers(headers, NOW)
    assert info == RateLimitInfo(
        retry_after=None,
        requests=Quota(limit=60, remaining=59, reset=1.0),
        tokens=Quota(limit=150000, remaining=149984, reset=360.0),
    )
    assert not info.is_empty


def test_openai_partial_and_garbage_fields() -> None:
    info = parse(
        {
            "x-ratelimit-limit-requests": "lots",
            "x-ratelimit-remaining-requests": "5",
            "x-ratelimit-reset-requests": "soon",
            "x-ratelimit-remaining-tokens": "100.0",
            "x-ratelimit-reset-tokens": "12ms",
        }
    )
    assert info.requests == Quota(limit=None, remaining=5, reset=None)
    assert info.tokens == Quota(limit=None, remaining=100, reset=0.012)


def test_openai_compatible_bare_seconds_reset() -> None:
    info = parse({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20"})
    assert info.requests == Quota(limit=None, remaining=0, reset=20.0)
    assert info.wait_hint == 20.0


# --- Anthropic -----------------------------------------------------------------------


def test_anthropic_tightest_token_quota() -> None:
    info = parse(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:21Z",
            "anthropic-ratelimit-input-tokens-limit": "80000",
            "anthropic-ratelimit-input-tokens-remaining": "8000",
            "anthropic-ratelimit-input-tokens-reset": "2023-11-14T23:14:20+01:00",
            "anthropic-ratelimit-output-tokens-limit": "16000",
            "anthropic-ratelimit-output-tokens-remaining": "15000",
            "anthropic-ratelimit-output-tokens-reset": "2023-11-14T22:13:25.500Z",
            "retry-after": "7",
        }
    )
    assert info.retry_after == 7.0
    assert info.requests == Quota(limit=50, remaining=49, reset=1.0)
    assert info.tokens == Quota(limit=80000, remaining=8000, reset=60.0)


def test_anthropic_tokens_header() -> None:
    info = parse(
        {
            "anthropic-ratelimit-tokens-limit": "100000",
            "anthropic-ratelimit-tokens-remaining": "0",
            "anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:50Z",
            "anthropic-ratelimit-input-tokens-limit": "80000",
            "anthropic-ratelimit-input-tokens-remaining": "1000",
        }
    )
    assert info.tokens == Quota(limit=100000, remaining=0, reset=30.0)
    assert info.requests is None
    assert info.wait_hint == 30.0


def test_anthropic_reset_in_the_past_or_broken() -> None:
    info = parse(
        {
            "anthropic-ratelimit-requests-remaining": "3",
            "anthropic-ratelimit-requests-reset": "2023-11-14T22:00:00Z",
            "anthropic-ratelimit-tokens-remaining": "3",
            "anthropic-ratelimit-tokens-reset": "2023-13-45T99:00:00Z",
        }
    )
    assert info.requests == Quota(limit=None, remaining=3, reset=0.0)
    assert info.tokens == Quota(limit=None, remaining=3, reset=None)


# --- GitHub --------------------------------------------------------------------------


def test_github_epoch_reset() -> None:
    info = parse(
        {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Used": "1",
            "X-RateLimit-Reset": str(int(NOW) + 3600),
            "X-RateLimit-Resource": "core",
        }
    )
    assert info.requests == Quota(limit=5000, remaining=4999, reset=3600.0)
    assert info.tokens is None


def test_github_remaining_from_used_and_delta_reset() -> None:
    info = parse({"x-ratelimit-limit": "60", "x-ratelimit-used": "60", "x-ratelimit-reset": "42"})
    assert info.requests == Quota(limit=60, remaining=0, reset=42.0)


def test_github_reset_in_the_past() -> None:
    info = parse({"x-ratelimit-remaining": "10", "x-ratelimit-reset": str(int(NOW) - 5)})
    assert info.requests == Quota(limit=None, remaining=10, reset=0.0)


# --- IETF draft ----------------------------------------------------------------------


def test_ietf_structured_takes_tightest_policy() -> None:
    info = parse(
        {
            "RateLimit-Policy": '"burst";q=100;w=60, "daily";q=1000;w=86400',
            "RateLimit": '"burst";r=50;t=30, "daily";r=100;t=3600',
        }
    )
    # burst is at 50 %, daily at 10 %: daily binds.
    assert info.requests == Quota(limit=1000, remaining=100, reset=3600.0)


def test_ietf_structured_single() -> None:
    info = parse({"RateLimit-Policy": '"burst";q=100;w=60', "RateLimit": '"default";r=50;t=30'})
    # Names differ: the current state has no known limit, the policy no state.
    assert info.requests == Quota(limit=None, remaining=50, reset=30.0)
    info = parse({"RateLimit-Policy": '"default";q=100;w=60', "RateLimit": '"default";r=0;t=30'})
    assert info.requests == Quota(limit=100, remaining=0, reset=30.0)


def test_ietf_ignores_other_quota_units() -> None:
    info = parse(
        {
            "RateLimit-Policy": '"bytes";q=1000;qu="content-bytes";w=60, "req";q=10;w=1',
            "RateLimit": '"bytes";r=0;t=60, "req";r=9;t=1',
        }
    )
    assert info.requests == Quota(limit=10, remaining=9, reset=1.0)


def test_ietf_draft07_dictionary() -> None:
    info = parse({"RateLimit": "limit=100, remaining=50, reset=5", "RateLimit-Policy": "100;w=10"})
    assert info.requests == Quota(limit=100, remaining=50, reset=5.0)


def test_ietf_legacy_headers() -> None:
    info = parse(
        {
            "RateLimit-Limit": "100, 100;w=60, 1000;w=3600",
            "RateLimit-Remaining": "7",
            "RateLimit-Reset": "12",
        }
    )
    assert info.requests == Quota(limit=100, remaining=7, reset=12.0)


def test_tightest_across_families() -> None:
    info = parse(
        {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "90",
            "x-ratelimit-reset-requests": "1s",
            "ratelimit-limit": "10",
            "ratelimit-remaining": "2",
            "ratelimit-reset": "5",
        }
    )
    assert info.requests == Quota(limit=10, remaining=2, reset=5.0)


# --- empty ---------------------------------------------------------------------------


def test_empty() -> None:
    assert parse({}).is_empty
    assert parse({"content-type": "application/json", "x-request-id": "abc"}).is_empty
    assert parse({"x-ratelimit-remaining-requests": "many"}).is_empty
    assert parse({}).wait_hint is None
    assert not parse({"retry-after": "1"}).is_empty


# --- never raises --------------------------------------------------------------------

KNOWN_KEYS = [
    "retry-after",
    "retry-after-ms",
    *(
        f"x-ratelimit-{f}-{k}"
        for f in ("limit", "remaining", "reset")
        for k in ("requests", "tokens")
    ),
    *(
        f"anthropic-ratelimit-{k}-{f}"
        for k in ("requests", "tokens", "input-tokens", "output-tokens")
        for f in ("limit", "remaining", "reset")
    ),
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-used",
    "x-ratelimit-reset",
    "ratelimit-policy",
    "ratelimit",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
]

# Text that looks almost right is where parsers break.
nearly_valid = st.one_of(
    st.text(),
    st.text(alphabet='0123456789.:-+TZ hmsunµμ,;="qwrtlimaeGMT', max_size=40),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "Tue, 14 Nov 2023 22:14:20 GMT",
            "Mon, 1 Jan 1 00:00:00 +2359",
            "Fri, 31 Dec 9999 23:59:59 -2359",
            "0001-01-01T00:00:00+23:59",
            "9999-12-31T23:59:59-23:59",
            '"a";r=1;t=1, "a";q=0',
            '"x\\";r=1',
            "limit=, remaining=",
            "1" * 5000,
        ]
    ),
)


def check(info: RateLimitInfo) -> None:
    assert isinstance(info, RateLimitInfo)
    if info.retry_after is not None:
        assert info.retry_after >= 0 and math.isfinite(info.retry_after)
    for quota in (info.requests, info.tokens):
        if quota is None:
            continue
        if quota.reset is not None:
            assert quota.reset >= 0 and math.isfinite(quota.reset)
        assert quota.limit is None or quota.limit >= 0
        assert quota.remaining is None or quota.remaining >= 0
    assert info.wait_hint is None or info.wait_hint >= 0


@settings(max_examples=300)
@given(st.dictionaries(st.text(), st.text()))
def test_arbitrary_headers_never_raise(headers: dict[str, str]) -> None:
    check(parse(headers))


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS), nearly_valid))
def test_arbitrary_values_under_known_keys_never_raise(headers: dict[str, str]) -> None:
    check(parse(headers))


@pytest.mark.parametrize("key", KNOWN_KEYS)
@settings(max_examples=60)
@given(value=nearly_valid, now=st.floats(0, 4e9))
def test_each_known_key_never_raises(key: str, value: str, now: float) -> None:
    check(parse_rate_limit_headers({key: value}, now))


@given(st.text())
def test_go_duration_never_raises(text: str) -> None:
    result = parse_go_duration(text)
    assert result is None or math.isfinite(result)
