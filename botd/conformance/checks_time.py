"""Checks that involve time: the long poll and its wake-ups, lease renewal, expiry, cancel."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable

import trio

from ..models import ClaimedJob
from .bench import Bench, Session
from .probe import CheckFailed
from .registry import check

__all__: list[str] = []

#: How soon after the event a waiting claim must answer. docs/protocol.md allows a missed
#: notification to wait for a re-check every 2 s, with several replicas.
WAKE_BOUND_S = 3.0
#: The long poll of the wake-up checks: long enough that a claim that never wakes is seen.
LONG_WAIT_S = 6.0
#: The long poll that must come back empty.
EMPTY_WAIT_S = 1.0
#: How long a waiting claim is given to start waiting before the event that should wake it.
SETTLE_S = 0.5
#: Expiry must happen this soon after the TTL runs out ("on time, not on a polling tick").
EXPIRY_SLACK_S = 5.0


@check(
    "longpoll.empty_after_wait",
    "with nothing to claim, a claim with wait_s answers [] after wait_s, not before",
)
async def empty_after_wait(b: Bench) -> None:
    session = await b.register()
    answer, reply = await b.claim_answer(session, wait_s=EMPTY_WAIT_S)
    if reply.jobs:
        raise answer.fail("no job")
    if not EMPTY_WAIT_S * 0.9 <= answer.seconds <= EMPTY_WAIT_S + WAKE_BOUND_S:
        raise answer.fail(f"[] after about {EMPTY_WAIT_S:g} s", f"[] after {answer.seconds:.2f} s")


async def _woken_by(
    b: Bench, waiter: Session, event: Callable[[], Awaitable[str]], what: str
) -> ClaimedJob:
    """Start a long poll, run ``event`` (which returns the job id it makes claimable), and
    require the poll to answer with that job within :data:`WAKE_BOUND_S`."""
    got: list[list[ClaimedJob]] = []
    answered_at: list[float] = []

    async def poll() -> None:
        got.append(await b.claim(waiter, wait_s=LONG_WAIT_S))
        answered_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(SETTLE_S)
        event_at = trio.current_time()
        job_id = await event()
    jobs = got[0]
    if [job.job_id for job in jobs] != [job_id]:
        raise b.probe.last().fail(
            f"the waiting claim to get job {job_id} after {what}", f"{[job.job_id for job in jobs]}"
        )
    late = answered_at[0] - event_at
    if late > WAKE_BOUND_S:
        raise b.probe.last().fail(
            f"the waiting claim to answer within {WAKE_BOUND_S:g} s of {what}", f"{late:.2f} s"
        )
    return jobs[0]


@check(
    "longpoll.wakes_on_submit",
    f"a waiting claim answers within {WAKE_BOUND_S:g} s of a submit, with the new job",
)
async def wakes_on_submit(b: Bench) -> None:
    waiter = await b.register()

    async def submit() -> str:
        return (await b.submit()).job_id

    await _woken_by(b, waiter, submit, "the submit")


@check(
    "longpoll.wakes_on_release",
    f"a waiting claim answers within {WAKE_BOUND_S:g} s of another bot's release",
)
async def wakes_on_release(b: Bench) -> None:
    holder, waiter = await b.register(), await b.register()
    view, job = await b.submit_and_claim(holder)

    async def release() -> str:
        await b.ack_recorded(job.lease_id, "released")
        return view.job_id

    claimed = await _woken_by(b, waiter, release, "the release")
    if claimed.attempt != 1:
        raise CheckFailed("attempt 1 after a release", f"attempt {claimed.attempt}")


@check(
    "longpoll.wakes_on_deregister",
    f"a waiting claim answers within {WAKE_BOUND_S:g} s of another bot's deregistration,"
    " with the job it held",
)
async def wakes_on_deregister(b: Bench) -> None:
    holder, waiter = await b.register(), await b.register()
    view, _ = await b.submit_and_claim(holder)

    async def deregister() -> str:
        await b.deregister(holder)
        return view.job_id

    await _woken_by(b, waiter, deregister, "the deregistration")


@check(
    "longpoll.disconnect_takes_no_job",
    "a waiting claim whose client went away takes no job: a job submitted after is claimable",
)
async def disconnect_takes_no_job(b: Bench) -> None:
    session = await b.register()
    async with b.probe.sibling() as doomed:
        body = b.claim_body(session, wait_s=LONG_WAIT_S)
        with trio.move_on_after(SETTLE_S):
            await doomed.send("POST", "/v1/jobs/claim", body, limit_s=LONG_WAIT_S + 5)
            raise CheckFailed("the claim to wait", "an answer at once", doomed.exchanges[-1])
    await trio.sleep(SETTLE_S)  # time for the server to see the connection close
    view = await b.submit()
    await trio.sleep(SETTLE_S)
    jobs = await b.claim(session)
    if [job.job_id for job in jobs] != [view.job_id]:
        current = await b.job(view.job_id)
        raise b.probe.last().fail(
            f"job {view.job_id} to be claimable (queued)",
            f"status {current.status!r}: it went to the claim that had gone away",
        )
    if jobs[0].attempt != 1:
        raise b.probe.last().fail("attempt 1", f"attempt {jobs[0].attempt}")


@check(
    "lease.renewed_by_heartbeat",
    "a heartbeat listing a lease extends it to now + lease_ttl_s; one listing none answers"
    " lease_expires_at null",
)
async def renewed(b: Bench) -> None:
    session = await b.register()
    _, job = await b.submit_and_claim(session)
    claimed_at = trio.current_time()
    answer = b.probe.last()
    first = answer.timestamp("lease_expires_at", job.lease_expires_at)
    pause = min(1.0, b.lease_ttl() / 4)
    await trio.sleep(pause)
    reply = await b.heartbeat(session, [job.lease_id])
    answer = b.probe.last()
    if reply.lease_expires_at is None or job.lease_id in reply.lost_leases:
        raise answer.fail("the lease renewed: lease_expires_at set, the lease not lost")
    moved = answer.timestamp("lease_expires_at", reply.lease_expires_at) - first
    elapsed = trio.current_time() - claimed_at
    if not pause * 0.5 <= moved <= elapsed + 2.0:
        raise answer.fail(
            f"lease_expires_at later by about {elapsed:.1f} s (the time between)",
            f"later by {moved:.2f} s",
        )
    idle = await b.register()
    if (await b.heartbeat(idle)).lease_expires_at is not None:
        raise b.probe.last().fail("lease_expires_at null for a heartbeat listing no lease")


@check(
    "lease.cancel_leases",
    "cancelling a leased job cancels it at once; the bot's heartbeat lists it in"
    " cancel_leases; its ack is still recorded and the job stays cancelled",
)
async def cancel_leases(b: Bench) -> None:
    session = await b.register()
    view, job = await b.submit_and_claim(session)
    await b.send("POST", f"/v1/jobs/{view.job_id}/cancel")
    await b.expect_job(view.job_id, "cancelled")
    reply = await b.heartbeat(session, [job.lease_id])
    if job.lease_id not in reply.cancel_leases:
        raise b.probe.last().fail(f"cancel_leases with {job.lease_id}")
    await b.ack_recorded(job.lease_id, result={"too": "late"})
    await b.expect_job(view.job_id, "cancelled")


@check(
    "lease.lost_leases",
    "a heartbeat lists in lost_leases the listed leases the bot no longer holds (acked or"
    " unknown), and not the ones it holds",
)
async def lost_leases(b: Bench) -> None:
    session = await b.register()
    _, acked = await b.submit_and_claim(session)
    _, held = await b.submit_and_claim(session)
    await b.ack_recorded(acked.lease_id, result=None)
    unknown = f"{b.kind}-{secrets.token_hex(8)}"
    reply = await b.heartbeat(session, [acked.lease_id, held.lease_id, unknown])
    if set(reply.lost_leases) != {acked.lease_id, unknown}:
        raise b.probe.last().fail(
            f"lost_leases = the acked and the unknown lease only "
            f"{sorted([acked.lease_id, unknown])}"
        )


@check(
    "lease.expiry",
    "a lease not renewed within lease_ttl_s expires on time: its job is queued with the"
    " attempt spent, and on its last attempt becomes dead (lease_expired); a heartbeat then"
    " lists it as lost, and the old lease's ack is lease_lost",
    slow=True,
)
async def expiry(b: Bench) -> None:
    ttl = b.lease_ttl()
    session = await b.register()  # this bot never heartbeats
    view, first = await b.submit_and_claim(session, max_attempts=2)
    claimed_at = trio.current_time()
    requeued = await b.wait_for_job(view.job_id, {"queued"}, within_s=ttl + EXPIRY_SLACK_S)
    if trio.current_time() - claimed_at < ttl * 0.8 or requeued.attempts != 1:
        raise b.probe.last().fail(
            f"the job queued again after {ttl:g} s with attempts 1",
            f"after {trio.current_time() - claimed_at:.1f} s, attempts {requeued.attempts}",
        )
    second = await b.claim_one(session)
    if second.attempt != 2:
        raise b.probe.last().fail("attempt 2", f"attempt {second.attempt}")
    (await b.ack(first.lease_id, result=None)).error(409, "lease_lost")
    dead = await b.wait_for_job(view.job_id, {"dead"}, within_s=ttl + EXPIRY_SLACK_S)
    if dead.error is None or dead.error.type != "lease_expired":
        raise b.probe.last().fail("error.type 'lease_expired' on the dead job")
    reply = await b.heartbeat(session, [second.lease_id])
    if second.lease_id not in reply.lost_leases:
        raise b.probe.last().fail(f"lost_leases with the expired {second.lease_id}")


@check(
    "lease.unlisted_released",
    "a heartbeat that does not list a lease older than lease_ttl_s / 3 releases it, with"
    " the attempt given back",
    slow=True,
    extension=True,
)
async def unlisted_released(b: Bench) -> None:
    session = await b.register()
    view, _ = await b.submit_and_claim(session)
    await trio.sleep(b.lease_ttl() / 3 + 0.5)
    await b.heartbeat(session, [])
    await b.expect_job(view.job_id, "queued", attempts=0)
