"""Payments end to end: a Stripe charge for an order's prepayment (through the signed webhook,
before or after the order reaches the payments service) prepays the order; the merchant's
bill settles along the seed's rules (多退少補): an excess is refunded at once, a shortfall
waits for its own payment; the orders service completes the order on the settlement."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import asyncpg
import pytest

from libs.devstack.client import PlatformClient
from libs.devstack.stripe import charge_succeeded
from services.payments.domain.signature import sign
from tests.e2e.conftest import WEBHOOK_SECRET
from tests.e2e.test_order_flow import order_body

pytestmark = pytest.mark.e2e


async def send(client: PlatformClient, stack: Any, event: dict[str, Any]) -> dict[str, Any]:
    body = json.dumps(event).encode()
    r = await client.http.post(f"{stack.url('payments')}/webhooks/stripe", content=body,
                               headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET, int(time.time())),
                                        "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    return r.json()


async def stream_types(pg_dsn: str, stream_id: str) -> list[str]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return [r["event_type"] for r in await conn.fetch(
            "SELECT event_type FROM events WHERE stream_id = $1 ORDER BY stream_version", stream_id)]
    finally:
        await conn.close()


async def prepaid_order(client: PlatformClient, stack: Any, *, charge_first: bool) -> tuple[str, str, str]:
    customer, merchant = f"c-{uuid.uuid4().hex[:8]}", f"m-{uuid.uuid4().hex[:8]}"
    body = order_body(customer, f"s-{uuid.uuid4().hex[:8]}", hour=19)  # after-dinner window: prepay
    if charge_first:
        # The provider's charge can reach us before the order does: it waits (parked), then applies.
        order_id = None
        placed = await client.command("/orders", body, actor=customer, role="customer", wait=False)
        order_id = placed["order_id"]
        await send(client, stack, charge_succeeded(order_id, amount=placed["estimated_total"]["amount"]))
    else:
        placed = await client.command("/orders", body, actor=customer, role="customer")
        order_id = placed["order_id"]
        deadline = time.monotonic() + 15
        while "TransactionOpened" not in await stream_types(stack.pg_dsn, f"transaction-{order_id}"):
            assert time.monotonic() < deadline, "payments never opened the transaction"
            await asyncio_sleep(0.05)
        await send(client, stack, charge_succeeded(order_id, amount=placed["estimated_total"]["amount"]))
    view = await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)
    assert view["prepaid_amount"] == placed["estimated_total"]
    return order_id, customer, merchant


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.mark.parametrize("charge_first", [False, True], ids=["order-first", "charge-first"])
async def test_a_stripe_charge_prepays_the_order_through_the_payments_service(client: PlatformClient, stack: Any,
                                                                              charge_first: bool) -> None:
    order_id, _, _ = await prepaid_order(client, stack, charge_first=charge_first)
    assert await stream_types(stack.pg_dsn, f"transaction-{order_id}") == [
        "TransactionOpened", "TransactionPrepaymentCaptured"]
    assert await stream_types(stack.pg_dsn, f"payment-{order_id}") == ["PrepaymentCaptured"]


async def test_a_bill_below_the_prepayment_settles_at_once_and_refunds_the_excess(client: PlatformClient,
                                                                                  stack: Any) -> None:
    order_id, customer, merchant = await prepaid_order(client, stack, charge_first=False)
    m = {"actor": merchant, "role": "merchant"}
    await client.command(f"/orders/{order_id}/accept", {"merchant_id": merchant}, **m)
    await client.command(f"/orders/{order_id}/start", {"merchant_id": merchant}, **m)
    await client.command(f"/orders/{order_id}/bill", {"merchant_id": merchant, "actual_minutes": 90}, **m)
    await client.command(f"/orders/{order_id}/bill/confirm", {"customer_id": customer, "revision": 1},
                         actor=customer, role="customer")
    done = await client.wait_for_status(order_id, "completed", timeout=20)
    assert done["settled_total"] == {"amount": 90000, "currency": "TWD"}  # 1.5 h at TWD 600.00
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        data = await conn.fetchval("SELECT data FROM events WHERE stream_id = $1 AND event_type = 'TransactionSettled'",
                                   f"transaction-{order_id}")
    finally:
        await conn.close()
    settled = json.loads(data)
    assert settled["refunded"] == {"amount": 30000, "currency": "TWD"}  # the excess, back to the card
    assert settled["collected"] == {"amount": 0, "currency": "TWD"}


async def test_a_bill_above_the_prepayment_waits_for_the_shortfall_then_completes(client: PlatformClient,
                                                                                  stack: Any) -> None:
    order_id, customer, merchant = await prepaid_order(client, stack, charge_first=False)
    m = {"actor": merchant, "role": "merchant"}
    await client.command(f"/orders/{order_id}/accept", {"merchant_id": merchant}, **m)
    await client.command(f"/orders/{order_id}/start", {"merchant_id": merchant}, **m)
    await client.command(f"/orders/{order_id}/bill", {"merchant_id": merchant, "actual_minutes": 150}, **m)
    await client.command(f"/orders/{order_id}/bill/confirm", {"customer_id": customer, "revision": 1},
                         actor=customer, role="customer")
    deadline = time.monotonic() + 15
    while "TransactionBilled" not in await stream_types(stack.pg_dsn, f"transaction-{order_id}"):
        assert time.monotonic() < deadline
        await asyncio_sleep(0.05)
    assert (await client.order(order_id))["status"] == "awaiting_payment"  # 300.00 still to pay
    # A charge of another amount does not settle it: it is recorded to be returned (and refunded).
    await send(client, stack, charge_succeeded(order_id, amount=29999))
    types = await stream_types(stack.pg_dsn, f"transaction-{order_id}")
    assert types[-1] == "TransactionPaymentToReturn" and "TransactionSettled" not in types
    await send(client, stack, charge_succeeded(order_id, amount=30000))
    done = await client.wait_for_status(order_id, "completed", timeout=20)
    assert done["settled_total"] == {"amount": 150000, "currency": "TWD"}
    assert await stream_types(stack.pg_dsn, f"payment-{order_id}") == ["PrepaymentCaptured", "BillSettled"]
    refunds = (await client.http.get(f"{stack.url('payments')}/payments/{order_id}/refunds")).json()["refunds"]
    assert [(r["source"], r["amount"]["amount"]) for r in refunds] == [("payment_to_return", 29999)]


async def test_a_shortfall_paid_before_payments_saw_the_bill_waits_for_it_then_settles(client: PlatformClient,
                                                                                      stack: Any) -> None:
    """The customer sees 待付款 in the orders read model and pays at once; the charge (naming the bill in
    its metadata) may reach payments before the confirmed bill does: it waits for the bill, then settles."""
    order_id, customer, merchant = await prepaid_order(client, stack, charge_first=False)
    m = {"actor": merchant, "role": "merchant"}
    await client.command(f"/orders/{order_id}/accept", {"merchant_id": merchant}, **m)
    await client.command(f"/orders/{order_id}/start", {"merchant_id": merchant}, **m)
    pushed = await client.command(f"/orders/{order_id}/bill", {"merchant_id": merchant, "actual_minutes": 150}, **m)
    bill_id = pushed["bill_id"]
    # Sent before the confirmation: payments cannot have billed the transaction yet.
    await send(client, stack, charge_succeeded(order_id, amount=30000, metadata={"bill_id": bill_id}))
    assert "TransactionSettled" not in await stream_types(stack.pg_dsn, f"transaction-{order_id}")
    await client.command(f"/orders/{order_id}/bill/confirm", {"customer_id": customer, "revision": 1},
                         actor=customer, role="customer")
    done = await client.wait_for_status(order_id, "completed", timeout=20)
    assert done["settled_total"] == {"amount": 150000, "currency": "TWD"}
    types = await stream_types(stack.pg_dsn, f"transaction-{order_id}")
    assert "TransactionPaymentToReturn" not in types and types.count("TransactionSettled") == 1


async def test_a_charge_for_a_cancelled_order_is_recorded_to_be_returned(client: PlatformClient,
                                                                          stack: Any) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    placed = await client.command("/orders", order_body(customer, f"s-{uuid.uuid4().hex[:8]}", hour=19),
                                  actor=customer, role="customer")
    order_id = placed["order_id"]
    await client.command(f"/orders/{order_id}/cancel", {"cancelled_by": "customer", "reason_code": "changed_mind"},
                         actor=customer, role="customer")
    deadline = time.monotonic() + 15
    while "TransactionVoided" not in await stream_types(stack.pg_dsn, f"transaction-{order_id}"):
        assert time.monotonic() < deadline, "payments never voided the transaction"
        await asyncio_sleep(0.05)
    await send(client, stack, charge_succeeded(order_id, amount=placed["estimated_total"]["amount"]))
    assert (await stream_types(stack.pg_dsn, f"transaction-{order_id}"))[-1] == "TransactionPaymentToReturn"
    assert (await client.order(order_id))["status"] == "cancelled"  # the order stays cancelled


async def test_a_platform_cancellation_close_to_the_start_refunds_all_and_issues_a_compensation_voucher(
        client: PlatformClient, stack: Any) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    # A slot about 20 h ahead: a merchant/platform-fault cancellation within 24 h earns late_cancellation.
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Taipei")
    start = (datetime.now(tz) + timedelta(hours=20)).replace(minute=0, second=0, microsecond=0)
    if start.hour >= 23:
        start = start.replace(hour=22)
    body = {**order_body(customer, f"s-{uuid.uuid4().hex[:8]}"),
            "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()}}
    await client.command(f"/customers/{customer}/credit-score", {"score": 300, "source": "t"}, actor="b",
                         role="service", method="PUT", wait=False)  # low score: prepayment required
    placed = await client.command("/orders", body, actor=customer, role="customer")
    order_id = placed["order_id"]
    await send(client, stack, charge_succeeded(order_id, amount=placed["estimated_total"]["amount"]))
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)
    await client.command(f"/orders/{order_id}/cancel", {"cancelled_by": "platform", "fault_party": "platform",
                                                        "reason_code": "no_merchant_available"},
                         actor="ops", role="platform")
    deadline = time.monotonic() + 15
    while "TransactionRefunded" not in (types := await stream_types(stack.pg_dsn, f"transaction-{order_id}")):
        assert time.monotonic() < deadline, types
        await asyncio_sleep(0.05)
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        plan = json.loads(await conn.fetchval(
            "SELECT data FROM events WHERE stream_id = $1 AND event_type = 'TransactionRefunded'",
            f"transaction-{order_id}"))["plan"]
        vouchers = await conn.fetch("SELECT stream_id, event_type, data FROM events WHERE stream_id LIKE $1",
                                    f"voucher-comp-{order_id}-%")
    finally:
        await conn.close()
    assert plan["penalty"]["amount"] == 0 and plan["refunded"] == placed["estimated_total"]  # all back
    rules = {c["rule"] for c in plan["compensation_vouchers"]}
    assert {"no_merchant_available", "late_cancellation"} <= rules
    assert sorted(json.loads(v["data"])["compensation"]["rule"] for v in vouchers) == sorted(
        c["rule"] for c in plan["compensation_vouchers"])
    assert all(v["event_type"] == "VoucherIssued" for v in vouchers)
