"""The Celery side of the throughput comparison: one app, one no-op task.

The broker is Redis database 0 and the result backend Redis database 1 at
``BENCH_REDIS_URL`` (botd records every result on its server, so Celery keeps its results too).
The worker runs ``python -m celery -A benchmarks.celery_app worker ...``.
"""

from __future__ import annotations

import os

from celery import Celery  # type: ignore[import-untyped]

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")

app = Celery("bench", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    """The no-op task: the same work as botd's no-op handler."""
    return None
