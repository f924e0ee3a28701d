"""Circuit breaker: a stateful model test, plus Trio-clock tests of waiting and jitter."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from botd.breaker import BreakerState, CircuitBreaker
from botd.errors import CircuitOpen, ProtocolError, ServerUnavailable, UnknownBot

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the model ------------------------------------------------------------------------


class Model:
    """What the breaker should do, written as plainly as possible."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.state = CLOSED
        self.open_until = 0.0
        self.probe: int | None = None
        self.next_probe = 0
        self.failure_count = 0
        self.total_failures = 0
        self.total_successes = 0
        self.opened_count = 0
        self.changes: list[tuple[BreakerState, BreakerState]] = []

    def move(self, new: BreakerState) -> None:
        if new is not self.state:
            self.changes.append((self.state, new))
        self.state = new

    def refresh(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.move(HALF_OPEN)

    def allow(self, now: float) -> tuple[bool, int | None]:
        self.refresh(now)
        if self.state is CLOSED:
            return True, None
        if self.state is OPEN or self.probe is not None:
            return False, None
        self.next_probe += 1
        self.probe = self.next_probe
        return True, self.probe

    def success(self, now: float) -> None:
        self.total_successes += 1
        self.refresh(now)
        if self.state is OPEN:
            return
        self.failure_count = 0
        if self.state is HALF_OPEN:
            self.probe = None
            self.move(CLOSED)

    def failure(self, now: float, open_for: Any) -> None:
        self.total_failures += 1
        self.refresh(now)
        if self.state is OPEN:
            return
        self.failure_count += 1
        if self.state is HALF_OPEN or self.failure_count >= self.threshold:
            self.open_until = now + open_for()
            self.probe = None
            self.opened_count += 1
            self.changes.append((self.state, OPEN))
            self.state = OPEN

    def release(self, probe: int | None) -> None:
        if probe is not None and self.probe == probe:
            self.probe = None


class BreakerMachine(RuleBasedStateMachine):
    """Failures, successes, probes and time against :class:`Model`."""

    THRESHOLD = 3
    TIMEOUT = 10.0
    JITTER = 0.1

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(1000.0)
        self.changes: list[tuple[BreakerState, BreakerState]] = []
        self.breaker = CircuitBreaker(
            "job_claim",
            threshold=self.THRESHOLD,
            timeout=self.TIMEOUT,
            jitter=self.JITTER,
            rng=random.Random(0),
            clock=self.clock,
            on_change=lambda name, old, new: self.changes.append((old, new)),
        )
        self.model = Model(self.THRESHOLD)
        # calls let through by guard() and not finished yet: (guard, model probe id)
        self.in_flight: list[tuple[Any, int | None]] = []

    def _open_for(self) -> float:
        got = self.breaker.open_for
        assert self.TIMEOUT * (1 - self.JITTER) <= got <= self.TIMEOUT * (1 + self.JITTER)
        return got

    @rule(dt=st.one_of(st.floats(min_value=0, max_value=25, allow_nan=False), st.just(0.0)))
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    @rule()
    def advance_exactly_to_the_deadline(self) -> None:
        if self.model.state is OPEN:
            self.clock.now = max(self.clock.now, self.model.open_until)

    @rule()
    def allow(self) -> None:
        allowed, probe = self.model.allow(self.clock.now)
        assert self.breaker.allow() is allowed
        if probe is not None:
            # a bare allow() that took the slot reports back at once, like a quick call
            self.in_flight.append((None, probe))

    @rule()
    def check(self) -> None:
        allowed, probe = self.model.allow(self.clock.now)
        if allowed:
            self.breaker.check()
            if probe is not None:
                self.in_flight.append((None, probe))
        else:
            with pytest.raises(CircuitOpen) as info:
                self.breaker.check()
            assert info.value.breaker == "job_claim"
            assert info.value.retry_in == self.breaker.retry_in()

    @rule()
    def record_success(self) -> None:
        self.model.success(self.clock.now)
        self.breaker.record_success()

    @rule()
    def record_failure(self) -> None:
        self.breaker.record_failure()
        self.model.failure(self.clock.now, self._open_for)

    @rule()
    def enter_guard(self) -> None:
        guard = self.breaker.guard()
        allowed, probe = self.model.allow(self.clock.now)
        if allowed:
            guard.__enter__()
            self.in_flight.append((guard, probe))
        else:
            with pytest.raises(CircuitOpen):
                guard.__enter__()

    @rule(
        data=st.data(),
        outcome=st.sampled_from(["ok", "server_error", "group_error", "other_error", "cancel"]),
    )
    def finish_guard(self, data: st.DataObject, outcome: str) -> None:
        guards = [i for i, (g, _) in enumerate(self.in_flight) if g is not None]
        if not guards:
            return
        guard, probe = self.in_flight.pop(data.draw(st.sampled_from(guards)))
        exc: BaseException | None = {
            "ok": None,
            "server_error": ServerUnavailable("down"),
            "group_error": ExceptionGroup("g", [ValueError("x"), ProtocolError("junk")]),
            "other_error": ValueError("not the server's fault"),
            "cancel": KeyboardInterrupt(),  # any non-Exception BaseException, like Cancelled
        }[outcome]
        guard.__exit__(type(exc) if exc else None, exc, None)
        if outcome in ("ok", "other_error"):
            self.model.success(self.clock.now)
        elif outcome in ("server_error", "group_error"):
            self.model.failure(self.clock.now, self._open_for)
        else:
            self.model.release(probe)

    @rule()
    def release(self) -> None:
        self.breaker.release()
        self.model.release(self.model.probe)

    @invariant()
    def agrees_with_model(self) -> None:
        b, m = self.breaker, self.model
        m.refresh(self.clock.now)
        assert b.state is m.state
        assert b.failure_count == m.failure_count
        assert b.total_failures == m.total_failures
        assert b.total_successes == m.total_successes
        assert b.opened_count == m.opened_count
        assert b.probe_in_flight == (m.probe is not None)
        assert self.changes == m.changes
        if m.state is OPEN:
            assert b.retry_in() == pytest.approx(m.open_until - self.clock.now)
            assert 0 < b.retry_in() <= self.TIMEOUT * (1 + self.JITTER)
        else:
            assert b.retry_in() == 0.0

    @invariant()
    def snapshot_has_the_seed_keys(self) -> None:
        snap = self.breaker.snapshot()
        assert snap["state"] == self.model.state.value
        assert snap["failure_count"] == self.model.failure_count
        assert {"total_failures", "opened_count", "retry_in_s"} <= set(snap)

    @invariant()
    def one_probe_at_most(self) -> None:
        if self.model.state is not HALF_OPEN:
            assert not self.breaker.probe_in_flight


BreakerMachine.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=50,
    # HealthCheck.too_slow times the host, as for the lifecycle machine (test_lifecycle.py):
    # the first ten examples' 500 rule draws took 0.3-0.5 s of its one second with two busy
    # loops on two cores. Suppressed for this machine only; every rule and invariant runs.
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerMachine = BreakerMachine.TestCase


# --- plain examples ---------------------------------------------------------------------


def make(clock: FakeClock, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("rng", random.Random(1))
    return CircuitBreaker("registration", clock=clock, **kwargs)


def test_opens_after_threshold_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = make(clock, threshold=3)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()  # resets the run
    assert breaker.state is CLOSED
    assert breaker.total_failures == 10
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is OPEN
    assert breaker.snapshot()["state"] == "open"
    assert breaker.opened_count == 1


def test_half_open_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = make(clock, threshold=1, timeout=10.0, jitter=0.0)
    breaker.record_failure()
    clock.now = 9.999
    assert not breaker.allow()
    clock.now = 10.0
    assert breaker.state is HALF_OPEN
    assert breaker.allow()  # the probe
    assert not breaker.allow()
    with pytest.raises(CircuitOpen):
        breaker.check()
    breaker.record_failure()  # the probe failed: open again, fresh timeout
    assert breaker.state is OPEN
    assert breaker.retry_in() == 10.0
    clock.now = 20.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert all(breaker.allow() for _ in range(10))


def test_guard_counts_only_the_given_exceptions() -> None:
    clock = FakeClock()
    breaker = make(clock, threshold=2)
    with pytest.raises(UnknownBot), breaker.guard(counts=(ServerUnavailable,)):
        raise UnknownBot(404, "unknown_bot", "who?")
    assert breaker.failure_count == 0
    for _ in range(2):
        with pytest.raises(ServerUnavailable), breaker.guard(counts=(ServerUnavailable,)):
            raise ServerUnavailable("down")
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen) as info, breaker.guard():
        raise AssertionError("must not run")
    assert info.value.retry_in == breaker.retry_in() > 0


def test_on_change_sees_every_change_in_order() -> None:
    clock = FakeClock()
    seen: list[tuple[str, str, str]] = []
    breaker = make(
        clock, threshold=1, timeout=5, on_change=lambda n, a, b: seen.append((n, a.value, b.value))
    )
    breaker.record_failure()
    clock.now = 100
    assert breaker.allow()
    breaker.record_success()
    assert seen == [
        ("registration", "closed", "open"),
        ("registration", "open", "half_open"),
        ("registration", "half_open", "closed"),
    ]


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 0}, {"timeout": 0}, {"jitter": 1.0}, {"jitter": -0.1}]
)
def test_bad_parameters_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="breaker"):
        CircuitBreaker("x", clock=FakeClock(), **kwargs)


# --- on Trio's clock --------------------------------------------------------------------


async def test_wait_ready_sleeps_exactly_the_jittered_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("heartbeat", threshold=2, timeout=30.0, rng=random.Random(3))
    await breaker.wait_ready()  # closed: returns at once
    assert trio.current_time() == 0
    breaker.record_failure()
    breaker.record_failure()
    opened_at = trio.current_time()
    open_for = breaker.open_for
    assert 27.0 <= open_for <= 33.0
    await breaker.wait_ready()
    assert trio.current_time() == pytest.approx(opened_at + open_for)
    assert breaker.state is HALF_OPEN
    with breaker.guard():
        pass
    assert breaker.state is CLOSED


async def test_wait_ready_waits_for_the_probe_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("job_claim", threshold=1, timeout=10.0, jitter=0.0)
    breaker.record_failure()
    await trio.sleep(10)
    woke: list[float] = []

    async def waiter() -> None:
        await breaker.wait_ready()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        guard = breaker.guard()
        guard.__enter__()  # the probe, in flight
        nursery.start_soon(waiter)
        await trio.sleep(3)
        assert woke == []
        exc = ServerUnavailable("still down")
        guard.__exit__(ServerUnavailable, exc, None)
        # the probe failed: the waiter sleeps through a whole new open period
        await trio.sleep(9.5)
        assert woke == []
    assert woke == [pytest.approx(23.0)]


async def test_wait_ready_wakes_when_a_late_success_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("job_claim", threshold=1, timeout=10.0, jitter=0.0)
    breaker.record_failure()
    await trio.sleep(10)
    assert breaker.allow()  # probe taken
    async with trio.open_nursery() as nursery:
        nursery.start_soon(breaker.wait_ready)
        await trio.sleep(1)
        breaker.record_success()
    assert trio.current_time() == 11
    assert breaker.state is CLOSED


async def test_cancelled_probe_gives_the_slot_back_without_counting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("registration", threshold=2, timeout=5.0)
    breaker.record_failure()
    breaker.record_failure()
    await breaker.wait_ready()
    failures = breaker.total_failures
    with trio.move_on_after(1) as scope, breaker.guard():
        await trio.sleep(100)  # the probe hangs; the state deadline cancels it
    assert scope.cancelled_caught
    assert breaker.state is HALF_OPEN
    assert not breaker.probe_in_flight
    assert breaker.total_failures == failures
    assert breaker.failure_count == 2
    assert breaker.allow()  # the next probe may go


async def test_cancelled_nursery_inside_guard_is_not_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("heartbeat", threshold=1, timeout=5.0)
    breaker.record_failure()
    await breaker.wait_ready()
    with trio.move_on_after(1), breaker.guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
    assert breaker.state is HALF_OPEN
    assert breaker.total_failures == 1
    assert breaker.allow()


async def test_a_failing_nursery_inside_guard_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("heartbeat", threshold=1, timeout=5.0)

    async def fail() -> None:
        raise ServerUnavailable("down")

    with pytest.raises(ExceptionGroup), breaker.guard():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail)
    assert breaker.state is OPEN


async def test_fleet_does_not_come_back_in_lockstep(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breakers = [
        CircuitBreaker(f"bot{i}", threshold=1, timeout=30.0, rng=random.Random(i))
        for i in range(50)
    ]
    back: list[float] = []

    async def bot(breaker: CircuitBreaker) -> None:
        breaker.record_failure()
        await breaker.wait_ready()
        back.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for breaker in breakers:
            nursery.start_soon(bot, breaker)
    assert all(27.0 <= t <= 33.0 for t in back)
    assert len(set(back)) == len(back)
    assert max(back) - min(back) > 3.0  # spread over most of the +/-10% window


async def test_a_forced_call_goes_through_an_open_breaker_and_still_counts(
    autojump_clock: Any,
) -> None:
    breaker = CircuitBreaker("hb", threshold=1, timeout=10.0, jitter=0.0)
    breaker.record_failure()
    assert breaker.state is OPEN
    with pytest.raises(CircuitOpen), breaker.guard():
        pass
    with breaker.guard(force=True):
        pass  # let through; a success while OPEN changes no state
    assert breaker.state is OPEN and breaker.total_successes == 1
    await trio.sleep(10)
    with breaker.guard(force=True):  # HALF_OPEN: it takes the probe slot like any call
        assert breaker.probe_in_flight
    assert breaker.state is CLOSED


async def test_admitted_waits_for_the_probe_and_serves_the_waiters_in_turn(
    autojump_clock: Any,
) -> None:
    breaker = CircuitBreaker("c", threshold=1, timeout=10.0, jitter=0.0)
    breaker.record_failure()
    entered: list[tuple[int, float]] = []

    async def call(n: int) -> None:
        async with breaker.admitted():
            entered.append((n, trio.current_time()))
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(call, n)
    # The probe at 10 s closes the breaker at 11 s; the two that lost the race go then.
    assert sorted(t for _, t in entered) == [10.0, 11.0, 11.0]
    assert breaker.state is CLOSED


async def test_admitted_gives_a_cancelled_probe_slot_back(autojump_clock: Any) -> None:
    breaker = CircuitBreaker("c", threshold=1, timeout=10.0, jitter=0.0)
    breaker.record_failure()
    with trio.move_on_after(12):
        async with breaker.admitted():
            await trio.sleep_forever()
    assert breaker.state is HALF_OPEN and not breaker.probe_in_flight
