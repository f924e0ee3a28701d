"""Several ``botd server`` replicas on one PostgreSQL, behind Debian's haproxy, for real.

Real processes, sockets and time (with generous deadlines; every wait polls a condition):

- replicas started at the same moment on an empty database both come up (the schema is
  migrated once, under the advisory lock); a database with a newer schema exits 78;
- a long poll waiting on one replica wakes when a job is submitted on another (LISTEN /
  NOTIFY), within 50 ms at the median and 200 ms at the 99th percentile;
- no lease is expired twice: the replicas' expiry counters add up to the leases that
  really expired;
- a long poll whose client went away takes no job (on both stores);
- any request may reach any replica: a bot works through haproxy, which balances each
  request, and every job ends succeeded;
- PostgreSQL stopped for 10 s under load: no replica exits, requests answer 503 within the
  statement timeout, ``/v1/health`` says degraded, and every job still ends succeeded.
"""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio

from tests.support.haproxy import Haproxy
from tests.support.postgres import PostgresServer
from tests.support.procs import (
    Proc,
    Procs,
    bot_env,
    free_ports,
    server_up,
    wait_for,
)

pytestmark = pytest.mark.slow


def start_replicas(
    procs: Procs, dsn: str, n: int, *extra: str, lease_ttl: float = 5.0
) -> list[tuple[Proc, str]]:
    """``n`` replicas of ``botd server`` on ``dsn``, each on its own port; waits for all."""
    ports = free_ports(n)
    replicas = []
    for i, port in enumerate(ports):
        proc = procs.server(f"replica{i + 1}", port, dsn, lease_ttl=lease_ttl)
        replicas.append((proc, f"http://127.0.0.1:{port}"))
    for proc, url in replicas:
        wait_for(f"{proc.name} to answer", lambda url=url: server_up(url), (proc,))
    return replicas


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    (tmp_path / "haproxy").mkdir()
    proxy = Haproxy(tmp_path / "haproxy")
    try:
        yield proxy
    finally:
        proxy.stop()


def metric(url: str, name: str) -> float:
    """The value of an unlabelled metric on ``url``/metrics."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in {url}/metrics")


def register(url: str, bot_id: str) -> str:
    resp = httpx.post(f"{url}/v1/bots/register", json={"bot_id": bot_id}, timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["session_id"])


def test_replicas_started_together_on_an_empty_database_both_come_up(
    procs: Procs, pg_dsn: str
) -> None:
    replicas = start_replicas(procs, pg_dsn, 2)
    for _, url in replicas:
        assert httpx.get(f"{url}/v1/health", timeout=5).json()["status"] == "ok"
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT version FROM botd_schema ORDER BY version").fetchall() == [
            (1,),
            (2,),
            (3,),
        ]
    migrated = [p for p, _ in replicas if p.events("schema_migrated")]
    assert len(migrated) == 1, "one replica migrated, the other waited for the lock"


def test_a_newer_schema_exits_78_and_says_so(procs: Procs, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE TABLE botd_schema (version integer PRIMARY KEY)")
        conn.execute("INSERT INTO botd_schema VALUES (999)")
    (port,) = free_ports(1)
    proc = procs.server("newer", port, pg_dsn)
    assert proc.wait(timeout=30) == 78
    assert "schema version 999, newer than this botd's 3" in proc.err()


async def test_a_long_poll_on_one_replica_wakes_on_a_submit_to_another(
    procs: Procs, pg_dsn: str, haproxy: Haproxy
) -> None:
    replicas = start_replicas(procs, pg_dsn, 3)
    haproxy.start([int(url.rsplit(":", 1)[1]) for _, url in replicas])
    haproxy.wait_healthy(3)
    (_, a), (_, b), _ = replicas
    session = register(haproxy.url, "waiter")
    latencies: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(25):
            answered: list[float] = []

            async def wait(i: int = i, answered: list[float] = answered) -> None:
                body = {"bot_id": "waiter", "session_id": session, "wait_s": 20}
                resp = await client.post(f"{b}/v1/jobs/claim", json=body)
                answered.append(time.perf_counter())
                jobs = resp.json()["jobs"]
                assert [j["payload"] for j in jobs] == [i]
                lease = jobs[0]["lease_id"]
                ack = {"lease_id": lease, "outcome": "succeeded", "result": None}
                assert (await client.post(f"{b}/v1/leases/{lease}/ack", json=ack)).is_success

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                await trio.sleep(0.1)  # the claim is waiting now (it must not answer early)
                assert answered == []
                resp = await client.post(f"{a}/v1/jobs", json={"kind": "k", "payload": i})
                submitted = time.perf_counter()
                assert resp.status_code == 201
            latencies.append(answered[0] - submitted)
    latencies.sort()
    median = statistics.median(latencies)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"cross-replica wake: median={median * 1000:.1f}ms p99={p99 * 1000:.1f}ms")
    assert median < 0.050
    assert p99 < 0.200


def test_no_lease_is_expired_twice_across_replicas(procs: Procs, pg_dsn: str) -> None:
    replicas = start_replicas(procs, pg_dsn, 3, lease_ttl=2.0)
    urls = [url for _, url in replicas]
    n = 60
    resp = httpx.post(
        f"{urls[0]}/v1/jobs/batch",
        json={"jobs": [{"kind": "k", "max_attempts": 5} for _ in range(n)]},
        timeout=10,
    )
    assert resp.json()["created"] == n
    claimed = 0
    for i, url in enumerate(urls * 2):  # claims on every replica; nobody heartbeats or acks
        session = register(url, f"silent-{i}")
        body = {"bot_id": f"silent-{i}", "session_id": session, "max_jobs": n // 6}
        claimed += len(httpx.post(f"{url}/v1/jobs/claim", json=body, timeout=10).json()["jobs"])
    assert claimed == n

    def all_expired() -> bool | None:
        with psycopg.connect(pg_dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state <> 'expired'), count(*) FROM lease_history"
            ).fetchone()
        return True if row == (0, claimed) else None  # every lease granted, and all expired

    wait_for("every lease to expire", all_expired, tuple(p for p, _ in replicas))
    total = sum(metric(url, "botd_server_lease_expiries_total") for url in urls)
    assert total == n, "the replicas' expiry counters add up to the leases that expired"
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT j.status, j.attempts, count(h.lease_id) FROM jobs j"
            " LEFT JOIN lease_history h ON h.job_id = j.job_id GROUP BY j.seq"
        ).fetchall()
    assert {status for status, _, _ in rows} == {"queued"}
    assert all(attempts == leases for _, attempts, leases in rows), (
        "each expiry spent one attempt: none was expired twice"
    )
    views = [httpx.get(f"{url}/v1/stats", timeout=5).json() for url in urls]
    assert views[0] == views[1] == views[2], "every replica shows the same fleet"
    bots = [httpx.get(f"{url}/v1/bots", timeout=5).json() for url in urls]
    assert bots[0] == bots[1] == bots[2]
    gauges = [
        [line for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines()
         if line.startswith("botd_server_jobs{")]
        for url in urls
    ]  # fmt: skip
    assert gauges[0] == gauges[1] == gauges[2] != []


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_a_long_poll_whose_client_went_away_takes_no_job(
    procs: Procs, tmp_path: Path, store_kind: str, request: pytest.FixtureRequest
) -> None:
    db = tmp_path / "server.db" if store_kind == "sqlite" else request.getfixturevalue("pg_dsn")
    ((server, url),) = start_replicas(procs, str(db), 1)
    session = register(url, "gone")
    body = f'{{"bot_id":"gone","session_id":"{session}","wait_s":20}}'.encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/jobs/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(0.3)  # the claim is waiting (it has nothing to answer yet)
    # The client is gone. A job submitted now must not go to the dead claim.

    def abandoned() -> bool | None:
        return True if metric(url, "botd_server_claims_abandoned_total") >= 1 else None

    wait_for("the server to notice the disconnect", abandoned, (server,))
    job = httpx.post(f"{url}/v1/jobs", json={"kind": "k"}, timeout=5).json()
    other = register(url, "alive")
    got = httpx.post(
        f"{url}/v1/jobs/claim",
        json={"bot_id": "alive", "session_id": other, "wait_s": 5},
        timeout=10,
    ).json()["jobs"]
    assert [(j["job_id"], j["attempt"]) for j in got] == [(job["job_id"], 1)]


def _stats(url: str) -> dict[str, Any] | None:
    try:
        resp = httpx.get(f"{url}/v1/stats", timeout=5)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


def test_bots_work_through_haproxy_and_survive_postgres_down_for_10_s(
    procs: Procs, pg_dsn: str, pg_server: PostgresServer, haproxy: Haproxy, tmp_path: Path
) -> None:
    replicas = start_replicas(procs, pg_dsn, 2, "--statement-timeout", "2")
    haproxy.start([int(url.rsplit(":", 1)[1]) for _, url in replicas])
    haproxy.wait_healthy(2)
    n = 300
    resp = httpx.post(
        f"{haproxy.url}/v1/jobs/batch",
        json={"jobs": [{"kind": "simulate", "idempotency_key": f"j{i}"} for i in range(n)]},
        timeout=10,
    )
    assert resp.json()["created"] == n
    bots = [
        procs.bot(
            f"bot{i}",
            bot_env(
                f"bot-{i}",
                haproxy.url,
                tmp_path / f"state{i}",
                None,
                PROCESSING_DURATION_MS="20",
                BOT_CONCURRENCY="4",
            ),
        )
        for i in range(2)
    ]

    def some_done() -> bool | None:
        stats = _stats(haproxy.url)
        return True if stats and stats["jobs"]["succeeded"] >= 30 else None

    wait_for("the bots to get going", some_done, tuple(bots))
    pg_server.stop(mode="fast")
    try:
        down_at = time.monotonic()
        (_, direct), _ = replicas
        started = time.monotonic()
        resp = httpx.get(f"{direct}/v1/stats", timeout=30)
        took = time.monotonic() - started
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "store_unavailable"
        assert took < 2 + 1.5, f"answered 503 within the statement timeout (took {took:.1f}s)"
        health = httpx.get(f"{direct}/v1/health", timeout=30)
        assert (health.status_code, health.json()["status"]) == (503, "degraded")
        while time.monotonic() - down_at < 10:
            time.sleep(0.5)
            for proc, _ in replicas:
                assert proc.alive(), proc.tail()
    finally:
        pg_server.start()

    def all_succeeded() -> bool | None:
        stats = _stats(haproxy.url)
        return True if stats and stats["jobs"]["succeeded"] == n else None

    wait_for(
        "every job to succeed after PostgreSQL came back",
        all_succeeded,
        (*bots, *(p for p, _ in replicas)),
        timeout=90,
    )
    for proc, _ in replicas:
        assert proc.alive()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE status <> 'succeeded'").fetchone() == (
            0,
        )
