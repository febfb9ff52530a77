"""Bill: state machines of prepayment and final bills, pricing with half-up rounding, revisions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from libs.domain.errors import Conflict, InvalidTransition, NotFound, RuleViolation
from libs.domain.money import Money
from services.orders.domain import events as ev
from services.orders.domain.bill import LABELS_ZH, Bill, price_lines
from services.orders.domain.commands import MaterialInput
from services.orders.domain.events import BillKind
from services.orders.domain.events import BillStatus as B
from tests.unit.orders import FINAL_BILL, NOW, PREPAY_BILL, SOON, twd

ORDER = "o-1"

# The specification, written out here: (variant, state) -> allowed commands.
EXPECTED_ALLOWED: dict[tuple[str, B], list[str]] = {
    ("prepayment", B.PENDING): ["close", "pay", "start_payment"],
    ("prepayment", B.PROCESSING): ["abandon_payment", "close", "pay"],
    ("prepayment", B.COMPLETED): [],
    ("prepayment", B.CLOSED): [],
    ("final", B.PENDING): ["adjust", "confirm"],
    ("final-confirmed", B.PENDING): ["pay", "start_payment"],
    ("final-confirmed", B.PROCESSING): ["abandon_payment", "pay"],
    ("final-confirmed", B.COMPLETED): [],
}

MATERIALS = [MaterialInput(code="detergent-eco", description="Eco detergent 1L", quantity=2,
                           unit_price=twd(15000))]


def bill_in(variant: str, status: B) -> Bill:
    """A saved bill of the variant driven through commands to `status`."""
    if variant == "prepayment":
        bill = Bill.issue_prepayment(PREPAY_BILL, ORDER, twd(120000), NOW)
    else:
        bill = Bill.push(FINAL_BILL, ORDER, hourly_rate=twd(60000), actual_minutes=135,
                         materials=MATERIALS, at=NOW)
        if variant == "final-confirmed":
            bill.confirm(1, NOW)
    if status is B.PROCESSING:
        bill.start_payment("att-1", NOW)
    elif status is B.COMPLETED:
        bill.pay(bill.amount, "ref-1", NOW)
    elif status is B.CLOSED:
        bill.close("order cancelled before prepayment", NOW)
    bill.mark_saved()
    assert bill.status is status
    return bill


COMMANDS: dict[str, Callable[[Bill], None]] = {
    "start_payment": lambda b: b.start_payment("att-2", SOON),
    "abandon_payment": lambda b: b.abandon_payment(b.attempt_id or "att-1", "abandoned", SOON),
    "pay": lambda b: b.pay(b.amount or twd(1), "psp-ref-2", SOON),
    "close": lambda b: b.close("order cancelled", SOON),
    "adjust": lambda b: b.adjust(120, [], "customer says two hours", SOON),
    "confirm": lambda b: b.confirm(b.revision, SOON),
}

ALLOWED = [
    ("prepayment", B.PENDING, "start_payment", B.PROCESSING, ev.BillPaymentStarted),
    ("prepayment", B.PENDING, "pay", B.COMPLETED, ev.BillPaid),
    ("prepayment", B.PENDING, "close", B.CLOSED, ev.BillClosed),
    ("prepayment", B.PROCESSING, "abandon_payment", B.PENDING, ev.BillPaymentAbandoned),
    ("prepayment", B.PROCESSING, "pay", B.COMPLETED, ev.BillPaid),
    ("prepayment", B.PROCESSING, "close", B.CLOSED, ev.BillClosed),
    ("final", B.PENDING, "adjust", B.PENDING, ev.BillAdjusted),
    ("final", B.PENDING, "confirm", B.PENDING, ev.BillConfirmed),
    ("final-confirmed", B.PENDING, "start_payment", B.PROCESSING, ev.BillPaymentStarted),
    ("final-confirmed", B.PENDING, "pay", B.COMPLETED, ev.BillPaid),
    ("final-confirmed", B.PROCESSING, "abandon_payment", B.PENDING, ev.BillPaymentAbandoned),
    ("final-confirmed", B.PROCESSING, "pay", B.COMPLETED, ev.BillPaid),
]

REFUSED = [(variant, state, command) for (variant, state), allowed in EXPECTED_ALLOWED.items()
           for command in COMMANDS if command not in allowed]


def test_every_allowed_edge_is_covered() -> None:
    assert {(v, s, c) for v, s, c, _, _ in ALLOWED} == {
        (v, s, c) for (v, s), cs in EXPECTED_ALLOWED.items() for c in cs}


def test_bill_labels_are_the_seeds() -> None:
    assert LABELS_ZH == {B.PENDING: "待處理", B.PROCESSING: "處理中", B.COMPLETED: "已完成", B.CLOSED: "已關閉"}


@pytest.mark.parametrize("variant, start, command, target, event_type", ALLOWED,
                         ids=[f"{v}-{s.value}-{c}" for v, s, c, _, _ in ALLOWED])
def test_allowed_bill_transition(variant: str, start: B, command: str, target: B, event_type: type) -> None:
    bill = bill_in(variant, start)
    assert bill.allowed_commands() == EXPECTED_ALLOWED[(variant, start)]
    COMMANDS[command](bill)
    assert bill.status is target
    [event] = bill.pending
    assert type(event) is event_type
    assert (event.bill_id, event.order_id) == (bill.id, ORDER)


@pytest.mark.parametrize("variant, start, command", REFUSED, ids=[f"{v}-{s.value}-{c}" for v, s, c in REFUSED])
def test_refused_bill_command(variant: str, start: B, command: str) -> None:
    bill = bill_in(variant, start)
    with pytest.raises(InvalidTransition) as caught:
        COMMANDS[command](bill)
    assert caught.value.allowed == EXPECTED_ALLOWED[(variant, start)]
    assert f"is {start.value};" in caught.value.message
    assert bill.status is start and bill.pending == []


def test_missing_bill_is_not_found() -> None:
    with pytest.raises(NotFound):
        Bill("bill-missing").pay(twd(1), "r", NOW)


# --- pricing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate, minutes, labour", [
    (60000, 45, 45000),  # 45 minutes at TWD 600.00/h = TWD 450.00
    (60000, 135, 135000),
    (999, 1, 17),  # 16.65 -> 17
    (990, 1, 17),  # exactly 16.5 -> half-up to 17
    (930, 1, 16),  # exactly 15.5 -> 16
    (929, 1, 15),  # 15.48 -> 15
    (90000, 1440, 2160000),
])
def test_labour_is_rate_times_minutes_over_60_half_up(rate: int, minutes: int, labour: int) -> None:
    lines = price_lines(twd(rate), minutes, [])
    assert lines.labour.amount == twd(labour)
    assert lines.total == twd(labour)


def test_total_is_labour_plus_materials() -> None:
    materials = [*MATERIALS, MaterialInput(code="gloves", description="Gloves", quantity=1, unit_price=twd(4900))]
    lines = price_lines(twd(60000), 45, materials)
    assert [m.amount for m in lines.materials] == [twd(30000), twd(4900)]
    assert lines.total == twd(45000 + 30000 + 4900)


def test_push_records_revision_one_with_priced_lines() -> None:
    bill = Bill.push(FINAL_BILL, ORDER, hourly_rate=twd(60000), actual_minutes=45, materials=MATERIALS, at=NOW)
    [pushed] = bill.pending
    assert isinstance(pushed, ev.BillPushed)
    assert (pushed.revision, pushed.total) == (1, twd(75000))
    assert (bill.kind, bill.status, bill.amount) == (BillKind.FINAL, B.PENDING, twd(75000))


@pytest.mark.parametrize("index", [0, 1])
def test_materials_in_another_currency_are_refused_naming_the_line(index: int) -> None:
    usd = MaterialInput(code="imported", description="Imported sponge", quantity=1,
                        unit_price=Money(amount=500, currency="USD"))
    materials = [usd, *MATERIALS] if index == 0 else [*MATERIALS, usd]
    with pytest.raises(RuleViolation) as caught:
        price_lines(twd(60000), 60, materials)
    assert caught.value.field == f"materials[{index}].unit_price.currency"


@pytest.mark.parametrize("minutes", [0, -5, 1441])
def test_actual_minutes_out_of_range_is_refused(minutes: int) -> None:
    with pytest.raises(RuleViolation) as caught:
        Bill.push(FINAL_BILL, ORDER, hourly_rate=twd(60000), actual_minutes=minutes, materials=[], at=NOW)
    assert caught.value.field == "actual_minutes"


def test_negative_or_repeated_materials_are_refused() -> None:
    negative = MaterialInput(code="refund", description="Discount", quantity=1, unit_price=twd(-100))
    with pytest.raises(RuleViolation) as caught:
        price_lines(twd(60000), 60, [negative])
    assert caught.value.field == "materials[0].unit_price.amount"
    with pytest.raises(RuleViolation) as caught:
        price_lines(twd(60000), 60, [*MATERIALS, *MATERIALS])
    assert caught.value.field == "materials[1].code"


# --- revisions and confirmation ----------------------------------------------------------------------


def test_adjust_makes_a_new_revision_keeping_the_hourly_rate() -> None:
    bill = bill_in("final", B.PENDING)
    bill.adjust(120, [], "customer says two hours, no detergent used", SOON)
    [adjusted] = bill.pending
    assert isinstance(adjusted, ev.BillAdjusted)
    assert (adjusted.revision, adjusted.total) == (2, twd(120000))
    assert adjusted.labour.hourly_rate == twd(60000)
    assert (bill.revision, bill.amount, bill.materials) == (2, twd(120000), [])


def test_adjust_needs_a_reason() -> None:
    with pytest.raises(RuleViolation) as caught:
        bill_in("final", B.PENDING).adjust(120, [], "   ", SOON)
    assert caught.value.field == "reason"


def test_confirming_a_stale_revision_is_a_conflict_naming_the_current_one() -> None:
    bill = bill_in("final", B.PENDING)
    bill.adjust(120, [], "customer asked", SOON)
    with pytest.raises(Conflict) as caught:
        bill.confirm(1, SOON)
    assert caught.value.details["current_revision"] == 2
    assert "revision 2" in caught.value.message
    assert not bill.confirmed
    bill.confirm(2, SOON)
    assert bill.confirmed_revision == 2
    assert bill.pending[-1].total == twd(120000)


def test_after_confirmation_adjust_and_confirm_are_refused_and_payment_opens() -> None:
    bill = bill_in("final", B.PENDING)
    bill.confirm(1, SOON)
    with pytest.raises(InvalidTransition) as caught:
        bill.adjust(60, [], "too late", SOON)
    assert caught.value.allowed == ["pay", "start_payment"]
    with pytest.raises(InvalidTransition):
        bill.confirm(1, SOON)


def test_a_final_bill_cannot_be_paid_before_the_customer_confirms() -> None:
    bill = bill_in("final", B.PENDING)
    with pytest.raises(InvalidTransition) as caught:
        bill.pay(bill.amount, "psp-1", SOON)
    assert caught.value.allowed == ["adjust", "confirm"]


# --- payment ----------------------------------------------------------------------------------------


def test_pay_must_cover_exactly_the_bill() -> None:
    bill = bill_in("prepayment", B.PENDING)
    with pytest.raises(RuleViolation) as caught:
        bill.pay(twd(119999), "psp-1", SOON)
    assert caught.value.field == "amount"
    with pytest.raises(RuleViolation) as caught:
        bill.pay(Money(amount=120000, currency="USD"), "psp-1", SOON)
    assert caught.value.field == "amount.currency"
    bill.pay(twd(120000), "psp-1", SOON)
    assert (bill.status, bill.paid_amount, bill.payment_reference) == (B.COMPLETED, twd(120000), "psp-1")


def test_abandoning_another_attempt_is_a_conflict() -> None:
    bill = bill_in("prepayment", B.PROCESSING)
    with pytest.raises(Conflict):
        bill.abandon_payment("att-old", "declined", SOON)
    assert bill.status is B.PROCESSING


def test_prepayment_must_be_positive_and_close_needs_a_reason() -> None:
    with pytest.raises(RuleViolation) as caught:
        Bill.issue_prepayment(PREPAY_BILL, ORDER, twd(0), NOW)
    assert caught.value.field == "amount"
    with pytest.raises(RuleViolation):
        bill_in("prepayment", B.PENDING).close(" ", SOON)
