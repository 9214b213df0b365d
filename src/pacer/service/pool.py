"""The upstreams of the config, each with its HTTP client.

Clients are built from the config (the API key read once, registered for
redaction) unless the embedder gave one (tests, benchmarks). A reload keeps what
unchanged upstreams learned, reconfigures changed ones in place (a new client only
when something the client depends on changed) and adds new ones; removed upstreams
keep serving the requests already queued for them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx
import trio

from pacer.config import Config, UpstreamConfig, read_api_key
from pacer.logs import register_secret
from pacer.service.http import build_client
from pacer.service.scheduler import UpstreamLoad
from pacer.service.upstream import Upstream

# What a client is built from: a change of any of these needs a new client.
CLIENT_KEYS = ("base_url", "api_key_env", "api_key_file", "auth_header", "auth_format",
               "headers", "http2", "max_limit")


class UpstreamPool:
    def __init__(self, given_clients: Mapping[str, httpx.AsyncClient] | None,
                 on_attempt: Callable[[str, float, str], None],
                 loop_lag: Callable[[], float] | None = None) -> None:
        self._given = dict(given_clients or {})
        self._on_attempt = on_attempt
        self._loop_lag = loop_lag
        self.upstreams: dict[str, Upstream] = {}

    def build(self, config: Config) -> None:
        for name, ucfg in config.upstreams.items():
            client = self._given.get(name)
            if client is None:
                client = self._client(ucfg, config)
            self.upstreams[name] = self._new(ucfg, client)

    def load(self, name: str) -> UpstreamLoad:
        """How busy one upstream is, for the scheduler."""
        up = self.upstreams[name]
        return UpstreamLoad(up.limit.limit, up.limiter.inflight, up.limiter.waiting)

    def apply(self, old: Config, new: Config) -> tuple[list[str], list[str], list[str]]:
        """Take ``new``'s upstreams; (changed, added, removed) names. Raises
        ConfigError (and changes nothing) if an API key cannot be read."""
        changed = [n for n in new.upstreams if n in self.upstreams
                   and new.upstreams[n] != old.upstreams[n]]
        added = [n for n in new.upstreams if n not in self.upstreams]
        removed = [n for n in self.upstreams if n not in new.upstreams]
        clients: dict[str, httpx.AsyncClient] = {}
        # Read every key first: a missing one refuses the whole reload.
        for name in added + changed:
            ucfg = new.upstreams[name]
            before = old.upstreams.get(name)
            if name in self._given:
                continue
            if before is None or any(getattr(before, k) != getattr(ucfg, k)
                                     for k in CLIENT_KEYS):
                clients[name] = self._client(ucfg, new)
        for name in changed:
            self.upstreams[name].reconfigure(new.upstreams[name], clients.get(name))
        for name in added:
            client = clients.get(name) or self._given[name]
            self.upstreams[name] = self._new(new.upstreams[name], client)
        return changed, added, removed

    async def aclose(self) -> None:
        for up in self.upstreams.values():
            with trio.CancelScope(shield=True):
                await up.client.aclose()

    def _client(self, ucfg: UpstreamConfig, config: Config) -> httpx.AsyncClient:
        key = read_api_key(ucfg, config.path.parent)
        register_secret(key)
        return build_client(ucfg, key)

    def _new(self, ucfg: UpstreamConfig, client: httpx.AsyncClient) -> Upstream:
        up = Upstream(ucfg, client, loop_lag=self._loop_lag)
        up.on_attempt = self._on_attempt
        return up
