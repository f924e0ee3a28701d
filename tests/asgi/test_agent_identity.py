"""The bot's side of identity, against the real server app with a tokens file (on
``autojump_clock``, or real time where a state dir's files are read in threads): its session
calls go with the session token, a live bot id is not taken (bot_id_in_use: one ERROR, then
registrations with backoff, never an exit), and a restarted bot with its state dir proves
continuity at once.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.applications import Starlette

from botd.agent import Agent
from botd.config import load_config
from botd.lifecycle import State
from botd.models import ClaimedJob
from botd.server.app import core_of, create_app
from botd.server.auth import TokenEntry, Tokens
from botd.server.store import SqliteStore
from botd.session_file import SESSION_FILE
from botd.wiring import open_agent
from tests.support.logcapture import captured_logs, events_of

WORKER = "worker-token-0123456789ab"
PRODUCER = "producer-token-0123456789"
TOKENS = Tokens((TokenEntry("worker", WORKER, "fleet"), TokenEntry("producer", PRODUCER)))


async def handler(job: ClaimedJob) -> Any:
    await trio.sleep(0.1)
    return {"ok": job.job_id}


@asynccontextmanager
async def server(
    lease_ttl_s: float = 10.0,
) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    store = SqliteStore(":memory:")
    app = create_app(store, tokens=TOKENS, lease_ttl_s=lease_ttl_s, heartbeat_interval_s=1.0)
    await store.open(lease_ttl_s=lease_ttl_s)
    headers = {"Authorization": f"Bearer {PRODUCER}"}
    async with (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://server", headers=headers
        ) as producer,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(core_of(app).run_timers)
        yield app, producer
        core_of(app).close()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def agent(
    app: Starlette, *, pid: int, state_dir: Path | None = None
) -> AsyncIterator[tuple[Agent, list[int]]]:
    """A bot with the worker token, run in the block; on the way out it is cancelled (as a
    SIGKILL would stop it: no drain, no deregistration)."""
    overrides: dict[str, Any] = {
        "bot_id": "bot-a",
        "token": WORKER,
        "ops_addr": "off",
        "retry_base_delay": 0.5,
        "retry_max_delay": 5.0,
        "heartbeat_interval_ms": 1000,
        "health_interval": 1.0,
        "claim_wait": 2.0,
        "max_startup_attempts": 3,
    }
    if state_dir is not None:
        overrides["state_dir"] = str(state_dir)
    config = load_config(env={}, overrides=overrides)
    transport = httpx.ASGITransport(app=app)
    exit_code: list[int] = []
    async with (
        open_agent(config, transport=transport, handler=handler, rng=random.Random(3)) as bot,
        trio.open_nursery() as nursery,
    ):
        bot.registrar.pid = pid  # two bots in one process: tell them apart

        async def run() -> None:
            exit_code.append(await bot.run())

        nursery.start_soon(run)
        yield bot, exit_code
        nursery.cancel_scope.cancel()


async def wait_ready(bot: Agent) -> None:
    with trio.fail_after(60):
        await bot.lifecycle.wait_for(State.READY, State.PROCESSING)


async def run_a_job(producer: httpx.AsyncClient) -> None:
    job = (await producer.post("/v1/jobs", json={"kind": "simulate"})).json()
    with trio.fail_after(60):
        while (await producer.get(f"/v1/jobs/{job['job_id']}")).json()["status"] != "succeeded":
            await trio.sleep(0.2)


async def test_a_worker_bot_works_with_its_session_token(autojump_clock: Any) -> None:
    # The worker token may only register: heartbeats, claims and acks go with the session
    # token, or the bot could not get ready nor finish a job.
    async with server() as (_app, producer), agent(_app, pid=101) as (bot, exit_code):
        await wait_ready(bot)
        await run_a_job(producer)
        assert bot.client.session_token
        assert bot.client.session_token not in repr(bot.client)
        assert "session_id" not in bot.status_document()
        assert exit_code == []


async def test_a_second_bot_with_a_live_bot_id_waits_and_takes_nothing(
    autojump_clock: Any,
) -> None:
    with captured_logs() as records:
        async with server() as (app, producer), agent(app, pid=101) as (first, _):
            await wait_ready(first)
            async with agent(app, pid=202) as (second, second_exit):
                await trio.sleep(60)  # far past MAX_STARTUP_ATTEMPTS=3 registrations
                assert second.lifecycle.state is State.REGISTERING
                assert second_exit == []  # it never exits: the holder may go away
                assert second.registrar.attempts >= 3
                assert second.registrar.attempts < 40  # backed off, not a loop
                await run_a_job(producer)  # the first bot still holds its session
                assert first.lifecycle.state in (State.READY, State.PROCESSING)
                conflicts = events_of(records, "bot_id_conflict")
                assert [(c["level"], c["holder_pid"]) for c in conflicts] == [("ERROR", 101)]
                assert "101" in conflicts[0]["msg"]
                first.request_shutdown()  # it deregisters: the id is free
                await wait_ready(second)
                await run_a_job(producer)
    failures = events_of(records, "registration_failed")
    assert failures and all(f["level"] == "WARNING" for f in failures)


async def test_a_restarted_bot_with_its_state_dir_registers_at_once(tmp_path: Path) -> None:
    # Real time: the state dir's files are read and written in worker threads, during
    # which autojump_clock would jump over the bots' deadlines.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    async with server(lease_ttl_s=60.0) as (app, producer):
        async with agent(app, pid=101, state_dir=state) as (first, _):
            await wait_ready(first)
            token = first.client.session_token
        # Killed: no deregistration; its session is alive for gone_after (60 s).
        kept = state / SESSION_FILE
        assert os.stat(kept).st_mode & 0o777 == 0o600
        assert token is not None and token in kept.read_text()
        with captured_logs() as records:
            async with (
                agent(app, pid=102, state_dir=state) as (again, _),
                agent(app, pid=103, state_dir=tmp_path / "elsewhere") as (stranger, _),
            ):
                await wait_ready(again)
                assert again.registrar.attempts == 1  # at once: its first register was taken
                await run_a_job(producer)
                assert stranger.lifecycle.state is State.REGISTERING
                assert again.client.session_token != token
        assert token not in str(records)
        assert again.client.session_token not in str(records)


async def test_a_symlinked_session_file_is_not_followed(tmp_path: Path) -> None:  # real time
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("precious")
    (state / SESSION_FILE).symlink_to(target)
    with captured_logs() as records:
        async with server() as (app, _), agent(app, pid=101, state_dir=state) as (bot, _):
            await wait_ready(bot)
    assert target.read_text() == "precious"
    assert not (state / SESSION_FILE).is_symlink()  # replaced by a file of its own
    assert events_of(records, "session_file_failed")


async def test_a_call_of_an_older_session_goes_with_that_sessions_token(
    autojump_clock: Any,
) -> None:
    # The results reporter may still claim (acks only) on the old session while the bot
    # registers a new one: that claim must answer 409 session_superseded (register again),
    # not 403 not_session_owner (exit 78), so it goes with the old session's token.
    from botd.client import ServerClient
    from botd.errors import SessionSuperseded
    from botd.models import ClaimRequest, RegisterRequest

    async with server() as (app, _):
        transport = httpx.ASGITransport(app=app)
        async with ServerClient("http://server", token=WORKER, transport=transport) as client:
            first = await client.register(RegisterRequest(bot_id="bot-a"))
            client.use_session(first.session_id, first.session_token)
            second = await client.register(
                RegisterRequest(bot_id="bot-a", previous_session_token=first.session_token)
            )
            client.use_session(second.session_id, second.session_token)
            old = ClaimRequest(bot_id="bot-a", session_id=first.session_id, max_jobs=0)
            with pytest.raises(SessionSuperseded):
                await client.claim(old)
            new = ClaimRequest(bot_id="bot-a", session_id=second.session_id, max_jobs=0)
            assert (await client.claim(new)).jobs == []
