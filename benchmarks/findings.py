"""What profiling found where a goal is missed: kept by hand, printed under "Findings".

Each entry names where the time goes, with the figures that show it, and whose it is. The
harness adds one line per missed goal of the current run by itself. Profiles: py-spy
(``record -f raw``) on the bot during figure 2's runs, utime+stime of the bot and the server
from /proc, the bot's own Prometheus counters, ``python -X importtime`` and timed steps of
``botd run``'s start. Figures from this 2-core machine, with other work running beside it.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Time to ready, what is not ours: in a fresh `pip install .` venv, `import trio, httpx` "
    "alone takes ~0.30-0.37 s (the baseline); in the bench venv ~0.1 s more, because celery "
    "brings `click`, and then `import httpx` also imports its command-line client "
    "(`httpx._main`: click, rich, pygments). On top of the baseline, `botd run` spends "
    "(medians of timed steps in the `pip install .` venv): creating the httpx client, which "
    "imports httpcore, which imports h2 and hpack because hypercorn[trio] installs h2, "
    "~55-65 ms (hpack's Huffman table alone ~50 ms under -X importtime); loguru ~40-48 ms "
    "(with asyncio); prometheus_client ~20-25 ms; hypercorn and Starlette for the ops "
    "endpoint ~65-90 ms, now imported in a worker thread while the bot registers; the "
    "registration, its check and the first health check, three round trips, ~30-40 ms. "
    "botd's own modules (the attrs classes of models, config, client...) and argparse with "
    "one flag per setting take ~0.1 s. So the bare dependencies put the floor near 0.6 s "
    "here; the 0.5 s goal needs a faster machine or fewer dependencies on the start path.",
    "Time to ready, what was ours and is fixed: `botd run` imported every subcommand's "
    "module (the reference server with Starlette routes and SQLite store, the status client, "
    "the demo with rich): ~0.13 s, now only the command being run is imported; the ops "
    "endpoint's hypercorn and Starlette (~0.1 s) were imported before the bot could start, "
    "now the socket listens first and they load in a thread while the bot registers; the "
    "httpx client loaded the CA bundle (~50 ms) for an http:// server URL, now only for "
    "https.",
    "Throughput at concurrency 32, where the time goes: both the bot and the minimal loop "
    "take turns with the server (claim, run the batch, claim again), so a cycle is the "
    "server's time plus the client's. The server spends ~0.38 ms of CPU per job in both "
    "cases (utime+stime during the drain; ~12 ms per claim of 32 acks and 32 jobs); the "
    "minimal loop ~0.08 ms per job, botd ~0.30 ms. Of botd's: the claim request itself (httpx, "
    "h11, the socket calls) ~2.5 ms per claim, as for the minimal loop; a job ~0.1 ms (a Trio "
    "task, its cancel scope, the handler's timeout scope and the simulate handler's two "
    "json.dumps in botd/handlers/ ~30 us, the outbox, the metrics); the rest is Trio "
    "scheduling of 32 tasks per cycle and cattrs (~0.5 ms per claim). Claiming half the slots "
    "at a time to overlap the bot's work with the server's was tried and is slower: the "
    "server's fixed cost per request (~7 ms here) doubles. Fixed in this round: ~12% of "
    "acks went one `POST /v1/leases/{id}/ack` each (now every ack rides on a claim while one "
    "is due, and leftovers go in one claim of no jobs), the in-memory outbox put took three "
    "cancel scopes, job log lines were built at every level, metrics children were looked "
    "up per job. Still ours: the per-job Trio task and scope (the price of cancelling one "
    "job by its lease).",
    "Throughput at concurrency 1: botd is near the minimal loop (one claim per job, the ack "
    "on the next claim). Celery's solo pool is ~3x faster: one Redis round trip per task "
    "against an HTTP request to a Python server that costs ~3.3 ms of server CPU per "
    "claim+ack here (Starlette and hypercorn plumbing, then SQLite). Not the bot's to fix: "
    "botd/server.",
    "Durable outbox (`BOT_STATE_DIR`, not measured above: figure 2 keeps results in "
    "memory): each finished job was its own SQLite transaction with an fsync, ~540 jobs/s "
    "at concurrency 32; with group commit (the results that finish while one commit runs "
    "share the next; each put still returns only once its own entry is durable) ~1,260.",
    "Idle cost: an idle bot makes its heartbeat (12 a minute), its long-poll claim (3 a "
    "minute), a health check before each claim (3 a minute; it was 12: one every 5 s) and "
    "wakes for the loop-lag canary (60 a minute; it was 120). Each request costs ~2-4 ms of "
    "CPU here (httpx, h11, the syscalls) on both sides; the minimal loop makes 15 requests a "
    "minute, botd 18. A longer long poll (`BOT_CLAIM_WAIT`, 20 s by default) would save two "
    "requests a minute per 20 s added.",
)
