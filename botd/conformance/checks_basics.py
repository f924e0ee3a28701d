"""Checks of the conventions: health, auth, and the answers to bad requests."""

from __future__ import annotations

import secrets

from .bench import Bench
from .probe import CheckSkipped
from .registry import check

__all__: list[str] = []

#: A little over the 1 MiB limit on request bodies.
OVERSIZED_BYTES = 1024 * 1024 + 64 * 1024


@check(
    "health",
    "GET /v1/health answers without a token: 200 ok, or 503 degraded; status, database, version",
)
async def health(b: Bench) -> None:
    answer = (await b.send("GET", "/v1/health", token=None)).expect(200, 503)
    body = answer.json()
    status = answer.field(body, "status")
    wanted = "ok" if answer.status == 200 else "degraded"
    if status != wanted:
        raise answer.fail(f'{answer.status} with "status": "{wanted}"')
    for key in ("database", "version"):
        if not isinstance(answer.field(body, key), str):
            raise answer.fail(f"{key!r} as a string")
    if answer.status == 200 and body["database"] != "ok":
        raise answer.fail('200 with "database": "ok"')


@check(
    "auth.required",
    "with a token set, a /v1 request without it or with a wrong one is 401 unauthorized,"
    " and changes nothing",
)
async def auth_required(b: Bench) -> None:
    if b.probe.token is None:
        raise CheckSkipped("no --token given: the server takes requests without one")
    for token in (None, f"wrong-{secrets.token_hex(8)}"):
        (await b.send("GET", "/v1/stats", token=token)).error(401, "unauthorized")
    key = f"{b.kind}-unauthorized"
    answer = await b.send("POST", "/v1/jobs", b.job_body(idempotency_key=key), token=None)
    answer.error(401, "unauthorized")
    # Had the refused submit been stored, the same key would now answer 200, not 201.
    await b.submit(idempotency_key=key)


@check("errors.unknown_route", "an unknown route is a JSON 404 not_found")
async def unknown_route(b: Bench) -> None:
    for path in (f"/v1/{b.kind}-no-such-route", "/v1/jobs/x/no-such-action"):
        (await b.send("GET", path)).error(404, "not_found")


@check("errors.method_not_allowed", "a known route with the wrong method is 405")
async def method_not_allowed(b: Bench) -> None:
    (await b.send("DELETE", "/v1/jobs")).error(405, "method_not_allowed")
    (await b.send("GET", "/v1/bots/register")).expect(404, 405)


@check(
    "errors.payload_too_large",
    "a request body over 1 MiB is 413 payload_too_large, and nothing is stored",
)
async def payload_too_large(b: Bench) -> None:
    key = f"{b.kind}-oversized"
    filler = "x" * OVERSIZED_BYTES
    body = b.job_body(payload={"filler": filler}, idempotency_key=key)
    (await b.send("POST", "/v1/jobs", body)).error(413, "payload_too_large")
    await b.submit(idempotency_key=key)  # 201: the oversized one was not stored


@check("errors.invalid_json", "a body that is not JSON, or not an object, is 400")
async def invalid_json(b: Bench) -> None:
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        (await b.send("POST", "/v1/jobs", raw=raw)).expect(400)
