"""Figure 7: how many bots heartbeating every 5 s one server sustains with p99 < 100 ms."""

from __future__ import annotations

import random

import httpx
import trio

from .common import Fleet, percentile
from .report import Figure, fmt

LIMIT_S = 0.100


async def _step(n: int, interval: float, window: float) -> tuple[float, float, int, int]:
    """Register ``n`` bots on a fresh server, heartbeat each every ``interval`` for ``window``.

    Returns (p50, p99, heartbeats, errors). Each bot starts at a random phase.
    """
    latencies: list[float] = []
    errors = 0
    async with Fleet() as fleet:
        server = await fleet.server()
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=server.url, timeout=10, limits=limits) as client:
            sessions: dict[str, str] = {}
            limiter = trio.CapacityLimiter(50)

            async def register(bot_id: str) -> None:
                async with limiter:
                    body = {"bot_id": bot_id, "capacity": 1}
                    response = await client.post("/v1/bots/register", json=body)
                    sessions[bot_id] = response.json()["session_id"]

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(register, f"load-{i}")

            async def beat(bot_id: str, session: str) -> None:
                nonlocal errors
                body = {"session_id": session, "state": "ready", "active_leases": [], "stats": {}}
                await trio.sleep(random.uniform(0, interval))
                next_at = trio.current_time()
                while True:
                    start = trio.current_time()
                    try:
                        response = await client.post(f"/v1/bots/{bot_id}/heartbeat", json=body)
                        if response.status_code != 200:
                            errors += 1
                    except httpx.HTTPError:
                        errors += 1
                    latencies.append(trio.current_time() - start)
                    next_at += interval
                    await trio.sleep_until(next_at)

            with trio.move_on_after(window):
                async with trio.open_nursery() as nursery:
                    for bot_id, session in sessions.items():
                        nursery.start_soon(beat, bot_id, session)
    return percentile(latencies, 50), percentile(latencies, 99), len(latencies), errors


async def capacity(*, quick: bool) -> Figure:
    """Step N up (100, 250, 500, 1000, 2000, 4000, 8000) until p99 >= 100 ms or errors."""
    steps = [20] if quick else [100, 250, 500, 1000, 2000, 4000, 8000]
    interval = 1.0 if quick else 5.0
    window = 1.0 if quick else 12.0
    rows = []
    best = 0
    for n in steps:
        p50, p99, count, errors = await _step(n, interval, window)
        ok = p99 < LIMIT_S and errors == 0
        rows.append(
            [
                str(n),
                fmt(count / window),
                fmt(p50 * 1000),
                fmt(p99 * 1000),
                str(errors),
                "yes" if ok else "no",
            ]
        )
        if not ok:
            break
        best = n
    return Figure(
        7,
        "Server capacity",
        f"A fresh `botd server --db :memory:` per step; a Trio load generator (one process, one "
        f"httpx client, one connection per bot) registers N bots and heartbeats each every "
        f"{interval:g} s from a random phase for {window:g} s. Steps go up until the p99 "
        "reaches 100 ms or a heartbeat fails. The generator shares the machine's cores with "
        "the server, so the figure is a lower bound.",
        ["bots", "heartbeats/s", "p50 ms", "p99 ms", "errors", "p99 < 100 ms"],
        rows,
        goal="report the largest N with p99 < 100 ms",
        met=None,
        notes=[f"largest N sustained: {best}"],
        data={"sustained": best},
    )
