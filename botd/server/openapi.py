"""The OpenAPI 3.1 document of protocol v1, with JSON Schemas generated from botd.models.

The schemas are derived from the attrs classes' fields and type hints (str, int, float,
bool, Any, Literal, unions, lists, dicts and nested attrs classes), so they cannot drift
from the models the server decodes with. The route table below is the one place that lists
the routes for the document; ``tests/asgi/test_server_openapi.py`` checks it against the app.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Literal

import attrs

from .. import codec, models
from ..models import NO_NUL_PATTERN, ErrorBody
from .wire import CURSOR_PATTERN, DEFAULT_PAGE, MAX_BODY_BYTES, MAX_CURSOR_LEN, MAX_PAGE

__all__ = ["ROUTES", "openapi_document", "schema_for"]

_NONE = type(None)
_SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    _NONE: {"type": "null"},
}


#: Any JSON value; the bounds of :func:`botd.codec.check_json` that JSON Schema cannot
#: state are in its description (and docs/protocol.md, Bounds).
_JSON_VALUE_REF = {"$ref": "#/components/schemas/JsonValue"}
_JSON_VALUE = {
    "description": "Any JSON value: finite numbers (no NaN or Infinity), integers written"
    " without a fraction or an exponent within signed 64 bits, text without a lone surrogate,"
    f" at most {codec.MAX_DEPTH} arrays and objects deep counting from the top of the body.",
    "anyOf": [
        {"type": "null"},
        {"type": "boolean"},
        # JSON Schema cannot tell 1e300 (a double: accepted) from 10**300 written out
        # (refused): both are numbers here, and the description says which integers fit.
        {"type": "number"},
        {"type": "string"},
        {"type": "array", "items": _JSON_VALUE_REF},
        {"type": "object", "additionalProperties": _JSON_VALUE_REF},
    ],
}


def schema_for(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a type hint; attrs classes go into ``defs`` and are referenced,
    and so does ``Any`` (``JsonValue``: every value a body may hold)."""
    if tp is Any:
        defs.setdefault("JsonValue", _JSON_VALUE)
        return dict(_JSON_VALUE_REF)
    if tp in _SCALARS:
        return dict(_SCALARS[tp])
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [schema_for(a, defs) for a in args]}
    if origin is list:
        return {"type": "array", "items": schema_for(args[0] if args else Any, defs)}
    if origin is dict:
        value = args[1] if len(args) == 2 else Any
        return {"type": "object", "additionalProperties": schema_for(value, defs)}
    if isinstance(tp, type) and attrs.has(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            hints = typing.get_type_hints(tp, vars(models))
            props: dict[str, Any] = {}
            required: list[str] = []
            for field in attrs.fields(tp):
                # A field's bounds beyond its type (see models._optional_number).
                bounds = field.metadata.get("schema", {})
                props[field.name] = {**schema_for(hints[field.name], defs), **bounds}
                if field.default is attrs.NOTHING:
                    required.append(field.name)
            # Fields a message does not know are ignored (JSON Schema's default), but held
            # to the bounds of JsonValue, as the whole body is (docs/protocol.md, Bounds).
            schema: dict[str, Any] = {"type": "object", "properties": props}
            if required:
                schema["required"] = required
            if tp.__doc__ and not tp.__doc__.startswith(f"{name}("):
                schema["description"] = tp.__doc__.strip()
            defs[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


@attrs.frozen
class RouteDoc:
    """One route of the document: method, path, summary, request body and responses."""

    method: str
    path: str
    summary: str
    request: type | None = None
    responses: dict[int, type | None] = attrs.field(factory=dict)
    auth: bool = True
    #: (name, JSON Schema, required); a schema given as a string is ``{"type": it}``.
    query: tuple[tuple[str, str | dict[str, Any], bool], ...] = ()


#: A path parameter (an id), or a required text query parameter: what wire.path_param
#: accepts.
_ID_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": models.MAX_TEXT,
    "pattern": NO_NUL_PATTERN,
}
#: An optional text query parameter (wire.text_param): empty is as absent.
_TEXT_SCHEMA: dict[str, Any] = {
    "type": "string",
    "maxLength": models.MAX_TEXT,
    "pattern": NO_NUL_PATTERN,
}
#: ``limit`` of a list: the size of a page.
_LIMIT: dict[str, Any] = {
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_PAGE,
    "default": DEFAULT_PAGE,
}
#: ``cursor`` of a list: the ``next_cursor`` of the previous page (opaque; empty or absent:
#: the first page); what wire.cursor_param accepts is only a cursor the server made.
_CURSOR: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_CURSOR_LEN,
    "pattern": CURSOR_PATTERN,
}

ROUTES: tuple[RouteDoc, ...] = (
    RouteDoc(
        "get",
        "/v1/health",
        "Store health",
        None,
        {200: models.Health, 503: models.Health},
        auth=False,
    ),
    RouteDoc("get", "/v1/openapi.json", "This document", None, {200: None}),
    RouteDoc(
        "post",
        "/v1/bots/register",
        "Register a bot (a new session)",
        models.RegisterRequest,
        {200: models.RegisterResponse, 400: ErrorBody, 409: ErrorBody},
    ),
    RouteDoc(
        "get",
        "/v1/bots",
        "List bots in bot_id order, a page at a time (limit, cursor: an extension)",
        None,
        {200: models.BotList, 400: ErrorBody},
        query=(("limit", _LIMIT, False), ("cursor", _CURSOR, False)),
    ),
    RouteDoc("get", "/v1/bots/{bot_id}", "One bot", None, {200: models.BotInfo, 404: ErrorBody}),
    RouteDoc(
        "delete",
        "/v1/bots/{bot_id}",
        "Deregister; its leases go back to the queue",
        None,
        {204: None, 400: ErrorBody, 404: ErrorBody, 409: ErrorBody},
        query=(("session_id", _ID_SCHEMA, True),),
    ),
    RouteDoc(
        "post",
        "/v1/bots/{bot_id}/heartbeat",
        "Heartbeat: extend leases, learn cancelled and lost ones",
        models.HeartbeatRequest,
        {200: models.HeartbeatResponse, 400: ErrorBody, 404: ErrorBody, 409: ErrorBody},
    ),
    RouteDoc(
        "post",
        "/v1/jobs",
        "Submit a job",
        models.JobSubmit,
        {201: models.JobView, 200: models.JobView, 400: ErrorBody},
    ),
    RouteDoc(
        "post",
        "/v1/jobs/batch",
        "Submit up to 1000 jobs in one transaction (extension)",
        models.JobBatch,
        {201: models.JobBatchResult, 200: models.JobBatchResult, 400: ErrorBody},
    ),
    RouteDoc(
        "get",
        "/v1/jobs",
        "List jobs, newest first, a page at a time (cursor: an extension)",
        None,
        {200: models.JobList, 400: ErrorBody},
        query=(
            ("status", {"enum": list(models.JOB_STATUSES)}, False),
            ("kind", _TEXT_SCHEMA, False),
            ("limit", _LIMIT, False),
            ("cursor", _CURSOR, False),
        ),
    ),
    RouteDoc(
        "post",
        "/v1/jobs/retry",
        "Queue dead or failed jobs again, in one transaction (extension)",
        models.RetryRequest,
        {200: models.RetryResult, 400: ErrorBody},
    ),
    RouteDoc(
        "post",
        "/v1/jobs/claim",
        "Apply acks, then claim jobs (long poll up to wait_s)",
        models.ClaimRequest,
        {200: models.ClaimResponse, 400: ErrorBody, 404: ErrorBody, 409: ErrorBody},
    ),
    RouteDoc(
        "get",
        "/v1/jobs/{job_id}",
        "One job; with wait_s, once it is final or after wait_s (extension)",
        None,
        {200: models.JobView, 400: ErrorBody, 404: ErrorBody},
        query=(("wait_s", {"type": "number", "minimum": 0, "maximum": models.MAX_WAIT_S}, False),),
    ),
    RouteDoc(
        "post",
        "/v1/jobs/{job_id}/cancel",
        "Cancel a job",
        None,
        {200: models.JobView, 404: ErrorBody, 409: ErrorBody},
    ),
    RouteDoc(
        "post",
        "/v1/jobs/{job_id}/retry",
        "Queue a dead or failed job again with fresh attempts (extension)",
        None,
        {200: models.JobView, 404: ErrorBody, 409: ErrorBody},
    ),
    RouteDoc("get", "/v1/stats", "Counts per status", None, {200: models.Stats}),
    RouteDoc(
        "post",
        "/v1/leases/{lease_id}/ack",
        "Ack one lease",
        models.Ack,
        {200: models.SingleAckResponse, 400: ErrorBody, 404: ErrorBody, 409: ErrorBody},
    ),
)

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "invalid_request: a body, path or query parameter out of bounds, named in the message",
    401: "unauthorized",
    403: "forbidden (the call is outside the token's role), not_session_owner, not_lease_owner",
    404: "not found (unknown_bot, unknown_job, unknown_lease)",
    413: f"payload_too_large: a body over {MAX_BODY_BYTES} bytes",
    409: "conflict (session_superseded, bot_id_in_use, conflict, lease_lost, job_finished,"
    " job_not_retryable)",
    503: "degraded / store_unavailable",
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


@functools.cache
def _document(version: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    error_ref = schema_for(ErrorBody, defs)
    for route in ROUTES:
        op: dict[str, Any] = {"summary": route.summary, "responses": {}}
        params = [
            {"name": name, "in": "path", "required": True, "schema": _ID_SCHEMA}
            for name in _path_params(route.path)
        ]
        params += [
            {
                "name": name,
                "in": "query",
                "required": req,
                "schema": {"type": schema} if isinstance(schema, str) else schema,
            }
            for name, schema, req in route.query
        ]
        if params:
            op["parameters"] = params
            # An out-of-bound parameter is 400 invalid_request on every such route.
            route_responses = {400: ErrorBody, **route.responses}
        else:
            route_responses = dict(route.responses)
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": _json_content(schema_for(route.request, defs)),
            }
            # A body is JSON within bounds (400) of at most MAX_BODY_BYTES (413).
            route_responses = {400: ErrorBody, 413: ErrorBody, **route_responses}
        for status, model in sorted(route_responses.items()):
            resp: dict[str, Any] = {"description": _STATUS_TEXT.get(status, str(status))}
            if model is not None:
                resp["content"] = _json_content(schema_for(model, defs))
            elif status != 204:
                resp["content"] = _json_content({"type": "object"})
            op["responses"][str(status)] = resp
        if route.auth:
            op["responses"]["401"] = {
                "description": _STATUS_TEXT[401],
                "content": _json_content(error_ref),
            }
            op["responses"]["403"] = {
                "description": _STATUS_TEXT[403],
                "content": _json_content(error_ref),
            }
        else:
            op["security"] = []
        op["responses"].setdefault(
            "503", {"description": _STATUS_TEXT[503], "content": _json_content(error_ref)}
        )
        paths.setdefault(route.path, {})[route.method] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "botd protocol v1",
            "version": version,
            "description": "The contract between bots and the main server; see docs/protocol.md.",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token of the server (role worker, producer or admin),"
                    " or a session token from a register answer (its session's calls);"
                    " see docs/protocol.md, Auth",
                }
            },
        },
        "security": [{"bearer": []}],
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def openapi_document(version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for protocol v1 (built once per version)."""
    return _document(version)
