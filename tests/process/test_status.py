"""``botd status`` against a fake ops server over loopback: the table, --json, exit codes 0/1/2."""

from __future__ import annotations

import argparse
import io
import json
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import pytest
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from botd import logs
from botd.status import (
    DEFAULT_OPS_URL,
    EXIT_NOT_READY,
    EXIT_READY,
    EXIT_UNREACHABLE,
    add_status_arguments,
    run_status,
    run_status_from_args,
)

pytestmark = pytest.mark.slow

DOCUMENT: dict[str, Any] = {
    "bot_id": "bot-7",
    "state": "error",
    "uptime_seconds": 3725.2,
    "startup_attempts": 3,
    "total_jobs_processed": 142,
    "circuit_breakers": {
        "registration": {"state": "closed", "failure_count": 0},
        "heartbeat": {"state": "open", "failure_count": 5},
        "job_claim": {"state": "half_open", "failure_count": 2},
    },
    "jobs_in_flight": 1,
    "outbox_pending": 4,
    "transitions": [
        {
            "from_state": "ready",
            "to_state": "error",
            "reason": "heartbeat breaker opened",
            "at": "2026-11-28T17:00:00.000000Z",
            "duration_s": 61.5,
        }
    ],
    "config": {"token": "***"},
    "version": "0.1.0",
}


@attrs.define
class FakeOps:
    """What the fake ops server answers; the test changes it between calls."""

    ready_code: int = 503
    status_code: int = 200
    status_json: bool = True
    document: dict[str, Any] = attrs.field(factory=lambda: dict(DOCUMENT))

    def app(self) -> Starlette:
        async def status(request: Request) -> Response:
            if not self.status_json:
                return PlainTextResponse("<html>not json</html>", self.status_code)
            return JSONResponse(self.document, self.status_code)

        async def readyz(request: Request) -> Response:
            return JSONResponse({"ready": self.ready_code == 200}, self.ready_code)

        return Starlette(routes=[Route("/status", status), Route("/readyz", readyz)])


@attrs.frozen
class Served:
    url: str
    fake: FakeOps


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    fake = FakeOps()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    logs.configure_hypercorn_logging(config, access_log=False)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(serve, fake.app(), config, shutdown_trigger=trio.sleep_forever)
        )
        yield Served(binds[0], fake)
        nursery.cancel_scope.cancel()


async def status(url: str, *, as_json: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await trio.to_thread.run_sync(
        partial(run_status, url, as_json=as_json, out=out, err=err, timeout=10)
    )
    return code, out.getvalue(), err.getvalue()


async def test_not_ready_prints_the_table_and_exits_1(served: Served) -> None:
    code, out, err = await status(served.url)
    assert code == EXIT_NOT_READY
    assert err == ""
    assert "bot-7" in out
    assert "error (NOT ready)" in out
    assert "1h 02m 05s" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert rows["heartbeat"] == ["open", "5"]
    assert rows["job_claim"] == ["half_open", "2"]
    assert "  2026-11-28T17:00:00.000000Z  ready  error  1m 01s  heartbeat breaker opened\n" in out
    for counter in ("142", "startup attempts      3", "outbox pending        4"):
        assert counter in out


async def test_ready_exits_0(served: Served) -> None:
    served.fake.ready_code = 200
    served.fake.document["state"] = "ready"
    code, out, _ = await status(served.url + "/")
    assert code == EXIT_READY
    assert "ready (ready)" in out


async def test_json_prints_the_document_as_served(served: Served) -> None:
    served.fake.ready_code = 200
    code, out, _ = await status(served.url, as_json=True)
    assert code == EXIT_READY
    assert json.loads(out) == DOCUMENT


async def test_a_url_without_scheme_works(served: Served) -> None:
    code, _, _ = await status(served.url.removeprefix("http://"))
    assert code == EXIT_NOT_READY


async def test_unreachable_exits_2_with_a_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, err = await status(f"http://127.0.0.1:{port}")
    assert code == EXIT_UNREACHABLE
    assert out == ""
    assert err.startswith(f"botd status: cannot reach http://127.0.0.1:{port}/status")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status_code": 500}, "/status answered 500"),
        ({"status_json": False}, "without JSON"),
        ({"ready_code": 404}, "/readyz answered 404"),
    ],
)
async def test_an_answer_that_is_not_a_status_exits_2(
    served: Served, change: dict[str, Any], message: str
) -> None:
    for key, value in change.items():
        setattr(served.fake, key, value)
    code, out, err = await status(served.url)
    assert code == EXIT_UNREACHABLE
    assert out == ""
    assert message in err


async def test_cli_arguments(served: Served) -> None:
    parser = argparse.ArgumentParser(prog="botd status")
    add_status_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.ops_url, defaults.json) == (DEFAULT_OPS_URL, False)
    args = parser.parse_args(["--ops-url", served.url, "--json"])
    out = io.StringIO()
    code = await trio.to_thread.run_sync(partial(run_status_from_args, args, out=out))
    assert code == EXIT_NOT_READY
    assert json.loads(out.getvalue())["bot_id"] == "bot-7"
