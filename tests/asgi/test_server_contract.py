"""Protocol v1 contract: every route and error code, over httpx.ASGITransport.

Every test runs on both stores (``store_kind``): SQLite on ``autojump_clock``, and a real
PostgreSQL (a fresh database per test) on real time, since its deadlines are the database's.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import trio
from trio.abc import Clock

from botd import codec
from botd.models import (
    BotInfo,
    BotList,
    ClaimResponse,
    ErrorBody,
    HeartbeatResponse,
    JobList,
    JobView,
    RegisterResponse,
    Stats,
)
from tests.support.server import StoreMaker, asgi_client, make_app


def error_of(resp: httpx.Response) -> str:
    body = codec.structure(resp.json(), ErrorBody)
    assert body.error.message, "every error says what to do"
    return body.error.code


async def register(client: httpx.AsyncClient, bot_id: str = "bot-1", **kw: Any) -> str:
    resp = await client.post("/v1/bots/register", json={"bot_id": bot_id, **kw})
    assert resp.status_code == 200, resp.text
    return codec.structure(resp.json(), RegisterResponse).session_id


async def submit(client: httpx.AsyncClient, **kw: Any) -> JobView:
    resp = await client.post("/v1/jobs", json={"kind": "k", **kw})
    assert resp.status_code == 201, resp.text
    return codec.structure(resp.json(), JobView)


async def claim(client: httpx.AsyncClient, bot: str, session: str, **kw: Any) -> ClaimResponse:
    body = {"bot_id": bot, "session_id": session, **kw}
    resp = await client.post("/v1/jobs/claim", json=body)
    assert resp.status_code == 200, resp.text
    return codec.structure(resp.json(), ClaimResponse)


async def test_health_ok(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), token="s3cret")
    async with asgi_client(app) as client:
        resp = await client.get("/v1/health")  # no token needed
    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"
    assert resp.json()["database"] == "ok"
    assert resp.json()["version"]


async def test_auth_required_on_v1_and_token_never_echoed(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store(), token="s3cret")
    async with asgi_client(app) as anon, asgi_client(app, token="wrong", timers=False) as bad:
        for resp in [
            await anon.get("/v1/stats"),
            await anon.post("/v1/jobs", json={"kind": "k"}),
            await bad.get("/v1/jobs"),
            await anon.get("/v1/openapi.json"),
            await anon.get("/v1/stats", headers={"Authorization": "Basic s3cret"}),
        ]:
            assert resp.status_code == 401
            assert error_of(resp) == "unauthorized"
            assert "s3cret" not in resp.text
    async with asgi_client(app, token="s3cret") as good:
        assert (await good.get("/v1/stats")).status_code == 200


async def test_register_get_list_bot(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=7.0, heartbeat_interval_s=2.0)
    async with asgi_client(app) as client:
        resp = await client.post(
            "/v1/bots/register",
            json={
                "bot_id": "bot-1",
                "version": "1.2",
                "hostname": "h",
                "pid": 42,
                "capacity": 4,
                "labels": {"zone": "a"},
                "active_leases": [],
            },
        )
        assert resp.status_code == 200
        reg = codec.structure(resp.json(), RegisterResponse)
        assert reg.bot_id == "bot-1"
        assert (reg.lease_ttl_s, reg.heartbeat_interval_s) == (7.0, 2.0)
        again = await register(client, "bot-1")
        assert again != reg.session_id, "every registration starts a new session"

        info = codec.structure((await client.get("/v1/bots/bot-1")).json(), BotInfo)
        assert info.session_id == again
        assert info.status == "active"
        assert info.capacity == 1
        assert info.active_leases == []
        assert info.last_seen.endswith("Z")

        listed = codec.structure((await client.get("/v1/bots")).json(), BotList)
        assert [b.bot_id for b in listed.bots] == ["bot-1"]

        resp = await client.get("/v1/bots/nobody")
        assert resp.status_code == 404
        assert error_of(resp) == "unknown_bot"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"bot_id": ""}, "bot_id"),
        ({"bot_id": "b", "capacity": 0}, "capacity"),
        ({"bot_id": 5}, "bot_id"),
        ({"bot_id": "b", "pid": "x"}, "pid"),
        ({}, "bot_id"),
    ],
)
async def test_register_rejects_bad_input_naming_the_field(
    clock: Clock | None, new_store: StoreMaker, body: dict[str, Any], field: str
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        resp = await client.post("/v1/bots/register", json=body)
    assert resp.status_code == 400
    assert error_of(resp) == "invalid_request"
    assert field in resp.json()["error"]["message"]


async def test_bad_json_and_non_object_bodies(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        for content in [b"{nope", b"", b"[1,2]", b"\xff\xfe"]:
            resp = await client.post("/v1/jobs", content=content)
            assert resp.status_code == 400, content
            assert error_of(resp) == "invalid_request"


async def test_body_over_one_mib_is_413(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    big = b'{"kind":"k","payload":"' + b"x" * (1024 * 1024) + b'"}'
    async with asgi_client(app) as client:
        resp = await client.post("/v1/jobs", content=big)
        assert resp.status_code == 413
        assert error_of(resp) == "payload_too_large"

        async def chunked() -> Any:  # no content-length: the stream is counted
            for _ in range(20):
                yield b"x" * 65536

        resp = await client.post("/v1/jobs", content=chunked())
        assert resp.status_code == 413
        # Just under the limit is fine.
        ok = b'{"kind":"k","payload":"' + b"x" * (1024 * 1024 - 100) + b'"}'
        assert (await client.post("/v1/jobs", content=ok)).status_code == 201


async def test_unknown_route_and_method_are_json(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        resp = await client.get("/v1/nothing/here")
        assert resp.status_code == 404
        assert error_of(resp) == "not_found"
        resp = await client.put("/v1/jobs")
        assert resp.status_code == 405
        assert error_of(resp) == "method_not_allowed"


async def test_heartbeat_extends_cancels_and_reports_lost(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    # On real time (PostgreSQL) the same test runs five times faster.
    unit = 1.0 if clock is not None else 0.2
    app, _ = make_app(store=new_store(), lease_ttl_s=10.0 * unit)
    async with asgi_client(app) as client:
        session = await register(client)
        job_a, job_b = await submit(client), await submit(client)
        got = await claim(client, "bot-1", session, max_jobs=2)
        leases = {j.job_id: j.lease_id for j in got.jobs}
        assert set(leases) == {job_a.job_id, job_b.job_id}

        resp = await client.post(f"/v1/jobs/{job_b.job_id}/cancel")
        assert resp.status_code == 200
        assert resp.json()["status"] == "cancelled"

        # Heartbeat every 6 s for 30 s: leases outlive their 10 s TTL because they are renewed.
        for _ in range(5):
            await trio.sleep(6 * unit)
            resp = await client.post(
                "/v1/bots/bot-1/heartbeat",
                json={
                    "session_id": session,
                    "state": "processing",
                    "active_leases": [*leases.values(), "stale-lease"],
                    "stats": {"done": 1},
                },
            )
            assert resp.status_code == 200, resp.text
            hb = codec.structure(resp.json(), HeartbeatResponse)
            assert hb.cancel_leases == [leases[job_b.job_id]]
            assert hb.lost_leases == ["stale-lease"]
            assert hb.lease_expires_at is not None
            assert hb.lease_expires_at.endswith("Z")
        view = (await client.get(f"/v1/jobs/{job_a.job_id}")).json()
        assert view["status"] == "leased"
        assert view["attempts"] == 1
        info = (await client.get("/v1/bots/bot-1")).json()
        assert info["state"] == "processing"

        resp = await client.post("/v1/bots/nobody/heartbeat", json={"session_id": "x"})
        assert resp.status_code == 404
        assert error_of(resp) == "unknown_bot"
        resp = await client.post("/v1/bots/bot-1/heartbeat", json={"session_id": "old"})
        assert resp.status_code == 409
        assert error_of(resp) == "session_superseded"
        resp = await client.post("/v1/bots/bot-1/heartbeat", json={"session_id": ""})
        assert resp.status_code == 400
        assert "session_id" in resp.json()["error"]["message"]


async def test_reregister_keeps_listed_leases_and_requeues_the_rest(
    clock: Clock | None,
    new_store: StoreMaker,
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        for _ in range(3):
            await submit(client)
        got = await claim(client, "bot-1", session, max_jobs=3)
        kept, dropped = got.jobs[0], got.jobs[1:]
        new_session = await register(client, active_leases=[kept.lease_id])
        info = (await client.get("/v1/bots/bot-1")).json()
        assert info["active_leases"] == [kept.lease_id]
        for job in dropped:
            view = (await client.get(f"/v1/jobs/{job.job_id}")).json()
            assert view["status"] == "queued", "dropped at once, not after the TTL"
        # The old session is over; the kept lease works under the new one.
        resp = await client.post("/v1/bots/bot-1/heartbeat", json={"session_id": session})
        assert resp.status_code == 409
        resp = await client.post(
            "/v1/bots/bot-1/heartbeat",
            json={"session_id": new_session, "active_leases": [kept.lease_id]},
        )
        assert resp.json()["lost_leases"] == []
        again = await claim(client, "bot-1", new_session, max_jobs=5)
        assert {j.job_id for j in again.jobs} == {j.job_id for j in dropped}
        assert all(j.attempt == 2 for j in again.jobs)


async def test_deregister(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        job = await submit(client, max_attempts=1)
        await claim(client, "bot-1", session)
        resp = await client.delete("/v1/bots/bot-1")
        assert resp.status_code == 400
        assert "session_id" in resp.json()["error"]["message"]
        resp = await client.delete("/v1/bots/bot-1", params={"session_id": "other"})
        assert resp.status_code == 409
        assert error_of(resp) == "session_superseded"
        resp = await client.delete("/v1/bots/nobody", params={"session_id": "x"})
        assert resp.status_code == 404
        assert error_of(resp) == "unknown_bot"
        resp = await client.delete("/v1/bots/bot-1", params={"session_id": session})
        assert resp.status_code == 204
        assert resp.content == b""
        view = (await client.get(f"/v1/jobs/{job.job_id}")).json()
        assert (view["status"], view["attempts"]) == ("queued", 0), "no attempt spent"
        assert (await client.get("/v1/bots/bot-1")).json()["status"] == "deregistered"
        resp = await client.post("/v1/bots/bot-1/heartbeat", json={"session_id": session})
        assert resp.status_code == 409
        assert error_of(resp) == "session_superseded"


async def test_submit_get_list_and_idempotency(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        resp = await client.post(
            "/v1/jobs",
            json={
                "kind": "simulate",
                "payload": {"n": [1, 2]},
                "max_attempts": 5,
                "timeout_s": 2.5,
                "priority": 3,
                "idempotency_key": "once",
            },
        )
        assert resp.status_code == 201
        job = codec.structure(resp.json(), JobView)
        assert (job.status, job.attempts, job.result, job.error) == ("queued", 0, None, None)
        assert (job.max_attempts, job.timeout_s, job.priority) == (5, 2.5, 3)
        assert job.created_at.endswith("Z")
        assert job.finished_at is None
        resp = await client.post("/v1/jobs", json={"kind": "simulate", "idempotency_key": "once"})
        assert resp.status_code == 200
        assert resp.json()["job_id"] == job.job_id

        fetched = codec.structure((await client.get(f"/v1/jobs/{job.job_id}")).json(), JobView)
        assert fetched == job
        resp = await client.get("/v1/jobs/nope")
        assert resp.status_code == 404
        assert error_of(resp) == "unknown_job"

        others = [await submit(client) for _ in range(3)]
        listed = codec.structure((await client.get("/v1/jobs")).json(), JobList)
        assert [j.job_id for j in listed.jobs] == [j.job_id for j in reversed([job, *others])]
        resp = await client.get("/v1/jobs", params={"status": "queued", "limit": 2})
        assert len(resp.json()["jobs"]) == 2
        resp = await client.get("/v1/jobs", params={"status": "succeeded"})
        assert resp.json()["jobs"] == []
        for params in [{"status": "bogus"}, {"limit": "0"}, {"limit": "x"}, {"limit": "5000"}]:
            resp = await client.get("/v1/jobs", params=params)
            assert resp.status_code == 400
            assert error_of(resp) == "invalid_request"
            assert next(iter(params)) in resp.json()["error"]["message"]
        for body, field in [
            ({"kind": "k", "max_attempts": 0}, "max_attempts"),
            ({"kind": "k", "timeout_s": -1}, "timeout_s"),
            ({"kind": "k", "priority": "high"}, "priority"),
            ({"kind": "k", "priority": 2**31}, "priority"),
            ({"kind": "k", "priority": -(2**31) - 1}, "priority"),
        ]:
            resp = await client.post("/v1/jobs", json=body)
            assert resp.status_code == 400
            assert field in resp.json()["error"]["message"]
        # Python's json (and so a producer's) writes Infinity; it is no timeout.
        resp = await client.post("/v1/jobs", content=b'{"kind": "k", "timeout_s": Infinity}')
        assert resp.status_code == 400, resp.text
        assert "timeout_s" in resp.json()["error"]["message"]


async def test_cancel(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        queued = await submit(client)
        resp = await client.post(f"/v1/jobs/{queued.job_id}/cancel")
        assert resp.status_code == 200
        assert resp.json()["status"] == "cancelled"
        assert resp.json()["finished_at"] is not None
        # Idempotent.
        assert (await client.post(f"/v1/jobs/{queued.job_id}/cancel")).status_code == 200
        assert (await claim(client, "bot-1", session)).jobs == [], "a cancelled job is not claimed"

        done = await submit(client)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        await client.post(
            f"/v1/leases/{lease}/ack", json={"lease_id": lease, "outcome": "succeeded"}
        )
        resp = await client.post(f"/v1/jobs/{done.job_id}/cancel")
        assert resp.status_code == 409
        assert error_of(resp) == "job_finished"
        resp = await client.post("/v1/jobs/nope/cancel")
        assert resp.status_code == 404
        assert error_of(resp) == "unknown_job"

        # A leased job is cancelled; its bot's ack is still accepted and the job stays cancelled.
        leased = await submit(client)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        await client.post(f"/v1/jobs/{leased.job_id}/cancel")
        resp = await client.post(
            f"/v1/leases/{lease}/ack", json={"lease_id": lease, "outcome": "succeeded"}
        )
        assert resp.json() == {"status": "recorded"}
        assert (await client.get(f"/v1/jobs/{leased.job_id}")).json()["status"] == "cancelled"


async def test_stats(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        await register(client, "bot-2")
        for _ in range(3):
            await submit(client)
        await claim(client, "bot-1", session)
        stats = codec.structure((await client.get("/v1/stats")).json(), Stats)
    assert stats.jobs == {
        "queued": 2,
        "leased": 1,
        "succeeded": 0,
        "failed": 0,
        "dead": 0,
        "cancelled": 0,
    }
    assert stats.bots == {"active": 2, "gone": 0, "deregistered": 0}


async def test_silent_bot_shows_gone_and_comes_back(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=5.0, heartbeat_interval_s=1.0)
    async with asgi_client(app) as client:
        session = await register(client)
        await trio.sleep(4)
        assert (await client.get("/v1/bots/bot-1")).json()["status"] == "active"
        await trio.sleep(2)
        assert (await client.get("/v1/bots/bot-1")).json()["status"] == "gone"
        await client.post("/v1/bots/bot-1/heartbeat", json={"session_id": session})
        assert (await client.get("/v1/bots/bot-1")).json()["status"] == "active"


async def test_claim_errors(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        resp = await client.post("/v1/jobs/claim", json={"bot_id": "nobody", "session_id": "s"})
        assert resp.status_code == 404
        assert error_of(resp) == "unknown_bot"
        resp = await client.post("/v1/jobs/claim", json={"bot_id": "bot-1", "session_id": "s"})
        assert resp.status_code == 409
        assert error_of(resp) == "session_superseded"
        cases: list[tuple[dict[str, Any], str]] = [
            ({"max_jobs": 1001}, "max_jobs"),
            ({"wait_s": 31}, "wait_s"),
            ({"wait_s": -1}, "wait_s"),
            ({"acks": [{"lease_id": "x", "outcome": "maybe"}]}, "outcome"),
            ({"kinds": [1]}, "kinds"),
        ]
        for extra, field in cases:
            body = {"bot_id": "bot-1", "session_id": session, **extra}
            resp = await client.post("/v1/jobs/claim", json=body)
            assert resp.status_code == 400, extra
            assert field in resp.json()["error"]["message"]


async def test_claim_order_priority_then_age_and_kinds(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        low = await submit(client, priority=0)
        high = await submit(client, priority=5)
        low2 = await submit(client, priority=0)
        other = await submit(client, kind="other", priority=9)
        got = await claim(client, "bot-1", session, max_jobs=10, kinds=["k"])
        assert [j.job_id for j in got.jobs] == [high.job_id, low.job_id, low2.job_id]
        assert all(j.attempt == 1 and j.lease_expires_at.endswith("Z") for j in got.jobs)
        rest = await claim(client, "bot-1", session, max_jobs=10)
        assert [j.job_id for j in rest.jobs] == [other.job_id]
        assert (await claim(client, "bot-1", session, max_jobs=0)).jobs == []


async def test_single_ack_statuses(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        job = await submit(client)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        ack = {"lease_id": lease, "outcome": "succeeded", "result": {"answer": 42}}
        first = await client.post(f"/v1/leases/{lease}/ack", json=ack)
        assert (first.status_code, first.json()) == (200, {"status": "recorded"})
        again = await client.post(f"/v1/leases/{lease}/ack", json=ack)
        assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
        other = await client.post(
            f"/v1/leases/{lease}/ack",
            json={"lease_id": lease, "outcome": "failed", "error": {"type": "x", "message": "m"}},
        )
        assert other.status_code == 409
        assert error_of(other) == "conflict"
        view = (await client.get(f"/v1/jobs/{job.job_id}")).json()
        assert view["status"] == "succeeded"
        assert view["result"] == {"answer": 42}
        assert view["finished_at"] is not None
        assert view["bot_id"] == "bot-1"

        resp = await client.post(
            "/v1/leases/nope/ack", json={"lease_id": "nope", "outcome": "released"}
        )
        assert resp.status_code == 404
        assert error_of(resp) == "unknown_lease"
        resp = await client.post(
            f"/v1/leases/{lease}/ack", json={"lease_id": "x", "outcome": "released"}
        )
        assert resp.status_code == 400
        assert "lease_id" in resp.json()["error"]["message"]


async def test_metrics(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), token="t")
    async with asgi_client(app, token="t") as client:
        session = await register(client)
        await submit(client)
        lease = (await claim(client, "bot-1", session)).jobs[0].lease_id
        await claim(client, "bot-1", session, acks=[{"lease_id": lease, "outcome": "succeeded"}])
        text = (await client.get("/metrics", headers={"Authorization": ""})).text
    assert "botd_server_claims_total 2.0" in text
    assert "botd_server_jobs_claimed_total 1.0" in text
    assert 'botd_server_acks_total{status="recorded"} 1.0' in text
    assert 'botd_server_jobs{status="succeeded"} 1.0' in text
    assert 'botd_server_bots{status="active"} 1.0' in text
    assert "botd_server_lease_expiries_total 0.0" in text
    assert "botd_server_store_up 1.0" in text
