"""The `make run` demo, drawn from the O2O seed (002):

A. A prepaid home dish-washing order: booked for tomorrow 19:00 (the after-dinner
   window requires prepayment), prepaid with a voucher and a card, accepted, started;
   the merchant pushes a bill of 150 minutes plus detergent, the customer disputes it,
   the merchant adjusts it to 135 minutes, the customer confirms, settlement collects
   the shortfall: completed.
B. Another order, whose customer has a low credit score (prepayment required), is
   prepaid and then cancelled by the customer about 30 hours before the service:
   cancelled, customer's fault, with the time left recorded for the penalty.

The payments service arrives in a later issue; meanwhile PaymentsFeed publishes its
contract events to Kafka (see libs/devstack/client.py).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rich.table import Table

from libs.devstack.client import PaymentsFeed, PlatformClient
from libs.domain.money import Money
from services.payments.domain import events as pay

TZ = ZoneInfo("Asia/Taipei")
ADDRESS = {"line1": "復興南路一段 100 號 5 樓", "district": "大安區", "city": "臺北市", "postal_code": "106"}


def _ceil_minute(t: datetime) -> datetime:
    return (t + timedelta(minutes=1)).replace(second=0, microsecond=0)


def _twd(amount: int) -> Money:
    return Money(amount=amount, currency="TWD")


async def run_demo(endpoints: dict[str, Any]) -> dict[str, Any]:
    services = endpoints["services"]
    client = PlatformClient(services["orders"], services["projector"])
    feed = PaymentsFeed(endpoints["kafka_bootstrap_servers"])
    await feed.start()
    run = secrets.token_hex(3)
    try:
        a = await _prepaid_order_with_adjusted_bill(client, feed, run)
        b = await _customer_cancels_30_hours_before(client, feed, run)
    finally:
        await feed.stop()
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


async def _prepaid_order_with_adjusted_bill(client: PlatformClient, feed: PaymentsFeed, run: str) -> dict[str, Any]:
    customer, staff, merchant = f"cust-lin-{run}", f"staff-wang-{run}", f"merchant-wang-{run}"
    tomorrow = (datetime.now(TZ) + timedelta(days=1)).date()
    start = datetime(tomorrow.year, tomorrow.month, tomorrow.day, 19, 0, tzinfo=TZ)
    placed = await client.command("/orders", {
        "customer_id": customer, "staff_id": staff, "service_code": "dishwash-standard",
        "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()},
        "address": ADDRESS, "voucher_ids": ["vch-newcomer-100"], "use_member_balance": False,
    }, actor=customer, role="customer", idempotency_key=f"demo-{run}-a")
    oid, prepay_bill = placed["order_id"], placed["prepayment_bill_id"]
    estimate = placed["estimated_total"]
    now = datetime.now(UTC)
    await feed.publish(pay.PaymentAttemptStarted(order_id=oid, bill_id=prepay_bill, attempt_id=f"att-{run}-1",
                                                 amount=Money(**estimate), method="credit_card", at=now))
    await client.wait_for_status(oid, "processing")
    await feed.publish(pay.PrepaymentCaptured(
        order_id=oid, bill_id=prepay_bill, amount=Money(**estimate), captured_at=datetime.now(UTC),
        tenders=[pay.Tender(kind=pay.TenderKind.VOUCHER, amount=_twd(10000), reference="vch-newcomer-100"),
                 pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=_twd(estimate["amount"] - 10000),
                            reference=f"pi_demo_{run}")]))
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
    total = Money(**bill["total"])
    shortfall = _twd(total.amount - estimate["amount"])
    await feed.publish(pay.BillSettled(
        order_id=oid, bill_id=bill["bill_id"], total=total, refunded=_twd(0), collected=shortfall,
        settled_at=datetime.now(UTC),
        tenders=[pay.Tender(kind=pay.TenderKind.VOUCHER, amount=_twd(10000), reference="vch-newcomer-100"),
                 pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=_twd(estimate["amount"] - 10000),
                            reference=f"pi_demo_{run}"),
                 pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=shortfall, reference=f"pi_demo_{run}_2")]))
    final = await client.wait_for_status(oid, "completed")
    return {"order_id": oid, "story": "prepaid dish-washing, bill adjusted 150 -> 135 min and confirmed",
            "status": final["status"], "status_label": final["status_label"],
            "reasons": ", ".join(r["rule"] for r in final["prepayment_reasons"]),
            "money": f"estimate {_fmt(final['estimated_total'])}, prepaid {_fmt(final['prepaid_amount'])}, "
                     f"bill r{final['bill_revision']} {_fmt(final['bill_total'])}, "
                     f"settled {_fmt(final['settled_total'])}",
            "cancellation": "-", "read_model": final}


async def _customer_cancels_30_hours_before(client: PlatformClient, feed: PaymentsFeed, run: str) -> dict[str, Any]:
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
    await feed.publish(pay.PrepaymentCaptured(
        order_id=oid, bill_id=placed["prepayment_bill_id"], amount=Money(**placed["estimated_total"]),
        captured_at=datetime.now(UTC),
        tenders=[pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=Money(**placed["estimated_total"]),
                            reference=f"pi_demo_{run}_b")]))
    await client.wait_for_status(oid, "awaiting_confirmation")
    await client.command(f"/orders/{oid}/cancel", {"cancelled_by": "customer", "reason_code": "plans_changed",
                                                   "reason": "family trip moved"}, actor=customer, role="customer")
    final = await client.wait_for_status(oid, "cancelled")
    secs = final["seconds_before_service_start"]
    return {"order_id": oid, "story": "prepaid, then cancelled by the customer ~30 h before the service",
            "status": final["status"], "status_label": final["status_label"],
            "reasons": ", ".join(r["rule"] for r in final["prepayment_reasons"]),
            "money": f"prepaid {_fmt(final['prepaid_amount'])}",
            "cancellation": f"by {final['cancelled_by']}, fault {final['fault_party']}, "
                            f"{secs // 3600} h {secs % 3600 // 60} min before the start",
            "read_model": final}
