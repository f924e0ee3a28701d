"""Figures 2 and 8: jobs per second of one bot, of the minimal loop, of Celery, of the server.

Each run gets a fresh ``botd server --db :memory:`` (or a fresh Redis), ``jobs`` jobs are
submitted first, and then the consumer starts. The rate is ``jobs / (t_done - t_first)``:
t_first is when the first job left the queue and t_done when the last one succeeded, both seen
by polling every 50 ms (``GET /v1/stats``; Redis ``DBSIZE`` of the result database for Celery),
so the consumer's start-up is not counted.
"""

from __future__ import annotations

import shutil

import trio

from .common import BenchError, Fleet, Server, free_port, ratio, submit_many, wait_until
from .report import Figure, fmt

POLL = 0.05


async def _drain_rate(fleet: Fleet, server: Server, jobs: int, within: float) -> float:
    """Poll the server until ``jobs`` jobs succeeded; the rate from the first lease on."""
    first: float | None = None

    async def done() -> float | None:
        nonlocal first
        stats = await fleet.stats(server)
        now = trio.current_time()
        if first is None and stats["queued"] < jobs:
            first = now
        if stats["succeeded"] >= jobs:
            return now
        return None

    end = await wait_until(done, within=within, every=POLL, what=f"{jobs} jobs to succeed")
    assert first is not None
    return jobs / max(end - first, POLL)


async def botd_rate(jobs: int, concurrency: int) -> float:
    """One ``botd run`` (no-op simulate handler) at ``concurrency``: jobs per second."""
    async with Fleet() as fleet:
        server = await fleet.server()
        await submit_many(server.url, jobs)
        await fleet.bot(server, wait_ready=False, BOT_CONCURRENCY=concurrency)
        return await _drain_rate(fleet, server, jobs, within=60 + jobs / 20)


async def minimal_rate(jobs: int, batch: int) -> float:
    """The minimal protocol loop (claim+ack batches of ``batch``): jobs per second."""
    async with Fleet() as fleet:
        server = await fleet.server()
        await submit_many(server.url, jobs)
        argv = ["-m", "benchmarks.minimal_bot", server.url, "--batch", str(batch)]
        await fleet.spawn("minimal", [_python(), *argv])
        return await _drain_rate(fleet, server, jobs, within=60 + jobs / 20)


async def celery_rate(jobs: int, concurrency: int) -> float:
    """A Celery worker on a Redis broker running ``jobs`` no-op tasks: jobs per second.

    Concurrency 1 uses the ``solo`` pool; more uses the ``threads`` pool (a no-op task, like
    botd's, waits on nothing). Raises BenchError when redis-server or celery is missing.
    """
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    import redis

    async with Fleet() as fleet:
        port = free_port()
        redis_argv = [
            redis_server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        await fleet.spawn("redis", redis_argv)
        url = f"redis://127.0.0.1:{port}"
        broker = redis.Redis(port=port, db=0)
        results = redis.Redis(port=port, db=1)

        def ping() -> bool | None:
            try:
                return bool(broker.ping()) or None
            except redis.ConnectionError:
                return None

        async def pinged() -> bool | None:
            return await trio.to_thread.run_sync(ping)

        await wait_until(pinged, within=10, every=0.02, what="redis-server")

        def send() -> None:
            from celery import Celery  # type: ignore[import-untyped]

            app = Celery("bench-producer", broker=f"{url}/0", backend=f"{url}/1")
            try:
                with app.producer_or_acquire() as producer:
                    for _ in range(jobs):
                        app.send_task("bench.noop", producer=producer)
            finally:
                app.close()

        await trio.to_thread.run_sync(send)
        pool = ["--pool", "solo"] if concurrency == 1 else ["--pool", "threads"]
        argv = [
            _python(),
            "-m",
            "celery",
            "-A",
            "benchmarks.celery_app",
            "worker",
            *pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        await fleet.spawn("celery", argv, env={"BENCH_REDIS_URL": url})
        first: float | None = None

        async def done() -> float | None:
            nonlocal first
            count = await trio.to_thread.run_sync(results.dbsize)
            now = trio.current_time()
            if first is None and count > 0:
                first = now
            return now if count >= jobs else None

        end = await wait_until(done, within=60 + jobs / 20, every=POLL, what="celery")
        assert first is not None
        broker.close()
        results.close()
        return jobs / max(end - first, POLL)


def _python() -> str:
    import sys

    return sys.executable


async def throughput(*, quick: bool) -> tuple[Figure, Figure]:
    """Figures 2 (bot vs minimal loop vs Celery) and 8 (the server alone, batches 1 and 100)."""
    jobs = 400 if quick else 20_000
    rows: list[list[str]] = []
    data: dict[str, object] = {}
    met = True
    notes: list[str] = []
    for concurrency in (1, 32):
        ours = await botd_rate(jobs, concurrency)
        base = await minimal_rate(jobs, concurrency)
        try:
            cel = await celery_rate(jobs, concurrency)
        except (BenchError, ImportError) as exc:
            cel = float("nan")
            notes.append(f"Celery at concurrency {concurrency} not measured: {exc}")
        data[f"c{concurrency}"] = {"botd": ours, "minimal": base, "celery": cel}
        vs_a, vs_b = ratio(ours, base), ratio(ours, cel)
        met = met and vs_a >= 0.8 and vs_b > 1.0
        rows.append([str(concurrency), fmt(ours), fmt(base), fmt(cel), fmt(vs_a, 2), fmt(vs_b, 2)])
    two = Figure(
        2,
        "Throughput, one bot, no-op handler",
        f"{jobs:,} jobs per run, submitted before the consumer starts; a fresh "
        "`botd server --db :memory:` per run (SQLite in memory: the store is not the "
        "subject). botd: `botd run` with `BOT_HANDLER=simulate PROCESSING_DURATION_MS=0`. "
        "(a) `benchmarks/minimal_bot.py`: httpx, one loop, claims of `max_jobs=concurrency` "
        "with the previous batch's acks piggybacked. (b) Celery worker, Redis broker and result "
        "backend (Debian `redis-server` on a loopback port), `solo` pool at concurrency 1, "
        "`threads` pool at 32, a no-op task. Rate: from the first job leaving the queue to "
        "the last success.",
        [
            "concurrency",
            "botd jobs/s",
            "(a) minimal loop jobs/s",
            "(b) Celery jobs/s",
            "botd/(a)",
            "botd/(b)",
        ],
        rows,
        goal="botd/(a) >= 0.8 and botd/(b) > 1",
        met=met,
        notes=notes,
        data=data,
    )
    batch100 = await minimal_rate(jobs, 100)
    c1 = data["c1"]
    assert isinstance(c1, dict)
    eight = Figure(
        8,
        "Server alone: claims+acks per second",
        "The minimal loop (one client, one connection) against a fresh "
        "`botd server --db :memory:`: each request acks the previous batch and claims the "
        f"next; {jobs:,} jobs per run. Batch 1 is figure 2's (a) at concurrency 1.",
        ["batch", "jobs/s", "requests/s", "vs batch 1"],
        [
            ["1", fmt(c1["minimal"]), fmt(c1["minimal"]), "1"],
            ["100", fmt(batch100), fmt(batch100 / 100), fmt(ratio(batch100, c1["minimal"]), 3)],
        ],
        data={"batch1": c1["minimal"], "batch100": batch100},
    )
    return two, eight
