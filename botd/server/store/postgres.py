"""The shared job store: :class:`PostgresStore`, for several server replicas on one database.

How it works under Trio:

- psycopg 3 (its async API is asyncio only) through ``trio.to_thread.run_sync``, behind a
  ``CapacityLimiter`` the size of a psycopg_pool ``ConnectionPool``: a request never waits
  for a thread while holding none of the pool, and a cancelled request waits for its
  transaction to end, so no request leaves half a transaction behind;
- every method is one transaction; a deadlock or serialization failure is retried, and so
  is a pooled connection that broke while idle (the database restarted) before anything ran;
- every lease deadline, expiry and retry time comes from the database's clock (``now()``):
  replicas share rows, and their monotonic clocks mean nothing to each other;
- row locks are always taken in one order (bot, then leases, then jobs); claims and expiry
  take rows with ``FOR UPDATE SKIP LOCKED``, so replicas never wait on each other for work
  and no lease is expired twice;
- a transaction that makes jobs claimable (a submit, a release, a requeue, an expiry) sends
  one ``NOTIFY botd_jobs``; :meth:`PostgresStore.watch` keeps one ``LISTEN`` connection and
  wakes this replica's waiting claims when another replica sends one. If that connection
  drops it reconnects and wakes every waiter; every 2 s it also checks for due jobs, which
  bounds the wait for a notification that was missed.

Errors: the database down, restarting or slower than the statement timeout raises
:class:`StoreUnavailable` within about that timeout (503 ``store_unavailable``); a schema
newer than this botd raises :class:`StoreIncompatible`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import psycopg
import psycopg_pool
import trio
from loguru import logger
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ConnStatus

from ...models import (
    JOB_STATUSES,
    Ack,
    AckResult,
    BotInfo,
    ClaimedJob,
    ClaimRequest,
    ClaimResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSubmit,
    JobView,
    RegisterRequest,
    Stats,
)
from ...timestamps import rfc3339_of
from .errors import (
    StoreIncompatible,
    StoreUnavailable,
    job_finished,
    session_problem,
    superseded,
    unknown_bot,
    unknown_job,
)
from .interface import PRUNE_BATCH, SCHEMA_VERSION, ExpiryReport
from .rows import (
    BOT_COLUMNS,
    FINAL_STATUSES_SQL,
    JOB_COLUMNS,
    STATS_SQL,
    bot_infos,
    invariant_problems,
    job_view,
    new_id,
    stats_of,
)
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

T = TypeVar("T")
Conn = psycopg.Connection[Any]

DEFAULT_POOL_SIZE = 10
DEFAULT_STATEMENT_TIMEOUT_S = 5.0
NOTIFY_CHANNEL = "botd_jobs"
#: The longest a waiting claim can miss a notification: the listener checks this often.
LISTEN_FALLBACK_S = 2.0
#: How many leases one expiry pass takes (the next pass, at most a second later, goes on).
EXPIRE_BATCH = 1000
#: pg_advisory_xact_lock key that serializes migrations ("botd" in ASCII).
_MIGRATION_LOCK = 0x626F7464
_ATTEMPTS = 3
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock

_SCHEMA_V1 = """
CREATE TABLE botd_meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO botd_meta (key, value) VALUES ('health_probe', now()::text);
-- Ids, kinds and states compare byte by byte (COLLATE "C"): they are keys, not prose, and
-- a database created with a linguistic locale (en_US.UTF-8) would otherwise pay a locale
-- comparison for every step through their indexes.
CREATE TABLE bots (
    bot_id text COLLATE "C" PRIMARY KEY,
    session_id text COLLATE "C" NOT NULL,
    status text COLLATE "C" NOT NULL,
    state text,
    capacity integer NOT NULL,
    hostname text NOT NULL,
    version text NOT NULL,
    pid integer NOT NULL,
    labels text NOT NULL,
    last_seen timestamptz NOT NULL,
    registered_at timestamptz NOT NULL
);
CREATE INDEX bots_active ON bots (last_seen) WHERE status = 'active';
CREATE TABLE jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id text COLLATE "C" NOT NULL UNIQUE,
    kind text COLLATE "C" NOT NULL,
    payload text NOT NULL,
    status text COLLATE "C" NOT NULL,
    priority integer NOT NULL,
    max_attempts integer NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    timeout_s double precision,
    idempotency_key text COLLATE "C",
    result text,
    error text,
    bot_id text COLLATE "C",
    -- The job's latest lease lives on its row: what a claim, a heartbeat, an ack and an
    -- expiry change is this row alone (one row, one lock, per job). lease_state is
    -- 'active', 'done' (acked) or 'expired' (ended without an ack). A lease id starts with
    -- its job's id, so an ack finds its job by the primary key.
    lease_id text COLLATE "C",
    lease_attempt integer,
    lease_state text COLLATE "C",
    lease_session text COLLATE "C",
    lease_expires timestamptz,
    lease_outcome text,
    not_before timestamptz NOT NULL DEFAULT '-infinity',
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX jobs_queue ON jobs (priority DESC, seq) WHERE status = 'queued';
CREATE INDEX jobs_queue_kind ON jobs (kind, priority DESC, seq) WHERE status = 'queued';
CREATE INDEX jobs_due ON jobs (not_before) WHERE status = 'queued';
-- Index entries cost every claim and every ack: indexes that most jobs need not be in are
-- partial. Most jobs have no idempotency key and end succeeded.
CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_status ON jobs (status, seq) WHERE status <> 'succeeded';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_held ON jobs (bot_id) WHERE lease_state = 'active';
CREATE INDEX jobs_lease_expiry ON jobs (lease_expires) WHERE lease_state = 'active';
-- The leases that are no longer their job's latest: a claim that leases a job again moves
-- the job's previous lease here, as it ended. (Most jobs are leased once: no row at all.)
CREATE TABLE leases (
    lease_id text COLLATE "C" PRIMARY KEY,
    job_id text COLLATE "C" NOT NULL,
    bot_id text COLLATE "C" NOT NULL,
    attempt integer NOT NULL,
    state text COLLATE "C" NOT NULL,
    outcome text
);
CREATE INDEX leases_job ON leases (job_id);
-- Every lease with its state and outcome, for audits (and the chaos test's verdict).
CREATE VIEW lease_history AS
SELECT lease_id, job_id, bot_id, lease_attempt AS attempt, lease_state AS state,
       lease_outcome AS outcome
FROM jobs WHERE lease_id IS NOT NULL
UNION ALL
SELECT lease_id, job_id, bot_id, attempt, state, outcome FROM leases;
"""

#: Schema migrations: (version, SQL). Each one runs once, in order, under the lock.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _SCHEMA_V1),)
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


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

#: The invariant on this schema (the lease's state is on the job's row).
_INVARIANT = (
    (
        "SELECT job_id, status FROM jobs WHERE status NOT IN ("
        + ", ".join(f"'{s}'" for s in JOB_STATUSES)
        + ")",
        "job {0} has unknown status {1!r}",
    ),
    (
        "SELECT job_id FROM jobs WHERE status = 'leased' AND lease_state IS DISTINCT FROM 'active'",
        "leased job {0} has no active lease",
    ),
    (
        "SELECT job_id FROM jobs WHERE status = 'succeeded' AND (result IS NULL"
        " OR lease_outcome IS DISTINCT FROM 'succeeded' OR EXISTS (SELECT 1 FROM leases l"
        " WHERE l.job_id = jobs.job_id AND l.outcome = 'succeeded'))",
        "succeeded job {0} does not have exactly one recorded result",
    ),
    (
        "SELECT lease_id, job_id FROM jobs WHERE lease_state = 'active'"
        " AND status NOT IN ('leased', 'cancelled')",
        "active lease {0} on job {1} that is not leased",
    ),
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


def redact_dsn(dsn: str) -> str:
    """The DSN as ``postgresql://user@host:port/dbname``: never a password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable DSN)"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


def _retryable_connection_error(exc: psycopg.Error) -> bool:
    """A connection that failed before the server ran anything: the database restarted."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class _ClockedConnection:
    """A connection whose statements read a test's clock instead of ``now()``."""

    def __init__(self, conn: Conn, clock_sql: str) -> None:
        self._conn = conn
        self._clock_sql = clock_sql

    def execute(self, query: str, params: Any = None) -> psycopg.Cursor[Any]:
        return self._conn.execute(query.replace("now()", self._clock_sql), params)


class PostgresStore:
    """The :class:`~botd.server.store.interface.Store` that several server replicas share.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        pool_size: connections this replica keeps (and requests it runs at once).
        statement_timeout_s: the longest a statement, or the wait for a pooled connection,
            may take before the request answers 503.
        clock_sql: for tests only: an SQL expression that replaces ``now()`` in every
            statement (a clock the test moves, kept in the database, so that a state
            machine can let hours pass in no time). Production leaves it None.

    Resource handling: the pool opens in :meth:`open` and closes in :meth:`aclose`; the
    LISTEN connection lives inside :meth:`watch`. Nothing is kept only in this process:
    any replica can answer any request.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S,
        clock_sql: str | None = None,
    ) -> None:
        if pool_size < 1 or not statement_timeout_s > 0:
            raise ValueError("pool_size must be >= 1 and statement_timeout_s > 0")
        self.dsn = dsn
        self.where = redact_dsn(dsn)
        self.replica = new_id()
        self.statement_timeout_s = statement_timeout_s
        timeout_ms = int(statement_timeout_s * 1000)
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": max(1, int(statement_timeout_s)),
            "application_name": "botd-server",
            "options": f"-c statement_timeout={timeout_ms}"
            f" -c lock_timeout={timeout_ms}"
            f" -c idle_in_transaction_session_timeout={4 * timeout_ms}",
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            # A cut network (no RST, no FIN) fails a statement in flight after this long,
            # where the server-side statement_timeout cannot act.
            "tcp_user_timeout": int((statement_timeout_s + 5) * 1000),
        }
        self._pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=pool_size,
            max_size=pool_size,
            kwargs=self._connect_kwargs,
            timeout=statement_timeout_s,
            open=False,
            name="botd",
        )
        self._limiter = trio.CapacityLimiter(pool_size)
        # The threads' own limiter, as large: it never makes a call wait (_limiter does).
        self._threads = trio.CapacityLimiter(pool_size)
        self._opening = trio.Lock()
        self._opened = False
        self._closed = False
        self._schema_ready = False
        self._clock_sql = clock_sql

    # -- transactions ------------------------------------------------------------------

    def _fail(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"database {self.where}: {str(exc).strip() or type(exc).__name__}")

    def _migrate(self, wait: float) -> None:
        """Apply the missing migrations under an advisory lock (replicas that start together
        take turns); refuse a schema newer than this botd."""
        with self._pool.connection(timeout=wait) as conn, conn.transaction():
            # A migration may take longer than a request may: it runs once, at start.
            conn.execute("SET LOCAL statement_timeout = '15min'")
            conn.execute("SET LOCAL lock_timeout = '15min'")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS botd_schema (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM botd_schema").fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreIncompatible(
                    f"database {self.where} has schema version {version}, newer than this"
                    f" botd's {SCHEMA_VERSION}: run the newer botd, or point --db at another"
                    " database"
                )
            for target, sql in MIGRATIONS:
                if target > version:
                    conn.execute(sql)
                    conn.execute("INSERT INTO botd_schema (version) VALUES (%s)", (target,))
                    logger.bind(event="schema_migrated", version=target).info(
                        "database schema migrated"
                    )
        self._schema_ready = True

    def _tx(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one transaction on a pooled connection (in a worker thread)."""
        if self._closed:
            raise StoreUnavailable(f"database {self.where}: the store is closed")
        # The attempts share the timeout: a request answers within it. (All connections are
        # only ever in use at once when they are broken: the limiter admits pool_size calls.)
        wait = self.statement_timeout_s / _ATTEMPTS
        for attempt in range(_ATTEMPTS):
            ran = False
            try:
                if not self._schema_ready:
                    self._migrate(wait)
                with self._pool.connection(timeout=wait) as conn:
                    with conn.transaction():
                        out = fn(self._clocked(conn))
                        ran = True
                    return out
            except psycopg_pool.PoolTimeout as exc:
                raise StoreUnavailable(
                    f"database {self.where}: no connection within"
                    f" {self.statement_timeout_s:g} s (is PostgreSQL up?)"
                ) from exc
            except psycopg.Error as exc:
                again = exc.sqlstate in _RETRY_SQLSTATES or (
                    not ran
                    and isinstance(exc, psycopg.OperationalError)
                    and _retryable_connection_error(exc)
                )
                if again and attempt < _ATTEMPTS - 1:
                    continue
                raise self._fail(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _clocked(self, conn: Conn) -> Conn:
        if self._clock_sql is None:
            return conn
        return cast(Conn, _ClockedConnection(conn, self._clock_sql))

    async def _run(self, fn: Callable[[Conn], T]) -> T:
        if not self._opened:
            await self._open_pool()
        # A request waits for one of the pool's slots no longer than the statement timeout:
        # when the database is slow, requests answer 503 rather than queue without end.
        with trio.move_on_after(self.statement_timeout_s):
            async with self._limiter:
                return await trio.to_thread.run_sync(self._tx, fn, limiter=self._threads)
        raise StoreUnavailable(
            f"database {self.where}: all {self._pool.max_size} connections stayed busy for"
            f" {self.statement_timeout_s:g} s (is PostgreSQL slow? see --db-pool-size)"
        )

    async def _open_pool(self) -> None:
        """Start the pool (once); it connects in the background, so this does not wait."""
        async with self._opening:
            if not self._opened and not self._closed:
                await trio.to_thread.run_sync(lambda: self._pool.open(wait=False))
                self._opened = True

    def _notify(self, conn: Conn) -> None:
        """Tell the other replicas that jobs may be claimable (once per transaction)."""
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, self.replica))

    # -- lifecycle and health ------------------------------------------------------------

    async def open(self, *, lease_ttl_s: float) -> None:
        """Open the pool and migrate the schema. Raises StoreUnavailable when the database
        cannot be reached (the store keeps trying on later calls) and StoreIncompatible
        when its schema is newer than this botd."""
        await self._run(lambda conn: None)
        logger.bind(event="store_opened", db=self.where).info("job store opened")

    async def aclose(self) -> None:
        """Close the pool (waits for its connections to close)."""
        await trio.to_thread.run_sync(self.close_sync)

    def close_sync(self) -> None:
        """Close the pool from synchronous code (a test's teardown); idempotent."""
        self._closed = True
        if self._opened:
            self._pool.close(timeout=5.0)

    async def health(self) -> None:
        """A real read and a real write; raises StoreUnavailable if either fails."""

        def run(conn: Conn) -> None:
            conn.execute("SELECT count(*) FROM botd_schema").fetchone()
            # A real write that never waits: when another replica's probe holds the row, its
            # write just proved the same thing.
            conn.execute(
                "UPDATE botd_meta SET value = now()::text WHERE key = (SELECT key FROM botd_meta"
                " WHERE key = 'health_probe' FOR UPDATE SKIP LOCKED)"
            )

        await self._run(run)

    # -- the LISTEN connection -----------------------------------------------------------

    def _listen_connect(self) -> Conn:
        conn = psycopg.connect(self.dsn, autocommit=True, **self._connect_kwargs)
        try:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _any_due(conn: Conn) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued' AND not_before <= now())"
        ).fetchone()
        return bool(row and row[0])

    async def _listen(self, conn: Conn, wake: Callable[[], None]) -> None:
        """Wake on every other replica's notification until the connection fails."""
        pgconn = conn.pgconn
        while True:
            with trio.move_on_after(LISTEN_FALLBACK_S) as waited:
                await trio.lowlevel.wait_readable(pgconn.socket)
            if waited.cancelled_caught:
                if await trio.to_thread.run_sync(self._any_due, conn):
                    wake()
                continue
            pgconn.consume_input()
            if pgconn.status != ConnStatus.OK:
                raise psycopg.OperationalError("the LISTEN connection was closed")
            woken = False
            while (note := pgconn.notifies()) is not None:
                woken = woken or note.extra.decode(errors="replace") != self.replica
            if woken:
                wake()

    async def watch(
        self,
        wake: Callable[[], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep one LISTEN connection and call ``wake`` when another replica makes a job
        claimable; on a lost connection reconnect (with backoff) and wake every waiter."""
        task_status.started()
        delay = 0.25
        failing = False  # log the first failure of an outage, not every retry
        while True:
            try:
                conn = await trio.to_thread.run_sync(self._listen_connect)
            except psycopg.Error as exc:
                if not failing:
                    failing = True
                    logger.bind(event="listen_unavailable", db=self.where, error=str(exc)).warning(
                        "cannot LISTEN for new jobs; retrying until the database answers"
                    )
                await trio.sleep(delay)
                delay = min(2 * delay, LISTEN_FALLBACK_S)
                continue
            if failing:
                failing = False
                logger.bind(event="listen_restored", db=self.where).info("listening again")
            delay = 0.25
            wake()  # anything sent while we were not listening
            try:
                await self._listen(conn, wake)
            except psycopg.Error as exc:
                logger.bind(event="listen_lost", db=self.where, error=str(exc)).warning(
                    "the LISTEN connection was lost; reconnecting"
                )
            finally:
                conn.close()
            wake()

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
        ).fetchall()
        return {lease_id: status for lease_id, status in rows}

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

    async def register(self, req: RegisterRequest, *, lease_ttl_s: float) -> tuple[str, int]:
        """See :meth:`Store.register`."""

        def run(conn: Conn) -> tuple[str, int]:
            session_id = new_id()
            conn.execute(
                "INSERT INTO bots (bot_id, session_id, status, state, capacity, hostname,"
                " version, pid, labels, last_seen, registered_at)"
                " VALUES (%s, %s, 'active', NULL, %s, %s, %s, %s, %s, now(), now())"
                " ON CONFLICT (bot_id) DO UPDATE SET session_id = excluded.session_id,"
                " status = 'active', state = NULL, capacity = excluded.capacity,"
                " hostname = excluded.hostname, version = excluded.version, pid = excluded.pid,"
                " labels = excluded.labels, last_seen = excluded.last_seen,"
                " registered_at = excluded.registered_at",
                (
                    req.bot_id,
                    session_id,
                    req.capacity,
                    req.hostname,
                    req.version,
                    req.pid,
                    json.dumps(req.labels),
                ),
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

    def _bots(self, conn: Conn, bot_id: str | None) -> list[BotInfo]:
        where = "WHERE bot_id = %s" if bot_id is not None else ""
        args: tuple[str, ...] = (bot_id,) if bot_id is not None else ()
        rows = conn.execute(
            f"SELECT {BOT_COLUMNS} FROM bots {where} ORDER BY bot_id", args
        ).fetchall()
        lease_rows = conn.execute(
            "SELECT bot_id, lease_id FROM jobs WHERE lease_state = 'active'"
            f"{' AND bot_id = %s' if bot_id is not None else ''} ORDER BY seq",
            args,
        ).fetchall()
        return bot_infos(rows, lease_rows, rfc3339_of)

    async def get_bot(self, bot_id: str) -> BotInfo:
        """See :meth:`Store.get_bot`."""
        bots = await self._run(lambda conn: self._bots(conn, bot_id))
        if not bots:
            raise unknown_bot(bot_id)
        return bots[0]

    async def list_bots(self) -> list[BotInfo]:
        """See :meth:`Store.list_bots`."""
        return await self._run(lambda conn: self._bots(conn, None))

    async def heartbeat(
        self, bot_id: str, req: HeartbeatRequest, *, lease_ttl_s: float
    ) -> tuple[HeartbeatResponse, int]:
        """See :meth:`Store.heartbeat` (and SqliteBackend.heartbeat for the rules)."""

        def run(conn: Conn) -> tuple[HeartbeatResponse, int]:
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
            answer = HeartbeatResponse(
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
    def _job(conn: Conn, job_id: str, *, lock: bool = False) -> JobView:
        row = conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = %s{' FOR UPDATE' if lock else ''}",
            (job_id,),
        ).fetchone()
        if row is None:
            raise unknown_job(job_id)
        return job_view(row, rfc3339_of)

    def _submit(self, conn: Conn, jobs: Sequence[JobSubmit]) -> list[tuple[JobView, bool]]:
        """Insert in one statement; a known idempotency_key returns that job, not created."""
        if not jobs:
            return []
        ids = [new_id() for _ in jobs]
        created = {
            r[0]
            for r in conn.execute(
                "INSERT INTO jobs (job_id, kind, payload, status, priority, max_attempts,"
                " timeout_s, idempotency_key)"
                " SELECT u.job_id, u.kind, u.payload, 'queued', u.priority, u.max_attempts,"
                " u.timeout_s, u.key FROM ROWS FROM (json_to_recordset(%s::json) AS (job_id text,"
                " kind text, payload text, priority int, max_attempts int, timeout_s float8,"
                " key text)) WITH ORDINALITY"
                " AS u(job_id, kind, payload, priority, max_attempts, timeout_s, key, ord)"
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
                            }
                            for job_id, j in zip(ids, jobs, strict=True)
                        ]
                    ),
                ),
            )
        }
        keys = [j.idempotency_key for j, i in zip(jobs, ids, strict=True) if i not in created]
        by_id: dict[str, JobView] = {}
        by_key: dict[str, JobView] = {}
        for row in conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ANY({_id_array('%s')})"
            f" OR idempotency_key = ANY({_texts('%s')})",
            (_ids(created), _json_param(keys)),
        ):
            view = job_view(row, rfc3339_of)
            by_id[view.job_id] = view
            if view.idempotency_key is not None:
                by_key[view.idempotency_key] = view
        if created:
            self._notify(conn)
        out: list[tuple[JobView, bool]] = []
        for job, job_id in zip(jobs, ids, strict=True):
            if job_id in created:
                out.append((by_id[job_id], True))
            else:
                assert job.idempotency_key is not None
                out.append((by_key[job.idempotency_key], False))
        return out

    async def submit(self, job: JobSubmit) -> tuple[JobView, bool]:
        """See :meth:`Store.submit`."""
        return (await self._run(lambda conn: self._submit(conn, [job])))[0]

    async def submit_many(self, jobs: Sequence[JobSubmit]) -> list[tuple[JobView, bool]]:
        """See :meth:`Store.submit_many`."""
        return await self._run(lambda conn: self._submit(conn, jobs))

    async def get_job(self, job_id: str) -> JobView:
        """See :meth:`Store.get_job`."""
        return await self._run(lambda conn: self._job(conn, job_id))

    async def list_jobs(self, *, status: str | None, limit: int) -> list[JobView]:
        """See :meth:`Store.list_jobs`."""

        def run(conn: Conn) -> list[JobView]:
            if status is None:
                cur = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT %s", (limit,)
                )
            else:
                # The status as a literal (one of JOB_STATUSES), so that the plan of a prepared
                # statement can use the partial index jobs_status.
                if status not in JOB_STATUSES:
                    raise ValueError(f"unknown job status {status!r}")
                cur = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = '{status}'"
                    " ORDER BY seq DESC LIMIT %s",
                    (limit,),
                )
            return [job_view(row, rfc3339_of) for row in cur.fetchall()]

        return await self._run(run)

    async def cancel_job(self, job_id: str) -> JobView:
        """See :meth:`Store.cancel_job`."""

        def run(conn: Conn) -> JobView:
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

    async def stats(self) -> Stats:
        """See :meth:`Store.stats`."""

        def run(conn: Conn) -> Stats:
            jobs_sql, bots_sql = STATS_SQL
            return stats_of(conn.execute(jobs_sql), conn.execute(bots_sql))

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

    # -- work ----------------------------------------------------------------------------

    def _apply_acks(self, conn: Conn, acks: Sequence[Ack]) -> list[AckResult]:
        """Read the batch's leases with their jobs (the jobs locked, in order), decide, and
        write: one statement, one row per job (and the history of leases that need it)."""
        ids = list(dict.fromkeys(a.lease_id for a in acks))
        jobs = {
            r[0]: r
            for r in conn.execute(
                "SELECT job_id, lease_id, lease_state, lease_outcome, status, attempts,"
                " max_attempts, error FROM jobs"
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
            job_id, job_lease, state, outcome, status, attempts, max_attempts, error = job
            if job_lease != lease:
                if lease not in retired:
                    continue  # no such lease
                _, state, outcome = retired[lease]
            rows[lease] = AckRow(
                lease, job_id, state, outcome, status, job_lease, attempts, max_attempts, error
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

    async def claim(self, req: ClaimRequest, *, lease_ttl_s: float) -> ClaimResponse:
        """See :meth:`Store.claim`: the acks in one statement, the claim in another."""

        def run(conn: Conn) -> ClaimResponse:
            self._touch(conn, req.bot_id, req.session_id, None)
            acks = self._apply_acks(conn, req.acks) if req.acks else []
            if req.max_jobs <= 0 or (req.kinds is not None and not req.kinds):
                return ClaimResponse(jobs=[], acks=acks)
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
                ClaimedJob(
                    job_id=job_id,
                    lease_id=lease_id,
                    kind=kind,
                    payload=json.loads(payload),
                    attempt=attempt,
                    timeout_s=timeout_s,
                    lease_expires_at=expires_at,
                )
                for job_id, lease_id, kind, payload, attempt, timeout_s, _ in rows
            ]
            return ClaimResponse(jobs=jobs, acks=acks)

        return await self._run(run)

    async def release(self, lease_ids: Sequence[str]) -> int:
        """See :meth:`Store.release`."""
        if not lease_ids:
            return 0
        ends = await self._run(lambda conn: self._end_leases(conn, lease_ids, spend=False))
        return len(ends.requeue)

    async def ack(self, ack: Ack) -> AckResult:
        """See :meth:`Store.ack`."""
        return (await self._run(lambda conn: self._apply_acks(conn, [ack])))[0]

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
                f" AND status IN ({FINAL_STATUSES_SQL}) ORDER BY finished_at LIMIT %s"
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
            lambda conn: invariant_problems(
                lambda sql: conn.execute(sql).fetchall(), checks=_INVARIANT
            )
        )

    async def wall_clock(self) -> float:
        """The database's clock, in seconds since the epoch (tests compare deadlines)."""
        row = await self._run(lambda conn: conn.execute("SELECT now()").fetchone())
        return row[0].timestamp() if row else time.time()
