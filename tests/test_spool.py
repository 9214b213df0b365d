"""The spool: folders and modes, scanning, claiming, finishing, rejecting, submitting."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacer.spool import folders as folders_mod
from pacer.spool.folders import (
    DEFAULT_DIR_MODE,
    DIR_MODES,
    FOLDERS,
    Spool,
    SpoolLocked,
    iter_result_ids,
    job_stem,
    write_durable,
)


@pytest.fixture
def umask() -> Iterator[None]:
    """A strict umask, as under systemd (UMask=0077): modes must not depend on it."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def sp(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def put(
    sp: Spool,
    folder: str,
    name: str,
    data: bytes = b"{}",
    mtime: int | None = None,
) -> Path:
    path = sp.folder(folder) / name
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


# ------------------------------------------------------------------------ ensure


def test_ensure_creates_every_folder_with_its_mode(tmp_path: Path, umask: None) -> None:
    sp = Spool(tmp_path / "a" / "spool")
    sp.ensure()
    assert mode(sp.root) == DEFAULT_DIR_MODE
    for name in FOLDERS:
        path = sp.folder(name)
        assert path.is_dir()
        expected = DIR_MODES.get(name, DEFAULT_DIR_MODE)
        assert mode(path) == expected, (name, oct(mode(path)))
    assert mode(sp.folder("incoming")) == 0o1770
    assert mode(sp.folder("tmp")) == 0o1770
    for name in ("active", "done", "failed", "rejected", "results"):
        assert mode(sp.folder(name)) == 0o750


def test_ensure_leaves_existing_folders_alone(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "incoming").mkdir(parents=True)
    os.chmod(root, 0o711)
    os.chmod(root / "incoming", 0o700)
    sp = Spool(root)
    sp.ensure()
    sp.ensure()  # idempotent
    assert mode(root) == 0o711
    assert mode(root / "incoming") == 0o700
    assert mode(root / "done") == 0o750


# ------------------------------------------------------------------------- lock


def test_lock_refuses_a_second_lock(sp: Spool) -> None:
    sp.lock()
    other = Spool(sp.root)
    with pytest.raises(SpoolLocked, match="another pacer daemon"):
        other.lock()
    sp.unlock()
    other.lock()  # free again
    other.unlock()
    sp.unlock()  # harmless twice


# ------------------------------------------------------------------------- scan


def test_scan_sorts_oldest_first_and_ignores_dot_files(sp: Spool) -> None:
    put(sp, "incoming", "b.json", mtime=3_000_000_000)
    put(sp, "incoming", "a.jsonl", mtime=1_000_000_000)
    put(sp, "incoming", "c.json", mtime=2_000_000_000)
    put(sp, "incoming", "d.json", mtime=2_000_000_000)  # same time: by name
    put(sp, "incoming", ".hidden.json")
    put(sp, "incoming", ".x.tmp")
    jobs, skipped = sp.scan()
    assert [c.name for c in jobs] == ["a.jsonl", "c.json", "d.json", "b.json"]
    assert jobs[0].size == 2 and jobs[0].mtime_ns == 1_000_000_000
    assert skipped == []


def test_scan_reports_what_is_not_a_job(sp: Spool, tmp_path: Path) -> None:
    incoming = sp.folder("incoming")
    target = tmp_path / "secret.json"
    target.write_text("{}")
    os.symlink(target, incoming / "link.json")
    os.symlink(tmp_path / "missing", incoming / "dangling.json")
    os.mkfifo(incoming / "fifo.json")
    (incoming / "dir.json").mkdir()
    put(sp, "incoming", "notes.txt")
    put(sp, "incoming", "upper.JSON")
    put(sp, "incoming", "ok.json")
    jobs, skipped = sp.scan()
    assert [c.name for c in jobs] == ["ok.json"]
    reasons = {s.name: s.reason for s in skipped}
    assert reasons["link.json"].startswith("is a symbolic link (symlink), not a regular file")
    assert reasons["dangling.json"].startswith("is a symbolic link (symlink), not a regular file")
    assert reasons["fifo.json"].startswith("is a FIFO, not a regular file")
    assert reasons["dir.json"].startswith("is a folder, not a regular file")
    assert "does not end in .json" in reasons["notes.txt"]
    assert "does not end in .json" in reasons["upper.JSON"]
    assert len(skipped) == 6


def test_job_stem() -> None:
    assert job_stem("a.json") == "a"
    assert job_stem("a.jsonl") == "a"
    assert job_stem("a.b.jsonl") == "a.b"
    assert job_stem(".json") is None
    assert job_stem("a.txt") is None
    assert job_stem("a.json.tmp") is None


# ------------------------------------------------------------------------ claim


def test_claim_moves_into_active(sp: Spool) -> None:
    put(sp, "incoming", "job.jsonl", b"data")
    assert sp.claim("job.jsonl") == "job.jsonl"
    assert not (sp.folder("incoming") / "job.jsonl").exists()
    assert (sp.folder("active") / "job.jsonl").read_bytes() == b"data"


@pytest.mark.parametrize(
    ("folder", "name"),
    [
        ("active", "job.json"),
        ("active", "job.jsonl"),
        ("done", "job.json"),
        ("failed", "job.jsonl"),
        ("rejected", "job.json"),
        ("results", "job.jsonl"),
        ("results", ".job.jsonl.part"),
    ],
)
def test_claim_picks_a_free_stem(sp: Spool, folder: str, name: str) -> None:
    put(sp, folder, name, b"old")
    put(sp, "incoming", "job.json", b"new")
    assert sp.claim("job.json") == "job~2.json"
    assert (sp.folder("active") / "job~2.json").read_bytes() == b"new"
    assert (sp.folder(folder) / name).read_bytes() == b"old"


def test_claim_counts_up(sp: Spool) -> None:
    put(sp, "done", "job.json")
    put(sp, "results", "job~2.jsonl")
    put(sp, "failed", "job~3.jsonl")
    put(sp, "incoming", "job.jsonl")
    assert sp.claim("job.jsonl") == "job~4.jsonl"


def test_claim_treats_a_dangling_symlink_as_a_taken_name(sp: Spool, tmp_path: Path) -> None:
    # Was: exists() follows links, so a rejected dangling symlink "job.json" left
    # the stem free, and finishing the new job into rejected/ replaced the link.
    os.symlink(tmp_path / "gone", sp.folder("rejected") / "job.json")
    put(sp, "incoming", "job.json")
    assert sp.claim("job.json") == "job~2.json"


def test_claim_of_a_vanished_file(sp: Spool) -> None:
    assert sp.claim("gone.json") is None


def test_claim_leaves_non_regular_files(sp: Spool, tmp_path: Path) -> None:
    os.symlink(tmp_path, sp.folder("incoming") / "link.json")
    os.mkfifo(sp.folder("incoming") / "fifo.json")
    assert sp.claim("link.json") is None
    assert sp.claim("fifo.json") is None
    assert os.path.lexists(sp.folder("incoming") / "link.json")
    assert os.listdir(sp.folder("active")) == []


# ----------------------------------------------------------------------- finish


def test_finish_moves_out_of_active(sp: Spool) -> None:
    put(sp, "active", "job.json", b"x")
    assert sp.finish("job.json", "done") == "job.json"
    assert (sp.folder("done") / "job.json").read_bytes() == b"x"
    assert not (sp.folder("active") / "job.json").exists()


def test_finish_never_overwrites(sp: Spool, tmp_path: Path) -> None:
    put(sp, "done", "job.jsonl", b"first")
    put(sp, "done", "job~2.jsonl", b"second")
    put(sp, "active", "job.jsonl", b"third")
    assert sp.finish("job.jsonl", "done") == "job~3.jsonl"
    assert [
        (sp.folder("done") / n).read_bytes() for n in ("job.jsonl", "job~2.jsonl", "job~3.jsonl")
    ] == [b"first", b"second", b"third"]


def test_finish_into_rejected_avoids_an_error_file_and_a_dangling_link(
    sp: Spool, tmp_path: Path
) -> None:
    put(sp, "rejected", "a.json.error.json", b"{}")
    put(sp, "active", "a.json")
    assert sp.finish("a.json", "rejected") == "a~2.json"
    os.symlink(tmp_path / "gone", sp.folder("rejected") / "b.json")
    put(sp, "active", "b.json", b"job")
    assert sp.finish("b.json", "rejected") == "b~2.json"
    assert os.path.islink(sp.folder("rejected") / "b.json")


# ------------------------------------------------------------------ rejecting


def test_reject_from_incoming_moves_a_symlink_without_following_it(
    sp: Spool, tmp_path: Path
) -> None:
    target = tmp_path / "precious.json"
    target.write_text("precious")
    os.symlink(target, sp.folder("incoming") / "evil.json")
    name = sp.reject_from_incoming("evil.json", {"code": "not_a_job_file", "message": "symlink"})
    assert name == "evil.json"
    moved = sp.folder("rejected") / "evil.json"
    assert os.path.islink(moved) and os.readlink(moved) == str(target)
    assert target.read_text() == "precious"
    assert not os.path.lexists(sp.folder("incoming") / "evil.json")
    info = json.loads((sp.folder("rejected") / "evil.json.error.json").read_text())
    assert info == {"code": "not_a_job_file", "message": "symlink"}


def test_reject_from_incoming_never_overwrites(sp: Spool) -> None:
    put(sp, "rejected", "x.txt", b"old")
    put(sp, "incoming", "x.txt", b"new")
    name = sp.reject_from_incoming("x.txt", {"code": "c"})
    assert name == "x.txt~2"
    assert (sp.folder("rejected") / "x.txt").read_bytes() == b"old"
    assert (sp.folder("rejected") / "x.txt~2").read_bytes() == b"new"
    assert (sp.folder("rejected") / "x.txt~2.error.json").exists()


def test_reject_from_incoming_of_a_vanished_entry(sp: Spool) -> None:
    with pytest.raises(FileNotFoundError):
        sp.reject_from_incoming("gone.json", {"code": "c"})
    assert os.listdir(sp.folder("rejected")) == []


def test_reject_a_name_that_is_not_utf8(sp: Spool) -> None:
    # Was: UnicodeEncodeError writing the error file, after the move: the entry sat
    # in rejected/ with no explanation, and the daemon's caller crashed.
    raw = os.fsencode(sp.folder("incoming")) + b"/caf\xe9.txt"
    with open(raw, "wb") as fh:
        fh.write(b"x")
    name = os.fsdecode(b"caf\xe9.txt")
    target = sp.reject_from_incoming(name, {"job": name, "code": "not_a_job_file"})
    assert target == name
    error = os.fsencode(sp.folder("rejected")) + b"/caf\xe9.txt.error.json"
    with open(error, "rb") as fh:
        info = json.loads(fh.read())
    assert info["code"] == "not_a_job_file"
    assert info["job"] == "caf\udce9.txt"


def test_write_error(sp: Spool) -> None:
    sp.write_error("j.json", {"job": "j.json", "message": "naïve"})
    data = (sp.folder("rejected") / "j.json.error.json").read_bytes()
    assert "naïve".encode() in data and data.endswith(b"\n")


# ----------------------------------------------------------------------- submit


def test_submit_never_overwrites(sp: Spool) -> None:
    assert sp.submit(b"one", "job.json") == "job.json"
    assert sp.submit(b"two", "job.json") == "job~2.json"
    assert sp.submit(b"three", "job.json") == "job~3.json"
    assert (sp.folder("incoming") / "job.json").read_bytes() == b"one"
    assert (sp.folder("incoming") / "job~2.json").read_bytes() == b"two"
    assert (sp.folder("incoming") / "job~3.json").read_bytes() == b"three"
    assert os.listdir(sp.folder("tmp")) == []


def test_submit_refuses_names_that_are_not_jobs(sp: Spool) -> None:
    for name in ("job.txt", "../done/x.json", "a/b.json", ".hidden.json", "x\0.json"):
        with pytest.raises(ValueError):
            sp.submit(b"{}", name)
    assert os.listdir(sp.folder("incoming")) == []
    assert os.listdir(sp.folder("done")) == []
    assert os.listdir(sp.folder("tmp")) == []


def test_submit_leaves_no_temp_file_when_writing_fails(
    sp: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        sp.submit(b"data", "job.json")
    monkeypatch.undo()
    assert os.listdir(sp.folder("tmp")) == []
    assert os.listdir(sp.folder("incoming")) == []


# ----------------------------------------------------------------- write_durable


def test_write_durable_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_durable(path, b"one")
    write_durable(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["state.json"]
    assert mode(path) == 0o640 & ~_umask()


def test_write_durable_cleans_up_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(src: object, dst: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "rename", broken)
    with pytest.raises(OSError):
        write_durable(tmp_path / "x", b"data")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


# ---------------------------------------------------------------- result ids


def test_iter_result_ids_ignores_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b'{"custom_id": "a", "error": null}\n'
        b'{"custom_id": "b", "error": {"code": "x"}}\n'
        b"garbage line\n"
        b"[1, 2]\n"
        b'{"custom_id": 3}\n'
        b'{"custom_id": "c", "err'
    )
    assert list(iter_result_ids(path)) == [("a", False), ("b", True)]


def test_iter_result_ids_missing_file_and_odd_lines(tmp_path: Path) -> None:
    assert list(iter_result_ids(tmp_path / "nope.jsonl")) == []
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\xff\xfe\n" + b"[" * 100_000 + b"\n" + b'{"custom_id": "z"}\n')
    assert list(iter_result_ids(path)) == [("z", False)]


# ----------------------------------------------------------------------- counts


def test_counts(sp: Spool) -> None:
    put(sp, "incoming", "a.json")
    put(sp, "incoming", ".tmp")
    put(sp, "rejected", "b.json")
    put(sp, "rejected", "b.json.error.json")
    counts = sp.counts()
    assert counts["incoming"] == 1 and counts["rejected"] == 1 and counts["done"] == 0
    assert set(counts) == set(FOLDERS)
    assert Spool(sp.root / "nowhere").counts() == dict.fromkeys(FOLDERS, 0)


def test_claim_many_claims_in_order_with_one_fsync_per_folder(
        sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = folders_mod.fsync_dir
    monkeypatch.setattr(folders_mod, "fsync_dir",
                        lambda path: (synced.append(Path(path).name), real(path))[1])
    for name in ("a.json", "b.jsonl", "c.json"):
        (sp.folder("incoming") / name).write_text("{}")
    (sp.folder("done") / "b.jsonl").write_text("{}")  # b's name is taken
    claims, error = sp.claim_many(["a.json", "gone.json", "b.jsonl", "c.json"])
    assert error is None
    assert claims == ["a.json", None, "b~2.jsonl", "c.json"]
    assert sorted(os.listdir(sp.folder("active"))) == ["a.json", "b~2.jsonl", "c.json"]
    assert os.listdir(sp.folder("incoming")) == []
    assert sorted(synced) == ["active", "incoming"]  # once each, for all three


def test_claim_many_stops_at_an_error_and_keeps_what_it_claimed(
        sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("a.json", "b.json", "c.json"):
        (sp.folder("incoming") / name).write_text("{}")
    real = folders_mod.os.rename

    def rename(src: Any, dst: Any) -> None:
        if Path(src).name == "b.json":
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(folders_mod.os, "rename", rename)
    claims, error = sp.claim_many(["a.json", "b.json", "c.json"])
    assert claims == ["a.json"]
    assert isinstance(error, OSError) and error.errno == errno.EIO
    assert os.listdir(sp.folder("active")) == ["a.json"]
    assert sorted(os.listdir(sp.folder("incoming"))) == ["b.json", "c.json"]  # c not tried
    with pytest.raises(OSError):
        sp.claim("b.json")


def test_claim_many_returns_nothing_when_the_fsync_fails(
        sp: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    (sp.folder("incoming") / "a.json").write_text("{}")

    def failing(_path: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(folders_mod, "fsync_dir", failing)
    claims, error = sp.claim_many(["a.json"])
    # Not known durable: not started now; active/ is resumed at the next start.
    assert claims == [] and error is not None
    assert os.listdir(sp.folder("active")) == ["a.json"]
