"""The HTTP layer of the reference server: protocol v1 as a Starlette app.

:func:`create_app` builds the app around a :class:`~botd.server.store.Store`: one route per
endpoint of the protocol, each a few lines that decode (:mod:`.wire`), call the store or
the :class:`~botd.server.core.ServerCore` it keeps in ``app.state.core`` (long polls,
timers, metrics), and encode. No SQL lives here.

Errors: every error body is ``{"error": {"code", "message"}}``. Bad input is 400
``invalid_request`` naming the field; a body over 1 MiB is 413 ``payload_too_large``; a
missing or wrong token is 401 ``unauthorized``; an unknown route is 404 ``not_found``; a
failing database is 503 ``store_unavailable`` (the server keeps running); anything
unexpected is logged and answered 500 ``internal_error``. The token is never logged or
returned.

Who may call what (:mod:`.auth`): each route names the roles it admits and whether a
session token may call it. A call outside the caller's role is 403 ``forbidden`` naming
the role it needs; a session's call for another bot or session is 403
``not_session_owner``; an ack of a lease another bot claimed is 403 ``not_lease_owner``.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Collection

import attrs
import outcome
import trio
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._version import __version__
from ..errors import HttpError
from ..events import Event
from ..models import (
    JOB_STATUSES,
    MAX_WAIT_S,
    Ack,
    BotList,
    ClaimRequest,
    Health,
    HeartbeatRequest,
    JobBatch,
    JobBatchResult,
    JobList,
    JobSubmit,
    JobView,
    RegisterRequest,
    RegisterResponse,
    RetryRequest,
    RetryResult,
)
from .auth import ADMIN, ALL_ROLES, Caller, Gate, Tokens, own_session, shown_to
from .core import DEFAULT_HEARTBEAT_INTERVAL_S, DEFAULT_LEASE_TTL_S, ServerCore
from .dashboard import dashboard
from .store import Store, StoreIncompatible, StoreUnavailable
from .store.records import token_hash
from .wire import (
    DEFAULT_PAGE,
    MAX_PAGE,
    cursor,
    cursor_param,
    decode,
    error_response,
    float_param,
    int_param,
    json_response,
    path_param,
    text_param,
    watch_disconnect,
)

__all__ = ["caller_of", "core_of", "create_app", "gate_of"]


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


def gate_of(app: Starlette) -> Gate:
    """The :class:`~.auth.Gate` of an app made by :func:`create_app`: set its ``tokens``
    to admit others from the next request on (a reloaded tokens file)."""
    gate = app.state.gate
    assert isinstance(gate, Gate)
    return gate


def caller_of(request: Request) -> Caller:
    """Who made ``request`` (set by the route's authentication)."""
    caller = getattr(request.state, "caller", ADMIN)
    assert isinstance(caller, Caller)
    return caller


Endpoint = Callable[[Request], Awaitable[Response]]


def create_app(
    store: Store,
    *,
    token: str | None = None,
    tokens: Tokens | None = None,
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
    gone_after_s: float | None = None,
) -> Starlette:
    """Build the protocol v1 app around ``store``.

    Args:
        store: the job store (opened by the caller, or lazily on first use).
        token: when set, every ``/v1`` route except ``GET /v1/health`` needs
            ``Authorization: Bearer <token>``: an admin token.
        tokens: the tokens and their roles (with ``token``, which is one more admin
            token); replace them later with :func:`set_tokens`. Neither: dev mode.
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
    initial = tokens if tokens is not None else Tokens()
    if token:
        initial = Tokens.of(token, initial.entries)
    unavailable_log = _RateLimitedLog(Event.STORE_UNAVAILABLE, every_s=1.0)
    gate = Gate(initial, store.session_of)

    def endpoint(
        fn: Endpoint,
        *,
        auth: bool = True,
        roles: Collection[str] = ("producer", "admin"),
        session: bool = False,
    ) -> Endpoint:
        """``fn`` behind the authentication: ``roles`` admit a caller of the tokens table
        (admin always), ``session`` a session token."""

        async def handle(request: Request) -> Response:
            try:
                if auth:
                    caller = await gate.caller(request.headers.get("authorization", ""))
                    gate.admit(caller, roles, session=session)
                    request.state.caller = caller
                return await fn(request)
            except HttpError as exc:  # the routes' own, and the store's StoreRejected
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
                logger.bind(event=Event.INTERNAL_ERROR, path=request.url.path).exception(
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
            return json_response(
                Health(status="degraded", database=str(exc), version=__version__), 503
            )
        return json_response(Health(status="ok", database="ok", version=__version__))

    async def openapi(request: Request) -> Response:
        from .openapi import openapi_document

        return json_response(openapi_document(__version__))

    async def register(request: Request) -> Response:
        req = await decode(request, RegisterRequest)
        caller = caller_of(request)
        # A worker may not take a live session's bot id; an admin supersedes it (v1).
        worker = caller.role == "worker"
        previous = req.previous_session_token if worker else None
        session_token = secrets.token_urlsafe(32)
        session_id, requeued = await store.register(
            req,
            lease_ttl_s=core.lease_ttl_s,
            token_hash=token_hash(session_token),
            exclusive_s=core.gone_after_s if worker else None,
            previous_hash=token_hash(previous) if previous else None,
        )
        core.jobs_may_have_ended()  # leases it dropped on their last attempt are dead
        if requeued:
            core.jobs_may_be_available()
        logger.bind(
            event=Event.BOT_REGISTERED, bot_id=req.bot_id, role=caller.role, token=caller.name
        ).info("bot registered")
        return json_response(
            RegisterResponse(
                bot_id=req.bot_id,
                session_id=session_id,
                heartbeat_interval_s=core.heartbeat_interval_s,
                lease_ttl_s=core.lease_ttl_s,
                server_version=__version__,
                session_token=session_token,
            )
        )

    async def list_bots(request: Request) -> Response:
        limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        page, last = await store.page_bots(limit=limit, after=cursor_param(request, "bots"))
        # The list never shows a session id or lease ids, whoever asks (lease_count does).
        bots = [attrs.evolve(bot, session_id=None, active_leases=[]) for bot in page]
        next_cursor = None if last is None else cursor("bots", last)
        return json_response(BotList(bots=bots, next_cursor=next_cursor))

    async def get_bot(request: Request) -> Response:
        bot = await store.get_bot(path_param(request, "bot_id"))
        return json_response(shown_to(caller_of(request), bot))

    async def heartbeat(request: Request) -> Response:
        req = await decode(request, HeartbeatRequest)
        bot_id = path_param(request, "bot_id")
        own_session(caller_of(request), bot_id, req.session_id)
        answer, requeued = await store.heartbeat(bot_id, req, lease_ttl_s=core.lease_ttl_s)
        if requeued:
            core.jobs_may_be_available()
            logger.bind(event=Event.LEASES_NOT_RECEIVED, bot_id=bot_id, requeued=requeued).info(
                "released leases the bot never received; their attempts were given back"
            )
        return json_response(answer)

    async def deregister(request: Request) -> Response:
        bot_id = path_param(request, "bot_id")
        session_id = text_param(request, "session_id", required=True)
        assert session_id is not None
        own_session(caller_of(request), bot_id, session_id)
        requeued = await store.deregister(bot_id, session_id)
        if requeued:
            core.jobs_may_be_available()
        logger.bind(event=Event.BOT_DEREGISTERED, bot_id=bot_id, requeued=requeued).info(
            "bot deregistered"
        )
        return Response(status_code=204)

    async def submit(request: Request) -> Response:
        job = await decode(request, JobSubmit)
        view, created = await store.submit(job)
        if created:
            core.metrics.jobs_submitted.inc()
            submitted([view])
        return json_response(view, 201 if created else 200)

    def submitted(views: list[JobView]) -> None:
        core.jobs_may_be_available()
        if any(view.run_at is not None for view in views):
            core.schedule_changed()  # the timer wakes waiting claims when they come due

    async def submit_batch(request: Request) -> Response:
        batch = await decode(request, JobBatch)
        done = await store.submit_many(batch.jobs)
        created = sum(1 for _, new in done if new)
        if created:
            core.metrics.jobs_submitted.inc(created)
            submitted([view for view, new in done if new])
        answer = JobBatchResult(jobs=[view for view, _ in done], created=created)
        return json_response(answer, 201 if created else 200)

    async def list_jobs(request: Request) -> Response:
        status = request.query_params.get("status")
        if status is not None and status not in JOB_STATUSES:
            raise HttpError(
                400,
                "invalid_request",
                f"query parameter 'status' must be one of {', '.join(JOB_STATUSES)}",
            )
        limit = int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        kind = text_param(request, "kind")
        position = cursor_param(request, "jobs", number=True)
        before = None if position is None else int(position)
        jobs, last = await store.page_jobs(status=status, limit=limit, kind=kind, before=before)
        next_cursor = None if last is None else cursor("jobs", str(last))
        return json_response(JobList(jobs=jobs, next_cursor=next_cursor))

    async def get_job(request: Request) -> Response:
        job_id = path_param(request, "job_id")
        wait_s = float_param(request, "wait_s", 0.0, 0.0, MAX_WAIT_S)
        if wait_s == 0 or core.closing:
            return json_response(await store.get_job(job_id))
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, request, gone)
            # Captured, so that a store error leaves this nursery as itself, not as a group.
            waited = await outcome.acapture(core.wait_for_job, job_id, wait_s, gone=gone)
            nursery.cancel_scope.cancel()
        return json_response(waited.unwrap())

    async def cancel_job(request: Request) -> Response:
        view = await store.cancel_job(path_param(request, "job_id"))
        core.jobs_may_have_ended()
        logger.bind(event=Event.JOB_CANCELLED, job_id=view.job_id).info("job cancelled")
        return json_response(view)

    def retried(job_ids: list[str]) -> None:
        core.jobs_may_be_available()
        logger.bind(event=Event.JOBS_RETRIED, count=len(job_ids), job_ids=job_ids[:10]).info(
            "jobs queued again by a retry"
        )

    async def retry_job(request: Request) -> Response:
        view = await store.retry_job(path_param(request, "job_id"))
        retried([view.job_id])
        return json_response(view)

    async def retry_jobs(request: Request) -> Response:
        req = await decode(request, RetryRequest)
        ids = await store.retry_jobs(status=req.status, kind=req.kind, limit=req.limit)
        if ids:
            retried(ids)
        return json_response(RetryResult(retried=len(ids), job_ids=ids))

    async def stats(request: Request) -> Response:
        return json_response(await store.stats())

    async def claim(request: Request) -> Response:
        req = await decode(request, ClaimRequest)
        caller = caller_of(request)
        own_session(caller, req.bot_id, req.session_id)
        owner = caller.bot_id if caller.is_session else None
        pending = await core.start_claim(req, owner=owner)
        if pending.answer is not None:
            # Over at once (jobs leased, or no wait): no long poll, so nothing to watch.
            return json_response(pending.answer)
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, request, gone)
            # Captured, so that a store error leaves this nursery as itself, not as a group.
            claimed = await outcome.acapture(pending.wait, gone=gone)
            nursery.cancel_scope.cancel()
        answer = claimed.unwrap()
        if gone.is_set():
            # Nobody will read this answer: give its leases back without spending attempts.
            core.metrics.claims_abandoned.inc()
            leases = [job.lease_id for job in answer.jobs]
            requeued = await store.release(leases) if leases else 0
            if requeued:
                core.jobs_may_be_available()
            logger.bind(event=Event.CLAIM_ABANDONED, bot_id=req.bot_id, released=requeued).info(
                "the client went away during its long poll; no job was handed out"
            )
        return json_response(answer)

    async def ack(request: Request) -> Response:
        body = await decode(request, Ack)
        lease_id = path_param(request, "lease_id")
        if body.lease_id != lease_id:
            raise HttpError(
                400,
                "invalid_request",
                f"Ack: $.lease_id {body.lease_id!r} does not match the path's {lease_id!r}",
            )
        caller = caller_of(request)
        result = await store.ack(body, owner=caller.bot_id if caller.is_session else None)
        core.metrics.ack_results[result.status].inc()
        if result.status == "recorded":
            core.after_acks([body])
        if result.status in ("recorded", "duplicate"):
            return json_response({"status": result.status})
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
        Route(
            "/v1/openapi.json", endpoint(openapi, roles=ALL_ROLES, session=True), methods=["GET"]
        ),
        Route("/v1/bots/register", endpoint(register, roles=("worker",)), methods=["POST"]),
        Route("/v1/bots", endpoint(list_bots), methods=["GET"]),
        Route("/v1/bots/{bot_id}", endpoint(get_bot, session=True), methods=["GET"]),
        Route(
            "/v1/bots/{bot_id}", endpoint(deregister, roles=(), session=True), methods=["DELETE"]
        ),
        Route(
            "/v1/bots/{bot_id}/heartbeat",
            endpoint(heartbeat, roles=(), session=True),
            methods=["POST"],
        ),
        Route("/v1/jobs/claim", endpoint(claim, roles=(), session=True), methods=["POST"]),
        Route("/v1/jobs", endpoint(submit), methods=["POST"]),
        Route("/v1/jobs/batch", endpoint(submit_batch), methods=["POST"]),
        # Before any /v1/jobs/{job_id} route: "retry" is no job_id.
        Route("/v1/jobs/retry", endpoint(retry_jobs), methods=["POST"]),
        Route("/v1/jobs", endpoint(list_jobs), methods=["GET"]),
        Route("/v1/jobs/{job_id}", endpoint(get_job), methods=["GET"]),
        Route("/v1/jobs/{job_id}/cancel", endpoint(cancel_job), methods=["POST"]),
        Route("/v1/jobs/{job_id}/retry", endpoint(retry_job), methods=["POST"]),
        Route("/v1/stats", endpoint(stats), methods=["GET"]),
        Route("/v1/leases/{lease_id}/ack", endpoint(ack, roles=(), session=True), methods=["POST"]),
        Route("/metrics", endpoint(metrics, auth=False), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.core = core
    app.state.gate = gate
    return app
