"""One upstream API: its HTTP client, limit, limiter, breaker, retries and counters.

``Upstream.send(request)`` runs one request to its final answer: it waits for the
breaker, holds a slot of the limiter for each attempt, classifies the attempt
once (:func:`pacer.outcome.classify`), feeds the limit and the breaker, and retries
with full-jitter backoff while the outcome is retryable and attempts remain.
HTTP exceptions are translated here, at the edge, into that classification.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import structlog
import trio

from pacer.aimd import AimdLimit, AimdSettings
from pacer.breaker import Breaker, BreakerSettings, BreakerTransition
from pacer.config import UpstreamConfig
from pacer.jobs import Request
from pacer.limit import FixedLimit, Limit, LimitChange, Outcome
from pacer.limiter import Limiter
from pacer.outcome import Verdict, classify
from pacer.ratelimit_headers import parse_rate_limit_headers
from pacer.retry import RetryBudget, RetrySettings, backoff_delay
from pacer.stats import UpstreamStats

log = structlog.get_logger("pacer.upstream")

MAX_RESPONSE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """The final outcome of one request, as its result line reports it."""

    attempts: int
    status: int | None = None
    body: Any = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


def make_limit(cfg: UpstreamConfig) -> Limit:
    if not cfg.adaptive:
        return FixedLimit(cfg.initial_limit)
    return AimdLimit(AimdSettings(initial_limit=cfg.initial_limit, min_limit=cfg.min_limit,
                                  max_limit=cfg.max_limit))


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


class Upstream:
    def __init__(self, cfg: UpstreamConfig, client: httpx.AsyncClient, *,
                 limit: Limit | None = None, rng: random.Random | None = None,
                 clock: Callable[[], float] = trio.current_time,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.client = client
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.limit = limit or make_limit(cfg)
        self.limiter = Limiter(self.limit, clock)
        self.retry = _retry_settings(cfg)
        self.budget = RetryBudget(self.retry)
        self.breaker = Breaker(BreakerSettings(), rng=self.rng)
        self.stats = UpstreamStats(clock)
        self.limit.subscribe(self._on_limit_change)
        self.breaker.subscribe(self._on_breaker)
        # Called after every attempt with (upstream, seconds, outcome): metrics.
        self.on_attempt: Callable[[str, float, str], None] | None = None

    # -- hooks: the algorithms stay free of I/O, logging hangs off them ---------

    def _on_limit_change(self, change: LimitChange) -> None:
        log.info("limit.changed", upstream=self.name, old_limit=change.old_limit,
                 new_limit=change.new_limit, reason=change.reason, inflight=change.inflight,
                 rtt=None if change.rtt is None else round(change.rtt, 4))

    def _on_breaker(self, t: BreakerTransition) -> None:
        self.stats.breaker_transitions += 1
        if t.to_state == "open":
            self.stats.breaker_openings += 1
        log.warning("breaker.transition", upstream=self.name, **{"from": str(t.from_state)},
                    to=str(t.to_state), reason=t.reason, cooldown_s=round(t.cooldown or 0, 3))

    # -- sending ------------------------------------------------------------------

    async def _wait_for_breaker(self, stop: trio.Event) -> bool:
        """Wait until the breaker admits an attempt; False if ``stop`` came first."""
        while not stop.is_set():
            if self.breaker.allow(self.clock()):
                return True
            with trio.move_on_after(max(0.01, self.breaker.retry_at(self.clock()) - self.clock())):
                await stop.wait()
        return False

    def reconfigure(self, cfg: UpstreamConfig, client: httpx.AsyncClient | None = None) -> None:
        """Take new settings on reload; the learned limit stays (clamped to the new
        bounds). A new ``client`` serves new attempts; attempts in flight finish on
        the old one, which is then left to close by itself."""
        old, self.cfg = self.cfg, cfg
        if client is not None:
            self.client = client
        self.retry = _retry_settings(cfg)
        self.client.timeout = httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout)
        bounds = ("adaptive", "min_limit", "max_limit", "initial_limit")
        if any(getattr(old, k) != getattr(cfg, k) for k in bounds):
            # A new algorithm with the new bounds, starting from what was learned.
            learned = min(max(self.limit.limit, cfg.min_limit), cfg.max_limit)
            self.limit = make_limit(replace(cfg, initial_limit=learned))
            self.limit.subscribe(self._on_limit_change)
            self.limiter.retarget(self.limit)

    async def send(self, req: Request, stop: trio.Event | None = None) -> Answer | None:
        """Run ``req`` to its final answer; None if ``stop`` is set before that
        (the request is then left unanswered, for the next run)."""
        stop = stop if stop is not None else trio.Event()
        attempts = 0
        while True:
            if not await self._wait_for_breaker(stop):
                return None
            attempts += 1
            try:
                result = await self._attempt(req, stop)
            except BaseException:
                self.breaker.on_ignore(self.clock())  # give a half-open probe slot back
                raise
            if result is None:  # stopping: it never went out
                self.breaker.on_ignore(self.clock())
                return None
            status, headers, body, verdict, message = result
            if verdict.ok:
                self.breaker.on_success(self.clock())
                self.budget.on_success()
            elif verdict.failure:
                self.breaker.on_failure(self.clock(), verdict.reason)
                self.budget.on_failure()
            else:
                self.breaker.on_ignore(self.clock())
            if verdict.stop_upstream:
                self.breaker.trip(self.clock(), "auth")
            self.stats.record_attempt(rate_limited=verdict.reason == "rate_limited")
            retry_after = None
            if headers is not None:
                retry_after = parse_rate_limit_headers(headers, self.wall_clock()).retry_after
            if verdict.retry and attempts < self.retry.max_attempts:
                delay = backoff_delay(attempts, self.retry, self.rng, retry_after)
                self.stats.retries += 1
                log.info("request.retry", custom_id=req.custom_id, attempt=attempts,
                         delay_s=round(delay, 3), reason=verdict.reason, status=status)
                with trio.move_on_after(delay):
                    await stop.wait()
                continue
            if verdict.ok:
                self.stats.record_done(ok=True)
                return Answer(attempts, status, body, _request_id(headers))
            self.stats.record_done(ok=False)
            code = verdict.reason if status is None else f"http_{status}"
            return Answer(attempts, status, body, _request_id(headers),
                          error_code=code, error_message=message or verdict.reason)

    async def _attempt(self, req: Request, stop: trio.Event) -> tuple[
            int | None, httpx.Headers | None, Any, Verdict, str | None] | None:
        """One attempt under the limiter; exceptions become a classification here.
        None when ``stop`` was set while it waited for a slot (nothing was sent)."""
        async with self.limiter.acquire() as slot:
            if stop.is_set():
                return None
            status: int | None = None
            headers: httpx.Headers | None = None
            body: Any = None
            error: BaseException | None = None
            message: str | None = None
            # One deadline for the whole attempt: httpx's timeouts are per read, and
            # a body trickling in byte by byte would never trip them.
            with trio.move_on_after(self.cfg.timeout) as scope:
                try:
                    request = self.client.build_request(
                        req.method, req.url, headers=req.headers,
                        json=req.body if req.body is not None else None)
                    response = await self.client.send(request, stream=True)
                    try:
                        data = bytearray()
                        async for chunk in response.aiter_bytes():
                            data += chunk
                            if len(data) > MAX_RESPONSE_BYTES:
                                raise _TooLarge
                        status, headers = response.status_code, response.headers
                        body = _decode_body(bytes(data), headers.get("content-type", ""))
                    finally:
                        await response.aclose()
                except _TooLarge:
                    status, headers = response.status_code, response.headers
                    error_verdict = Verdict(Outcome.IGNORE, "response_too_large",
                                            retry=False, failure=False)
                    slot.record(error_verdict.outcome, error_verdict.reason)
                    return (None, headers, None, error_verdict,
                            f"response body larger than {MAX_RESPONSE_BYTES} bytes")
                except httpx.HTTPError as exc:
                    error = exc
                    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                except (ValueError, UnicodeError) as exc:
                    # The request could not even be built (validation should have
                    # caught it): final for this request, says nothing about load.
                    verdict = Verdict(Outcome.IGNORE, "invalid_request", retry=False,
                                      failure=False)
                    slot.record(verdict.outcome, verdict.reason)
                    return None, None, None, verdict, f"cannot send: {type(exc).__name__}: {exc}"
            if scope.cancelled_caught:
                error = httpx.ReadTimeout("attempt exceeded the timeout")
                message = f"no complete answer within {self.cfg.timeout} s"
                status = None
            verdict = classify(status, error)
            slot.record(verdict.outcome, verdict.reason)
            if self.on_attempt is not None:
                self.on_attempt(self.name, self.clock() - slot.start, verdict.reason)
            return status, headers, body, verdict, message


def _retry_settings(cfg: UpstreamConfig) -> RetrySettings:
    base = max(cfg.retry_base_delay, 1e-3)
    return RetrySettings(max_attempts=cfg.max_attempts, base_delay=base,
                         max_delay=max(cfg.retry_max_delay, base))


class _TooLarge(Exception):
    pass


def _request_id(headers: httpx.Headers | None) -> str | None:
    if headers is None:
        return None
    value = headers.get("x-request-id") or headers.get("request-id")
    return str(value) if value else None
