"""The conformance suite's own parts: verdict lines, the error-shape judge, selection, the
registry, and the runner's verdicts on an ASGI app (autojump_clock: no real time)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from botd.conformance import SUITE, Report, Verdict, run_suite, select
from botd.conformance.bench import Bench
from botd.conformance.probe import Exchange, error_shape_problem, shorten
from botd.conformance.registry import Check, check
from tests.support.server import make_app


def exchange(status: int, content: bytes, content_type: str = "application/json") -> Exchange:
    return Exchange("POST", "/v1/x", {"a": 1}, status, content, content_type, 0.01)


def test_a_failure_shows_the_request_the_expectation_and_the_answer() -> None:
    verdict = Verdict(
        "ack.duplicate", "t", "fail", 0.05, expected="200 dup", got="409 conflict",
        request="POST /v1/leases/l/ack {}", answer="409 conflict",
    )  # fmt: skip
    lines = verdict.lines()
    assert lines[0].startswith("FAIL  ack.duplicate")
    assert lines[1:] == [
        "      expected: 200 dup",
        "      got:      409 conflict",
        "      request:  POST /v1/leases/l/ack {}",
    ]
    skip = Verdict("lease.expiry", "t", "skip", 0.0, extension=True, reason="run with --slow")
    assert skip.lines() == [
        "SKIP  lease.expiry                         0.00 s [extension]  run with --slow"
    ]


def test_long_bodies_are_shortened_and_say_by_how_much() -> None:
    assert shorten("x" * 10, 20) == "x" * 10
    assert shorten("x" * 310, 300) == "x" * 300 + "... (10 more characters)"
    big = exchange(200, b"y" * 5000)
    assert len(big.answer_line()) < 400 and "4700 more characters" in big.answer_line()
    assert exchange(0, b"").answer_line() == "no answer"


@pytest.mark.parametrize(
    ("content", "content_type", "problem"),
    [
        (b'{"error": {"code": "x", "message": "do y"}}', "application/json", None),
        (b'{"detail": "no"}', "application/json", "not {"),
        (b'{"error": {"code": "x"}}', "application/json", "error.message"),
        (b'{"error": {"code": "", "message": "m"}}', "application/json", "error.code"),
        (b'{"error": "x"}', "application/json", "not {"),
        (b"<h1>404</h1>", "text/html", "text/html"),
        (b"not json", "application/json", "not {"),
    ],
)
def test_the_error_shape_judge(content: bytes, content_type: str, problem: str | None) -> None:
    found = error_shape_problem(exchange(400, content, content_type))
    assert (found is None) if problem is None else (found is not None and problem in found)


@given(st.binary(max_size=200), st.sampled_from(["application/json", "text/plain", ""]))
def test_the_error_shape_judge_never_raises(content: bytes, content_type: str) -> None:
    found = error_shape_problem(exchange(500, content, content_type))
    assert found is None or isinstance(found, str)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
    max_leaves=10,
)


def is_error_body(body: object) -> bool:
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    return all(
        isinstance(body["error"].get(k), str) and body["error"][k] for k in ("code", "message")
    )


@given(JSON)
def test_any_json_body_is_judged(body: object) -> None:
    found = error_shape_problem(exchange(409, json.dumps(body).encode()))
    assert (found is None) == is_error_body(body)


def test_select_runs_named_checks_in_suite_order_and_refuses_unknown_names() -> None:
    assert select() == SUITE
    assert [c.name for c in select(["invariant", "health"])] == ["health", "invariant"]
    with pytest.raises(ValueError, match="no check named nope"):
        select(["health", "nope"])
    names = [c.name for c in SUITE]
    assert len(names) == len(set(names))
    assert [c.name for c in SUITE if c.after_cleanup] == names[-2:]


def test_two_checks_cannot_share_a_name() -> None:
    with pytest.raises(ValueError, match="two conformance checks are named 'health'"):
        check("health", "again")(lambda b: None)  # type: ignore[arg-type,return-value]


def test_the_report_counts_and_serialises() -> None:
    report = Report("http://s", "botd-conformance-x")
    report.verdicts += [Verdict("a", "t", "pass", 0.1), Verdict("b", "t", "skip", 0.0, reason="r")]
    assert report.exit_code == 0
    report.verdicts.append(Verdict("c", "t", "fail", 0.2, expected="e", got="g"))
    doc = json.loads(json.dumps(report.as_dict()))
    assert (doc["passed"], doc["failed"], doc["skipped"], doc["exit_code"]) == (1, 1, 1, 1)
    assert "failed: c" in report.summary()


async def test_on_an_asgi_app_the_quick_checks_pass_and_a_hung_check_fails_alone(
    autojump_clock: object,
) -> None:
    """The runner against the reference app on autojump_clock: one in-process pass over the
    checks that need no concurrency of their own, then a check that never ends."""
    app, store = make_app(lease_ttl_s=2.0, heartbeat_interval_s=0.5)
    names = ["health", "bots.register", "jobs.submit", "ack.recorded", "ack.conflict",
             "jobs.idempotency", "invariant", "errors.body_shape"]  # fmt: skip
    transport = httpx.ASGITransport(app=app)
    report = await run_suite("http://botd.test", checks=select(names), transport=transport)
    assert [v.status for v in report.verdicts] == ["pass"] * len(names), report.summary()
    assert report.leftovers == []

    async def hangs(bench: Bench) -> None:
        await bench.register()
        await trio.sleep_forever()

    hung = Check("test.hangs", "never ends", hangs, budget_s=5.0)
    report = await run_suite("http://botd.test", checks=[hung, *select(["health"])],
                             transport=transport)  # fmt: skip
    first, second = report.verdicts
    assert (first.status, first.expected, first.got) == (
        "fail", "the check to finish within 5 s", "it did not"
    )  # fmt: skip
    assert first.request.startswith("POST /v1/bots/register")
    assert second.status == "pass"
    await store.aclose()
