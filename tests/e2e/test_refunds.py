"""Refunds executed end to end, through the running stack and the signed Stripe webhook: every refund
a transaction decides (a settlement's excess, a cancellation's refund, customer service's refund)
becomes one refund on its way back along the original path; the provider's reports move it on
(matched by our metadata, or by payment and amount), repeated reports change nothing, a failed one
is retried; concurrent duplicate refund requests produce exactly one refund; a refund made at the
provider is recorded and never refunded again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from libs.devstack.client import PlatformClient
from libs.devstack.stripe import stripe_id
from tests.e2e.test_disputes import cancel, placed_order, prepay, send, tx_has, uid, until
from tests.e2e.test_payments_commands import bill_and_confirm
from tests.e2e.test_payments_flow import prepaid_order

pytestmark = pytest.mark.e2e

CS = {"X-Actor": "cs-agent-7", "X-Role": "platform"}


def refund_event(type_: str, refund_id: str, payment_intent: str, amount: int, status: str, *,
                 metadata: dict[str, str] | None = None, failure_reason: str | None = None) -> dict[str, Any]:
    """A refund event as Stripe sends it (`charge.refund.updated` / `refund.updated`): the refund object."""
    now = int(time.time())
    return {"id": stripe_id("evt"), "object": "event", "api_version": "2024-06-20", "created": now,
            "livemode": False, "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
            "type": type_, "data": {"object": {
                "id": refund_id, "object": "refund", "amount": amount, "currency": "twd", "status": status,
                "created": now - 5, "charge": None, "payment_intent": payment_intent, "reason": "requested_by_customer",
                "failure_reason": failure_reason, "metadata": metadata or {}}}}


async def refunds_of(client: PlatformClient, stack: Any, order_id: str) -> list[dict[str, Any]]:
    r = await client.http.get(f"{stack.url('payments')}/payments/{order_id}/refunds")
    assert r.status_code == 200, r.text
    return list(r.json()["refunds"])


async def settle_below_the_prepayment(client: PlatformClient, stack: Any) -> tuple[str, str]:
    """A prepaid (TWD 1,200.00 by card) order billed TWD 900.00: settled at once, TWD 300.00 excess."""
    order_id, customer, merchant = await prepaid_order(client, stack, charge_first=False)
    await bill_and_confirm(client, order_id, customer, merchant, minutes=90)
    await client.wait_for_status(order_id, "completed", timeout=20)
    [captured] = await tx_has(stack, order_id, "TransactionPrepaymentCaptured")
    return order_id, captured["tenders"][0]["reference"]


async def test_a_settlement_excess_goes_back_to_the_card_and_the_providers_reports_complete_it(
        client: PlatformClient, stack: Any) -> None:
    order_id, payment = await settle_below_the_prepayment(client, stack)
    [refund] = await until("refund requested", lambda: refunds_of(client, stack, order_id))
    assert (refund["source"], refund["kind"], refund["reference"], refund["amount"], refund["status"],
            refund["provider"]) == ("settlement", "third_party", payment, {"amount": 30000, "currency": "TWD"},
                                    "requested", "stripe")
    queue = (await client.http.get(f"{stack.url('payments')}/refunds",
                                   params={"status": "requested", "provider": "stripe", "limit": 500})).json()
    assert refund["refund_id"] in [q["refund_id"] for q in queue["refunds"]]

    # Stripe accepts the refund (pending), then it succeeds; the report carries no metadata of ours
    # (made by a connector that does not set it): found by payment and amount.
    re_id = stripe_id("re")
    await send(client, stack, refund_event("refund.created", re_id, payment, 30000, "pending"))
    [pending] = await refunds_of(client, stack, order_id)
    assert pending["status"] == "pending" and pending["provider_refund_id"] == re_id
    done = refund_event("charge.refund.updated", re_id, payment, 30000, "succeeded")
    await send(client, stack, done)
    [succeeded] = await refunds_of(client, stack, order_id)
    assert succeeded["status"] == "succeeded"
    # The same report again, and a stale pending one afterwards, change nothing.
    await send(client, stack, done)
    await send(client, stack, refund_event("refund.updated", re_id, payment, 30000, "pending"))
    assert await refunds_of(client, stack, order_id) == [succeeded]
    stream = await tx_has(stack, order_id, "TransactionExternalRefund")
    assert stream == []  # ours, so not recorded as someone else's


async def test_a_cancellation_refund_that_fails_is_retried_and_then_succeeds(client: PlatformClient,
                                                                            stack: Any) -> None:
    placed = await placed_order(client, hours_ahead=30)  # 24-48 h: half of the online-paid amount is kept
    order_id, paid = placed["order_id"], placed["estimated_total"]["amount"]
    charge = await prepay(client, stack, placed)
    await cancel(client, placed)
    [refund] = await until("refund requested", lambda: refunds_of(client, stack, order_id))
    assert refund["source"] == "cancellation" and refund["amount"]["amount"] == paid - paid // 2
    rid, payment = refund["refund_id"], charge["payment_intent"]

    # Our connector sets metadata.closeloop_refund_id: the report names the refund directly.
    meta = {"closeloop_refund_id": rid, "order_id": order_id}
    await send(client, stack, refund_event("refund.failed", "re_first" + uid(), payment, refund["amount"]["amount"],
                                           "failed", metadata=meta, failure_reason="expired_or_canceled_card"))
    [failed] = await refunds_of(client, stack, order_id)
    assert failed["status"] == "failed" and failed["failure_reason"] == "expired_or_canceled_card"
    failed_queue = (await client.http.get(f"{stack.url('payments')}/refunds", params={"status": "failed"})).json()
    assert rid in [q["refund_id"] for q in failed_queue["refunds"]]

    url = f"{stack.url('payments')}/refunds/{rid}/retry"
    denied = await client.http.post(url, json={"reason": "card updated"}, headers={"X-Actor": placed["customer_id"],
                                                                                   "X-Role": "customer"})
    assert denied.status_code == 403
    retried = await client.http.post(url, json={"reason": "the customer updated their card"}, headers=CS)
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"refund_id": rid, "status": "requested", "attempt": 2}
    await send(client, stack, refund_event("refund.updated", "re_second" + uid(), payment,
                                           refund["amount"]["amount"], "succeeded", metadata=meta))
    [ok] = await refunds_of(client, stack, order_id)
    assert ok["status"] == "succeeded" and ok["attempt"] == 2
    again = await client.http.post(url, json={"reason": "again"}, headers=CS)
    assert again.status_code == 409  # only a failed refund is retried


async def test_concurrent_duplicate_refund_requests_for_one_order_produce_exactly_one_refund(
        client: PlatformClient, stack: Any) -> None:
    order_id, payment = await settle_below_the_prepayment(client, stack)  # TWD 900.00 paid by card
    url = f"{stack.url('payments')}/payments/{order_id}/refunds"
    body = {"amount": {"amount": 50000, "currency": "TWD"}, "reason": "the service started an hour late"}

    # The same request sent eight times at once (a double-click, a client retrying): one refund.
    key = {**CS, "Idempotency-Key": f"cs-refund-{uid()}"}
    same = await asyncio.gather(*[client.http.post(url, json=body, headers=key) for _ in range(8)])
    assert [r.status_code for r in same] == [200] * 8, [r.text for r in same if r.status_code != 200]
    assert len({r.json()["refund_request_id"] for r in same}) == 1
    assert len(await tx_has(stack, order_id, "TransactionRefundIssued")) == 1

    # Eight different requests at once for what is left (TWD 400.00): exactly one passes the cap.
    rest = {**body, "amount": {"amount": 40000, "currency": "TWD"}}
    racing = await asyncio.gather(*[client.http.post(url, json=rest, headers={**CS, "Idempotency-Key": f"k-{uid()}"})
                                    for _ in range(8)])
    assert sorted(r.status_code for r in racing) == [200] + [422] * 7, [r.text for r in racing]
    refused = next(r for r in racing if r.status_code == 422).json()["error"]
    assert refused["details"]["fields"][0]["field"] == "amount" and "TWD 0.00" in refused["message"]

    issued = await tx_has(stack, order_id, "TransactionRefundIssued")
    assert sorted(e["amount"]["amount"] for e in issued) == [40000, 50000]  # never above the TWD 900.00 paid
    refunds = [r for r in await refunds_of(client, stack, order_id) if r["source"] == "issued"]
    assert sorted(r["amount"]["amount"] for r in refunds) == [40000, 50000]
    assert {r["reference"] for r in refunds} == {payment}

    # Refused without an Idempotency-Key, for another role, in another currency: nothing stored.
    no_key = await client.http.post(url, json=body, headers=CS)
    assert no_key.status_code == 422 and no_key.json()["error"]["details"]["fields"][0]["field"] == "Idempotency-Key"
    customer = await client.http.post(url, json=body, headers={"X-Actor": "c-1", "X-Role": "customer",
                                                               "Idempotency-Key": uid()})
    assert customer.status_code == 403
    usd = await client.http.post(url, json={**body, "amount": {"amount": 1, "currency": "USD"}},
                                 headers={**CS, "Idempotency-Key": uid()})
    assert usd.status_code == 422 and "currency" in usd.text
    assert len(await tx_has(stack, order_id, "TransactionRefundIssued")) == 2


async def test_a_refund_made_at_the_provider_is_recorded_and_lowers_what_can_be_refunded(
        client: PlatformClient, stack: Any) -> None:
    order_id, payment = await settle_below_the_prepayment(client, stack)
    re_id = stripe_id("re")
    out = await send(client, stack, refund_event("refund.updated", re_id, payment, 12300, "succeeded"))
    assert out["fact"] == "UpstreamRefundUpdated"
    [ext] = await until("external refund", lambda: tx_has(stack, order_id, "TransactionExternalRefund"))
    assert ext["provider_refund_id"] == re_id and ext["amount"]["amount"] == 12300 and ext["reference"] == payment
    await send(client, stack, refund_event("refund.updated", re_id, payment, 12300, "succeeded"))
    assert len(await tx_has(stack, order_id, "TransactionExternalRefund")) == 1
    view = (await client.http.get(f"{stack.url('payments')}/payments/{order_id}")).json()
    assert view["refundable"] == {"amount": 90000 - 12300, "currency": "TWD"}
    too_much = await client.http.post(f"{stack.url('payments')}/payments/{order_id}/refunds",
                                      json={"amount": {"amount": 90000 - 12300 + 1, "currency": "TWD"},
                                            "reason": "all of it"}, headers={**CS, "Idempotency-Key": uid()})
    assert too_much.status_code == 422


async def test_a_free_cancellation_returns_the_voucher_and_credits_the_balance_back(client: PlatformClient,
                                                                                   stack: Any) -> None:
    from tests.e2e.test_payments_commands import Payments, place, who
    from tests.e2e.test_payments_commands import uid as cuid

    pay = Payments(client, stack)
    customer = cuid("c")
    await pay.top_up(customer, 100000)  # paid-in 1,000.00 + bonus 100.00
    voucher_id = cuid("v")
    await pay.issue(customer, voucher_id, 20000, days=30)
    order_id = await place(client, pay, customer)  # three days ahead: a customer cancellation is free
    await pay.ok(f"/payments/{order_id}/prepay", {"use_vouchers": True, "use_balance": True},
                 who(customer, "customer", **{"Idempotency-Key": cuid("k")}))
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)
    await client.command(f"/orders/{order_id}/cancel", {"cancelled_by": "customer", "reason_code": "plans_changed"},
                         actor=customer, role="customer")
    # The balance part (TWD 1,000.00) comes back to the wallet as a refund that succeeded at once; the
    # voucher comes back as a voucher, usable again.
    [refund] = await until("balance refund", lambda: refunds_of(client, stack, order_id))
    assert (refund["kind"], refund["amount"]["amount"], refund["status"], refund["provider"]) == (
        "member_balance", 100000, "succeeded", None)
    wallet = (await client.http.get(f"{stack.url('payments')}/wallets/{customer}")).json()
    assert wallet["total"]["amount"] == 110000
    vouchers = {x["voucher_id"]: x for x in (await pay.get(f"/customers/{customer}/vouchers")).json()["vouchers"]}
    assert vouchers[voucher_id]["status"] == "returned" and vouchers[voucher_id]["usable_now"] is True


async def test_the_merchants_record_counts_fault_cancellations_and_the_compensation_owed(
        client: PlatformClient, stack: Any) -> None:
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from tests.e2e.test_order_flow import order_body

    merchant = f"m-{uid()}"
    tz = ZoneInfo("Asia/Taipei")
    # Within 24 h, outside the after-dinner prepayment window: the next hour from 09:00 to 16:00, 3 h ahead.
    start = (datetime.now(tz) + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    while not 9 <= start.hour <= 16:
        start += timedelta(hours=1)
    slot = {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}
    m = {"actor": merchant, "role": "merchant"}

    # An order without prepayment, accepted, then cancelled by the customer within 24 h: the platform
    # owes the merchant the policy's compensation; a second one cancelled by the merchant: a fault.
    orders = []
    for _ in range(2):
        customer = f"c-{uid()}"
        placed = await client.command("/orders", {**order_body(customer, f"s-{uid()}"), "slot": slot},
                                      actor=customer, role="customer")
        await client.wait_for_status(placed["order_id"], "awaiting_confirmation", timeout=20)
        await client.command(f"/orders/{placed['order_id']}/accept", {"merchant_id": merchant}, **m)
        orders.append((placed["order_id"], customer))
    (late, customer), (faulty, _) = orders
    await client.command(f"/orders/{late}/cancel", {"cancelled_by": "customer", "reason_code": "plans_changed"},
                         actor=customer, role="customer")
    await client.command(f"/orders/{faulty}/cancel", {"cancelled_by": "merchant", "merchant_id": merchant,
                                                      "reason_code": "staff_sick"}, **m)

    async def record() -> dict[str, Any] | None:
        r = await client.http.get(f"{stack.url('payments')}/merchants/{merchant}/record")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if len(body["entries"]) == 2 else None

    rec = await until("merchant record", record)
    assert rec["fault_cancellations"] == 1
    kinds = {e["order_id"]: e for e in rec["entries"]}
    assert kinds[faulty]["kind"] == "fault_cancellation" and kinds[faulty]["reason_code"] == "staff_sick"
    owed = kinds[late]
    assert owed["kind"] == "compensation_owed" and owed["amount"]["amount"] > 0 and owed["policy_version"]
    assert rec["compensation_owed"] == [owed["amount"]]
