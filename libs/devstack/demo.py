"""The `make run` demo, drawn from the O2O seed (002):

A. A prepaid home dish-washing order: booked for tomorrow 19:00 (the after-dinner window
   requires prepayment), prepaid by card (a Stripe charge delivered to the signed
   webhook), accepted, started; the merchant pushes a bill of 150 minutes plus
   detergent, the customer disputes it, the merchant adjusts it to 135 minutes, the
   customer confirms, and the shortfall over the prepayment is charged (多退少補): completed.
B. Another order, whose customer has a low credit score (prepayment required), is
   prepaid and then cancelled by the customer about 30 hours before the service:
   cancelled, customer's fault; the payments service keeps half of the online-paid
   amount as the penalty (24 h <= T < 48 h) and refunds the rest along the original path.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rich.table import Table

from libs.devstack.client import PlatformClient
from libs.devstack.stripe import charge_succeeded, send_webhook
from libs.domain.money import Money

TZ = ZoneInfo("Asia/Taipei")
ADDRESS = {"line1": "復興南路一段 100 號 5 樓", "district": "大安區", "city": "臺北市", "postal_code": "106"}


def _ceil_minute(t: datetime) -> datetime:
    return (t + timedelta(minutes=1)).replace(second=0, microsecond=0)


def _twd(amount: int) -> Money:
    return Money(amount=amount, currency="TWD")


class Stripe:
    """Delivers Stripe-format events to the payments service's webhook, signed with the stack's secret."""

    def __init__(self, client: PlatformClient, endpoints: dict[str, Any]) -> None:
        self.client = client
        self.url = endpoints["stripe_webhook_url"]
        self.secret = endpoints["stripe_webhook_secret"]

    async def charge(self, order_id: str, amount: int) -> None:
        await send_webhook(self.client.http, self.url, self.secret, charge_succeeded(order_id, amount))


async def run_demo(endpoints: dict[str, Any]) -> dict[str, Any]:
    services = endpoints["services"]
    client = PlatformClient(services["orders"], services["projector"])
    stripe = Stripe(client, endpoints)
    run = secrets.token_hex(3)
    try:
        a = await _prepaid_order_with_adjusted_bill(client, stripe, run)
        b = await _customer_cancels_30_hours_before(client, stripe, run, endpoints["postgres_url"])
    finally:
        await client.aclose()
    table = Table(title="demo: final states (from the projector's read model)")
    for col in ("order", "story", "status", "prepayment because", "money", "cancellation"):
        table.add_column(col, overflow="fold")
    for row in (a, b):
        table.add_row(row["order_id"], row["story"], f"{row['status']} {row['status_label']}",
                      row["reasons"], row["money"], row["cancellation"])
    return {"orders": [a, b], "table": table,
            "links": {r["order_id"]: f"{services['projector']}/orders/{r['order_id']}" for r in (a, b)}}


def _fmt(m: dict[str, Any] | None) -> str:
    return str(Money(**m)) if m else "-"


async def _prepaid_order_with_adjusted_bill(client: PlatformClient, stripe: Stripe, run: str) -> dict[str, Any]:
    customer, staff, merchant = f"cust-lin-{run}", f"staff-wang-{run}", f"merchant-wang-{run}"
    tomorrow = (datetime.now(TZ) + timedelta(days=1)).date()
    start = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 19, 0, tzinfo=TZ)
    placed = await client.command("/orders", {
        "customer_id": customer, "staff_id": staff, "service_code": "dishwash-standard",
        "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()},
        "address": ADDRESS,
    }, actor=customer, role="customer", idempotency_key=f"demo-{run}-a")
    oid = placed["order_id"]
    estimate = placed["estimated_total"]
    await stripe.charge(oid, estimate["amount"])  # the card payment of the prepayment
    await client.wait_for_status(oid, "awaiting_confirmation")
    await client.command(f"/orders/{oid}/accept", {"merchant_id": merchant}, actor=merchant, role="merchant")
    await client.command(f"/orders/{oid}/start", {"merchant_id": merchant}, actor=merchant, role="merchant")
    detergent = [{"code": "detergent-eco", "description": "環保洗碗精 Eco detergent", "quantity": 1,
                  "unit_price": {"amount": 8000, "currency": "TWD"}}]
    await client.command(f"/orders/{oid}/bill", {"merchant_id": merchant, "actual_minutes": 150,
                                                 "materials": detergent}, actor=merchant, role="merchant")
    adjusted = await client.command(f"/orders/{oid}/bill/adjust", {
        "merchant_id": merchant, "actual_minutes": 135, "materials": detergent,
        "reason": "customer: the service took 2h15m, not 2h30m"}, actor=merchant, role="merchant")
    bill = adjusted["bill"]
    await client.command(f"/orders/{oid}/bill/confirm", {"customer_id": customer, "revision": bill["revision"]},
                         actor=customer, role="customer")
    await client.wait_for_status(oid, "awaiting_payment")
    shortfall = bill["total"]["amount"] - estimate["amount"]
    await stripe.charge(oid, shortfall)  # 少補: the customer pays the rest online
    final = await client.wait_for_status(oid, "completed")
    return {"order_id": oid, "story": "prepaid dish-washing, bill adjusted 150 -> 135 min and confirmed",
            "status": final["status"], "status_label": final["status_label"],
            "reasons": ", ".join(r["rule"] for r in final["prepayment_reasons"]),
            "money": f"estimate {_fmt(final['estimated_total'])}, prepaid {_fmt(final['prepaid_amount'])}, "
                     f"bill r{final['bill_revision']} {_fmt(final['bill_total'])}, "
                     f"shortfall charged {_fmt({'amount': shortfall, 'currency': 'TWD'})}, "
                     f"settled {_fmt(final['settled_total'])}",
            "cancellation": "-", "read_model": final}


async def _customer_cancels_30_hours_before(client: PlatformClient, stripe: Stripe, run: str,
                                            postgres_url: str) -> dict[str, Any]:
    customer, staff = f"cust-chen-{run}", f"staff-lee-{run}"
    await client.command(f"/customers/{customer}/credit-score", {"score": 520, "source": "demo-credit-bureau"},
                         actor="credit-bureau", role="service", method="PUT", wait=False)
    start = _ceil_minute(datetime.now(TZ) + timedelta(hours=30))
    if start.hour == 23:  # a one-hour slot must end by midnight; keep it on the same day
        start = start.replace(minute=0)
    placed = await client.command("/orders", {
        "customer_id": customer, "staff_id": staff, "service_code": "dishwash-standard",
        "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=1)).isoformat()},
        "address": ADDRESS,
    }, actor=customer, role="customer", idempotency_key=f"demo-{run}-b")
    oid = placed["order_id"]
    await stripe.charge(oid, placed["estimated_total"]["amount"])
    await client.wait_for_status(oid, "awaiting_confirmation")
    await client.command(f"/orders/{oid}/cancel", {"cancelled_by": "customer", "reason_code": "plans_changed",
                                                   "reason": "family trip moved"}, actor=customer, role="customer")
    final = await client.wait_for_status(oid, "cancelled")
    secs = final["seconds_before_service_start"]
    plan = await _refund_plan(postgres_url, oid)
    return {"order_id": oid, "story": "prepaid, then cancelled by the customer ~30 h before the service",
            "status": final["status"], "status_label": final["status_label"],
            "reasons": ", ".join(r["rule"] for r in final["prepayment_reasons"]),
            "money": f"prepaid {_fmt(final['prepaid_amount'])}, penalty {_fmt(plan.get('penalty'))}, "
                     f"refunded {_fmt(plan.get('refunded'))} (policy {plan.get('policy_version', '?')})",
            "cancellation": f"by {final['cancelled_by']}, fault {final['fault_party']}, "
                            f"{secs // 3600} h {secs % 3600 // 60} min before the start",
            "read_model": final}


async def _refund_plan(postgres_url: str, order_id: str, timeout: float = 30) -> dict[str, Any]:
    """The cancellation plan the payments service recorded (read from the event store)."""
    import asyncio
    import json

    import asyncpg

    deadline = asyncio.get_running_loop().time() + timeout
    conn = await asyncpg.connect(postgres_url)
    try:
        while True:
            data = await conn.fetchval("SELECT data FROM events WHERE stream_id = $1 AND event_type IN "
                                       "('TransactionRefunded', 'TransactionVoided')", f"transaction-{order_id}")
            if data is not None:
                return dict(json.loads(data)["plan"])
            if asyncio.get_running_loop().time() > deadline:
                return {}
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
