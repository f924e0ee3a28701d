"""The names of how a job ended on a bot: one home for the outcome strings.

They are the ``outcome`` of the job log lines and the label values of
``botd_jobs_total{outcome}`` (:data:`JOB_OUTCOMES`, every one of them):

- ``succeeded``: the handler returned a JSON result (acked ``succeeded``);
- ``failed``: the handler raised (acked ``failed`` with the error);
- ``timeout``: the job outlived its time limit (acked ``failed``, error type ``timeout``);
- ``cancelled``: the server cancelled it (acked ``failed``, error type ``cancelled``);
- ``released``: shutdown stopped it, or it was never started (acked ``released``: the
  server queues it again without spending an attempt);
- ``lease_lost``: the server gave the job to another bot (nothing is acked).

``timeout`` and ``cancelled`` are also the error types those failures are acked with. This
module imports nothing of botd: any module may import it, the reference server too.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CANCELLED",
    "FAILED",
    "JOB_OUTCOMES",
    "LEASE_LOST",
    "RELEASED",
    "SUCCEEDED",
    "TIMEOUT",
]

SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
TIMEOUT: Final = "timeout"
CANCELLED: Final = "cancelled"
RELEASED: Final = "released"
LEASE_LOST: Final = "lease_lost"

#: Every outcome, in the order of the metric's label values.
JOB_OUTCOMES: tuple[str, ...] = (SUCCEEDED, FAILED, TIMEOUT, CANCELLED, RELEASED, LEASE_LOST)
