"""The errors of the job stores, and the rejections a store answers with.

A failing database raises :class:`StoreUnavailable` (the HTTP layer answers
503 ``store_unavailable``); a request the state does not allow raises
:class:`StoreRejected` with its HTTP status and error code; a database written by a newer
botd raises :class:`StoreIncompatible` (the server exits 78). Nothing else escapes a store.
The functions below build the rejections both stores answer, so their words are the same.
"""

from __future__ import annotations

from ...errors import BotdError, HttpError
from ...models import SessionHolder

__all__ = [
    "StoreError",
    "StoreIncompatible",
    "StoreRejected",
    "StoreUnavailable",
    "bot_id_in_use",
    "job_finished",
    "job_not_retryable",
    "newer_schema",
    "not_lease_owner",
    "session_problem",
    "superseded",
    "unknown_bot",
    "unknown_job",
]


class StoreError(BotdError):
    """Raised by a store; the root of the server's store errors."""


class StoreUnavailable(StoreError):
    """Raised when the database fails (down, corrupt, unwritable, too slow); answer 503."""


class StoreIncompatible(StoreError):
    """Raised when the database's schema is newer than this botd: upgrade botd (exit 78)."""


def newer_schema(where: str, version: int, known: int) -> StoreIncompatible:
    """The database ``where`` has schema ``version``, newer than the ``known`` one."""
    return StoreIncompatible(
        f"database {where} has schema version {version}, newer than this botd's {known}:"
        " run the newer botd, or point --db at another database"
    )


class StoreRejected(StoreError, HttpError):
    """Raised when the state does not allow a request; carries the HTTP status and error code
    (and, for a superseded session, who holds the bot id now)."""


def unknown_bot(bot_id: str) -> StoreRejected:
    return StoreRejected(404, "unknown_bot", f"bot {bot_id!r} is not registered; register it again")


def superseded(bot_id: str, why: str, holder: SessionHolder | None = None) -> StoreRejected:
    return StoreRejected(
        409,
        "session_superseded",
        f"bot {bot_id!r}: {why}; register again for a new session",
        holder,
    )


def session_problem(
    bot_id: str, session_id: str, row: tuple[str, str, str, int, str] | None
) -> StoreRejected | None:
    """Why ``session_id`` may not act for ``bot_id``, given the bot's row
    (session_id, status, hostname, pid, registered_at as RFC 3339); None when it may."""
    if row is None:
        return unknown_bot(bot_id)
    held, status, hostname, pid, since = row
    if status == "deregistered":
        return superseded(bot_id, "the bot deregistered, which ended its session")
    if held != session_id:
        holder = SessionHolder(hostname=hostname, pid=pid, since=since)
        return superseded(
            bot_id,
            f"session {session_id!r} was replaced by a newer one, registered by host"
            f" {holder.hostname!r} pid {holder.pid} at {holder.since}",
            holder,
        )
    return None


def bot_id_in_use(bot_id: str, holder: SessionHolder) -> StoreRejected:
    """A worker's register for a bot id whose session is alive, without its token."""
    return StoreRejected(
        409,
        "bot_id_in_use",
        f"bot id {bot_id!r} is in use by a live session, registered by host"
        f" {holder.hostname!r} pid {holder.pid} at {holder.since}: give each bot a bot id of"
        " its own, or send that session's token as 'previous_session_token' to continue it;"
        " the id is free once that session deregisters or goes silent",
        holder,
    )


def not_lease_owner(lease_ids: list[str], bot_id: str) -> StoreRejected:
    """Acks (or releases) of leases that another bot's session holds."""
    shown = ", ".join(repr(x) for x in lease_ids[:3]) + (" ..." if len(lease_ids) > 3 else "")
    return StoreRejected(
        403,
        "not_lease_owner",
        f"lease {shown} is not held by bot {bot_id!r}: only the bot that claimed a lease may"
        " ack, renew or release it; nothing was changed",
    )


def unknown_job(job_id: str) -> StoreRejected:
    return StoreRejected(404, "unknown_job", f"no job {job_id!r}; check the job_id")


def job_finished(job_id: str, status: str) -> StoreRejected:
    return StoreRejected(
        409,
        "job_finished",
        f"job {job_id!r} already ended as {status!r}; there is nothing to cancel",
    )


def job_not_retryable(job_id: str, status: str) -> StoreRejected:
    if status in ("queued", "leased"):
        what = "it has not ended yet; wait for it to end, or cancel it"
    else:
        what = "only a dead or failed job can be retried; submit a new job instead"
    return StoreRejected(409, "job_not_retryable", f"job {job_id!r} is {status!r}: {what}")
