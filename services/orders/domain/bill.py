"""The Bill aggregate (stream `bill-{id}`): what is owed for an order, and whether it is paid.

Two kinds (seed 一: 賬單 is the goods-and-fees side, kept apart from the order and the
transaction). A prepayment bill is issued when an order needs prepayment. A final bill is
pushed by the merchant after the service (seed 三, 推送賬單), adjusted at the customer's
request until the customer confirms the revision they saw; only then can it be paid.
States are the seed's 待處理 pending, 處理中 processing, 已完成 completed, 已關閉 closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.orders.domain.commands import MaterialInput
from services.orders.domain.events import (
    BILL_LABELS_ZH,
    BillAdjusted,
    BillClosed,
    BillConfirmed,
    BillIssued,
    BillKind,
    BillPaid,
    BillPaymentAbandoned,
    BillPaymentStarted,
    BillPushed,
    BillStatus,
    LabourLine,
    MaterialLine,
)

__all__ = [
    "FINAL_CONFIRMED_TRANSITIONS",
    "FINAL_UNCONFIRMED_TRANSITIONS",
    "LABELS_ZH",
    "PREPAYMENT_TRANSITIONS",
    "Bill",
    "BillKind",
    "BillLines",
    "BillStatus",
    "price_lines",
]

LABELS_ZH: dict[BillStatus, str] = BILL_LABELS_ZH

B = BillStatus

# Typed with the base StrEnum because StateMachine takes any status enum (dict keys are invariant).
Table = Mapping[StrEnum, Mapping[str, StrEnum | None]]

PREPAYMENT_TRANSITIONS: Table = {
    # pay from pending too: member balance and vouchers are captured without the cashier.
    B.PENDING: {"start_payment": B.PROCESSING, "pay": B.COMPLETED, "close": B.CLOSED},
    B.PROCESSING: {"abandon_payment": B.PENDING, "pay": B.COMPLETED, "close": B.CLOSED},
    B.COMPLETED: {},
    B.CLOSED: {},
}

# A final bill before the customer confirmed it: it can be corrected, not paid.
FINAL_UNCONFIRMED_TRANSITIONS: Table = {
    B.PENDING: {"adjust": None, "confirm": None},
    B.PROCESSING: {},
    B.COMPLETED: {},
    B.CLOSED: {},
}

# A confirmed final bill: it can be paid, no longer changed.
FINAL_CONFIRMED_TRANSITIONS: Table = {
    B.PENDING: {"start_payment": B.PROCESSING, "pay": B.COMPLETED},
    B.PROCESSING: {"abandon_payment": B.PENDING, "pay": B.COMPLETED},
    B.COMPLETED: {},
    B.CLOSED: {},
}

PREPAYMENT_MACHINE = StateMachine("bill", PREPAYMENT_TRANSITIONS)
FINAL_UNCONFIRMED_MACHINE = StateMachine("bill", FINAL_UNCONFIRMED_TRANSITIONS)
FINAL_CONFIRMED_MACHINE = StateMachine("bill", FINAL_CONFIRMED_TRANSITIONS)

MAX_MINUTES = 1440


class BillLines(BaseModel):
    """The priced lines of a final bill and their total."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labour: LabourLine
    materials: list[MaterialLine]
    total: Money


def price_lines(hourly_rate: Money, actual_minutes: int, materials: Sequence[MaterialInput]) -> BillLines:
    """Price labour (rate x minutes / 60, half-up) and materials (unit price x quantity); sum them."""
    if not 1 <= actual_minutes <= MAX_MINUTES:
        raise RuleViolation("actual_minutes", f"must be between 1 and {MAX_MINUTES}")
    # Labour is rounded once, half-up on the minor unit: 1 minute at 999/h is 16.65 -> 17.
    labour = LabourLine(hourly_rate=hourly_rate, minutes=actual_minutes,
                        amount=hourly_rate.fraction(actual_minutes, 60))
    lines: list[MaterialLine] = []
    seen: set[str] = set()
    total = labour.amount
    for i, m in enumerate(materials):
        if m.unit_price.currency != hourly_rate.currency:
            raise RuleViolation(f"materials[{i}].unit_price.currency",
                                f"must be {hourly_rate.currency}, the currency of the bill")
        if m.unit_price.amount < 0:
            raise RuleViolation(f"materials[{i}].unit_price.amount", "must not be negative")
        if m.quantity < 1:
            raise RuleViolation(f"materials[{i}].quantity", "must be at least 1")
        if m.code in seen:
            raise RuleViolation(f"materials[{i}].code", f"{m.code!r} is listed twice; use quantity instead")
        seen.add(m.code)
        line = MaterialLine(code=m.code, description=m.description, quantity=m.quantity,
                            unit_price=m.unit_price, amount=m.unit_price.times(m.quantity))
        lines.append(line)
        total = total + line.amount
    return BillLines(labour=labour, materials=lines, total=total)


class Bill(Aggregate):
    """A prepayment or final bill of one order."""

    category = "bill"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.order_id: str | None = None
        self.kind: BillKind | None = None
        self.status: BillStatus | None = None
        self.amount: Money | None = None  # what is owed: the prepayment, or the final total
        self.revision: int = 0
        self.labour: LabourLine | None = None
        self.materials: list[MaterialLine] = []
        self.confirmed_revision: int | None = None
        self.attempt_id: str | None = None
        self.paid_amount: Money | None = None
        self.payment_reference: str | None = None
        self.close_reason: str | None = None
        self.issued_at: datetime | None = None

    # --- queries ------------------------------------------------------------------------

    @property
    def confirmed(self) -> bool:
        """Whether the customer confirmed a revision of this (final) bill."""
        return self.confirmed_revision is not None

    @property
    def label_zh(self) -> str | None:
        """The Chinese label of the current status."""
        return LABELS_ZH[self.status] if self.status else None

    def _machine(self) -> StateMachine:
        if self.kind is BillKind.PREPAYMENT:
            return PREPAYMENT_MACHINE
        return FINAL_CONFIRMED_MACHINE if self.confirmed else FINAL_UNCONFIRMED_MACHINE

    def allowed_commands(self) -> list[str]:
        """The commands allowed now, by status, kind and whether the customer confirmed."""
        return self._machine().allowed(self.status) if self.status else []

    def _check(self, command: str) -> None:
        if self.status is None:
            raise NotFound(f"bill {self.id} does not exist", bill_id=self.id)
        self._machine().check(self.id, self.status, command)

    def _ids(self) -> dict[str, str]:
        assert self.order_id is not None
        return {"bill_id": self.id, "order_id": self.order_id}

    # --- commands -----------------------------------------------------------------------

    @classmethod
    def issue_prepayment(cls, bill_id: str, order_id: str, amount: Money, at: datetime) -> Bill:
        """Issue the prepayment bill of an order that must be prepaid (待處理)."""
        if amount.amount <= 0:
            raise RuleViolation("amount", "a prepayment must be positive")
        bill = cls(bill_id)
        bill._record(BillIssued(bill_id=bill_id, order_id=order_id, amount=amount, at=at))
        return bill

    @classmethod
    def push(cls, bill_id: str, order_id: str, *, hourly_rate: Money, actual_minutes: int,
             materials: Sequence[MaterialInput], at: datetime) -> Bill:
        """The merchant pushes the final bill, revision 1, for the customer to review."""
        lines = price_lines(hourly_rate, actual_minutes, materials)
        bill = cls(bill_id)
        bill._record(BillPushed(bill_id=bill_id, order_id=order_id, revision=1, labour=lines.labour,
                                materials=lines.materials, total=lines.total, at=at))
        return bill

    def adjust(self, actual_minutes: int, materials: Sequence[MaterialInput], reason: str,
               at: datetime) -> None:
        """The merchant corrects the bill before the customer confirmed it; a new revision."""
        self._check("adjust")
        if not reason.strip():
            raise RuleViolation("reason", "an adjustment needs a reason")
        assert self.labour is not None
        # The hourly rate is the order's, fixed at placement; only minutes and materials change.
        lines = price_lines(self.labour.hourly_rate, actual_minutes, materials)
        self._record(BillAdjusted(**self._ids(), revision=self.revision + 1, labour=lines.labour,
                                  materials=lines.materials, total=lines.total, reason=reason.strip(), at=at))

    def confirm(self, revision: int, at: datetime) -> None:
        """The customer confirms the revision they saw; a stale revision is a Conflict."""
        self._check("confirm")
        if revision != self.revision:
            raise Conflict(f"bill {self.id} is at revision {self.revision}; revision {revision} is stale, "
                           "review the current bill and confirm again", current_revision=self.revision)
        assert self.amount is not None
        self._record(BillConfirmed(**self._ids(), revision=revision, total=self.amount, at=at))

    def start_payment(self, attempt_id: str, at: datetime) -> None:
        """The customer went to the cashier (處理中)."""
        self._check("start_payment")
        self._record(BillPaymentStarted(**self._ids(), attempt_id=attempt_id, at=at))

    def abandon_payment(self, attempt_id: str, reason: str, at: datetime) -> None:
        """The cashier attempt ended unpaid (back to 待處理)."""
        self._check("abandon_payment")
        if attempt_id != self.attempt_id:
            raise Conflict(f"bill {self.id}: payment attempt {attempt_id} is not the current attempt "
                           f"{self.attempt_id}", current_attempt_id=self.attempt_id)
        self._record(BillPaymentAbandoned(**self._ids(), attempt_id=attempt_id, reason=reason, at=at))

    def pay(self, amount: Money, reference: str, at: datetime) -> None:
        """The bill was paid in full (已完成); the amount must be the bill's amount."""
        self._check("pay")
        assert self.amount is not None
        if amount.currency != self.amount.currency:
            raise RuleViolation("amount.currency", f"must be {self.amount.currency}, the bill's currency")
        if amount != self.amount:
            raise RuleViolation("amount", f"must be {self.amount}, the amount of the bill")
        self._record(BillPaid(**self._ids(), amount=amount, reference=reference, at=at))

    def close(self, reason: str, at: datetime) -> None:
        """Void an unpaid prepayment bill, e.g. because its order was cancelled (已關閉)."""
        self._check("close")
        if not reason.strip():
            raise RuleViolation("reason", "closing a bill needs a reason")
        self._record(BillClosed(**self._ids(), reason=reason.strip(), at=at))

    # --- evolution ----------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case BillIssued():
                self.order_id, self.kind, self.amount = event.order_id, BillKind.PREPAYMENT, event.amount
                self.issued_at, self.status = event.at, B.PENDING
            case BillPushed():
                self.order_id, self.kind = event.order_id, BillKind.FINAL
                self.revision, self.labour = event.revision, event.labour
                self.materials, self.amount = list(event.materials), event.total
                self.issued_at, self.status = event.at, B.PENDING
            case BillAdjusted():
                self.revision, self.labour = event.revision, event.labour
                self.materials, self.amount = list(event.materials), event.total
            case BillConfirmed():
                self.confirmed_revision = event.revision
            case BillPaymentStarted():
                self.attempt_id, self.status = event.attempt_id, B.PROCESSING
            case BillPaymentAbandoned():
                self.attempt_id, self.status = None, B.PENDING
            case BillPaid():
                self.paid_amount, self.payment_reference = event.amount, event.reference
                self.attempt_id, self.status = None, B.COMPLETED
            case BillClosed():
                self.close_reason, self.attempt_id, self.status = event.reason, None, B.CLOSED
            case _:
                raise TypeError(f"Bill cannot apply {type(event).__name__}")
