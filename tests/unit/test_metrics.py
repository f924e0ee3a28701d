"""BotMetrics: promtool and the parser accept it, labels exist at zero, bots never collide."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from botd.errors import (
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    Unrecoverable,
)
from botd.metrics import (
    BREAKER_STATES,
    BREAKERS,
    HEARTBEAT_OUTCOMES,
    JOB_OUTCOMES,
    REQUEST_OUTCOMES,
    STATES,
    BotMetrics,
)
from tests.support.paths import REPO

ISSUE_METRICS = {
    "botd_info": "gauge",  # an Info metric is a gauge in the text format
    "botd_state": "gauge",
    "botd_state_transitions": "counter",
    "botd_jobs": "counter",
    "botd_job_duration_seconds": "histogram",
    "botd_jobs_in_flight": "gauge",
    "botd_circuit_breaker_state": "gauge",
    "botd_circuit_breaker_failures": "counter",
    "botd_registration_attempts": "counter",
    "botd_heartbeats": "counter",
    "botd_server_request_duration_seconds": "histogram",
    "botd_outbox_pending": "gauge",
    "botd_outbox_lease_lost": "counter",
    "botd_start_time_seconds": "gauge",
}


def samples(m: BotMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = m.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: BotMetrics, name: str, **labels: str) -> float:
    return samples(m)[(name, frozenset(labels.items()))]


def busy_metrics() -> BotMetrics:
    m = BotMetrics(
        "bot-1",
        "0.1.0",
        transitions=[("initializing", "registering"), ("registering", "health_check")],
        endpoints=["register", "heartbeat"],
    )
    m.on_transition("initializing", "registering")
    m.registration_attempt()
    m.observe_request("register", "unavailable", 0.2)
    m.set_breaker("registration", "open")
    m.breaker_failure("registration")
    m.heartbeat("failed")
    m.job_finished("succeeded", 1.5)
    m.job_finished("lease_lost", None)
    m.set_in_flight(2)
    m.set_outbox_pending(3)
    m.outbox_lease_lost()
    return m


def test_promtool_check_metrics_is_clean() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install --no-install-recommends prometheus); the noxfile does this"
        )
    for m in (BotMetrics("fresh", "0.1.0"), busy_metrics()):
        body, _ = m.render()
        result = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == b""


def test_the_parser_reads_every_metric_of_the_issue() -> None:
    m = busy_metrics()
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    for name, kind in ISSUE_METRICS.items():
        assert families.get(name) == kind, name
    assert "process_cpu_seconds" in families
    assert "python_gc_objects_collected" in families
    assert value(m, "botd_info", version="0.1.0", bot_id="bot-1") == 1
    assert value(m, "botd_state", state="registering") == 1
    assert value(m, "botd_registration_attempts_total") == 1
    assert value(m, "botd_jobs_total", outcome="succeeded") == 1
    assert value(m, "botd_jobs_total", outcome="lease_lost") == 1
    assert value(m, "botd_job_duration_seconds_count") == 1
    assert value(m, "botd_job_duration_seconds_sum") == 1.5
    assert value(m, "botd_jobs_in_flight") == 2
    assert value(m, "botd_outbox_pending") == 3
    assert value(m, "botd_outbox_lease_lost_total") == 1
    assert value(m, "botd_heartbeats_total", outcome="failed") == 1
    assert value(m, "botd_circuit_breaker_failures_total", breaker="registration") == 1
    assert (
        value(
            m,
            "botd_server_request_duration_seconds_count",
            endpoint="register",
            outcome="unavailable",
        )
        == 1
    )


def test_every_known_label_exists_at_zero_from_the_start() -> None:
    m = BotMetrics("bot-1", "0.1.0", endpoints=["claim"])
    s = samples(m)
    for state in STATES:
        assert s[("botd_state", frozenset({("state", state)}))] == 0
    for outcome in JOB_OUTCOMES:
        assert s[("botd_jobs_total", frozenset({("outcome", outcome)}))] == 0
    for outcome in HEARTBEAT_OUTCOMES:
        assert s[("botd_heartbeats_total", frozenset({("outcome", outcome)}))] == 0
    for breaker in BREAKERS:
        assert s[("botd_circuit_breaker_failures_total", frozenset({("breaker", breaker)}))] == 0
        for state in BREAKER_STATES:
            labels = frozenset({("breaker", breaker), ("state", state)})
            assert s[("botd_circuit_breaker_state", labels)] == (state == "closed")
    labels = frozenset({("endpoint", "claim"), ("outcome", "ok")})
    assert s[("botd_server_request_duration_seconds_count", labels)] == 0
    assert s[("botd_jobs_in_flight", frozenset())] == 0
    assert s[("botd_start_time_seconds", frozenset())] > 0


def test_two_bots_in_one_process_do_not_collide() -> None:
    a = BotMetrics("bot-a", "0.1.0")
    b = BotMetrics("bot-b", "0.1.0")
    a.set_state("ready")
    b.set_state("error")
    a.job_finished("failed", 0.1)
    assert value(a, "botd_state", state="ready") == 1
    assert value(b, "botd_state", state="ready") == 0
    assert value(b, "botd_state", state="error") == 1
    assert value(a, "botd_jobs_total", outcome="failed") == 1
    assert value(b, "botd_jobs_total", outcome="failed") == 0
    assert value(b, "botd_info", version="0.1.0", bot_id="bot-b") == 1


def test_two_bots_on_one_registry_are_refused() -> None:
    registry = CollectorRegistry()
    BotMetrics("bot-a", "0.1.0", registry=registry, process_collectors=False)
    with pytest.raises(ValueError, match="Duplicated"):
        BotMetrics("bot-b", "0.1.0", registry=registry, process_collectors=False)


def test_unknown_label_values_are_bugs() -> None:
    m = BotMetrics("bot-1", "0.1.0")
    with pytest.raises(ValueError, match="unknown state"):
        m.set_state("READY")
    with pytest.raises(ValueError, match="unknown job outcome"):
        m.job_finished("exploded", 1.0)
    with pytest.raises(ValueError, match="unknown breaker state"):
        m.set_breaker("heartbeat", "ajar")
    with pytest.raises(ValueError, match="unknown heartbeat outcome"):
        m.heartbeat("meh")
    with pytest.raises(ValueError, match="unknown request outcome"):
        m.observe_request("claim", "meh", 0.1)


def test_a_new_breaker_name_is_added_closed() -> None:
    m = BotMetrics("bot-1", "0.1.0")
    m.breaker_failure("extra")
    assert value(m, "botd_circuit_breaker_state", breaker="extra", state="closed") == 1
    assert value(m, "botd_circuit_breaker_failures_total", breaker="extra") == 1


@given(st.lists(st.sampled_from(STATES), min_size=1, max_size=30))
def test_exactly_one_state_is_current(sequence: list[str]) -> None:
    m = BotMetrics("bot-1", "0.1.0", process_collectors=False)
    previous = "initializing"
    for state in sequence:
        m.on_transition(previous, state)
        previous = state
    get = m.registry.get_sample_value
    current = {s: get("botd_state", {"state": s}) for s in STATES}
    assert sum(v or 0 for v in current.values()) == 1
    assert current[sequence[-1]] == 1
    total = sum(
        s.value
        for family in m.state_transitions.collect()
        for s in family.samples
        if s.name == "botd_state_transitions_total"
    )
    assert total == len(sequence)


@given(st.lists(st.tuples(st.sampled_from(BREAKERS), st.sampled_from(BREAKER_STATES))))
def test_exactly_one_breaker_state_is_current(changes: list[tuple[str, str]]) -> None:
    m = BotMetrics("bot-1", "0.1.0", process_collectors=False)
    expected = dict.fromkeys(BREAKERS, "closed")
    for name, state in changes:
        m.set_breaker(name, state)
        expected[name] = state
    for name in BREAKERS:
        row = {
            s: m.registry.get_sample_value(
                "botd_circuit_breaker_state", {"breaker": name, "state": s}
            )
            for s in BREAKER_STATES
        }
        assert row == {s: float(s == expected[name]) for s in BREAKER_STATES}


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, "ok"),
        (ServerUnavailable("down"), "unavailable"),
        (RequestRejected(409, "conflict", "no"), "rejected"),
        (Unrecoverable("401"), "rejected"),
        (ProtocolError("garbage"), "protocol_error"),
        (RuntimeError("bug"), "error"),
    ],
)
def test_request_outcome(exc: BaseException | None, outcome: str) -> None:
    from botd.client import OUTCOMES, outcome_of

    assert (outcome_of(exc) if exc is not None else "ok") == outcome
    assert set(OUTCOMES) == set(REQUEST_OUTCOMES)


def test_every_metric_is_documented() -> None:
    doc = (REPO / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`(botd_[a-z_]+)`", doc))
    for name, kind in ISSUE_METRICS.items():
        exposed = f"{name}_total" if kind == "counter" else name
        assert exposed in documented, exposed
