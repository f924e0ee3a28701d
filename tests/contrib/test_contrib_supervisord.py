"""contrib/supervisord: parsed by supervisord's own config loader, with paths in a temp dir.

The process-level scenarios (drain on stop, restart after SIGKILL, FATAL on bad config) live
with the daemon's real-process tests; this checks the values and how they relate.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartWhenExitUnexpected
from supervisor.options import ServerOptions

from tests.support.paths import REPO

CONTRIB = REPO / "contrib" / "supervisord"
BOTS = CONTRIB / "botd.conf"
SERVER = CONTRIB / "reference-server.conf"
SHUTDOWN_BOUND_S = 5  # botd's whole shutdown ends within BOT_SHUTDOWN_TIMEOUT + this


def write_main_config(root: Path, *includes: Path) -> Path:
    """A minimal supervisord.conf under ``root`` that includes the contrib files."""
    (root / "log").mkdir(exist_ok=True)
    (root / "state").mkdir(exist_ok=True)
    main = root / "supervisord.conf"
    main.write_text(
        "[supervisord]\n"
        f"logfile={root / 'log' / 'supervisord.log'}\n"
        f"pidfile={root / 'supervisord.pid'}\n"
        "[include]\n"
        f"files = {' '.join(str(p) for p in includes)}\n"
    )
    return main


def contrib_env(root: Path, botd_bin: str = "/opt/botd/bin/botd") -> dict[str, str]:
    """The supervisord environment the contrib files expect, pointing into ``root``."""
    return {
        "BOTD_BIN": botd_bin,
        "BOTD_STATE_ROOT": str(root / "state"),
        "BOTD_LOG_DIR": str(root / "log"),
    }


@pytest.fixture
def groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for key, value in contrib_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    options = ServerOptions()
    options.realize(args=["-c", str(write_main_config(tmp_path, BOTS, SERVER))])
    return {g.name: g for g in options.process_group_configs}


def test_bots_are_numbered_processes(groups: dict[str, Any], tmp_path: Path) -> None:
    procs = groups["botd"].process_configs
    assert [p.name for p in procs] == ["botd-00", "botd-01"]
    ids = [p.environment["BOT_ID"] for p in procs]
    ports = [p.environment["BOT_OPS_ADDR"] for p in procs]
    dirs = [p.environment["BOT_STATE_DIR"] for p in procs]
    assert ids == ["botd-00", "botd-01"]
    assert ports == ["127.0.0.1:9300", "127.0.0.1:9301"]
    assert dirs == [str(tmp_path / "state" / i) for i in ids]
    for p in procs:
        assert p.command == "/opt/botd/bin/botd run"
        assert p.environment["BOT_LOG_FORMAT"] == "json"


def test_stop_drains_instead_of_killing(groups: dict[str, Any]) -> None:
    for p in groups["botd"].process_configs:
        drain = int(p.environment["BOT_SHUTDOWN_TIMEOUT"])
        assert p.stopsignal == signal.SIGTERM
        assert p.stopwaitsecs > drain + SHUTDOWN_BOUND_S
        assert p.stopasgroup
        assert p.killasgroup


def test_restart_policy(groups: dict[str, Any]) -> None:
    for group in ("botd", "botd-server"):
        for p in groups[group].process_configs:
            assert p.autorestart is RestartWhenExitUnexpected
            assert p.exitcodes == [0]
            # Bad config (exit 78) is over in about a second: inside startsecs, so it is a
            # failed start, and FATAL follows after startretries quick back-offs (1+2+3 s).
            assert 2 <= p.startsecs <= 10
            assert 1 <= p.startretries <= 5


def test_logs_go_to_rotated_files_in_the_log_dir(groups: dict[str, Any], tmp_path: Path) -> None:
    for group in ("botd", "botd-server"):
        for p in groups[group].process_configs:
            assert p.stdout_logfile == str(tmp_path / "log" / f"{p.name}.log")
            assert p.stdout_logfile_maxbytes > 0
            assert p.stdout_logfile_backups > 0
            assert not p.redirect_stderr  # the stdout file stays pure JSON


def test_server_starts_first_and_stops_last(groups: dict[str, Any], tmp_path: Path) -> None:
    assert groups["botd-server"].priority < groups["botd"].priority
    (server,) = groups["botd-server"].process_configs
    db = tmp_path / "state" / "server.sqlite3"
    assert server.command == f"/opt/botd/bin/botd server --host 127.0.0.1 --port 3001 --db {db}"
    assert server.stopsignal == signal.SIGTERM


@pytest.mark.parametrize("path", [BOTS, SERVER], ids=lambda p: p.name)
def test_every_policy_value_is_explained(path: Path) -> None:
    """Each key that decides stop/restart behaviour sits under a comment saying why."""
    keys = {
        "command",
        "numprocs",
        "stopsignal",
        "stopwaitsecs",
        "stopasgroup",
        "killasgroup",
        "autorestart",
        "exitcodes",
        "startsecs",
        "startretries",
        "priority",
        "stdout_logfile",
    }
    lines = path.read_text().splitlines()
    found = set()
    for i, line in enumerate(lines):
        key = re.match(r"(\w+)=", line)
        if not key or key.group(1) not in keys:
            continue
        found.add(key.group(1))
        j = i - 1
        while j >= 0 and re.match(r"\w+=", lines[j]):  # a group of keys shares one comment
            j -= 1
        assert j >= 0, f"{path.name}: {key.group(1)} has no comment above it"
        assert lines[j].startswith(";"), f"{path.name}: {key.group(1)} has no comment above it"
    assert found == keys
