"""The list of checks: each one a name, what it verifies, and an async function.

A check module declares its checks with :func:`check`; :data:`CHECKS` holds them as they
were declared (:data:`botd.conformance.runner.SUITE` puts them in the order they run).
A check function takes a :class:`~botd.conformance.bench.Bench` and returns when the server
did what docs/protocol.md says; it raises :class:`~botd.conformance.probe.CheckFailed` when
it did not, and :class:`~botd.conformance.probe.CheckSkipped` when it cannot tell.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from .bench import Bench

__all__ = ["CHECKS", "Check", "CheckFn", "check"]

CheckFn = Callable[["Bench"], Awaitable[None]]


@attrs.frozen
class Check:
    """One rule of the protocol and the function that verifies it."""

    name: str
    title: str
    fn: CheckFn = attrs.field(repr=False)
    #: Waits out the server's lease TTL (or a share of it): runs only with ``--slow`` when
    #: that TTL is over :data:`~botd.conformance.bench.QUICK_TTL_S`.
    slow: bool = False
    #: Checks a documented extension to the contract rather than the contract itself.
    extension: bool = False
    #: Runs after the cleanup (every job of the run final, every bot deregistered), on what
    #: the run saw and left.
    after_cleanup: bool = False
    #: Longest the check may take, in seconds, beyond the waits it makes on the lease TTL.
    budget_s: float = 30.0


CHECKS: list[Check] = []


def check(
    name: str,
    title: str,
    *,
    slow: bool = False,
    extension: bool = False,
    after_cleanup: bool = False,
    budget_s: float = 30.0,
) -> Callable[[CheckFn], CheckFn]:
    """Register the decorated function as the check ``name``."""

    def register(fn: CheckFn) -> CheckFn:
        if any(c.name == name for c in CHECKS):
            raise ValueError(f"two conformance checks are named {name!r}")
        CHECKS.append(
            Check(
                name,
                title,
                fn,
                slow=slow,
                extension=extension,
                after_cleanup=after_cleanup,
                budget_s=budget_s,
            )
        )
        return fn

    return register
