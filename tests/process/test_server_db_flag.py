"""``botd server --db``: a file by default, ``BOTD_SERVER_DB``, a PostgreSQL URL whose
password never reaches a log, ``--retention`` parsing, ``--help`` that says all of it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.postgres import PostgresServer
from tests.support.server import spawn_server_process

pytestmark = pytest.mark.slow

SERVER = [sys.executable, "-c", "from botd.cli import entry; entry()", "server"]


def test_help_names_the_stores_and_their_flags() -> None:
    out = subprocess.run(
        [*SERVER, "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for needle in (
        "postgresql://",
        "BOTD_SERVER_DB",
        "botd-server.db",
        ":memory:",
        "--retention",
        "--db-pool-size",
        "--statement-timeout",
    ):
        assert needle in out, needle


def test_the_default_db_is_a_file_that_survives_a_restart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BOTD_SERVER_DB"}
    proc, url = spawn_server_process(tmp_path, env=env)
    try:
        job = httpx.post(f"{url}/v1/jobs", json={"kind": "k"}, timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (tmp_path / "botd-server.db").exists(), "the default store is botd-server.db in cwd"
    proc, url = spawn_server_process(tmp_path, env=env)
    try:
        again = httpx.get(f"{url}/v1/jobs/{job['job_id']}", timeout=5)
        assert again.status_code == 200 and again.json()["status"] == "queued"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_botd_server_db_selects_the_store(tmp_path: Path) -> None:
    db = tmp_path / "from-env.db"
    proc, url = spawn_server_process(tmp_path, env={"BOTD_SERVER_DB": str(db)})
    try:
        assert httpx.post(f"{url}/v1/jobs", json={"kind": "k"}, timeout=5).status_code == 201
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert db.exists()
    assert not (tmp_path / "botd-server.db").exists()


def test_a_postgres_password_never_reaches_a_log(
    tmp_path: Path, pg_server: PostgresServer, pg_dsn: str
) -> None:
    secret = "hunter2-not-for-logs"
    dsn = pg_dsn.replace("postgres@", f"postgres:{secret}@")
    proc, url = spawn_server_process(tmp_path, "--db", dsn)
    try:
        assert httpx.post(f"{url}/v1/jobs", json={"kind": "k"}, timeout=5).status_code == 201
        health = httpx.get(f"{url}/v1/health", timeout=5).text
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    log = (tmp_path / "server.log").read_text()
    assert "server_listening" in log
    assert f"postgresql://postgres@127.0.0.1:{pg_server.port}/" in log, "the DSN, redacted"
    for text in (log, health, metrics):
        assert secret not in text


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--retention", "7x", "not a duration"),
        ("--retention", "0", "must be > 0"),
        ("--lease-ttl", "inf", "must be > 0 and finite"),
        ("--heartbeat-interval", "nan", "must be > 0 and finite"),
    ],
)
def test_bad_server_flags_exit_2_and_say_why(flag: str, value: str, message: str) -> None:
    done = subprocess.run(
        [*SERVER, "--port", "0", flag, value], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_postgres_without_a_server_still_starts_and_reports_degraded(tmp_path: Path) -> None:
    dsn = "postgresql://postgres@127.0.0.1:1/nowhere"
    proc, url = spawn_server_process(tmp_path, "--db", dsn, "--statement-timeout", "1")
    try:
        health = httpx.get(f"{url}/v1/health", timeout=10)
        assert (health.status_code, health.json()["status"]) == (503, "degraded")
        resp = httpx.get(f"{url}/v1/stats", timeout=10)
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "store_unavailable"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_another_url_scheme_exits_78_and_a_keyword_dsn_is_postgres(tmp_path: Path) -> None:
    done = subprocess.run(
        [*SERVER, "--port", "0", "--db", "postgresql+psycopg://u@h/d"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 78
    assert "postgresql+psycopg:// is not a database botd knows" in done.stderr
    assert list(tmp_path.iterdir()) == [], "no SQLite file named after the URL"
    from botd.server.store import is_postgres_url

    assert is_postgres_url("host=db.example dbname=botd password=x")
    assert not is_postgres_url("jobs.db")
