"""What both stores do beside the protocol: pruning, the oldest queued job, giving leases back.

Each test runs on SQLite (autojump_clock) and on a real PostgreSQL (real time).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import trio
from trio.abc import Clock

from botd.models import Ack, ClaimRequest, FailureInfo, JobSubmit, RegisterRequest
from botd.server.store import SqliteStore, Store
from botd.server.store.postgres import PostgresStore
from tests.support.logcapture import captured_logs, events_of
from tests.support.server import StoreMaker, asgi_client, make_app

DAY = 86400.0


async def age_finished_jobs(store: Store, seconds: float) -> None:
    """Make every finished job look ``seconds`` older (as if time had passed)."""
    if isinstance(store, SqliteStore):
        store.backend._tx(
            lambda conn: conn.execute(
                "UPDATE jobs SET finished_at = finished_at - ? WHERE finished_at IS NOT NULL",
                (seconds,),
            )
        )
        return
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE jobs SET finished_at = finished_at - %s * interval '1 second'"
            " WHERE finished_at IS NOT NULL",
            (seconds,),
        )


async def finish(store: Store, bot: str, session: str, outcome: str) -> str:
    got = await store.claim(ClaimRequest(bot_id=bot, session_id=session), lease_ttl_s=30)
    (job,) = got.jobs
    ack = Ack(lease_id=job.lease_id, outcome=outcome, result="ok")  # type: ignore[arg-type]
    assert (await store.ack(ack)).status == "recorded"
    return job.job_id


async def test_prune_deletes_only_finished_jobs_past_the_retention(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    store = new_store()
    session, _ = await store.register(RegisterRequest(bot_id="b"), lease_ttl_s=30)
    for _ in range(3):
        await store.submit(JobSubmit(kind="k"))
    old = await finish(store, "b", session, "succeeded")
    await store.cancel_job(old_cancelled := (await store.submit(JobSubmit(kind="k")))[0].job_id)
    leased = (await store.claim(ClaimRequest(bot_id="b", session_id=session), lease_ttl_s=30)).jobs
    assert await store.prune(older_than_s=DAY) == 0, "nothing is old enough yet"
    await age_finished_jobs(store, 2 * DAY)
    recent = await finish(store, "b", session, "succeeded")
    assert await store.prune(older_than_s=DAY) == 2
    left = {j.job_id: j.status for j in await store.list_jobs(status=None, limit=100)}
    assert old not in left and old_cancelled not in left
    assert left[recent] == "succeeded"
    assert left[leased[0].job_id] == "leased"
    assert len(left) == 2
    assert await store.prune(older_than_s=DAY) == 0
    stats = await store.stats()
    assert sum(stats.jobs.values()) == len(left)


async def test_oldest_queued_job_per_kind(clock: Clock | None, new_store: StoreMaker) -> None:
    store = new_store()
    assert await store.oldest_queued() == {}
    await store.submit(JobSubmit(kind="a"))
    await trio.sleep(0.2)
    await store.submit(JobSubmit(kind="b"))
    ages = await store.oldest_queued()
    assert set(ages) == {"a", "b"}
    assert ages["a"] >= 0 and ages["b"] >= 0
    if clock is None:  # the wall clock moves only on real time
        assert ages["a"] >= ages["b"] + 0.1
    # A job waiting out a retry's backoff is not waiting for a bot: it does not count.
    session, _ = await store.register(RegisterRequest(bot_id="b"), lease_ttl_s=30)
    await store.submit(JobSubmit(kind="c", max_attempts=3))
    got = await store.claim(
        ClaimRequest(bot_id="b", session_id=session, kinds=["c"]), lease_ttl_s=30
    )
    failed = Ack(
        lease_id=got.jobs[0].lease_id,
        outcome="failed",
        error=FailureInfo("boom", "try again", retryable=True),
    )
    assert (await store.ack(failed)).status == "recorded"
    assert "c" not in await store.oldest_queued()
    app, _ = make_app(store=store)
    async with asgi_client(app) as client:
        text = (await client.get("/metrics")).text
    assert 'botd_server_oldest_queued_job_age_seconds{kind="a"}' in text
    assert 'botd_server_oldest_queued_job_age_seconds{kind="b"}' in text


async def test_release_gives_leases_back_without_spending_attempts(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    store = new_store()
    session, _ = await store.register(RegisterRequest(bot_id="b"), lease_ttl_s=30)
    view, _ = await store.submit(JobSubmit(kind="k", max_attempts=1))
    for _ in range(3):
        got = await store.claim(ClaimRequest(bot_id="b", session_id=session), lease_ttl_s=30)
        assert [j.attempt for j in got.jobs] == [1]
        assert await store.release([got.jobs[0].lease_id]) == 1
        job = await store.get_job(view.job_id)
        assert (job.status, job.attempts) == ("queued", 0)
    assert await store.release(["no-such-lease"]) == 0


async def test_an_outage_is_logged_once_a_second_not_per_request(
    autojump_clock: Clock, tmp_path: Path
) -> None:
    """A database that fails every request: 503 each time, one WARNING a second."""
    db = tmp_path / "jobs.db"
    db.write_bytes(b"this is not a database, it is garbage" * 100)
    app, _ = make_app(db=str(db))
    with captured_logs() as records:
        async with asgi_client(app, timers=False) as client:
            for _ in range(20):
                resp = await client.get("/v1/stats")
                assert resp.status_code == 503
            await trio.sleep(1.5)
            assert (await client.get("/v1/stats")).status_code == 503
    lines = events_of(records, "store_unavailable")
    assert [line["suppressed"] for line in lines] == [0, 19]
