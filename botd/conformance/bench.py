"""What a check works with: its own kind, its own bots, and the calls of protocol v1.

A :class:`Run` is the state of one ``botd conformance`` run: the :class:`Probe`, the run's
random id, what the server told at registration (its lease TTL and heartbeat interval),
and everything the run made (jobs, bots, recorded results), for the invariant check and
the cleanup. Each check gets a :class:`Bench` on it, with a kind of its own
(``botd-conformance-<run id>-<n>``): the check submits only jobs of that kind and claims
only with ``kinds`` set to it, so it never sees a real job or another check's.

The helpers (:meth:`Bench.register`, :meth:`Bench.submit`, :meth:`Bench.claim`...) send one
call each, require the answer the protocol gives on success, and record what was made.
When a register answer carries a ``session_token`` (an extension), the helpers make that
session's calls (heartbeat, claim, ack, deregister) with it, as a botd bot does; the
checks' own requests (``b.send``) go with the run's token, the v1 way.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ..models import (
    AckResult,
    ClaimedJob,
    ClaimResponse,
    HeartbeatResponse,
    JobView,
    RegisterResponse,
)
from .probe import Answer, CheckFailed, CheckSkipped, Probe

__all__ = ["FINAL", "KIND_PREFIX", "QUICK_TTL_S", "Bench", "Run", "Session"]

#: Every kind and bot id of a run starts with this.
KIND_PREFIX = "botd-conformance-"
#: Checks that wait out the lease TTL run without ``--slow`` only when it is this short.
QUICK_TTL_S = 10.0
#: The statuses a job ends in.
FINAL = frozenset({"succeeded", "failed", "dead", "cancelled"})


@attrs.define
class Session:
    """A bot the run registered, and its current session."""

    bot_id: str
    session_id: str
    answer: RegisterResponse | None = None
    deregistered: bool = False

    @property
    def token(self) -> str | bool:
        """The bearer of this session's calls: its session token, else the run's (True)."""
        token = self.answer.session_token if self.answer is not None else None
        return token or True


@attrs.define
class Run:
    """One run's probe, what the server told it, and what it made."""

    probe: Probe
    run_id: str = attrs.field(factory=lambda: secrets.token_hex(4))
    slow: bool = False
    #: From the first registration: the server's lease TTL and heartbeat interval.
    lease_ttl_s: float | None = None
    heartbeat_interval_s: float | None = None
    job_ids: list[str] = attrs.field(factory=list)
    sessions: dict[str, Session] = attrs.field(factory=dict)
    #: lease_id -> job_id, for every job the run claimed.
    lease_jobs: dict[str, str] = attrs.field(factory=dict)
    #: lease_id -> the session that claimed it (its token acks it).
    lease_sessions: dict[str, Session] = attrs.field(factory=dict)
    #: job_id -> the first result a ``recorded`` succeeded ack sent for it.
    first_results: dict[str, Any] = attrs.field(factory=dict)

    @property
    def prefix(self) -> str:
        """The start of every kind and bot id of this run."""
        return f"{KIND_PREFIX}{self.run_id}"

    def bench(self, index: int) -> Bench:
        """The bench of the ``index``-th check: its own kind."""
        return Bench(self, f"{self.prefix}-{index}")


@attrs.define
class Bench:
    """The calls of protocol v1 as one check makes them, on its own kind."""

    run: Run
    kind: str
    _bots: int = 0

    @property
    def probe(self) -> Probe:
        return self.run.probe

    async def send(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        """:meth:`Probe.send`."""
        return await self.probe.send(method, path, body, **kw)

    async def extension(self, method: str, path: str, body: Any = None, **kw: Any) -> Answer:
        """:meth:`send` to a route that is an extension: skipped when the server has none."""
        answer = await self.send(method, path, body, **kw)
        if answer.status in (404, 405):
            raise CheckSkipped(
                f"the server does not offer {method} {path} (an extension):"
                f" {answer.exchange.answer_line()}"
            )
        return answer

    # -- bots --------------------------------------------------------------------------

    def new_bot_id(self) -> str:
        self._bots += 1
        return f"{self.kind}-bot{self._bots}"

    def register_body(self, bot_id: str, **fields: Any) -> dict[str, Any]:
        return {
            "bot_id": bot_id,
            "version": "conformance",
            "hostname": "botd-conformance",
            "pid": 1,
            "capacity": 10,
            "labels": {"conformance": self.run.run_id},
            "active_leases": [],
            **fields,
        }

    async def register(self, bot_id: str | None = None, **fields: Any) -> Session:
        """Register a bot (a new id unless given); 200 with a RegisterResponse."""
        bot_id = bot_id or self.new_bot_id()
        answer = await self.send("POST", "/v1/bots/register", self.register_body(bot_id, **fields))
        reply = answer.decode(RegisterResponse)
        if reply.bot_id != bot_id:
            raise answer.fail(f"bot_id {bot_id!r} in the answer", f"{reply.bot_id!r}")
        if not reply.session_id:
            raise answer.fail("a non-empty session_id")
        session = Session(bot_id, reply.session_id, reply)
        self.run.sessions[bot_id] = session
        if self.run.lease_ttl_s is None:
            self.run.lease_ttl_s = reply.lease_ttl_s
            self.run.heartbeat_interval_s = reply.heartbeat_interval_s
        return session

    async def heartbeat(
        self, session: Session, leases: Sequence[str] = (), *, state: str = "processing"
    ) -> HeartbeatResponse:
        """A heartbeat listing ``leases``; 200 with a HeartbeatResponse."""
        answer = await self.send(
            "POST",
            f"/v1/bots/{session.bot_id}/heartbeat",
            {"session_id": session.session_id, "state": state, "active_leases": list(leases)},
            token=session.token,
        )
        return answer.decode(HeartbeatResponse)

    async def deregister(self, session: Session) -> Answer:
        """Deregister; 204."""
        answer = await self.send(
            "DELETE",
            f"/v1/bots/{session.bot_id}",
            params={"session_id": session.session_id},
            token=session.token,
        )
        answer.expect(204)
        session.deregistered = True
        return answer

    # -- jobs --------------------------------------------------------------------------

    def job_body(self, **fields: Any) -> dict[str, Any]:
        return {"kind": self.kind, "payload": {"conformance": True}, **fields}

    def track(self, job_id: str) -> None:
        if job_id not in self.run.job_ids:
            self.run.job_ids.append(job_id)

    async def submit(self, *, status: int = 201, **fields: Any) -> JobView:
        """Submit one job of this check's kind; 201 (or ``status``) with a JobView."""
        answer = await self.send("POST", "/v1/jobs", self.job_body(**fields))
        view = answer.decode(JobView, status=(status,))
        self.track(view.job_id)
        if view.kind != self.kind or (view.status != "queued" and status == 201):
            raise answer.fail(f"a queued job of kind {self.kind!r}")
        return view

    async def job(self, job_id: str) -> JobView:
        """``GET /v1/jobs/{job_id}``; 200 with a JobView."""
        answer = await self.send("GET", f"/v1/jobs/{job_id}")
        view = answer.decode(JobView)
        if view.job_id != job_id:
            raise answer.fail(f"job {job_id!r}", f"job {view.job_id!r}")
        return view

    async def expect_job(self, job_id: str, status: str, **fields: Any) -> JobView:
        """The job, if it is in ``status`` and its ``fields`` have these values."""
        view = await self.job(job_id)
        wanted = {"status": status, **fields}
        got = {key: getattr(view, key) for key in wanted}
        if got != wanted:
            raise self.probe.last().fail(f"job {job_id} with {wanted}", f"{got}")
        return view

    async def wait_for_job(
        self, job_id: str, statuses: frozenset[str] | set[str], *, within_s: float
    ) -> JobView:
        """Poll the job until its status is one of ``statuses``, for up to ``within_s``."""
        deadline = trio.current_time() + within_s
        while True:
            view = await self.job(job_id)
            if view.status in statuses:
                return view
            if trio.current_time() >= deadline:
                wanted = " or ".join(sorted(statuses))
                raise self.probe.last().fail(
                    f"job {job_id} to be {wanted} within {within_s:g} s", f"status {view.status!r}"
                )
            await trio.sleep(0.2)

    # -- work --------------------------------------------------------------------------

    def claim_body(
        self,
        session: Session,
        *,
        max_jobs: int = 1,
        wait_s: float = 0,
        acks: Sequence[dict[str, Any]] = (),
        kinds: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        return {
            "bot_id": session.bot_id,
            "session_id": session.session_id,
            "max_jobs": max_jobs,
            "wait_s": wait_s,
            "kinds": [self.kind] if kinds is None else list(kinds),
            "acks": list(acks),
        }

    async def claim_answer(self, session: Session, **kw: Any) -> tuple[Answer, ClaimResponse]:
        """One claim (only this check's kind unless ``kinds``); 200 with a ClaimResponse."""
        body = self.claim_body(session, **kw)
        answer = await self.send(
            "POST",
            "/v1/jobs/claim",
            body,
            limit_s=float(body["wait_s"]) + 15.0,
            token=session.token,
        )
        reply = answer.decode(ClaimResponse)
        if len(reply.jobs) > body["max_jobs"]:
            raise answer.fail(f"at most {body['max_jobs']} jobs", f"{len(reply.jobs)} jobs")
        if len(reply.acks) != len(body["acks"]):
            raise answer.fail(f"{len(body['acks'])} ack results", f"{len(reply.acks)}")
        for job in reply.jobs:
            if job.kind not in body["kinds"]:
                raise answer.fail(f"only jobs of kinds {body['kinds']}", f"a job of {job.kind!r}")
            self.run.lease_jobs[job.lease_id] = job.job_id
            self.run.lease_sessions[job.lease_id] = session
        self._note_results(body["acks"], reply.acks)
        return answer, reply

    async def claim(self, session: Session, **kw: Any) -> list[ClaimedJob]:
        """The jobs of one claim (see :meth:`claim_answer`)."""
        return (await self.claim_answer(session, **kw))[1].jobs

    async def claim_one(self, session: Session, *, wait_s: float = 0) -> ClaimedJob:
        """Claim exactly one job of this kind: there must be one."""
        answer, reply = await self.claim_answer(session, max_jobs=1, wait_s=wait_s)
        if len(reply.jobs) != 1:
            raise answer.fail("one claimed job", f"{len(reply.jobs)} jobs")
        return reply.jobs[0]

    async def submit_and_claim(self, session: Session, **fields: Any) -> tuple[JobView, ClaimedJob]:
        """Submit one job and claim it."""
        view = await self.submit(**fields)
        job = await self.claim_one(session)
        if job.job_id != view.job_id:
            raise CheckFailed(f"the claim to lease job {view.job_id}", f"job {job.job_id}")
        return view, job

    async def ack(self, lease_id: str, outcome: str = "succeeded", **fields: Any) -> Answer:
        """``POST /v1/leases/{lease_id}/ack``; the answer, whatever its status."""
        body = {"lease_id": lease_id, "outcome": outcome, **fields}
        claimed_by = self.run.lease_sessions.get(lease_id)
        token = claimed_by.token if claimed_by is not None else True
        answer = await self.send("POST", f"/v1/leases/{lease_id}/ack", body, token=token)
        if answer.status == 200:
            status = answer.field(answer.json(), "status")
            self._note_results([body], [AckResult(lease_id=lease_id, status=status)])
        return answer

    async def ack_recorded(self, lease_id: str, outcome: str = "succeeded", **fields: Any) -> None:
        """An ack that must be ``recorded``."""
        (await self.ack(lease_id, outcome, **fields)).expect_body(200, {"status": "recorded"})

    def _note_results(self, sent: Sequence[dict[str, Any]], results: Sequence[AckResult]) -> None:
        for ack, result in zip(sent, results, strict=False):
            job_id = self.run.lease_jobs.get(ack.get("lease_id", ""))
            if (
                job_id is not None
                and result.status == "recorded"
                and ack.get("outcome") == "succeeded"
            ):
                self.run.first_results.setdefault(job_id, ack.get("result"))

    # -- time --------------------------------------------------------------------------

    def lease_ttl(self) -> float:
        """The server's lease TTL, as its registration answer gave it."""
        if self.run.lease_ttl_s is None:
            raise CheckSkipped("no registration has succeeded, so the lease TTL is unknown")
        return self.run.lease_ttl_s
