"""BOT_PREFETCH against the real server app, on a virtual clock: held jobs run in order, their
leases are heartbeated, a cancel of one never runs it, and the drain releases them."""

from __future__ import annotations

from typing import Any

import trio

from botd.lifecycle import State
from tests.asgi.test_agent import Recorder, bot


async def wait_held(env: Any, n: int, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while len(env.agent.runner.held) < n:
            await trio.sleep(0.05)


async def busy_with_held(env: Any, held: int, *, sleep: float) -> tuple[str, list[str]]:
    """A ready bot runs one job of ``sleep`` seconds and holds ``held`` more: their ids."""
    await env.wait_state(State.READY)
    [first] = await env.submit(1, payload={"sleep": sleep})
    await env.wait_state(State.PROCESSING)
    ids = await env.submit(held)
    await wait_held(env, held)
    return first, ids


async def test_held_jobs_run_in_order_one_at_a_time(autojump_clock: Any) -> None:
    recorder = Recorder()
    async with bot(prefetch=4, handler=recorder) as env:
        await env.wait_state(State.READY)
        ids = await env.submit(10)
        jobs = await env.wait_final(ids)
        assert {j["status"] for j in jobs} == {"succeeded"}
        assert all(j["attempts"] == 1 for j in jobs)
        assert [job_id for job_id, _ in recorder.runs] == ids  # FIFO, each once
        assert not env.agent.runner.held
    assert env.exit_code == [0]


async def test_a_held_job_is_heartbeated_and_not_requeued(autojump_clock: Any) -> None:
    async with bot(prefetch=2, lease_ttl=3.0) as env:
        first, held = await busy_with_held(env, 2, sleep=30)
        leases = env.agent.driver.held_leases()
        assert set(env.agent.runner.held) <= set(leases)
        await trio.sleep(20)  # many lease TTLs: only the heartbeat keeps the held ones
        for job_id in held:
            job = await env.job(job_id)
            assert job["status"] not in ("queued", "failed", "dead"), job
            assert job["attempts"] == 1
        assert env.agent.status_document()["jobs_prefetched"] == 2
        jobs = await env.wait_final([first, *held])
        assert {j["status"] for j in jobs} == {"succeeded"}
        assert all(j["attempts"] == 1 for j in jobs)
    assert env.exit_code == [0]


async def test_a_cancelled_held_job_is_acked_cancelled_without_running(
    autojump_clock: Any,
) -> None:
    recorder = Recorder()
    async with bot(prefetch=2, handler=recorder) as env:
        first, held = await busy_with_held(env, 2, sleep=10)
        r = await env.http.post(f"/v1/jobs/{held[0]}/cancel")
        assert r.status_code == 200, r.text
        jobs = await env.wait_final([first, *held])
        assert [j["status"] for j in jobs] == ["succeeded", "cancelled", "succeeded"]
        assert [job_id for job_id, _ in recorder.runs] == [first, held[1]]
    assert env.exit_code == [0]


async def test_the_drain_releases_held_jobs_and_never_runs_them(autojump_clock: Any) -> None:
    recorder = Recorder()
    async with bot(prefetch=3, handler=recorder) as env:
        first, held = await busy_with_held(env, 3, sleep=5)
        env.agent.request_shutdown()
        await env.wait_state(State.STOPPED)
        assert (await env.job(first))["status"] == "succeeded"
        for job_id in held:
            job = await env.job(job_id)
            assert job["status"] == "queued", job  # released: back in the queue
            assert job["attempts"] == 0, job  # no attempt spent
        assert [job_id for job_id, _ in recorder.runs] == [first]
    assert env.exit_code == [0]


async def test_prefetch_0_claims_only_for_free_slots(autojump_clock: Any) -> None:
    async with bot() as env:
        await env.wait_state(State.READY)
        [first] = await env.submit(1, payload={"sleep": 10})
        await env.wait_state(State.PROCESSING)
        [second] = await env.submit(1)
        await trio.sleep(5)
        assert not env.agent.runner.held
        assert (await env.job(second))["status"] == "queued"
        jobs = await env.wait_final([first, second])
        assert {j["status"] for j in jobs} == {"succeeded"}


async def test_once_holds_nothing_whatever_the_prefetch(autojump_clock: Any) -> None:
    async with bot(prefetch=4, once=True, start=True) as env:
        ids = await env.submit(3)
        with trio.fail_after(120):
            while not env.exit_code:
                await trio.sleep(0.1)
        statuses = sorted([(await env.job(i))["status"] for i in ids])
        assert statuses == ["queued", "queued", "succeeded"]
    assert env.exit_code == [0]
