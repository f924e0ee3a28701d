"""Run the checks against one server: preflight, each check in its own scope, cleanup.

:func:`run_suite` first makes sure the server answers and takes the token
(:class:`Unreachable` otherwise), registers one bot to learn the server's lease TTL, then
runs the selected checks one after the other, each under a deadline of its own, so a
server that hangs fails that check and the run goes on. Then it cleans up: every job of the
run that is not final is cancelled and every bot it registered is deregistered, shielded,
with a deadline. The checks marked ``after_cleanup`` (the error shape, the invariant) run
last, on what the run saw and left.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import trio

from .. import tls
from ..errors import BotdError, leaf_exceptions
from ..models import JobView
from . import checks_basics, checks_bots, checks_final, checks_jobs, checks_time, checks_work
from .bench import FINAL, QUICK_TTL_S, Bench, Run
from .probe import CheckFailed, CheckSkipped, NoAnswer, Probe
from .registry import CHECKS, Check
from .report import Report, Verdict, VerdictStatus

__all__ = ["CLEANUP_S", "SUITE", "Unreachable", "run_suite", "select"]

#: The modules whose checks make the suite, in the order they run.
_MODULES = (checks_basics, checks_bots, checks_jobs, checks_work, checks_time, checks_final)
_ORDER = [m.__name__ for m in _MODULES]
#: Every check, in the order a run takes them: module by module, as each declares them.
SUITE: list[Check] = sorted(CHECKS, key=lambda c: _ORDER.index(c.fn.__module__))
#: How long the cleanup may take, shielded.
CLEANUP_S = 20.0


class Unreachable(BotdError):
    """The suite cannot run: no server answers at the URL, or it refuses the token."""


def select(only: Sequence[str] = ()) -> list[Check]:
    """The checks to run: all of them, or those named in ``only`` (ValueError on a bad name)."""
    if not only:
        return list(SUITE)
    names = {c.name for c in SUITE}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(
            f"no check named {', '.join(unknown)}; the checks are: {', '.join(sorted(names))}"
        )
    return [c for c in SUITE if c.name in only]


async def _preflight(run: Run) -> None:
    probe = run.probe
    try:
        await probe.send("GET", "/v1/health", token=None, limit_s=10.0)
        answer = await probe.send("GET", "/v1/stats", limit_s=10.0)
    except NoAnswer as exc:
        raise Unreachable(f"no answer from the server: {exc.got}") from None
    if answer.status == 401:
        if probe.token is None:
            raise Unreachable(
                "the server wants a token (401 on GET /v1/stats): pass --token-file FILE,"
                " set BOTD_TOKEN, or pass --token"
            )
        raise Unreachable("the server refused the token (401 on GET /v1/stats): check it")
    with contextlib.suppress(CheckFailed):  # bots.register reports it; slow checks skip
        await run.bench(0).register(f"{run.prefix}-probe")


def _skip_reason(check: Check, run: Run) -> str | None:
    if not check.slow or run.slow:
        return None
    if run.lease_ttl_s is None:
        return "the server's lease_ttl_s is unknown (no registration succeeded)"
    if run.lease_ttl_s > QUICK_TTL_S:
        return (
            f"waits out the lease TTL: the server's lease_ttl_s is {run.lease_ttl_s:g} s"
            f" (over {QUICK_TTL_S:g} s); run with --slow"
        )
    return None


def _first_verdict_error(exc: BaseException) -> BaseException:
    """The error a check ended with: a nursery's group gives its first meaningful leaf."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = leaf_exceptions(exc)
        for kind in (CheckFailed, CheckSkipped):
            for leaf in leaves:
                if isinstance(leaf, kind):
                    return leaf
        return leaves[0] if leaves else exc
    return exc


async def _run_one(check: Check, bench: Bench) -> Verdict:
    run = bench.run
    started = trio.current_time()

    def verdict(status: VerdictStatus, **kw: str) -> Verdict:
        seconds = trio.current_time() - started
        return Verdict(check.name, check.title, status, seconds, check.extension, **kw)

    if reason := _skip_reason(check, run):
        return verdict("skip", reason=reason)
    budget = check.budget_s + (3 * (run.lease_ttl_s or 0.0) if check.slow else 0.0)
    seen = len(run.probe.exchanges)
    try:
        with trio.fail_after(budget):
            await check.fn(bench)
    except (Exception, BaseExceptionGroup) as raised:
        exc = _first_verdict_error(raised)
        if isinstance(exc, CheckSkipped):
            return verdict("skip", reason=str(exc))
        if isinstance(exc, CheckFailed):
            exchange = exc.exchange
            return verdict(
                "fail",
                expected=exc.expected,
                got=exc.got,
                request=exchange.request_line() if exchange else "",
                answer=exchange.answer_line() if exchange else "",
            )
        last = run.probe.exchanges[-1] if len(run.probe.exchanges) > seen else None
        if isinstance(exc, trio.TooSlowError):
            expected, got = f"the check to finish within {budget:g} s", "it did not"
        else:
            expected = "an answer the check can read"
            got = f"{type(exc).__name__}: {exc}"
        return verdict(
            "fail",
            expected=expected,
            got=got,
            request=last.request_line() if last else "",
            answer=last.answer_line() if last else "",
        )
    return verdict("pass")


async def _cleanup(run: Run, report: Report) -> None:
    """Cancel every job of the run that is not final; deregister every bot still on."""
    bench = run.bench(0)
    with trio.move_on_after(CLEANUP_S) as scope:
        scope.shield = True
        for job_id in run.job_ids:
            try:
                answer = await run.probe.send("GET", f"/v1/jobs/{job_id}")
                if answer.status == 200 and answer.decode(JobView).status not in FINAL:
                    await run.probe.send("POST", f"/v1/jobs/{job_id}/cancel")
            except CheckFailed as exc:
                report.leftovers.append(f"job {job_id}: {exc}")
        for session in run.sessions.values():
            if session.deregistered:
                continue
            try:
                await bench.deregister(session)
            except CheckFailed as exc:
                if "409" not in exc.got:  # superseded: a later session of it is deregistered
                    report.leftovers.append(f"bot {session.bot_id}: {exc}")
    if scope.cancelled_caught:
        report.leftovers.append(f"the cleanup did not finish within {CLEANUP_S:g} s")


async def run_suite(
    server: str,
    *,
    token: str | None = None,
    slow: bool = False,
    checks: Sequence[Check] | None = None,
    on_verdict: Callable[[Verdict], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    ca_file: Path | None = None,
) -> Report:
    """Run ``checks`` (all by default) against ``server``; the :class:`Report`.

    ``ca_file``: verify an https:// server against its CAs instead of the system's bundle.
    Raises :class:`Unreachable` when the server does not answer or refuses the token;
    ConfigError when ``ca_file`` cannot be used.
    ``on_verdict`` is called with each verdict as soon as it is known.
    """
    selected = list(SUITE if checks is None else checks)
    started = trio.current_time()
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = tls.client_context(ca_file=ca_file, names=("--ca-file", "", ""))
    trust = tls.Trust(
        ca=f"--ca-file {ca_file}" if ca_file else None,
        cert_hint="botd conformance cannot present one",
    )
    async with httpx.AsyncClient(base_url=server, transport=transport, verify=verify) as client:
        run = Run(Probe(client, token, verify=verify, trust=trust), slow=slow)
        report = Report(server, run.prefix)
        await _preflight(run)

        async def run_each(group: list[Check]) -> None:
            for check in group:
                result = await _run_one(check, run.bench(len(report.verdicts) + 1))
                report.verdicts.append(result)
                if on_verdict is not None:
                    on_verdict(result)

        await run_each([c for c in selected if not c.after_cleanup])
        await _cleanup(run, report)
        await run_each([c for c in selected if c.after_cleanup])
    report.seconds = trio.current_time() - started
    return report
