"""contrib/systemd: the unit files say what docs/deployment.md promises.

Unit files allow repeated keys, so they are read into lists per key. When ``systemd-analyze``
is on PATH, the units are also verified by systemd itself (with ExecStart pointed at an
executable that exists here); that part is skipped elsewhere.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.paths import REPO

CONTRIB = REPO / "contrib" / "systemd"
BOT_UNIT = CONTRIB / "botd@.service"
SERVER_UNIT = CONTRIB / "botd-server.service"
SHUTDOWN_BOUND_S = 5  # botd's whole shutdown ends within BOT_SHUTDOWN_TIMEOUT + this

Unit = dict[str, dict[str, list[str]]]

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
}


def parse_unit(path: Path) -> Unit:
    """Sections -> key -> every value given (systemd lets a key repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = unit.setdefault(m.group(1), defaultdict(list))
            continue
        assert section is not None, f"{path.name}: key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a key=value line: {line}"
        section[key.strip()].append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{section}.{key}: expected one value, got {values}"
    return values[0]


def environment(unit: Unit) -> dict[str, str]:
    return dict(v.split("=", 1) for v in unit["Service"].get("Environment", []))


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min)?", value)
    assert m, f"unexpected time span {value!r}"
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def test_bot_unit_notifies_and_drains() -> None:
    unit = parse_unit(BOT_UNIT)
    env = environment(unit)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    drain = int(env["BOT_SHUTDOWN_TIMEOUT"])
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > drain + SHUTDOWN_BOUND_S
    assert seconds(one(unit, "Service", "WatchdogSec")) > 0
    # sd_notify needs AF_UNIX, the server and ops endpoint need IP.
    families = one(unit, "Service", "RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)


def test_bot_unit_state_and_credentials() -> None:
    unit = parse_unit(BOT_UNIT)
    env = environment(unit)
    assert one(unit, "Service", "DynamicUser") == "yes"
    state = one(unit, "Service", "StateDirectory")
    assert state == "botd/%i"
    assert env["BOT_STATE_DIR"] == f"%S/{state}"
    cred_name, _, cred_path = one(unit, "Service", "LoadCredential").partition(":")
    assert cred_path.startswith("/")
    assert env["BOT_TOKEN_FILE"] == f"%d/{cred_name}"
    assert "BOT_TOKEN" not in env  # the secret never sits in the unit or the environment
    assert env["BOT_LOG_FORMAT"] == "json"
    assert env["BOT_ID"].endswith("%i")
    assert env["BOT_OPS_ADDR"] == "127.0.0.1:%i"


@pytest.mark.parametrize("path", [BOT_UNIT, SERVER_UNIT], ids=lambda p: p.name)
def test_restart_policy_and_hardening(path: Path) -> None:
    unit = parse_unit(path)
    assert one(unit, "Service", "Restart") == "on-failure"
    assert "78" in one(unit, "Service", "RestartPreventExitStatus").split()
    assert int(one(unit, "Unit", "StartLimitBurst")) > 0
    for key, value in HARDENING.items():
        assert one(unit, "Service", key) == value, key
    exec_start = one(unit, "Service", "ExecStart")
    assert exec_start.startswith("/"), "ExecStart needs an absolute path"
    assert not re.search(r"\b(sh|bash)\b", exec_start.split()[0]), "no shell wrapper"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_server_unit() -> None:
    unit = parse_unit(SERVER_UNIT)
    state = one(unit, "Service", "StateDirectory")
    assert f"--db %S/{state}/" in one(unit, "Service", "ExecStart")
    assert one(unit, "Service", "DynamicUser") == "yes"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    # Ordering: bots start after the server and, on shutdown, stop (drain) before it.
    assert "botd-server.service" in one(parse_unit(BOT_UNIT), "Unit", "After").split()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # Debian's systemd package; noxfile.py installs it when it is missing.
    assert shutil.which("systemd-analyze"), "systemd-analyze is not on PATH: install systemd"
    for path in (BOT_UNIT, SERVER_UNIT):
        text = path.read_text().replace("/opt/botd/bin/botd", sys.executable)
        (tmp_path / path.name).write_text(text)
    proc = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(tmp_path / "botd@9317.service"),
            str(tmp_path / "botd-server.service"),
        ],
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # systemd-analyze exits 0 on unknown keys and bad values; it only warns on stderr.
    ours = [line for line in proc.stderr.splitlines() if "botd" in line]
    assert proc.returncode == 0, proc.stderr
    assert ours == [], "\n".join(ours)
