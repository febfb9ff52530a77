"""The facts read models are folds of one stream each: what the payments, rma, shipping and
notifications events say, computed from the stored JSON alone (no I/O here)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.orders.domain.events import FaultParty
from services.payments.domain.events import RefundSource, TenderKind
from services.payments.domain.refund import RefundExecution
from services.payments.domain.upstream_events import OrderRef, ProviderAmount, UpstreamChargeSucceeded
from services.projector.projections import facts
from services.projector.projections.common import StoredEvent
from services.projector.projections.orders import fold_stream
from services.projector.shadow import Snapshot
from tests.unit.payments import (
    BILL_TOTAL,
    FINAL_BILL,
    HOUR,
    ORDER,
    POLICY,
    PREPAID,
    SERVICE_END,
    SOON,
    card,
    open_transaction,
    twd,
)

T0 = datetime(2025, 3, 10, 1, 0, tzinfo=UTC)


def stored(stream_id: str, events: Sequence[DomainEvent], first_position: int = 1) -> list[StoredEvent]:
    """The events as the event store would hold them (their JSON payload, versions from 1)."""
    return [StoredEvent(stream_id, i, first_position + i - 1, T0 + timedelta(seconds=i), e.event_type,
                        e.schema_version, e.to_data()) for i, e in enumerate(events, start=1)]


def history(agg: Aggregate) -> list[DomainEvent]:
    events = list(agg.pending)
    agg.mark_saved()
    return events


def test_a_settled_transaction_counts_the_money_taken_and_the_excess_refunded() -> None:
    tx = open_transaction()
    tx.capture_prepayment(PREPAID, at=SOON)  # voucher 100 + balance 500 + card 600
    tx.bill(FINAL_BILL, 1, twd(100000), SERVICE_END)  # TWD 1,000: TWD 200 of the prepayment goes back
    tx.settle(at=SERVICE_END)
    rows = facts.fold_transaction(stored(f"transaction-{ORDER}", history(tx)))
    [row] = rows["rm_transactions"]
    assert (row["status"], row["prepaid"], row["paid"], row["card_paid"]) == ("paid", 120000, 110000, 60000)
    assert (row["settled_total"], row["refunded"], row["penalty"], row["version"]) == (100000, 20000, 0, 4)
    entries = {(e["entry"], e["reference"], e["kind"], e["amount"]) for e in rows["rm_ledger_entries"]}
    assert entries == {("capture", "wal-1", "member_balance", 50000), ("capture", "pi_1", "third_party", 60000)}


def test_a_cancellation_keeps_its_penalty_and_a_shortfall_by_card_is_a_second_capture() -> None:
    tx = open_transaction()
    tx.capture_prepayment(PREPAID, at=SOON)
    tx.cancel(fault_party=FaultParty.CUSTOMER, seconds_before_service_start=30 * HOUR, reason_code="changed_mind",
              policy=POLICY, at=SOON)
    [row] = facts.fold_transaction(stored(f"transaction-{ORDER}", history(tx)))["rm_transactions"]
    assert (row["status"], row["status_label"], row["penalty"], row["refunded"]) == ("refunded", "已退款", 55000,
                                                                                      55000)

    tx = open_transaction()
    tx.capture_prepayment(PREPAID, at=SOON)
    tx.bill(FINAL_BILL, 1, BILL_TOTAL, SERVICE_END)
    tx.settle(method="third_party", reference="pi_2", at=SERVICE_END)
    rows = facts.fold_transaction(stored(f"transaction-{ORDER}", history(tx)))
    assert rows["rm_transactions"][0]["card_paid"] == 60000 + 30000
    assert {(e["reference"], e["amount"]) for e in rows["rm_ledger_entries"] if e["kind"] == "third_party"} == {
        ("pi_1", 60000), ("pi_2", 30000)}


def test_a_lost_dispute_is_a_chargeback_entry_and_the_refund_it_replaced_is_not_counted_twice() -> None:
    tx = open_transaction()
    tx.capture_prepayment([card(120000)], at=SOON)
    tx.freeze_refunds("dp_1", SOON)
    tx.cancel(fault_party=FaultParty.MERCHANT, seconds_before_service_start=72 * HOUR, reason_code="staff_sick",
              policy=POLICY, at=SOON)  # the refund of TWD 1,200 is held
    tx.record_chargeback("dp_1", twd(120000), SOON)
    tx.unfreeze_refunds("dp_1", SOON)  # released, but the chargeback already returned it
    rows = facts.fold_transaction(stored(f"transaction-{ORDER}", history(tx)))
    [row] = rows["rm_transactions"]
    assert (row["chargebacks"], row["refunded"], row["refunds_held"], row["open_disputes"]) == (120000, 0, 0, 0)
    assert row["refunded"] + row["chargebacks"] <= row["paid"]
    [chargeback] = [e for e in rows["rm_ledger_entries"] if e["entry"] == "chargeback"]
    assert (chargeback["reference"], chargeback["payment_reference"], chargeback["amount"]) == ("dp_1", "pi_1",
                                                                                                  120000)


def test_a_refund_follows_the_provider_and_an_operators_retry() -> None:
    tx = open_transaction()
    tx.capture_prepayment([card(120000)], at=SOON)
    refund_line = tx.preview_cancellation(fault_party=FaultParty.MERCHANT, seconds_before_service_start=72 * HOUR,
                                          policy=POLICY, at=SOON).refunds[0]
    r = RefundExecution.request("o-1.2.1", ORDER, RefundSource.CANCELLATION, refund_line, at=SOON,
                                customer_id="c-1")
    r.accept("re_1", SOON)
    r.fail("card_expired", SOON)
    r.retry("customer updated the card", SOON)
    r.accept("re_2", SOON)
    r.succeed(SOON, "re_2")
    [row] = facts.fold_refund(stored("refund-o-1.2.1", history(r)))["rm_refunds"]
    assert (row["status"], row["provider_refund_id"], row["attempt"], row["failure_reason"]) == (
        "succeeded", "re_2", 2, None)
    assert (row["kind"], row["amount"], row["reference"], row["version"]) == (TenderKind.THIRD_PARTY.value, 120000,
                                                                               "pi_1", 6)


def test_an_upstream_charge_names_its_payment_as_the_ledger_does() -> None:
    fact = UpstreamChargeSucceeded(provider_event_id="evt_1", upstream_type="payment_intent.succeeded",
                                   order_ref=OrderRef(order_id=ORDER, payment_intent_id="pi_9"), occurred_at=SOON,
                                   source="payment_intent", payment_intent_id="pi_9", charge_id="ch_9",
                                   amount=Money(amount=5000, currency="TWD"),
                                   provider_amount=ProviderAmount(amount=5000, currency="twd"),
                                   metadata={"course_id": "c-7"})
    data: dict[str, Any] = fact.to_data()
    events = [StoredEvent("upstream-stripe-evt_1", 1, 7, T0, "UpstreamEventReceived", 1, {}),
              StoredEvent("upstream-stripe-evt_1", 2, 8, T0, fact.event_type, 1, data)]
    [row] = facts.fold_upstream(events)["rm_upstream_facts"]
    assert (row["order_id"], row["payment_key"], row["amount"], row["currency"], row["status"]) == (
        ORDER, "pi_9", 5000, "TWD", "succeeded")
    assert row["kolable"] is True and row["version"] == 2 and row["last_position"] == 8


def test_unknown_events_and_empty_streams_give_no_rows() -> None:
    assert facts.fold([]) == {}
    assert facts.fold([StoredEvent("transaction-x", 1, 1, T0, "NoSuchEvent", 1, {})]) == {}
    assert fold_stream([StoredEvent("order-x", 1, 1, T0, "NoSuchEvent", 1, {})]) is None
    assert facts.fold([StoredEvent("wallet-x", 1, 1, T0, "WalletOpened", 1, {})]) == {}


def test_a_snapshot_sees_what_committed_before_it() -> None:
    snap = Snapshot.parse("100:105:101,103")
    assert [x for x in range(98, 108) if snap.sees(x)] == [98, 99, 100, 102, 104]
