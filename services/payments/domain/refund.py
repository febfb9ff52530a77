"""Refund execution: the Refund aggregate (stream `refund-{refund_id}`), one per refund line that
runs, and the pure rules that say which lines run and how a refund requested by a person is
split over the order's payments.

Where refunds come from. A Transaction decides refunds (transaction.py): a cancellation plan's
refunds (TransactionRefunded), a settlement's excess (TransactionSettled), held refunds released
after a dispute (TransactionHeldRefundsReleased), money that arrived but could not be taken
(TransactionPaymentToReturn), and a refund issued by customer service (TransactionRefundIssued).
`refunds_to_run` reads the Transaction's new events and lists the lines that must run now —
held ones run only when released — each with an id derived from the Transaction version its
event lands at, so one decision gives one Refund however often the deciding message is
redelivered.

How a line runs (back along the original path, seed 五 原路退回):
- member balance: credited back to the wallet in the same database transaction, so the Refund
  is requested and succeeded at once (`provider` None);
- third party (a card through Stripe): requested; a provider connector calls the provider's
  refund API with the refund id as idempotency key and `metadata.closeloop_refund_id`, and the
  provider's `refund.updated` / `charge.refund.updated` events move it on: pending (accepted) ->
  succeeded, or failed / canceled -> failed. A failed refund waits for an operator's retry.

Lifecycle: requested -> pending -> succeeded; requested | pending -> failed -> (retry) requested.
A repeated or stale provider report changes nothing (the provider repeats itself; a refund that
succeeded stays succeeded).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from libs.domain.types import Code, Id, Reference, Text
from services.payments.domain.events import (
    TOPIC,
    Refund,
    RefundSource,
    Tender,
    TenderKind,
    TransactionHeldRefundsReleased,
    TransactionPaymentToReturn,
    TransactionRefunded,
    TransactionRefundIssued,
    TransactionRefundsHeld,
    TransactionSettled,
)
from services.payments.domain.settlement import REFUND_PRIORITY

__all__ = [
    "REFUND_MACHINE",
    "STREAM_CATEGORY",
    "RefundExecution",
    "RefundFailed",
    "RefundLine",
    "RefundPending",
    "RefundRequested",
    "RefundRetried",
    "RefundStatus",
    "RefundSucceeded",
    "plan_issued_refund",
    "refunds_to_run",
]

STREAM_CATEGORY = "refund"
PROVIDER = "stripe"


class RefundStatus(StrEnum):
    REQUESTED = "requested"  # decided; waiting for the provider to accept it
    PENDING = "pending"  # the provider accepted it; the money is on its way back
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the provider refused or canceled it; an operator retries it


RefundLine = tuple[str, RefundSource, Refund]  # (refund id, what owes it, the line)


# --- which lines run --------------------------------------------------------------------------------


def refunds_to_run(order_id: str, base_version: int, pending: Sequence[DomainEvent]) -> list[RefundLine]:
    """The refund lines that run because of these new Transaction events (appended after
    `base_version`), in order. Lines that are held wait for their release event."""
    held = {e.source for e in pending if isinstance(e, TransactionRefundsHeld)}
    out: list[RefundLine] = []
    for n, e in enumerate(pending, start=1):
        version = base_version + n
        lines: list[Refund] = []
        source: RefundSource
        match e:
            case TransactionRefunded() if RefundSource.CANCELLATION not in held:
                source, lines = RefundSource.CANCELLATION, list(e.plan.refunds)
            case TransactionSettled() if RefundSource.SETTLEMENT not in held:
                source, lines = RefundSource.SETTLEMENT, list(e.plan.refunds)
            case TransactionHeldRefundsReleased():
                source, lines = e.source, list(e.refunds)
            case TransactionPaymentToReturn():
                t = e.tender
                source = RefundSource.PAYMENT_TO_RETURN
                lines = [Refund(kind=t.kind, amount=t.amount, reference=t.reference, tender=t)] if t.kind.is_money \
                    else []
            case TransactionRefundIssued():
                source, lines = RefundSource.ISSUED, list(e.refunds)
            case _:
                continue
        for i, line in enumerate(lines, start=1):
            if line.kind is TenderKind.VOUCHER:
                continue  # vouchers go back as vouchers (plan.vouchers_returned), never as money
            out.append((f"{order_id}.{version}.{i}", source, line))
    return out


def plan_issued_refund(amount: Money, tenders: Sequence[Tender], refunded: Mapping[tuple[TenderKind, str], int],
                       ) -> list[Refund]:
    """Split a refund a person asks for over the order's money tenders, back along the original path
    (third party > member balance), each at most what it paid less what it already got back.
    RuleViolation("amount") when the order's money cannot cover it: a refund never exceeds what was
    paid online (seed 五, the safety rule)."""
    if amount.amount <= 0:
        raise RuleViolation("amount", "must be positive")
    # Cash goes back hand to hand, outside the platform: only online money is refunded here.
    money = [t for t in tenders if t.kind in (TenderKind.THIRD_PARTY, TenderKind.MEMBER_BALANCE)]
    left_of = {(t.kind, t.reference): t.amount.amount - refunded.get((t.kind, t.reference), 0) for t in money}
    refundable = sum(max(v, 0) for v in left_of.values())
    if amount.amount > refundable:
        paid = sum(t.amount.amount for t in money)
        raise RuleViolation("amount", f"at most {Money(amount=max(refundable, 0), currency=amount.currency)} can "
                                      f"still be refunded: {Money(amount=paid, currency=amount.currency)} was paid "
                                      f"and {Money(amount=paid - refundable, currency=amount.currency)} has gone back")
    due = amount.amount
    lines: list[Refund] = []
    for t in sorted(money, key=lambda t: REFUND_PRIORITY.index(t.kind)):
        part = min(due, max(left_of[(t.kind, t.reference)], 0))
        if part > 0:
            lines.append(Refund(kind=t.kind, amount=Money(amount=part, currency=amount.currency),
                                reference=t.reference, tender=t))
            due -= part
    return lines


# --- the Refund aggregate ---------------------------------------------------------------------------


class RefundEvent(DomainEvent):
    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    refund_id: Id
    order_id: Id


class RefundRequested(RefundEvent):
    """A refund line runs: `amount` back to the payment `reference` of `kind` (原路退回). For a
    third-party line a provider connector refunds it (idempotency key: the refund id)."""

    source: RefundSource
    kind: TenderKind
    amount: Money
    reference: Reference = Field(description="the payment refunded: provider payment, wallet entry or receipt")
    customer_id: Id | None = None
    provider: Code | None = Field(default=None, description="who executes it: 'stripe' for third-party lines")
    reason: Text = ""
    at: AwareDatetime


class RefundPending(RefundEvent):
    """The provider accepted the refund (its id is known); the money is on its way back."""

    provider_refund_id: Reference
    at: AwareDatetime


class RefundSucceeded(RefundEvent):
    """The money is back with the customer (provider confirmation, or the wallet credited)."""

    provider_refund_id: Reference | None = None
    amount: Money
    at: AwareDatetime


class RefundFailed(RefundEvent):
    """The provider refused or canceled the refund; nothing went back. An operator retries it."""

    provider_refund_id: Reference | None = None
    failure_reason: Annotated[str, Field(max_length=200)]
    at: AwareDatetime


class RefundRetried(RefundEvent):
    """An operator asked again for a failed refund (a new attempt with the provider)."""

    attempt: Annotated[int, Field(ge=2)]
    reason: Text
    at: AwareDatetime


S = RefundStatus
REFUND_TRANSITIONS: Mapping[StrEnum, Mapping[str, StrEnum | None]] = {
    S.REQUESTED: {"accept": S.PENDING, "succeed": S.SUCCEEDED, "fail": S.FAILED},
    S.PENDING: {"accept": None, "succeed": S.SUCCEEDED, "fail": S.FAILED},
    S.SUCCEEDED: {},
    S.FAILED: {"retry": S.REQUESTED},
}
REFUND_MACHINE = StateMachine("refund", REFUND_TRANSITIONS)


class RefundExecution(Aggregate):
    """One refund line on its way back to the customer."""

    category = STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: RefundStatus | None = None
        self.requested: RefundRequested | None = None
        self.provider_refund_id: str | None = None
        self.failure_reason: str | None = None
        self.attempt = 0
        self.succeeded_at: datetime | None = None

    @property
    def order_id(self) -> str | None:
        return self.requested.order_id if self.requested else None

    def allowed_commands(self) -> list[str]:
        return REFUND_MACHINE.allowed(self.status) if self.status else []

    def _check(self, command: str) -> None:
        if self.status is None:
            raise RuleViolation("refund_id", f"refund {self.id} does not exist")
        REFUND_MACHINE.check(self.id, self.status, command)

    @classmethod
    def request(cls, refund_id: str, order_id: str, source: RefundSource, line: Refund, *, at: datetime,
                customer_id: str | None, reason: str = "") -> RefundExecution:
        r = cls(refund_id)
        r._record(RefundRequested(
            refund_id=refund_id, order_id=order_id, source=source, kind=line.kind, amount=line.amount,
            reference=line.reference, customer_id=customer_id,
            provider=PROVIDER if line.kind is TenderKind.THIRD_PARTY else None, reason=reason, at=at))
        return r

    def _same_provider_refund(self, provider_refund_id: str | None) -> None:
        if provider_refund_id and self.provider_refund_id and provider_refund_id != self.provider_refund_id:
            raise RuleViolation("provider_refund_id", f"refund {self.id} is provider refund "
                                                      f"{self.provider_refund_id}, not {provider_refund_id}")

    def accept(self, provider_refund_id: str, at: datetime) -> bool:
        """The provider accepted it (status pending). True when something was recorded."""
        if self.status in (S.SUCCEEDED, S.FAILED) or (self.status is S.PENDING
                                                         and self.provider_refund_id == provider_refund_id):
            return False  # a stale or repeated report
        self._check("accept")
        self._same_provider_refund(provider_refund_id)
        assert self.order_id is not None
        self._record(RefundPending(refund_id=self.id, order_id=self.order_id, provider_refund_id=provider_refund_id,
                                   at=at))
        return True

    def succeed(self, at: datetime, provider_refund_id: str | None = None) -> bool:
        """The money is back. True when something was recorded (a repeated report records nothing)."""
        if self.status is S.SUCCEEDED:
            return False
        self._check("succeed")
        self._same_provider_refund(provider_refund_id)
        assert self.requested is not None and self.order_id is not None
        self._record(RefundSucceeded(refund_id=self.id, order_id=self.order_id,
                                     provider_refund_id=provider_refund_id or self.provider_refund_id,
                                     amount=self.requested.amount, at=at))
        return True

    def fail(self, reason: str, at: datetime, provider_refund_id: str | None = None) -> bool:
        """The provider refused or canceled it. True when something was recorded."""
        if self.status in (S.FAILED, S.SUCCEEDED):
            return False  # a late failure report after success is stale; a repeat changes nothing
        self._check("fail")
        self._same_provider_refund(provider_refund_id)
        assert self.order_id is not None
        self._record(RefundFailed(refund_id=self.id, order_id=self.order_id,
                                  provider_refund_id=provider_refund_id or self.provider_refund_id,
                                  failure_reason=(reason or "failed")[:200], at=at))
        return True

    def retry(self, reason: str, at: datetime) -> None:
        """An operator asks the provider again for a failed refund."""
        self._check("retry")
        if not reason.strip():
            raise RuleViolation("reason", "is required: say why the refund is tried again")
        assert self.order_id is not None
        self._record(RefundRetried(refund_id=self.id, order_id=self.order_id, attempt=self.attempt + 1,
                                   reason=reason.strip(), at=at))

    def apply(self, event: DomainEvent) -> None:
        match event:
            case RefundRequested():
                self.requested, self.status, self.attempt = event, S.REQUESTED, 1
            case RefundPending():
                self.provider_refund_id, self.status = event.provider_refund_id, S.PENDING
            case RefundSucceeded():
                self.provider_refund_id = event.provider_refund_id or self.provider_refund_id
                self.status, self.succeeded_at = S.SUCCEEDED, event.at
            case RefundFailed():
                self.provider_refund_id = event.provider_refund_id or self.provider_refund_id
                self.status, self.failure_reason = S.FAILED, event.failure_reason
            case RefundRetried():
                # A new attempt is a new provider refund: forget the failed one's id.
                self.status, self.attempt, self.provider_refund_id = S.REQUESTED, event.attempt, None
                self.failure_reason = None
            case _:
                raise TypeError(f"RefundExecution cannot apply {type(event).__name__}")
