"""GET /v1/openapi.json: OpenAPI 3.1, in step with the routes, and real responses match it."""

from __future__ import annotations

from typing import Any

import jsonschema
import trio
from starlette.routing import Route

from tests.support.server import asgi_client, make_app


def validator(doc: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


async def test_document_lists_every_route(autojump_clock: trio.abc.Clock) -> None:
    app, _ = make_app()
    async with asgi_client(app) as client:
        resp = await client.get("/v1/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    served = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/v1")
        for method in (route.methods or ()) - {"HEAD"}
    }
    assert documented == served
    for name, schema in doc["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["type"] == "object", name


async def test_real_bodies_match_their_schemas(autojump_clock: trio.abc.Clock) -> None:
    app, _ = make_app()
    async with asgi_client(app) as client:
        doc = (await client.get("/v1/openapi.json")).json()
        reg = (await client.post("/v1/bots/register", json={"bot_id": "b"})).json()
        validator(doc, "RegisterResponse").validate(reg)
        job = (await client.post("/v1/jobs", json={"kind": "k", "payload": [1]})).json()
        validator(doc, "JobView").validate(job)
        body = {"bot_id": "b", "session_id": reg["session_id"], "max_jobs": 1}
        claim = (await client.post("/v1/jobs/claim", json=body)).json()
        validator(doc, "ClaimResponse").validate(claim)
        lease = claim["jobs"][0]["lease_id"]
        ack = {"lease_id": lease, "outcome": "failed", "error": {"type": "t", "message": "m"}}
        body = {**body, "acks": [ack]}
        validator(doc, "ClaimRequest").validate(body)
        after = (await client.post("/v1/jobs/claim", json=body)).json()
        validator(doc, "ClaimResponse").validate(after)
        failed = (await client.get(f"/v1/jobs/{job['job_id']}")).json()
        validator(doc, "JobView").validate(failed)
        validator(doc, "BotList").validate((await client.get("/v1/bots")).json())
        validator(doc, "Stats").validate((await client.get("/v1/stats")).json())
        validator(doc, "Health").validate((await client.get("/v1/health")).json())
        hb = await client.post("/v1/bots/b/heartbeat", json={"session_id": reg["session_id"]})
        validator(doc, "HeartbeatResponse").validate(hb.json())
        validator(doc, "ErrorBody").validate((await client.get("/v1/jobs/nope")).json())
        bad = validator(doc, "JobView")
        assert not bad.is_valid({**job, "status": "weird"})
