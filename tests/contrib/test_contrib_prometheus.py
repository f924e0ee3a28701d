"""contrib/prometheus: promtool checks the rules and the config and runs the rule unit tests.

promtool comes from Debian's ``prometheus`` package; the noxfile installs it. Without it these
tests fail (they do not skip), because the acceptance criteria depend on them.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

PROM = REPO / "contrib" / "prometheus"
ALERTS = PROM / "alerts.yml"
ALERTS_TEST = PROM / "alerts_test.yml"
CONFIG = PROM / "prometheus.yml"

REQUIRED_ALERTS = {
    "BotdNotReady",
    "BotdCircuitBreakerOpen",
    "BotdJobFailureRatioHigh",
    "BotdOutboxGrowing",
    "BotdNoBotsRegistered",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install --no-install-recommends prometheus); `nox -s tests` does this"
        )
    return subprocess.run(
        [exe, *args], cwd=PROM, capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_check_rules() -> None:
    proc = promtool("check", "rules", ALERTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    proc = promtool("test", "rules", ALERTS_TEST.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config() -> None:
    proc = promtool("check", "config", CONFIG.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_required_alerts_exist_with_for_and_severity() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']}: no `for:`, so it would page on one bad scrape"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]


def test_every_alert_is_tested_firing_and_silent() -> None:
    """alerts_test.yml has, per alert, a case where it fires and one where it does not."""
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - silent == set(), "alerts never shown silent"


def test_config_scrapes_the_job_names_the_rules_use() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    assert {"botd", "botd-server"} <= jobs
    assert config["rule_files"] == [ALERTS.name]
