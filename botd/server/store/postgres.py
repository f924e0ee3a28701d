"""The shared job store: :class:`PostgresStore`, for several server replicas on one database.

It runs the :class:`~.interface.Store`'s transactions on a
:class:`~.postgres_db.PostgresDatabase` (the pool, retries, LISTEN), on the schema of
:mod:`.postgres_schema`:

- every lease deadline, expiry and retry time comes from the database's clock (``now()``):
  replicas share rows, and their monotonic clocks mean nothing to each other;
- row locks are always taken in one order (bot, then leases, then jobs); claims and expiry
  take rows with ``FOR UPDATE SKIP LOCKED``, so replicas never wait on each other for work
  and no lease is expired twice;
- a transaction that makes jobs claimable (a submit, a release, a requeue, an expiry) sends
  one ``NOTIFY botd_jobs``, which wakes the other replicas' waiting claims.

Errors: the database down, restarting or slower than the statement timeout raises
:class:`StoreUnavailable` within about that timeout (503 ``store_unavailable``); a schema
newer than this botd raises :class:`StoreIncompatible`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import trio

from ... import models
from ...timestamps import parse_rfc3339, rfc3339_of
from . import records
from .errors import (
    job_finished,
    job_not_retryable,
    not_lease_owner,
    session_problem,
    superseded,
    unknown_bot,
    unknown_job,
)
from .interface import PRUNE_BATCH, ExpiryReport
from .postgres_db import (
    DEFAULT_POOL_SIZE,
    DEFAULT_STATEMENT_TIMEOUT_S,
    LISTEN_FALLBACK_S,
    NOTIFY_CHANNEL,
    Conn,
    PostgresDatabase,
    redact_dsn,
)
from .postgres_retry import retry_rows
from .postgres_schema import INVARIANT, MIGRATIONS
from .rules import AckRow, EndRow, Ends, decide_acks, decide_ends

__all__ = [
    "DEFAULT_POOL_SIZE",
    "DEFAULT_STATEMENT_TIMEOUT_S",
    "EXPIRE_BATCH",
    "LISTEN_FALLBACK_S",
    "MIGRATIONS",
    "NOTIFY_CHANNEL",
    "PostgresStore",
    "redact_dsn",
]

#: The first key of the advisory lock that serialises the registers of one bot id (the
#: second is the id's ``hashtext``): "botd" in ASCII, so no other user of the database's
#: two-key advisory locks is likely to share it.
_REGISTER_LOCK = 0x626F7464
#: How many leases one expiry pass takes (the next pass, at most a second later, goes on).
EXPIRE_BATCH = 1000

_CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT seq, job_id, lease_id, lease_attempt, lease_state, lease_outcome, bot_id FROM jobs
    WHERE status = 'queued' AND not_before <= now() {kinds}
    ORDER BY priority DESC, seq
    LIMIT %(n)s
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE jobs j
    SET status = 'leased', attempts = j.attempts + 1, bot_id = %(bot)s,
        lease_id = j.job_id || replace(gen_random_uuid()::text, '-', ''),
        lease_attempt = j.attempts + 1, lease_state = 'active',
        lease_session = %(session)s, lease_expires = now() + %(ttl)s * interval '1 second',
        lease_outcome = NULL
    FROM picked WHERE j.seq = picked.seq
    RETURNING j.seq, j.priority, j.job_id, j.kind, j.payload, j.attempts, j.timeout_s,
              j.lease_id
), retired AS (
    INSERT INTO leases (lease_id, job_id, bot_id, attempt, state, outcome)
    SELECT lease_id, job_id, bot_id, lease_attempt, lease_state, lease_outcome
    FROM picked WHERE lease_id IS NOT NULL
)
SELECT job_id, lease_id, kind, payload, attempts, timeout_s,
       now() + %(ttl)s * interval '1 second'
FROM leased ORDER BY priority DESC, seq
"""

_APPLY_ACKS = """
WITH history AS (
    UPDATE leases SET state = 'done', outcome = u.outcome
    FROM json_to_recordset(%(history)s::json) AS u(lease_id text, outcome text)
    WHERE leases.lease_id = u.lease_id
), succeeded AS (
    -- the common case, with two fields a row
    UPDATE jobs SET status = 'succeeded', result = u.result, error = NULL,
        not_before = '-infinity', finished_at = now(), lease_state = 'done',
        lease_outcome = 'succeeded'
    FROM ROWS FROM (unnest(string_to_array(%(ok_ids)s, ',')),
                    json_array_elements_text(%(ok_results)s::json)) AS u(job_id, result)
    WHERE jobs.job_id = u.job_id
)
UPDATE jobs SET
    status = coalesce(u.status, jobs.status),
    attempts = coalesce(u.attempts, jobs.attempts),
    result = CASE WHEN u.status IS NULL THEN jobs.result ELSE u.result END,
    error = CASE WHEN u.status IS NULL THEN jobs.error ELSE u.error END,
    not_before = CASE WHEN u.status IS NULL THEN jobs.not_before
                      WHEN u.retry_in > 0 THEN now() + u.retry_in * interval '1 second'
                      ELSE '-infinity' END,
    finished_at = CASE WHEN u.status IS NULL THEN jobs.finished_at
                       WHEN u.final THEN now() END,
    lease_state = CASE WHEN u.lease_outcome IS NULL THEN jobs.lease_state ELSE 'done' END,
    lease_outcome = coalesce(u.lease_outcome, jobs.lease_outcome)
FROM json_to_recordset(%(changes)s::json)
     AS u(job_id text, status text, attempts int, result text, error text, retry_in float8,
          final bool, lease_outcome text)
WHERE jobs.job_id = u.job_id
"""

_END_LEASES = """
UPDATE jobs SET lease_state = 'expired',
    status = coalesce(u.status, jobs.status),
    attempts = coalesce(u.attempts, jobs.attempts),
    not_before = CASE WHEN u.status = 'queued' THEN '-infinity' ELSE jobs.not_before END,
    error = CASE WHEN u.status = 'dead' THEN u.error ELSE jobs.error END,
    finished_at = CASE WHEN u.status = 'dead' THEN now() ELSE jobs.finished_at END
FROM json_to_recordset(%s::json) AS u(job_id text, status text, attempts int, error text)
WHERE jobs.job_id = u.job_id
"""

#: An active lease as :class:`EndRow` reads it, from its job's row.
_ACTIVE = (
    "SELECT lease_id, job_id, status, lease_id, attempts, max_attempts FROM jobs"
    " WHERE lease_state = 'active'"
)

#: When a submitted job is due (NULL: at its submit), from its row ``u`` of the submit.
_RUN_AT = (
    "CASE WHEN u.delay_s > 0 THEN now() + u.delay_s * interval '1 second'"
    " ELSE to_timestamp(u.run_at) END"
)

#: A PostgreSQL store's job ids are this long; a lease id starts with its job's id.
_JOB_ID_LEN = 32


# Lists reach a statement as one text parameter each. psycopg builds an array parameter
# element by element in Python, ~3-5 µs an element: for a claim with 100 acks that was a
# sixth of the server's CPU. Ids go as one comma-separated text; rows with free text as
# one JSON text (json.dumps and PostgreSQL's parsers are C).

#: The ids this store makes: job ids (uuid4 hex) and lease ids (a job id and more hex).
_HEX_ID = re.compile(r"[0-9a-f]+")


def _ids(values: Iterable[str]) -> str:
    """Ids for :func:`_id_array`. Anything but hex is left out: no row can have it."""
    return ",".join(v for v in values if _HEX_ID.fullmatch(v))


def _id_array(placeholder: str) -> str:
    """SQL: the ``text[]`` of an :func:`_ids` parameter."""
    return f"string_to_array({placeholder}, ',')"


def _json_param(value: Any) -> str:
    """Rows for ``json_to_recordset``, or a list of free text for :func:`_texts`."""
    return json.dumps(value)


def _texts(placeholder: str) -> str:
    """SQL: the ``text[]`` of a JSON list parameter (see :func:`_json_param`)."""
    return f"ARRAY(SELECT json_array_elements_text({placeholder}::json))"


def _job_of(lease_id: str) -> str:
    return lease_id[:_JOB_ID_LEN]


class PostgresStore(PostgresDatabase):
    """The :class:`~botd.server.store.interface.Store` that several server replicas share.

    Its arguments (the DSN, the pool's size, the statement timeout) and its connections
    are :class:`~.postgres_db.PostgresDatabase`'s. Nothing is kept only in this process:
    any replica can answer any request.
    """

    #: Every replica writes to the database: waiting GETs re-check what others changed.
    shared = True

    # -- bots ----------------------------------------------------------------------------

    def _touch(self, conn: Conn, bot_id: str, session_id: str, state: str | None) -> None:
        """Check the session and mark the bot seen (this locks the bot's row first)."""
        cur = conn.execute(
            "UPDATE bots SET last_seen = now(), status = 'active', state = coalesce(%s, state)"
            " WHERE bot_id = %s AND session_id = %s AND status <> 'deregistered'",
            (state or None, bot_id, session_id),
        )
        if cur.rowcount == 1:
            return
        row = conn.execute(
            "SELECT session_id, status, hostname, pid, registered_at FROM bots WHERE bot_id = %s",
            (bot_id,),
        ).fetchone()
        found = None if row is None else (row[0], row[1], row[2], row[3], rfc3339_of(row[4]))
        raise session_problem(bot_id, session_id, found) or superseded(
            bot_id, "the session changed meanwhile"
        )

    def _held(self, conn: Conn, bot_id: str) -> dict[str, str]:
        """The bot's active leases -> the status of their job (the jobs' rows locked)."""
        rows = conn.execute(
            "SELECT lease_id, status FROM jobs WHERE bot_id = %s AND lease_state = 'active'"
            " ORDER BY seq FOR UPDATE",
            (bot_id,),
        )
        return dict(rows.fetchall())

    def _end_leases(self, conn: Conn, lease_ids: Sequence[str], *, spend: bool) -> Ends:
        """End active leases without an ack (see :func:`decide_ends`), in one statement."""
        if not lease_ids:
            return Ends([], [], [])
        rows = [
            EndRow(*r)
            for r in conn.execute(
                f"{_ACTIVE} AND job_id = ANY({_id_array('%s')})"
                f" AND lease_id = ANY({_id_array('%s')}) ORDER BY seq FOR UPDATE",
                (_ids(sorted({_job_of(lease) for lease in lease_ids})), _ids(lease_ids)),
            )
        ]
        return self._write_ends(conn, rows, spend=spend)

    def _write_ends(self, conn: Conn, rows: Sequence[EndRow], *, spend: bool) -> Ends:
        """Decide the ends of ``rows`` and write them: one statement, one row per job."""
        ends = decide_ends(rows, spend=spend)
        if not rows:
            return ends
        status: dict[str, tuple[str | None, int | None, str | None]] = {
            r.job_id: (None, None, None) for r in rows
        }
        for job_id, attempts in ends.requeue:
            status[job_id] = ("queued", attempts, None)
        for job_id, error in ends.dead:
            status[job_id] = ("dead", None, error)
        rows_json = [
            {"job_id": job_id, "status": st, "attempts": attempts, "error": error}
            for job_id, (st, attempts, error) in status.items()
        ]
        conn.execute(_END_LEASES, (_json_param(rows_json),))
        if ends.requeue:
            self._notify(conn)
        return ends

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

        def run(conn: Conn) -> tuple[str, int]:
            if exclusive_s is not None:
                self._check_free(conn, req.bot_id, exclusive_s, previous_hash)
            session_id = records.new_id()
            conn.execute(
                "INSERT INTO bots (bot_id, session_id, status, state, capacity, hostname,"
                " version, pid, labels, last_seen, registered_at)"
                " VALUES (%s, %s, 'active', NULL, %s, %s, %s, %s, %s, now(), now())"
                " ON CONFLICT (bot_id) DO UPDATE SET session_id = excluded.session_id,"
                " status = 'active', state = NULL, capacity = excluded.capacity,"
                " hostname = excluded.hostname, version = excluded.version, pid = excluded.pid,"
                " labels = excluded.labels, last_seen = excluded.last_seen,"
                " registered_at = excluded.registered_at",
                records.registration(req, session_id),
            )
            if token_hash is not None:
                conn.execute(
                    "DELETE FROM sessions WHERE bot_id = %s"
                    " AND created_at < now() - %s * interval '1 second'",
                    (req.bot_id, records.SESSION_TOKEN_KEEP_S),
                )
                conn.execute(
                    "INSERT INTO sessions (token_hash, bot_id, session_id) VALUES (%s, %s, %s)",
                    (token_hash, req.bot_id, session_id),
                )
            held = self._held(conn, req.bot_id)
            listed = set(req.active_leases)
            keep = [lease for lease in held if lease in listed]
            drop = [lease for lease in held if lease not in listed]
            if keep:
                conn.execute(
                    "UPDATE jobs SET lease_session = %s,"
                    " lease_expires = now() + %s * interval '1 second'"
                    " WHERE bot_id = %s AND lease_state = 'active'"
                    f" AND lease_id = ANY({_id_array('%s')})",
                    (session_id, lease_ttl_s, req.bot_id, _ids(keep)),
                )
            ended = self._end_leases(conn, drop, spend=True)
            return session_id, len(ended.requeue)

        return await self._run(run)

    @staticmethod
    def _check_free(conn: Conn, bot_id: str, exclusive_s: float, previous_hash: str | None) -> None:
        """Refuse (409 bot_id_in_use) a bot id whose session is alive and not proven ours.

        Two registers of one id take turns: a transaction-level advisory lock on the id's
        hash comes first, so a brand-new id (no row yet for ``FOR UPDATE`` to lock) is
        serialised too; the second then sees the first's committed row and gets the 409.
        """
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_REGISTER_LOCK, bot_id))
        row = conn.execute(
            "SELECT session_id, hostname, pid, registered_at,"
            " status <> 'deregistered' AND last_seen > now() - %s * interval '1 second'"
            " FROM bots WHERE bot_id = %s FOR UPDATE",
            (exclusive_s, bot_id),
        ).fetchone()
        if row is None or not row[4]:
            return
        records.refuse_unless_continued(
            conn.execute, bot_id, row, previous_hash, mark="%s", when=rfc3339_of
        )

    async def session_of(self, token_hash: str) -> tuple[str, str] | None:
        """See :meth:`Store.session_of`."""
        return await self._run(lambda conn: records.session_of(conn.execute, token_hash, mark="%s"))

    @staticmethod
    def _check_owner(conn: Conn, acks: Sequence[models.Ack], owner: str) -> None:
        """403 not_lease_owner when an ack's lease was claimed by another bot id (the
        latest lease on its job's row, or a retired one in ``leases``)."""
        ids = list(dict.fromkeys(a.lease_id for a in acks))
        jobs = _ids(sorted({_job_of(lease) for lease in ids}))
        foreign = [
            lease
            for (lease,) in conn.execute(
                f"SELECT lease_id FROM jobs WHERE job_id = ANY({_id_array('%s')})"
                f" AND lease_id = ANY({_id_array('%s')}) AND bot_id IS DISTINCT FROM %s"
                f" UNION SELECT lease_id FROM leases WHERE lease_id = ANY({_id_array('%s')})"
                " AND bot_id <> %s",
                (jobs, _ids(ids), owner, _ids(ids), owner),
            )
        ]
        if foreign:
            raise not_lease_owner(sorted(foreign), owner)

    def _bots(self, conn: Conn, bot_id: str | None) -> list[models.BotInfo]:
        leases = "SELECT bot_id, lease_id FROM jobs WHERE lease_state = 'active'{bot} ORDER BY seq"
        return records.read_bots(
            conn.execute, bot_id, mark="%s", active_leases=leases, when=rfc3339_of
        )

    async def get_bot(self, bot_id: str) -> models.BotInfo:
        """See :meth:`Store.get_bot`."""
        bots = await self._run(lambda conn: self._bots(conn, bot_id))
        if not bots:
            raise unknown_bot(bot_id)
        return bots[0]

    async def list_bots(self) -> list[models.BotInfo]:
        """See :meth:`Store.list_bots`."""
        return await self._run(lambda conn: self._bots(conn, None))

    async def page_bots(
        self, *, limit: int, after: str | None
    ) -> tuple[list[models.BotInfo], str | None]:
        """See :meth:`Store.page_bots`."""
        leases = "SELECT bot_id, lease_id FROM jobs WHERE lease_state = 'active'{bot} ORDER BY seq"
        return await self._run(
            lambda conn: records.read_bot_page(
                conn.execute, after, limit, mark="%s", active_leases=leases, when=rfc3339_of
            )
        )

    async def heartbeat(
        self, bot_id: str, req: models.HeartbeatRequest, *, lease_ttl_s: float
    ) -> tuple[models.HeartbeatResponse, int]:
        """See :meth:`Store.heartbeat` (and SqliteBackend.heartbeat for the rules)."""

        def run(conn: Conn) -> tuple[models.HeartbeatResponse, int]:
            session_id = req.session_id
            self._touch(conn, bot_id, session_id, req.state)
            held = self._held(conn, bot_id)
            listed = list(dict.fromkeys(req.active_leases))
            extend = [lease for lease in listed if lease in held]
            lost = [lease for lease in listed if lease not in held]
            unlisted = set(held) - set(listed)
            never_received: list[str] = []
            if unlisted:
                never_received = [
                    lease
                    for (lease,) in conn.execute(
                        "SELECT lease_id FROM jobs WHERE bot_id = %s AND lease_session = %s"
                        " AND lease_state = 'active'"
                        " AND lease_expires <= now() + %s * interval '1 second'",
                        (bot_id, session_id, lease_ttl_s - lease_ttl_s / 3),
                    )
                    if lease in unlisted
                ]
            released = self._end_leases(conn, never_received, spend=False)
            cancel = [
                lease
                for lease, status in held.items()
                if status == "cancelled" and lease not in never_received
            ]
            expires_at: str | None = None
            if extend:
                row = conn.execute(
                    "WITH x AS (UPDATE jobs SET lease_expires = now() + %s * interval '1 second'"
                    " WHERE bot_id = %s AND lease_state = 'active'"
                    f" AND lease_id = ANY({_id_array('%s')}))"
                    " SELECT now() + %s * interval '1 second'",
                    (lease_ttl_s, bot_id, _ids(extend), lease_ttl_s),
                ).fetchone()
                expires_at = rfc3339_of(row[0]) if row else None
            answer = models.HeartbeatResponse(
                lease_expires_at=expires_at, cancel_leases=cancel, lost_leases=lost
            )
            return answer, len(released.requeue)

        return await self._run(run)

    async def deregister(self, bot_id: str, session_id: str) -> int:
        """See :meth:`Store.deregister`."""

        def run(conn: Conn) -> int:
            self._touch(conn, bot_id, session_id, None)
            ends = self._end_leases(conn, list(self._held(conn, bot_id)), spend=False)
            conn.execute(
                "UPDATE bots SET status = 'deregistered', last_seen = now() WHERE bot_id = %s",
                (bot_id,),
            )
            return len(ends.requeue)

        return await self._run(run)

    # -- jobs ----------------------------------------------------------------------------

    @staticmethod
    def _job(conn: Conn, job_id: str, *, lock: bool = False) -> models.JobView:
        row = conn.execute(
            f"SELECT {records.JOB_COLUMNS} FROM jobs WHERE job_id = %s"
            f"{' FOR UPDATE' if lock else ''}",
            (job_id,),
        ).fetchone()
        if row is None:
            raise unknown_job(job_id)
        return records.job_view(row, rfc3339_of)

    def _submit(
        self, conn: Conn, jobs: Sequence[models.JobSubmit]
    ) -> list[tuple[models.JobView, bool]]:
        """Insert in one statement; a known idempotency_key returns that job, not created."""
        if not jobs:
            return []
        ids = [records.new_id() for _ in jobs]
        created = {
            r[0]
            for r in conn.execute(
                "INSERT INTO jobs (job_id, kind, payload, status, priority, max_attempts,"
                " timeout_s, idempotency_key, run_at, not_before, retry_base_s, retry_max_s)"
                " SELECT u.job_id, u.kind, u.payload, 'queued', u.priority, u.max_attempts,"
                f" u.timeout_s, u.key, {_RUN_AT}, coalesce({_RUN_AT}, '-infinity'),"
                " u.retry_base_s, u.retry_max_s"
                " FROM ROWS FROM (json_to_recordset(%s::json) AS (job_id text,"
                " kind text, payload text, priority int, max_attempts int, timeout_s float8,"
                " key text, run_at float8, delay_s float8, retry_base_s float8,"
                " retry_max_s float8)) WITH ORDINALITY"
                " AS u(job_id, kind, payload, priority, max_attempts, timeout_s, key, run_at,"
                " delay_s, retry_base_s, retry_max_s, ord)"
                " ORDER BY u.ord ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL"
                " DO NOTHING RETURNING job_id",
                (
                    _json_param(
                        [
                            {
                                "job_id": job_id,
                                "kind": j.kind,
                                "payload": json.dumps(j.payload),
                                "priority": j.priority,
                                "max_attempts": j.max_attempts,
                                "timeout_s": j.timeout_s,
                                "key": j.idempotency_key,
                                "run_at": None if j.run_at is None else parse_rfc3339(j.run_at),
                                "delay_s": j.delay_s,
                                "retry_base_s": j.retry_base_s,
                                "retry_max_s": j.retry_max_s,
                            }
                            for job_id, j in zip(ids, jobs, strict=True)
                        ]
                    ),
                ),
            )
        }
        keys = [j.idempotency_key for j, i in zip(jobs, ids, strict=True) if i not in created]
        by_id: dict[str, models.JobView] = {}
        by_key: dict[str, models.JobView] = {}
        for row in conn.execute(
            f"SELECT {records.JOB_COLUMNS} FROM jobs WHERE job_id = ANY({_id_array('%s')})"
            f" OR idempotency_key = ANY({_texts('%s')})",
            (_ids(created), _json_param(keys)),
        ):
            view = records.job_view(row, rfc3339_of)
            by_id[view.job_id] = view
            if view.idempotency_key is not None:
                by_key[view.idempotency_key] = view
        if created:
            self._notify(conn)
        out: list[tuple[models.JobView, bool]] = []
        for job, job_id in zip(jobs, ids, strict=True):
            if job_id in created:
                out.append((by_id[job_id], True))
            else:
                assert job.idempotency_key is not None
                out.append((by_key[job.idempotency_key], False))
        return out

    async def submit(self, job: models.JobSubmit) -> tuple[models.JobView, bool]:
        """See :meth:`Store.submit`."""
        return (await self._run(lambda conn: self._submit(conn, [job])))[0]

    async def submit_many(
        self, jobs: Sequence[models.JobSubmit]
    ) -> list[tuple[models.JobView, bool]]:
        """See :meth:`Store.submit_many`."""
        return await self._run(lambda conn: self._submit(conn, jobs))

    async def get_job(self, job_id: str) -> models.JobView:
        """See :meth:`Store.get_job`."""
        return await self._run(lambda conn: self._job(conn, job_id))

    async def list_jobs(
        self, *, status: str | None, limit: int, kind: str | None = None
    ) -> list[models.JobView]:
        """See :meth:`Store.list_jobs`."""
        jobs, _ = await self.page_jobs(status=status, limit=limit, kind=kind, before=None)
        return jobs

    async def page_jobs(
        self, *, status: str | None, limit: int, kind: str | None, before: int | None
    ) -> tuple[list[models.JobView], int | None]:
        """See :meth:`Store.page_jobs`."""

        def run(conn: Conn) -> tuple[list[models.JobView], int | None]:
            where, args = records.job_filter(status=status, kind=kind, mark="%s", before=before)
            cur = conn.execute(
                f"SELECT seq, {records.JOB_COLUMNS} FROM jobs{where} ORDER BY seq DESC LIMIT %s",
                (*args, limit + 1),
            )
            return records.job_page(cur.fetchall(), limit, rfc3339_of)

        return await self._run(run)

    async def final_jobs(self, job_ids: Sequence[str]) -> set[str]:
        """See :meth:`Store.final_jobs`."""

        def run(conn: Conn) -> set[str]:
            going = conn.execute(
                f"SELECT job_id FROM jobs WHERE job_id = ANY({_id_array('%s')})"
                " AND status IN ('queued', 'leased')",
                (_ids(job_ids),),
            )
            return set(job_ids) - {job_id for (job_id,) in going}

        return await self._run(run)

    async def retry_job(self, job_id: str) -> models.JobView:
        """See :meth:`Store.retry_job`."""

        def run(conn: Conn) -> models.JobView:
            job = self._job(conn, job_id, lock=True)
            if job.status not in records.RETRYABLE_STATUSES:
                raise job_not_retryable(job_id, job.status)
            retry_rows(conn, job_id=job_id)
            self._notify(conn)
            return self._job(conn, job_id)

        return await self._run(run)

    async def retry_jobs(self, *, status: str, kind: str | None, limit: int) -> list[str]:
        """See :meth:`Store.retry_jobs`."""

        def run(conn: Conn) -> list[str]:
            ids = retry_rows(conn, status=status, kind=kind, limit=limit)
            if ids:
                self._notify(conn)
            return ids

        return await self._run(run)

    async def cancel_job(self, job_id: str) -> models.JobView:
        """See :meth:`Store.cancel_job`."""

        def run(conn: Conn) -> models.JobView:
            job = self._job(conn, job_id, lock=True)
            if job.status in ("queued", "leased"):
                conn.execute(
                    "UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE job_id = %s",
                    (job_id,),
                )
                return self._job(conn, job_id)
            if job.status == "cancelled":
                return job
            raise job_finished(job_id, job.status)

        return await self._run(run)

    async def stats(self) -> models.Stats:
        """See :meth:`Store.stats`."""

        def run(conn: Conn) -> models.Stats:
            jobs_sql, bots_sql = records.STATS_SQL
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND not_before > now()"
            ).fetchone()
            scheduled = int(row[0]) if row else 0
            return records.stats_of(conn.execute(jobs_sql), conn.execute(bots_sql), scheduled)

        return await self._run(run)

    async def oldest_queued(self) -> dict[str, float]:
        """See :meth:`Store.oldest_queued`."""

        def run(conn: Conn) -> dict[str, float]:
            rows = conn.execute(
                "SELECT kind, extract(epoch FROM now() - min(greatest(created_at, not_before)))"
                "::float8 FROM jobs WHERE status = 'queued' AND not_before <= now()"
                " GROUP BY kind"
            ).fetchall()
            return {kind: max(0.0, float(age)) for kind, age in rows}

        return await self._run(run)

    async def queue_depth(self) -> dict[str, int]:
        """See :meth:`Store.queue_depth`."""

        def run(conn: Conn) -> dict[str, int]:
            rows = conn.execute(
                "SELECT kind, count(*) FROM jobs WHERE status = 'queued' AND not_before <= now()"
                " GROUP BY kind"
            ).fetchall()
            return {kind: int(n) for kind, n in rows}

        return await self._run(run)

    # -- work ----------------------------------------------------------------------------

    def _apply_acks(self, conn: Conn, acks: Sequence[models.Ack]) -> list[models.AckResult]:
        """Read the batch's leases with their jobs (the jobs locked, in order), decide, and
        write: one statement, one row per job (and the history of leases that need it)."""
        ids = list(dict.fromkeys(a.lease_id for a in acks))
        jobs = {
            r[0]: r
            for r in conn.execute(
                "SELECT job_id, lease_id, lease_state, lease_outcome, status, attempts,"
                " max_attempts, error, retry_base_s, retry_max_s FROM jobs"
                f" WHERE job_id = ANY({_id_array('%s')}) ORDER BY seq FOR UPDATE",
                (_ids(sorted({_job_of(lease) for lease in ids})),),
            ).fetchall()
        }
        older = [
            lease for lease in ids if _job_of(lease) in jobs and jobs[_job_of(lease)][1] != lease
        ]
        retired = {
            r[0]: r
            for r in (
                conn.execute(
                    "SELECT lease_id, state, outcome FROM leases"
                    f" WHERE lease_id = ANY({_id_array('%s')})",
                    (_ids(older),),
                )
                if older
                else []
            )
        }
        rows: dict[str, AckRow] = {}
        for lease in ids:
            job = jobs.get(_job_of(lease))
            if job is None:
                continue
            job_id, job_lease, state, outcome, status, attempts, max_attempts, error = job[:8]
            if job_lease != lease:
                if lease not in retired:
                    continue  # no such lease
                _, state, outcome = retired[lease]
            rows[lease] = AckRow(
                lease,
                job_id,
                state,
                outcome,
                status,
                job_lease,
                attempts,
                max_attempts,
                error,
                *job[8:],
            )
        latest = {lease: row.job_lease == lease for lease, row in rows.items()}
        results, done, changes = decide_acks(acks, rows)
        if not done:
            return results
        # What each job's row gets: its change (if any) and its latest lease's outcome.
        outcome_of: dict[str, str] = {}
        history: list[tuple[str, str]] = []
        for lease, outcome in done:
            if latest[lease]:
                outcome_of[rows[lease].job_id] = outcome
            else:
                history.append((lease, outcome))  # a retired lease (of a cancelled job)
        ok = [
            c
            for c in changes.values()
            if c.status == "succeeded" and outcome_of.get(c.job_id) == "succeeded"
        ]
        fast = {c.job_id for c in ok}
        general = [c for c in changes.values() if c.job_id not in fast]
        bare = [j for j in outcome_of if j not in fast and j not in changes]
        changed = [
            {
                "job_id": c.job_id,
                "status": c.status,
                "attempts": c.attempts,
                "result": c.result,
                "error": c.error,
                "retry_in": c.retry_in_s,
                "final": c.final,
                "lease_outcome": outcome_of.get(c.job_id),
            }
            for c in general
        ]
        # A job whose lease outcome changes and nothing else (an ack of a cancelled job).
        changed += [{"job_id": j, "lease_outcome": outcome_of[j]} for j in bare]
        conn.execute(
            _APPLY_ACKS,
            {
                "history": _json_param(
                    [{"lease_id": lease, "outcome": outcome} for lease, outcome in history]
                ),
                # The ids were read from the rows (no filter, so the two lists stay in
                # step); the results as a JSON list of their texts, whatever they hold
                # (a bot's JSON may carry NaN, which PostgreSQL's JSON parser refuses).
                "ok_ids": ",".join(c.job_id for c in ok),
                "ok_results": _json_param([c.result for c in ok]),
                "changes": _json_param(changed),
            },
        )
        if any(c.status == "queued" and not c.retry_in_s for c in changes.values()):
            self._notify(conn)
        return results

    async def claim(
        self, req: models.ClaimRequest, *, lease_ttl_s: float, owner: str | None = None
    ) -> models.ClaimResponse:
        """See :meth:`Store.claim`: the acks in one statement, the claim in another."""

        def run(conn: Conn) -> models.ClaimResponse:
            self._touch(conn, req.bot_id, req.session_id, None)
            if owner is not None and req.acks:
                self._check_owner(conn, req.acks, owner)
            acks = self._apply_acks(conn, req.acks) if req.acks else []
            if req.max_jobs <= 0 or (req.kinds is not None and not req.kinds):
                return models.ClaimResponse(jobs=[], acks=acks)
            params: dict[str, Any] = {
                "n": req.max_jobs,
                "bot": req.bot_id,
                "session": req.session_id,
                "ttl": lease_ttl_s,
            }
            kinds = ""
            if req.kinds is not None:
                kinds = f"AND kind = ANY({_texts('%(kinds)s')})"
                params["kinds"] = _json_param(list(req.kinds))
            rows = conn.execute(_CLAIM.format(kinds=kinds), params).fetchall()
            # One deadline for the whole batch (one now() a transaction): formatted once.
            expires_at = rfc3339_of(rows[0][6]) if rows else ""
            jobs = [
                records.claimed_job(job_id, lease_id, kind, payload, attempt, timeout_s, expires_at)
                for job_id, lease_id, kind, payload, attempt, timeout_s, _ in rows
            ]
            return models.ClaimResponse(jobs=jobs, acks=acks)

        return await self._run(run)

    async def release(self, lease_ids: Sequence[str]) -> int:
        """See :meth:`Store.release`."""
        if not lease_ids:
            return 0
        ends = await self._run(lambda conn: self._end_leases(conn, lease_ids, spend=False))
        return len(ends.requeue)

    async def ack(self, ack: models.Ack, *, owner: str | None = None) -> models.AckResult:
        """See :meth:`Store.ack`."""

        def run(conn: Conn) -> models.AckResult:
            if owner is not None:
                self._check_owner(conn, [ack], owner)
            return self._apply_acks(conn, [ack])[0]

        return await self._run(run)

    async def expire(self, *, gone_after_s: float) -> ExpiryReport:
        """See :meth:`Store.expire`. Every replica runs it; SKIP LOCKED shares the work, and
        a lease another replica is expiring (or acking) right now is left to it."""

        def run(conn: Conn) -> ExpiryReport:
            gone = conn.execute(
                "UPDATE bots SET status = 'gone' WHERE bot_id IN (SELECT bot_id FROM bots"
                " WHERE status = 'active' AND last_seen <= now() - %s * interval '1 second'"
                " FOR UPDATE SKIP LOCKED)",
                (gone_after_s,),
            ).rowcount
            rows = [
                EndRow(*r)
                for r in conn.execute(
                    f"{_ACTIVE} AND lease_expires <= now()"
                    " ORDER BY lease_expires LIMIT %s FOR UPDATE SKIP LOCKED",
                    (EXPIRE_BATCH,),
                )
            ]
            report = self._write_ends(conn, rows, spend=True).report()
            return ExpiryReport(report.expired, report.requeued, report.dead, max(0, gone))

        return await self._run(run)

    async def next_deadline(self) -> float | None:
        """See :meth:`Store.next_deadline`: the database's deadline, as a Trio time."""
        seconds = await self.deadline_in()
        # Counted from after the query, so the deadline is never early: a waiter woken before
        # a retry is due would find nothing, and the next pass would no longer see it coming.
        return None if seconds is None else trio.current_time() + max(0.0, seconds) + 0.001

    async def deadline_in(self) -> float | None:
        """Seconds from the database's now to the earliest lease expiry or future retry
        time (negative when it passed), or None when there is none."""

        def run(conn: Conn) -> float | None:
            row = conn.execute(
                "SELECT extract(epoch FROM least("
                " (SELECT min(lease_expires) FROM jobs WHERE lease_state = 'active'),"
                " (SELECT min(not_before) FROM jobs WHERE status = 'queued'"
                "  AND not_before > now())) - now())::float8"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._run(run)

    async def prune(self, *, older_than_s: float) -> int:
        """See :meth:`Store.prune`: one statement deletes a batch of jobs and their leases."""

        def run(conn: Conn) -> int:
            cur = conn.execute(
                "WITH doomed AS MATERIALIZED (SELECT seq, job_id FROM jobs"
                " WHERE finished_at <= now() - %s * interval '1 second'"
                f" AND status IN ({records.FINAL_STATUSES_SQL}) ORDER BY finished_at LIMIT %s"
                " FOR UPDATE SKIP LOCKED),"
                " gone AS (DELETE FROM leases USING doomed WHERE leases.job_id = doomed.job_id)"
                " DELETE FROM jobs USING doomed WHERE jobs.seq = doomed.seq",
                (older_than_s, PRUNE_BATCH),
            )
            return max(0, cur.rowcount)

        return await self._run(run)

    # -- for tests and audits ------------------------------------------------------------

    async def check_invariant(self) -> list[str]:
        """Problems with the store's invariant (empty when it holds)."""
        return await self._run(
            lambda conn: records.invariant_problems(
                lambda sql: conn.execute(sql).fetchall(), checks=INVARIANT
            )
        )

    async def wall_clock(self) -> float:
        """The database's clock, in seconds since the epoch (tests compare deadlines)."""
        row = await self._run(lambda conn: conn.execute("SELECT now()").fetchone())
        return row[0].timestamp() if row else time.time()
