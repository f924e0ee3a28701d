"""The SQL of the embedded store: :class:`SqliteBackend`, synchronous, one transaction per
public method.

Its methods take the moment (:class:`Moment`: both clocks, read once by the caller) as an
argument, so the Hypothesis state machine drives it directly and every deadline is on the
caller's clock. The rules of acks and ended leases come from :mod:`.rules`, shared with
the PostgreSQL store; the tables from :mod:`.sqlite_schema`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs

from ... import models
from ...timestamps import parse_rfc3339, rfc3339
from . import records
from .errors import (
    StoreUnavailable,
    job_finished,
    job_not_retryable,
    not_lease_owner,
    session_problem,
    unknown_bot,
    unknown_job,
)
from .interface import PRUNE_BATCH, ExpiryReport
from .rules import AckRow, EndRow, decide_acks, decide_ends
from .sqlite_schema import SCHEMA, migrate

__all__ = ["Moment", "SqliteBackend"]

T = TypeVar("T")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SQL_CHUNK = 500  # stay well below SQLite's host-parameter limit
#: A claim walks the queue in its order while fewer queued jobs than this are not yet due
#: (see :meth:`SqliteBackend._pick_index`).
_PICK_SKIP_LIMIT = 256


@attrs.frozen
class Moment:
    """One reading of both clocks: ``mono`` for deadlines, ``wall`` for display."""

    mono: float
    wall: float

    def display(self, deadline: float) -> str:
        """The RFC 3339 wall-clock time of a deadline on the ``mono`` clock."""
        return rfc3339(self.wall + (deadline - self.mono))

    def due(self, in_s: float) -> tuple[float, float]:
        """A job due ``in_s`` from now as (``not_before``, ``due_at``): on the ``mono`` and
        the ``wall`` clock; (0, 0) for a job due now."""
        if in_s <= 0:
            return 0.0, 0.0
        return self.mono + in_s, self.wall + in_s


def _scheduled(job: models.JobSubmit, at: Moment) -> tuple[float | None, float, float]:
    """A submit's (``run_at``, ``not_before``, ``due_at``): run_at is the wall-clock time
    asked for (None: due at the submit), the other two as :meth:`Moment.due` gives them."""
    if job.delay_s is not None and job.delay_s > 0:
        return (at.wall + job.delay_s, *at.due(job.delay_s))
    if job.run_at is not None:
        wall = parse_rfc3339(job.run_at)
        return (wall, *at.due(wall - at.wall))
    return None, 0.0, 0.0


def _chunks(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), _SQL_CHUNK):
        yield items[start : start + _SQL_CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class SqliteBackend:
    """The SQL of :class:`SqliteStore`: synchronous, one transaction per public method.

    Not thread-safe by itself: the caller runs one method at a time (SqliteStore does so with
    its capacity limiter, or inline on the Trio thread). The connection is opened lazily; on a
    database error a file database drops its connection and reopens it on the next call, so a
    repaired file is picked up. Every ``sqlite3.Error`` leaves as :class:`StoreUnavailable`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.memory = path == ":memory:" or path == ""
        self._conn: sqlite3.Connection | None = None

    # -- connection --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        conn = sqlite3.connect(
            self.path or ":memory:", isolation_level=None, check_same_thread=False, timeout=5.0
        )
        try:
            if not self.memory:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _check_file(self) -> None:
        """Refuse to work on a file that no longer holds a SQLite database.

        SQLite in WAL mode serves reads from its cache and the WAL, so a file overwritten
        with garbage would go unnoticed (and closing the connection would checkpoint the WAL
        over the evidence). Reading the 16-byte header first is cheap; the connection is
        left alone, and the store answers again once the file is restored.
        """
        if self.memory:
            return
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except FileNotFoundError:
            if self._conn is None:
                return  # a new database: connect() creates it
            raise StoreUnavailable(f"database {self.path!r}: the file is gone") from None
        except OSError as exc:
            raise StoreUnavailable(f"database {self.path!r}: cannot read it: {exc}") from exc
        if head and head != _SQLITE_MAGIC:
            raise StoreUnavailable(
                f"database {self.path!r}: file is not a database (its header is corrupt)"
            )

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_file()
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out
        except sqlite3.Error as exc:
            if not self.memory:
                self.close()
            raise StoreUnavailable(f"database {self.path!r}: {exc}") from exc

    # -- lifecycle and health ------------------------------------------------------------

    def open(self, at: Moment, lease_ttl_s: float) -> None:
        """Create the schema; give leases of a previous run a fresh TTL on this run's clock."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE leases SET expires = ? WHERE state = 'active'", (at.mono + lease_ttl_s,)
            )
            # Due times are on this run's clock again: what was due is due now, the rest
            # (delayed jobs, retries still backing off) when their wall-clock time comes.
            conn.execute(
                "UPDATE jobs SET not_before = CASE WHEN due_at > ? THEN ? + (due_at - ?)"
                " ELSE 0 END WHERE status = 'queued'",
                (at.wall, at.mono, at.wall),
            )
            conn.execute("UPDATE bots SET seen_at = ?", (at.mono,))

        self._tx(run)

    def health(self, at: Moment) -> None:
        """A real read and a real write; raises StoreUnavailable if either fails."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT count(*) FROM meta").fetchone()
            conn.execute("SELECT seq FROM jobs ORDER BY seq DESC LIMIT 1").fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('health_probe', ?)",
                (rfc3339(at.wall),),
            )

        self._tx(run)

    # -- bots ----------------------------------------------------------------------------

    def _session(self, conn: sqlite3.Connection, bot_id: str, session_id: str) -> None:
        row = conn.execute(
            "SELECT session_id, status, hostname, pid, registered_at FROM bots WHERE bot_id = ?",
            (bot_id,),
        ).fetchone()
        if row is not None and row[0] == session_id and row[1] != "deregistered":
            return  # the session holds its bot id: the hot path, no timestamp to format
        found = None if row is None else (row[0], row[1], row[2], row[3], rfc3339(row[4]))
        problem = session_problem(bot_id, session_id, found)
        if problem is not None:
            raise problem

    def _seen(self, conn: sqlite3.Connection, bot_id: str, at: Moment, state: str | None) -> None:
        if state:
            conn.execute(
                "UPDATE bots SET last_seen = ?, seen_at = ?, status = 'active', state = ?"
                " WHERE bot_id = ?",
                (at.wall, at.mono, state, bot_id),
            )
        else:
            conn.execute(
                "UPDATE bots SET last_seen = ?, seen_at = ?, status = 'active' WHERE bot_id = ?",
                (at.wall, at.mono, bot_id),
            )

    def _held(self, conn: sqlite3.Connection, bot_id: str) -> dict[str, str]:
        """The bot's active leases -> the status of their job."""
        rows = conn.execute(
            "SELECT l.lease_id, j.status FROM leases l JOIN jobs j ON j.job_id = l.job_id"
            " WHERE l.bot_id = ? AND l.state = 'active'",
            (bot_id,),
        )
        return dict(rows.fetchall())

    def _end_leases(
        self, conn: sqlite3.Connection, lease_ids: Sequence[str], *, spend: bool, at: Moment
    ) -> ExpiryReport:
        """End active leases without an ack: requeue their jobs, or make them dead.

        ``spend`` counts the attempt (an expiry or a bot that lost its work); without it the
        attempt is given back (a release or a deregistration).
        """
        if not lease_ids:
            return ExpiryReport()
        rows: list[EndRow] = []
        for part in _chunks(lease_ids):
            rows += [
                EndRow(*r)
                for r in conn.execute(
                    "SELECT l.lease_id, l.job_id, j.status, j.lease_id, j.attempts,"
                    " j.max_attempts FROM leases l JOIN jobs j ON j.job_id = l.job_id"
                    f" WHERE l.state = 'active' AND l.lease_id IN ({_marks(len(part))})",
                    tuple(part),
                )
            ]
        ends = decide_ends(rows, spend=spend)
        conn.executemany(
            "UPDATE leases SET state = 'expired' WHERE lease_id = ?", [(x,) for x in ends.leases]
        )
        conn.executemany(
            "UPDATE jobs SET status = 'queued', attempts = ?, not_before = 0, due_at = 0"
            " WHERE job_id = ?",
            [(attempts, job_id) for job_id, attempts in ends.requeue],
        )
        conn.executemany(
            "UPDATE jobs SET status = 'dead', error = ?, finished_at = ? WHERE job_id = ?",
            [(error, at.wall, job_id) for job_id, error in ends.dead],
        )
        return ends.report()

    def register(
        self,
        req: models.RegisterRequest,
        at: Moment,
        lease_ttl_s: float,
        *,
        token_hash: str | None = None,
        exclusive_s: float | None = None,
        previous_hash: str | None = None,
    ) -> tuple[str, int]:
        """New session; listed held leases move to it, the bot's other leases end (spent).

        With ``exclusive_s``, a live session of the bot id that ``previous_hash`` does not
        prove is ours refuses the registration (409 bot_id_in_use; see Store.register).
        Returns the new session_id and how many jobs went back to the queue.
        """

        def run(conn: sqlite3.Connection) -> tuple[str, int]:
            if exclusive_s is not None:
                self._check_free(conn, req.bot_id, at, exclusive_s, previous_hash)
            session_id = records.new_id()
            held = self._held(conn, req.bot_id)
            listed = set(req.active_leases)
            keep = [lease for lease in held if lease in listed]
            drop = [lease for lease in held if lease not in listed]
            conn.executemany(
                "UPDATE leases SET session_id = ?, expires = ? WHERE lease_id = ?",
                [(session_id, at.mono + lease_ttl_s, lease) for lease in keep],
            )
            ended = self._end_leases(conn, drop, spend=True, at=at)
            conn.execute(
                "INSERT INTO bots (bot_id, session_id, status, state, capacity, hostname,"
                " version, pid, labels, last_seen, seen_at, registered_at)"
                " VALUES (?, ?, 'active', NULL, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (bot_id) DO UPDATE SET session_id = excluded.session_id,"
                " status = 'active', state = NULL, capacity = excluded.capacity,"
                " hostname = excluded.hostname, version = excluded.version, pid = excluded.pid,"
                " labels = excluded.labels, last_seen = excluded.last_seen,"
                " seen_at = excluded.seen_at, registered_at = excluded.registered_at",
                (*records.registration(req, session_id), at.wall, at.mono, at.wall),
            )
            if token_hash is not None:
                conn.execute(
                    "DELETE FROM sessions WHERE bot_id = ? AND created_at < ?",
                    (req.bot_id, at.wall - records.SESSION_TOKEN_KEEP_S),
                )
                conn.execute(
                    "INSERT INTO sessions (token_hash, bot_id, session_id, created_at)"
                    " VALUES (?, ?, ?, ?)",
                    (token_hash, req.bot_id, session_id, at.wall),
                )
            return session_id, ended.requeued

        return self._tx(run)

    @staticmethod
    def _check_free(
        conn: sqlite3.Connection,
        bot_id: str,
        at: Moment,
        exclusive_s: float,
        previous_hash: str | None,
    ) -> None:
        """Refuse (409 bot_id_in_use) a bot id whose session is alive and not proven ours."""
        row = conn.execute(
            "SELECT session_id, hostname, pid, registered_at FROM bots WHERE bot_id = ?"
            " AND status <> 'deregistered' AND seen_at > ?",
            (bot_id, at.mono - exclusive_s),
        ).fetchone()
        if row is not None:
            records.refuse_unless_continued(
                conn.execute, bot_id, row, previous_hash, mark="?", when=rfc3339
            )

    def session_of(self, token_hash: str) -> tuple[str, str] | None:
        """The (bot_id, session_id) whose session token has ``token_hash``, or None."""
        return self._tx(lambda conn: records.session_of(conn.execute, token_hash, mark="?"))

    @staticmethod
    def _check_owner(conn: sqlite3.Connection, acks: Sequence[models.Ack], owner: str) -> None:
        """403 not_lease_owner when an ack's lease was claimed by another bot id."""
        ids = list(dict.fromkeys(a.lease_id for a in acks))
        foreign: list[str] = []
        for part in _chunks(ids):
            foreign += [
                lease
                for (lease,) in conn.execute(
                    f"SELECT lease_id FROM leases WHERE lease_id IN ({_marks(len(part))})"
                    " AND bot_id <> ?",
                    (*part, owner),
                )
            ]
        if foreign:
            raise not_lease_owner(foreign, owner)

    def _bots(self, conn: sqlite3.Connection, bot_id: str | None) -> list[models.BotInfo]:
        leases = "SELECT bot_id, lease_id FROM leases WHERE state = 'active'{bot} ORDER BY rowid"
        return records.read_bots(conn.execute, bot_id, mark="?", active_leases=leases, when=rfc3339)

    def get_bot(self, bot_id: str) -> models.BotInfo:
        """The bot, or 404 unknown_bot."""
        bots = self._tx(lambda conn: self._bots(conn, bot_id))
        if not bots:
            raise unknown_bot(bot_id)
        return bots[0]

    def list_bots(self) -> list[models.BotInfo]:
        """Every bot, in bot_id order."""
        return self._tx(lambda conn: self._bots(conn, None))

    def page_bots(self, limit: int, after: str | None) -> tuple[list[models.BotInfo], str | None]:
        """Up to ``limit`` bots after bot_id ``after``, and the bot_id to continue after."""
        leases = "SELECT bot_id, lease_id FROM leases WHERE state = 'active'{bot} ORDER BY rowid"
        return self._tx(
            lambda conn: records.read_bot_page(
                conn.execute, after, limit, mark="?", active_leases=leases, when=rfc3339
            )
        )

    def heartbeat(
        self, bot_id: str, req: models.HeartbeatRequest, at: Moment, lease_ttl_s: float
    ) -> tuple[models.HeartbeatResponse, int]:
        """Extend listed held leases; report cancelled (held) and lost (listed, not held).

        A lease of this session that the bot does not list, and that was granted or last
        extended over ``lease_ttl_s / 3`` ago, is one the bot never received (its claim answer
        was lost on the way): it is released at once and the attempt is given back, so lost
        answers cannot use up a job's attempts. The grace covers a heartbeat that was sent
        before the claim answer arrived. Returns the answer and how many jobs were requeued.
        """

        def run(conn: sqlite3.Connection) -> tuple[models.HeartbeatResponse, int]:
            session_id = req.session_id
            self._session(conn, bot_id, session_id)
            self._seen(conn, bot_id, at, req.state)
            held = self._held(conn, bot_id)
            listed = list(dict.fromkeys(req.active_leases))
            extend = [lease for lease in listed if lease in held]
            lost = [lease for lease in listed if lease not in held]
            confirmed_before = at.mono - lease_ttl_s / 3 + lease_ttl_s
            unlisted = set(held) - set(listed)
            never_received = [
                lease
                for (lease,) in conn.execute(
                    "SELECT lease_id FROM leases WHERE bot_id = ? AND session_id = ?"
                    " AND state = 'active' AND expires <= ?",
                    (bot_id, session_id, confirmed_before),
                )
                if lease in unlisted
            ]
            released = self._end_leases(conn, never_received, spend=False, at=at)
            cancel = [
                lease
                for lease, status in held.items()
                if status == "cancelled" and lease not in never_received
            ]
            expires = at.mono + lease_ttl_s
            conn.executemany(
                "UPDATE leases SET expires = ? WHERE lease_id = ?",
                [(expires, lease) for lease in extend],
            )
            answer = models.HeartbeatResponse(
                lease_expires_at=at.display(expires) if extend else None,
                cancel_leases=cancel,
                lost_leases=lost,
            )
            return answer, released.requeued

        return self._tx(run)

    def deregister(self, bot_id: str, session_id: str, at: Moment) -> int:
        """End the session; its leases go back to the queue without spending an attempt."""

        def run(conn: sqlite3.Connection) -> int:
            self._session(conn, bot_id, session_id)
            report = self._end_leases(conn, list(self._held(conn, bot_id)), spend=False, at=at)
            conn.execute(
                "UPDATE bots SET status = 'deregistered', last_seen = ? WHERE bot_id = ?",
                (at.wall, bot_id),
            )
            return report.requeued

        return self._tx(run)

    # -- jobs ----------------------------------------------------------------------------

    def _job(self, conn: sqlite3.Connection, job_id: str) -> models.JobView:
        row = conn.execute(f"SELECT {records.JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
        found = row.fetchone()
        if found is None:
            raise unknown_job(job_id)
        return records.job_view(found, rfc3339)

    def submit(self, job: models.JobSubmit, at: Moment) -> tuple[models.JobView, bool]:
        """Queue a job; an idempotency_key seen before returns that job and False."""
        return self._tx(lambda conn: self._submit(conn, job, at))

    def submit_many(
        self, jobs: Sequence[models.JobSubmit], at: Moment
    ) -> list[tuple[models.JobView, bool]]:
        """Queue jobs in one transaction, each as :meth:`submit` does; in order."""
        return self._tx(lambda conn: [self._submit(conn, job, at) for job in jobs])

    def _submit(
        self, conn: sqlite3.Connection, job: models.JobSubmit, at: Moment
    ) -> tuple[models.JobView, bool]:
        if job.idempotency_key is not None:
            row = conn.execute(
                "SELECT job_id FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
            ).fetchone()
            if row is not None:
                return self._job(conn, row[0]), False
        job_id = records.new_id()
        run_at, not_before, due_at = _scheduled(job, at)
        conn.execute(
            "INSERT INTO jobs (job_id, kind, payload, status, priority, max_attempts,"
            " attempts, timeout_s, idempotency_key, created_at, run_at, not_before, due_at,"
            " retry_base_s, retry_max_s)"
            " VALUES (?, ?, ?, 'queued', ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                job.kind,
                json.dumps(job.payload),
                job.priority,
                job.max_attempts,
                job.timeout_s,
                job.idempotency_key,
                at.wall,
                run_at,
                not_before,
                due_at,
                job.retry_base_s,
                job.retry_max_s,
            ),
        )
        return self._job(conn, job_id), True

    def get_job(self, job_id: str) -> models.JobView:
        """The job, or 404 unknown_job."""
        return self._tx(lambda conn: self._job(conn, job_id))

    def list_jobs(
        self, status: str | None, limit: int, kind: str | None = None
    ) -> list[models.JobView]:
        """The newest ``limit`` jobs, optionally of one status and of one kind."""
        return self.page_jobs(status, limit, kind)[0]

    def page_jobs(
        self, status: str | None, limit: int, kind: str | None = None, before: int | None = None
    ) -> tuple[list[models.JobView], int | None]:
        """The newest ``limit`` jobs (of one status, of one kind) with a seq below ``before``,
        and the seq the next page starts below (None: the last page)."""

        def run(conn: sqlite3.Connection) -> tuple[list[models.JobView], int | None]:
            where, args = records.job_filter(status=status, kind=kind, mark="?", before=before)
            cur = conn.execute(
                f"SELECT seq, {records.JOB_COLUMNS} FROM jobs{where} ORDER BY seq DESC LIMIT ?",
                (*args, limit + 1),
            )
            return records.job_page(cur.fetchall(), limit, rfc3339)

        return self._tx(run)

    def final_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """Those of ``job_ids`` that ended, or that no longer exist."""

        def run(conn: sqlite3.Connection) -> set[str]:
            going: set[str] = set()
            for part in _chunks(list(job_ids)):
                going.update(
                    job_id
                    for job_id, status in conn.execute(
                        f"SELECT job_id, status FROM jobs WHERE job_id IN ({_marks(len(part))})",
                        tuple(part),
                    )
                    if status not in models.FINAL_JOB_STATUSES
                )
            return set(job_ids) - going

        return self._tx(run)

    def retry_job(self, job_id: str) -> models.JobView:
        """Put a dead or failed job back in the queue, due now, with its attempts unspent;
        409 job_not_retryable for a job in another status."""

        def run(conn: sqlite3.Connection) -> models.JobView:
            job = self._job(conn, job_id)
            if job.status not in records.RETRYABLE_STATUSES:
                raise job_not_retryable(job_id, job.status)
            self._requeue_fresh(conn, [job_id])
            return self._job(conn, job_id)

        return self._tx(run)

    def retry_jobs(self, status: str, kind: str | None, limit: int) -> list[str]:
        """Retry (as :meth:`retry_job`) up to ``limit`` jobs of ``status`` (dead or failed)
        and ``kind``, oldest first; their ids."""

        def run(conn: sqlite3.Connection) -> list[str]:
            where, args = records.job_filter(status=status, kind=kind, mark="?")
            ids = [
                job_id
                for (job_id,) in conn.execute(
                    f"SELECT job_id FROM jobs{where} ORDER BY seq LIMIT ?", (*args, limit)
                )
            ]
            self._requeue_fresh(conn, ids)
            return ids

        return self._tx(run)

    @staticmethod
    def _requeue_fresh(conn: sqlite3.Connection, job_ids: Sequence[str]) -> None:
        """Queue ended jobs again, due now, as if never leased (their error stays)."""
        conn.executemany(
            "UPDATE jobs SET status = 'queued', attempts = 0, result = NULL, finished_at = NULL,"
            " not_before = 0, due_at = 0, lease_id = NULL, bot_id = NULL WHERE job_id = ?",
            [(job_id,) for job_id in job_ids],
        )

    def cancel_job(self, job_id: str, at: Moment) -> models.JobView:
        """Cancel a queued or leased job; a leased one is cancelled on its bot by heartbeat."""

        def run(conn: sqlite3.Connection) -> models.JobView:
            job = self._job(conn, job_id)
            if job.status in ("queued", "leased"):
                conn.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE job_id = ?",
                    (at.wall, job_id),
                )
                return self._job(conn, job_id)
            if job.status == "cancelled":
                return job
            raise job_finished(job_id, job.status)

        return self._tx(run)

    def stats(self, at: Moment) -> models.Stats:
        """Counts per job status and per bot status, every status present, and the queued
        jobs not yet due."""

        def run(conn: sqlite3.Connection) -> models.Stats:
            jobs_sql, bots_sql = records.STATS_SQL
            (scheduled,) = conn.execute(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND not_before > ?",
                (at.mono,),
            ).fetchone()
            return records.stats_of(conn.execute(jobs_sql), conn.execute(bots_sql), scheduled)

        return self._tx(run)

    # -- work ----------------------------------------------------------------------------

    def _apply_acks(
        self, conn: sqlite3.Connection, acks: Sequence[models.Ack], at: Moment
    ) -> list[models.AckResult]:
        ids = list(dict.fromkeys(a.lease_id for a in acks))
        rows: dict[str, AckRow] = {}
        for part in _chunks(ids):
            for r in conn.execute(
                "SELECT l.lease_id, l.job_id, l.state, l.outcome, j.status, j.lease_id,"
                " j.attempts, j.max_attempts, j.error, j.retry_base_s, j.retry_max_s"
                " FROM leases l"
                " JOIN jobs j ON j.job_id = l.job_id"
                f" WHERE l.lease_id IN ({_marks(len(part))})",
                tuple(part),
            ):
                rows[r[0]] = AckRow(*r)
        results, done, changes = decide_acks(acks, rows)
        conn.executemany(
            "UPDATE leases SET state = 'done', outcome = ? WHERE lease_id = ?",
            [(outcome, lease_id) for lease_id, outcome in done],
        )
        conn.executemany(
            "UPDATE jobs SET status = ?, attempts = ?, result = ?, error = ?, not_before = ?,"
            " due_at = ?, finished_at = ? WHERE job_id = ?",
            [
                (
                    c.status,
                    c.attempts,
                    c.result,
                    c.error,
                    *at.due(c.retry_in_s),
                    at.wall if c.final else None,
                    c.job_id,
                )
                for c in changes.values()
            ],
        )
        return results

    @staticmethod
    def _pick_index(conn: sqlite3.Connection, at: Moment) -> str:
        """How the claim reads the queue: ``INDEXED BY jobs_queue`` unless many queued jobs
        are not due yet.

        Left to itself, SQLite plans the claim through ``jobs_due`` (status, not_before) and
        sorts every due job to return the first few: each claim costs the whole backlog
        (measured: ~60% of the server's CPU per claim+ack at batch 1 with 20,000 jobs
        queued). Walking ``jobs_queue`` in the claim's own order stops after ``max_jobs``
        matches, but steps over the queued jobs that are not due; so it is chosen while
        fewer than :data:`_PICK_SKIP_LIMIT` of them exist (one bounded index probe to tell).
        Either way the query and its answer are the same; only the plan differs.
        """
        not_due = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM jobs WHERE status = 'queued' AND not_before > ?"
            " LIMIT ?)",
            (at.mono, _PICK_SKIP_LIMIT),
        ).fetchone()[0]
        return " INDEXED BY jobs_queue" if not_due < _PICK_SKIP_LIMIT else ""

    def claim(
        self,
        req: models.ClaimRequest,
        at: Moment,
        lease_ttl_s: float,
        owner: str | None = None,
    ) -> models.ClaimResponse:
        """Apply the acks, then lease up to max_jobs due queued jobs: priority, then age.

        ``owner``: acks of leases another bot id claimed reject the claim (403)."""

        def run(conn: sqlite3.Connection) -> models.ClaimResponse:
            self._session(conn, req.bot_id, req.session_id)
            if owner is not None and req.acks:
                self._check_owner(conn, req.acks, owner)
            self._seen(conn, req.bot_id, at, None)
            acks = self._apply_acks(conn, req.acks, at) if req.acks else []
            if req.max_jobs <= 0:
                return models.ClaimResponse(jobs=[], acks=acks)
            args: list[Any] = [at.mono]
            kinds = ""
            if req.kinds is not None:
                if not req.kinds:
                    return models.ClaimResponse(jobs=[], acks=acks)
                kinds = f" AND kind IN ({_marks(len(req.kinds))})"
                args += req.kinds
            args.append(req.max_jobs)
            rows = conn.execute(
                "SELECT seq, job_id, kind, payload, attempts, timeout_s FROM jobs"
                f"{self._pick_index(conn, at)}"
                f" WHERE status = 'queued' AND not_before <= ?{kinds}"
                " ORDER BY priority DESC, seq LIMIT ?",
                args,
            ).fetchall()
            expires = at.mono + lease_ttl_s
            shown = at.display(expires)
            jobs: list[models.ClaimedJob] = []
            job_rows: list[tuple[int, str, str, int]] = []
            lease_rows: list[tuple[str, str, str, str, int, float]] = []
            for seq, job_id, kind, payload, attempts, timeout_s in rows:
                lease_id = records.new_id()
                attempt = attempts + 1
                job_rows.append((attempt, req.bot_id, lease_id, seq))
                lease_rows.append((lease_id, job_id, req.bot_id, req.session_id, attempt, expires))
                jobs.append(
                    records.claimed_job(job_id, lease_id, kind, payload, attempt, timeout_s, shown)
                )
            conn.executemany(
                "UPDATE jobs SET status = 'leased', attempts = ?, bot_id = ?, lease_id = ?"
                " WHERE seq = ?",
                job_rows,
            )
            conn.executemany(
                "INSERT INTO leases (lease_id, job_id, bot_id, session_id, attempt, state,"
                " expires) VALUES (?, ?, ?, ?, ?, 'active', ?)",
                lease_rows,
            )
            return models.ClaimResponse(jobs=jobs, acks=acks)

        return self._tx(run)

    def release(self, lease_ids: Sequence[str], at: Moment) -> int:
        """Give back active leases without spending their attempts; jobs requeued."""
        return self._tx(lambda conn: self._end_leases(conn, lease_ids, spend=False, at=at).requeued)

    def ack(self, ack: models.Ack, at: Moment, owner: str | None = None) -> models.AckResult:
        """Apply one ack (see the protocol's ack semantics); ``owner`` as for :meth:`claim`."""

        def run(conn: sqlite3.Connection) -> models.AckResult:
            if owner is not None:
                self._check_owner(conn, [ack], owner)
            return self._apply_acks(conn, [ack], at)[0]

        return self._tx(run)

    def expire(self, at: Moment, gone_after_s: float) -> ExpiryReport:
        """Expire active leases whose deadline passed; mark bots silent for gone_after_s gone."""

        def run(conn: sqlite3.Connection) -> ExpiryReport:
            due = [
                r[0]
                for r in conn.execute(
                    "SELECT lease_id FROM leases WHERE state = 'active' AND expires <= ?",
                    (at.mono,),
                )
            ]
            report = self._end_leases(conn, due, spend=True, at=at)
            gone = conn.execute(
                "UPDATE bots SET status = 'gone' WHERE status = 'active' AND seen_at <= ?",
                (at.mono - gone_after_s,),
            ).rowcount
            return attrs.evolve(report, gone=gone)

        return self._tx(run)

    def next_deadline(self, at: Moment) -> float | None:
        """The earliest lease expiry or future retry time, or None when there is none."""

        def run(conn: sqlite3.Connection) -> float | None:
            lease = conn.execute(
                "SELECT min(expires) FROM leases WHERE state = 'active'"
            ).fetchone()[0]
            retry = conn.execute(
                "SELECT min(not_before) FROM jobs WHERE status = 'queued' AND not_before > ?",
                (at.mono,),
            ).fetchone()[0]
            times = [t for t in (lease, retry) if t is not None]
            return min(times) if times else None

        return self._tx(run)

    def oldest_queued(self, at: Moment) -> dict[str, float]:
        """Seconds the longest-waiting due job of each kind has waited (since its submit, or
        since its retry came due)."""

        def run(conn: sqlite3.Connection) -> dict[str, float]:
            # not_before is on the monotonic clock: as a wall time, at.wall - (at.mono - nb).
            rows = conn.execute(
                "SELECT kind, min(max(created_at, ? - (? - not_before))) FROM jobs"
                " WHERE status = 'queued' AND not_before <= ? GROUP BY kind",
                (at.wall, at.mono, at.mono),
            ).fetchall()
            return {kind: max(0.0, at.wall - since) for kind, since in rows}

        return self._tx(run)

    def queue_depth(self, at: Moment) -> dict[str, int]:
        """How many queued jobs of each kind are due (kinds with none are absent)."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT kind, count(*) FROM jobs WHERE status = 'queued' AND not_before <= ?"
                " GROUP BY kind",
                (at.mono,),
            )
            return dict(rows.fetchall())

        return self._tx(run)

    def prune(self, at: Moment, older_than_s: float) -> int:
        """Delete up to PRUNE_BATCH jobs that ended over ``older_than_s`` ago, with their
        leases; returns how many jobs."""

        def run(conn: sqlite3.Connection) -> int:
            seqs = [
                (seq, job_id)
                for seq, job_id in conn.execute(
                    "SELECT seq, job_id FROM jobs WHERE finished_at IS NOT NULL"
                    f" AND finished_at <= ? AND status IN ({records.FINAL_STATUSES_SQL}) LIMIT ?",
                    (at.wall - older_than_s, PRUNE_BATCH),
                )
            ]
            conn.executemany("DELETE FROM leases WHERE job_id = ?", [(j,) for _, j in seqs])
            conn.executemany("DELETE FROM jobs WHERE seq = ?", [(q,) for q, _ in seqs])
            return len(seqs)

        return self._tx(run)

    def check_invariant(self) -> list[str]:
        """Problems with the store's invariant (empty when it holds); for tests and audits."""

        def run(conn: sqlite3.Connection) -> list[str]:
            return records.invariant_problems(lambda sql: conn.execute(sql).fetchall())

        return self._tx(run)
