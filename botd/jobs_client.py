"""The producer's client: submit jobs to a main server, wait for them, cancel and retry them.

:class:`JobsClient` (httpx's sync client) and :class:`AsyncJobsClient` (its async client, in a
Trio run) have the same methods, each one request or a loop of them::

    with botd.JobsClient("http://127.0.0.1:3001") as jobs:
        job = jobs.submit("simulate", {"n": 1})
        print(jobs.wait(job.job_id, timeout=60).result)

Both stand on :mod:`botd.admin_client`, which sends the token, decodes the server's error
body and translates httpx's errors. What they raise (every one a :class:`botd.BotdError`):

- :class:`~botd.errors.JobNotFound` (404 ``unknown_job``), :class:`~botd.errors.JobFinished`
  (409 ``job_finished``, on cancel), :class:`~botd.errors.JobNotRetryable` (409
  ``job_not_retryable``, on retry); any other refusal :class:`~botd.errors.RequestRejected`;
- :class:`~botd.errors.Unrecoverable`: 401/403, the token is missing or wrong;
- :class:`~botd.errors.ServerUnavailable`: no answer, or 5xx/408/425/429: try again later;
- :class:`~botd.errors.ProtocolError`: an answer that is not what the protocol says;
- :class:`~botd.errors.WaitTimeout`: :meth:`JobsClient.wait` ran out of time (the job goes on);
- :class:`~botd.errors.ConfigError`: the token file cannot be read;
- ``ValueError`` / ``TypeError``: a submission out of range, before anything is sent.

The requests themselves are made by functions shared by both clients (``_submit`` and the
like), so the two cannot drift apart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, Literal, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import attrs
import httpx
import trio

from .admin_client import (
    AdminClient,
    Answer,
    AsyncAdminClient,
    Params,
    resolve_ca_file,
    resolve_token,
    server_url,
)
from .errors import WaitTimeout
from .models import (
    FINAL_JOB_STATUSES,
    MAX_BATCH,
    MAX_WAIT_S,
    JobBatch,
    JobBatchResult,
    JobList,
    JobStatus,
    JobSubmit,
    JobView,
    RetryableStatus,
    RetryRequest,
    RetryResult,
)
from .timestamps import rfc3339_of

__all__ = [
    "RETRY_PAGE",
    "AsyncJobsClient",
    "JobsClient",
    "SubmitOptions",
    "rfc3339_run_at",
]

T = TypeVar("T")
#: How many jobs one ``POST /v1/jobs/retry`` asks to put back (retry_all repeats it).
RETRY_PAGE = 1000
#: Seconds between two asks when the server answered a wait at once (a server that does
#: not hold ``GET /v1/jobs/{id}?wait_s``): then the client polls, at this pace.
POLL_S = 1.0
DEFAULT_TIMEOUT_S = 10.0
#: The finest ``wait_s`` a request carries (milliseconds): a wait with less left is over.
RESOLUTION_S = 0.001
RetryStatus = RetryableStatus
JobViews = list[JobView]
JobIds = list[str]


class SubmitOptions(TypedDict, total=False):
    """The keyword arguments of ``submit``, each optional (None: the server's default):
    ``run_at`` (a datetime with a zone, or RFC 3339 text) or ``delay_s`` hold the job until
    then; ``retry_base_s`` and ``retry_max_s`` shape its retry backoff."""

    max_attempts: int | None
    timeout_s: float | None
    priority: int | None
    idempotency_key: str | None
    run_at: datetime | str | None
    delay_s: float | None
    retry_base_s: float | None
    retry_max_s: float | None


def rfc3339_run_at(run_at: datetime | str) -> str:
    """``run_at`` as RFC 3339 UTC text; ``ValueError`` when it is not a time with a zone."""
    moment = datetime.fromisoformat(run_at) if isinstance(run_at, str) else run_at
    if moment.tzinfo is None:
        raise ValueError(f"run_at needs a time zone, e.g. 2030-01-31T12:00:00Z (got {run_at})")
    return rfc3339_of(moment)


# --- the requests, shared by both clients -------------------------------------------------


@attrs.frozen
class _Call(Generic[T]):
    """One request and the shape of its answer."""

    method: Literal["GET", "POST"]
    path: str
    answer: type[T]
    body: object = None
    params: Params | None = None
    wait_s: float = 0.0


def _job_path(job_id: str, action: str = "") -> str:
    return f"/v1/jobs/{quote(job_id, safe='')}{action}"


def _submit(job: JobSubmit) -> _Call[JobView]:
    return _Call("POST", "/v1/jobs", JobView, body=job)


def _batch(jobs: Sequence[JobSubmit]) -> _Call[JobBatchResult]:
    return _Call("POST", "/v1/jobs/batch", JobBatchResult, body=JobBatch(jobs=list(jobs)))


def _get(job_id: str, wait_s: float = 0.0) -> _Call[JobView]:
    params = {"wait_s": f"{wait_s:.3f}"} if wait_s >= RESOLUTION_S else None
    return _Call("GET", _job_path(job_id), JobView, params=params, wait_s=wait_s)


def _cancel(job_id: str) -> _Call[JobView]:
    return _Call("POST", _job_path(job_id, "/cancel"), JobView, body={})


def _retry(job_id: str) -> _Call[JobView]:
    return _Call("POST", _job_path(job_id, "/retry"), JobView, body={})


def _retry_all(status: RetryStatus, kind: str | None) -> _Call[RetryResult]:
    return _Call(
        "POST",
        "/v1/jobs/retry",
        RetryResult,
        body=RetryRequest(status=status, kind=kind, limit=RETRY_PAGE),
    )


def _list(status: JobStatus | None, kind: str | None, limit: int) -> _Call[JobList]:
    params: dict[str, str | int] = {"limit": limit}
    if status is not None:
        params["status"] = status
    if kind is not None:
        params["kind"] = kind
    return _Call("GET", "/v1/jobs", JobList, params=params)


def _job(kind: str, payload: Any, **options: Unpack[SubmitOptions]) -> JobSubmit:
    """A submission of the given fields; those left None take the protocol's defaults."""
    given: dict[str, Any] = {name: value for name, value in options.items() if value is not None}
    if "run_at" in given:
        given["run_at"] = rfc3339_run_at(given["run_at"])
    return JobSubmit(kind=kind, payload=payload, **given)


def _chunks(jobs: Sequence[JobSubmit]) -> list[Sequence[JobSubmit]]:
    return [jobs[i : i + MAX_BATCH] for i in range(0, len(jobs), MAX_BATCH)]


def _again(result: RetryResult, ids: dict[str, None]) -> bool:
    """Add the result's ids to ``ids``; whether retry_all should ask again: a full page, none
    of it seen before (jobs that died again while it ran would otherwise keep it going)."""
    fresh = ids.keys().isdisjoint(result.job_ids)
    ids.update(dict.fromkeys(result.job_ids))
    return fresh and result.retried >= RETRY_PAGE


@attrs.define
class _Wait:
    """The loop of :meth:`JobsClient.wait`, without its I/O: what to ask, when to stop."""

    clock: Callable[[], float]
    timeout: float
    deadline: float
    asked_at: float = 0.0
    asked_s: float = 0.0

    @classmethod
    def start(cls, timeout: float | None, clock: Callable[[], float]) -> _Wait:
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        limit = math.inf if timeout is None else timeout
        return cls(clock, limit, clock() + limit)

    def ask(self) -> float:
        """The ``wait_s`` of the next request: what is left, at most 30 s."""
        self.asked_at = self.clock()
        self.asked_s = min(MAX_WAIT_S, max(0.0, self.deadline - self.asked_at))
        return self.asked_s

    def pause(self, view: JobView) -> float | None:
        """None when ``view`` is final; else the seconds to pause before asking again.
        Raises :class:`WaitTimeout` when the deadline has passed."""
        if view.status in FINAL_JOB_STATUSES:
            return None
        now = self.clock()
        if self.deadline - now < RESOLUTION_S:  # not a float's crumb of time left to ask for
            raise WaitTimeout(view, self.timeout)
        if now - self.asked_at < self.asked_s / 2:  # the server did not hold the answer
            return min(POLL_S, self.deadline - now)
        return 0.0


def _read(answer: Answer, call: _Call[T]) -> T:
    return answer.expect().decode(call.answer)


# --- the clients --------------------------------------------------------------------------


class JobsClient:
    """A producer's requests to one main server, on httpx's sync client.

    Args:
      server: the server's base URL; default env ``MAIN_SERVER_URL``, else
        ``http://127.0.0.1:3001``.
      token: the bearer token; default env ``BOTD_TOKEN``, else the content of the file
        named by env ``BOTD_TOKEN_FILE``, else none.
      timeout: seconds for each request (a wait's long polls get their ``wait_s`` on top).
      transport: an httpx transport instead of the network (tests).
      ca_file: verify an https:// server against the CAs in this PEM file; default env
        ``BOTD_CA_FILE``, else the system's CA bundle.

    Resource handling: owns one HTTP connection pool; close it with :meth:`close` or ``with``.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        self.server = server_url(server)
        self._admin = AdminClient(
            self.server,
            token=resolve_token(token),
            timeout=timeout,
            transport=transport,
            ca_file=resolve_ca_file(ca_file),
        )

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._admin.close()

    def _do(self, call: _Call[T]) -> T:
        if call.method == "GET":
            return _read(self._admin.get(call.path, call.params, wait_s=call.wait_s), call)
        return _read(self._admin.post(call.path, call.body), call)

    def submit(self, kind: str, payload: Any = None, **options: Unpack[SubmitOptions]) -> JobView:
        """Queue one job (``POST /v1/jobs``) and return it; with an ``idempotency_key`` seen
        before, the job already queued under it. ``options``: :class:`SubmitOptions`."""
        return self._do(_submit(_job(kind, payload, **options)))

    def submit_many(self, jobs: Sequence[JobSubmit]) -> JobViews:
        """Queue ``jobs`` (``POST /v1/jobs/batch``, 1000 a request, each one transaction) and
        return them in order. If a request fails, the batches before it stay queued."""
        return [view for chunk in _chunks(jobs) for view in self._do(_batch(chunk)).jobs]

    def get(self, job_id: str) -> JobView:
        """The job as it is now."""
        return self._do(_get(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """The job once it is final (succeeded, failed, dead or cancelled), asking with long
        polls of up to 30 s. ``timeout``: seconds, None for no limit; when it passes, raises
        :class:`~botd.errors.WaitTimeout` with the job's last view (the job goes on)."""
        waiting = _Wait.start(timeout, time.monotonic)
        while True:
            view = self._do(_get(job_id, waiting.ask()))
            pause = waiting.pause(view)
            if pause is None:
                return view
            time.sleep(pause)

    def cancel(self, job_id: str) -> JobView:
        """Cancel the job (queued or leased); a cancelled one stays so. A job that finished
        otherwise raises :class:`~botd.errors.JobFinished`."""
        return self._do(_cancel(job_id))

    def retry(self, job_id: str) -> JobView:
        """Queue a dead or failed job again with a fresh attempt budget; any other raises
        :class:`~botd.errors.JobNotRetryable`."""
        return self._do(_retry(job_id))

    def retry_all(self, status: RetryStatus = "dead", kind: str | None = None) -> JobIds:
        """Queue every job of ``status`` (and ``kind``) again; return their ids."""
        ids: dict[str, None] = {}
        while _again(self._do(_retry_all(status, kind)), ids):
            pass
        return [*ids]

    def list(
        self, status: JobStatus | None = None, kind: str | None = None, limit: int = 100
    ) -> JobViews:
        """Up to ``limit`` (1..1000) jobs, newest first, of ``status`` and ``kind`` if given."""
        return self._do(_list(status, kind, limit)).jobs


class AsyncJobsClient:
    """:class:`JobsClient` on httpx's async client, for a Trio run: the same arguments (an
    ``httpx.AsyncBaseTransport``) and methods, each one awaited; waits sleep on Trio's clock.

    Resource handling: owns one HTTP connection pool; close it with :meth:`aclose` or
    ``async with``.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_file: str | Path | None = None,
    ) -> None:
        self.server = server_url(server)
        self._admin = AsyncAdminClient(
            self.server,
            token=resolve_token(token),
            timeout=timeout,
            transport=transport,
            ca_file=resolve_ca_file(ca_file),
        )

    async def __aenter__(self) -> AsyncJobsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._admin.aclose()

    async def _do(self, call: _Call[T]) -> T:
        if call.method == "GET":
            return _read(await self._admin.get(call.path, call.params, wait_s=call.wait_s), call)
        return _read(await self._admin.post(call.path, call.body), call)

    async def submit(
        self, kind: str, payload: Any = None, **options: Unpack[SubmitOptions]
    ) -> JobView:
        """See :meth:`JobsClient.submit`."""
        return await self._do(_submit(_job(kind, payload, **options)))

    async def submit_many(self, jobs: Sequence[JobSubmit]) -> JobViews:
        """See :meth:`JobsClient.submit_many`."""
        return [view for chunk in _chunks(jobs) for view in (await self._do(_batch(chunk))).jobs]

    async def get(self, job_id: str) -> JobView:
        """See :meth:`JobsClient.get`."""
        return await self._do(_get(job_id))

    async def wait(self, job_id: str, timeout: float | None = None) -> JobView:  # noqa: ASYNC109
        """See :meth:`JobsClient.wait`; the timeout runs on Trio's clock. (A ``timeout``, not a
        ``trio.fail_after`` around it: its WaitTimeout carries the job's last view.)"""
        waiting = _Wait.start(timeout, trio.current_time)
        while True:
            view = await self._do(_get(job_id, waiting.ask()))
            pause = waiting.pause(view)
            if pause is None:
                return view
            await trio.sleep(pause)

    async def cancel(self, job_id: str) -> JobView:
        """See :meth:`JobsClient.cancel`."""
        return await self._do(_cancel(job_id))

    async def retry(self, job_id: str) -> JobView:
        """See :meth:`JobsClient.retry`."""
        return await self._do(_retry(job_id))

    async def retry_all(self, status: RetryStatus = "dead", kind: str | None = None) -> JobIds:
        """See :meth:`JobsClient.retry_all`."""
        ids: dict[str, None] = {}
        while _again(await self._do(_retry_all(status, kind)), ids):
            pass
        return [*ids]

    async def list(
        self, status: JobStatus | None = None, kind: str | None = None, limit: int = 100
    ) -> JobViews:
        """See :meth:`JobsClient.list`."""
        return (await self._do(_list(status, kind, limit))).jobs
