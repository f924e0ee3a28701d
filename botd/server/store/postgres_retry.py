"""The SQL of retrying ended jobs on the PostgreSQL store: :func:`retry_rows`.

A dead or failed job goes back to the queue, due now, as if never leased: its attempts are
unspent, ``result`` and ``finished_at`` are cleared, its ``error`` stays (the last failure).
The job's latest lease, kept on its row, moves to the ``leases`` table first, as a claim's
does, so that a late ack of it is judged ``lease_lost`` and the lease history stays whole.
"""

from __future__ import annotations

from typing import Any

from . import records
from .postgres_db import Conn

__all__ = ["retry_rows"]

_RETRY = """
WITH picked AS MATERIALIZED (
    SELECT seq, job_id, lease_id, lease_attempt, lease_state, lease_outcome, bot_id FROM jobs
    WHERE status IN ({retryable}){where}
    ORDER BY seq
    LIMIT %(n)s
    FOR UPDATE
), retired AS (
    INSERT INTO leases (lease_id, job_id, bot_id, attempt, state, outcome)
    SELECT lease_id, job_id, bot_id, lease_attempt, lease_state, lease_outcome
    FROM picked WHERE lease_id IS NOT NULL
)
UPDATE jobs j
SET status = 'queued', attempts = 0, result = NULL, finished_at = NULL,
    not_before = '-infinity', bot_id = NULL, lease_id = NULL, lease_attempt = NULL,
    lease_state = NULL, lease_session = NULL, lease_expires = NULL, lease_outcome = NULL
FROM picked WHERE j.seq = picked.seq
RETURNING j.seq, j.job_id
"""


def retry_rows(
    conn: Conn,
    *,
    job_id: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 1,
) -> list[str]:
    """Retry the dead or failed jobs chosen (``job_id``, or up to ``limit`` of ``status``
    and ``kind``, oldest first), locking their rows in ``seq`` order; their ids in order."""
    where, args = records.job_filter(status=status, kind=kind, mark="%(kind)s")
    conditions = where.replace(" WHERE ", " AND ", 1)
    params: dict[str, Any] = {"n": limit}
    if args:
        params["kind"] = args[0]
    if job_id is not None:
        conditions += " AND job_id = %(job)s"
        params["job"] = job_id
    retryable = ", ".join(f"'{s}'" for s in records.RETRYABLE_STATUSES)
    rows = conn.execute(_RETRY.format(retryable=retryable, where=conditions), params).fetchall()
    return [job for _, job in sorted(rows)]
