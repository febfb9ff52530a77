"""Disputes end to end, through the signed Stripe webhook and the running stack: a dispute on a
prepaid order freezes its refunds; a cancellation (or a settlement's excess) during the dispute is
applied with its refunds held, which run when the dispute is won, or are reduced by the chargeback
when it is lost; a dispute delivered before its charge waits and applies once the charge arrives;
out-of-order and repeated deliveries end in the same state; the evidence packet holds every
section; unknown disputes are 404."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from libs.devstack.client import PlatformClient
from libs.devstack.stripe import charge_succeeded, stripe_id
from tests.e2e.test_order_flow import ADDRESS, order_body
from tests.e2e.test_payments_commands import bill_and_confirm
from tests.e2e.test_payments_flow import send
from tests.support.wait import until

pytestmark = pytest.mark.e2e

TZ = ZoneInfo("Asia/Taipei")
DUE_IN = 7 * 86400


def uid() -> str:
    return uuid.uuid4().hex[:10]


def dispute_event(type_: str, dispute_id: str, charge: dict[str, Any], *, status: str, amount: int | None = None,
                  due_by: int | None = None, submissions: int = 0, created: int | None = None) -> dict[str, Any]:
    """A charge.dispute.* event as Stripe sends it: the dispute names the charge and PaymentIntent, no metadata."""
    now = int(time.time())
    return {
        "id": stripe_id("evt"), "object": "event", "api_version": "2024-06-20", "created": created or now,
        "livemode": False, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "type": type_,
        "data": {"object": {
            "id": dispute_id, "object": "dispute", "amount": charge["amount"] if amount is None else amount,
            "currency": "twd", "status": status, "reason": "product_not_received", "created": now - 60,
            "charge": charge["id"], "payment_intent": charge["payment_intent"], "metadata": {},
            "is_charge_refundable": False, "balance_transactions": [],
            "evidence_details": {"due_by": due_by if due_by is not None else now + DUE_IN,
                                 "has_evidence": submissions > 0, "past_due": False,
                                 "submission_count": submissions}}},
    }


async def rows(pg_dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def stream(pg_dsn: str, stream_id: str) -> list[tuple[str, dict[str, Any]]]:
    found = await rows(pg_dsn, "SELECT event_type, data FROM events WHERE stream_id = $1 ORDER BY stream_version",
                       stream_id)
    return [(r["event_type"], json.loads(r["data"])) for r in found]


async def tx_has(stack: Any, order_id: str, event_type: str) -> list[dict[str, Any]]:
    return [d for t, d in await stream(stack.pg_dsn, f"transaction-{order_id}") if t == event_type]


async def get(client: PlatformClient, stack: Any, path: str, **params: Any) -> Any:
    r = await client.http.get(f"{stack.url('payments')}{path}", params=params or None)
    return r


async def placed_order(client: PlatformClient, *, hours_ahead: int | None = None) -> dict[str, Any]:
    """A prepaid order: at 19:00 in three days (no penalty when cancelled), or `hours_ahead` from now
    for a customer whose low credit score makes prepayment required (a penalty window)."""
    customer = f"c-{uid()}"
    if hours_ahead is None:
        body = order_body(customer, f"s-{uid()}", hour=19)
    else:
        await client.command(f"/customers/{customer}/credit-score", {"score": 300, "source": "t"}, actor="bureau",
                             role="service", method="PUT", wait=False)
        start = (datetime.now(TZ) + timedelta(hours=hours_ahead)).replace(minute=0, second=0, microsecond=0)
        if start.hour >= 23:
            start = start.replace(hour=22)
        body = {**order_body(customer, f"s-{uid()}"),
                "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}}
    placed = await client.command("/orders", body, actor=customer, role="customer")
    assert placed["status"] == "awaiting_prepayment", placed
    return {**placed, "customer_id": customer}


async def prepay(client: PlatformClient, stack: Any, placed: dict[str, Any]) -> dict[str, Any]:
    """Pay the prepayment by card through the webhook; returns the charge object."""
    order_id = placed["order_id"]
    await until("transaction opened", lambda: tx_has(stack, order_id, "TransactionOpened"))
    event = charge_succeeded(order_id, placed["estimated_total"]["amount"])
    await send(client, stack, event)
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)
    return event["data"]["object"]


async def dispute_view(client: PlatformClient, stack: Any, dispute_id: str) -> dict[str, Any]:
    r = await get(client, stack, f"/disputes/{dispute_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def cancel(client: PlatformClient, placed: dict[str, Any]) -> None:
    customer = placed["customer_id"]
    await client.command(f"/orders/{placed['order_id']}/cancel",
                         {"cancelled_by": "customer", "reason_code": "changed_mind"}, actor=customer, role="customer")


def lines(refunds: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(r["kind"], r["reference"], r["amount"]["amount"]) for r in refunds]


# --- a dispute freezes refunds; a cancellation during it keeps its money until it closes ------------------------


async def test_a_cancellation_during_a_dispute_keeps_its_money_until_the_dispute_is_won_then_refunds_by_the_policy(
        client: PlatformClient, stack: Any) -> None:
    placed = await placed_order(client, hours_ahead=30)  # cancelled 24-48 h ahead: half is kept (tw-2025.1)
    order_id, paid = placed["order_id"], placed["estimated_total"]["amount"]
    charge = await prepay(client, stack, placed)
    dp = stripe_id("dp")
    due = int(time.time()) + DUE_IN
    out = await send(client, stack, dispute_event("charge.dispute.created", dp, charge, status="needs_response",
                                                  due_by=due))
    assert out["fact"] == "UpstreamDisputeOpened" and out["duplicate"] is False
    view = await dispute_view(client, stack, dp)
    assert view["state"] == "needs_response" and view["is_open"] and view["order_id"] == order_id
    assert view["amount"] == {"amount": paid, "currency": "TWD"} and view["charge_id"] == charge["id"]
    assert int(datetime.fromisoformat(view["evidence_due_by"]).timestamp()) == due
    assert view["evidence_overdue"] is False
    assert view["transaction"]["refunds_frozen"] is True and view["transaction"]["open_disputes"] == [dp]

    await cancel(client, placed)
    await client.wait_for_status(order_id, "cancelled", timeout=20)
    [held] = await until("refunds held", lambda: tx_has(stack, order_id, "TransactionRefundsHeld"))
    [refunded] = await tx_has(stack, order_id, "TransactionRefunded")
    assert refunded["plan"]["penalty"]["amount"] == paid // 2 and refunded["plan"]["policy_version"] == "tw-2025.1"
    assert held["source"] == "cancellation" and held["dispute_ids"] == [dp]
    assert lines(held["refunds"]) == [("third_party", charge["payment_intent"], paid - paid // 2)]
    assert await tx_has(stack, order_id, "TransactionHeldRefundsReleased") == []  # the money stays meanwhile

    await send(client, stack, dispute_event("charge.dispute.updated", dp, charge, status="under_review", due_by=due,
                                            submissions=1))
    assert (await dispute_view(client, stack, dp))["state"] == "under_review"
    assert await tx_has(stack, order_id, "TransactionHeldRefundsReleased") == []
    await send(client, stack, dispute_event("charge.dispute.closed", dp, charge, status="won", due_by=due,
                                            submissions=1))
    [released] = await until("released", lambda: tx_has(stack, order_id, "TransactionHeldRefundsReleased"))
    assert lines(released["refunds"]) == [("third_party", charge["payment_intent"], paid - paid // 2)]
    assert released["returned_by_chargeback"] == []
    view = await dispute_view(client, stack, dp)
    assert (view["state"], view["outcome"], view["is_open"]) == ("won", "won", False) and view["closed_at"]
    assert [h["event_type"] for h in view["history"]] == [
        "DisputeOpened", "DisputeOrderLinked", "DisputeStateChanged", "DisputeClosed"]
    assert [h.get("state") for h in view["history"]] == ["needs_response", None, "under_review", "won"]
    # Recorded by the payments service in reaction to the stored Stripe facts (correlated by provider event id).
    assert all((h["actor"], h["role"]) == ("payments", "service") and h["recorded_at"] for h in view["history"])
    assert all(h["correlation_id"].startswith("evt_") for h in view["history"])
    assert view["transaction"]["refunds_frozen"] is False and view["transaction"]["held_refunds"] == []


async def test_a_lost_dispute_is_set_against_the_held_refund_so_the_customer_is_not_paid_twice(
        client: PlatformClient, stack: Any) -> None:
    placed = await placed_order(client)  # 19:00 in three days: cancelled for free
    order_id, paid = placed["order_id"], placed["estimated_total"]["amount"]
    charge = await prepay(client, stack, placed)
    dp = stripe_id("dp")
    partial = paid // 3
    await send(client, stack, dispute_event("charge.dispute.created", dp, charge, status="needs_response",
                                            amount=partial))
    await cancel(client, placed)
    await until("refunds held", lambda: tx_has(stack, order_id, "TransactionRefundsHeld"))
    await send(client, stack, dispute_event("charge.dispute.closed", dp, charge, status="lost", amount=partial,
                                            submissions=1))
    [released] = await until("released", lambda: tx_has(stack, order_id, "TransactionHeldRefundsReleased"))
    [charged_back] = await tx_has(stack, order_id, "TransactionChargedBack")
    assert charged_back["amount"]["amount"] == partial and charged_back["reference"] == charge["payment_intent"]
    assert lines(released["refunds"]) == [("third_party", charge["payment_intent"], paid - partial)]
    assert lines(released["returned_by_chargeback"]) == [("third_party", charge["payment_intent"], partial)]
    view = await dispute_view(client, stack, dp)
    assert (view["state"], view["outcome"]) == ("lost", "lost")
    assert [c["dispute_id"] for c in view["transaction"]["chargebacks"]] == [dp]


# --- arrival order and repetition ------------------------------------------------------------------------------


async def test_a_dispute_delivered_before_its_charge_waits_and_freezes_the_order_once_the_charge_arrives(
        client: PlatformClient, stack: Any) -> None:
    placed = await placed_order(client)
    order_id = placed["order_id"]
    await until("transaction opened", lambda: tx_has(stack, order_id, "TransactionOpened"))
    charge_event = charge_succeeded(order_id, placed["estimated_total"]["amount"])
    charge = charge_event["data"]["object"]
    dp = stripe_id("dp")
    await send(client, stack, dispute_event("charge.dispute.created", dp, charge, status="needs_response"))
    early = await dispute_view(client, stack, dp)
    assert early["order_id"] is None and early["transaction"] == {"exists": False}  # the charge is not known yet
    assert [r["order_key"] for r in await rows(
        stack.pg_dsn, "SELECT order_key FROM payments_parked_facts p JOIN events e ON e.event_id = p.fact_event_id"
                      " WHERE e.data->>'dispute_id' = $1", dp)] == [charge["id"]]

    await send(client, stack, charge_event)  # the charge: prepays the order, then releases the dispute
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)
    view = await dispute_view(client, stack, dp)
    assert view["order_id"] == order_id and view["transaction"]["refunds_frozen"] is True
    assert [t for t, _ in await stream(stack.pg_dsn, f"transaction-{order_id}")] == [
        "TransactionOpened", "TransactionPrepaymentCaptured", "TransactionRefundsFrozen"]
    listed = (await get(client, stack, "/disputes", order_id=order_id)).json()["items"]
    assert [d["dispute_id"] for d in listed] == [dp]


async def test_out_of_order_and_repeated_deliveries_end_in_the_same_state_and_append_nothing_more(
        client: PlatformClient, stack: Any) -> None:
    placed = await placed_order(client)
    order_id = placed["order_id"]
    charge = await prepay(client, stack, placed)
    dp = stripe_id("dp")
    due = int(time.time()) + DUE_IN
    t0 = int(time.time()) - 3600
    created = dispute_event("charge.dispute.created", dp, charge, status="needs_response", due_by=due, created=t0)
    review = dispute_event("charge.dispute.updated", dp, charge, status="under_review", due_by=due, submissions=1,
                           created=t0 + 60)
    won = dispute_event("charge.dispute.closed", dp, charge, status="won", due_by=due, submissions=1,
                        created=t0 + 120)
    # The decision first, then the older events, each delivered twice.
    for event in (won, won, review, created, review, created):
        await send(client, stack, event)
    again = await send(client, stack, won)
    assert again["duplicate"] is True
    assert [t for t, _ in await stream(stack.pg_dsn, f"dispute-{dp}")] == [
        "DisputeOpened", "DisputeClosed", "DisputeOrderLinked"]
    opened = (await stream(stack.pg_dsn, f"dispute-{dp}"))[0][1]
    assert opened["state"] == "under_review"  # evidence was submitted before the decision
    view = await dispute_view(client, stack, dp)
    assert (view["state"], view["outcome"], view["version"]) == ("won", "won", 3)
    # Never frozen: the dispute was already decided when it was first seen.
    assert [t for t, _ in await stream(stack.pg_dsn, f"transaction-{order_id}")] == [
        "TransactionOpened", "TransactionPrepaymentCaptured"]


# --- the evidence packet, the list, deadlines, 404s --------------------------------------------------------------


async def test_the_evidence_packet_holds_every_section_the_deadline_and_the_policy_version(
        client: PlatformClient, stack: Any) -> None:
    placed = await placed_order(client)
    order_id, customer, merchant = placed["order_id"], placed["customer_id"], f"m-{uid()}"
    charge = await prepay(client, stack, placed)
    dp = stripe_id("dp")
    due = int(time.time()) + DUE_IN
    await send(client, stack, dispute_event("charge.dispute.created", dp, charge, status="needs_response",
                                            due_by=due))
    await bill_and_confirm(client, order_id, customer, merchant, minutes=90)
    # The bill (TWD 900.00) is below the prepayment: it settles, the order completes, the excess waits.
    await client.wait_for_status(order_id, "completed", timeout=20)
    [held] = await until("excess held", lambda: tx_has(stack, order_id, "TransactionRefundsHeld"))
    assert held["source"] == "settlement" and held["amount"]["amount"] == placed["estimated_total"]["amount"] - 90000

    r = await get(client, stack, f"/disputes/{dp}/evidence-packet")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["content-disposition"] == f'attachment; filename="dispute-{dp}-evidence.json"'
    doc = r.json()
    assert list(doc) == ["summary", "dispute", "order", "bill", "service_documentation", "customer_communication",
                         "refund_policy", "activity_log", "stripe_evidence", "transaction", "not_available", "packet"]
    s = doc["summary"]
    assert (s["dispute_id"], s["order_id"], s["state"], s["is_open"]) == (dp, order_id, "needs_response", True)
    due_iso = datetime.fromisoformat(s["evidence_due_by"])
    assert int(due_iso.timestamp()) == due and s["evidence_overdue"] is False
    assert s["refund_policy_version"] == "tw-2025.1" and s["missing"] == []
    assert doc["dispute"]["state_history"][0]["state"] == "needs_response"
    assert int(datetime.fromisoformat(doc["dispute"]["evidence_due_by"]).timestamp()) == due
    order = doc["order"]
    assert (order["order_id"], order["status"], order["merchant_id"]) == (order_id, "completed", merchant)
    assert order["customer_id"] == customer and order["address"]["city"] == ADDRESS["city"]
    assert order["settled_total"] == {"amount": 90000, "currency": "TWD"}
    bill = doc["bill"]
    assert bill["kind"] == "final" and bill["confirmed_revision"] == 1 and bill["labour"]["minutes"] == 90
    assert bill["prepayment_bill"]["kind"] == "prepayment"
    kinds = [p["kind"] for p in doc["service_documentation"]]
    assert kinds == ["merchant_accepted", "service_started", "bill_pushed", "bill_confirmed_by_customer",
                     "service_completed"]
    started = doc["service_documentation"][1]
    assert started["merchant_id"] == merchant and started["actor"] == merchant and started["role"] == "merchant"
    comms = [c["kind"] for c in doc["customer_communication"]]
    assert comms == ["order_placed", "prepayment_requested", "bill_presented", "bill_confirmed"]
    policy = doc["refund_policy"]
    assert policy["version"] == "tw-2025.1" and "less than 24 h" in policy["text"]
    assert "placed" in policy["applies_because"]
    log = doc["activity_log"]
    streams = {e["stream_id"].split("-", 1)[0] for e in log}
    assert {"order", "bill", "transaction", "payment", "dispute", "upstream"} <= streams
    assert all(e["actor"] and e["role"] and e["recorded_at"] for e in log)
    times = [e["recorded_at"] for e in log]
    assert times == sorted(times, key=lambda t: datetime.fromisoformat(t))
    assert doc["stripe_evidence"]["service_date"] is not None and doc["stripe_evidence"]["refund_policy"]
    assert doc["transaction"]["refunds_frozen"] is True and len(doc["transaction"]["held_refunds"]) == 1
    assert {n["evidence"] for n in doc["not_available"]} >= {"customer_name, customer_email_address",
                                                             "refund_policy_disclosure"}
    assert doc["packet"]["format"] == "closeloop.dispute-evidence"


async def test_the_list_filters_by_state_and_overdue_deadlines(client: PlatformClient, stack: Any) -> None:
    placed = await placed_order(client)
    charge = await prepay(client, stack, placed)
    late, fresh = stripe_id("dp"), stripe_id("dp")
    now = int(time.time())
    await send(client, stack, dispute_event("charge.dispute.created", late, charge, status="needs_response",
                                            due_by=now - 3600, amount=1000))
    await send(client, stack, dispute_event("charge.dispute.created", fresh, charge, status="needs_response",
                                            due_by=now + DUE_IN, amount=1000))
    overdue = (await get(client, stack, "/disputes", overdue="true", order_id=placed["order_id"])).json()["items"]
    assert [d["dispute_id"] for d in overdue] == [late] and overdue[0]["evidence_overdue"] is True
    not_overdue = (await get(client, stack, "/disputes", overdue="false", order_id=placed["order_id"])).json()
    assert [d["dispute_id"] for d in not_overdue["items"]] == [fresh]
    by_state = (await get(client, stack, "/disputes", state="needs_response", limit=500)).json()["items"]
    assert {late, fresh} <= {d["dispute_id"] for d in by_state}
    assert all(d["state"] == "needs_response" for d in by_state)
    page = (await get(client, stack, "/disputes", order_id=placed["order_id"], limit=1)).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = (await get(client, stack, "/disputes", order_id=placed["order_id"], cursor=page["next_cursor"])).json()
    assert {d["dispute_id"] for d in page["items"] + rest["items"]} == {late, fresh} and rest["next_cursor"] is None
    bad = await get(client, stack, "/disputes", state="pending")
    assert bad.status_code == 422 and bad.json()["error"]["details"]["fields"][0]["field"] == "state"
    bad_cursor = await get(client, stack, "/disputes", cursor="nonsense")
    assert bad_cursor.status_code == 422 and bad_cursor.json()["error"]["details"]["fields"][0]["field"] == "cursor"


async def test_an_unknown_dispute_is_404_and_a_malformed_id_422(client: PlatformClient, stack: Any) -> None:
    unknown = stripe_id("dp")
    for path in (f"/disputes/{unknown}", f"/disputes/{unknown}/evidence-packet"):
        r = await get(client, stack, path)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found" and r.json()["error"]["details"]["dispute_id"] == unknown
    r = await get(client, stack, "/disputes/not-a-stripe-id!")
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "dispute_id"
