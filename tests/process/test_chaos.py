"""The chaos test (issue 4): real processes, real sockets, faults on purpose; nothing is lost.

``botd server`` runs on a SQLite file; three ``botd run`` processes (``BOT_CONCURRENCY=4``,
the ``exec`` handler; the first also ``BOT_PREFETCH=2``, so held jobs face the faults) reach
it through :class:`tests.chaos_proxy.ChaosProxy`. A thousand jobs are submitted while faults
are injected: SIGKILLs of random bots (restarted on the same ``BOT_STATE_DIR``), a SIGKILL of
the server (restarted on the same database), a 5 s partition, bursts of latency, of
connection resets and of truncated responses.

The exec script appends a line per execution (job, attempt, lease, bot, nonce) to a log, so
the test knows every execution. At the end it asserts, from the server's database:

- every job is in a final status, and succeeded (each job is built to succeed): lost = 0;
- no job has two recorded results (two leases acked ``succeeded``): duplicate_results = 0;
- each stored result is the output of an execution of that job under the lease recorded.

It reports re-executions (jobs run more times than their planned failures explain) and why
(the server-side fate of each wasted execution's lease), then one summary line::

    chaos: jobs=1000 faults=N lost=0 duplicate_results=0 re_executions=K wall=XXs

The same test runs on PostgreSQL (``store="postgres"``): two ``botd server`` replicas on one
database behind Debian's haproxy (started from ``contrib/haproxy/haproxy.cfg``), each bot
through a chaos proxy of its own. Its faults: SIGKILLs of a replica (restarted), immediate-mode
restarts of PostgreSQL, a 5 s partition of one bot, a SIGKILL of a bot, bursts of latency, of
connection resets and of truncated responses. The verdict is read from PostgreSQL the same
way, and the summary line is the same.

``--soak`` runs more jobs and more rounds of faults. ``CHAOS_SEED`` reproduces a run's choices.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest
import trio

from botd.models import FINAL_JOB_STATUSES
from tests.support.chaos_proxy import ChaosProxy
from tests.support.haproxy import Haproxy
from tests.support.postgres import PostgresServer
from tests.support.procs import (
    Execution,
    Proc,
    Procs,
    await_for,
    bot_env,
    exec_command,
    free_ports,
    live_with_marker,
    ops_json,
    read_executions,
)

pytestmark = pytest.mark.slow

LEASE_TTL_S = 3.0
HEARTBEAT_S = 0.3
BOTS = 3
CONCURRENCY = 4


@attrs.frozen
class Plan:
    jobs: int
    rounds: int  # rounds of the fault schedule
    submit_over_s: float  # jobs are submitted in batches over this long
    deadline_s: float  # the whole run, faults and draining included


NORMAL = Plan(jobs=1000, rounds=1, submit_over_s=30.0, deadline_s=150.0)
SOAK = Plan(jobs=4000, rounds=4, submit_over_s=130.0, deadline_s=600.0)


def job_spec(rng: random.Random, i: int) -> dict[str, Any]:
    """Quick, slow, or failing-then-succeeding; each one can succeed."""
    r = rng.random()
    if r < 0.55:
        payload = {"sleep_ms": rng.randint(0, 30)}
        max_attempts = 10
    elif r < 0.80:
        payload = {"sleep_ms": rng.randint(200, 500)}
        max_attempts = 10
    else:
        payload = {"sleep_ms": rng.randint(0, 50), "fail_times": rng.randint(1, 2)}
        max_attempts = 5
    return {
        "kind": "chaos",
        "payload": payload,
        "max_attempts": max_attempts,
        "idempotency_key": f"chaos-{i}",
    }


@attrs.define
class Rig:
    """The processes and the proxies of one chaos run, and what was done to them.

    On SQLite: one server on ``server_ports[0]`` and its file ``db``, one proxy for every
    bot. On PostgreSQL (``pg`` set): the replicas on ``server_ports`` share the database
    ``db`` (a DSN) behind ``haproxy``, and each bot has a proxy of its own.
    """

    tmp: Path
    procs: Procs
    proxies: list[ChaosProxy]
    server_ports: list[int]
    db: Path | str
    exec_cmd: str
    rng: random.Random
    pg: PostgresServer | None = None
    haproxy: Haproxy | None = None
    servers: list[Proc | None] = attrs.field(factory=list)
    bots: list[Proc] = attrs.field(factory=list)
    incarnations: dict[str, int] = attrs.field(factory=Counter)
    killed_pids: set[int] = attrs.field(factory=set)
    faults: list[str] = attrs.field(factory=list)
    # Ops port by pid: a restarted bot gets a new one, so no wait for the old one's release.
    ops_ports: dict[int, int] = attrs.field(factory=dict)

    @property
    def server_url(self) -> str:
        """Where the test itself submits and reads: the server, or haproxy."""
        if self.haproxy is not None:
            return self.haproxy.url
        return f"http://127.0.0.1:{self.server_ports[0]}"

    async def start_server(self, index: int = 0) -> None:
        while len(self.servers) <= index:
            self.servers.append(None)
        port = self.server_ports[index]
        name = "server" if self.pg is None else f"replica{index + 1}"
        server = self.procs.server(
            name, port, self.db, lease_ttl=LEASE_TTL_S, heartbeat=HEARTBEAT_S
        )
        self.servers[index] = server
        async with httpx.AsyncClient(timeout=1.0) as client:

            async def up() -> bool | None:
                try:
                    resp = await client.get(f"http://127.0.0.1:{port}/v1/health")
                except httpx.HTTPError:
                    return None
                return True if resp.status_code == 200 else None

            await await_for(f"{name} to answer", up, (server,), timeout=20)

    def start_bot(self, index: int) -> Proc:
        name = f"bot{index}"
        self.incarnations[name] += 1
        (ops_port,) = free_ports(1)
        env = bot_env(
            f"chaos-{name}",
            self.proxies[index % len(self.proxies)].url,
            self.tmp / f"state-{name}",
            ops_port,
            BOT_HANDLER="exec",
            BOT_EXEC_COMMAND=self.exec_cmd,
            BOT_CONCURRENCY=str(CONCURRENCY),
            BOT_JOB_TIMEOUT="30",
            BOT_PREFETCH="2" if index == 0 else "0",
        )
        proc = self.procs.bot(name, env)
        self.ops_ports[proc.pid] = ops_port
        if index < len(self.bots):
            self.bots[index] = proc
        else:
            self.bots.append(proc)
        return proc

    async def wait_ready(self, proc: Proc, timeout: float = 30.0) -> None:
        port = self.ops_ports[proc.pid]

        async def ready() -> bool | None:
            got = ops_json(port, "/readyz")
            return True if got is not None and got[0] == 200 else None

        await await_for(f"{proc.name} to be ready", ready, (proc,), timeout=timeout)

    # --- the faults ---------------------------------------------------------------------

    async def kill_bot(self) -> None:
        index = self.rng.randrange(len(self.bots))
        proc = self.bots[index]
        self.killed_pids.add(proc.pid)
        proc.kill()
        self.faults.append(f"SIGKILL {proc.name}")
        await trio.sleep(self.rng.uniform(0.3, 1.5))
        self.start_bot(index)

    async def kill_server(self) -> None:
        index = self.rng.randrange(len(self.server_ports))
        server = self.servers[index]
        assert server is not None
        server.kill()
        self.faults.append(f"SIGKILL {server.name}")
        await trio.sleep(self.rng.uniform(0.5, 2.0))
        await self.start_server(index)

    async def restart_postgres(self) -> None:
        assert self.pg is not None
        await trio.to_thread.run_sync(self.pg.restart, "immediate")
        self.faults.append("PostgreSQL restart -m immediate")

    def normal(self) -> None:
        for proxy in self.proxies:
            proxy.normal()

    async def partition(self) -> None:
        """A 5 s partition: of every bot on SQLite, of one bot on PostgreSQL."""
        (self.rng.choice(self.proxies) if len(self.proxies) > 1 else self.proxies[0]).blackhole()
        self.faults.append("partition 5s" if len(self.proxies) == 1 else "partition of a bot 5s")
        await trio.sleep(5.0)
        self.normal()

    async def latency(self) -> None:
        delay = self.rng.uniform(0.05, 0.3)
        for proxy in self.proxies:
            proxy.latency(delay)
        self.faults.append(f"latency {delay * 1000:.0f}ms")
        await trio.sleep(self.rng.uniform(1.5, 3.0))
        self.normal()

    async def resets(self) -> None:
        p = self.rng.uniform(0.2, 0.6)
        for proxy in self.proxies:
            proxy.resets(p)
        self.faults.append(f"resets p={p:.2f}")
        await trio.sleep(self.rng.uniform(1.0, 2.5))
        self.normal()

    async def truncate(self) -> None:
        p = self.rng.uniform(0.2, 0.6)
        for proxy in self.proxies:
            proxy.truncate(p)
        self.faults.append(f"truncate p={p:.2f}")
        await trio.sleep(self.rng.uniform(1.0, 2.0))
        self.normal()

    async def run_faults(self, rounds: int) -> None:
        """Each round on SQLite: 3 bot kills, 1 server kill, 1 partition, bursts of the rest.
        On PostgreSQL: 2 replica kills, 2 restarts of PostgreSQL, 1 partition of a bot,
        1 bot kill, bursts of the rest."""
        for _ in range(rounds):
            if self.pg is None:
                schedule = [
                    self.latency, self.kill_bot, self.resets, self.kill_server, self.truncate,
                    self.kill_bot, self.partition, self.latency, self.kill_bot, self.resets,
                    self.truncate,
                ]  # fmt: skip
            else:
                schedule = [
                    self.latency, self.kill_server, self.resets, self.restart_postgres,
                    self.partition, self.latency, self.kill_bot, self.resets, self.kill_server,
                    self.truncate, self.restart_postgres,
                ]  # fmt: skip
            for fault in schedule:
                await trio.sleep(self.rng.uniform(1.0, 2.5))
                await fault()


async def submit_all(rig: Rig, plan: Plan, specs: list[dict[str, Any]]) -> None:
    """Submit ``specs`` in batches over ``plan.submit_over_s``, straight to the server.

    Retries what fails (the server may be down); the idempotency key makes a retry safe.
    """
    batches = 20 * plan.rounds
    size = -(-len(specs) // batches)
    async with httpx.AsyncClient(timeout=5.0) as client:

        async def one(spec: dict[str, Any]) -> None:
            while True:
                try:
                    resp = await client.post(f"{rig.server_url}/v1/jobs", json=spec)
                    if resp.status_code in (200, 201):
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.2)

        limiter = trio.CapacityLimiter(8)

        async def limited(spec: dict[str, Any]) -> None:
            async with limiter:
                await one(spec)

        for start in range(0, len(specs), size):
            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                for spec in specs[start : start + size]:
                    nursery.start_soon(limited, spec)
            await trio.sleep_until(began + plan.submit_over_s / batches)


async def wait_all_final(rig: Rig, total: int, timeout: float) -> dict[str, int]:
    """Poll /v1/stats until ``total`` jobs exist and every one is final."""
    async with httpx.AsyncClient(timeout=2.0) as client:

        async def done() -> dict[str, int] | None:
            try:
                resp = await client.get(f"{rig.server_url}/v1/stats")
                jobs: dict[str, int] = resp.json()["jobs"]
            except (httpx.HTTPError, ValueError, KeyError):
                return None
            final = sum(n for s, n in jobs.items() if s in FINAL_JOB_STATUSES)
            return jobs if sum(jobs.values()) == total and final == total else None

        return await await_for("every job to be final", done, timeout=timeout, interval=0.25)


@attrs.frozen
class Verdict:
    jobs: int
    lost: int
    duplicate_results: int
    mismatched_results: int
    re_executions: int
    reasons: Counter[str]
    statuses: Counter[str]
    problems: list[str]


_JOBS = "SELECT job_id, status, payload, result, attempts, error FROM jobs"
_LEASES = "SELECT lease_id, job_id, bot_id, attempt, state, outcome FROM leases"
Rows = dict[str, tuple[Any, ...]]


def read_database(db: Path | str) -> tuple[Rows, Rows]:
    """The jobs and leases rows of the server's database (a SQLite file or a DSN)."""
    if isinstance(db, str):  # PostgreSQL keeps a lease's state on its job: read the view
        with psycopg.connect(db) as pg:
            return (
                {r[0]: tuple(r[1:]) for r in pg.execute(_JOBS)},
                {
                    r[0]: tuple(r[1:])
                    for r in pg.execute(_LEASES.replace("FROM leases", "FROM lease_history"))
                },
            )
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return (
            {r[0]: tuple(r[1:]) for r in conn.execute(_JOBS)},
            {r[0]: tuple(r[1:]) for r in conn.execute(_LEASES)},
        )
    finally:
        conn.close()


def judge(db: Path | str, executions: list[Execution], killed_pids: set[int]) -> Verdict:
    """Compare the server's database with the executions log."""
    jobs, leases = read_database(db)
    problems: list[str] = []
    statuses = Counter(status for status, *_ in jobs.values())
    lost = sum(1 for status, *_ in jobs.values() if status != "succeeded")
    for job_id, (status, payload, _result, attempts, error) in jobs.items():
        if status != "succeeded":
            history = [
                f"{lease[:8]}:{bot}#{attempt}:{state}/{outcome}"
                for lease, (j, bot, attempt, state, outcome) in leases.items()
                if j == job_id
            ]
            runs = [
                f"{e.bot_pid}{'(killed)' if e.bot_pid in killed_pids else ''}#{e.attempt}:"
                f"{e.outcome}"
                for e in executions
                if e.job_id == job_id
            ]
            problems.append(
                f"job {job_id} ended {status} after {attempts} attempts; payload {payload};"
                f" error {error}; leases {history}; executions {runs}"
            )
    succeeded_leases: dict[str, list[str]] = {}
    for lease_id, (job_id, _bot, _attempt, state, outcome) in leases.items():
        if state == "done" and outcome == "succeeded":
            succeeded_leases.setdefault(job_id, []).append(lease_id)
    duplicates = [j for j, ls in succeeded_leases.items() if len(ls) > 1]
    problems += [f"job {j} has {len(succeeded_leases[j])} recorded results" for j in duplicates]

    by_job: dict[str, list[Execution]] = {}
    for e in executions:
        by_job.setdefault(e.job_id, []).append(e)
    by_nonce = {e.nonce: e for e in executions}
    mismatched = 0
    for job_id, (status, _payload, result, _attempts, _error) in jobs.items():
        if status != "succeeded":
            continue
        stored = json.loads(result)
        source = by_nonce.get(stored.get("nonce", ""))
        recorded = succeeded_leases.get(job_id, [])
        if (
            source is None
            or source.job_id != job_id
            or source.outcome != "succeeded"
            or [source.lease_id] != recorded
            or stored.get("attempt") != source.attempt
        ):
            mismatched += 1
            problems.append(f"job {job_id}: stored result {stored} matches no execution")

    re_executed = 0
    reasons: Counter[str] = Counter()
    for job_id, (_status, payload, _result, _attempts, _error) in jobs.items():
        planned = int(json.loads(payload).get("fail_times", 0)) + 1
        runs = by_job.get(job_id, [])
        if len(runs) > planned:
            re_executed += 1
        for e in runs:
            lease = leases.get(e.lease_id)
            if lease is None:
                reasons["no such lease (?)"] += 1
                continue
            _j, _bot, _attempt, state, outcome = lease
            if state == "done" and outcome in ("succeeded", "failed") and e.outcome == outcome:
                continue  # the result of this run was recorded: not wasted
            if state == "done" and outcome == "released":
                reasons["released at shutdown"] += 1
            elif e.bot_pid in killed_pids:
                reasons["its bot was SIGKILLed, the lease expired"] += 1
            elif state == "expired":
                reasons["lease expired before the result arrived (partition/outage)"] += 1
            elif state == "active":
                reasons["lease still active (?)"] += 1
            else:
                reasons[f"lease {state}/{outcome}, run {e.outcome}"] += 1
    return Verdict(
        jobs=len(jobs),
        lost=lost,
        duplicate_results=len(duplicates),
        mismatched_results=mismatched,
        re_executions=re_executed,
        reasons=reasons,
        statuses=statuses,
        problems=problems,
    )


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_chaos(tmp_path: Path, pytestconfig: pytest.Config, store: str, request: Any) -> None:
    plan = SOAK if pytestconfig.getoption("soak") else NORMAL
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    began = time.monotonic()
    specs = [job_spec(rng, i) for i in range(plan.jobs)]
    exec_cmd, exec_log = exec_command(tmp_path)
    marker = str(tmp_path / "exec_job.py")
    procs = Procs(tmp_path, markers=[marker])
    if store == "sqlite":
        server_ports = free_ports(1)
        proxies = [ChaosProxy(server_ports[0], rng=random.Random(seed + 1))]
        rig = Rig(tmp_path, procs, proxies, server_ports, tmp_path / "server.db", exec_cmd, rng)
    else:
        server_ports = free_ports(2)
        proxies = [ChaosProxy(0, rng=random.Random(seed + 1 + i)) for i in range(BOTS)]
        (tmp_path / "haproxy").mkdir()
        rig = Rig(
            tmp_path,
            procs,
            proxies,
            server_ports,
            str(request.getfixturevalue("pg_dsn")),
            exec_cmd,
            rng,
            pg=request.getfixturevalue("pg_server"),
            haproxy=Haproxy(tmp_path / "haproxy"),
        )
    try:
        with trio.fail_after(plan.deadline_s):
            async with trio.open_nursery() as nursery:
                for index in range(len(server_ports)):
                    await rig.start_server(index)
                if rig.haproxy is not None:
                    await trio.to_thread.run_sync(rig.haproxy.start, server_ports)
                    await trio.to_thread.run_sync(rig.haproxy.wait_healthy, len(server_ports))
                    assert rig.haproxy.port is not None
                    for proxy in proxies:
                        proxy.upstream = ("127.0.0.1", rig.haproxy.port)
                for proxy in proxies:
                    await nursery.start(proxy.run)
                for index in range(BOTS):
                    rig.start_bot(index)
                for proc in rig.bots:
                    await rig.wait_ready(proc)
                async with trio.open_nursery() as work:
                    work.start_soon(submit_all, rig, plan, specs)
                    work.start_soon(rig.run_faults, plan.rounds)
                rig.normal()
                stats = await wait_all_final(rig, plan.jobs, timeout=plan.deadline_s)
                # A clean stop: each bot drains, flushes its outbox and deregisters.
                codes = {}
                for proc in rig.bots:
                    proc.signal(signal.SIGTERM)
                for proc in rig.bots:
                    codes[proc.name] = await proc.await_exit(timeout=20)
                for server in rig.servers:
                    assert server is not None
                    server.signal(signal.SIGTERM)
                for server in rig.servers:
                    assert server is not None
                    await server.await_exit(timeout=20)
                nursery.cancel_scope.cancel()
        assert codes == {p.name: 0 for p in rig.bots}, [p.tail() for p in rig.bots]
        # No exec child outlives its bot (those of killed bots end on their own).

        async def no_exec_left() -> bool | None:
            return not live_with_marker(marker) or None

        await await_for("no exec job left running", no_exec_left)
        verdict = judge(rig.db, read_executions(exec_log), rig.killed_pids)
    finally:
        procs.close()
        if rig.haproxy is not None:
            rig.haproxy.stop()
    wall = time.monotonic() - began
    assert len(rig.faults) >= 11 * plan.rounds
    lease_lost = sum(len(p.events("lease_lost")) for p in procs.all)
    summary = (
        f"chaos: jobs={verdict.jobs} faults={len(rig.faults)} lost={verdict.lost} "
        f"duplicate_results={verdict.duplicate_results} re_executions={verdict.re_executions} "
        f"wall={wall:.0f}s"
    )
    detail = (
        f"chaos detail: store={store} seed={seed} statuses={dict(verdict.statuses)} "
        f"why re-executed={dict(verdict.reasons)} lease_lost events={lease_lost} "
        f"proxy={dict(sum((p.counters for p in proxies), Counter()))} "
        f"bot starts={dict(rig.incarnations)} "
        f"faults={rig.faults} final stats={stats}"
    )
    # Printed at the end of the run by tests/conftest.py (also from an xdist worker).
    request.node.user_properties.append(("chaos", f"{summary}\n{detail}"))
    assert verdict.jobs == plan.jobs
    assert verdict.problems == [], verdict.problems[:20]
    assert verdict.lost == 0
    assert verdict.duplicate_results == 0
    assert verdict.mismatched_results == 0
