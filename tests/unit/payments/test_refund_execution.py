"""Refund execution rules: which refund lines run after a Transaction change (held ones wait for
their release), how a refund customer service issues is split back along the original path and
capped by what was paid online, and the Refund lifecycle with the provider's repeated and stale
reports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.domain.errors import Conflict, InvalidTransition, RuleViolation
from services.payments.domain import events as ev
from services.payments.domain.refund import RefundExecution, RefundStatus, plan_issued_refund, refunds_to_run
from tests.unit.payments import (
    CANCEL_EARLY,
    FINAL_BILL,
    HOUR,
    ORDER,
    SERVICE_END,
    SOON,
    balance,
    card,
    lines,
    open_transaction,
    transaction_in,
    twd,
    voucher,
)


def run_lines(tx: object) -> list[tuple[str, str, str, int]]:
    out = refunds_to_run(ORDER, tx.version, tx.pending)  # type: ignore[attr-defined]
    return [(rid, source.value, r.reference, r.amount.amount) for rid, source, r in out]


# --- which lines run ------------------------------------------------------------------------------


def test_a_cancellation_runs_its_money_refunds_with_ids_from_the_version() -> None:
    tx = transaction_in("prepaid")
    tx.cancel(**CANCEL_EARLY)  # >= 48 h: all the money back, card first (the voucher goes back as a voucher)
    version = tx.version + 1  # TransactionRefunded lands there
    assert run_lines(tx) == [(f"{ORDER}.{version}.1", "cancellation", "pi_1", 60000),
                             (f"{ORDER}.{version}.2", "cancellation", "wal-1", 50000)]
    late = transaction_in("prepaid")
    late.cancel(**{**CANCEL_EARLY, "seconds_before_service_start": 30 * HOUR})  # 24-48 h: half of 1,100 kept
    assert [line[2:] for line in run_lines(late)] == [("pi_1", 55000)]


def test_a_settlement_excess_runs_back_to_the_card_first() -> None:
    tx = open_transaction()
    tx.capture_prepayment([voucher(10000), balance(50000), card(60000)], at=SOON)
    tx.bill(FINAL_BILL, 1, twd(90000), SERVICE_END)
    tx.settle(at=SERVICE_END)
    [(_, source, reference, amount)] = [line[:4] for line in run_lines(tx) if line[1] == "settlement"]
    assert (source, reference, amount) == ("settlement", "pi_1", 30000)


def test_held_refunds_wait_for_their_release() -> None:
    tx = transaction_in("prepaid", dispute="dp_1")
    tx.cancel(**CANCEL_EARLY)
    assert [type(e).__name__ for e in tx.pending] == ["TransactionRefunded", "TransactionRefundsHeld"]
    assert run_lines(tx) == []
    tx.mark_saved()
    tx.unfreeze_refunds("dp_1", SOON + timedelta(days=3))
    assert sorted(line[2] for line in run_lines(tx)) == ["pi_1", "wal-1"]


def test_money_to_return_runs_in_full_and_vouchers_never_run_as_money() -> None:
    tx = transaction_in("refunded")
    tx.record_payment_to_return(card(12345, "pi_late"), "the transaction is refunded", SOON)
    assert [line[1:] for line in run_lines(tx)] == [("payment_to_return", "pi_late", 12345)]
    assert all(line[2] != "v-1" for line in run_lines(tx))


# --- refunds customer service issues ---------------------------------------------------------------


def test_an_issued_refund_goes_back_card_first_and_never_above_what_was_paid_online() -> None:
    tx = transaction_in("paid")
    # Paid: the bill 1,500 from voucher 100 + balance 500 + card 600 (prepaid) + card 300 (shortfall, pi_2).
    assert tx.refundable() == twd(140000)  # the voucher's 100 is never refunded as money
    got = tx.issue_refund("rq-1", twd(100000), "the service was late", SOON)
    assert lines(got) == [("third_party", "pi_1", 60000), ("third_party", "pi_2", 30000),
                          ("member_balance", "wal-1", 10000)]
    assert tx.refundable() == twd(40000)
    with pytest.raises(RuleViolation) as caught:
        tx.issue_refund("rq-2", twd(40001), "more", SOON)
    assert caught.value.field == "amount" and "TWD 400.00" in caught.value.message


def test_the_same_request_again_issues_nothing_and_another_amount_under_its_id_conflicts() -> None:
    tx = transaction_in("paid")
    first = tx.issue_refund("rq-1", twd(5000), "goodwill", SOON)
    assert tx.issue_refund("rq-1", twd(5000), "goodwill", SOON) == first
    assert len(tx.pending) == 1
    with pytest.raises(Conflict):
        tx.issue_refund("rq-1", twd(6000), "goodwill", SOON)


def test_issued_refunds_are_refused_while_a_dispute_is_open_or_before_settlement() -> None:
    with pytest.raises(Conflict):
        transaction_in("paid", dispute="dp_1").issue_refund("rq-1", twd(100), "x", SOON)
    with pytest.raises(InvalidTransition):
        transaction_in("prepaid").issue_refund("rq-1", twd(100), "x", SOON)
    with pytest.raises(RuleViolation) as caught:
        transaction_in("paid").issue_refund("rq-1", twd(100), "  ", SOON)
    assert caught.value.field == "reason"


def test_a_cancellation_penalty_can_be_refunded_and_its_refunds_count_as_gone_back() -> None:
    tx = transaction_in("refunded", online=True)  # < 24 h: the whole online-paid 1,100 kept as the penalty
    assert tx.cancellation is not None and tx.cancellation.refunded == twd(0)
    assert tx.refundable() == twd(110000)
    tx.issue_refund("rq-1", twd(110000), "a medical emergency: the penalty waived", SOON)
    assert tx.refundable() == twd(0)


def test_a_refund_made_at_the_provider_counts_and_is_recorded_once() -> None:
    tx = transaction_in("paid")
    assert tx.record_external_refund("re_1", ["pi_2", "ch_2"], twd(30000), SOON)
    assert not tx.record_external_refund("re_1", ["pi_2"], twd(30000), SOON)
    assert not tx.record_external_refund("re_2", ["pi_unknown"], twd(100), SOON)
    assert tx.refundable() == twd(110000)


@given(st.lists(st.integers(min_value=1, max_value=200000), min_size=1, max_size=8),
       st.integers(min_value=0, max_value=70000))
def test_issued_refunds_never_exceed_what_each_payment_paid(asks: list[int], external: int) -> None:
    tenders = [card(60000), card(30000, "pi_2"), balance(50000), voucher(10000)]
    back: dict[tuple[ev.TenderKind, str], int] = {(ev.TenderKind.THIRD_PARTY, "pi_1"): external % 60001}
    paid = {(t.kind, t.reference): t.amount.amount for t in tenders if t.kind is not ev.TenderKind.VOUCHER}
    for ask in asks:
        try:
            got = plan_issued_refund(twd(ask), tenders, back)
        except RuleViolation:
            assert ask > sum(paid[k] - back.get(k, 0) for k in paid)
            continue
        assert sum(r.amount.amount for r in got) == ask
        for r in got:
            assert r.kind is not ev.TenderKind.VOUCHER
            back[(r.kind, r.reference)] = back.get((r.kind, r.reference), 0) + r.amount.amount
    assert all(0 <= back.get(k, 0) <= paid[k] for k in paid)


# --- the Refund lifecycle ------------------------------------------------------------------------------


def refund() -> RefundExecution:
    r = RefundExecution.request(f"{ORDER}.5.1", ORDER, ev.RefundSource.CANCELLATION,
                                ev.Refund(kind=ev.TenderKind.THIRD_PARTY, amount=twd(30000), reference="pi_1",
                                          tender=card(60000)), at=SOON, customer_id="c-1")
    r.mark_saved()
    return r


def test_a_card_refund_is_requested_then_accepted_then_succeeds_and_repeats_change_nothing() -> None:
    r = refund()
    assert r.status is RefundStatus.REQUESTED and r.requested is not None and r.requested.provider == "stripe"
    assert r.accept("re_1", SOON) and not r.accept("re_1", SOON)
    assert r.succeed(SOON, "re_1") and not r.succeed(SOON, "re_1")
    assert not r.accept("re_1", SOON) and not r.fail("late report", SOON, "re_1")  # stale after success
    assert r.status is RefundStatus.SUCCEEDED and r.provider_refund_id == "re_1"


def test_a_failed_refund_waits_for_a_retry_with_a_reason() -> None:
    r = refund()
    assert r.fail("expired_or_canceled_card", SOON, "re_1")
    assert r.status is RefundStatus.FAILED and r.failure_reason == "expired_or_canceled_card"
    with pytest.raises(RuleViolation):
        r.retry(" ", SOON)
    r.retry("the customer updated their card", SOON)
    assert r.status is RefundStatus.REQUESTED and r.attempt == 2 and r.provider_refund_id is None
    assert r.accept("re_2", SOON)
    with pytest.raises(RuleViolation):
        r.succeed(SOON, "re_other")  # another provider refund than the one accepted


def test_retry_is_only_for_failed_refunds() -> None:
    with pytest.raises(InvalidTransition):
        refund().retry("why not", SOON)
