"""Benchmark of the reference server alone: claims+acks per second, batches of 1 and 100.

Starts ``botd server`` in a child process (``:memory:`` store by default, or ``--db PATH``),
submits jobs, then one client loop claims ``batch`` jobs per request and acks the previous
batch in the same request (the protocol's steady state). Prints one JSON line per batch size:
``{"batch": 100, "jobs": N, "seconds": S, "jobs_per_s": R, "requests_per_s": Q}``.

Run: ``python -m benchmarks.server_bench [--jobs 5000] [--db PATH]``.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import trio


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(db: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``botd server`` on a free port; wait for /v1/health."""
    port = _free_port()
    code = "import sys; from botd.server.command import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port), "--db", db],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(400):
        try:
            httpx.get(f"{url}/v1/health", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.025)
    proc.kill()
    raise RuntimeError("server did not start")


async def measure(url: str, batch: int, jobs: int) -> dict[str, Any]:
    """Submit ``jobs`` jobs, then claim+ack them ``batch`` at a time; time the second part."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        bot_id = f"bench-{batch}"
        reg = await client.post("/v1/bots/register", json={"bot_id": bot_id})
        session = reg.json()["session_id"]
        for _ in range(jobs):
            (
                await client.post("/v1/jobs", json={"kind": "bench", "payload": {}})
            ).raise_for_status()
        acks: list[dict[str, Any]] = []
        done = requests = 0
        start = time.perf_counter()
        while True:
            body = {"bot_id": bot_id, "session_id": session, "max_jobs": batch, "acks": acks}
            got = (await client.post("/v1/jobs/claim", json=body)).json()
            requests += 1
            done += len(acks)
            if not got["jobs"]:
                break
            acks = [
                {"lease_id": j["lease_id"], "outcome": "succeeded", "result": None}
                for j in got["jobs"]
            ]
        seconds = time.perf_counter() - start
    return {
        "batch": batch,
        "jobs": done,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(done / seconds, 1),
        "requests_per_s": round(requests / seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON line per batch size."""
    parser = argparse.ArgumentParser(prog="server_bench")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--db", default=":memory:")
    parser.add_argument("--batches", default="1,100")
    args = parser.parse_args(argv)
    proc, url = start_server(args.db)
    try:
        for batch in (int(b) for b in args.batches.split(",")):
            print(json.dumps(trio.run(measure, url, batch, args.jobs)), flush=True)
    finally:
        proc.terminate()
        proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
