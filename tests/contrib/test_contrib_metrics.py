"""Every metric that an alert, an alert test or a dashboard panel names is one botd exports.

The names are pulled out of the PromQL with a small tokenizer: drop strings, label matchers,
ranges, Grafana variables and label lists, then keep the identifiers that are not functions,
keywords or operators. Histogram series (``_bucket``, ``_sum``, ``_count``) map back to their
histogram. ``KNOWN_BOT_METRICS`` / ``KNOWN_SERVER_METRICS`` are the documented names, checked
without any process; the ``live`` tests start a real server and a real bot, run a few jobs, and
check the same names (and the lists themselves) against what their ``/metrics`` really serve.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.paths import REPO
from tests.support.procs import (
    FAST_BREAKERS,
    Procs,
    bot_env,
    clean_env,
    free_ports,
    get,
    wait_for,
)
from tests.support.server_jobs import submit, succeeded

CONTRIB = REPO / "contrib"

KNOWN_BOT_METRICS = frozenset(
    {
        "botd_info",
        "botd_state",
        "botd_state_transitions_total",
        "botd_jobs_total",
        "botd_job_duration_seconds",
        "botd_jobs_in_flight",
        "botd_circuit_breaker_state",
        "botd_circuit_breaker_failures_total",
        "botd_registration_attempts_total",
        "botd_heartbeats_total",
        "botd_server_request_duration_seconds",
        "botd_outbox_pending",
    }
)
KNOWN_SERVER_METRICS = frozenset(
    {
        "botd_server_jobs",
        "botd_server_bots",
        "botd_server_claims_total",
        "botd_server_acks_total",
        "botd_server_lease_expiries_total",
    }
)
HISTOGRAMS = frozenset({"botd_job_duration_seconds", "botd_server_request_duration_seconds"})
# Series Prometheus makes itself for every target; never in /metrics.
PROMETHEUS_SYNTHETIC = frozenset({"up"})

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (histogram series mapped back)."""
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)  # "sum by (le) (x)" becomes "sum  (x)": a call
    names = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('botd_state{state=~"ready|processing"} == 0', {"botd_state"}),
        (
            "histogram_quantile(0.9, sum by (le, endpoint) "
            "(rate(botd_server_request_duration_seconds_bucket[$__rate_interval])))",
            {"botd_server_request_duration_seconds"},
        ),
        (
            "(max by (job, instance) (botd_state) == 0) * on (job, instance) "
            "group_left (bot_id) botd_info",
            {"botd_state", "botd_info"},
        ),
        ("count by (job) (x_total) unless on (job) (y > 0) offset 5m", {"x_total", "y"}),
        ('sum(rate(a{l="by (x)"}[1m])) / 1e3 and bool_metric', {"a", "bool_metric"}),
        ("label_values(botd_info, job)", {"botd_info", "job"}),
        (
            "not_a_histogram_count + botd_job_duration_seconds_sum",
            {
                "not_a_histogram_count",
                "botd_job_duration_seconds",
            },
        ),
    ],
)
def test_tokenizer(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def _alert_exprs() -> Iterator[tuple[str, str]]:
    doc = yaml.safe_load((CONTRIB / "prometheus" / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield f"alerts.yml:{rule.get('alert') or rule.get('record')}", rule["expr"]


def _alert_test_series() -> Iterator[tuple[str, str]]:
    doc = yaml.safe_load((CONTRIB / "prometheus" / "alerts_test.yml").read_text())
    for i, case in enumerate(doc["tests"]):
        for series in case.get("input_series", []):
            yield f"alerts_test.yml:test {i}", series["series"]


def _dashboard_exprs() -> Iterator[tuple[str, str]]:
    doc = json.loads((CONTRIB / "grafana" / "botd.json").read_text())
    for panel in doc["panels"]:
        for target in panel.get("targets", []):
            yield f"botd.json:{panel['title']}", target["expr"]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["definition"]
            m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert m, f"unexpected variable query {query!r}"
            yield f"botd.json:${var['name']}", m.group(1)


SOURCES = [*_alert_exprs(), *_alert_test_series(), *_dashboard_exprs()]


@pytest.mark.parametrize(("where", "expr"), SOURCES, ids=[w for w, _ in SOURCES])
def test_metric_names_are_exported(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where}: no metric found in {expr!r}"
    unknown = names - KNOWN_BOT_METRICS - KNOWN_SERVER_METRICS - PROMETHEUS_SYNTHETIC
    assert not unknown, f"{where}: not exported by botd: {sorted(unknown)}"


def test_the_kit_covers_the_important_metrics() -> None:
    used = set().union(*(metric_names(e) for _, e in SOURCES))
    must = {
        "botd_state",
        "botd_circuit_breaker_state",
        "botd_jobs_total",
        "botd_job_duration_seconds",
        "botd_outbox_pending",
        "botd_heartbeats_total",
        "botd_server_bots",
    }
    assert must <= used


# --- against a live /metrics ------------------------------------------------------------


def metric_series(text: str) -> set[str]:
    """Names that select something in this exposition: every sample name (``x_total`` of a
    counter, ``h_bucket`` of a histogram), plus the family name of a histogram or summary
    with samples (PromQL tokenizers map ``h_bucket`` back to ``h``). A counter's family name
    without ``_total`` selects nothing, so it is not included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        if family.samples and family.type in ("histogram", "summary", "gaugehistogram"):
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """The series names a real bot's and a real server's /metrics serve after a few jobs."""
    tmp = tmp_path_factory.mktemp("live_metrics")
    token = "tok-" + secrets.token_hex(8)
    server_port, ops_port = free_ports(2)
    server_url, ops = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{ops_port}"
    with Procs(tmp, grace=5.0) as procs:
        server = procs.server(
            "server", server_port, tmp / "jobs.db", lease_ttl=5.0, heartbeat=0.2, token=token
        )
        env = bot_env("live-1", server_url, None, ops_port, BOT_TOKEN=token, **FAST_BREAKERS)
        bot = procs.bot("bot", env)

        def ready() -> bool | None:
            resp = get(f"{ops}/readyz")
            return True if resp is not None and resp.status_code == 200 else None

        wait_for("the bot READY", ready, (server, bot))
        submit(server_url, token, 3, clean_env({}))
        wait_for("3 jobs succeeded", succeeded(server_url, token, 3), (server, bot))
        texts = {}
        for who, url in (("bot", ops), ("server", server_url)):
            resp = get(f"{url}/metrics")
            assert resp is not None and resp.status_code == 200, who
            texts[who] = resp.text
    return {who: metric_series(text) for who, text in texts.items()}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("who", "known"), [("bot", KNOWN_BOT_METRICS), ("server", KNOWN_SERVER_METRICS)]
)
def test_known_metrics_are_live(live: dict[str, set[str]], who: str, known: frozenset[str]) -> None:
    missing = known - live[who]
    assert not missing, f"documented but not in a live {who} /metrics: {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.parametrize(("where", "expr"), SOURCES, ids=[w for w, _ in SOURCES])
def test_metric_names_are_in_a_live_metrics(
    live: dict[str, set[str]], where: str, expr: str
) -> None:
    names = metric_names(expr)
    assert names
    missing = names - live["bot"] - live["server"] - PROMETHEUS_SYNTHETIC
    assert not missing, f"{where}: not in a live /metrics of botd: {sorted(missing)}"
