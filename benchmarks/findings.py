"""What profiling found where a goal is missed: kept by hand, printed under "Findings".

Each entry names where the time goes, with the figures that show it, so that the owner of
that code can act. The harness adds one line per missed goal of the current run by itself.
Profiles: py-spy (``record --idle -f raw``) on the bot during figure 2's runs, the server's
and bot's own Prometheus counters, and ``python -X importtime``.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Throughput at concurrency 32 (botd/(a) well under 0.8): the bot is not CPU-bound "
    "(py-spy: 83% of samples idle in epoll) but sends many acks on their own. For 3,000 "
    "no-op jobs the bot made 94 claims (about 32 jobs each, as the minimal loop does) and "
    "352 separate `POST /v1/leases/{id}/ack` requests: ~12% of results miss a claim within "
    "`results.ACK_GRACE_S` (20 ms) and go one request each (`ResultReporter._send_all` -> "
    "`ServerClient.ack`, 6% of all samples, over a third of the bot's busy time). Each is a "
    "full server round trip on the same 2 cores. Owner: botd/results.py and "
    "botd/claiming.py (let the claim that is about to be sent carry them; send leftovers "
    "in one batch, not 8 in parallel).",
    "Throughput at concurrency 1: a botd claim round trip takes 14.6 ms on average "
    "(`botd_server_request_duration_seconds` sum/count, 500 claims) against 4-6 ms for the "
    "minimal loop's identical request on the same server; the bot was 64% idle in epoll, "
    "so the extra time is spent between the answer and the next request (the worker hand-off, "
    "result -> outbox -> `ResultReporter.take`, breaker and metrics bookkeeping), not in "
    "httpx. Owner: botd/claiming.py, workers.py, results.py.",
    "Time to ready (0.5 s goal): `import botd.agent` alone costs ~0.64 s under "
    "`-X importtime` on this machine, against ~0.30 s for `import trio, httpx` (figure 1's "
    "baseline). The largest parts: botd.ops 151 ms, of which hypercorn.trio 103 ms "
    "(hypercorn.protocol.h2 alone 56 ms: HTTP/2 support that the ops endpoint never uses); "
    "botd.client 135 ms (httpx 75 ms); loguru 56 ms; starlette 31 ms. An ops endpoint on a "
    "small h11-only server (h11 is already loaded by httpx) would save ~0.1-0.15 s. "
    "Owner: botd/ops.py, botd/agent.py.",
    "Submitting is slow on this machine, ~110-400 `POST /v1/jobs` per second on one "
    "connection (the server, not the client: one request is ~2.6 ms of server CPU, most of it "
    "in Starlette/hypercorn plumbing rather than SQLite). The benchmarks spend more time "
    "submitting jobs than processing them. A batch submit (`POST /v1/jobs:batch`) would help "
    "producers. Owner: botd/server/app.py.",
)
