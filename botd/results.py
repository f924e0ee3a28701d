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

Anything else (network errors, 5xx, a bad body) keeps the entry, behind the results breaker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import attrs
import trio
from loguru import logger

from .backoff import Backoff
from .breaker import CircuitBreaker
from .client import ServerClient
from .errors import RequestRejected, ServerError, SessionSuperseded, UnknownBot
from .models import Ack, AckResult, ClaimRequest
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

SETTLED_OK = frozenset({"recorded", "duplicate"})


@attrs.define
class ResultReporter:
    """Owns the sending side of the outbox. See the module docstring for the rules."""

    client: ServerClient
    outbox: Outbox
    breaker: CircuitBreaker
    backoff: Backoff
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

    async def settle(self, results: Iterable[AckResult | tuple[str, str, str]]) -> None:
        """Apply the server's answers (AckResults, or ``(lease_id, status, message)``):
        remove what is final, keep the rest."""
        done: list[str] = []
        for result in results:
            if isinstance(result, AckResult):
                result = (result.lease_id, result.status, result.message)
            lease_id, status, message = result
            self.sending.discard(lease_id)
            if self._is_final(lease_id, status, message):
                done.append(lease_id)
        if done:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await self.outbox.remove(done)

    async def run(self) -> None:
        """Send what no claim carried. This function never returns unless cancelled.

        Error handling: a failed send counts on the results breaker and is retried with backoff.
        """
        failures = 0
        while True:
            await self.outbox.wait_nonempty()
            await trio.sleep(ACK_GRACE_S)
            if self.claim_due():
                continue  # the claimer takes them: no request of our own
            acks = self.take(ACKS_PER_CLAIM)
            if not acks:
                # A claim carries them all: wait for a new entry (or look again in a while,
                # in case that claim fails and gives them back).
                with trio.move_on_after(IDLE_RECHECK_S):
                    await self.outbox.updated.wait_transition()
                continue
            await self.breaker.wait_ready()
            ok = await self._send_all(acks)
            if ok:
                failures = 0
            else:
                failures += 1
                await trio.sleep(self.backoff.delay(failures - 1))

    async def flush(self) -> bool:
        """Send every pending ack once (at shutdown). True when the outbox is empty.

        The caller bounds it with a cancel scope.
        """
        while self.outbox.count:
            acks = self.take(ACKS_PER_CLAIM)
            if not acks:
                await trio.sleep(ACK_GRACE_S)
                continue
            if not self.breaker.allow():
                self.give_back(acks)
                return False
            if not await self._send_all(acks):
                return False
        return True

    async def _send_all(self, acks: list[Ack]) -> bool:
        """Send ``acks``: in one claim of no jobs while a session lives, else one by one."""
        session = self.session
        if session is not None and len(acks) > 1:
            request = ClaimRequest(
                bot_id=session.bot_id, session_id=session.session_id, max_jobs=0, acks=acks
            )
            try:
                answer = await self.client.claim(request)
            except (UnknownBot, SessionSuperseded):
                self.session = None  # that session is gone: one by one below
            except ServerError as exc:
                self.give_back(acks)
                self.breaker.record_failure()
                logger.bind(event="ack_failed", count=len(acks), error=str(exc)).warning(
                    "acks failed; the results stay in the outbox: {}", exc
                )
                return False
            else:
                self.breaker.record_success()
                await self.settle(answer.acks)
                self.give_back(acks)  # any the answer did not mention are pending again
                return True
        return await self._send_each(acks)

    async def _send_each(self, acks: list[Ack]) -> bool:
        failed = False
        limiter = trio.CapacityLimiter(ACK_PARALLEL)

        async def send(ack: Ack) -> None:
            nonlocal failed
            async with limiter:
                if failed:
                    self.sending.discard(ack.lease_id)
                    return
                status: str
                try:
                    answer = await self.client.ack(ack)
                    status, message = answer.status, ""
                except RequestRejected as exc:
                    status, message = exc.code, exc.message
                except ServerError as exc:
                    failed = True
                    self.sending.discard(ack.lease_id)
                    self.breaker.record_failure()
                    logger.bind(event="ack_failed", lease_id=ack.lease_id, error=str(exc)).warning(
                        "ack failed; the result stays in the outbox: {}", exc
                    )
                    return
                self.breaker.record_success()
                await self.settle([(ack.lease_id, status, message)])

        try:
            async with trio.open_nursery() as nursery:
                for ack in acks:
                    nursery.start_soon(send, ack)
        finally:
            self.give_back(acks)
        return not failed

    def _is_final(self, lease_id: str, status: str, message: str) -> bool:
        log = logger.bind(lease_id=lease_id, ack_status=status)
        if status in SETTLED_OK:
            return True
        if status == "lease_lost":
            self.on_lease_lost()
            log.bind(event="lease_lost").warning(
                "lease {} was lost before its result arrived; the result is dropped", lease_id
            )
            return True
        if status in ("conflict", "unknown_lease", "not_found"):
            log.bind(event="ack_rejected", error=message).error(
                "the server will never accept the result of lease {}: {}", lease_id, status
            )
            return True
        return False  # an unknown status: keep it, and try again later
