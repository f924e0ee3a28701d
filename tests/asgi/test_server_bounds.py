"""Bounds at the border (issue 12), on both stores: deep, NaN, Infinity, out-of-range,
lone-surrogate, NUL and over-long inputs get 400 ``invalid_request`` naming the field on
every route; nothing is stored; every list route keeps answering valid JSON afterwards.

Bodies are sent as raw text (``content=``), since the client's own encoder would refuse
NaN and lone surrogates before they reach the server.
"""

# ruff: noqa: UP031 (raw JSON templates read best with %: their braces stay as they are)

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from trio.abc import Clock

from botd import codec
from botd.models import ErrorBody, JobList
from tests.support.server import StoreMaker, asgi_client, make_app

DEEP = "[" * 65 + "]" * 65
HUGE_DEEP = "[" * 200_000 + "]" * 200_000  # deeper than json's own recursion limit
JSON = {"content-type": "application/json"}

#: (route, raw body, text the error message must hold). ``{S}``: a live session id.
BAD_BODIES: list[tuple[str, str, str]] = [
    ("/v1/jobs", '{"kind":"k","payload":%s}' % DEEP, "$.payload"),
    ("/v1/jobs", '{"kind":"k","payload":%s}' % HUGE_DEEP, "deeper than 64"),
    ("/v1/jobs", '{"kind":"k","payload":{"a":[1,NaN]}}', "$.payload.a[1]"),
    ("/v1/jobs", '{"kind":"k","payload":Infinity}', "$.payload"),
    ("/v1/jobs", '{"kind":"k","payload":-Infinity}', "$.payload"),
    ("/v1/jobs", '{"kind":"k","payload":1e400}', "$.payload"),
    ("/v1/jobs", '{"kind":"k","priority":%d}' % 2**70, "$.priority"),
    ("/v1/jobs", '{"kind":"k","priority":%d}' % 2**40, "priority"),
    ("/v1/jobs", '{"kind":"k","payload":{"n":%d}}' % 2**63, "$.payload.n"),
    ("/v1/jobs", '{"kind":"k","payload":{"n":%d}}' % -(2**63 + 1), "$.payload.n"),
    ("/v1/jobs", '{"kind":"k\\ud800"}', "$.kind"),
    ("/v1/jobs", '{"kind":"k","payload":{"\\udc00":1}}', "$.payload"),
    ("/v1/jobs", '{"kind":"k","payload":["\\ud800x"]}', "$.payload[0]"),
    ("/v1/jobs", '{"kind":"k\\u0000"}', "kind"),
    ("/v1/jobs", '{"kind":"%s"}' % ("k" * 201), "kind"),
    ("/v1/jobs", '{"kind":"k","idempotency_key":"%s"}' % ("i" * 201), "idempotency_key"),
    ("/v1/jobs", '{"kind":"k","timeout_s":1e300}', "timeout_s"),
    ("/v1/jobs/batch", '{"jobs":[{"kind":"k"},{"kind":"k","payload":NaN}]}', "$.jobs[1].payload"),
    ("/v1/jobs/batch", '{"jobs":[{"kind":"k","priority":%d}]}' % 2**64, "$.jobs[0].priority"),
    ("/v1/jobs/retry", '{"status":"dead","kind":"%s"}' % ("k" * 201), "kind"),
    ("/v1/jobs/retry", '{"status":"dead","limit":%d}' % 2**70, "$.limit"),
    ("/v1/bots/register", '{"bot_id":"%s"}' % ("b" * 201), "bot_id"),
    ("/v1/bots/register", '{"bot_id":"b","pid":%d}' % 2**40, "pid"),
    ("/v1/bots/register", '{"bot_id":"b","pid":%d}' % 2**70, "$.pid"),
    ("/v1/bots/register", '{"bot_id":"b","hostname":"%s"}' % ("h" * 201), "hostname"),
    ("/v1/bots/register", '{"bot_id":"b","version":"%s"}' % ("v" * 201), "version"),
    ("/v1/bots/register", '{"bot_id":"b","labels":{"a":"\\ud800"}}', "$.labels.a"),
    ("/v1/bots/register", '{"bot_id":"b","labels":{"%s":"x"}}' % ("k" * 65), "labels"),
    ("/v1/bots/register", '{"bot_id":"b","labels":{"a":"%s"}}' % ("x" * 257), "labels"),
    (
        "/v1/bots/register",
        '{"bot_id":"b","labels":%s}' % json.dumps({f"k{i}": "v" for i in range(65)}),
        "labels",
    ),
    (
        "/v1/bots/register",
        '{"bot_id":"b","active_leases":%s}' % json.dumps(["l"] * 1001),
        "active_leases",
    ),
    ("/v1/bots/register", '{"bot_id":"b","active_leases":["%s"]}' % ("l" * 201), "active_leases"),
    # A list is a JSON array: not an object's keys, nor a text's characters.
    ("/v1/bots/register", '{"bot_id":"b","active_leases":{"l1":1}}', "$.active_leases"),
    ("/v1/bots/b1/heartbeat", '{"session_id":"{S}","active_leases":"l1"}', "$.active_leases"),
    ("/v1/jobs/claim", '{"bot_id":"b1","session_id":"{S}","kinds":"kk"}', "$.kinds"),
    ("/v1/jobs/batch", '{"jobs":{"kind":"k"}}', "$.jobs"),
    ("/v1/bots/b1/heartbeat", '{"session_id":"{S}","stats":{"x":NaN}}', "$.stats.x"),
    ("/v1/bots/b1/heartbeat", '{"session_id":"{S}","stats":%s}' % DEEP, "$.stats"),
    (
        "/v1/bots/b1/heartbeat",
        '{"session_id":"{S}","stats":%s}' % json.dumps({f"k{i}": 1 for i in range(65)}),
        "stats",
    ),
    ("/v1/bots/b1/heartbeat", '{"session_id":"{S}","state":"%s"}' % ("s" * 201), "state"),
    ("/v1/bots/b1/heartbeat", '{"session_id":"{S}","active_leases":[%d]}' % 2**70, "$.active"),
    (
        "/v1/jobs/claim",
        '{"bot_id":"b1","session_id":"{S}","kinds":%s}' % json.dumps(["k"] * 101),
        "kinds",
    ),
    (
        "/v1/jobs/claim",
        '{"bot_id":"b1","session_id":"{S}","acks":[{"lease_id":"l","outcome":"succeeded",'
        '"result":{"r":NaN}}]}',
        "$.acks[0].result.r",
    ),
    ("/v1/jobs/claim", '{"bot_id":"b1","session_id":"{S}","max_jobs":%d}' % 2**70, "$.max_jobs"),
    ("/v1/jobs/claim", '{"bot_id":"b1","session_id":"{S}","wait_s":1e400}', "$.wait_s"),
    ("/v1/leases/l1/ack", '{"lease_id":"l1","outcome":"succeeded","result":NaN}', "$.result"),
    ("/v1/leases/l1/ack", '{"lease_id":"l1","outcome":"succeeded","result":%s}' % DEEP, "result"),
    (
        "/v1/leases/l1/ack",
        '{"lease_id":"l1","outcome":"failed","error":{"type":"t\\ud800","message":"m"}}',
        "$.error.type",
    ),
]


def _message(resp: httpx.Response) -> str:
    assert resp.status_code == 400, resp.text
    body = codec.structure(resp.json(), ErrorBody)
    assert body.error.code == "invalid_request"
    return body.error.message


async def _lists_answer_json(client: httpx.AsyncClient) -> dict[str, Any]:
    """Every list route answers valid JSON (no bare NaN); returns them by path."""
    answers = {}
    for path in ("/v1/jobs", "/v1/bots", "/v1/stats", "/v1/jobs?status=queued"):
        resp = await client.get(path)
        assert resp.status_code == 200, resp.text
        answers[path] = json.loads(resp.content, parse_constant=_refuse)
    return answers


def _refuse(name: str) -> None:
    raise AssertionError(f"an answer holds {name}, which is not JSON")


@pytest.mark.parametrize(("path", "body", "names"), BAD_BODIES)
async def test_out_of_bound_bodies_are_400_naming_the_field_and_store_nothing(
    clock: Clock | None, new_store: StoreMaker, path: str, body: str, names: str
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        resp = await client.post("/v1/bots/register", json={"bot_id": "b1"})
        session = resp.json()["session_id"]
        before = await _lists_answer_json(client)
        resp = await client.post(path, content=body.replace("{S}", session), headers=JSON)
        assert names in _message(resp)
        after = await _lists_answer_json(client)
        before["/v1/bots"]["bots"][0].pop("last_seen")
        after["/v1/bots"]["bots"][0].pop("last_seen")
        assert after == before  # nothing stored, nothing changed


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/" + "j" * 5000,
        "/v1/jobs/a%00b",
        "/v1/jobs/%ff%fe",
        "/v1/jobs/a%00b/cancel",
        "/v1/jobs/" + "j" * 5000 + "/retry",
        "/v1/bots/a%00b",
        "/v1/bots/" + "b" * 5000,
        "/v1/jobs?kind=a%00b",
        "/v1/jobs?kind=" + "k" * 5000,
        "/v1/jobs?limit=99999999999999999999999",
        "/v1/jobs?limit=nan",
        "/v1/jobs?status=%00",
        "/v1/jobs/x?wait_s=inf",
        "/v1/jobs/x?wait_s=1e999",
        "/v1/jobs/x?wait_s=",
        "/v1/jobs?limit=",
        "/v1/jobs?cursor=%00",
        "/v1/bots?cursor=" + "c" * 5000,
        "/v1/bots?limit=1001",
    ],
)
async def test_odd_path_and_query_parameters_are_4xx_never_500(
    clock: Clock | None, new_store: StoreMaker, path: str
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        method = "POST" if path.endswith(("/cancel", "/retry")) else "GET"
        resp = await client.request(method, path)
        assert resp.status_code in (400, 404), resp.text
        codec.structure(resp.json(), ErrorBody)
        await _lists_answer_json(client)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/bots/a%00b?session_id=s",
        "/v1/bots/b1?session_id=a%00b",
        "/v1/bots/b1?session_id=" + "s" * 5000,
        "/v1/bots/" + "b" * 5000 + "?session_id=s",
    ],
)
async def test_odd_deregister_parameters_are_4xx(
    clock: Clock | None, new_store: StoreMaker, path: str
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        await client.post("/v1/bots/register", json={"bot_id": "b1"})
        resp = await client.delete(path)
        assert resp.status_code in (400, 404, 409), resp.text
        codec.structure(resp.json(), ErrorBody)
        bots = (await _lists_answer_json(client))["/v1/bots"]["bots"]
        assert [b["status"] for b in bots] == ["active"]


async def test_bounds_at_their_limit_are_accepted_and_round_trip(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    nested: Any = "leaf"
    for _ in range(62):  # 64 levels with the body and its payload object
        nested = [nested]
    payload = {
        "deep": nested,
        "big": 2**63 - 1,
        "small": -(2**63),
        "float": 1.5e300,
        "text": "snow \u2603 and \U0001f600",
        "nul": "a\u0000b",
    }
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        body = {
            "kind": "k" * 200,
            "payload": payload,
            "priority": 2**31 - 1,
            "idempotency_key": "i" * 200,
        }
        resp = await client.post("/v1/jobs", json=body)
        assert resp.status_code == 201, resp.text
        assert resp.json()["payload"] == payload
        resp = await client.post(
            "/v1/bots/register",
            json={
                "bot_id": "b" * 200,
                "pid": 2**31 - 1,
                "hostname": "h" * 200,
                "labels": {f"{i:064d}": "v" * 256 for i in range(64)},
            },
        )
        assert resp.status_code == 200, resp.text
        lists = await _lists_answer_json(client)
        jobs = codec.structure(lists["/v1/jobs"], JobList).jobs
        assert [job.payload for job in jobs] == [payload]
        assert len(lists["/v1/bots"]["bots"][0]["labels"]) == 64
