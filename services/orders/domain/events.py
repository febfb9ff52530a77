"""Events of the orders service (topic `orders.events`) and the value objects they carry.

Streams: `order-{order_id}`, `bill-{bill_id}`, `customer-{customer_id}`,
`schedule-{staff_id}-{YYYY-MM-DD}` and `platform-conditions`. Every event names the id of
its aggregate, so a consumer never needs the stream id to know what an event is about.
Status enums live here (not next to their aggregates) because events carry them too.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.domain.events import DomainEvent
from libs.domain.money import Money
from libs.domain.types import Code, Id, Name, Text

TOPIC = "orders.events"



class Value(BaseModel):
    """Base of the immutable value objects carried by events and commands."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- statuses -----------------------------------------------------------------------------


class OrderStatus(StrEnum):
    """Where an order is. The seed names five (待預付, 處理中, 待確認, 已完成, 已取消); see order.py."""

    AWAITING_PREPAYMENT = "awaiting_prepayment"
    PROCESSING = "processing"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    ACCEPTED = "accepted"
    IN_SERVICE = "in_service"
    BILLED = "billed"
    AWAITING_PAYMENT = "awaiting_payment"
    COMPLETED = "completed"
    CANCELLED = "cancelled"

    @property
    def label_zh(self) -> str:
        """The Chinese label shown to users."""
        return ORDER_LABELS_ZH[self]


ORDER_LABELS_ZH: dict[OrderStatus, str] = {
    OrderStatus.AWAITING_PREPAYMENT: "待預付",
    OrderStatus.PROCESSING: "處理中",
    OrderStatus.AWAITING_CONFIRMATION: "待確認",
    OrderStatus.ACCEPTED: "已接單",
    OrderStatus.IN_SERVICE: "服務中",
    OrderStatus.BILLED: "待確認賬單",
    OrderStatus.AWAITING_PAYMENT: "待付款",
    OrderStatus.COMPLETED: "已完成",
    OrderStatus.CANCELLED: "已取消",
}


class BillStatus(StrEnum):
    """Where a bill is: the seed's 待處理, 處理中, 已完成, 已關閉."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    CLOSED = "closed"

    @property
    def label_zh(self) -> str:
        """The Chinese label shown to users."""
        return BILL_LABELS_ZH[self]


BILL_LABELS_ZH: dict[BillStatus, str] = {
    BillStatus.PENDING: "待處理",
    BillStatus.PROCESSING: "處理中",
    BillStatus.COMPLETED: "已完成",
    BillStatus.CLOSED: "已關閉",
}


class BillKind(StrEnum):
    """A prepayment bill (issued at placement) or the final bill the merchant pushes."""

    PREPAYMENT = "prepayment"
    FINAL = "final"


class CancelledBy(StrEnum):
    """Who cancelled an order; `system` is the platform's own automation (time-outs, dispatch)."""

    CUSTOMER = "customer"
    MERCHANT = "merchant"
    PLATFORM = "platform"
    SYSTEM = "system"


class FaultParty(StrEnum):
    """Who is at fault for a cancellation (seed 五: 1 customer, 2 merchant, 3 platform)."""

    CUSTOMER = "customer"
    MERCHANT = "merchant"
    PLATFORM = "platform"


class PrepaymentRule(StrEnum):
    """The prepayment policy's rules (seed 二), plus `none` when no rule matched."""

    PRODUCT_LINE = "product_line"
    TIME_OF_DAY = "time_of_day"
    CUSTOMER_CANCELLATIONS = "customer_cancellations"
    CREDIT_SCORE = "credit_score"
    CUSTOMER_FLAGGED = "customer_flagged"
    SEVERE_WEATHER = "severe_weather"
    PLATFORM_LOAD = "platform_load"
    NONE = "none"


# --- value objects ------------------------------------------------------------------------


class ServiceSnapshot(Value):
    """The catalogue item as it was when the order was placed (later price changes do not apply)."""

    service_code: Id
    product_line: Code
    name: Name
    hourly_rate: Money


class Slot(Value):
    """A time slot, half-open [start, end)."""

    start: AwareDatetime
    end: AwareDatetime


class Address(Value):
    """Where the service is delivered."""

    line1: Name
    district: Annotated[str, Field(min_length=1, max_length=64)]
    city: Annotated[str, Field(min_length=1, max_length=64)]
    postal_code: Annotated[str, Field(pattern=r"^[0-9A-Za-z -]{3,10}$")] | None = None


class IntendedTenders(Value):
    """What the customer intends to pay with besides third-party payment (seed 二)."""

    voucher_ids: Annotated[list[Id], Field(max_length=10)] = Field(default_factory=list)
    use_member_balance: bool = False


class PrepaymentReason(Value):
    """One prepayment rule that matched, with a human-readable detail."""

    rule: PrepaymentRule
    detail: Text


class PrepaymentDecision(Value):
    """The outcome of the prepayment policy for one order, kept in OrderPlaced for audit."""

    required: bool
    policy_version: Annotated[str, Field(min_length=1, max_length=64)]
    reasons: Annotated[list[PrepaymentReason], Field(min_length=1)]
    payment_deadline: AwareDatetime | None = None


class LabourLine(Value):
    """The labour line of a final bill: hourly rate times the actual minutes."""

    hourly_rate: Money
    minutes: Annotated[int, Field(ge=1, le=1440)]
    amount: Money


class MaterialLine(Value):
    """A materials line of a final bill: tools or consumables the merchant brought."""

    code: Id
    description: Name
    quantity: Annotated[int, Field(ge=1)]
    unit_price: Money
    amount: Money


# --- Order events ---------------------------------------------------------------------------


class OrderEvent(DomainEvent):
    """Base of the Order aggregate's events."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    order_id: Id


class OrderPlaced(OrderEvent):
    """A customer placed an order; prepayment decides whether it waits for payment or goes to dispatch."""

    customer_id: Id
    staff_id: Id
    service: ServiceSnapshot
    slot: Slot
    address: Address
    tenders: IntendedTenders
    estimated_total: Money
    prepayment: PrepaymentDecision
    prepayment_bill_id: Id | None = None
    payment_deadline: AwareDatetime | None = None
    placed_at: AwareDatetime


class OrderCheckoutStarted(OrderEvent):
    """The customer went to the cashier to prepay (order 處理中)."""

    bill_id: Id
    attempt_id: Id
    at: AwareDatetime


class OrderCheckoutAbandoned(OrderEvent):
    """The customer came back from the cashier without paying (order 待預付 again)."""

    bill_id: Id
    attempt_id: Id
    reason: Text
    at: AwareDatetime


class OrderPrepaid(OrderEvent):
    """The prepayment was captured; the order goes to dispatch."""

    bill_id: Id
    amount: Money
    payment_reference: Annotated[str, Field(min_length=1, max_length=128)]
    at: AwareDatetime


class OrderAccepted(OrderEvent):
    """A merchant accepted the dispatched order."""

    merchant_id: Id
    at: AwareDatetime


class OrderServiceStarted(OrderEvent):
    """The merchant started the service; from now on nobody can cancel (seed 三)."""

    merchant_id: Id
    at: AwareDatetime


class OrderBilled(OrderEvent):
    """The merchant pushed the final bill to the customer."""

    bill_id: Id
    total: Money
    at: AwareDatetime


class OrderBillAdjusted(OrderEvent):
    """The merchant adjusted the pushed bill at the customer's request."""

    bill_id: Id
    revision: Annotated[int, Field(ge=2)]
    total: Money
    at: AwareDatetime


class OrderBillConfirmed(OrderEvent):
    """The customer confirmed a revision of the bill; settlement can start."""

    bill_id: Id
    revision: Annotated[int, Field(ge=1)]
    total: Money
    at: AwareDatetime


class OrderCompleted(OrderEvent):
    """The bill was settled: the order is done (已完成)."""

    bill_id: Id
    settled_total: Money
    at: AwareDatetime


class OrderCancelled(OrderEvent):
    """The order was cancelled; carries what payments needs to refund or penalise (seed 五)."""

    cancelled_by: CancelledBy
    fault_party: FaultParty
    reason_code: Code
    reason: Text
    cancelled_at: AwareDatetime
    service_starts_at: AwareDatetime
    seconds_before_service_start: int = Field(description="negative when the slot start has passed")
    was_prepaid: bool
    prepaid_amount: Money | None = None
    prepayment_bill_id: Id | None = None
    status_before: OrderStatus


class OrderPaymentReceivedAfterCancellation(OrderEvent):
    """A prepayment was captured after the order was cancelled; payments must refund it."""

    bill_id: Id | None = None
    amount: Money
    payment_reference: Annotated[str, Field(min_length=1, max_length=128)]
    at: AwareDatetime


# --- Bill events ----------------------------------------------------------------------------


class BillEvent(DomainEvent):
    """Base of the Bill aggregate's events; each names its order too."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    bill_id: Id
    order_id: Id


class BillIssued(BillEvent):
    """A prepayment bill was issued when the order was placed (待處理)."""

    amount: Money
    at: AwareDatetime


class BillPushed(BillEvent):
    """The merchant pushed the final bill, revision 1 (待處理)."""

    revision: Annotated[int, Field(ge=1)]
    labour: LabourLine
    materials: list[MaterialLine]
    total: Money
    at: AwareDatetime


class BillAdjusted(BillEvent):
    """The merchant adjusted the final bill before the customer confirmed it."""

    revision: Annotated[int, Field(ge=2)]
    labour: LabourLine
    materials: list[MaterialLine]
    total: Money
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    at: AwareDatetime


class BillConfirmed(BillEvent):
    """The customer confirmed the revision of the final bill they saw."""

    revision: Annotated[int, Field(ge=1)]
    total: Money
    at: AwareDatetime


class BillPaymentStarted(BillEvent):
    """The customer went to the cashier for this bill (處理中)."""

    attempt_id: Id
    at: AwareDatetime


class BillPaymentAbandoned(BillEvent):
    """The payment attempt ended without payment (back to 待處理)."""

    attempt_id: Id
    reason: Text
    at: AwareDatetime


class BillPaid(BillEvent):
    """The bill was paid in full (已完成)."""

    amount: Money
    reference: Annotated[str, Field(min_length=1, max_length=128)]
    at: AwareDatetime


class BillClosed(BillEvent):
    """The bill was voided unpaid, e.g. its order was cancelled (已關閉)."""

    reason: Annotated[str, Field(min_length=1, max_length=500)]
    at: AwareDatetime


# --- Customer, schedule and platform events -------------------------------------------------


class CustomerCreditScoreRecorded(DomainEvent):
    """A credit score for the customer arrived from an external source."""

    topic: ClassVar[str] = TOPIC

    customer_id: Id
    score: Annotated[int, Field(ge=0, le=1000)]
    source: Annotated[str, Field(min_length=1, max_length=64)]
    at: AwareDatetime


class CustomerCancellationRecorded(DomainEvent):
    """The customer was at fault for cancelling an order."""

    topic: ClassVar[str] = TOPIC

    customer_id: Id
    order_id: Id
    was_prepaid: bool
    seconds_before_service_start: int
    at: AwareDatetime


class CustomerFlaggedForPrepayment(DomainEvent):
    """From now on the customer must prepay (seed 五: 未預付的訂單 cancelled late)."""

    topic: ClassVar[str] = TOPIC

    customer_id: Id
    reason: Text
    order_id: Id | None = None
    at: AwareDatetime


class SlotHeld(DomainEvent):
    """A staff member's time slot is held for an order."""

    topic: ClassVar[str] = TOPIC

    staff_id: Id
    day: date
    order_id: Id
    start: AwareDatetime
    end: AwareDatetime
    at: AwareDatetime


class SlotReleased(DomainEvent):
    """The slot an order held is free again (order cancelled, or moved)."""

    topic: ClassVar[str] = TOPIC

    staff_id: Id
    day: date
    order_id: Id
    reason: Text
    at: AwareDatetime


class PlatformConditionsChanged(DomainEvent):
    """Operations changed the conditions the prepayment policy looks at (weather, load)."""

    topic: ClassVar[str] = TOPIC

    conditions_id: Id = "conditions"
    severe_weather_cities: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                                     Field(max_length=100)] = Field(default_factory=list)
    load_pct: Annotated[int, Field(ge=0, le=100)]
    note: Text = ""
    at: AwareDatetime
