"""What profiling found where a goal is missed: kept by hand, printed under "Findings".

Each entry names where the time goes, with the figures that show it, and whose it is. The
harness adds one line per missed goal of the current run by itself. Profiles: py-spy
(``record -f raw``) on the bot during figure 2's runs and on the server under figure 8's
client (percentages are of the process's busy samples, idle waits left out), utime+stime of
the bot and the server from /proc, the bot's own Prometheus counters, ``python -X
importtime`` and timed steps of ``botd run``'s start. Figures from this 2-core machine,
with other work running beside it.
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
    "job by its lease). py-spy again (2026-12-02, 20,000 jobs): the claim loop takes 47% of "
    "the bot's busy samples in Trio, ~80% of that in httpx's request; the job path 37%: "
    "the result's check (`ensure_json`: json.dumps then json.loads of every result, encoded "
    "once more in the claim's body) ~4% of all, the simulate handler's own work ~5%, the "
    "two cancel scopes of each job (its own and its timeout's) ~6%, the telemetry ~2%, "
    "the outbox put ~1%, the rest starting and scheduling the 32 tasks. Not changed in "
    "this round: the result check is being reworked with the result size limit "
    "(encoding once and keeping the length would remove the loads).",
    "Throughput at concurrency 1: botd is near the minimal loop (one claim per job, the ack "
    "on the next claim). Celery's solo pool is faster: one Redis round trip per task "
    "against an HTTP request to a Python server. py-spy on the bot (concurrency 1, 3,000 "
    "jobs, 2026-12-02): 85% of its busy samples are the claim loop and 74% httpx's request "
    "itself (httpcore, h11, the socket calls: not ours); botd's own share is ~10% (the "
    "claim's encoding and cattrs decoding ~3%, the job's task, scopes and handler ~4%, the "
    "outbox and the ack bookkeeping ~2%). So at concurrency 1 the ratio to Celery is set "
    "by one HTTP round trip per job on each side, client and server (figure 8), not by the "
    "bot's work.",
    "Server alone, where a claim+ack went (py-spy on `botd server --db :memory:` under "
    "figure 8's client at batch 1, 5,000 jobs queued, 2026-12-02): 28% of the server's busy "
    "samples were one line, the SQLite claim's SELECT: SQLite planned it through jobs_due "
    "and sorted every due job to return one, so a claim cost the whole backlog (in-process "
    "claim+ack 109 us with 1,000 jobs queued, 3,722 us with 20,000: the 102 requests/s of "
    "figure 8 in the earlier run). Fixed: the claim walks jobs_queue in its own order "
    "(94 us at 20,000 queued). After it: hypercorn, h11 and Starlette's plumbing take ~70% "
    "of the busy samples (reading the request ~31%, sending the answer ~25%, the middleware "
    "and routing the rest: the same stack as the echo baseline), botd's claim route ~28% "
    "(the store's transaction ~15%, decoding the body with json and cattrs ~5%, encoding "
    "the answer ~2.4%, a nursery with a disconnect watcher that every long-poll claim "
    "opened, ~130 us measured alone). Fixed: the nursery opens only when the claim has to "
    "wait, and the ack counters' children are looked up once. Server CPU per claim+ack "
    "(utime+stime, 3,000 requests, A/B interleaved): 1.70-1.87 ms before, 1.40-1.64 ms "
    "after; the echo endpoint 1.29-1.62 ms on the same stack. What is left of ours is "
    "the store's ~11 SQL statements a claim+ack (session check, seen, ack read and two "
    "writes, pick, lease writes, BEGIN and COMMIT) and one decode and one encode.",
    "Durable outbox (`BOT_STATE_DIR`): each finished job was its own SQLite transaction "
    "with an fsync, ~540 jobs/s at concurrency 32; with group commit (the results that "
    "finish while one commit runs share the next; each put still returns only once its "
    "own entry is durable) ~1,260. py-spy on the durable bot at concurrency 32 (2026-12-02): "
    "the fsyncs are ~6% of the wall time; what costs more is each hop to the outbox's "
    "worker thread, where the main thread loses the GIL to the worker "
    "(ThreadCache.start_thread_soon, ~0.7 ms a hop here). A cycle made three: the first "
    "finished job's commit alone, the other 31's, and the removal of the acks the claim "
    "answered (fsynced, and awaited by the claimer before its next claim). Fixed: the jobs "
    "that end in one scheduler turn share one commit, and a removal is committed without "
    "an fsync (losing it in a crash only sends a recorded ack again: duplicate); together "
    "~2,150-2,270 -> ~2,260-2,390 jobs/s in A/B runs. Still a hop each for the put and the "
    "removal: folding the removal into the next put's transaction would leave one per "
    "cycle (not done: not measured).",
    "Idle cost: an idle bot makes its heartbeat (12 a minute), its long-poll claim (3 a "
    "minute), a health check before each claim (3 a minute; it was 12: one every 5 s) and "
    "wakes for the loop-lag canary (60 a minute; it was 120). Each request costs ~2-4 ms of "
    "CPU here (httpx, h11, the syscalls) on both sides; the minimal loop makes 15 requests a "
    "minute, botd 18. A longer long poll (`BOT_CLAIM_WAIT`, 20 s by default) would save two "
    "requests a minute per 20 s added.",
)
