"""contrib/grafana/botd.json: the panels the operations kit promises, on a ${datasource} variable.

Every query is also checked as PromQL by promtool (as recording rules, with the Grafana
variables filled in), so a typo in a panel fails here and not on an operator's screen.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

DASHBOARD = REPO / "contrib" / "grafana" / "botd.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__all"}

# Panel title -> a piece of PromQL the panel must use.
REQUIRED_PANELS = {
    "Bots per state": "botd_state",
    "State per bot": "botd_state",
    "Breakers not closed (bots)": "botd_circuit_breaker_state",
    "Jobs per second by outcome": "sum by (outcome) (rate(botd_jobs_total",
    "Job duration quantiles": "histogram_quantile(0.99, sum by (le) (rate(botd_job_duration_",
    "Outbox pending": "botd_outbox_pending",
    "Heartbeat failures per second": 'outcome="failed"',
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DATASOURCE


def test_every_panel_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for p in panels(dashboard):
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]


def test_required_panels(dashboard: dict[str, Any]) -> None:
    by_title = {p["title"]: p for p in panels(dashboard)}
    for title, needle in REQUIRED_PANELS.items():
        assert title in by_title, f"missing panel {title!r}"
        exprs = " ".join(t["expr"] for t in by_title[title]["targets"])
        assert needle in exprs, f"{title!r} does not use {needle!r}"
    quantiles = by_title["Job duration quantiles"]["targets"]
    assert {t["legendFormat"] for t in quantiles} == {"p50", "p90", "p99"}


def test_layout(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']!r} overlaps another panel"
        cells |= mine


def test_only_defined_variables(dashboard: dict[str, Any]) -> None:
    defined = {v["name"] for v in dashboard["templating"]["list"]} | BUILTIN_VARIABLES
    text = json.dumps(dashboard["panels"]) + json.dumps(dashboard["templating"])
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used <= defined, f"undefined variables: {used - defined}"


def test_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not on PATH: apt-get install --no-install-recommends prometheus")
    rules = []
    for p in panels(dashboard):
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "5m")
            expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
            rules.append({"record": f"panel:{p['id']}:{t['refId']}", "expr": expr})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    proc = subprocess.run(
        [exe, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
