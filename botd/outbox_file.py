"""The outbox's file in ``BOT_STATE_DIR``: the directory's checks, the lock, the SQLite schema,
and each write in one transaction.

``<state_dir>/outbox.sqlite3`` (WAL, ``synchronous=FULL``: every put is fsynced; only a
removal of what the server recorded, or an attempt count, commits without one) holds one row
per unreported ack;
``<state_dir>/lock`` (an ``flock``) keeps two bots from sharing one state dir. Both are
created 0600 and opened never through a symlink (:mod:`botd.state_files`); a state dir that
every user may write to is refused. Synchronous:
:class:`botd.outbox.Outbox` calls it from a worker thread. Every failure raises
:class:`~botd.errors.StateDirError` naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import attrs

from . import codec
from .errors import StateDirError
from .models import Ack
from .state_files import check_state_dir, make_private_dir, open_private, refuse_symlink

__all__ = ["DB_NAME", "LOCK_NAME", "SCHEMA_VERSION", "OutboxEntry", "OutboxFile"]

DB_NAME = "outbox.sqlite3"
LOCK_NAME = "lock"
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
    times it was sent without the server recording it; ``size`` is about how many bytes its
    ack takes in a request (0: small, or not known), so that one claim does not carry more
    acks than a request may hold.
    """

    lease_id: str
    job_id: str
    ack: Ack
    created_at: float
    attempts: int = 0
    size: int = attrs.field(default=0, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.ack.lease_id != self.lease_id:
            raise ValueError(
                f"entry lease_id {self.lease_id!r} differs from its ack's {self.ack.lease_id!r}"
            )


def _fail(path: Path, doing: str, exc: BaseException, advice: str) -> StateDirError:
    return StateDirError(f"state dir {path}: cannot {doing} ({exc}); {advice}")


class OutboxFile:
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
        check_state_dir(path)
        try:
            make_private_dir(path)
        except OSError as exc:
            raise _fail(
                path, "create it", exc, "create it by hand, or point BOT_STATE_DIR elsewhere"
            ) from None

    def _lock(self) -> None:
        lock_path = self.dir / LOCK_NAME
        try:
            self.lock_fd = open_private(lock_path)
        except OSError as exc:
            if lock_path.is_symlink():
                raise StateDirError(
                    f"state dir {self.dir}: {lock_path.name} is a symlink (to"
                    f" {os.readlink(lock_path)!r}), not botd's lock; it was left untouched:"
                    f" remove the link ({lock_path}) and start again"
                ) from None
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
            # Created 0600 before SQLite opens it (its -wal and -shm files take its mode),
            # and never through a symlink. SQLite follows links: a -wal or -shm planted as
            # one is refused before it opens them.
            for suffix in ("-wal", "-shm"):
                refuse_symlink(self.db_path.with_name(DB_NAME + suffix))
            os.close(open_private(self.db_path))
        except OSError as exc:
            raise _fail(
                self.db_path,
                "open it",
                exc,
                "it must be a regular file (a symlink is refused) writable by this user",
            ) from None
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
                entries.append(
                    OutboxEntry(lease_id, job_id, ack, float(created_at), attempts, len(ack_text))
                )
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

    def _write(
        self, doing: str, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> T:
        """Run ``fn`` in one transaction. ``durable=False``: its commit is not fsynced
        (``synchronous=NORMAL`` for it): a crash or power loss may undo it, never corrupt
        the file, and the next durable commit's fsync covers it too (WAL frames are synced
        in order). Only for writes whose loss is harmless: forgetting an entry the server
        already has (it is sent again and answered ``duplicate``), counting an attempt."""
        if self.conn is None:
            raise StateDirError(f"state dir {self.dir}: the outbox is closed")
        self._check_identity()
        try:
            if not durable:
                self.conn.execute("PRAGMA synchronous=NORMAL")
            try:
                with self.conn:
                    self.conn.execute("BEGIN IMMEDIATE")
                    return fn(self.conn)
            finally:
                if not durable:
                    self.conn.execute("PRAGMA synchronous=FULL")
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

    def put_many(self, entries: list[OutboxEntry], removed: Sequence[str] = ()) -> None:
        """Insert ``entries`` in one transaction: one commit (and fsync) for all of them.
        ``removed``: lease ids to delete in the same transaction (removals that waited for
        this commit, see :meth:`~botd.outbox.Outbox.remove`)."""

        def insert(conn: sqlite3.Connection) -> None:
            if removed:
                conn.executemany("DELETE FROM outbox WHERE lease_id = ?", [(x,) for x in removed])
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

        # Not fsynced: a removal undone by a crash sends a recorded ack again (duplicate).
        self._write("remove results", delete, durable=False)

    def replace(self, lease_id: str, ack: Ack) -> None:
        """Put ``ack`` in the place of the lease's ack (one the server will never take)."""

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET ack = ? WHERE lease_id = ?",
                (codec.dumps(ack).decode(), lease_id),
            )

        self._write("replace a result", update)

    def bump(self, lease_ids: list[str]) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE lease_id = ?",
                [(x,) for x in lease_ids],
            )

        self._write("count an attempt", update, durable=False)
