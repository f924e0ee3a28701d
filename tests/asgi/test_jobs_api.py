"""botd.AsyncJobsClient against the reference server in-process (httpx.ASGITransport, the
lease timer running, on autojump_clock): what a producer sees of each route.

A fake bot (raw protocol calls on the same app) claims, acks or abandons the jobs, so each
final status is reached the way it is in production. The tests that need the issue-14
routes and fields (retry, retry_all, kind filters, run_at/delay_s, the held wait) are the
ones after the "issue 14" line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

import botd
from botd.jobs_client import POLL_S
from botd.models import JobSubmit
from tests.support.server import BASE_URL, asgi_client, make_app

LEASE_TTL_S = 5.0


@asynccontextmanager
async def server(
    token: str | None = None,
) -> AsyncIterator[tuple[botd.AsyncJobsClient, httpx.AsyncClient]]:
    """(a producer's client, a fake bot's raw client) on one fresh app with its timers."""
    app, _ = make_app(token=token, lease_ttl_s=LEASE_TTL_S, heartbeat_interval_s=1.0)
    async with asgi_client(app, token=token) as raw:
        transport = httpx.ASGITransport(app=app)
        async with botd.AsyncJobsClient(BASE_URL, token=token, transport=transport) as jobs:
            yield jobs, raw


class FakeBot:
    """A bot speaking the protocol by hand: claim, then ack or go silent."""

    def __init__(self, raw: httpx.AsyncClient) -> None:
        self.raw = raw
        self.session = ""

    async def claim(self) -> list[dict[str, Any]]:
        if not self.session:
            resp = await self.raw.post("/v1/bots/register", json={"bot_id": "fake"})
            self.session = resp.json()["session_id"]
        body = {"bot_id": "fake", "session_id": self.session, "max_jobs": 10}
        resp = await self.raw.post("/v1/jobs/claim", json=body)
        assert resp.status_code == 200, resp.text
        jobs: list[dict[str, Any]] = resp.json()["jobs"]
        return jobs

    async def ack(self, lease: str, outcome: str = "succeeded", **kw: Any) -> None:
        ack = {"lease_id": lease, "outcome": outcome, **kw}
        resp = await self.raw.post(f"/v1/leases/{lease}/ack", json=ack)
        assert resp.json()["status"] == "recorded", resp.text


async def test_submit_get_list_and_cancel(autojump_clock: trio.abc.Clock) -> None:
    async with server() as (jobs, raw):
        job = await jobs.submit("k", {"n": 1}, priority=7, max_attempts=2, idempotency_key="o-1")
        assert (job.status, job.payload, job.priority, job.max_attempts) == (
            "queued", {"n": 1}, 7, 2
        )  # fmt: skip
        assert (await jobs.submit("k", {"n": 2}, idempotency_key="o-1")).job_id == job.job_id
        assert await jobs.get(job.job_id) == job
        other = await jobs.submit("k")
        assert [v.job_id for v in await jobs.list(status="queued")] == [other.job_id, job.job_id]
        assert [v.job_id for v in await jobs.list(limit=1)] == [other.job_id]
        assert (await jobs.cancel(job.job_id)).status == "cancelled"
        assert (await jobs.cancel(job.job_id)).status == "cancelled"  # again: a no-op
        bot = FakeBot(raw)
        (claimed,) = await bot.claim()
        await bot.ack(claimed["lease_id"], result={"ok": True})
        with pytest.raises(botd.JobFinished, match="already"):
            await jobs.cancel(other.job_id)
        with pytest.raises(botd.JobNotFound, match="nope"):
            await jobs.get("nope")
        with pytest.raises(botd.JobNotFound):
            await jobs.cancel("nope")
        with pytest.raises(botd.RequestRejected, match="limit"):
            await jobs.list(limit=0)


async def test_submit_many_queues_every_job_in_order(autojump_clock: trio.abc.Clock) -> None:
    async with server() as (jobs, _raw):
        wanted = [JobSubmit(kind="k", payload=i) for i in range(1203)]
        views = await jobs.submit_many(wanted)
        assert [v.payload for v in views] == list(range(1203))
        assert len({v.job_id for v in views}) == 1203
        assert (await jobs.get(views[1202].job_id)).payload == 1202


async def test_wait_returns_the_result_once_a_bot_acks(autojump_clock: trio.abc.Clock) -> None:
    async with server() as (jobs, raw), trio.open_nursery() as nursery:
        job = await jobs.submit("k")
        bot = FakeBot(raw)
        acked_at: list[float] = []

        async def work_later() -> None:
            await trio.sleep(45)
            (claimed,) = await bot.claim()
            await bot.ack(claimed["lease_id"], result={"value": 17})
            acked_at.append(trio.current_time())

        nursery.start_soon(work_later)
        done = await jobs.wait(job.job_id, timeout=120)
        assert (done.status, done.result, done.attempts) == ("succeeded", {"value": 17}, 1)
        assert acked_at and acked_at[0] <= trio.current_time() <= acked_at[0] + POLL_S


async def test_wait_ends_dead_when_the_last_lease_expires(autojump_clock: trio.abc.Clock) -> None:
    async with server() as (jobs, raw):
        job = await jobs.submit("k", max_attempts=1)
        await FakeBot(raw).claim()  # and never heartbeats
        done = await jobs.wait(job.job_id)
        assert (done.status, done.error and done.error.type) == ("dead", "lease_expired")


async def test_wait_times_out_with_the_last_view(autojump_clock: trio.abc.Clock) -> None:
    async with server() as (jobs, _raw):
        job = await jobs.submit("k")
        start = trio.current_time()
        with pytest.raises(botd.WaitTimeout) as caught:
            await jobs.wait(job.job_id, timeout=40)
        assert trio.current_time() - start == pytest.approx(40)
        assert (caught.value.job.job_id, caught.value.job.status) == (job.job_id, "queued")
        with pytest.raises(botd.JobNotFound):
            await jobs.wait("nope", timeout=5)


async def test_a_missing_or_wrong_token_says_where_the_token_comes_from(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BOTD_TOKEN", raising=False)
    monkeypatch.delenv("BOTD_TOKEN_FILE", raising=False)
    app, _ = make_app(token="s3cret")
    transport = httpx.ASGITransport(app=app)
    for token in (None, "wrong"):
        async with botd.AsyncJobsClient(BASE_URL, token=token, transport=transport) as jobs:
            with pytest.raises(botd.Unrecoverable) as caught:
                await jobs.submit("k")
        for where in ("--token", "BOTD_TOKEN", "BOTD_TOKEN_FILE"):
            assert where in str(caught.value)
        assert "s3cret" not in str(caught.value)
    monkeypatch.setenv("BOTD_TOKEN", "s3cret")
    async with botd.AsyncJobsClient(BASE_URL, transport=transport) as jobs:
        assert (await jobs.submit("k")).status == "queued"


# --- issue 14: these need the server's side of issue 14 (retry, kind, run_at, held waits) ---


async def test_retry_puts_a_dead_job_back_with_a_fresh_budget(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with server() as (jobs, raw):
        job = await jobs.submit("k", max_attempts=1)
        bot = FakeBot(raw)
        await bot.claim()
        assert (await jobs.wait(job.job_id)).status == "dead"
        again = await jobs.retry(job.job_id)
        assert again.status == "queued"
        (claimed,) = await bot.claim()  # a fresh attempt budget: it is claimable again
        assert claimed["job_id"] == job.job_id
        with pytest.raises(botd.JobNotRetryable, match="retried"):
            await jobs.retry(job.job_id)  # leased: not dead or failed
        with pytest.raises(botd.JobNotFound):
            await jobs.retry("nope")


async def test_retry_all_and_list_by_kind(autojump_clock: trio.abc.Clock) -> None:
    async with server() as (jobs, raw):
        failing = [await jobs.submit(kind, max_attempts=1) for kind in ("a", "a", "b")]
        bot = FakeBot(raw)
        for claimed in await bot.claim():
            error = {"type": "boom", "message": "no", "retryable": False}
            await bot.ack(claimed["lease_id"], "failed", error=error)
        assert {v.job_id for v in await jobs.list(status="failed", kind="a")} == {
            failing[0].job_id, failing[1].job_id
        }  # fmt: skip
        retried = await jobs.retry_all("failed", kind="a")
        assert sorted(retried) == sorted([failing[0].job_id, failing[1].job_id])
        assert [v.status for v in [await jobs.get(j.job_id) for j in failing]] == [
            "queued", "queued", "failed"
        ]  # fmt: skip
        assert await jobs.retry_all("dead") == []
        assert await jobs.retry_all("failed") == [failing[2].job_id]


async def test_a_delayed_job_waits_for_its_time(autojump_clock: trio.abc.Clock) -> None:
    async with server() as (jobs, raw):
        job = await jobs.submit("k", delay_s=60, retry_base_s=2.0, retry_max_s=8.0)
        wire = (await raw.get(f"/v1/jobs/{job.job_id}")).json()
        assert wire["run_at"] and (wire["retry_base_s"], wire["retry_max_s"]) == (2.0, 8.0)
        bot = FakeBot(raw)
        await trio.sleep(30)
        assert await bot.claim() == []
        await trio.sleep(31)
        assert [c["job_id"] for c in await bot.claim()] == [job.job_id]
        later = await jobs.submit("k", run_at=wire["run_at"])
        assert (await raw.get(f"/v1/jobs/{later.job_id}")).json()["run_at"] == wire["run_at"]


async def test_a_held_wait_answers_at_the_ack(autojump_clock: trio.abc.Clock) -> None:
    """With the server holding ``?wait_s``, the wait ends at the ack itself, not at the next
    poll, and a 100 s wait asks a handful of times, not every second."""
    asks: list[str] = []
    app, _ = make_app(lease_ttl_s=LEASE_TTL_S)

    class Counting(httpx.ASGITransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET":
                asks.append(request.url.params.get("wait_s", ""))
            return await super().handle_async_request(request)

    async with (
        asgi_client(app) as raw,
        botd.AsyncJobsClient(BASE_URL, transport=Counting(app=app)) as jobs,
        trio.open_nursery() as nursery,
    ):
        job = await jobs.submit("k")
        bot = FakeBot(raw)
        acked_at: list[float] = []

        async def work_later() -> None:
            await trio.sleep(100.5)
            (claimed,) = await bot.claim()
            await bot.ack(claimed["lease_id"])
            acked_at.append(trio.current_time())

        nursery.start_soon(work_later)
        assert (await jobs.wait(job.job_id)).status == "succeeded"
        assert trio.current_time() == pytest.approx(acked_at[0])
        assert len(asks) == 4  # 30 + 30 + 30 + the one the ack ends
