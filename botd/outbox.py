"""The durable result outbox: finished jobs' acks, kept in ``BOT_STATE_DIR`` until reported.

A worker puts a job's ack here before it tells the server; the reporting loop sends what is
pending and removes what the server recorded. With a state dir, each ``put`` is committed to
SQLite (WAL, ``synchronous=FULL``) before it returns, so a result survives a crash of the
bot, and the next run loads it and reports it. Without one (``state_dir=None``) the outbox
lives in memory only: for tests and the demo.

The file is ``<state_dir>/outbox.sqlite3``; ``<state_dir>/lock`` (an ``flock``) keeps two
bots from sharing one state dir. SQLite runs in a worker thread (``trio.to_thread`` behind a
``CapacityLimiter(1)``). Every storage failure, at open or at run time, raises
:class:`~botd.errors.StateDirError` naming the path and what to do; an entry is never dropped
silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

import attrs
import trio
import trio_util

from . import codec
from .errors import StateDirError
from .models import Ack

__all__ = ["DB_NAME", "DEFAULT_MAX_PENDING", "LOCK_NAME", "Outbox", "OutboxEntry"]

DB_NAME = "outbox.sqlite3"
LOCK_NAME = "lock"
DEFAULT_MAX_PENDING = 10_000
SCHEMA_VERSION = 1

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    lease_id   TEXT NOT NULL UNIQUE,
    job_id     TEXT NOT NULL,
    ack        TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
)
"""


@attrs.frozen
class OutboxEntry:
    """One finished job's ack, waiting to reach the server.

    ``created_at`` is wall-clock time (for display and age); ``attempts`` counts how many
    times it was sent without the server recording it.
    """

    lease_id: str
    job_id: str
    ack: Ack
    created_at: float
    attempts: int = 0

    def __attrs_post_init__(self) -> None:
        if self.ack.lease_id != self.lease_id:
            raise ValueError(
                f"entry lease_id {self.lease_id!r} differs from its ack's {self.ack.lease_id!r}"
            )


def _fail(path: Path, doing: str, exc: BaseException, advice: str) -> StateDirError:
    return StateDirError(f"state dir {path}: cannot {doing} ({exc}); {advice}")


class _Store:
    """The SQLite side; every method runs in a worker thread, one at a time."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.db_path = state_dir / DB_NAME
        self.lock_fd = -1
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None

    # -- open / close

    def open(self) -> list[OutboxEntry]:
        try:
            self._open_dir()
            self._lock()
            self._open_db()
            return self._load()
        except BaseException:
            self.close()
            raise

    def _open_dir(self) -> None:
        path = self.dir
        if path.exists() and not path.is_dir():
            raise StateDirError(
                f"state dir {path} is not a directory; point BOT_STATE_DIR at a directory "
                "that botd may own (it is created if missing)"
            )
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _fail(
                path, "create it", exc, "create it by hand, or point BOT_STATE_DIR elsewhere"
            ) from None

    def _lock(self) -> None:
        lock_path = self.dir / LOCK_NAME
        try:
            self.lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _fail(
                self.dir,
                f"write {lock_path.name}",
                exc,
                "make the directory writable by this user, or point BOT_STATE_DIR elsewhere",
            ) from None
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(self.lock_fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                holder = ""
            os.close(self.lock_fd)
            self.lock_fd = -1
            raise StateDirError(
                f"state dir {self.dir} is in use by another botd"
                + (f" (pid {holder})" if holder else "")
                + "; give each bot a BOT_STATE_DIR of its own"
            ) from None
        except OSError as exc:
            raise _fail(
                self.dir, "lock it", exc, "use a local filesystem for BOT_STATE_DIR"
            ) from None
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)

    def _open_db(self) -> None:
        advice = (
            f"it is not a readable outbox database: move it aside (mv {self.db_path} "
            f"{self.db_path}.corrupt) and start again; results still in it were not reported"
        )
        try:
            conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise _fail(self.db_path, "open it", exc, advice) from None
        self.conn = conn
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"journal_mode is {mode!r}, not 'wal'")
            conn.execute("PRAGMA synchronous=FULL")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version} is not {SCHEMA_VERSION}")
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:
            raise _fail(
                self.db_path,
                "write it",
                exc,
                "make BOT_STATE_DIR and its files writable by this user, and check free space",
            ) from None
        except sqlite3.Error as exc:
            raise _fail(self.db_path, "read it", exc, advice) from None
        self._fsync_dir()
        st = os.stat(self.db_path)
        self.identity = (st.st_dev, st.st_ino)

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _load(self) -> list[OutboxEntry]:
        assert self.conn is not None
        rows = self.conn.execute(
            "SELECT lease_id, job_id, ack, created_at, attempts FROM outbox ORDER BY seq"
        ).fetchall()
        entries = []
        for lease_id, job_id, ack_text, created_at, attempts in rows:
            try:
                ack = codec.structure(
                    json.loads(ack_text), Ack, error=StateDirError, what=f"{DB_NAME} ack"
                )
                entries.append(OutboxEntry(lease_id, job_id, ack, float(created_at), attempts))
            except (ValueError, TypeError, StateDirError) as exc:
                raise StateDirError(
                    f"state dir {self.db_path}: entry for lease {lease_id!r} is unreadable "
                    f"({exc}); move the file aside and start again"
                ) from None
        return entries

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = -1

    # -- writes

    def _check_identity(self) -> None:
        """Refuse to write into a file that is no longer at its path (dir removed or replaced)."""
        try:
            st = os.stat(self.db_path)
        except OSError as exc:
            raise _fail(
                self.db_path,
                "find it",
                exc,
                "the state dir was removed or replaced while botd ran; results are not durable: "
                "restore the directory or restart the bot",
            ) from None
        if (st.st_dev, st.st_ino) != self.identity:
            raise StateDirError(
                f"state dir {self.db_path}: the file was replaced while botd ran; "
                "results are not durable: restart the bot"
            )

    def _write(self, doing: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self.conn is None:
            raise StateDirError(f"state dir {self.dir}: the outbox is closed")
        self._check_identity()
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                return fn(self.conn)
        except sqlite3.Error as exc:
            raise _fail(
                self.db_path,
                doing,
                exc,
                "check free space and permissions of BOT_STATE_DIR; results are not durable",
            ) from None

    def put(self, entry: OutboxEntry) -> bool:
        def insert(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO outbox (lease_id, job_id, ack, created_at, attempts) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    entry.lease_id,
                    entry.job_id,
                    codec.dumps(entry.ack).decode(),
                    entry.created_at,
                    entry.attempts,
                ),
            )
            return cur.rowcount == 1

        return self._write("store a result", insert)

    def put_many(self, entries: list[OutboxEntry]) -> None:
        """Insert ``entries`` in one transaction: one commit (and fsync) for all of them."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (lease_id, job_id, ack, created_at, attempts) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (e.lease_id, e.job_id, codec.dumps(e.ack).decode(), e.created_at, e.attempts)
                    for e in entries
                ],
            )

        self._write("store results", insert)

    def remove(self, lease_ids: list[str]) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM outbox WHERE lease_id = ?", [(x,) for x in lease_ids])

        self._write("remove results", delete)

    def bump(self, lease_ids: list[str]) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE lease_id = ?",
                [(x,) for x in lease_ids],
            )

        self._write("count an attempt", update)


@attrs.define(eq=False)
class _Batch:
    """Puts that share one commit (see :meth:`Outbox._put`)."""

    entries: dict[str, OutboxEntry] = attrs.field(factory=dict)
    done: trio.Event = attrs.field(factory=trio.Event)
    added: set[str] = attrs.field(factory=set)
    error: StateDirError | None = None


class Outbox:
    """Finished jobs' acks, kept until the server has recorded them.

    Open it with :meth:`open`; it loads what an earlier run left behind. ``put`` is durable
    before it returns (with a state dir) and idempotent per lease; ``remove`` forgets what
    the server recorded. ``pending()`` and ``leases()`` read an in-memory mirror, oldest
    first. ``updated`` is a ``trio_util.AsyncValue`` holding the count, and
    :meth:`wait_nonempty` / :meth:`wait_not_full` sleep on it. ``full`` says the claimer
    should stop claiming; ``put`` still stores past it (a result is never dropped).

    Errors: StateDirError on any storage failure (the mirror is left unchanged, so it
    always matches the file). Closing: :meth:`close`, or ``async with``.
    """

    def __init__(self, store: _Store | None, entries: list[OutboxEntry], max_pending: int) -> None:
        self._store = store
        self._entries: dict[str, OutboxEntry] = {e.lease_id: e for e in entries}
        self._limiter = trio.CapacityLimiter(1)
        self._batch = _Batch()
        self._committing = False
        self._closed = False
        self.max_pending = max_pending
        self.updated: Any = trio_util.AsyncValue(len(self._entries))

    @classmethod
    async def open(
        cls, state_dir: Path | None, *, max_pending: int = DEFAULT_MAX_PENDING
    ) -> Outbox:
        """Open (creating if needed) the outbox in ``state_dir``; None means in memory.

        Raises StateDirError when the dir is not a directory, cannot be created or written,
        is locked by another bot, or holds a corrupt database.
        """
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending!r}")
        if state_dir is None:
            return cls(None, [], max_pending)
        store = _Store(Path(state_dir))
        entries = await trio.to_thread.run_sync(store.open)
        return cls(store, entries, max_pending)

    @property
    def durable(self) -> bool:
        """True when entries are kept on disk."""
        return self._store is not None

    @property
    def path(self) -> Path | None:
        """The database file, or None in memory."""
        return self._store.db_path if self._store is not None else None

    @property
    def count(self) -> int:
        return len(self._entries)

    @property
    def full(self) -> bool:
        """True when ``count >= max_pending``: stop claiming until results drain."""
        return len(self._entries) >= self.max_pending

    def pending(self) -> list[OutboxEntry]:
        """The entries waiting to be reported, oldest first."""
        return list(self._entries.values())

    def leases(self) -> list[str]:
        """Lease ids of the pending entries, oldest first (for ``active_leases``)."""
        return list(self._entries)

    def get(self, lease_id: str) -> OutboxEntry | None:
        return self._entries.get(lease_id)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._limiter)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the outbox is closed")

    def _publish(self) -> None:
        self.updated.value = len(self._entries)

    @overload
    async def put(self, entry: OutboxEntry, /) -> bool: ...

    @overload
    async def put(self, job_id: str, ack: Ack, /) -> bool: ...

    async def put(self, entry_or_job_id: OutboxEntry | str, ack: Ack | None = None, /) -> bool:
        """Store an ack durably; return True if it is new, False if its lease was already here.

        Committed and fsynced before it returns. Shielded from cancellation, so a result
        being stored when shutdown starts is still stored. Raises StateDirError if it could
        not be stored (then it is not in the outbox either).
        """
        self._check_open()
        if isinstance(entry_or_job_id, OutboxEntry):
            entry = entry_or_job_id
        else:
            if ack is None:
                raise TypeError("put(job_id, ack) needs the ack")
            entry = OutboxEntry(ack.lease_id, entry_or_job_id, ack, time.time(), 0)
        if self._store is None:  # in memory: nothing to wait for, nothing to cancel
            added = self._add(entry)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return added
        with trio.CancelScope(shield=True):
            added = await self._put(entry)
        return added

    async def _put(self, entry: OutboxEntry) -> bool:
        """Group commit: the puts that arrive while a commit runs share the next one.

        The first put to find no commit running writes every queued entry in one
        transaction, and again while more were queued meanwhile (at most one batch per
        ``concurrency`` jobs); the others wait for the commit of their batch. Each put returns
        only once its own entry is committed.
        """
        if entry.lease_id in self._entries or entry.lease_id in self._batch.entries:
            await trio.lowlevel.checkpoint()
            return False
        batch = self._batch
        batch.entries[entry.lease_id] = entry
        if self._committing:
            await batch.done.wait()
        else:
            self._committing = True
            try:
                while self._batch.entries:
                    await self._commit(self._batch)
            finally:
                self._committing = False
        if batch.error is not None:
            raise batch.error
        return entry.lease_id in batch.added

    async def _commit(self, batch: _Batch) -> None:
        self._batch = _Batch()  # puts from now on go to the next commit
        store = self._store
        assert store is not None
        entries = list(batch.entries.values())
        try:
            await self._run(lambda: store.put_many(entries))
        except StateDirError as exc:
            batch.error = exc  # nothing of the batch is in the outbox
        except Exception as exc:  # a bug: still, no put of the batch may think it is stored
            batch.error = StateDirError(f"state dir: results not stored: {exc!r}")
        else:
            batch.added = {item.lease_id for item in entries if self._add(item)}
        finally:
            batch.done.set()

    def _add(self, entry: OutboxEntry) -> bool:
        if entry.lease_id in self._entries:  # already here, or a concurrent put won the race
            return False
        self._entries[entry.lease_id] = entry
        self._publish()
        return True

    async def remove(self, lease_ids: Iterable[str]) -> None:
        """Forget the entries of ``lease_ids`` (the server has them); unknown ids are ignored."""
        self._check_open()
        doomed = [x for x in dict.fromkeys(lease_ids) if x in self._entries]
        if not doomed:
            await trio.lowlevel.checkpoint()
            return
        if self._store is not None:
            store = self._store
            await self._run(lambda: store.remove(doomed))
        else:
            await trio.lowlevel.checkpoint()
        for lease_id in doomed:
            self._entries.pop(lease_id, None)
        self._publish()

    async def mark_attempted(self, lease_ids: Iterable[str]) -> None:
        """Count one more delivery attempt for ``lease_ids`` (for display and metrics)."""
        self._check_open()
        ids = [x for x in dict.fromkeys(lease_ids) if x in self._entries]
        if not ids:
            await trio.lowlevel.checkpoint()
            return
        if self._store is not None:
            store = self._store
            await self._run(lambda: store.bump(ids))
        else:
            await trio.lowlevel.checkpoint()
        for lease_id in ids:
            old = self._entries.get(lease_id)
            if old is not None:
                self._entries[lease_id] = attrs.evolve(old, attempts=old.attempts + 1)

    async def wait_nonempty(self) -> None:
        """Return once at least one entry is pending (at once if there is one)."""
        await self.updated.wait_value(lambda n: n > 0)

    async def wait_not_full(self) -> None:
        """Return once ``count < max_pending`` (at once if so)."""
        await self.updated.wait_value(lambda n: n < self.max_pending)

    async def close(self) -> None:
        """Close the database and release the lock. Idempotent; entries stay on disk."""
        if self._closed:
            return
        self._closed = True
        if self._store is not None:
            store = self._store
            with trio.CancelScope(shield=True):
                await self._run(store.close)

    async def __aenter__(self) -> Outbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
