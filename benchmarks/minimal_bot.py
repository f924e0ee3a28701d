"""The baseline bot: the protocol and nothing else (httpx, claim+ack batches, a heartbeat).

It registers, heartbeats every ``--heartbeat`` seconds, and loops: claim up to ``--batch`` jobs
with a long poll of ``--wait`` seconds, carrying the acks of the previous batch ("succeeded",
result null; the handler is a no-op). It has no lifecycle, no breakers, no outbox, no metrics:
the protocol's own cost on this machine. Ends on SIGTERM/SIGINT (acks what it holds, then
deregisters); any error ends it with a traceback.

Run: ``python -m benchmarks.minimal_bot URL [--batch 32] [--wait 20] [--heartbeat 5]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Any

import httpx
import trio


async def _heartbeat(client: httpx.AsyncClient, bot_id: str, session: str, every: float) -> None:
    while True:
        await trio.sleep(every)
        body = {"session_id": session, "state": "ready", "active_leases": [], "stats": {}}
        (await client.post(f"/v1/bots/{bot_id}/heartbeat", json=body)).raise_for_status()


async def run(url: str, batch: int, wait: float, every: float) -> None:
    """Claim and ack until a signal; then ack what is held and deregister."""
    bot_id = f"minimal-{socket.gethostname()}-{os.getpid()}"
    async with httpx.AsyncClient(base_url=url, timeout=wait + 10) as client:
        body = {"bot_id": bot_id, "capacity": batch, "pid": os.getpid()}
        reg = await client.post("/v1/bots/register", json=body)
        reg.raise_for_status()
        session: str = reg.json()["session_id"]
        acks: list[dict[str, Any]] = []
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def stop() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop)
                nursery.start_soon(_heartbeat, client, bot_id, session, every)
                while True:
                    claim = {
                        "bot_id": bot_id,
                        "session_id": session,
                        "max_jobs": batch,
                        "wait_s": wait,
                        "acks": acks,
                    }
                    response = await client.post("/v1/jobs/claim", json=claim)
                    response.raise_for_status()
                    acks = [
                        {"lease_id": job["lease_id"], "outcome": "succeeded", "result": None}
                        for job in response.json()["jobs"]
                    ]
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            claim = {"bot_id": bot_id, "session_id": session, "max_jobs": 0, "acks": acks}
            await client.post("/v1/jobs/claim", json=claim)
            await client.delete(f"/v1/bots/{bot_id}", params={"session_id": session})


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run until a signal."""
    parser = argparse.ArgumentParser(prog="minimal_bot")
    parser.add_argument("url")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--wait", type=float, default=20.0)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    args = parser.parse_args(argv)
    trio.run(run, args.url, args.batch, args.wait, args.heartbeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
