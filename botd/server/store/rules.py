"""The protocol's rules for acks and ended leases, as pure functions both stores apply.

What an ack or an ended lease does to a job is decided here (:func:`decide_acks`,
:func:`decide_ends`), so the SQLite and PostgreSQL stores apply exactly the same protocol;
each store only reads the rows (:class:`AckRow`, :class:`EndRow`) and writes the decisions
(:class:`JobChange`, :class:`Ends`) in its own SQL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs

from ... import codec
from ...models import Ack, AckResult, FailureInfo
from .interface import ExpiryReport

__all__ = [
    "MAX_RETRY_BACKOFF_S",
    "RETRY_BASE_S",
    "AckRow",
    "EndRow",
    "Ends",
    "JobChange",
    "decide_acks",
    "decide_ends",
    "failure_json",
    "retry_backoff",
]

MAX_RETRY_BACKOFF_S = 30.0
RETRY_BASE_S = 0.5


def retry_backoff(attempt: int, base_s: float | None = None, max_s: float | None = None) -> float:
    """Seconds a retryable failure of ``attempt`` waits before its job is claimable again:
    ``min(max_s, base_s * 2 ** (attempt - 1))``, the job's own ``retry_base_s`` and
    ``retry_max_s`` or, where it has none, the server's 0.5 s and 30 s."""
    base = RETRY_BASE_S if base_s is None else base_s
    most = MAX_RETRY_BACKOFF_S if max_s is None else max_s
    # Capped before the power: attempts are at most 100, but 2^99 s is still no backoff.
    return float(min(most, base * 2 ** min(max(0, attempt - 1), 64)))


def failure_json(info: FailureInfo) -> str:
    return json.dumps(codec.unstructure(info), separators=(",", ":"))


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
    retry_base_s: float | None = None
    retry_max_s: float | None = None


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
        "queued",
        error=failure,
        retry_in_s=0.0 if late else retry_backoff(attempts, row.retry_base_s, row.retry_max_s),
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
