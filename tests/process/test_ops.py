"""The ops endpoint over real loopback sockets, the canary on a mock clock, the status document."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from botd import logs
from botd.errors import ConfigError
from botd.metrics import STATES, BotMetrics
from botd.ops import Canary, OpsServer, build_status_document
from botd.redaction import Redactor, redact_config

pytestmark = pytest.mark.slow


@attrs.define
class FakeSource:
    """A StatusSource whose every answer the test sets."""

    state: str = "registering"
    stopped: bool = False
    lag: float = 0.0
    broken: bool = False
    document: dict[str, Any] = attrs.field(factory=lambda: {"bot_id": "fake", "state": "x"})

    def status_document(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError("status exploded")
        return self.document

    def loop_lag(self) -> float:
        return self.lag


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    setup = logs.setup_logging(fmt="json", stream=out, env_secrets=False)
    yield out
    setup.close()


@attrs.frozen
class Running:
    url: str
    source: FakeSource
    metrics: BotMetrics
    client: httpx.AsyncClient
    redactor: Redactor


@pytest.fixture
async def ops(log_lines: io.StringIO) -> AsyncIterator[Running]:
    source = FakeSource()
    metrics = BotMetrics("bot-ops", "0.1.0")
    redactor = Redactor()
    server = OpsServer("127.0.0.1:0", source, metrics.render, redactor=redactor)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.run)
        async with httpx.AsyncClient(base_url=f"http://{bound}", timeout=10) as client:
            yield Running(f"http://{bound}", source, metrics, client, redactor)
        nursery.cancel_scope.cancel()


async def test_healthz_is_ok_until_the_loop_lags_or_the_bot_stops(ops: Running) -> None:
    response = await ops.client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    ops.source.state = "error"  # a server outage: still alive
    assert (await ops.client.get("/healthz")).status_code == 200
    ops.source.lag = 5.0
    response = await ops.client.get("/healthz")
    assert response.status_code == 503
    assert "event loop lag" in response.json()["reason"]
    ops.source.lag = 0.0
    ops.source.stopped = True
    response = await ops.client.get("/healthz")
    assert (response.status_code, response.json()["reason"]) == (503, "stopped")


@pytest.mark.parametrize("state", STATES)
async def test_readyz_is_200_only_in_ready_or_processing(ops: Running, state: str) -> None:
    ops.source.state = state
    response = await ops.client.get("/readyz")
    ready = state in ("ready", "processing")
    assert response.status_code == (200 if ready else 503)
    assert response.json() == {"ready": ready, "state": state}


async def test_metrics_is_prometheus_text(ops: Running) -> None:
    ops.metrics.set_state("ready")
    response = await ops.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    (ready,) = [s for s in families["botd_state"].samples if s.labels == {"state": "ready"}]
    assert ready.value == 1


async def test_status_is_the_document_with_secrets_redacted(ops: Running) -> None:
    ops.redactor.add("tok-secret-123")
    ops.source.document = {"bot_id": "fake", "note": "tok-secret-123", "config": {}}
    response = await ops.client.get("/status")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"bot_id": "fake", "note": "***", "config": {}}


async def test_a_broken_source_is_a_500_not_a_crash(ops: Running) -> None:
    ops.source.broken = True
    assert (await ops.client.get("/status")).status_code == 500
    assert (await ops.client.get("/healthz")).status_code == 200


async def test_hypercorn_writes_to_our_sink_not_stderr(
    log_lines: io.StringIO, capfd: pytest.CaptureFixture[str]
) -> None:
    source = FakeSource()
    async with trio.open_nursery() as nursery:
        server = OpsServer("127.0.0.1:0", source, BotMetrics("b", "v").render)
        bound = await nursery.start(server.run)
        server.stop()
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""
    lines = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    assert any(line["logger"] == "hypercorn.error" and bound in line["msg"] for line in lines), (
        lines
    )


async def test_run_ends_when_cancelled_and_frees_the_port(log_lines: io.StringIO) -> None:
    source = FakeSource()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(OpsServer("127.0.0.1:0", source, lambda: (b"", "x")).run)
            scope.cancel()
    host, port = bound.rsplit(":", 1)
    with socket.socket() as sock:
        sock.bind((host, int(port)))  # the port is free again


async def test_a_taken_port_is_a_config_error_before_started(log_lines: io.StringIO) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = OpsServer(f"127.0.0.1:{port}", FakeSource(), lambda: (b"", "x"))
        with pytest.raises(ConfigError, match=rf"BOT_OPS_ADDR=127.0.0.1:{port}: cannot listen"):
            await server.run()


# --- the canary, on Trio's mock clock -----------------------------------------------------


async def test_canary_reports_lag_and_logs_a_late_tick(log_lines: io.StringIO) -> None:
    canary = Canary(interval=0.1, warn_after=0.1)
    assert canary.loop_lag() == 0.0
    async with trio.open_nursery() as nursery:
        await nursery.start(canary.run)
        for _ in range(5):
            await trio.sleep(0.05)
            assert canary.loop_lag() < 0.2
        assert "Event loop blocked" not in log_lines.getvalue()
        time.sleep(0.3)  # this turn blocks the loop for 0.3 s
        assert canary.loop_lag() >= 0.3
        await trio.sleep(0)
        assert canary.loop_lag() < 0.2
        nursery.cancel_scope.cancel()
    (line,) = [json.loads(x) for x in log_lines.getvalue().splitlines()]
    assert line["msg"].startswith("Event loop blocked or overloaded: delay=")
    assert line["event"] == "event_loop_blocked"
    assert line["delay_s"] >= 0.3
    assert line["level"] == "WARNING"


async def test_a_mock_clock_jump_is_not_a_block(
    autojump_clock: trio.testing.MockClock, log_lines: io.StringIO
) -> None:
    canary = Canary()
    async with trio.open_nursery() as nursery:
        await nursery.start(canary.run)
        await trio.sleep(3600)  # one jump of the mock clock: an idle hour, not a blocked one
        assert canary.loop_lag() < 1.0
        nursery.cancel_scope.cancel()
    assert "Event loop blocked" not in log_lines.getvalue()


def test_canary_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        Canary(interval=0)


# --- the status document ------------------------------------------------------------------


@attrs.frozen
class Breaker:
    state: str
    failure_count: int


@attrs.frozen
class Transition:
    from_state: str
    to_state: str
    reason: str
    at: float
    wall_time: float
    duration_s: float | None


def test_status_document_has_the_seed_keys_and_more() -> None:
    transitions = [
        Transition("initializing", "registering", f"step {i}", float(i), 1_800_000_000.5 + i, 0.25)
        for i in range(30)
    ]
    doc = build_status_document(
        bot_id="bot-1",
        state="ready",
        version="0.1.0",
        uptime_seconds=3600.5,
        startup_attempts=3,
        total_jobs_processed=142,
        circuit_breakers={
            "registration": Breaker("closed", 0),
            "heartbeat": Breaker("closed", 0),
            "job_claim": Breaker("open", 2),
        },
        jobs_in_flight=1,
        outbox_pending=4,
        transitions=transitions,
        config={"bot_id": "bot-1", "bot_token": "hunter2hunter2", "api_token": ""},
    )
    assert list(doc) == [
        "bot_id",
        "state",
        "uptime_seconds",
        "startup_attempts",
        "total_jobs_processed",
        "circuit_breakers",
        "jobs_in_flight",
        "outbox_pending",
        "transitions",
        "config",
        "version",
    ]
    assert doc["circuit_breakers"]["job_claim"] == {"state": "open", "failure_count": 2}
    assert len(doc["transitions"]) == 20
    assert doc["transitions"][-1] == {
        "from_state": "initializing",
        "to_state": "registering",
        "reason": "step 29",
        "at": "2027-01-15T08:00:29.500000Z",
        "duration_s": 0.25,
    }
    assert doc["config"] == {"bot_id": "bot-1", "bot_token": "***", "api_token": ""}
    json.dumps(doc)  # plain JSON data


def test_redact_config_hides_secret_keys_and_url_passwords() -> None:
    redacted = redact_config(
        {
            "main_server_url": "https://user:pa55@server.example/api",
            "nested": {"password": "p", "fine": 1},
            "token_file": "/etc/botd/token",
            "heartbeat_interval_s": 5.0,
        }
    )
    assert redacted == {
        "main_server_url": "https://user:***@server.example/api",
        "nested": {"password": "***", "fine": 1},
        "token_file": "***",
        "heartbeat_interval_s": 5.0,
    }
