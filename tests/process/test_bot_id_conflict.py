"""Two ``botd run`` with the same BOT_ID, beside a real ``botd server``: each one's session is
taken by the other's registration. The server says who holds the id; each bot logs one ERROR
``bot_id_conflict`` that names the other process, and backs off instead of re-registering
several times a second. Real processes, the default heartbeat interval.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.procs import Procs, bot_env, free_ports, server_up, wait_for

pytestmark = pytest.mark.slow


def test_two_bots_with_one_bot_id_name_each_other(procs: Procs, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    server = procs.server("server", port, tmp_path / "jobs.db", lease_ttl=30.0, heartbeat=5.0)
    wait_for("the server", lambda: server_up(url), (server,))
    # The defaults that matter here: a heartbeat every 5 s, backoff from 1 s to 60 s.
    defaults = {"HEARTBEAT_INTERVAL_MS": "5000", "RETRY_BASE_DELAY": "1", "RETRY_MAX_DELAY": "60",
                "BOT_ERROR_TIMEOUT": "60"}  # fmt: skip
    first = procs.bot("first", bot_env("twin", url, None, None, **defaults))
    wait_for("the first bot to register", lambda: first.events("registered") or None, (first,))
    second = procs.bot("second", bot_env("twin", url, None, None, **defaults))
    started = time.monotonic()

    def conflict_named() -> list[tuple[str, int, int]] | None:
        found = [
            (bot.name, bot.pid, event["holder_pid"])
            for bot in (first, second)
            for event in bot.events("bot_id_conflict")
        ]
        return found or None

    found = wait_for("a bot_id_conflict", conflict_named, (first, second), timeout=10.0)
    assert time.monotonic() - started <= 10.0
    for name, pid, holder_pid in found:
        other = second if name == "first" else first
        assert holder_pid == other.pid != pid
    [event] = first.events("bot_id_conflict") or second.events("bot_id_conflict")
    assert event["level"] == "ERROR"
    assert "BOT_ID" in event["msg"] and str(event["holder_pid"]) in event["msg"]
    # Both keep going, backing off, and say it once per other process, not once per loss.
    wait_for(
        "both to lose a session to the other",
        lambda: all(len(bot.events("registered")) >= 2 for bot in (first, second)) or None,
        (first, second),
    )
    assert all(len(bot.events("bot_id_conflict")) == 1 for bot in (first, second))
    assert first.alive() and second.alive()
