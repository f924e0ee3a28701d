"""The embedded job store: :class:`SqliteStore`, SQLite in one process.

- every method is one transaction, so each request sees and leaves a consistent state;
- ``:memory:`` runs inline on the Trio thread (there is no I/O to block on, and tests on
  ``autojump_clock`` stay exact); a file database runs in WAL mode through
  ``trio.to_thread.run_sync`` with a ``CapacityLimiter(1)`` around its one connection;
- all lease and retry deadlines are on the injectable ``now`` clock (Trio's clock by
  default); the wall clock ``wall`` is read for RFC 3339 display timestamps, and to keep
  each due time also as a wall-clock time, so that a delayed job (or a retry backing off)
  stays not due across a restart of the server.

The SQL itself lives in :class:`~.sqlite_backend.SqliteBackend`, a synchronous object whose
methods take the moment (``Moment``) as an argument; the Hypothesis state machine drives it
directly. This module runs it under Trio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio
from loguru import logger

from ... import models
from ...events import Event
from .interface import ExpiryReport
from .sqlite_backend import Moment, SqliteBackend

__all__ = ["SqliteStore"]

T = TypeVar("T")


class SqliteStore:
    """The embedded :class:`Store`: SQLite, WAL mode for files, inline for ``:memory:``.

    Args:
        path: a file path, or ``":memory:"``.
        now: the deadline clock (default ``trio.current_time``).
        wall: the display clock (default ``time.time``).

    Resource handling: one connection, closed by :meth:`aclose`. A file database runs each
    transaction in a worker thread under a ``CapacityLimiter(1)``; cancellation waits for the
    running transaction, so a request never leaves half a transaction behind.
    Error handling: see :class:`Store`.
    """

    #: Only this process writes to the database: nothing changes behind its back.
    shared = False

    def __init__(
        self,
        path: str = ":memory:",
        *,
        now: Callable[[], float] = trio.current_time,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.backend = SqliteBackend(path)
        self.where = path or ":memory:"
        self._now = now
        self._wall = wall
        self._limiter = trio.CapacityLimiter(1)

    def _moment(self) -> Moment:
        return Moment(self._now(), self._wall())

    async def _run(self, fn: Callable[[], T]) -> T:
        if self.backend.memory:
            await trio.lowlevel.checkpoint()
            return fn()
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    async def open(self, *, lease_ttl_s: float) -> None:
        """Create the schema; give a previous run's leases a fresh lease_ttl_s."""
        at = self._moment()
        await self._run(lambda: self.backend.open(at, lease_ttl_s))
        logger.bind(event=Event.STORE_OPENED, db=self.where).info("job store opened")

    async def aclose(self) -> None:
        """Close the connection."""
        await self._run(self.backend.close)

    async def health(self) -> None:
        """A real read and write; raises StoreUnavailable on failure."""
        at = self._moment()
        await self._run(lambda: self.backend.health(at))

    async def watch(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Nothing to watch: only this process writes to the database."""
        task_status.started()
        await trio.sleep_forever()

    async def register(
        self,
        req: models.RegisterRequest,
        *,
        lease_ttl_s: float,
        token_hash: str | None = None,
        exclusive_s: float | None = None,
        previous_hash: str | None = None,
    ) -> tuple[str, int]:
        """See :meth:`Store.register`."""
        at = self._moment()
        return await self._run(
            lambda: self.backend.register(
                req,
                at,
                lease_ttl_s,
                token_hash=token_hash,
                exclusive_s=exclusive_s,
                previous_hash=previous_hash,
            )
        )

    async def session_of(self, token_hash: str) -> tuple[str, str] | None:
        """See :meth:`Store.session_of`."""
        return await self._run(lambda: self.backend.session_of(token_hash))

    async def get_bot(self, bot_id: str) -> models.BotInfo:
        """See :meth:`Store.get_bot`."""
        return await self._run(lambda: self.backend.get_bot(bot_id))

    async def list_bots(self) -> list[models.BotInfo]:
        """See :meth:`Store.list_bots`."""
        return await self._run(self.backend.list_bots)

    async def page_bots(
        self, *, limit: int, after: str | None
    ) -> tuple[list[models.BotInfo], str | None]:
        """See :meth:`Store.page_bots`."""
        return await self._run(lambda: self.backend.page_bots(limit, after))

    async def heartbeat(
        self, bot_id: str, req: models.HeartbeatRequest, *, lease_ttl_s: float
    ) -> tuple[models.HeartbeatResponse, int]:
        """See :meth:`Store.heartbeat`."""
        at = self._moment()
        return await self._run(lambda: self.backend.heartbeat(bot_id, req, at, lease_ttl_s))

    async def deregister(self, bot_id: str, session_id: str) -> int:
        """See :meth:`Store.deregister`."""
        at = self._moment()
        return await self._run(lambda: self.backend.deregister(bot_id, session_id, at))

    async def submit(self, job: models.JobSubmit) -> tuple[models.JobView, bool]:
        """See :meth:`Store.submit`."""
        at = self._moment()
        return await self._run(lambda: self.backend.submit(job, at))

    async def submit_many(
        self, jobs: Sequence[models.JobSubmit]
    ) -> list[tuple[models.JobView, bool]]:
        """See :meth:`Store.submit_many`."""
        at = self._moment()
        return await self._run(lambda: self.backend.submit_many(jobs, at))

    async def get_job(self, job_id: str) -> models.JobView:
        """See :meth:`Store.get_job`."""
        return await self._run(lambda: self.backend.get_job(job_id))

    async def list_jobs(
        self, *, status: str | None, limit: int, kind: str | None = None
    ) -> list[models.JobView]:
        """See :meth:`Store.list_jobs`."""
        return await self._run(lambda: self.backend.list_jobs(status, limit, kind))

    async def page_jobs(
        self, *, status: str | None, limit: int, kind: str | None, before: int | None
    ) -> tuple[list[models.JobView], int | None]:
        """See :meth:`Store.page_jobs`."""
        return await self._run(lambda: self.backend.page_jobs(status, limit, kind, before))

    async def final_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """See :meth:`Store.final_jobs`."""
        return await self._run(lambda: self.backend.final_jobs(job_ids))

    async def retry_job(self, job_id: str) -> models.JobView:
        """See :meth:`Store.retry_job`."""
        return await self._run(lambda: self.backend.retry_job(job_id))

    async def retry_jobs(self, *, status: str, kind: str | None, limit: int) -> list[str]:
        """See :meth:`Store.retry_jobs`."""
        return await self._run(lambda: self.backend.retry_jobs(status, kind, limit))

    async def cancel_job(self, job_id: str) -> models.JobView:
        """See :meth:`Store.cancel_job`."""
        at = self._moment()
        return await self._run(lambda: self.backend.cancel_job(job_id, at))

    async def stats(self) -> models.Stats:
        """See :meth:`Store.stats`."""
        at = self._moment()
        return await self._run(lambda: self.backend.stats(at))

    async def claim(
        self, req: models.ClaimRequest, *, lease_ttl_s: float, owner: str | None = None
    ) -> models.ClaimResponse:
        """See :meth:`Store.claim`."""
        at = self._moment()
        return await self._run(lambda: self.backend.claim(req, at, lease_ttl_s, owner))

    async def ack(self, ack: models.Ack, *, owner: str | None = None) -> models.AckResult:
        """See :meth:`Store.ack`."""
        at = self._moment()
        return await self._run(lambda: self.backend.ack(ack, at, owner))

    async def expire(self, *, gone_after_s: float) -> ExpiryReport:
        """See :meth:`Store.expire`."""
        at = self._moment()
        return await self._run(lambda: self.backend.expire(at, gone_after_s))

    async def next_deadline(self) -> float | None:
        """See :meth:`Store.next_deadline`."""
        at = self._moment()
        return await self._run(lambda: self.backend.next_deadline(at))

    async def release(self, lease_ids: Sequence[str]) -> int:
        """See :meth:`Store.release`."""
        at = self._moment()
        return await self._run(lambda: self.backend.release(lease_ids, at))

    async def oldest_queued(self) -> dict[str, float]:
        """See :meth:`Store.oldest_queued`."""
        at = self._moment()
        return await self._run(lambda: self.backend.oldest_queued(at))

    async def queue_depth(self) -> dict[str, int]:
        """See :meth:`Store.queue_depth`."""
        at = self._moment()
        return await self._run(lambda: self.backend.queue_depth(at))

    async def prune(self, *, older_than_s: float) -> int:
        """See :meth:`Store.prune`."""
        at = self._moment()
        return await self._run(lambda: self.backend.prune(at, older_than_s))
