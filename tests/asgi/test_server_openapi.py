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
        assert schema.get("type") == "object" or name == "JsonValue", name


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
    assert kinds == ["status", "kind", "limit", "cursor"]
    assert "409" in doc["paths"]["/v1/jobs/{job_id}/retry"]["post"]["responses"]


def _unbounded(
    schema: dict[str, Any], defs: dict[str, Any], where: str, seen: set[str]
) -> list[str]:
    """Where a request schema leaves a value unbounded: a text without maxLength (or a
    format), an integer or a number without both limits, a list or a map without its most
    items. JsonValue (payloads, results, unknown fields) is bounded by its description."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name == "JsonValue" or name in seen:
            return []
        return _unbounded(defs[name], defs, name, seen | {name})
    found: list[str] = []
    outer = {k: v for k, v in schema.items() if k != "anyOf"}
    for part in schema.get("anyOf", []):
        if part.get("type") != "null":  # the outer keywords apply to each part too
            found += _unbounded({**part, **outer}, defs, where, seen)
    kind = schema.get("type")
    limits = {
        "string": bool({"maxLength", "format"} & schema.keys()),
        "integer": bool({"minimum", "exclusiveMinimum"} & schema.keys()) and "maximum" in schema,
    }
    limits["number"] = limits["integer"]
    if not limits.get(kind, True):
        found.append(where)
    elif kind == "array":
        if "maxItems" not in schema:
            found.append(where)
        found += _unbounded(schema.get("items", {}), defs, f"{where}[]", seen)
    elif kind == "object":
        for name, prop in schema.get("properties", {}).items():
            found += _unbounded(prop, defs, f"{where}.{name}", seen)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and "properties" not in schema:
            if "maxProperties" not in schema:
                found.append(f"{where}{{}}")
            found += _unbounded(extra, defs, f"{where}{{}}", seen)
            keys = {"type": "string", **schema.get("propertyNames", {})}
            found += _unbounded(keys, defs, f"{where} keys", seen)
    return found


async def test_every_bound_of_a_request_is_in_the_document(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Every text, number and list a request may carry, in a body, a path or a query, states
    its limits; every route with a body answers 400 and 413; the lists' pages are there."""
    app, _ = make_app()
    async with asgi_client(app) as client:
        doc = (await client.get("/v1/openapi.json")).json()
    defs = doc["components"]["schemas"]
    found: list[str] = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                where = f"{method} {path} {param['name']}"
                if "enum" not in param["schema"]:
                    found += _unbounded(param["schema"], defs, where, set())
                assert "400" in op["responses"], where
            body = op.get("requestBody")
            if body is not None:
                schema = body["content"]["application/json"]["schema"]
                found += _unbounded(schema, defs, f"{method} {path}", set())
                assert {"400", "413"} <= op["responses"].keys(), (method, path)
    assert not found, found
    for path in ("/v1/bots", "/v1/jobs"):
        params = {p["name"]: p["schema"] for p in doc["paths"][path]["get"]["parameters"]}
        assert params["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
        assert params["cursor"]["pattern"] == "^[A-Za-z0-9_-]*$"
    for name in ("BotList", "JobList"):
        assert defs[name]["properties"]["next_cursor"] == {
            "anyOf": [{"type": "string"}, {"type": "null"}]
        }
    assert defs["JobSubmit"]["properties"]["payload"] == {"$ref": "#/components/schemas/JsonValue"}
    assert "64" in defs["JsonValue"]["description"]
    # What a store keeps as text has no NUL: ids, kinds, keys, labels, path ids.
    nul = "^[^\\u0000]*$"
    assert defs["JobSubmit"]["properties"]["kind"]["pattern"] == nul
    assert defs["JobSubmit"]["properties"]["idempotency_key"]["pattern"] == nul
    assert defs["RegisterRequest"]["properties"]["labels"]["propertyNames"]["pattern"] == nul
    cancel = doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["parameters"][0]
    assert cancel["schema"]["pattern"] == nul
