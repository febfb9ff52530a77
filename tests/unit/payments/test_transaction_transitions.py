"""Transaction state machine: every allowed transition, and every refused (state, command) pair."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from libs.domain.errors import InvalidTransition, NotFound
from libs.domain.money import Money
from services.payments.domain import events as ev
from services.payments.domain.events import TransactionStatus as S
from services.payments.domain.transaction import (
    AWAITING_CASH_TRANSITIONS,
    LABELS_ZH,
    TRANSACTION_TRANSITIONS,
    Transaction,
)
from tests.unit.payments import (
    BILL_TOTAL,
    CANCEL_EARLY,
    ESTIMATE,
    FINAL_BILL,
    MERCHANT,
    NOW,
    PREPAID,
    SERVICE_END,
    SOON,
    transaction_in,
)

AWAITING_CASH = "billed_awaiting_cash"  # billed, settled in cash, waiting for the merchant's confirmation
DISPUTES = ["freeze_refunds", "record_chargeback", "record_external_refund", "unfreeze_refunds"]

# The specification, written out here rather than read from the module under test.
EXPECTED_ALLOWED: dict[str, list[str]] = {
    "unpaid": ["bill", "cancel", "capture_prepayment", "fail_attempt", "record_external_refund",
               "release_reservation", "reserve_prepayment", "start_attempt"],
    "prepaid": ["bill", "cancel", *DISPUTES],
    "billed": ["fail_attempt", "freeze_refunds", "record_chargeback", "record_external_refund", "settle",
               "start_attempt", "unfreeze_refunds"],
    AWAITING_CASH: ["confirm_cash", *DISPUTES],
    "paid": sorted([*DISPUTES, "issue_refund"]),
    "confirmed": sorted([*DISPUTES, "issue_refund"]),
    "refunded": sorted([*DISPUTES, "issue_refund"]),
    "voided": ["record_external_refund"],
}


def _due(tx: Transaction) -> Money:
    """What the cashier would take: the prepayment, or the final bill's shortfall."""
    if "start_attempt" not in tx.allowed_commands():
        return ESTIMATE  # refused anyway; any amount will do
    return ESTIMATE if tx.status is S.UNPAID else tx.preview_settlement().shortfall


# One valid call per command, so that only the state decides whether it is allowed.
COMMANDS: dict[str, Callable[[Transaction], object]] = {
    "start_attempt": lambda t: t.start_attempt("att-2", _due(t), "credit_card", SOON),
    "fail_attempt": lambda t: t.fail_attempt(t.attempt.attempt_id if t.attempt else "att-1", "abandoned", SOON),
    "capture_prepayment": lambda t: t.capture_prepayment(PREPAID, at=SOON),
    "reserve_prepayment": lambda t: t.reserve_prepayment(PREPAID[:2], at=SOON),  # voucher + balance, not the card
    "release_reservation": lambda t: t.release_reservation("the customer cancelled it", SOON),
    "bill": lambda t: t.bill(FINAL_BILL, 1, BILL_TOTAL, SERVICE_END),
    "settle": lambda t: t.settle(method="third_party", reference="pi_2", at=SERVICE_END),
    "confirm_cash": lambda t: t.confirm_cash(MERCHANT, SERVICE_END),
    "cancel": lambda t: t.cancel(**CANCEL_EARLY),
    "freeze_refunds": lambda t: t.freeze_refunds("dp_1", SOON),
    "unfreeze_refunds": lambda t: t.unfreeze_refunds("dp_0", SOON),
    "record_chargeback": lambda t: t.record_chargeback("dp_0", Money(amount=60000, currency="TWD"), SOON, ["pi_1"]),
    "issue_refund": lambda t: t.issue_refund("rq-1", Money(amount=1000, currency="TWD"), "goodwill", SOON),
    # A refund made at the provider of the order's card payment (pi_1), or of a payment it returns.
    "record_external_refund": lambda t: t.record_external_refund(
        "re_ext", ["pi_1", *(p.tender.reference for p in t.payments_to_return)], Money(amount=1000, currency="TWD"),
        SOON),
}

# What a command needs before it can record its event (not part of the state).
NEEDS = {"fail_attempt": {"attempt": True}, "unfreeze_refunds": {"dispute": "dp_0"}, "issue_refund": {"online": True}}
NEEDS["release_reservation"] = {"reserved": True}

ALLOWED_TRANSITIONS = [
    ("unpaid", "start_attempt", S.UNPAID, [ev.TransactionPaymentAttempted]),
    ("unpaid", "fail_attempt", S.UNPAID, [ev.TransactionAttemptAbandoned]),
    ("unpaid", "capture_prepayment", S.PREPAID, [ev.TransactionPrepaymentCaptured]),
    ("unpaid", "reserve_prepayment", S.UNPAID, [ev.TransactionPrepaymentReserved]),
    ("unpaid", "release_reservation", S.UNPAID, [ev.TransactionReservationReleased]),
    ("unpaid", "bill", S.BILLED, [ev.TransactionBilled]),
    ("unpaid", "cancel", S.VOIDED, [ev.TransactionVoided]),
    ("prepaid", "bill", S.BILLED, [ev.TransactionBilled]),
    ("prepaid", "cancel", S.REFUNDED, [ev.TransactionRefunded]),
    ("prepaid", "freeze_refunds", S.PREPAID, [ev.TransactionRefundsFrozen]),
    ("prepaid", "unfreeze_refunds", S.PREPAID, [ev.TransactionRefundsUnfrozen]),
    ("prepaid", "record_chargeback", S.PREPAID, [ev.TransactionChargedBack]),
    ("billed", "start_attempt", S.BILLED, [ev.TransactionPaymentAttempted]),
    ("billed", "fail_attempt", S.BILLED, [ev.TransactionAttemptAbandoned]),
    ("billed", "settle", S.PAID, [ev.TransactionSettled]),
    ("billed", "freeze_refunds", S.BILLED, [ev.TransactionRefundsFrozen]),
    ("billed", "unfreeze_refunds", S.BILLED, [ev.TransactionRefundsUnfrozen]),
    ("billed", "record_chargeback", S.BILLED, [ev.TransactionChargedBack]),
    (AWAITING_CASH, "confirm_cash", S.CONFIRMED, [ev.TransactionCashConfirmed]),
    (AWAITING_CASH, "freeze_refunds", S.BILLED, [ev.TransactionRefundsFrozen]),
    (AWAITING_CASH, "unfreeze_refunds", S.BILLED, [ev.TransactionRefundsUnfrozen]),
    (AWAITING_CASH, "record_chargeback", S.BILLED, [ev.TransactionChargedBack]),
    *[(state, command, S(state), [event]) for state in ("paid", "confirmed", "refunded")
      for command, event in (("freeze_refunds", ev.TransactionRefundsFrozen),
                             ("unfreeze_refunds", ev.TransactionRefundsUnfrozen),
                             ("record_chargeback", ev.TransactionChargedBack),
                             ("issue_refund", ev.TransactionRefundIssued))],
    *[(state, "record_external_refund", S(state), [ev.TransactionExternalRefund])
      for state in ("prepaid", "billed", "paid", "refunded")],
    # No card payment of this order to refund there: allowed, and nothing is recorded.
    *[(state, "record_external_refund", S(state if state != AWAITING_CASH else "billed"), [])
      for state in ("unpaid", AWAITING_CASH, "confirmed", "voided")],
]


def test_the_seeds_transitions_and_no_others() -> None:
    """unpaid->prepaid, unpaid->billed, prepaid->billed, billed->paid, billed->confirmed, prepaid->refunded,
    unpaid->voided."""
    moves = {(start, str(target)) for start, _, target, _ in ALLOWED_TRANSITIONS
             if (start if start != AWAITING_CASH else "billed") != target.value}
    assert moves == {("unpaid", "prepaid"), ("unpaid", "billed"), ("unpaid", "voided"), ("prepaid", "billed"),
                     ("prepaid", "refunded"), ("billed", "paid"), (AWAITING_CASH, "confirmed")}


def test_every_table_edge_is_covered_by_a_case_and_matches_the_module() -> None:
    covered = {(state, command) for state, command, _, _ in ALLOWED_TRANSITIONS}
    expected = {(state, command) for state, commands in EXPECTED_ALLOWED.items() for command in commands}
    assert covered == expected
    module = {s.value: sorted(c) for s, c in TRANSACTION_TRANSITIONS.items()}
    module[AWAITING_CASH] = sorted(AWAITING_CASH_TRANSITIONS[S.BILLED])
    assert module == EXPECTED_ALLOWED


def test_every_state_has_the_seeds_chinese_label() -> None:
    assert LABELS_ZH == {S.UNPAID: "未支付", S.PREPAID: "已預付", S.BILLED: "已出賬", S.PAID: "已支付",
                         S.CONFIRMED: "已確認", S.REFUNDED: "已退款", S.VOIDED: "已作廢"}
    assert S.CONFIRMED.label_zh == "已確認"
    assert transaction_in("billed").label_zh == "已出賬"


@pytest.mark.parametrize("start, command, target, event_types", ALLOWED_TRANSITIONS,
                         ids=[f"{s}-{c}" for s, c, _, _ in ALLOWED_TRANSITIONS])
def test_allowed_transition_lands_in_target_and_records_event(start: str, command: str, target: S,
                                                               event_types: list[type]) -> None:
    tx = transaction_in(start, **NEEDS.get(command, {}))
    assert tx.allowed_commands() == EXPECTED_ALLOWED[start]
    COMMANDS[command](tx)
    assert tx.status is target
    assert [type(e) for e in tx.pending] == event_types
    assert all(e.order_id == tx.id for e in tx.pending)
    after = AWAITING_CASH if tx.awaiting_cash_confirmation else target.value
    assert tx.allowed_commands() == EXPECTED_ALLOWED[after]


REFUSED = [(state, command) for state in EXPECTED_ALLOWED for command in COMMANDS
           if command not in EXPECTED_ALLOWED[state]]


@pytest.mark.parametrize("start, command", REFUSED, ids=[f"{s}-{c}" for s, c in REFUSED])
def test_refused_command_names_state_and_allowed_commands(start: str, command: str) -> None:
    tx = transaction_in(start)
    status = tx.status
    with pytest.raises(InvalidTransition) as caught:
        COMMANDS[command](tx)
    assert caught.value.state == status.value
    assert caught.value.allowed == EXPECTED_ALLOWED[start]
    assert f"transaction {tx.id} is {status.value};" in caught.value.message
    assert f"'{command}'" in caught.value.message
    assert tx.status is status
    assert tx.pending == []


def test_commands_on_a_transaction_that_was_never_opened_are_not_found() -> None:
    with pytest.raises(NotFound):
        Transaction("o-missing").capture_prepayment(PREPAID, at=NOW)
    assert Transaction("o-missing").allowed_commands() == []
    assert Transaction("o-missing").label_zh is None
