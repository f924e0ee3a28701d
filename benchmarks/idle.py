"""Figure 4: the CPU seconds that an idle bot uses."""

from __future__ import annotations

import sys

import trio

from .common import Fleet, cpu_over, ratio
from .report import Figure, at_most, fmt


async def idle_cost(*, quick: bool) -> Figure:
    """Read utime+stime of an idle ``botd run`` and of the idle minimal loop over the window.

    Both start against one server, settle for 3 s, then run side by side for 60 s (5 s in
    quick mode) with default settings (heartbeat every 5 s, long-poll claims).
    """
    window = 2.0 if quick else 60.0
    async with Fleet() as fleet:
        server = await fleet.server()
        bot = await fleet.bot(server, BOT_LOG_LEVEL="INFO")
        minimal = await fleet.spawn(
            "minimal", [sys.executable, "-m", "benchmarks.minimal_bot", server.url, "--batch", "1"]
        )
        await trio.sleep(3)
        pids = {"bot": bot.child.pid, "minimal": minimal.pid, "server": server.child.pid}
        used = await cpu_over(pids, window)
    scale = 60.0 / window
    per_min = {k: v * scale for k, v in used.items()}
    goal = at_most("idle CPU, botd / minimal loop", ratio(used["bot"], used["minimal"]), 1.3)
    return Figure(
        4,
        "Idle cost",
        f"An idle `botd run` (defaults: heartbeat 5 s, long-poll claims of 20 s, INFO logs, ops "
        f"endpoint on) and, beside it, the idle minimal loop (`benchmarks/minimal_bot.py`: the "
        f"same heartbeat and long poll, nothing else): the CPU time of every thread, from "
        f"/proc/<pid>/task/<tid>/schedstat (nanoseconds; utime+stime would come in 10 ms "
        f"clock ticks, 5-7 of them a minute here), over {window:.0f} s, scaled to 60 s.",
        ["process", "CPU s per 60 s", "ratio to minimal loop"],
        [
            ["botd run", fmt(per_min["bot"]), fmt(ratio(used["bot"], used["minimal"]), 2)],
            ["baseline: minimal loop", fmt(per_min["minimal"]), "1"],
            ["the server (for reference)", fmt(per_min["server"]), "-"],
        ],
        goal=f"{goal.measure} {goal.target}",
        met=goal.met,
        data=per_min,
        goals=[goal],
    )
