"""Observability checked from outside (issue 5): a real bot and a real server over loopback.

One scenario runs once per module (:func:`full_run`) and records what an operator would see:

1. the bot starts with the server absent; ``/readyz`` must be 503 and ``botd status`` exit 1;
2. the server starts (with a bearer token); the bot registers; ``/readyz`` turns 200;
3. jobs are submitted with ``botd submit`` and finish; ``/metrics`` and ``/status`` are fetched;
4. the server stops: the breakers open, ``/readyz`` turns 503, ``/healthz`` stays 200,
   ``botd status`` exits 1 and shows an open breaker (table and ``--json``);
5. the server comes back on the same port and database: the breakers close, ``botd status``
   exits 0, more jobs finish;
6. SIGTERM stops the bot (exit 0), then the server.

The tests below assert on that record: JSON-lines logs, no token anywhere, ``/metrics``
parsed by ``prometheus_client`` and checked by ``promtool``, readiness and liveness, and the
breakers in ``botd status``. Real time, short intervals, generous deadlines; every process
started here is killed on the way out, even when a step fails.

The processes come from :mod:`tests.support.procs` (the bot with its ``FAST_BREAKERS``
profile), the jobs from :mod:`tests.support.server_jobs`.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from typing import Any

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.procs import (
    BREAKER_OPEN_S,
    FAST_BREAKERS,
    Proc,
    Procs,
    bot_env,
    botd,
    clean_env,
    free_ports,
    get,
    wait_for,
)
from tests.support.server_jobs import submit, succeeded

pytestmark = pytest.mark.slow

#: Liveness probes made while the server is down, at the least (each must answer 200).
OUTAGE_PROBES = 10


# --- the scenario ------------------------------------------------------------------------


@attrs.define
class Status:
    """One ``botd status`` run: exit code, output, and when."""

    phase: str
    json: bool
    code: int
    stdout: str
    stderr: str


@attrs.define
class Record:
    """Everything the scenario saw, for the tests to assert on."""

    token: str
    bot: Proc | None = None
    servers: list[Proc] = attrs.Factory(list)
    bot_exit: int | None = None
    readyz: list[tuple[str, int, dict[str, Any]]] = attrs.Factory(list)  # (phase, code, body)
    healthz: list[tuple[str, int | None]] = attrs.Factory(list)
    statuses: list[Status] = attrs.Factory(list)
    bot_metrics: list[tuple[str, str]] = attrs.Factory(list)  # (phase, text)
    server_metrics: list[tuple[str, str]] = attrs.Factory(list)
    status_docs: list[tuple[str, str]] = attrs.Factory(list)  # (phase, raw body)
    other_output: list[tuple[str, str]] = attrs.Factory(list)  # (what, text)
    outage_s: float = 0.0


def _probe(rec: Record, ops: str, phase: str) -> tuple[int, dict[str, Any]] | None:
    """GET /healthz and /readyz once; record both. None if the ops endpoint is not up."""
    health = get(f"{ops}/healthz")
    rec.healthz.append((phase, None if health is None else health.status_code))
    ready = get(f"{ops}/readyz")
    if ready is None:
        return None
    body = ready.json()
    rec.readyz.append((phase, ready.status_code, body))
    return ready.status_code, body


def _probes(rec: Record, phase: str) -> int:
    return sum(1 for p, _ in rec.healthz if p == phase)


def _status(rec: Record, ops: str, phase: str, env: dict[str, str], *, as_json: bool) -> Status:
    done = botd(["status", "--ops-url", ops, *(["--json"] if as_json else [])], env)
    status = Status(phase, as_json, done.returncode, done.stdout, done.stderr)
    rec.statuses.append(status)
    return status


def _snapshot(rec: Record, ops: str, server_url: str | None, phase: str) -> None:
    """Fetch the bot's /metrics and /status (and the server's /metrics) into the record."""
    metrics = get(f"{ops}/metrics")
    assert metrics is not None and metrics.status_code == 200, phase
    rec.bot_metrics.append((phase, metrics.text))
    doc = get(f"{ops}/status")
    assert doc is not None and doc.status_code == 200, phase
    rec.status_docs.append((phase, doc.text))
    if server_url is not None:
        smetrics = get(f"{server_url}/metrics")
        assert smetrics is not None and smetrics.status_code == 200, phase
        rec.server_metrics.append((phase, smetrics.text))


def _breakers(status: Status) -> dict[str, str]:
    """breaker -> state, from ``botd status --json`` or from its table."""
    if status.json:
        doc = json.loads(status.stdout)
        return {name: b["state"] for name, b in doc["circuit_breakers"].items()}
    section = status.stdout.split("circuit breakers\n", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in section.splitlines()[1:]]  # after the header row
    return {row[0]: row[1] for row in rows if len(row) >= 3 and not set(row[0]) <= {"-"}}


def run_scenario(procs: Procs, rec: Record) -> None:
    token = rec.token
    server_port, ops_port = free_ports(2)
    server_url, ops = f"http://127.0.0.1:{server_port}", f"http://127.0.0.1:{ops_port}"
    db = procs.tmp / "jobs.db"
    env = bot_env("obs-bot-1", server_url, None, ops_port, BOT_TOKEN=token, **FAST_BREAKERS)
    server_env = clean_env({"BOT_LOG_FORMAT": "json"})
    cli_env = clean_env({})

    def start_server(name: str) -> Proc:
        return procs.server(
            name, server_port, db, lease_ttl=5.0, heartbeat=0.2, token=token, env=server_env
        )

    # 1. The bot alone: alive, not ready.
    bot = rec.bot = procs.bot("bot", env)
    wait_for("the ops endpoint", lambda: _probe(rec, ops, "before_server"), (bot,))
    for _ in range(5):
        _probe(rec, ops, "before_server")
        time.sleep(0.05)
    _status(rec, ops, "before_server", cli_env, as_json=False)
    _status(rec, ops, "before_server", cli_env, as_json=True)
    _snapshot(rec, ops, None, "before_server")

    # 2. The server appears; the bot registers and becomes ready.
    server = start_server("server-1")
    rec.servers.append(server)

    def ready() -> bool | None:
        got = _probe(rec, ops, "registering")
        return True if got is not None and got[0] == 200 else None

    wait_for("READY after the server came up", ready, (bot, server))
    _probe(rec, ops, "ready")

    # 3. Jobs.
    rec.other_output.append(("botd submit", submit(server_url, token, 5, cli_env).stdout))
    wait_for("5 jobs succeeded", succeeded(server_url, token, 5), (bot, server))
    _snapshot(rec, ops, server_url, "after_jobs")
    _status(rec, ops, "ready", cli_env, as_json=False)
    _status(rec, ops, "ready", cli_env, as_json=True)

    # 4. The outage: stop the server, watch the bot notice it while staying alive.
    assert server.stop() == 0, f"server exit: {server.err()[-2000:]}"
    down_at = time.monotonic()

    def breaker_open() -> bool | None:
        _probe(rec, ops, "outage")
        got = _status(rec, ops, "outage", cli_env, as_json=True)
        if got.code != 1 or "open" not in _breakers(got).values():
            return None
        return True if rec.readyz[-1][1] == 503 else None

    wait_for("a breaker open while the server is down", breaker_open, (bot,))
    _status(rec, ops, "outage", cli_env, as_json=False)
    _snapshot(rec, ops, None, "outage")
    # Stay down a while longer (past the breakers' open time), probing all along: at least
    # OUTAGE_PROBES times, however slowly a busy machine answers each probe.
    until = time.monotonic() + 2 * BREAKER_OPEN_S
    while time.monotonic() < until or _probes(rec, "outage") < OUTAGE_PROBES:
        _probe(rec, ops, "outage")
        time.sleep(0.05)
    assert bot.popen.poll() is None, "the bot must outlive a server outage"
    rec.outage_s = time.monotonic() - down_at

    # 5. The server comes back on the same port and database.
    server = start_server("server-2")
    rec.servers.append(server)

    def recovered() -> bool | None:
        _probe(rec, ops, "recovering")
        got = _status(rec, ops, "recovering", cli_env, as_json=True)
        closed = set(_breakers(got).values()) == {"closed"}
        return True if got.code == 0 and closed else None

    wait_for("ready again, every breaker closed", recovered, (bot, server))
    _status(rec, ops, "recovered", cli_env, as_json=False)
    _status(rec, ops, "recovered", cli_env, as_json=True)
    rec.other_output.append(("botd submit", submit(server_url, token, 5, cli_env).stdout))
    wait_for("10 jobs succeeded", succeeded(server_url, token, 10), (bot, server))
    _snapshot(rec, ops, server_url, "recovered")

    # 6. SIGTERM: the bot drains and stops; then the server.
    rec.bot_exit = bot.stop()
    assert server.stop() == 0, f"server exit: {server.err()[-2000:]}"

    # check-config prints the effective config: the token must be redacted there too.
    for args, extra in [
        (["check-config"], {}),
        (["check-config", "--token", token], {"BOT_TOKEN": ""}),
    ]:
        cfg_env = {**env, **extra}
        if not cfg_env.get("BOT_TOKEN"):
            cfg_env.pop("BOT_TOKEN")
        done = botd(args, cfg_env)
        assert done.returncode == 0, done.stderr
        rec.other_output.append((f"botd {' '.join(args)}", done.stdout + done.stderr))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Record:
    """Run the scenario once for the module (every process is gone after it); its record."""
    tmp = tmp_path_factory.mktemp("observability")
    rec = Record(token="tok-" + secrets.token_hex(16))
    with Procs(tmp, grace=5.0) as procs:
        run_scenario(procs, rec)
    return rec


# --- the tests ---------------------------------------------------------------------------

LOG_KEYS = ("time", "level", "msg")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _json_lines(text: str, who: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines, f"{who}: nothing on stdout"
    docs = []
    for n, line in enumerate(lines, 1):
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"{who} stdout line {n} is not JSON: {line[:300]!r}")
        assert isinstance(doc, dict), f"{who} line {n} is not an object: {line[:300]!r}"
        missing = [k for k in LOG_KEYS if k not in doc]
        assert not missing, f"{who} line {n} lacks {missing}: {line[:300]!r}"
        assert RFC3339_UTC.match(doc["time"]), f"{who} line {n}: time {doc['time']!r}"
        docs.append(doc)
    return docs


def test_bot_stdout_is_json_lines_with_bot_id_and_state(full_run: Record) -> None:
    assert full_run.bot is not None
    docs = _json_lines(full_run.bot.out(), "bot")
    for n, doc in enumerate(docs, 1):
        assert doc.get("bot_id") == "obs-bot-1", f"bot line {n} bot_id: {doc}"
        assert isinstance(doc.get("state"), str) and doc["state"], f"bot line {n} state: {doc}"
    events = [d.get("event") for d in docs]
    for event in ("registered", "breaker_opened", "breaker_closed", "job_succeeded"):
        assert event in events, f"no {event} line in the bot's log"
    assert events[-1] == "shutdown_complete", docs[-1]
    assert full_run.bot_exit == 0, f"bot exit after SIGTERM: {full_run.bot_exit}"


def test_server_stdout_is_json_lines(full_run: Record) -> None:
    for server in full_run.servers:
        _json_lines(server.out(), server.name)
        assert server.err() == "", f"{server.name} wrote to stderr: {server.err()[:500]!r}"


def test_token_appears_nowhere(full_run: Record) -> None:
    token = full_run.token
    assert full_run.bot is not None
    places: list[tuple[str, str]] = []
    for proc in [full_run.bot, *full_run.servers]:
        places += [(f"{proc.name} stdout", proc.out()), (f"{proc.name} stderr", proc.err())]
    places += [(f"bot /metrics ({phase})", text) for phase, text in full_run.bot_metrics]
    places += [(f"server /metrics ({phase})", text) for phase, text in full_run.server_metrics]
    places += [(f"/status ({phase})", text) for phase, text in full_run.status_docs]
    places += [(f"botd status ({s.phase})", s.stdout + s.stderr) for s in full_run.statuses]
    places += full_run.other_output
    assert any("check-config" in where for where, _ in places)
    # The places were looked at and hold what they should.
    empty = [w for w, text in places if not text and "stderr" not in w]
    assert not empty, f"nothing recorded in {empty}"
    leaks = [where for where, text in places if token in text]
    assert not leaks, f"the token leaked into: {leaks}"
    docs = [json.loads(text) for _, text in full_run.status_docs]
    assert all(doc["config"]["token"] == "***" for doc in docs), "token not redacted in /status"


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is not on PATH: install Debian's `prometheus` package"
    return subprocess.run(
        [exe, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("who", ["bot", "server"])
def test_metrics_parse_and_pass_promtool(full_run: Record, who: str) -> None:
    texts = full_run.bot_metrics if who == "bot" else full_run.server_metrics
    assert texts
    for phase, text in texts:
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families, f"{who} /metrics ({phase}) is empty"
        checked = _promtool(text)
        assert checked.returncode == 0, f"{who} ({phase}): {checked.stdout}{checked.stderr}"
        assert checked.stdout.strip() == "" and checked.stderr.strip() == "", (
            f"promtool is not clean on {who} /metrics ({phase}):\n{checked.stdout}{checked.stderr}"
        )
    final = {f.name: f for f in text_string_to_metric_families(texts[-1][1])}
    if who == "bot":
        assert {"process_cpu_seconds", "python_gc_objects_collected"} <= final.keys()
        (info,) = final["botd_info"].samples
        assert info.labels["bot_id"] == "obs-bot-1" and info.labels["version"]
        jobs = {s.labels["outcome"]: s.value for s in final["botd_jobs"].samples
                if s.name == "botd_jobs_total"}  # fmt: skip
        assert jobs.get("succeeded") == 10, jobs
        state = {s.labels["state"]: s.value for s in final["botd_state"].samples}
        assert sum(state.values()) == 1 and state["ready"] + state["processing"] == 1, state
    else:
        jobs = {s.labels["status"]: s.value for s in final["botd_server_jobs"].samples}
        assert jobs["succeeded"] == 10, jobs


def test_bot_metrics_show_the_outage(full_run: Record) -> None:
    (text,) = [text for phase, text in full_run.bot_metrics if phase == "outage"]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    open_breakers = [
        s.labels["breaker"]
        for s in families["botd_circuit_breaker_state"].samples
        if s.labels["state"] == "open" and s.value == 1
    ]
    assert open_breakers, "no breaker is open in /metrics during the outage"
    failures = {
        s.labels["breaker"]: s.value
        for s in families["botd_circuit_breaker_failures"].samples
        if s.name == "botd_circuit_breaker_failures_total"
    }
    assert all(failures.get(b, 0) > 0 for b in open_breakers), failures


def test_readyz_follows_the_server_and_healthz_does_not(full_run: Record) -> None:
    by_phase: dict[str, list[int]] = {}
    for phase, code, body in full_run.readyz:
        by_phase.setdefault(phase, []).append(code)
        assert body["ready"] is (code == 200) and isinstance(body["state"], str), body
        if code == 503:
            assert body["state"] not in ("ready", "processing"), body
    assert by_phase["before_server"] and set(by_phase["before_server"]) == {503}
    assert by_phase["ready"] == [200]
    assert 503 in by_phase["outage"], "readyz never said 503 while the server was down"
    outage_states = {body["state"] for phase, code, body in full_run.readyz if phase == "outage"}
    assert outage_states - {"ready", "processing"}, outage_states
    outage_health = [code for phase, code in full_run.healthz if phase == "outage"]
    assert len(outage_health) >= OUTAGE_PROBES, "too few liveness probes during the outage"
    assert set(outage_health) == {200}, f"/healthz during the outage: {outage_health}"
    everything = [code for _, code in full_run.healthz if code is not None]
    assert set(everything) == {200}, "/healthz failed at some point of the run"
    assert full_run.outage_s >= 2 * BREAKER_OPEN_S


def test_botd_status_shows_breakers_open_then_closed(full_run: Record) -> None:
    def runs(phase: str) -> list[Status]:
        return [s for s in full_run.statuses if s.phase == phase]

    for s in runs("before_server"):
        assert s.code == 1, (s.code, s.stdout, s.stderr)
        if not s.json:
            assert "NOT ready" in s.stdout, s.stdout
    for s in runs("ready") + runs("recovered"):
        assert s.code == 0, (s.code, s.stdout, s.stderr)
        assert set(_breakers(s).values()) == {"closed"}, s.stdout
        assert _breakers(s).keys() >= {"heartbeat", "registration"}, s.stdout
    outage = runs("outage")
    opened = [s for s in outage if "open" in _breakers(s).values()]
    assert any(s.json for s in opened) and any(not s.json for s in opened), [
        (s.json, s.code) for s in outage
    ]
    assert all(s.code == 1 for s in opened), [(s.code, s.stdout) for s in opened]
    table = next(s for s in opened if not s.json)
    assert re.search(r"^\s+\w+\s+open\s+\d+\s*$", table.stdout, re.M), table.stdout
    # After it: exit 0 and all closed, in the table too.
    last = runs("recovered")[-2]
    assert not last.json and last.code == 0 and "open" not in _breakers(last).values()
