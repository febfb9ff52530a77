"""The evidence packet's inputs built from recorded events (services/payments/domain/evidence.py):
the order and bills as the orders service's streams tell them, the service documentation, the
in-app customer communication, the refund policy in force at placement, the activity log, and what
is not available. The orders domain itself produces the events, so the shapes are the real ones."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from libs.domain.events import DomainEvent
from services.orders.domain.bill import Bill
from services.orders.domain.commands import MaterialInput
from services.payments.domain.dispute import evidence_packet
from services.payments.domain.evidence import (
    StoredEvent,
    activity_log,
    bill_views,
    customer_communication,
    not_available,
    order_view,
    primary_bill,
    refund_policy_section,
    service_documentation,
)
from tests.unit.orders import ESTIMATE, FINAL_BILL, ITEM, MERCHANT, NOW, PREPAY_BILL, SLOT, SOON, place, twd
from tests.unit.payments import OLD_POLICY, POLICY
from tests.unit.payments_upstream.test_evidence_packet import open_dispute

ORDER_ID = "o-1"
WHO = {"customer": {"actor": "c-1", "role": "customer"}, "merchant": {"actor": MERCHANT, "role": "merchant"},
       "payments": {"actor": "payments", "role": "service"}}


def stored(stream_id: str, events: list[DomainEvent], by: str, start: int = 1,
           position: int = 100) -> list[StoredEvent]:
    return [StoredEvent(stream_id=stream_id, stream_version=start + i, global_position=position + i,
                        event_type=e.event_type, recorded_at=NOW + timedelta(minutes=position + i),
                        metadata={**WHO[by], "correlation_id": f"order-{ORDER_ID}"}, data=e.to_data(), event=e)
            for i, e in enumerate(events)]


def completed_order() -> tuple[list[StoredEvent], dict[str, list[StoredEvent]]]:
    """A prepaid order run to completion, with its prepayment bill and an adjusted final bill."""
    order = place(required=True)
    placed = order.pending
    order.mark_saved()
    order.record_prepayment(PREPAY_BILL, ESTIMATE, "pi_1", SOON)
    prepaid = order.pending
    order.mark_saved()
    order.accept(MERCHANT, NOW + timedelta(minutes=30))
    order.start_service(MERCHANT, SLOT.start)
    order.push_bill(MERCHANT, FINAL_BILL, twd(90000), SLOT.end)
    order.adjust_bill(MERCHANT, FINAL_BILL, 2, twd(98000), SLOT.end)
    merchant = order.pending
    order.mark_saved()
    order.confirm_bill("c-1", FINAL_BILL, 2, twd(98000), SLOT.end)
    confirmed = order.pending
    order.mark_saved()
    order.record_settlement(FINAL_BILL, twd(98000), SLOT.end)
    order_events = [*stored(f"order-{ORDER_ID}", placed, "customer", 1, 1),
                    *stored(f"order-{ORDER_ID}", prepaid, "payments", 2, 10),
                    *stored(f"order-{ORDER_ID}", merchant, "merchant", 3, 20),
                    *stored(f"order-{ORDER_ID}", confirmed, "customer", 7, 30),
                    *stored(f"order-{ORDER_ID}", order.pending, "payments", 8, 40)]
    prepay_bill = Bill.issue_prepayment(PREPAY_BILL, ORDER_ID, ESTIMATE, NOW)
    final = Bill.push(FINAL_BILL, ORDER_ID, hourly_rate=ITEM.hourly_rate, actual_minutes=90, materials=[], at=SLOT.end)
    pushed = final.pending
    final.mark_saved()
    final.adjust(90, [MaterialInput(code="detergent", description="eco detergent", quantity=1,
                                    unit_price=twd(8000))], "customer: add the detergent", SLOT.end)
    adjusted = final.pending
    final.mark_saved()
    final.confirm(2, SLOT.end)
    bills = {f"bill-{PREPAY_BILL}": stored(f"bill-{PREPAY_BILL}", prepay_bill.pending, "customer", 1, 2),
             f"bill-{FINAL_BILL}": [*stored(f"bill-{FINAL_BILL}", pushed, "merchant", 1, 23),
                                    *stored(f"bill-{FINAL_BILL}", adjusted, "merchant", 2, 25),
                                    *stored(f"bill-{FINAL_BILL}", final.pending, "customer", 3, 31)]}
    return order_events, bills


def test_the_order_as_its_stream_tells_it() -> None:
    order_events, _ = completed_order()
    view = order_view(order_events)
    assert (view["order_id"], view["status"], view["status_label"]) == (ORDER_ID, "completed", "已完成")
    assert view["merchant_id"] == MERCHANT and view["customer_id"] == "c-1"
    assert view["prepaid_amount"] == {"amount": 120000, "currency": "TWD"} and view["prepayment_reference"] == "pi_1"
    assert view["settled_total"] == {"amount": 98000, "currency": "TWD"} and view["confirmed_revision"] == 2
    assert view["service_started_at"] == SLOT.start and view["prepayment"]["required"] is True
    assert ITEM.name in view["product_description"]
    assert view["customer_name"] is None and view["customer_email"] is None  # not recorded, not invented
    assert order_view([]) == {}


def test_the_bill_keeps_every_revision_the_customer_was_shown() -> None:
    _, bills = completed_order()
    views = bill_views(bills)
    assert set(views) == {PREPAY_BILL, FINAL_BILL}
    bill = primary_bill(views)
    assert bill is not None and bill["bill_id"] == FINAL_BILL and bill["kind"] == "final"
    assert [(r["revision"], r["total"]["amount"], r["reason"]) for r in bill["revisions"]] == [
        (1, 90000, None), (2, 98000, "customer: add the detergent")]
    assert bill["confirmed_revision"] == 2 and bill["confirmed_by"] == {"actor": "c-1", "role": "customer"}
    assert bill["prepayment_bill"]["kind"] == "prepayment" and bill["prepayment_bill"]["amount"]["amount"] == 120000
    only_prepayment = primary_bill({PREPAY_BILL: views[PREPAY_BILL]})
    assert only_prepayment is not None and only_prepayment["bill_id"] == PREPAY_BILL
    assert primary_bill({}) is None


def test_service_documentation_is_what_the_merchant_and_customer_recorded_about_the_service() -> None:
    order_events, bills = completed_order()
    proof = service_documentation(order_events, bills)
    assert [p["kind"] for p in proof] == ["merchant_accepted", "service_started", "service_completed",
                                          "bill_pushed", "bill_adjusted", "bill_confirmed_by_customer"]
    started = proof[1]
    assert started["merchant_id"] == MERCHANT and (started["actor"], started["role"]) == (MERCHANT, "merchant")
    assert started["source"] == f"order-{ORDER_ID} v4 OrderServiceStarted" and started["at"] == SLOT.start
    assert "1 h 30 min of service" in proof[3]["detail"] and "1 x eco detergent" in proof[4]["detail"]


def test_customer_communication_lists_the_in_app_interactions_only() -> None:
    order_events, bills = completed_order()
    comms = customer_communication(order_events, bills)
    assert [c["kind"] for c in comms] == ["order_placed", "prepayment_requested", "bill_presented",
                                          "bill_adjusted", "bill_confirmed"]
    assert all(c["channel"] == "app" for c in comms)
    assert [c["direction"] for c in comms] == ["in", "out", "out", "out", "in"]
    assert "customer: add the detergent" in comms[3]["detail"]


def test_a_cancellation_is_a_communication_from_whoever_cancelled() -> None:
    order = place(required=False)
    order.cancel(cancelled_by="customer", reason_code="changed_mind", reason="plans changed", at=SOON)
    comms = customer_communication(stored(f"order-{ORDER_ID}", order.pending, "customer"), {})
    assert [c["kind"] for c in comms] == ["order_placed", "cancellation"]
    assert comms[1]["direction"] == "in" and "plans changed" in comms[1]["detail"]


def test_the_refund_policy_is_the_version_in_force_at_placement_in_plain_words() -> None:
    section = refund_policy_section(POLICY, NOW)
    assert section["version"] == "test-2025" and NOW.isoformat() in section["applies_because"]
    assert section["text"].startswith("Cancellation policy test-2025")
    assert "less than 24 h before the start: 100% of the amount paid online is kept" in section["text"]
    assert "24 h to 48 h (exclusive) before the start: 50%" in section["text"]
    assert "48 h or more before the start: full refund" in section["text"]
    assert [w["rate"] for w in section["penalty_windows"]] == ["1", "1/2"]
    assert section["disclosure"] is None  # no record of it being shown: said in not_available
    old = refund_policy_section(OLD_POLICY, None)
    assert "12 h to 24 h (exclusive) before the start: 25%" in old["text"]
    assert refund_policy_section(None, NOW) == {}


def test_the_activity_log_names_actor_role_and_time_of_every_event() -> None:
    order_events, bills = completed_order()
    log = activity_log([*order_events, *bills[f"bill-{FINAL_BILL}"]])
    assert len(log) == len(order_events) + 3
    first = log[0]
    assert (first["event_type"], first["actor"], first["role"]) == ("OrderPlaced", "c-1", "customer")
    assert first["stream_id"] == f"order-{ORDER_ID}" and first["data"]["order_id"] == ORDER_ID


def test_not_available_says_what_is_missing_instead_of_inventing_it() -> None:
    everything = {n["evidence"] for n in not_available({"order_id": "o"}, {"bill_id": "b"}, {"version": "v"})}
    assert everything == {"customer_name, customer_email_address", "direct customer messages (chat, e-mail, SMS, LINE)",
                          "proof of presence (photos, GPS, signature, customer IP or device)",
                          "refund_policy_disclosure"}
    nothing = {n["evidence"] for n in not_available({}, None, {})}
    assert {"order, service_documentation", "refund_policy"} <= nothing and "bill" not in nothing
    assert "bill" in {n["evidence"] for n in not_available({"order_id": "o"}, None, {"version": "v"})}


def test_the_sources_make_a_complete_json_packet() -> None:
    order_events, bills = completed_order()
    order = order_view(order_events)
    policy = refund_policy_section(POLICY, NOW)
    doc: dict[str, Any] = evidence_packet(
        open_dispute(), order, primary_bill(bill_views(bills)), service_documentation(order_events, bills),
        customer_communication(order_events, bills), policy, activity_log(order_events))
    assert doc["summary"]["missing"] == []
    assert json.loads(json.dumps(doc, ensure_ascii=False)) == doc
    assert doc["stripe_evidence"]["refund_policy"] == policy["text"]
    assert doc["stripe_evidence"]["service_date"] == (NOW + timedelta(minutes=30)).isoformat()[:10]
    assert doc["stripe_evidence"]["product_description"] == order["product_description"]
