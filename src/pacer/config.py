"""Load pacer's TOML config into small frozen, typed objects.

Every key is known: an unknown key is an error (a typo must not be silently
ignored), as is a value of the wrong type or out of range. Each message names the
file and the key. Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pacer.checks import header_problem, parse_listen


class ConfigError(Exception):
    """A config that cannot be used; ``str()`` lists every problem, one per line."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    dir: Path
    # A job file larger than this is rejected unread.
    max_job_bytes: int = 64 * 1024 * 1024
    # One line of a .jsonl job larger than this is an error line, not a crash.
    max_line_bytes: int = 8 * 1024 * 1024
    # Full rescan of incoming/ as a safety net under the inotify watcher.
    rescan_interval: float = 5.0
    # Jobs claimed at once, at most (each holds up to two open files and a short
    # queue of requests read ahead); they share each upstream fairly. Fewer run while
    # the upstreams' limits are low: 4 x their sum, at least 64.
    max_active_jobs: int = 256


@dataclass(frozen=True, slots=True)
class ResultsConfig:
    # Result lines are made durable in batches: whichever comes first. 0: group
    # commit, a batch starts as soon as the previous one ended and takes every line
    # that came meanwhile (with syncfs a batch costs one barrier, whatever its size).
    flush_interval: float = 0.0
    flush_max_lines: int = 512


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    # On SIGTERM, in-flight requests get this long to finish.
    drain_timeout: float = 30.0
    log_level: str = "info"
    # The state file `pacer status` reads, rewritten about once a second.
    state_interval: float = 1.0
    # Requests handed to the upstreams and not yet answered, across all jobs (each
    # job also holds a few dozen read ahead, waiting for their turn).
    max_pending_requests: int = 10000


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # "HOST:PORT" to serve Prometheus /metrics on; empty: off.
    listen: str = ""
    # A node_exporter textfile-collector file (*.prom) rewritten with the state; empty: off.
    textfile: str = ""


@dataclass(frozen=True, slots=True)
class FleetConfig:
    # fleet: "redis://HOST:PORT/DB" shared by every pacer of the fleet; empty: alone.
    redis: str = ""
    # This pacer's name in the fleet; empty: hostname and pid.
    node: str = ""
    # A slot (lease) of a node that died or was cut off is free after this long...
    lease_ttl: float = 5.0
    # ...or sooner: a node not heard from for this long is gone, its slots and its
    # share go to the others.
    node_ttl: float = 1.5
    # One Redis call per upstream per tick: leases, renewals and samples together.
    tick_interval: float = 0.05
    # A Redis call slower than this counts as Redis being down.
    redis_timeout: float = 0.5
    # At its plateau, the shared limit probes one above it this often (each refused
    # probe costs a 429 or two: at 40 requests/s, 10 s keeps them near 0.4 %).
    probe_interval: float = 10.0
    # Redis down: each node keeps its last share, decaying toward this floor...
    degraded_floor: int = 1
    # ...halving its distance to the floor every this many seconds.
    degraded_half_life: float = 20.0
    key_prefix: str = "pacer:fleet"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    base_url: str
    initial_limit: int = 1
    min_limit: int = 1
    max_limit: int = 256
    max_attempts: int = 5
    timeout: float = 60.0
    connect_timeout: float = 10.0
    api_key_env: str | None = None
    api_key_file: str | None = None
    auth_header: str = "Authorization"
    # How the key is written into auth_header; "{key}" is replaced.
    auth_format: str = "Bearer {key}"
    # Extra headers sent with every request (never the auth header).
    headers: Mapping[str, str] = field(default_factory=dict)
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    # A request still failing this long after its first attempt ends with its last
    # error (0: never). Shorter outages, during which the breaker holds requests
    # back, fail no job.
    give_up_after: float = 600.0
    # false: a fixed concurrency of initial_limit (no learning).
    adaptive: bool = True
    http2: bool = False
    # fleet: the name this upstream's limits are shared under; empty: its name.
    fleet_key: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    spool: SpoolConfig
    results: ResultsConfig
    daemon: DaemonConfig
    upstreams: Mapping[str, UpstreamConfig]
    metrics: MetricsConfig = MetricsConfig()
    fleet: FleetConfig = FleetConfig()

    def default_upstream(self) -> str | None:
        """The upstream a request without ``"upstream"`` goes to."""
        if len(self.upstreams) == 1:
            return next(iter(self.upstreams))
        return "default" if "default" in self.upstreams else None

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings, for ``check-config`` (no secrets: only their sources)."""

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return value

        out: dict[str, Any] = {"config": str(self.path)}
        for section in ("spool", "results", "daemon", "metrics", "fleet"):
            out[section] = {
                f.name: plain(getattr(getattr(self, section), f.name))
                for f in dataclasses.fields(getattr(self, section))
            }
        if "@" in self.fleet.redis:  # fleet: a password in the URL is never printed
            out["fleet"]["redis"] = "(not shown: it holds credentials)"
        out["upstreams"] = {
            name: {f.name: plain(getattr(up, f.name)) for f in dataclasses.fields(up)}
            for name, up in self.upstreams.items()
        }
        return out


LOG_LEVELS = ("debug", "info", "warning", "error")


class _Reader:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def section(self, raw: Mapping[str, Any], where: str, cls: type[Any],
                skip: tuple[str, ...] = ()) -> dict[str, Any]:
        """Type-check ``raw`` against the dataclass ``cls``; return kwargs for it."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            f = fields.get(key)
            if f is None:
                known = ", ".join(sorted(fields))
                self.problems.append(f"[{where}] unknown key {key!r} (known keys: {known})")
                continue
            checked = self._check(f"{where}.{key}", f.type, value)
            if checked is not None:
                out[key] = checked
        return out

    def _check(self, key: str, typ: Any, value: Any) -> Any:
        t = str(typ)
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                return self._bad(key, "an integer", value)
            return value
        if t == "float":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return self._bad(key, "a number", value)
            try:
                number = float(value)
            except OverflowError:  # an integer beyond any float
                number = math.inf
            if not math.isfinite(number):
                return self._bad(key, "a finite number", value)
            return number
        if t == "bool":
            return value if isinstance(value, bool) else self._bad(key, "true or false", value)
        if t in ("str", "str | None", "Path"):
            return value if isinstance(value, str) else self._bad(key, "a string", value)
        if t == "Mapping[str, str]":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                return self._bad(key, "a table of strings", value)
            return dict(value)
        raise AssertionError(f"unhandled config type {t} for {key}")  # pragma: no cover

    def _bad(self, key: str, what: str, value: Any) -> None:
        self.problems.append(f"{key}: expected {what}, got {value!r}")
        return None

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` listing every problem."""
    cfg_path = Path(path).resolve()
    try:
        with open(cfg_path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(cfg_path, ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(cfg_path, [f"cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(cfg_path, [f"not valid TOML: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(cfg_path, [f"not valid UTF-8 (at byte {exc.start})"]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(cfg_path, [f"not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError(cfg_path, ["not valid TOML: nested too deeply"]) from None
    return parse_config(raw, cfg_path)


def parse_config(raw: Mapping[str, Any], cfg_path: Path) -> Config:
    r = _Reader(cfg_path)
    base = cfg_path.parent
    known = {"spool", "results", "daemon", "upstreams", "metrics", "fleet"}
    for key in raw:
        if key not in known:
            r.problems.append(f"unknown section or key {key!r} (known: {', '.join(sorted(known))})")
    for key in known:
        if key in raw and not isinstance(raw[key], dict):
            r.problems.append(f"[{key}] must be a table")

    def get(key: str) -> dict[str, Any]:
        value = raw.get(key)
        return value if isinstance(value, dict) else {}

    spool_raw = get("spool")
    spool_kw = r.section(spool_raw, "spool", SpoolConfig)
    r.require("dir" in spool_raw, "[spool] dir is required")
    r.require(spool_kw.get("dir") != "", "spool.dir: must not be empty")
    spool_dir = Path(spool_kw.pop("dir", "spool"))
    spool = SpoolConfig(dir=Path(os.path.normpath(base / spool_dir)), **spool_kw)
    r.require(spool.max_job_bytes > 0, "spool.max_job_bytes: must be > 0")
    r.require(spool.max_line_bytes > 0, "spool.max_line_bytes: must be > 0")
    r.require(spool.rescan_interval > 0, "spool.rescan_interval: must be > 0")
    r.require(spool.max_active_jobs >= 1, "spool.max_active_jobs: must be >= 1")

    results = ResultsConfig(**r.section(get("results"), "results", ResultsConfig))
    r.require(results.flush_interval >= 0, "results.flush_interval: must be >= 0")
    r.require(results.flush_max_lines >= 1, "results.flush_max_lines: must be >= 1")

    daemon = DaemonConfig(**r.section(get("daemon"), "daemon", DaemonConfig))
    r.require(daemon.drain_timeout >= 0, "daemon.drain_timeout: must be >= 0")
    r.require(daemon.log_level in LOG_LEVELS,
              f"daemon.log_level: must be one of {', '.join(LOG_LEVELS)}")
    r.require(daemon.state_interval > 0, "daemon.state_interval: must be > 0")
    r.require(daemon.max_pending_requests >= 1, "daemon.max_pending_requests: must be >= 1")

    metrics = MetricsConfig(**r.section(get("metrics"), "metrics", MetricsConfig))
    if metrics.listen:
        try:
            parse_listen(metrics.listen)
        except ValueError as exc:
            r.problems.append(f"metrics.listen: {exc}")
    if metrics.textfile and not Path(metrics.textfile).is_absolute():
        metrics = MetricsConfig(metrics.listen, str(base / metrics.textfile))

    fleet = FleetConfig(**r.section(get("fleet"), "fleet", FleetConfig))
    _check_fleet(r, fleet)

    upstreams: dict[str, UpstreamConfig] = {}
    ups_raw = get("upstreams")
    r.require(bool(ups_raw), "at least one [upstreams.NAME] table is required")
    for name, up_raw in ups_raw.items():
        where = f"upstreams.{name}"
        if not isinstance(up_raw, dict):
            r.problems.append(f"[{where}] must be a table")
            continue
        kw = r.section(up_raw, where, UpstreamConfig, skip=("name",))
        if "base_url" not in kw:
            r.problems.append(f"{where}.base_url is required")
            continue
        up = UpstreamConfig(name=name, **kw)
        _check_upstream(r, where, up, base)
        upstreams[name] = up
    if r.problems:
        raise ConfigError(cfg_path, r.problems)
    return Config(cfg_path, spool, results, daemon, upstreams, metrics, fleet)


def _check_fleet(r: _Reader, fleet: FleetConfig) -> None:
    if fleet.redis:
        parts = urlsplit(fleet.redis)
        r.require(parts.scheme in ("redis", "rediss", "unix"),
                  "fleet.redis: must be a redis://, rediss:// or unix:// URL")
    r.require(0 < fleet.lease_ttl <= 60, "fleet.lease_ttl: must be > 0 and <= 60")
    r.require(0 < fleet.node_ttl <= fleet.lease_ttl, "fleet.node_ttl: must be > 0 and <= lease_ttl")
    r.require(0 < fleet.tick_interval <= fleet.node_ttl / 4,
              "fleet.tick_interval: must be > 0 and <= node_ttl / 4")
    r.require(fleet.redis_timeout > 0, "fleet.redis_timeout: must be > 0")
    r.require(fleet.probe_interval > 0, "fleet.probe_interval: must be > 0")
    r.require(fleet.degraded_floor >= 0, "fleet.degraded_floor: must be >= 0")
    r.require(fleet.degraded_half_life > 0, "fleet.degraded_half_life: must be > 0")
    r.require(bool(fleet.key_prefix), "fleet.key_prefix: must not be empty")


def _check_upstream(r: _Reader, where: str, up: UpstreamConfig, base: Path) -> None:
    try:
        parts = urlsplit(up.base_url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # "http://[::1", "http://h:99999", "http://h:x"
        parts, port_ok = urlsplit(""), False
    shown = up.base_url if "@" not in up.base_url else "(not shown: it holds a user name)"
    r.require(parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok,
              f"{where}.base_url: must be an http:// or https:// URL, got {shown!r}")
    r.require(not parts.query and not parts.fragment,
              f"{where}.base_url: must not have a query or fragment")
    # Credentials never live in the config (and check-config prints base_url).
    r.require("@" not in parts.netloc,
              f"{where}.base_url: must not hold a user name or password "
              "(use api_key_env or api_key_file)")
    r.require(up.min_limit >= 1, f"{where}.min_limit: must be >= 1")
    r.require(up.max_limit >= up.min_limit, f"{where}.max_limit: must be >= min_limit")
    r.require(up.min_limit <= up.initial_limit <= up.max_limit,
              f"{where}.initial_limit: must lie within [min_limit, max_limit]")
    r.require(up.max_attempts >= 1, f"{where}.max_attempts: must be >= 1")
    r.require(up.timeout > 0, f"{where}.timeout: must be > 0")
    r.require(up.connect_timeout > 0, f"{where}.connect_timeout: must be > 0")
    r.require(up.retry_base_delay >= 0, f"{where}.retry_base_delay: must be >= 0")
    r.require(up.give_up_after >= 0, f"{where}.give_up_after: must be >= 0 (0: never)")
    r.require(up.retry_max_delay >= up.retry_base_delay,
              f"{where}.retry_max_delay: must be >= retry_base_delay")
    r.require(not (up.api_key_env and up.api_key_file),
              f"{where}: set api_key_env or api_key_file, not both")
    r.require(up.api_key_env != "", f"{where}.api_key_env: must not be empty")
    r.require(up.api_key_file != "", f"{where}.api_key_file: must not be empty")
    r.require(header_problem(up.auth_header, "") is None,
              f"{where}.auth_header: {up.auth_header!r} is not a valid header name")
    r.require("{key}" in up.auth_format, f"{where}.auth_format: must contain {{key}}")
    lower = {h.lower() for h in up.headers}
    r.require(not lower & {"authorization", "host", up.auth_header.lower()},
              f"{where}.headers: must not set Authorization, Host or the auth header")
    for name, value in up.headers.items():
        problem = header_problem(name, value)
        if problem:
            r.problems.append(f"{where}.headers: {problem}")


def resolve_credential_path(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where ``api_key_file`` points: a bare name under ``$CREDENTIALS_DIRECTORY``
    (systemd's LoadCredential=) when that is set, else a path."""
    creds = environ.get("CREDENTIALS_DIRECTORY")
    if creds and os.sep not in name:
        return Path(creds) / name
    return Path(name)


def read_api_key(up: UpstreamConfig, config_dir: Path,
                 environ: Mapping[str, str] = os.environ) -> str | None:
    """The upstream's API key, or None when none is configured.

    Raises :class:`ConfigError` when a configured source is missing, empty or
    holds something that cannot go into an HTTP header (a line break, a control or
    non-ASCII character: the HTTP library would quote the whole value in its
    error); the message names the source, never the value.
    """
    where = f"upstreams.{up.name}"
    if up.api_key_env:
        value = environ.get(up.api_key_env, "").strip()
        if not value:
            raise ConfigError(config_dir, [f"{where}.api_key_env: ${up.api_key_env} is not set"])
        _check_key(config_dir, f"{where}.api_key_env: ${up.api_key_env}", value)
        return value
    if up.api_key_file:
        path = resolve_credential_path(up.api_key_file, environ)
        if not path.is_absolute():
            path = config_dir / path
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            problem = f"{where}.api_key_file: cannot read {path}: {exc.strerror}"
            raise ConfigError(config_dir, [problem]) from None
        except UnicodeDecodeError:
            raise ConfigError(config_dir, [f"{where}.api_key_file: {path} is not UTF-8 text"]
                              ) from None
        if not value:
            raise ConfigError(config_dir, [f"{where}.api_key_file: {path} is empty"])
        _check_key(config_dir, f"{where}.api_key_file: {path}", value)
        return value
    return None


def _check_key(config_dir: Path, source: str, value: str) -> None:
    if header_problem("x", value) is not None:
        raise ConfigError(config_dir, [
            f"{source} holds a line break, a control or a non-ASCII character "
            "(an API key is one line of printable ASCII)"])
