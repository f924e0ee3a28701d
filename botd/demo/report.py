"""What happened in one demo run: :class:`DemoReport` (one :class:`BotReport` per bot), and
:func:`format_summary`, the end-of-run text that users and tests read."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from ..exit_codes import ExitCode
from ..lifecycle import State
from ..models import FINAL_JOB_STATUSES
from .views import STATUS_ORDER

__all__ = ["BotReport", "DemoReport", "format_summary", "percentile"]


@attrs.frozen
class BotReport:
    """One bot at the end: its transitions (by target state), breaker openings, exit code."""

    bot_id: str
    jobs_processed: int
    transitions: Mapping[str, int]
    breaker_openings: Mapping[str, int]
    exit_code: int | None

    @property
    def transition_count(self) -> int:
        return sum(self.transitions.values())

    @property
    def error_transitions(self) -> int:
        return self.transitions.get(State.ERROR.value, 0)


@attrs.frozen
class DemoReport:
    """What happened in one demo run; :func:`format_summary` prints it."""

    jobs: int
    submitted: int
    counts: Mapping[str, int]
    retries: int
    retried_jobs: int
    latencies: tuple[float, ...]
    bots: tuple[BotReport, ...]
    wall_s: float
    chaos: bool
    outage: tuple[float, float] | None  # (down at, back at), seconds since the start
    ended_by: str  # "done", "signal", "timeout", "bots stopped", "server"
    run_dir: Path | None = None
    log_path: Path | None = None

    @property
    def final(self) -> int:
        return sum(n for s, n in self.counts.items() if s in FINAL_JOB_STATUSES)

    @property
    def all_final(self) -> bool:
        return self.submitted == self.jobs and self.final >= self.jobs

    @property
    def error_transitions(self) -> int:
        return sum(b.error_transitions for b in self.bots)

    @property
    def breaker_openings(self) -> int:
        return sum(sum(b.breaker_openings.values()) for b in self.bots)

    @property
    def exit_code(self) -> int:
        if any(b.exit_code == ExitCode.SOFTWARE for b in self.bots):
            return int(ExitCode.SOFTWARE)
        return int(ExitCode.OK if self.all_final else ExitCode.FAILURE)


def percentile(values: Sequence[float], pct: int) -> float:
    """The ``pct``-th percentile (1..99) of ``values`` (inclusive method); NaN when empty."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


def _seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}s"


def format_summary(report: DemoReport) -> str:
    """The end-of-run summary, one fact a line (tests and users read the same text)."""
    lines = [
        f"botd demo: {report.final} of {report.jobs} jobs reached a final status"
        f" in {report.wall_s:.1f}s (ended by: {report.ended_by})"
    ]
    finals = ", ".join(f"{s} {report.counts.get(s, 0)}" for s in STATUS_ORDER[:4])
    open_jobs = max(0, report.submitted - report.final)
    never = report.jobs - report.submitted
    lines.append(
        f"  jobs:        {finals}"
        + (f"; {open_jobs} not final" if open_jobs else "")
        + (f"; {never} never submitted" if never else "")
    )
    lines.append(
        f"  retries:     {report.retries} ({report.retried_jobs} jobs needed more than one attempt)"
    )
    lines.append(
        f"  latency:     p50 {_seconds(percentile(report.latencies, 50))},"
        f" p99 {_seconds(percentile(report.latencies, 99))}"
        f" (submit -> final status, over {len(report.latencies)} jobs)"
    )
    if report.chaos:
        if report.outage is not None:
            down, up = report.outage
            lines.append(
                f"  chaos:       server down from {down:.1f}s to {up:.1f}s ({up - down:.1f}s)"
            )
        else:
            lines.append("  chaos:       the outage did not happen (the run ended first)")
    lines.append(f"  error transitions: {report.error_transitions}")
    lines.append(f"  breaker openings:  {report.breaker_openings}")
    lines.append("  bots:")
    for b in report.bots:
        order = [s.value for s in State]
        moves = ", ".join(f"{s} {b.transitions[s]}" for s in order if b.transitions.get(s))
        opened = ", ".join(f"{n} {c}" for n, c in b.breaker_openings.items()) or "none"
        lines.append(
            f"    {b.bot_id}: {b.jobs_processed} jobs run; {b.transition_count} transitions"
            f" ({moves}); breakers opened: {opened}; exit {b.exit_code}"
        )
    lines.append(f"  wall time:   {report.wall_s:.1f}s")
    if report.log_path is not None:
        lines.append(f"  logs:        {report.log_path} (JSON lines, every bot and the server)")
    if report.run_dir is not None:
        lines.append(f"  run dir:     {report.run_dir} (database, bots' state; kept)")
    code = report.exit_code
    why = {
        0: "every job reached a final status",
        1: "some jobs did not reach a final status",
        70: "a bot hit an internal error (see the log)",
    }[code]
    lines.append(f"exit {code}: {why}")
    return "\n".join(lines)
