"""The framework's limit: an echo endpoint on ``botd server``'s hypercorn + Starlette setup.

``python -m benchmarks.framework serve --port P`` serves one route, ``POST /echo``: it reads
the request's small JSON body, parses it, and answers a small JSON body. It runs on
hypercorn's trio worker with the hypercorn settings of ``botd server`` (botd/server/run.py:
no access log, the same error logger, graceful and keep-alive timeouts) and a Starlette app
with one ``Route``: what any protocol endpoint costs at least on this stack, before botd's
own work (decoding, the store, encoding, metrics).

``python -m benchmarks.framework drive URL --mode echo|claim --requests N`` is the client of
both: httpx, one ``AsyncClient``, one connection, one request at a time, as the minimal loop
(benchmarks/minimal_bot.py, figure 8). ``claim`` registers and then claims one job per
request (with the minimal loop's long poll, ``wait_s`` 20, never waited out: jobs are due)
with the previous job's ack piggybacked (figure 8 at batch 1); ``echo`` posts a body of the
same shape. It times its own requests (``time.perf_counter``) and prints one JSON
line: ``{"mode", "requests", "seconds", "requests_per_s"}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

import httpx
import trio

#: What the echo answers: about the size of a claim's answer of one job.
_ANSWER = {
    "jobs": [
        {
            "job_id": "0" * 26,
            "lease_id": "0" * 26,
            "kind": "simulate",
            "payload": None,
            "attempt": 1,
            "timeout_s": None,
            "lease_expires_at": "2026-01-01T00:00:00.000000Z",
        }
    ],
    "acks": [{"lease_id": "0" * 26, "status": "recorded", "message": ""}],
}


def echo_app() -> Any:
    """The Starlette app of one route: ``POST /echo`` reads, parses, answers small JSON."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    answer = json.dumps(_ANSWER, separators=(",", ":")).encode()

    async def echo(request: Request) -> Response:
        body = json.loads(await request.body())
        if not isinstance(body, dict):
            return Response(b"{}", status_code=400, media_type="application/json")
        return Response(answer, media_type="application/json")

    return Starlette(routes=[Route("/echo", echo, methods=["POST"])])


async def serve(port: int) -> None:
    """Serve :func:`echo_app` on 127.0.0.1:``port`` until SIGTERM, as ``botd server`` would."""
    import signal

    from hypercorn.config import Config
    from hypercorn.trio import serve as hypercorn_serve

    from botd.server.run import GRACEFUL_TIMEOUT_S, KEEP_ALIVE_TIMEOUT_S

    hc = Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = GRACEFUL_TIMEOUT_S
    hc.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _ in signals:
                    stop.set()
                    return

            nursery.start_soon(watch)
            await hypercorn_serve(echo_app(), hc, shutdown_trigger=stop.wait)
            nursery.cancel_scope.cancel()


async def drive(url: str, mode: str, requests: int) -> dict[str, Any]:
    """``requests`` requests, one at a time, on one connection; their rate."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        bot_id = f"framework-{os.getpid()}"
        session = "-"
        if mode == "claim":
            reg = await client.post("/v1/bots/register", json={"bot_id": bot_id, "capacity": 1})
            reg.raise_for_status()
            session = reg.json()["session_id"]
        path = "/v1/jobs/claim" if mode == "claim" else "/echo"
        acks: list[dict[str, Any]] = []
        start = time.perf_counter()
        for _ in range(requests):
            body = {
                "bot_id": bot_id,
                "session_id": session,
                "max_jobs": 1,
                "wait_s": 20.0,  # the minimal loop's long poll: jobs are due, so never waited
                "acks": acks,
            }
            response = await client.post(path, json=body)
            response.raise_for_status()
            jobs = response.json()["jobs"]
            if mode == "claim" and not jobs:
                raise RuntimeError("the server ran out of jobs: submit more than --requests")
            acks = [
                {"lease_id": job["lease_id"], "outcome": "succeeded", "result": None}
                for job in jobs
            ]
        seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "requests": requests,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    """``serve`` the echo app, or ``drive`` a server and print the rate as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.framework")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve POST /echo until SIGTERM")
    serve_cmd.add_argument("--port", type=int, required=True)
    drive_cmd = commands.add_parser("drive", help="time requests to a server")
    drive_cmd.add_argument("url")
    drive_cmd.add_argument("--mode", choices=["echo", "claim"], required=True)
    drive_cmd.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.command == "serve":
        trio.run(serve, args.port)
        return 0
    print(json.dumps(trio.run(drive, args.url, args.mode, args.requests)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
