"""Main servers with one known defect each, for testing the conformance suite.

Each :class:`Defect` is the reference server with one rule of docs/protocol.md broken by a
raw ASGI middleware in front of it, which may rewrite a request before the server sees
it, rewrite an answer before the client sees it, or hide the client's disconnect. The
server itself is the real one (SQLite in memory, its lease timer running), served by
hypercorn on 127.0.0.1 in the current Trio run: :func:`broken_server` yields its URL.

:data:`DEFECTS` maps each defect's name to the checks that must report it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from botd.server.app import core_of, create_app
from botd.server.store import SqliteStore

__all__ = ["DEFECTS", "DEFECT_TOKEN", "Defect", "broken_server"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: (method, path, request JSON) -> the request JSON to forward.
RequestRewrite = Callable[[str, str, Any], Any]


@attrs.frozen
class Seen:
    """An answer on its way back: the request it answers, its status and its JSON body."""

    method: str
    path: str
    request: Any
    status: int
    body: Any


#: An answer -> (status, answer JSON or :class:`Raw` bytes).
ResponseRewrite = Callable[[Seen], Awaitable[tuple[int, Any]]]

#: The token of the servers made for ``token_not_checked``.
DEFECT_TOKEN = "conformance-test-token"
ACK_PATH = re.compile(r"^/v1/leases/[^/]+/ack$")
HEARTBEAT_PATH = re.compile(r"^/v1/bots/[^/]+/heartbeat$")


@attrs.frozen
class Defect:
    """One broken rule: how requests and answers are changed, and who must notice."""

    name: str
    #: The checks that must fail against it.
    caught_by: frozenset[str]
    request: RequestRewrite | None = None
    response: ResponseRewrite | None = None
    #: Never tell the server that the client went away.
    hide_disconnect: bool = False
    #: Add ``Authorization: Bearer <this>`` to every request that has none.
    lets_in: str | None = None


class Raw(bytes):
    """An answer body to send as it is, with a text/html content type."""


def _wrap(app: ASGIApp, defect: Defect) -> ASGIApp:
    async def middleware(
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers_in = scope.get("headers", [])
        if defect.lets_in and not any(k.lower() == b"authorization" for k, _ in headers_in):
            auth = (b"authorization", f"Bearer {defect.lets_in}".encode())
            scope = {**scope, "headers": [*headers_in, auth]}
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        parsed = _loads(body)
        if defect.request is not None and parsed is not None:
            parsed = defect.request(method, path, parsed)
            body = json.dumps(parsed).encode()
        delivered = False

        async def new_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            if defect.hide_disconnect:
                await trio.sleep_forever()
            return await receive()

        start: Message = {}
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body"):
                return
            status, content = int(start["status"]), b"".join(parts)
            headers = [h for h in start.get("headers", []) if h[0].lower() != b"content-length"]
            if defect.response is not None:
                seen = Seen(method, path, parsed, status, _loads(content))
                status, answer = await defect.response(seen)
                if isinstance(answer, Raw):
                    content = bytes(answer)
                    headers = [h for h in headers if h[0].lower() != b"content-type"]
                    headers.append((b"content-type", b"text/html"))
                elif answer is not None:
                    content = json.dumps(answer).encode()
            headers.append((b"content-length", str(len(content)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})

        await app(scope, new_receive, capture)

    return middleware


def _loads(content: bytes) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


@asynccontextmanager
async def broken_server(
    defect: Defect, *, lease_ttl: float = 2.0, token: str | None = None
) -> AsyncIterator[str]:
    """Serve the reference server with ``defect`` on 127.0.0.1; yields its URL."""
    store = SqliteStore(":memory:")
    await store.open(lease_ttl_s=lease_ttl)
    app = create_app(store, token=token, lease_ttl_s=lease_ttl, heartbeat_interval_s=0.5)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(core_of(app).run_timers)
            serve = partial(hypercorn_serve, _wrap(app, defect), config)  # type: ignore[arg-type]
            binds: list[str] = await nursery.start(serve)
            yield binds[0]
            core_of(app).close()
            nursery.cancel_scope.cancel()  # nothing is in flight: no need for a graceful stop
    finally:
        await store.aclose()


# -- the defects --------------------------------------------------------------------------


async def _duplicate_is_409(a: Seen) -> tuple[int, Any]:
    if ACK_PATH.match(a.path) and a.status == 200 and a.body == {"status": "duplicate"}:
        return 409, {"error": {"code": "conflict", "message": "this lease was acked already"}}
    return a.status, a.body


def _claims_without_waiting(method: str, path: str, req: Any) -> Any:
    if path == "/v1/jobs/claim" and isinstance(req, dict) and req.get("wait_s"):
        return {**req, "wait_s": 0, "conformance_wanted_wait_s": req["wait_s"]}
    return req


async def _sleeps_instead_of_waking(a: Seen) -> tuple[int, Any]:
    wanted = a.request.get("conformance_wanted_wait_s") if isinstance(a.request, dict) else None
    if a.path == "/v1/jobs/claim" and wanted and a.status == 200 and not a.body["jobs"]:
        await trio.sleep(float(wanted))  # the poll "waits", but nothing wakes it
    return a.status, a.body


def _release_is_failure(method: str, path: str, req: Any) -> Any:
    failure = {"type": "released", "message": "released", "retryable": True}

    def change(ack: Any) -> Any:
        if isinstance(ack, dict) and ack.get("outcome") == "released":
            return {**ack, "outcome": "failed", "error": failure}
        return ack

    if ACK_PATH.match(path):
        return change(req)
    if path == "/v1/jobs/claim" and isinstance(req, dict):
        return {**req, "acks": [change(a) for a in req.get("acks") or []]}
    return req


async def _detail_errors(a: Seen) -> tuple[int, Any]:
    if a.status >= 400 and isinstance(a.body, dict) and isinstance(a.body.get("error"), dict):
        return a.status, {"detail": a.body["error"].get("message", "")}
    return a.status, a.body


async def _html_404(a: Seen) -> tuple[int, Any]:
    if (
        a.status == 404
        and isinstance(a.body, dict)
        and a.body.get("error", {}).get("code") == "not_found"
    ):
        return 404, Raw(b"<html><body><h1>404 Not Found</h1></body></html>")
    return a.status, a.body


async def _forgets_lost_leases(a: Seen) -> tuple[int, Any]:
    if HEARTBEAT_PATH.match(a.path) and a.status == 200:
        return a.status, {**a.body, "lost_leases": []}
    return a.status, a.body


def _one_job_more(method: str, path: str, req: Any) -> Any:
    if path == "/v1/jobs/claim" and isinstance(req, dict) and req.get("max_jobs"):
        return {**req, "max_jobs": int(req["max_jobs"]) + 1}
    return req


DEFECTS: dict[str, Defect] = {
    d.name: d
    for d in (
        Defect(
            "repeated_ack_is_409",
            frozenset({"ack.duplicate"}),
            response=_duplicate_is_409,
        ),
        Defect(
            "long_poll_never_wakes",
            frozenset({"longpoll.wakes_on_submit", "longpoll.wakes_on_release"}),
            request=_claims_without_waiting,
            response=_sleeps_instead_of_waking,
        ),
        Defect(
            "released_spends_an_attempt",
            frozenset({"ack.released", "longpoll.wakes_on_release"}),
            request=_release_is_failure,
        ),
        Defect(
            "wrong_error_body",
            frozenset({"errors.body_shape", "errors.unknown_route", "ack.conflict"}),
            response=_detail_errors,
        ),
        Defect(
            "html_404",
            frozenset({"errors.unknown_route", "errors.body_shape"}),
            response=_html_404,
        ),
        Defect(
            "waiting_claim_ignores_disconnect",
            frozenset({"longpoll.disconnect_takes_no_job"}),
            hide_disconnect=True,
        ),
        Defect(
            "heartbeat_forgets_lost_leases",
            frozenset({"lease.lost_leases"}),
            response=_forgets_lost_leases,
        ),
        Defect(
            "token_not_checked",
            frozenset({"auth.required"}),
            lets_in=DEFECT_TOKEN,
        ),
        Defect(
            "claim_hands_out_one_job_more",
            frozenset({"claim.max_jobs_and_kinds", "claim.order"}),
            request=_one_job_more,
        ),
    )
}
