"""The bot against a broken or hostile server, and results the server will never take.

Each loop runs against the scripted server (``tests/support/scripted.py``) on
``autojump_clock``, as in ``test_loops.py``: a register answer with an unusable timing, a
claim answered with more jobs than it asked for, a trickled or endless body, a job whose
``timeout_s`` is unusable; an ack answered 400/413, alone or carried by a claim, in memory
and in a durable outbox. In every case the bot goes on, says what happened, and backs off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from botd import workers
from botd.client import CLAIM_BYTES_PER_JOB, ServerClient
from botd.errors import ProtocolError, ServerUnavailable
from botd.models import Ack, ClaimRequest, FailureInfo
from botd.outbox import Outbox
from botd.outbox_file import OutboxEntry
from botd.results import ACK_BYTES_PER_CLAIM, ResultReporter
from tests.support.logcapture import captured_logs, events_of
from tests.unit.test_loops import SESSION, claim_until, rig, run_until

BIG = {"blob": "x" * 1000}


def report_until(r: Any, done: Any, limit: float = 120) -> Any:
    return run_until(r.reporter.run, done, limit)


# --- the register answer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("lease_ttl_s", 1e-9), ("lease_ttl_s", float("nan")), ("lease_ttl_s", float("inf")),
     ("heartbeat_interval_s", 0.001), ("heartbeat_interval_s", float("inf"))],
)  # fmt: skip
async def test_a_register_answer_with_unusable_timing_is_a_protocol_error(
    autojump_clock: Any, field: str, value: float
) -> None:
    async with rig(threshold=100, **{field: value}) as r:
        registrar = r.registrar()
        with captured_logs() as records, trio.move_on_after(10):
            await registrar.register([], startup=True)
        failed = events_of(records, "registration_failed")
        assert failed and all(line["error_type"] == "ProtocolError" for line in failed)
        # The bot's floor names the field and the value (NaN: the model's own "> 0" does).
        error = failed[0]["error"]
        assert field in error and ("nan" if value != value else repr(value)) in error
        assert r.server.count("get_bot") == 0  # the answer was not used
        # Backed off: a handful of attempts in 10 s (0.5 s doubling to 4 s), not thousands.
        assert 3 <= r.server.count("register") <= 12
        setattr(r.server, field, 1.0)
        session = await registrar.register([], startup=True)
        assert session.session_id == "s-1"


# --- claim answers -----------------------------------------------------------------------


async def test_a_claim_answered_with_more_jobs_than_asked_runs_none_of_them(
    autojump_clock: Any,
) -> None:
    async with rig(threshold=100, long_poll_s=1.0, scripts={"claim": ["too_many", "ok"]}) as r:
        with captured_logs() as records:
            await claim_until(r, lambda: r.server.count("claim") >= 2)
        assert r.ran == [] and r.outbox.count == 0  # nothing started, nothing to release
        (failed,) = events_of(records, "claim_failed")
        assert (failed["error_type"], failed["level"]) == ("ProtocolError", "WARNING")
        assert "5002 jobs for max_jobs=2" in failed["error"]
        assert failed["retry_in_s"] > 0
        r.server.queue(1)
        await claim_until(r, lambda: r.outbox.count == 1)
        assert r.ran == ["j5003"]


async def test_a_trickled_claim_answer_ends_at_the_overall_deadline(autojump_clock: Any) -> None:
    """httpx's read timeout is per chunk: a byte every 2 s never trips it; the deadline does."""
    async with rig(threshold=100, long_poll_s=1.0, scripts={"claim": ["trickle", "ok"]}) as r:
        r.server.queue(1)
        began = trio.current_time()
        with captured_logs() as records:
            await claim_until(r, lambda: r.server.count("claim") >= 2)
        (failed,) = events_of(records, "claim_failed")
        # connect 5 + request 10 + wait_s 5 + claim margin 5: the rig's client's defaults.
        assert "no whole answer within 25s" in failed["error"]
        assert failed["error_type"] == "ServerUnavailable"
        assert r.server.times("claim")[1] - began == pytest.approx(
            25 + failed["retry_in_s"], abs=0.1
        )
        r.server.queue(1)
        await claim_until(r, lambda: r.outbox.count >= 1)


async def test_an_endless_answer_is_cut_at_the_size_cap(autojump_clock: Any) -> None:
    async with rig(
        threshold=100, scripts={"claim": ["endless", "ok"], "heartbeat": ["endless"]}
    ) as r:
        with captured_logs() as records:
            await claim_until(r, lambda: r.server.count("claim") >= 2)
        (failed,) = events_of(records, "claim_failed")
        assert failed["error_type"] == "ProtocolError"
        assert f"over the limit of {16 * 1024 * 1024} (BOT_RESPONSE_MAX_BYTES)" in failed["error"]
        with pytest.raises(ProtocolError, match="BOT_RESPONSE_MAX_BYTES"):
            await r.client.heartbeat("bot-1", _beat())


async def test_a_claim_may_read_its_share_per_job_and_no_more() -> None:
    """A claim's cap grows with the jobs it asks for; a Content-Length over it is not read."""
    seen: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body["max_jobs"])
        size = CLAIM_BYTES_PER_JOB * 20
        return httpx.Response(200, headers={"Content-Length": str(size)}, content=b"{" * 10)

    async with ServerClient(
        "http://server", transport=httpx.MockTransport(answer), response_max_bytes=64 * 1024
    ) as client:
        for max_jobs in (1, 19):
            request = ClaimRequest(bot_id="b", session_id="s", max_jobs=max_jobs)
            with pytest.raises(ProtocolError, match=f"{CLAIM_BYTES_PER_JOB * 20} bytes, over"):
                await client.claim(request)
    assert seen == [1, 19]


async def test_every_request_has_an_overall_deadline(autojump_clock: Any) -> None:
    async with rig(scripts={"ack": ["trickle"]}) as r:
        began = trio.current_time()
        with pytest.raises(ServerUnavailable, match="no whole answer within 15s"):
            await r.client.ack(Ack(lease_id="l1", outcome="released"))
        assert trio.current_time() - began == pytest.approx(15)


@pytest.mark.parametrize("timeout_s", [-5, 0, float("nan"), float("-inf")])
async def test_a_job_with_an_unusable_timeout_fails_alone_and_the_next_runs(
    autojump_clock: Any, timeout_s: float
) -> None:
    async with rig(long_poll_s=1.0) as r:
        r.server.queue(1, timeout_s=timeout_s)
        r.server.queue(1)
        await claim_until(r, lambda: r.outbox.count == 2)
        assert r.ran == ["j2"]  # j1 never ran
        bad, good = (r.outbox.get(lease).ack for lease in ("l1", "l2"))  # type: ignore[union-attr]
        assert bad.outcome == "failed" and bad.error is not None
        assert (bad.error.type, bad.error.retryable) == ("invalid_job", False)
        assert "timeout_s" in bad.error.message
        assert good.outcome == "succeeded"


async def test_one_job_that_breaks_botd_fails_alone(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = workers.run_job

    async def sometimes_broken(handler: Any, job: Any, **kw: Any) -> Any:
        if job.job_id == "j1":
            raise RuntimeError("a bug in preparing the job")
        return await real(handler, job, **kw)

    monkeypatch.setattr(workers, "run_job", sometimes_broken)
    async with rig(long_poll_s=1.0) as r:
        r.server.queue(2)
        with captured_logs() as records:
            await claim_until(r, lambda: r.outbox.count == 2)
        bad = r.outbox.get("l1")
        assert bad is not None and bad.ack.error is not None
        assert (bad.ack.error.type, bad.ack.error.retryable) == ("bot_error", True)
        assert "RuntimeError: a bug in preparing the job" in bad.ack.error.message
        (line,) = [x for x in events_of(records, "job_failed") if x["job_id"] == "j1"]
        assert line["level"] == "ERROR" and line["error_type"] == "bot_error"
        assert r.ran == ["j2"]


# --- acks the server will never take -----------------------------------------------------


async def test_an_ack_answered_413_is_replaced_by_a_small_failure(autojump_clock: Any) -> None:
    refused: list[int] = []
    async with rig(threshold=100, scripts={"ack": ["413", "ok"]}) as r:
        r.reporter.on_refused = refused.append
        await r.outbox.put("j1", Ack(lease_id="l1", outcome="succeeded", result=BIG))
        with captured_logs() as records:
            await report_until(r, lambda: r.outbox.count == 0)
        assert refused == [413]
        (sent,) = r.server.acks  # the scripted server keeps only what it recorded
        assert sent["outcome"] == "failed" and sent["result"] is None
        assert sent["error"]["type"] == "result_refused" and not sent["error"]["retryable"]
        assert "413 payload_too_large" in sent["error"]["message"]
        (line,) = events_of(records, "result_refused")
        assert (line["level"], line["http_status"], line["action"]) == ("ERROR", 413, "replaced")
        # The refusal counted toward the backoff: the stand-in went after it, not at once.
        (failed,) = events_of(records, "ack_failed")
        first, second = r.server.times("ack")
        assert second - first == pytest.approx(failed["retry_in_s"] + 0.02, abs=0.01)


@pytest.mark.parametrize("status", ["400", "413"])
async def test_an_ack_the_server_always_refuses_is_sent_twice_at_most(
    autojump_clock: Any, status: str
) -> None:
    async with rig(threshold=100, scripts={"ack": [status]}) as r:
        await r.outbox.put("j1", Ack(lease_id="l1", outcome="succeeded", result=BIG))
        await r.outbox.put("j2", Ack(lease_id="l2", outcome="released"))
        with captured_logs() as records:
            await report_until(r, lambda: r.outbox.count == 0)
            with trio.move_on_after(300):
                await r.reporter.run()
        # l1: its result, then its stand-in; l2, a release: once. Nothing more, ever.
        assert r.server.count("ack") == 3
        actions = sorted((x["lease_id"], x["action"]) for x in events_of(records, "result_refused"))
        assert actions == [("l1", "dropped"), ("l1", "replaced"), ("l2", "dropped")]


async def test_a_refused_result_is_replaced_in_the_durable_outbox_too(tmp_path: Path) -> None:
    # Real time: the durable outbox writes in a worker thread (the first backoff is <= 0.5 s).
    async with rig(threshold=100, scripts={"ack": ["413", "hang"]}) as r:
        outbox = await Outbox.open(tmp_path)
        r.reporter.outbox = outbox
        await outbox.put("j1", Ack(lease_id="l1", outcome="failed", result=None,
                                   error=FailureInfo("boom", "x" * 2000, True)))  # fmt: skip
        await report_until(r, lambda: r.server.count("ack") == 2, limit=10)
        await outbox.close()
    reopened = await Outbox.open(tmp_path)
    try:
        (entry,) = reopened.pending()
        assert entry.ack.error is not None
        # A failure keeps its retryable; the restarted bot sends the small ack, not the big one.
        assert (entry.ack.error.type, entry.ack.error.retryable) == ("result_refused", True)
    finally:
        await reopened.close()


async def test_a_claim_refused_with_acks_sends_them_alone(autojump_clock: Any) -> None:
    """A 413 on a claim that carried acks: which one? Each goes alone, and the good ones land."""
    async with rig(threshold=100, long_poll_s=1.0, scripts={"claim": ["413", "ok"]}) as r:
        await r.outbox.put("j1", Ack(lease_id="l1", outcome="succeeded", result=1))
        await r.outbox.put("j2", Ack(lease_id="l2", outcome="succeeded", result=2))
        r.reporter.claim_ended(full=True)  # the claim is due: it takes both acks

        async def both() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(r.claimer().run, SESSION)
                nursery.start_soon(r.reporter.run)

        await run_until(both, lambda: r.outbox.count == 0)
        assert sorted(a["lease_id"] for a in r.server.acks) == ["l1", "l2"]
        assert r.server.count("ack") == 2  # each alone, after the refused claim
        assert r.server.count("claim", "413") == 1


async def test_the_reporters_own_batch_refused_goes_alone(autojump_clock: Any) -> None:
    async with rig(threshold=100, scripts={"claim": ["413"], "ack": ["ok", "413", "ok"]}) as r:
        r.reporter.session = SESSION
        for n in (1, 2):
            await r.outbox.put(f"j{n}", Ack(lease_id=f"l{n}", outcome="succeeded", result=n))
        await report_until(r, lambda: r.outbox.count == 0)
        assert r.server.count("claim") == 1
        assert r.server.count("ack") == 3  # l1, l2 refused, then l2's stand-in
        assert sorted(a["outcome"] for a in r.server.acks) == ["failed", "succeeded"]


async def test_a_claim_carries_about_its_byte_budget_of_results() -> None:
    outbox = await Outbox.open(None)
    reporter = ResultReporter(client=None, outbox=outbox, calls=None)  # type: ignore[arg-type]
    third = ACK_BYTES_PER_CLAIM // 3 + 1
    for n, size in enumerate([third, third, third, 10, ACK_BYTES_PER_CLAIM * 2]):
        ack = Ack(lease_id=f"l{n}", outcome="succeeded", result=n)
        await outbox.put(OutboxEntry(f"l{n}", f"j{n}", ack, 0.0, 0, size))
    assert [a.lease_id for a in reporter.take()] == ["l0", "l1", "l3"]
    assert [a.lease_id for a in reporter.take()] == ["l2"]
    assert [a.lease_id for a in reporter.take()] == ["l4"]  # too large for any budget: alone


def _beat() -> Any:
    from botd.models import HeartbeatRequest

    return HeartbeatRequest(session_id="s-1")
