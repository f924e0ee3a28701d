"""The waiting ``GET /v1/jobs/{job_id}?wait_s=N``, over ASGITransport on both stores.

It answers as soon as the job is final (woken by the server's own ack, expiry and cancel,
not by polling), at its deadline with the job as it is, at once when there is nothing to
wait for, when the server shuts down, and when its client goes away. With two replicas on
PostgreSQL, an ack on one wakes a GET waiting on the other within the 2 s re-check.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
from trio.abc import Clock

from botd.server.app import core_of
from botd.server.job_waits import RECHECK_S
from tests.asgi.test_server_work import claim, register, slack, submit
from tests.support.server import StoreMaker, asgi_client, make_app


async def waited_get(
    client: httpx.AsyncClient, job_id: str, wait_s: float, out: list[tuple[float, Any]]
) -> None:
    resp = await client.get(f"/v1/jobs/{job_id}", params={"wait_s": wait_s})
    out.append((trio.current_time(), resp))


async def test_a_waiting_get_answers_when_its_job_succeeds(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client)
        other = await submit(client)
        got: list[tuple[float, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waited_get, client, job_id, 30, got)
            jobs = (await claim(client, "bot-1", session, max_jobs=2)).jobs
            lease = {j.job_id: j.lease_id for j in jobs}
            # Another job's end does not answer this GET.
            done = {"lease_id": lease[other], "outcome": "succeeded", "result": 0}
            await claim(client, "bot-1", session, acks=[done], max_jobs=0)
            await trio.sleep(1)
            assert got == [], "still waiting"
            done = {"lease_id": lease[job_id], "outcome": "succeeded", "result": 42}
            await claim(client, "bot-1", session, acks=[done], max_jobs=0)
            acked = trio.current_time()
        ((answered, resp),) = got
        assert resp.status_code == 200
        assert (resp.json()["status"], resp.json()["result"]) == ("succeeded", 42)
        assert answered - acked < (0.001 if clock is not None else 0.5)


async def test_a_waiting_get_answers_at_its_deadline_with_the_job_as_it_is(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        job_id = await submit(client)
        wait = 5 if clock is not None else 1
        start = trio.current_time()
        resp = await client.get(f"/v1/jobs/{job_id}", params={"wait_s": wait})
        assert resp.status_code == 200
        assert resp.json()["status"] == "queued"
        assert wait <= trio.current_time() - start < wait + slack(clock)


async def test_nothing_to_wait_for_answers_at_once(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        job_id = await submit(client)
        start = trio.current_time()
        resp = await client.get(f"/v1/jobs/{job_id}", params={"wait_s": 0})
        assert resp.json()["status"] == "queued"
        assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200
        resp = await client.get(f"/v1/jobs/{job_id}", params={"wait_s": 30})
        assert resp.json()["status"] == "cancelled"
        assert trio.current_time() - start < slack(clock)
        unknown = await client.get("/v1/jobs/nope", params={"wait_s": 30})
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_job")
        assert trio.current_time() - start < slack(clock)


@pytest.mark.parametrize("bad", ["abc", "-1", "30.5", "nan", "inf"])
async def test_a_bad_wait_s_is_400_naming_it(autojump_clock: Clock, bad: str) -> None:
    app, _ = make_app()
    async with asgi_client(app) as client:
        job_id = await submit(client)
        resp = await client.get(f"/v1/jobs/{job_id}", params={"wait_s": bad})
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "invalid_request"
    assert "'wait_s'" in resp.json()["error"]["message"]


async def test_a_waiting_get_is_woken_by_expiry_to_dead_and_by_cancel(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=1.0)
    async with asgi_client(app) as client:
        session = await register(client)
        doomed = await submit(client, max_attempts=1)
        cancelled = await submit(client)
        await claim(client, "bot-1", session, kinds=["k"], max_jobs=1)
        got: list[tuple[float, Any]] = []
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(waited_get, client, doomed, 30, got)
            nursery.start_soon(waited_get, client, cancelled, 30, got)
            await trio.sleep(0.5)
            await client.post(f"/v1/jobs/{cancelled}/cancel")
            # The cancel wakes its waiter; on real time under load the answer may take
            # a moment to arrive, so wait for it within the slack, not a fixed sleep.
            with trio.fail_after(slack(clock)):
                while not got:
                    await trio.sleep(0.001)
            ((at_cancel, first),) = got
            assert first.json()["status"] == "cancelled"
            assert at_cancel - start < 0.5 + slack(clock)
        ((_, first), (answered, second)) = got
        assert second.json()["status"] == "dead"
        assert 1.0 - slack(clock) <= answered - start < 1.0 + slack(clock)


async def test_shutdown_answers_waiting_gets_at_once(autojump_clock: Clock) -> None:
    app, _ = make_app()
    async with asgi_client(app) as client:
        job_id = await submit(client)
        got: list[tuple[float, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waited_get, client, job_id, 30, got)
            await trio.sleep(2)
            core_of(app).close()
            closed = trio.current_time()
        ((answered, resp),) = got
        assert resp.json()["status"] == "queued"
        assert answered - closed < 0.001
        # After shutdown began, a new waiting GET answers at once too.
        resp = await client.get(f"/v1/jobs/{job_id}", params={"wait_s": 30})
        assert trio.current_time() - closed < 0.001


async def test_a_waiting_get_whose_client_went_away_ends(autojump_clock: Clock) -> None:
    """Driven as raw ASGI: the client disconnects after 3 s; the wait ends then, and the
    server keeps no waiter behind."""
    app, _ = make_app()
    async with asgi_client(app) as client:
        job_id = await submit(client)
        messages = iter([{"type": "http.request", "body": b"", "more_body": False}])

        async def receive() -> dict[str, Any]:
            try:
                return next(messages)
            except StopIteration:
                await trio.sleep(3)
                return {"type": "http.disconnect"}

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/v1/jobs/{job_id}",
            "raw_path": f"/v1/jobs/{job_id}".encode(),
            "query_string": b"wait_s=30",
            "headers": [(b"host", b"botd.test")],
            "server": ("botd.test", 80),
            "client": ("127.0.0.1", 1234),
            "root_path": "",
        }
        start = trio.current_time()
        await app(scope, receive, send)
        assert 3 <= trio.current_time() - start < 3.01
        assert core_of(app).waits._waiters == {}, "no waiter left behind"


@pytest.mark.parametrize("store_kind", ["postgres"])
async def test_an_ack_on_another_replica_wakes_a_waiting_get(new_store: StoreMaker) -> None:
    """Replica A waits; replica B takes the ack. A sees it within the 2 s re-check."""
    app_a, _ = make_app(store=new_store())
    app_b, _ = make_app(store=new_store())
    async with asgi_client(app_a) as a, asgi_client(app_b) as b:
        session = await register(b)
        job_id = await submit(b)
        got: list[tuple[float, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waited_get, a, job_id, 20, got)
            (leased,) = (await claim(b, "bot-1", session)).jobs
            await trio.sleep(0.5)
            done = {"lease_id": leased.lease_id, "outcome": "succeeded", "result": "b"}
            await claim(b, "bot-1", session, acks=[done], max_jobs=0)
            acked = trio.current_time()
        ((answered, resp),) = got
        assert (resp.json()["status"], resp.json()["result"]) == ("succeeded", "b")
        assert answered - acked < RECHECK_S + 0.5
