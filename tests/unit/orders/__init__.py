"""Unit tests of the orders domain; shared builders live here so every test file reads the same story.

The story: on Monday 2025-03-10 at 09:00 (Taipei) customer c-1 books staff s-1 for
dish-washing at home in Taipei, Tuesday 14:00-16:00, at TWD 600.00 an hour.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from libs.domain.aggregate import Aggregate
from libs.domain.events import registry
from libs.domain.money import Money
from services.orders.domain.catalogue import ServiceItem
from services.orders.domain.events import (
    Address,
    IntendedTenders,
    OrderStatus,
    PrepaymentDecision,
    PrepaymentReason,
    PrepaymentRule,
    Slot,
)
from services.orders.domain.order import Order

TZ = ZoneInfo("Asia/Taipei")
NOW = datetime(2025, 3, 10, 9, 0, tzinfo=TZ)
SOON = NOW + timedelta(minutes=5)  # a moment inside the 15-minute payment window
DEADLINE = NOW + timedelta(minutes=15)
SLOT = Slot(start=datetime(2025, 3, 11, 14, 0, tzinfo=TZ), end=datetime(2025, 3, 11, 16, 0, tzinfo=TZ))
ADDRESS = Address(line1="No. 7, Sec. 5, Xinyi Rd., 12F", district="信義區", city="臺北市", postal_code="110")
TENDERS = IntendedTenders(voucher_ids=["v-100"], use_member_balance=True)

CUSTOMER = "c-1"
STAFF = "s-1"
MERCHANT = "m-1"
PREPAY_BILL = "bill-pre-1"
FINAL_BILL = "bill-fin-1"


def twd(amount: int) -> Money:
    """TWD in minor units: twd(60000) is TWD 600.00."""
    return Money(amount=amount, currency="TWD")


ITEM = ServiceItem(service_code="dishwash-standard", product_line="dishwashing",
                   name="Standard home dish-washing", hourly_rate=twd(60000), min_minutes=60)
ESTIMATE = twd(120000)  # two hours at TWD 600.00
BILL_TOTAL = twd(135000)  # what the merchant pushes: 2h15m


def decision(required: bool, deadline: datetime = DEADLINE) -> PrepaymentDecision:
    """A prepayment decision as the policy would make it."""
    if required:
        return PrepaymentDecision(required=True, policy_version="test-1", payment_deadline=deadline,
                                  reasons=[PrepaymentReason(rule=PrepaymentRule.PRODUCT_LINE, detail="test")])
    return PrepaymentDecision(required=False, policy_version="test-1",
                              reasons=[PrepaymentReason(rule=PrepaymentRule.NONE, detail="test")])


def place(required: bool, order_id: str = "o-1", slot: Slot = SLOT, at: datetime = NOW,
          item: ServiceItem = ITEM) -> Order:
    """Place an order through the command path (its OrderPlaced is pending)."""
    return Order.place(order_id, customer_id=CUSTOMER, staff_id=STAFF, item=item, slot=slot,
                       address=ADDRESS, tenders=TENDERS, decision=decision(required),
                       prepayment_bill_id=PREPAY_BILL if required else None, timezone="Asia/Taipei", at=at)


def order_in(status: OrderStatus, *, prepaid: bool = False) -> Order:
    """An order driven through the command path to `status`, saved (no pending events)."""
    S = OrderStatus
    if status in (S.AWAITING_PREPAYMENT, S.PROCESSING):
        order = place(required=True)
        if status is S.PROCESSING:
            order.start_checkout("att-1", SOON)
        order.mark_saved()
        return order
    order = place(required=prepaid)
    if prepaid:
        order.record_prepayment(PREPAY_BILL, ESTIMATE, "psp-ref-1", SOON)
    path = [S.ACCEPTED, S.IN_SERVICE, S.BILLED, S.AWAITING_PAYMENT, S.COMPLETED]
    steps = {
        S.ACCEPTED: lambda: order.accept(MERCHANT, NOW + timedelta(minutes=30)),
        S.IN_SERVICE: lambda: order.start_service(MERCHANT, SLOT.start),
        S.BILLED: lambda: order.push_bill(MERCHANT, FINAL_BILL, BILL_TOTAL, SLOT.end),
        S.AWAITING_PAYMENT: lambda: order.confirm_bill(CUSTOMER, FINAL_BILL, 1, BILL_TOTAL, SLOT.end),
        S.COMPLETED: lambda: order.record_settlement(FINAL_BILL, BILL_TOTAL, SLOT.end),
    }
    if status is S.CANCELLED:
        order.cancel(cancelled_by="customer", reason_code="changed_mind", reason="", at=SOON)
    elif status is not S.AWAITING_CONFIRMATION:
        for step in path[: path.index(status) + 1]:
            steps[step]()
    order.mark_saved()
    assert order.status is status
    return order


def state(aggregate: Aggregate) -> dict[str, Any]:
    """Everything an aggregate knows, without bookkeeping (version, pending events)."""
    return {k: v for k, v in vars(aggregate).items() if k not in ("_pending", "version")}


def round_trip(events: list[Any]) -> list[Any]:
    """Events as the store would give them back: JSON data decoded through the registry."""
    return [registry.decode(e.event_type, e.schema_version, e.to_data()) for e in events]
