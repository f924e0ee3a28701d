"""The SQLite claim reads the queue by one of two plans (``SqliteBackend._pick_index``): in the
claim's order through ``jobs_queue`` while few queued jobs are not due, else through
``jobs_due`` and a sort. Whichever it takes, a claim leases the same jobs: the due queued
ones, by priority then age, never one that is not due.
"""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from botd.models import ClaimRequest, JobSubmit, RegisterRequest
from botd.server.store import sqlite_backend
from botd.server.store.sqlite_backend import Moment, SqliteBackend

#: (priority, delayed) of each submitted job, in submission order.
JOBS = st.lists(st.tuples(st.integers(-2, 2), st.booleans()), max_size=30)


@pytest.mark.parametrize("skip_limit", [1, 4, 1000])
# The patch is the same for every example: the fixture's scope does not matter here.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(jobs=JOBS, max_jobs=st.integers(0, 12), kinds=st.booleans())
def test_a_claim_leases_the_due_jobs_by_priority_then_age_whichever_the_plan(
    monkeypatch: pytest.MonkeyPatch,
    skip_limit: int,
    jobs: list[tuple[int, bool]],
    max_jobs: int,
    kinds: bool,
) -> None:
    # A small limit takes the sorting plan as soon as that many jobs are not due.
    monkeypatch.setattr(sqlite_backend, "_PICK_SKIP_LIMIT", skip_limit)
    at = Moment(100.0, 1_700_000_000.0)
    backend = SqliteBackend(":memory:")
    try:
        backend.open(at, 30.0)
        session, _ = backend.register(RegisterRequest(bot_id="b"), at, 30.0)
        submits = [
            JobSubmit(
                kind="even" if i % 2 == 0 else "odd",
                priority=priority,
                delay_s=60.0 if delayed else None,
            )
            for i, (priority, delayed) in enumerate(jobs)
        ]
        views = [view for view, _ in backend.submit_many(submits, at)] if submits else []
        wanted = sorted(
            (
                (-priority, i, views[i].job_id)
                for i, (priority, delayed) in enumerate(jobs)
                if not delayed and (not kinds or i % 2 == 0)
            ),
        )
        req = ClaimRequest(
            bot_id="b",
            session_id=session,
            max_jobs=max_jobs,
            kinds=["even"] if kinds else None,
        )
        got = backend.claim(req, at, 30.0)
        assert [j.job_id for j in got.jobs] == [job_id for _, _, job_id in wanted[:max_jobs]]
    finally:
        backend.close()
