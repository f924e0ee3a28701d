"""A job whose outcome the durable outbox is committing (*storing*): its slot is free for the
claimer, so a claim's round trip overlaps the commit, but it still counts in ``in_flight``,
its lease is still heartbeated, and waiting for the runner to be idle waits for the commit."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import trio
import trio.testing

from botd.models import ClaimedJob
from botd.outbox import Outbox, OutboxEntry
from botd.workers import JobRunner


def job(n: int) -> ClaimedJob:
    return ClaimedJob(
        job_id=f"job-{n}",
        lease_id=f"lease-{n}",
        kind="test",
        payload=None,
        attempt=1,
        timeout_s=None,
        lease_expires_at="2030-01-01T00:00:00Z",
    )


async def test_a_storing_job_frees_its_slot_but_stays_in_flight(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path)
    store = outbox._store
    assert store is not None
    real_put_many = store.put_many
    in_commit, release = threading.Event(), threading.Event()

    def put_many(entries: list[OutboxEntry], removed: Any = ()) -> None:
        in_commit.set()
        release.wait(10)
        real_put_many(entries, removed)

    store.put_many = put_many  # type: ignore[method-assign]
    handled: list[str] = []
    gate = trio.Event()

    async def handler(claimed: ClaimedJob) -> Any:
        handled.append(claimed.lease_id)
        if claimed.lease_id == "lease-1":
            await gate.wait()
        return {"ok": True}

    runner = JobRunner(handler=handler, outbox=outbox, concurrency=1, job_timeout=30.0)
    idle_at: list[bool] = []

    async def wait_idle() -> None:
        await runner.wait_idle()
        idle_at.append(release.is_set())

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        assert runner.offer(job(0))
        await trio.to_thread.run_sync(in_commit.wait)  # job 0 ran; its outcome is committing
        await trio.testing.wait_all_tasks_blocked()
        assert "lease-0" in runner.storing
        assert runner.free_slots == runner.room == 1  # the claimer may claim now
        assert runner.load.value == 0
        assert runner.in_flight.value == 1  # ... but it has not finished
        assert "lease-0" in runner.leases()  # and its lease is still heartbeated
        assert outbox.leases() == []  # nor can its ack be sent before it is committed
        nursery.start_soon(wait_idle)
        assert runner.offer(job(1))  # the free slot takes the next job
        await trio.testing.wait_all_tasks_blocked()
        assert handled == ["lease-0", "lease-1"]
        assert runner.free_slots == 0  # job 1 runs: the one slot is taken
        assert not runner.offer(job(2))
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert idle_at == []  # the commit still runs: not idle
        release.set()
        with trio.fail_after(10):
            await runner.wait_idle()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert idle_at == [True]
    assert runner.storing == set()
    assert sorted(outbox.leases()) == ["lease-0", "lease-1"]
    assert runner.total_processed == 2
    await outbox.close()
