"""Checks of the work routes: claim, the acks (single and piggybacked) and their statuses."""

from __future__ import annotations

import secrets
from typing import Any

import trio

from ..models import ClaimResponse
from .bench import Bench
from .probe import CheckFailed
from .registry import check

__all__: list[str] = []

#: The server's retry backoff after a first retryable failure (docs/protocol.md).
FIRST_RETRY_S = 0.5


def _failure(retryable: bool) -> dict[str, Any]:
    return {"type": "conformance", "message": "failed on purpose", "retryable": retryable}


@check(
    "claim.leases",
    "a claim leases a queued job: its payload, timeout_s, attempt 1 and lease_expires_at;"
    " the job shows leased to the bot",
)
async def claim_leases(b: Bench) -> None:
    session = await b.register()
    payload = {"list": [1, 2, 3], "nested": {"ok": True}}
    view, job = await b.submit_and_claim(session, payload=payload, timeout_s=9.5)
    wanted = (view.job_id, b.kind, payload, 1, 9.5)
    got = (job.job_id, job.kind, job.payload, job.attempt, job.timeout_s)
    if got != wanted:
        raise b.probe.last().fail(
            f"(job_id, kind, payload, attempt, timeout_s) = {wanted}", f"{got}"
        )
    if not job.lease_id:
        raise b.probe.last().fail("a lease_id", "an empty one")
    await b.expect_job(job.job_id, "leased", attempts=1, bot_id=session.bot_id)


@check(
    "claim.max_jobs_and_kinds",
    "a claim takes at most max_jobs jobs, only of the kinds asked for; kinds [] takes none",
)
async def max_jobs_and_kinds(b: Bench) -> None:
    session = await b.register()
    for _ in range(3):
        await b.submit()
    if jobs := await b.claim(session, max_jobs=2, kinds=[]):
        raise b.probe.last().fail("no job for kinds []", f"{len(jobs)} jobs")
    if jobs := await b.claim(session, max_jobs=2, kinds=[f"{b.kind}-other"]):
        raise b.probe.last().fail("no job of another kind", f"{len(jobs)} jobs")
    if len(jobs := await b.claim(session, max_jobs=2)) != 2:
        raise b.probe.last().fail("2 jobs for max_jobs 2", f"{len(jobs)}")
    if jobs := await b.claim(session, max_jobs=0):
        raise b.probe.last().fail("no job for max_jobs 0", f"{len(jobs)} jobs")
    if len(jobs := await b.claim(session, max_jobs=5)) != 1:
        raise b.probe.last().fail("the 1 job left", f"{len(jobs)} jobs")


@check(
    "claim.order",
    "a claim takes the highest priority first and, among equal priorities, the oldest first",
)
async def claim_order(b: Bench) -> None:
    session = await b.register()
    made = []
    for priority in (0, 5, 0, -1):
        made.append((await b.submit(priority=priority)).job_id)
        await trio.sleep(0.02)  # created_at has milliseconds: keep the ages distinct
    wanted = [made[1], made[0], made[2], made[3]]
    got = [(await b.claim_one(session)).job_id for _ in wanted]
    if got != wanted:
        raise CheckFailed(f"the order {wanted} (priority 5, 0 older, 0 newer, -1)", f"{got}")


@check(
    "claim.bounds",
    "a claim with max_jobs over 1000, a negative one, or wait_s over 30 is 400 naming the field",
)
async def claim_bounds(b: Bench) -> None:
    session = await b.register()
    for field, value in (("max_jobs", 1001), ("max_jobs", -1), ("wait_s", 31), ("wait_s", -1)):
        body = {**b.claim_body(session), field: value}
        answer = await b.send("POST", "/v1/jobs/claim", body)
        answer.error(400, "invalid_request", names=field)


@check(
    "ack.recorded",
    "a succeeded ack of the current lease is 200 recorded; the job is succeeded with that result",
)
async def ack_recorded(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session)
    await b.ack_recorded(job.lease_id, result={"answer": 42})
    done = await b.expect_job(view.job_id, "succeeded", result={"answer": 42}, error=None)
    if done.finished_at is None:
        raise b.probe.last().fail("finished_at set on a succeeded job", "null")


@check(
    "ack.duplicate",
    "the same ack again is 200 duplicate, and the first result stands",
)
async def ack_duplicate(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session)
    await b.ack_recorded(job.lease_id, result={"first": True})
    for result in ({"first": True}, {"second": True}):
        (await b.ack(job.lease_id, result=result)).expect_body(200, {"status": "duplicate"})
    await b.expect_job(view.job_id, "succeeded", result={"first": True})


@check(
    "ack.conflict",
    "an ack of the same lease with another outcome is 409 conflict, and the first ack stands",
)
async def ack_conflict(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session)
    await b.ack_recorded(job.lease_id, result={"first": True})
    answer = await b.ack(job.lease_id, "failed", error=_failure(False))
    answer.error(409, "conflict")
    await b.expect_job(view.job_id, "succeeded", result={"first": True})


@check(
    "ack.lease_lost",
    "an ack of a lease whose job went to another lease, or ended, is 409 lease_lost",
)
async def ack_lease_lost(b: Bench) -> None:
    first = await b.register()
    view, old = await b.submit_and_claim(first)
    second = await b.register(first.bot_id)  # not listing the lease: it ends at once
    new = await b.claim_one(second)
    if new.job_id != view.job_id or new.lease_id == old.lease_id:
        raise b.probe.last().fail(f"a new lease on job {view.job_id}", f"{new}")
    (await b.ack(old.lease_id, result={"late": True})).error(409, "lease_lost")
    await b.ack_recorded(new.lease_id, result={"current": True})
    (await b.ack(old.lease_id, result={"late": True})).error(409, "lease_lost")
    await b.expect_job(view.job_id, "succeeded", result={"current": True})


@check("ack.unknown_lease", "an ack of a lease that never was is 404 unknown_lease")
async def ack_unknown(b: Bench) -> None:
    lease_id = f"{b.kind}-{secrets.token_hex(8)}"
    (await b.ack(lease_id, result=None)).error(404, "unknown_lease")


@check(
    "ack.path_mismatch",
    "an ack whose lease_id differs from the path's is 400; a bad outcome is 400",
)
async def ack_path_mismatch(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session)
    body = {"lease_id": f"{job.lease_id}-other", "outcome": "succeeded", "result": None}
    answer = await b.send("POST", f"/v1/leases/{job.lease_id}/ack", body)
    answer.expect(400)
    body = {"lease_id": job.lease_id, "outcome": "exploded"}
    (await b.send("POST", f"/v1/leases/{job.lease_id}/ack", body)).error(
        400, "invalid_request", names="outcome"
    )
    await b.expect_job(view.job_id, "leased")


@check(
    "ack.piggybacked",
    "acks sent with a claim are applied first, in order, each with its own status, and the"
    " claim still leases the next job",
)
async def ack_piggybacked(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session)
    nxt = await b.submit()
    acks = [
        {"lease_id": job.lease_id, "outcome": "succeeded", "result": {"n": 1}},
        {"lease_id": job.lease_id, "outcome": "succeeded", "result": {"n": 1}},
        {"lease_id": job.lease_id, "outcome": "released"},
        {"lease_id": f"{b.kind}-{secrets.token_hex(8)}", "outcome": "succeeded"},
    ]
    answer, reply = await b.claim_answer(session, acks=acks)
    _expect_acks(answer, reply, ["recorded", "duplicate", "conflict", "unknown_lease"])
    if [j.job_id for j in reply.jobs] != [nxt.job_id]:
        raise answer.fail(f"the claim to lease the next job {nxt.job_id}")
    await b.expect_job(view.job_id, "succeeded", result={"n": 1})


def _expect_acks(answer: Any, reply: ClaimResponse, statuses: list[str]) -> None:
    got = [(a.lease_id, a.status) for a in reply.acks]
    sent = [a["lease_id"] for a in answer.exchange.body["acks"]]
    if got != list(zip(sent, statuses, strict=True)):
        raise answer.fail(f"ack statuses {statuses} in order", f"{[s for _, s in got]}")


@check(
    "ack.released",
    "a released ack puts the job back at once without spending an attempt",
)
async def ack_released(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session, max_attempts=2)
    await b.ack_recorded(job.lease_id, "released")
    await b.expect_job(view.job_id, "queued", attempts=0)
    again = await b.claim_one(session)
    if (again.job_id, again.attempt) != (view.job_id, 1):
        raise b.probe.last().fail(
            f"job {view.job_id} again at attempt 1",
            f"job {again.job_id} at attempt {again.attempt}",
        )


@check(
    "ack.retryable_failure",
    "a retryable failure with attempts left queues the job again after the server's backoff,"
    " keeping the error; a waiting claim wakes when the retry is due",
)
async def ack_retryable(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session, max_attempts=3)
    failed_at = trio.current_time()
    await b.ack_recorded(job.lease_id, "failed", error=_failure(True))
    queued = await b.expect_job(view.job_id, "queued", attempts=1)
    if queued.error is None or queued.error.type != "conformance":
        raise b.probe.last().fail("the failure kept as the job's error", f"{queued.error}")
    early = await b.claim(session)
    if early and trio.current_time() - failed_at < FIRST_RETRY_S * 0.8:
        raise b.probe.last().fail(
            f"no claim before the {FIRST_RETRY_S:g} s backoff", "the job at once"
        )
    if not early:
        waited = trio.current_time()
        retried = await b.claim_one(session, wait_s=6)
        if trio.current_time() - waited > 5:
            raise b.probe.last().fail(
                "the waiting claim to wake when the retry came due",
                f"{trio.current_time() - waited:.1f} s",
            )
    else:
        retried = early[0]
    if (retried.job_id, retried.attempt) != (view.job_id, 2):
        raise CheckFailed(
            f"job {view.job_id} at attempt 2", f"job {retried.job_id} at attempt {retried.attempt}"
        )


@check(
    "ack.final_failure",
    "a failure that is not retryable, or a retryable one on the last attempt, fails the job",
)
async def ack_final_failure(b: Bench) -> None:
    session = await b.register()
    for retryable, attempts in ((False, 3), (True, 1)):
        view, job = await b.submit_and_claim(session, max_attempts=attempts)
        await b.ack_recorded(job.lease_id, "failed", error=_failure(retryable))
        failed = await b.expect_job(view.job_id, "failed")
        if failed.error is None or failed.error.type != "conformance":
            raise b.probe.last().fail("the failure as the job's error", f"{failed.error}")
