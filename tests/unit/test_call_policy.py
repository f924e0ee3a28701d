"""The call policy (botd.call_policy): every class of outcome of a call, handled once.

A real :class:`ServerClient` talks to a scripted protocol-v1 server through
``httpx.MockTransport``, so each outcome goes the whole way from an HTTP answer (or a
transport error) to the policy's verdict. Everything runs on ``autojump_clock``.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from botd.backoff import Backoff
from botd.breaker import BreakerState, CircuitBreaker
from botd.call_policy import CallPolicy
from botd.client import ServerClient
from botd.errors import (
    CircuitOpen,
    ProtocolError,
    RequestRejected,
    ServerUnavailable,
    Unrecoverable,
)
from botd.models import HeartbeatRequest, SessionHolder
from botd.session import SessionLost
from tests.support.logcapture import captured_logs, events_of
from tests.support.scripted import OUTCOMES, ScriptedServer

RETRYABLE = {
    "connect": ServerUnavailable,
    "timeout": ServerUnavailable,
    "408": ServerUnavailable,
    "425": ServerUnavailable,
    "429": ServerUnavailable,
    "500": ServerUnavailable,
    "503": ServerUnavailable,
    "hang": ServerUnavailable,  # the call's own time limit
    "garbage": ProtocolError,
    "wrong_shape": ProtocolError,
}
REJECTED = {"400", "409_other", "413", "lease_lost", "conflict", "unknown_lease"}
SESSION_LOST = {"unknown_bot", "superseded"}
UNRECOVERABLE = {"401", "403"}
#: A hostile server's answers: their outcome depends on the endpoint and the call's limits,
#: so tests/unit/test_hostile_server.py checks them call by call.
HOSTILE = {"trickle", "endless", "too_many"}


def test_the_tables_cover_every_scripted_outcome() -> None:
    classes = set(RETRYABLE) | REJECTED | SESSION_LOST | UNRECOVERABLE | HOSTILE | {"ok"}
    assert classes == set(OUTCOMES)


@asynccontextmanager
async def setup(
    outcome: str, *, breaker_state: BreakerState = BreakerState.HALF_OPEN, **policy: Any
) -> AsyncIterator[tuple[CallPolicy, ServerClient, list[str]]]:
    server = ScriptedServer(
        scripts={"heartbeat": [outcome]},
        hang_s=3.0,
        holder={"hostname": "h2", "pid": 42, "since": "2030-01-01T00:00:00.000Z"},
    )
    breaker = CircuitBreaker("heartbeat", threshold=1, timeout=30.0, rng=random.Random(1))
    if breaker_state is not BreakerState.CLOSED:
        breaker.record_failure()
    if breaker_state is BreakerState.HALF_OPEN:
        await trio.sleep(40)
    assert breaker.state is breaker_state
    events: list[str] = []
    calls = CallPolicy(
        "heartbeat",
        breaker=breaker,
        backoff=Backoff(1.0, 8.0, rng=random.Random(2)),
        failed_event="heartbeat_failed",
        observe=lambda name, event: events.append(event),
        **policy,
    )
    async with ServerClient("http://server", transport=server.transport()) as client:
        yield calls, client, events


async def beat(client: ServerClient) -> None:
    await client.heartbeat("bot-1", HeartbeatRequest(session_id="s-1"))


async def test_an_answer_closes_a_half_open_breaker(autojump_clock: Any) -> None:
    async with setup("ok") as (calls, client, events):
        calls.failures = 3
        async with calls.call(within=5) as call:
            await beat(client)
        assert call.ok and call.error is None
        assert calls.breaker is not None and calls.breaker.state is BreakerState.CLOSED
        assert calls.failures == 0
        assert events == ["started", "ok"]


@pytest.mark.parametrize("outcome", sorted(RETRYABLE))
async def test_a_retryable_error_counts_backs_off_and_is_not_raised(
    autojump_clock: Any, outcome: str
) -> None:
    async with setup(outcome) as (calls, client, events):
        calls.failures = 2  # the backoff's ceiling is then 4 s
        with captured_logs() as records:
            began = trio.current_time()
            async with calls.call(within=5) as call:
                await beat(client)
            took = trio.current_time() - began
        assert not call.ok
        assert isinstance(call.error, RETRYABLE[outcome])
        assert calls.breaker is not None and calls.breaker.state is BreakerState.OPEN
        assert calls.failures == 3
        assert events == ["started", "failed"]
        assert 0 <= call.retry_in_s <= 4.0
        waited = {"timeout": 3.0, "hang": 5.0}.get(outcome, 0.0)
        assert took == pytest.approx(waited + call.retry_in_s, abs=1e-6)
        [line] = events_of(records, "heartbeat_failed")
        assert line["level"] == "WARNING"
        assert line["error_type"] == type(call.error).__name__
        assert line["failures"] == 3 and line["breaker"] == "heartbeat"


@pytest.mark.parametrize("outcome", sorted(REJECTED))
async def test_another_4xx_counts_backs_off_and_says_so_as_an_error(
    autojump_clock: Any, outcome: str
) -> None:
    async with setup(outcome) as (calls, client, events):
        with captured_logs() as records:
            async with calls.call() as call:
                await beat(client)
        assert isinstance(call.error, RequestRejected)
        assert calls.breaker is not None and calls.breaker.state is BreakerState.OPEN
        assert events == ["started", "failed"]
        [line] = events_of(records, "heartbeat_failed")
        assert line["level"] == "ERROR"


@pytest.mark.parametrize("outcome", sorted(SESSION_LOST))
async def test_a_lost_session_raises_session_lost_and_is_no_failure(
    autojump_clock: Any, outcome: str
) -> None:
    async with setup(outcome) as (calls, client, events):
        calls.failures = 2
        with pytest.raises(SessionLost) as info:
            async with calls.call():
                await beat(client)
        # The server answered: its breaker hears a success.
        assert calls.breaker is not None and calls.breaker.state is BreakerState.CLOSED
        assert calls.failures == 0
        assert events == ["started", "session_lost"]
        if outcome == "superseded":
            assert info.value.holder == SessionHolder("h2", 42, "2030-01-01T00:00:00.000Z")
        else:
            assert info.value.holder is None


@pytest.mark.parametrize("outcome", sorted(UNRECOVERABLE))
async def test_401_and_403_are_raised_for_the_agent_to_stop(
    autojump_clock: Any, outcome: str
) -> None:
    async with setup(outcome) as (calls, client, events):
        began = trio.current_time()
        with pytest.raises(Unrecoverable):
            async with calls.call():
                await beat(client)
        assert trio.current_time() == began  # no backoff: there is nothing to wait for
        assert calls.breaker is not None and calls.breaker.state is BreakerState.OPEN
        assert events == ["started", "unrecoverable"]


async def test_a_cancelled_probe_gives_the_slot_back_without_counting(autojump_clock: Any) -> None:
    async with setup("hang") as (calls, client, events):
        breaker = calls.breaker
        assert breaker is not None
        with trio.move_on_after(1):
            async with calls.call():
                await beat(client)
        assert events == ["started", "cancelled"]
        assert breaker.state is BreakerState.HALF_OPEN
        assert not breaker.probe_in_flight
        assert breaker.total_failures == 1 and breaker.total_successes == 0
        assert breaker.allow()  # the next call is admitted at once


async def test_a_bug_in_the_body_propagates(autojump_clock: Any) -> None:
    async def buggy() -> None:
        async with calls.call():
            await beat(client)
            _ = 1 / 0

    async with setup("ok") as (calls, client, _):
        with pytest.raises(ZeroDivisionError):
            await buggy()
        assert calls.breaker is not None and not calls.breaker.probe_in_flight


async def test_an_open_breaker_holds_the_call_until_its_probe(autojump_clock: Any) -> None:
    async with setup("ok", breaker_state=BreakerState.OPEN) as (calls, client, _):
        breaker = calls.breaker
        assert breaker is not None
        began = trio.current_time()
        async with calls.call() as call:
            await beat(client)
        assert call.ok
        assert trio.current_time() - began == pytest.approx(breaker.open_for, abs=1e-6)
        assert breaker.state is BreakerState.CLOSED


async def test_wait_false_refuses_at_once_while_open(autojump_clock: Any) -> None:
    async with setup("ok", breaker_state=BreakerState.OPEN) as (calls, client, events):
        with pytest.raises(CircuitOpen):
            async with calls.call(wait=False):
                await beat(client)
        assert events == []


async def test_hold_false_lets_a_call_through_an_open_breaker(autojump_clock: Any) -> None:
    async with setup("ok", breaker_state=BreakerState.OPEN, hold=False) as (calls, client, _):
        began = trio.current_time()
        async with calls.call() as call:
            await beat(client)
        assert call.ok and trio.current_time() == began


async def test_two_calls_race_for_one_probe_slot_and_both_go_in_turn(autojump_clock: Any) -> None:
    async with setup("ok", breaker_state=BreakerState.OPEN) as (calls, client, events):
        order: list[int] = []

        async def one(n: int) -> None:
            async with calls.call() as call:
                order.append(n)
                await trio.sleep(1)
                await beat(client)
            assert call.ok

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 1)
            nursery.start_soon(one, 2)
        assert sorted(order) == [1, 2]
        assert events.count("ok") == 2


async def test_failures_grow_the_backoff_and_a_success_resets_it(autojump_clock: Any) -> None:
    async with setup("500", breaker_state=BreakerState.CLOSED) as (calls, client, _):
        assert calls.breaker is not None
        calls.breaker.threshold = 100
        ceilings = []
        for _ in range(5):
            async with calls.call() as call:
                await beat(client)
            ceilings.append(call.retry_in_s)
        assert calls.failures == 5
        assert all(0 <= d <= min(8.0, 2.0**n) for n, d in enumerate(ceilings))


@pytest.mark.parametrize("outcome", sorted(SESSION_LOST))
async def test_without_a_session_404_409_are_one_more_failure(
    autojump_clock: Any, outcome: str
) -> None:
    async with setup(outcome, loses_session=False) as (calls, client, events):
        async with calls.call() as call:
            await beat(client)
        assert isinstance(call.error, RequestRejected)
        assert events == ["started", "failed"]
