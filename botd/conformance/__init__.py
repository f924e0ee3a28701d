"""The protocol v1 conformance suite: ``botd conformance URL`` against anyone's main server.

The suite is data and checks, not the reference server's tests: each check
(:mod:`.checks_basics`, :mod:`.checks_bots`, :mod:`.checks_jobs`, :mod:`.checks_work`,
:mod:`.checks_time`, :mod:`.checks_final`) states one rule of docs/protocol.md and verifies
it from outside, over HTTP, with jobs and bots of its own (:mod:`.bench`). :mod:`.probe`
sends the requests and keeps them for the report; :mod:`.runner` runs the checks, each
under a deadline, and cleans up; :mod:`.report` renders the verdicts; :mod:`.command` is
the ``botd conformance`` command.

It never imports the reference server: it knows the server only by its URL.
"""

from __future__ import annotations

from .registry import Check
from .report import Report, Verdict
from .runner import SUITE, Unreachable, run_suite, select

__all__ = ["SUITE", "Check", "Report", "Unreachable", "Verdict", "run_suite", "select"]
