"""Figure 1: time to ready, from process start until ``/readyz`` answers 200."""

from __future__ import annotations

import sys

import trio

from .common import Fleet, median, ratio
from .report import Figure, fmt

IMPORT_CODE = "import trio, httpx"


async def _import_time(fleet: Fleet) -> float:
    start = trio.current_time()
    await trio.run_process([sys.executable, "-c", IMPORT_CODE])
    return trio.current_time() - start


async def time_to_ready(*, quick: bool) -> Figure:
    """Start ``botd run`` 10 times against one server; time each until /readyz is 200.

    Each bot is stopped (SIGTERM) before the next one starts. The baseline is the wall time of
    ``python -c "import trio, httpx"``, measured as many times in the same run.
    """
    runs = 3 if quick else 10
    ready: list[float] = []
    bare: list[float] = []
    async with Fleet() as fleet:
        server = await fleet.server()
        for _ in range(runs):
            bare.append(await _import_time(fleet))
            start = trio.current_time()
            bot = await fleet.bot(server, wait_ready=True)
            ready.append(trio.current_time() - start)
            await fleet.stop(bot.child)
    med, base = median(ready), median(bare)
    return Figure(
        1,
        "Time to ready",
        f"{runs} runs of `botd run` (the console script) against a running `botd server`: "
        "from spawning the process until `GET /readyz` on its ops port answers 200 (polled "
        'every 5 ms). Baseline: the wall time of `python -c "import trio, httpx"`, as many '
        "runs, interleaved.",
        ["", "median s", "min s", "max s", "ratio to baseline"],
        [
            [
                "botd run -> /readyz 200",
                fmt(med),
                fmt(min(ready)),
                fmt(max(ready)),
                fmt(ratio(med, base), 2),
            ],
            ["baseline: import trio, httpx", fmt(base), fmt(min(bare)), fmt(max(bare)), "1"],
        ],
        goal="median under 0.5 s (the seed reports 3.02 s)",
        met=med < 0.5,
        data={"ready": ready, "baseline": bare},
    )
