"""Checks of the producer routes: submit, batch, get, list, cancel, stats."""

from __future__ import annotations

import json
import secrets
from typing import Any

import trio

from ..models import JobBatchResult, JobList, JobView, Stats
from .bench import Bench
from .probe import CheckFailed, CheckSkipped
from .registry import check

__all__: list[str] = []

JOB_STATUSES = ("queued", "leased", "succeeded", "failed", "dead", "cancelled")
BOT_STATUSES = ("active", "gone", "deregistered")


@check(
    "jobs.submit",
    "POST /v1/jobs is 201 with a queued JobView (attempts 0, no result, error or bot);"
    " GET /v1/jobs/{id} shows the same job",
)
async def submit(b: Bench) -> None:
    fields: dict[str, Any] = {
        "payload": {"n": 17, "text": "héllo"},
        "max_attempts": 5,
        "timeout_s": 12.5,
        "priority": 3,
        "idempotency_key": f"{b.kind}-submit",
    }
    answer = await b.send("POST", "/v1/jobs", b.job_body(**fields))
    view = answer.decode(JobView, status=(201,))
    b.track(view.job_id)
    wanted = {"kind": b.kind, "status": "queued", "attempts": 0, "result": None, "error": None}
    wanted |= {"bot_id": None, "finished_at": None}
    got = {key: getattr(view, key) for key in wanted}
    if got != wanted:
        raise answer.fail(f"a JobView with {wanted}", f"{got}")
    answer.timestamp("created_at", view.created_at)
    # The extra JobView fields are an extension: where the server sends them, they must match.
    raw = answer.json()
    for key, value in fields.items():
        if key in raw and raw[key] != value:
            raise answer.fail(f"{key} = {value!r}", f"{key} = {raw[key]!r}")
    again = await b.job(view.job_id)
    if (again.kind, again.status, again.created_at) != (view.kind, view.status, view.created_at):
        raise b.probe.last().fail("GET to show the job as submitted", f"{again}")


@check(
    "jobs.submit_bounds",
    "a submit with a missing, mistyped or out-of-range field is 400 invalid_request naming it,"
    " and stores nothing; an unknown field is ignored",
)
async def submit_bounds(b: Bench) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("kind", {"kind": None}),
        ("kind", {"kind": 7}),
        ("max_attempts", {"max_attempts": 0}),
        ("max_attempts", {"max_attempts": 101}),
        ("timeout_s", {"timeout_s": 0}),
        ("timeout_s", {"timeout_s": -5}),
        ("priority", {"priority": 2**31}),
        ("priority", {"priority": -(2**31) - 1}),
        ("priority", {"priority": "high"}),
    ]
    for i, (field, change) in enumerate(cases):
        key = f"{b.kind}-bad-{i}"
        body = {**b.job_body(idempotency_key=key), **change}
        if change.get("kind", "") is None:
            del body["kind"]
        (await b.send("POST", "/v1/jobs", body)).error(400, "invalid_request", names=field)
    for i in range(len(cases)):
        await b.submit(idempotency_key=f"{b.kind}-bad-{i}")  # 201: none was stored
    unknown: dict[str, Any] = {"conformance_unknown_field": {"x": 1}}
    await b.submit(**unknown)


@check(
    "jobs.idempotency",
    "a submit with a known idempotency_key is 200 with the existing job; nothing is created",
)
async def idempotency(b: Bench) -> None:
    key = f"{b.kind}-{secrets.token_hex(4)}"
    first = await b.submit(idempotency_key=key)
    second = await b.submit(idempotency_key=key, status=200, payload={"other": True})
    if second.job_id != first.job_id:
        raise CheckFailed(f"the existing job {first.job_id}", f"job {second.job_id}")


@check("jobs.unknown", "GET and cancel of an unknown job are 404 unknown_job")
async def unknown_job(b: Bench) -> None:
    job_id = f"{b.kind}-no-such-job"
    (await b.send("GET", f"/v1/jobs/{job_id}")).error(404, "unknown_job")
    (await b.send("POST", f"/v1/jobs/{job_id}/cancel")).error(404, "unknown_job")


@check(
    "jobs.list",
    "GET /v1/jobs lists jobs newest first, filters by status, and answers 400 naming a bad"
    " status or limit",
)
async def list_jobs(b: Bench) -> None:
    made = []
    for _ in range(3):
        made.append((await b.submit()).job_id)
        await trio.sleep(0.02)  # created_at has milliseconds: keep the order unambiguous
    answer = await b.send("GET", "/v1/jobs", params={"limit": 1000})
    jobs = answer.decode(JobList).jobs
    ours = [job.job_id for job in jobs if job.job_id in made]
    if ours != made[::-1]:
        raise answer.fail(f"the 3 new jobs newest first: {made[::-1]}", f"{ours}")
    answer = await b.send("GET", "/v1/jobs", params={"status": "queued", "limit": 1000})
    queued = answer.decode(JobList).jobs
    if any(job.status != "queued" for job in queued):
        raise answer.fail("only queued jobs with status=queued", "other statuses")
    if not set(made) <= {job.job_id for job in queued}:
        raise answer.fail("the 3 new queued jobs in the list")
    answer = await b.send("GET", "/v1/jobs", params={"limit": 2})
    if len(answer.decode(JobList).jobs) > 2:
        raise answer.fail("at most 2 jobs with limit=2")
    for params, name in (
        ({"status": "sleeping"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "many"}, "limit"),
    ):
        answer = await b.send("GET", "/v1/jobs", params=params)
        answer.error(400, "invalid_request", names=name)


@check(
    "jobs.pages",
    "GET /v1/jobs?kind=K&limit=2 pages newest first: next_cursor leads to the next page, each"
    " job once, null on the last page; a bad cursor is 400 naming it",
    extension=True,
)
async def job_pages(b: Bench) -> None:
    made = []
    for _ in range(3):
        made.append((await b.submit()).job_id)
        await trio.sleep(0.02)  # created_at has milliseconds: keep the order unambiguous
    params: dict[str, Any] = {"kind": b.kind, "limit": 2}
    answer = await b.send("GET", "/v1/jobs", params=params)
    if "next_cursor" not in answer.json():
        raise CheckSkipped("the server sends no next_cursor: it has no pages (an extension)")
    pages = [answer.decode(JobList)]
    while (cursor := pages[-1].next_cursor) is not None and len(pages) < 3:
        answer = await b.send("GET", "/v1/jobs", params={**params, "cursor": cursor})
        pages.append(answer.decode(JobList))
    got = [[job.job_id for job in page.jobs] for page in pages]
    want = [made[:0:-1], made[:1]]
    if got != want or pages[-1].next_cursor is not None:
        raise answer.fail(f"pages {want}, the last with no next_cursor", f"{got}")
    bad = await b.send("GET", "/v1/jobs", params={"cursor": "not-a-cursor"})
    bad.error(400, "invalid_request", names="cursor")


@check(
    "jobs.cancel",
    "cancel of a queued job is 200 cancelled, at once; again is 200; the job is never claimed;"
    " cancel of a finished job is 409 job_finished",
)
async def cancel(b: Bench) -> None:
    view = await b.submit()
    for _ in range(2):
        answer = await b.send("POST", f"/v1/jobs/{view.job_id}/cancel")
        if answer.decode(JobView).status != "cancelled":
            raise answer.fail("200 with status 'cancelled'")
    session = await b.register()
    if jobs := await b.claim(session):
        raise CheckFailed("no job to claim: the only one was cancelled", f"{len(jobs)} jobs")
    done, job = await b.submit_and_claim(session)
    await b.ack_recorded(job.lease_id, result={"ok": True})
    answer = await b.send("POST", f"/v1/jobs/{done.job_id}/cancel")
    answer.error(409, "job_finished")
    await b.expect_job(done.job_id, "succeeded")


@check("jobs.stats", "GET /v1/stats counts every job status and every bot status")
async def stats(b: Bench) -> None:
    answer = await b.send("GET", "/v1/stats")
    reply = answer.decode(Stats)
    for where, counts, names in (
        ("jobs", reply.jobs, JOB_STATUSES),
        ("bots", reply.bots, BOT_STATUSES),
    ):
        for name in names:
            value = counts.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise answer.fail(f"{where}.{name} as a count", f"{where}.{name} = {value!r}")


@check(
    "jobs.batch",
    "POST /v1/jobs/batch submits in one go, in order: 201 when any is new, 200 when none is;"
    " known idempotency keys give the existing jobs",
    extension=True,
)
async def batch(b: Bench) -> None:
    existing = await b.submit(idempotency_key=f"{b.kind}-old")
    entries = [b.job_body(idempotency_key=f"{b.kind}-{key}") for key in ("new", "old")]
    answer = await b.extension("POST", "/v1/jobs/batch", {"jobs": entries})
    reply = answer.decode(JobBatchResult, status=(201,))
    for view in reply.jobs:
        b.track(view.job_id)
    if len(reply.jobs) != 2 or reply.created != 1 or reply.jobs[1].job_id != existing.job_id:
        raise answer.fail(f"2 jobs, created 1, the second being {existing.job_id}")
    answer = await b.send("POST", "/v1/jobs/batch", {"jobs": entries})
    again = answer.decode(JobBatchResult, status=(200,))
    if again.created != 0 or [v.job_id for v in again.jobs] != [v.job_id for v in reply.jobs]:
        raise answer.fail("200, created 0, the same jobs in the same order")


@check(
    "jobs.batch_rejected_whole",
    "a batch with one bad entry is 400 naming that entry, and queues none of the others",
    extension=True,
)
async def batch_rejected(b: Bench) -> None:
    good = [b.job_body(idempotency_key=f"{b.kind}-good{i}") for i in range(2)]
    bad = b.job_body(max_attempts=0)
    answer = await b.extension("POST", "/v1/jobs/batch", {"jobs": [*good, bad]})
    message = answer.error(400, "invalid_request", names="max_attempts")
    if "2" not in message:
        raise answer.fail("a message naming entry 2 of the batch", json.dumps(message))
    for i in range(2):
        await b.submit(idempotency_key=f"{b.kind}-good{i}")  # 201: no good entry was queued
