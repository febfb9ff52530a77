"""Contract of the payments events the orders service consumes (topic `payments.events`).

The payments service (a later issue) owns these events and writes them to its
`transaction-{order_id}` streams (one Transaction per order); the orders service consumes
them to move its orders and bills along. Until payments exists, tests may publish them.
Every event names the order and the bill it is about.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from libs.domain.events import DomainEvent
from libs.domain.money import Money

TOPIC = "payments.events"
STREAM_CATEGORY = "transaction"

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Reference = Annotated[str, Field(min_length=1, max_length=128)]


def transaction_stream_id(order_id: str) -> str:
    """The stream of an order's transaction: `transaction-{order_id}`."""
    return f"{STREAM_CATEGORY}-{order_id}"


class TenderKind(StrEnum):
    """How part of an amount was paid (seed 二/三: third-party payment, member balance, vouchers)."""

    THIRD_PARTY = "third_party"
    MEMBER_BALANCE = "member_balance"
    VOUCHER = "voucher"


class FailureReason(StrEnum):
    """Why a payment attempt ended without payment."""

    ABANDONED = "abandoned"  # the customer came back from the cashier (seed 一: 從收銀臺點擊返回)
    DECLINED = "declined"
    EXPIRED = "expired"


class Tender(BaseModel):
    """One part of a payment: its kind, amount and the reference of the provider, wallet or voucher."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: TenderKind
    amount: Money
    reference: Reference


def _check_tenders(tenders: list[Tender], total: Money, field: str) -> None:
    for i, tender in enumerate(tenders):
        if tender.amount.currency != total.currency:
            raise ValueError(f"tenders[{i}].amount.currency must be {total.currency}, the {field} currency")
        if tender.amount.amount < 0:
            raise ValueError(f"tenders[{i}].amount must not be negative")
    paid = sum(t.amount.amount for t in tenders)
    if paid != total.amount:
        raise ValueError(f"the tenders add up to {paid} minor units, not the {field} {total.amount}")


class TransactionEvent(DomainEvent):
    """Base of the payments events: each names its order and bill."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    order_id: Id
    bill_id: Id


class PaymentAttemptStarted(TransactionEvent):
    """The customer opened the cashier to pay a bill."""

    attempt_id: Id
    amount: Money
    method: Annotated[str, Field(min_length=1, max_length=64,
                                 description="cashier method, e.g. credit_card, line_pay, jko_pay")]
    at: AwareDatetime


class PaymentAttemptFailed(TransactionEvent):
    """A payment attempt ended without payment."""

    attempt_id: Id
    reason: FailureReason
    at: AwareDatetime


class PrepaymentCaptured(TransactionEvent):
    """The prepayment of an order was captured in full; the tenders add up to `amount`."""

    amount: Money
    tenders: Annotated[list[Tender], Field(min_length=1)]
    captured_at: AwareDatetime

    @model_validator(mode="after")
    def _tenders_add_up(self) -> PrepaymentCaptured:
        _check_tenders(self.tenders, self.amount, "amount")
        return self


class BillSettled(TransactionEvent):
    """The final bill was settled: `tenders` pay `total` (after any refund of excess prepayment).

    `collected` is what was newly collected at settlement (a prepayment shortfall, 少補),
    `refunded` what went back to the customer (prepayment excess, 多退).
    """

    total: Money
    tenders: list[Tender]
    refunded: Money
    collected: Money
    settled_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> BillSettled:
        _check_tenders(self.tenders, self.total, "total")
        for name, value in (("refunded", self.refunded), ("collected", self.collected)):
            if value.currency != self.total.currency:
                raise ValueError(f"{name}.currency must be {self.total.currency}, the total currency")
            if value.amount < 0:
                raise ValueError(f"{name} must not be negative")
        return self
