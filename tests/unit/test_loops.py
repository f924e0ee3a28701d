"""The bot's loops themselves: registration, heartbeat, claiming, results and health.

Each loop runs alone against a scripted protocol-v1 server (``tests/support/scripted.py``)
through ``httpx.MockTransport`` on ``autojump_clock``, and each class of outcome of its calls
is checked: an answer, a retryable error, a lost session, 401/403 and a cancellation. A
Hypothesis test cancels a session at an arbitrary await point of every loop at once and
then checks that every breaker can still admit a call (a probe slot that is never given back
makes a bot that says READY and never claims again).
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from botd.backoff import Backoff
from botd.breaker import BreakerState, CircuitBreaker
from botd.call_policy import CallPolicy
from botd.claiming import Claimer
from botd.client import ServerClient
from botd.errors import Unrecoverable
from botd.health import HealthMonitor
from botd.heartbeat import Heartbeat
from botd.models import Ack, ClaimedJob
from botd.outbox import Outbox
from botd.registration import Registrar, StartupExhausted
from botd.results import ResultReporter
from botd.session import Session, SessionLost
from botd.workers import JobRunner
from tests.support.logcapture import captured_logs, events_of
from tests.support.scripted import OUTCOMES, ScriptedServer

SESSION = Session("bot-1", "s-1", heartbeat_interval_s=1.0, lease_ttl_s=30.0, server_version="t")
RETRYABLE = ["connect", "timeout", "429", "500", "503", "garbage", "wrong_shape", "400"]
#: What an ack (or a claim carrying acks) may be answered and still be sent again: a 400 or
#: 413 is final for an ack (tests/unit/test_hostile_server.py).
ACK_RETRYABLE = [o for o in RETRYABLE if o != "400"]
LOOPS = ("registration", "heartbeat", "job_claim", "results")


@attrs.define
class Rig:
    """One bot's loops and their policies around one scripted server."""

    server: ScriptedServer
    client: ServerClient
    breakers: dict[str, CircuitBreaker]
    calls: dict[str, CallPolicy]
    outbox: Outbox
    runner: JobRunner
    reporter: ResultReporter
    health: HealthMonitor
    ran: list[str]

    def registrar(self, max_startup_attempts: int = 1000) -> Registrar:
        return Registrar(
            client=self.client,
            calls=self.calls["registration"],
            bot_id="bot-1",
            version="t",
            capacity=2,
            labels={},
            max_startup_attempts=max_startup_attempts,
            attempt_timeout=5.0,
        )

    def heartbeat(self, on_answer: Any = None) -> Heartbeat:
        return Heartbeat(
            client=self.client,
            calls=self.calls["heartbeat"],
            interval=1.0,
            leases=self.runner.leases,
            state=lambda: "ready",
            stats=dict,
            on_answer=on_answer or (lambda answer: None),
        )

    def claimer(self) -> Claimer:
        return Claimer(
            client=self.client,
            calls=self.calls["job_claim"],
            runner=self.runner,
            reporter=self.reporter,
            healthy=self.health.healthy,
            outbox_full=lambda: False,
            outbox_not_full=trio.lowlevel.checkpoint,
            wait_s=5.0,
            kinds=None,
            on_orphans=lambda jobs: None,
            check_health=self.health.ensure_fresh,
        )


@asynccontextmanager
async def rig(threshold: int = 3, seed: int = 1, **server: Any) -> AsyncIterator[Rig]:
    scripted = ScriptedServer(**server)
    rng = random.Random(seed)
    backoff = Backoff(0.5, 4.0, rng=rng)
    breakers = {
        name: CircuitBreaker(name, threshold=threshold, timeout=10.0, rng=rng) for name in LOOPS
    }

    def policy(name: str, event: str, **kw: Any) -> CallPolicy:
        return CallPolicy(name, breaker=breakers[name], failed_event=event, **kw)

    calls = {
        "registration": policy(
            "registration", "registration_failed", backoff=backoff, loses_session=False
        ),
        "heartbeat": policy("heartbeat", "heartbeat_failed", hold=False),
        "job_claim": policy("job_claim", "claim_failed", backoff=backoff),
        "results": policy("results", "ack_failed", backoff=backoff),
    }
    ran: list[str] = []

    async def handler(job: ClaimedJob) -> Any:
        ran.append(job.job_id)
        await trio.sleep(0.5)
        return {"ok": job.job_id}

    outbox = await Outbox.open(None)
    async with (
        ServerClient("http://server", transport=scripted.transport()) as client,
        trio.open_nursery() as nursery,
    ):
        runner = JobRunner(handler=handler, outbox=outbox, concurrency=2, job_timeout=30.0)
        await nursery.start(runner.run)
        reporter = ResultReporter(client=client, outbox=outbox, calls=calls["results"])
        health = HealthMonitor(client, 5.0)  # its own policy: no breaker, no backoff
        health.healthy.value = True  # as after HEALTH_CHECK
        yield Rig(scripted, client, breakers, calls, outbox, runner, reporter, health, ran)
        nursery.cancel_scope.cancel()


# --- heartbeat ---------------------------------------------------------------------------


async def test_heartbeat_answers_go_to_on_answer(autojump_clock: Any) -> None:
    async with rig() as r:
        answers: list[Any] = []
        heartbeat = r.heartbeat(answers.append)
        with trio.move_on_after(3.5):
            await heartbeat.run(SESSION)
        assert heartbeat.beats == 4 == len(answers)  # at 0, 1, 2 and 3 s


@pytest.mark.parametrize("outcome", ["superseded", "unknown_bot"])
async def test_one_heartbeat_404_or_409_loses_the_session_at_once(
    autojump_clock: Any, outcome: str
) -> None:
    async with rig() as r:
        r.server.scripts["heartbeat"] = ["ok", outcome]
        with pytest.raises(SessionLost):
            await r.heartbeat().run(SESSION)
        # Not a retryable failure: the second beat ended the session, and no failure counted.
        assert r.server.count("heartbeat") == 2
        assert r.breakers["heartbeat"].failure_count == 0
        assert r.breakers["heartbeat"].total_failures == 0


@pytest.mark.parametrize("outcome", RETRYABLE)
async def test_heartbeat_failures_keep_the_pace_until_the_breaker_opens(
    autojump_clock: Any, outcome: str
) -> None:
    async with rig(threshold=3, scripts={"heartbeat": [outcome]}, hang_s=0.5) as r:
        began = trio.current_time()
        with pytest.raises(SessionLost, match="unreachable"):
            await r.heartbeat().run(SESSION)
        assert r.server.count("heartbeat") == 3
        times = r.server.times("heartbeat")
        assert [round(t - began, 6) for t in times] == [0.0, 1.0, 2.0]  # no backoff


async def test_a_heartbeat_goes_out_while_its_breaker_is_open(autojump_clock: Any) -> None:
    async with rig() as r:
        breaker = r.breakers["heartbeat"]
        for _ in range(3):
            breaker.record_failure()
        assert breaker.state is BreakerState.OPEN
        heartbeat = r.heartbeat()
        await heartbeat.beat(SESSION)
        assert heartbeat.beats == 1  # a lease is renewed whatever the breaker says


# --- registration ------------------------------------------------------------------------


async def test_registration_answers_a_verified_session(autojump_clock: Any) -> None:
    async with rig() as r:
        session = await r.registrar().register([], startup=True)
        assert session.session_id == "s-1"
        assert r.server.count("register") == 1 and r.server.count("get_bot") == 1


@pytest.mark.parametrize("outcome", [*RETRYABLE, "hang", "unknown_bot", "superseded"])
async def test_registration_retries_what_can_pass(autojump_clock: Any, outcome: str) -> None:
    # A 404/409 while registering is not a lost session: there is none yet.
    async with rig(threshold=100, scripts={"register": [outcome] * 4 + ["ok"]}) as r:
        with captured_logs() as records:
            session = await r.registrar().register([], startup=True)
        assert session.session_id == "s-1"
        assert r.server.count("register") == 5
        failed = events_of(records, "registration_failed")
        assert [line["attempt"] for line in failed] == [1, 2, 3, 4]
        assert all(0 <= line["retry_in_s"] <= min(4.0, 0.5 * 2**n) for n, line in enumerate(failed))


async def test_registration_verify_failure_is_retried(autojump_clock: Any) -> None:
    async with rig(scripts={"get_bot": ["unknown_bot", "ok"]}) as r:
        await r.registrar().register([], startup=True)
        assert r.server.count("register") == 2


async def test_registration_gives_up_after_max_startup_attempts(autojump_clock: Any) -> None:
    async with rig(threshold=100, scripts={"register": ["500"]}) as r:
        began = trio.current_time()
        with pytest.raises(StartupExhausted, match="MAX_STARTUP_ATTEMPTS=3"):
            await r.registrar(max_startup_attempts=3).register([], startup=True)
        assert r.server.count("register") == 3
        # No backoff after the last attempt: the two waits between the three attempts only.
        assert trio.current_time() - began <= 0.5 + 1.0


# --- claiming ----------------------------------------------------------------------------


async def run_until(loop: Any, done: Any, limit: float = 120) -> None:
    """Run ``loop()`` until ``done()`` (checked every 0.1 s); fail after ``limit`` s."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop)
        with trio.fail_after(limit):
            while not done():
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()


async def claim_until(r: Rig, done: Any, limit: float = 120) -> None:
    await run_until(functools.partial(r.claimer().run, SESSION), done, limit)


async def test_claims_run_jobs_and_carry_their_acks(autojump_clock: Any) -> None:
    async with rig(long_poll_s=1.0) as r:
        r.server.queue(3)
        await claim_until(r, lambda: len(r.server.acks) == 3 and r.outbox.count == 0)
        assert sorted(r.ran) == ["j1", "j2", "j3"]


@pytest.mark.parametrize("outcome", [*ACK_RETRYABLE, "409_other"])
async def test_a_failed_claim_gives_its_acks_back_and_backs_off(
    autojump_clock: Any, outcome: str
) -> None:
    async with rig(threshold=100, long_poll_s=1.0) as r:
        await r.outbox.put("j0", Ack(lease_id="l0", outcome="succeeded", result=1))
        r.reporter.claim_ended(full=True)  # the claim is due: the reporter leaves l0 to it
        r.server.scripts["claim"] = [outcome] * 3 + ["ok"]
        r.server.queue(1)
        await claim_until(r, lambda: "j1" in r.ran)
        times = r.server.times("claim")
        hang = 10.0 if outcome == "timeout" else 0.0
        gaps = [b - a - hang for a, b in itertools.pairwise(times)]
        assert all(0 <= gap <= min(4.0, 0.5 * 2**n) + 0.01 for n, gap in enumerate(gaps[:3]))
        assert r.calls["job_claim"].failures == 0
        # The ack was not lost with the failed claims: it went with a later request.
        await claim_until(r, lambda: any(a["lease_id"] == "l0" for a in r.server.acks))


@pytest.mark.parametrize("outcome", ["superseded", "unknown_bot"])
async def test_a_claim_404_409_loses_the_session_and_keeps_the_acks(
    autojump_clock: Any, outcome: str
) -> None:
    async with rig(scripts={"claim": [outcome]}) as r:
        await r.outbox.put("j0", Ack(lease_id="l0", outcome="succeeded", result=1))
        r.reporter.claim_ended(full=True)
        with pytest.raises(SessionLost):
            await r.claimer().run(SESSION)
        assert r.reporter.sending == set()  # pending again, for the next session
        assert r.outbox.count == 1
        assert r.breakers["job_claim"].failure_count == 0


async def test_a_cancelled_half_open_probe_claim_gives_its_slot_back(autojump_clock: Any) -> None:
    """The zombie bot: the probe long-polls, the session is lost, the next claimer waits."""
    async with rig(threshold=1, scripts={"claim": ["500", "ok"]}) as r:
        breaker = r.breakers["job_claim"]
        async with trio.open_nursery() as session:
            session.start_soon(r.claimer().run, SESSION)
            with trio.fail_after(60):
                while not breaker.probe_in_flight:  # the probe long-polls an empty queue
                    await trio.sleep(0.1)
            session.cancel_scope.cancel()  # a heartbeat's 409 ends the session
        assert not breaker.probe_in_flight
        r.server.queue(1)
        r.server.long_poll_s = 0.5
        began = trio.current_time()
        await claim_until(r, lambda: "j1" in r.ran, limit=5)  # the next session claims at once
        assert r.server.times("claim")[-1] - began < 1.0


# --- results -----------------------------------------------------------------------------


async def report_until(r: Rig, done: Any, limit: float = 120) -> None:
    await run_until(r.reporter.run, done, limit)


async def test_results_are_acked_and_leave_the_outbox(autojump_clock: Any) -> None:
    async with rig() as r:
        await r.outbox.put("j1", Ack(lease_id="l1", outcome="succeeded", result=1))
        await report_until(r, lambda: r.outbox.count == 0)
        assert [a["lease_id"] for a in r.server.acks] == ["l1"]


@pytest.mark.parametrize("outcome", [*ACK_RETRYABLE, "409_other"])
async def test_an_ack_the_server_did_not_record_stays_and_is_sent_again_later(
    autojump_clock: Any, outcome: str
) -> None:
    """A 409 that is not about the lease, a 5xx, a bad body...: the result was not recorded."""
    async with rig(threshold=100, scripts={"ack": [outcome] * 3 + ["ok"]}) as r:
        await r.outbox.put("j1", Ack(lease_id="l1", outcome="succeeded", result=1))
        with captured_logs() as records:
            await report_until(r, lambda: r.outbox.count == 0)
        assert r.server.count("ack") == 4
        assert [a["lease_id"] for a in r.server.acks] == ["l1"]
        failed = events_of(records, "ack_failed")
        assert len(failed) == 3
        # Each failure counts toward the backoff: no tight loop of uploads.
        times = r.server.times("ack")
        assert times[-1] - times[0] == pytest.approx(
            sum(line["retry_in_s"] for line in failed) + 3 * 0.02 + 3 * (outcome == "timeout") * 10,
            abs=0.05,
        )


@pytest.mark.parametrize("status", ["lease_lost", "conflict", "unknown_lease"])
async def test_an_ack_answered_about_its_lease_is_final(autojump_clock: Any, status: str) -> None:
    async with rig(scripts={"ack": [status]}) as r:
        await r.outbox.put("j1", Ack(lease_id="l1", outcome="succeeded", result=1))
        with captured_logs() as records:
            await report_until(r, lambda: r.outbox.count == 0)
        assert r.server.count("ack") == 1
        assert not events_of(records, "ack_failed")


# --- 401/403, from any loop --------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["401", "403"])
@pytest.mark.parametrize("endpoint", ["register", "heartbeat", "claim", "ack"])
async def test_401_403_is_unrecoverable_in_every_loop(
    autojump_clock: Any, endpoint: str, outcome: str
) -> None:
    async with rig(scripts={endpoint: [outcome]}) as r:
        await r.outbox.put("j1", Ack(lease_id="l1", outcome="succeeded", result=1))
        loop = {
            "register": lambda: r.registrar().register([], startup=False),
            "heartbeat": lambda: r.heartbeat().run(SESSION),
            "claim": lambda: r.claimer().run(SESSION),
            "ack": r.reporter.run,
        }[endpoint]
        with pytest.raises(Unrecoverable):
            await loop()
        assert r.server.count(endpoint) == 1  # no retry: it will not pass by itself
        if endpoint == "ack":
            assert r.outbox.count == 1


# --- health ------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", RETRYABLE)
async def test_health_failures_say_unhealthy(autojump_clock: Any, outcome: str) -> None:
    async with rig(scripts={"health": [outcome, "ok"]}) as r:
        assert not await r.health.check()
        assert "server unreachable" in (r.health.last_error or "")
        assert await r.health.check()


# --- a session cancelled at any await point ----------------------------------------------

# Every outcome but 401/403 (which end the bot). A request that never answers stands for a
# long poll, or for a call with a time limit of its own; the others end by the client's read
# timeout ("timeout"). Half of the requests answer, so that breakers open, go half-open and
# send probes that are in flight when the session is cancelled.
#: ``endless`` reads 16 MiB each time (tests/unit/test_hostile_server.py has it);
#: ``too_many`` is a claim's answer only.
FAILURES = [o for o in OUTCOMES if o not in ("ok", "401", "403", "endless", "too_many")]
ENDPOINTS_OF = {
    "registration": ("register", "get_bot"),
    "heartbeat": ("heartbeat",),
    "job_claim": ("claim", "health"),
    "results": ("ack",),
}


def script(endpoint: str) -> st.SearchStrategy[list[str]]:
    hangs = endpoint not in ("ack", "health")  # no time limit but the client's read timeout
    failures = FAILURES if hangs else [o for o in FAILURES if o != "hang"]
    if endpoint == "claim":
        failures = [*failures, "too_many"]
    outcome = st.one_of(st.just("ok"), st.sampled_from(failures))
    return st.lists(outcome, min_size=1, max_size=6)


async def run_loop(r: Rig, loop: str) -> None:
    """Run one loop (or all of them) as the agent does, a new session after each lost one."""
    if loop == "all":
        async with trio.open_nursery() as nursery:
            for one in ENDPOINTS_OF:
                nursery.start_soon(run_loop, r, one)
        return
    while True:
        try:
            if loop == "registration":
                await r.registrar().register([], startup=False)
                await trio.sleep(1)
            elif loop == "heartbeat":
                await r.heartbeat().run(SESSION)
            elif loop == "job_claim":
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(r.health.run)  # claiming waits on it while unhealthy
                    await r.claimer().run(SESSION)
            else:
                await r.reporter.run()
        except* SessionLost:
            pass  # as the agent does: a new session (in a while: the loop sleeps below)
        await trio.sleep(0.5)


@pytest.mark.parametrize("loop", [*ENDPOINTS_OF, "all"])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_session_cancelled_anywhere_leaves_every_breaker_able_to_admit(
    loop: str, data: st.DataObject
) -> None:
    endpoints = [e for one in ENDPOINTS_OF.values() for e in one]
    mine = endpoints if loop == "all" else ENDPOINTS_OF[loop]
    scripts = {e: data.draw(script(e), label=e) for e in mine}
    threshold = data.draw(st.integers(1, 3), label="threshold")
    # Where the cancel lands: when the n-th request reaches the server (of all of them, or
    # of those sent by a half-open breaker's probe), then after a few more checkpoints of
    # the loops (before, during or after its answer).
    probes_only = data.draw(st.booleans(), label="count only the probes' requests")
    nth = data.draw(st.integers(1, 10), label="cancelled at request")
    steps = data.draw(st.integers(0, 30), label="checkpoints after it")
    jobs = data.draw(st.integers(0, 4), label="jobs")
    seed = data.draw(st.integers(0, 2**16), label="seed")

    async def main() -> None:
        reached = trio.Event()
        counted = 0

        def on_request(_: int) -> None:
            nonlocal counted
            if not probes_only or any(b.probe_in_flight for b in breakers.values()):
                counted += 1
                if counted == nth:
                    reached.set()

        breakers: dict[str, CircuitBreaker] = {}

        async with rig(
            threshold=threshold, seed=seed, scripts=scripts, hang_s=2.0, on_request=on_request
        ) as r:
            breakers.update(r.breakers)
            r.server.queue(jobs)
            await r.outbox.put("j0", Ack(lease_id="l0", outcome="succeeded", result=1))
            async with trio.open_nursery() as nursery:

                async def cancel_later() -> None:
                    with trio.move_on_after(120):  # fewer requests than that: cancel anyway
                        await reached.wait()
                    for _ in range(steps):  # land between two await points of the loops
                        await trio.lowlevel.checkpoint()
                    probes = sum(b.probe_in_flight for b in r.breakers.values())
                    target(float(probes), label="probes in flight when the session is cancelled")
                    nursery.cancel_scope.cancel()

                nursery.start_soon(cancel_later)
                try:
                    await run_loop(r, loop)
                except* Unrecoverable:
                    nursery.cancel_scope.cancel()
            for name, breaker in r.breakers.items():
                assert not breaker.probe_in_flight, name
                with trio.fail_after(breaker.timeout * (1 + breaker.jitter) + 1):
                    await breaker.wait_ready()
                assert breaker.allow(), name

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_claim_out_much_longer_than_a_busy_one_no_longer_holds_the_acks(
    autojump_clock: Any,
) -> None:
    """While the last answer was full, the reporter leaves pending acks to the next claim,
    but only for CLAIM_DUE_RTTS of the last full claim's round trip (at least
    CLAIM_DUE_MIN_S, at most CLAIM_DUE_S): a claim out much longer is a long poll of an
    emptied queue, whose answer will not come soon."""
    from botd import results

    outbox = await Outbox.open(None)
    reporter = ResultReporter(client=None, outbox=outbox, calls=CallPolicy("results"))  # type: ignore[arg-type]
    assert not reporter.claim_due()  # no full answer yet
    reporter.claim_started()
    await trio.sleep(0.002)
    reporter.claim_ended(full=True)  # a busy round trip of 2 ms
    assert reporter.claim_due()
    reporter.claim_started()  # the next claim: a long poll, the queue is empty now
    await trio.sleep(results.CLAIM_DUE_MIN_S - 0.01)
    assert reporter.claim_due()
    await trio.sleep(0.02)
    assert not reporter.claim_due()  # out for longer than 4 x 2 ms, and the floor
    reporter.claim_ended(full=True)
    reporter.claim_started()
    await trio.sleep(results.CLAIM_DUE_MIN_S + 0.2)  # a slow server: a full claim of 0.25 s
    reporter.claim_ended(full=True)
    assert reporter.claim_due()
    await trio.sleep(results.CLAIM_DUE_S - 0.01)
    assert reporter.claim_due()  # the window is CLAIM_DUE_S at most
    await trio.sleep(0.02)
    assert not reporter.claim_due()
    reporter.claim_ended(full=False)
    assert not reporter.claim_due()  # the queue was emptied: nothing is due
    await outbox.close()
