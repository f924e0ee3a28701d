"""Nothing is lost, checked from outside (issue 4): real ``botd run`` and ``botd server``.

- (a) the server goes away; the bot finishes its jobs, keeps their results in the outbox, is
  SIGKILLed and restarted; when the server comes back every result arrives with attempt 1
  and no job ran twice (the ``exec`` script counts its executions);
- (b) an ``exec`` job that sleeps forever leaves no process behind when the server cancels it
  or when it times out; when its bot is SIGKILLed, the restarted bot stops what it left;
- (c) a corrupt state dir: exit 78, with a message that says where and what to do;
- (d) SIGTERM with a job in flight: exit 0, the job succeeded on attempt 1, the bot is
  deregistered; an idle bot exits within 2 s;
- (e) no server and MAX_STARTUP_ATTEMPTS=3: exit 69 within seconds; FAILURE_RATE=2: exit 78;
- (f) the server stops for 5 s and comes back on the same database: the bot recovers by
  itself and processes more jobs.

Real time with short intervals and generous deadlines; the ``procs`` fixture kills every
process a test started, even when it fails.
"""

from __future__ import annotations

import functools
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import (
    Proc,
    Procs,
    bot_env,
    bot_state,
    botd,
    exec_command,
    free_ports,
    live_with_marker,
    ops_json,
    read_executions,
    server_up,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def procs(procs: Procs, tmp_path: Path) -> Procs:
    """conftest's ``procs``, which also kills what the exec script left behind."""
    procs.markers.append(str(tmp_path / "exec_job.py"))
    return procs


def start_server(procs: Procs, port: int, db: Path, *, lease_ttl: float = 10.0) -> Proc:
    proc = procs.server("server", port, db, lease_ttl=lease_ttl, heartbeat=0.3)
    wait_for("the server to answer", lambda: server_up(f"http://127.0.0.1:{port}"), (proc,))
    return proc


def submit(url: str, payload: Any, **spec: Any) -> str:
    resp = httpx.post(f"{url}/v1/jobs", json={"kind": "test", "payload": payload, **spec})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["job_id"])


def job(url: str, job_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=5.0)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def job_in(url: str, job_id: str, *statuses: str) -> dict[str, Any] | None:
    try:
        view = job(url, job_id)
    except httpx.HTTPError:
        return None
    return view if view["status"] in statuses else None


def wait_ready(proc: Proc, ops_port: int, timeout: float = 20.0) -> None:
    wait_for(
        f"{proc.name} to be ready",
        lambda: True if bot_state(ops_port) in ("ready", "processing") else None,
        (proc,),
        timeout=timeout,
    )


def status_doc(ops_port: int) -> dict[str, Any] | None:
    got = ops_json(ops_port, "/status")
    return got[1] if got is not None else None


def count_succeeded(url: str) -> int | None:
    try:
        return int(httpx.get(f"{url}/v1/stats", timeout=2.0).json()["jobs"]["succeeded"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def gone(*markers: str) -> bool | None:
    """True when no live process has one of ``markers`` in its argv."""
    return not any(live_with_marker(m) for m in markers) or None


def _started(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot), or None when it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # from field 3, the state
    return None if fields[0] in "ZX" else fields[19]  # field 22, starttime


def processes_with(*markers: str) -> set[tuple[int, str]]:
    """(pid, start time) of the live processes that have one of ``markers`` in their argv."""
    found = {(pid, _started(pid)) for marker in markers for pid in live_with_marker(marker)}
    return {(pid, started) for pid, started in found if started is not None}


def ended(processes: set[tuple[int, str]]) -> bool | None:
    """True when none of ``processes`` (from :func:`processes_with`) is alive any more.

    A pid used again by a newer process does not count: its start time differs.
    """
    return not any(_started(pid) == started for pid, started in processes) or None


def botd_run(env: dict[str, str], timeout: float = 20.0) -> tuple[int, str, float]:
    """Run ``botd run`` to its end; (exit code, stdout + stderr, seconds)."""
    began = time.monotonic()
    done = botd(["run"], env, timeout)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - began


# --- (a) results survive an outage and a SIGKILL --------------------------------------------


def test_results_survive_server_outage_and_bot_sigkill(tmp_path: Path, procs: Procs) -> None:
    port, ops1, ops2 = free_ports(3)
    url, db, state = f"http://127.0.0.1:{port}", tmp_path / "server.db", tmp_path / "state"
    cmd, log = exec_command(tmp_path)
    server = start_server(procs, port, db)
    env = bot_env("keeper", url, state, ops1, BOT_HANDLER="exec", BOT_EXEC_COMMAND=cmd,
                  BOT_CONCURRENCY="4")  # fmt: skip
    bot = procs.bot("bot", env)
    wait_ready(bot, ops1)
    ids = [submit(url, {"sleep_ms": 1500}) for _ in range(4)]
    wait_for("4 jobs running", lambda: len(read_executions(log)) == 4 or None, (bot,))

    server.stop()  # the server is away while the jobs finish
    assert server.returncode == 0
    wait_for(
        "4 results kept in the outbox, nothing running",
        lambda: (
            lambda d: d if d and d["outbox_pending"] == 4 and not d["jobs_in_flight"] else None
        )(status_doc(ops1)),
        (bot,),
    )
    assert all(e.outcome == "succeeded" for e in read_executions(log))

    bot.kill()  # SIGKILL: the results are only in the outbox now
    bot = procs.bot("bot", {**env, "BOT_OPS_ADDR": f"127.0.0.1:{ops2}"})
    doc = wait_for("the restarted bot's status", lambda: status_doc(ops2), (bot,))
    assert doc["outbox_pending"] == 4

    start_server(procs, port, db)
    views = [
        wait_for("success", functools.partial(job_in, url, i, "succeeded"), (bot,)) for i in ids
    ]
    executions = read_executions(log)
    assert len(executions) == 4, executions  # nothing ran again
    by_nonce = {e.nonce: e for e in executions}
    for view in views:
        assert view["attempts"] == 1
        source = by_nonce[view["result"]["nonce"]]
        assert (source.job_id, source.attempt) == (view["job_id"], 1)
    wait_for(
        "the outbox to drain", lambda: (status_doc(ops2) or {}).get("outbox_pending") == 0 or None
    )
    assert bot.stop() == 0


# --- (b) no process left behind ----------------------------------------------------------


def test_cancelled_or_timed_out_exec_job_leaves_no_process(tmp_path: Path, procs: Procs) -> None:
    port, ops = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    cmd, log = exec_command(tmp_path)
    script = str(tmp_path / "exec_job.py")
    start_server(procs, port, tmp_path / "server.db")
    bot = procs.bot("bot", bot_env("reaper", url, tmp_path / "state", ops, BOT_HANDLER="exec",
                                   BOT_EXEC_COMMAND=cmd, BOT_CONCURRENCY="2"))  # fmt: skip
    wait_ready(bot, ops)

    def run_forever(**spec: Any) -> tuple[str, str]:
        marker = f"{3600 + random.random():.9f}"  # `sleep MARKER` grandchildren
        procs.markers.append(marker)
        job_id = submit(url, {"forever": True, "marker": marker}, **spec)
        wait_for("its grandchildren", lambda: len(live_with_marker(marker)) == 2 or None, (bot,))
        assert live_with_marker(script)
        return job_id, marker

    # Cancelled by the server: the heartbeat carries it; the whole group is stopped.
    job_id, marker = run_forever(max_attempts=3)
    resp = httpx.post(f"{url}/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 200, resp.text
    wait_for("no process left after the cancel", lambda: gone(marker, script), (bot,), timeout=10)
    assert job(url, job_id)["status"] == "cancelled"

    # Timed out (timeout_s): a failure of type timeout; the whole group is stopped.
    job_id, marker = run_forever(max_attempts=1, timeout_s=1.0)
    view = wait_for("the job to fail", lambda: job_in(url, job_id, "failed"), (bot,), timeout=15)
    assert view["error"]["type"] == "timeout"
    wait_for("no process left after the timeout", lambda: gone(marker, script), (bot,), timeout=10)
    assert len(read_executions(log)) == 2
    assert bot.stop() == 0


def test_restarted_bot_stops_what_a_sigkilled_run_left(tmp_path: Path, procs: Procs) -> None:
    port, ops1, ops2 = free_ports(3)
    url, state = f"http://127.0.0.1:{port}", tmp_path / "state"
    cmd, _log = exec_command(tmp_path)
    script = str(tmp_path / "exec_job.py")
    start_server(procs, port, tmp_path / "server.db")
    env = bot_env("phoenix", url, state, ops1, BOT_HANDLER="exec", BOT_EXEC_COMMAND=cmd)
    bot = procs.bot("bot", env)
    wait_ready(bot, ops1)
    marker = f"{3600 + random.random():.9f}"
    procs.markers.append(marker)
    submit(url, {"forever": True, "marker": marker})
    wait_for("its grandchildren", lambda: len(live_with_marker(marker)) == 2 or None, (bot,))

    bot.kill()  # SIGKILL (and reaped): the job's group lives on in its own session
    assert len(live_with_marker(marker)) == 2 and live_with_marker(script)
    # The restarted bot is given the job again and runs it anew, with the same argv: so the
    # orphans are these three processes (the script and its two sleeps), not that argv.
    orphans = processes_with(marker, script)
    assert len(orphans) == 3, orphans

    bot = procs.bot("bot", {**env, "BOT_OPS_ADDR": f"127.0.0.1:{ops2}"})
    # The deadline includes the restarted bot's start, which is slow on a busy machine.
    wait_for("the orphans to be stopped", lambda: ended(orphans), (bot,), timeout=30)
    # The event is written once the reaping returns, after the orphans died: wait for it.
    killed = wait_for(
        "exec_leftovers_killed", lambda: bot.events("exec_leftovers_killed") or None, (bot,)
    )
    assert killed and killed[0]["count"] == 3, killed
    assert bot.stop() == 0


# --- (c) a corrupt state dir ---------------------------------------------------------------


def test_corrupt_state_dir_exits_78(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(b"this is not a database\n" * 200)
    (port,) = free_ports(1)
    code, out, took = botd_run(bot_env("corrupt", f"http://127.0.0.1:{port}", state, None))
    assert code == 78, out
    assert str(state) in out, out
    assert "outbox.sqlite3" in out or "state dir" in out, out
    assert took < 10


# --- (d) SIGTERM --------------------------------------------------------------------------


def test_sigterm_finishes_the_job_in_flight_and_deregisters(tmp_path: Path, procs: Procs) -> None:
    port, ops = free_ports(2)
    url = f"http://127.0.0.1:{port}"
    cmd, log = exec_command(tmp_path)
    start_server(procs, port, tmp_path / "server.db")
    env = bot_env("drainer", url, tmp_path / "state", ops, BOT_HANDLER="exec",
                  BOT_EXEC_COMMAND=cmd)  # fmt: skip
    bot = procs.bot("bot", env)
    wait_ready(bot, ops)
    job_id = submit(url, {"sleep_ms": 1500})
    wait_for("the job to start", lambda: read_executions(log) or None, (bot,))
    bot.signal(signal.SIGTERM)
    assert bot.wait(timeout=15) == 0, bot.tail()
    view = job(url, job_id)
    assert (view["status"], view["attempts"]) == ("succeeded", 1), view
    assert len(read_executions(log)) == 1
    info = httpx.get(f"{url}/v1/bots/drainer").json()
    assert info["status"] == "deregistered", info
    assert bot.events("deregistered")

    # Idle: SIGTERM -> exit 0 within 2 s.
    idle = procs.bot("idle", {**env, "BOT_ID": "idler"})
    wait_ready(idle, ops)
    began = time.monotonic()
    idle.signal(signal.SIGTERM)
    assert idle.wait(timeout=10) == 0, idle.tail()
    assert time.monotonic() - began < 2.0


# --- (e) startup failures -------------------------------------------------------------------


def test_server_absent_exits_69_and_bad_failure_rate_exits_78(tmp_path: Path) -> None:
    (port,) = free_ports(1)  # nothing listens there
    env = bot_env("lonely", f"http://127.0.0.1:{port}", None, None,
                  MAX_STARTUP_ATTEMPTS="3", RETRY_BASE_DELAY="0.1")  # fmt: skip
    code, out, took = botd_run(env)
    assert code == 69, out
    assert took < 8, took
    assert "MAX_STARTUP_ATTEMPTS" in out

    code, out, took = botd_run({**env, "FAILURE_RATE": "2"})
    assert code == 78, out
    assert "FAILURE_RATE" in out
    assert took < 8


# --- (f) recovery after a server outage -------------------------------------------------


def test_bot_recovers_by_itself_after_server_restart(tmp_path: Path, procs: Procs) -> None:
    port, ops = free_ports(2)
    url, db = f"http://127.0.0.1:{port}", tmp_path / "server.db"
    server = start_server(procs, port, db)
    bot = procs.bot("bot", bot_env("phoenix", url, tmp_path / "state", ops,
                                   PROCESSING_DURATION_MS="20", BOT_CONCURRENCY="4"))  # fmt: skip
    wait_ready(bot, ops)
    for _ in range(20):
        submit(url, None, kind="simulate")
    wait_for("20 jobs succeeded", lambda: count_succeeded(url) == 20 or None, (bot,))

    server.stop()
    wait_for("the bot to notice", lambda: bot_state(ops) not in ("ready", "processing") or None,
             (bot,), timeout=15)  # fmt: skip
    time.sleep(5.0)  # the outage itself: 5 s without a server
    assert bot.alive()
    start_server(procs, port, db)
    wait_ready(bot, ops, timeout=20)
    for _ in range(10):
        submit(url, None, kind="simulate")
    wait_for("10 more succeeded", lambda: count_succeeded(url) == 30 or None, (bot,))
    states = [r["to_state"] for r in bot.events("state_transition")]
    assert "error" in states, states
    assert bot.stop() == 0
