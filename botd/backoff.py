"""Exponential backoff with full jitter.

``delay(n) = uniform(0, min(cap, base * 2**n))`` for attempt ``n`` counted from 0, as in
"Exponential Backoff And Jitter" (AWS Architecture Blog, 2015): a fleet of bots that lost
the server at the same moment spreads its retries over the whole window instead of
coming back in lockstep. The class is pure: it computes delays and never sleeps.
"""

from __future__ import annotations

import math
import random

__all__ = ["Backoff"]


class Backoff:
    """Full-jitter exponential backoff between ``0`` and ``min(cap, base * 2**attempt)``.

    Args:
        base: the ceiling of attempt 0, in seconds (> 0).
        cap: the largest ceiling, in seconds (>= base).
        rng: the random source; pass a seeded ``random.Random`` for reproducible tests.

    Errors: a non-positive base, a cap below base, or a negative attempt raise ValueError.
    Big attempts never overflow: the ceiling simply stays at ``cap``.
    """

    __slots__ = ("_rng", "base", "cap")

    def __init__(self, base: float, cap: float, *, rng: random.Random | None = None) -> None:
        if not (math.isfinite(base) and base > 0):
            raise ValueError(f"backoff base must be a finite number > 0, got {base!r}")
        if not (math.isfinite(cap) and cap >= base):
            raise ValueError(f"backoff cap must be a finite number >= base ({base}), got {cap!r}")
        self.base = float(base)
        self.cap = float(cap)
        self._rng = rng if rng is not None else random.Random()

    def ceiling(self, attempt: int) -> float:
        """The largest delay of ``attempt`` (from 0): ``min(cap, base * 2**attempt)``."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            grown = math.ldexp(self.base, attempt)
        except OverflowError:
            return self.cap
        return min(self.cap, grown)

    def delay(self, attempt: int) -> float:
        """A random delay in ``[0, ceiling(attempt)]`` for ``attempt`` (counted from 0)."""
        return self._rng.uniform(0.0, self.ceiling(attempt))

    def __repr__(self) -> str:
        return f"Backoff(base={self.base}, cap={self.cap})"
