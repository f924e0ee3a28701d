"""Figures 2 and 8: jobs per second of one bot, of the minimal loop, of Celery, of the server.

Each run gets a fresh ``botd server --db :memory:`` (or a fresh Redis), ``jobs`` jobs are
submitted first, and then the consumer starts. The rate is ``jobs / (t_done - t_first)``:
t_first is when the first job left the queue and t_done when the last one succeeded, both seen
by polling every 50 ms (``GET /v1/stats``; Redis ``DBSIZE`` of the result database for Celery),
so the consumer's start-up is not counted.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any

import trio

from .common import BenchError, Fleet, Server, free_port, median, ratio, submit_many, wait_until
from .report import Figure, at_least, fmt, judged, reported

POLL = 0.05
#: BOT_PREFETCH of figure 2's like-for-like bot at concurrency 1: Celery's default
#: worker_prefetch_multiplier (a worker holds up to 4 x concurrency reserved messages).
CELERY_PREFETCH = 4
#: Interleaved rounds of botd, durable botd and the minimal loop at concurrency 32.
C32_ROUNDS = 3


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


async def botd_rate(
    jobs: int, concurrency: int, *, durable: bool = False, prefetch: int = 0
) -> float:
    """One ``botd run`` (no-op simulate handler) at ``concurrency``: jobs per second.

    ``durable``: with ``BOT_STATE_DIR`` (the outbox in a SQLite file, each result durable
    before it counts as finished), in the fleet's temporary directory. ``prefetch``: with
    ``BOT_PREFETCH`` (0: the default, unset).
    """
    async with Fleet() as fleet:
        server = await fleet.server()
        await submit_many(server.url, jobs)
        extra = {"BOT_STATE_DIR": str(fleet.dir / "state")} if durable else {}
        if prefetch:
            extra["BOT_PREFETCH"] = str(prefetch)
        await fleet.bot(server, wait_ready=False, BOT_CONCURRENCY=concurrency, **extra)
        return await _drain_rate(fleet, server, jobs, within=60 + jobs / 20)


async def _driven(fleet: Fleet, url: str, mode: str, requests: int) -> float:
    """Run ``benchmarks.framework drive`` against ``url`` in a child; its requests/s."""
    argv = [_python(), "-m", "benchmarks.framework", "drive", url, "--mode", mode]
    child = await fleet.spawn(f"drive-{mode}", [*argv, "--requests", str(requests)])
    with trio.fail_after(60 + requests / 20):
        await child.process.wait()
    if child.process.returncode != 0:
        raise BenchError(f"the {mode} driver exited {child.process.returncode}:\n{child.tail()}")
    rate: float = json.loads(child.tail(1))["requests_per_s"]
    return rate


async def _echo_server(fleet: Fleet) -> str:
    """Start ``benchmarks.framework serve`` on a free port; its URL once it answers."""
    port = free_port()
    child = await fleet.spawn(
        "echo", [_python(), "-m", "benchmarks.framework", "serve", "--port", str(port)]
    )
    url = f"http://127.0.0.1:{port}"

    async def up() -> bool | None:
        child.check_alive()
        try:
            answer = await fleet.client.post(f"{url}/echo", json={}, timeout=2)
        except Exception:
            return None
        return True if answer.status_code == 200 else None

    await wait_until(up, within=20, every=0.02, what="the echo server")
    return url


async def framework_rates(requests: int, rounds: int) -> tuple[list[float], list[float]]:
    """Requests/s of the echo endpoint and of claim+ack at batch 1, ``rounds`` times each,
    interleaved; each run on a fresh server, driven by the same client."""
    echo: list[float] = []
    claims: list[float] = []
    for _ in range(rounds):
        async with Fleet() as fleet:
            echo.append(await _driven(fleet, await _echo_server(fleet), "echo", requests))
        async with Fleet() as fleet:
            server = await fleet.server()
            await submit_many(server.url, requests + 10)
            claims.append(await _driven(fleet, server.url, "claim", requests))
    return echo, claims


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
    return sys.executable


async def throughput(*, quick: bool) -> tuple[Figure, Figure]:
    """Figures 2 (bot vs minimal loop vs Celery, and the durable outbox) and 8 (the server
    alone, batches 1 and 100, against the framework's echo endpoint)."""
    jobs = 400 if quick else 20_000
    rows: list[list[str]] = []
    data: dict[str, Any] = {}
    notes: list[str] = []
    prefetched = float("nan")
    for concurrency in (1, 32):
        if concurrency == 1:
            ours = await botd_rate(jobs, concurrency)
            prefetched = await botd_rate(jobs, 1, prefetch=CELERY_PREFETCH)
            durable = None
            base = await minimal_rate(jobs, concurrency)
        else:
            # A run at 32 takes seconds and moves by +-15% from one to the next on a small
            # machine: the median of C32_ROUNDS interleaved rounds of the three.
            runs: dict[str, list[float]] = {"botd": [], "durable": [], "minimal": []}
            for _ in range(1 if quick else C32_ROUNDS):
                runs["botd"].append(await botd_rate(jobs, concurrency))
                runs["durable"].append(await botd_rate(jobs, concurrency, durable=True))
                runs["minimal"].append(await minimal_rate(jobs, concurrency))
            ours, durable, base = (median(runs[k]) for k in ("botd", "durable", "minimal"))
            data["c32_runs"] = runs
        try:
            cel = await celery_rate(jobs, concurrency)
        except (BenchError, ImportError) as exc:
            cel = float("nan")
            notes.append(f"Celery at concurrency {concurrency} not measured: {exc}")
        data[f"c{concurrency}"] = {"botd": ours, "minimal": base, "celery": cel}
        if durable is not None:
            data[f"c{concurrency}"]["durable"] = durable
        vs_a, vs_b = ratio(ours, base), ratio(ours, cel)
        rows.append(
            [
                str(concurrency),
                fmt(ours),
                fmt(durable) if durable is not None else "-",
                fmt(base),
                fmt(cel),
                fmt(vs_a, 2),
                fmt(vs_b, 2),
                fmt(ratio(durable, ours), 2) if durable is not None else "-",
            ]
        )
        if concurrency == 1:
            data["c1"]["botd_prefetch"] = prefetched
            rows.append(
                [
                    f"1, BOT_PREFETCH={CELERY_PREFETCH}",
                    fmt(prefetched),
                    "-",
                    fmt(base),
                    fmt(cel),
                    fmt(ratio(prefetched, base), 2),
                    fmt(ratio(prefetched, cel), 2),
                    "-",
                ]
            )
    c1, c32 = data["c1"], data["c32"]
    goals = [
        # Judged like for like: Celery's solo pool prefetches 4 by default, so the bot with
        # BOT_PREFETCH=4 is the figure held to the goal; the default bot (no prefetch, one
        # claim round trip per job) is shown beside it.
        at_least(
            f"concurrency 1, botd BOT_PREFETCH={CELERY_PREFETCH} / Celery solo (judged: like for"
            f" like, Celery's solo pool prefetches {CELERY_PREFETCH} by default)",
            ratio(c1["botd_prefetch"], c1["celery"]),
            1.0,
        ),
        reported(
            "concurrency 1, botd default (BOT_PREFETCH=0, one claim per job) / Celery solo",
            ratio(c1["botd"], c1["celery"]),
        ),
        at_least("concurrency 32, botd / minimal loop", ratio(c32["botd"], c32["minimal"]), 0.85),
        at_least(
            "concurrency 32, durable outbox / in-memory", ratio(c32["durable"], c32["botd"]), 0.9
        ),
    ]
    goal, met = judged(goals)
    two = Figure(
        2,
        "Throughput, one bot, no-op handler",
        f"{jobs:,} jobs per run, submitted before the consumer starts; a fresh "
        "`botd server --db :memory:` per run (SQLite in memory: the store is not the "
        "subject). botd: `botd run` with `BOT_HANDLER=simulate PROCESSING_DURATION_MS=0`, "
        "results kept in memory; at concurrency 1 also with `BOT_PREFETCH=4` (the bot holds up "
        "to 4 claimed jobs beyond its free slot, as Celery's default "
        "`worker_prefetch_multiplier` of 4 does); the durable bot is the same with "
        "`BOT_STATE_DIR` set (the "
        "outbox in a SQLite file, each result durable before its job counts as finished), "
        "measured right after the in-memory one. At concurrency 32 each of the three (botd, "
        "durable, minimal loop) is the median of 3 interleaved rounds (1 in quick mode); at "
        "concurrency 1, one run each. "
        "(a) `benchmarks/minimal_bot.py`: httpx, one loop, claims of `max_jobs=concurrency` "
        "with the previous batch's acks piggybacked. (b) Celery worker, Redis broker and result "
        "backend (Debian `redis-server` on a loopback port), `solo` pool at concurrency 1, "
        "`threads` pool at 32, a no-op task. Rate: from the first job leaving the queue to "
        "the last success.",
        [
            "concurrency",
            "botd jobs/s",
            "botd durable jobs/s",
            "(a) minimal loop jobs/s",
            "(b) Celery jobs/s",
            "botd/(a)",
            "botd/(b)",
            "durable/botd",
        ],
        rows,
        goal=goal,
        met=met,
        notes=notes,
        data=data,
        goals=goals,
    )
    batch100 = await minimal_rate(jobs, 100)
    requests, rounds = (200, 1) if quick else (3_000, 5)
    echo, claims = await framework_rates(requests, rounds)
    echo_rate, claim_rate = median(echo), median(claims)
    share = ratio(claim_rate, echo_rate)
    eight_goals = [
        at_least("batch 1, server claims+acks/s / framework echo requests/s", share, 0.8)
    ]
    eight = Figure(
        8,
        "Server alone: claims+acks per second",
        "The minimal loop (one client, one connection) against a fresh "
        "`botd server --db :memory:`: each request acks the previous batch and claims the "
        f"next; {jobs:,} jobs per run. Batch 1 is figure 2's (a) at concurrency 1 (timed by "
        "polling `GET /v1/stats`). The framework's limit: `benchmarks/framework.py`, an echo "
        "endpoint (`POST /echo` reads a small JSON body, parses it, answers a small JSON body "
        "the size of a one-job claim answer) on the hypercorn trio worker with `botd server`'s "
        "hypercorn settings and a one-route Starlette app, and `botd server --db :memory:` at "
        "batch 1, each driven by the same client (`benchmarks/framework.py drive`: httpx, one "
        f"connection, one request at a time, timed by itself), {requests:,} requests a run, "
        f"{rounds} run(s) each, taking turns, a fresh server per run; medians.",
        ["", "jobs/s", "requests/s", "vs batch 1", "runs (requests/s)", "vs echo"],
        [
            ["batch 1", fmt(c1["minimal"]), fmt(c1["minimal"]), "1", "-", "-"],
            [
                "batch 100",
                fmt(batch100),
                fmt(batch100 / 100),
                fmt(ratio(batch100, c1["minimal"]), 3),
                "-",
                "-",
            ],
            [
                "batch 1, timed by the client",
                fmt(claim_rate),
                fmt(claim_rate),
                "-",
                ", ".join(fmt(r) for r in claims),
                fmt(share, 2),
            ],
            [
                "baseline: framework echo",
                "-",
                fmt(echo_rate),
                "-",
                ", ".join(fmt(r) for r in echo),
                "1",
            ],
        ],
        goal=eight_goals[0].measure + " " + eight_goals[0].target,
        met=eight_goals[0].met,
        data={"batch1": c1["minimal"], "batch100": batch100, "echo": echo, "claims": claims},
        goals=eight_goals,
    )
    return two, eight
