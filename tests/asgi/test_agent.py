"""The daemon against the real reference server app, broken on command, on a virtual clock.

Every test runs on ``autojump_clock``: minutes of backoff take milliseconds, nothing sleeps
in real time. The server is the real Starlette app reached through ``httpx.ASGITransport``,
wrapped in :class:`FaultyTransport` so a test can take it down, slow it or make it lie.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio

from botd.agent import Agent
from botd.breaker import BreakerState
from botd.config import load_config
from botd.exit_codes import ExitCode
from botd.lifecycle import State
from botd.models import ClaimedJob
from botd.server.app import core_of, create_app
from botd.server.store import SqliteStore
from botd.wiring import open_agent
from tests.support.faults import FaultyTransport
from tests.support.logcapture import captured_logs, events_of


@attrs.define
class Env:
    agent: Agent
    transport: FaultyTransport
    http: httpx.AsyncClient
    nursery: trio.Nursery
    exit_code: list[int]

    async def submit(self, n: int = 1, **job: Any) -> list[str]:
        ids = []
        for i in range(n):
            body = {"kind": "test", "payload": {"i": i}, **job}
            r = await self.http.post("/v1/jobs", json=body)
            assert r.status_code == 201, r.text
            ids.append(r.json()["job_id"])
        return ids

    async def job(self, job_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def wait_final(self, ids: list[str], timeout: float = 600) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while True:
                jobs = [await self.job(i) for i in ids]
                if all(j["status"] in ("succeeded", "failed", "dead", "cancelled") for j in jobs):
                    return jobs
                await trio.sleep(0.5)

    def states(self) -> list[str]:
        return [t.to_state.value for t in self.agent.lifecycle.history]

    async def wait_state(self, *states: State, timeout: float = 600) -> None:
        with trio.fail_after(timeout):
            await self.agent.lifecycle.wait_for(*states)


class Recorder:
    """A handler that records what it ran; a payload can ask it to sleep."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, int]] = []

    async def __call__(self, job: ClaimedJob) -> Any:
        self.runs.append((job.job_id, job.attempt))
        await trio.sleep(float((job.payload or {}).get("sleep", 0.1)))
        return {"ok": job.job_id}


@asynccontextmanager
async def bot(
    *,
    lease_ttl: float = 30.0,
    handler: Any = None,
    start: bool = True,
    configured_handler: bool = False,
    **settings: Any,
) -> AsyncIterator[Env]:
    """A bot on the real server app; its handler is a :class:`Recorder` unless given, or
    (``configured_handler``) the one its config names, as ``botd run`` builds it."""
    base: dict[str, Any] = {
        "bot_id": "bot-1",
        "ops_addr": "off",
        "retry_base_delay": 0.5,
        "retry_max_delay": 10.0,
        "heartbeat_interval_ms": 1000,
        "health_interval": 1.0,
        "claim_wait": 5.0,
        "shutdown_timeout": 10.0,
        "max_startup_attempts": 1000,
    }
    base.update(settings)
    config = load_config(env={}, overrides=base)
    store = SqliteStore(":memory:")
    app = create_app(store, lease_ttl_s=lease_ttl, heartbeat_interval_s=1.0)
    transport = FaultyTransport(httpx.ASGITransport(app=app), hang_timeout=config.request_timeout)
    await store.open(lease_ttl_s=lease_ttl)
    exit_code: list[int] = []
    async with (
        open_agent(
            config,
            transport=transport,
            handler=None if configured_handler else handler or Recorder(),
            rng=random.Random(7),
        ) as agent,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server") as http,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(core_of(app).run_timers)
        env = Env(agent, transport, http, nursery, exit_code)

        async def run_agent() -> None:
            exit_code.append(await agent.run())

        if start:
            nursery.start_soon(run_agent)
        yield env
        if start:
            agent.request_shutdown()
            with trio.fail_after(60):
                while not exit_code:
                    await trio.sleep(0.1)
        core_of(app).close()
        nursery.cancel_scope.cancel()


async def test_happy_path_processes_jobs_through_the_lifecycle(autojump_clock: Any) -> None:
    async with bot(concurrency=2) as env:
        ids = await env.submit(20)
        jobs = await env.wait_final(ids)
        assert {j["status"] for j in jobs} == {"succeeded"}
        assert all(j["attempts"] == 1 for j in jobs)
        assert env.states()[:4] == ["registering", "health_check", "ready", "processing"]
        assert env.agent.runner.total_processed == 20
    assert env.exit_code == [0]
    assert env.states()[-2:] == ["shutting_down", "stopped"]


async def test_server_down_at_start_backs_off_with_jitter_and_opens_the_breaker(
    autojump_clock: Any,
) -> None:
    async with bot(start=False, retry_base_delay=1.0, retry_max_delay=8.0) as env:
        env.transport.default = "down"
        code = []

        async def run() -> None:
            code.append(await env.agent.run())

        env.nursery.start_soon(run)
        # Threshold 5: five quick attempts, then the breaker holds the sixth for ~30 s.
        with trio.fail_after(300):
            while env.transport.count("/v1/bots/register") < 8:
                await trio.sleep(0.1)
        times = env.transport.times("/v1/bots/register")
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for n, gap in enumerate(gaps[:4]):
            assert 0 <= gap <= min(8.0, 1.0 * 2**n) + 1e-6, (n, gap)
        # After the 5th failure the breaker is open: the 6th attempt waits for the probe.
        assert 27.0 - 1e-6 <= gaps[4] <= 33.0 + 8.0, gaps
        reg = env.agent.breakers["registration"]
        assert reg.opened_count >= 1
        assert env.agent.state is State.REGISTERING
        # The server comes back: the bot gets ready by itself and jobs flow.
        env.transport.default = "ok"
        await env.wait_state(State.READY, State.PROCESSING)
        ids = await env.submit(3)
        assert {j["status"] for j in await env.wait_final(ids)} == {"succeeded"}
        assert reg.state.value == "closed"


async def test_attempts_run_out_exit_69(autojump_clock: Any) -> None:
    async with bot(start=False, max_startup_attempts=3, retry_base_delay=0.1) as env:
        env.transport.default = "down"
        with trio.fail_after(60):
            code = await env.agent.run()
        assert code == ExitCode.UNAVAILABLE == 69
        assert env.transport.count("/v1/bots/register") == 3
        assert env.states()[-1] == "stopped"


@pytest.mark.parametrize("fault", ["down", "dns", "hang", "500", "garbage", "wrong_shape"])
async def test_claim_faults_are_counted_retried_and_survived(
    autojump_clock: Any, fault: str
) -> None:
    async with bot() as env:
        await env.wait_state(State.READY)
        env.transport.faults = {"/v1/jobs/claim": fault}
        ids = await env.submit(2)
        with trio.fail_after(300):
            while env.transport.count("/v1/jobs/claim", fault) < 6:
                await trio.sleep(0.5)
        assert env.agent.breakers["job_claim"].total_failures >= 5
        assert not env.agent.stopped
        env.transport.faults = {}
        jobs = await env.wait_final(ids)
        assert {j["status"] for j in jobs} == {"succeeded"}


@pytest.mark.parametrize("fault", ["down", "garbage", "wrong_shape", "hang"])
async def test_registration_faults_never_crash(autojump_clock: Any, fault: str) -> None:
    async with bot(start=False) as env:
        env.transport.faults = {"/v1/bots": fault}
        code: list[int] = []

        async def run() -> None:
            code.append(await env.agent.run())

        env.nursery.start_soon(run)
        with trio.fail_after(600):
            while env.transport.count("/v1/bots", fault) < 4:
                await trio.sleep(0.5)
        assert env.agent.state is State.REGISTERING
        env.transport.faults = {}
        await env.wait_state(State.READY)


async def test_heartbeat_409_goes_to_error_reregisters_and_the_running_job_survives(
    autojump_clock: Any,
) -> None:
    recorder = Recorder()
    async with bot(handler=recorder) as env:
        await env.wait_state(State.READY)
        [job_id] = await env.submit(1, payload={"sleep": 20})
        await env.wait_state(State.PROCESSING)
        old_session = env.agent.session
        # Someone registers our bot id again: the server supersedes our session for real.
        r = await env.http.post(
            "/v1/bots/register",
            json={"bot_id": "bot-1", "active_leases": env.agent.runner.leases()},
        )
        assert r.status_code == 200
        await env.wait_state(State.ERROR)
        await env.wait_state(State.READY, State.PROCESSING)
        assert env.agent.session is not None
        assert env.agent.session != old_session
        [job] = await env.wait_final([job_id])
        assert job["status"] == "succeeded"
        assert job["attempts"] == 1
        assert recorder.runs == [(job_id, 1)]  # it ran once, and was not run again
        assert "error" in env.states()


async def test_degraded_server_pauses_claiming(autojump_clock: Any) -> None:
    async with bot() as env:
        await env.wait_state(State.READY)
        env.transport.faults = {"/v1/health": "degraded"}
        with trio.fail_after(60):
            await env.agent.health.healthy.wait_value(False)
        claims_before = env.transport.count("/v1/jobs/claim")
        await env.submit(1)
        await trio.sleep(30)
        # At most the long poll that was already open when it degraded.
        assert env.transport.count("/v1/jobs/claim") <= claims_before + 1
        env.transport.faults = {}
        with trio.fail_after(60):
            await env.agent.health.healthy.wait_value(True)


async def test_sigterm_with_a_job_in_flight_finishes_and_acks_it(autojump_clock: Any) -> None:
    async with bot() as env:
        await env.wait_state(State.READY)
        [job_id] = await env.submit(1, payload={"sleep": 5})
        await env.wait_state(State.PROCESSING)
        env.agent.on_signal(1, "SIGTERM")
        await env.wait_state(State.STOPPED)
        await trio.sleep(1)
        [job] = await env.wait_final([job_id])
        assert job["status"] == "succeeded"
        assert job["attempts"] == 1
        bot_info = (await env.http.get("/v1/bots/bot-1")).json()
        assert bot_info["status"] == "deregistered"
    assert env.exit_code == [0]


async def test_second_signal_cancels_and_releases_the_job(autojump_clock: Any) -> None:
    async with bot() as env:
        await env.wait_state(State.READY)
        [job_id] = await env.submit(1, payload={"sleep": 1000})
        await env.wait_state(State.PROCESSING)
        env.agent.on_signal(1, "SIGTERM")
        await trio.sleep(1)
        env.agent.on_signal(2, "SIGTERM")
        await env.wait_state(State.STOPPED)
        job = await env.job(job_id)
        assert job["status"] == "queued"  # released: back in the queue
        assert job["attempts"] <= 1
    assert env.exit_code == [0]


async def test_shutdown_is_bounded_when_the_server_is_unreachable(autojump_clock: Any) -> None:
    async with bot(shutdown_timeout=10.0) as env:
        await env.wait_state(State.READY)
        await env.submit(1, payload={"sleep": 1000})
        await env.wait_state(State.PROCESSING)
        env.transport.default = "hang"
        started = trio.current_time()
        env.agent.request_shutdown()
        await env.wait_state(State.STOPPED)
        assert trio.current_time() - started <= 10.0 + 5.0 + 0.1
    assert env.exit_code == [0]
    # The released result is still in the outbox: it was not dropped.
    assert env.agent.status_document()["outbox_pending"] == 1


async def test_a_bug_in_an_infrastructure_task_exits_70(autojump_clock: Any) -> None:
    async with bot(start=False) as env:

        async def broken() -> None:
            await trio.sleep(3)
            raise RuntimeError("boom")

        code: list[int] = []

        async def run() -> None:
            code.append(await env.agent.run())

        env.nursery.start_soon(run)
        await env.wait_state(State.READY)
        assert env.agent._root is not None
        env.agent._root.start_soon(env.agent._guarded, "test", broken)
        await env.wait_state(State.STOPPED)
        with trio.fail_after(10):
            while not code:
                await trio.sleep(0.1)
        assert code == [70]


# --- the call policy, from the agent's side ------------------------------------------------


async def wait_until(check: Any, timeout: float = 600) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.05)


async def test_a_session_lost_during_a_half_open_claim_probe_leaves_no_zombie(
    autojump_clock: Any,
) -> None:
    """Claims answer 500 until the claim breaker opens; it goes half-open and its probe
    long-polls an empty queue; heartbeats then answer 409 for 1.5 s; the server heals. In
    each of 4 rounds the bot claims and finishes new jobs within 10 s (it used to say READY
    and never claim again: the cancelled probe kept the breaker's one slot)."""
    async with bot(circuit_breaker_threshold=3, circuit_breaker_timeout=5.0) as env:
        await env.wait_state(State.READY)
        claims = env.agent.breakers["job_claim"]
        for _ in range(4):
            env.transport.faults = {"/v1/jobs/claim": "500"}
            await wait_until(lambda: claims.state is BreakerState.OPEN)
            env.transport.faults = {}
            await wait_until(lambda: claims.probe_in_flight)
            errors = env.states().count("error")
            env.transport.faults = {r"/heartbeat$": "superseded"}
            await trio.sleep(1.5)
            assert env.states().count("error") > errors  # the probe's session was lost
            env.transport.faults = {}
            healed = trio.current_time()
            ids = await env.submit(3)
            jobs = await env.wait_final(ids, timeout=10)
            assert {j["status"] for j in jobs} == {"succeeded"}
            assert trio.current_time() - healed <= 10
            assert not claims.probe_in_flight


async def test_one_heartbeat_409_ends_the_session_at_once(autojump_clock: Any) -> None:
    """A 409 on the heartbeat alone (every claim still works) is a lost session, not a
    retryable failure: the bot goes to ERROR on that beat, registers again, and claims
    within 1 s of its new session."""
    async with bot() as env:
        await env.wait_state(State.READY)
        session = env.agent.session
        beats = env.transport.count(r"/heartbeat$")
        env.transport.faults = {r"/heartbeat$": "superseded"}
        await env.wait_state(State.ERROR)
        assert env.transport.count(r"/heartbeat$") == beats + 1
        assert env.agent.breakers["heartbeat"].failure_count == 0
        env.transport.faults = {}
        await env.wait_state(State.READY)
        ready = trio.current_time()
        assert env.agent.session != session
        await wait_until(lambda: any(t >= ready for t in env.transport.times("/v1/jobs/claim")))
        first_claim = min(t for t in env.transport.times("/v1/jobs/claim") if t >= ready)
        assert first_claim - ready < 1.0


async def test_sessions_superseded_for_30s_register_fewer_than_10_times(
    autojump_clock: Any,
) -> None:
    # The defaults: RETRY_BASE_DELAY=1, RETRY_MAX_DELAY=60 (the bot() helper shortens them).
    async with bot(retry_base_delay=1.0, retry_max_delay=60.0, heartbeat_interval_ms=5000) as env:
        await env.wait_state(State.READY)
        before = env.transport.count("/v1/bots/register")
        env.transport.faults = {r"/heartbeat$": "superseded"}
        began = trio.current_time()
        await trio.sleep(30)
        env.transport.faults = {}
        times = env.transport.times("/v1/bots/register")[before:]
        assert 2 <= len([t for t in times if t - began <= 30]) < 10
        # The server heals: a stable session starts the backoff over.
        await env.wait_state(State.READY, State.PROCESSING)


@pytest.mark.parametrize(
    "path",
    [r"/heartbeat$", "/v1/jobs/claim", r"/ack$"],
    ids=["heartbeat", "claim", "ack"],
)
async def test_401_from_any_loop_stops_the_bot_with_78(autojump_clock: Any, path: str) -> None:
    # Concurrency 2: while the job runs, the next claim waits in its long poll, so the job's
    # result is acked on its own (POST /v1/leases/{id}/ack). These calls go with the
    # session's token: a 401 to it means the server forgot the session (an ack's 401 is
    # retried: the heartbeat, refused too, finds out), so the bot registers again, with its
    # own token, which the server refuses too: exit 78.
    async with bot(start=False, claim_wait=5.0, concurrency=2) as env:
        code: list[int] = []

        async def run() -> None:
            code.append(await env.agent.run())

        env.nursery.start_soon(run)
        await env.wait_state(State.READY)
        refused = (path, r"/heartbeat$", "/v1/bots/register")
        env.transport.faults = dict.fromkeys(refused, "unauthorized")
        if path == r"/ack$":
            await env.submit(1)
        with trio.fail_after(120):
            while not code:
                await trio.sleep(0.1)
        assert code == [ExitCode.CONFIG] == [78]
        assert env.states()[-2:] == ["shutting_down", "stopped"]


async def test_a_refused_session_token_means_register_again(autojump_clock: Any) -> None:
    # A server that forgot the session (a new database, a session superseded long ago)
    # answers 401 to its token: the bot registers again with its own token and goes on.
    async with bot() as env:
        await env.wait_state(State.READY)
        before = env.transport.count("/v1/bots/register")
        env.transport.faults = {r"/heartbeat$": "unauthorized"}
        with trio.fail_after(60):
            while env.transport.count("/v1/bots/register") == before:
                await trio.sleep(0.1)
        env.transport.faults = {}
        await env.wait_state(State.READY, State.PROCESSING)
        assert env.agent.exit_code == 0


# --- ephemeral bots: BOT_ONCE and BOT_DISCONNECT_AFTER_IDLE ---------------------------------


async def wait_exit(env: Env, timeout: float = 600) -> None:
    with trio.fail_after(timeout):
        while not env.exit_code:
            await trio.sleep(0.1)


def shutdown_reason(env: Env) -> str:
    [t] = [t for t in env.agent.lifecycle.history if t.to_state is State.SHUTTING_DOWN]
    return t.reason


async def test_once_runs_one_job_reports_it_deregisters_and_exits_0(autojump_clock: Any) -> None:
    recorder = Recorder()
    with captured_logs() as records:
        async with bot(handler=recorder, once=True, concurrency=4) as env:
            await env.wait_state(State.READY)
            ids = await env.submit(3, payload={"sleep": 5})
            await wait_exit(env)
            jobs = [await env.job(i) for i in ids]
            bot_info = (await env.http.get("/v1/bots/bot-1")).json()
    assert env.exit_code == [0]
    # One job ran, to its end (not cut short by the drain), and its result reached the server.
    assert len(recorder.runs) == 1
    assert sorted((j["status"], j["attempts"]) for j in jobs) == [
        ("queued", 0),  # never leased: the claim asked for one job, not for 4 slots
        ("queued", 0),
        ("succeeded", 1),
    ]
    assert bot_info["status"] == "deregistered"
    assert env.states()[-2:] == ["shutting_down", "stopped"]
    assert "BOT_ONCE" in shutdown_reason(env)
    assert len(events_of(records, "once_done")) == 1
    assert events_of(records, "deregistered")


async def test_once_waits_for_its_job_however_long_it_runs(autojump_clock: Any) -> None:
    # Longer than BOT_SHUTDOWN_TIMEOUT (10 s here): the job is not drained, it just runs.
    async with bot(once=True, job_timeout=600.0) as env:
        [job_id] = await env.submit(1, payload={"sleep": 120})
        await env.wait_state(State.PROCESSING)
        await trio.sleep(100)
        assert not env.exit_code and env.agent.state is State.PROCESSING
        await wait_exit(env)
        assert ((await env.job(job_id))["status"], env.exit_code) == ("succeeded", [0])


class Timed(Recorder):
    """A Recorder that notes when each job ended (Trio time)."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: list[float] = []

    async def __call__(self, job: ClaimedJob) -> Any:
        result = await super().__call__(job)
        self.ends.append(trio.current_time())
        return result


async def test_disconnect_after_idle_counts_from_the_end_of_each_job(autojump_clock: Any) -> None:
    handler = Timed()
    with captured_logs() as records:
        async with bot(handler=handler, disconnect_after_idle=30.0) as env:
            await env.wait_state(State.READY)
            for _ in range(2):  # each job comes 20 s after the last end: the clock restarts
                await trio.sleep(20)
                [job_id] = await env.submit(1, payload={"sleep": 15})
                assert (await env.wait_final([job_id]))[0]["status"] == "succeeded"
            await env.wait_state(State.SHUTTING_DOWN)
            stopping = trio.current_time()
            await wait_exit(env)
            bot_info = (await env.http.get("/v1/bots/bot-1")).json()
    assert len(handler.ends) == 2
    assert 30.0 <= stopping - handler.ends[-1] <= 30.5
    assert env.exit_code == [0]
    assert bot_info["status"] == "deregistered"
    assert "BOT_DISCONNECT_AFTER_IDLE" in shutdown_reason(env)
    [line] = events_of(records, "idle_disconnect")
    assert line["idle_s"] == 30.0


async def test_disconnect_after_idle_counts_from_the_first_ready(autojump_clock: Any) -> None:
    async with bot(start=False, disconnect_after_idle=12.0) as env:
        env.transport.default = "down"  # 40 s of registrations that fail: not idle time
        env.nursery.start_soon(lambda: env.agent.run())
        await trio.sleep(40)
        assert env.agent.state is State.REGISTERING
        env.transport.default = "ok"
        await env.wait_state(State.READY)
        ready = trio.current_time()
        await env.wait_state(State.SHUTTING_DOWN)
        assert 12.0 <= trio.current_time() - ready <= 12.5
        await env.wait_state(State.STOPPED)


# --- what a bot claims: BOT_KINDS, else the kinds its handler takes -------------------------


async def test_a_default_bot_leaves_other_kinds_queued(autojump_clock: Any) -> None:
    async with bot(configured_handler=True, processing_duration_ms=10) as env:
        assert env.agent.driver.claim_kinds() == ("simulate",)
        [render] = await env.submit(1, kind="render")
        [simulate] = await env.submit(1, kind="simulate")
        [done] = await env.wait_final([simulate])
        assert done["status"] == "succeeded"  # the bot did claim ...
        await trio.sleep(60)  # ... and went on claiming: long polls, every one without render
        job = await env.job(render)
        assert (job["status"], job["attempts"]) == ("queued", 0)


async def test_bot_kinds_widens_what_the_simulate_handler_takes(autojump_clock: Any) -> None:
    async with bot(configured_handler=True, processing_duration_ms=10, kinds="render") as env:
        assert env.agent.driver.claim_kinds() == ("render",)
        [render] = await env.submit(1, kind="render")
        assert (await env.wait_final([render]))[0]["status"] == "succeeded"


async def test_a_handler_without_kinds_takes_every_kind(autojump_clock: Any) -> None:
    async with bot() as env:  # the Recorder has no ``kinds``
        assert env.agent.driver.claim_kinds() is None
        ids = [*(await env.submit(1, kind="render")), *(await env.submit(1, kind="x"))]
        assert {j["status"] for j in await env.wait_final(ids)} == {"succeeded"}
