"""contrib/supervisord under a real supervisord (issue 6): 2 bots against ``botd server``.

supervisord runs ``botd.conf`` and ``reference-server.conf`` as shipped, except for what a
test machine needs: the paths point into the test's temp dir (through the ``BOTD_*``
variables the files read), and the ports are free ones (the server's 3001 and the bots' ops
ports 9300/9301 are rewritten; :func:`derive` fails if the text it rewrites is gone). Stop
timeouts, restart policy and logging are the contrib values. The fast bot settings
(heartbeat, retries) come from supervisord's environment, which the bots inherit.

- stop: ``supervisorctl stop botd:*`` with jobs running -> they finish, each bot exits 0
  (STOPPED, exit status 0, no SIGKILL), the queued rest waits on the server, and after
  ``supervisorctl start botd:*`` every job has succeeded exactly once;
- SIGKILL of one bot -> supervisord restarts it, it registers again (a new session), the
  orphaned exec job is reaped and the job succeeds;
- bad config -> every start exits 78 and the bots go FATAL after ``startretries`` within
  seconds;
- every line in the captured stdout files is a JSON object; the stderr files are empty
  (except for the bad-config summary, see that test).

Real time, short intervals, generous deadlines; the ``supervisor`` fixture shuts supervisord
down and kills whatever it started, even when a test fails, and then checks nothing is left.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from supervisor.xmlrpc import SupervisorTransport

from tests.support.paths import REPO
from tests.support.procs import (
    Execution,
    bot_env,
    bot_state,
    exec_command,
    free_ports,
    live_with_env,
    live_with_marker,
    ops_json,
    read_executions,
    server_up,
    wait_for,
)

pytestmark = pytest.mark.slow

CONTRIB = REPO / "contrib" / "supervisord"
BOTS_CONF = CONTRIB / "botd.conf"
SERVER_CONF = CONTRIB / "reference-server.conf"
BIN = Path(sys.executable).parent
BOTD_BIN = BIN / "botd"
BOTS = ("botd-00", "botd-01")
TOKEN = "sv-" + os.urandom(12).hex()
#: What the contrib files set per program; the tests do not pass these from outside.
PROGRAM_SET = ("BOT_ID", "BOT_OPS_ADDR", "BOT_STATE_DIR", "BOT_SHUTDOWN_TIMEOUT", "BOT_LOG_FORMAT")


def _tool(name: str) -> list[str]:
    """supervisord/supervisorctl of this interpreter: the script, or ``python -m``."""
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", f"supervisor.{name}"]


def derive(path: Path, replace: dict[str, str]) -> str:
    """The text of a contrib file with each key replaced (each must occur exactly once)."""
    text = path.read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, f"{path.name}: expected {old!r} once; update this test"
        text = text.replace(old, new)
    return text


def free_ops_prefix() -> str:
    """A prefix P such that ports P00 and P01 are free (botd.conf: ``93%(process_num)02d``).

    Below the ephemeral range, so no client socket takes one meanwhile.
    """
    for _ in range(200):
        prefix = random.randrange(120, 320)
        try:
            for num in range(len(BOTS)):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", prefix * 100 + num))
        except OSError:
            continue
        return str(prefix)
    raise AssertionError("no free pair of ops ports")


@attrs.define
class Supervisor:
    """One supervisord in ``root``, with the contrib files (derived) included."""

    root: Path
    sock_dir: Path
    env: dict[str, str] = attrs.field(factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    server_port: int = 0
    ops_prefix: str = ""

    @property
    def conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def state_root(self) -> Path:
        return self.root / "state"

    @property
    def marker(self) -> str:
        """An environment entry that every process this supervisord started inherits."""
        return f"BOTD_STATE_ROOT={self.state_root}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def ops_port(self, bot: str) -> int:
        return int(self.ops_prefix) * 100 + BOTS.index(bot)

    def write(self, *, server: bool) -> None:
        """The main config, the derived contrib files, and the ``BOTD_*`` environment.

        The caller adds the rest of supervisord's environment to :attr:`env` before
        :meth:`start`.
        """
        self.log_dir.mkdir()
        self.state_root.mkdir()
        conf_d = self.root / "conf.d"
        conf_d.mkdir()
        (self.server_port,) = free_ports(1)
        self.ops_prefix = free_ops_prefix()
        includes = [conf_d / "botd.conf"]
        ops = f"127.0.0.1:{self.ops_prefix}%(process_num)02d"
        includes[0].write_text(derive(BOTS_CONF, {"127.0.0.1:93%(process_num)02d": ops}))
        if server:
            includes.append(conf_d / "reference-server.conf")
            includes[1].write_text(
                derive(SERVER_CONF, {"--port 3001": f"--port {self.server_port}"})
            )
        sock = self.sock_dir / "s.sock"
        self.conf.write_text(
            f"[unix_http_server]\nfile={sock}\n\n"
            f"[supervisord]\nlogfile={self.log_dir / 'supervisord.log'}\n"
            f"pidfile={self.root / 'supervisord.pid'}\nchildlogdir={self.log_dir}\n"
            "loglevel=info\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{sock}\n\n"
            f"[include]\nfiles = {' '.join(str(p) for p in includes)}\n"
        )
        self.env = {
            "BOTD_BIN": str(BOTD_BIN),
            "BOTD_STATE_ROOT": str(self.state_root),
            "BOTD_LOG_DIR": str(self.log_dir),
        }

    def start(self) -> None:
        with (self.root / "supervisord.out").open("ab") as out:
            self.popen = subprocess.Popen(
                [*_tool("supervisord"), "-n", "-c", str(self.conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        wait_for("supervisord to answer", lambda: self._answers() or None)

    def _answers(self) -> bool:
        self._check_alive()
        try:
            return str(self.rpc().supervisor.getState()["statename"]) == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def _check_alive(self) -> None:
        assert self.popen is not None
        if self.popen.poll() is not None:
            pytest.fail(f"supervisord exited with {self.popen.returncode}\n{self.tail()}")

    def rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.sock_dir / 's.sock'}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport)

    def ctl(self, *args: str, timeout: float = 90.0) -> str:
        """Run ``supervisorctl ARGS``; its output (fails the test on a non-zero exit)."""
        done = subprocess.run(
            [*_tool("supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"supervisorctl {' '.join(args)}: {out}\n{self.tail()}"
        return out

    def info(self, name: str) -> dict[str, Any]:
        return dict(self.rpc().supervisor.getProcessInfo(name))

    def wait_state(self, name: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self._check_alive()
            got = self.info(name)
            return got if got["statename"] in states else None

        return wait_for(f"{name} in {'/'.join(states)}", check, timeout=timeout)

    def wait_ready(self, *bots: str, timeout: float = 30.0) -> None:
        for bot in bots:

            def ready(bot: str = bot) -> bool | None:
                self._check_alive()
                return bot_state(self.ops_port(bot)) in ("ready", "processing") or None

            wait_for(f"{bot} to be ready", ready, timeout=timeout)

    def log(self) -> str:
        path = self.log_dir / "supervisord.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stdout_of(self, program: str) -> Path:
        return self.log_dir / f"{program}.log"

    def tail(self, chars: int = 4000) -> str:
        parts = [f"--- supervisord.log:\n{self.log()[-chars:]}"]
        for path in sorted(self.log_dir.glob("botd*.log")):
            parts.append(f"--- {path.name}:\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def close(self) -> list[int]:
        """``supervisorctl shutdown`` and wait; then kill whatever is still running.

        Returns the pids that outlived supervisord and had to be killed here.
        """
        if self.popen is None:
            return []
        if self.popen.poll() is None:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.ctl("shutdown", timeout=10)
            try:
                self.popen.wait(timeout=90)  # the bots' stopwaitsecs (45 s) at worst
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        left = live_with_env(self.marker)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return left


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    assert BOTD_BIN.exists(), f"{BOTD_BIN}: install botd into this environment (pip install -e .)"
    # A unix socket path must stay under ~100 bytes; tmp_path may be longer.
    sock_dir = Path(tempfile.mkdtemp(prefix="botd-sv-"))
    owner = Supervisor(tmp_path, sock_dir)
    try:
        yield owner
    finally:
        left = owner.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert not left, f"processes outlived supervisord (killed now): {left}"


def bots_env(url: str, **extra: str) -> dict[str, str]:
    """supervisord's environment: fast bot settings, minus what the contrib file sets."""
    env = bot_env("unused", url, None, None, **extra)
    for key in PROGRAM_SET:
        env.pop(key, None)
    return env


def with_token(env: dict[str, str], root: Path) -> dict[str, str]:
    """reference-server.conf: BOTD_SERVER_TOKEN for the server, BOT_TOKEN_FILE for the bots."""
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    return {**env, "BOTD_SERVER_TOKEN": TOKEN, "BOT_TOKEN_FILE": str(token_file)}


def api() -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5.0)


def start_fleet(sv: Supervisor, tmp_path: Path, **extra: str) -> tuple[str, Path]:
    """supervisord with the server and 2 exec bots; waits until all are up. (exec cmd, log)."""
    cmd, log = exec_command(tmp_path)
    sv.write(server=True)
    env = bots_env(sv.url, BOT_HANDLER="exec", BOT_EXEC_COMMAND=cmd, **extra)
    sv.env.update(with_token(env, tmp_path))
    sv.start()
    wait_for("the server to answer", lambda: server_up(sv.url))
    sv.wait_ready(*BOTS)
    return cmd, log


def submit(client: httpx.Client, url: str, payload: Any) -> str:
    spec = {"kind": "test", "payload": payload, "max_attempts": 3}
    resp = client.post(f"{url}/v1/jobs", json=spec)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["job_id"])


def job(client: httpx.Client, url: str, job_id: str) -> dict[str, Any]:
    resp = client.get(f"{url}/v1/jobs/{job_id}")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def all_succeeded(client: httpx.Client, url: str, ids: list[str]) -> list[dict[str, Any]] | None:
    views = [job(client, url, i) for i in ids]
    return views if all(v["status"] == "succeeded" for v in views) else None


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a captured stdout file, parsed; fails on a line that is not a JSON object."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
        assert isinstance(record, dict), f"{path.name}:{number} is not an object: {line!r}"
        records.append(record)
    return records


def check_captured_logs(sv: Supervisor, *programs: str) -> dict[str, list[dict[str, Any]]]:
    """Each program's stdout file: non-empty, JSON objects only, no token; stderr empty."""
    found = {}
    for program in programs:
        out, err = sv.stdout_of(program), sv.log_dir / f"{program}.stderr.log"
        records = json_lines(out)
        assert records, f"{out.name} is empty"
        for record in records:
            assert {"time", "level", "msg", "logger", "bot_id", "state"} <= record.keys(), record
        assert TOKEN not in out.read_text(), f"the token is in {out.name}"
        assert err.read_text() == "", f"{err.name}: {err.read_text()!r}"
        found[program] = records
    return found


def contrib_program_value(key: str, env_key: str | None = None) -> str:
    """A value of ``[program:botd]`` in botd.conf as written (``env_key``: in environment=)."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=None)
    parser.read_string(BOTS_CONF.read_text())
    value = parser["program:botd"][key]
    if env_key is None:
        return value
    found = re.search(rf'\b{env_key}="([^"]*)"', value)
    assert found, f"botd.conf: no {env_key} in {key}"
    return found.group(1)


def events(records: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == event]


# --- stop drains ---------------------------------------------------------------------------


def test_stop_drains_running_jobs_and_exits_0(tmp_path: Path, supervisor: Supervisor) -> None:
    sv = supervisor
    _, log = start_fleet(sv, tmp_path, BOT_CONCURRENCY="2")
    with api() as client:
        ids = [submit(client, sv.url, {"sleep_ms": 1500}) for _ in range(6)]

        def four_running() -> list[Execution] | None:
            running = [e for e in read_executions(log) if e.outcome is None]
            return running if len(running) == 4 else None

        running = wait_for("4 jobs running (2 per bot)", four_running)
        assert {e.bot_id for e in running} == set(BOTS)
        drain_s = float(contrib_program_value("environment", "BOT_SHUTDOWN_TIMEOUT"))
        for bot in BOTS:  # the contrib file's drain time is the one in effect
            status = ops_json(sv.ops_port(bot), "/status")
            assert status is not None and status[1]["config"]["shutdown_timeout"] == drain_s

        began = time.monotonic()
        out = sv.ctl("stop", "botd:*")
        took = time.monotonic() - began
        for bot in BOTS:
            assert f"botd:{bot}: stopped" in out, out
            info = sv.info(f"botd:{bot}")
            # A requested stop that ended with exit 0: STOPPED (not EXITED, which is an exit
            # nobody asked for, and not killed by a signal).
            assert (info["statename"], info["exitstatus"]) == ("STOPPED", 0), info
        assert took < 15, f"the drain took {took:.1f}s"
        log_text = sv.log()
        assert "SIGKILL" not in log_text, log_text
        for bot in BOTS:
            assert f"stopped: {bot} (exit status 0)" in log_text, log_text

        # The jobs that were running finished during the drain, on their first attempt.
        executions = read_executions(log)
        assert len(executions) == 4, executions
        assert all(e.outcome == "succeeded" for e in executions), executions
        drained = {e.job_id for e in executions}
        for job_id in ids:
            view = job(client, sv.url, job_id)
            if job_id in drained:
                assert (view["status"], view["attempts"]) == ("succeeded", 1), view
            else:
                assert view["status"] == "queued", view  # not claimed after the drain began
        for bot in BOTS:
            info = client.get(f"{sv.url}/v1/bots/{bot}").json()
            assert info["status"] == "deregistered", info

        sv.ctl("start", "botd:*")
        views = wait_for("all 6 jobs succeeded", lambda: all_succeeded(client, sv.url, ids))
        stats = client.get(f"{sv.url}/v1/stats").json()
        assert stats["jobs"]["succeeded"] == 6, stats

    executions = read_executions(log)
    assert len(executions) == 6, executions  # nothing ran twice
    assert all(e.outcome == "succeeded" for e in executions), executions
    by_nonce = {e.nonce: e for e in executions}
    assert sorted(by_nonce[v["result"]["nonce"]].job_id for v in views) == sorted(ids)
    records = check_captured_logs(sv, *BOTS)
    for bot in BOTS:
        first_run_end = events(records[bot], "shutdown_complete")[0]
        assert first_run_end["exit_code"] == 0, first_run_end
        assert events(records[bot], "deregistered"), bot


# --- SIGKILL -> restart ----------------------------------------------------------------------


def test_sigkilled_bot_is_restarted_and_its_job_completes(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    sv = supervisor
    _, log = start_fleet(sv, tmp_path, BOT_CONCURRENCY="1")
    script = str(tmp_path / "exec_job.py")
    for bot in BOTS:  # past startsecs: a death now is an unexpected exit, not a failed start
        sv.wait_state(f"botd:{bot}", "RUNNING")
    with api() as client:
        job_id = submit(client, sv.url, {"sleep_ms": 3000})
        (first,) = wait_for("the job to start", lambda: read_executions(log) or None)
        victim = first.bot_id
        other = next(b for b in BOTS if b != victim)
        before = sv.info(f"botd:{victim}")
        assert before["statename"] == "RUNNING", before
        assert before["pid"] == first.bot_pid  # the exec script's parent is the bot itself
        other_pid = sv.info(f"botd:{other}")["pid"]
        session = client.get(f"{sv.url}/v1/bots/{victim}").json()["session_id"]

        def restarted() -> dict[str, Any] | None:
            info = sv.info(f"botd:{victim}")
            return info if info["pid"] not in (0, before["pid"]) else None

        def registered_again() -> dict[str, Any] | None:
            bot = dict(client.get(f"{sv.url}/v1/bots/{victim}").json())
            return bot if bot["session_id"] != session and bot["status"] == "active" else None

        os.kill(before["pid"], signal.SIGKILL)
        after = wait_for(f"supervisord to restart {victim}", restarted)
        assert after["statename"] in ("STARTING", "RUNNING"), after
        wait_for(f"{victim} registered again", registered_again)
        (view,) = wait_for("the job to succeed", lambda: all_succeeded(client, sv.url, [job_id]))
        # The killed bot's lease ended when it registered again (an attempt spent); the job
        # ran again, and its result is that of the second run.
        assert view["attempts"] == 2, view
        result = next(e for e in read_executions(log) if e.nonce == view["result"]["nonce"])
        assert result.attempt == 2 and result.outcome == "succeeded", result
        assert result.bot_pid != before["pid"]
        assert sv.info(f"botd:{other}")["pid"] == other_pid  # the other bot was not touched
        # The first run was orphaned by the SIGKILL (it runs in a session of its own, out of
        # supervisord's reach); the restarted bot reaps it, unless it ended first.
        wait_for("no exec job left running", lambda: not live_with_marker(script) or None)
        orphan = next(e for e in read_executions(log) if e.nonce == first.nonce)

    log_text = sv.log()
    assert f"exited: {victim} (terminated by SIGKILL; not expected)" in log_text, log_text
    assert log_text.count(f"spawned: '{victim}'") == 2, log_text
    sv.wait_state(f"botd:{victim}", "RUNNING")
    records = check_captured_logs(sv, *BOTS)
    assert len(events(records[victim], "registered")) == 2
    if orphan.outcome is None:
        assert events(records[victim], "exec_leftovers_killed"), records[victim]


# --- bad config -> FATAL ---------------------------------------------------------------------


def test_bad_config_goes_fatal_in_seconds(tmp_path: Path, supervisor: Supervisor) -> None:
    sv = supervisor
    startsecs = int(contrib_program_value("startsecs"))
    startretries = int(contrib_program_value("startretries"))
    (nowhere,) = free_ports(1)  # no server: a bad config is found before any connection
    sv.write(server=False)
    sv.env.update(bots_env(f"http://127.0.0.1:{nowhere}", BOT_CONCURRENCY="abc"))

    # Each try exits 78 well inside startsecs (in about 1 s), so supervisord counts it as a failed
    # start, not as an unexpected exit to restart forever; its back-offs are 1, 2, ...
    # startretries seconds. So FATAL comes within this bound (in about 9-14 s on a busy
    # 2-core machine): seconds, not minutes.
    bound = sum(range(1, startretries + 1)) + (startretries + 1) * startsecs
    began = time.monotonic()
    sv.start()
    for bot in BOTS:
        sv.wait_state(f"botd:{bot}", "FATAL", timeout=bound)
    took = time.monotonic() - began
    assert took < bound, f"FATAL after {took:.1f}s"

    log_text = sv.log()
    for bot in BOTS:
        tries = log_text.count(f"exited: {bot} (exit status 78; not expected)")
        assert tries == startretries + 1, log_text
        assert f"gave up: {bot} entered FATAL state, too many start retries too quickly" in (
            log_text
        )
        records = json_lines(sv.stdout_of(bot))
        problems = events(records, "config_error")
        assert len(problems) == startretries + 1, records
        assert all("BOT_CONCURRENCY" in r["problem"] for r in problems), problems
        # The summary for people goes to a terminal only: what supervisord captures is JSON.
        assert (sv.log_dir / f"{bot}.stderr.log").read_text() == ""
    assert startsecs >= 2  # a 78 must come well inside startsecs to count as a failed start


# --- logs ------------------------------------------------------------------------------------


def test_every_captured_line_is_json(tmp_path: Path, supervisor: Supervisor) -> None:
    sv = supervisor
    _, log = start_fleet(sv, tmp_path, BOT_CONCURRENCY="2")
    with api() as client:
        ok = [submit(client, sv.url, {"sleep_ms": 100}) for _ in range(4)]
        flaky = submit(client, sv.url, {"sleep_ms": 50, "fail_times": 1})
        wait_for("the jobs to succeed", lambda: all_succeeded(client, sv.url, [*ok, flaky]))
    sv.ctl("shutdown")  # the bots' drain and the server's own shutdown lines too
    assert sv.popen is not None
    assert sv.popen.wait(timeout=60) == 0

    records = check_captured_logs(sv, *BOTS, "botd-server")
    for bot in BOTS:
        assert {r["bot_id"] for r in records[bot]} == {bot}
        (end,) = events(records[bot], "shutdown_complete")
        assert end["exit_code"] == 0, end
    every = [r for rs in records.values() for r in rs]
    assert events(every, "job_failed"), "the failing attempt is logged"
    assert len(events(every, "job_succeeded")) == 5
    server = records["botd-server"]
    assert {r["bot_id"] for r in events(server, "bot_registered")} == set(BOTS)
    assert events(server, "server_stopped"), server
    assert len(read_executions(log)) == 6
