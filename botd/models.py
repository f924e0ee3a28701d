"""Protocol v1 messages, as frozen attrs classes.

Every body that crosses the wire, in either direction, is one of these. They are turned
into and out of JSON by the one converter in :mod:`botd.codec`; the validators here run
on every decode, so a value out of range is rejected at the border, naming its field.
See ``docs/protocol.md`` for the contract.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs
from attrs import validators as v

from .timestamps import parse_rfc3339

__all__ = [
    "Ack",
    "AckOutcome",
    "AckResult",
    "AckStatus",
    "BotInfo",
    "BotList",
    "BotStatus",
    "ClaimRequest",
    "ClaimResponse",
    "ClaimedJob",
    "ErrorBody",
    "ErrorDetail",
    "FailureInfo",
    "Health",
    "HeartbeatRequest",
    "HeartbeatResponse",
    "JobBatch",
    "JobBatchResult",
    "JobList",
    "JobStatus",
    "JobSubmit",
    "JobView",
    "RegisterRequest",
    "RegisterResponse",
    "RetryRequest",
    "RetryResult",
    "RetryableStatus",
    "SessionHolder",
    "SingleAckResponse",
    "Stats",
]

JobStatus = Literal["queued", "leased", "succeeded", "failed", "dead", "cancelled"]
JOB_STATUSES: tuple[str, ...] = ("queued", "leased", "succeeded", "failed", "dead", "cancelled")
FINAL_JOB_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "dead", "cancelled"})
BotStatus = Literal["active", "gone", "deregistered"]
AckOutcome = Literal["succeeded", "failed", "released"]
AckStatus = Literal["recorded", "duplicate", "conflict", "lease_lost", "unknown_lease"]

MAX_CLAIM_JOBS = 1000
MAX_WAIT_S = 30.0
#: The longest ``delay_s`` of a submit: a year.
MAX_DELAY_S = 365 * 24 * 3600.0
#: The longest ``retry_base_s`` or ``retry_max_s`` of a submit: a day.
MAX_RETRY_S = 24 * 3600.0
#: The bulk retry's ``limit``: at most this many jobs in one transaction.
MAX_RETRY_JOBS = 10000


def _non_empty(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError(f"'{attribute.name}' must not be empty")


def _finite(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"'{attribute.name}' must be a finite number")


def _timestamp(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        parse_rfc3339(value)
    except ValueError as exc:
        raise ValueError(f"'{attribute.name}' {exc}") from None


def _optional_number(lo: float, hi: float, *, above: bool = False) -> Any:
    """The field of an optional finite number in ``lo..hi`` (``above``: greater than ``lo``),
    null by default; its bounds also go into the OpenAPI document (``metadata["schema"]``)."""
    low = v.gt(lo) if above else v.ge(lo)
    schema = {"exclusiveMinimum" if above else "minimum": lo, "maximum": hi}
    return attrs.field(
        default=None,
        validator=v.optional([_finite, low, v.le(hi)]),
        metadata={"schema": schema},
    )


#: The longest id, kind, idempotency key, version, hostname, state or lease id: 200.
MAX_TEXT = 200
#: A bot's labels: at most this many, keys and values at most these lengths.
MAX_LABELS = 64
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 256
#: The most entries of a heartbeat's ``stats`` object (its keys at most MAX_LABEL_KEY).
MAX_STATS = 64
#: The most kinds in a claim's ``kinds`` filter.
MAX_KINDS = 100
#: The longest ``FailureInfo.message`` a bot may send: 64 KiB of text.
MAX_MESSAGE = 65536
#: A pid is a non-negative 32-bit integer (what every store keeps).
MAX_PID = 2**31 - 1
#: The JSON Schema ``pattern`` of text without NUL (the OpenAPI document's, of every text).
NO_NUL_PATTERN = "^[^\\u0000]*$"
_NO_NUL = {"pattern": NO_NUL_PATTERN}
_MOST, _DATE_TIME = {"schema": {"maxLength": 200}}, {"schema": {"format": "date-time"}}


def _no_nul(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if "\x00" in value:
        raise ValueError(f"'{attribute.name}' must not contain a NUL character (U+0000)")


def _text(most: int = MAX_TEXT, *, default: Any = "", optional: bool = False) -> Any:
    """A string field of at most ``most`` characters and no NUL, ``default`` by default
    (``optional``: or null, by default); its bounds go into the OpenAPI document."""
    checks: list[Any] = [v.max_len(most), _no_nul]
    schema: dict[str, Any] = {"maxLength": most, **_NO_NUL}
    if optional:
        return attrs.field(default=None, validator=v.optional(checks), metadata={"schema": schema})
    return attrs.field(default=default, validator=checks, metadata={"schema": schema})


def _required_text(most: int = MAX_TEXT, *, non_empty: bool = True) -> dict[str, Any]:
    """``attrs.field(**_required_text())``: a string field with no default (so that type
    checkers see it required), at most ``most`` characters, no NUL, not empty unless
    ``non_empty`` is False; its bounds go into the OpenAPI document."""
    checks: list[Any] = [v.max_len(most), _no_nul]
    schema: dict[str, Any] = {"maxLength": most, **_NO_NUL}
    if non_empty:
        checks.insert(0, _non_empty)
        schema["minLength"] = 1
    return {"validator": checks, "metadata": {"schema": schema}}


def _text_list(most_items: int, most: int = MAX_TEXT, *, optional: bool = False) -> Any:
    """A list field of at most ``most_items`` strings of at most ``most`` characters (no NUL),
    empty by default (``optional``: null by default)."""
    item: Any = v.deep_iterable(v.and_(v.max_len(most), _no_nul), v.max_len(most_items))
    schema = {"maxItems": most_items, "items": {"type": "string", "maxLength": most, **_NO_NUL}}
    if optional:
        return attrs.field(default=None, validator=v.optional(item), metadata={"schema": schema})
    return attrs.field(factory=list, validator=item, metadata={"schema": schema})


def _labels(_inst: object, attribute: attrs.Attribute[Any], value: dict[str, str]) -> None:
    if len(value) > MAX_LABELS:
        raise ValueError(f"'{attribute.name}' has {len(value)} entries; at most {MAX_LABELS}")
    for key, text in value.items():
        if not key or len(key) > MAX_LABEL_KEY or "\x00" in key:
            raise ValueError(
                f"'{attribute.name}' key {key[:80]!r} must be 1..{MAX_LABEL_KEY} characters"
                " without NUL"
            )
        if len(text) > MAX_LABEL_VALUE or "\x00" in text:
            raise ValueError(
                f"'{attribute.name}' value of {key!r} must be at most {MAX_LABEL_VALUE}"
                " characters without NUL"
            )


_LABELS_SCHEMA = {
    "maxProperties": MAX_LABELS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_LABEL_KEY, **_NO_NUL},
    "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_VALUE, **_NO_NUL},
}


def _stats(_inst: object, attribute: attrs.Attribute[Any], value: dict[str, Any]) -> None:
    if len(value) > MAX_STATS:
        raise ValueError(f"'{attribute.name}' has {len(value)} entries; at most {MAX_STATS}")
    for key in value:
        if len(key) > MAX_LABEL_KEY:
            raise ValueError(
                f"'{attribute.name}' key {key[:80]!r} is over {MAX_LABEL_KEY} characters"
            )


def _int_field(default: int, lo: int, hi: int) -> Any:
    """An integer field in ``lo..hi``, with its bounds in the OpenAPI document."""
    return attrs.field(
        default=default,
        validator=[v.ge(lo), v.le(hi)],
        metadata={"schema": {"minimum": lo, "maximum": hi}},
    )


# --- bots -------------------------------------------------------------------------------


@attrs.frozen
class RegisterRequest:
    bot_id: str = attrs.field(**_required_text())
    version: str = _text()
    hostname: str = _text()
    pid: int = _int_field(0, 0, MAX_PID)
    capacity: int = _int_field(1, 1, MAX_CLAIM_JOBS)
    labels: dict[str, str] = attrs.field(
        factory=dict, validator=_labels, metadata={"schema": _LABELS_SCHEMA}
    )
    active_leases: list[str] = _text_list(MAX_CLAIM_JOBS)  # noqa: RUF009 (an attrs field)
    #: The session token of this bot id's live session, which proves that this register
    #: continues it (an extension: see "Auth" in docs/protocol.md). Kept out of ``repr``.
    previous_session_token: str | None = attrs.field(
        default=None, repr=False, validator=v.optional(v.max_len(200)), metadata=_MOST
    )


@attrs.frozen
class RegisterResponse:
    bot_id: str
    session_id: str
    heartbeat_interval_s: float = attrs.field(validator=v.gt(0))
    lease_ttl_s: float = attrs.field(validator=v.gt(0))
    server_version: str
    #: The session's own bearer token (an extension): every later call of this session
    #: authenticates with it. Null from a server that issues none. Kept out of ``repr``.
    session_token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class BotInfo:
    """A bot as the server knows it. ``session_id`` and ``active_leases`` are shown only to
    an admin caller or to the session itself (others get null and ``[]``), and never in
    ``GET /v1/bots``; ``lease_count`` (an extension) is shown to everyone."""

    bot_id: str
    session_id: str | None
    status: str
    last_seen: str
    capacity: int
    active_leases: list[str]
    state: str | None = None
    hostname: str = ""
    version: str = ""
    labels: dict[str, str] = attrs.field(factory=dict)
    lease_count: int = 0


@attrs.frozen
class BotList:
    """A page of ``GET /v1/bots``, in bot_id order. ``next_cursor`` (an extension) is the
    ``cursor`` of the next page, null on the last one; a server without pages sends none."""

    bots: list[BotInfo]
    next_cursor: str | None = None


@attrs.frozen
class HeartbeatRequest:
    session_id: str = attrs.field(**_required_text())
    state: str = _text()
    active_leases: list[str] = _text_list(MAX_CLAIM_JOBS)  # noqa: RUF009 (an attrs field)
    stats: dict[str, Any] = attrs.field(
        factory=dict,
        validator=_stats,
        metadata={
            "schema": {"maxProperties": MAX_STATS, "propertyNames": {"maxLength": MAX_LABEL_KEY}}
        },
    )


@attrs.frozen
class HeartbeatResponse:
    lease_expires_at: str | None = None
    cancel_leases: list[str] = attrs.field(factory=list)
    lost_leases: list[str] = attrs.field(factory=list)


# --- jobs -------------------------------------------------------------------------------


@attrs.frozen
class JobSubmit:
    kind: str = attrs.field(**_required_text())
    payload: Any = None
    max_attempts: int = _int_field(3, 1, 100)
    #: At most a year (MAX_DELAY_S): a longer one is a mistake, and stores keep it exactly.
    timeout_s: float | None = _optional_number(0, MAX_DELAY_S, above=True)
    #: A 32-bit integer, so that every store keeps it as it is (PostgreSQL's integer).
    priority: int = _int_field(0, -(2**31), 2**31 - 1)
    idempotency_key: str | None = _text(optional=True)
    #: When the job becomes due (RFC 3339 with a time zone); not with ``delay_s``.
    run_at: str | None = attrs.field(
        default=None, validator=v.optional(_timestamp), metadata=_DATE_TIME
    )
    #: Seconds from the submit until the job becomes due; not with ``run_at``.
    delay_s: float | None = _optional_number(0, MAX_DELAY_S)
    #: The first retry's backoff (then doubled per attempt); null: the server's 0.5 s.
    retry_base_s: float | None = _optional_number(0, MAX_RETRY_S, above=True)
    #: The longest retry backoff; null: the server's 30 s.
    retry_max_s: float | None = _optional_number(0, MAX_RETRY_S, above=True)

    def __attrs_post_init__(self) -> None:
        if self.run_at is not None and self.delay_s is not None:
            raise ValueError("give 'run_at' or 'delay_s', not both")
        base, most = self.retry_base_s, self.retry_max_s
        if base is not None and most is not None and base > most:
            raise ValueError(f"'retry_base_s' ({base:g}) must be <= 'retry_max_s' ({most:g})")


MAX_BATCH = 1000


@attrs.frozen
class JobBatch:
    """``POST /v1/jobs/batch``: up to 1000 submissions in one request (an extension)."""

    jobs: list[JobSubmit] = attrs.field(
        validator=[v.min_len(1), v.max_len(MAX_BATCH)],
        metadata={"schema": {"minItems": 1, "maxItems": MAX_BATCH}},
    )


@attrs.frozen
class FailureInfo:
    """Why a job failed: ``type`` is a short snake_case class such as ``timeout``."""

    type: str = attrs.field(**_required_text(non_empty=False))
    message: str = attrs.field(**_required_text(MAX_MESSAGE, non_empty=False))
    retryable: bool = True


@attrs.frozen
class JobView:
    job_id: str
    kind: str
    status: JobStatus
    attempts: int
    result: Any
    error: FailureInfo | None
    bot_id: str | None
    created_at: str
    finished_at: str | None
    payload: Any = None
    max_attempts: int = 3
    priority: int = 0
    timeout_s: float | None = None
    idempotency_key: str | None = None
    #: When the job is (or was) due, RFC 3339; null for a job due at its submit.
    run_at: str | None = None
    retry_base_s: float | None = None
    retry_max_s: float | None = None


@attrs.frozen
class JobBatchResult:
    """The batch's jobs in request order; ``created`` counts the new ones (the rest were
    already there under their idempotency_key)."""

    jobs: list[JobView]
    created: int


@attrs.frozen
class JobList:
    """A page of ``GET /v1/jobs``, newest first. ``next_cursor`` (an extension) is the
    ``cursor`` of the next page, null on the last one; a server without pages sends none."""

    jobs: list[JobView]
    next_cursor: str | None = None


@attrs.frozen
class Stats:
    """Jobs and bots per status; ``scheduled`` counts the queued jobs not yet due (delayed,
    or waiting out a retry's backoff), which ``jobs["queued"]`` includes."""

    jobs: dict[str, int]
    bots: dict[str, int]
    scheduled: int = 0


RetryableStatus = Literal["dead", "failed"]


@attrs.frozen
class RetryRequest:
    """``POST /v1/jobs/retry``: put up to ``limit`` jobs of ``status`` (and ``kind``, when
    given) back in the queue, oldest first, in one transaction (an extension)."""

    status: RetryableStatus
    kind: str | None = _text(optional=True)
    limit: int = attrs.field(
        default=1000,
        validator=[v.ge(1), v.le(MAX_RETRY_JOBS)],
        metadata={"schema": {"minimum": 1, "maximum": MAX_RETRY_JOBS}},
    )


@attrs.frozen
class RetryResult:
    """How many jobs ``POST /v1/jobs/retry`` put back, and which."""

    retried: int
    job_ids: list[str]


# --- work -------------------------------------------------------------------------------


@attrs.frozen
class Ack:
    lease_id: str = attrs.field(**_required_text())
    outcome: AckOutcome
    result: Any = None
    error: FailureInfo | None = None


@attrs.frozen
class AckResult:
    lease_id: str
    status: AckStatus
    message: str = ""


@attrs.frozen
class SingleAckResponse:
    status: Literal["recorded", "duplicate"]


@attrs.frozen
class ClaimRequest:
    bot_id: str = attrs.field(**_required_text())
    session_id: str = attrs.field(**_required_text())
    max_jobs: int = _int_field(1, 0, MAX_CLAIM_JOBS)
    wait_s: float = attrs.field(
        default=0.0,
        validator=[_finite, v.ge(0), v.le(MAX_WAIT_S)],
        metadata={"schema": {"minimum": 0, "maximum": MAX_WAIT_S}},
    )
    kinds: list[str] | None = _text_list(MAX_KINDS, optional=True)  # noqa: RUF009 (an attrs field)
    acks: list[Ack] = attrs.field(
        factory=list,
        validator=v.max_len(MAX_CLAIM_JOBS),
        metadata={"schema": {"maxItems": MAX_CLAIM_JOBS}},
    )


@attrs.frozen
class ClaimedJob:
    job_id: str
    lease_id: str
    kind: str
    payload: Any
    attempt: int
    timeout_s: float | None
    lease_expires_at: str


@attrs.frozen
class ClaimResponse:
    jobs: list[ClaimedJob] = attrs.field(factory=list)
    acks: list[AckResult] = attrs.field(factory=list)


# --- health and errors ------------------------------------------------------------------


@attrs.frozen
class Health:
    status: Literal["ok", "degraded"]
    database: str
    version: str = ""


@attrs.frozen
class SessionHolder:
    """Who holds a bot id's live session: in a 409 ``session_superseded`` or
    ``bot_id_in_use`` (an extension).

    ``since`` is when that session registered (RFC 3339).
    """

    hostname: str = ""
    pid: int = 0
    since: str = ""


@attrs.frozen
class ErrorDetail:
    code: str
    message: str
    #: Only in a 409 session_superseded or bot_id_in_use: the registration that holds the
    #: bot id now.
    holder: SessionHolder | None = None


@attrs.frozen
class ErrorBody:
    error: ErrorDetail
