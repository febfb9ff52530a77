"""Member stored value (充X送Y): a top-up earns its bonus apart from paid-in money, the balance pays
an order's prepayment, and a cancellation refund goes back to the wallet it came from."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from libs.devstack.client import PlatformClient
from tests.e2e.test_order_flow import order_body
from tests.e2e.test_payments_flow import asyncio_sleep, stream_types

pytestmark = pytest.mark.e2e


async def test_balance_pays_the_prepayment_and_a_free_cancellation_refunds_it(client: PlatformClient,
                                                                             stack: Any) -> None:
    customer = f"c-{uuid.uuid4().hex[:8]}"
    payments = stack.url("payments")
    r = await client.http.post(f"{payments}/wallets/{customer}/top-ups",
                               json={"amount": {"amount": 300000, "currency": "TWD"}, "reference": f"tu-{customer}"},
                               headers={"X-Actor": customer})
    assert r.status_code == 200, r.text
    assert r.json()["paid_in"]["amount"] == 300000 and r.json()["bonus"]["amount"] == 40000  # 3,000 get 400
    await client.command(f"/customers/{customer}/credit-score", {"score": 300, "source": "t"}, actor="b",
                         role="service", method="PUT", wait=False)  # low score: prepayment required
    placed = await client.command("/orders", order_body(customer, f"s-{uuid.uuid4().hex[:8]}", hour=10, days=4),
                                  actor=customer, role="customer")
    order_id = placed["order_id"]
    deadline = time.monotonic() + 15
    while "TransactionOpened" not in await stream_types(stack.pg_dsn, f"transaction-{order_id}"):
        assert time.monotonic() < deadline
        await asyncio_sleep(0.05)
    paid = await client.http.post(f"{payments}/payments/{order_id}/prepay-with-balance", headers={"X-Actor": customer})
    assert paid.status_code == 200, paid.text
    assert paid.json()["wallet"]["paid_in"]["amount"] == 300000 - 120000  # paid-in money is spent first
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)

    again = await client.http.post(f"{payments}/payments/{order_id}/prepay-with-balance", headers={"X-Actor": customer})
    assert again.status_code == 422  # nothing left to prepay

    # Four days ahead: a customer cancellation is free (T >= 48 h); the money goes back to the wallet.
    await client.command(f"/orders/{order_id}/cancel", {"cancelled_by": "customer", "reason_code": "plans_changed"},
                         actor=customer, role="customer")
    deadline = time.monotonic() + 15
    while (await client.http.get(f"{payments}/wallets/{customer}")).json()["paid_in"]["amount"] != 300000:
        assert time.monotonic() < deadline, "the refund never reached the wallet"
        await asyncio_sleep(0.05)
    assert (await client.http.get(f"{payments}/wallets/{customer}")).json()["total"]["amount"] == 340000
