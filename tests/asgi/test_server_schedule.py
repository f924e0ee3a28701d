"""Producers' extensions over ASGITransport, on both stores: delayed jobs (``run_at``,
``delay_s``), each job's own retry backoff, retrying dead and failed jobs (one, or in
bulk), listing by kind, and the ``scheduled`` count and ``botd_server_queue_depth`` that
autoscaling reads. Plus: a SQLite file keeps a delay (and a retry's backoff) across a
restart, on the wall clock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio.abc import Clock

from botd.models import Ack, ClaimRequest, FailureInfo, JobSubmit, RegisterRequest
from botd.server.store import SqliteStore, retry_backoff
from botd.timestamps import parse_rfc3339, rfc3339
from tests.asgi.test_server_work import claim, job, register, slack, submit
from tests.support.server import StoreMaker, asgi_client, make_app

FAIL = {"type": "boom", "message": "it broke", "retryable": True}


async def fail(client: httpx.AsyncClient, session: str, lease: str, *, retryable: bool) -> None:
    ack = {"lease_id": lease, "outcome": "failed", "error": {**FAIL, "retryable": retryable}}
    got = await claim(client, "bot-1", session, acks=[ack], max_jobs=0)
    assert got.acks[0].status == "recorded"


async def failed_job(client: httpx.AsyncClient, session: str, **kw: Any) -> str:
    """A job that ended ``failed`` (a non-retryable failure on its first attempt)."""
    job_id = await submit(client, **kw)
    got = await claim(client, "bot-1", session, kinds=[kw.get("kind", "k")])
    assert [j.job_id for j in got.jobs] == [job_id]
    await fail(client, session, got.jobs[0].lease_id, retryable=False)
    return job_id


def error_of(resp: httpx.Response) -> tuple[int, str, str]:
    body = resp.json()["error"]
    return resp.status_code, body["code"], body["message"]


# --- delayed jobs -------------------------------------------------------------------------


async def test_a_delayed_job_is_not_claimed_before_it_is_due_and_wakes_a_long_poll(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    # Shorter than the timer's 1 s pass: it must be told of the new deadline.
    delay = 0.3 if clock is not None else 1.0
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        submitted = time.time()
        resp = await client.post("/v1/jobs", json={"kind": "k", "delay_s": delay})
        assert resp.status_code == 201, resp.text
        view = resp.json()
        assert view["status"] == "queued"
        due = parse_rfc3339(view["run_at"])
        assert submitted + delay - 0.5 <= due <= time.time() + delay + 0.5
        stats = (await client.get("/v1/stats")).json()
        assert (stats["scheduled"], stats["jobs"]["queued"]) == (1, 1)
        assert set(stats["jobs"]) == {
            "queued",
            "leased",
            "succeeded",
            "failed",
            "dead",
            "cancelled",
        }
        assert (await claim(client, "bot-1", session)).jobs == []
        start = trio.current_time()
        got = await claim(client, "bot-1", session, wait_s=10)
        assert [j.job_id for j in got.jobs] == [view["job_id"]]
        waited = trio.current_time() - start
        assert delay - slack(clock) <= waited + slack(clock) and waited < delay + slack(clock)
        assert (await client.get("/v1/stats")).json()["scheduled"] == 0


async def test_run_at_in_the_future_and_in_the_past(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    ahead = 4.0 if clock is not None else 1.0
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        later_at = rfc3339(time.time() + ahead)
        later = (await client.post("/v1/jobs", json={"kind": "k", "run_at": later_at})).json()
        assert later["run_at"] == later_at
        past_at = "2001-02-03T04:05:06.789+01:00"
        past = (await client.post("/v1/jobs", json={"kind": "k", "run_at": past_at})).json()
        assert past["run_at"] == "2001-02-03T03:05:06.789Z", "kept, in UTC"
        plain = (await client.post("/v1/jobs", json={"kind": "k", "delay_s": 0})).json()
        assert plain["run_at"] is None, "null for a job due at its submit"
        got = await claim(client, "bot-1", session, max_jobs=10)
        assert sorted(j.job_id for j in got.jobs) == sorted([past["job_id"], plain["job_id"]])
        got = await claim(client, "bot-1", session, wait_s=10)
        assert [j.job_id for j in got.jobs] == [later["job_id"]]


async def test_a_batch_takes_delays_too(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        jobs = [{"kind": "k"}, {"kind": "k", "delay_s": 3600}, {"kind": "k", "retry_max_s": 9}]
        resp = await client.post("/v1/jobs/batch", json={"jobs": jobs})
        assert resp.status_code == 201, resp.text
        views = resp.json()["jobs"]
        assert [v["run_at"] is None for v in views] == [True, False, True]
        assert views[2]["retry_max_s"] == 9 and views[2]["retry_base_s"] is None
        assert (await client.get("/v1/stats")).json()["scheduled"] == 1
        bad = await client.post("/v1/jobs/batch", json={"jobs": [{"kind": "k", "delay_s": -1}]})
        assert bad.status_code == 400 and "delay_s" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"run_at": "2030-01-01T00:00:00Z", "delay_s": 5}, ("run_at", "delay_s")),
        ({"run_at": "tomorrow"}, ("run_at",)),
        ({"run_at": "2030-01-01T00:00:00"}, ("run_at",)),  # no time zone
        ({"run_at": 17}, ("run_at",)),
        ({"delay_s": -0.5}, ("delay_s",)),
        ({"delay_s": 31_536_001}, ("delay_s",)),
        ({"retry_base_s": 0}, ("retry_base_s",)),
        ({"retry_max_s": 86_401}, ("retry_max_s",)),
        ({"retry_base_s": 10, "retry_max_s": 5}, ("retry_base_s", "retry_max_s")),
    ],
)
async def test_bad_schedules_are_400_naming_the_fields(
    autojump_clock: Clock, body: dict[str, Any], names: tuple[str, ...]
) -> None:
    app, _ = make_app()
    async with asgi_client(app) as client:
        resp = await client.post("/v1/jobs", json={"kind": "k", **body})
        status, code, message = error_of(resp)
        assert (status, code) == (400, "invalid_request")
        assert all(name in message for name in names), message
        assert (await client.get("/v1/stats")).json()["jobs"]["queued"] == 0


def test_a_sqlite_file_keeps_delays_and_backoffs_across_a_restart(tmp_path: Path) -> None:
    """The monotonic clock of the next process means nothing: the due times come back
    from the wall clock. Neither the delay nor the retry backs off to 'due' at a restart."""
    db = str(tmp_path / "jobs.db")
    wall = 1_800_000_000.0

    def store_at(mono: float, wall_now: float) -> SqliteStore:
        return SqliteStore(db, now=lambda: mono, wall=lambda: wall_now)

    async def first_run() -> tuple[str, str]:
        store = store_at(100.0, wall)
        await store.open(lease_ttl_s=30)
        delayed, _ = await store.submit(JobSubmit(kind="k", delay_s=3600))
        backoff, _ = await store.submit(
            JobSubmit(kind="k", retry_base_s=600, retry_max_s=600, max_attempts=3)
        )
        session, _ = await store.register(RegisterRequest(bot_id="b"), lease_ttl_s=30)
        (leased,) = (
            await store.claim(ClaimRequest(bot_id="b", session_id=session), lease_ttl_s=30)
        ).jobs
        assert leased.job_id == backoff.job_id
        error = FailureInfo("boom", "again", retryable=True)
        ack = Ack(lease_id=leased.lease_id, outcome="failed", error=error)
        assert (await store.ack(ack)).status == "recorded"
        await store.aclose()
        return delayed.job_id, backoff.job_id

    async def due_after_restart(mono: float, wall_now: float) -> set[str]:
        store = store_at(mono, wall_now)
        await store.open(lease_ttl_s=30)
        session, _ = await store.register(RegisterRequest(bot_id="c"), lease_ttl_s=30)
        req = ClaimRequest(bot_id="c", session_id=session, max_jobs=10)
        stats = await store.stats()
        got = {j.job_id for j in (await store.claim(req, lease_ttl_s=30)).jobs}
        for job_id in got:  # give them back, for the next restart
            await store.release([j for j in await leases_of(store, job_id)])
        await store.aclose()
        assert stats.scheduled == 2 - len(got)
        return got

    async def leases_of(store: SqliteStore, job_id: str) -> list[str]:
        bots = await store.list_bots()
        return [lease for b in bots for lease in b.active_leases]

    delayed, backoff = trio.run(first_run)
    # A new process: its monotonic clock starts anywhere (here: far behind the first one's).
    assert trio.run(due_after_restart, 5.0, wall + 60) == set()
    assert trio.run(due_after_restart, 7.0, wall + 601) == {backoff}
    assert trio.run(due_after_restart, 9.0, wall + 3601) == {backoff, delayed}


# --- each job's own retry backoff ---------------------------------------------------------


async def test_a_jobs_own_retry_backoff(clock: Clock | None, new_store: StoreMaker) -> None:
    base, most = (2.0, 3.0) if clock is not None else (0.3, 0.5)
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        body = {"max_attempts": 4, "retry_base_s": base, "retry_max_s": most}
        job_id = await submit(client, **body)
        view = await job(client, job_id)
        assert (view["retry_base_s"], view["retry_max_s"]) == (base, most)
        waits = []
        for attempt in (1, 2, 3, 4):
            start = trio.current_time()
            (leased,) = (await claim(client, "bot-1", session, wait_s=30)).jobs
            assert leased.attempt == attempt
            waits.append(trio.current_time() - start)
            await fail(client, session, leased.lease_id, retryable=True)
        expected = [retry_backoff(n, base, most) for n in (1, 2, 3)]
        assert expected == [base, most, most]
        for waited, want in zip(waits[1:], expected, strict=True):
            assert abs(waited - want) < slack(clock), (waits, expected)
        assert (await job(client, job_id))["status"] == "failed"
        plain = await job(client, await submit(client))
        assert (plain["retry_base_s"], plain["retry_max_s"]) == (None, None)


# --- retrying dead and failed jobs --------------------------------------------------------


async def test_retry_puts_a_dead_job_back_with_fresh_attempts(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store(), lease_ttl_s=1.0)
    async with asgi_client(app) as client:
        session = await register(client)
        job_id = await submit(client, max_attempts=1)
        (old,) = (await claim(client, "bot-1", session)).jobs
        await trio.sleep(1.5)
        dead = await job(client, job_id)
        assert dead["status"] == "dead" and dead["finished_at"] is not None
        got: list[Any] = []

        async def waiting_claim() -> None:
            got.append(await claim(client, "bot-1", session, wait_s=20))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting_claim)
            await trio.sleep(1)
            resp = await client.post(f"/v1/jobs/{job_id}/retry")
            retried_at = trio.current_time()
        assert resp.status_code == 200, resp.text
        view = resp.json()
        assert (view["status"], view["attempts"], view["finished_at"], view["result"]) == (
            "queued",
            0,
            None,
            None,
        )
        assert view["error"] == dead["error"], "the last failure stays"
        ((answer),) = got
        assert [(j.job_id, j.attempt) for j in answer.jobs] == [(job_id, 1)], "woken, leased"
        assert trio.current_time() - retried_at < slack(clock) + 0.01
        # The lease from before the retry has lost its job.
        late = {"lease_id": old.lease_id, "outcome": "succeeded", "result": "late"}
        resp = await client.post(f"/v1/leases/{old.lease_id}/ack", json=late)
        assert error_of(resp)[:2] == (409, "lease_lost")
        new = answer.jobs[0].lease_id
        ok = {"lease_id": new, "outcome": "succeeded", "result": "again"}
        assert (await client.post(f"/v1/leases/{new}/ack", json=ok)).status_code == 200
        assert (await job(client, job_id))["result"] == "again"


async def test_retry_of_a_job_that_is_not_dead_or_failed(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        queued = await submit(client, kind="q")
        status, code, message = error_of(await client.post(f"/v1/jobs/{queued}/retry"))
        assert (status, code) == (409, "job_not_retryable")
        assert "'queued'" in message and "cancel" in message
        leased = await submit(client)
        (lease,) = (await claim(client, "bot-1", session, kinds=["k"])).jobs
        ok = {"lease_id": lease.lease_id, "outcome": "succeeded"}
        await claim(client, "bot-1", session, acks=[ok], max_jobs=0)
        status, code, message = error_of(await client.post(f"/v1/jobs/{leased}/retry"))
        assert (status, code) == (409, "job_not_retryable")
        assert "'succeeded'" in message and "submit" in message
        status, code, _ = error_of(await client.post("/v1/jobs/nope/retry"))
        assert (status, code) == (404, "unknown_job")


async def test_bulk_retry_by_status_and_kind(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        session = await register(client)
        a = [await failed_job(client, session, kind="a") for _ in range(3)]
        b = await failed_job(client, session, kind="b")
        await submit(client, kind="a")  # queued: not retried
        resp = await client.post(
            "/v1/jobs/retry", json={"status": "failed", "kind": "a", "limit": 2}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"retried": 2, "job_ids": a[:2]}, "oldest first"
        resp = await client.post("/v1/jobs/retry", json={"status": "failed"})
        assert resp.json() == {"retried": 2, "job_ids": [a[2], b]}
        resp = await client.post("/v1/jobs/retry", json={"status": "dead"})
        assert resp.json() == {"retried": 0, "job_ids": []}
        for job_id in [*a, b]:
            view = await job(client, job_id)
            assert (view["status"], view["attempts"]) == ("queued", 0)
            assert view["error"]["type"] == "boom"
        for body in ({"status": "queued"}, {}, {"status": "failed", "limit": 0},
                     {"status": "failed", "limit": 10_001}):  # fmt: skip
            status, code, message = error_of(await client.post("/v1/jobs/retry", json=body))
            assert (status, code) == (400, "invalid_request"), body
            assert ("status" if "limit" not in body else "limit") in message, message


# --- listing by kind, stats and metrics -----------------------------------------------------


async def test_list_by_kind_and_the_autoscaling_signals(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        a = [await submit(client, kind="a") for _ in range(2)]
        await submit(client, kind="b")
        await submit(client, kind="c", delay_s=3600)  # not due: no depth for c
        listed = (await client.get("/v1/jobs", params={"kind": "a"})).json()["jobs"]
        assert [j["job_id"] for j in listed] == a[::-1]
        listed = (await client.get("/v1/jobs", params={"kind": "c", "status": "queued"})).json()
        assert len(listed["jobs"]) == 1
        assert (await client.get("/v1/jobs", params={"kind": "zzz"})).json()["jobs"] == []
        stats = (await client.get("/v1/stats")).json()
        assert (stats["scheduled"], stats["jobs"]["queued"]) == (1, 4)
        text = (await client.get("/metrics")).text
        assert 'botd_server_queue_depth{kind="a"} 2.0' in text
        assert 'botd_server_queue_depth{kind="b"} 1.0' in text
        assert 'botd_server_queue_depth{kind="c"}' not in text
        assert "botd_server_jobs_scheduled 1.0" in text
