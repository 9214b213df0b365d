"""pacer's API key never shows up anywhere: a whole faulty run as subprocesses, then
every output is searched for it.

The mock API requires the key (``--auth-key``), answers some requests with cut
JSON or a reset connection, has a 503 outage from 1 s to 2 s, and a concurrency
cap that makes pacer meet 429s; a second upstream is given a wrong key (401s:
the breaker trips for ``auth``). Jobs hold good requests and bad ones: one sets
``Authorization: Bearer KEY`` itself (a line of a ``.jsonl`` and a whole
``.json``), one puts a string in its body that the mock echoes back.

Searched, for the key and for the wrong upstream's key: pacer's stdout and stderr
(``--log-level debug``), every file under the spool (results, error files,
``state.json``, the metrics textfile, the lock) except the job files themselves
(they are the user's input, moved as they came), ``pacer status --json``,
``pacer status``, ``pacer check-config``, a run that crashes with a traceback
(the metrics port is taken), a run refused for a key with a control character,
and the mock's stdout and stderr (``--log``).

The body string is the user's own data, not pacer's key: it is a different
string, and the test checks that it does come back in the results (so the search
would find such a thing), while the key never does.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    MockAPI,
    Proc,
    SpoolHelper,
    req,
    subprocess_env,
    toml_text,
)

pytestmark = pytest.mark.slow

KEY_VAR = "PACER_TEST_API_KEY"
WRONG_VAR = "PACER_TEST_WRONG_KEY"


def write_config(path: Path, base_url: str, *, spool_dir: str = "spool",
                 metrics: dict[str, Any] | None = None) -> Path:
    common = {"base_url": base_url, "retry_base_delay": 0.05, "retry_max_delay": 0.5,
              "timeout": 2.0}
    sections: dict[str, dict[str, Any]] = {
        "spool": {"dir": spool_dir},
        "metrics": {"textfile": "metrics.prom", **(metrics or {})},
        "upstreams.default": {**common, "api_key_env": KEY_VAR, "max_attempts": 6,
                              "give_up_after": 20, "max_limit": 8},
        # Retries that outlast the mock's 1 s outage: a slow start under load put
        # both of two attempts in it, and no 401 was ever seen.
        "upstreams.wrong": {**common, "api_key_env": WRONG_VAR, "max_attempts": 8,
                            "give_up_after": 10},
    }
    path.write_text(toml_text(sections))
    return path


def spool_files(root: Path, inputs: set[str]) -> dict[str, bytes]:
    """Every file under the spool (no link followed), but the job files we wrote."""
    out: dict[str, bytes] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.parent.name in ("done", "failed", "rejected") and name in inputs:
                continue
            if path.is_symlink():
                continue
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def test_api_key_never_appears_in_any_output(
        tmp_path: Path, spool: SpoolHelper, mock_api: Callable[..., MockAPI],
        run_pacer: Callable[..., Any], start_pacer: Callable[..., Proc]) -> None:
    key = f"sk-pacer-test-{secrets.token_hex(16)}"
    wrong = f"sk-wrong-{secrets.token_hex(16)}"
    echoed = f"user-data-{secrets.token_hex(8)}"  # the user's own, echoed by the mock
    env = subprocess_env(**{KEY_VAR: key, WRONG_VAR: wrong})

    api = mock_api("--auth-key", key, "--fault", "malformed:0.1,reset:0.1",
                   "--outage", "1:2:503", "--concurrency", "4", "--latency", "0.05",
                   "--seed", "5", "--log")
    cfg = write_config(tmp_path / "pacer.toml", api.base_url)

    # The jobs: good requests, the key smuggled into a header, the wrong upstream,
    # and a body the mock echoes (its "model").
    inputs = {"good.jsonl", "mixed.jsonl", "auth.json", "wrong.jsonl", "echo.json"}
    spool.drop("good.jsonl", [req(f"g{i:02d}") for i in range(60)])
    spool.drop("mixed.jsonl", [
        req("m-ok-1"),
        req("m-auth", headers={"Authorization": f"Bearer {key}"}),
        req("m-auth-lower", headers={"authorization": key}),
        req("m-ok-2"),
    ])
    spool.drop("auth.json", req("a", headers={"Authorization": f"Bearer {key}"}))
    spool.drop("wrong.jsonl", [req(f"w{i}", upstream="wrong") for i in range(3)])
    spool.drop("echo.json", req("echo", body={"model": echoed, "messages": []}))

    outputs: dict[str, str] = {}
    run = run_pacer("run", "--config", cfg, "--drain", "--log-level", "debug",
                    timeout=90, env=env)
    outputs["pacer run stdout"] = run.stdout
    outputs["pacer run stderr"] = run.stderr
    assert run.returncode == 1, run.stderr  # the wrong upstream's job failed

    for args in (("status", "--json"), ("status",), ("check-config",)):
        done = run_pacer(*args, "--config", cfg, env=env)
        assert done.returncode == 0, done.stderr
        outputs[f"pacer {' '.join(args)}"] = done.stdout + done.stderr

    # A traceback path: the metrics port is taken, after the keys were read.
    crash_cfg = write_config(tmp_path / "crash.toml", api.base_url, spool_dir="spool-crash",
                             metrics={"listen": f"127.0.0.1:{api.port}"})
    crash = run_pacer("run", "--config", crash_cfg, "--drain", env=env)
    outputs["crash run"] = crash.stdout + crash.stderr
    assert crash.returncode == 1
    assert "daemon.crashed" in crash.stdout and '"frames"' in crash.stdout, crash.stdout

    # A key pacer refuses (a control character in it): the message names the source.
    bad_env = subprocess_env(**{KEY_VAR: f"{key}\x01tail", WRONG_VAR: wrong})
    refused = run_pacer("run", "--config", crash_cfg, "--drain", env=bad_env)
    outputs["refused run"] = refused.stdout + refused.stderr
    assert refused.returncode == 2 and KEY_VAR in refused.stderr, refused.stderr

    # The same run kept alive, asked for its status while it runs, then stopped.
    live_cfg = write_config(tmp_path / "live.toml", api.base_url, spool_dir="spool-live")
    SpoolHelper(tmp_path / "spool-live").drop("live.jsonl", [req(f"l{i}") for i in range(5)])
    live = start_pacer("run", "--config", live_cfg, env=env)
    live.wait_event("job.completed", timeout=30)
    status = run_pacer("status", "--json", "--config", live_cfg, env=env)
    outputs["pacer status --json (live)"] = status.stdout + status.stderr
    live.signal(signal.SIGHUP)  # and a reload
    live.wait_event("config.reloaded", timeout=10)
    live.signal(signal.SIGTERM)
    assert live.wait(15) == 0
    outputs["live run"] = live.stdout() + live.stderr()

    stats = api.stats()
    api.proc.stop()  # its last line (the counters) is written on SIGTERM
    outputs["mock stdout"] = api.proc.stdout()
    outputs["mock stderr"] = api.proc.stderr()
    assert "mock_api.stopped" in outputs["mock stdout"]

    # The run went through what it was meant to.
    assert stats["ok"] > 0, "the right key was sent"
    assert stats["unauthorized"] >= 1, stats  # then the breaker holds the others back
    assert stats["outage"] > 0 and stats["rate_limited"] > 0, stats
    assert {"malformed", "reset"} <= set(stats["faults_by_kind"]), stats
    events = outputs["pacer run stdout"]
    for event in ("breaker.transition", "request.retry", "job.rejected", "limit.changed"):
        assert f'"event": "{event}"' in events, event
    assert spool.jobs("rejected") == ["auth.json"]
    mixed = {line["custom_id"]: line for line in spool.results("mixed")}
    assert mixed["m-auth"]["error"]["code"] == "header_not_allowed"
    assert mixed["m-auth-lower"]["error"]["code"] == "header_not_allowed"
    # 401s (the last error may be a 503 of the outage, which the mock checks first).
    wrong_codes = {line["error"]["code"] for line in spool.results("wrong")}
    assert "http_401" in wrong_codes and wrong_codes <= {"http_401", "http_503"}, wrong_codes
    (echo,) = spool.results("echo")
    assert echo["response"]["body"]["model"] == echoed, "the user's own data comes back"

    # And now the search.
    files = {**spool_files(spool.root, inputs), **spool_files(tmp_path / "spool-live", set()),
             **spool_files(tmp_path / "spool-crash", set())}
    files["metrics.prom"] = (tmp_path / "metrics.prom").read_bytes()  # next to the config
    assert "state.json" in files and b"pacer_" in files["metrics.prom"]
    assert any(name.startswith("results/") for name in files)
    assert any(name.endswith(".error.json") for name in files)
    leaks = []
    for secret in (key, wrong):
        leaks += [name for name, text in outputs.items() if secret in text]
        leaks += [name for name, data in files.items() if secret.encode() in data]
    assert leaks == [], f"the API key shows up in: {leaks}"
    # The job files themselves are the user's input: moved as they came.
    assert key.encode() in (spool.root / "rejected" / "auth.json").read_bytes()


def test_tracebacks_are_rendered_without_locals(
        tmp_path: Path, mock_api: Callable[..., MockAPI],
        run_pacer: Callable[..., Any]) -> None:
    """The crash path alone, with the key in a local of every frame it passes:
    structlog's traceback renderer must not show local variables."""
    key = f"sk-pacer-test-{secrets.token_hex(16)}"
    api = mock_api("--auth-key", key)
    cfg = write_config(tmp_path / "crash.toml", api.base_url,
                       metrics={"listen": f"127.0.0.1:{api.port}"})
    done = run_pacer("run", "--config", cfg, "--drain",
                     env=subprocess_env(**{KEY_VAR: key, WRONG_VAR: "x" * 8}))
    assert done.returncode == 1
    assert '"exception"' in done.stdout
    assert '"locals"' not in done.stdout
    assert key not in done.stdout + done.stderr


def test_console_tracebacks_are_rendered_without_locals(
        tmp_path: Path, mock_api: Callable[..., MockAPI],
        run_pacer: Callable[..., Any]) -> None:
    """The same crash with ``--log-format console``: rich's traceback shows local
    variables unless told not to, and it used to render after the redaction
    processor had run, so no local variable may be shown, nor the key."""
    key = f"sk-pacer-test-{secrets.token_hex(16)}"
    api = mock_api("--auth-key", key)
    cfg = write_config(tmp_path / "crash.toml", api.base_url,
                       metrics={"listen": f"127.0.0.1:{api.port}"})
    done = run_pacer("run", "--config", cfg, "--drain", "--log-format", "console",
                     env=subprocess_env(**{KEY_VAR: key, WRONG_VAR: "x" * 8}))
    assert done.returncode == 1
    assert "Traceback" in done.stdout
    assert " locals " not in done.stdout  # rich's panel of local variables
    assert key not in done.stdout + done.stderr
