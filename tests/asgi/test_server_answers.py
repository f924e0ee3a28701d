"""No request answers 500 after a change (issue 12), on both stores.

Every mutating route validates its request before its transaction (the border, see
test_server_bounds.py) and answers what its transaction read. What it read can always be
encoded: a stored value no answer may hold (a row from before the border's bounds: an
Infinity or NaN in a number column or in JSON text, a payload nested 400 deep,
the audit's poison) reads as null (``records.stored_json``, ``records.finite``). So a
cancel, a claim, a retry or a submit that changed the store answers 200 with valid JSON,
never a 500 after its commit; and every read route keeps answering.
"""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import psycopg
import pytest
from trio.abc import Clock

from botd.server.core import ServerCore
from botd.server.store import SqliteStore, Store
from botd.server.store.postgres import PostgresStore
from botd.server.store.records import stored_json
from tests.support.server import StoreMaker, asgi_client, make_app

DEEP = "[" * 400 + "]" * 400


def strict_json(resp: httpx.Response) -> Any:
    """The answer's JSON, refusing the bare NaN and Infinity that JSON does not have."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in an answer: {resp.text[:200]}")

    return json.loads(resp.content, parse_constant=refuse)


def poison(store: Store, payload: str, result: str) -> None:
    """Give every job what a row from before the bounds may hold (not through the API)."""
    if isinstance(store, SqliteStore):
        store.backend._tx(
            lambda conn: conn.execute(
                "UPDATE jobs SET timeout_s = 9e999, retry_base_s = -9e999, retry_max_s = 9e999,"
                " payload = ?, result = CASE WHEN result IS NULL THEN NULL ELSE ? END",
                (payload, result),
            )
        )
        return
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET timeout_s = 'Infinity', retry_base_s = '-Infinity',"
            " retry_max_s = 'NaN', payload = %s,"
            " result = CASE WHEN result IS NULL THEN NULL ELSE %s END",
            (payload, result),
        )


async def test_changes_answer_valid_json_whatever_their_rows_hold(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    store = new_store()
    app, _ = make_app(store=store)
    async with asgi_client(app) as client:
        session = (await client.post("/v1/bots/register", json={"bot_id": "b"})).json()
        claim = {"bot_id": "b", "session_id": session["session_id"], "max_jobs": 1}
        body = {"kind": "k", "timeout_s": 5, "retry_base_s": 1, "retry_max_s": 2}
        # Two jobs end before the poison: one succeeded (with a result), one failed.
        for outcome in ("succeeded", "failed"):
            await client.post("/v1/jobs", json={**body, "payload": outcome})
            (leased,) = (await client.post("/v1/jobs/claim", json=claim)).json()["jobs"]
            ack = {"lease_id": leased["lease_id"], "outcome": outcome, "result": {"r": 1}}
            if outcome == "failed":
                ack["error"] = {"type": "t", "message": "m", "retryable": False}
            resp = await client.post(f"/v1/leases/{leased['lease_id']}/ack", json=ack)
            assert resp.status_code == 200, resp.text
            if outcome == "failed":
                failed = leased["job_id"]
            else:
                succeeded = leased["job_id"]
        keyed = (await client.post("/v1/jobs", json={**body, "idempotency_key": "once"})).json()
        queued = [(await client.post("/v1/jobs", json=body)).json()["job_id"] for _ in range(2)]
        poison(store, DEEP, '{"r": Infinity}')

        answers: dict[str, httpx.Response] = {
            "submit again": await client.post("/v1/jobs", json={**body, "idempotency_key": "once"}),
            "batch": await client.post(
                "/v1/jobs/batch", json={"jobs": [{**body, "idempotency_key": "once"}, body]}
            ),
            "cancel": await client.post(f"/v1/jobs/{queued[0]}/cancel"),
            "claim": await client.post("/v1/jobs/claim", json=claim),
            "retry": await client.post(f"/v1/jobs/{failed}/retry"),
            "get": await client.get(f"/v1/jobs/{succeeded}"),
            "list": await client.get("/v1/jobs", params={"limit": 1000}),
            "bots": await client.get("/v1/bots"),
            "stats": await client.get("/v1/stats"),
        }
        for name, resp in answers.items():
            assert resp.status_code in (200, 201), (name, resp.text[:300])
            strict_json(resp)

        # The changes happened, and their answers say so.
        assert answers["submit again"].json()["job_id"] == keyed["job_id"]
        batch = answers["batch"].json()
        assert batch["created"] == 1 and batch["jobs"][0]["job_id"] == keyed["job_id"]
        cancelled = answers["cancel"].json()
        assert cancelled["status"] == "cancelled" and cancelled["payload"] is None
        (claimed,) = answers["claim"].json()["jobs"]
        assert claimed["payload"] is None and claimed["timeout_s"] is None
        assert answers["retry"].json()["status"] == "queued"
        got = answers["get"].json()
        assert got["result"] == {"r": None} and got["payload"] is None
        assert (got["timeout_s"], got["retry_base_s"], got["retry_max_s"]) == (None, None, None)
        listed = answers["list"].json()["jobs"]
        assert len(listed) == 6 and all(job["payload"] is None for job in listed)
        assert {job["job_id"]: job["status"] for job in listed}[claimed["job_id"]] == "leased"


def test_stored_json_reads_what_no_answer_may_hold_as_null() -> None:
    assert stored_json('{"a": [1, 2.5, "x", true, null]}') == {"a": [1, 2.5, "x", True, None]}
    assert stored_json('{"a": [NaN, Infinity, -Infinity]}') == {"a": [None] * 3}
    assert stored_json("[" * 64 + "]" * 64) is not None  # 64 levels: within bounds
    assert stored_json("[" * 65 + "]" * 65) is None
    assert stored_json('{"a":' * 65 + "1" + "}" * 65) is None
    assert stored_json("[" * 100_000 + "]" * 100_000) is None  # past json's own limit
    assert stored_json("not json") is None
    assert stored_json("[" + "[1]," * 1000 + "[]]") is not None  # wide is not deep


def test_a_register_answer_always_encodes_so_its_numbers_are_finite() -> None:
    """A register's answer carries lease_ttl_s and heartbeat_interval_s: a server with an
    infinite one would store each session and then fail its answer."""
    for bad in (
        {"lease_ttl_s": math.inf},
        {"heartbeat_interval_s": math.inf},
        {"lease_ttl_s": math.nan},
    ):
        with pytest.raises(ValueError, match="finite"):
            ServerCore(SqliteStore(":memory:"), **bad)
