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
from benchmarks.report import Figure, fmt, machine, render
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
    assert "| 9 | Example | b < 3 | **no** |" in text
    assert "| 1 | 2 |" in text
    assert "- slow here" in text


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
