"""Schemathesis against a real ``botd server`` (SQLite and PostgreSQL), from its own
``/v1/openapi.json``: every operation, requests both valid and invalid by the document, a
few of each. No answer may be a server error (5xx), every answer must be one the
document lists for that operation, of its content type, matching its schema, and a
request the document calls invalid must be refused.

Bounded examples: 12 valid and 6 invalid requests per operation (derandomized), and a
long poll the document allows waits at most 50 ms (:func:`short_polls`). The document
is loaded once for both stores (its strategies are costly to build); each server must
serve the same one. About 30 s for both on 2 cores.

Real processes, real sockets, real time: the stores run under Trio in the server, so an
in-process ASGI client would not be the server that users run.

What is not checked: that every schema-valid request is accepted (``positive_data_acceptance``).
Some rules span fields or values, which JSON Schema does not say: an ack's ``lease_id``
must match its path, ``retry_base_s <= retry_max_s``, ``run_at`` is not with ``delay_s``,
and a cursor is only one the server made. Such a request is refused with 400 naming the
field, which is what the protocol promises.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from botd.models import MAX_WAIT_S
from tests.support.procs import Procs, free_ports, server_up, wait_for

pytestmark = pytest.mark.slow

TOKEN = "schemathesis-secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Examples per operation and mode: enough to reach every field, few enough for a loaded
#: 2-core machine (about 16 operations x 2 modes).
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
#: The longest long poll of a generated request (see :func:`short_polls`).
SHORT_POLL_S = 0.05


def started_server(procs: Procs, db: str) -> str:
    (port,) = free_ports(1)
    proc = procs.server("server", port, db, lease_ttl=5.0, heartbeat=1.0, token=TOKEN)
    url = f"http://127.0.0.1:{port}"
    wait_for("the server", lambda: server_up(url), (proc,))
    return url


@attrs.define
class _Loaded:
    """The served document and its operations, loaded once per test process: the second
    store's run reuses the strategies hypothesis built for the first (half its time)."""

    document: dict[str, Any] | None = None
    operations: list[Any] = attrs.Factory(list)


_LOADED = _Loaded()


def operations(url: str) -> list[Any]:
    """The operations of the document ``url`` serves (the same document on every store)."""
    served = httpx.get(f"{url}/v1/openapi.json", headers=AUTH, timeout=10).json()
    if _LOADED.document is None:
        # The server ignores query parameters it does not know (as HTTP servers do): asking
        # for them to be refused would be asking for a break of protocol v1.
        config = schemathesis.Config.from_dict({"generation": {"allow-extra-parameters": False}})
        schema = schemathesis.openapi.from_dict(served, config=config)
        _LOADED.operations = [result.ok() for result in schema.get_all_operations()]
        _LOADED.document = served
    assert served == _LOADED.document, "each store's server serves the same document"
    return _LOADED.operations


def fuzz(url: str) -> tuple[list[str], int]:
    """Run every operation of the server's document in both modes; the failures found
    (one line and the reproduction each) and how many requests were sent."""
    failures: list[str] = []
    sent = 0
    for operation in operations(url):
        for mode, examples in EXAMPLES.items():
            with contextlib.suppress(Unsatisfiable):  # GET /v1/health has nothing to break
                sent += fuzz_one(url, operation, mode, examples, failures)
    return failures, sent


def fuzz_one(
    url: str, operation: Any, mode: GenerationMode, examples: int, failures: list[str]
) -> int:
    """Up to ``examples`` requests of ``mode`` to ``operation``; failures go to ``failures``.
    Returns how many were sent."""
    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        short_polls(case)
        try:
            case.call_and_validate(
                base_url=url,
                headers=AUTH,
                timeout=30,
                excluded_checks=[positive_data_acceptance],
            )
        except BaseException as exc:  # schemathesis' FailureGroup is a BaseExceptionGroup
            if not isinstance(exc, Exception | BaseExceptionGroup):
                raise
            failures.append(f"{operation.label} ({mode.value}): {exc}")

    run()
    return sent


def short_polls(case: Any) -> None:
    """Bounded examples: a long poll (``wait_s`` of a claim or of a GET of a job) that the
    document allows waits at most SHORT_POLL_S, so that a run takes seconds, not minutes
    of claims waiting out 30 s for jobs that never come. Values out of bounds stay as
    generated: they must still be refused."""
    for where in (case.query, case.body):
        wait = where.get("wait_s") if isinstance(where, dict) else None
        number = isinstance(wait, int | float) and not isinstance(wait, bool)
        if number and SHORT_POLL_S < wait <= MAX_WAIT_S:
            where["wait_s"] = SHORT_POLL_S


def assert_clean(failures: list[str], sent: int) -> None:
    assert sent >= 100, f"only {sent} requests were made"
    shown = "\n\n".join(failures[:5])
    assert not failures, f"{len(failures)} failing requests out of {sent}:\n{shown}"


def test_schemathesis_finds_nothing_on_sqlite(procs: Procs, tmp_path: Path) -> None:
    url = started_server(procs, str(tmp_path / "jobs.db"))
    assert_clean(*fuzz(url))
    errors = [e for e in procs.all[0].logs() if e.get("level") == "ERROR"]
    assert not errors, errors[:3]


def test_schemathesis_finds_nothing_on_postgres(procs: Procs, pg_dsn: str) -> None:
    url = started_server(procs, pg_dsn)
    assert_clean(*fuzz(url))
    errors = [e for e in procs.all[0].logs() if e.get("level") == "ERROR"]
    assert not errors, errors[:3]
