"""The one error tree of botd.

Every error that botd raises on purpose derives from :class:`BotdError`. Most live here;
the others live with the one module that raises them, named on the right::

    BotdError
    ├── ConfigError              bad configuration: exit code 78, nothing starts
    ├── StateDirError            the local state dir is corrupt or unwritable
    ├── InvalidTransition        an illegal lifecycle transition (a bug)
    ├── CircuitOpen              a call refused because its breaker is open
    ├── EncodeError              a value is not JSON within bounds (NaN, Infinity, too deep,
    │                            an integer past 64 bits, a lone surrogate) (botd.codec)
    ├── SessionLost              a loop lost its server session: ERROR, register again
    │                            (botd.session)
    ├── StartupExhausted         every startup registration failed: exit code 69
    │                            (botd.registration)
    ├── JobError                 a job handler failed (retryable)
    │   ├── PermanentError       ... and must not be retried
    │   ├── JobTimeout           ... because it gave up on its own deadline (a handler
    │   │                        raises it; botd's own timeouts are cancel scopes)
    │   ├── SimulatedFailure     ... on purpose (botd.handlers: simulate)
    │   ├── ExitStatusError      ... its command exited non-zero (botd.handlers: exec)
    │   └── SpawnError           ... its command could not start (botd.handlers: exec)
    ├── HttpError                an HTTP error answer: status, error code, message, holder
    │   ├── RequestRejected      the bot's view of one (a ServerError too, below)
    │   ├── StoreRejected        the server's store refusing a request (a StoreError too)
    │   └── _InvalidRequest      400 invalid_request: a body that does not decode
    │                            (botd.server.wire)
    ├── ServerError              talking to the main server failed
    │   ├── ServerUnavailable    retryable: network errors, timeouts, 408/425/429, 5xx
    │   │   └── TlsFailure       ... a TLS check failed (botd.tls says which): an ERROR
    │   ├── ProtocolError        the server answered something we cannot read
    │   ├── Unrecoverable        401/403: retrying will not help
    │   └── RequestRejected      any other 4xx, carrying the server's error code
    │       ├── UnknownBot           404 unknown_bot: register again
    │       ├── SessionSuperseded    409 session_superseded: register again
    │       ├── SessionTokenRefused  401 to a session token: the server forgot the
    │       │                        session; register again
    │       ├── BotIdInUse           409 bot_id_in_use: a live session holds the bot id;
    │       │                        register again later
    │       ├── JobNotFound          404 unknown_job: check the id (a producer's error)
    │       ├── JobFinished          409 job_finished: a finished job cannot be cancelled
    │       └── JobNotRetryable      409 job_not_retryable: only dead or failed jobs retry
    ├── WaitTimeout              a producer's wait ended before its job did (carries the job)
    └── StoreError               the reference server's job store (botd.server.store.errors)
        ├── StoreUnavailable     the database failed: 503 store_unavailable
        ├── StoreIncompatible    the database's schema is newer: the server exits 78
        └── StoreRejected        the state does not allow the request (an HttpError too)

:class:`HttpError` is the one ``(status, code, message)`` error: the server's routes raise
it, and its store's :class:`~botd.server.store.errors.StoreRejected`, to answer
``{"error": {"code", "message"}}``; the bot's client raises :class:`RequestRejected` when
it reads such an answer, and the admin client (``botd.admin_client``) one of the three
job errors for their codes. Private exceptions that never leave their module (``_Unreachable``
in botd.status) are not part of the tree.

Third-party exceptions are translated at one boundary each: httpx's in
:func:`botd.transport_errors.map_transport_errors` for the bot and in the admin client
(``botd.admin_client``) for the commands, cattrs' in :func:`botd.codec.structure`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import JobView, SessionHolder

__all__ = [
    "BotIdInUse",
    "BotdError",
    "CircuitOpen",
    "ConfigError",
    "EncodeError",
    "HttpError",
    "InvalidTransition",
    "JobError",
    "JobFinished",
    "JobNotFound",
    "JobNotRetryable",
    "JobTimeout",
    "PermanentError",
    "ProtocolError",
    "RequestRejected",
    "ServerError",
    "ServerUnavailable",
    "SessionSuperseded",
    "SessionTokenRefused",
    "StateDirError",
    "TlsFailure",
    "UnknownBot",
    "Unrecoverable",
    "WaitTimeout",
    "leaf_exceptions",
]


class BotdError(Exception):
    """Raised by botd on purpose; the root of every botd error."""


class ConfigError(BotdError):
    """Raised when the configuration is invalid; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class StateDirError(BotdError):
    """Raised when the state dir (the outbox) is corrupt, unreadable or unwritable."""


class EncodeError(BotdError, ValueError):
    """Raised by :mod:`botd.codec` when a value is not JSON within the protocol's bounds
    (NaN or Infinity, nested deeper than 64, an integer past 64 bits, a lone surrogate);
    the message names the path, such as ``$.result.a[3]``. A ValueError too, for callers
    that caught json's."""


class InvalidTransition(BotdError):
    """Raised when the lifecycle is asked for a transition that its table does not allow."""


class CircuitOpen(BotdError):
    """Raised when a call is refused because its circuit breaker is open."""

    def __init__(self, breaker: str, retry_in: float) -> None:
        self.breaker = breaker
        self.retry_in = retry_in
        super().__init__(f"circuit breaker {breaker!r} is open; next probe in {retry_in:.1f}s")


class JobError(BotdError):
    """Raised by a job handler when a job fails; retryable unless it is a PermanentError."""

    retryable: bool = True
    type: str = "error"


class PermanentError(JobError):
    """Raised by a job handler when the job failed and must not be retried."""

    retryable = False
    type = "permanent"


class JobTimeout(JobError):
    """Raised by a job handler that gave up because the job outlived a deadline of its own;
    acked as a retryable ``timeout``, like the job timeout botd enforces with a cancel scope."""

    type = "timeout"


class HttpError(BotdError):
    """Raised for an HTTP error answer: its ``status``, error ``code`` and ``message``, and
    for a superseded session who holds the bot id now (``holder``, when known)."""

    #: How ``str()`` of the error reads.
    template = "{status} {code}: {message}"

    def __init__(
        self, status: int, code: str, message: str, holder: SessionHolder | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.holder = holder
        super().__init__(self.template.format(status=status, code=code, message=message))


class ServerError(BotdError):
    """Raised when a request to the main server fails."""

    retryable: bool = False


class ServerUnavailable(ServerError):
    """Raised when the server cannot be reached or answers 408/425/429/5xx; retry with backoff."""

    retryable = True


class TlsFailure(ServerUnavailable):
    """Raised when a TLS check failed (the server's certificate, or ours; the message says
    which). Retried with backoff, since a rotated certificate may fix it, but logged as an
    ERROR: it is usually a configuration mistake."""


class ProtocolError(ServerError):
    """Raised when the server's answer is not JSON or not of the contracted shape."""

    retryable = True


class Unrecoverable(ServerError):
    """Raised when the server answers 401/403: the token is wrong and retrying will not help."""


class RequestRejected(ServerError, HttpError):
    """Raised when the server answers a 4xx other than 401/403; ``code`` is its error code."""

    template = "server rejected the request ({status} {code}): {message}"


class UnknownBot(RequestRejected):
    """Raised when the server does not know this bot (404 unknown_bot); register again."""


class SessionSuperseded(RequestRejected):
    """Raised when the bot's session was replaced (409 session_superseded); register again.

    ``holder`` says who holds the bot id now, when the server tells (an extension).
    """


class SessionTokenRefused(RequestRejected):
    """Raised when the server answers 401 to a request sent with a session token: it no
    longer knows that session (superseded long ago, or a new database); register again."""


class BotIdInUse(RequestRejected):
    """Raised when a register is refused because a live session holds the bot id (409
    ``bot_id_in_use``); ``holder`` names its host and pid. Register again later: the id is
    free once that session deregisters or goes silent."""


class JobNotFound(RequestRejected):
    """Raised when the server does not know the job (404 unknown_job): check the id; a
    finished job is deleted after the server's retention."""

    template = "no such job ({status} {code}): {message}"


class JobFinished(RequestRejected):
    """Raised when a job to cancel has already finished (409 job_finished)."""

    template = "the job has already finished ({status} {code}): {message}"


class JobNotRetryable(RequestRejected):
    """Raised when a job to retry is neither dead nor failed (409 job_not_retryable)."""

    template = "the job cannot be retried ({status} {code}): {message}"


class WaitTimeout(BotdError, TimeoutError):
    """Raised when a wait for a job ends before the job does; ``job`` is its last view and
    ``timeout`` the seconds waited. The job goes on: wait again, or cancel it."""

    def __init__(self, job: JobView, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        super().__init__(
            f"job {job.job_id} is still {job.status} after {timeout:g}s: wait again, or cancel it"
        )


def leaf_exceptions(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every exception in ``group`` and its nested groups, in order (the groups themselves
    left out): what a nursery's error group is made of."""
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += leaf_exceptions(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out
