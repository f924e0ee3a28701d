"""The connections of the PostgreSQL store: the pool, a transaction per call, LISTEN.

:class:`PostgresDatabase` is what :class:`~.postgres.PostgresStore` runs its SQL on:

- psycopg 3 (its async API is asyncio only) through ``trio.to_thread.run_sync``, behind a
  ``CapacityLimiter`` the size of a psycopg_pool ``ConnectionPool``: a request never waits
  for a thread while holding none of the pool, and a cancelled request waits for its
  transaction to end, so no request leaves half a transaction behind;
- every call is one transaction (:meth:`PostgresDatabase._run`); a deadlock or
  serialization failure is retried, and so is a pooled connection that broke while idle
  (the database restarted) before anything ran; the schema is migrated before the first;
- :meth:`PostgresDatabase.watch` keeps one ``LISTEN`` connection and wakes this replica's
  waiting claims when another replica sends ``NOTIFY botd_jobs``. If that connection drops
  it reconnects and wakes every waiter; every 2 s it also checks for due jobs, which bounds
  the wait for a notification that was missed.

Errors: the database down, restarting or slower than the statement timeout raises
:class:`~.errors.StoreUnavailable` within about that timeout. The DSN's password is never
shown (:func:`redact_dsn`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import psycopg
import psycopg_pool
import trio
from loguru import logger
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ConnStatus

from ...events import Event
from .errors import StoreUnavailable
from .postgres_schema import migrate
from .records import new_id

__all__ = [
    "DEFAULT_POOL_SIZE",
    "DEFAULT_STATEMENT_TIMEOUT_S",
    "LISTEN_FALLBACK_S",
    "NOTIFY_CHANNEL",
    "Conn",
    "PostgresDatabase",
    "redact_dsn",
]

T = TypeVar("T")
Conn = psycopg.Connection[Any]

DEFAULT_POOL_SIZE = 10
DEFAULT_STATEMENT_TIMEOUT_S = 5.0
NOTIFY_CHANNEL = "botd_jobs"
#: The longest a waiting claim can miss a notification: the listener checks this often.
LISTEN_FALLBACK_S = 2.0
_ATTEMPTS = 3
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


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


class PostgresDatabase:
    """One replica's connections to the shared database: a pool and a LISTEN connection.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        pool_size: connections this replica keeps (and requests it runs at once).
        statement_timeout_s: the longest a statement, or the wait for a pooled connection,
            may take before the request answers 503.
        clock_sql: for tests only: an SQL expression that replaces ``now()`` in every
            statement (a clock the test moves, kept in the database, so that a state
            machine can let hours pass in no time). Production leaves it None.

    Resource handling: the pool opens in :meth:`open` (or the first call) and closes in
    :meth:`aclose`; the LISTEN connection lives inside :meth:`watch`.
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
        """Bring the schema up to date (:func:`.postgres_schema.migrate`), once."""
        with self._pool.connection(timeout=wait) as conn, conn.transaction():
            migrate(conn, self.where)
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
        logger.bind(event=Event.STORE_OPENED, db=self.where).info("job store opened")

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
                    logger.bind(
                        event=Event.LISTEN_UNAVAILABLE, db=self.where, error=str(exc)
                    ).warning("cannot LISTEN for new jobs; retrying until the database answers")
                await trio.sleep(delay)
                delay = min(2 * delay, LISTEN_FALLBACK_S)
                continue
            if failing:
                failing = False
                logger.bind(event=Event.LISTEN_RESTORED, db=self.where).info("listening again")
            delay = 0.25
            wake()  # anything sent while we were not listening
            try:
                await self._listen(conn, wake)
            except psycopg.Error as exc:
                logger.bind(event=Event.LISTEN_LOST, db=self.where, error=str(exc)).warning(
                    "the LISTEN connection was lost; reconnecting"
                )
            finally:
                conn.close()
            wake()
