"""The provider's (Stripe's) facts of Kolable orders as classifier inputs: every generated case
classifies as the generator's truth whatever the delivery order, refunds are counted once whether
Stripe sent the refund objects or only the charge's cumulative amount, and unusable facts are
data gaps that name the field."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from libs.domain.money import Money
from services.payments.domain.kolable.classify import OrderRecord, classify
from services.payments.domain.kolable.events import KolableClassification
from services.payments.domain.kolable.provider import belongs_to_kolable, provider_inputs
from services.payments.domain.upstream import normalise, parse_event
from services.payments.domain.upstream_events import (
    OrderRef,
    ProviderAmount,
    UpstreamChargeRefunded,
    UpstreamChargeSucceeded,
    UpstreamDisputeClosed,
    UpstreamDisputeOpened,
    UpstreamFact,
    UpstreamPaymentFailed,
    UpstreamRefundUpdated,
)
from tests.support.stripe_events import Scenario, generate

T0 = datetime(2025, 5, 12, 2, 0, tzinfo=UTC)
META = {"order_id": "KOL-1", "student_id": "stu-1", "course_id": "course-ai-pm"}
PRICE = 298000


def twd(amount: int) -> Money:
    return Money(amount=amount, currency="TWD")


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def charge(minutes: int = 0, *, order: str = "KOL-1", amount: int = PRICE, meta: dict[str, str] | None = None,
           source: str = "charge", currency: str = "twd", gap: str | None = None) -> UpstreamChargeSucceeded:
    return UpstreamChargeSucceeded(
        provider_event_id=f"evt_c{order.replace('-', '')}{minutes}{source}", upstream_type=f"{source}.succeeded",
        order_ref=OrderRef(order_id=order, charge_id=f"ch_{order.replace('-', '')}",
                           payment_intent_id=f"pi_{order.replace('-', '')}"),
        occurred_at=at(minutes), source=source, payment_intent_id=f"pi_{order.replace('-', '')}",
        charge_id=f"ch_{order.replace('-', '')}", amount=None if gap else twd(amount),
        provider_amount=ProviderAmount(amount=amount, currency=currency),
        metadata={**META, "order_id": order} if meta is None else meta, data_gap=gap)


def failed(minutes: int) -> UpstreamPaymentFailed:
    return UpstreamPaymentFailed(
        provider_event_id=f"evt_f{minutes}", upstream_type="payment_intent.payment_failed",
        order_ref=OrderRef(order_id="KOL-1", payment_intent_id="pi_KOL1"), occurred_at=at(minutes),
        payment_intent_id="pi_KOL1", amount=twd(PRICE), provider_amount=ProviderAmount(amount=PRICE, currency="twd"),
        failure_code="card_declined", metadata=META)


def charge_refunded(minutes: int, cumulative: int) -> UpstreamChargeRefunded:
    return UpstreamChargeRefunded(
        provider_event_id=f"evt_r{minutes}", upstream_type="charge.refunded",
        order_ref=OrderRef(order_id="KOL-1", charge_id="ch_KOL1", payment_intent_id="pi_KOL1"),
        occurred_at=at(minutes), charge_id="ch_KOL1", payment_intent_id="pi_KOL1", amount=twd(PRICE),
        provider_amount=ProviderAmount(amount=PRICE, currency="twd"), amount_refunded=twd(cumulative),
        provider_amount_refunded=cumulative, fully_refunded=cumulative >= PRICE, metadata=META)


def refund_updated(minutes: int, refund_id: str, amount: int, status: str, created: int) -> UpstreamRefundUpdated:
    return UpstreamRefundUpdated(
        provider_event_id=f"evt_u{refund_id}{minutes}", upstream_type="charge.refund.updated",
        order_ref=OrderRef(charge_id="ch_KOL1", payment_intent_id="pi_KOL1"), occurred_at=at(minutes),
        refund_id=refund_id, charge_id="ch_KOL1", payment_intent_id="pi_KOL1", amount=twd(amount),
        provider_amount=ProviderAmount(amount=amount, currency="twd"), status=status,
        refund_created_at=at(created))


def dispute(cls: Any, minutes: int, status: str, **extra: Any) -> Any:
    return cls(provider_event_id=f"evt_d{minutes}{status}", upstream_type="charge.dispute.x",
               order_ref=OrderRef(charge_id="ch_KOL1", payment_intent_id="pi_KOL1"), occurred_at=at(minutes),
               dispute_id="dp_1", charge_id="ch_KOL1", amount=twd(PRICE),
               provider_amount=ProviderAmount(amount=PRICE, currency="twd"), status=status, reason="fraudulent",
               dispute_created_at=at(100), **extra)


def classify_one(facts: list[UpstreamFact], order_id: str = "KOL-1") -> KolableClassification:
    record, payment_facts = provider_inputs(order_id, facts)
    [c] = classify([record] if record else [], payment_facts)
    return c


# --- the generated stream ---------------------------------------------------------------------


def facts_by_order(events: list[dict[str, Any]]) -> dict[str, list[UpstreamFact]]:
    """Normalise and resolve like the service: refunds and disputes through the charge index."""
    index: dict[str, str] = {}
    pending: list[UpstreamFact] = []
    out: dict[str, list[UpstreamFact]] = defaultdict(list)
    seen: set[str] = set()
    for e in events:
        if e["id"] in seen:
            continue  # stored once per provider event id
        seen.add(e["id"])
        fact = normalise(parse_event(e))
        if fact is not None:
            index.update(fact.order_ref.index_entries())
            pending.append(fact)
    for fact in pending:
        oid = fact.order_ref.resolve(index)
        assert oid is not None
        out[oid].append(fact)
    return out


def classify_all(by_order: dict[str, list[UpstreamFact]]) -> dict[str, KolableClassification]:
    records: list[OrderRecord] = []
    facts = []
    for oid, fs in by_order.items():
        record, pfs = provider_inputs(oid, fs)
        if record is not None:
            records.append(record)
        facts.extend(pfs)
    return {c.order_id: c for c in classify(records, facts)}


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return generate(20250512, 1000)


@pytest.mark.parametrize("delivery", ["truth order", "delivery order", "shuffled"])
def test_every_generated_order_classifies_as_its_truth(scenario: Scenario, delivery: str) -> None:
    events = {"truth order": scenario.truth_events, "delivery order": scenario.events,
              "shuffled": random.Random(7).sample(scenario.events, len(scenario.events))}[delivery]
    result = classify_all(facts_by_order(events))
    assert set(result) == set(scenario.orders)
    for oid, truth in scenario.orders.items():
        c = result[oid]
        assert c.status.value == truth.expected_status, (oid, truth.kinds, c.reason)
        if truth.currency == scenario.currency:
            assert c.refunded == twd(truth.money_back), (oid, truth.kinds)
            assert c.recovered == twd(truth.recovered), oid
        assert c.rebuy_order_id == truth.rebought_by
        assert c.recovers_order_id == truth.rebuy_of


def test_scenario_covers_the_statuses(scenario: Scenario) -> None:
    counts = scenario.status_counts()
    assert all(counts.get(s, 0) > 0 for s in ("paid_valid", "refunded_no_rebuy", "refunded_rebought",
                                              "dispute_pending", "data_gap"))


# --- charges --------------------------------------------------------------------------------


def test_payment_intent_and_charge_reports_are_one_payment() -> None:
    c = classify_one([charge(1, source="payment_intent"), charge(1, source="charge")])
    assert c.status.value == "paid_valid" and c.paid == twd(PRICE)


def test_failed_attempts_then_success_is_paid_and_failure_alone_is_a_gap() -> None:
    assert classify_one([failed(0), failed(3), charge(5)]).status.value == "paid_valid"
    alone = classify_one([failed(0)])
    assert alone.status.value == "data_gap" and "payment (failed)" in alone.missing_fields


def test_the_record_comes_from_the_payment_metadata() -> None:
    record, _ = provider_inputs("KOL-1", [charge(5), failed(0)])
    assert record == OrderRecord(order_id="KOL-1", amount=twd(PRICE), student_id="stu-1", course_id="course-ai-pm",
                                 ordered_at=at(0), source="stripe")
    assert provider_inputs("KOL-1", [refund_updated(9, "re_1", 100, "succeeded", 9)])[0] is None


def test_metadata_without_the_student_is_a_gap() -> None:
    c = classify_one([charge(1, meta={"order_id": "KOL-1", "course_id": "course-ai-pm"})])
    assert c.status.value == "data_gap" and c.missing_fields == ("student_id",)
    assert c.provisional_status is not None and c.provisional_status.value == "paid_valid"


def test_an_unsupported_currency_is_a_currency_gap_with_the_providers_reason() -> None:
    c = classify_one([charge(1, currency="idr", gap="currency 'idr' is not supported")])
    assert c.status.value == "data_gap" and c.missing_fields == ("currency",)
    assert "idr" in c.reason and c.paid == twd(0)


def test_a_refunded_order_from_stripe_needs_no_line_thread() -> None:
    """The LINE thread is an export column: the provider cannot know it, so it is not a gap here."""
    c = classify_one([charge(1), charge_refunded(60, PRICE)])
    assert c.status.value == "refunded_no_rebuy" and c.refunded == twd(PRICE)


# --- refunds ---------------------------------------------------------------------------------


def test_cumulative_amounts_alone_count_the_latest_total() -> None:
    c = classify_one([charge(1), charge_refunded(60, 50000), charge_refunded(120, 80000)])
    assert c.refunded == twd(80000) and c.status.value == "refunded_no_rebuy"


def test_refund_objects_and_the_cumulative_amount_are_not_counted_twice() -> None:
    facts = [charge(1), charge_refunded(60, 50000), refund_updated(61, "re_1", 50000, "succeeded", 60),
             charge_refunded(120, PRICE), refund_updated(121, "re_2", PRICE - 50000, "pending", 120),
             refund_updated(200, "re_2", PRICE - 50000, "succeeded", 120)]
    for order in (facts, list(reversed(facts))):
        c = classify_one(order)
        assert c.refunded == twd(PRICE)


def test_a_failed_refund_gives_nothing_back() -> None:
    c = classify_one([charge(1), charge_refunded(60, 50000), refund_updated(61, "re_1", 50000, "pending", 60),
                      refund_updated(90, "re_1", 50000, "failed", 60)])
    assert c.status.value == "paid_valid" and c.refunded == twd(0)


def test_a_pending_refund_counts_as_money_on_its_way_back() -> None:
    c = classify_one([charge(1), refund_updated(61, "re_1", 1000, "pending", 60)])
    assert c.refunded == twd(1000)


# --- disputes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("statuses", "expected"), [
    (["needs_response"], "dispute_pending"),
    (["warning_needs_response"], "dispute_pending"),  # an inquiry is open too
    (["needs_response", "under_review"], "dispute_pending"),
    (["needs_response", "under_review", "won"], "paid_valid"),
    (["warning_needs_response", "warning_closed"], "paid_valid"),  # inquiry closed: the money stays
    (["needs_response", "lost"], "refunded_no_rebuy"),  # the money is gone, as if refunded
])
def test_disputes_take_their_latest_status_whatever_the_arrival(statuses: list[str], expected: str) -> None:
    facts: list[UpstreamFact] = [charge(1)]
    for i, status in enumerate(statuses):
        if status in ("won", "lost", "warning_closed"):
            outcome = "lost" if status == "lost" else "won"
            facts.append(dispute(UpstreamDisputeClosed, 200 + i, status, outcome=outcome))
        else:
            facts.append(dispute(UpstreamDisputeOpened, 200 + i, status))
    assert classify_one(facts).status.value == expected
    assert classify_one(list(reversed(facts))).status.value == expected


def test_a_prevented_dispute_is_a_gap() -> None:
    c = classify_one([charge(1), dispute(UpstreamDisputeClosed, 300, "prevented", data_gap="status prevented")])
    assert c.status.value == "data_gap"


def test_kolable_payments_are_recognised_by_their_course() -> None:
    assert belongs_to_kolable(charge(1))
    assert not belongs_to_kolable(charge(1, meta={"order_id": "o2o-1"}))
    assert not belongs_to_kolable(refund_updated(1, "re_1", 100, "succeeded", 1))
