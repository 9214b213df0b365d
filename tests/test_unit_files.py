"""systemd/pacer.service and systemd/pacer@.service: verified, hardened, consistent.

``systemd-analyze verify`` exits 0 even on unknown keys and bad values, so the tests
read its stderr, which must stay empty. It also checks that every Exec*= program exists:
/opt/pacer/bin/pacer does not exist on a test machine, so the units are verified as
copies in tmp_path whose ExecStart= program (and only that) points at an existing
executable. Each systemd-analyze call takes a few hundredths of a second.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT_DIR = Path(__file__).resolve().parent.parent / "systemd"
MAIN = UNIT_DIR / "pacer.service"
TEMPLATE = UNIT_DIR / "pacer@.service"
INSTANCE = "pacer@demo.service"

PRODUCT_EXEC = "/opt/pacer/bin/pacer"
DRAIN_DEADLINE_S = 30  # pacer's drain on SIGTERM; TimeoutStopSec= must leave room after it
MAX_EXPOSURE = 2.0

Entries = list[tuple[str, str, str]]  # (section, key, value), in file order


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def _parse(text: str) -> Entries:
    """The unit's assignments; repeated keys stay separate entries, as systemd reads them."""
    entries: Entries = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def _values(entries: Entries, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def _one(entries: Entries, key: str, section: str = "Service") -> str:
    values = _values(entries, key, section)
    assert len(values) == 1, f"{key}= set {len(values)} times: {values}"
    return values[0]


def _seconds(timespan: str) -> float:
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", timespan):
        total += float(number) * units[unit]
    return total


def _copy_with_existing_exec(unit: Path, dest_dir: Path) -> Path:
    """Copy ``unit`` into ``dest_dir``, ExecStart='s program swapped for an existing one."""
    stand_in = shutil.which("true") or sys.executable
    original = unit.read_text()
    lines = original.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.startswith(f"ExecStart={PRODUCT_EXEC} ")]
    assert len(hits) == 1, f"expected one ExecStart={PRODUCT_EXEC} line in {unit.name}"
    lines[hits[0]] = lines[hits[0]].replace(PRODUCT_EXEC, stand_in, 1)
    copy = dest_dir / unit.name
    copy.write_text("".join(lines))
    changed = [
        (a, b)
        for a, b in zip(original.splitlines(), copy.read_text().splitlines(), strict=True)
        if a != b
    ]
    assert len(changed) == 1 and changed[0][0].startswith("ExecStart=")
    return copy


def _exposure(unit_path: Path) -> float:
    result = _run("security", "--offline=true", "--no-pager", str(unit_path))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match is not None, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def main_entries() -> Entries:
    return _parse(MAIN.read_text())


@pytest.fixture(scope="module")
def template_entries() -> Entries:
    return _parse(TEMPLATE.read_text())


# -- systemd-analyze ------------------------------------------------------------------


def test_verify_main_unit_is_silent(tmp_path: Path) -> None:
    copy = _copy_with_existing_exec(MAIN, tmp_path)
    result = _run("verify", "--no-pager", str(copy))
    assert result.stderr == ""
    assert result.returncode == 0


def test_verify_template_instance_is_silent(tmp_path: Path) -> None:
    _copy_with_existing_exec(TEMPLATE, tmp_path)
    result = _run("verify", "--no-pager", str(tmp_path / INSTANCE))
    assert result.stderr == ""
    assert result.returncode == 0


def test_verify_catches_a_bad_key(tmp_path: Path) -> None:
    """Guards the test itself: a typo must show on stderr (the exit code stays 0)."""
    copy = _copy_with_existing_exec(MAIN, tmp_path)
    copy.write_text(re.sub(r"^UMask=", "UMaks=", copy.read_text(), count=1, flags=re.M))
    result = _run("verify", "--no-pager", str(copy))
    assert "UMaks" in result.stderr


def test_main_unit_exposure(tmp_path: Path) -> None:
    assert _exposure(MAIN) <= MAX_EXPOSURE


def test_template_instance_exposure(tmp_path: Path) -> None:
    shutil.copy(TEMPLATE, tmp_path / TEMPLATE.name)
    assert _exposure(tmp_path / INSTANCE) <= MAX_EXPOSURE


# -- what the daemon relies on ----------------------------------------------------------

COMMON = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "WatchdogSec": "30",
    "User": "pacer",
    "Group": "pacer",
    "StateDirectoryMode": "0750",
    "UMask": "0027",
    "ProtectSystem": "strict",
    "NoNewPrivileges": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictSUIDSGID": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
}


def test_main_unit_settings(main_entries: Entries) -> None:
    for key, value in COMMON.items():
        assert _one(main_entries, key) == value, key
    assert _one(main_entries, "ExecStart") == (f"{PRODUCT_EXEC} run --config /etc/pacer/pacer.toml")
    assert _one(main_entries, "StateDirectory") == "pacer"
    assert _one(main_entries, "LoadCredential") == "api-key:/etc/pacer/api-key"


def test_template_settings(template_entries: Entries) -> None:
    for key, value in COMMON.items():
        assert _one(template_entries, key) == value, key
    assert _one(template_entries, "ExecStart") == (
        f"{PRODUCT_EXEC} run --config /etc/pacer/%i.toml"
    )
    assert _one(template_entries, "StateDirectory") == "pacer/%i"
    assert _one(template_entries, "LoadCredential") == "api-key:/etc/pacer/%i.api-key"


@pytest.mark.parametrize("unit", [MAIN, TEMPLATE], ids=lambda p: p.name)
def test_stop_timeout_covers_the_drain(unit: Path) -> None:
    timeout = _seconds(_one(_parse(unit.read_text()), "TimeoutStopSec"))
    assert timeout >= DRAIN_DEADLINE_S + 10  # room to cancel, flush results and exit


@pytest.mark.parametrize("unit", [MAIN, TEMPLATE], ids=lambda p: p.name)
def test_no_setting_that_breaks_the_product(unit: Path) -> None:
    entries = _parse(unit.read_text())
    keys = {k for _, k, _ in entries}
    # DynamicUser= would put the spool under /var/lib/private, out of submitters' reach.
    assert "DynamicUser" not in keys
    # The upstream APIs are remote: denying all IP traffic would cut pacer off.
    assert "PrivateNetwork" not in keys
    assert "any" not in " ".join(_values(entries, "IPAddressDeny"))
    # systemd 252 does not know Type=notify-reload.
    assert _one(entries, "Type") == "notify"


def test_template_has_the_same_hardening(main_entries: Entries, template_entries: Entries) -> None:
    instance_specific = {
        "Description",
        "StateDirectory",
        "ExecStartPre",
        "ExecStart",
        "LoadCredential",
        "SyslogIdentifier",
    }

    def shared(entries: Entries) -> Entries:
        return [e for e in entries if e[1] not in instance_specific]

    assert shared(template_entries) == shared(main_entries)


@pytest.mark.parametrize(
    ("unit", "state_dir"), [(MAIN, "%S/pacer"), (TEMPLATE, "%S/pacer/%i")], ids=["main", "template"]
)
def test_submitters_get_a_sticky_group_writable_incoming(unit: Path, state_dir: str) -> None:
    pre = _values(_parse(unit.read_text()), "ExecStartPre")
    spool_in = f"{state_dir}/incoming {state_dir}/tmp"
    assert pre == [f"/bin/mkdir -p {spool_in}", f"/bin/chmod 1770 {spool_in}"]
