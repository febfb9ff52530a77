"""A prepayment paid partly by card: the reservation of a voucher and the member balance on the Transaction,
the cashier attempt for exactly the remainder, the provider's charge that captures every tender at once, the
releases (by the customer, by the order's cancellation), and the upstream charge rules of the payments
service (a wrong amount or a late charge is recorded to be returned, never captured in part)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from libs.domain.errors import Conflict, RuleViolation
from libs.domain.money import Money
from services.payments.application.service import PaymentsService
from services.payments.domain import events as ev
from services.payments.domain.events import TenderKind
from services.payments.domain.events import TransactionStatus as S
from services.payments.domain.transaction import Transaction
from services.payments.domain.upstream_events import OrderRef, ProviderAmount, UpstreamChargeSucceeded
from tests.unit.payments import (
    CANCEL_EARLY,
    DEADLINE,
    ESTIMATE,
    FINAL_BILL,
    ORDER,
    POLICY,
    PREPAY_BILL,
    SERVICE_END,
    SOON,
    balance,
    card,
    cash,
    lines,
    open_transaction,
    twd,
    voucher,
)

RESERVED = [voucher(20000), balance(30000)]  # TWD 200 voucher + TWD 300 balance of the TWD 1,200 prepayment
REMAINDER = twd(70000)  # TWD 700 by card


def reserved_transaction() -> Transaction:
    tx = open_transaction()
    assert tx.reserve_prepayment(RESERVED, at=SOON) == REMAINDER
    tx.mark_saved()
    return tx


def kinds(tenders: Any) -> list[tuple[str, int]]:
    return [(t.kind.value, t.amount.amount) for t in tenders]


# --- reserving --------------------------------------------------------------------------------------


def test_a_reservation_names_the_tenders_and_the_remainder_and_the_transaction_stays_unpaid() -> None:
    tx = open_transaction()
    tx.mark_saved()
    remainder = tx.reserve_prepayment(RESERVED, at=SOON)
    [reserved] = tx.pending
    assert isinstance(reserved, ev.TransactionPrepaymentReserved)
    assert reserved.bill_id == PREPAY_BILL and reserved.amount == ESTIMATE and reserved.tenders == RESERVED
    assert (reserved.reserved, reserved.remainder, remainder) == (twd(50000), REMAINDER, REMAINDER)
    assert reserved.payment_deadline == DEADLINE  # the reservation ends with the order at its deadline
    assert tx.status is S.UNPAID and tx.prepaid_tenders == [] and tx.reservation == reserved
    assert {"start_attempt", "release_reservation", "cancel"} <= set(tx.allowed_commands())


@pytest.mark.parametrize("tenders, field", [
    ([], "tenders"),
    ([card(50000)], "tenders[0].kind"),  # the card pays the remainder at the cashier, not in the reservation
    ([voucher(20000), cash(10000)], "tenders[1].kind"),
    ([voucher(20000), balance(100000)], "tenders"),  # covers the prepayment: capture it instead
    ([voucher(20000), balance(0)], "tenders[1].amount"),
    ([voucher(20000), voucher(10000)], "tenders[1].reference"),  # the same voucher twice
    ([balance(30000).model_copy(update={"amount": Money(amount=30000, currency="USD")})], "tenders[0].amount.currency"),
])
def test_a_reservation_is_platform_tenders_worth_less_than_the_prepayment(tenders: list, field: str) -> None:
    tx = open_transaction()
    tx.mark_saved()
    with pytest.raises(RuleViolation) as caught:
        tx.reserve_prepayment(tenders, at=SOON)
    assert caught.value.field == field
    assert tx.pending == [] and tx.reservation is None


def test_a_reservation_is_refused_after_the_deadline_while_an_attempt_is_open_or_twice() -> None:
    with pytest.raises(RuleViolation) as caught:
        open_transaction().reserve_prepayment(RESERVED, at=DEADLINE)
    assert caught.value.field == "deadline"
    at_cashier = open_transaction()
    at_cashier.start_attempt("att-1", ESTIMATE, "credit_card", SOON)
    with pytest.raises(Conflict) as conflict:
        at_cashier.reserve_prepayment(RESERVED, at=SOON)
    assert conflict.value.details["current_attempt_id"] == "att-1"
    with pytest.raises(Conflict):
        reserved_transaction().reserve_prepayment(RESERVED, at=SOON)
    with pytest.raises(RuleViolation) as no_bill:
        open_transaction(prepay=False).reserve_prepayment(RESERVED, at=SOON)
    assert no_bill.value.field == "bill_id"


# --- the cashier and the capture --------------------------------------------------------------------


def test_the_cashier_attempt_is_for_exactly_the_remainder_and_an_abandoned_one_keeps_the_reservation() -> None:
    tx = reserved_transaction()
    for amount in (ESTIMATE, twd(69999)):
        with pytest.raises(RuleViolation) as caught:
            tx.start_attempt("att-1", amount, "credit_card", SOON)
        assert caught.value.field == "amount" and "remainder" in caught.value.rule
    tx.start_attempt("att-1", REMAINDER, "credit_card", SOON)
    tx.fail_attempt("att-1", "abandoned", SOON)  # 從收銀臺點擊返回: the customer may retry the card
    assert tx.reservation is not None and tx.reservation.remainder == REMAINDER
    tx.start_attempt("att-2", REMAINDER, "line_pay", SOON)
    assert tx.attempt is not None and tx.attempt.amount == REMAINDER


def test_the_charge_of_the_remainder_captures_the_prepayment_with_every_tender_in_one_event() -> None:
    tx = reserved_transaction()
    tx.start_attempt("att-1", REMAINDER, "credit_card", SOON)
    tx.mark_saved()
    tx.capture_reserved_prepayment(card(70000), at=SOON)
    [captured] = tx.pending
    assert isinstance(captured, ev.TransactionPrepaymentCaptured) and captured.amount == ESTIMATE
    assert kinds(captured.tenders) == [("voucher", 20000), ("member_balance", 30000), ("third_party", 70000)]
    assert tx.status is S.PREPAID and tx.attempt is None and tx.reservation is None
    assert tx.captured_reservation is not None and tx.captured_reservation.tenders == RESERVED


@pytest.mark.parametrize("bill, shortfall, refunds", [
    (150000, 30000, []),  # short: voucher > balance > card are applied, TWD 300 more is collected
    (90000, 0, [("third_party", "pi_1", 30000)]),  # excess: refunded along the original path, card first
])
def test_a_mixed_prepayment_settles_as_before(bill: int, shortfall: int, refunds: list) -> None:
    tx = reserved_transaction()
    tx.capture_reserved_prepayment(card(70000), at=SOON)
    tx.bill(FINAL_BILL, 1, twd(bill), SERVICE_END)
    plan = tx.preview_settlement()
    assert plan.shortfall == twd(shortfall) and lines(plan.refunds) == refunds
    assert plan.captured == ESTIMATE and plan.applied_total + plan.refunded == ESTIMATE


def test_a_mixed_prepayment_is_cancelled_as_before() -> None:
    tx = reserved_transaction()
    tx.capture_reserved_prepayment(card(70000), at=SOON)
    plan = tx.cancel(**CANCEL_EARLY)  # 72 h ahead: free; money back card first, then balance; voucher back
    assert tx.status is S.REFUNDED
    assert lines(plan.refunds) == [("third_party", "pi_1", 70000), ("member_balance", "wal-1", 30000)]
    assert [v.reference for v in plan.vouchers_returned] == ["v-1"]


@pytest.mark.parametrize("payment, field", [
    (card(120000), "payment.amount"),
    (card(69999), "payment.amount"),
    (balance(70000), "payment.kind"),
])
def test_only_a_card_payment_of_exactly_the_remainder_captures_it(payment: ev.Tender, field: str) -> None:
    tx = reserved_transaction()
    with pytest.raises(RuleViolation) as caught:
        tx.capture_reserved_prepayment(payment, at=SOON)
    assert caught.value.field == field and tx.pending == [] and tx.reservation is not None


def test_a_late_charge_of_the_remainder_is_refused_by_the_deadline() -> None:
    tx = reserved_transaction()
    with pytest.raises(RuleViolation) as caught:
        tx.capture_reserved_prepayment(card(70000), at=DEADLINE)
    assert caught.value.field == "deadline" and tx.reservation is not None


def test_no_other_capture_may_leave_the_reserved_tenders_out() -> None:
    tx = reserved_transaction()
    with pytest.raises(RuleViolation) as caught:
        tx.capture_prepayment([card(120000)], at=SOON)
    assert caught.value.field == "tenders" and "reserved" in caught.value.rule
    with pytest.raises(Conflict):
        open_transaction().capture_reserved_prepayment(card(120000), at=SOON)  # nothing reserved


# --- releasing ------------------------------------------------------------------------------------------


def test_the_customer_releases_the_reservation_and_may_reserve_again() -> None:
    tx = reserved_transaction()
    tx.start_attempt("att-1", REMAINDER, "credit_card", SOON)
    with pytest.raises(Conflict) as caught:  # a charge for the remainder could still arrive
        tx.release_reservation("changed my mind", SOON)
    assert caught.value.details["current_attempt_id"] == "att-1"
    tx.fail_attempt("att-1", "abandoned", SOON)
    tx.release_reservation("changed my mind", SOON)
    released = tx.pending[-1]
    assert isinstance(released, ev.TransactionReservationReleased)
    assert released.tenders == RESERVED and released.amount == twd(50000) and released.reason == "changed my mind"
    assert tx.reservation is None and tx.status is S.UNPAID
    with pytest.raises(Conflict):
        tx.release_reservation("again", SOON)
    assert tx.reserve_prepayment([balance(20000)], at=SOON) == twd(100000)


def test_cancelling_the_unpaid_order_releases_the_reservation_before_voiding() -> None:
    tx = reserved_transaction()
    tx.start_attempt("att-1", REMAINDER, "credit_card", SOON)  # at the cashier when the deadline passes
    tx.mark_saved()
    plan = tx.cancel(**{**CANCEL_EARLY, "reason_code": "payment_timeout", "at": DEADLINE})
    assert [type(e) for e in tx.pending[:2]] == [ev.TransactionReservationReleased, ev.TransactionVoided]
    assert tx.pending[0].tenders == RESERVED and "payment_timeout" in tx.pending[0].reason
    assert tx.status is S.VOIDED and tx.reservation is None and tx.attempt is None
    assert plan.captured == twd(0) and plan.refunds == []  # nothing was captured: nothing is refunded


def test_replaying_the_reservation_events_gives_the_same_transaction() -> None:
    from tests.unit.payments_wallet import round_trip, state

    tx = open_transaction()
    tx.reserve_prepayment(RESERVED, at=SOON)
    tx.release_reservation("retry with another voucher", SOON)
    tx.reserve_prepayment(RESERVED, at=SOON)
    tx.capture_reserved_prepayment(card(70000), at=SOON)
    replayed = Transaction.rehydrate(tx.id, round_trip(tx.pending))
    assert state(replayed) == state(tx)


def test_the_reservation_events_keep_the_money_conserved() -> None:
    base: dict[str, Any] = {"order_id": ORDER, "bill_id": PREPAY_BILL, "amount": ESTIMATE, "tenders": RESERVED,
                            "reserved": twd(50000), "remainder": REMAINDER, "at": SOON}
    ev.TransactionPrepaymentReserved(**base)
    for change, message in (({"remainder": twd(60000)}, "reserved \\+ remainder"),
                            ({"reserved": twd(40000)}, "add up"),
                            ({"tenders": [card(50000)]}, "only vouchers and the member balance"),
                            ({"remainder": twd(0), "amount": twd(50000)}, "remainder must be positive")):
        with pytest.raises(ValidationError, match=message):
            ev.TransactionPrepaymentReserved(**{**base, **change})
    with pytest.raises(ValidationError, match="add up"):
        ev.TransactionReservationReleased(order_id=ORDER, bill_id=PREPAY_BILL, tenders=RESERVED, amount=twd(1),
                                          reason="x", at=SOON)


# --- the provider's charge (services/payments/application/service.py) ------------------------------------


def charge(amount: int, *, at=SOON, pi: str = "pi_9") -> UpstreamChargeSucceeded:
    return UpstreamChargeSucceeded(
        provider_event_id=f"evt_{pi}_{amount}", upstream_type="charge.succeeded", occurred_at=at, source="charge",
        order_ref=OrderRef(order_id=ORDER, payment_intent_id=pi), payment_intent_id=pi, charge_id=f"ch_{pi}",
        amount=twd(amount), provider_amount=ProviderAmount(amount=amount, currency="twd"))


SERVICE = PaymentsService(store=None, policies=[POLICY], clock=lambda: SOON)  # type: ignore[arg-type]


def test_a_charge_of_the_remainder_captures_the_reserved_prepayment() -> None:
    tx = reserved_transaction()
    assert SERVICE._apply_fact(tx, charge(70000)) == "prepayment captured with the reserved tenders"
    assert tx.status is S.PREPAID
    assert kinds(tx.prepaid_tenders) == [("voucher", 20000), ("member_balance", 30000), ("third_party", 70000)]
    assert SERVICE._apply_fact(tx, charge(70000)).startswith("duplicate")  # Stripe reports it twice


@pytest.mark.parametrize("amount", [120000, 69999, 70001])
def test_a_charge_that_is_not_the_remainder_is_to_be_returned_and_the_reservation_stays(amount: int) -> None:
    tx = reserved_transaction()
    outcome = SERVICE._apply_fact(tx, charge(amount))
    assert outcome.startswith("to return:") and "remainder" in outcome
    [back] = tx.payments_to_return
    assert back.tender == card(amount, "pi_9") and tx.status is S.UNPAID and tx.reservation is not None
    # The customer pays the right amount afterwards: captured; the wrong one is still owed back.
    assert SERVICE._apply_fact(tx, charge(70000, pi="pi_10")).startswith("prepayment captured")
    assert sum(t.amount.amount for t in tx.prepaid_tenders) == ESTIMATE.amount
    assert [p.tender.reference for p in tx.payments_to_return] == ["pi_9"]


def test_a_charge_after_the_deadline_is_to_be_returned_and_the_reservation_waits_for_the_cancellation() -> None:
    tx = reserved_transaction()
    assert SERVICE._apply_fact(tx, charge(70000, at=DEADLINE + timedelta(seconds=1))).startswith(
        "to return: paid after the payment deadline")
    assert tx.status is S.UNPAID and tx.reservation is not None  # OrderCancelled releases it
    tx.cancel(**{**CANCEL_EARLY, "reason_code": "payment_timeout", "at": DEADLINE + timedelta(seconds=2)})
    assert tx.reservation is None and tx.status is S.VOIDED and len(tx.released_reservations) == 1


def test_without_a_reservation_a_partial_charge_is_to_be_returned_not_refused() -> None:
    tx = open_transaction()
    outcome = SERVICE._apply_fact(tx, charge(70000))
    assert outcome.startswith("to return:") and "not the prepayment" in outcome, outcome
    assert tx.status is S.UNPAID and [p.tender.amount for p in tx.payments_to_return] == [twd(70000)]
    assert SERVICE._apply_fact(tx, charge(120000, pi="pi_11")) == "prepayment captured"
    assert [t.kind for t in tx.prepaid_tenders] == [TenderKind.THIRD_PARTY]

