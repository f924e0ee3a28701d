"""Identity on the server: token roles, session tokens, lease and session ownership, and
409 bot_id_in_use, over httpx.ASGITransport on both stores (SQLite on ``autojump_clock``,
PostgreSQL on real time).

The fleet of these tests: worker tokens A and B, a producer token P, an admin token.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from starlette.applications import Starlette
from trio.abc import Clock

from botd import codec
from botd.models import BotInfo, BotList, ErrorBody, RegisterResponse
from botd.server.auth import TokenEntry, Tokens
from botd.server.store import SqliteStore
from botd.server.store.interface import SCHEMA_VERSION
from tests.support.server import StoreMaker, asgi_client, make_app

WORKER_A = "worker-a-token-0123456789"
WORKER_B = "worker-b-token-0123456789"
PRODUCER = "producer-token-0123456789"
ADMIN = "admin-token-0123456789abc"
FLEET = Tokens(
    (
        TokenEntry("worker", WORKER_A, "a"),
        TokenEntry("worker", WORKER_B, "b"),
        TokenEntry("producer", PRODUCER, "p"),
        TokenEntry("admin", ADMIN, "ops"),
    )
)


def error_of(resp: httpx.Response) -> ErrorBody:
    body = codec.structure(resp.json(), ErrorBody)
    assert body.error.message, "every error says what to do"
    return body


@asynccontextmanager
async def clients(app: Starlette) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """A client per token of the fleet (the timer runs in the admin's)."""
    async with (
        asgi_client(app, token=ADMIN) as admin,
        asgi_client(app, token=WORKER_A, timers=False) as a,
        asgi_client(app, token=WORKER_B, timers=False) as b,
        asgi_client(app, token=PRODUCER, timers=False) as p,
        asgi_client(app, timers=False) as anon,
    ):
        yield {"admin": admin, "a": a, "b": b, "p": p, "anon": anon}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(client: httpx.AsyncClient, bot_id: str, **kw: Any) -> RegisterResponse:
    resp = await client.post("/v1/bots/register", json={"bot_id": bot_id, **kw})
    assert resp.status_code == 200, resp.text
    answer = codec.structure(resp.json(), RegisterResponse)
    assert answer.session_token
    return answer


def hb(session: RegisterResponse, leases: list[str] | None = None) -> dict[str, Any]:
    return {"session_id": session.session_id, "active_leases": leases or []}


async def test_each_role_makes_only_its_calls(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), tokens=FLEET)
    async with clients(app) as c:
        submitted = await c["a"].post("/v1/jobs", json={"kind": "k"})
        assert submitted.status_code == 403
        body = error_of(submitted)
        assert body.error.code == "forbidden"
        assert "producer" in body.error.message and "worker" in body.error.message
        for resp in [
            await c["a"].get("/v1/jobs"),
            await c["a"].get("/v1/stats"),
            await c["a"].get("/v1/bots"),
            await c["p"].post("/v1/bots/register", json={"bot_id": "x"}),
        ]:
            assert resp.status_code == 403, resp.text
            assert error_of(resp).error.code == "forbidden"
        # A worker token registers, then must use the session token for the session.
        session = await register(c["a"], "bot-a")
        resp = await c["a"].post("/v1/bots/bot-a/heartbeat", json=hb(session))
        assert resp.status_code == 403
        assert "session_token" in error_of(resp).error.message
        claim = {"bot_id": "bot-a", "session_id": session.session_id, "max_jobs": 1}
        refused = await c["p"].post("/v1/jobs/claim", json=claim)
        assert refused.status_code == 403
        assert error_of(refused).error.code == "forbidden"
        assert (await c["p"].post("/v1/jobs", json={"kind": "k"})).status_code == 201
        assert (await c["p"].get("/v1/stats")).status_code == 200
        assert (await c["p"].get("/v1/bots")).status_code == 200
        assert (await c["anon"].get("/v1/health")).status_code == 200
        assert (await c["anon"].get("/v1/stats")).status_code == 401
        assert (await c["anon"].get("/v1/stats", headers=bearer("x" * 43))).status_code == 401
        # The session token makes the session's calls, and nothing else.
        mine = bearer(session.session_token or "")
        assert (await c["anon"].post("/v1/jobs/claim", json=claim, headers=mine)).status_code == 200
        resp = await c["anon"].post("/v1/jobs", json={"kind": "k"}, headers=mine)
        assert resp.status_code == 403
        assert error_of(resp).error.code == "forbidden"
        resp = await c["anon"].post("/v1/bots/register", json={"bot_id": "z"}, headers=mine)
        assert resp.status_code == 403
        assert "worker token" in error_of(resp).error.message
        # Nothing the refused calls asked for happened: one job, queued, claimed by bot-a.
        jobs = (await c["admin"].get("/v1/jobs")).json()["jobs"]
        assert [job["status"] for job in jobs] == ["leased"]


async def test_bot_b_cannot_touch_bot_a(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), tokens=FLEET)
    async with clients(app) as c:
        a = await register(c["a"], "bot-a")
        b = await register(c["b"], "bot-b")
        as_a, as_b = bearer(a.session_token or ""), bearer(b.session_token or "")
        anon = c["anon"]
        job = (await c["p"].post("/v1/jobs", json={"kind": "k"})).json()
        claim = {"bot_id": "bot-a", "session_id": a.session_id, "max_jobs": 1}
        [leased] = (await anon.post("/v1/jobs/claim", json=claim, headers=as_a)).json()["jobs"]
        lease = leased["lease_id"]
        ack = {"lease_id": lease, "outcome": "succeeded", "result": {"by": "b"}}

        # B acks, releases (piggybacked), renews and deregisters A's lease and session.
        resp = await anon.post(f"/v1/leases/{lease}/ack", json=ack, headers=as_b)
        assert resp.status_code == 403
        assert error_of(resp).error.code == "not_lease_owner"
        release = {"lease_id": lease, "outcome": "released"}
        own_claim = {"bot_id": "bot-b", "session_id": b.session_id, "acks": [release]}
        resp = await anon.post("/v1/jobs/claim", json=own_claim, headers=as_b)
        assert resp.status_code == 403
        assert error_of(resp).error.code == "not_lease_owner"
        for path, body in [
            ("/v1/bots/bot-a/heartbeat", hb(a, [lease])),  # A's id and session
            ("/v1/bots/bot-a/heartbeat", hb(b, [lease])),  # A's id, B's session
            ("/v1/bots/bot-b/heartbeat", hb(a, [lease])),  # B's id, A's session
        ]:
            resp = await anon.post(path, json=body, headers=as_b)
            assert resp.status_code == 403, (path, resp.text)
            assert error_of(resp).error.code == "not_session_owner"
        as_a_claim = {**claim, "acks": [ack]}
        resp = await anon.post("/v1/jobs/claim", json=as_a_claim, headers=as_b)
        assert error_of(resp).error.code == "not_session_owner"
        params = {"session_id": a.session_id}
        resp = await anon.delete("/v1/bots/bot-a", params=params, headers=as_b)
        assert resp.status_code == 403
        assert error_of(resp).error.code == "not_session_owner"
        # B's own heartbeat listing A's lease does not renew it: it is lost to B.
        resp = await anon.post("/v1/bots/bot-b/heartbeat", json=hb(b, [lease]), headers=as_b)
        assert resp.status_code == 200
        assert resp.json()["lost_leases"] == [lease]

        # B cannot read A's session id or leases anywhere; the producer neither.
        for client, headers in [(anon, as_b), (c["b"], {})]:
            resp = await client.get("/v1/bots", headers=headers)
            assert resp.status_code == 403
            assert a.session_id not in resp.text
        listed = codec.structure((await c["p"].get("/v1/bots")).json(), BotList)
        assert all(bot.session_id is None and bot.active_leases == [] for bot in listed.bots)
        assert {bot.bot_id: bot.lease_count for bot in listed.bots} == {"bot-a": 1, "bot-b": 0}
        got = await anon.get("/v1/bots/bot-a", headers=as_b)
        assert got.status_code == 200
        shown = codec.structure(got.json(), BotInfo)
        assert (shown.session_id, shown.active_leases, shown.lease_count) == (None, [], 1)
        assert a.session_id not in (await c["p"].get("/v1/bots/bot-a")).text
        # The session itself and an admin see them.
        for client, headers in [(anon, as_a), (c["admin"], {})]:
            seen = codec.structure(
                (await client.get("/v1/bots/bot-a", headers=headers)).json(), BotInfo
            )
            assert (seen.session_id, seen.active_leases) == (a.session_id, [lease])
        admin_list = (await c["admin"].get("/v1/bots")).json()
        assert a.session_id not in str(admin_list) and lease not in str(admin_list)

        # Nothing B tried changed anything: A's job is leased by A, and A finishes it.
        view = (await c["p"].get(f"/v1/jobs/{job['job_id']}")).json()
        assert (view["status"], view["bot_id"], view["result"]) == ("leased", "bot-a", None)
        resp = await anon.post("/v1/bots/bot-a/heartbeat", json=hb(a, [lease]), headers=as_a)
        assert resp.json()["lost_leases"] == []
        mine = {"lease_id": lease, "outcome": "succeeded", "result": {"by": "a"}}
        resp = await anon.post(f"/v1/leases/{lease}/ack", json=mine, headers=as_a)
        assert resp.json() == {"status": "recorded"}
        assert (await c["p"].get(f"/v1/jobs/{job['job_id']}")).json()["result"] == {"by": "a"}
        deregistered = await anon.delete("/v1/bots/bot-a", params=params, headers=as_a)
        assert deregistered.status_code == 204


async def test_a_live_bot_id_is_refused_to_a_worker_unless_it_proves_continuity(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store(), tokens=FLEET, lease_ttl_s=1.0, heartbeat_interval_s=0.2)
    async with clients(app) as c:
        first = await register(c["a"], "bot-a", hostname="host-1", pid=11)
        as_first = bearer(first.session_token or "")
        # Another worker (or the same worker token, without the session's token): refused.
        for client, extra in [
            (c["b"], {}),
            (c["a"], {}),
            (c["a"], {"previous_session_token": "not-the-token-of-that-session"}),
        ]:
            resp = await client.post(
                "/v1/bots/register", json={"bot_id": "bot-a", "hostname": "host-2", **extra}
            )
            assert resp.status_code == 409, resp.text
            body = error_of(resp)
            assert body.error.code == "bot_id_in_use"
            assert body.error.holder is not None
            assert (body.error.holder.hostname, body.error.holder.pid) == ("host-1", 11)
            assert body.error.holder.since
            assert first.session_id not in resp.text
        # ... and nothing changed: the first session goes on.
        resp = await c["anon"].post("/v1/bots/bot-a/heartbeat", json=hb(first), headers=as_first)
        assert resp.status_code == 200
        # The previous session's token proves continuity: a new session at once.
        second = await register(
            c["a"], "bot-a", hostname="host-1", pid=12, previous_session_token=first.session_token
        )
        assert second.session_id != first.session_id
        old = await c["anon"].post("/v1/bots/bot-a/heartbeat", json=hb(first), headers=as_first)
        assert old.status_code == 409
        assert error_of(old).error.code == "session_superseded"
        # A superseded token no longer proves anything.
        resp = await c["b"].post(
            "/v1/bots/register",
            json={"bot_id": "bot-a", "previous_session_token": first.session_token},
        )
        assert error_of(resp).error.code == "bot_id_in_use"
        # Once the session goes silent past gone_after (max(1, 3 * 0.2) s), the id is free.
        await trio.sleep(1.5)
        third = await register(c["b"], "bot-a", hostname="host-3")
        # Deregistered: free at once.
        as_third = bearer(third.session_token or "")
        params = {"session_id": third.session_id}
        resp = await c["anon"].delete("/v1/bots/bot-a", params=params, headers=as_third)
        assert resp.status_code == 204
        await register(c["a"], "bot-a")


async def test_an_admin_register_supersedes_a_live_session_as_in_v1(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store(), tokens=FLEET)
    async with clients(app) as c:
        first = await register(c["a"], "bot-a")
        second = await register(c["admin"], "bot-a")
        assert second.session_id != first.session_id
        # An admin may still make a session's calls the v1 way, with the session_id.
        resp = await c["admin"].post("/v1/bots/bot-a/heartbeat", json=hb(second))
        assert resp.status_code == 200
        resp = await c["admin"].post("/v1/bots/bot-a/heartbeat", json=hb(first))
        assert error_of(resp).error.code == "session_superseded"
        stale = bearer(first.session_token or "")
        resp = await c["anon"].post("/v1/bots/bot-a/heartbeat", json=hb(first), headers=stale)
        assert resp.status_code == 409
        assert error_of(resp).error.code == "session_superseded"


async def test_dev_mode_issues_session_tokens_and_admits_everyone(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client, "bot-a")
        resp = await client.post("/v1/bots/bot-a/heartbeat", json=hb(session))
        assert resp.status_code == 200
        other = await register(client, "bot-b")
        as_b = bearer(other.session_token or "")
        # A session token is that session, even in dev mode.
        resp = await client.post("/v1/bots/bot-a/heartbeat", json=hb(session), headers=as_b)
        assert error_of(resp).error.code == "not_session_owner"
        assert (await client.post("/v1/jobs", json={"kind": "k"})).status_code == 201


async def test_the_single_token_is_admin(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store(), token="s3cret-single-token")
    async with asgi_client(app, token="s3cret-single-token") as client:
        first = await register(client, "bot-a")
        await register(client, "bot-a")  # supersedes, as in v1
        assert (await client.get(f"/v1/bots/{'bot-a'}")).json()["session_id"] != first.session_id
        assert (await client.post("/v1/jobs", json={"kind": "k"})).status_code == 201


async def test_a_reloaded_token_table_applies_to_the_next_request(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    from botd.server.app import gate_of

    app, _ = make_app(store=new_store(), tokens=FLEET)
    async with clients(app) as c:
        assert (await c["p"].get("/v1/stats")).status_code == 200
        gate_of(app).tokens = Tokens((TokenEntry("admin", ADMIN),))
        assert (await c["p"].get("/v1/stats")).status_code == 401
        assert (await c["admin"].get("/v1/stats")).status_code == 200


def test_a_version_2_sqlite_database_migrates(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"

    async def use() -> None:
        store = SqliteStore(str(path))
        await store.open(lease_ttl_s=30)
        await store.aclose()

    trio.run(use)
    with sqlite3.connect(path) as conn:  # as botd with schema 2 left it
        conn.execute("DROP TABLE sessions")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    trio.run(use)
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert int(version) == SCHEMA_VERSION == 3
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


@pytest.mark.parametrize("store_kind", ["postgres"])
def test_a_version_2_postgres_database_migrates(store_kind: str, store_database: str) -> None:
    import psycopg

    from botd.server.store.postgres import MIGRATIONS, PostgresStore

    with psycopg.connect(store_database, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        conn.execute("CREATE TABLE botd_schema (version integer PRIMARY KEY,"
                     " applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        for version, sql in MIGRATIONS[:2]:
            conn.execute(sql)
            conn.execute("INSERT INTO botd_schema (version) VALUES (%s)", (version,))

    async def use() -> None:
        store = PostgresStore(store_database, pool_size=2, statement_timeout_s=10.0)
        try:
            await store.open(lease_ttl_s=30)
            assert await store.session_of("0" * 64) is None
        finally:
            await store.aclose()

    trio.run(use)
    with psycopg.connect(store_database) as conn:
        row = conn.execute("SELECT max(version) FROM botd_schema").fetchone()
        assert row is not None and row[0] == 3
