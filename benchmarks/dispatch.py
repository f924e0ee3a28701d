"""Figure 3: dispatch latency of an idle bot, from submit to handler start."""

from __future__ import annotations

import random

import trio

from .common import Fleet, free_port, percentile, ratio, wall
from .report import Figure, fmt


async def dispatch_latency(*, quick: bool) -> Figure:
    """Submit one job at a time to an idle bot; time until its handler starts.

    The bot runs ``BOT_HANDLER=python`` with :mod:`benchmarks.probe`, which sends its start
    time by UDP. The clock starts just before the ``POST /v1/jobs`` is sent. Between jobs the
    harness waits 10-30 ms so that the bot is back in its long poll. Baseline: the round
    trip of the submit itself (``POST /v1/jobs``).
    """
    jobs = 30 if quick else 500
    port = free_port()
    latencies: list[float] = []
    submits: list[float] = []
    lost = 0
    async with Fleet() as fleet:
        server = await fleet.server()
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", port))
        await fleet.bot(
            server,
            BOT_HANDLER="python",
            BOT_PYTHON_HANDLER="benchmarks.probe:record",
            BENCH_PROBE_PORT=port,
        )
        await trio.sleep(0.5)
        for seq in range(jobs):
            body = {"kind": "probe", "payload": {"seq": seq}}
            sent = wall()
            (await fleet.client.post(f"{server.url}/v1/jobs", json=body)).raise_for_status()
            submits.append(wall() - sent)
            with trio.move_on_after(5):
                while True:
                    got_seq, started = (await sock.recv(100)).decode().split()
                    if int(got_seq) == seq:
                        latencies.append(float(started) - sent)
                        break
            if len(latencies) + lost <= seq:
                lost += 1
            await trio.sleep(random.uniform(0.01, 0.03))
        sock.close()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    s50, s99 = percentile(submits, 50), percentile(submits, 99)
    return Figure(
        3,
        "Dispatch latency, idle bot",
        f"{jobs} jobs, one at a time, to an idle `botd run` (concurrency 1, long-poll claims, "
        "`BOT_HANDLER=python`, `benchmarks/probe.py` reports its start over UDP). Latency: "
        "from just before `POST /v1/jobs` is sent to the handler's first line, on the "
        "machine-wide monotonic clock. Baseline: the round trip of that submit alone.",
        ["", "p50 ms", "p99 ms", "max ms", "p50 ratio to baseline"],
        [
            [
                "submit -> handler start",
                fmt(p50 * 1000),
                fmt(p99 * 1000),
                fmt(max(latencies, default=float("nan")) * 1000),
                fmt(ratio(p50, s50), 2),
            ],
            [
                "baseline: POST /v1/jobs round trip",
                fmt(s50 * 1000),
                fmt(s99 * 1000),
                fmt(max(submits) * 1000),
                "1",
            ],
        ],
        goal="p99 under 25 ms",
        met=p99 < 0.025 and lost == 0,
        notes=[f"samples lost: {lost}"] if lost else [],
        data={"p50": p50, "p99": p99, "submit_p50": s50},
    )
