"""What a demo run is asked to do: :class:`DemoOptions`, its defaults, and the demo's timings."""

from __future__ import annotations

import math

import attrs

from ..config import MAX_CONCURRENCY

__all__ = [
    "DEFAULT_BOTS",
    "DEFAULT_CHAOS_DOWN_S",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DURATION_MS",
    "DEFAULT_FAILURE_RATE",
    "DEFAULT_JOBS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "MAX_BOTS",
    "POLL_INTERVAL_S",
    "DemoOptions",
]

DEFAULT_BOTS = 3
MAX_BOTS = 100
DEFAULT_JOBS = 200
DEFAULT_FAILURE_RATE = 0.15
DEFAULT_DURATION_MS = 200
DEFAULT_CONCURRENCY = 4
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_CHAOS_DOWN_S = 3.0
DEFAULT_TIMEOUT_S = 300.0

#: How often the monitor polls /v1/stats and redraws the view (and a refused batch is retried).
POLL_INTERVAL_S = 0.2


def _positive(_inst: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"--{attribute.name.replace('_', '-')} must be > 0, got {value!r}")


@attrs.frozen
class DemoOptions:
    """What ``botd demo`` runs. Construction raises ValueError naming the bad flag."""

    bots: int = attrs.field(
        default=DEFAULT_BOTS, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_BOTS)]
    )
    jobs: int = attrs.field(default=DEFAULT_JOBS, validator=attrs.validators.ge(1))
    failure_rate: float = attrs.field(
        default=DEFAULT_FAILURE_RATE,
        validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)],
    )
    duration_ms: int = attrs.field(default=DEFAULT_DURATION_MS, validator=attrs.validators.ge(0))
    concurrency: int = attrs.field(
        default=DEFAULT_CONCURRENCY,
        validator=[attrs.validators.ge(1), attrs.validators.le(MAX_CONCURRENCY)],
    )
    max_attempts: int = attrs.field(
        default=DEFAULT_MAX_ATTEMPTS, validator=[attrs.validators.ge(1), attrs.validators.le(100)]
    )
    chaos: bool = False
    chaos_down: float = attrs.field(default=DEFAULT_CHAOS_DOWN_S, validator=_positive)
    host: str = "127.0.0.1"
    port: int = attrs.field(
        default=0, validator=[attrs.validators.ge(0), attrs.validators.le(65535)]
    )
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT_S, validator=_positive)
