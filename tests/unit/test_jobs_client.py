"""The producer's clients (botd.JobsClient, botd.AsyncJobsClient) through httpx.MockTransport:
every answer class becomes its error, the batches are of at most 1000, the token comes from
where the docs say, and the wait loop (a hypothesis property, on a MockClock) ends with the
job or with WaitTimeout at its deadline, against a server that holds its answers and against
one that does not."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

import botd
from botd.admin_client import resolve_token
from botd.errors import ConfigError
from botd.jobs_client import POLL_S
from botd.models import MAX_WAIT_S, JobSubmit

URL = "http://botd.test"


def view(job_id: str = "j1", status: str = "queued", **kw: Any) -> dict[str, Any]:
    """A JobView as the server sends it."""
    return {"job_id": job_id, "kind": "k", "status": status, "attempts": 0, "result": None,
            "error": None, "bot_id": None, "created_at": "2030-01-01T00:00:00.000Z",
            "finished_at": None, **kw}  # fmt: skip


def error(status: int, code: str, message: str = "what to do") -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


def client_on(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> botd.JobsClient:
    return botd.JobsClient(URL, transport=httpx.MockTransport(handler), **kw)


@pytest.mark.parametrize(
    ("answer", "raised", "words"),
    [
        (error(404, "unknown_job", "no job 'x'"), botd.JobNotFound, ["no such job", "no job 'x'"]),
        (error(409, "job_finished"), botd.JobFinished, ["already finished"]),
        (error(409, "job_not_retryable"), botd.JobNotRetryable, ["cannot be retried"]),
        (error(400, "invalid_request", "kind: bad"), botd.RequestRejected, ["kind: bad"]),
        (error(401, "unauthorized"), botd.Unrecoverable, ["--token", "BOTD_TOKEN_FILE"]),
        (error(403, "forbidden"), botd.Unrecoverable, ["BOTD_TOKEN"]),
        (error(503, "store_unavailable"), botd.ServerUnavailable, ["503"]),
        (httpx.Response(429), botd.ServerUnavailable, ["429"]),
        (httpx.Response(200, text="<html>"), botd.ProtocolError, ["not JSON"]),
        (httpx.Response(200, json={"job_id": 1}), botd.ProtocolError, ["JobView"]),
        (httpx.Response(302), botd.ProtocolError, ["302"]),
    ],
)
def test_each_answer_becomes_its_error(
    answer: httpx.Response, raised: type[Exception], words: list[str]
) -> None:
    with client_on(lambda request: answer) as jobs, pytest.raises(raised) as caught:
        jobs.get("x")
    for word in words:
        assert word in str(caught.value)


def test_no_answer_is_server_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with client_on(refuse) as jobs, pytest.raises(botd.ServerUnavailable, match="refused"):
        jobs.submit("k")


def test_requests_are_the_documented_ones() -> None:
    seen: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, str(request.url).removeprefix(URL), body))
        if request.url.path == "/v1/jobs" and request.method == "GET":
            return httpx.Response(200, json={"jobs": [view()]})
        if request.url.path == "/v1/jobs/retry":
            return httpx.Response(200, json={"retried": 1, "job_ids": ["j1"]})
        return httpx.Response(200, json=view())

    run_at = datetime(2030, 1, 31, 12, tzinfo=UTC)
    with client_on(handler) as jobs:
        jobs.submit("k", {"n": 1}, priority=5, run_at=run_at, retry_base_s=2.0, retry_max_s=9.0)
        jobs.get("a/b")
        jobs.cancel("j1")
        jobs.retry("j1")
        assert jobs.retry_all("failed", kind="k") == ["j1"]
        assert [v.job_id for v in jobs.list(status="dead", kind="k", limit=5)] == ["j1"]
    submitted = seen[0][2]
    assert submitted["run_at"] == "2030-01-31T12:00:00.000Z"
    assert (submitted["priority"], submitted["max_attempts"], submitted["delay_s"]) == (5, 3, None)
    assert (submitted["retry_base_s"], submitted["retry_max_s"]) == (2.0, 9.0)
    assert [(m, u) for m, u, _ in seen[1:]] == [
        ("GET", "/v1/jobs/a%2Fb"),  # an id is one path segment, whatever it holds
        ("POST", "/v1/jobs/j1/cancel"),
        ("POST", "/v1/jobs/j1/retry"),
        ("POST", "/v1/jobs/retry"),
        ("GET", "/v1/jobs?limit=5&status=dead&kind=k"),
    ]
    assert seen[4][2] == {"status": "failed", "kind": "k", "limit": 1000}


def test_bad_submissions_are_refused_before_anything_is_sent() -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent")

    with client_on(never) as jobs:
        with pytest.raises(ValueError, match="time zone"):
            jobs.submit("k", run_at=datetime(2030, 1, 1))  # naive
        with pytest.raises(ValueError, match="not both"):
            jobs.submit("k", run_at="2030-01-01T00:00:00Z", delay_s=5)
        with pytest.raises(ValueError, match="delay_s"):
            jobs.submit("k", delay_s=-1)
        with pytest.raises(ValueError, match="max_attempts"):
            jobs.submit("k", max_attempts=0)
        with pytest.raises(ValueError, match="timeout"):
            jobs.wait("j1", timeout=-1)
        assert jobs.submit_many([]) == []


def test_submit_many_sends_batches_of_at_most_1000_in_order() -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        batch = json.loads(request.content)["jobs"]
        sizes.append(len(batch))
        views = [view(job["payload"]["i"]) for job in batch]
        return httpx.Response(201, json={"jobs": views, "created": len(views)})

    jobs_in = [JobSubmit(kind="k", payload={"i": str(i)}) for i in range(2500)]
    jobs_in[7] = JobSubmit(kind="k", payload={"i": "7"}, delay_s=3.0)
    with client_on(handler) as jobs:
        views = jobs.submit_many(jobs_in)
    assert sizes == [1000, 1000, 500]
    assert [v.job_id for v in views] == [str(i) for i in range(2500)]


def test_retry_all_asks_again_after_a_full_page_and_stops_on_ids_seen() -> None:
    full = [f"a{i}" for i in range(1000)]
    pages = [full, ["b1"], full, full, full]

    def handler(request: httpx.Request) -> httpx.Response:
        ids = pages.pop(0)
        return httpx.Response(200, json={"retried": len(ids), "job_ids": ids})

    with client_on(handler) as jobs:
        assert jobs.retry_all() == [*full, "b1"]  # a full page, then the rest
        # Jobs that died again while it ran come back in a page: it stops there.
        assert jobs.retry_all() == full
    assert len(pages) == 1


def test_the_token_comes_from_the_argument_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization"))
        return httpx.Response(200, json=view())

    monkeypatch.delenv("BOTD_TOKEN", raising=False)
    monkeypatch.delenv("BOTD_TOKEN_FILE", raising=False)
    client_on(handler).get("j1")
    file = tmp_path / "token"
    file.write_text("from-file\n")
    monkeypatch.setenv("BOTD_TOKEN_FILE", str(file))
    client_on(handler).get("j1")
    monkeypatch.setenv("BOTD_TOKEN", "from-env")
    client_on(handler).get("j1")
    client_on(handler, token="given").get("j1")
    assert headers == [None, "Bearer from-file", "Bearer from-env", "Bearer given"]
    assert resolve_token(None, file, env={"BOTD_TOKEN": "x"}) == "from-file"
    file.write_text(" \n")
    with pytest.raises(ConfigError, match="empty"):
        resolve_token(env={"BOTD_TOKEN_FILE": str(file)})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_token(token_file=tmp_path / "missing")


def test_the_server_comes_from_the_argument_then_main_server_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAIN_SERVER_URL", "http://from-env:1/")
    assert botd.JobsClient().server == "http://from-env:1"
    assert botd.JobsClient("http://given:2").server == "http://given:2"
    monkeypatch.delenv("MAIN_SERVER_URL")
    assert botd.JobsClient().server == "http://127.0.0.1:3001"


# --- the wait loop ------------------------------------------------------------------------


def fake_server(final_at: float, *, holds: bool, asks: list[float]) -> httpx.MockTransport:
    """A server whose one job becomes succeeded at ``final_at`` (Trio time). ``holds``: it
    answers ``?wait_s`` as the protocol says (at the final status or the deadline); else at
    once, as a server from before long polls did."""

    async def handler(request: httpx.Request) -> httpx.Response:
        wait_s = float(request.url.params.get("wait_s", "0"))
        asks.append(wait_s)
        if holds:
            now = trio.current_time()
            await trio.sleep(max(0.0, min(wait_s, final_at - now)))
        done = trio.current_time() >= final_at
        return httpx.Response(200, json=view(status="succeeded" if done else "leased"))

    return httpx.MockTransport(handler)


def run_wait(
    final_at: float, timeout: float | None, *, holds: bool
) -> tuple[Any, float, list[float]]:
    """(the view or the WaitTimeout, when it ended, the wait_s asked), on a MockClock."""
    asks: list[float] = []

    async def main() -> tuple[Any, float]:
        transport = fake_server(final_at, holds=holds, asks=asks)
        async with botd.AsyncJobsClient(URL, transport=transport) as jobs:
            try:
                got: Any = await jobs.wait("j1", timeout=timeout)
            except botd.WaitTimeout as exc:
                got = exc
        return got, trio.current_time()

    got, ended = trio.run(main, clock=MockClock(autojump_threshold=0))
    return got, ended, asks


@settings(max_examples=60, deadline=None)
@given(
    final_at=st.floats(0, 200),
    timeout=st.one_of(st.none(), st.floats(0, 200)),
    holds=st.booleans(),
)
def test_wait_ends_with_the_job_or_at_its_deadline(
    final_at: float, timeout: float | None, holds: bool
) -> None:
    got, ended, asks = run_wait(final_at, timeout, holds=holds)
    assert all(0 <= wait_s <= MAX_WAIT_S for wait_s in asks)
    if timeout is not None and timeout + 0.01 < final_at:
        assert isinstance(got, botd.WaitTimeout)
        assert got.job.status == "leased"  # the last view the server gave
        assert ended == pytest.approx(timeout, abs=1e-3)
        assert str(got.job.job_id) in str(got)
    elif timeout is None or final_at + 0.01 < timeout:
        assert isinstance(got, botd.JobView) and got.status == "succeeded"
        if holds:
            assert ended == pytest.approx(final_at, abs=1e-3)  # at once, not a poll later
            assert len(asks) <= final_at // MAX_WAIT_S + 2
        else:
            assert final_at <= ended <= final_at + POLL_S + 1e-3


class FakeTime:
    """``time.monotonic`` and ``time.sleep`` of the sync client, without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def test_sync_wait_returns_a_final_job_and_times_out_on_a_running_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeTime()
    monkeypatch.setattr("botd.jobs_client.time", fake)
    statuses = ["leased", "leased", "dead"]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=view(status=statuses.pop(0) if statuses else "leased"))

    with client_on(handler) as jobs:
        assert jobs.wait("j1", timeout=10).status == "dead"
        assert fake.now == 2 * POLL_S  # a server that answers at once is polled, not hammered
        with pytest.raises(botd.WaitTimeout, match="still leased after 0s") as caught:
            jobs.wait("j1", timeout=0)
    assert caught.value.job.status == "leased"
    assert isinstance(caught.value, TimeoutError)
