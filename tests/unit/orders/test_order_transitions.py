"""Order state machine: every allowed transition, and every refused (state, command) pair."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from libs.domain.errors import InvalidTransition, NotFound
from services.orders.domain import events as ev
from services.orders.domain.events import OrderStatus as S
from services.orders.domain.order import LABELS_ZH, Order
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
    order_in,
    place,
    twd,
)

# The specification, written out here rather than read from the module under test.
EXPECTED_ALLOWED: dict[S, list[str]] = {
    S.AWAITING_PREPAYMENT: ["cancel", "expire_payment_deadline", "record_prepayment", "start_checkout"],
    S.PROCESSING: ["abandon_checkout", "cancel", "expire_payment_deadline", "record_prepayment"],
    S.AWAITING_CONFIRMATION: ["accept", "cancel"],
    S.ACCEPTED: ["cancel", "start_service"],
    S.IN_SERVICE: ["push_bill"],
    S.BILLED: ["adjust_bill", "confirm_bill"],
    S.AWAITING_PAYMENT: ["record_settlement"],
    S.COMPLETED: [],
    S.CANCELLED: [],
}

LATE = DEADLINE + timedelta(minutes=1)

# One valid call per command, so that only the state decides whether it is allowed.
COMMANDS: dict[str, Callable[[Order], None]] = {
    "start_checkout": lambda o: o.start_checkout("att-2", SOON),
    "abandon_checkout": lambda o: o.abandon_checkout(o.checkout_attempt_id or "att-1", "back", SOON),
    "record_prepayment": lambda o: o.record_prepayment(PREPAY_BILL, ESTIMATE, "psp-ref-9", SOON),
    "expire_payment_deadline": lambda o: o.expire_payment_deadline(LATE),
    "accept": lambda o: o.accept(MERCHANT, SOON),
    "start_service": lambda o: o.start_service(MERCHANT, SLOT.start),
    "push_bill": lambda o: o.push_bill(MERCHANT, FINAL_BILL, BILL_TOTAL, SLOT.end),
    "adjust_bill": lambda o: o.adjust_bill(MERCHANT, FINAL_BILL, o.bill_revision + 1, BILL_TOTAL, SLOT.end),
    "confirm_bill": lambda o: o.confirm_bill(CUSTOMER, FINAL_BILL, o.bill_revision, BILL_TOTAL, SLOT.end),
    "record_settlement": lambda o: o.record_settlement(FINAL_BILL, BILL_TOTAL, SLOT.end),
    "cancel": lambda o: o.cancel(cancelled_by="platform", reason_code="ops_request", reason="", at=SOON),
}

ALLOWED_TRANSITIONS = [
    (S.AWAITING_PREPAYMENT, "start_checkout", S.PROCESSING, ev.OrderCheckoutStarted),
    (S.AWAITING_PREPAYMENT, "record_prepayment", S.AWAITING_CONFIRMATION, ev.OrderPrepaid),
    (S.AWAITING_PREPAYMENT, "cancel", S.CANCELLED, ev.OrderCancelled),
    (S.AWAITING_PREPAYMENT, "expire_payment_deadline", S.CANCELLED, ev.OrderCancelled),
    (S.PROCESSING, "abandon_checkout", S.AWAITING_PREPAYMENT, ev.OrderCheckoutAbandoned),
    (S.PROCESSING, "record_prepayment", S.AWAITING_CONFIRMATION, ev.OrderPrepaid),
    (S.PROCESSING, "cancel", S.CANCELLED, ev.OrderCancelled),
    (S.PROCESSING, "expire_payment_deadline", S.CANCELLED, ev.OrderCancelled),
    (S.AWAITING_CONFIRMATION, "accept", S.ACCEPTED, ev.OrderAccepted),
    (S.AWAITING_CONFIRMATION, "cancel", S.CANCELLED, ev.OrderCancelled),
    (S.ACCEPTED, "start_service", S.IN_SERVICE, ev.OrderServiceStarted),
    (S.ACCEPTED, "cancel", S.CANCELLED, ev.OrderCancelled),
    (S.IN_SERVICE, "push_bill", S.BILLED, ev.OrderBilled),
    (S.BILLED, "adjust_bill", S.BILLED, ev.OrderBillAdjusted),
    (S.BILLED, "confirm_bill", S.AWAITING_PAYMENT, ev.OrderBillConfirmed),
    (S.AWAITING_PAYMENT, "record_settlement", S.COMPLETED, ev.OrderCompleted),
]


def test_every_table_edge_is_covered_by_a_case() -> None:
    covered = {(state, command) for state, command, _, _ in ALLOWED_TRANSITIONS}
    expected = {(state, command) for state, commands in EXPECTED_ALLOWED.items() for command in commands}
    assert covered == expected


def test_every_status_has_the_seed_or_our_chinese_label() -> None:
    assert LABELS_ZH == {
        S.AWAITING_PREPAYMENT: "待預付", S.PROCESSING: "處理中", S.AWAITING_CONFIRMATION: "待確認",
        S.ACCEPTED: "已接單", S.IN_SERVICE: "服務中", S.BILLED: "待確認賬單", S.AWAITING_PAYMENT: "待付款",
        S.COMPLETED: "已完成", S.CANCELLED: "已取消",
    }
    assert S.PROCESSING.label_zh == "處理中"


@pytest.mark.parametrize("required, status", [(True, S.AWAITING_PREPAYMENT), (False, S.AWAITING_CONFIRMATION)])
def test_placement_waits_for_prepayment_only_when_required(required: bool, status: S) -> None:
    order = place(required=required)
    assert order.status is status
    [placed] = order.pending
    assert isinstance(placed, ev.OrderPlaced)
    assert placed.order_id == "o-1"
    assert placed.estimated_total == ESTIMATE
    assert placed.payment_deadline == (DEADLINE if required else None)
    assert placed.prepayment_bill_id == (PREPAY_BILL if required else None)
    assert order.allowed_commands() == EXPECTED_ALLOWED[status]


@pytest.mark.parametrize("start, command, target, event_type", ALLOWED_TRANSITIONS,
                         ids=[f"{s.value}-{c}" for s, c, _, _ in ALLOWED_TRANSITIONS])
def test_allowed_transition_lands_in_target_and_records_event(start: S, command: str, target: S,
                                                               event_type: type) -> None:
    order = order_in(start)
    assert order.allowed_commands() == EXPECTED_ALLOWED[start]
    COMMANDS[command](order)
    assert order.status is target
    [event] = order.pending
    assert type(event) is event_type
    assert event.order_id == order.id
    assert order.allowed_commands() == EXPECTED_ALLOWED[target]


REFUSED = [(state, command) for state in S for command in COMMANDS
           if command not in EXPECTED_ALLOWED[state]
           # a prepayment captured after cancellation is recorded for refund, not refused
           and not (state is S.CANCELLED and command == "record_prepayment")]


@pytest.mark.parametrize("start, command", REFUSED, ids=[f"{s.value}-{c}" for s, c in REFUSED])
def test_refused_command_names_state_and_allowed_commands(start: S, command: str) -> None:
    order = order_in(start)
    with pytest.raises(InvalidTransition) as caught:
        COMMANDS[command](order)
    assert caught.value.allowed == EXPECTED_ALLOWED[start]
    assert caught.value.state == start.value
    assert f"is {start.value};" in caught.value.message
    assert f"'{command}'" in caught.value.message
    assert order.status is start
    assert order.pending == []


def test_commands_on_an_order_that_was_never_placed_are_not_found() -> None:
    with pytest.raises(NotFound):
        Order("o-missing").accept(MERCHANT, NOW)
    assert Order("o-missing").allowed_commands() == []


def test_adjusting_the_bill_keeps_the_order_billed_and_tracks_revision_and_total() -> None:
    order = order_in(S.BILLED)
    order.adjust_bill(MERCHANT, FINAL_BILL, 2, twd(90000), SLOT.end)
    assert (order.status, order.bill_revision, order.bill_total) == (S.BILLED, 2, twd(90000))
