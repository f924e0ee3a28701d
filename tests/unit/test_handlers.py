"""Handlers: simulate and python on the virtual clock; exec with real processes."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from botd import codec
from botd.errors import ConfigError, JobError, JobTimeout, PermanentError
from botd.handlers import (
    DEFAULT_OUTPUT_CAP,
    ExecHandler,
    ExitStatusError,
    JobOutcome,
    PythonHandler,
    SimulatedFailure,
    SimulateHandler,
    SpawnError,
    build_handler,
    cancelled_failure,
    check_result,
    classify_failure,
    kinds_of,
    run_job,
    simulated_value,
)
from botd.handlers.exec import STDERR_TAIL
from botd.models import Ack, ClaimedJob, FailureInfo
from tests.support import jobs
from tests.support.paths import REPO

_ids = itertools.count(1)


def make_job(
    payload: Any = None, *, attempt: int = 1, timeout_s: float | None = None
) -> ClaimedJob:
    n = next(_ids)
    return ClaimedJob(
        job_id=f"job-{n}",
        lease_id=f"lease-{n}",
        kind="test",
        payload=payload,
        attempt=attempt,
        timeout_s=timeout_s,
        lease_expires_at="2030-01-01T00:00:00Z",
    )


# --- classify_failure ------------------------------------------------------------------


class HTTPRequestFailed(Exception):
    pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (JobTimeout("too slow"), FailureInfo("timeout", "too slow", True)),
        (PermanentError("no"), FailureInfo("permanent", "no", False)),
        (SimulatedFailure("x"), FailureInfo("simulated_failure", "x", True)),
        (JobError("plain"), FailureInfo("error", "plain", True)),
        (ValueError("bad"), FailureInfo("value_error", "bad", True)),
        (HTTPRequestFailed(), FailureInfo("http_request_failed", "HTTPRequestFailed", True)),
        (OSError("disk"), FailureInfo("os_error", "disk", True)),
        (ExceptionGroup("g", [PermanentError("inner")]), FailureInfo("permanent", "inner", False)),
    ],
)
def test_classify_failure(exc: BaseException, expected: FailureInfo) -> None:
    assert classify_failure(exc) == expected


def test_classify_failure_truncates_long_messages() -> None:
    info = classify_failure(RuntimeError("m" * 10_000))
    assert info.type == "runtime_error"
    assert len(info.message) == 2000


def test_exit_status_error_names_code_and_signal() -> None:
    assert "status 3" in str(ExitStatusError(3, "oops"))
    assert "SIGKILL" in str(ExitStatusError(-9, ""))
    assert classify_failure(ExitStatusError(3, "oops")).type == "exit_status"


# --- simulate ---------------------------------------------------------------------------


async def test_simulate_sleeps_on_trio_clock_and_is_deterministic(autojump_clock: Any) -> None:
    handler = SimulateHandler(2000, 0.0)
    start = trio.current_time()
    first = await handler(make_job({"b": 1, "a": [1, 2]}))
    assert trio.current_time() - start == pytest.approx(2.0)
    second = await handler(make_job({"a": [1, 2], "b": 1}))
    assert first == second == {"value": simulated_value({"a": [1, 2], "b": 1})}
    assert 0 <= first["value"] < 1000
    assert simulated_value(None) == simulated_value(None)


async def test_simulate_failure_rate_follows_its_rng(autojump_clock: Any) -> None:
    handler = SimulateHandler(0, 0.5, rng=random.Random(7))
    failures = 0
    for _ in range(400):
        try:
            await handler(make_job(None))
        except SimulatedFailure:
            failures += 1
    assert 140 < failures < 260
    always = SimulateHandler(0, 1.0)
    with pytest.raises(SimulatedFailure):
        await always(make_job({"x": 1}))


async def test_simulate_payload_steers_the_job(autojump_clock: Any) -> None:
    handler = SimulateHandler(2000, 0.0)
    start = trio.current_time()
    await handler(make_job({"duration_ms": 50}))
    assert trio.current_time() - start == pytest.approx(0.05)
    with pytest.raises(SimulatedFailure):
        await handler(make_job({"fail": True}))
    with pytest.raises(PermanentError):
        await handler(make_job({"permanent": True}))
    for attempt in (1, 2):
        with pytest.raises(SimulatedFailure):
            await handler(make_job({"fail_times": 2}, attempt=attempt))
    assert "value" in await handler(make_job({"fail_times": 2}, attempt=3))
    # fail_times wins over the failure rate: a fail_times job succeeds after K failures.
    flaky = SimulateHandler(0, 1.0)
    assert "value" in await flaky(make_job({"fail_times": 0}))


def test_simulate_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        SimulateHandler(0, 2.0)
    with pytest.raises(ValueError, match="duration_ms"):
        SimulateHandler(-1, 0.0)


# --- run_job ----------------------------------------------------------------------------


async def test_run_job_success_and_ack(autojump_clock: Any) -> None:
    job = make_job({"k": 1})
    outcome = await run_job(SimulateHandler(1500, 0.0), job, timeout=10)
    assert outcome == JobOutcome(
        job.lease_id, job.job_id, "succeeded", {"value": simulated_value({"k": 1})}, None, 1.5
    )
    assert outcome.to_ack() == Ack(
        lease_id=job.lease_id, outcome="succeeded", result=outcome.result
    )


async def test_run_job_timeout_is_a_retryable_failure(autojump_clock: Any) -> None:
    job = make_job({"duration_ms": 60_000})
    outcome = await run_job(SimulateHandler(0, 0.0), job, timeout=5)
    assert outcome.outcome == "failed"
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.retryable) == ("timeout", True)
    assert outcome.duration_s == pytest.approx(5)
    assert outcome.to_ack().error == outcome.error


async def test_run_job_prefers_the_jobs_own_timeout(autojump_clock: Any) -> None:
    job = make_job({"duration_ms": 60_000}, timeout_s=2)
    outcome = await run_job(SimulateHandler(0, 0.0), job, timeout=100)
    assert outcome.error is not None
    assert outcome.error.type == "timeout"
    assert outcome.duration_s == pytest.approx(2)


async def test_run_job_classifies_handler_errors(autojump_clock: Any) -> None:
    async def broken(job: ClaimedJob) -> Any:
        raise KeyError("missing")

    async def unjsonable(job: ClaimedJob) -> Any:
        return {1, 2}

    outcome = await run_job(broken, make_job(), timeout=1)
    assert outcome.error is not None
    assert outcome.error.type == "key_error"
    outcome = await run_job(unjsonable, make_job(), timeout=1)
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.retryable) == ("result_not_json", False)
    assert "not JSON-serializable" in outcome.error.message


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"x": float("nan")}, "Out of range float"),
        ([float("inf")], "Out of range float"),
        ({1, 2}, "not JSON serializable"),
        (object(), "not JSON serializable"),
        ("deep", "nested too deeply"),
    ],
    ids=["nan", "infinity", "set", "object", "deep"],
)
async def test_a_result_that_is_not_json_fails_its_job_for_good(
    result: Any, problem: str, autojump_clock: Any
) -> None:
    if result == "deep":
        result = []
        for _ in range(100_000):
            result = [result]

    async def handler(job: ClaimedJob) -> Any:
        return result

    outcome = await run_job(handler, make_job(), timeout=1, result_max_bytes=10**9)
    assert outcome.outcome == "failed" and outcome.result is None
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.retryable) == ("result_not_json", False)
    assert problem in outcome.error.message


async def test_a_result_over_the_limit_fails_its_job_before_it_is_acked(
    autojump_clock: Any,
) -> None:
    async def handler(job: ClaimedJob) -> Any:
        return {"blob": "x" * 2_000_000}

    outcome = await run_job(handler, make_job(), timeout=1, result_max_bytes=1024 * 1024)
    ack = outcome.to_ack()
    assert (ack.outcome, ack.result) == ("failed", None)
    assert ack.error is not None
    assert (ack.error.type, ack.error.retryable) == ("result_too_large", False)
    assert (
        "2000011 bytes" in ack.error.message and "BOT_RESULT_MAX_BYTES=1048576" in ack.error.message
    )
    assert len(codec.dumps(ack)) < 1000  # the ack carries only the small error


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
        max_leaves=20,
    ),
    st.integers(0, 400),
)
def test_check_result_measures_what_the_ack_sends(result: Any, limit: int) -> None:
    """A result passes exactly when its bytes in the ack's body fit the limit."""
    plain, failure, size = check_result(result, limit)
    body = codec.dumps(Ack(lease_id="l", outcome="succeeded", result=result))
    in_ack = len(body) - len(codec.dumps(Ack(lease_id="l", outcome="succeeded", result=0))) + 1
    if in_ack <= limit:
        assert (plain, failure, size) == (result, None, in_ack)
    else:
        assert plain is None and failure is not None and failure.type == "result_too_large"


@pytest.mark.parametrize("timeout_s", [-5.0, 0.0, float("nan"), float("inf"), float("-inf")])
async def test_a_job_with_an_unusable_timeout_fails_without_running(
    timeout_s: float, autojump_clock: Any
) -> None:
    ran = False

    async def handler(job: ClaimedJob) -> Any:
        nonlocal ran
        ran = True

    outcome = await run_job(handler, make_job(timeout_s=timeout_s), timeout=5)
    assert not ran
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.retryable) == ("invalid_job", False)
    assert "timeout_s" in outcome.error.message and repr(timeout_s) in outcome.error.message


async def test_run_job_lets_outer_cancellation_through(autojump_clock: Any) -> None:
    reached_end = False
    with trio.move_on_after(1) as outer:
        await run_job(SimulateHandler(0, 0.0), make_job({"duration_ms": 60_000}), timeout=10)
        reached_end = True
    assert outer.cancelled_caught
    assert not reached_end


def test_cancelled_outcome() -> None:
    job = make_job()
    outcome = JobOutcome.failed(job, cancelled_failure(), duration_s=0.5)
    ack = outcome.to_ack()
    assert ack.outcome == "failed"
    assert ack.error is not None
    assert ack.error.type == "cancelled"


# --- python -----------------------------------------------------------------------------


@pytest.fixture
def importable_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))


async def test_python_handler_calls_the_function(importable_tests: None) -> None:
    handler = PythonHandler("tests.support.jobs:echo")
    job = make_job({"n": 3}, attempt=2)
    assert await handler(job) == {"payload": {"n": 3}, "attempt": 2, "job_id": job.job_id}
    with pytest.raises(PermanentError, match="cannot succeed"):
        await PythonHandler("tests.support.jobs:permanent")(job)
    outcome = await run_job(PythonHandler("tests.support.jobs:not_json"), job, timeout=5)
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.retryable) == ("result_not_json", False)
    outcome = await run_job(PythonHandler("tests.support.jobs:boom"), job, timeout=5)
    assert outcome.error == FailureInfo("value_error", "boom", True)


async def test_python_handler_times_out(importable_tests: None, autojump_clock: Any) -> None:
    outcome = await run_job(PythonHandler("tests.support.jobs:slow"), make_job(), timeout=30)
    assert outcome.error is not None
    assert outcome.error.type == "timeout"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("tests.support.jobs", "module:function"),
        (":echo", "module:function"),
        ("no_such_module_xyz:run", "cannot import"),
        ("tests.support.jobs:missing", "has no"),
        ("tests.support.jobs:NOT_CALLABLE", "not callable"),
        ("tests.support.jobs:not_async", "not an async function"),
    ],
)
def test_python_handler_bad_spec(importable_tests: None, spec: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        PythonHandler(spec)
    message = str(info.value)
    assert "BOT_PYTHON_HANDLER" in message
    assert problem in message
    assert "set it to" in message


def test_the_simulate_handler_takes_only_simulate_jobs_the_others_every_kind(
    importable_tests: None,
) -> None:
    assert kinds_of(SimulateHandler(0, 0.0)) == ("simulate",)
    assert kinds_of(build_handler("simulate")) == ("simulate",)
    assert kinds_of(build_handler("exec", exec_command=[sys.executable, "-V"])) is None
    assert kinds_of(PythonHandler("tests.support.jobs:echo")) is None


def test_build_handler() -> None:
    assert isinstance(build_handler("simulate"), SimulateHandler)
    assert isinstance(build_handler("exec", exec_command=[sys.executable, "-V"]), ExecHandler)
    with pytest.raises(ConfigError, match="BOT_HANDLER"):
        build_handler("shell")
    with pytest.raises(ConfigError, match="BOT_EXEC_COMMAND"):
        build_handler("exec", exec_command=[])
    with pytest.raises(ConfigError, match="BOT_EXEC_COMMAND"):
        build_handler("exec", exec_command=["/no/such/program-xyz"])


# --- exec (real processes, real time) ---------------------------------------------------


def script(mode: str, **kwargs: Any) -> ExecHandler:
    return ExecHandler([sys.executable, str(jobs.SCRIPT), mode], **kwargs)


_markers = itertools.count()


def marker() -> str:
    """A unique argument for ``sleep``: it still sleeps ~1000 s, and /proc shows who it is."""
    return f"1000.{os.getpid()}{next(_markers):04d}"


async def wait_for_file(path: Path) -> dict[str, Any]:
    with trio.fail_after(30):
        while not path.exists():
            await trio.sleep(0.01)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def assert_nothing_left(pgid: int, mark: str) -> None:
    assert jobs.live_group_members(pgid) == []
    assert jobs.live_with_arg(mark) == []


async def test_exec_result_is_the_last_json_line() -> None:
    job = make_job({"n": [1, 2]}, attempt=2)
    result = await script("json")(job)
    assert result == {
        "payload": {"n": [1, 2]},
        "env": {"BOTD_JOB_ID": job.job_id, "BOTD_LEASE_ID": job.lease_id, "BOTD_ATTEMPT": "2"},
        "lease_id": job.lease_id,
    }


async def test_exec_plain_output_is_the_result() -> None:
    assert await script("plain")(make_job()) == "hello\nworld\n"


async def test_exec_output_is_capped() -> None:
    result = await script("big")(make_job())
    assert isinstance(result, str)
    assert len(result) == DEFAULT_OUTPUT_CAP
    assert set(result) == {"x"}


async def test_exec_nonzero_exit_is_a_retryable_failure_with_stderr_tail() -> None:
    with pytest.raises(ExitStatusError) as info:
        await script("fail")(make_job())
    err = info.value
    assert err.returncode == 3
    assert err.stderr_tail.endswith("the last words\n")
    assert len(err.stderr_tail) <= 2048
    failure = classify_failure(err)
    assert (failure.type, failure.retryable) == ("exit_status", True)
    assert "status 3" in failure.message


async def test_exec_shell_mode_and_env() -> None:
    handler = ExecHandler(["echo", "$BOTD_ATTEMPT", "|", "tr", "7", "8"], shell=True)
    assert await handler(make_job(attempt=7)) == 8


async def test_exec_cancel_sends_sigterm_then_sigkill_and_leaves_nothing(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    mark = marker()
    handler = script("stubborn", kill_grace=0.5)
    info: dict[str, Any] = {}
    cancelled_at = 0.0
    async with trio.open_nursery() as nursery:

        async def run_it() -> None:
            with trio.CancelScope() as scope:
                scopes.append(scope)
                await handler(make_job({"pidfile": str(pidfile), "marker": mark}))
            assert scope.cancelled_caught

        scopes: list[trio.CancelScope] = []
        nursery.start_soon(run_it)
        info.update(await wait_for_file(pidfile))
        assert len(jobs.live_group_members(info["pgid"])) == 3  # the script and two sleeps
        assert info["pgid"] == info["pid"]  # its own group
        assert info["pgid"] != os.getpgid(0)
        cancelled_at = trio.current_time()
        scopes[0].cancel()
    elapsed = trio.current_time() - cancelled_at
    assert 0.5 <= elapsed < 10
    assert (tmp_path / "pids.json.term").read_text() == "TERM\n"
    assert_nothing_left(info["pgid"], mark)


async def test_exec_cancel_of_a_polite_child_does_not_wait_for_the_grace(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    mark = marker()
    handler = script("polite", kill_grace=60)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handler, make_job({"pidfile": str(pidfile), "marker": mark}))
            info = await wait_for_file(pidfile)
            started = trio.current_time()
            scope.cancel()
    assert trio.current_time() - started < 10
    assert_nothing_left(info["pgid"], mark)


async def test_exec_timeout_via_run_job_leaves_nothing(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    mark = marker()
    job = make_job({"pidfile": str(pidfile), "marker": mark})
    outcome = await run_job(script("stubborn", kill_grace=0.2), job, timeout=1.5)
    assert outcome.error is not None
    assert (outcome.error.type, outcome.error.retryable) == ("timeout", True)
    info = await wait_for_file(pidfile)
    assert_nothing_left(info["pgid"], mark)


async def test_exec_stops_what_the_command_left_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids.json"
    mark = marker()
    with trio.fail_after(20):
        result = await script("leave-behind", kill_grace=5)(
            make_job({"pidfile": str(pidfile), "marker": mark})
        )
    assert result == {"left": 2}
    info = await wait_for_file(pidfile)
    assert_nothing_left(info["pgid"], mark)


def test_reap_leftover_groups_kills_only_the_recorded_jobs(tmp_path: Path) -> None:
    """What a SIGKILLed bot's exec jobs left: killed when the record's lease matches."""
    import subprocess

    from botd.handlers import reap_leftover_groups

    def orphan(lease: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "BOTD_LEASE_ID": lease}
        return subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)

    groups = tmp_path / "exec-groups"
    groups.mkdir()
    mine, reused = orphan("lease-1"), orphan("lease-other")
    try:
        (groups / str(mine.pid)).write_text("lease-1")
        (groups / str(reused.pid)).write_text("lease-2")  # the pgid was reused by another job
        (groups / "garbage").write_text("x")
        assert reap_leftover_groups(groups) == 1
        assert mine.wait(timeout=10) == -signal.SIGKILL
        assert reused.poll() is None
        assert list(groups.iterdir()) == []
        assert reap_leftover_groups(tmp_path / "fresh") == 0
    finally:
        for proc in (mine, reused):
            proc.kill()
            proc.wait()


# --- the exec contract, as docs/operations.md writes it --------------------------------------

DUMP = r"""
import json, os, sys
line = sys.stdin.readline()
rest = sys.stdin.read()
env = {k: v for k, v in os.environ.items() if k.startswith("BOTD_")}
print(json.dumps({"stdin": json.loads(line), "rest": rest, "env": env}))
"""


def contract_table(header: str) -> str:
    doc = (REPO / "docs" / "operations.md").read_text()
    section = doc.split("## The exec handler's contract", 1)[1].split("\n## ", 1)[0]
    return section.split(f"| {header} |", 1)[1].split("\n\n", 1)[0]


def documented_names(header: str) -> list[str]:
    return re.findall(r"^\| `(\w+)` \|", contract_table(header), re.MULTILINE)


async def test_exec_gets_the_documented_stdin_fields_and_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("BOTD_")]:
        monkeypatch.delenv(name)  # only what the handler adds
    dump = tmp_path / "dump.py"
    dump.write_text(DUMP)
    job = make_job({"n": [1, 2]}, attempt=3, timeout_s=12.5)
    got = await ExecHandler([sys.executable, "-I", str(dump)])(job)
    assert sorted(got["stdin"]) == sorted(documented_names("stdin field"))
    assert got["stdin"] == json.loads(codec.dumps(job))  # the job itself, field for field
    assert got["rest"] == ""  # one line, then end of file
    assert sorted(got["env"]) == sorted(documented_names("variable"))
    assert got["env"] == {
        "BOTD_JOB_ID": job.job_id,
        "BOTD_LEASE_ID": job.lease_id,
        "BOTD_ATTEMPT": "3",
    }


def test_exec_documented_outcomes_and_caps_are_the_handlers() -> None:
    outcomes = contract_table("the command ...")
    types = set(re.findall(r"\(`(\w+)`, (?:not )?retried\)", outcomes))
    assert types == {ExitStatusError.type, SpawnError.type, "timeout", "cancelled"}
    for exc_type, retried in [(ExitStatusError(1, ""), True), (SpawnError("x"), True)]:
        assert classify_failure(exc_type).retryable is retried
    assert cancelled_failure().retryable is False
    doc = (REPO / "docs" / "operations.md").read_text()
    assert f"{DEFAULT_OUTPUT_CAP // 1024} KiB" in doc and f"{STDERR_TAIL // 1024} KiB" in doc
