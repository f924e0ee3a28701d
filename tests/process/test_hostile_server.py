"""Issue 12, checked from outside with real ``botd run`` processes:

- a python-handler job returning a 2 MiB result ends ``failed`` with ``result_too_large``
  within 15 s, and a later job succeeds; with ``BOT_STATE_DIR`` too;
- a result the bot lets through but the server refuses (413): the job ends ``failed`` with
  ``result_refused``, the result is sent a bounded number of times (the audit saw 1,049
  uploads in 19 s), and a restarted bot on the same state dir does not resume a loop;
- a server handing out ``timeout_s: -5``, a claim answer trickled a byte every 2 s, or 5,000
  jobs for 1: the bot stays up, logs a clear error, and finishes later jobs
  (``tests/support/hostile_server.py``, h11 on raw trio sockets in the test's own run).

Real time with short intervals and generous deadlines.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.support.hostile_server import hostile_server
from tests.support.paths import REPO
from tests.support.procs import Proc, Procs, await_for, bot_env, free_ports, server_up, wait_for

pytestmark = pytest.mark.slow

TWO_MIB = 2 * 1024 * 1024


def python_bot(
    procs: Procs, url: str, state_dir: Path | None, name: str = "bot", **extra: str
) -> Proc:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = bot_env("py-bot", url, state_dir, None, BOT_HANDLER="python",
                  BOT_PYTHON_HANDLER="tests.support.jobs:sized", PYTHONPATH=path,
                  **extra)  # fmt: skip
    return procs.bot(name, env)


def submit(url: str, payload: Any) -> str:
    resp = httpx.post(f"{url}/v1/jobs", json={"kind": "test", "payload": payload}, timeout=5)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["job_id"])


def ended(url: str, job_id: str) -> dict[str, Any] | None:
    try:
        view = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    return view if view["status"] in ("succeeded", "failed", "dead") else None


def start_server(procs: Procs, tmp_path: Path) -> tuple[Proc, str]:
    (port,) = free_ports(1)
    server = procs.server("server", port, tmp_path / "jobs.db", lease_ttl=5.0)
    url = f"http://127.0.0.1:{port}"
    wait_for("the server to answer", lambda: server_up(url), (server,))
    return server, url


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "state_dir"])
def test_a_2_mib_result_fails_its_job_as_too_large_and_the_next_job_succeeds(
    procs: Procs, tmp_path: Path, durable: bool
) -> None:
    server, url = start_server(procs, tmp_path)
    bot = python_bot(procs, url, tmp_path / "state" if durable else None)
    began = time.monotonic()
    big = submit(url, {"bytes": TWO_MIB})
    view = wait_for("the big job to end", lambda: ended(url, big), (server, bot), timeout=15)
    assert time.monotonic() - began < 15
    assert view["status"] == "failed", view
    assert view["error"]["type"] == "result_too_large" and not view["error"]["retryable"]
    assert f"{TWO_MIB + 11} bytes" in view["error"]["message"]  # {"blob":"..."}
    small = submit(url, {})
    view = wait_for("the next job to succeed", lambda: ended(url, small), (server, bot))
    assert view["status"] == "succeeded" and view["result"] == {"ok": small}
    assert bot.alive()
    assert not bot.events("result_refused")  # the server never saw the big result


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "state_dir"])
def test_a_result_the_server_refuses_is_final_and_never_loops(
    procs: Procs, tmp_path: Path, durable: bool
) -> None:
    """The bot lets 8 MiB through; the server takes 1 MiB: 413, and then never again."""
    server, url = start_server(procs, tmp_path)
    state = tmp_path / "state" if durable else None
    bot = python_bot(procs, url, state, BOT_RESULT_MAX_BYTES=str(8 * 1024 * 1024))
    big = submit(url, {"bytes": TWO_MIB})
    view = wait_for("the big job to end", lambda: ended(url, big), (server, bot), timeout=15)
    assert view["status"] == "failed", view
    assert view["error"]["type"] == "result_refused", view
    assert "413 payload_too_large" in view["error"]["message"]
    time.sleep(2)  # a loop would show by now
    refused = bot.events("result_refused")
    assert [(r["http_status"], r["action"]) for r in refused] == [(413, "replaced")], refused
    assert refused[0]["level"] == "ERROR"
    assert len(bot.events("claim_failed")) + len(bot.events("ack_failed")) <= 3
    if durable:  # a restart on the same state dir resumes nothing
        bot.kill()
        bot = python_bot(procs, url, state, name="bot")
    small = submit(url, {})
    view = wait_for("the next job to succeed", lambda: ended(url, small), (server, bot))
    assert view["status"] == "succeeded"
    assert len(bot.events("result_refused")) == 1  # the restart appended to the same log


def simulate_bot(procs: Procs, url: str) -> Proc:
    return procs.bot("bot", bot_env("hostile-bot", url, None, None, PROCESSING_DURATION_MS="20"))


async def test_a_server_handing_out_timeout_s_minus_5_fails_that_job_only(procs: Procs) -> None:
    async with hostile_server() as server:
        bad = server.queue(kind="simulate", timeout_s=-5)
        bot = simulate_bot(procs, server.url)
        ack = await await_for("the bad job's ack", _ack(server, bad), (bot,))
        assert ack["outcome"] == "failed"
        assert (ack["error"]["type"], ack["error"]["retryable"]) == ("invalid_job", False)
        assert "timeout_s -5" in ack["error"]["message"]
        good = server.queue(kind="simulate")
        ack = await await_for("the next job's ack", _ack(server, good), (bot,))
        assert ack["outcome"] == "succeeded"
        assert bot.alive()
        (line,) = [x for x in bot.events("job_failed") if x["job_id"] == bad]
        assert line["error_type"] == "invalid_job"


async def test_a_trickled_claim_answer_is_cut_at_its_deadline(procs: Procs) -> None:
    async with hostile_server(claim_answers=["trickle"], trickle_s=2.0) as server:
        server.queue(kind="simulate")  # in the trickled answer: the bot never gets it whole
        bot = simulate_bot(procs, server.url)
        began = trio.current_time()
        failed = await await_for("the trickled claim to fail", _event(bot, "claim_failed"), (bot,))
        # bot_env: connect 1 + request 2 + wait_s 1 + margin 1.
        assert "no whole answer within 5s" in failed["error"], failed
        assert trio.current_time() - began < 15
        good = server.queue(kind="simulate")
        ack = await await_for("a later job's ack", _ack(server, good), (bot,))
        assert ack["outcome"] == "succeeded" and bot.alive()


async def test_5000_jobs_for_1_asked_is_a_protocol_error_and_none_of_them_runs(
    procs: Procs,
) -> None:
    async with hostile_server(claim_answers=["too_many"]) as server:
        bot = simulate_bot(procs, server.url)
        failed = await await_for("the claim to fail", _event(bot, "claim_failed"), (bot,))
        assert failed["error_type"] == "ProtocolError"
        assert "5001 jobs for max_jobs=1" in failed["error"]
        good = server.queue(kind="simulate")
        ack = await await_for("a later job's ack", _ack(server, good), (bot,))
        assert ack["outcome"] == "succeeded" and bot.alive()
        # None of the 5,001 was run, released, or listed: the outbox never held them.
        assert not {a["lease_id"] for a in server.acks} & server.extra_leases
        assert not server.listed & server.extra_leases
        assert not bot.events("job_started") or all(
            x["job_id"] == good for x in bot.events("job_started")
        )


def _ack(server: Any, job_id: str) -> Any:
    async def check() -> dict[str, Any] | None:
        return server.ack_of(job_id)  # type: ignore[no-any-return]

    return check


def _event(bot: Proc, event: str) -> Any:
    async def check() -> dict[str, Any] | None:
        found = bot.events(event)
        return found[0] if found else None

    return check
