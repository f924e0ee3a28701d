"""Figure 9's anchor: PgQueuer dequeuing no-op jobs in batches, in a process of its own.

PgQueuer is asyncio (asyncpg here, its documented driver), so it runs apart from the Trio
harness: ``python -m benchmarks.pgqueuer_anchor DSN --jobs N --batch 100``. On the database
``DSN`` names (empty, made for this run) it installs PgQueuer's schema (``Queries.install``,
what ``pgq install`` runs), enqueues ``N`` jobs of entrypoint ``bench`` with a null payload
(batched inserts, not timed), then times one ``QueueManager`` with a no-op async entrypoint
running ``batch_size=100`` in drain mode: from just before ``run`` until it returns, when the
queue is empty and every job's completion is written (PgQueuer deletes the job and logs it
as ``successful``). It checks that the queue table is empty and that ``N`` successes are
logged, and prints one JSON line: ``{"jobs": N, "seconds": S, "jobs_per_s": R, "cpu_s": C}``
(``cpu_s``: this process's utime+stime during the timed part).

PgQueuer's CLI runs on uvloop when it is installed; ``--uvloop`` does the same (the figure
uses the standard asyncio loop unless told otherwise; see its notes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ENTRYPOINT = "bench"
ENQUEUE_BATCH = 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def _cpu_of_children(parent: int) -> dict[int, float]:
    """utime+stime of every process whose parent is ``parent``, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(int(entry.name))
        except (OSError, ValueError):
            continue
        if int(fields[1]) == parent:
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


async def run(dsn: str, jobs: int, batch: int, *, analyze: bool) -> dict[str, Any]:
    """Install, enqueue ``jobs`` (then ANALYZE, if ``analyze``), time a drain of ``batch``."""
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    connection = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(connection))
        await queries.install()
        for start in range(0, jobs, ENQUEUE_BATCH):
            n = min(jobs, start + ENQUEUE_BATCH) - start
            await queries.enqueue([ENTRYPOINT] * n, [None] * n, [0] * n)
        if analyze:
            await connection.execute("ANALYZE")
        postmaster = int(_stat(await connection.fetchval("SELECT pg_backend_pid()"))[1])
        qm = QueueManager(queries)

        @qm.entrypoint(ENTRYPOINT)
        async def noop(job: Job) -> None:
            return None

        pg0, cpu0, start_t = _cpu_of_children(postmaster), os.times(), time.monotonic()
        await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
        seconds = time.monotonic() - start_t
        cpu1, pg1 = os.times(), _cpu_of_children(postmaster)
        left = await connection.fetchval("SELECT count(*) FROM pgqueuer")
        logged = await connection.fetchval(
            "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
        )
    finally:
        await connection.close()
    if left != 0 or logged != jobs:
        raise RuntimeError(f"PgQueuer left {left} jobs queued and logged {logged} of {jobs}")
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    pg_cpu = sum(max(0.0, c - pg0.get(pid, 0.0)) for pid, c in pg1.items())
    return {
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds,
        "cpu_s": cpu,
        "pg_cpu_s": pg_cpu,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run once, print the JSON line."""
    parser = argparse.ArgumentParser(prog="pgqueuer_anchor")
    parser.add_argument("dsn")
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--analyze", action="store_true", help="ANALYZE before the timing")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop, as `pgq run` does")
    args = parser.parse_args(argv)
    coro = run(args.dsn, args.jobs, args.batch, analyze=args.analyze)
    if args.uvloop:
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
