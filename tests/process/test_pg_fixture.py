"""The real-component test infrastructure works for real.

- PostgreSQL (:mod:`tests.support.postgres`, the ``pg_server`` and ``pg_dsn`` fixtures): the
  cluster answers, ``restart("immediate")`` and ``kill`` drop every connection and it comes
  back with its data, each ``pg_dsn`` database is a fresh one of its own;
- haproxy on ``contrib/haproxy/haproxy.cfg`` (:mod:`tests.support.haproxy`): the file passes
  ``haproxy -c``, the test rewrite keeps everything else, and the running proxy balances the
  successive requests of ONE kept-alive client connection across two backends, sends nothing
  to a stopped one and marks it down.

Real time with deadlines throughout: every wait polls for its condition.
"""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.haproxy import CONTRIB_CONFIG, Haproxy, find_haproxy, render_config
from tests.support.postgres import PostgresServer, find_pg_bin

pytestmark = pytest.mark.slow


# --- PostgreSQL ---------------------------------------------------------------------------


def test_binaries_are_found() -> None:
    bin_dir = find_pg_bin()
    assert bin_dir is not None
    assert (bin_dir / "initdb").exists() and (bin_dir / "pg_ctl").exists()


def test_cluster_answers_select_1(pg_server: PostgresServer) -> None:
    assert pg_server.is_running()
    assert pg_server.dsn("x") == f"postgresql://postgres@127.0.0.1:{pg_server.port}/x"
    with psycopg.connect(pg_server.dsn(), connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["fsync", "max_connections", "listen_addresses"],),
            ).fetchall()
        )
    assert settings == {"fsync": "off", "max_connections": "300", "listen_addresses": "127.0.0.1"}


def test_immediate_restart_drops_connections_and_keeps_commits(pg_dsn: str, pg_server) -> None:
    conn = psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10)
    try:
        conn.execute("CREATE TABLE t (v int)")
        conn.execute("INSERT INTO t VALUES (1)")
        pg_server.restart(mode="immediate")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with psycopg.connect(pg_dsn, connect_timeout=10) as again:
        # an acknowledged commit survives the crash-like restart (synchronous_commit on)
        assert again.execute("SELECT v FROM t").fetchall() == [(1,)]


def test_kill_then_start_recovers(pg_dsn: str, pg_server: PostgresServer) -> None:
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE t AS SELECT 7 AS v")
        pg_server.kill()
        assert not pg_server.is_running()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    pg_server.start()
    with psycopg.connect(pg_dsn, connect_timeout=10) as again:
        assert again.execute("SELECT v FROM t").fetchall() == [(7,)]


_SEEN_DATABASES: list[str] = []


@pytest.mark.parametrize("run", [1, 2])
def test_pg_dsn_is_a_fresh_database_of_its_own(pg_dsn: str, run: int) -> None:
    name = pg_dsn.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=10) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        assert tables.fetchone() == (0,)  # nothing left by the other run
        conn.execute("CREATE TABLE mine (v int)")
        databases = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
    assert name in databases
    assert not databases & set(_SEEN_DATABASES)  # the earlier run's database was dropped
    _SEEN_DATABASES.append(name)


def test_drop_database_forces_connections_out(pg_server: PostgresServer) -> None:
    dsn = pg_server.create_database("t_drop_forced")
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    try:
        pg_server.drop_database("t_drop_forced")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()
    with pg_server.connect() as admin:
        gone = admin.execute("SELECT 1 FROM pg_database WHERE datname = 't_drop_forced'")
        assert gone.fetchone() is None


# --- haproxy ------------------------------------------------------------------------------

#: A replica stand-in: GET /v1/health answers 200, anything else its name; HTTP/1.1 with
#: keep-alive. It prints its port once it listens.
BACKEND = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = sys.argv[1].encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b'{"status":"ok"}' if self.path == "/v1/health" else NAME
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # haproxy's checks end with a reset


server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Backends:
    """Tiny backend processes, each answering its name; all killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> int:
        with (self.tmp / f"backend-{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", BACKEND, name],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.procs[name] = proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, f"backend {name} did not start within 20s"
        return int(proc.stdout.readline())

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Backends]:
    owner = Backends(tmp_path)
    try:
        yield owner
    finally:
        owner.close()


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Haproxy]:
    owner = Haproxy(tmp_path)
    try:
        yield owner
    finally:
        owner.stop()


def haproxy_bin() -> str:
    found = find_haproxy()
    assert found is not None, "haproxy not installed: apt-get install haproxy (nox does it)"
    return found


def test_contrib_config_passes_haproxy_check() -> None:
    result = subprocess.run(
        [haproxy_bin(), "-c", "-f", str(CONTRIB_CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


def test_rendered_config_changes_only_ports_servers_and_paths(tmp_path: Path) -> None:
    contrib = CONTRIB_CONFIG.read_text()
    rendered = render_config(
        contrib, port=1, stats_port=2, backends=[11, "127.0.0.2:12"], run_dir=tmp_path,
        as_root=True,
    )  # fmt: skip

    def lines(text: str, rewritten: bool) -> list[str]:
        """The lines the test rewrite may change, or (``rewritten`` False) all the others."""
        found = []
        for line in text.splitlines():
            words = line.split() or [""]
            key = words[0] if words[0] != "stats" else " ".join(words[:2])
            if (key in ("bind", "server", "log", "stats socket", "pidfile")) == rewritten:
                found.append(line)
        return found

    assert lines(rendered, rewritten=False) == lines(contrib, rewritten=False)
    assert "    bind 127.0.0.1:1" in rendered.splitlines()
    assert "    bind 127.0.0.1:2" in rendered.splitlines()
    servers = [line.split()[1:3] for line in lines(rendered, rewritten=True) if "server" in line]
    assert servers == [["botd1", "127.0.0.1:11"], ["botd2", "127.0.0.2:12"]]
    assert f"stats socket {tmp_path / 'admin.sock'} mode 660 level admin" in rendered
    result = subprocess.run(
        [haproxy_bin(), "-c", "-f", "/dev/stdin"], input=rendered, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_balances_each_request_and_drops_a_stopped_backend(
    backends: Backends, proxy: Haproxy
) -> None:
    ports = [backends.start("A"), backends.start("B")]
    url = proxy.start(ports)
    proxy.wait_healthy(2)

    with httpx.Client(base_url=url, timeout=10) as client:
        answers, local_ports = [], set()
        for _ in range(6):
            response = client.get("/who")
            assert response.status_code == 200
            answers.append(response.text)
            stream = response.extensions["network_stream"]
            local_ports.add(stream.get_extra_info("client_addr")[1])
    assert len(local_ports) == 1, "the requests did not share one kept-alive connection"
    assert answers.count("A") >= 2 and answers.count("B") >= 2, answers

    backends.stop("A")
    # Dead but not marked down yet, or marked down: either way nothing fails, since a
    # refused connection is redispatched to the other server.
    with httpx.Client(base_url=url, timeout=10) as client:
        assert [client.get("/who").text for _ in range(4)] == ["B"] * 4
    proxy.wait_status("botd1", "DOWN")
    assert proxy.statuses()["botd2"] == "UP"
    with httpx.Client(base_url=url, timeout=10) as client:
        assert [client.get("/who").text for _ in range(4)] == ["B"] * 4
