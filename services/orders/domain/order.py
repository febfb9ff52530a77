"""The Order aggregate (stream `order-{id}`): from placement to completion or cancellation.

The seed (002, 一) names five order states: 待預付 awaiting_prepayment, 處理中 processing
(the customer is at the cashier), 待確認 awaiting_confirmation (dispatching), 已完成
completed and 已取消 cancelled. The four stages between dispatch and completion are ours,
because the seed's sections 三 and 四 need them to be told apart: accepted 已接單,
in_service 服務中 (after "start service" nobody can cancel), billed 待確認賬單 (the merchant
pushed the bill, the customer reviews it) and awaiting_payment 待付款 (bill confirmed,
settlement pending). The bill itself is a separate aggregate (bill.py); the order keeps
its id, revision and total so that its own rules need no second stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, time, timedelta
from enum import StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.orders.domain.catalogue import ServiceItem, estimate
from services.orders.domain.events import (
    ORDER_LABELS_ZH,
    Address,
    CancelledBy,
    FaultParty,
    IntendedTenders,
    OrderAccepted,
    OrderBillAdjusted,
    OrderBillConfirmed,
    OrderBilled,
    OrderCancelled,
    OrderCheckoutAbandoned,
    OrderCheckoutStarted,
    OrderCompleted,
    OrderPaymentReceivedAfterCancellation,
    OrderPlaced,
    OrderPrepaid,
    OrderServiceStarted,
    OrderStatus,
    PrepaymentDecision,
    ServiceSnapshot,
    Slot,
)

__all__ = ["LABELS_ZH", "ORDER_MACHINE", "ORDER_TRANSITIONS", "Order", "OrderStatus", "validate_slot"]

LABELS_ZH: dict[OrderStatus, str] = ORDER_LABELS_ZH

S = OrderStatus

# command -> target state, per state. Placement is not here: it creates the order.
# Typed with the base StrEnum because StateMachine takes any status enum (dict keys are invariant).
ORDER_TRANSITIONS: Mapping[StrEnum, Mapping[str, StrEnum | None]] = {
    S.AWAITING_PREPAYMENT: {
        "start_checkout": S.PROCESSING,
        "record_prepayment": S.AWAITING_CONFIRMATION,
        "cancel": S.CANCELLED,
        "expire_payment_deadline": S.CANCELLED,
    },
    S.PROCESSING: {
        "abandon_checkout": S.AWAITING_PREPAYMENT,
        "record_prepayment": S.AWAITING_CONFIRMATION,
        "cancel": S.CANCELLED,
        "expire_payment_deadline": S.CANCELLED,
    },
    S.AWAITING_CONFIRMATION: {"accept": S.ACCEPTED, "cancel": S.CANCELLED},
    S.ACCEPTED: {"start_service": S.IN_SERVICE, "cancel": S.CANCELLED},
    # From the start of service on, nobody can cancel (seed 三: 此後商家和用戶都無法在APP上取消訂單).
    S.IN_SERVICE: {"push_bill": S.BILLED},
    S.BILLED: {"adjust_bill": S.BILLED, "confirm_bill": S.AWAITING_PAYMENT},
    S.AWAITING_PAYMENT: {"record_settlement": S.COMPLETED},
    S.COMPLETED: {},
    S.CANCELLED: {},
}

ORDER_MACHINE = StateMachine("order", ORDER_TRANSITIONS)

MAX_SLOT = timedelta(hours=12)
PAYMENT_TIMEOUT = "payment_timeout"


def validate_slot(slot: Slot, *, at: datetime, timezone: str | ZoneInfo, min_minutes: int = 1) -> None:
    """Refuse a slot that is not bookable at `at`: RuleViolation on slot.start or slot.end."""
    tz = ZoneInfo(timezone) if isinstance(timezone, str) else timezone
    for field, value in (("slot.start", slot.start), ("slot.end", slot.end)):
        if value.second or value.microsecond:
            raise RuleViolation(field, "must be on a whole minute")
    if slot.end <= slot.start:
        raise RuleViolation("slot.end", "must be after slot.start")
    if slot.start <= at:
        raise RuleViolation("slot.start", "must be in the future")
    length = slot.end - slot.start
    if length > MAX_SLOT:
        raise RuleViolation("slot.end", "a slot may last at most 12 hours")
    if length < timedelta(minutes=min_minutes):
        raise RuleViolation("slot.end", f"this service needs a slot of at least {min_minutes} minutes")
    start_day = slot.start.astimezone(tz).date()
    end_local = slot.end.astimezone(tz)
    # A slot ending exactly at midnight still lies wholly inside its day (half-open interval).
    ends_at_midnight = end_local.time() == time(0) and end_local.date() == start_day + timedelta(days=1)
    if end_local.date() != start_day and not ends_at_midnight:
        raise RuleViolation("slot.end", f"must be on the same local day as slot.start ({tz.key})")


def seconds_until(start: datetime, at: datetime) -> int:
    """Whole seconds from `at` to `start`, negative once `start` has passed."""
    # Floor, so that 47:59:59.5 before the start counts as 172799 s, i.e. "within 48 hours".
    return (start - at) // timedelta(seconds=1)


class Order(Aggregate):
    """An order for a home service, from placement to completion or cancellation."""

    category = "order"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: OrderStatus | None = None
        self.customer_id: str | None = None
        self.staff_id: str | None = None
        self.service: ServiceSnapshot | None = None
        self.slot: Slot | None = None
        self.address: Address | None = None
        self.tenders: IntendedTenders | None = None
        self.estimated_total: Money | None = None
        self.prepayment: PrepaymentDecision | None = None
        self.prepayment_bill_id: str | None = None
        self.payment_deadline: datetime | None = None
        self.placed_at: datetime | None = None
        self.checkout_attempt_id: str | None = None
        self.prepaid_amount: Money | None = None
        self.prepayment_reference: str | None = None
        self.merchant_id: str | None = None
        self.accepted_at: datetime | None = None
        self.service_started_at: datetime | None = None
        self.bill_id: str | None = None
        self.bill_revision: int = 0
        self.bill_total: Money | None = None
        self.confirmed_revision: int | None = None
        self.settled_total: Money | None = None
        self.completed_at: datetime | None = None
        self.cancellation: OrderCancelled | None = None
        self.late_payments: list[OrderPaymentReceivedAfterCancellation] = []

    # --- queries ------------------------------------------------------------------------

    @property
    def is_prepaid(self) -> bool:
        """Whether a prepayment was captured before any cancellation."""
        return self.prepaid_amount is not None

    @property
    def label_zh(self) -> str | None:
        """The Chinese label of the current status."""
        return LABELS_ZH[self.status] if self.status else None

    def allowed_commands(self) -> list[str]:
        """The commands the current status allows (empty before placement and in final states)."""
        return ORDER_MACHINE.allowed(self.status) if self.status else []

    def _check(self, command: str) -> None:
        if self.status is None:
            raise NotFound(f"order {self.id} does not exist", order_id=self.id)
        ORDER_MACHINE.check(self.id, self.status, command)

    def _require_merchant(self, merchant_id: str) -> None:
        if merchant_id != self.merchant_id:
            raise RuleViolation("merchant_id", "only the merchant who accepted the order may do this")

    def _require_bill(self, bill_id: str) -> None:
        if bill_id != self.bill_id:
            raise RuleViolation("bill_id", f"the order's bill is {self.bill_id}")

    def _require_currency(self, field: str, amount: Money) -> None:
        assert self.estimated_total is not None
        if amount.currency != self.estimated_total.currency:
            raise RuleViolation(f"{field}.currency",
                                f"must be {self.estimated_total.currency}, the order's currency")

    # --- commands -----------------------------------------------------------------------

    @classmethod
    def place(cls, order_id: str, *, customer_id: str, staff_id: str, item: ServiceItem, slot: Slot,
              address: Address, tenders: IntendedTenders, decision: PrepaymentDecision,
              prepayment_bill_id: str | None, timezone: str | ZoneInfo, at: datetime) -> Order:
        """Place an order; it waits for prepayment when the decision requires it, else goes to dispatch."""
        validate_slot(slot, at=at, timezone=timezone, min_minutes=item.min_minutes)
        if decision.required and prepayment_bill_id is None:
            raise RuleViolation("prepayment_bill_id", "is needed when prepayment is required")
        if not decision.required and prepayment_bill_id is not None:
            raise RuleViolation("prepayment_bill_id", "must be empty when no prepayment is required")
        if decision.required and decision.payment_deadline is None:
            raise RuleViolation("prepayment.payment_deadline", "a required prepayment needs a deadline")
        order = cls(order_id)
        order._record(OrderPlaced(
            order_id=order_id, customer_id=customer_id, staff_id=staff_id, service=item.snapshot(),
            slot=slot, address=address, tenders=tenders, estimated_total=estimate(item, slot),
            prepayment=decision, prepayment_bill_id=prepayment_bill_id,
            payment_deadline=decision.payment_deadline if decision.required else None, placed_at=at))
        return order

    def start_checkout(self, attempt_id: str, at: datetime) -> None:
        """The customer opened the cashier for the prepayment bill (待預付 -> 處理中)."""
        self._check("start_checkout")
        assert self.prepayment_bill_id is not None
        self._record(OrderCheckoutStarted(order_id=self.id, bill_id=self.prepayment_bill_id,
                                          attempt_id=attempt_id, at=at))

    def abandon_checkout(self, attempt_id: str, reason: str, at: datetime) -> None:
        """The customer left the cashier without paying (處理中 -> 待預付)."""
        self._check("abandon_checkout")
        if attempt_id != self.checkout_attempt_id:
            raise Conflict(f"order {self.id}: checkout attempt {attempt_id} is not the current attempt "
                           f"{self.checkout_attempt_id}", current_attempt_id=self.checkout_attempt_id)
        assert self.prepayment_bill_id is not None
        self._record(OrderCheckoutAbandoned(order_id=self.id, bill_id=self.prepayment_bill_id,
                                            attempt_id=attempt_id, reason=reason, at=at))

    def record_prepayment(self, bill_id: str, amount: Money, payment_reference: str, at: datetime) -> None:
        """The prepayment was captured; on a cancelled order it is recorded for refund instead."""
        if self.status is OrderStatus.CANCELLED:
            # Capture and cancellation can race (the customer pays as the deadline expires). The money
            # is real, so it is recorded for payments to refund rather than refused.
            if any(p.payment_reference == payment_reference for p in self.late_payments):
                return  # the same capture reported twice
            self._record(OrderPaymentReceivedAfterCancellation(
                order_id=self.id, bill_id=bill_id, amount=amount, payment_reference=payment_reference, at=at))
            return
        self._check("record_prepayment")
        if bill_id != self.prepayment_bill_id:
            raise RuleViolation("bill_id", f"the order's prepayment bill is {self.prepayment_bill_id}")
        self._require_currency("amount", amount)
        self._record(OrderPrepaid(order_id=self.id, bill_id=bill_id, amount=amount,
                                  payment_reference=payment_reference, at=at))

    def expire_payment_deadline(self, at: datetime) -> None:
        """Cancel an unpaid order once its payment deadline has passed (system, customer's fault)."""
        self._check("expire_payment_deadline")
        assert self.payment_deadline is not None
        if at < self.payment_deadline:
            raise RuleViolation("payment_deadline", "not reached yet")
        self._record(self._cancellation(CancelledBy.SYSTEM, FaultParty.CUSTOMER, PAYMENT_TIMEOUT,
                                        "prepayment not received before the payment deadline", at))

    def accept(self, merchant_id: str, at: datetime) -> None:
        """A merchant accepted the dispatched order (待確認 -> 已接單)."""
        self._check("accept")
        self._record(OrderAccepted(order_id=self.id, merchant_id=merchant_id, at=at))

    def start_service(self, merchant_id: str, at: datetime) -> None:
        """The merchant starts the service; nobody can cancel after this (seed 三)."""
        self._check("start_service")
        self._require_merchant(merchant_id)
        self._record(OrderServiceStarted(order_id=self.id, merchant_id=merchant_id, at=at))

    def push_bill(self, merchant_id: str, bill_id: str, total: Money, at: datetime) -> None:
        """The merchant pushed the final bill (revision 1) to the customer."""
        self._check("push_bill")
        self._require_merchant(merchant_id)
        self._require_currency("total", total)
        self._record(OrderBilled(order_id=self.id, bill_id=bill_id, total=total, at=at))

    def adjust_bill(self, merchant_id: str, bill_id: str, revision: int, total: Money, at: datetime) -> None:
        """The merchant adjusted the bill; `revision` is the bill's new revision."""
        self._check("adjust_bill")
        self._require_merchant(merchant_id)
        self._require_bill(bill_id)
        if revision != self.bill_revision + 1:
            raise Conflict(f"order {self.id}: bill {bill_id} is at revision {self.bill_revision}; "
                           f"the next revision is {self.bill_revision + 1}, not {revision}",
                           current_revision=self.bill_revision)
        self._require_currency("total", total)
        self._record(OrderBillAdjusted(order_id=self.id, bill_id=bill_id, revision=revision,
                                       total=total, at=at))

    def confirm_bill(self, customer_id: str, bill_id: str, revision: int, total: Money, at: datetime) -> None:
        """The customer confirmed the revision of the bill they reviewed (-> 待付款)."""
        self._check("confirm_bill")
        if customer_id != self.customer_id:
            raise RuleViolation("customer_id", "only the customer who placed the order may confirm its bill")
        self._require_bill(bill_id)
        if revision != self.bill_revision:
            raise Conflict(f"bill {bill_id} is at revision {self.bill_revision}; "
                           f"revision {revision} is stale", current_revision=self.bill_revision)
        self._record(OrderBillConfirmed(order_id=self.id, bill_id=bill_id, revision=revision,
                                        total=total, at=at))

    def record_settlement(self, bill_id: str, settled_total: Money, at: datetime) -> None:
        """The final bill was settled: the order is complete (已完成)."""
        self._check("record_settlement")
        self._require_bill(bill_id)
        self._require_currency("settled_total", settled_total)
        self._record(OrderCompleted(order_id=self.id, bill_id=bill_id, settled_total=settled_total, at=at))

    def cancel(self, *, cancelled_by: CancelledBy | str, reason_code: str, reason: str, at: datetime,
               fault_party: FaultParty | str | None = None, merchant_id: str | None = None) -> None:
        """Cancel before service starts; customers and merchants are at fault for their own cancellations."""
        self._check("cancel")
        by = _enum(CancelledBy, cancelled_by, "cancelled_by")
        named = _enum(FaultParty, fault_party, "fault_party") if fault_party is not None else None
        own = {CancelledBy.CUSTOMER: FaultParty.CUSTOMER, CancelledBy.MERCHANT: FaultParty.MERCHANT}.get(by)
        if own is not None:
            # Seed 五: the fault party decides refunds and penalties, so a party cannot blame another;
            # only the platform (customer service) may attribute fault after looking into it.
            if named is not None and named is not own:
                raise RuleViolation("fault_party", f"a {by.value}'s cancellation is the {own.value}'s fault; "
                                                   "only the platform may name another fault party")
            fault = own
        else:
            fault = named or FaultParty.PLATFORM
        if by is CancelledBy.MERCHANT:
            if self.merchant_id is None:
                raise RuleViolation("merchant_id", "no merchant has accepted this order yet")
            self._require_merchant(merchant_id or "")
        self._record(self._cancellation(by, fault, reason_code, reason, at))

    def _cancellation(self, by: CancelledBy, fault: FaultParty, reason_code: str, reason: str,
                      at: datetime) -> OrderCancelled:
        assert self.slot is not None and self.status is not None
        return OrderCancelled(
            order_id=self.id, cancelled_by=by, fault_party=fault, reason_code=reason_code, reason=reason,
            cancelled_at=at, service_starts_at=self.slot.start,
            seconds_before_service_start=seconds_until(self.slot.start, at),
            was_prepaid=self.is_prepaid, prepaid_amount=self.prepaid_amount,
            prepayment_bill_id=self.prepayment_bill_id, status_before=self.status)

    # --- evolution ----------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case OrderPlaced():
                self.customer_id, self.staff_id = event.customer_id, event.staff_id
                self.service, self.slot, self.address = event.service, event.slot, event.address
                self.tenders, self.estimated_total = event.tenders, event.estimated_total
                self.prepayment, self.prepayment_bill_id = event.prepayment, event.prepayment_bill_id
                self.payment_deadline, self.placed_at = event.payment_deadline, event.placed_at
                self.status = S.AWAITING_PREPAYMENT if event.prepayment.required else S.AWAITING_CONFIRMATION
            case OrderCheckoutStarted():
                self.checkout_attempt_id = event.attempt_id
                self.status = S.PROCESSING
            case OrderCheckoutAbandoned():
                self.checkout_attempt_id = None
                self.status = S.AWAITING_PREPAYMENT
            case OrderPrepaid():
                self.prepaid_amount, self.prepayment_reference = event.amount, event.payment_reference
                self.checkout_attempt_id = None
                self.status = S.AWAITING_CONFIRMATION
            case OrderAccepted():
                self.merchant_id, self.accepted_at = event.merchant_id, event.at
                self.status = S.ACCEPTED
            case OrderServiceStarted():
                self.service_started_at = event.at
                self.status = S.IN_SERVICE
            case OrderBilled():
                self.bill_id, self.bill_revision, self.bill_total = event.bill_id, 1, event.total
                self.status = S.BILLED
            case OrderBillAdjusted():
                self.bill_revision, self.bill_total = event.revision, event.total
            case OrderBillConfirmed():
                self.confirmed_revision, self.bill_total = event.revision, event.total
                self.status = S.AWAITING_PAYMENT
            case OrderCompleted():
                self.settled_total, self.completed_at = event.settled_total, event.at
                self.status = S.COMPLETED
            case OrderCancelled():
                self.cancellation = event
                self.status = S.CANCELLED
            case OrderPaymentReceivedAfterCancellation():
                self.late_payments.append(event)
            case _:
                raise TypeError(f"Order cannot apply {type(event).__name__}")


_E = TypeVar("_E", CancelledBy, FaultParty)


def _enum(kind: type[_E], value: str, field: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise RuleViolation(field, f"must be one of {', '.join(m.value for m in kind)}") from None
