"""GET /v1/bots and GET /v1/jobs a page at a time: ``limit`` and an opaque ``cursor``, the
answer's ``next_cursor`` null on the last page; on both stores."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.abc import Clock
from trio.testing import MockClock

from botd.server.store import SqliteStore
from tests.support.server import StoreMaker, asgi_client, make_app


async def pages(client: httpx.AsyncClient, path: str, key: str, **params: Any) -> list[list[Any]]:
    """Every page of ``path`` (its ``key`` list each), following next_cursor."""
    got: list[list[Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        resp = await client.get(path, params=query)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        got.append(body[key])
        cursor = body["next_cursor"]
        if cursor is None:
            return got
        assert len(got) < 100, "pages never end"


async def test_bots_page_in_bot_id_order_with_their_leases(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    ids = ["b", "a", "c:1", "é", "d", "a b", "z"]
    async with asgi_client(app) as client:
        sessions = {}
        for bot_id in ids:
            reg = await client.post("/v1/bots/register", json={"bot_id": bot_id})
            sessions[bot_id] = reg.json()["session_id"]
        for _ in range(3):
            await client.post("/v1/jobs", json={"kind": "k"})
        claim = {"bot_id": "c:1", "session_id": sessions["c:1"], "max_jobs": 2}
        leased = [
            j["lease_id"] for j in (await client.post("/v1/jobs/claim", json=claim)).json()["jobs"]
        ]
        claim = {"bot_id": "z", "session_id": sessions["z"], "max_jobs": 2}
        (last,) = [
            j["lease_id"] for j in (await client.post("/v1/jobs/claim", json=claim)).json()["jobs"]
        ]

        everything = (await client.get("/v1/bots")).json()
        assert everything["next_cursor"] is None
        assert [b["bot_id"] for b in everything["bots"]] == sorted(ids)
        for limit in (1, 2, 3, 7, 8):
            got = await pages(client, "/v1/bots", "bots", limit=limit)
            assert all(len(page) <= limit for page in got)
            assert [b for page in got for b in page] == everything["bots"], limit
            assert len(got) == max(1, -(-len(ids) // limit)), "no empty page after a full one"
        # The list shows no lease ids (issue 12), but counts each bot's own leases.
        held = {b["bot_id"]: (b["active_leases"], b["lease_count"]) for page in got for b in page}
        assert held["c:1"] == ([], len(leased)) and held["z"] == ([], 1)
        assert all(b["session_id"] is None for page in got for b in page)
        assert {b: n for b, (_, n) in held.items() if n} == {"c:1": 2, "z": 1}
        assert last


async def test_bots_list_a_hundred_by_default(clock: Clock | None, new_store: StoreMaker) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        for i in range(101):
            await client.post("/v1/bots/register", json={"bot_id": f"bot-{i:03d}"})
        first = (await client.get("/v1/bots")).json()
        assert len(first["bots"]) == 100 and first["next_cursor"]
        rest = (await client.get("/v1/bots", params={"cursor": first["next_cursor"]})).json()
        assert [b["bot_id"] for b in rest["bots"]] == ["bot-100"]
        assert rest["next_cursor"] is None


async def test_jobs_page_newest_first_with_their_filters(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        made = []
        for i in range(9):
            body = {"kind": "even" if i % 2 == 0 else "odd", "payload": i}
            made.append((await client.post("/v1/jobs", json=body)).json())
        newest_first = [j["job_id"] for j in reversed(made)]
        got = await pages(client, "/v1/jobs", "jobs", limit=4)
        assert [j["job_id"] for page in got for j in page] == newest_first
        assert [len(page) for page in got] == [4, 4, 1]
        even = await pages(client, "/v1/jobs", "jobs", limit=2, kind="even")
        assert [j["payload"] for page in even for j in page] == [8, 6, 4, 2, 0]
        queued = await pages(client, "/v1/jobs", "jobs", limit=3, status="queued", kind="odd")
        assert [j["payload"] for page in queued for j in page] == [7, 5, 3, 1]
        none = await pages(client, "/v1/jobs", "jobs", status="dead")
        assert none == [[]]
        # Without a cursor, the first page, as before.
        plain = (await client.get("/v1/jobs", params={"limit": 4})).json()
        assert plain["jobs"] == got[0]


async def test_jobs_submitted_while_paging_never_repeat_or_shift_a_page(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        ids = [
            (await client.post("/v1/jobs", json={"kind": "k"})).json()["job_id"] for _ in range(5)
        ]
        first = (await client.get("/v1/jobs", params={"limit": 2})).json()
        await client.post("/v1/jobs", json={"kind": "k"})  # newer than every page
        await client.post(f"/v1/jobs/{ids[2]}/cancel")  # changes a job, not the order
        seen = [j["job_id"] for j in first["jobs"]]
        cursor = first["next_cursor"]
        while cursor:
            body = (await client.get("/v1/jobs", params={"limit": 2, "cursor": cursor})).json()
            seen += [j["job_id"] for j in body["jobs"]]
            cursor = body["next_cursor"]
        assert seen == list(reversed(ids))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=12),
    limit=st.integers(min_value=1, max_value=13),
    kinds=st.lists(st.sampled_from(["a", "b"]), min_size=12, max_size=12),
)
def test_pages_hold_every_job_once_in_order(n: int, limit: int, kinds: list[str]) -> None:
    """Property, on the SQLite backend directly: following the cursor yields every job of
    the filter exactly once, newest first, in pages of at most ``limit``."""

    async def run() -> None:
        app, _ = make_app(store=SqliteStore(":memory:"))
        async with asgi_client(app, timers=False) as client:
            for i in range(n):
                await client.post("/v1/jobs", json={"kind": kinds[i], "payload": i})
            for kind in (None, "a"):
                params: dict[str, Any] = {"limit": limit, **({"kind": kind} if kind else {})}
                got = await pages(client, "/v1/jobs", "jobs", **params)
                flat = [j["payload"] for page in got for j in page]
                want = [i for i in reversed(range(n)) if kind is None or kinds[i] == kind]
                assert flat == want
                assert all(0 < len(page) <= limit for page in got) or got == [[]]

    trio.run(run, clock=MockClock(autojump_threshold=0))


async def test_bad_page_parameters_are_400_naming_them(
    clock: Clock | None, new_store: StoreMaker
) -> None:
    """A limit out of 1..1000 (or empty), and a cursor no page of that list made: 400
    naming the parameter, on both lists; an empty cursor is the first page."""
    app, _ = make_app(store=new_store())
    async with asgi_client(app) as client:
        for i in range(3):
            await client.post("/v1/bots/register", json={"bot_id": f"b{i}"})
            await client.post("/v1/jobs", json={"kind": "k"})
        bots = (await client.get("/v1/bots", params={"limit": 1})).json()["next_cursor"]
        jobs = (await client.get("/v1/jobs", params={"limit": 1})).json()["next_cursor"]
        nul = base64.urlsafe_b64encode(b"bots:a\x00b").rstrip(b"=").decode()
        huge = base64.urlsafe_b64encode(b"jobs:" + b"9" * 30).rstrip(b"=").decode()
        cases = [
            ("/v1/bots", {"limit": "0"}, "limit"),
            ("/v1/bots", {"limit": "1001"}, "limit"),
            ("/v1/bots", {"limit": ""}, "limit"),
            ("/v1/jobs", {"limit": "x"}, "limit"),
            ("/v1/jobs", {"status": ""}, "status"),
            ("/v1/bots", {"cursor": jobs}, "cursor"),
            ("/v1/jobs", {"cursor": bots}, "cursor"),
            ("/v1/bots", {"cursor": nul}, "cursor"),
            ("/v1/jobs", {"cursor": huge}, "cursor"),
            ("/v1/jobs", {"cursor": "!!!!"}, "cursor"),
            ("/v1/jobs", {"cursor": "A"}, "cursor"),
            ("/v1/bots", {"cursor": "QQ" * 600}, "cursor"),
        ]
        for path, params, name in cases:
            resp = await client.get(path, params=params)
            assert resp.status_code == 400, (path, params, resp.text)
            error = resp.json()["error"]
            assert error["code"] == "invalid_request" and repr(name) in error["message"], params
        for path, key in (("/v1/bots", "bots"), ("/v1/jobs", "jobs")):
            first = (await client.get(path, params={"cursor": ""})).json()
            assert len(first[key]) == 3 and first["next_cursor"] is None
