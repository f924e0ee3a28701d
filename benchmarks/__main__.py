"""``python -m benchmarks [--quick] [--out PATH] [--only N,N]``: run the figures, write the report.

The full run writes docs/benchmarks.md (about 12-18 minutes on 2 cores); ``--quick`` scales
every figure down (well under a minute) and writes only where ``--out`` says. A figure that
fails is reported as failed with its error, and the others still run; the exit code is 1
then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from .capacity import capacity
from .dispatch import dispatch_latency
from .findings import FINDINGS
from .idle import idle_cost
from .memory import memory
from .pg_bench import PG_FINDINGS, pg_figures
from .ready import time_to_ready
from .report import Figure, load_average, machine, render
from .shutdown import shutdown
from .throughput import throughput

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
QUIET_LOAD = 1.5
QUIET_WAIT_S = 20.0

Bench = Callable[..., Awaitable[Figure | tuple[Figure, ...]]]
BENCHES: list[tuple[tuple[int, ...], Bench]] = [
    ((1,), time_to_ready),
    ((3,), dispatch_latency),
    ((6,), shutdown),
    ((2, 8), throughput),
    ((7,), capacity),
    ((4,), idle_cost),
    ((5,), memory),
    ((9, 10), pg_figures),
]
TITLES = {
    1: "Time to ready",
    2: "Throughput",
    3: "Dispatch latency",
    4: "Idle cost",
    5: "Memory",
    6: "Shutdown",
    7: "Server capacity",
    8: "Server alone",
    9: "Server alone on SQLite and PostgreSQL, PgQueuer as the anchor",
    10: "Server replicas behind haproxy",
}


async def _quiet() -> float:
    """Wait (at most QUIET_WAIT_S) for the 1-minute load average to drop under QUIET_LOAD."""
    with trio.move_on_after(QUIET_WAIT_S):
        while os.getloadavg()[0] >= QUIET_LOAD:  # noqa: ASYNC110 - no event for this
            await trio.sleep(2)
    return os.getloadavg()[0]


async def run_all(quick: bool, only: set[int] | None) -> tuple[list[Figure], list[str]]:
    """Run the chosen benchmarks in order; a failure becomes a failed figure."""
    figures: list[Figure] = []
    loads: list[str] = []
    for numbers, bench in BENCHES:
        if only is not None and not only & set(numbers):
            continue
        load = await _quiet() if not quick else os.getloadavg()[0]
        loads.append(f"{','.join(map(str, numbers))}: {load:.2f}")
        print(f"figure {', '.join(map(str, numbers))} ...", file=sys.stderr, flush=True)
        try:
            result = await bench(quick=quick)
        except Exception as exc:
            traceback.print_exc()
            for number in numbers:
                figures.append(
                    Figure(
                        number,
                        TITLES[number],
                        "failed",
                        ["error"],
                        [[f"{type(exc).__name__}: {exc}"]],
                        met=False,
                    )
                )
            continue
        figures += list(result) if isinstance(result, tuple) else [result]
    figures.sort(key=lambda f: f.number)
    return figures, loads


def _missed(figures: list[Figure]) -> list[str]:
    """One line per goal missed in this run, with its measured value."""
    lines: list[str] = []
    for f in figures:
        if f.goals:
            lines += [
                f"Goal missed in figure {f.number} ({f.title}): {g.measure} = {g.value},"
                f" the goal is {g.target}."
                for g in f.goals
                if g.met is False
            ]
        elif f.met is False:
            lines.append(f"Goal missed in figure {f.number} ({f.title}): {f.goal}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the report; exit 1 when a figure failed to run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="scaled down, under a minute")
    parser.add_argument("--out", type=Path, help=f"report path (full run: {DEFAULT_OUT})")
    parser.add_argument("--only", help="comma-separated figure numbers")
    args = parser.parse_args(argv)
    only = {int(n) for n in args.only.split(",")} if args.only else None
    out: Path | None = args.out if args.out or args.quick else DEFAULT_OUT
    start = time.monotonic()
    load_before = load_average()
    figures, loads = trio.run(run_all, args.quick, only)
    seconds = time.monotonic() - start
    findings = [*_missed(figures), *FINDINGS, *PG_FINDINGS]
    extra = {
        "load average (1/5/15 min) before, after": f"{load_before}; {load_average()}",
        "1-min load when each figure started": "; ".join(loads),
        "mode": "quick" if args.quick else "full",
    }
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    text = render(figures, machine(extra), command=command, seconds=seconds, findings=findings)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text)
    failed = any(f.method == "failed" for f in figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
