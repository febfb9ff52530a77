"""The evidence packet: one JSON document, summary first, evidence grouped by type and in time order."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from libs.domain.errors import NotFound
from services.payments.domain.dispute import PACKET_FORMAT, Dispute, evidence_packet
from services.payments.domain.upstream import normalise, parse_event
from services.payments.domain.upstream_events import UpstreamDisputeFact
from tests.unit.payments_upstream import CHARGE, CREATED, DISPUTE, DUE_BY, ORDER, PI, dispute, event, twd

SECTIONS = ["summary", "dispute", "order", "bill", "service_documentation", "customer_communication",
            "refund_policy", "activity_log", "stripe_evidence", "packet"]


def open_dispute() -> Dispute:
    fact = normalise(parse_event(event("charge.dispute.created", dispute())))
    assert isinstance(fact, UpstreamDisputeFact)
    d = Dispute(DISPUTE)
    d.observe(fact)
    d.link_order(ORDER, datetime(2025, 5, 14, tzinfo=UTC))
    return d


ORDER_VIEW: dict[str, Any] = {
    "order_id": ORDER, "status": "completed", "total": twd(298000), "student_id": "stu-00042",
    "course_id": "course-ai-pm", "customer_name": "Lin Mei", "customer_email": "stu-00042@students.example",
    "product_description": "AI Product Management in Practice (online course, 12 lessons)",
    "placed_at": datetime(2025, 5, 12, 6, 5, tzinfo=UTC),
}
BILL_VIEW: dict[str, Any] = {"bill_id": "bill-1", "total": twd(298000), "lines": [
    {"description": "Course seat", "amount": twd(298000)}]}
SERVICE_PROOF = [
    {"kind": "lesson_view", "at": "2025-05-14T12:00:00+08:00", "detail": "lesson 2 watched 41 min"},
    {"kind": "login", "at": "2025-05-12T07:00:00+00:00", "detail": "login from 203.0.113.7"},
    {"kind": "certificate", "at": datetime(2025, 5, 20, 3, 0, tzinfo=UTC), "detail": "certificate issued"},
]
COMMUNICATIONS = [
    {"channel": "line", "sent_at": "2025-05-13T09:30:00+08:00", "from": "student",
     "text": "Thanks, lesson 1 was great"},
    {"channel": "email", "sent_at": "2025-05-12T06:10:00Z", "from": "kolable", "text": "Welcome to the course"},
]
REFUND_POLICY = {"version": "kolable-refund-2025-04", "text": "Full refund within 7 days if under 20% watched.",
                 "disclosure": "Shown at checkout; the student ticked 'I agree' on 2025-05-12."}
HISTORY = [
    {"event_type": "UpstreamDisputeOpened", "recorded_at": "2025-05-13T06:06:41+00:00", "global_position": 12},
    {"event_type": "UpstreamChargeSucceeded", "recorded_at": "2025-05-12T06:06:41+00:00", "global_position": 3},
    {"event_type": "OrderPlaced", "recorded_at": "2025-05-12T06:05:00+00:00", "global_position": 1,
     "data": {"total": twd(298000)}},
]


def packet(d: Dispute | None = None, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"order_view": ORDER_VIEW, "bill_view": BILL_VIEW, "service_proof": SERVICE_PROOF,
                            "communications": COMMUNICATIONS, "refund_policy": REFUND_POLICY, "history": HISTORY}
    args.update(overrides)
    return evidence_packet(d or open_dispute(), **args)


def test_the_packet_is_one_json_document_with_the_summary_first() -> None:
    doc = packet()
    assert list(doc) == SECTIONS
    text = json.dumps(doc, ensure_ascii=False)  # JSON-ready: no Money, datetime or enum objects left
    assert json.loads(text) == doc
    assert doc["packet"] == {"format": PACKET_FORMAT, "version": 1}


def test_the_summary_says_what_the_dispute_is_and_what_is_enclosed() -> None:
    summary = packet()["summary"]
    assert summary["dispute_id"] == DISPUTE and summary["order_id"] == ORDER
    assert summary["state"] == "needs_response" and summary["is_open"] is True and summary["outcome"] is None
    assert summary["amount"] == {"amount": 298000, "currency": "TWD"}
    assert summary["evidence_due_by"] == datetime.fromtimestamp(DUE_BY, UTC).isoformat()
    assert (summary["charge_id"], summary["payment_intent_id"]) == (CHARGE, PI)
    assert summary["counts"] == {"service_documentation": 3, "customer_communication": 2, "activity_log": 3}
    assert summary["missing"] == []
    assert "TWD 2,980.00" in summary["narrative"] and "kolable-refund-2025-04" in summary["narrative"]


def test_money_is_amount_and_currency_everywhere() -> None:
    doc = packet()
    assert doc["order"]["total"] == {"amount": 298000, "currency": "TWD"}
    assert doc["bill"]["lines"][0]["amount"] == {"amount": 298000, "currency": "TWD"}
    assert doc["activity_log"][0]["data"]["total"] == {"amount": 298000, "currency": "TWD"}
    assert doc["dispute"]["provider_amount"] == {"amount": 298000, "currency": "twd"}


def test_evidence_is_in_chronological_order() -> None:
    doc = packet()
    assert [p["kind"] for p in doc["service_documentation"]] == ["login", "lesson_view", "certificate"]
    assert [m["channel"] for m in doc["customer_communication"]] == ["email", "line"]
    assert [h["global_position"] for h in doc["activity_log"]] == [1, 3, 12]
    assert doc["service_documentation"][2]["at"] == "2025-05-20T03:00:00+00:00"


def test_key_order_is_stable_and_the_inputs_are_not_changed() -> None:
    before = copy.deepcopy((ORDER_VIEW, SERVICE_PROOF, COMMUNICATIONS, HISTORY))
    doc = packet()
    assert (ORDER_VIEW, SERVICE_PROOF, COMMUNICATIONS, HISTORY) == before
    assert list(doc["order"]) == sorted(doc["order"])
    shuffled = packet(order_view=dict(reversed(list(ORDER_VIEW.items()))),
                      service_proof=list(reversed(SERVICE_PROOF)), history=list(reversed(HISTORY)))
    assert json.dumps(shuffled) == json.dumps(doc)


def test_the_dispute_section_and_stripe_evidence_fields() -> None:
    doc = packet()
    section = doc["dispute"]
    assert section["reason"] == "product_not_received" and section["order_ref"]["charge_id"] == CHARGE
    assert section["opened_at"] == datetime.fromtimestamp(CREATED + 86400, UTC).isoformat()
    assert section["state_history"] == [{"state": "needs_response",
                                         "at": datetime.fromtimestamp(CREATED, UTC).isoformat()}]
    evidence = doc["stripe_evidence"]
    assert evidence["customer_email_address"] == "stu-00042@students.example"
    assert evidence["product_description"].startswith("AI Product Management")
    assert evidence["service_date"] == "2025-05-12"
    assert evidence["refund_policy_disclosure"].startswith("Shown at checkout")
    assert evidence["access_activity_log"].splitlines()[0].startswith("2025-05-12T07:00:00+00:00 login")
    assert "Welcome to the course" in evidence["customer_communication"]


def test_missing_evidence_is_named_for_the_people_who_must_supply_it() -> None:
    doc = packet(bill_view=None, communications=[], service_proof=[])
    assert doc["bill"] is None
    assert doc["summary"]["missing"] == ["bill", "service_documentation", "customer_communication"]
    assert doc["stripe_evidence"]["customer_communication"] is None


def test_a_decided_dispute_shows_its_outcome() -> None:
    d = open_dispute()
    d.close("won", at=datetime(2025, 6, 20, tzinfo=UTC))
    summary = packet(d)["summary"]
    assert (summary["state"], summary["is_open"], summary["outcome"]) == ("won", False, "won")


def test_there_is_no_packet_for_a_dispute_that_does_not_exist() -> None:
    with pytest.raises(NotFound):
        packet(Dispute("dp_unknown"))
