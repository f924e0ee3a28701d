"""Ephemeral bots from outside: a real ``botd run --once`` against a real ``botd server``.

The server holds a ``render`` job and then a ``simulate`` job. A default bot (the simulate
handler, no BOT_KINDS) started with ``--once`` claims the ``simulate`` one, runs it, reports
its result, deregisters and exits 0; the ``render`` job is still queued, never leased. Its
environment also has a typo, ``BOT_CONCURENCY``: one ``unknown_setting`` warning names the
right variable, and the bot starts all the same.

Real time with short intervals and generous deadlines.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.process.test_durability import job, submit
from tests.support.procs import Procs, bot_env, free_ports, server_up, wait_for

pytestmark = pytest.mark.slow


def test_once_runs_one_simulate_job_leaves_render_queued_and_exits_0(
    tmp_path: Path, procs: Procs
) -> None:
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    server = procs.server("server", port, tmp_path / "server.db", lease_ttl=10.0)
    wait_for("the server to answer", lambda: server_up(url), (server,))
    render = submit(url, {"n": 1}, kind="render")
    simulate = submit(url, {"n": 1}, kind="simulate")

    env = bot_env("once", url, tmp_path / "state", None, BOT_CONCURENCY="2")
    bot = procs.spawn("bot", ["run", "--once"], env)
    assert bot.wait(timeout=30) == 0, bot.tail()

    view = job(url, simulate)
    assert (view["status"], view["attempts"]) == ("succeeded", 1), view
    view = job(url, render)
    assert (view["status"], view["attempts"]) == ("queued", 0), view  # never claimed
    assert httpx.get(f"{url}/v1/bots/once", timeout=5).json()["status"] == "deregistered"
    assert bot.events("once_done") and bot.events("deregistered"), bot.tail()
    [done] = bot.events("shutdown_complete")
    assert (done["exit_code"], done["outbox_pending"]) == (0, 0)
    [warning] = bot.events("unknown_setting")
    assert (warning["variable"], warning["suggestion"]) == ("BOT_CONCURENCY", "BOT_CONCURRENCY")
    assert warning["level"] == "WARNING"
