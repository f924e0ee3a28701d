"""The HTTP layer of the reference server: protocol v1 as a Starlette app.

:func:`create_app` builds the app around a :class:`~botd.server.store.Store`; the
:class:`ServerCore` it keeps in ``app.state.core`` holds what is not in the store: the long
poll's wake-up event, the lease-expiry timer task and the Prometheus metrics. No SQL lives
here.

Errors: every error body is ``{"error": {"code", "message"}}``. Bad input is 400
``invalid_request`` naming the field; a body over 1 MiB is 413 ``payload_too_large``; a
missing or wrong token is 401 ``unauthorized``; an unknown route is 404 ``not_found``; a
failing database is 503 ``store_unavailable`` (the server keeps running); anything
unexpected is logged and answered 500 ``internal_error``. The token is never logged or
returned.
"""

from __future__ import annotations

import collections
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import outcome
import trio
from loguru import logger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import codec
from .._version import __version__
from ..errors import BotdError
from ..models import (
    JOB_STATUSES,
    MAX_CLAIM_JOBS,
    Ack,
    BotList,
    ClaimRequest,
    ClaimResponse,
    Health,
    HeartbeatRequest,
    JobBatch,
    JobBatchResult,
    JobList,
    JobSubmit,
    RegisterRequest,
    RegisterResponse,
    SessionHolder,
)
from .dashboard import dashboard
from .store import BOT_STATUSES, Store, StoreIncompatible, StoreRejected, StoreUnavailable
from .store.base import PRUNE_BATCH

__all__ = [
    "DEFAULT_HEARTBEAT_INTERVAL_S",
    "DEFAULT_LEASE_TTL_S",
    "MAX_BODY_BYTES",
    "HttpError",
    "ServerCore",
    "ServerMetrics",
    "core_of",
    "create_app",
    "error_response",
]

T = TypeVar("T")

DEFAULT_LEASE_TTL_S = 30.0
DEFAULT_HEARTBEAT_INTERVAL_S = 5.0
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_LIST_LIMIT = 100
_TIMER_MAX_SLEEP_S = 1.0
_PRUNE_EVERY_S = 60.0


class HttpError(BotdError):
    """Raised inside a route to answer with an error body (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"{status} {code}: {message}")


class _InvalidRequest(BotdError):
    """Raised by codec.structure on a bad request body; becomes 400 invalid_request."""


def error_response(
    status: int, code: str, message: str, holder: SessionHolder | None = None
) -> Response:
    """A JSON error body ``{"error": {"code", "message"}}`` with ``status``; a superseded
    session's body also says who holds the bot id now (``holder``)."""
    detail: dict[str, Any] = {"code": code, "message": message}
    if holder is not None:
        detail["holder"] = codec.unstructure(holder)
    return Response(
        json.dumps({"error": detail}, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
    )


def _json(obj: Any, status: int = 200) -> Response:
    return Response(codec.dumps(obj), status_code=status, media_type="application/json")


class ServerMetrics:
    """The server's Prometheus metrics, on a registry of its own (``botd_server_`` prefix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.claims = Counter("botd_server_claims_total", "Claim requests answered.", registry=r)
        self.jobs_claimed = Counter(
            "botd_server_jobs_claimed_total", "Jobs handed out under a lease.", registry=r
        )
        self.jobs_submitted = Counter(
            "botd_server_jobs_submitted_total", "Jobs created by submit.", registry=r
        )
        self.acks = Counter(
            "botd_server_acks_total", "Acks applied, by result.", ["status"], registry=r
        )
        self.lease_expiries = Counter(
            "botd_server_lease_expiries_total",
            "Leases ended without an ack (expired or dropped at re-registration).",
            registry=r,
        )
        self.jobs = Gauge("botd_server_jobs", "Jobs by status.", ["status"], registry=r)
        self.bots = Gauge("botd_server_bots", "Bots by status.", ["status"], registry=r)
        self.store_up = Gauge(
            "botd_server_store_up", "1 when the last store query succeeded.", registry=r
        )
        self.oldest_queued = Gauge(
            "botd_server_oldest_queued_job_age_seconds",
            "Age of the oldest queued job, by kind (absent when none is queued).",
            ["kind"],
            registry=r,
        )
        self.claims_abandoned = Counter(
            "botd_server_claims_abandoned_total",
            "Long polls whose client went away; their leases, if any, were given back.",
            registry=r,
        )
        self.jobs_pruned = Counter(
            "botd_server_jobs_pruned_total",
            "Finished jobs deleted after the retention period.",
            registry=r,
        )
        for status in ("recorded", "duplicate", "conflict", "lease_lost", "unknown_lease"):
            self.acks.labels(status=status)

    async def refresh(self, store: Store) -> None:
        """Read the store's counts into the gauges; a failing store sets store_up 0."""
        try:
            stats = await store.stats()
            ages = await store.oldest_queued()
        except StoreUnavailable:
            self.store_up.set(0)
            return
        self.store_up.set(1)
        self.oldest_queued.clear()
        for kind, age in ages.items():
            self.oldest_queued.labels(kind=kind).set(age)
        for status in JOB_STATUSES:
            self.jobs.labels(status=status).set(stats.jobs.get(status, 0))
        for status in BOT_STATUSES:
            self.bots.labels(status=status).set(stats.bots.get(status, 0))


class ServerCore:
    """What the server keeps beside its store: long-poll wake-ups, the timer, metrics.

    A waiting claim sleeps on :attr:`_available`, an event that is set (and replaced) by
    every change that can make a job claimable: a submit, a release or failure ack, a lease
    expiry, a retry becoming due, a deregistration. Waiters take the event *before* they
    query the store, so a wake-up can never slip between their query and their wait.
    """

    def __init__(
        self,
        store: Store,
        *,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
        heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
        gone_after_s: float | None = None,
    ) -> None:
        if not lease_ttl_s > 0 or not heartbeat_interval_s > 0:
            raise ValueError("lease_ttl_s and heartbeat_interval_s must be > 0")
        self.store = store
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.gone_after_s = (
            gone_after_s if gone_after_s is not None else max(lease_ttl_s, 3 * heartbeat_interval_s)
        )
        self.metrics = ServerMetrics()
        self.closing = False
        self._available = trio.Event()
        self._schedule = trio.Event()

    def jobs_may_be_available(self) -> None:
        """Wake every waiting claim so it queries the store again."""
        self._available.set()
        self._available = trio.Event()

    def schedule_changed(self) -> None:
        """Wake the timer: a deadline earlier than the one it sleeps towards may exist."""
        self._schedule.set()

    def close(self) -> None:
        """Stop long polls: waiting claims answer at once with what they have."""
        self.closing = True
        self.jobs_may_be_available()

    def after_acks(self, acks: list[Ack]) -> None:
        """Wake waiters and the timer when acks may have requeued a job."""
        if any(a.outcome != "succeeded" for a in acks):
            self.jobs_may_be_available()
            self.schedule_changed()

    async def claim(self, req: ClaimRequest, *, gone: trio.Event | None = None) -> ClaimResponse:
        """Apply the acks and claim; if nothing is due, wait up to wait_s for a job.

        Ends when: jobs were leased, ``wait_s`` passed, the server is closing, or ``gone``
        is set (the client went away: a claim that waits for nobody takes no job).
        Errors: StoreRejected/StoreUnavailable from the store, as they come.
        """
        deadline = trio.current_time() + req.wait_s
        event = self._available
        first = await self.store.claim(req, lease_ttl_s=self.lease_ttl_s)
        self.after_acks(req.acks)
        jobs = first.jobs
        retry = attrs.evolve(req, acks=[])
        while not jobs and req.max_jobs > 0 and not self.closing:
            with trio.move_on_at(deadline) as scope:
                await _first_of(event, gone)
            if scope.cancelled_caught or self.closing or (gone is not None and gone.is_set()):
                break
            event = self._available
            jobs = (await self.store.claim(retry, lease_ttl_s=self.lease_ttl_s)).jobs
        self.metrics.claims.inc()
        self.metrics.jobs_claimed.inc(len(jobs))
        for status, count in collections.Counter(r.status for r in first.acks).items():
            self.metrics.acks.labels(status=status).inc(count)
        return ClaimResponse(jobs=jobs, acks=first.acks)

    async def run_timers(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Expire leases on time and wake waiters when a lease expires or a retry is due.

        Sleeps until the store's next deadline (at most 1 s, so silent bots are marked gone),
        or until :meth:`schedule_changed`. This function never returns unless cancelled.
        Errors: a failing store is logged and retried after 1 s. StoreIncompatible (the
        database, reachable at last, has a newer schema) is raised: it stops the server,
        which exits 78.
        """
        task_status.started()
        down = False  # log the outage once, and its end, not every second of it
        # The earliest deadline seen and not yet passed. It is kept across passes: a store
        # reports only deadlines still ahead, and one that passes while a pass queries the
        # store (a retry due a moment after the 1 s bound) must still wake the waiters.
        pending: float | None = None
        while True:
            self._schedule = trio.Event()
            schedule = self._schedule
            wake_at = trio.current_time() + _TIMER_MAX_SLEEP_S
            try:
                report = await self.store.expire(gone_after_s=self.gone_after_s)
                if report.expired:
                    self.metrics.lease_expiries.inc(report.expired)
                    logger.bind(
                        event="leases_expired",
                        expired=report.expired,
                        requeued=report.requeued,
                        dead=report.dead,
                    ).info("leases expired")
                if report.requeued:
                    self.jobs_may_be_available()
                if report.gone:
                    logger.bind(event="bots_gone", count=report.gone).info("bots went silent")
                nxt = await self.store.next_deadline()
                if down:
                    down = False
                    logger.bind(event="timer_store_recovered").info(
                        "lease expiry resumed: the store answers again"
                    )
                if nxt is not None:
                    pending = nxt if pending is None else min(pending, nxt)
            except StoreUnavailable as exc:
                if not down:
                    down = True
                    logger.bind(event="timer_store_unavailable", error=str(exc)).warning(
                        "lease expiry paused: the store is unavailable (retried every second)"
                    )
            if pending is not None:
                wake_at = min(wake_at, pending)
            with trio.move_on_at(wake_at):
                await schedule.wait()
            if pending is not None and trio.current_time() >= pending:
                # A lease or retry deadline passed: a retry may have become due.
                pending = None
                self.jobs_may_be_available()

    async def run_pruning(self, retention_s: float) -> None:
        """Delete finished jobs older than ``retention_s``, a batch at a time, every minute.

        Never returns unless cancelled; a failing store is logged and tried again later.
        """
        while True:
            pruned = 0
            try:
                while True:
                    n = await self.store.prune(older_than_s=retention_s)
                    pruned += n
                    if n < PRUNE_BATCH:
                        break
            except StoreUnavailable as exc:
                logger.bind(event="prune_store_unavailable", error=str(exc)).warning(
                    "pruning skipped: the store is unavailable"
                )
            if pruned:
                self.metrics.jobs_pruned.inc(pruned)
                logger.bind(event="jobs_pruned", count=pruned).info("finished jobs pruned")
            await trio.sleep(_PRUNE_EVERY_S)


async def _first_of(event: trio.Event, other: trio.Event | None) -> None:
    """Wait until ``event`` or ``other`` is set."""
    if other is None:
        await event.wait()
        return
    async with trio.open_nursery() as nursery:

        async def until(which: trio.Event) -> None:
            await which.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(until, event)
        nursery.start_soon(until, other)


async def _watch_disconnect(request: Request, gone: trio.Event) -> None:
    """Set ``gone`` when the client of ``request`` (body already read) disconnects."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            gone.set()
            return


class _RateLimitedLog:
    """One WARNING per ``every_s`` at most, with how many were left out since the last one:
    an outage of the database fails every request, and must not flood the log."""

    def __init__(self, event: str, *, every_s: float) -> None:
        self.event = event
        self.every_s = every_s
        self._last = -float("inf")
        self._suppressed = 0

    def warn(self, path: str, message: str) -> None:
        now = trio.current_time()
        if now - self._last < self.every_s:
            self._suppressed += 1
            return
        logger.bind(event=self.event, path=path, suppressed=self._suppressed).warning(message)
        self._last, self._suppressed = now, 0


def core_of(app: Starlette) -> ServerCore:
    """The :class:`ServerCore` of an app made by :func:`create_app`."""
    core = app.state.core
    assert isinstance(core, ServerCore)
    return core


# --- request helpers --------------------------------------------------------------------


async def _body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise HttpError(
            413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes; send less"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HttpError(
                413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes; send less"
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _decode(request: Request, cls: type[T]) -> T:
    raw = await _body(request)
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(
            400, "invalid_request", f"the body is not valid JSON ({exc}); send a JSON object"
        ) from None
    if data is None:
        raise HttpError(400, "invalid_request", f"the body is empty; send a {cls.__name__} object")
    try:
        return codec.structure(data, cls, error=_InvalidRequest, what=cls.__name__)
    except _InvalidRequest as exc:
        raise HttpError(400, "invalid_request", f"{exc}; fix the field and retry") from None


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise HttpError(
            400, "invalid_request", f"query parameter {name!r} must be an integer {lo}..{hi}"
        )
    return value


Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    store: Store,
    *,
    token: str | None = None,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
    gone_after_s: float | None = None,
) -> Starlette:
    """Build the protocol v1 app around ``store``.

    Args:
        store: the job store (opened by the caller, or lazily on first use).
        token: when set, every ``/v1`` route except ``GET /v1/health`` needs
            ``Authorization: Bearer <token>``.
        lease_ttl_s: how long a lease lives without a heartbeat.
        heartbeat_interval_s: told to bots at registration.
        gone_after_s: silence after which a bot shows as ``gone`` (default
            ``max(lease_ttl_s, 3 * heartbeat_interval_s)``).

    The lease-expiry timer is not started here: run ``core_of(app).run_timers`` in a
    nursery (``botd.server.run.serve`` does). Errors: see the module docstring.
    """
    core = ServerCore(
        store,
        lease_ttl_s=lease_ttl_s,
        heartbeat_interval_s=heartbeat_interval_s,
        gone_after_s=gone_after_s,
    )
    expected = token.encode() if token else None
    unavailable_log = _RateLimitedLog("store_unavailable", every_s=1.0)

    def check_auth(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HttpError(
                401,
                "unauthorized",
                "missing or wrong token; send 'Authorization: Bearer <token>' with the"
                " server's token",
            )

    def endpoint(fn: Endpoint, *, auth: bool = True) -> Endpoint:
        async def handle(request: Request) -> Response:
            try:
                if auth:
                    check_auth(request)
                return await fn(request)
            except HttpError as exc:
                return error_response(exc.status, exc.code, exc.message)
            except StoreRejected as exc:
                return error_response(exc.status, exc.code, exc.message, exc.holder)
            except StoreIncompatible as exc:
                # Found after a degraded start; the expiry task stops the server (exit 78).
                return error_response(503, "store_unavailable", str(exc))
            except StoreUnavailable as exc:
                unavailable_log.warn(request.url.path, str(exc))
                return error_response(
                    503,
                    "store_unavailable",
                    f"the server's database failed ({exc}); retry later and tell its operator",
                )
            except Exception:
                logger.bind(event="internal_error", path=request.url.path).exception(
                    "request failed"
                )
                return error_response(
                    500, "internal_error", "the server failed unexpectedly; retry later"
                )

        return handle

    async def health(request: Request) -> Response:
        try:
            await store.health()
        except StoreUnavailable as exc:
            return _json(Health(status="degraded", database=str(exc), version=__version__), 503)
        return _json(Health(status="ok", database="ok", version=__version__))

    async def openapi(request: Request) -> Response:
        from .openapi import openapi_document

        return _json(openapi_document(__version__))

    async def register(request: Request) -> Response:
        req = await _decode(request, RegisterRequest)
        session_id, requeued = await store.register(req, lease_ttl_s=core.lease_ttl_s)
        if requeued:
            core.jobs_may_be_available()
        logger.bind(event="bot_registered", bot_id=req.bot_id, session_id=session_id).info(
            "bot registered"
        )
        return _json(
            RegisterResponse(
                bot_id=req.bot_id,
                session_id=session_id,
                heartbeat_interval_s=core.heartbeat_interval_s,
                lease_ttl_s=core.lease_ttl_s,
                server_version=__version__,
            )
        )

    async def list_bots(request: Request) -> Response:
        return _json(BotList(bots=await store.list_bots()))

    async def get_bot(request: Request) -> Response:
        return _json(await store.get_bot(request.path_params["bot_id"]))

    async def heartbeat(request: Request) -> Response:
        req = await _decode(request, HeartbeatRequest)
        bot_id = request.path_params["bot_id"]
        answer, requeued = await store.heartbeat(bot_id, req, lease_ttl_s=core.lease_ttl_s)
        if requeued:
            core.jobs_may_be_available()
            logger.bind(event="leases_not_received", bot_id=bot_id, requeued=requeued).info(
                "released leases the bot never received; their attempts were given back"
            )
        return _json(answer)

    async def deregister(request: Request) -> Response:
        bot_id = request.path_params["bot_id"]
        session_id = request.query_params.get("session_id")
        if not session_id:
            raise HttpError(
                400, "invalid_request", "query parameter 'session_id' is required; send yours"
            )
        requeued = await store.deregister(bot_id, session_id)
        if requeued:
            core.jobs_may_be_available()
        logger.bind(event="bot_deregistered", bot_id=bot_id, requeued=requeued).info(
            "bot deregistered"
        )
        return Response(status_code=204)

    async def submit(request: Request) -> Response:
        job = await _decode(request, JobSubmit)
        view, created = await store.submit(job)
        if created:
            core.metrics.jobs_submitted.inc()
            core.jobs_may_be_available()
        return _json(view, 201 if created else 200)

    async def submit_batch(request: Request) -> Response:
        batch = await _decode(request, JobBatch)
        done = await store.submit_many(batch.jobs)
        created = sum(1 for _, new in done if new)
        if created:
            core.metrics.jobs_submitted.inc(created)
            core.jobs_may_be_available()
        answer = JobBatchResult(jobs=[view for view, _ in done], created=created)
        return _json(answer, 201 if created else 200)

    async def list_jobs(request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in JOB_STATUSES:
            raise HttpError(
                400,
                "invalid_request",
                f"query parameter 'status' must be one of {', '.join(JOB_STATUSES)}",
            )
        limit = _int_param(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_CLAIM_JOBS)
        return _json(JobList(jobs=await store.list_jobs(status=status, limit=limit)))

    async def get_job(request: Request) -> Response:
        return _json(await store.get_job(request.path_params["job_id"]))

    async def cancel_job(request: Request) -> Response:
        view = await store.cancel_job(request.path_params["job_id"])
        logger.bind(event="job_cancelled", job_id=view.job_id).info("job cancelled")
        return _json(view)

    async def stats(request: Request) -> Response:
        return _json(await store.stats())

    async def claim(request: Request) -> Response:
        req = await _decode(request, ClaimRequest)
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            if req.wait_s > 0:
                nursery.start_soon(_watch_disconnect, request, gone)
            # Captured, so that a store error leaves this nursery as itself, not as a group.
            claimed = await outcome.acapture(core.claim, req, gone=gone)
            nursery.cancel_scope.cancel()
        answer = claimed.unwrap()
        if gone.is_set():
            # Nobody will read this answer: give its leases back without spending attempts.
            core.metrics.claims_abandoned.inc()
            leases = [job.lease_id for job in answer.jobs]
            requeued = await store.release(leases) if leases else 0
            if requeued:
                core.jobs_may_be_available()
            logger.bind(event="claim_abandoned", bot_id=req.bot_id, released=requeued).info(
                "the client went away during its long poll; no job was handed out"
            )
        return _json(answer)

    async def ack(request: Request) -> Response:
        body = await _decode(request, Ack)
        lease_id = request.path_params["lease_id"]
        if body.lease_id != lease_id:
            raise HttpError(
                400,
                "invalid_request",
                f"Ack: $.lease_id {body.lease_id!r} does not match the path's {lease_id!r}",
            )
        result = await store.ack(body)
        core.metrics.acks.labels(status=result.status).inc()
        if result.status == "recorded":
            core.after_acks([body])
        if result.status in ("recorded", "duplicate"):
            return _json({"status": result.status})
        status = 404 if result.status == "unknown_lease" else 409
        return error_response(status, result.status, f"lease {lease_id!r}: {result.message}")

    async def metrics(request: Request) -> Response:
        await core.metrics.refresh(store)
        return Response(generate_latest(core.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(
                404, "not_found", f"no route {request.url.path!r}; see GET /v1/openapi.json"
            )
        if exc.status_code == 405:
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed on {request.url.path!r};"
                " see GET /v1/openapi.json",
            )
        return error_response(exc.status_code, "http_error", str(exc.detail))

    routes = [
        Route("/", endpoint(dashboard, auth=False), methods=["GET"]),
        Route("/v1/health", endpoint(health, auth=False), methods=["GET"]),
        Route("/v1/openapi.json", endpoint(openapi), methods=["GET"]),
        Route("/v1/bots/register", endpoint(register), methods=["POST"]),
        Route("/v1/bots", endpoint(list_bots), methods=["GET"]),
        Route("/v1/bots/{bot_id}", endpoint(get_bot), methods=["GET"]),
        Route("/v1/bots/{bot_id}", endpoint(deregister), methods=["DELETE"]),
        Route("/v1/bots/{bot_id}/heartbeat", endpoint(heartbeat), methods=["POST"]),
        Route("/v1/jobs/claim", endpoint(claim), methods=["POST"]),
        Route("/v1/jobs", endpoint(submit), methods=["POST"]),
        Route("/v1/jobs/batch", endpoint(submit_batch), methods=["POST"]),
        Route("/v1/jobs", endpoint(list_jobs), methods=["GET"]),
        Route("/v1/jobs/{job_id}", endpoint(get_job), methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", endpoint(cancel_job), methods=["POST"]),
        Route("/v1/stats", endpoint(stats), methods=["GET"]),
        Route("/v1/leases/{lease_id}/ack", endpoint(ack), methods=["POST"]),
        Route("/metrics", endpoint(metrics, auth=False), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.core = core
    return app
