"""The ``simulate`` handler: the seed's simulated job, on Trio's clock."""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Any

import trio

from ..errors import JobError, PermanentError
from ..models import ClaimedJob

__all__ = ["SimulateHandler", "SimulatedFailure", "simulated_value"]


class SimulatedFailure(JobError):
    """Raised by the simulate handler when a job fails on purpose (retryable)."""

    type = "simulated_failure"


def _canonical_json(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def simulated_value(payload: Any) -> int:
    """The seed's deterministic result: sha256 of the canonical JSON payload, mod 1000."""
    return int.from_bytes(hashlib.sha256(_canonical_json(payload)).digest(), "big") % 1000


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class SimulateHandler:
    """The seed's simulated job: sleep, maybe fail, return a result derived from the payload.

    Sleeps ``duration_ms`` on Trio's clock, then fails with probability ``failure_rate``
    (SimulatedFailure, type ``simulated_failure``), else returns ``{"value": N}`` where N is
    :func:`simulated_value` of the payload. A dict payload may steer one job:
    ``{"duration_ms": N}`` overrides the sleep, ``{"permanent": true}`` raises PermanentError,
    ``{"fail": true}`` always fails, ``{"fail_times": K}`` fails while ``job.attempt <= K``.
    Ends when the sleep ends; a cancel ends it early (Cancelled propagates).

    It takes only jobs of kind ``simulate`` (:attr:`kinds`): a bot that runs it without
    BOT_KINDS leaves every other kind in the queue for a bot that really does the work.
    """

    #: The job kinds this handler takes (:func:`~botd.handlers.running.kinds_of`).
    kinds: tuple[str, ...] = ("simulate",)

    def __init__(
        self, duration_ms: float, failure_rate: float, *, rng: random.Random | None = None
    ) -> None:
        if duration_ms < 0:
            raise ValueError(f"duration_ms must be >= 0, got {duration_ms!r}")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be within [0, 1], got {failure_rate!r}")
        self.duration_ms = duration_ms
        self.failure_rate = failure_rate
        self._rng = rng if rng is not None else random.Random()

    async def __call__(self, job: ClaimedJob) -> Any:
        payload = job.payload
        steer: dict[str, Any] = payload if isinstance(payload, dict) else {}
        duration_ms = _number(steer.get("duration_ms"))
        if duration_ms is None or duration_ms < 0:
            duration_ms = self.duration_ms
        await trio.sleep(duration_ms / 1000.0)
        if steer.get("permanent") is True:
            raise PermanentError("simulated permanent failure")
        if steer.get("fail") is True:
            raise SimulatedFailure("simulated failure (payload asked for it)")
        fail_times = steer.get("fail_times")
        if isinstance(fail_times, int) and not isinstance(fail_times, bool):
            if job.attempt <= fail_times:
                raise SimulatedFailure(
                    f"simulated failure on attempt {job.attempt} of {fail_times} failing"
                )
        elif self.failure_rate > 0 and self._rng.random() < self.failure_rate:
            raise SimulatedFailure(f"simulated failure (FAILURE_RATE={self.failure_rate:g})")
        return {"value": simulated_value(payload)}
