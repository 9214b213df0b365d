"""The mock's behaviour (:class:`MockUpstream`), independent of any transport."""

from __future__ import annotations

import bisect
import contextlib
import hmac
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

from pacer.mockapi.answers import (
    MockResponse,
    MockStats,
    _faulty,
    _json_response,
    _server_error,
    _unauthorized,
)
from pacer.mockapi.headers import (
    TOKEN_STYLES,
    Quota,
    render_limit_headers,
    render_retry_headers,
)
from pacer.mockapi.settings import (
    _EPS,
    OUTAGE_DELAY_S,
    STATS_PATH,
    STORM_LENGTH_S,
    STORM_PERIOD_S,
    TPM_WINDOW_S,
    Fault,
    MockSettings,
    Outage,
)
from pacer.mockapi.tokens import token_cost

_REPLY = "This is a mock reply from pacer's mock API."
_REPLY_TOKENS = len(_REPLY.split())
_STORM_STATUSES = (500, 502, 503)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    for key, item in headers.items():
        if key.lower() == name:
            return item
    return None


class MockUpstream:
    """The mock's behaviour, independent of the transport.

    ``clock`` returns seconds (``trio.current_time`` by default, so Trio's
    virtual clock drives it in tests). The schedule and the outage windows count
    from :meth:`start`, which happens at construction when the clock can be read
    then (inside ``trio.run`` with the default clock), else at the first
    request, or when :func:`serve` starts listening. ``wall_clock`` (epoch
    seconds) only dates the absolute resets of the ``anthropic`` and ``github``
    header styles.
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        clock: Callable[[], float] = trio.current_time,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings if settings is not None else MockSettings()
        self.stats = MockStats()
        self._clock = clock
        self._wall_clock = wall_clock
        seed = self.settings.seed
        self._rng = random.Random(seed)
        # A generator of its own, so that faults leave seeded jitter and errors alone.
        self._fault_rng = random.Random(None if seed is None else f"faults:{seed}")
        self._schedule_times = [at for at, _ in self.settings.schedule]
        self._outage_starts = [outage.start for outage in self.settings.outages]
        self._t0: float | None = None
        self._ids = itertools.count(1)
        rate, window = self.settings.rate, self.settings.rate_window
        if not rate:
            self._bucket_size = 0.0
        elif self.settings.rate_burst is not None:
            self._bucket_size = self.settings.rate_burst
        else:
            self._bucket_size = max(1.0, rate * (window or 1.0))
        self._window_index = 0  # the fixed window in force (rate_window)
        self._tokens = self._bucket_size
        self._bucket_at = 0.0
        self._tpm_size = float(self.settings.tpm or 0)
        self._tpm_tokens = self._tpm_size
        self._tpm_at = 0.0
        self._storm: float | None = None
        self._draws: list[Fault] = []
        for fault in self.settings.faults:
            if fault.kind == "storm":
                self._storm = fault.probability
            elif fault.probability > 0:
                self._draws.append(fault)
        with contextlib.suppress(RuntimeError):
            self.start()
        self.stats.current_cap = self.cap_at(0.0)

    # ---- time and limits

    def start(self) -> None:
        """Mark the start of the schedule, the outages and the rate windows (once)."""
        if self._t0 is None:
            self._t0 = self._clock()
            self._bucket_at = self._t0
            self._tpm_at = self._t0

    def elapsed(self) -> float:
        """Seconds since :meth:`start` (starting now if not started yet)."""
        self.start()
        assert self._t0 is not None
        return self._clock() - self._t0

    def cap_at(self, elapsed: float) -> int | None:
        """The concurrency cap ``elapsed`` seconds after start (``None``: unlimited)."""
        index = bisect.bisect_right(self._schedule_times, elapsed + _EPS)
        if index == 0:
            return self.settings.concurrency
        return self.settings.schedule[index - 1][1]

    def outage_at(self, elapsed: float) -> Outage | None:
        """The outage window ``elapsed`` seconds after start, if any."""
        index = bisect.bisect_right(self._outage_starts, elapsed + _EPS)
        if index == 0:
            return None
        outage = self.settings.outages[index - 1]
        return outage if elapsed + _EPS < outage.end else None

    def in_storm(self, elapsed: float) -> bool:
        """Whether a ``storm`` fault is configured and storming ``elapsed`` s after start."""
        if self._storm is None:
            return False
        phase = math.fmod(elapsed + _EPS, STORM_PERIOD_S)
        return phase >= STORM_PERIOD_S - STORM_LENGTH_S

    def refuse_windows(self) -> list[tuple[float, float]]:
        """The ``refuse`` outage windows as ``(start, end)``, sorted, touching ones merged."""
        windows: list[tuple[float, float]] = []
        for outage in self.settings.outages:
            if outage.kind != "refuse":
                continue
            if windows and outage.start <= windows[-1][1] + _EPS:
                windows[-1] = (windows[-1][0], outage.end)
            else:
                windows.append((outage.start, outage.end))
        return windows

    def _refill(self) -> None:
        rate = self.settings.rate
        if rate is None:
            return
        now = self._clock()
        window = self.settings.rate_window
        if window is not None:
            index = math.floor((now - self._bucket_at) / window + _EPS)
            if index > self._window_index:  # a new window: the whole quota is back
                self._window_index = index
                self._tokens = self._bucket_size
            return
        self._tokens = min(self._bucket_size, self._tokens + (now - self._bucket_at) * rate)
        self._bucket_at = now

    def _refill_tpm(self) -> None:
        tpm = self.settings.tpm
        if tpm is None:
            return
        now = self._clock()
        refill = (now - self._tpm_at) * tpm / TPM_WINDOW_S
        self._tpm_tokens = min(self._tpm_size, self._tpm_tokens + refill)
        self._tpm_at = now

    def _requests_quota(self, cap: int | None) -> Quota | None:
        rate = self.settings.rate
        if rate is not None:
            self._refill()
            window = self.settings.rate_window
            if window is not None:
                end = self._bucket_at + (self._window_index + 1) * window
                reset, length = max(0.0, end - self._clock()), window
            else:
                reset = (self._bucket_size - self._tokens) / rate
                length = self._bucket_size / rate
            return Quota(
                limit=math.floor(self._bucket_size + _EPS),
                remaining=max(0, math.floor(self._tokens + _EPS)),
                reset=reset,
                window=length,
            )
        # A concurrency cap is not announced: real APIs publish rate quotas
        # (requests or tokens per window), never how many may be in flight.
        return None

    def _tokens_quota(self) -> Quota | None:
        tpm = self.settings.tpm
        if tpm is None:
            return None
        self._refill_tpm()
        return Quota(
            limit=tpm,
            remaining=max(0, math.floor(self._tpm_tokens + _EPS)),
            reset=(self._tpm_size - self._tpm_tokens) * TPM_WINDOW_S / tpm,
            window=TPM_WINDOW_S,
        )

    def _limit_headers(self, cap: int | None) -> list[tuple[str, str]]:
        style = self.settings.header_style
        if style == "none":
            return []
        requests = self._requests_quota(cap)
        tokens = self._tokens_quota() if style in TOKEN_STYLES else None
        return render_limit_headers(style, requests, tokens, self._wall_clock)

    def _retry_headers(self, wait: float) -> list[tuple[str, str]]:
        return render_retry_headers(self.settings.header_style, wait)

    # ---- requests

    async def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> MockResponse:
        """Answer one request (``headers`` are read only for the API key)."""
        route = path.split("?", 1)[0]
        if route == STATS_PATH and method.upper() == "GET":
            self.stats.current_cap = self.cap_at(self.elapsed())
            return _json_response(200, [], self.stats.snapshot())

        stats = self.stats
        stats.requests += 1
        request_id = f"req_mock_{next(self._ids)}"
        elapsed = self.elapsed()
        cap = self.cap_at(elapsed)
        stats.current_cap = cap

        outage = self.outage_at(elapsed)
        if outage is not None:
            stats.outage += 1
            _bump(stats.outage_by_kind, outage.kind)
            if outage.kind == "reset":
                return MockResponse(0, [], b"", fault="close")
            if outage.kind == "refuse":
                return MockResponse(0, [], b"", fault="refuse")
            await trio.sleep(OUTAGE_DELAY_S)
            return _server_error(int(outage.kind), [("x-request-id", request_id)])
        if not self._authorized(headers):
            stats.unauthorized += 1
            return _unauthorized(request_id)
        if self._storm_hits(elapsed):
            self._count_fault("storm")
            await trio.sleep(OUTAGE_DELAY_S)
            status = self._fault_rng.choice(_STORM_STATUSES)
            return _server_error(status, [("x-request-id", request_id)])
        fault = self._draw_fault()
        if fault in ("close", "hang"):
            self._count_fault(fault)
            return MockResponse(0, [], b"", fault=fault)

        in_service = stats.in_service + 1
        reason: str | None = None
        wait = self.settings.retry_after
        cost = 0
        if cap is not None and in_service > cap:
            reason = "concurrency"
            stats.rate_limited_concurrency += 1
        else:
            self._refill()
            if self.settings.rate is not None and self._tokens < 1.0 - _EPS:
                reason = "rate"
                stats.rate_limited_rate += 1
            elif (tpm := self.settings.tpm) is not None:
                cost = token_cost(body)
                self._refill_tpm()
                if cost > tpm:
                    reason = "too_large"
                    stats.tokens_too_large += 1
                elif self._tpm_tokens + _EPS < cost:
                    reason = "tokens"
                    stats.tokens_limited += 1
                    wait = (cost - self._tpm_tokens) * TPM_WINDOW_S / tpm
        if reason is not None:
            stats.rate_limited += 1
            action = {"concurrency": self.settings.cap_action,
                      "rate": self.settings.rate_action}.get(reason, "429")
            if action == "drop":
                return MockResponse(0, [], b"", fault="hang")  # never answered
            if action == "defer":
                await trio.sleep(self._service_time(1))  # refused after the work
            return self._too_many(cap, request_id, reason, wait, cost)
        if self.settings.rate is not None:
            self._tokens = max(0.0, self._tokens - 1.0)
        if self.settings.tpm is not None:
            self._tpm_tokens = max(0.0, self._tpm_tokens - cost)
            stats.tokens_used += cost

        stats.in_service = in_service
        stats.max_in_service = max(stats.max_in_service, in_service)
        try:
            await trio.sleep(self._service_time(in_service))
            extra = [("x-request-id", request_id), *self._limit_headers(cap)]
            if self.settings.error_rate > 0 and self._rng.random() < self.settings.error_rate:
                stats.errors += 1
                return _server_error(500, extra)
            completion = self._completion(body, request_id)
            if fault is not None:
                self._count_fault(fault)
                return _faulty(fault, extra, completion)
            stats.ok += 1
            return _json_response(200, extra, completion)
        finally:
            stats.in_service -= 1

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        key = self.settings.auth_key
        if key is None:
            return True
        expected = key.encode()
        value = _header(headers, "authorization")
        if value is not None:
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
                return True
        if self.settings.header_style == "anthropic":
            value = _header(headers, "x-api-key")
            if value is not None and hmac.compare_digest(value.strip().encode(), expected):
                return True
        return False

    def _storm_hits(self, elapsed: float) -> bool:
        if self._storm is None or not self.in_storm(elapsed):
            return False
        return self._storm >= 1.0 or self._fault_rng.random() < self._storm

    def _draw_fault(self) -> str | None:
        if not self._draws:
            return None
        draw = self._fault_rng.random()
        for fault in self._draws:
            if draw < fault.probability:
                return fault.kind
            draw -= fault.probability
        return None

    def _count_fault(self, kind: str) -> None:
        self.stats.faults += 1
        _bump(self.stats.faults_by_kind, kind)

    def _service_time(self, in_service: int) -> float:
        settings = self.settings
        seconds = settings.latency
        if settings.jitter > 0:
            seconds += self._rng.uniform(-settings.jitter, settings.jitter)
        if settings.lognormal is not None:
            seconds *= self._rng.lognormvariate(0.0, settings.lognormal)
        seconds = max(0.0, seconds)
        if settings.knee is not None and in_service > settings.knee:
            past = in_service - settings.knee
            if settings.knee_exp is not None:
                seconds *= settings.knee_exp ** past
            else:
                seconds *= 1.0 + settings.knee_slope * past
        if settings.slow_link:
            seconds *= max(1, in_service)
        return seconds

    def _too_many(
        self, cap: int | None, request_id: str, reason: str, wait: float, cost: int
    ) -> MockResponse:
        retry = [] if reason == "too_large" else self._retry_headers(wait)
        headers = [*retry, ("x-request-id", request_id), *self._limit_headers(cap)]
        code = "rate_limit_exceeded"
        tpm = self.settings.tpm
        if reason == "rate":
            message = f"Rate limit reached for requests: limit {self.settings.rate:g} per second."
        elif reason == "tokens":
            used = max(0, (tpm or 0) - math.floor(self._tpm_tokens + _EPS))
            message = (
                f"Rate limit reached for tokens per min (TPM): Limit {tpm}, Used {used}, "
                f"Requested {cost}. Please try again in {wait:.3f}s."
            )
        elif reason == "too_large":
            code = "request_too_large"
            message = (
                f"Request too large for tokens per min (TPM): Limit {tpm}, Requested {cost}. "
                "The input or output tokens must be reduced."
            )
        else:
            message = f"Rate limit reached: too many requests in service (limit {cap})."
        message += (
            " (mock)" if reason in ("tokens", "too_large") else " Please try again later (mock)."
        )
        error = {
            "message": message,
            "type": "rate_limit_error",
            "param": None,
            "code": code,
        }
        return _json_response(429, headers, {"error": error})

    def _completion(self, body: bytes, request_id: str) -> dict[str, Any]:
        model = "mock-model"
        try:
            request = json.loads(body) if body else None
        except (ValueError, RecursionError):
            request = None
        if isinstance(request, dict) and isinstance(request.get("model"), str):
            model = request["model"]
        prompt_tokens = max(1, len(body) // 4)
        return {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _REPLY},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": _REPLY_TOKENS,
                "total_tokens": prompt_tokens + _REPLY_TOKENS,
            },
        }


def _bump(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1
