"""Parsing Stripe events and normalising each supported type into its fact, with exact Money."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from libs.domain.errors import RuleViolation
from libs.domain.money import Money
from services.payments.domain import upstream_events as ue
from services.payments.domain.upstream import (
    SUPPORTED_TYPES,
    EventKind,
    MalformedEvent,
    normalise,
    parse_event,
    received_event,
    to_money,
)
from tests.unit.payments_upstream import (
    CHARGE,
    CREATED,
    DISPUTE,
    DUE_BY,
    ORDER,
    PI,
    PRICE,
    REFUND,
    at,
    charge,
    dispute,
    event,
    payment_intent,
    refund,
    round_trip,
    twd,
)

BY_METADATA = ue.OrderRef(order_id=ORDER, charge_id=CHARGE, payment_intent_id=PI)
BY_CHARGE = ue.OrderRef(charge_id=CHARGE, payment_intent_id=PI)


def fact_of(body: dict[str, Any] | bytes) -> ue.UpstreamFact:
    fact = normalise(parse_event(body))
    assert fact is not None
    return fact


def test_the_supported_types_are_the_issue_list_plus_refund_events() -> None:
    assert {
        "payment_intent.succeeded", "payment_intent.payment_failed", "charge.succeeded", "charge.refunded",
        "charge.refund.updated", "charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed",
    } <= SUPPORTED_TYPES
    assert {"refund.created", "refund.updated", "refund.failed"} <= SUPPORTED_TYPES


def test_the_envelope_is_read_and_the_raw_payload_kept() -> None:
    body = event("charge.succeeded", charge(), account=None, context="ignored-extra")
    raw = json.dumps(body, indent=2).encode()
    parsed = parse_event(raw)
    assert (parsed.id, parsed.type, parsed.created, parsed.livemode) == (body["id"], "charge.succeeded", CREATED,
                                                                         False)
    assert parsed.api_version == "2024-06-20" and parsed.pending_webhooks == 1
    assert parsed.request is not None and parsed.request.id == "req_TestRequest01"
    assert parsed.request.idempotency_key == "6f1c0d8e-3b2a-4c5d-9e8f-7a6b5c4d3e2f"
    assert parsed.kind is EventKind.CHARGE_SUCCEEDED and parsed.is_known
    assert parsed.payload == body  # everything, extra fields included
    assert parsed.occurred_at == at(CREATED)
    assert parsed.resource is not None and parsed.resource.id == CHARGE
    assert parse_event(body).payload == body and parse_event(raw.decode()).payload == body


def test_payment_intent_succeeded_is_a_charge_succeeded_fact() -> None:
    fact = fact_of(event("payment_intent.succeeded", payment_intent()))
    assert isinstance(fact, ue.UpstreamChargeSucceeded)
    assert fact.source == "payment_intent"
    assert fact.amount == twd(298000) and fact.provider_amount == ue.ProviderAmount(amount=PRICE, currency="twd")
    assert fact.order_ref == BY_METADATA
    assert (fact.payment_intent_id, fact.charge_id) == (PI, CHARGE)
    assert fact.metadata == {"order_id": ORDER, "student_id": "stu-00042", "course_id": "course-ai-pm"}
    assert fact.occurred_at == at(CREATED) and fact.provider_event_id == "evt_1TestEventAbCdEf01234567"
    assert fact.upstream_type == "payment_intent.succeeded" and fact.data_gap is None


def test_charge_succeeded_is_a_charge_succeeded_fact() -> None:
    fact = fact_of(event("charge.succeeded", charge()))
    assert isinstance(fact, ue.UpstreamChargeSucceeded)
    assert fact.source == "charge" and fact.amount == twd(298000) and fact.order_ref == BY_METADATA


def test_payment_failed_names_the_decline() -> None:
    error = {"charge": "ch_3TestFailed0000000000000", "code": "card_declined", "decline_code": "insufficient_funds",
             "message": "Your card has insufficient funds.", "type": "card_error"}
    body = event("payment_intent.payment_failed",
                 payment_intent(status="requires_payment_method", latest_charge=None, error=error))
    fact = fact_of(body)
    assert isinstance(fact, ue.UpstreamPaymentFailed)
    assert fact.amount == twd(298000) and fact.payment_intent_id == PI
    assert fact.charge_id == "ch_3TestFailed0000000000000"  # from last_payment_error when latest_charge is null
    assert (fact.failure_code, fact.decline_code) == ("card_declined", "insufficient_funds")
    assert fact.failure_message == "Your card has insufficient funds."
    assert fact.order_ref.order_id == ORDER


def test_charge_refunded_carries_the_cumulative_refunded_amount() -> None:
    partial = fact_of(event("charge.refunded", charge(amount_refunded=100000)))
    assert isinstance(partial, ue.UpstreamChargeRefunded)
    assert partial.amount == twd(298000) and partial.amount_refunded == twd(100000)
    assert partial.provider_amount_refunded == 100000 and not partial.fully_refunded
    # API 2022-11-15 and later: the charge does not list its refunds, so the refund itself is unknown here.
    assert partial.refund_id is None and partial.refund_amount is None and partial.refunds == []
    full = fact_of(event("charge.refunded", charge(amount_refunded=PRICE)))
    assert isinstance(full, ue.UpstreamChargeRefunded)
    assert full.fully_refunded and full.amount_refunded == twd(298000)
    assert full.order_ref == BY_METADATA and full.charge_id == CHARGE


def test_charge_refunded_in_older_api_versions_names_the_newest_refund() -> None:
    older = refund(refund_id="re_3TestOlder000000000000001", amount=50000, created=CREATED + 100)
    newer = refund(refund_id="re_3TestNewer000000000000002", amount=80000, created=CREATED + 200, status="pending")
    fact = fact_of(event("charge.refunded", charge(amount_refunded=130000, refunds=[newer, older])))
    assert isinstance(fact, ue.UpstreamChargeRefunded)
    assert fact.refund_id == "re_3TestNewer000000000000002"
    assert fact.refund_amount == twd(80000) and fact.refund_status == "pending"
    assert [r.refund_id for r in fact.refunds] == ["re_3TestNewer000000000000002", "re_3TestOlder000000000000001"]
    assert fact.refunds[1].created_at == at(CREATED + 100)


@pytest.mark.parametrize("type_", ["charge.refund.updated", "refund.created", "refund.updated", "refund.failed"])
def test_refund_events_are_refund_updated_facts_found_by_charge(type_: str) -> None:
    status = "failed" if type_ == "refund.failed" else "succeeded"
    fact = fact_of(event(type_, refund(status=status), previous={"status": "pending"}))
    assert isinstance(fact, ue.UpstreamRefundUpdated)
    assert (fact.refund_id, fact.status, fact.amount) == (REFUND, status, twd(100000))
    # A refund carries no metadata: the order is found through its charge or payment intent.
    assert fact.order_ref == BY_CHARGE and not fact.order_ref.is_resolved
    assert fact.refund_created_at == at(CREATED + 3600) and fact.reason == "requested_by_customer"


def test_an_expanded_charge_on_a_refund_is_reduced_to_its_id() -> None:
    fact = fact_of(event("charge.refund.updated", refund(charge_id=charge())))
    assert isinstance(fact, ue.UpstreamRefundUpdated) and fact.charge_id == CHARGE


def test_dispute_created_is_an_opened_fact_with_the_evidence_deadline() -> None:
    fact = fact_of(event("charge.dispute.created", dispute()))
    assert isinstance(fact, ue.UpstreamDisputeOpened)
    assert (fact.dispute_id, fact.status, fact.reason) == (DISPUTE, "needs_response", "product_not_received")
    assert fact.amount == twd(298000) and fact.evidence_due_by == at(DUE_BY)
    assert fact.order_ref == BY_CHARGE and (fact.has_evidence, fact.submission_count) == (False, 0)
    assert fact.dispute_created_at == at(CREATED + 86400)


def test_dispute_updated_is_an_updated_fact() -> None:
    fact = fact_of(event("charge.dispute.updated", dispute(status="under_review", submissions=1),
                         previous={"status": "needs_response"}))
    assert isinstance(fact, ue.UpstreamDisputeUpdated)
    assert fact.status == "under_review" and fact.has_evidence and fact.submission_count == 1


@pytest.mark.parametrize(("status", "outcome"), [("won", "won"), ("lost", "lost"), ("warning_closed", "won")])
def test_dispute_closed_carries_the_outcome(status: str, outcome: str) -> None:
    fact = fact_of(event("charge.dispute.closed", dispute(status=status, submissions=1)))
    assert isinstance(fact, ue.UpstreamDisputeClosed)
    assert fact.outcome == outcome and fact.status == status and fact.data_gap is None


def test_a_prevented_dispute_is_closed_without_an_outcome_and_flagged() -> None:
    fact = fact_of(event("charge.dispute.closed", dispute(status="prevented")))
    assert isinstance(fact, ue.UpstreamDisputeClosed)
    assert fact.outcome is None and fact.data_gap is not None and "prevented" in fact.data_gap


def test_a_zero_decimal_currency_is_taken_as_is() -> None:
    fact = fact_of(event("charge.succeeded", charge(amount=5000, currency="jpy")))
    assert isinstance(fact, ue.UpstreamChargeSucceeded) and fact.amount == Money(amount=5000, currency="JPY")


def test_an_older_payment_intent_names_its_charge_in_the_charges_list() -> None:
    pi = payment_intent(latest_charge=None)
    pi["charges"] = {"object": "list", "data": [{"id": CHARGE, "object": "charge"}], "has_more": False}
    fact = fact_of(event("payment_intent.succeeded", pi))
    assert isinstance(fact, ue.UpstreamChargeSucceeded) and fact.charge_id == CHARGE


# --- unknown types, data gaps ----------------------------------------------------------------------


def test_an_unknown_type_parses_and_is_kept_as_unknown() -> None:
    body = event("customer.subscription.trial_will_end", {"id": "sub_Test", "object": "subscription", "x": [1]})
    parsed = parse_event(json.dumps(body).encode())
    assert parsed.kind is EventKind.UNKNOWN and not parsed.is_known and parsed.resource is None
    assert normalise(parsed) is None
    stored = received_event(parsed, via="kafka", signature_verified=False, received_at=at(CREATED + 5))
    assert stored.known is False and stored.type == "customer.subscription.trial_will_end"
    assert stored.payload == body  # the evidence, unchanged
    assert round_trip([stored]) == [stored]


def test_unknown_charge_types_do_not_need_the_object_we_would_read() -> None:
    parsed = parse_event(event("charge.dispute.funds_withdrawn", {"id": DISPUTE, "object": "dispute"}))
    assert parsed.kind is EventKind.UNKNOWN


@pytest.mark.parametrize("type_,obj", [
    ("payment_intent.succeeded", payment_intent(currency="idr")),
    ("charge.succeeded", charge(currency="idr")),
    ("charge.refunded", charge(currency="idr", amount_refunded=1000)),
    ("charge.refund.updated", refund(currency="idr")),
    ("charge.dispute.created", dispute(currency="idr")),
    ("charge.dispute.closed", dispute(currency="idr", status="lost")),
])
def test_an_unsupported_currency_gives_a_data_gap_fact_instead_of_an_error(type_: str, obj: dict[str, Any]) -> None:
    fact = fact_of(event(type_, obj))
    assert fact.data_gap is not None and "unsupported currency 'idr'" in fact.data_gap
    dumped = fact.model_dump()
    assert dumped["amount"] is None
    assert dumped["provider_amount"]["currency"] == "idr"  # what Stripe sent is kept
    assert round_trip([fact]) == [fact]


def test_an_order_id_that_is_not_ours_is_a_data_gap() -> None:
    fact = fact_of(event("charge.succeeded", charge(metadata={"order_id": "bad id; drop table"})))
    assert fact.data_gap is not None and "metadata.order_id" in fact.data_gap
    assert fact.order_ref == BY_CHARGE  # still findable by charge


def test_to_money_uppercases_and_refuses_what_we_do_not_support() -> None:
    assert to_money(298000, "twd") == (twd(298000), None)
    money, gap = to_money(1, "xyz")
    assert money is None and gap is not None and gap.startswith("unsupported currency 'xyz'")


# --- malformed bodies --------------------------------------------------------------------------------


def _without(body: dict[str, Any], path: str) -> dict[str, Any]:
    node = body
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    del node[last]
    return body


@pytest.mark.parametrize(("raw", "field"), [
    (b"not json at all", "body"),
    (b"\xff\xfe{}", "body"),
    (b"[1, 2, 3]", "body"),
    (b'"evt_1"', "body"),
    (json.dumps(_without(event("charge.succeeded", charge()), "id")).encode(), "id"),
    (json.dumps(_without(event("charge.succeeded", charge()), "type")).encode(), "type"),
    (json.dumps(_without(event("charge.succeeded", charge()), "created")).encode(), "created"),
    (json.dumps(_without(event("charge.succeeded", charge()), "data")).encode(), "data"),
    (json.dumps(_without(event("charge.succeeded", charge()), "data.object")).encode(), "data.object"),
    (json.dumps(_without(event("charge.succeeded", charge()), "data.object.amount")).encode(), "data.object.amount"),
    (json.dumps(_without(event("charge.refund.updated", refund()), "data.object.currency")).encode(),
     "data.object.currency"),
    (json.dumps(_without(event("charge.dispute.created", dispute()), "data.object.status")).encode(),
     "data.object.status"),
    (json.dumps(event("charge.succeeded", refund())).encode(), "data.object.object"),  # the wrong kind of object
    (json.dumps({**event("charge.succeeded", charge()), "created": "1747030000"}).encode(), "created"),
    (json.dumps({**event("charge.succeeded", charge()), "object": "charge"}).encode(), "object"),
    (json.dumps({**event("charge.succeeded", charge()), "id": "ch_notanevent"}).encode(), "id"),
    (json.dumps({**event("charge.succeeded", charge()), "data": {"object": "ch_1"}}).encode(), "data.object"),
])
def test_a_malformed_body_names_the_bad_field(raw: bytes, field: str) -> None:
    with pytest.raises(MalformedEvent) as exc:
        parse_event(raw)
    assert exc.value.field == field
    assert isinstance(exc.value, RuleViolation)  # one place maps it to HTTP 422: nothing is stored
    assert exc.value.code == "malformed_event"


def test_a_negative_or_fractional_amount_is_malformed() -> None:
    for amount in (-1, 12.5):
        with pytest.raises(MalformedEvent) as exc:
            parse_event(event("charge.succeeded", charge(amount=amount)))  # type: ignore[arg-type]
        assert exc.value.field == "data.object.amount"


# --- ids and order refs ---------------------------------------------------------------------------------


def test_order_refs_resolve_through_the_index() -> None:
    index = BY_METADATA.index_entries()
    assert index == {CHARGE: ORDER, PI: ORDER}
    assert BY_CHARGE.resolve(index) == ORDER
    assert ue.OrderRef(payment_intent_id=PI).resolve(index) == ORDER
    assert ue.OrderRef(charge_id="ch_other").resolve(index) is None
    assert BY_CHARGE.index_entries() == {}
    assert ue.OrderRef().is_empty


def test_facts_round_trip_through_the_registry() -> None:
    bodies = [event("payment_intent.succeeded", payment_intent()), event("charge.refunded", charge(amount_refunded=1)),
              event("charge.refund.updated", refund()), event("charge.dispute.closed", dispute(status="won"))]
    facts = [fact_of(b) for b in bodies]
    assert round_trip(facts) == facts
    assert all(isinstance(f.occurred_at, datetime) and f.occurred_at.tzinfo is not None for f in facts)
