"""Secrets and files, from outside: real ``botd`` processes.

- an exec job's environment holds no ``*_TOKEN`` / ``*_TOKEN_FILE`` variable;
- a symlinked ``<state>/lock`` leaves its target untouched (exit 78), a world-writable state
  dir is refused (exit 78), the files botd creates there are 0600;
- a token file others may read gets a WARNING naming it; one holding garbage is exit 78 and
  its content is never printed;
- every ``--token`` flag warns that it shows in ``ps``;
- ``botd server`` beyond loopback without a token warns once at start; with one (from
  ``BOTD_SERVER_TOKEN`` or a ``--tokens-file``) it does not.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import BOTD, Procs, bot_env, botd, clean_env, server_up, wait_for
from tests.support.server import free_port

pytestmark = pytest.mark.slow

TOKEN = "the-real-s3cret-token"
DEAD_URL = "http://127.0.0.1:1"  # nothing listens there: the bot gives up fast (exit 69)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with Procs(tmp_path, grace=5.0) as running:
        yield running


def _run_bot(env: dict[str, str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOTD, "run"], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")]


def test_an_exec_job_gets_no_token_variable(tmp_path: Path, procs: Procs) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = procs.server("server", port, tmp_path / "jobs.db",
                          env=clean_env({"BOTD_SERVER_TOKEN": TOKEN}))  # fmt: skip
    wait_for("the server", lambda: server_up(url), (server,))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    dump = "import json, os, sys; sys.stdin.read(); print(json.dumps(dict(os.environ)))"
    env = bot_env("exec-bot", url, tmp_path / "state", None, BOT_TOKEN_FILE=str(token_file),
                  BOT_HANDLER="exec", BOT_KINDS="envdump",
                  BOT_EXEC_COMMAND=f"{sys.executable} -c '{dump}'",
                  BOTD_TOKEN=TOKEN, BOTD_SERVER_TOKEN=TOKEN, GITHUB_TOKEN=TOKEN,
                  npm_token=TOKEN, BOTD_TOKEN_FILE=str(token_file))  # fmt: skip
    procs.bot("bot", env)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers, timeout=5.0) as client:
        job_id = client.post("/v1/jobs", json={"kind": "envdump"}).json()["job_id"]

        def done() -> dict[str, Any] | None:
            view: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            return view if view["status"] in ("succeeded", "failed", "dead") else None

        view = wait_for("the exec job", done, tuple(procs.all), timeout=30.0)
    assert view["status"] == "succeeded", view
    seen: dict[str, str] = view["result"]
    assert seen["BOTD_JOB_ID"] == job_id  # it is the job's environment
    leaked = [k for k in seen if k.upper().endswith(("_TOKEN", "_TOKEN_FILE"))]
    assert leaked == []
    assert TOKEN not in json.dumps(seen)
    assert str(token_file) not in json.dumps(seen)


def test_a_symlinked_lock_leaves_its_target_untouched(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me\n")
    (state / "lock").symlink_to(precious)
    done = _run_bot(bot_env("lock-bot", DEAD_URL, state, None))
    assert done.returncode == 78, done.stdout + done.stderr
    assert precious.read_text() == "do not truncate me\n"
    assert "is a symlink" in done.stdout


def test_a_world_writable_state_dir_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "shared"
    state.mkdir()
    state.chmod(0o1777)  # even with the sticky bit
    done = _run_bot(bot_env("ww-bot", DEAD_URL, state, None))
    assert done.returncode == 78, done.stdout + done.stderr
    assert f"state dir {state} (BOT_STATE_DIR) is writable by every user" in done.stdout
    assert list(state.iterdir()) == []  # nothing was created in it


def test_state_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    _run_bot(bot_env("private-bot", DEAD_URL, state, None, MAX_STARTUP_ATTEMPTS="1"))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    made = [p for p in state.iterdir() if p.is_file()]
    assert {p.name for p in made} >= {"lock", "outbox.sqlite3"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        p.name: "0o600" for p in made
    }


def test_a_token_file_others_may_read_gets_a_warning(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    env = bot_env("loose-bot", DEAD_URL, None, None, BOT_TOKEN_FILE=str(token_file),
                  MAX_STARTUP_ATTEMPTS="1")  # fmt: skip
    done = _run_bot(env)
    warned = [x for x in _lines(done.stdout) if x.get("event") == "token_exposed"]
    assert len(warned) == 1 and warned[0]["level"] == "WARNING"
    assert warned[0]["file"] == str(token_file)
    assert f"chmod 600 {token_file}" in warned[0]["msg"]
    assert TOKEN not in done.stdout + done.stderr

    checked = botd(["check-config"], env)
    assert checked.returncode == 0
    assert f"chmod 600 {token_file}" in checked.stderr


def test_a_token_file_of_garbage_is_never_printed(tmp_path: Path) -> None:
    garbage = tmp_path / "token"
    garbage.write_text("GARBAGE-LINE-ONE secret\nGARBAGE-LINE-TWO\n")
    garbage.chmod(0o600)
    env = bot_env("garbage-bot", DEAD_URL, None, None, BOT_TOKEN_FILE=str(garbage),
                  BOT_LOG_FORMAT="text")  # fmt: skip
    done = _run_bot(env)
    assert done.returncode == 78
    assert "BOT_TOKEN_FILE" in done.stderr and "2 lines" in done.stderr
    assert "GARBAGE" not in done.stdout + done.stderr
    listed = botd(["jobs", "list", "--server", DEAD_URL, "--token-file", str(garbage)],
                  clean_env({}))  # fmt: skip
    assert listed.returncode == 2 and "--token-file" in listed.stderr
    assert "GARBAGE" not in listed.stdout + listed.stderr


def test_every_token_flag_warns_that_it_shows_in_ps(tmp_path: Path) -> None:
    env = clean_env({})
    for args in (
        ["jobs", "list", "--server", DEAD_URL, "--token", "flagged"],
        ["submit", "--kind", "k", "--server", DEAD_URL, "--token", "flagged"],
        ["conformance", DEAD_URL, "--token", "flagged"],
        ["server", "--token", "flagged", "--tls-cert", str(tmp_path / "missing.pem"),
         "--tls-key", str(tmp_path / "missing.pem")],
        ["check-config", "--token", "flagged"],
    ):  # fmt: skip
        done = botd(args, env)
        assert "shows in `ps`" in done.stderr, (args, done.stderr)
        assert "flagged" not in done.stdout, args


def test_the_server_warns_when_it_listens_beyond_loopback_without_a_token(
    tmp_path: Path, procs: Procs
) -> None:
    port = free_port()
    args = ["server", "--host", "0.0.0.0", "--port", str(port), "--db", ":memory:"]
    open_server = procs.spawn("open", args, clean_env({"BOT_LOG_FORMAT": "json"}))
    wait_for("the server", lambda: server_up(f"http://127.0.0.1:{port}"), (open_server,))
    warned = wait_for(
        "the warning",
        lambda: open_server.events("server_open") or None,
        (open_server,),
    )
    assert len(warned) == 1 and warned[0]["level"] == "WARNING"
    assert "BOTD_SERVER_TOKEN" in warned[0]["msg"] and "--tokens-file" in warned[0]["msg"]

    port = free_port()
    args = ["server", "--host", "0.0.0.0", "--port", str(port), "--db", ":memory:"]
    env = clean_env({"BOT_LOG_FORMAT": "json", "BOTD_SERVER_TOKEN": TOKEN})
    closed = procs.spawn("closed", args, env)
    wait_for("the server", lambda: server_up(f"http://127.0.0.1:{port}"), (closed,))
    loopback = free_port()
    local = procs.spawn("local", ["server", "--port", str(loopback), "--db", ":memory:"],
                        clean_env({"BOT_LOG_FORMAT": "json"}))  # fmt: skip
    wait_for("the server", lambda: server_up(f"http://127.0.0.1:{loopback}"), (local,))
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(f'[[tokens]]\nrole = "admin"\ntoken = "{TOKEN}"\n')
    tokens.chmod(0o600)
    port = free_port()
    args = ["server", "--host", "0.0.0.0", "--port", str(port), "--db", ":memory:",
            "--tokens-file", str(tokens)]  # fmt: skip
    by_file = procs.spawn("by-file", args, clean_env({"BOT_LOG_FORMAT": "json"}))
    wait_for("the server", lambda: server_up(f"http://127.0.0.1:{port}"), (by_file,))
    assert closed.events("server_listening") and not closed.events("server_open")
    assert local.events("server_listening") and not local.events("server_open")
    assert by_file.events("server_listening") and not by_file.events("server_open")
