"""Reporting results: the outbox is drained into acks, and each ack's answer is settled.

Acks ride on the next claim when one is due (the claimer takes them with :meth:`take`). A
claim is due while the claimer is busy: its last answer was a full batch (the queue has more)
and its next claim goes out, or comes back, within ``CLAIM_DUE_S``. Otherwise (the claim is
parked in a long poll, claiming is paused, there is no session) :meth:`ResultReporter.run`
sends what waited ``ACK_GRACE_S`` itself: all of it in one ``POST /v1/jobs/claim`` with
``max_jobs=0`` while a session lives, else ``POST /v1/leases/{id}/ack`` each. An entry
leaves the outbox only when the server has answered for it:

- ``recorded`` / ``duplicate``: done (a duplicate is a success: the first one landed);
- ``lease_lost``: another bot has the job; this result must not be recorded; counted;
- ``conflict`` / ``unknown_lease``: the server will never take it; logged as an error.

An ack the server answers 400 or 413 (``invalid_request``, ``payload_too_large``) is final
too: the server will never take that body, so it is never sent again. It is logged as an
ERROR (``result_refused``) and counted (``botd_acks_refused_total{status}``), and its entry
is replaced, durably, by a small failure of type ``result_refused`` (a ``failed`` ack keeps its
``retryable``; anything else is not retryable), so the job ends instead of running again when
its lease is requeued; if the server refuses that one too (or there was nothing smaller to
send: a release), the entry is dropped. A claim that carried acks and is answered 400/413
cannot tell which ack it was: those acks are sent alone from then on (one request each), so
the refused one is found and the others land. A refused ack still counts as a failed send
of its call (logged, backed off), so nothing is sent in a tight loop.

One claim carries at most ``ACKS_PER_CLAIM`` acks and about ``ACK_BYTES_PER_CLAIM`` bytes of
results (the server takes request bodies up to 1 MiB); a larger result goes alone.

Anything else (network errors, 5xx, a bad body, a status this bot does not know) keeps the
entry; the sends go through the results loop's call policy (:mod:`botd.call_policy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import cast, get_args

import attrs
import trio
from loguru import logger

from .call_policy import SESSION_LOST_ERRORS, CallPolicy
from .client import ServerClient
from .errors import (
    CircuitOpen,
    ProtocolError,
    RequestRejected,
    ServerError,
)
from .events import Event
from .models import Ack, AckResult, AckStatus, ClaimRequest, FailureInfo
from .outbox import Outbox
from .session import Session

__all__ = ["ResultReporter"]

#: How long a finished result waits for a claim to carry it before it is sent on its own.
ACK_GRACE_S = 0.02
#: A busy claimer's next claim is due within this long of its last one starting or ending.
CLAIM_DUE_S = 0.25
#: ... or within this many of its last full claim's round trips, when that is shorter (but
#: at least CLAIM_DUE_MIN_S): a claim out much longer than a busy one is a long poll of an
#: emptied queue, and the acks that could not ride it should not wait for its answer.
CLAIM_DUE_RTTS = 4
CLAIM_DUE_MIN_S = 0.05
#: How often the reporter looks again while every pending ack rides on a claim.
IDLE_RECHECK_S = 1.0
#: Acks sent at once by the reporter.
ACK_PARALLEL = 8
#: Acks carried by one claim.
ACKS_PER_CLAIM = 500
#: About the most bytes of results one claim carries (the server's request limit is 1 MiB).
ACK_BYTES_PER_CLAIM = 512 * 1024
#: The statuses of an ack that the server will never take as it is: 400 invalid_request
#: (a body it cannot read, e.g. a result too deep) and 413 payload_too_large.
REFUSED_STATUSES = frozenset({400, 413})


def refused_for_good(exc: RequestRejected) -> bool:
    """The server will never take this ack: a 413, or a 400 ``invalid_request`` of the
    protocol's own error body. A bare 400 (no such body: an HTTP layer that got a request
    cut short on the way) may pass next time, so it is retried like an outage."""
    if exc.status == 413:
        return True
    return exc.status in REFUSED_STATUSES and exc.code == "invalid_request"


#: The failure type of the small ack that replaces one the server refused.
RESULT_REFUSED = "result_refused"

#: The answers about a lease (protocol v1's AckStatus), each final; any other answer to an
#: ack (a 400, a 409 or 404 of another code, a 5xx...) leaves its entry pending.
ACK_STATUSES = frozenset(get_args(AckStatus))


@attrs.define
class ResultReporter:
    """Owns the sending side of the outbox. See the module docstring for the rules."""

    client: ServerClient
    outbox: Outbox
    calls: CallPolicy
    on_lease_lost: Callable[[], None] = lambda: None
    #: Called with the HTTP status of every ack the server refused (400 or 413).
    on_refused: Callable[[int], None] = lambda status: None
    sending: set[str] = attrs.field(factory=set)
    #: Leases whose acks go alone, one request each (a claim that carried them was refused).
    alone: set[str] = attrs.field(factory=set)
    #: The live session, set by the claimer: lets the reporter send acks in one batch.
    session: Session | None = None
    _claim_busy: bool = False  # the last claim answer was a full batch
    _claim_mark: float = -math.inf  # when the last claim started or ended (Trio time)
    _claim_sent: float | None = None  # when the claim now in flight started
    _due_window: float = CLAIM_DUE_S  # see claim_due

    def claim_started(self) -> list[Ack]:
        """The claimer is sending a claim: return the acks it carries (see :meth:`take`)."""
        self._claim_mark = self._claim_sent = trio.current_time()
        return self.take()

    def claim_ended(self, *, full: bool) -> None:
        """The claim came back (``full``: with as many jobs as it asked for) or failed."""
        now = trio.current_time()
        if full and self._claim_sent is not None:
            rtt = now - self._claim_sent
            self._due_window = min(CLAIM_DUE_S, max(CLAIM_DUE_MIN_S, CLAIM_DUE_RTTS * rtt))
        self._claim_busy = full
        self._claim_mark = now
        self._claim_sent = None

    def claim_due(self) -> bool:
        """True while a claim that will carry the pending acks is about to go or come back:
        the last answer was a full batch, and the last claim started or ended within
        CLAIM_DUE_S, or within CLAIM_DUE_RTTS of the last full claim's round trip if that
        is shorter (never below CLAIM_DUE_MIN_S)."""
        return self._claim_busy and trio.current_time() - self._claim_mark < self._due_window

    def take(self, limit: int = ACKS_PER_CLAIM, *, alone: bool = False) -> list[Ack]:
        """Mark up to ``limit`` pending acks (and about ``ACK_BYTES_PER_CLAIM``; the first
        always) as being sent and return them (for a claim). ``alone``: also those that go
        alone (the reporter's own sends)."""
        acks: list[Ack] = []
        budget = ACK_BYTES_PER_CLAIM
        for entry in self.outbox.pending():
            if len(acks) >= limit:
                break
            lease_id = entry.lease_id
            if lease_id in self.sending or (not alone and lease_id in self.alone):
                continue
            if acks and entry.size > budget:
                continue  # a large one goes first in a claim of its own
            budget -= entry.size
            self.sending.add(lease_id)
            acks.append(entry.ack)
        return acks

    def claim_refused(self, acks: Iterable[Ack]) -> None:
        """A claim that carried ``acks`` was answered 400/413: each goes alone from now on."""
        self.alone.update(ack.lease_id for ack in acks)

    def _alone_waiting(self) -> bool:
        """True when an ack that goes alone waits (no claim will carry it)."""
        return any(x in self.outbox and x not in self.sending for x in self.alone)

    def give_back(self, acks: Iterable[Ack]) -> None:
        """The request that carried ``acks`` failed: they are pending again."""
        for ack in acks:
            self.sending.discard(ack.lease_id)

    async def settle(self, results: Iterable[AckResult], *, defer: bool = False) -> None:
        """Apply the server's answers about leases. Each is final (the module docstring
        says why), so its entry leaves the outbox; any ack not answered stays pending.
        ``defer``: jobs were just started, so a commit comes soon: the entries leave the
        file in it (:meth:`~botd.outbox.Outbox.remove`)."""
        done: list[str] = []
        for result in results:
            self.sending.discard(result.lease_id)
            self.alone.discard(result.lease_id)
            self._report(result)
            done.append(result.lease_id)
        if done:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.outbox.remove(done, defer=defer)

    async def run(self) -> None:
        """Send what no claim carried. This function never returns unless cancelled.

        Error handling: the call policy (a failed send counts on the results breaker and is
        retried after a backoff); an ack the server answers with a status this bot does not
        know stays in the outbox and is sent again.
        """
        while True:
            await self.outbox.wait_nonempty()
            await trio.sleep(ACK_GRACE_S)
            if self.claim_due() and not self._alone_waiting():
                continue  # the claimer takes them: no request of our own
            await self.calls.wait_ready()
            acks = self.take(ACKS_PER_CLAIM, alone=True)
            if not acks:
                # A claim carries them all: wait for a new entry (or look again in a while,
                # in case that claim fails and gives them back).
                with trio.move_on_after(IDLE_RECHECK_S):
                    await self.outbox.updated.wait_transition()
                continue
            async with self.calls.call(count=len(acks)):
                try:
                    await self._send_all(acks)
                finally:
                    self.give_back(acks)  # any the answer did not settle are pending again

    async def flush(self) -> bool:
        """Send every pending ack once (at shutdown). True when the outbox is empty.

        Does not wait for an open breaker and does not back off: the caller bounds it with
        a cancel scope. Raises Unrecoverable on 401/403.
        """
        while self.outbox.count:
            acks = self.take(ACKS_PER_CLAIM, alone=True)
            if not acks:
                await trio.sleep(ACK_GRACE_S)
                continue
            try:
                async with self.calls.call(wait=False, backoff=False, count=len(acks)) as call:
                    await self._send_all(acks)
            except CircuitOpen:
                return False
            finally:
                self.give_back(acks)
            if not call.ok:
                return False
        return True

    async def _send_all(self, acks: list[Ack]) -> None:
        """Send ``acks``: in one claim of no jobs while a session lives, else one by one.

        Raises the ServerError of a failed send; the answers that came back are settled.
        """
        session = self.session
        batch = [ack for ack in acks if ack.lease_id not in self.alone]
        if session is not None and len(batch) > 1:
            request = ClaimRequest(
                bot_id=session.bot_id, session_id=session.session_id, max_jobs=0, acks=batch
            )
            try:
                answer = await self.client.claim(request)
            except SESSION_LOST_ERRORS:
                self.session = None  # that session is gone: one by one below
            except RequestRejected as exc:
                if refused_for_good(exc):
                    self.claim_refused(batch)  # which one? each goes alone next time
                raise
            else:
                await self.settle(answer.acks)
                acks = [ack for ack in acks if ack.lease_id in self.alone]
                if not acks:
                    return
        await self._send_each(acks)

    async def _send_each(self, acks: list[Ack]) -> None:
        """``POST /v1/leases/{id}/ack`` for each, ``ACK_PARALLEL`` at a time; the first
        failure stops the sends that have not started and is raised once all have ended."""
        failure: ServerError | None = None
        limiter = trio.CapacityLimiter(ACK_PARALLEL)

        async def send(ack: Ack) -> None:
            nonlocal failure
            async with limiter:
                if failure is not None:
                    return
                status: AckStatus
                try:
                    answer = await self.client.ack(ack)
                    status, message = answer.status, ""
                except SESSION_LOST_ERRORS as exc:  # not a lease's answer
                    failure = failure or ProtocolError(f"ack: unexpected answer: {exc}")
                    return
                except RequestRejected as exc:
                    if exc.code not in ACK_STATUSES:
                        # Not an answer about the lease: the server did not record the
                        # result, and the send failed. A 400/413 will never pass: the
                        # entry is replaced or dropped; anything else (a proxy's 409) stays.
                        if refused_for_good(exc):
                            await self._refused(ack, exc)
                        failure = failure or exc
                        return
                    status, message = cast(AckStatus, exc.code), exc.message  # 409 lease_lost
                except ServerError as exc:
                    failure = failure or exc
                    return
                await self.settle([AckResult(ack.lease_id, status, message)])

        async with trio.open_nursery() as nursery:
            for ack in acks:
                nursery.start_soon(send, ack)
        if failure is not None:
            raise failure

    async def _refused(self, ack: Ack, exc: RequestRejected) -> None:
        """The server answered ``ack`` 400/413: replace it with a small failure, or drop it."""
        self.on_refused(exc.status)
        lease_id = ack.lease_id
        small = _small_failure(ack, exc)
        log = logger.bind(
            event=Event.RESULT_REFUSED,
            lease_id=lease_id,
            http_status=exc.status,
            error_code=_printable(exc.code, 64),
            error=_printable(exc.message, 300),
            action="dropped" if small is None else "replaced",
        )
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            if small is None:
                self.alone.discard(lease_id)
                await self.outbox.remove([lease_id])
                log.error(
                    "the server refused the result of lease {} ({} {}); it will never take"
                    " it, so it is dropped",
                    lease_id, exc.status, exc.code,
                )  # fmt: skip
            else:
                await self.outbox.replace(lease_id, small)
                log.error(
                    "the server refused the result of lease {} ({} {}); it will never take"
                    " it, so the job is reported failed ({}) instead",
                    lease_id, exc.status, exc.code, RESULT_REFUSED,
                )  # fmt: skip

    def _report(self, result: AckResult) -> None:
        """Log (and count) the answers other than a success."""
        lease_id, status = result.lease_id, result.status
        log = logger.bind(lease_id=lease_id, ack_status=status)
        if status == "lease_lost":
            self.on_lease_lost()
            log.bind(event=Event.LEASE_LOST).warning(
                "lease {} was lost before its result arrived; the result is dropped", lease_id
            )
        elif status in ("conflict", "unknown_lease"):
            log.bind(event=Event.ACK_REJECTED, error=result.message).error(
                "the server will never accept the result of lease {}: {}", lease_id, status
            )


def _printable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters of printable ASCII (a server's words, made safe
    to log and to send back)."""
    return "".join(c for c in text[: limit * 2] if " " <= c <= "~")[:limit]


def _small_failure(ack: Ack, exc: RequestRejected) -> Ack | None:
    """The small ack that stands for ``ack`` once the server refused it; None when there is
    nothing smaller to say (a release, or a stand-in already)."""
    if ack.outcome == "released" or (ack.error is not None and ack.error.type == RESULT_REFUSED):
        return None
    retryable = ack.error.retryable if ack.outcome == "failed" and ack.error else False
    message = (
        f"the server refused the job's {ack.outcome} result ({exc.status}"
        f" {_printable(exc.code, 64)}: {_printable(exc.message, 300)}); it was not recorded"
    )
    error = FailureInfo(type=RESULT_REFUSED, message=message, retryable=retryable)
    return Ack(lease_id=ack.lease_id, outcome="failed", error=error)
