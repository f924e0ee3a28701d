"""What every job store shares: the :class:`Store` interface, its errors, and the rules.

The HTTP layer (:mod:`botd.server.app`) talks to a :class:`Store` only; no SQL lives there.
Two stores implement it: :mod:`.sqlite` (the embedded default, one process) and
:mod:`.postgres` (several server replicas on one database). The rules that decide what an
ack or an ended lease does to a job are pure functions here (:func:`decide_acks`,
:func:`decide_ends`), so both stores apply exactly the same protocol; each store only reads
the rows and writes the decisions in its own SQL.

Errors: a failing database raises :class:`StoreUnavailable` (the HTTP layer answers
503 ``store_unavailable``); a request the state does not allow raises
:class:`StoreRejected` with its HTTP status and error code; a database written by a newer
botd raises :class:`StoreIncompatible` (the server exits 78). Nothing else escapes.

Invariant kept by every method of every store: each job is in exactly one status; a
succeeded job has exactly one recorded result; no job is ever lost (a lease ends by an ack,
a release, an expiry or a re-registration, and each of those puts the job somewhere).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import attrs
import trio

from ... import codec
from ...errors import BotdError
from ...models import (
    FINAL_JOB_STATUSES,
    JOB_STATUSES,
    Ack,
    AckResult,
    BotInfo,
    ClaimRequest,
    ClaimResponse,
    FailureInfo,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSubmit,
    JobView,
    RegisterRequest,
    SessionHolder,
    Stats,
)

__all__ = [
    "BOT_COLUMNS",
    "BOT_STATUSES",
    "FINAL_STATUSES_SQL",
    "JOB_COLUMNS",
    "PRUNE_BATCH",
    "SCHEMA_VERSION",
    "STATS_SQL",
    "AckRow",
    "EndRow",
    "Ends",
    "ExpiryReport",
    "JobChange",
    "Store",
    "StoreError",
    "StoreIncompatible",
    "StoreRejected",
    "StoreUnavailable",
    "bot_infos",
    "decide_acks",
    "decide_ends",
    "invariant_problems",
    "job_view",
    "retry_backoff",
    "rfc3339",
    "stats_of",
]

BOT_STATUSES: tuple[str, ...] = ("active", "gone", "deregistered")
MAX_RETRY_BACKOFF_S = 30.0
#: The schema this botd writes. A database with a higher version was written by a newer
#: botd: the server refuses it (exit 78) rather than corrupt it.
SCHEMA_VERSION = 1
#: How many finished jobs one pruning statement deletes (a batch keeps each one short).
PRUNE_BATCH = 1000
#: The final job statuses, as an SQL list (pruning deletes only these).
FINAL_STATUSES_SQL = ", ".join(f"'{s}'" for s in sorted(FINAL_JOB_STATUSES))


class StoreError(BotdError):
    """Raised by a store; the root of the server's store errors."""


class StoreUnavailable(StoreError):
    """Raised when the database fails (down, corrupt, unwritable, too slow); answer 503."""


class StoreIncompatible(StoreError):
    """Raised when the database's schema is newer than this botd: upgrade botd (exit 78)."""


class StoreRejected(StoreError):
    """Raised when the state does not allow a request; carries the HTTP status and error code
    (and, for a superseded session, who holds the bot id now)."""

    def __init__(
        self, status: int, code: str, message: str, holder: SessionHolder | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.holder = holder
        super().__init__(f"{status} {code}: {message}")


def unknown_bot(bot_id: str) -> StoreRejected:
    return StoreRejected(404, "unknown_bot", f"bot {bot_id!r} is not registered; register it again")


def superseded(bot_id: str, why: str, holder: SessionHolder | None = None) -> StoreRejected:
    return StoreRejected(
        409,
        "session_superseded",
        f"bot {bot_id!r}: {why}; register again for a new session",
        holder,
    )


def session_problem(
    bot_id: str, session_id: str, row: tuple[str, str, str, int, str] | None
) -> StoreRejected | None:
    """Why ``session_id`` may not act for ``bot_id``, given the bot's row
    (session_id, status, hostname, pid, registered_at as RFC 3339); None when it may."""
    if row is None:
        return unknown_bot(bot_id)
    held, status, hostname, pid, since = row
    if status == "deregistered":
        return superseded(bot_id, "the bot deregistered, which ended its session")
    if held != session_id:
        holder = SessionHolder(hostname=hostname, pid=pid, since=since)
        return superseded(
            bot_id,
            f"session {session_id!r} was replaced by a newer one, registered by host"
            f" {holder.hostname!r} pid {holder.pid} at {holder.since}",
            holder,
        )
    return None


def unknown_job(job_id: str) -> StoreRejected:
    return StoreRejected(404, "unknown_job", f"no job {job_id!r}; check the job_id")


def job_finished(job_id: str, status: str) -> StoreRejected:
    return StoreRejected(
        409,
        "job_finished",
        f"job {job_id!r} already ended as {status!r}; there is nothing to cancel",
    )


def retry_backoff(attempt: int) -> float:
    """Seconds a retryable failure waits before its job is claimable again."""
    return float(min(MAX_RETRY_BACKOFF_S, 0.5 * 2 ** max(0, attempt - 1)))


def rfc3339(wall: float) -> str:
    """Format a wall-clock time (seconds since the epoch) as RFC 3339 UTC with milliseconds."""
    text = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def new_id() -> str:
    return uuid.uuid4().hex


def json_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def failure_json(info: FailureInfo) -> str:
    return json.dumps(codec.unstructure(info), separators=(",", ":"))


def failure_of(text: str | None) -> FailureInfo | None:
    data = json_or_none(text)
    return None if data is None else codec.structure(data, FailureInfo)


@attrs.frozen
class ExpiryReport:
    """What one expiry pass did: leases expired, jobs requeued or dead, bots marked gone."""

    expired: int = 0
    requeued: int = 0
    dead: int = 0
    gone: int = 0


# --- rows into answers (the same columns in both stores) -------------------------------

#: The columns :func:`job_view` reads, in order.
JOB_COLUMNS = (
    "job_id, kind, payload, status, priority, max_attempts, attempts, timeout_s,"
    " idempotency_key, result, error, bot_id, created_at, finished_at"
)
#: The columns :func:`bot_infos` reads, in order.
BOT_COLUMNS = "bot_id, session_id, status, state, capacity, hostname, version, labels, last_seen"
#: Formats a store's own timestamp (SQLite: seconds since the epoch; PostgreSQL: a
#: datetime) as RFC 3339.
When = Callable[[Any], str]


def job_view(row: Sequence[Any], when: When) -> JobView:
    """A JobView from a row of :data:`JOB_COLUMNS`."""
    return JobView(
        job_id=row[0],
        kind=row[1],
        payload=json.loads(row[2]),
        status=row[3],
        priority=row[4],
        max_attempts=row[5],
        attempts=row[6],
        timeout_s=row[7],
        idempotency_key=row[8],
        result=json_or_none(row[9]),
        error=failure_of(row[10]),
        bot_id=row[11],
        created_at=when(row[12]),
        finished_at=None if row[13] is None else when(row[13]),
    )


def bot_infos(
    rows: Iterable[Sequence[Any]], leases: Iterable[Sequence[str]], when: When
) -> list[BotInfo]:
    """BotInfos from rows of :data:`BOT_COLUMNS` and the (bot_id, lease_id) of active leases."""
    held: dict[str, list[str]] = {}
    for owner, lease_id in leases:
        held.setdefault(owner, []).append(lease_id)
    return [
        BotInfo(
            bot_id=r[0],
            session_id=r[1],
            status=r[2],
            state=r[3],
            capacity=r[4],
            hostname=r[5],
            version=r[6],
            labels=json.loads(r[7]),
            last_seen=when(r[8]),
            active_leases=held.get(r[0], []),
        )
        for r in rows
    ]


def stats_of(jobs: Iterable[Sequence[Any]], bots: Iterable[Sequence[Any]]) -> Stats:
    """Stats from (status, count) rows of jobs and of bots; every status present."""
    job_counts = dict.fromkeys(JOB_STATUSES, 0)
    job_counts.update({status: n for status, n in jobs})
    bot_counts = dict.fromkeys(BOT_STATUSES, 0)
    bot_counts.update({status: n for status, n in bots})
    return Stats(jobs=job_counts, bots=bot_counts)


#: The two statements :func:`stats_of` reads.
STATS_SQL = (
    "SELECT status, count(*) FROM jobs GROUP BY status",
    "SELECT status, count(*) FROM bots GROUP BY status",
)


# --- the rules of acks and ended leases ------------------------------------------------


@attrs.define
class AckRow:
    """One lease and its job, as read for applying acks (mutated as a batch is applied)."""

    lease_id: str
    job_id: str
    lease_state: str
    outcome: str | None
    job_status: str
    job_lease: str | None
    attempts: int
    max_attempts: int
    error: str | None


@attrs.frozen
class JobChange:
    """What an ack does to its job. ``retry_in_s`` is when a requeued job is due again
    (0: at once); ``final`` says the job ended (the store stamps ``finished_at``)."""

    job_id: str
    status: str
    attempts: int
    result: str | None
    error: str | None
    retry_in_s: float
    final: bool


def decide_acks(
    acks: Sequence[Ack], rows: dict[str, AckRow]
) -> tuple[list[AckResult], list[tuple[str, str]], dict[str, JobChange]]:
    """Apply the protocol's ack rules to a batch, in order.

    ``rows`` are the batch's leases as read (missing: an unknown lease). Returns the result
    of each ack, the leases to mark done as (lease_id, outcome), and the last change of each
    job. Later acks of the batch see what earlier ones decided.
    """
    results: list[AckResult] = []
    lease_updates: list[tuple[str, str]] = []
    changes: dict[str, JobChange] = {}
    of_job: dict[str, list[AckRow]] = {}
    for each in rows.values():
        of_job.setdefault(each.job_id, []).append(each)
    for ack in acks:
        row = rows.get(ack.lease_id)
        result, change = _decide_ack(ack, row)
        results.append(result)
        if result.status == "recorded" and row is not None:
            lease_updates.append((ack.lease_id, ack.outcome))
            row.lease_state, row.outcome = "done", ack.outcome
            if change is not None:
                changes[change.job_id] = change
                for other in of_job[change.job_id]:
                    other.job_status, other.error = change.status, change.error
                    other.attempts = change.attempts
    return results, lease_updates, changes


def _decide_ack(ack: Ack, row: AckRow | None) -> tuple[AckResult, JobChange | None]:
    lease = ack.lease_id
    if row is None:
        return AckResult(lease, "unknown_lease", "no such lease; drop this ack"), None
    if row.lease_state == "done":
        if row.outcome == ack.outcome:
            return AckResult(lease, "duplicate", "already recorded; nothing to do"), None
        return AckResult(
            lease,
            "conflict",
            f"this lease was already acked as {row.outcome!r}; the first ack stands",
        ), None
    if row.job_status == "cancelled":
        return AckResult(lease, "recorded", "the job was cancelled; outcome noted"), None
    late = row.lease_state != "active"
    if row.job_lease != lease or (late and row.job_status != "queued"):
        return AckResult(
            lease,
            "lease_lost",
            f"the lease expired and job {row.job_id!r} is now {row.job_status!r}"
            " elsewhere; drop this result",
        ), None
    # The job is ours: leased by this lease, or (late) requeued and not yet re-leased.
    attempts = row.attempts

    def change(
        status: str,
        *,
        attempts: int = attempts,
        result: str | None = None,
        error: str | None = row.error,
        retry_in_s: float = 0.0,
    ) -> JobChange:
        final = status not in ("queued", "leased")
        return JobChange(row.job_id, status, attempts, result, error, retry_in_s, final)

    recorded = AckResult(lease, "recorded")
    if ack.outcome == "succeeded":
        result = "null" if ack.result is None else json.dumps(ack.result)
        return recorded, change("succeeded", result=result, error=None)
    if ack.outcome == "released":
        if late:
            return recorded, None
        return recorded, change("queued", attempts=max(0, attempts - 1))
    info = ack.error or FailureInfo("error", "the bot reported a failure without details")
    failure = failure_json(info)
    if not info.retryable or attempts >= row.max_attempts:
        return recorded, change("failed", error=failure)
    return recorded, change(
        "queued", error=failure, retry_in_s=0.0 if late else retry_backoff(attempts)
    )


@attrs.frozen
class EndRow:
    """An active lease that ends without an ack, with its job as read."""

    lease_id: str
    job_id: str
    job_status: str
    job_lease: str | None
    attempts: int
    max_attempts: int


@attrs.frozen
class Ends:
    """What ending leases does: jobs requeued (job_id, attempts) and jobs dead (job_id,
    error JSON)."""

    leases: list[str]
    requeue: list[tuple[str, int]]
    dead: list[tuple[str, str]]

    def report(self) -> ExpiryReport:
        return ExpiryReport(
            expired=len(self.leases), requeued=len(self.requeue), dead=len(self.dead)
        )


def decide_ends(rows: Sequence[EndRow], *, spend: bool) -> Ends:
    """End active leases without an ack: requeue their jobs, or make them dead.

    ``spend`` counts the attempt (an expiry or a bot that lost its work); without it the
    attempt is given back (a release or a deregistration). A job cancelled meanwhile, or
    leased again under another lease, stays where it is.
    """
    requeue: list[tuple[str, int]] = []
    dead: list[tuple[str, str]] = []
    for row in rows:
        if row.job_status != "leased" or row.job_lease != row.lease_id:
            continue
        if not spend:
            requeue.append((row.job_id, max(0, row.attempts - 1)))
        elif row.attempts >= row.max_attempts:
            info = FailureInfo(
                "lease_expired",
                f"the lease expired on all {row.max_attempts} attempts without a result",
                retryable=False,
            )
            dead.append((row.job_id, failure_json(info)))
        else:
            requeue.append((row.job_id, row.attempts))
    return Ends([r.lease_id for r in rows], requeue, dead)


# --- the invariant, for tests and audits ------------------------------------------------

_INVARIANT_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "SELECT job_id, status FROM jobs WHERE status NOT IN ("
        + ", ".join(f"'{s}'" for s in JOB_STATUSES)
        + ")",
        "job {0} has unknown status {1!r}",
    ),
    (
        "SELECT j.job_id FROM jobs j WHERE j.status = 'leased' AND NOT EXISTS"
        " (SELECT 1 FROM leases l WHERE l.lease_id = j.lease_id AND l.state = 'active')",
        "leased job {0} has no active lease",
    ),
    (
        "SELECT job_id FROM jobs WHERE status = 'succeeded' AND (result IS NULL OR"
        " (SELECT count(*) FROM leases l WHERE l.job_id = jobs.job_id AND"
        " l.outcome = 'succeeded' AND l.state = 'done') != 1)",
        "succeeded job {0} does not have exactly one recorded result",
    ),
    (
        "SELECT l.lease_id, l.job_id FROM leases l JOIN jobs j ON j.job_id = l.job_id"
        " WHERE l.state = 'active' AND j.status NOT IN ('leased', 'cancelled')",
        "active lease {0} on job {1} that is not leased",
    ),
)


def invariant_problems(
    query: Callable[[str], Iterable[Sequence[Any]]],
    checks: Sequence[tuple[str, str]] = _INVARIANT_CHECKS,
) -> list[str]:
    """Problems with the store's invariant (empty when it holds). ``query`` runs one SQL
    statement and returns its rows; ``checks`` are (SQL, message) pairs, by default those of
    the schema with a row per lease (SQLite's)."""
    return [message.format(*row) for sql, message in checks for row in query(sql)]


# --- the interface ---------------------------------------------------------------------


class Store(Protocol):
    """What the HTTP layer needs from a job store. Every method is one transaction.

    Every method raises :class:`StoreUnavailable` when the database fails and
    :class:`StoreRejected` when the request is not allowed in the current state.
    """

    #: What to show for the database in logs (never a password).
    where: str

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

    async def register(self, req: RegisterRequest, *, lease_ttl_s: float) -> tuple[str, int]:
        """Start a new session for ``req.bot_id``; returns (session_id, jobs requeued)."""

    async def get_bot(self, bot_id: str) -> BotInfo:
        """The bot, or 404 unknown_bot."""

    async def list_bots(self) -> list[BotInfo]:
        """Every bot the store knows, in bot_id order."""

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

    async def list_jobs(self, *, status: str | None, limit: int) -> list[JobView]:
        """The newest ``limit`` jobs, optionally of one status."""

    async def cancel_job(self, job_id: str) -> JobView:
        """Cancel a queued or leased job (idempotent); 409 job_finished for a finished one."""

    async def stats(self) -> Stats:
        """Job counts per status and bot counts per status (every status present)."""

    async def oldest_queued(self) -> dict[str, float]:
        """Seconds the longest-waiting due job of each kind has waited: since its submit, or
        since its retry came due (a job waiting out a retry's backoff is not waiting for a
        bot). Kinds with no due job are absent."""

    async def claim(self, req: ClaimRequest, *, lease_ttl_s: float) -> ClaimResponse:
        """Apply ``req.acks``, then lease up to ``req.max_jobs`` queued jobs (no waiting)."""

    async def release(self, lease_ids: Sequence[str]) -> int:
        """Give back leases whose claim answer never reached the bot, without spending
        their attempts; returns how many jobs went back to the queue."""

    async def ack(self, ack: Ack) -> AckResult:
        """Apply one ack and say what happened to it."""

    async def expire(self, *, gone_after_s: float) -> ExpiryReport:
        """Expire leases past their deadline and mark silent bots gone."""

    async def next_deadline(self) -> float | None:
        """The earliest future lease expiry or retry time, on Trio's clock."""

    async def prune(self, *, older_than_s: float) -> int:
        """Delete up to PRUNE_BATCH jobs that ended over ``older_than_s`` ago; how many."""
