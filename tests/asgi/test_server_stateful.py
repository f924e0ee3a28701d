"""Hypothesis state machine over both stores: any interleaving keeps the invariant.

The same machine drives :class:`SqliteBackend` (the synchronous SQL of the SQLite store)
with a fake clock, and :class:`PostgresStore` on a real PostgreSQL whose ``now()`` is
replaced by a clock kept in the database (``clock_sql``), so both are exact and fast and
hours can pass in no time: submit, claim (with piggybacked acks), single acks, heartbeats,
re-registrations, deregistrations, cancels, retries of dead and failed jobs (one, or all of
a status), delayed submits and the passing of time (then expiry).
After every step: every job is in exactly one known status and none is lost; a leased job
has exactly one active lease; a succeeded job has exactly one recorded result, and it came
from a lease of that job whose success was recorded; final statuses never change but by a
retry, which queues the job with no attempt spent and no result; a lease granted before a
retry is never recorded after it; no job is claimed before it is due; an ack repeated is
``duplicate`` and a different outcome for an acked lease is ``conflict``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hypothesis.strategies as st
import psycopg
import trio
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from botd.models import (
    FINAL_JOB_STATUSES,
    JOB_STATUSES,
    Ack,
    AckResult,
    BotInfo,
    ClaimRequest,
    ClaimResponse,
    FailureInfo,
    HeartbeatRequest,
    HeartbeatResponse,
    JobSubmit,
    JobView,
    RegisterRequest,
    Stats,
)
from botd.server.store import Moment, SqliteBackend, StoreRejected
from botd.server.store.postgres import PostgresStore

T = TypeVar("T")

BOTS = ("bot-a", "bot-b", "bot-c")
TTL = 2.0
outcomes = st.sampled_from(["succeeded", "failed", "released"])


class SqliteDriver:
    """The machine's view of the SQLite store: its backend on a fake monotonic clock."""

    def __init__(self) -> None:
        self.backend = SqliteBackend(":memory:")
        self.mono = 1000.0

    def at(self) -> Moment:
        return Moment(self.mono, 1_700_000_000.0 + self.mono)

    def advance(self, dt: float) -> None:
        self.mono += dt

    def register(self, req: RegisterRequest) -> str:
        return self.backend.register(req, self.at(), TTL)[0]

    def get_bot(self, bot_id: str) -> BotInfo:
        return self.backend.get_bot(bot_id)

    def submit(self, job: JobSubmit) -> tuple[JobView, bool]:
        return self.backend.submit(job, self.at())

    def get_job(self, job_id: str) -> JobView:
        return self.backend.get_job(job_id)

    def claim(self, req: ClaimRequest) -> ClaimResponse:
        return self.backend.claim(req, self.at(), TTL)

    def ack(self, ack: Ack) -> AckResult:
        return self.backend.ack(ack, self.at())

    def heartbeat(self, bot_id: str, req: HeartbeatRequest) -> HeartbeatResponse:
        return self.backend.heartbeat(bot_id, req, self.at(), TTL)[0]

    def deregister(self, bot_id: str, session_id: str) -> None:
        self.backend.deregister(bot_id, session_id, self.at())

    def cancel_job(self, job_id: str) -> JobView:
        return self.backend.cancel_job(job_id, self.at())

    def expire(self) -> None:
        self.backend.expire(self.at(), gone_after_s=5.0)

    def deadline_in(self) -> float | None:
        nxt = self.backend.next_deadline(self.at())
        return None if nxt is None else nxt - self.mono

    def check_invariant(self) -> list[str]:
        return self.backend.check_invariant()

    def list_jobs(self) -> list[JobView]:
        return self.backend.list_jobs(None, 1000)

    def stats(self) -> Stats:
        return self.backend.stats(self.at())

    def retry_job(self, job_id: str) -> JobView:
        return self.backend.retry_job(job_id)

    def retry_jobs(self, status: str, kind: str | None) -> list[str]:
        return self.backend.retry_jobs(status, kind, 1000)


class PostgresDriver:
    """The machine's view of the PostgreSQL store, on a clock kept in the database.

    Each call is one ``trio.run`` (the store is async); ``reset`` empties the tables
    between Hypothesis examples, much faster than a new database.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.store = PostgresStore(
            dsn, pool_size=2, clock_sql="botd_test_now()", statement_timeout_s=30.0
        )
        self._run(self.store.open(lease_ttl_s=TTL))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS botd_test_clock (t timestamptz NOT NULL);"
                "CREATE OR REPLACE FUNCTION botd_test_now() RETURNS timestamptz"
                " LANGUAGE sql STABLE AS 'SELECT t FROM botd_test_clock'"
            )

    @staticmethod
    def _run(call: Awaitable[T]) -> T:
        async def run() -> T:
            return await call

        return trio.run(run)

    def reset(self) -> PostgresDriver:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE bots, jobs, leases RESTART IDENTITY")
            conn.execute("DELETE FROM botd_test_clock")
            conn.execute("INSERT INTO botd_test_clock VALUES ('2026-01-01T00:00:00Z')")
        return self

    def advance(self, dt: float) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("UPDATE botd_test_clock SET t = t + %s * interval '1 second'", (dt,))

    def register(self, req: RegisterRequest) -> str:
        return self._run(self.store.register(req, lease_ttl_s=TTL))[0]

    def get_bot(self, bot_id: str) -> BotInfo:
        return self._run(self.store.get_bot(bot_id))

    def submit(self, job: JobSubmit) -> tuple[JobView, bool]:
        return self._run(self.store.submit(job))

    def get_job(self, job_id: str) -> JobView:
        return self._run(self.store.get_job(job_id))

    def claim(self, req: ClaimRequest) -> ClaimResponse:
        return self._run(self.store.claim(req, lease_ttl_s=TTL))

    def ack(self, ack: Ack) -> AckResult:
        return self._run(self.store.ack(ack))

    def heartbeat(self, bot_id: str, req: HeartbeatRequest) -> HeartbeatResponse:
        return self._run(self.store.heartbeat(bot_id, req, lease_ttl_s=TTL))[0]

    def deregister(self, bot_id: str, session_id: str) -> None:
        self._run(self.store.deregister(bot_id, session_id))

    def cancel_job(self, job_id: str) -> JobView:
        return self._run(self.store.cancel_job(job_id))

    def expire(self) -> None:
        self._run(self.store.expire(gone_after_s=5.0))

    def deadline_in(self) -> float | None:
        return self._run(self.store.deadline_in())

    def check_invariant(self) -> list[str]:
        return self._run(self.store.check_invariant())

    def list_jobs(self) -> list[JobView]:
        return self._run(self.store.list_jobs(status=None, limit=1000))

    def stats(self) -> Stats:
        return self._run(self.store.stats())

    def retry_job(self, job_id: str) -> JobView:
        return self._run(self.store.retry_job(job_id))

    def retry_jobs(self, status: str, kind: str | None) -> list[str]:
        return self._run(self.store.retry_jobs(status=status, kind=kind, limit=1000))

    def close(self) -> None:
        self.store.close_sync()


Driver = SqliteDriver | PostgresDriver


class StoreMachine(RuleBasedStateMachine):
    #: Makes the driver of one example (a fresh store, or an emptied one).
    make_driver: Callable[[], Driver] = SqliteDriver

    def __init__(self) -> None:
        super().__init__()
        self.store = type(self).make_driver()
        self.jobs: set[str] = set()
        self.job_order: list[str] = []  # insertion order: draws must not depend on random ids
        self.final: dict[str, str] = {}
        self.sessions: dict[str, str] = {}
        self.leases: dict[str, str] = {}  # lease -> job
        self.lease_bot: dict[str, str] = {}
        self.acked: dict[str, str] = {}  # lease -> first recorded outcome
        self.succeeded_by: dict[str, str] = {}  # lease -> job, success recorded on a live job
        self.keys: dict[str, str] = {}
        self.clock = 0.0  # seconds the store's clock has moved since the start
        self.due: dict[str, float] = {}  # job -> when its delay ends, on self.clock
        self.retired: set[str] = set()  # leases granted before their job's latest retry

    def add_job(self, job_id: str) -> None:
        if job_id not in self.jobs:
            self.jobs.add(job_id)
            self.job_order.append(job_id)

    def make_ack(self, lease: str, outcome: str, retryable: bool) -> Ack:
        error = FailureInfo("boom", "it broke", retryable) if outcome == "failed" else None
        result = {"lease": lease} if outcome == "succeeded" else None
        return Ack(lease_id=lease, outcome=outcome, result=result, error=error)  # type: ignore[arg-type]

    def check_ack(self, ack: Ack, status: str, job_before: str) -> None:
        lease = ack.lease_id
        if lease in self.acked:
            expected = "duplicate" if self.acked[lease] == ack.outcome else "conflict"
            assert status == expected, (lease, status, expected)
            return
        if lease in self.retired:
            assert status == "lease_lost", "a lease from before a retry has lost its job"
        assert status in ("recorded", "lease_lost"), status
        if status == "recorded":
            self.acked[lease] = ack.outcome
            if ack.outcome == "succeeded" and job_before != "cancelled":
                self.succeeded_by[lease] = self.leases[lease]

    def status_of(self, job_id: str) -> str:
        return self.store.get_job(job_id).status

    # -- rules -----------------------------------------------------------------------

    @initialize(n=st.integers(1, 4))
    def start(self, n: int) -> None:
        for bot in BOTS[:2]:
            self.sessions[bot] = self.store.register(RegisterRequest(bot_id=bot))
        for _ in range(n):
            view, _ = self.store.submit(JobSubmit(kind="k", max_attempts=2))
            self.add_job(view.job_id)

    @rule(
        max_attempts=st.integers(1, 3),
        priority=st.integers(0, 2),
        key=st.none() | st.sampled_from(["k1", "k2"]),
        delay=st.none() | st.sampled_from([0.0, 1.0, 3.0]),
        kind=st.sampled_from(["k", "other"]),
    )
    def submit(
        self, max_attempts: int, priority: int, key: str | None, delay: float | None, kind: str
    ) -> None:
        job = JobSubmit(
            kind=kind,
            payload=None,
            max_attempts=max_attempts,
            priority=priority,
            idempotency_key=key,
            delay_s=delay,
        )
        view, created = self.store.submit(job)
        if key is not None and key in self.keys:
            assert not created
            assert view.job_id == self.keys[key]
        else:
            assert created
            assert view.status == "queued"
            assert (view.run_at is None) == (not delay)
            if delay:
                self.due[view.job_id] = self.clock + delay
            if key is not None:
                self.keys[key] = view.job_id
        self.add_job(view.job_id)

    @rule(bot=st.sampled_from(BOTS), data=st.data())
    def register(self, bot: str, data: st.DataObject) -> None:
        held = [lease for lease, owner in self.lease_bot.items() if owner == bot]
        keep = data.draw(st.lists(st.sampled_from(held), unique=True)) if held else []
        session = self.store.register(RegisterRequest(bot_id=bot, active_leases=keep))
        assert session != self.sessions.get(bot)
        self.sessions[bot] = session
        info = self.store.get_bot(bot)
        assert set(info.active_leases) <= set(keep)

    @precondition(lambda self: bool(self.sessions))
    @rule(
        data=st.data(),
        max_jobs=st.integers(0, 3),
        stale=st.integers(0, 9).map(lambda n: n == 0),
        n_acks=st.integers(0, 3),
        retryable=st.booleans(),
    )
    def claim(
        self, data: st.DataObject, max_jobs: int, stale: bool, n_acks: int, retryable: bool
    ) -> None:
        bot = data.draw(st.sampled_from(sorted(self.sessions)))
        session = "stale" if stale else self.sessions[bot]
        acks = []
        if self.leases and n_acks:
            for _ in range(n_acks):
                lease = data.draw(st.sampled_from(list(self.leases)))
                acks.append(self.make_ack(lease, data.draw(outcomes), retryable))
        req = ClaimRequest(bot_id=bot, session_id=session, max_jobs=max_jobs, acks=acks)
        before = {a.lease_id: self.status_of(self.leases[a.lease_id]) for a in acks}
        try:
            got = self.store.claim(req)
        except StoreRejected as exc:
            assert exc.code == "session_superseded"
            assert stale or self.store.get_bot(bot).status == "deregistered"
            return
        assert not stale
        assert len(got.acks) == len(acks)
        for ack, result in zip(acks, got.acks, strict=True):
            assert result.lease_id == ack.lease_id
            self.check_ack(ack, result.status, before[ack.lease_id])
        assert len(got.jobs) <= max_jobs
        for job in got.jobs:
            assert job.job_id in self.jobs
            # (A micro-second of slack: the store's clock adds the same steps in another order.)
            assert self.due.get(job.job_id, 0.0) <= self.clock + 1e-6, "claimed before due"
            assert job.lease_id not in self.leases
            self.leases[job.lease_id] = job.job_id
            self.lease_bot[job.lease_id] = bot

    @precondition(lambda self: bool(self.leases))
    @rule(data=st.data(), outcome=outcomes, retryable=st.booleans())
    def ack(self, data: st.DataObject, outcome: str, retryable: bool) -> None:
        lease = data.draw(st.sampled_from(list(self.leases)))
        ack = self.make_ack(lease, outcome, retryable)
        before = self.status_of(self.leases[lease])
        result = self.store.ack(ack)
        self.check_ack(ack, result.status, before)

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        bot = data.draw(st.sampled_from(sorted(self.sessions)))
        listed = data.draw(st.lists(st.sampled_from(list(self.leases) or ["none"]), unique=True))
        req = HeartbeatRequest(session_id=self.sessions[bot], active_leases=listed)
        try:
            resp = self.store.heartbeat(bot, req)
        except StoreRejected as exc:
            assert exc.code == "session_superseded"
            assert self.store.get_bot(bot).status == "deregistered"
            return
        held = set(self.store.get_bot(bot).active_leases)
        assert set(resp.lost_leases) == set(listed) - held
        for lease in resp.cancel_leases:
            assert self.status_of(self.leases[lease]) == "cancelled"

    @precondition(lambda self: bool(self.sessions))
    @rule(data=st.data())
    def deregister(self, data: st.DataObject) -> None:
        bot = data.draw(st.sampled_from(sorted(self.sessions)))
        try:
            self.store.deregister(bot, self.sessions[bot])
        except StoreRejected as exc:
            assert exc.code == "session_superseded"
            return
        assert self.store.get_bot(bot).active_leases == []

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.job_order))
        before = self.status_of(job_id)
        try:
            view = self.store.cancel_job(job_id)
        except StoreRejected as exc:
            assert exc.code == "job_finished"
            assert before in FINAL_JOB_STATUSES - {"cancelled"}
            return
        assert view.status == "cancelled"

    def retried(self, job_id: str) -> None:
        self.final.pop(job_id, None)
        self.retired |= {lease for lease, job in self.leases.items() if job == job_id}

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.job_order))
        before = self.status_of(job_id)
        try:
            view = self.store.retry_job(job_id)
        except StoreRejected as exc:
            assert exc.code == "job_not_retryable"
            assert before not in ("dead", "failed")
            return
        assert before in ("dead", "failed")
        assert (view.status, view.attempts, view.result, view.finished_at) == (
            "queued",
            0,
            None,
            None,
        )
        assert view.error is not None, "the last failure stays"
        self.retried(job_id)

    @rule(status=st.sampled_from(["dead", "failed"]), kind=st.none() | st.just("k"))
    def retry_all(self, status: str, kind: str | None) -> None:
        views = {j.job_id: j for j in self.store.list_jobs()}
        expected = {
            job_id
            for job_id, view in views.items()
            if view.status == status and kind in (None, view.kind)
        }
        ids = self.store.retry_jobs(status, kind)
        assert set(ids) == expected and len(ids) == len(expected)
        for job_id in ids:
            self.retried(job_id)

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.5, 10.0]))
    def advance_and_expire(self, dt: float) -> None:
        self.clock += dt
        self.store.advance(dt)
        self.store.expire()
        left = self.store.deadline_in()
        assert left is None or left > 0, "after expiry, no deadline has passed"

    # -- the invariant ---------------------------------------------------------------

    @invariant()
    def invariant_holds(self) -> None:
        assert self.store.check_invariant() == []
        views = {j.job_id: j for j in self.store.list_jobs()}
        assert set(views) == self.jobs, "no job lost, none invented"
        stats = self.store.stats()
        assert sum(stats.jobs.values()) == len(self.jobs)
        delayed = {
            job_id
            for job_id, view in views.items()
            if view.status == "queued" and self.due.get(job_id, 0.0) > self.clock + 1e-6
        }
        assert len(delayed) <= stats.scheduled <= stats.jobs["queued"]
        for job_id, view in views.items():
            assert view.status in JOB_STATUSES
            assert 0 <= view.attempts <= view.max_attempts
            if job_id in self.final:
                assert view.status == self.final[job_id], "a final status never changes"
            elif view.status in FINAL_JOB_STATUSES:
                self.final[job_id] = view.status
            if view.status == "succeeded":
                result: Any = view.result
                assert isinstance(result, dict)
                lease = result["lease"]
                assert self.succeeded_by.get(lease) == job_id
                others = [
                    other
                    for other, job in self.succeeded_by.items()
                    if job == job_id and other != lease
                ]
                assert others == [], "exactly one recorded result"
            if view.status == "leased":
                assert view.attempts >= 1
            if view.status == "queued":
                assert view.attempts < view.max_attempts, "out of attempts must be final"


StoreMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
TestStoreMachine = StoreMachine.TestCase


def test_postgres_store_keeps_the_same_invariant(pg_dsn: str) -> None:
    """The same machine on PostgreSQL (fewer examples: each step is a few round trips)."""
    driver = PostgresDriver(pg_dsn)

    class PostgresMachine(StoreMachine):
        make_driver = driver.reset

    try:
        run_state_machine_as_test(
            PostgresMachine,
            settings=settings(max_examples=12, stateful_step_count=30, deadline=None),
        )
    finally:
        driver.close()
