"""The log sink: JSON lines, stdlib routed in, per-agent context, redaction."""

from __future__ import annotations

import io
import json
import logging
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from botd import logs
from tests.support.paths import REPO

TIME_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
ANSI = "\x1b["


class Sink(io.StringIO):
    """A stream that remembers what was written and can pretend to be a TTY."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def lines(self) -> list[dict[str, Any]]:
        raw = self.getvalue().splitlines()
        docs = [json.loads(line) for line in raw]
        assert all(isinstance(d, dict) for d in docs)
        return docs


@pytest.fixture(autouse=True)
def setup() -> Iterator[logs.LogSetup]:
    """A fresh log setup (its own secrets) per test, and nothing of ours left behind."""
    root_level = logging.getLogger().level
    setup = logs.LogSetup()
    yield setup
    setup.close()
    assert logging.getLogger().level == root_level
    assert not any(isinstance(h, logs.InterceptHandler) for h in logging.getLogger().handlers)


@pytest.fixture
def sink(setup: logs.LogSetup) -> Sink:
    out = Sink()
    setup.install(fmt="json", stream=out, level="DEBUG", env_secrets=False)
    return out


def test_every_line_is_one_flat_json_object_with_the_core_fields(sink: Sink) -> None:
    logger.info("plain")
    logger.bind(job_id="j-1", attempt=2).warning("bound {not a format}")
    logs.emit(logs.Event.JOB_SUCCEEDED, "job done", job_id="j-1", duration_ms=12.5)
    lines = sink.lines()
    assert len(lines) == 3
    for line in lines:
        assert list(line)[:6] == ["time", "level", "msg", "logger", "bot_id", "state"]
        assert TIME_RE.match(line["time"]), line["time"]
        assert line["bot_id"] is None
        assert line["state"] is None
        assert line["logger"] == __name__
        assert not any(isinstance(v, dict | list) for v in line.values())
    assert lines[0]["level"] == "INFO"
    assert lines[1] == {**lines[1], "msg": "bound {not a format}", "job_id": "j-1", "attempt": 2}
    assert lines[2]["event"] == "job_succeeded"
    assert lines[2]["duration_ms"] == 12.5


def test_an_exception_becomes_three_fields(sink: Sink) -> None:
    try:
        raise KeyError("missing-thing")
    except KeyError:
        logger.exception("it broke")
    exc = RuntimeError("outer")
    logs.emit(logs.Event.JOB_FAILED, "job failed", level="ERROR", exc=exc, error_type="runtime")
    first, second = sink.lines()
    assert first["exc_type"] == "KeyError"
    assert first["exc_message"] == "'missing-thing'"
    assert first["exc_traceback"].startswith("Traceback (most recent call last)")
    assert "missing-thing" in first["exc_traceback"]
    assert second["exc_type"] == "RuntimeError"
    assert second["error_type"] == "runtime"
    assert second["level"] == "ERROR"


def test_values_that_are_not_json_become_strings(sink: Sink) -> None:
    logs.emit(
        "odd",
        "odd values",
        path=Path("/x"),
        nan=float("nan"),
        nested={1: {"set": {3}}},
        time="clashes with a core field",
    )
    (line,) = sink.lines()
    assert line["path"] == "/x"
    assert line["nan"] == "nan"
    assert line["nested"] == {"1": {"set": [3]}}
    assert line["field_time"] == "clashes with a core field"
    assert TIME_RE.match(line["time"])


def test_one_record_is_one_line_for_every_line_splitter(sink: Sink) -> None:
    text = "a\nb\rc\u2028d\u2029e\x85f\x1cg"
    logger.info(text)
    out = sink.getvalue()
    assert len(out.splitlines()) == 1
    assert out.endswith("\n")
    assert json.loads(out)["msg"] == text


def test_stdlib_httpx_records_come_through_the_same_sink(sink: Sink) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(204))
    with httpx.Client(transport=transport) as client:
        client.get("http://server.invalid/ping")
    logging.getLogger("some.library").info("with extra", extra={"job_id": "j-9"})
    lines = sink.lines()
    httpx_lines = [line for line in lines if line["logger"] == "httpx"]
    assert httpx_lines, lines
    assert "server.invalid/ping" in httpx_lines[0]["msg"]
    (lib,) = [line for line in lines if line["logger"] == "some.library"]
    assert lib["job_id"] == "j-9"


async def test_hypercorn_logs_come_through_the_sink_and_nothing_reaches_stderr(
    sink: Sink, capfd: pytest.CaptureFixture[str]
) -> None:
    # An earlier Config with hypercorn's defaults leaves a stderr handler on its logger.
    Config().log  # noqa: B018
    assert logging.getLogger("hypercorn.error").handlers

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    logs.configure_hypercorn_logging(config, access_log=True)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            lambda task_status: serve(
                app, config, shutdown_trigger=stop.wait, task_status=task_status
            )
        )
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{binds[0]}/x")
        assert response.status_code == 204
        stop.set()
    names = {line["logger"] for line in sink.lines()}
    assert {"hypercorn.error", "hypercorn.access"} <= names
    captured = capfd.readouterr()
    assert "Running on" not in captured.err
    assert "Running on" not in captured.out


def test_secrets_are_redacted_everywhere(
    monkeypatch: pytest.MonkeyPatch, setup: logs.LogSetup
) -> None:
    monkeypatch.setenv("BOT_TOKEN", "env-token-4711")
    out = Sink()
    setup.install(fmt="json", stream=out, secrets=["s3cret-A"], level="DEBUG")
    setup.add_secret('qu"ote\\d-secret')
    setup.add_secret("987654321")
    logger.info("token is s3cret-A and env-token-4711")
    logs.emit(
        "x",
        "extras",
        token="s3cret-A",
        nested={"k": ["s3cret-A"], "s3cret-A": 1},
        q='qu"ote\\d-secret',
        pin=987654321,
    )
    logging.getLogger("httpx").warning("headers: Authorization: Bearer abc.def-ghi")
    try:
        raise ValueError("bad token s3cret-A")
    except ValueError:
        logger.exception("failed with s3cret-A")
    text = out.getvalue()
    for secret in ("s3cret-A", "env-token-4711", "abc.def-ghi", 'qu"ote', 'qu\\"ote', "987654321"):
        assert secret not in text
    lines = out.lines()
    assert lines[0]["msg"] == "token is *** and ***"
    assert lines[1]["token"] == "***"
    assert lines[1]["nested"] == {"k": ["***"], "***": 1}
    assert lines[1]["pin"] == "***"
    assert lines[1]["q"] == "***"
    assert lines[2]["msg"] == "headers: Authorization: Bearer ***"
    assert lines[3]["exc_message"] == "bad token ***"
    assert "***" in lines[3]["exc_traceback"]


SECRET_ALPHABET = string.ascii_letters + string.digits + '-_.~+/="\\ é'


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    secret=st.text(SECRET_ALPHABET, min_size=8, max_size=40),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
    number=st.integers(),
)
def test_a_secret_never_survives_in_any_field(
    setup: logs.LogSetup, sink: Sink, secret: str, before: str, after: str, number: int
) -> None:
    sink.seek(0)
    sink.truncate()
    setup.redactor.clear()
    setup.add_secret(secret)
    logs.emit("x", before + secret + after, field={f"{before}{secret}": [after, secret, number]})
    (doc,) = sink.lines()  # still one valid JSON line, whatever the secret overlapped
    for text in strings_in(doc):
        assert secret not in text
    assert doc["field"]  # the field is still there, its key redacted
    if json.dumps(secret, ensure_ascii=False)[1:-1] == secret:
        assert secret not in sink.getvalue()


async def test_two_agents_in_one_trio_run_log_their_own_bot_id(sink: Sink) -> None:
    states = {"bot-a": "registering", "bot-b": "registering"}

    async def agent(bot_id: str) -> None:
        with logs.bind_agent(bot_id, lambda: states[bot_id]):
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(child, bot_id, i)

    async def child(bot_id: str, i: int) -> None:
        await trio.sleep(0)
        states[bot_id] = "ready"
        logger.info(f"{bot_id} child {i}")
        await trio.to_thread.run_sync(logging.getLogger("lib").warning, f"{bot_id} thread {i}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agent, "bot-a")
        nursery.start_soon(agent, "bot-b")
    logger.info("server line")
    lines = sink.lines()
    assert len(lines) == 13
    for line in lines[:-1]:
        assert line["msg"].startswith(line["bot_id"] + " ")
        assert line["state"] == "ready"
    assert lines[-1]["bot_id"] is None
    assert lines[-1]["state"] is None


def test_a_failing_state_callable_gives_a_null_state(sink: Sink) -> None:
    def broken() -> str:
        raise RuntimeError("no state yet")

    with logs.bind_agent("bot-x", broken):
        logger.info("still logged")
    (line,) = sink.lines()
    assert line["bot_id"] == "bot-x"
    assert line["state"] is None


def test_setup_is_idempotent_and_keeps_other_handlers(setup: logs.LogSetup) -> None:
    root = logging.getLogger()
    seen: list[str] = []

    class UserHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    user = UserHandler()
    root.addHandler(user)
    try:
        first, second = Sink(), Sink()
        setup.install(fmt="json", stream=first, env_secrets=False)
        setup.install(fmt="json", stream=second, env_secrets=False)
        logger.info("once")
        logging.getLogger("lib").warning("stdlib once")
        assert first.getvalue() == ""
        assert [line["msg"] for line in second.lines()] == ["once", "stdlib once"]
        assert sum(isinstance(h, logs.InterceptHandler) for h in root.handlers) == 1
        assert user in root.handlers
        assert seen == ["stdlib once"]
    finally:
        root.removeHandler(user)


def test_teardown_puts_back_what_setup_changed(
    setup: logs.LogSetup, capfd: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        out = Sink()
        setup.install(fmt="json", stream=out, env_secrets=False)
        logger.info("to the sink only")
        setup.close()
        logger.info("to loguru's default stderr handler")
    captured = capfd.readouterr()
    assert captured.err.count("to loguru's default stderr handler") == 2
    assert "to the sink only" not in captured.err
    assert "to the sink only" in out.getvalue()


def test_text_mode_is_one_readable_line_coloured_only_on_a_tty(setup: logs.LogSetup) -> None:
    plain = Sink()
    setup.install(fmt="text", stream=plain, env_secrets=False)
    with logs.bind_agent("bot-t", lambda: "ready"):
        logs.emit("registered", "hello {braces}", session="s-1")
    text = plain.getvalue()
    assert ANSI not in text
    assert text.count("\n") == 1
    assert "bot-t/ready" in text
    assert "hello {braces}" in text
    assert 'event="registered"' in text
    assert 'session="s-1"' in text

    tty = Sink(tty=True)
    setup.install(fmt="text", stream=tty, env_secrets=False)
    logger.info("coloured")
    assert ANSI in tty.getvalue()


@pytest.mark.parametrize(("tty", "is_json"), [(False, True), (True, False)])
def test_auto_is_text_on_a_tty_and_json_otherwise(
    setup: logs.LogSetup, tty: bool, is_json: bool
) -> None:
    out = Sink(tty=tty)
    setup.install(fmt="auto", stream=out, env_secrets=False)
    logger.info("which")
    assert out.getvalue().startswith("{") is is_json


def test_bad_level_or_format_is_rejected(setup: logs.LogSetup) -> None:
    with pytest.raises(ValueError, match="log format"):
        setup.install(fmt="xml", stream=Sink())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LOUD"):
        setup.install(level="LOUD", stream=Sink())


def documented_events() -> list[str]:
    """The event names in the first column of docs/operations.md's "Key events" tables."""
    doc = (REPO / "docs" / "operations.md").read_text()
    section = doc.split("### Key events", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `") and not line.startswith("| `event` |"):  # not a header
            names += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    return names


def test_the_code_names_events_only_through_the_enum() -> None:
    # emit() takes an Event (mypy checks the calls); a bound ``event=`` must be one too.
    literal = re.compile(r'(\bemit\(\s*|\bevent=\s*|"event":\s*)["\']')
    found = [
        f"{path.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in sorted((REPO / "botd").rglob("*.py"))
        for text in [path.read_text()]
        for m in literal.finditer(text)
    ]
    assert not found, f"an event named by a string literal, not botd.events.Event: {found}"


def test_every_event_is_documented_once_and_every_documented_event_exists() -> None:
    documented = documented_events()
    assert sorted(documented) == sorted(e.value for e in logs.Event)
    assert len(documented) == len(set(documented)), "an event has two rows"
