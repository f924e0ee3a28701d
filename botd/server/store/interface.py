"""What a job store is: the :class:`Store` interface the HTTP layer talks to.

The HTTP layer (:mod:`botd.server.app`) talks to a :class:`Store` only; no SQL lives there.
Two stores implement it: :mod:`.sqlite` (the embedded default, one process) and
:mod:`.postgres` (several server replicas on one database). What both share lives beside
this module: the errors (:mod:`.errors`), the protocol's rules for acks and ended leases
(:mod:`.rules`), and the columns and rows both read the same way (:mod:`.records`).

Errors: see :mod:`.errors`; nothing but those escapes a store.

Invariant kept by every method of every store: each job is in exactly one status; a
succeeded job has exactly one recorded result; no job is ever lost (a lease ends by an ack,
a release, an expiry or a re-registration, and each of those puts the job somewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs
import trio

from ...models import (
    Ack,
    AckResult,
    BotInfo,
    ClaimRequest,
    ClaimResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSubmit,
    JobView,
    RegisterRequest,
    Stats,
)

__all__ = ["BOT_STATUSES", "PRUNE_BATCH", "SCHEMA_VERSION", "ExpiryReport", "Store"]

BOT_STATUSES: tuple[str, ...] = ("active", "gone", "deregistered")
#: The schema this botd writes. A database with a higher version was written by a newer
#: botd: the server refuses it (exit 78) rather than corrupt it.
SCHEMA_VERSION = 3
#: How many finished jobs one pruning statement deletes (a batch keeps each one short).
PRUNE_BATCH = 1000


@attrs.frozen
class ExpiryReport:
    """What one expiry pass did: leases expired, jobs requeued or dead, bots marked gone."""

    expired: int = 0
    requeued: int = 0
    dead: int = 0
    gone: int = 0


class Store(Protocol):
    """What the HTTP layer needs from a job store. Every method is one transaction.

    Every method raises :class:`StoreUnavailable` when the database fails and
    :class:`StoreRejected` when the request is not allowed in the current state.
    """

    #: What to show for the database in logs (never a password).
    where: str
    #: True when other processes (server replicas) write to the database too, so that
    #: what they change must be looked for (waiting GETs re-check every 2 s).
    shared: bool

    async def open(self, *, lease_ttl_s: float) -> None:
        """Create or migrate the schema; raise StoreIncompatible for a newer one."""

    async def aclose(self) -> None:
        """Close the database; further calls raise StoreUnavailable."""

    async def health(self) -> None:
        """Run a real read and write; raise StoreUnavailable if either fails."""

    async def watch(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``wake`` whenever another process may have made a job claimable.

        Runs until cancelled. A store that only one process uses has nothing to watch.
        """

    async def register(
        self,
        req: RegisterRequest,
        *,
        lease_ttl_s: float,
        token_hash: str | None = None,
        exclusive_s: float | None = None,
        previous_hash: str | None = None,
    ) -> tuple[str, int]:
        """Start a new session for ``req.bot_id``; returns (session_id, jobs requeued).

        ``token_hash``: the SHA-256 of the session's token, kept for :meth:`session_of`.
        ``exclusive_s``: when set (a worker's register), a bot id whose session was heard
        from within that many seconds and did not deregister is refused with 409
        ``bot_id_in_use`` naming its holder, unless ``previous_hash`` is the hash of that
        live session's token. None (an admin's register) supersedes the session (v1).
        """

    async def session_of(self, token_hash: str) -> tuple[str, str] | None:
        """The (bot_id, session_id) of the session whose token has ``token_hash``, or None."""

    async def get_bot(self, bot_id: str) -> BotInfo:
        """The bot, or 404 unknown_bot."""

    async def list_bots(self) -> list[BotInfo]:
        """Every bot the store knows, in bot_id order."""

    async def page_bots(self, *, limit: int, after: str | None) -> tuple[list[BotInfo], str | None]:
        """Up to ``limit`` bots in bot_id order, those after ``after`` (None: from the first),
        and the bot_id the next page starts after (None: this is the last page)."""

    async def heartbeat(
        self, bot_id: str, req: HeartbeatRequest, *, lease_ttl_s: float
    ) -> tuple[HeartbeatResponse, int]:
        """Extend the listed leases the bot holds; report cancelled and lost leases.

        Returns the answer and how many jobs went back to the queue: the session's leases
        that the bot did not list, granted or confirmed over ``lease_ttl_s / 3`` ago, are
        released without spending an attempt (the bot never got them: a lost claim answer).
        """

    async def deregister(self, bot_id: str, session_id: str) -> int:
        """End the session; its leases go back to the queue. Returns how many."""

    async def submit(self, job: JobSubmit) -> tuple[JobView, bool]:
        """Queue a job; returns (job, created). An existing idempotency_key gives created=False."""

    async def submit_many(self, jobs: Sequence[JobSubmit]) -> list[tuple[JobView, bool]]:
        """Queue jobs in one transaction; (job, created) for each, in order."""

    async def get_job(self, job_id: str) -> JobView:
        """The job, or 404 unknown_job."""

    async def list_jobs(
        self, *, status: str | None, limit: int, kind: str | None = None
    ) -> list[JobView]:
        """The newest ``limit`` jobs, optionally of one status and of one kind."""

    async def page_jobs(
        self, *, status: str | None, limit: int, kind: str | None, before: int | None
    ) -> tuple[list[JobView], int | None]:
        """The newest ``limit`` jobs (of ``status`` and ``kind``, None: any) submitted before
        the job at position ``before`` (None: from the newest), and the position the next
        page starts before (None: this is the last page). A position is the store's own
        order of submits (its ``seq``), opaque to everyone else."""

    async def final_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that ended (succeeded, failed, dead, cancelled) or that no
        longer exist; for the waiting ``GET /v1/jobs/{job_id}``."""

    async def retry_job(self, job_id: str) -> JobView:
        """Queue a dead or failed job again, due now, with no attempt spent (its ``error``
        stays; ``result`` and ``finished_at`` are cleared; a late ack of its old leases is
        ``lease_lost``). 404 unknown_job; 409 job_not_retryable in any other status."""

    async def retry_jobs(self, *, status: str, kind: str | None, limit: int) -> list[str]:
        """Retry, as :meth:`retry_job` does, up to ``limit`` jobs of ``status`` (dead or
        failed) and of ``kind`` (None: any), oldest first, in one transaction; their ids."""

    async def cancel_job(self, job_id: str) -> JobView:
        """Cancel a queued or leased job (idempotent); 409 job_finished for a finished one."""

    async def stats(self) -> Stats:
        """Job counts per status and bot counts per status (every status present), and how
        many queued jobs are not yet due (``scheduled``)."""

    async def oldest_queued(self) -> dict[str, float]:
        """Seconds the longest-waiting due job of each kind has waited: since its submit, or
        since its retry came due (a job waiting out a retry's backoff is not waiting for a
        bot). Kinds with no due job are absent."""

    async def queue_depth(self) -> dict[str, int]:
        """How many queued jobs of each kind are due. Kinds with none are absent."""

    async def claim(
        self, req: ClaimRequest, *, lease_ttl_s: float, owner: str | None = None
    ) -> ClaimResponse:
        """Apply ``req.acks``, then lease up to ``req.max_jobs`` queued jobs (no waiting).

        ``owner``: when set, an ack of a lease claimed by another bot id rejects the whole
        request (403 ``not_lease_owner``) and nothing changes."""

    async def release(self, lease_ids: Sequence[str]) -> int:
        """Give back leases whose claim answer never reached the bot, without spending
        their attempts; returns how many jobs went back to the queue."""

    async def ack(self, ack: Ack, *, owner: str | None = None) -> AckResult:
        """Apply one ack and say what happened to it (``owner``: as for :meth:`claim`)."""

    async def expire(self, *, gone_after_s: float) -> ExpiryReport:
        """Expire leases past their deadline and mark silent bots gone."""

    async def next_deadline(self) -> float | None:
        """The earliest future lease expiry, or time a queued job becomes due (a delayed job,
        a retry), on Trio's clock."""

    async def prune(self, *, older_than_s: float) -> int:
        """Delete up to PRUNE_BATCH jobs that ended over ``older_than_s`` ago; how many."""
