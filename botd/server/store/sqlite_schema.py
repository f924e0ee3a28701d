"""The SQLite store's schema: its tables, and the migration of a database written by an
earlier botd (columns and tables added since: the ``sessions`` table of version 3 is made
by the schema's ``CREATE TABLE IF NOT EXISTS``). A database written by a newer botd is refused
(:class:`~.errors.StoreIncompatible`, exit 78).

A job's ``not_before`` (when it is due) is on the server's monotonic clock, which means
nothing to the next process; ``due_at`` is the same moment on the wall clock (0: due at
once), from which :meth:`~.sqlite_backend.SqliteBackend.open` sets ``not_before`` again.
``run_at`` is the wall-clock time a delayed job was due (NULL: due at its submit).
"""

from __future__ import annotations

import sqlite3

from .errors import newer_schema
from .interface import SCHEMA_VERSION

__all__ = ["SCHEMA", "migrate"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bots (
    bot_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    status TEXT NOT NULL,
    state TEXT,
    capacity INTEGER NOT NULL,
    hostname TEXT NOT NULL,
    version TEXT NOT NULL,
    pid INTEGER NOT NULL,
    labels TEXT NOT NULL,
    last_seen REAL NOT NULL,
    seen_at REAL NOT NULL,
    registered_at REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    timeout_s REAL,
    idempotency_key TEXT UNIQUE,
    result TEXT,
    error TEXT,
    bot_id TEXT,
    lease_id TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    run_at REAL,
    due_at REAL NOT NULL DEFAULT 0,
    retry_base_s REAL,
    retry_max_s REAL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, seq);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, not_before);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS leases (
    lease_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    bot_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    expires REAL NOT NULL,
    outcome TEXT
);
CREATE INDEX IF NOT EXISTS leases_active ON leases (state, expires);
CREATE INDEX IF NOT EXISTS leases_bot ON leases (bot_id, state);
-- Since version 3: the SHA-256 of each session's token (never the token), so that a
-- request bearing it is that session.
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    bot_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_bot ON sessions (bot_id);
"""


#: The job columns added in schema version 2 (delayed jobs, per-job retry backoff).
_JOB_COLUMNS_SINCE_V1 = (
    ("run_at", "REAL"),
    ("due_at", "REAL NOT NULL DEFAULT 0"),
    ("retry_base_s", "REAL"),
    ("retry_max_s", "REAL"),
)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring a database written by an earlier botd up to the schema (columns added since);
    refuse one written by a newer botd."""
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(found[0]) if found else 0
    if version > SCHEMA_VERSION:
        raise newer_schema(repr(path), version, SCHEMA_VERSION)
    have = {row[1] for row in conn.execute("PRAGMA table_info(bots)")}
    if "registered_at" not in have:
        conn.execute("ALTER TABLE bots ADD COLUMN registered_at REAL NOT NULL DEFAULT 0")
    have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    for column, decl in _JOB_COLUMNS_SINCE_V1:
        if column not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")
    if version < SCHEMA_VERSION:
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
