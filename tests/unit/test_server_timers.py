"""The server's timer: it wakes waiting claims when a retry comes due, whatever the store's pace.

A store reports only deadlines still ahead (a retry that is due is no longer "next"). These
tests script a store whose queries take time, so that a deadline passes while the timer
asks about it, and check that the waiters are still woken on time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import trio

from botd.server.core import ServerCore
from botd.server.store import ExpiryReport, Store


class ScriptedStore:
    """``expire`` takes ``lag`` seconds; ``next_deadline`` is ``deadline`` until it passes."""

    def __init__(self, deadline: float, lag: float) -> None:
        self.deadline = deadline
        self.lag = lag
        self.passes = 0

    async def expire(self, *, gone_after_s: float) -> ExpiryReport:
        self.passes += 1
        await trio.sleep(self.lag)
        return ExpiryReport(expired=0, requeued=0, dead=0, gone=0)

    async def next_deadline(self) -> float | None:
        return self.deadline if self.deadline > trio.current_time() else None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the timer should not call store.{name}")


@asynccontextmanager
async def timer_on(store: ScriptedStore) -> AsyncIterator[ServerCore]:
    """A server core on ``store`` with its timer running."""
    core = ServerCore(cast(Store, store))
    async with trio.open_nursery() as nursery:
        await nursery.start(core.run_timers)
        yield core
        nursery.cancel_scope.cancel()


async def woken_at(core: ServerCore, limit: float) -> float | None:
    """When the next wake-up of waiting claims comes (None: not within ``limit``)."""
    event = core._available  # what a waiting claim sleeps on
    with trio.move_on_after(limit):
        await event.wait()
        return trio.current_time()
    return None


async def test_a_retry_due_just_after_the_timers_bound_still_wakes_the_waiters(
    autojump_clock: trio.abc.Clock,
) -> None:
    start = trio.current_time()
    # Due a moment after the first pass's 1 s bound; the second pass's query runs after it.
    store = ScriptedStore(deadline=start + 1.0005, lag=0.01)
    async with timer_on(store) as core:
        at = await woken_at(core, limit=10)
    assert at is not None, "the due retry never woke the waiting claims"
    assert store.deadline <= at <= store.deadline + 0.05, at - start


async def test_a_deadline_ahead_wakes_the_waiters_when_it_passes(
    autojump_clock: trio.abc.Clock,
) -> None:
    start = trio.current_time()
    store = ScriptedStore(deadline=start + 0.4, lag=0.0)
    async with timer_on(store) as core:
        assert await woken_at(core, limit=0.39) is None, "woken before the deadline"
        at = await woken_at(core, limit=1)
    assert at is not None and abs(at - store.deadline) < 0.01


async def test_a_schedule_change_before_the_deadline_does_not_wake_the_waiters(
    autojump_clock: trio.abc.Clock,
) -> None:
    start = trio.current_time()
    store = ScriptedStore(deadline=start + 0.5, lag=0.0)
    async with timer_on(store) as core:
        await trio.sleep(0.1)
        event = core._available
        core.schedule_changed()  # e.g. a failure ack: the timer asks the store again
        await trio.sleep(0.2)
        assert not event.is_set(), "a new pass before the deadline woke the waiters"
        assert store.passes >= 2
        at = await woken_at(core, limit=1)
    assert at is not None and abs(at - store.deadline) < 0.01
