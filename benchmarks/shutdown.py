"""Figure 6: SIGTERM to exit, idle and with one 1 s job in flight."""

from __future__ import annotations

import signal

import trio

from .common import Fleet, median, wait_until
from .report import Figure, fmt


async def _one(fleet: Fleet, *, busy: bool) -> tuple[float, float, int | None, str]:
    """One bot: (SIGTERM->exit s, job time left at SIGTERM s, exit code, job status)."""
    server = await fleet.server()
    bot = await fleet.bot(server)
    left = 0.0
    job_id = ""
    if busy:
        body = {"kind": "simulate", "payload": {"duration_ms": 1000}}
        job_id = (await fleet.client.post(f"{server.url}/v1/jobs", json=body)).json()["job_id"]
        leased_at = trio.current_time()

        async def leased() -> bool | None:
            job = (await fleet.client.get(f"{server.url}/v1/jobs/{job_id}")).json()
            return True if job["status"] == "leased" else None

        await wait_until(leased, within=10, every=0.005, what="the job to be leased")
        await trio.sleep(0.2)
        left = 1.0 - (trio.current_time() - leased_at)
    start = trio.current_time()
    bot.child.process.send_signal(signal.SIGTERM)
    with trio.move_on_after(40):
        await bot.child.process.wait()
    took = trio.current_time() - start
    status = ""
    if job_id:
        status = (await fleet.client.get(f"{server.url}/v1/jobs/{job_id}")).json()["status"]
    code = bot.child.process.returncode
    await fleet.stop(bot.child)
    await fleet.stop(server.child)
    return took, left, code, status


async def shutdown(*, quick: bool) -> Figure:
    """SIGTERM an idle bot and a bot with one 1 s job in flight; time until the process exits.

    Busy: the job is a simulate job of 1000 ms; SIGTERM is sent 0.2 s after the harness saw
    it leased, so at most about 0.8 s of it is left: that is its baseline.
    """
    runs = 1 if quick else 3
    rows = []
    data: dict[str, object] = {}
    met = True
    for busy in (False, True):
        results = [await _one_fleet(busy) for _ in range(runs)]
        took = median([r[0] for r in results])
        left = median([r[1] for r in results])
        codes = sorted({str(r[2]) for r in results})
        statuses = sorted({r[3] for r in results if r[3]})
        met = met and all(r[2] == 0 for r in results) and (not busy or statuses == ["succeeded"])
        rows.append(
            [
                "one 1 s job in flight" if busy else "idle",
                fmt(took),
                fmt(left) if busy else "-",
                fmt(took - left) if busy else fmt(took),
                ",".join(codes),
                ",".join(statuses) or "-",
            ]
        )
        data["busy" if busy else "idle"] = took
    return Figure(
        6,
        "Shutdown",
        f"`botd run` gets SIGTERM; time until the process has exited (median of {runs}). The "
        "drain lets the job finish, acks it, deregisters, exits 0. Baseline for the busy case: "
        "the job's own time left when the signal was sent.",
        ["case", "SIGTERM -> exit s", "job time left s", "overhead s", "exit code", "job"],
        rows,
        goal="exit 0; the in-flight job succeeds",
        met=met,
        data=data,
    )


async def _one_fleet(busy: bool) -> tuple[float, float, int | None, str]:
    async with Fleet() as fleet:
        return await _one(fleet, busy=busy)
