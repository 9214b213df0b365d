"""A fast loopback API for bench/speed_bench.py: aiohttp on uvloop, one process.

It answers every request with a small OpenAI-like chat completion after
``--latency`` seconds, optionally refusing with 429 anything above a hidden
concurrency ``--cap``. It must not be the bottleneck at 600 requests/s on a
2-core machine, so it does as little as possible per request (no body parsing,
one pre-encoded answer); its own CPU time is read by the bench from
``/proc/PID/stat`` and reported next to the clients' so that can be checked.

    python bench/speed_server.py --port 0 --latency 1.0 [--cap 600]

prints ``listening PORT`` once it accepts connections. ``GET /_stats`` answers
``{"requests": N, "rejected": N, "inflight": N, "first_at": T, "last_at": T}``
(wall-clock arrival times of the first and the latest request; ``?reset`` forgets
them first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time

from aiohttp import web

ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "model": "bench",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "ok"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
}).encode()
LIMITED = json.dumps({"error": {"message": "too many requests", "type": "rate_limit"}}).encode()


class BenchApi:
    def __init__(self, latency: float, cap: int | None) -> None:
        self.latency = latency
        self.cap = cap
        self.requests = 0
        self.rejected = 0
        self.inflight = 0
        self.first_at: float | None = None  # wall clock of the first request's arrival
        self.last_at: float | None = None

    async def answer(self, request: web.Request) -> web.Response:
        self.last_at = time.time()
        if self.first_at is None:
            self.first_at = self.last_at
        await request.read()  # drain the body; keep-alive needs it consumed
        self.requests += 1
        if self.cap is not None and self.inflight >= self.cap:
            self.rejected += 1
            return web.Response(body=LIMITED, status=429, content_type="application/json",
                                headers={"retry-after": "0"})
        self.inflight += 1
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
        finally:
            self.inflight -= 1
        return web.Response(body=ANSWER, content_type="application/json",
                            headers={"x-request-id": "req-bench"})

    async def stats(self, request: web.Request) -> web.Response:
        if "reset" in request.query:  # a new run: its own first arrival
            self.first_at = self.last_at = None
        return web.json_response({"requests": self.requests, "rejected": self.rejected,
                                  "inflight": self.inflight, "first_at": self.first_at,
                                  "last_at": self.last_at})


async def serve(port: int, latency: float, cap: int | None) -> None:
    api = BenchApi(latency, cap)
    app = web.Application()
    app.router.add_get("/_stats", api.stats)
    app.router.add_route("*", "/{tail:.*}", api.answer)
    runner = web.AppRunner(app, access_log=None, handle_signals=True)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    print(f"listening {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--cap", type=int, default=None)
    args = parser.parse_args()
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # still correct, only slower
        runner = asyncio.run
    runner(serve(args.port, args.latency, args.cap))


if __name__ == "__main__":
    main()
