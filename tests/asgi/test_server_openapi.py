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


async def test_the_producer_extensions_are_documented_with_their_bounds(
    autojump_clock: trio.abc.Clock,
) -> None:
    app, _ = make_app()
    async with asgi_client(app) as client:
        doc = (await client.get("/v1/openapi.json")).json()
        delayed = {"kind": "k", "delay_s": 60, "retry_base_s": 1, "retry_max_s": 2}
        validator(doc, "JobSubmit").validate(delayed)
        view = (await client.post("/v1/jobs", json=delayed)).json()
        validator(doc, "JobView").validate(view)
        assert view["run_at"] is not None
        validator(doc, "Stats").validate((await client.get("/v1/stats")).json())
        retried = await client.post("/v1/jobs/retry", json={"status": "dead"})
        validator(doc, "RetryResult").validate(retried.json())
    schemas = doc["components"]["schemas"]
    submit = schemas["JobSubmit"]["properties"]
    assert (submit["delay_s"]["minimum"], submit["delay_s"]["maximum"]) == (0, 31_536_000)
    for name in ("retry_base_s", "retry_max_s"):
        assert (submit[name]["exclusiveMinimum"], submit[name]["maximum"]) == (0, 86_400)
    assert not validator(doc, "JobSubmit").is_valid({"kind": "k", "delay_s": -1})
    retry = schemas["RetryRequest"]
    assert retry["properties"]["status"] == {"enum": ["dead", "failed"]}
    assert retry["required"] == ["status"]
    assert (retry["properties"]["limit"]["minimum"], retry["properties"]["limit"]["maximum"]) == (
        1,
        10_000,
    )
    assert "scheduled" in schemas["Stats"]["properties"]
    wait = doc["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"][1]
    assert wait == {
        "name": "wait_s",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "maximum": 30.0},
    }
    kinds = [p["name"] for p in doc["paths"]["/v1/jobs"]["get"]["parameters"]]
    assert kinds == ["status", "kind", "limit"]
    assert "409" in doc["paths"]["/v1/jobs/{job_id}/retry"]["post"]["responses"]
