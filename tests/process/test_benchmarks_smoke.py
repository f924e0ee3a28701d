"""The benchmark harness runs end to end in --quick mode, so it cannot rot.

Nothing here asserts a speed: only that the harness runs real processes, measures, and
writes a report with every chosen figure, its method, its goal and the machine.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import median, percentile, ratio
from benchmarks.report import (
    Figure,
    at_least,
    at_most,
    fmt,
    judged,
    machine,
    render,
    reported,
)
from tests.support.paths import REPO

ROOT = REPO


def test_statistics() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 4.0]) == 2.5
    assert math.isnan(median([]))
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert math.isnan(ratio(1.0, 0.0))
    assert fmt(float("nan")) == "n/a"
    assert fmt(1234.5) == "1,234"  # three significant figures, no decimals past them
    assert fmt(0.01234) == "0.0123"


def test_render_has_machine_summary_and_findings() -> None:
    fig = Figure(9, "Example", "how", ["a", "b"], [["1", "2"]], goal="b < 3", met=False)
    text = render(
        [fig], machine({"mode": "quick"}), command="x", seconds=1.0, findings=["slow here"]
    )
    assert "| cores |" in text
    assert "| 9 | Example | - | - | b < 3 | **no** |" in text
    assert "| 1 | 2 |" in text
    assert "- slow here" in text


def test_goals_are_ratios_with_their_verdicts_in_the_summary() -> None:
    goals = [at_least("a / base", 0.79, 0.8), at_most("b / base", 1.2, 1.3)]
    assert [g.met for g in goals] == [False, True]
    assert not at_least("c / base", float("nan"), 1.0).met  # unmeasured is never met
    goal, met = judged(goals)
    assert (goal, met) == ("a / base >= 0.8; b / base <= 1.3", False)
    fig = Figure(2, "Example", "how", ["a"], [["1"]], goal=goal, met=met, goals=goals)
    text = render([fig], machine({}), command="x", seconds=1.0, findings=[])
    assert "| 2 | Example | a / base | 0.79 | >= 0.8 | **no** |" in text
    assert "| 2 | Example | b / base | 1.2 | <= 1.3 | yes |" in text


def test_a_reported_ratio_is_shown_but_not_judged() -> None:
    goals = [at_least("a / base", 1.1, 1.0), reported("a0 / base", 0.59)]
    assert judged(goals) == ("a / base >= 1", True)
    fig = Figure(2, "Example", "how", ["a"], [["1"]], goal="g", met=True, goals=goals)
    text = render([fig], machine({}), command="x", seconds=1.0, findings=[])
    assert "| 2 | Example | a0 / base | 0.59 | reported, not judged | - |" in text


@pytest.mark.slow
def test_quick_run_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "1,3", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "## 1. Time to ready" in text
    assert "## 3. Dispatch latency, idle bot" in text
    assert "baseline: import trio, httpx" in text
    assert "| Python |" in text
    assert "failed" not in text.split("## Findings")[0]
