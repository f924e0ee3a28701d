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
from .models import Ack, AckResult, AckStatus, ClaimRequest
from .outbox import Outbox
from .session import Session

__all__ = ["ResultReporter"]

#: How long a finished result waits for a claim to carry it before it is sent on its own.
ACK_GRACE_S = 0.02
#: A busy claimer's next claim is due within this long of its last one starting or ending.
CLAIM_DUE_S = 0.25
#: How often the reporter looks again while every pending ack rides on a claim.
IDLE_RECHECK_S = 1.0
#: Acks sent at once by the reporter.
ACK_PARALLEL = 8
#: Acks carried by one claim.
ACKS_PER_CLAIM = 500

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
    sending: set[str] = attrs.field(factory=set)
    #: The live session, set by the claimer: lets the reporter send acks in one batch.
    session: Session | None = None
    _claim_busy: bool = False  # the last claim answer was a full batch
    _claim_mark: float = -math.inf  # when the last claim started or ended (Trio time)

    def claim_started(self) -> list[Ack]:
        """The claimer is sending a claim: return the acks it carries (see :meth:`take`)."""
        self._claim_mark = trio.current_time()
        return self.take()

    def claim_ended(self, *, full: bool) -> None:
        """The claim came back (``full``: with as many jobs as it asked for) or failed."""
        self._claim_busy = full
        self._claim_mark = trio.current_time()

    def claim_due(self) -> bool:
        """True while a claim that will carry the pending acks is about to go or come back."""
        return self._claim_busy and trio.current_time() - self._claim_mark < CLAIM_DUE_S

    def take(self, limit: int = ACKS_PER_CLAIM) -> list[Ack]:
        """Mark up to ``limit`` pending acks as being sent and return them (for a claim)."""
        acks: list[Ack] = []
        for entry in self.outbox.pending():
            if len(acks) >= limit:
                break
            if entry.lease_id not in self.sending:
                self.sending.add(entry.lease_id)
                acks.append(entry.ack)
        return acks

    def give_back(self, acks: Iterable[Ack]) -> None:
        """The request that carried ``acks`` failed: they are pending again."""
        for ack in acks:
            self.sending.discard(ack.lease_id)

    async def settle(self, results: Iterable[AckResult]) -> None:
        """Apply the server's answers about leases. Each is final (the module docstring
        says why), so its entry leaves the outbox; any ack not answered stays pending."""
        done: list[str] = []
        for result in results:
            self.sending.discard(result.lease_id)
            self._report(result)
            done.append(result.lease_id)
        if done:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.outbox.remove(done)

    async def run(self) -> None:
        """Send what no claim carried. This function never returns unless cancelled.

        Error handling: the call policy (a failed send counts on the results breaker and is
        retried after a backoff); an ack the server answers with a status this bot does not
        know stays in the outbox and is sent again.
        """
        while True:
            await self.outbox.wait_nonempty()
            await trio.sleep(ACK_GRACE_S)
            if self.claim_due():
                continue  # the claimer takes them: no request of our own
            await self.calls.wait_ready()
            acks = self.take(ACKS_PER_CLAIM)
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
            acks = self.take(ACKS_PER_CLAIM)
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
        if session is not None and len(acks) > 1:
            request = ClaimRequest(
                bot_id=session.bot_id, session_id=session.session_id, max_jobs=0, acks=acks
            )
            try:
                answer = await self.client.claim(request)
            except SESSION_LOST_ERRORS:
                self.session = None  # that session is gone: one by one below
            else:
                await self.settle(answer.acks)
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
                        # Not an answer about the lease (a 400, a proxy's 409): the server
                        # did not record the result, so it stays, and the send failed.
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
