"""The demo's submitter: every job, in batches (``POST /v1/jobs/batch``), retried until the
server takes them; the idempotency keys make a retried batch never submit a job twice."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import trio

from ..admin_client import AsyncAdminClient
from ..errors import ServerUnavailable
from ..models import JobBatch, JobSubmit
from .options import POLL_INTERVAL_S, DemoOptions

__all__ = ["JOB_KIND", "SUBMIT_BATCH", "Submitter"]

JOB_KIND = "simulate"
SUBMIT_BATCH = 25  # jobs per POST /v1/jobs/batch: fast, and the queue still fills visibly


class Submitter:
    """Submits ``options.jobs`` jobs; ``submitted`` counts those the server took."""

    def __init__(self, options: DemoOptions, note: Callable[[str], None]) -> None:
        self.options = options
        self.submitted = 0
        self._note = note
        self._run_id = uuid.uuid4().hex[:8]

    async def run(self, admin: AsyncAdminClient) -> None:
        """Submit every job in batches; a failed batch is retried with the same idempotency keys."""
        o = self.options
        for start in range(0, o.jobs, SUBMIT_BATCH):
            batch = JobBatch(
                [
                    JobSubmit(
                        kind=JOB_KIND,
                        payload={"n": i},
                        max_attempts=o.max_attempts,
                        idempotency_key=f"demo-{self._run_id}-{i}",
                    )
                    for i in range(start, min(o.jobs, start + SUBMIT_BATCH))
                ]
            )
            while True:
                try:
                    if (await admin.post("/v1/jobs/batch", batch)).ok:
                        break
                except ServerUnavailable:
                    pass  # the server is down or restarting: try again
                await trio.sleep(POLL_INTERVAL_S)
            self.submitted = start + len(batch.jobs)
        self._note(f"{o.jobs} jobs submitted")
