"""Claims, acks, long polls, lease expiry and retries, over ASGITransport.

Most tests run on both stores (``store_kind``): SQLite on ``autojump_clock``, exact to the
millisecond, and PostgreSQL on real time (its deadlines are the database's clock), where
``slack`` allows for real scheduling. The two that measure deadlines to the hundredth of a
second stay on SQLite; the Hypothesis state machine covers the same rules on PostgreSQL.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
import trio
from trio.abc import Clock

from botd import codec
from botd.errors import EncodeError
from botd.models import ClaimResponse
from botd.server.store import retry_backoff
from tests.support.server import StoreMaker, asgi_client, make_app


async def register(client: httpx.AsyncClient, bot_id: str = "bot-1") -> str:
    resp = await client.post("/v1/bots/register", json={"bot_id": bot_id})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["session_id"])


async def submit(client: httpx.AsyncClient, **kw: Any) -> str:
    resp = await client.post("/v1/jobs", json={"kind": "k", **kw})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["job_id"])


async def claim(client: httpx.AsyncClient, bot: str, session: str, **kw: Any) -> ClaimResponse:
    resp = await client.post("/v1/jobs/claim", json={"bot_id": bot, "session_id": session, **kw})
    assert resp.status_code == 200, resp.text
    return codec.structure(resp.json(), ClaimResponse)


def slack(clock: Clock | None) -> float:
    """How late a deadline may be seen: a tick on autojump_clock, more on real time."""
    return 0.01 if clock is not None else 0.5


async def job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"/v1/jobs/{job_id}")
    assert resp.status_code == 200
    body: dict[str, Any] = resp.json()
    return body


async def test_500_jobs_in_batches_with_piggybacked_acks(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        ids = {await submit(client, payload={"i": i}) for i in range(500)}
        acks: list[dict[str, Any]] = []
        seen: set[str] = set()
        round_trips = 0
        while True:
            got = await claim(client, "bot-1", session, max_jobs=64, acks=acks)
            round_trips += 1
            assert all(a.status == "recorded" for a in got.acks)
            assert len(got.acks) == len(acks)
            if not got.jobs:
                break
            seen |= {j.job_id for j in got.jobs}
            acks = [
                {"lease_id": j.lease_id, "outcome": "succeeded", "result": j.payload}
                for j in got.jobs
            ]
        assert seen == ids
        assert round_trips == 9  # 8 batches of up to 64, then the last acks with an empty claim
        stats = (await client.get("/v1/stats")).json()
        assert stats["jobs"]["succeeded"] == 500
        assert sum(stats["jobs"].values()) == 500
        some = (await client.get("/v1/jobs", params={"limit": 1000})).json()["jobs"]
        assert all(j["status"] == "succeeded" and j["result"] == j["payload"] for j in some)


async def test_batch_acks_duplicate_conflict_unknown_in_one_claim(
    clock: Clock | None,
    new_store: StoreMaker,
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        await submit(client)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        ok = {"lease_id": lease, "outcome": "succeeded", "result": 1}
        bad = {"lease_id": lease, "outcome": "released"}
        unknown = {"lease_id": "nope", "outcome": "succeeded"}
        got = await claim(client, "bot-1", session, acks=[ok, ok, bad, unknown])
        assert [a.status for a in got.acks] == [
            "recorded",
            "duplicate",
            "conflict",
            "unknown_lease",
        ]
        assert all(a.lease_id for a in got.acks)
        again = await claim(client, "bot-1", session, acks=[ok])
        assert [a.status for a in again.acks] == ["duplicate"]


async def test_odd_lease_ids_and_results_round_trip_in_one_batch(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    """Lease ids that no store makes (commas, quotes, braces, non-hex) are unknown leases,
    never an error or a match; every result comes back as it was sent, whatever it holds."""
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        results: list[Any] = [
            None,
            0,
            -1.5,
            "",
            'quote " backslash \\ comma , brace { } null \u0000 end',
            "unicode é 漢字 😀",
            [1, "two", None, {"three": [3]}],
            {"nested": {"a": [], "b": {}}, "sql": "'); DROP TABLE jobs; --"},
            True,
        ]
        ids = [await submit(client) for _ in results]
        got = await claim(client, "bot-1", session, max_jobs=len(ids))
        assert sorted(j.job_id for j in got.jobs) == sorted(ids)
        odd = ["a,b", '{"x"}', "{}", "NULL", "ZZ" * 32, got.jobs[0].lease_id + ",x"]
        acks = [{"lease_id": lease, "outcome": "succeeded"} for lease in odd]
        acks[2:2] = [
            {"lease_id": j.lease_id, "outcome": "succeeded", "result": result}
            for j, result in zip(got.jobs, results, strict=True)
        ]
        answer = await claim(client, "bot-1", session, acks=acks)
        statuses = [a.status for a in answer.acks]
        assert (
            statuses == ["unknown_lease"] * 2 + ["recorded"] * len(results) + ["unknown_lease"] * 4
        ), statuses
        for j, result in zip(got.jobs, results, strict=True):
            view = await job(client, j.job_id)
            assert (view["status"], view["result"]) == ("succeeded", result), view
        # NaN is not JSON (issue 12): botd's encoder refuses it, naming the path, and a
        # body that holds it anyway is 400 naming the field; the lease stays as it was.
        await submit(client)
        (nan_job,) = (await claim(client, "bot-1", session)).jobs
        nan_ack = {"lease_id": nan_job.lease_id, "outcome": "succeeded", "result": [math.nan]}
        body = {"bot_id": "bot-1", "session_id": session, "acks": [nan_ack]}
        with pytest.raises(EncodeError, match=r"\$\.acks\[0\]\.result\[0\]"):
            codec.dumps(body)
        raw = json.dumps(body).encode()  # as Python's json writes it: a bare NaN
        resp = await client.post("/v1/jobs/claim", content=raw)
        assert resp.status_code == 400, resp.text
        assert "$.acks[0].result[0]" in resp.json()["error"]["message"]
        view = await job(client, nan_job.job_id)
        assert view["status"] == "leased", view
        resp = await client.post(
            "/v1/bots/bot-1/heartbeat",
            json={"session_id": session, "active_leases": odd},
        )
        assert resp.status_code == 200, resp.text
        assert sorted(resp.json()["lost_leases"]) == sorted(odd)


async def test_lease_lost_after_expiry_and_reclaim(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=1.0)
    async with asgi_client(app) as client:
        s1, s2 = await register(client, "bot-1"), await register(client, "bot-2")
        job_id = await submit(client)
        first = (await claim(client, "bot-1", s1)).jobs[0]
        await trio.sleep(1.5)
        second = (await claim(client, "bot-2", s2)).jobs[0]
        assert (second.job_id, second.attempt) == (job_id, 2)
        late = {"lease_id": first.lease_id, "outcome": "succeeded", "result": "late"}
        resp = await client.post(f"/v1/leases/{first.lease_id}/ack", json=late)
        assert resp.status_code == 409
        assert resp.json()["error"]["code"] == "lease_lost"
        got = await claim(client, "bot-1", s1, acks=[late])
        assert got.acks[0].status == "lease_lost"
        hb = await client.post(
            "/v1/bots/bot-1/heartbeat",
            json={"session_id": s1, "active_leases": [first.lease_id]},
        )
        assert hb.json()["lost_leases"] == [first.lease_id]
        done = {"lease_id": second.lease_id, "outcome": "succeeded", "result": "on time"}
        assert (await claim(client, "bot-2", s2, acks=[done])).acks[0].status == "recorded"
        assert (await job(client, job_id))["result"] == "on time"


async def test_late_ack_is_taken_while_the_job_waits_in_the_queue(
    clock: Clock | None,
    new_store: StoreMaker,
) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=1.0)
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        await trio.sleep(1.5)
        assert (await job(client, job_id))["status"] == "queued"
        ack = {"lease_id": lease, "outcome": "succeeded", "result": 7}
        resp = await client.post(f"/v1/leases/{lease}/ack", json=ack)
        assert resp.json() == {"status": "recorded"}
        view = await job(client, job_id)
        assert (view["status"], view["result"]) == ("succeeded", 7)
        assert (await claim(client, "bot-1", session)).jobs == []


async def test_unrenewed_lease_requeues_on_time_then_dies(autojump_clock: trio.abc.Clock) -> None:
    app, _ = make_app(lease_ttl_s=1.0)
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client, max_attempts=3)
        for attempt in (1, 2, 3):
            got = await claim(client, "bot-1", session)
            assert [(j.job_id, j.attempt) for j in got.jobs] == [(job_id, attempt)]
            leased_at = trio.current_time()
            await trio.sleep(0.99)
            assert (await job(client, job_id))["status"] == "leased"
            await trio.sleep(0.02)
            view = await job(client, job_id)
            assert trio.current_time() - leased_at < 1.05
            if attempt < 3:
                assert view["status"] == "queued", "requeued within the TTL plus a tick"
        assert view["status"] == "dead"
        assert view["attempts"] == 3
        assert view["error"]["type"] == "lease_expired"
        assert view["finished_at"] is not None
        assert (await claim(client, "bot-1", session)).jobs == []
        metrics = (await client.get("/metrics")).text
        assert "botd_server_lease_expiries_total 3.0" in metrics


async def test_heartbeat_keeps_a_lease_alive(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=1.0)
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        for _ in range(10):
            await trio.sleep(0.5)
            body = {"session_id": session, "active_leases": [lease]}
            await client.post("/v1/bots/bot-1/heartbeat", json=body)
        assert (await job(client, job_id))["status"] == "leased"


async def test_heartbeat_gives_back_a_lease_the_bot_never_received(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A claim answer lost on the way: the live bot does not list the lease, so the server
    releases it after a third of the TTL and the attempt is not spent."""
    app, _ = make_app(lease_ttl_s=3.0)
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client, max_attempts=1)
        for _ in range(5):  # more lost answers than the job has attempts
            got = await claim(client, "bot-1", session)
            assert [j.job_id for j in got.jobs] == [job_id]
            body = {"session_id": session, "active_leases": []}
            # Sent before the answer could have arrived: within the grace, nothing happens.
            await trio.sleep(0.5)
            resp = await client.post("/v1/bots/bot-1/heartbeat", json=body)
            assert resp.status_code == 200
            assert (await job(client, job_id))["status"] == "leased"
            await trio.sleep(0.6)
            resp = await client.post("/v1/bots/bot-1/heartbeat", json=body)
            assert resp.status_code == 200
            view = await job(client, job_id)
            assert (view["status"], view["attempts"]) == ("queued", 0)
        # A lease the bot does list is kept and extended, however old.
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        for _ in range(6):
            await trio.sleep(1.0)
            body = {"session_id": session, "active_leases": [lease]}
            assert (await client.post("/v1/bots/bot-1/heartbeat", json=body)).status_code == 200
        assert (await job(client, job_id))["status"] == "leased"


async def test_retryable_failure_backs_off_then_fails(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client, max_attempts=3)
        error = {"type": "boom", "message": "it broke", "retryable": True}
        for attempt in (1, 2, 3):
            start = trio.current_time()
            got = await claim(client, "bot-1", session, wait_s=30)
            assert [j.attempt for j in got.jobs] == [attempt]
            waited = trio.current_time() - start
            if attempt > 1:
                assert abs(waited - retry_backoff(attempt - 1)) < slack(clock), (
                    "woken when the retry is due"
                )
            lease = got.jobs[0].lease_id
            ack = {"lease_id": lease, "outcome": "failed", "error": error}
            assert (await claim(client, "bot-1", session, acks=[ack])).acks[0].status == "recorded"
            view = await job(client, job_id)
            assert view["error"] == error
        assert view["status"] == "failed"
        assert view["finished_at"] is not None


async def test_non_retryable_failure_fails_at_once(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client, max_attempts=5)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        error = {"type": "permanent", "message": "bad input", "retryable": False}
        await claim(
            client,
            "bot-1",
            session,
            acks=[{"lease_id": lease, "outcome": "failed", "error": error}],
        )
        view = await job(client, job_id)
        assert (view["status"], view["attempts"], view["error"]) == ("failed", 1, error)


async def test_release_requeues_without_spending_an_attempt(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client, max_attempts=1)
        for _ in range(3):
            got = await claim(client, "bot-1", session)
            assert [j.attempt for j in got.jobs] == [1]
            lease = got.jobs[0].lease_id
            resp = await client.post(
                f"/v1/leases/{lease}/ack", json={"lease_id": lease, "outcome": "released"}
            )
            assert resp.json() == {"status": "recorded"}
            view = await job(client, job_id)
            assert (view["status"], view["attempts"]) == ("queued", 0)


async def test_long_poll_is_woken_by_submit(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        results: list[tuple[float, ClaimResponse]] = []

        async def waiter() -> None:
            got = await claim(client, "bot-1", session, wait_s=30)
            results.append((trio.current_time(), got))

        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(waiter)
            idle = 7 if clock is not None else 1
            await trio.sleep(idle)
            assert results == [], "still waiting"
            job_id = await submit(client)
            submitted = trio.current_time()
        ((answered, got),) = results
        assert [j.job_id for j in got.jobs] == [job_id]
        assert answered - submitted < (0.001 if clock is not None else 0.2)
        assert submitted - start >= idle


async def test_empty_long_poll_answers_after_wait_s(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        await submit(client, kind="other")
        start = trio.current_time()
        wait = 5 if clock is not None else 1
        got = await claim(client, "bot-1", session, wait_s=wait, kinds=["k"])
        assert got.jobs == []
        assert wait <= trio.current_time() - start < wait + slack(clock)


async def test_long_poll_wakes_on_lease_expiry(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=2.0)
    async with asgi_client(app) as client:
        s1, s2 = await register(client, "bot-1"), await register(client, "bot-2")
        job_id = await submit(client)
        await claim(client, "bot-1", s1)
        start = trio.current_time()
        got = await claim(client, "bot-2", s2, wait_s=10)
        assert [j.job_id for j in got.jobs] == [job_id]
        assert 2 - slack(clock) / 10 <= trio.current_time() - start < 2 + slack(clock)


async def test_many_waiters_one_job_each(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        sessions = {f"bot-{i}": await register(client, f"bot-{i}") for i in range(5)}
        got: dict[str, list[str]] = {}

        async def waiter(bot: str) -> None:
            resp = await claim(client, bot, sessions[bot], wait_s=10 if clock is not None else 2)
            got[bot] = [j.job_id for j in resp.jobs]

        async with trio.open_nursery() as nursery:
            for bot in sessions:
                nursery.start_soon(waiter, bot)
            await trio.sleep(1)
            ids = [await submit(client) for _ in range(3)]
        claimed = [j for jobs in got.values() for j in jobs]
        assert sorted(claimed) == sorted(ids), "each job to exactly one waiter"
        assert sum(1 for jobs in got.values() if not jobs) == 2


async def test_batch_submit_is_one_transaction_in_order_and_idempotent(
    clock: Clock | None,
    new_store: StoreMaker,
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        first = await client.post("/v1/jobs", json={"kind": "k", "idempotency_key": "old"})
        assert first.status_code == 201
        jobs = [{"kind": "k", "payload": {"i": i}} for i in range(300)]
        jobs.insert(7, {"kind": "k", "idempotency_key": "old"})
        resp = await client.post("/v1/jobs/batch", json={"jobs": jobs})
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["created"] == 300
        assert body["jobs"][7]["job_id"] == first.json()["job_id"]
        others = body["jobs"][:7] + body["jobs"][8:]
        assert [j["payload"] for j in others] == [{"i": i} for i in range(300)]
        assert (await client.get("/v1/stats")).json()["jobs"]["queued"] == 301
        again = await client.post("/v1/jobs/batch", json={"jobs": [jobs[7]]})
        assert (again.status_code, again.json()["created"]) == (200, 0)
        # A bad entry rejects the whole batch, naming it; nothing is queued.
        bad = await client.post("/v1/jobs/batch", json={"jobs": [{"kind": "k"}, {"kind": ""}]})
        assert bad.status_code == 400
        assert "jobs" in bad.json()["error"]["message"]
        too_many = await client.post("/v1/jobs/batch", json={"jobs": [{"kind": "k"}] * 1001})
        assert too_many.status_code in (400, 413)
        empty = await client.post("/v1/jobs/batch", json={"jobs": []})
        assert empty.status_code == 400
        assert (await client.get("/v1/stats")).json()["jobs"]["queued"] == 301
