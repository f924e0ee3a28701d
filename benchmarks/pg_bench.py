"""Figures 9 and 10: the server alone on each store, replicas behind haproxy, PgQueuer beside it.

Figure 9: claims+acks per second of ``botd server`` on a SQLite file (a temp file: the real
default store) and on PostgreSQL, batches of 1 and 100, one client loop; and the anchor on the
same PostgreSQL cluster in the same run: PgQueuer (``benchmarks/pgqueuer_anchor.py``, its own
process and database) dequeuing as many no-op jobs in batches of 100.
Figure 10: PostgreSQL batch 100 with N concurrent client loops (each its own bot id, session
and connection): 1 replica direct, 1 replica and 2 replicas behind haproxy running
``contrib/haproxy/haproxy.cfg`` (``tests/support/haproxy.py``).

Every run gets fresh state: a new SQLite file or a new database on the one PostgreSQL
cluster (``tests/support/postgres.py``, ``fsync=on``, ``full_page_writes=on``,
``synchronous_commit=off``), new server processes and a new haproxy. The jobs are submitted
first (``POST /v1/jobs/batch``, 1000 a request, not timed); then every loop claims ``batch``
jobs a request with the previous batch's acks on it, until a claim returns none. The rate is
``jobs / (t_last - t_first)``: from the first claim sent to the last loop's last answer, on
this process's clock. The configurations take turns (repeat 1 of each, then repeat 2...), and
each figure is the median of the repeats. CPU per job: utime+stime from /proc during the
timed part, of the server processes, of PostgreSQL's backends, of haproxy and of the client.

Run alone: ``python -m benchmarks.pg_bench [--quick] [--out PATH | --update-docs]``: prints a
report of the two figures, writes it to PATH, or replaces figures 9 and 10 and their findings
in docs/benchmarks.md and leaves its other figures as they are (``python -m benchmarks --only
9,10`` would write a docs/benchmarks.md of these two figures alone). ``nox -s bench`` runs them
with the rest. Needs PostgreSQL's server binaries, haproxy and PgQueuer (the bench extra).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio

from .common import BenchError, Fleet, cpu_seconds, median, ratio, submit_many
from .report import Figure, fmt

#: fsync stays on (checkpoints and the WAL writer flush to disk), but a commit does not wait
#: for its WAL flush: the durability class of the SQLite store's WAL + synchronous=NORMAL.
PG_SETTINGS: dict[str, str | int | float | bool] = {
    "fsync": True,
    "full_page_writes": True,
    "synchronous_commit": False,
}
LOOPS = 4
REPEATS = 3
FLOOR_JOBS_PER_S = 5_000.0
#: What profiling found (py-spy on the server, pg_stat_statements and EXPLAIN ANALYZE on
#: PostgreSQL, scratch copies of botd): kept by hand, printed under "Findings".
PG_FINDINGS: tuple[str, ...] = (
    "PostgreSQL store, where the time went before its lease model changed (batch 100, one "
    "loop; py-spy on the server, pg_stat_statements, EXPLAIN ANALYZE, utime+stime): a "
    "request of 100 acks and 100 claims took ~40-50 ms, the loop, the server and PostgreSQL "
    "taking turns. PostgreSQL ~20-25 ms of CPU (0.25 ms a job): a job was two UPDATEs of its "
    "jobs row, an INSERT and an UPDATE of a leases row with four indexes, and two row locks "
    "in the ack, ~25 WAL records. The server ~16-20 ms: ~40% hypercorn, h11, Starlette and "
    "JSON, ~60% in the store's thread (psycopg building the array parameters in Python about "
    "a third of it). PgQueuer spends ~0.21-0.27 ms a job in all and overlaps its Python "
    "with the database's work.",
    "PostgreSQL store, the lease model of these figures: a job's latest lease lives "
    "on the job's row (state, session, deadline, outcome) and a lease id starts with its "
    "job's id, so a claim and an ack each update one row under one lock, found by primary "
    "key; the leases table only receives a lease when a claim leases its job again (an "
    "expired or released one), as it ended. Against the previous model, on this machine "
    "within one hour of 2026-12-02 (medians of 3, two runs after): PostgreSQL CPU per job "
    "0.25 -> 0.13 ms; batch 100, one loop 2,232 -> 3,269-3,422 jobs/s; 4 loops on one "
    "replica 4,201 -> 4,423-5,105. Tried "
    "before, within the noise: partial indexes for idempotency keys and for statuses other "
    "than succeeded, two arrays instead of seven for succeeded acks.",
    "PostgreSQL store, a cold database: without the ANALYZE before the timing (tables never "
    "analyzed) the planner takes them for nearly empty: the ack statements join the whole "
    "jobs table by sequential scan and hash join, and the claim reads every due job "
    "through jobs_due and sorts them all to take 100 (~19 ms for the pick alone, where an "
    "index scan of jobs_queue stops after 100). Measured: botd batch 100 ~1,850 jobs/s "
    "against ~2,700 analyzed (-30%), PgQueuer -12%. A burst into a young database meets "
    "this until autovacuum analyzes (a minute or more); lower autovacuum_analyze_threshold "
    "and scale_factor on jobs and leases in the migration, or an ANALYZE from the server "
    "when the queue grows by a large fraction, would close it (not measured beyond the "
    "ANALYZE itself).",
    "PostgreSQL store, list parameters (2026-12-02, an in-process store bench: 4 loops of "
    "100 claims+acks, no HTTP): psycopg builds an array parameter element by element in "
    "Python, ~3.5 us an element, so the 3 arrays of 100 a claim carried cost ~1 ms of the "
    "request's ~8 ms of store CPU. Ids now go as one comma-separated text "
    "(string_to_array) and the succeeded results as one JSON array of their JSON texts: the "
    "store's Python CPU per job 0.082-0.087 -> 0.049-0.064 ms, PostgreSQL's unchanged. "
    "json_to_recordset for every list was tried first: Python as cheap, but PostgreSQL "
    "~60 us dearer per 100 rows.",
    "PostgreSQL store, where PostgreSQL's ~0.13 ms a job goes (perf on the backends, "
    "pg_stat_statements): index insertion ~32% (a claim inserts into 5 indexes, an ack into "
    "3: every update changes an indexed column, so none is HOT), planning ~6% (custom plans; "
    "forcing generic plans more than doubled the CPU: the claim's LIMIT and partial index "
    "need the values), the rest the executor, buffers and WAL. Measured within the noise: "
    "dropping two of the 8 index insertions, and the ack read without FOR UPDATE. The claim "
    "statement takes ~60% of the database time, the ack write ~30%, the ack read ~10%.",
    "PostgreSQL store, the floor of 5,000 jobs/s at batch 100 is judged with several bots "
    "(4 client loops) on one replica, as a fleet loads it; one loop leaves the cores idle "
    "while it waits for its answer (100 jobs a round trip of ~25 ms here), so it would need "
    "the server to overlap work (e.g. commit the acks while the next claim runs). What is "
    "left per job is about even between the server (HTTP, JSON, cattrs, psycopg: ~0.11 ms) "
    "and PostgreSQL (~0.13 ms); with the client's ~0.04 ms the 2 cores allow ~7,000 jobs/s "
    "at best, and the floor config reaches ~75-85% of that.",
)


@attrs.define
class Scale:
    """How many jobs per run and how many runs of each configuration."""

    batch1_jobs: int
    batch100_jobs: int
    repeats: int

    @classmethod
    def of(cls, quick: bool) -> Scale:
        return cls(50, 1_000, 1) if quick else cls(300, 10_000, REPEATS)


@attrs.define
class Run:
    """One timed drain: jobs, seconds, requests, and CPU seconds by process group."""

    jobs: int
    seconds: float
    requests: int
    cpu: dict[str, float] = attrs.Factory(dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


# --- CPU readings ---------------------------------------------------------------------------


def _cpu_of(pids: Sequence[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[pid] = cpu_seconds(pid)
    return out


class CpuMeter:
    """utime+stime of process groups between :meth:`start` and :meth:`stop`.

    ``groups`` maps a name to a function that lists the group's pids now (so backends that
    PostgreSQL forks during the run count from zero); ``client`` is this process.
    """

    def __init__(self, groups: Mapping[str, Callable[[], Sequence[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._self = 0.0

    def start(self) -> None:
        self._before = {name: _cpu_of(pids()) for name, pids in self.groups.items()}
        times = os.times()
        self._self = times.user + times.system

    def stop(self) -> dict[str, float]:
        times = os.times()
        used = {"client": times.user + times.system - self._self}
        for name, pids in self.groups.items():
            now = _cpu_of(pids())
            before = self._before.get(name, {})
            used[name] = sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in now.items())
        return used


# --- the client loops -----------------------------------------------------------------------


async def _register(client: httpx.AsyncClient, bot_id: str, batch: int) -> str:
    body = {"bot_id": bot_id, "capacity": batch, "pid": os.getpid()}
    response = await client.post("/v1/bots/register", json=body)
    response.raise_for_status()
    session: str = response.json()["session_id"]
    return session


async def drain(url: str, *, jobs: int, batch: int, loops: int, meter: CpuMeter) -> Run:
    """``loops`` concurrent claim+ack loops against ``url`` until the queue is empty."""
    clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(loops)]
    acked = [0] * loops
    requests = [0] * loops
    ends = [0.0] * loops
    try:
        sessions = [
            await _register(client, f"pg-bench-{os.getpid()}-{i}", batch)
            for i, client in enumerate(clients)
        ]

        async def loop(i: int) -> None:
            client, bot_id = clients[i], f"pg-bench-{os.getpid()}-{i}"
            acks: list[dict[str, Any]] = []
            while True:
                body = {"bot_id": bot_id, "session_id": sessions[i], "max_jobs": batch}
                body["acks"] = acks
                response = await client.post("/v1/jobs/claim", json=body)
                response.raise_for_status()
                got = response.json()
                requests[i] += 1
                bad = [a for a in got["acks"] if a["status"] != "recorded"]
                if bad:
                    raise BenchError(f"acks not recorded: {bad[:3]}")
                acked[i] += len(acks)
                if not got["jobs"]:
                    ends[i] = time.monotonic()
                    return
                acks = [
                    {"lease_id": job["lease_id"], "outcome": "succeeded", "result": None}
                    for job in got["jobs"]
                ]

        meter.start()
        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(loops):
                nursery.start_soon(loop, i)
        seconds = max(ends) - start
        cpu = meter.stop()
    finally:
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()
    if sum(acked) != jobs:
        raise BenchError(f"{sum(acked)} jobs acked, {jobs} submitted")
    return Run(jobs, seconds, sum(requests), cpu)


# --- the configurations ---------------------------------------------------------------------


@attrs.define
class Cluster:
    """The one PostgreSQL cluster of the run and a counter for fresh database names."""

    server: Any  # tests.support.postgres.PostgresServer
    made: int = 0

    async def fresh(self) -> tuple[str, str]:
        """CREATE a new, empty database; (name, dsn)."""
        self.made += 1
        name = f"bench_{self.made}"
        dsn = await trio.to_thread.run_sync(self.server.create_database, name)
        return name, dsn

    async def drop(self, name: str) -> None:
        await trio.to_thread.run_sync(self.server.drop_database, name)

    async def analyze(self, name: str) -> None:
        """ANALYZE database ``name`` (see :data:`ANALYZE_TEXT`)."""

        def run() -> None:
            with self.server.connect(name) as conn:
                conn.execute("ANALYZE")

        await trio.to_thread.run_sync(run)

    def backends(self) -> list[int]:
        pid = self.server.postmaster_pid()
        from tests.support.jobs import children_of

        return children_of(pid) if pid is not None else []


async def run_sqlite(batch: int, jobs: int) -> Run:
    """A fresh ``botd server --db <temp file>``, one loop."""
    async with Fleet() as fleet:
        server = await fleet.server(db=str(fleet.dir / "botd-server.db"))
        await submit_many(server.url, jobs)
        meter = CpuMeter({"server": lambda: [server.child.pid]})
        return await drain(server.url, jobs=jobs, batch=batch, loops=1, meter=meter)


async def run_postgres(
    cluster: Cluster, batch: int, jobs: int, *, replicas: int, loops: int, haproxy: bool
) -> Run:
    """``replicas`` fresh ``botd server --db postgresql://...`` on a fresh database, reached
    directly (one replica) or through a fresh haproxy; ``loops`` client loops."""
    from tests.support.haproxy import Haproxy

    name, dsn = await cluster.fresh()
    try:
        async with Fleet() as fleet:
            servers = [await fleet.server(db=dsn) for _ in range(replicas)]
            if replicas != 1 and not haproxy:
                raise ValueError("several replicas need haproxy in front")
            proxy = Haproxy(fleet.dir) if haproxy else None
            url = servers[0].url
            try:
                if proxy is not None:
                    ports = [int(s.url.rsplit(":", 1)[1]) for s in servers]
                    url = await trio.to_thread.run_sync(proxy.start, ports)
                    await trio.to_thread.run_sync(proxy.wait_healthy, replicas)
                await submit_many(url, jobs)
                await cluster.analyze(name)
                groups: dict[str, Callable[[], Sequence[int]]] = {
                    "server": lambda: [s.child.pid for s in servers],
                    "postgres": cluster.backends,
                }
                if proxy is not None and proxy.popen is not None:
                    pid = proxy.popen.pid
                    groups["haproxy"] = lambda: [pid]
                meter = CpuMeter(groups)
                return await drain(url, jobs=jobs, batch=batch, loops=loops, meter=meter)
            finally:
                if proxy is not None:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(proxy.stop)
    finally:
        with trio.CancelScope(shield=True):
            await cluster.drop(name)


async def run_pgqueuer(cluster: Cluster, batch: int, jobs: int) -> Run:
    """``benchmarks/pgqueuer_anchor.py`` on a fresh database of the same cluster."""
    name, dsn = await cluster.fresh()
    try:
        argv = [sys.executable, "-m", "benchmarks.pgqueuer_anchor", dsn]
        argv += ["--jobs", str(jobs), "--batch", str(batch), "--analyze"]
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace")[-2000:]
            raise BenchError(f"pgqueuer_anchor exited {done.returncode}:\n{tail}")
        result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    finally:
        with trio.CancelScope(shield=True):
            await cluster.drop(name)
    cpu = {"client": float(result["cpu_s"]), "postgres": float(result["pg_cpu_s"])}
    return Run(int(result["jobs"]), float(result["seconds"]), 0, cpu)


# --- the figures ----------------------------------------------------------------------------


@attrs.define
class Config:
    """One row's configuration and its runs."""

    key: str
    label: str
    batch: int
    loops: int
    start: Callable[[], Any]
    runs: list[Run] = attrs.Factory(list)

    @property
    def rate(self) -> float:
        return median([r.rate for r in self.runs])

    def spread(self) -> str:
        rates = [r.rate for r in self.runs]
        return f"{fmt(min(rates))}-{fmt(max(rates))}" if len(rates) > 1 else "-"

    def cpu_ms(self, group: str) -> float:
        values = [r.cpu[group] / r.jobs * 1000 for r in self.runs if group in r.cpu]
        return median(values)

    def requests_per_s(self) -> float:
        return median([r.requests / r.seconds for r in self.runs])


def _cpu_cell(config: Config, groups: Sequence[str]) -> str:
    cells = [fmt(config.cpu_ms(g), 2) for g in groups]
    return " / ".join("-" if cell == "n/a" else cell for cell in cells)


async def pg_figures(*, quick: bool) -> tuple[Figure, Figure]:
    """Figures 9 and 10 (see the module docstring)."""
    from tests.support.postgres import PostgresServer

    scale = Scale.of(quick)
    pg = PostgresServer(PG_SETTINGS)
    await trio.to_thread.run_sync(pg.start)
    try:
        cluster = Cluster(pg)
        b1, b100 = scale.batch1_jobs, scale.batch100_jobs

        def pgrun(batch: int, jobs: int, replicas: int, loops: int, proxy: bool) -> Any:
            return lambda: run_postgres(
                cluster, batch, jobs, replicas=replicas, loops=loops, haproxy=proxy
            )

        configs = [
            Config("sqlite1", "SQLite file", 1, 1, lambda: run_sqlite(1, b1)),
            Config("sqlite100", "SQLite file", 100, 1, lambda: run_sqlite(100, b100)),
            Config("pg1", "PostgreSQL, 1 replica", 1, 1, pgrun(1, b1, 1, 1, False)),
            Config("pg100", "PostgreSQL, 1 replica", 100, 1, pgrun(100, b100, 1, 1, False)),
            Config("pgq", "PgQueuer", 100, 1, lambda: run_pgqueuer(cluster, 100, b100)),
            Config("pg_n", "1 replica, direct", 100, LOOPS, pgrun(100, b100, 1, LOOPS, False)),
            Config("ha1", "1 replica behind haproxy", 100, LOOPS, pgrun(100, b100, 1, LOOPS, True)),
            Config(
                "ha2", "2 replicas behind haproxy", 100, LOOPS, pgrun(100, b100, 2, LOOPS, True)
            ),
        ]
        skipped: list[str] = []
        for repeat in range(scale.repeats):
            for config in configs:
                print(
                    f"  {config.key} batch {config.batch} run {repeat + 1}",
                    file=sys.stderr,
                    flush=True,
                )
                try:
                    config.runs.append(await config.start())
                except BenchError as exc:
                    if config.key != "pgq":
                        raise
                    skipped.append(f"PgQueuer run {repeat + 1} not measured: {exc}")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(pg.close)
    by = {c.key: c for c in configs}
    nine = _figure_nine(by, scale)
    nine.notes += skipped
    return nine, _figure_ten(by, scale)


def _settings_text() -> str:
    return ", ".join(f"`{k}={'on' if v is True else 'off' if v is False else v}`"
                     for k, v in PG_SETTINGS.items())  # fmt: skip


CPU_NOTE = (
    "CPU ms/job: utime+stime during the timed part divided by the jobs. server: the `botd "
    "server` processes; PostgreSQL: every child of the postmaster (backends, WAL writer, "
    "checkpointer, autovacuum); haproxy: its process; client: the loops (the harness "
    "process) or the PgQueuer process."
)
ANALYZE_TEXT = (
    "Between the submission and the timing every PostgreSQL run, botd's and PgQueuer's, "
    "runs `ANALYZE`: a database made a moment ago has no column statistics and autovacuum "
    "(a minute's naptime) would not analyze it within a run, so the planner would plan for "
    "an empty table; a long-lived database that autovacuum keeps analyzed is the case "
    "measured (see the findings for the cold case)."
)


def _figure_nine(by: Mapping[str, Config], scale: Scale) -> Figure:
    anchor = by["pgq"].rate
    pg100 = by["pg100"].rate
    vs_anchor = ratio(pg100, anchor)
    rows = []
    for key in ("sqlite1", "sqlite100", "pg1", "pg100"):
        config = by[key]
        batch1 = by["sqlite1" if key.startswith("sqlite") else "pg1"]
        sqlite = by["sqlite1" if config.batch == 1 else "sqlite100"]
        rows.append(
            [
                config.label,
                str(config.batch),
                fmt(config.rate),
                config.spread(),
                "1" if config is batch1 else fmt(ratio(config.rate, batch1.rate)),
                "1" if config is sqlite else fmt(ratio(config.rate, sqlite.rate), 2),
                fmt(ratio(config.rate, anchor), 2) if config.batch == 100 else "-",
                _cpu_cell(config, ("server", "postgres", "client")),
            ]
        )
    pgq = by["pgq"]
    rows.append(
        [
            "anchor: PgQueuer",
            "100",
            fmt(anchor),
            pgq.spread(),
            "-",
            "-",
            "1",
            "- / " + _cpu_cell(pgq, ("postgres", "client")),
        ]
    )
    fleet = by["pg_n"].rate  # one replica, LOOPS bots: the floor is a fleet's rate
    met: bool | None = fleet >= FLOOR_JOBS_PER_S
    fleet_vs_anchor = ratio(fleet, anchor)
    aim = (
        "not measured"
        if math.isnan(fleet_vs_anchor)
        else "met"
        if fleet_vs_anchor >= 1
        else "not met"
    )
    floor = "met" if met else "not met"
    notes = [
        f"The floor: one replica, batch 100, {LOOPS} loops (figure 10): {fmt(fleet)} jobs/s "
        f"(at least {FLOOR_JOBS_PER_S:,.0f}: {floor}); {fmt(fleet_vs_anchor, 2)} x PgQueuer "
        f"(the aim, >= 1: {aim}). One loop: {fmt(pg100)} jobs/s, {fmt(vs_anchor, 2)} x "
        "PgQueuer.",
        CPU_NOTE,
        f"Requests/s at batch 100: SQLite {fmt(by['sqlite100'].requests_per_s())}, "
        f"PostgreSQL {fmt(by['pg100'].requests_per_s())}.",
    ]
    return Figure(
        9,
        "Server alone on SQLite and PostgreSQL, PgQueuer as the anchor",
        "One client loop (httpx, one connection, in the harness process) against a fresh "
        "`botd server` per run (default flags; `--db-pool-size 10`): each request acks the "
        "previous batch and claims the next, until a claim returns no job; "
        f"{scale.batch1_jobs:,} jobs per run at batch 1, {scale.batch100_jobs:,} at batch "
        "100, submitted before the timing (`POST /v1/jobs/batch`, 1,000 a request). Rate: "
        "from the first claim sent to the last answer. SQLite: a file in a temp dir (the "
        "default store; WAL, `synchronous=NORMAL`). PostgreSQL: one cluster on this machine "
        f"for the whole run (`tests/support/postgres.py`) with {_settings_text()} (fsync on, "
        "but a commit does not wait for its WAL flush: the SQLite store's durability class), "
        f"a fresh database per run. {ANALYZE_TEXT} Anchor: PgQueuer "
        "(`benchmarks/pgqueuer_anchor.py`, its own process on asyncio and asyncpg) on a fresh "
        "database of the same cluster, in the same run: as many jobs enqueued first, then "
        "one `QueueManager` with a no-op entrypoint, `batch_size=100`, drain mode, timed "
        "until it returns (every job's completion written). Median of "
        f"{scale.repeats} runs; the configurations of figures 9 and 10 take turns.",
        [
            "store",
            "batch",
            "jobs/s",
            "runs min-max",
            "vs batch 1",
            "vs SQLite",
            "vs PgQueuer",
            "CPU ms/job: server / PostgreSQL / client",
        ],
        rows,
        goal=(
            f"PostgreSQL, one replica, batch 100, {LOOPS} client loops: at least "
            f"{FLOOR_JOBS_PER_S:,.0f} jobs/s (the floor); botd/PgQueuer >= 1 is the aim"
        ),
        met=met,
        notes=notes,
        data={k: [r.rate for r in c.runs] for k, c in by.items()},
    )


def _figure_ten(by: Mapping[str, Config], scale: Scale) -> Figure:
    base = by["ha1"].rate
    anchor = by["pgq"].rate
    rows = []
    for key in ("pg_n", "ha1", "ha2"):
        config = by[key]
        rows.append(
            [
                config.label,
                str(config.loops),
                fmt(config.rate),
                config.spread(),
                "1" if key == "ha1" else fmt(ratio(config.rate, base), 2),
                fmt(ratio(config.rate, anchor), 2),
                _cpu_cell(config, ("server", "postgres", "haproxy", "client")),
            ]
        )
    return Figure(
        10,
        "Server replicas behind haproxy",
        f"PostgreSQL as in figure 9, batch 100, {scale.batch100_jobs:,} jobs per run, and "
        f"{LOOPS} client loops at once (in the harness process; each loop its own bot id, "
        "session and connection), so that two replicas have work to share. haproxy runs "
        "`contrib/haproxy/haproxy.cfg` (`tests/support/haproxy.py`: leastconn, a server "
        "chosen per request, health checks every second) in front of fresh replicas on one "
        "fresh database; the direct row is the same load on one replica without haproxy. "
        f"Median of {scale.repeats} runs, taking turns with figure 9's.",
        [
            "replicas",
            "client loops",
            "jobs/s",
            "runs min-max",
            "vs 1 replica behind haproxy",
            "vs PgQueuer",
            "CPU ms/job: servers / PostgreSQL / haproxy / client",
        ],
        rows,
        notes=[
            "The servers, PostgreSQL, haproxy and the client share this machine's "
            f"{os.cpu_count()} cores: a second replica brings no core of its own, so its "
            "ratio is what coordinating through the database costs or gains here, not "
            "scaling.",
            CPU_NOTE,
        ],
        data={k: [r.rate for r in by[k].runs] for k in ("pg_n", "ha1", "ha2")},
    )


FINDING_PREFIX = "PostgreSQL store, "
QUIET_LOAD = 1.5
QUIET_WAIT_S = 20.0


def _findings(figures: Sequence[Figure]) -> list[str]:
    """This module's part of the findings: a missed goal, then :data:`PG_FINDINGS`."""
    missed = [
        f"Goal missed in figure {f.number} ({f.title}): {f.goal}."
        for f in figures
        if f.met is False
    ]
    return missed + list(PG_FINDINGS)


def _section(lines: list[str], start: int) -> int:
    """The index of the line after the ``## `` section that begins at ``start``."""
    end = start + 1
    while end < len(lines) and not lines[end].startswith("## "):
        end += 1
    return end


def splice(doc: str, figures: Sequence[Figure], findings: Sequence[str]) -> str:
    """``doc`` (a report of ``python -m benchmarks``) with ``figures`` put in: their summary
    rows, their sections (before "Findings") and ``findings``, replacing what it had of them
    (a figure of the same number, a finding that starts with :data:`FINDING_PREFIX` or
    names a missed goal of one of them). The rest of ``doc`` stays as it was."""
    from .report import render

    ours = {f.number for f in figures}
    new = render(figures, [], command="", seconds=0, findings=[]).splitlines()
    rows = [line for line in new if any(line.startswith(f"| {n} | ") for n in ours)]
    sections: list[str] = []
    for i, line in enumerate(new):
        if any(line.startswith(f"## {n}. ") for n in ours):
            sections += new[i : _section(new, i)]
    lines = doc.rstrip("\n").splitlines()
    lines = [line for line in lines if not any(line.startswith(f"| {n} | ") for n in ours)]
    i = 0
    while i < len(lines):  # drop our old sections
        if any(lines[i].startswith(f"## {n}. ") for n in ours):
            del lines[i : _section(lines, i)]
        else:
            i += 1
    summary = lines.index("## Summary")
    last_row = summary + 1
    while last_row + 1 < len(lines) and lines[last_row + 1].startswith("|"):
        last_row += 1
    lines[last_row + 1 : last_row + 1] = rows
    at = lines.index("## Findings") if "## Findings" in lines else len(lines)
    lines[at:at] = sections
    at = lines.index("## Findings")
    kept = [
        line
        for line in lines[at + 1 :]
        if line.strip()
        and line != "- none"
        and not line.startswith("- " + FINDING_PREFIX)
        and not any(line.startswith(f"- Goal missed in figure {n} ") for n in ours)
    ]
    missed = [f"- {f}" for f in findings if f.startswith("Goal missed in figure ")]
    others = [f"- {f}" for f in findings if not f.startswith("Goal missed in figure ")]
    goals = sum(1 for line in kept if line.startswith("- Goal missed in figure "))
    kept[goals:goals] = missed
    out = [*lines[: at + 1], "", *kept, *others]
    if len(out) == at + 2:
        out.append("- none")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run figures 9 and 10 alone; print their report, write it to ``--out``, or put the two
    figures into docs/benchmarks.md (``--update-docs``) leaving its other figures alone."""
    from .report import load_average, machine, render

    docs = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pg_bench")
    parser.add_argument("--quick", action="store_true", help="scaled down, well under a minute")
    parser.add_argument("--out", type=Path, help="write the report here instead of stdout")
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help=f"replace figures 9 and 10 (and their findings) in {docs}",
    )
    args = parser.parse_args(argv)
    deadline = time.monotonic() + QUIET_WAIT_S
    while not args.quick and os.getloadavg()[0] >= QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(2)  # as python -m benchmarks does before each figure
    start = time.monotonic()
    before = load_average()
    figures = list(trio.run(lambda: pg_figures(quick=args.quick)))
    seconds = time.monotonic() - start
    loads = f"{before}; {load_average()}"
    command = "python -m benchmarks.pg_bench" + (" --quick" if args.quick else "")
    if args.update_docs:
        figures[0].notes.append(
            f"Figures 9 and 10 come from a run of their own: `{command} --update-docs`, "
            f"{seconds:.0f} s, load average (1/5/15 min) before, after: {loads}; the other "
            "figures from the run described at the top."
        )
        docs.write_text(splice(docs.read_text(), figures, _findings(figures)))
        print(f"updated {docs}", file=sys.stderr)
        return 0
    extra = {"load average (1/5/15 min) before, after": loads}
    text = render(
        figures, machine(extra), command=command, seconds=seconds, findings=_findings(figures)
    )
    if args.out is not None:
        args.out.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
