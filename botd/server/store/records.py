"""The records both stores read and write alike: shared columns and statements, rows into
answers, a registration into the bot's columns.

Both schemas name their columns alike, so a job row of :data:`JOB_COLUMNS` becomes a
:class:`~botd.models.JobView` in one place (:func:`job_view`), and likewise bots
(:func:`read_bots`), claimed jobs and stats; a session token is looked up
(:func:`session_of`) and a live session's continuity proved (:func:`refuse_unless_continued`)
in one statement each, with the store's placeholder. Also here: new ids, and the invariant's
checks for tests and audits. The stores name it ``records`` (``records.job_view``).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ... import codec
from ...models import (
    FINAL_JOB_STATUSES,
    JOB_STATUSES,
    BotInfo,
    ClaimedJob,
    FailureInfo,
    JobView,
    RegisterRequest,
    SessionHolder,
    Stats,
)
from .errors import bot_id_in_use
from .interface import BOT_STATUSES

__all__ = [
    "BOT_COLUMNS",
    "FINAL_STATUSES_SQL",
    "JOB_COLUMNS",
    "RETRYABLE_STATUSES",
    "SESSION_TOKEN_KEEP_S",
    "STATS_SQL",
    "Execute",
    "When",
    "bot_infos",
    "claimed_job",
    "failure_of",
    "finite",
    "invariant_problems",
    "job_filter",
    "job_page",
    "job_view",
    "json_or_none",
    "new_id",
    "read_bot_page",
    "read_bots",
    "refuse_unless_continued",
    "registration",
    "session_of",
    "stats_of",
    "token_hash",
]

#: The final job statuses, as an SQL list (pruning deletes only these).
FINAL_STATUSES_SQL = ", ".join(f"'{s}'" for s in sorted(FINAL_JOB_STATUSES))


#: The statuses a job can be retried from (``POST /v1/jobs/{job_id}/retry``).
RETRYABLE_STATUSES: tuple[str, ...] = ("dead", "failed")


def new_id() -> str:
    return uuid.uuid4().hex


def _no_constant(_name: str) -> None:
    return None


#: One decoder for every stored text: ``json.loads`` with an argument builds one per call.
_STORED = json.JSONDecoder(parse_constant=_no_constant)


def finite(value: float | None) -> float | None:
    """A stored number as an answer may hold it: NaN and Infinity (which JSON cannot
    write) read as null."""
    return value if value is None or math.isfinite(value) else None


def stored_json(text: str) -> Any:
    """A stored JSON text, as an answer can always hold it: what a row from before the
    border's bounds may hold and no answer can (``NaN``, ``Infinity``, as the server wrote
    them then; nesting deeper than :data:`~botd.codec.MAX_DEPTH`; text that is no JSON)
    reads as null. So an answer read in a transaction encodes after its commit, never a 500.
    """
    try:
        if isinstance(text, str):
            value = _STORED.decode(text)
        else:  # bytes: json.loads finds the encoding
            value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    # Only a text with that many brackets can nest that deep: most need no walk.
    raw = text if isinstance(text, str) else text.decode("latin-1")
    if raw.count("[") + raw.count("{") > codec.MAX_DEPTH and _deeper(value, codec.MAX_DEPTH):
        return None
    return value


def _deeper(value: Any, most: int) -> bool:
    """Whether ``value`` nests more than ``most`` arrays and objects (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > most:
                return True
            inner = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in inner)
    return False


def json_or_none(text: str | None) -> Any:
    return None if text is None else stored_json(text)


def failure_of(text: str | None) -> FailureInfo | None:
    data = json_or_none(text)
    return None if data is None else codec.structure(data, FailureInfo)


#: The job columns :func:`job_view` reads, in order: each is the JobView field of its name.
_JOB_FIELDS = (
    "job_id",
    "kind",
    "payload",
    "status",
    "priority",
    "max_attempts",
    "attempts",
    "timeout_s",
    "idempotency_key",
    "result",
    "error",
    "bot_id",
    "created_at",
    "finished_at",
    "run_at",
    "retry_base_s",
    "retry_max_s",
)
JOB_COLUMNS = ", ".join(_JOB_FIELDS)
#: The bot columns :func:`bot_infos` reads, in order: each is the BotInfo field of its name.
_BOT_FIELDS = ("bot_id", "session_id", "status", "state", "capacity", "hostname", "version")
BOT_COLUMNS = ", ".join((*_BOT_FIELDS, "labels", "last_seen"))
#: Formats a store's own timestamp (SQLite: seconds since the epoch; PostgreSQL: a
#: datetime) as RFC 3339.
When = Callable[[Any], str]
#: A connection's ``execute(sql, params)``: sqlite3's or psycopg's; it returns a cursor.
Execute = Callable[[str, tuple[Any, ...]], Any]


def job_view(row: Sequence[Any], when: When) -> JobView:
    """A JobView from a row of :data:`JOB_COLUMNS`."""
    job = dict(zip(_JOB_FIELDS, row, strict=True))
    finished, run_at = job["finished_at"], job["run_at"]
    job.update(
        timeout_s=finite(job["timeout_s"]),
        retry_base_s=finite(job["retry_base_s"]),
        retry_max_s=finite(job["retry_max_s"]),
        payload=stored_json(job["payload"]),
        result=json_or_none(job["result"]),
        error=failure_of(job["error"]),
        created_at=when(job["created_at"]),
        finished_at=None if finished is None else when(finished),
        run_at=None if run_at is None else when(run_at),
    )
    return JobView(**job)


def job_filter(
    *, status: str | None, kind: str | None, mark: str, before: int | None = None
) -> tuple[str, tuple[str | int, ...]]:
    """The WHERE clause (empty, or starting with a space) and its arguments that select the
    jobs of ``status`` and ``kind`` (None: any), and (``before``) with a seq below it.
    ``mark`` is the store's placeholder.

    The status goes in as a literal (it must be one of JOB_STATUSES), so that a prepared
    statement's plan can use a partial index on it (PostgreSQL's jobs_status).
    """
    conditions: list[str] = []
    args: tuple[str | int, ...] = ()
    if status is not None:
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status {status!r}")
        conditions.append(f"status = '{status}'")
    if kind is not None:
        conditions.append(f"kind = {mark}")
        args = (kind,)
    if before is not None:
        conditions.append(f"seq < {mark}")
        args = (*args, before)
    return (" WHERE " + " AND ".join(conditions) if conditions else ""), args


def job_page(
    rows: Sequence[Sequence[Any]], limit: int, when: When
) -> tuple[list[JobView], int | None]:
    """A page of jobs from up to ``limit + 1`` rows of ``seq, JOB_COLUMNS`` (newest first),
    and the seq the next page starts below (None: this is the last page)."""
    page = [job_view(row[1:], when) for row in rows[:limit]]
    more = len(rows) > limit > 0
    return page, (int(rows[limit - 1][0]) if more else None)


def bot_infos(
    rows: Iterable[Sequence[Any]], leases: Iterable[Sequence[str]], when: When
) -> list[BotInfo]:
    """BotInfos from rows of :data:`BOT_COLUMNS` and the (bot_id, lease_id) of active leases."""
    held: dict[str, list[str]] = {}
    for owner, lease_id in leases:
        held.setdefault(owner, []).append(lease_id)
    return [
        BotInfo(
            **dict(zip(_BOT_FIELDS, r[:-2], strict=True)),
            labels=stored_json(r[-2]),
            last_seen=when(r[-1]),
            active_leases=held.get(r[0], []),
            lease_count=len(held.get(r[0], [])),
        )
        for r in rows
    ]


def read_bots(
    execute: Execute, bot_id: str | None, *, mark: str, active_leases: str, when: When
) -> list[BotInfo]:
    """The bots (every one, or ``bot_id`` only) in bot_id order, with their active leases.

    ``mark`` is the store's placeholder (``?``, ``%s``); ``active_leases`` is its SELECT of
    (bot_id, lease_id) of the active leases, in the order they were granted, with ``{bot}``
    where the condition on one bot goes.
    """
    where = f"WHERE bot_id = {mark}" if bot_id is not None else ""
    args: tuple[str, ...] = (bot_id,) if bot_id is not None else ()
    rows = execute(f"SELECT {BOT_COLUMNS} FROM bots {where} ORDER BY bot_id", args).fetchall()
    one = f" AND bot_id = {mark}" if bot_id is not None else ""
    lease_rows = execute(active_leases.format(bot=one), args).fetchall()
    return bot_infos(rows, lease_rows, when)


def read_bot_page(
    execute: Execute,
    after: str | None,
    limit: int,
    *,
    mark: str,
    active_leases: str,
    when: When,
) -> tuple[list[BotInfo], str | None]:
    """Up to ``limit`` bots with a bot_id after ``after`` (None: from the first), in bot_id
    order, with their active leases, and the bot_id the next page starts after (None: this
    is the last page). ``mark`` and ``active_leases`` are as for :func:`read_bots`."""
    where, args = (f"WHERE bot_id > {mark}", (after,)) if after is not None else ("", ())
    rows = execute(
        f"SELECT {BOT_COLUMNS} FROM bots {where} ORDER BY bot_id LIMIT {mark}", (*args, limit + 1)
    ).fetchall()
    rows, more = rows[:limit], len(rows) > limit
    if not rows:
        return [], None
    first, last = rows[0][0], rows[-1][0]
    span = f" AND bot_id >= {mark} AND bot_id <= {mark}"
    lease_rows = execute(active_leases.format(bot=span), (first, last)).fetchall()
    return bot_infos(rows, lease_rows, when), (str(last) if more else None)


def registration(req: RegisterRequest, session_id: str) -> tuple[Any, ...]:
    """A registration's values for the columns bot_id, session_id, capacity, hostname,
    version, pid, labels (both stores' upserts of the bot start with these)."""
    labels = json.dumps(req.labels)
    return (req.bot_id, session_id, req.capacity, req.hostname, req.version, req.pid, labels)


def token_hash(token: str) -> str:
    """What a store keeps of a session token: its SHA-256, in hex (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()


def session_of(execute: Execute, token_hash: str, *, mark: str) -> tuple[str, str] | None:
    """The (bot_id, session_id) whose session token has ``token_hash``, or None.

    ``mark`` is the store's placeholder (``?``, ``%s``).
    """
    row = execute(
        f"SELECT bot_id, session_id FROM sessions WHERE token_hash = {mark}", (token_hash,)
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def refuse_unless_continued(
    execute: Execute,
    bot_id: str,
    live: Sequence[Any],
    previous_hash: str | None,
    *,
    mark: str,
    when: When,
) -> None:
    """Refuse (409 bot_id_in_use, naming the holder) a register of ``bot_id`` while its
    session ``live`` is alive, unless ``previous_hash`` is that session's token: the bot
    proves it continues it. ``live`` is the bot's row: session_id, hostname, pid,
    registered_at; ``mark`` is the store's placeholder.
    """
    if previous_hash is not None:
        proof = execute(
            f"SELECT 1 FROM sessions WHERE token_hash = {mark} AND bot_id = {mark}"
            f" AND session_id = {mark}",
            (previous_hash, bot_id, live[0]),
        ).fetchone()
        if proof is not None:
            return
    holder = SessionHolder(hostname=live[1], pid=live[2], since=when(live[3]))
    raise bot_id_in_use(bot_id, holder)


#: Superseded sessions' tokens are kept this long (they answer 409 session_superseded),
#: then forgotten at the bot's next registration (401 unauthorized, and the bot registers).
SESSION_TOKEN_KEEP_S = 3600.0


def claimed_job(
    job_id: str,
    lease_id: str,
    kind: str,
    payload: str,
    attempt: int,
    timeout_s: float | None,
    lease_expires_at: str,
) -> ClaimedJob:
    """A ClaimedJob from its row's values (``payload`` as the JSON text stored)."""
    return ClaimedJob(
        job_id, lease_id, kind, stored_json(payload), attempt, finite(timeout_s), lease_expires_at
    )


def stats_of(jobs: Iterable[Sequence[Any]], bots: Iterable[Sequence[Any]], scheduled: int) -> Stats:
    """Stats from (status, count) rows of jobs and of bots, and the count of queued jobs not
    yet due; every status present."""
    job_counts = dict.fromkeys(JOB_STATUSES, 0)
    job_counts.update({status: n for status, n in jobs})
    bot_counts = dict.fromkeys(BOT_STATUSES, 0)
    bot_counts.update({status: n for status, n in bots})
    return Stats(jobs=job_counts, bots=bot_counts, scheduled=scheduled)


#: The two statements :func:`stats_of` reads.
STATS_SQL = (
    "SELECT status, count(*) FROM jobs GROUP BY status",
    "SELECT status, count(*) FROM bots GROUP BY status",
)


# --- the invariant, for tests and audits ------------------------------------------------

_INVARIANT_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "SELECT job_id, status FROM jobs WHERE status NOT IN ("
        + ", ".join(f"'{s}'" for s in JOB_STATUSES)
        + ")",
        "job {0} has unknown status {1!r}",
    ),
    (
        "SELECT j.job_id FROM jobs j WHERE j.status = 'leased' AND NOT EXISTS"
        " (SELECT 1 FROM leases l WHERE l.lease_id = j.lease_id AND l.state = 'active')",
        "leased job {0} has no active lease",
    ),
    (
        "SELECT job_id FROM jobs WHERE status = 'succeeded' AND (result IS NULL OR"
        " (SELECT count(*) FROM leases l WHERE l.job_id = jobs.job_id AND"
        " l.outcome = 'succeeded' AND l.state = 'done') != 1)",
        "succeeded job {0} does not have exactly one recorded result",
    ),
    (
        "SELECT l.lease_id, l.job_id FROM leases l JOIN jobs j ON j.job_id = l.job_id"
        " WHERE l.state = 'active' AND j.status NOT IN ('leased', 'cancelled')",
        "active lease {0} on job {1} that is not leased",
    ),
)


def invariant_problems(
    query: Callable[[str], Iterable[Sequence[Any]]],
    checks: Sequence[tuple[str, str]] = _INVARIANT_CHECKS,
) -> list[str]:
    """Problems with the store's invariant (empty when it holds). ``query`` runs one SQL
    statement and returns its rows; ``checks`` are (SQL, message) pairs, by default those of
    the schema with a row per lease (SQLite's)."""
    return [message.format(*row) for sql, message in checks for row in query(sql)]
