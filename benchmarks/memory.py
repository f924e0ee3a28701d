"""Figure 5: the resident memory of a bot after 10k and after 100k no-op jobs."""

from __future__ import annotations

import sys

import trio

from .common import Fleet, Server, rss_mb, submit_many, wait_until
from .report import Figure, at_most, fmt, judged


async def _run_jobs(fleet: Fleet, server: Server, count: int, total: int) -> None:
    async def done() -> bool | None:
        return True if (await fleet.stats(server))["succeeded"] >= total else None

    await submit_many(server.url, count)
    await wait_until(done, within=120 + count / 20, every=0.2, what=f"{total} jobs")


async def memory(*, quick: bool) -> Figure:
    """RSS of ``botd run`` (concurrency 32, no-op) after 10k and 100k jobs (300/1k quick).

    Jobs are submitted while the bot runs; the RSS is read after all of them succeeded and
    the bot had 1 s to settle. Baseline: the RSS of the idle minimal loop (python, trio,
    httpx) started against the same server afterwards.
    """
    first, second = (300, 1_000) if quick else (10_000, 100_000)
    async with Fleet() as fleet:
        server = await fleet.server()
        bot = await fleet.bot(server, BOT_CONCURRENCY=32)
        await _run_jobs(fleet, server, first, first)
        await trio.sleep(1)
        rss_first = rss_mb(bot.child.pid)
        await _run_jobs(fleet, server, second - first, second)
        await trio.sleep(1)
        rss_second = rss_mb(bot.child.pid)
        minimal = await fleet.spawn(
            "minimal", [sys.executable, "-m", "benchmarks.minimal_bot", server.url]
        )
        await trio.sleep(2)
        rss_minimal = rss_mb(minimal.pid)
    growth = rss_second - rss_first
    goals = [
        at_most(f"RSS MiB after {second:,} jobs", rss_second, 60, digits=3),
        at_most("growth MiB", growth, 2, digits=3),
    ]
    goal, met = judged(goals)
    return Figure(
        5,
        "Memory",
        "`botd run` at concurrency 32 with the no-op handler against `botd server --db "
        f":memory:`; jobs submitted while it runs; RSS (/proc/<pid>/statm) after {first:,} and "
        f"after {second:,} jobs succeeded. Baseline: the idle minimal loop's RSS.",
        ["", "RSS MiB", "ratio to baseline"],
        [
            [f"botd after {first:,} jobs", fmt(rss_first), fmt(rss_first / rss_minimal, 2)],
            [f"botd after {second:,} jobs", fmt(rss_second), fmt(rss_second / rss_minimal, 2)],
            ["growth", fmt(growth), "-"],
            ["baseline: minimal loop (python+trio+httpx)", fmt(rss_minimal), "1"],
        ],
        goal=goal,
        met=met,
        data={"first": rss_first, "second": rss_second, "minimal": rss_minimal},
        goals=goals,
    )
