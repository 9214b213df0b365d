"""A submitted job is one the daemon can read, or it is refused: never accepted and then
rejected. The rule is tested pure; the real thing (root, a group member, a stranger)
runs as other users through ``setpriv`` when the tests run as root, and is skipped
otherwise (the container test under systemd covers it too)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import pacer_command, subprocess_env
from pacer.spool.access import (
    Identity,
    can_read,
    explain_unreadable,
    group_name,
    group_to_give,
    hand_over,
)
from pacer.spool.folders import Spool

SERVICE = Identity(uid=4242, gid=4243)


# -- the rule, pure ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "mode", "readable"),
    [
        (Identity(4242, 1), 0o600, True),  # the service's own file
        (Identity(4242, 4243), 0o040, False),  # owner class applies, not group
        (Identity(0, 4243), 0o640, True),  # root's file handed to the group
        (Identity(0, 0), 0o640, False),  # the case: root:root 0640
        (Identity(0, 4243), 0o600, False),  # right group, group may not read
        (Identity(1000, 1000), 0o644, True),  # world-readable
        (Identity(1000, 1000), 0o640, False),
    ],
)
def test_can_read(owner: Identity, mode: int, readable: bool) -> None:
    assert can_read(owner, mode, SERVICE) is readable


def test_a_root_daemon_reads_everything() -> None:
    assert can_read(Identity(1000, 1000), 0o000, Identity(0, 0))


@pytest.mark.parametrize(
    ("file_owner", "euid", "groups", "expected"),
    [
        (Identity(0, 0), 0, [0], 4243),  # root may give it to any group
        (Identity(1000, 1000), 1000, [1000, 4243], 4243),  # a member may
        (Identity(1000, 1000), 1000, [1000], None),  # a stranger may not
        (Identity(4242, 4242), 4242, [4242], None),  # the service's own user: no need
        (Identity(1000, 4243), 1000, [4243], None),  # already the spool's group
    ],
)
def test_group_to_give(file_owner: Identity, euid: int, groups: list[int],
                       expected: int | None) -> None:
    assert group_to_give(file_owner, SERVICE, euid=euid, groups=groups) == expected


def test_explanation_says_what_to_change() -> None:
    text = explain_unreadable(Identity(0, 0), stat.S_IFREG | 0o600, SERVICE, "job.json")
    group = group_name(SERVICE.gid)
    assert "with mode 0600" in text
    assert f"chgrp {group} job.json && chmod g+r job.json" in text
    assert "pacer submit" in text


def test_explanation_under_private_users_says_another_user() -> None:
    """With PrivateUsers= the daemon sees a member's file as owned by nobody (65534)."""
    text = explain_unreadable(Identity(65534, 65534), stat.S_IFREG | 0o600, SERVICE, "a.json")
    assert text.startswith("it is owned by another user (the service sees ")
    assert "with mode 0600" in text


def test_hand_over_sets_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    """As the spool's owner (any user): mode 0640, group untouched."""
    me = Identity(os.geteuid(), os.getegid())
    path = tmp_path / "job.json"
    old = os.umask(0o077)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    finally:
        os.umask(old)
    try:
        hand_over(fd, me)
    finally:
        os.close(fd)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == me.gid


# -- the real thing, as other users --------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv to act as other users")

MEMBER = 4244  # uid and own group of a member of the spool's group
STRANGER = 4245  # uid and own group of someone outside it


@dataclass
class SharedSpool:
    """A spool owned by SERVICE, as systemd's StateDirectory= makes it, with a config
    that other users can reach (pytest's tmp_path is root-only)."""

    root: Path
    config: Path
    jobs: Path

    @property
    def spool(self) -> Spool:
        return Spool(self.root / "spool")


@pytest.fixture
def shared() -> Iterator[SharedSpool]:
    base = Path(tempfile.mkdtemp(prefix="pacer-access-"))
    try:
        os.chmod(base, 0o755)
        spool = Spool(base / "spool")
        spool.ensure()
        for path in [spool.root, *(spool.folder(n) for n in ("incoming", "tmp"))]:
            os.chown(path, SERVICE.uid, SERVICE.gid)
        config = base / "pacer.toml"
        config.write_text('[spool]\ndir = "spool"\n\n[upstreams.default]\n'
                          'base_url = "http://127.0.0.1:9"\n')
        jobs = base / "jobs"
        jobs.mkdir(mode=0o755)
        (jobs / "job.json").write_text('{"url": "/v1/x", "body": {}}\n')
        os.chmod(jobs / "job.json", 0o644)
        yield SharedSpool(base, config, jobs)
    finally:
        shutil.rmtree(base)


def submit_as(shared: SharedSpool, uid: int, groups: list[int],
              *args: str) -> subprocess.CompletedProcess[str]:
    who = [] if uid == 0 else [
        "setpriv", f"--reuid={uid}", f"--regid={uid}",
        f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
    ]
    return subprocess.run(
        [*who, *pacer_command(), "submit", "--config", str(shared.config), *args],
        capture_output=True, text=True, timeout=30, cwd=shared.jobs,
        env=subprocess_env(HOME=str(shared.jobs)))


def incoming(shared: SharedSpool) -> list[os.stat_result]:
    folder = shared.spool.folder("incoming")
    return [os.stat(folder / name) for name in sorted(os.listdir(folder))]


def leftovers(shared: SharedSpool) -> list[str]:
    return os.listdir(shared.spool.folder("tmp"))


@needs_root
def test_root_hands_its_job_to_the_spool_group(shared: SharedSpool) -> None:
    old = os.umask(0o077)  # a strict umask must not make the job unreadable either
    try:
        done = submit_as(shared, 0, [], "job.json")
    finally:
        os.umask(old)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "job.json"
    [st] = incoming(shared)
    assert (st.st_uid, st.st_gid) == (0, SERVICE.gid)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert can_read(Identity(st.st_uid, st.st_gid), st.st_mode, SERVICE)


@needs_root
def test_a_group_member_hands_its_job_to_the_spool_group(shared: SharedSpool) -> None:
    done = submit_as(shared, MEMBER, [SERVICE.gid], "job.json")

    assert done.returncode == 0, done.stderr
    [st] = incoming(shared)
    assert (st.st_uid, st.st_gid) == (MEMBER, SERVICE.gid)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert leftovers(shared) == []


@needs_root
def test_a_stranger_is_refused_with_what_to_do(shared: SharedSpool) -> None:
    done = submit_as(shared, STRANGER, [], "job.json")

    assert done.returncode == 2
    assert done.stdout == ""
    assert "permission denied" in done.stderr
    assert f"members of the spool's group, {group_name(SERVICE.gid)}" in done.stderr
    assert "Traceback" not in done.stderr
    assert incoming(shared) == []


@needs_root
def test_a_job_the_service_could_not_read_is_refused_not_published(
        shared: SharedSpool) -> None:
    """incoming/ and tmp/ opened to everyone by mistake: a stranger can write there but
    cannot give the file to the spool's group, so the daemon could not read it."""
    os.chmod(shared.spool.root, 0o755)
    for name in ("incoming", "tmp"):
        os.chmod(shared.spool.folder(name), 0o1777)

    done = submit_as(shared, STRANGER, [], "job.json")

    assert done.returncode == 2
    assert done.stdout == ""
    assert "refused" in done.stderr and "could not read it" in done.stderr
    assert incoming(shared) == []
    assert leftovers(shared) == []


@needs_root
def test_the_daemon_says_what_to_change_about_a_file_dropped_by_hand(
        shared: SharedSpool) -> None:
    """The issue's case by hand: root copies a job into incoming/ as root:root 0600; the
    daemon, running as the service user, rejects it with an error file that names the fix."""
    for path in [shared.spool.root, *shared.spool.root.iterdir()]:
        os.chown(path, SERVICE.uid, SERVICE.gid)
    dropped = shared.spool.folder("incoming") / "dropped.json"
    dropped.write_text('{"url": "/v1/x", "body": {}}\n')
    os.chmod(dropped, 0o600)

    done = subprocess.run(
        ["setpriv", f"--reuid={SERVICE.uid}", f"--regid={SERVICE.gid}", "--clear-groups",
         *pacer_command(), "run", "--drain", "--config", str(shared.config)],
        capture_output=True, text=True, timeout=60, cwd=shared.jobs, env=subprocess_env())

    assert done.returncode == 0, done.stderr
    error = json.loads((shared.spool.folder("rejected") / "dropped.json.error.json").read_text())
    group = group_name(SERVICE.gid)
    assert error["code"] == "unreadable"
    assert "Permission denied" in error["message"]
    assert "owned by root:root with mode 0600" in error["message"]
    assert f"chgrp {group} dropped.json && chmod g+r dropped.json" in error["message"]


@needs_root
def test_a_stranger_outside_a_nested_spool_is_told_its_group(shared: SharedSpool) -> None:
    """An instance's spool sits inside the service's 0750 folder, out of a stranger's
    sight: the message still names the group to join (from the nearest visible folder)."""
    outer = shared.root / "outer"
    outer.mkdir(mode=0o750)
    os.chown(outer, SERVICE.uid, SERVICE.gid)
    nested = Spool(outer / "instance")
    nested.ensure()
    for path in [nested.root, *nested.root.iterdir()]:
        os.chown(path, SERVICE.uid, SERVICE.gid)
    shared.config.write_text(f'[spool]\ndir = "{nested.root}"\n\n[upstreams.default]\n'
                             'base_url = "http://127.0.0.1:9"\n')

    done = submit_as(shared, STRANGER, [], "job.json")

    assert done.returncode == 2
    assert f"members of the spool's group, {group_name(SERVICE.gid)}" in done.stderr
    assert os.listdir(nested.folder("incoming")) == []
