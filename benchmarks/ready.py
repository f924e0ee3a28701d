"""Figure 1: time to ready, from process start until ``/readyz`` answers 200.

The full run measures botd as a user installs it: ``pip install .`` (no extras) into a fresh
venv, which also compiles the bytecode. The bench venv holds the bench extra, and with it
celery's ``click``: then ``import httpx`` also imports httpx's command-line client
(``httpx._main``: click, rich, pygments), ~0.1 s that every httpx program there pays. That
venv is measured too, for reference, with its own baseline.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from .common import ROOT, Fleet, Server, botd_argv, free_port, median, ratio
from .report import Figure, at_most, fmt, reported

IMPORT_CODE = "import trio, httpx"
#: What ``botd run`` must import before /readyz answers, of the libraries the design card
#: names (besides trio and httpx): the HTTP client's transport, the converter, the logger,
#: the metrics, trio-util, and the ops endpoint's hypercorn (trio worker) and Starlette.
FLOOR_CODE = (
    "import trio, httpx, httpcore, h11, cattrs, loguru, prometheus_client, trio_util, "
    "hypercorn.trio, starlette.applications"
)


async def _import_time(python: str, code: str = IMPORT_CODE) -> float:
    start = trio.current_time()
    await trio.run_process([python, "-c", code])
    return trio.current_time() - start


async def _plain_venv(where: Path) -> Path:
    """A fresh venv with ``pip install ROOT`` (no extras); its bin directory."""
    await trio.run_process([sys.executable, "-m", "venv", str(where)])
    pip = [str(where / "bin" / "python"), "-m", "pip", "install", "-q", str(ROOT)]
    await trio.run_process(pip, capture_stdout=True, capture_stderr=True)
    return where / "bin"


async def _ready_time(fleet: Fleet, server: Server, argv: list[str], env: dict[str, str]) -> float:
    port = free_port()
    start = trio.current_time()
    child = await fleet.spawn(
        "bot",
        argv,
        env={
            "MAIN_SERVER_URL": server.url,
            "BOT_ID": f"bench-{port}",
            "BOT_OPS_ADDR": f"127.0.0.1:{port}",
            "BOT_LOG_LEVEL": "WARNING",
            **env,
        },
    )
    await fleet.wait_http(child, f"http://127.0.0.1:{port}/readyz")
    took = trio.current_time() - start
    await fleet.stop(child)
    return took


async def time_to_ready(*, quick: bool) -> Figure:
    """Start ``botd run`` 10 times against one server; time each until /readyz is 200.

    Each bot is stopped (SIGTERM) before the next one starts. The baseline is the wall time of
    ``python -c "import trio, httpx"`` in the same venv, measured as many times, interleaved.
    Quick mode measures the bench venv only.
    """
    runs = 3 if quick else 10
    # (label, bin dir, PYTHONPATH): the bench venv runs this checkout's botd.
    venvs: list[tuple[str, Path, str]] = []
    async with Fleet() as fleet:
        if not quick:
            plain = await _plain_venv(fleet.dir / "venv")
            venvs.append(("`pip install .` venv", plain, ""))
        # As pip would have: the checkout's bytecode is compiled before the first start.
        await trio.run_process([sys.executable, "-m", "compileall", "-q", str(ROOT / "botd")])
        venvs.append(("bench venv (with click)", Path(sys.executable).parent, str(ROOT)))
        server = await fleet.server()
        ready: dict[str, list[float]] = {label: [] for label, _, _ in venvs}
        bare: dict[str, list[float]] = {label: [] for label, _, _ in venvs}
        floor: dict[str, list[float]] = {label: [] for label, _, _ in venvs}
        for _ in range(runs):
            for label, bin_dir, path in venvs:
                bare[label].append(await _import_time(str(bin_dir / "python")))
                floor[label].append(await _import_time(str(bin_dir / "python"), FLOOR_CODE))
                argv = [str(bin_dir / "botd"), "run"] if path == "" else botd_argv("run")
                ready[label].append(await _ready_time(fleet, server, argv, {"PYTHONPATH": path}))
    rows: list[list[str]] = []
    for label, _, _ in venvs:
        med, base = median(ready[label]), median(bare[label])
        rows.append(
            [
                f"botd run -> /readyz 200, {label}",
                fmt(med),
                fmt(min(ready[label])),
                fmt(max(ready[label])),
                fmt(ratio(med, base), 2),
            ]
        )
        rows.append(
            [
                f"the card's libraries imported, nothing of botd, {label}",
                fmt(median(floor[label])),
                fmt(min(floor[label])),
                fmt(max(floor[label])),
                fmt(ratio(median(floor[label]), base), 2),
            ]
        )
        rows.append(
            [
                f"baseline: import trio, httpx, {label}",
                fmt(base),
                fmt(min(bare[label])),
                fmt(max(bare[label])),
                "1",
            ]
        )
    judged = venvs[0][0]
    goal = at_most(
        f"time to ready / import trio, httpx ({judged})",
        ratio(median(ready[judged]), median(bare[judged])),
        1.5,
    )
    floor_goal = reported(
        f"the card's libraries alone / import trio, httpx ({judged})",
        ratio(median(floor[judged]), median(bare[judged])),
    )
    return Figure(
        1,
        "Time to ready",
        f"{runs} runs of `botd run` (the console script) against a running `botd server`: "
        "from spawning the process until `GET /readyz` on its ops port answers 200 (polled "
        'every 5 ms). Baseline: the wall time of `python -c "import trio, httpx"` in the same '
        "venv, as many runs, interleaved. Beside it, the floor that the design card sets: the "
        f'wall time of `python -c "{FLOOR_CODE}"`, the libraries of the design card that '
        "`botd run` needs before /readyz answers (the ops endpoint is hypercorn and "
        "Starlette), measured the same way (start to exit: it pays the interpreter's "
        "teardown too). The goal is judged in the first venv: "
        + (
            "a fresh `pip install .` (what a user gets: no extras, bytecode compiled). The "
            "bench venv has celery's `click`, so there `import httpx` also loads httpx's "
            "command-line client (click, rich, pygments)."
            if not quick
            else "the bench venv (quick mode)."
        ),
        ["", "median s", "min s", "max s", "ratio to baseline"],
        rows,
        goal=f"{goal.measure} {goal.target}",
        met=goal.met,
        data={"ready": ready, "baseline": bare, "floor": floor},
        goals=[goal, floor_goal],
    )
