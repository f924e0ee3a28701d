"""Checks of the bot routes: register, get, heartbeat, deregister, and their errors."""

from __future__ import annotations

import secrets
from typing import Any

import trio

from ..models import BotInfo, BotList
from .bench import Bench, Session
from .probe import Answer, CheckFailed, CheckSkipped
from .registry import check

__all__: list[str] = []


async def _bot(b: Bench, bot_id: str) -> tuple[Answer, BotInfo]:
    answer = await b.send("GET", f"/v1/bots/{bot_id}")
    info = answer.decode(BotInfo)
    if info.bot_id != bot_id:
        raise answer.fail(f"bot {bot_id!r}", f"bot {info.bot_id!r}")
    return answer, info


@check(
    "bots.register",
    "register answers the session, heartbeat_interval_s and lease_ttl_s > 0; GET /v1/bots/{id}"
    " shows the bot active",
)
async def register(b: Bench) -> None:
    session = await b.register(capacity=7)
    answer, info = await _bot(b, session.bot_id)
    if info.status != "active" or info.capacity != 7:
        raise answer.fail("status 'active' and capacity 7")
    answer.timestamp("last_seen", info.last_seen)


@check(
    "bots.register_bounds",
    "a register with a missing or out-of-range field is 400 invalid_request naming it",
)
async def register_bounds(b: Bench) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("bot_id", {"bot_id": ""}),
        ("bot_id", {"bot_id": "b" * 201}),
        ("capacity", {"capacity": 0}),
        ("capacity", {"capacity": 1001}),
        ("capacity", {"capacity": "four"}),
    ]
    for field, change in cases:
        body = {**b.register_body(b.new_bot_id()), **change}
        (await b.send("POST", "/v1/bots/register", body)).error(400, "invalid_request", names=field)
    body = b.register_body(b.new_bot_id())
    del body["bot_id"]
    (await b.send("POST", "/v1/bots/register", body)).error(400, "invalid_request", names="bot_id")


@check(
    "bots.unknown",
    "get, heartbeat, claim and deregister of a bot never registered are 404 unknown_bot",
)
async def unknown_bot(b: Bench) -> None:
    ghost = Session(f"{b.kind}-never-registered", secrets.token_hex(8))
    (await b.send("GET", f"/v1/bots/{ghost.bot_id}")).error(404, "unknown_bot")
    hb = {"session_id": ghost.session_id, "state": "idle", "active_leases": []}
    path = f"/v1/bots/{ghost.bot_id}/heartbeat"
    (await b.send("POST", path, hb)).error(404, "unknown_bot")
    claim = b.claim_body(ghost)
    (await b.send("POST", "/v1/jobs/claim", claim)).error(404, "unknown_bot")
    params = {"session_id": ghost.session_id}
    (await b.send("DELETE", f"/v1/bots/{ghost.bot_id}", params=params)).error(404, "unknown_bot")


@check(
    "bots.superseded",
    "after a second register, the first session's heartbeat, claim and deregister are 409"
    " session_superseded; the new session works",
)
async def superseded(b: Bench) -> None:
    old = await b.register()
    new = await b.register(old.bot_id)
    if new.session_id == old.session_id:
        raise CheckFailed("a new session_id at each register", f"{old.session_id!r} twice")
    hb = {"session_id": old.session_id, "state": "idle", "active_leases": []}
    path = f"/v1/bots/{old.bot_id}/heartbeat"
    (await b.send("POST", path, hb)).error(409, "session_superseded")
    (await b.send("POST", "/v1/jobs/claim", b.claim_body(old))).error(409, "session_superseded")
    params = {"session_id": old.session_id}
    answer = await b.send("DELETE", f"/v1/bots/{old.bot_id}", params=params)
    answer.error(409, "session_superseded")
    await b.heartbeat(new)
    await b.claim(new)


@check(
    "bots.superseded_holder",
    "a 409 session_superseded from a newer register names its holder (hostname, pid, since)",
    extension=True,
)
async def superseded_holder(b: Bench) -> None:
    old = await b.register()
    await b.register(old.bot_id, hostname="conformance-holder", pid=4242)
    hb = {"session_id": old.session_id, "state": "idle", "active_leases": []}
    answer = await b.send("POST", f"/v1/bots/{old.bot_id}/heartbeat", hb)
    answer.error(409, "session_superseded")
    holder = answer.field(answer.json(), "error", "holder")
    if not isinstance(holder, dict) or (holder.get("hostname"), holder.get("pid")) != (
        "conformance-holder",
        4242,
    ):
        raise answer.fail("error.holder with hostname 'conformance-holder' and pid 4242")
    answer.timestamp("error.holder.since", holder.get("since"))


@check(
    "bots.reregister_moves_leases",
    "a register listing active_leases keeps those leases in the new session; the bot's other"
    " leases end at once, their jobs queued with the attempt spent",
)
async def reregister(b: Bench) -> None:
    first = await b.register()
    kept, dropped = (await b.submit()).job_id, (await b.submit()).job_id
    jobs = {job.job_id: job for job in await b.claim(first, max_jobs=2)}
    if set(jobs) != {kept, dropped}:
        raise CheckFailed("a claim of 2 to lease both jobs", f"{sorted(jobs)}")
    second = await b.register(first.bot_id, active_leases=[jobs[kept].lease_id])
    reply = await b.heartbeat(second, [jobs[kept].lease_id])
    if reply.lost_leases or reply.lease_expires_at is None:
        raise b.probe.last().fail(
            "the listed lease renewed in the new session (lease_expires_at set, none lost)",
            f"lease_expires_at={reply.lease_expires_at}, lost_leases={reply.lost_leases}",
        )
    await b.expect_job(kept, "leased", attempts=1)
    await b.expect_job(dropped, "queued", attempts=1)
    await b.ack_recorded(jobs[kept].lease_id, result={"kept": True})
    await b.expect_job(kept, "succeeded", result={"kept": True})


@check(
    "bots.deregister",
    "DELETE /v1/bots/{id}?session_id= is 204 with no body; the bot is deregistered and its"
    " leases are queued without spending an attempt",
)
async def deregister(b: Bench) -> None:
    session = await b.register()
    _, job = await b.submit_and_claim(session)
    path = f"/v1/bots/{session.bot_id}"
    (await b.send("DELETE", path)).error(400, "invalid_request", names="session_id")
    params = {"session_id": f"{session.session_id}-not-it"}
    (await b.send("DELETE", path, params=params)).error(409, "session_superseded")
    answer = await b.deregister(session)
    if answer.exchange.content.strip():
        raise answer.fail("204 with no body")
    answer, info = await _bot(b, session.bot_id)
    if info.status != "deregistered":
        raise answer.fail("status 'deregistered'")
    await b.expect_job(job.job_id, "queued", attempts=0)
    hb = {"session_id": session.session_id, "state": "idle", "active_leases": []}
    (await b.send("POST", f"{path}/heartbeat", hb)).error(409, "session_superseded")
    again = await b.register()
    if (claimed := await b.claim_one(again)).attempt != 1:
        raise CheckFailed(
            "attempt 1 after a deregistration gave the lease back", f"attempt {claimed.attempt}"
        )


@check(
    "bots.list",
    "GET /v1/bots lists the registered bots in bot_id order",
    extension=True,
)
async def list_bots(b: Bench) -> None:
    ids = [(await b.register(f"{b.kind}-{name}")).bot_id for name in ("c", "a", "b")]
    answer, bots = await _bot_pages(b, {}, until=max(ids))
    ours = [bot_id for bot_id in bots if bot_id in ids]
    if ours != sorted(ids):
        raise answer.fail(f"{sorted(ids)} in this order", f"{ours}")
    if bots != sorted(bots):
        raise answer.fail("every bot in bot_id order", "another order")


@check(
    "bots.pages",
    "GET /v1/bots?limit=2 pages through the bots in bot_id order: next_cursor leads to the"
    " next page, each bot once; a bad cursor is 400 naming it",
    extension=True,
)
async def bot_pages(b: Bench) -> None:
    ids = [(await b.register(f"{b.kind}-page-{name}")).bot_id for name in ("c", "a", "b")]
    first = await b.send("GET", "/v1/bots", params={"limit": 2})
    if len(first.decode(BotList).bots) > 2:
        raise first.fail("at most 2 bots with limit=2")
    if "next_cursor" not in first.json():
        raise CheckSkipped("the server sends no next_cursor: it has no pages (an extension)")
    answer, bots = await _bot_pages(b, {"limit": 2}, until=max(ids))
    if [bot_id for bot_id in bots if bot_id in ids] != sorted(ids):
        raise answer.fail(f"{sorted(ids)} once each, in this order", f"{bots}")
    if bots != sorted(set(bots)):
        raise answer.fail("every bot once, in bot_id order", "another order or a repeat")
    bad = await b.send("GET", "/v1/bots", params={"cursor": "not-a-cursor"})
    bad.error(400, "invalid_request", names="cursor")


async def _bot_pages(
    b: Bench, params: dict[str, Any], *, until: str, most: int = 10_000
) -> tuple[Answer, list[str]]:
    """The bot ids of ``GET /v1/bots`` from the first page, following next_cursor (an
    extension: a server without it answers one page), until a page passes bot id
    ``until``; the last answer with them."""
    bots: list[str] = []
    cursor: str | None = None
    for _ in range(most):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        answer = await b.send("GET", "/v1/bots", params=query)
        page = answer.decode(BotList)
        bots += [bot.bot_id for bot in page.bots]
        cursor = page.next_cursor
        if cursor is None or (bots and bots[-1] >= until):
            return answer, bots
    raise answer.fail(f"a last page within {most} pages", "more")


@check(
    "bots.gone",
    "a bot silent for max(lease_ttl_s, 3 x heartbeat_interval_s) shows status gone",
    slow=True,
)
async def gone(b: Bench) -> None:
    session = await b.register()
    interval = b.run.heartbeat_interval_s or 0.0
    silence = max(b.lease_ttl(), 3 * interval)
    await trio.sleep(silence + 1.0)
    answer, info = await _bot(b, session.bot_id)
    if info.status != "gone":
        raise answer.fail(f"status 'gone' after {silence + 1.0:g} s of silence")


@check(
    "auth.session_owner",
    "a session token acts only for its session: another bot's heartbeat, claim or deregister"
    " is 403 not_session_owner, an ack of another bot's lease 403 not_lease_owner, and"
    " nothing changes",
    extension=True,
)
async def session_owner(b: Bench) -> None:
    owner, other = await b.register(), await b.register()
    if not isinstance(other.token, str):
        raise CheckSkipped("the register answer has no session_token (an extension)")
    view, job = await b.submit_and_claim(owner)
    hb = {"session_id": owner.session_id, "state": "idle", "active_leases": [job.lease_id]}
    path = f"/v1/bots/{owner.bot_id}"
    token = other.token
    (await b.send("POST", f"{path}/heartbeat", hb, token=token)).error(403, "not_session_owner")
    params = {"session_id": owner.session_id}
    (await b.send("DELETE", path, params=params, token=token)).error(403, "not_session_owner")
    claim = b.claim_body(owner, max_jobs=0)
    (await b.send("POST", "/v1/jobs/claim", claim, token=token)).error(403, "not_session_owner")
    ack = {"lease_id": job.lease_id, "outcome": "succeeded", "result": {"by": "another bot"}}
    answer = await b.send("POST", f"/v1/leases/{job.lease_id}/ack", ack, token=token)
    answer.error(403, "not_lease_owner")
    release = {"lease_id": job.lease_id, "outcome": "released"}
    released = b.claim_body(other, max_jobs=0, acks=[release])
    (await b.send("POST", "/v1/jobs/claim", released, token=token)).error(403, "not_lease_owner")
    await b.expect_job(view.job_id, "leased", result=None)
    await b.ack_recorded(job.lease_id, result={"by": "its bot"})
    await b.expect_job(view.job_id, "succeeded", result={"by": "its bot"})
