"""The demo's set-up: it writes its own config under --dir, and never deletes or
reuses a spool that is not its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import MakeConfig
from pacer.commands import demo


def test_a_spool_that_is_not_the_demos_is_left_alone(
        make_config: MakeConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was: the demo removed the spool of whatever --config it was given.
    config = make_config(base_url="http://127.0.0.1:1")  # never reached
    precious = tmp_path / "spool" / "done" / "job.json"
    precious.parent.mkdir(parents=True)
    precious.write_text("{}")
    rc = demo.main(["--config", str(config), "--dir", str(tmp_path / "run"), "--jobs", "1"])
    assert rc == 2
    assert precious.read_text() == "{}"
    assert "not made by the demo" in capsys.readouterr().err


def test_a_folder_that_is_not_a_spool_is_left_alone(
        make_config: MakeConfig, tmp_path: Path) -> None:
    config = make_config()
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "notes.txt").write_text("mine")
    with pytest.raises(demo.DemoRefused):
        demo.prepare(tmp_path / "run", config)
    assert (tmp_path / "spool" / "notes.txt").read_text() == "mine"


def test_without_a_config_everything_goes_under_dir(tmp_path: Path) -> None:
    # Was: the default config was found through the source tree (parents[3]),
    # which is not there once pacer is installed.
    run = tmp_path / "run"
    path, config, spool = demo.prepare(run, None)
    assert path == run / "demo.toml"
    assert config.spool.dir == (run / "spool").resolve()
    assert (spool.root / demo.MARKER).exists()
    (spool.root / "done" / "old.json").write_text("{}")
    demo.prepare(run, None)  # a previous demo's spool: made fresh
    assert not (spool.root / "done" / "old.json").exists()


def test_an_empty_spool_of_a_given_config_is_used(
        make_config: MakeConfig, tmp_path: Path) -> None:
    config = make_config()
    for folder in ("incoming", "done"):
        (tmp_path / "spool" / folder).mkdir(parents=True)
    path, _, spool = demo.prepare(tmp_path / "run", config)
    assert path == config and (spool.root / demo.MARKER).exists()


def test_a_spool_left_by_an_older_demo_is_made_fresh(
        make_config: MakeConfig, tmp_path: Path) -> None:
    # Older demos did not mark their spool; one holding only the demo's own files
    # (jobs, results, error files) is still recognised as the demo's.
    config = make_config()
    for folder, name in (("done", "demo-0001.json"), ("results", "demo-0001.jsonl"),
                         ("rejected", "demo-0002~2.json.error.json"),
                         ("results", ".demo-0003.jsonl.part")):
        (tmp_path / "spool" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "spool" / folder / name).write_text("{}")
    _, _, spool = demo.prepare(tmp_path / "run", config)
    assert spool.counts()["done"] == 0
    assert not (spool.root / "results" / "demo-0001.jsonl").exists()
    (spool.root / demo.MARKER).unlink()
    (spool.root / "done" / "demo-0001.json").write_text("{}")
    (spool.root / "done" / "report.json").write_text("{}")  # not the demo's
    with pytest.raises(demo.DemoRefused):
        demo.prepare(tmp_path / "run", config)
    assert (spool.root / "done" / "report.json").exists()
