"""Transaction rules beyond the state table: deadlines, attempts, settlement, cancellation, disputes, policy."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from libs.domain.errors import Conflict, InvalidTransition, RuleViolation
from libs.domain.events import registry
from libs.domain.money import Money
from services.payments.domain import events as ev
from services.payments.domain.events import CompensationRule, TenderKind
from services.payments.domain.events import TransactionStatus as S
from services.payments.domain.policy import policy_by_version, policy_in_force
from services.payments.domain.transaction import Transaction
from tests.unit.payments import (
    BILL_TOTAL,
    CANCEL_EARLY,
    CUSTOMER,
    DEADLINE,
    ESTIMATE,
    FINAL_BILL,
    HOUR,
    MERCHANT,
    NOW,
    OLD_POLICY,
    POLICY,
    PREPAID,
    PREPAY_BILL,
    SERVICE_END,
    SOON,
    TZ,
    balance,
    card,
    cash,
    lines,
    open_transaction,
    transaction_in,
    twd,
    voucher,
)

# --- prepayment: deadline and amount ---------------------------------------------------------------


@pytest.mark.parametrize("at, ok", [
    (DEADLINE - timedelta(seconds=1), True),
    (DEADLINE, False),  # the orders service cancels AT the deadline
    (DEADLINE + timedelta(minutes=1), False),
])
def test_capture_is_refused_after_the_payment_deadline(at: datetime, ok: bool) -> None:
    tx = open_transaction()
    if ok:
        tx.capture_prepayment(PREPAID, at=at)
        assert tx.status is S.PREPAID and tx.prepaid_tenders == PREPAID
        return
    with pytest.raises(RuleViolation) as caught:
        tx.capture_prepayment(PREPAID, at=at)
    assert caught.value.field == "deadline" and "has passed" in caught.value.message
    assert tx.status is S.UNPAID


def test_an_explicit_deadline_overrides_the_stored_one() -> None:
    with pytest.raises(RuleViolation):
        open_transaction().capture_prepayment(PREPAID, at=SOON, deadline=SOON)


@pytest.mark.parametrize("tenders, field", [
    ([card(60000), balance(50000)], "tenders"),  # 1,100.00, not 1,200.00
    ([card(60000), balance(50000), voucher(20000)], "tenders"),
    ([], "tenders"),
    ([cash(120000)], "tenders[0].kind"),
    ([card(120000), card(0, "pi_0")], "tenders[1].amount"),
    ([card(120000).model_copy(update={"amount": Money(amount=120000, currency="USD")})], "tenders[0].amount.currency"),
])
def test_prepayment_tenders_must_add_up_to_the_prepayment(tenders: list, field: str) -> None:
    tx = open_transaction()
    with pytest.raises(RuleViolation) as caught:
        tx.capture_prepayment(tenders, at=SOON)
    assert caught.value.field == field
    assert tx.pending[-1].__class__ is ev.TransactionOpened


def test_capture_names_the_prepayment_bill() -> None:
    tx = open_transaction()
    with pytest.raises(RuleViolation, match="bill-pre-1"):
        tx.capture_prepayment(PREPAID, at=SOON, bill_id="bill-other")
    with pytest.raises(RuleViolation) as caught:
        open_transaction(prepay=False).capture_prepayment(PREPAID, at=SOON)
    assert caught.value.field == "bill_id"
    tx.capture_prepayment(PREPAID, at=SOON)
    [captured] = [e for e in tx.pending if isinstance(e, ev.TransactionPrepaymentCaptured)]
    assert (captured.bill_id, captured.amount, captured.tenders) == (PREPAY_BILL, ESTIMATE, PREPAID)


# --- payment attempts ------------------------------------------------------------------------------------


def test_an_abandoned_attempt_leaves_the_state_as_it_was_and_is_recorded() -> None:
    tx = open_transaction()
    tx.start_attempt("att-1", twd(60000), "credit_card", SOON)
    assert tx.status is S.UNPAID and tx.attempt is not None
    tx.fail_attempt("att-1", "abandoned", SOON)
    assert tx.status is S.UNPAID and tx.attempt is None and tx.abandoned_attempts == ["att-1"]
    [started, abandoned] = tx.pending[1:]
    assert isinstance(started, ev.TransactionPaymentAttempted) and started.bill_id == PREPAY_BILL
    assert isinstance(abandoned, ev.TransactionAttemptAbandoned) and abandoned.reason.value == "abandoned"
    tx.start_attempt("att-2", twd(60000), "line_pay", SOON)  # the customer may try again
    tx.capture_prepayment(PREPAID, at=SOON)
    assert tx.status is S.PREPAID and tx.attempt is None


def test_attempts_are_checked() -> None:
    tx = open_transaction()
    tx.start_attempt("att-1", twd(60000), "credit_card", SOON)
    with pytest.raises(Conflict, match="still open"):
        tx.start_attempt("att-2", twd(60000), "credit_card", SOON)
    with pytest.raises(Conflict, match="not the open attempt"):
        tx.fail_attempt("att-9", "abandoned", SOON)
    with pytest.raises(RuleViolation, match="must be one of"):
        tx.fail_attempt("att-1", "lost", SOON)
    fresh = open_transaction()
    with pytest.raises(RuleViolation) as caught:
        fresh.start_attempt("att-1", twd(120001), "credit_card", SOON)
    assert caught.value.field == "amount"
    with pytest.raises(RuleViolation) as caught:
        fresh.start_attempt("att-1", twd(100), "credit_card", DEADLINE)
    assert caught.value.field == "payment_deadline"
    with pytest.raises(Conflict):
        fresh.fail_attempt("att-1", "abandoned", SOON)


def test_a_final_bill_attempt_is_for_the_shortfall() -> None:
    tx = transaction_in("billed")
    with pytest.raises(RuleViolation, match=r"TWD 300\.00"):
        tx.start_attempt("att-1", twd(100), "credit_card", SERVICE_END)
    tx.start_attempt("att-1", twd(30000), "credit_card", SERVICE_END)
    assert tx.pending[0].bill_id == FINAL_BILL
    covered = open_transaction()
    covered.capture_prepayment(PREPAID, at=SOON)
    covered.bill(FINAL_BILL, 1, twd(100000), SERVICE_END)
    with pytest.raises(RuleViolation, match="nothing to pay"):
        covered.start_attempt("att-1", twd(100), "credit_card", SERVICE_END)


# --- settlement ----------------------------------------------------------------------------------------------


def prepaid_and_billed(total: int) -> Transaction:
    tx = open_transaction()
    tx.capture_prepayment(PREPAID, at=SOON)
    tx.bill(FINAL_BILL, 2, twd(total), SERVICE_END)
    tx.mark_saved()
    return tx


def test_preview_records_nothing_and_equals_the_settlement() -> None:
    tx = prepaid_and_billed(100000)
    preview = tx.preview_settlement()
    assert tx.pending == []
    assert lines(preview.refunds) == [("third_party", "pi_1", 20000)]
    assert tx.settle(at=SERVICE_END) == preview
    [settled] = tx.pending
    assert isinstance(settled, ev.TransactionSettled)
    assert (settled.refunded, settled.collected, settled.method, settled.awaiting_cash_confirmation) == (
        twd(20000), twd(0), None, False)
    assert lines(settled.tenders) == [("voucher", "v-1", 10000), ("member_balance", "wal-1", 50000),
                                      ("third_party", "pi_1", 40000)]
    assert tx.status is S.PAID


def test_a_shortfall_from_the_member_balance() -> None:
    tx = prepaid_and_billed(150000)
    with pytest.raises(RuleViolation) as caught:
        tx.settle(method="member_balance", reference="wal-2", at=SERVICE_END, is_member=True,
                  member_balance_available=twd(29999))
    assert caught.value.field == "member_balance_available"
    tx.settle(method="member_balance", reference="wal-2", at=SERVICE_END, is_member=True,
              member_balance_available=twd(30000))
    [settled] = tx.pending
    assert settled.collection == balance(30000, "wal-2") and settled.collected == twd(30000)
    assert sum(t.amount.amount for t in settled.tenders) == 150000
    assert tx.status is S.PAID


def test_a_cash_shortfall_waits_for_the_merchant_then_is_confirmed() -> None:
    tx = prepaid_and_billed(150000)
    tx.settle(method="cash", reference="rcpt-7", at=SERVICE_END)
    assert tx.status is S.BILLED and tx.awaiting_cash_confirmation
    with pytest.raises(RuleViolation, match="only the order's merchant"):
        tx.confirm_cash("m-other", SERVICE_END)
    tx.confirm_cash(MERCHANT, SERVICE_END + timedelta(minutes=3))
    assert tx.status is S.CONFIRMED
    assert [type(e) for e in tx.pending] == [ev.TransactionSettled, ev.TransactionCashConfirmed]
    assert tx.pending[-1].amount == twd(30000)


@pytest.mark.parametrize("kw, field, words", [
    ({}, "method", "must be collected"),
    ({"method": "third_party"}, "reference", "name the payment"),
    ({"method": "member_balance", "reference": "wal-2"}, "method", "only be used by a member"),
    ({"method": "voucher", "reference": "v-9"}, "method", "vouchers are bound"),
])
def test_a_shortfall_needs_a_usable_method(kw: dict[str, Any], field: str, words: str) -> None:
    tx = prepaid_and_billed(150000)
    with pytest.raises(RuleViolation) as caught:
        tx.settle(at=SERVICE_END, **kw)
    assert (caught.value.field, words in caught.value.message) == (field, True)
    assert tx.pending == [] and tx.status is S.BILLED


def test_no_method_when_nothing_is_due() -> None:
    with pytest.raises(RuleViolation, match="nothing to collect"):
        prepaid_and_billed(100000).settle(method="cash", reference="r", at=SERVICE_END)


@pytest.mark.parametrize("state", ["paid", "confirmed", "billed_awaiting_cash"])
def test_a_second_settlement_is_refused(state: str) -> None:
    tx = transaction_in(state)
    for attempt in (lambda: tx.settle(method="third_party", reference="pi_3", at=SERVICE_END),
                    tx.preview_settlement,
                    lambda: tx.bill(FINAL_BILL, 2, BILL_TOTAL, SERVICE_END),
                    lambda: tx.start_attempt("att-9", twd(30000), "credit_card", SERVICE_END)):
        with pytest.raises(InvalidTransition) as caught:
            attempt()
        assert caught.value.state == tx.status.value
    assert tx.pending == []


@pytest.mark.parametrize("state", ["refunded", "voided"])
def test_payment_after_cancellation_is_refused(state: str) -> None:
    tx = transaction_in(state)
    for attempt in (lambda: tx.start_attempt("att-9", ESTIMATE, "credit_card", SOON),
                    lambda: tx.capture_prepayment(PREPAID, at=SOON),
                    lambda: tx.settle(method="cash", reference="r", at=SOON),
                    lambda: tx.bill(FINAL_BILL, 1, BILL_TOTAL, SOON),
                    lambda: tx.cancel(**CANCEL_EARLY)):
        with pytest.raises(InvalidTransition) as caught:
            attempt()
        assert caught.value.state == state and f"is {state};" in caught.value.message
    assert tx.pending == []


def test_bill_checks_its_input() -> None:
    tx = open_transaction(prepay=False)
    with pytest.raises(RuleViolation) as caught:
        tx.bill(FINAL_BILL, 1, Money(amount=1, currency="USD"), SERVICE_END)
    assert caught.value.field == "total.currency"
    with pytest.raises(RuleViolation):
        tx.bill(FINAL_BILL, 1, twd(-1), SERVICE_END)
    with pytest.raises(RuleViolation):
        tx.bill(FINAL_BILL, 0, twd(1), SERVICE_END)


# --- cancellation --------------------------------------------------------------------------------------------


def test_a_prepaid_cancellation_is_refunded_with_its_plan() -> None:
    tx = transaction_in("prepaid")
    preview = tx.preview_cancellation(fault_party="customer", seconds_before_service_start=30 * HOUR,
                                      policy=POLICY, at=SOON)
    assert tx.pending == []
    plan = tx.cancel(fault_party="customer", seconds_before_service_start=30 * HOUR, reason_code="changed_mind",
                     policy=POLICY, at=SOON)
    assert plan == preview
    [refunded] = tx.pending
    assert isinstance(refunded, ev.TransactionRefunded) and refunded.bill_id == PREPAY_BILL
    assert (plan.penalty, lines(plan.refunds)) == (twd(55000), [("third_party", "pi_1", 55000)])
    assert tx.status is S.REFUNDED and tx.cancellation == plan


def test_a_full_penalty_still_ends_refunded() -> None:
    tx = transaction_in("prepaid")
    plan = tx.cancel(fault_party="customer", seconds_before_service_start=HOUR, reason_code="changed_mind",
                     policy=POLICY, at=SOON)
    assert plan.refunded == twd(0) and plan.penalty == twd(110000) and plan.kept == twd(10000)
    assert tx.status is S.REFUNDED


def test_a_merchant_fault_records_the_fault_and_grants_compensation() -> None:
    tx = transaction_in("prepaid")
    tx.cancel(fault_party="merchant", seconds_before_service_start=5 * HOUR, reason_code="staff_sick",
              policy=POLICY, at=SOON)
    refunded, grant, fault = tx.pending
    assert isinstance(refunded, ev.TransactionRefunded)
    assert isinstance(grant, ev.CompensationVoucherGranted)
    assert (grant.rule, grant.amount, grant.customer_id, grant.grant_no) == (
        CompensationRule.LATE_CANCELLATION, twd(10000), CUSTOMER, 1)
    assert isinstance(fault, ev.MerchantFaultRecorded) and fault.merchant_id == MERCHANT
    assert refunded.plan.refunded == refunded.plan.online_paid == twd(110000)
    assert tx.merchant_fault == fault and tx.compensation_vouchers == [grant]


def test_a_merchant_fault_needs_to_know_the_merchant() -> None:
    tx = open_transaction(merchant_id=None)
    tx.capture_prepayment(PREPAID, at=SOON)
    args: dict[str, Any] = {"fault_party": "merchant", "seconds_before_service_start": 72 * HOUR,
                            "reason_code": "staff_sick", "policy": POLICY, "at": SOON}
    with pytest.raises(RuleViolation) as caught:
        tx.cancel(**args)
    assert caught.value.field == "merchant_id"
    tx.cancel(**args, merchant_id="m-7")
    assert tx.pending[-1].merchant_id == "m-7"


def test_an_unprepaid_customer_cancellation_is_voided_and_the_merchant_compensated() -> None:
    tx = open_transaction(prepay=False)
    tx.cancel(fault_party="customer", seconds_before_service_start=10 * HOUR, reason_code="changed_mind",
              policy=POLICY, at=SOON)
    _opened, voided, compensation = tx.pending
    assert isinstance(voided, ev.TransactionVoided) and tx.status is S.VOIDED
    assert isinstance(compensation, ev.MerchantCompensationGranted)
    assert (compensation.merchant_id, compensation.amount, compensation.policy_version) == (
        MERCHANT, twd(30000), POLICY.version)


def test_an_unprepaid_platform_cancellation_is_voided_with_compensation_vouchers() -> None:
    tx = open_transaction(prepay=False)
    tx.cancel(fault_party="platform", seconds_before_service_start=50 * HOUR, reason_code="no_merchant_available",
              dispatch_attempts=4, policy=POLICY, at=SOON)
    assert tx.status is S.VOIDED
    assert [e.rule for e in tx.pending if isinstance(e, ev.CompensationVoucherGranted)] == [
        CompensationRule.NO_MERCHANT_AVAILABLE]


def test_an_expired_voucher_comes_back_extended() -> None:
    tx = open_transaction()
    tx.capture_prepayment([voucher(10000, expires_at=SOON + timedelta(hours=1)), balance(50000), card(60000)],
                          at=SOON)
    plan = tx.cancel(fault_party="customer", seconds_before_service_start=72 * HOUR, reason_code="changed_mind",
                     policy=POLICY, at=SOON)
    [back] = plan.vouchers_returned
    assert back.new_expires_at == SOON + timedelta(hours=1, days=30)


# --- disputes freeze refunds -----------------------------------------------------------------------------------


def test_a_cancellation_during_a_dispute_is_applied_and_its_refunds_wait_for_every_dispute() -> None:
    tx = transaction_in("prepaid", dispute="dp_1")
    assert tx.disputed
    plan = tx.cancel(**CANCEL_EARLY)  # applied, not refused: the order is cancelled whatever the dispute
    assert tx.status is S.REFUNDED and tx.refunds_held
    refunded, held = tx.pending
    assert isinstance(refunded, ev.TransactionRefunded) and refunded.plan == plan
    assert isinstance(held, ev.TransactionRefundsHeld)
    assert held.source is ev.RefundSource.CANCELLATION and held.dispute_ids == ["dp_1"]
    assert lines(held.refunds) == lines(plan.refunds) == [("third_party", "pi_1", 60000),
                                                          ("member_balance", "wal-1", 50000)]
    assert held.amount == plan.refunded == twd(110000)
    tx.mark_saved()
    tx.freeze_refunds("dp_1", SOON)  # the provider repeats itself: nothing changes
    tx.freeze_refunds("dp_2", SOON)
    tx.unfreeze_refunds("dp_1", SOON)
    assert tx.refunds_held  # dp_2 is still open
    tx.unfreeze_refunds("dp_2", SOON)
    tx.unfreeze_refunds("dp_2", SOON)  # repeated: nothing changes
    assert not tx.disputed and not tx.refunds_held
    assert [type(e) for e in tx.pending] == [ev.TransactionRefundsFrozen, ev.TransactionRefundsUnfrozen,
                                             ev.TransactionRefundsUnfrozen, ev.TransactionHeldRefundsReleased]
    released = tx.pending[-1]
    assert isinstance(released, ev.TransactionHeldRefundsReleased)
    assert lines(released.refunds) == lines(plan.refunds) and released.returned_by_chargeback == []
    assert released.held == released.refunded == twd(110000)


def test_a_cancellation_that_refunds_nothing_may_run_during_a_dispute() -> None:
    tx = transaction_in("prepaid", dispute="dp_1")
    tx.cancel(fault_party="customer", seconds_before_service_start=HOUR, reason_code="changed_mind",
              policy=POLICY, at=SOON)
    assert tx.status is S.REFUNDED and not tx.refunds_held
    assert not any(isinstance(e, ev.TransactionRefundsHeld) for e in tx.pending)


@pytest.mark.parametrize(("charged_back", "card_back", "card_by_chargeback"), [
    (60000, 0, 60000),  # the whole card payment went back through the bank
    (20000, 40000, 20000),  # a partial dispute
])
def test_a_lost_dispute_is_set_against_the_card_refund_so_nothing_is_paid_back_twice(
        charged_back: int, card_back: int, card_by_chargeback: int) -> None:
    tx = transaction_in("prepaid", dispute="dp_1")
    tx.cancel(**CANCEL_EARLY)
    tx.record_chargeback("dp_1", twd(charged_back), SOON, ["pi_1", "ch_1"])
    tx.record_chargeback("dp_1", twd(charged_back), SOON, ["pi_1", "ch_1"])  # repeated: nothing changes
    tx.unfreeze_refunds("dp_1", SOON)
    [charged] = [e for e in tx.pending if isinstance(e, ev.TransactionChargedBack)]
    assert charged.reference == "pi_1" and charged.amount == twd(charged_back)
    released = tx.pending[-1]
    assert isinstance(released, ev.TransactionHeldRefundsReleased)
    assert lines(released.refunds) == [("third_party", "pi_1", card_back), ("member_balance", "wal-1", 50000)][
        0 if card_back else 1:]
    assert lines(released.returned_by_chargeback) == [("third_party", "pi_1", card_by_chargeback)]
    assert released.held == twd(110000) and tx.chargeback_unapplied == 0


def test_a_chargeback_above_the_card_refund_costs_the_platform_its_penalty() -> None:
    tx = transaction_in("prepaid", dispute="dp_1")
    plan = tx.cancel(**{**CANCEL_EARLY, "seconds_before_service_start": 30 * HOUR})  # half of TWD 1,100.00
    assert lines(plan.refunds) == [("third_party", "pi_1", 55000)]
    tx.record_chargeback("dp_1", twd(60000), SOON, ["pi_1"])
    tx.unfreeze_refunds("dp_1", SOON)
    released = tx.pending[-1]
    assert isinstance(released, ev.TransactionHeldRefundsReleased)
    assert released.refunds == [] and released.refunded == twd(0)
    assert lines(released.returned_by_chargeback) == [("third_party", "pi_1", 55000)]
    assert tx.chargeback_unapplied == 5000  # of the penalty, lost to the chargeback


def test_a_cancellation_after_a_lost_dispute_refunds_only_what_the_chargeback_did_not_return() -> None:
    tx = transaction_in("prepaid", dispute="dp_1")
    tx.record_chargeback("dp_1", twd(60000), SOON, ["ch_unknown"])  # no tender named: the order's card payment
    tx.unfreeze_refunds("dp_1", SOON)
    assert not tx.disputed
    tx.cancel(**CANCEL_EARLY)
    assert not tx.refunds_held  # held and released at once, with the offset recorded
    held, released = tx.pending[-2:]
    assert isinstance(held, ev.TransactionRefundsHeld) and held.dispute_ids == ["dp_1"]
    assert isinstance(released, ev.TransactionHeldRefundsReleased)
    assert lines(released.refunds) == [("member_balance", "wal-1", 50000)]
    assert lines(released.returned_by_chargeback) == [("third_party", "pi_1", 60000)]


def test_a_settlement_during_a_dispute_settles_and_holds_the_excess_refund() -> None:
    tx = prepaid_and_billed(100000)
    tx.freeze_refunds("dp_1", SERVICE_END)
    plan = tx.settle(at=SERVICE_END)
    assert tx.status is S.PAID and tx.refunds_held  # the order completes; the excess waits
    held = tx.pending[-1]
    assert isinstance(held, ev.TransactionRefundsHeld) and held.source is ev.RefundSource.SETTLEMENT
    assert held.amount == plan.refunded == twd(20000)
    tx.unfreeze_refunds("dp_1", SERVICE_END)
    released = tx.pending[-1]
    assert isinstance(released, ev.TransactionHeldRefundsReleased) and released.refunded == twd(20000)
    frozen_shortfall = transaction_in("billed", dispute="dp_1")
    frozen_shortfall.settle(method="third_party", reference="pi_2", at=SERVICE_END)  # refunds nothing
    assert frozen_shortfall.status is S.PAID and not frozen_shortfall.refunds_held


def test_a_chargeback_must_be_in_the_orders_currency_and_positive() -> None:
    tx = transaction_in("prepaid", dispute="dp_1")
    with pytest.raises(RuleViolation) as caught:
        tx.record_chargeback("dp_1", Money(amount=100, currency="USD"), SOON)
    assert caught.value.field == "amount.currency"
    with pytest.raises(RuleViolation):
        tx.record_chargeback("dp_1", twd(0), SOON)


# --- the policy in force at placement ----------------------------------------------------------------------------


def test_an_order_placed_before_the_new_policy_keeps_the_old_rates_even_if_cancelled_after() -> None:
    policies = [OLD_POLICY, POLICY]  # POLICY takes effect 2025-03-01
    placed = datetime(2025, 2, 20, 9, 0, tzinfo=TZ)
    in_force = policy_in_force(policies, placed)
    assert in_force is OLD_POLICY
    tx = open_transaction(placed_at=placed, policy=in_force)
    tx.capture_prepayment(PREPAID, at=placed + timedelta(minutes=1))
    cancelled_at = datetime(2025, 3, 10, 9, 0, tzinfo=TZ)  # the new policy is in force by now
    assert policy_in_force(policies, cancelled_at) is POLICY
    args: dict[str, Any] = {"fault_party": "customer", "seconds_before_service_start": 30 * HOUR,
                            "reason_code": "changed_mind", "at": cancelled_at}
    with pytest.raises(RuleViolation) as caught:
        tx.cancel(**args, policy=POLICY)
    assert caught.value.field == "policy.version" and "test-2024" in caught.value.message
    plan = tx.cancel(**args, policy=policy_by_version(policies, tx.policy_version or ""))
    # old: T >= 24 h is free; the new policy would have taken half of the online-paid TWD 1,100.00
    assert plan.penalty == twd(0) and plan.policy_version == "test-2024"
    assert plan.refunded == twd(110000)


def test_an_order_placed_under_the_new_policy_gets_the_new_rates() -> None:
    tx = transaction_in("prepaid")
    assert tx.policy_version == policy_in_force([OLD_POLICY, POLICY], NOW).version
    assert tx.cancel(**{**CANCEL_EARLY, "seconds_before_service_start": 30 * HOUR}).penalty == twd(55000)


# --- replay -------------------------------------------------------------------------------------------------


def _lifecycles() -> list[Transaction]:
    a = open_transaction()
    a.start_attempt("att-1", twd(60000), "credit_card", SOON)
    a.fail_attempt("att-1", "declined", SOON)
    a.capture_prepayment(PREPAID, at=SOON)
    a.freeze_refunds("dp_1", SOON)
    a.unfreeze_refunds("dp_1", SOON)
    a.bill(FINAL_BILL, 2, BILL_TOTAL, SERVICE_END)
    a.settle(method="cash", reference="rcpt-1", at=SERVICE_END)
    a.confirm_cash(MERCHANT, SERVICE_END)
    b = open_transaction()
    b.capture_prepayment([voucher(10000, expires_at=NOW), balance(50000), card(60000)], at=SOON)
    b.cancel(fault_party="merchant", seconds_before_service_start=HOUR, reason_code="no_merchant_available",
             policy=POLICY, at=SOON, complained=True, customer_tenure_days=800, lifetime_value=twd(5000000))
    c = open_transaction(prepay=False)
    c.cancel(fault_party="customer", seconds_before_service_start=HOUR, reason_code="changed_mind",
             policy=POLICY, at=SOON)
    d = open_transaction()
    d.capture_prepayment(PREPAID, at=SOON)
    d.freeze_refunds("dp_1", SOON)
    d.cancel(**CANCEL_EARLY)
    d.record_chargeback("dp_1", twd(20000), SOON, ["pi_1"])
    d.unfreeze_refunds("dp_1", SOON)
    return [a, b, c, d]


def _state(tx: Transaction) -> dict[str, Any]:
    return {k: v for k, v in vars(tx).items() if k not in ("_pending", "version")}


@pytest.mark.parametrize("tx", _lifecycles(), ids=["cash settlement", "merchant fault", "voided", "lost dispute"])
def test_replaying_the_stored_events_rebuilds_the_same_state(tx: Transaction) -> None:
    stored = [registry.decode(e.event_type, e.schema_version, e.to_data()) for e in tx.pending]
    assert stored == tx.pending
    replayed = Transaction.rehydrate(tx.id, stored)
    assert _state(replayed) == _state(tx)
    assert replayed.version == len(stored)


def test_apply_refuses_a_foreign_event() -> None:
    with pytest.raises(TypeError):
        Transaction("o-1").apply(ev.PaymentAttemptFailed(order_id="o-1", bill_id="b", attempt_id="a",
                                                         reason="abandoned", at=NOW))


def test_settled_collects_with_the_right_kind() -> None:
    tx = prepaid_and_billed(150000)
    tx.settle(method=TenderKind.THIRD_PARTY, reference="pi_2", at=SERVICE_END)
    assert tx.pending[-1].collection == card(30000, "pi_2")


def test_money_that_cannot_be_taken_is_recorded_to_return_once() -> None:
    from datetime import UTC, datetime

    from libs.domain.money import Money
    from services.payments.domain.events import Tender, TenderKind
    from services.payments.domain.transaction import Transaction

    at = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    tx = Transaction.open("o-late", customer_id="c1", placed_at=at, estimated_total=Money(amount=60000, currency="TWD"),
                          policy_version="tw-2025.1", at=at)
    card = Tender(kind=TenderKind.THIRD_PARTY, amount=Money(amount=60000, currency="TWD"), reference="pi_late")
    tx.record_payment_to_return(card, "the transaction is voided", at)
    tx.record_payment_to_return(card, "the transaction is voided", at)  # Stripe reports a payment twice
    assert [p.tender for p in tx.payments_to_return] == [card]
    assert [e.event_type for e in tx.pending] == ["TransactionOpened", "TransactionPaymentToReturn"]
    rebuilt = Transaction.rehydrate("o-late", tx.pending)
    assert [p.reason for p in rebuilt.payments_to_return] == ["the transaction is voided"]
