"""The runner's held (prefetched) jobs: a hypothesis property over offers, cancels, the drain
and time, on a virtual clock. Conservation: every job the runner took ends in exactly one of
ran / released / cancelled / lost; at concurrency 1 the handler ran them in the order they were
offered; a job is held only while every slot is taken; the held never exceed
BOT_PREFETCH."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from botd.models import ClaimedJob
from botd.outbox import Outbox
from botd.outcomes import FAILED, RELEASED, SUCCEEDED
from botd.workers import JobRunner


def job(n: int) -> ClaimedJob:
    return ClaimedJob(
        job_id=f"job-{n}",
        lease_id=f"lease-{n}",
        kind="test",
        payload={"sleep": n % 3},
        attempt=1,
        timeout_s=None,
        lease_expires_at="2030-01-01T00:00:00Z",
    )


OPS = st.one_of(
    st.tuples(st.just("offer"), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 20), st.sampled_from(["cancelled", "lost"])),
    st.tuples(st.just("sleep"), st.sampled_from([0, 0.5, 1, 3])),
)


@settings(max_examples=150, deadline=None)
@given(
    concurrency=st.integers(1, 3),
    prefetch=st.integers(0, 4),
    ops=st.lists(OPS, max_size=25),
)
def test_every_taken_job_ends_in_exactly_one_way(
    concurrency: int, prefetch: int, ops: list[tuple[Any, ...]]
) -> None:
    started: list[str] = []

    async def handler(claimed: ClaimedJob) -> Any:
        started.append(claimed.lease_id)
        await trio.sleep(float(claimed.payload["sleep"]))
        return {"ok": True}

    async def main() -> None:
        outbox = await Outbox.open(None)
        runner = JobRunner(
            handler=handler,
            outbox=outbox,
            concurrency=concurrency,
            job_timeout=30.0,
            prefetch=prefetch,
        )
        taken: list[str] = []
        cancelled: dict[str, str] = {}
        n = 0

        def check() -> None:
            assert len(runner.held) <= prefetch
            if runner.held:
                assert runner.free_slots == 0
            assert runner.load.value == len(runner.running) + len(runner.held)

        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            for op in ops:
                if op[0] == "offer":
                    room = runner.room
                    for _ in range(op[1]):
                        n += 1
                        took = runner.offer(job(n))
                        assert took == (room > 0)
                        room -= took
                        if took:
                            taken.append(f"lease-{n}")
                elif op[0] == "cancel" and taken:
                    lease = taken[op[1] % len(taken)]
                    if runner.cancel(lease, op[2]) and lease not in cancelled:
                        cancelled[lease] = op[2]
                elif op[0] == "sleep":
                    await trio.sleep(op[1])
                check()
            released = [j.lease_id for j in runner.take_held()]
            await runner.wait_idle()
            nursery.cancel_scope.cancel()
        outcomes = {e.lease_id: e.ack for e in outbox.pending()}
        for lease in taken:
            ways = [
                lease in released,
                lease in outcomes and outcomes[lease].outcome == SUCCEEDED,
                lease in outcomes and outcomes[lease].outcome == FAILED,
                lease in cancelled and cancelled[lease] == "lost" and lease not in outcomes,
            ]
            assert sum(ways) == 1, (lease, ways)
            assert lease not in outcomes or outcomes[lease].outcome != RELEASED
            if lease in released:
                assert lease not in started  # released: never ran
        assert len(set(started)) == len(started)
        if concurrency == 1:  # one at a time: the handler sees the start order (FIFO)
            assert started == [lease for lease in taken if lease in started]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_offer_all_starts_holds_and_refuses_in_order_and_counts_once() -> None:
    """A claim's answer goes to the runner in one call: the first jobs start, the next are
    held, the rest come back; the counts change once (one wake-up of their waiters)."""
    gate = trio.Event()

    async def handler(claimed: ClaimedJob) -> Any:
        await gate.wait()
        return None

    outbox = await Outbox.open(None)
    runner = JobRunner(handler=handler, outbox=outbox, concurrency=2, job_timeout=30.0, prefetch=1)
    seen: list[tuple[int, int]] = []

    async def watch() -> None:
        async for value in runner.load.transitions():
            seen.append(value)

    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        nursery.start_soon(watch)
        await trio.testing.wait_all_tasks_blocked()
        refused = runner.offer_all([job(n) for n in range(5)])
        assert [j.lease_id for j in refused] == ["lease-3", "lease-4"]
        assert list(runner.running) == ["lease-0", "lease-1"]
        assert list(runner.held) == ["lease-2"]
        assert (runner.in_flight.value, runner.load.value) == (2, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [(3, 0)]  # one change, not one per job
        gate.set()
        await runner.wait_idle()
        nursery.cancel_scope.cancel()
    assert sorted(outbox.leases()) == ["lease-0", "lease-1", "lease-2"]
