"""Checks of the whole run, after its cleanup: the error bodies it saw, and the invariant."""

from __future__ import annotations

from ..models import JobList
from .bench import Bench
from .checks_jobs import JOB_STATUSES
from .probe import Answer, CheckFailed, error_shape_problem
from .registry import check

__all__: list[str] = []


@check(
    "errors.body_shape",
    'every error answer of the run was JSON of one shape: {"error": {"code", "message"}}',
    after_cleanup=True,
)
async def body_shape(b: Bench) -> None:
    errors = [e for e in b.probe.exchanges if e.status >= 400]
    bad = [(e, problem) for e in errors if (problem := error_shape_problem(e))]
    if not errors:
        raise CheckFailed("some error answers to judge (run more checks)", "none")
    if bad:
        exchange, problem = bad[0]
        raise CheckFailed(
            f"the error shape on all {len(errors)} error answers",
            f"{len(bad)} without it; the first: {problem}",
            exchange,
        )


@check(
    "invariant",
    "every job of the run is in exactly one status; a succeeded job holds the first result"
    " recorded for it; a failed or dead job says why",
    after_cleanup=True,
)
async def invariant(b: Bench) -> None:
    ours = set(b.run.job_ids)
    if not ours:
        raise CheckFailed("some jobs of the run to judge (run more checks)", "none")
    listed: dict[str, list[str]] = {}
    for status in JOB_STATUSES:
        answer = await b.send("GET", "/v1/jobs", params={"status": status, "limit": 1000})
        for job in answer.decode(JobList).jobs:
            if job.job_id in ours:
                listed.setdefault(job.job_id, []).append(status)
    for job_id in b.run.job_ids:
        view = await b.job(job_id)
        answer = b.probe.last()
        _judge(answer, view.status, listed.get(job_id, [view.status]), job_id)
        limit = answer.json().get("max_attempts")  # an extension field: judged when sent
        if isinstance(limit, int) and view.attempts > limit:
            raise answer.fail(f"attempts <= max_attempts {limit}")
        if view.status == "succeeded":
            if job_id not in b.run.first_results:
                raise answer.fail("no succeeded job but those a recorded ack succeeded")
            if view.result != b.run.first_results[job_id]:
                raise answer.fail(f"the first recorded result {b.run.first_results[job_id]!r}")
        if view.status in ("failed", "dead") and view.error is None:
            raise answer.fail(f"an error on a {view.status} job")
        if view.status == "dead" and view.error and view.error.type != "lease_expired":
            raise answer.fail("error.type 'lease_expired' on a dead job")


def _judge(answer: Answer, status: str, lists: list[str], job_id: str) -> None:
    if status not in JOB_STATUSES:
        raise answer.fail(f"a status among {', '.join(JOB_STATUSES)}")
    if lists != [status]:
        raise answer.fail(
            f"job {job_id} listed under its status {status!r} only",
            f"listed under {lists}",
        )
