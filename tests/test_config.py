"""Config loading: the contract's minimal config, strict keys, types, ranges, secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pacer.config import (
    Config,
    ConfigError,
    UpstreamConfig,
    load_config,
    read_api_key,
    resolve_credential_path,
)

MINIMAL = """\
[spool]
dir = "spool"

[upstreams.default]
base_url = "http://127.0.0.1:8000"
"""

SECRET = "sk-test-0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "pacer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> tuple[str, list[str]]:
    """The ConfigError's text and problem list for a config that must not load."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value), info.value.problems


def with_upstream(extra: str, name: str = "default") -> str:
    return f"""\
[spool]
dir = "spool"

[upstreams.{name}]
base_url = "http://127.0.0.1:8000"
{extra}
"""


# --------------------------------------------------------------------- the minimum


def test_minimal_config_from_the_contract(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.path == tmp_path / "pacer.toml"
    assert cfg.spool.dir == tmp_path / "spool"
    assert list(cfg.upstreams) == ["default"]
    up = cfg.upstreams["default"]
    assert up.name == "default"
    assert up.base_url == "http://127.0.0.1:8000"
    assert up.min_limit <= up.initial_limit <= up.max_limit
    assert up.max_attempts >= 1 and up.timeout > 0
    assert up.api_key_env is None and up.api_key_file is None
    assert cfg.default_upstream() == "default"


def test_relative_spool_dir_resolves_against_the_config_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = tmp_path / "etc" / "pacer"
    conf_dir.mkdir(parents=True)
    path = write(conf_dir, MINIMAL.replace('"spool"', '"../../var/spool"'))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(os.path.relpath(path, elsewhere))  # a relative config path too
    assert cfg.spool.dir.is_absolute()
    assert cfg.spool.dir.resolve() == (tmp_path / "var" / "spool").resolve()


def test_absolute_spool_dir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "abs-spool"
    cfg = load_config(write(tmp_path, MINIMAL.replace('"spool"', json.dumps(str(target)))))
    assert cfg.spool.dir == target


def test_every_documented_key_is_accepted(tmp_path: Path) -> None:
    text = """\
[spool]
dir = "s"
max_job_bytes = 1000
max_line_bytes = 100
rescan_interval = 1
max_active_jobs = 2

[results]
flush_interval = 0
flush_max_lines = 1

[daemon]
drain_timeout = 0
log_level = "debug"
state_interval = 0.5
max_pending_requests = 1

[upstreams.a]
base_url = "https://api.example.com/v1/"
initial_limit = 2
min_limit = 2
max_limit = 2
max_attempts = 1
timeout = 0.5
connect_timeout = 1
api_key_env = "A_KEY"
auth_header = "x-api-key"
auth_format = "{key}"
headers = { "anthropic-version" = "2023-06-01" }
retry_base_delay = 0
retry_max_delay = 0
adaptive = false
http2 = true
"""
    cfg = load_config(write(tmp_path, text))
    up = cfg.upstreams["a"]
    assert up.timeout == 0.5 and isinstance(up.connect_timeout, float)
    assert up.headers == {"anthropic-version": "2023-06-01"}
    assert up.adaptive is False and up.http2 is True
    assert cfg.spool.rescan_interval == 1.0 and isinstance(cfg.spool.rescan_interval, float)
    assert cfg.results.flush_max_lines == 1
    assert cfg.daemon.log_level == "debug"


def test_example_config_of_the_repository_loads() -> None:
    example = Path(__file__).resolve().parent.parent / "config" / "pacer.toml"
    if not example.exists():
        pytest.skip("no example config yet")
    cfg = load_config(example)
    assert cfg.upstreams


# ----------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(("text", "key"), [
    (MINIMAL + "\nspooll = 1\n", "spooll"),
    (MINIMAL + "\n[spoool]\ndir = 'x'\n", "spoool"),
    (MINIMAL.replace('dir = "spool"', 'dir = "spool"\nmax_jobs = 3'), "max_jobs"),
    (MINIMAL + 'intial_limit = 4\n', "intial_limit"),
    (MINIMAL + 'name = "x"\n', "name"),  # the name is the table's, not a key
    (MINIMAL + "\n[results]\nflush_every = 1\n", "flush_every"),
    (MINIMAL + "\n[daemon]\nloglevel = 'info'\n", "loglevel"),
])
def test_unknown_keys_are_errors_naming_file_and_key(tmp_path: Path, text: str,
                                                     key: str) -> None:
    message, found = problems(tmp_path, text)
    assert str(tmp_path / "pacer.toml") in message
    assert any(repr(key) in p for p in found), found
    assert all(line.startswith(str(tmp_path / "pacer.toml") + ": ")
               for line in message.splitlines())


def test_unknown_key_in_upstream_names_the_upstream(tmp_path: Path) -> None:
    _, found = problems(tmp_path, with_upstream("max_limt = 9", name="openai"))
    assert any("upstreams.openai" in p and "'max_limt'" in p for p in found), found


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path) -> None:
    _, found = problems(tmp_path, MINIMAL + "foo = 1\nbar = 2\ntimeout = -1\n")
    assert any("'foo'" in p for p in found)
    assert any("'bar'" in p for p in found)
    assert any("timeout" in p for p in found)


# -------------------------------------------------------------- required and types


def test_missing_spool_dir(tmp_path: Path) -> None:
    _, found = problems(tmp_path, MINIMAL.replace('dir = "spool"', ""))
    assert any("dir is required" in p for p in found)


def test_empty_spool_dir(tmp_path: Path) -> None:
    _, found = problems(tmp_path, MINIMAL.replace('"spool"', '""'))
    assert any("spool.dir" in p for p in found)


def test_no_upstream(tmp_path: Path) -> None:
    _, found = problems(tmp_path, '[spool]\ndir = "s"\n')
    assert any("upstreams" in p for p in found)


def test_missing_base_url(tmp_path: Path) -> None:
    _, found = problems(tmp_path, '[spool]\ndir = "s"\n[upstreams.x]\ntimeout = 1\n')
    assert any("upstreams.x.base_url is required" in p for p in found)


@pytest.mark.parametrize("text", [
    'spool = "x"\n[upstreams.a]\nbase_url = "http://h"\n',
    '[spool]\ndir = "s"\n[upstreams]\na = 1\n',
    'upstreams = 3\n[spool]\ndir = "s"\n',
])
def test_sections_must_be_tables(tmp_path: Path, text: str) -> None:
    _, found = problems(tmp_path, text)
    assert any("must be a table" in p for p in found), found


@pytest.mark.parametrize(("extra", "key"), [
    ('initial_limit = "4"', "initial_limit"),
    ("initial_limit = 4.5", "initial_limit"),
    ("max_limit = true", "max_limit"),
    ('timeout = "30"', "timeout"),
    ("timeout = true", "timeout"),
    ("timeout = nan", "timeout"),
    ("timeout = inf", "timeout"),
    ("adaptive = 1", "adaptive"),
    ("api_key_env = 3", "api_key_env"),
    ('headers = "x"', "headers"),
    ("headers = { a = 1 }", "headers"),
    ("base_url = 8000", "base_url"),
])
def test_wrong_types(tmp_path: Path, extra: str, key: str) -> None:
    text = with_upstream(extra)
    if extra.startswith("base_url"):
        text = '[spool]\ndir = "s"\n[upstreams.default]\n' + extra + "\n"
    _, found = problems(tmp_path, text)
    assert any(f"upstreams.default.{key}" in p for p in found), found


def test_wrong_type_in_spool_and_daemon(tmp_path: Path) -> None:
    text = MINIMAL.replace('dir = "spool"', "dir = 3\nmax_active_jobs = '2'")
    text += "\n[daemon]\nlog_level = 1\n"
    _, found = problems(tmp_path, text)
    assert any("spool.dir" in p and "a string" in p for p in found)
    assert any("spool.max_active_jobs" in p for p in found)
    assert any("daemon.log_level" in p for p in found)


def test_integer_too_large_for_a_float_is_a_clear_error(tmp_path: Path) -> None:
    # Was: OverflowError out of math.isfinite() instead of a ConfigError.
    _, found = problems(tmp_path, with_upstream("timeout = 9" + "9" * 400))
    assert any("upstreams.default.timeout" in p and "finite" in p for p in found), found


def test_integer_beyond_pythons_digit_limit_is_a_config_error(tmp_path: Path) -> None:
    # Was: a bare ValueError from tomllib ("Exceeds the limit (4300 digits)").
    _, found = problems(tmp_path, with_upstream("max_limit = " + "1" * 5000))
    assert found and "TOML" in found[0]


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    # Was: a bare UnicodeDecodeError.
    path = tmp_path / "pacer.toml"
    path.write_bytes(MINIMAL.encode() + b'# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "UTF-8" in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    _, found = problems(tmp_path, "[spool\n")
    assert "not valid TOML" in found[0]
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a folder


# ------------------------------------------------------------------- ranges


@pytest.mark.parametrize(("extra", "needle"), [
    ("min_limit = 10\nmax_limit = 5\ninitial_limit = 5", "max_limit"),
    ("initial_limit = 0", "initial_limit"),
    ("min_limit = 2\ninitial_limit = 1", "initial_limit"),
    ("max_limit = 4\ninitial_limit = 5", "initial_limit"),
    ("min_limit = 0\ninitial_limit = 1", "min_limit"),
    ("timeout = -1", "timeout"),
    ("timeout = 0", "timeout"),
    ("connect_timeout = -0.5", "connect_timeout"),
    ("max_attempts = 0", "max_attempts"),
    ("retry_base_delay = -1", "retry_base_delay"),
    ("retry_base_delay = 5\nretry_max_delay = 1", "retry_max_delay"),
    ('auth_format = "Bearer"', "auth_format"),
])
def test_out_of_range_upstream_values(tmp_path: Path, extra: str, needle: str) -> None:
    _, found = problems(tmp_path, with_upstream(extra))
    assert any(f"upstreams.default.{needle}" in p for p in found), found


@pytest.mark.parametrize(("section", "line", "needle"), [
    ("spool", "max_job_bytes = 0", "spool.max_job_bytes"),
    ("spool", "max_line_bytes = -1", "spool.max_line_bytes"),
    ("spool", "rescan_interval = 0", "spool.rescan_interval"),
    ("spool", "max_active_jobs = 0", "spool.max_active_jobs"),
    ("results", "flush_interval = -0.1", "results.flush_interval"),
    ("results", "flush_max_lines = 0", "results.flush_max_lines"),
    ("daemon", "drain_timeout = -1", "daemon.drain_timeout"),
    ("daemon", 'log_level = "INFO!"', "daemon.log_level"),
    ("daemon", "state_interval = 0", "daemon.state_interval"),
    ("daemon", "max_pending_requests = 0", "daemon.max_pending_requests"),
])
def test_out_of_range_section_values(tmp_path: Path, section: str, line: str,
                                     needle: str) -> None:
    if section == "spool":
        text = MINIMAL.replace('dir = "spool"', f'dir = "spool"\n{line}')
    else:
        text = MINIMAL + f"\n[{section}]\n{line}\n"
    _, found = problems(tmp_path, text)
    assert any(needle in p for p in found), found


@pytest.mark.parametrize("url", [
    "127.0.0.1:8000", "ftp://h", "http://", "http:///x", "http://h?x=1", "http://h#f",
    "http://[::1", "http://h:99999", "http://h:port", "http://h:0",
])
def test_bad_base_urls(tmp_path: Path, url: str) -> None:
    text = f'[spool]\ndir = "s"\n[upstreams.default]\nbase_url = {json.dumps(url)}\n'
    _, found = problems(tmp_path, text)
    assert any("upstreams.default.base_url" in p for p in found), found


@pytest.mark.parametrize("scheme", ["https", "ftp"])
def test_base_url_with_credentials_is_refused_and_not_echoed(tmp_path: Path, scheme: str) -> None:
    text = (
        '[spool]\ndir = "s"\n[upstreams.default]\n'
        f'base_url = "{scheme}://user:{SECRET}@api.example.com"\n'
    )
    message, found = problems(tmp_path, text)
    assert any("user name or password" in p for p in found), found
    assert SECRET not in message


# ------------------------------------------------------------------- headers


@pytest.mark.parametrize("name", ["Authorization", "authorization", "HOST", "X-Api-Key"])
def test_forbidden_extra_headers(tmp_path: Path, name: str) -> None:
    extra = f'auth_header = "x-api-key"\nheaders = {{ "{name}" = "v" }}'
    _, found = problems(tmp_path, with_upstream(extra))
    assert any("upstreams.default.headers" in p for p in found), found


@pytest.mark.parametrize(
    "headers",
    [
        '{ "bad name" = "v" }',
        '{ "x-a:b" = "v" }',
        '{ "" = "v" }',
        '{ "x-a" = "line\\nbreak" }',
        '{ "x-a" = "caf\\u00e9" }',
        '{ "x-a" = " v" }',
    ],
)
def test_malformed_extra_headers(tmp_path: Path, headers: str) -> None:
    _, found = problems(tmp_path, with_upstream(f"headers = {headers}"))
    assert any("upstreams.default.headers" in p for p in found), found


def test_malformed_auth_header_name(tmp_path: Path) -> None:
    _, found = problems(tmp_path, with_upstream('auth_header = "x api key"'))
    assert any("upstreams.default.auth_header" in p for p in found), found


# ------------------------------------------------------------- default upstream


def make(names: list[str], tmp_path: Path) -> Config:
    text = '[spool]\ndir = "s"\n' + "".join(
        f'[upstreams.{n}]\nbase_url = "http://h/{n}"\n' for n in names)
    return load_config(write(tmp_path, text))


def test_default_upstream_rules(tmp_path: Path) -> None:
    assert make(["only"], tmp_path).default_upstream() == "only"
    assert make(["a", "default", "b"], tmp_path).default_upstream() == "default"
    assert make(["a", "b"], tmp_path).default_upstream() is None


# ----------------------------------------------------------------- API keys


def up(tmp_path: Path, extra: str) -> tuple[UpstreamConfig, Path]:
    cfg = load_config(write(tmp_path, with_upstream(extra)))
    return cfg.upstreams["default"], cfg.path.parent


def test_no_key_configured(tmp_path: Path) -> None:
    u, base = up(tmp_path, "")
    assert read_api_key(u, base, {}) is None


def test_api_key_env(tmp_path: Path) -> None:
    u, base = up(tmp_path, 'api_key_env = "PACER_TEST_KEY"')
    assert read_api_key(u, base, {"PACER_TEST_KEY": f"  {SECRET}\n"}) == SECRET
    for env in ({}, {"PACER_TEST_KEY": ""}, {"PACER_TEST_KEY": "  \n"}):
        with pytest.raises(ConfigError) as info:
            read_api_key(u, base, env)
        assert "$PACER_TEST_KEY" in str(info.value) and "not set" in str(info.value)


def test_api_key_file_under_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-key").write_text(SECRET + "\n")
    u, base = up(tmp_path, 'api_key_file = "api-key"')
    assert read_api_key(u, base, {"CREDENTIALS_DIRECTORY": str(creds)}) == SECRET
    assert resolve_credential_path("api-key", {"CREDENTIALS_DIRECTORY": str(creds)}) \
        == creds / "api-key"


def test_api_key_file_relative_to_config_without_credentials_directory(
        tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text(SECRET)
    u, base = up(tmp_path, 'api_key_file = "api-key"')
    assert read_api_key(u, base, {}) == SECRET


def test_api_key_file_as_a_path_ignores_credentials_directory(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / "k").write_text(SECRET)
    u, base = up(tmp_path, f"api_key_file = {json.dumps(str(keydir / 'k'))}")
    assert read_api_key(u, base, {"CREDENTIALS_DIRECTORY": str(tmp_path / "nowhere")}) == SECRET
    u, base = up(tmp_path, 'api_key_file = "keys/k"')  # relative path: config folder
    assert read_api_key(u, base, {"CREDENTIALS_DIRECTORY": str(tmp_path / "nowhere")}) == SECRET


def test_api_key_file_missing(tmp_path: Path) -> None:
    u, base = up(tmp_path, 'api_key_file = "api-key"')
    with pytest.raises(ConfigError) as info:
        read_api_key(u, base, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "upstreams.default.api_key_file" in str(info.value)
    assert "cannot read" in str(info.value)


def test_api_key_file_empty(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text(" \n\n")
    u, base = up(tmp_path, 'api_key_file = "api-key"')
    with pytest.raises(ConfigError, match="is empty"):
        read_api_key(u, base, {"CREDENTIALS_DIRECTORY": str(tmp_path)})


@pytest.mark.parametrize("content", [
    f"{SECRET}\nsecond-line".encode(),
    f"{SECRET}\r\nx".encode(),
    f"{SECRET}\x00x".encode(),
    f"{SECRET}é".encode(),
    SECRET.encode() + b"\xff",
])
def test_api_key_file_that_cannot_be_a_header_is_refused_without_echo(
        tmp_path: Path, content: bytes) -> None:
    # Was: accepted; the HTTP library then failed each request with
    # "Illegal header value b'Bearer <the key>'", which went into result lines.
    (tmp_path / "api-key").write_bytes(content)
    u, base = up(tmp_path, 'api_key_file = "api-key"')
    with pytest.raises(ConfigError) as info:
        read_api_key(u, base, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert "upstreams.default.api_key_file" in str(info.value)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.problems)


def test_api_key_env_that_cannot_be_a_header_is_refused_without_echo(
        tmp_path: Path) -> None:
    u, base = up(tmp_path, 'api_key_env = "K"')
    with pytest.raises(ConfigError) as info:
        read_api_key(u, base, {"K": f"{SECRET}\nInjected: 1"})
    assert "$K" in str(info.value)
    assert SECRET not in str(info.value)


def test_both_key_sources_is_an_error(tmp_path: Path) -> None:
    _, found = problems(tmp_path, with_upstream('api_key_env = "A"\napi_key_file = "b"'))
    assert any("not both" in p for p in found)


@pytest.mark.parametrize("extra", ['api_key_env = ""', 'api_key_file = ""'])
def test_empty_key_source_names_are_errors(tmp_path: Path, extra: str) -> None:
    # Was: silently treated as "no key" (requests then go out unauthenticated).
    _, found = problems(tmp_path, with_upstream(extra))
    assert any("must not be empty" in p for p in found), found


# ----------------------------------------------------------------- to_dict


def test_to_dict_is_json_and_holds_no_secret(tmp_path: Path) -> None:
    (tmp_path / "api-key").write_text(SECRET)
    text = with_upstream('api_key_env = "PACER_TEST_KEY"') + (
        '[upstreams.other]\nbase_url = "http://h"\napi_key_file = "api-key"\n')
    cfg = load_config(write(tmp_path, text))
    os.environ["PACER_TEST_KEY"] = SECRET
    try:
        out: dict[str, Any] = cfg.to_dict()
        dumped = json.dumps(out)
    finally:
        del os.environ["PACER_TEST_KEY"]
    assert SECRET not in dumped
    assert out["upstreams"]["default"]["api_key_env"] == "PACER_TEST_KEY"
    assert out["upstreams"]["other"]["api_key_file"] == "api-key"
    assert out["spool"]["dir"] == str(tmp_path / "spool")
    assert out["config"] == str(tmp_path / "pacer.toml")
    assert {"config", "spool", "results", "daemon", "upstreams"} <= set(out)


# ------------------------------------------------------------------- metrics


def test_metrics_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert not cfg.metrics.listen and not cfg.metrics.textfile  # off by default
    cfg = load_config(write(tmp_path, MINIMAL + '[metrics]\nlisten = "127.0.0.1:9464"\n'
                                                'textfile = "pacer.prom"\n'))
    assert cfg.metrics.listen == "127.0.0.1:9464"
    assert cfg.metrics.textfile == str(tmp_path / "pacer.prom")  # relative: config folder


@pytest.mark.parametrize(("line", "needle"), [
    ("listen = \"nowhere\"", "metrics.listen"),
    ("listen = 9464", "metrics.listen"),
    ("port = 9464", "'port'"),
])
def test_bad_metrics_section(tmp_path: Path, line: str, needle: str) -> None:
    _, found = problems(tmp_path, MINIMAL + f"[metrics]\n{line}\n")
    assert any(needle in p for p in found), found
