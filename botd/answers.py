"""The server's answers, as the bot's client reads them.

- :func:`read_answer`: an answer read whole, up to its size cap, then refused
  (:class:`ProtocolError`: a broken or hostile server may send an endless body);
- :func:`error_of`: a non-2xx answer classified once, the way every caller sees it (the
  table in :mod:`botd.client`'s docstring);
- :func:`check_claim`: what a claim answer must hold beyond its shape.
"""

from __future__ import annotations

import json

import attrs
import httpx

from . import codec
from .errors import (
    BotIdInUse,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    SessionSuperseded,
    SessionTokenRefused,
    UnknownBot,
    Unrecoverable,
)
from .models import ClaimRequest, ClaimResponse, ErrorBody

__all__ = ["RETRYABLE_STATUS", "Answer", "check_claim", "error_of", "read_answer"]

#: The 4xx answers that mean "later" (request timeout, too early, too many requests): like a
#: 5xx, they are :class:`ServerUnavailable`.
RETRYABLE_STATUS = frozenset({408, 425, 429})


@attrs.frozen
class Answer:
    """An answer read whole (within its size cap): what the calls and :func:`error_of` read."""

    status_code: int
    reason_phrase: str
    content: bytes


async def read_answer(response: httpx.Response, path: str, cap: int) -> Answer:
    """Read a streamed ``response`` whole and close it, refusing it past ``cap`` bytes."""
    try:
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise _too_large(path, cap, int(length))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise _too_large(path, cap)
            chunks.append(chunk)
    finally:
        await response.aclose()
    return Answer(response.status_code, response.reason_phrase, b"".join(chunks))


def _too_large(path: str, cap: int, length: int | None = None) -> ProtocolError:
    size = f"{length} bytes" if length is not None else f"over {cap} bytes"
    return ProtocolError(
        f"{path}: the answer is {size}, over the limit of {cap} (BOT_RESPONSE_MAX_BYTES);"
        " it was not read further"
    )


def error_of(response: Answer, endpoint: str, *, session: bool = False) -> Exception:
    """Classify a non-2xx answer once, the way every caller sees it."""
    status = response.status_code
    code, message, holder = f"http_{status}", response.reason_phrase, None
    try:
        detail = codec.structure(json.loads(response.content), ErrorBody).error
        code, message, holder = detail.code, detail.message, detail.holder
    except (ValueError, ProtocolError):
        pass  # a proxy's HTML error page: keep the status line
    where = f"{endpoint}: {status} {code}: {message}"
    if status >= 500 or status in RETRYABLE_STATUS:
        return ServerUnavailable(where)
    if status == 401 and session:
        return SessionTokenRefused(status, code, f"{message} (the session token was refused)")
    if status in (401, 403):
        return Unrecoverable(f"{where} (check BOT_TOKEN / BOT_TOKEN_FILE)")
    if status == 404 and code == "unknown_bot":
        return UnknownBot(status, code, message)
    if status == 409 and code == "session_superseded":
        return SessionSuperseded(status, code, message, holder)
    if status == 409 and code == "bot_id_in_use":
        return BotIdInUse(status, code, message, holder)
    return RequestRejected(status, code, message)


def check_claim(request: ClaimRequest, answer: ClaimResponse) -> None:
    """A claim answer must hold at most ``max_jobs`` jobs, each with its own ids."""
    jobs = answer.jobs
    if len(jobs) > request.max_jobs:
        raise ProtocolError(
            f"claim response: {len(jobs)} jobs for max_jobs={request.max_jobs}; none is run"
            " (the server requeues leases that no heartbeat lists)"
        )
    for i, job in enumerate(jobs):
        if not job.job_id or not job.lease_id:
            raise ProtocolError(f"claim response: $.jobs[{i}]: empty job_id or lease_id")
    if len({job.lease_id for job in jobs}) < len(jobs):
        raise ProtocolError("claim response: a lease_id is listed twice")
