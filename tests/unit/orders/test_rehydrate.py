"""Replay: rebuilding an aggregate from its stored events gives the state the commands produced."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from libs.domain.aggregate import Aggregate
from services.orders.domain.bill import Bill
from services.orders.domain.commands import MaterialInput
from services.orders.domain.customer import Customer
from services.orders.domain.events import BillStatus, OrderStatus
from services.orders.domain.order import Order
from services.orders.domain.platform import PlatformConditions
from services.orders.domain.prepayment import PrepaymentPolicy
from services.orders.domain.schedule import StaffSchedule
from tests.unit.orders import (
    BILL_TOTAL,
    CUSTOMER,
    DEADLINE,
    ESTIMATE,
    FINAL_BILL,
    MERCHANT,
    NOW,
    PREPAY_BILL,
    SLOT,
    SOON,
    place,
    round_trip,
    state,
    twd,
)


def order_lifecycle() -> Aggregate:
    order = place(required=True)
    order.start_checkout("att-1", SOON)
    order.abandon_checkout("att-1", "back from the cashier", SOON)
    order.start_checkout("att-2", SOON)
    order.record_prepayment(PREPAY_BILL, ESTIMATE, "psp-2", SOON)
    order.accept(MERCHANT, SOON)
    order.start_service(MERCHANT, SLOT.start)
    order.push_bill(MERCHANT, FINAL_BILL, BILL_TOTAL, SLOT.end)
    order.adjust_bill(MERCHANT, FINAL_BILL, 2, twd(120000), SLOT.end)
    order.confirm_bill(CUSTOMER, FINAL_BILL, 2, twd(120000), SLOT.end)
    order.record_settlement(FINAL_BILL, twd(120000), SLOT.end)
    assert (order.status, order.settled_total, order.prepaid_amount) == (
        OrderStatus.COMPLETED, twd(120000), ESTIMATE)
    return order


def order_cancelled_then_paid() -> Aggregate:
    order = place(required=True)
    order.start_checkout("att-1", SOON)
    order.expire_payment_deadline(DEADLINE)
    order.record_prepayment(PREPAY_BILL, ESTIMATE, "psp-late", DEADLINE + timedelta(seconds=2))
    assert order.status is OrderStatus.CANCELLED and len(order.late_payments) == 1
    return order


def final_bill() -> Aggregate:
    bill = Bill.push(FINAL_BILL, "o-1", hourly_rate=twd(60000), actual_minutes=135, at=SLOT.end, materials=[
        MaterialInput(code="sponge", description="Sponge", quantity=3, unit_price=twd(2500))])
    bill.adjust(120, [], "no sponges used", SLOT.end)
    bill.confirm(2, SLOT.end)
    bill.start_payment("att-1", SLOT.end)
    bill.abandon_payment("att-1", "declined", SLOT.end)
    bill.pay(twd(120000), "settle-1", SLOT.end)
    assert (bill.status, bill.revision, bill.confirmed_revision) == (BillStatus.COMPLETED, 2, 2)
    return bill


def closed_prepayment_bill() -> Aggregate:
    bill = Bill.issue_prepayment(PREPAY_BILL, "o-1", ESTIMATE, NOW)
    bill.start_payment("att-1", SOON)
    bill.close("order cancelled: payment timeout", DEADLINE)
    assert bill.status is BillStatus.CLOSED
    return bill


def customer() -> Aggregate:
    policy = PrepaymentPolicy(version="t")
    c = Customer(CUSTOMER)
    c.record_credit_score(610, "bureau-a", NOW)
    c.record_cancellation("o-1", was_prepaid=True, seconds_before_service_start=90_000, at=NOW, policy=policy)
    c.record_cancellation("o-2", was_prepaid=False, seconds_before_service_start=3_600, at=NOW, policy=policy)
    assert c.flagged and len(c.cancellations) == 2
    return c


def schedule() -> Aggregate:
    s = StaffSchedule.for_slot("s-1", SLOT.start, "Asia/Taipei")
    s.hold("o-1", SLOT, NOW, "Asia/Taipei")
    s.hold("o-2", SLOT.model_copy(update={"start": SLOT.end, "end": SLOT.end + timedelta(hours=1)}),
           NOW, "Asia/Taipei")
    s.release("o-1", "cancelled", NOW)
    assert set(s.holds) == {"o-2"}
    return s


def platform() -> Aggregate:
    p = PlatformConditions()
    p.change(severe_weather_cities=["臺北市"], load_pct=91, note="typhoon warning", at=NOW)
    return p


SCENARIOS: dict[str, Callable[[], Aggregate]] = {
    "order-lifecycle": order_lifecycle, "order-cancelled-then-paid": order_cancelled_then_paid,
    "final-bill": final_bill, "closed-prepayment-bill": closed_prepayment_bill, "customer": customer,
    "schedule": schedule, "platform": platform,
}


@pytest.mark.parametrize("through_json", [False, True], ids=["objects", "json"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_rehydrate_reproduces_the_command_path(name: str, through_json: bool) -> None:
    live = SCENARIOS[name]()
    events = live.pending
    stored = round_trip(events) if through_json else events
    replayed = type(live).rehydrate(live.id, stored)
    assert state(replayed) == state(live)
    assert replayed.version == len(events)
    assert replayed.pending == []
    assert replayed.allowed_commands() == live.allowed_commands()  # type: ignore[attr-defined]


def test_replaying_part_of_a_stream_gives_the_state_as_of_then() -> None:
    live = order_lifecycle()
    as_of_billed = Order.rehydrate(live.id, live.pending[:8])
    assert as_of_billed.status is OrderStatus.BILLED
    assert (as_of_billed.bill_revision, as_of_billed.bill_total) == (1, BILL_TOTAL)
