"""Order business rules: slot validation, cancellation fault parties, payment deadline, late payments."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.domain.errors import Conflict, InvalidTransition, RuleViolation
from libs.domain.money import Money
from services.orders.domain import events as ev
from services.orders.domain.events import CancelledBy, FaultParty, Slot
from services.orders.domain.events import OrderStatus as S
from services.orders.domain.order import Order, validate_slot
from tests.unit.orders import (
    ADDRESS,
    BILL_TOTAL,
    CUSTOMER,
    DEADLINE,
    ESTIMATE,
    FINAL_BILL,
    ITEM,
    MERCHANT,
    NOW,
    PREPAY_BILL,
    SLOT,
    SOON,
    TENDERS,
    TZ,
    decision,
    order_in,
    place,
    twd,
)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A Taipei time in March 2025."""
    return datetime(2025, 3, day, hour, minute, tzinfo=TZ)


# --- placement ------------------------------------------------------------------------------


@pytest.mark.parametrize("start, end, field, rule_part", [
    (at(11, 16), at(11, 14), "slot.end", "after slot.start"),
    (at(11, 14), at(11, 14), "slot.end", "after slot.start"),
    (at(10, 8), at(10, 10), "slot.start", "future"),
    (at(10, 9), at(10, 11), "slot.start", "future"),  # starting exactly now is not the future
    (at(11, 6), at(11, 18, 30), "slot.end", "12 hours"),
    (at(11, 14), at(11, 14, 30), "slot.end", "at least 60 minutes"),
    (at(11, 22), at(12, 1), "slot.end", "same local day"),
    (at(11, 14).replace(second=30), at(11, 16), "slot.start", "whole minute"),
], ids=["end-before-start", "empty", "past", "now", "over-12h", "under-min-minutes", "two-days", "seconds"])
def test_place_refuses_a_bad_slot_naming_the_field(start: datetime, end: datetime, field: str,
                                                    rule_part: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        place(required=False, slot=Slot(start=start, end=end))
    assert caught.value.field == field
    assert rule_part in caught.value.rule


def test_slot_exactly_12_hours_is_accepted() -> None:
    assert place(required=False, slot=Slot(start=at(11, 6), end=at(11, 18))).status is S.AWAITING_CONFIRMATION


def test_slot_ending_at_local_midnight_is_on_the_same_day() -> None:
    validate_slot(Slot(start=at(11, 22), end=at(12, 0)), at=NOW, timezone="Asia/Taipei")


def test_same_day_is_judged_in_the_policy_time_zone_not_utc() -> None:
    # 15:00-17:00 UTC on 10 March is 23:00 on the 10th to 01:00 on the 11th in Taipei.
    slot = Slot(start=datetime(2025, 3, 10, 15, 0, tzinfo=UTC), end=datetime(2025, 3, 10, 17, 0, tzinfo=UTC))
    with pytest.raises(RuleViolation) as caught:
        validate_slot(slot, at=NOW, timezone="Asia/Taipei")
    assert caught.value.field == "slot.end"
    validate_slot(slot, at=NOW, timezone="UTC")


def test_place_snapshots_the_service_and_estimates_half_up() -> None:
    slot = Slot(start=at(11, 14), end=at(11, 15, 45))  # 105 minutes at TWD 600.00/h
    order = place(required=False, slot=slot)
    [placed] = order.pending
    assert placed.service.hourly_rate == twd(60000)
    assert placed.estimated_total == twd(105000)
    assert placed.tenders == TENDERS
    assert placed.address.city == "臺北市"


@pytest.mark.parametrize("required, bill_id", [(True, None), (False, "bill-x")])
def test_prepayment_bill_goes_with_a_required_prepayment_only(required: bool, bill_id: str | None) -> None:
    with pytest.raises(RuleViolation) as caught:
        Order.place("o-1", customer_id=CUSTOMER, staff_id="s-1", item=ITEM, slot=SLOT, address=ADDRESS,
                    tenders=TENDERS, decision=decision(required), prepayment_bill_id=bill_id,
                    timezone="Asia/Taipei", at=NOW)
    assert caught.value.field == "prepayment_bill_id"


# --- checkout and prepayment ------------------------------------------------------------------


def test_checkout_round_trip_uses_the_prepayment_bill() -> None:
    order = order_in(S.AWAITING_PREPAYMENT)
    order.start_checkout("att-7", SOON)
    order.abandon_checkout("att-7", "customer pressed back at the cashier", SOON)
    started, abandoned = order.pending
    assert (started.bill_id, started.attempt_id) == (PREPAY_BILL, "att-7")
    assert (abandoned.bill_id, abandoned.attempt_id) == (PREPAY_BILL, "att-7")
    assert order.status is S.AWAITING_PREPAYMENT


def test_abandoning_another_attempt_is_a_conflict() -> None:
    order = order_in(S.PROCESSING)
    with pytest.raises(Conflict):
        order.abandon_checkout("att-old", "late report", SOON)
    assert order.status is S.PROCESSING


def test_prepayment_for_another_bill_is_refused() -> None:
    order = order_in(S.AWAITING_PREPAYMENT)
    with pytest.raises(RuleViolation) as caught:
        order.record_prepayment("bill-other", ESTIMATE, "psp-1", SOON)
    assert caught.value.field == "bill_id"


def test_prepayment_is_kept_and_carried_into_a_later_cancellation() -> None:
    order = order_in(S.ACCEPTED, prepaid=True)
    assert order.is_prepaid and order.prepaid_amount == ESTIMATE
    order.cancel(cancelled_by="customer", reason_code="changed_mind", reason="", at=at(11, 2))
    [cancelled] = order.pending
    assert cancelled.was_prepaid is True
    assert cancelled.prepaid_amount == ESTIMATE
    assert cancelled.prepayment_bill_id == PREPAY_BILL
    assert cancelled.status_before is S.ACCEPTED


def test_prepayment_captured_after_cancellation_is_recorded_for_refund() -> None:
    order = order_in(S.AWAITING_PREPAYMENT)
    order.expire_payment_deadline(DEADLINE)
    order.mark_saved()
    order.record_prepayment(PREPAY_BILL, ESTIMATE, "psp-late", DEADLINE + timedelta(seconds=3))
    [late] = order.pending
    assert isinstance(late, ev.OrderPaymentReceivedAfterCancellation)
    assert (late.amount, late.payment_reference, late.bill_id) == (ESTIMATE, "psp-late", PREPAY_BILL)
    assert order.status is S.CANCELLED
    assert not order.is_prepaid
    order.record_prepayment(PREPAY_BILL, ESTIMATE, "psp-late", DEADLINE + timedelta(seconds=9))
    assert len(order.pending) == 1  # the same capture reported twice is recorded once


# --- payment deadline ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.AWAITING_PREPAYMENT, S.PROCESSING])
def test_payment_deadline_not_reached_yet_is_refused(status: S) -> None:
    order = order_in(status)
    with pytest.raises(RuleViolation) as caught:
        order.expire_payment_deadline(DEADLINE - timedelta(seconds=1))
    assert (caught.value.field, caught.value.rule) == ("payment_deadline", "not reached yet")
    assert order.status is status and order.pending == []


@pytest.mark.parametrize("status", [S.AWAITING_PREPAYMENT, S.PROCESSING])
def test_payment_deadline_reached_cancels_as_the_customers_fault(status: S) -> None:
    order = order_in(status)
    order.expire_payment_deadline(DEADLINE)
    [cancelled] = order.pending
    assert isinstance(cancelled, ev.OrderCancelled)
    assert (cancelled.cancelled_by, cancelled.fault_party, cancelled.reason_code) == (
        CancelledBy.SYSTEM, FaultParty.CUSTOMER, "payment_timeout")
    assert cancelled.was_prepaid is False and cancelled.prepaid_amount is None
    assert cancelled.status_before is status
    assert order.status is S.CANCELLED


# --- cancellation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("by, named, expected", [
    ("customer", None, FaultParty.CUSTOMER),
    ("customer", "customer", FaultParty.CUSTOMER),
    ("merchant", None, FaultParty.MERCHANT),
    ("merchant", "merchant", FaultParty.MERCHANT),
    ("platform", None, FaultParty.PLATFORM),
    ("platform", "customer", FaultParty.CUSTOMER),
    ("platform", "merchant", FaultParty.MERCHANT),
    ("platform", "platform", FaultParty.PLATFORM),
    ("system", None, FaultParty.PLATFORM),
])
def test_cancellation_fault_party(by: str, named: str | None, expected: FaultParty) -> None:
    order = order_in(S.ACCEPTED)
    order.cancel(cancelled_by=by, fault_party=named, reason_code="some_reason", reason="why", at=SOON,
                 merchant_id=MERCHANT if by == "merchant" else None)
    [cancelled] = order.pending
    assert cancelled.fault_party is expected
    assert cancelled.cancelled_by == by


@pytest.mark.parametrize("by, named", [
    ("customer", "merchant"), ("customer", "platform"), ("merchant", "customer"), ("merchant", "platform"),
])
def test_customer_or_merchant_cannot_blame_another_party(by: str, named: str) -> None:
    order = order_in(S.ACCEPTED)
    with pytest.raises(RuleViolation) as caught:
        order.cancel(cancelled_by=by, fault_party=named, reason_code="x", reason="", at=SOON, merchant_id=MERCHANT)
    assert caught.value.field == "fault_party"
    assert order.status is S.ACCEPTED and order.pending == []


def test_merchant_cancel_must_come_from_the_accepting_merchant() -> None:
    order = order_in(S.ACCEPTED)
    with pytest.raises(RuleViolation) as caught:
        order.cancel(cancelled_by="merchant", reason_code="x", reason="", at=SOON, merchant_id="m-other")
    assert caught.value.field == "merchant_id"
    with pytest.raises(RuleViolation):
        order.cancel(cancelled_by="merchant", reason_code="x", reason="", at=SOON)
    assert order.status is S.ACCEPTED


def test_no_merchant_can_cancel_before_one_accepted() -> None:
    order = order_in(S.AWAITING_CONFIRMATION)
    with pytest.raises(RuleViolation) as caught:
        order.cancel(cancelled_by="merchant", reason_code="x", reason="", at=SOON, merchant_id=MERCHANT)
    assert caught.value.field == "merchant_id"


def test_unknown_canceller_is_a_rule_violation() -> None:
    with pytest.raises(RuleViolation) as caught:
        order_in(S.ACCEPTED).cancel(cancelled_by="robot", reason_code="x", reason="", at=SOON)
    assert caught.value.field == "cancelled_by"


@pytest.mark.parametrize("when, seconds", [
    (at(10, 10), 28 * 3600),
    (at(11, 14), 0),
    (at(11, 14, 10), -600),  # the customer cancels ten minutes after the slot started
])
def test_cancellation_records_time_to_service_start(when: datetime, seconds: int) -> None:
    order = order_in(S.ACCEPTED)
    order.cancel(cancelled_by="customer", reason_code="changed_mind", reason="", at=when)
    [cancelled] = order.pending
    assert cancelled.seconds_before_service_start == seconds
    assert cancelled.service_starts_at == SLOT.start
    assert cancelled.cancelled_at == when


@pytest.mark.parametrize("status", [S.IN_SERVICE, S.BILLED, S.AWAITING_PAYMENT])
@pytest.mark.parametrize("by", ["customer", "merchant", "platform"])
def test_nobody_can_cancel_once_service_started(status: S, by: str) -> None:
    order = order_in(status)
    with pytest.raises(InvalidTransition) as caught:
        order.cancel(cancelled_by=by, reason_code="x", reason="", at=SLOT.start, merchant_id=MERCHANT)
    assert "cancel" not in caught.value.allowed


# --- merchant, customer and bill identity --------------------------------------------------------


def test_only_the_accepting_merchant_starts_service_and_pushes_the_bill() -> None:
    order = order_in(S.ACCEPTED)
    with pytest.raises(RuleViolation) as caught:
        order.start_service("m-other", SLOT.start)
    assert caught.value.field == "merchant_id"
    order.start_service(MERCHANT, SLOT.start)
    with pytest.raises(RuleViolation):
        order.push_bill("m-other", FINAL_BILL, BILL_TOTAL, SLOT.end)


def test_only_the_ordering_customer_confirms_the_bill() -> None:
    order = order_in(S.BILLED)
    with pytest.raises(RuleViolation) as caught:
        order.confirm_bill("c-other", FINAL_BILL, 1, BILL_TOTAL, SLOT.end)
    assert caught.value.field == "customer_id"


def test_order_refuses_a_stale_bill_revision() -> None:
    order = order_in(S.BILLED)
    order.adjust_bill(MERCHANT, FINAL_BILL, 2, twd(90000), SLOT.end)
    with pytest.raises(Conflict) as caught:
        order.confirm_bill(CUSTOMER, FINAL_BILL, 1, BILL_TOTAL, SLOT.end)
    assert caught.value.details["current_revision"] == 2
    with pytest.raises(Conflict):
        order.adjust_bill(MERCHANT, FINAL_BILL, 2, twd(90000), SLOT.end)  # revision 2 exists already


def test_settlement_of_another_bill_or_currency_is_refused() -> None:
    order = order_in(S.AWAITING_PAYMENT)
    with pytest.raises(RuleViolation) as caught:
        order.record_settlement("bill-other", BILL_TOTAL, SLOT.end)
    assert caught.value.field == "bill_id"
    with pytest.raises(RuleViolation) as caught:
        order.record_settlement(FINAL_BILL, Money(amount=4500, currency="USD"), SLOT.end)
    assert caught.value.field == "settled_total.currency"
