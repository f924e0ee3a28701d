"""Two first registers of one brand-new bot id at the same moment, on a real PostgreSQL:
they take turns, so exactly one gets the session and the other's worker token gets 409
``bot_id_in_use``.

The overlap is made certain, not hoped for: a third connection holds the ``sessions`` table
locked, so the first register stops inside its transaction (after its bot row, before its
session row) until both registers are seen waiting on a lock in ``pg_stat_activity``; then
the table is let go. Without the serialisation the second would wait only for the first's
new row and then overwrite its session (both answered 200).
"""

from __future__ import annotations

import httpx
import psycopg
import pytest
import trio
from trio.abc import Clock

from botd import codec
from botd.models import ErrorBody, RegisterResponse
from tests.asgi.test_server_auth import FLEET, WORKER_A, WORKER_B
from tests.support.server import StoreMaker, asgi_client, make_app

WAIT_DEADLINE_S = 20.0


def _waiting_on_locks(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("store_kind", ["postgres"])
async def test_two_first_registers_of_a_new_bot_id_take_turns(
    clock: Clock | None, new_store: StoreMaker, store_database: str
) -> None:
    app, _ = make_app(store=new_store(), tokens=FLEET)
    answers: dict[str, httpx.Response] = {}
    async with (
        asgi_client(app, token=WORKER_A, timers=False) as a,
        asgi_client(app, token=WORKER_B, timers=False) as b,
    ):
        # The schema exists before the table is locked.
        warm = await a.post("/v1/bots/register", json={"bot_id": "warm-up"})
        assert warm.status_code == 200, warm.text
        blocker = await trio.to_thread.run_sync(psycopg.connect, store_database)
        try:
            await trio.to_thread.run_sync(
                lambda: blocker.execute("LOCK TABLE sessions IN EXCLUSIVE MODE")
            )

            async def register(name: str, client: httpx.AsyncClient) -> None:
                answers[name] = await client.post(
                    "/v1/bots/register",
                    json={"bot_id": "bot-new", "hostname": f"host-{name}", "pid": 1},
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(register, "a", a)
                nursery.start_soon(register, "b", b)
                with trio.fail_after(WAIT_DEADLINE_S):
                    while await trio.to_thread.run_sync(_waiting_on_locks, blocker) < 2:
                        await trio.sleep(0.02)
                await trio.to_thread.run_sync(blocker.commit)
        finally:
            await trio.to_thread.run_sync(blocker.close)
    codes = sorted(resp.status_code for resp in answers.values())
    assert codes == [200, 409], {name: resp.text for name, resp in answers.items()}
    won = next(name for name, resp in answers.items() if resp.status_code == 200)
    lost = answers["b" if won == "a" else "a"]
    error = codec.structure(lost.json(), ErrorBody).error
    assert error.code == "bot_id_in_use"
    assert error.holder is not None and error.holder.hostname == f"host-{won}"
    session = codec.structure(answers[won].json(), RegisterResponse)
    assert session.session_id not in lost.text
    async with asgi_client(app, timers=False) as anon:
        beat = await anon.post(
            "/v1/bots/bot-new/heartbeat",
            json={"session_id": session.session_id, "active_leases": []},
            headers={"Authorization": f"Bearer {session.session_token}"},
        )
    assert beat.status_code == 200, "the winner's session is the one in force"
