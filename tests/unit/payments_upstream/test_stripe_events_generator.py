"""The Stripe event stream generator: deterministic, every case present, and a ground truth that holds."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from libs.domain.money import Money
from services.payments.domain.dispute import Dispute
from services.payments.domain.upstream import EventKind, normalise, parse_event
from services.payments.domain.upstream_events import (
    UpstreamChargeRefunded,
    UpstreamChargeSucceeded,
    UpstreamDisputeFact,
    UpstreamPaymentFailed,
    UpstreamRefundUpdated,
)
from tests.support.stripe_events import API_VERSION, COURSES, KINDS, Scenario, encode, generate

ROOT = Path(__file__).resolve().parents[3]
ID = re.compile(r"^(evt|pi|ch|re|dp|txn|req|cus|pm)_[0-9A-Za-z]+$")


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return generate(20250512, 1000)


def digest(s: Scenario) -> str:
    return hashlib.sha256(json.dumps(s.events, sort_keys=True).encode()).hexdigest()


def test_the_same_seed_gives_the_same_scenario(scenario: Scenario) -> None:
    again = generate(20250512, 1000)
    assert again.events == scenario.events and again.orders == scenario.orders
    assert generate(20250513, 1000).events != scenario.events


def test_the_scenario_does_not_depend_on_the_process(scenario: Scenario) -> None:
    code = ("import hashlib, json; from tests.support.stripe_events import generate; "
            "s = generate(20250512, 1000); "
            "print(hashlib.sha256(json.dumps(s.events, sort_keys=True).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == digest(scenario)


def test_a_thousand_orders_contain_every_case(scenario: Scenario) -> None:
    assert len(scenario.orders) == 1000
    kinds = Counter(k for o in scenario.orders.values() for k in o.kinds)
    assert {k: kinds[k] for k in KINDS if kinds[k] == 0} == {}
    assert set(scenario.status_counts()) == {"paid_valid", "refunded_no_rebuy", "refunded_rebought",
                                            "dispute_pending", "data_gap"}
    types = Counter(e["type"] for e in scenario.truth_events)
    assert types["charge.succeeded"] == types["payment_intent.succeeded"] == 1000
    for t in ("payment_intent.payment_failed", "charge.refunded", "charge.refund.updated", "charge.dispute.created",
              "charge.dispute.updated", "charge.dispute.closed", "charge.failed"):
        assert types[t] > 0, t
    closed = Counter(e["data"]["object"]["status"] for e in scenario.truth_events
                     if e["type"] == "charge.dispute.closed")
    assert closed["won"] > 0 and closed["lost"] > 0 and closed["warning_closed"] > 0


def test_duplicates_and_out_of_order_deliveries_are_present(scenario: Scenario) -> None:
    delivered = Counter(e["id"] for e in scenario.events)
    assert sorted(i for i, n in delivered.items() if n > 1) == list(scenario.duplicate_ids)
    assert len(scenario.duplicate_ids) >= 50 and max(delivered.values()) == 2
    assert len(scenario.events) == len(scenario.truth_events) + len(scenario.duplicate_ids)
    assert {e["id"] for e in scenario.events} == {e["id"] for e in scenario.truth_events}
    # Redeliveries carry the same id, and sometimes different bytes (pending_webhooks re-rendered).
    assert scenario.events != sorted(scenario.events, key=lambda e: (e["created"], e["id"]))
    assert scenario.out_of_order and scenario.max_displacement <= scenario.window
    # A refund that arrives before its charge.
    assert len(scenario.refund_before_charge) >= 1
    for order_id in scenario.refund_before_charge:
        first: dict[str, int] = {}
        for i, e in enumerate(scenario.events):
            if scenario.order_of_event[e["id"]] == order_id:
                first.setdefault(e["type"], i)
        assert first["charge.refunded"] < first["charge.succeeded"]


def test_events_look_like_stripe_events(scenario: Scenario) -> None:
    for e in scenario.truth_events[:400] + scenario.truth_events[-400:]:
        assert list(e) == ["id", "object", "api_version", "created", "data", "livemode", "pending_webhooks",
                           "request", "type"]
        assert e["object"] == "event" and e["api_version"] == API_VERSION and ID.match(e["id"])
        obj = e["data"]["object"]
        assert ID.match(obj["id"]) and obj["currency"] == obj["currency"].lower()
        assert isinstance(obj["amount"], int) and obj["amount"] > 0
        if e["type"].endswith(".updated"):
            assert "previous_attributes" in e["data"]
        if obj["object"] in ("refund", "dispute"):
            assert obj["metadata"] == {} and obj["charge"].startswith("ch_")
        else:
            assert obj["metadata"]["order_id"] == scenario.order_of_event[e["id"]]
    for o in scenario.orders.values():  # a payment intent and its charges share a prefix, as at Stripe
        assert o.payment_intent_id[3:17] == o.charge_id[3:17]


def test_created_increases_in_truth_order(scenario: Scenario) -> None:
    times = [e["created"] for e in scenario.truth_events]
    assert times == sorted(times)
    per_order: dict[str, list[int]] = defaultdict(list)
    for e in scenario.truth_events:
        per_order[scenario.order_of_event[e["id"]]].append(e["created"])
    assert all(all(a < b for a, b in itertools.pairwise(ts)) for ts in per_order.values())


def test_each_order_happens_in_a_sensible_order(scenario: Scenario) -> None:
    for o in scenario.orders.values():
        kinds = [e["type"] for e in scenario.events_for(o.order_id)]
        paid = kinds.index("charge.succeeded")
        assert kinds[paid + 1] == "payment_intent.succeeded"
        assert kinds[:paid] == ["charge.failed", "payment_intent.payment_failed"] * len(o.failed_charge_ids)
        assert kinds.count("charge.refunded") == len(o.refunds)
        assert kinds.count("charge.refund.updated") == sum(r.pending_first for r in o.refunds)
        if o.dispute is not None:
            assert kinds[paid + 2] == "charge.dispute.created"
            assert kinds.count("charge.dispute.closed") == (0 if o.dispute.is_open else 1)


def test_the_ground_truth_is_consistent(scenario: Scenario) -> None:
    by_student_course: dict[tuple[str | None, str], list[str]] = defaultdict(list)
    for o in scenario.orders.values():
        assert o.amount > 0 and 0 <= o.refunded <= o.paid  # never a refund above the charge
        assert all(r.amount > 0 for r in o.refunds)
        assert 0 <= o.net <= o.paid and o.money_back <= o.paid
        assert not (o.refunds and o.dispute), "disputes are generated on unrefunded orders only"
        if o.dispute is not None:
            assert o.dispute.amount <= o.paid - o.refunded
            assert o.dispute.created < o.dispute.evidence_due_by
        by_student_course[(o.student_id, o.course_id)].append(o.order_id)
        if o.rebuy_of is not None:
            original = scenario.orders[o.rebuy_of]
            assert original.rebought_by == o.order_id and original.fully_refunded
            assert (original.student_id, original.course_id) == (o.student_id, o.course_id)
            assert o.paid_at > max(r.created for r in original.refunds)
            assert original.recovered == min(o.paid, original.refunded)
            assert original.expected_status == "refunded_rebought" and o.expected_status == "paid_valid"
    for o in scenario.with_kind("partial_refund") + scenario.with_kind("two_partial_refunds"):
        assert 0 < o.refunded < o.paid and o.expected_status == "refunded_no_rebuy"
    for o in scenario.with_kind("partial_then_full") + scenario.with_kind("full_refund"):
        assert o.fully_refunded
    for o in scenario.with_kind("other_course_after_refund") + scenario.with_kind("bought_again_before_refund"):
        assert o.rebought_by is None and o.expected_status == "refunded_no_rebuy"
    for o in scenario.with_kind("purchase_before_refund"):
        twins = [scenario.orders[i] for i in by_student_course[(o.student_id, o.course_id)] if i != o.order_id]
        assert any(t.fully_refunded and min(r.created for r in t.refunds) > o.paid_at for t in twins)
    # Same student and course twice only where the generator meant it.
    for orders in by_student_course.values():
        if len(orders) > 1:
            kinds = {k for i in orders for k in scenario.orders[i].kinds}
            assert kinds & {"rebuy", "purchase_before_refund"} or None in {scenario.orders[i].student_id
                                                                          for i in orders}
    assert {o.currency for o in scenario.with_kind("gap_unsupported_currency")} == {"IDR"}
    assert all(o.student_id is None for o in scenario.with_kind("gap_missing_student_id"))
    assert all(o.data_gap for o in scenario.orders.values() if o.expected_status == "data_gap")
    assert scenario.totals()["paid"] == sum(o.paid for o in scenario.orders.values() if o.currency == "TWD")


def test_the_events_tell_the_same_story_as_the_truth(scenario: Scenario) -> None:
    """A straightforward consumer of the normalised facts reaches the ground truth for every order."""
    index: dict[str, str] = {}
    paid: dict[str, dict[str, Money | None]] = defaultdict(dict)  # order -> charge -> amount
    refunded: dict[str, int] = defaultdict(int)  # charge -> cumulative minor units
    settled: dict[str, str] = {}  # refund -> status
    failures: Counter[str] = Counter()
    disputes: dict[str, Dispute] = {}
    unknown = 0
    parked = []
    for body in scenario.bodies():
        parsed = parse_event(body)
        fact = normalise(parsed)
        if fact is None:
            unknown += 1
            assert parsed.kind is EventKind.UNKNOWN
            continue
        index.update(fact.order_ref.index_entries())
        if isinstance(fact, UpstreamChargeSucceeded):
            assert fact.order_ref.order_id is not None and fact.charge_id is not None
            paid[fact.order_ref.order_id][fact.charge_id] = fact.amount
        elif isinstance(fact, UpstreamPaymentFailed):
            failures[fact.provider_event_id] += 1
        elif isinstance(fact, UpstreamChargeRefunded):
            refunded[fact.charge_id] = max(refunded[fact.charge_id], fact.provider_amount_refunded)
        elif isinstance(fact, UpstreamRefundUpdated):
            settled[fact.refund_id] = fact.status
            parked.append(fact.order_ref)
        elif isinstance(fact, UpstreamDisputeFact):
            disputes.setdefault(fact.dispute_id, Dispute(fact.dispute_id)).observe(fact)
            parked.append(fact.order_ref)
    assert unknown > 0
    assert all(ref.resolve(index) is not None for ref in parked)  # every refund and dispute finds its order
    for o in scenario.orders.values():
        assert list(paid[o.order_id]) == [o.charge_id]
        money = paid[o.order_id][o.charge_id]
        if o.currency == "TWD":
            assert money == Money(amount=o.amount, currency="TWD")
        else:
            assert money is None  # the data gap is visible in the fact
        assert refunded.get(o.charge_id, 0) == o.refunded
        for r in o.refunds:
            if r.pending_first:
                assert settled[r.refund_id] == "succeeded"
        if o.dispute is None:
            continue
        d = disputes[o.dispute.dispute_id]
        assert d.is_open == o.dispute.is_open
        assert (d.outcome.value if d.outcome else None) == o.dispute.outcome
        assert d.evidence_due_by is not None and int(d.evidence_due_by.timestamp()) == o.dispute.evidence_due_by
        assert d.charge_id == o.charge_id
    assert len(failures) == sum(len(o.failed_charge_ids) for o in scenario.orders.values())


def test_bodies_are_the_pretty_printed_json_stripe_sends(scenario: Scenario) -> None:
    body = scenario.bodies()[0]
    assert body == encode(scenario.events[0]) and body.startswith(b"{\n  \"id\": \"evt_")
    assert json.loads(body) == scenario.events[0]


@pytest.mark.parametrize("n", [1, 10, 150])
def test_small_scenarios_have_exactly_the_orders_asked_for(n: int) -> None:
    s = generate(3, n)
    assert len(s.orders) == n
    assert all(o.refunded <= o.paid for o in s.orders.values())
    for body in s.bodies():
        parse_event(body)


def test_other_currencies_and_bad_arguments() -> None:
    jpy = generate(1, 50, currency="JPY")
    assert {o.currency for o in jpy.orders.values()} <= {"JPY", "IDR"}
    first = next(o for o in jpy.orders.values() if o.currency == "JPY")
    assert first.amount in {c.price for c in COURSES}  # JPY has no minor unit
    with pytest.raises(ValueError):
        generate(1, 0)
    with pytest.raises(ValueError):
        generate(1, 10, currency="XYZ")
    with pytest.raises(ValueError):
        generate(1, 10, window=1)
    assert generate(1, 50, duplicates_per_mille=0).duplicate_ids == ()
