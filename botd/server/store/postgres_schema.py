"""The PostgreSQL store's schema: its tables, their migrations, and its invariant's checks.

:func:`migrate` brings a database up to :data:`~.interface.SCHEMA_VERSION` in one
transaction under an advisory lock, so replicas that start together take turns; a database
newer than this botd is refused (:class:`~.errors.StoreIncompatible`, exit 78).
"""

from __future__ import annotations

from typing import Any

import psycopg
from loguru import logger

from ...events import Event
from ...models import JOB_STATUSES
from .errors import newer_schema
from .interface import SCHEMA_VERSION

__all__ = ["INVARIANT", "MIGRATIONS", "migrate"]

#: pg_advisory_xact_lock key that serializes migrations ("botd" in ASCII).
_MIGRATION_LOCK = 0x626F7464

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

#: Version 2: delayed jobs (run_at: when a job was due; NULL: at its submit; not_before
#: holds it too) and each job's own retry backoff (NULL: the server's).
_SCHEMA_V2 = """
ALTER TABLE jobs ADD COLUMN run_at timestamptz,
    ADD COLUMN retry_base_s double precision,
    ADD COLUMN retry_max_s double precision;
"""

#: Version 3: session tokens. A session's token is kept only as its SHA-256, so that a
#: request bearing it is that session (superseded ones are deleted an hour later).
_SCHEMA_V3 = """
CREATE TABLE sessions (
    token_hash text COLLATE "C" PRIMARY KEY,
    bot_id text COLLATE "C" NOT NULL,
    session_id text COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_bot ON sessions (bot_id);
"""

#: Schema migrations: (version, SQL). Each one runs once, in order, under the lock.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3))
assert MIGRATIONS[-1][0] == SCHEMA_VERSION


#: The invariant on this schema (the lease's state is on the job's row), for
#: :func:`~.records.invariant_problems`.
INVARIANT = (
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


def migrate(conn: psycopg.Connection[Any], where: str) -> None:
    """Apply the missing migrations in ``conn``'s transaction, under an advisory lock
    (replicas that start together take turns); refuse a schema newer than this botd."""
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
        raise newer_schema(where, version, SCHEMA_VERSION)
    for target, sql in MIGRATIONS:
        if target > version:
            conn.execute(sql)
            conn.execute("INSERT INTO botd_schema (version) VALUES (%s)", (target,))
            logger.bind(event=Event.SCHEMA_MIGRATED, version=target).info(
                "database schema migrated"
            )
