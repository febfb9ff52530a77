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
C. The Kolable war room (seed 000): Wade imports an export of six course orders of 5/12-5/21,
   Stripe reports the rest through the signed webhook (a student re-buys a refunded course; a
   card dispute on another order), and Louis decides to pursue one refund. The demo prints each
   order's status with its reason and next step, and the reconciliation scorecard.
D. The after-sales seed (001): the mouse replaced under warranty (libs/devstack/demo_mouse.py),
   with the link to its tracking page.
E. The daily reconciliation run on demand over all of it (libs/devstack/demo_reconcile.py): how long
   it took, what it replayed and found, with the links to its report and to the operations console.
"""

from __future__ import annotations

import csv
import io
import secrets
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rich.table import Table

from libs.devstack.client import PlatformClient
from libs.devstack.demo_mouse import run_mouse_story
from libs.devstack.demo_reconcile import run_reconciliation
from libs.devstack.demo_tokens import demo_auth
from libs.devstack.stripe import charge_succeeded, dispute_created, send_webhook
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
        await self.send(charge_succeeded(order_id, amount))

    async def send(self, event: dict[str, Any]) -> None:
        await send_webhook(self.client.http, self.url, self.secret, event)


async def run_demo(endpoints: dict[str, Any], secret_key: str) -> dict[str, Any]:
    """Every request carries a bearer token: the demo tokens of dev.json (Wade, Louis, the auditor's for
    the reads), and tokens minted for each story's own customers and merchants."""
    services = endpoints["services"]
    tokens, auth = demo_auth(endpoints, secret_key)
    client = PlatformClient(services["orders"], services["projector"], auth=auth)
    stripe = Stripe(client, endpoints)
    run = secrets.token_hex(3)
    try:
        a = await _prepaid_order_with_adjusted_bill(client, stripe, run)
        b = await _customer_cancels_30_hours_before(client, stripe, run, endpoints["postgres_url"])
        c = await _kolable_war_room(client, stripe, run, services["payments"])
        d = await run_mouse_story(endpoints, endpoints["carrier_webhook_secret"], auth) if "rma" in services \
            else None
        e = await run_reconciliation(services["projector"], auth)
    finally:
        await client.aclose()
        await tokens.aclose()
    table = Table(title="demo: final states (from the projector's read model)")
    for col in ("order", "story", "status", "prepayment because", "money", "cancellation"):
        table.add_column(col, overflow="fold")
    for row in (a, b):
        table.add_row(row["order_id"], row["story"], f"{row['status']} {row['status_label']}",
                      row["reasons"], row["money"], row["cancellation"])
    tables = [table, c["table"], c["scorecard_table"]] + ([d["table"]] if d else []) + [e["table"]]
    links = {**{r["order_id"]: f"{services['projector']}/orders/{r['order_id']}" for r in (a, b)},
             "kolable scorecard": f"{services['payments']}/kolable/reconciliation/scorecard"}
    if d:
        links["mouse tracking page"] = d["tracking_page"]
    links["reconciliation report"] = e["report"]
    return {"orders": [a, b], "kolable": c, "mouse": d, "reconciliation": e, "tables": tables, "links": links}


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
    # 少補: the customer pays the rest online; the charge names the bill, so it settles it even when it
    # reaches payments before the confirmed bill does.
    await stripe.send(charge_succeeded(oid, shortfall, metadata={"bill_id": bill["bill_id"]}))
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


# --- C. the Kolable war room -------------------------------------------------------------------

KOLABLE_COLUMNS = ["order_id", "student_id", "course_id", "amount", "currency", "ordered_at", "payment_status",
                   "paid_at", "payment_ref", "refunded_amount", "refunded_at", "dispute_status", "disputed_at",
                   "line_thread", "notes"]
COURSE = "kolable-pro-28000"  # the 28,000 training cohort


def _taipei(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 5, day, hour, minute, tzinfo=TZ)


async def _kolable_war_room(client: PlatformClient, stripe: Stripe, run: str, payments: str) -> dict[str, Any]:
    """Import Wade's export, let Stripe report the rest, and show the scorecard (seed 000)."""
    k = f"KOL-{run}"

    def row(n: int, student: str, status: str = "paid", *, paid: datetime = _taipei(12, 10, 5),
            refunded_at: datetime | None = None, ref: str | None = None, line: str = "") -> dict[str, str]:
        return {"order_id": f"{k}-{n:03d}", "student_id": student, "course_id": COURSE, "amount": "28000",
                "currency": "TWD", "ordered_at": (paid - timedelta(minutes=5)).isoformat(), "payment_status": status,
                "paid_at": paid.isoformat(), "payment_ref": ref or f"pi_{run}{n:03d}", "refunded_amount": "",
                "refunded_at": refunded_at.isoformat() if refunded_at else "", "dispute_status": "none",
                "disputed_at": "", "line_thread": line, "notes": ""}

    disputed_pi, disputed_ch = f"pi_{run}004", f"ch_{run}004"
    rows = [
        row(1, f"stu-lin-{run}"),
        row(2, f"stu-wu-{run}", "refunded", refunded_at=_taipei(14, 15), line=f"line://chat/wu-{run}"),
        row(3, f"stu-huang-{run}", "refunded", refunded_at=_taipei(13, 11), line=f"line://chat/huang-{run}"),
        row(4, f"stu-tsai-{run}", paid=_taipei(15, 9), ref=disputed_pi, line=f"line://chat/tsai-{run}"),
        row(5, ""),  # the export lost the student id: Wade fills it in (D1)
        row(6, f"stu-ko-{run}", paid=_taipei(20, 21)),
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=KOLABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    wade = {"X-Actor": "wade", "X-Role": "importer", "Content-Type": "text/csv"}
    imported = await client.http.post(f"{payments}/kolable/orders/import", content=out.getvalue().encode(),
                                      headers=wade)
    imported.raise_for_status()

    # Stripe: Huang bought the course again after the refund (a new order, 5/16); Tsai's bank opened a
    # dispute on the charge of order 004 (its charge is reported first, so the dispute finds the order).
    rebuy = f"{k}-007"
    meta = {"student_id": f"stu-huang-{run}", "course_id": COURSE}
    await stripe.send(charge_succeeded(rebuy, 2800000, metadata=meta, created=int(_taipei(16, 10).timestamp())))
    charge = charge_succeeded(f"{k}-004", 2800000, metadata={"student_id": f"stu-tsai-{run}", "course_id": COURSE},
                              charge_id=disputed_ch, payment_intent_id=disputed_pi,
                              created=int(_taipei(15, 9).timestamp()))
    await stripe.send(charge)
    await stripe.send(dispute_created(charge, created=int(_taipei(21, 18).timestamp())))

    # Louis pursues Wu's refund.
    louis = {"X-Actor": "louis", "X-Role": "approver"}
    decided = await client.http.post(f"{payments}/kolable/refund-decisions", headers=louis, json={
        "order_id": f"{k}-002", "decision": "pursue", "reason": "學員仍在上課,退刷後未重買,需補收"})
    decided.raise_for_status()

    card = (await client.http.get(f"{payments}/kolable/reconciliation/scorecard")).json()
    mine = {a["order_id"]: a for a in card["needing_action"] if a["order_id"].startswith(k)}
    table = Table(title="demo C: Kolable refund/re-buy war room (seed 000)")
    for col in ("order", "status", "why", "next step (owner)"):
        table.add_column(col, overflow="fold")
    statuses: dict[str, str] = {}
    for n in (1, 2, 3, 4, 5, 6, 7):
        oid = f"{k}-{n:03d}"
        c = await _classification(client, payments, oid)
        statuses[oid] = c["status"]
        owner = mine.get(oid, {}).get("owner_name") or {"importer": "Wade", "reconciler": "Huber",
                                                        "approver": "Louis"}[c["owner"]]
        table.add_row(oid, c["status"], c["reason"], f"{c['next_step_en']} ({owner})")
    score = Table(title="Kolable reconciliation scorecard (GET /kolable/reconciliation/scorecard)")
    for col in ("status", "orders", "amount", "cash gap"):
        score.add_column(col)
    for line in card["by_status"]:
        score.add_row(line["status"], str(line["count"]), _amounts(line["amount"]), _amounts(line["cash_gap"]))
    score.add_row("total", str(card["orders"]), "", _amounts(card["cash_gap"]))
    score.caption = (f"recovered by re-buys {_amounts(card['recovered_by_rebuy'])} ({card['rebuys']} re-buys); "
                     f"needing action {len(card['needing_action'])}; "
                     f"to collect {len(card['collection_list'])}")
    return {"orders": statuses, "import": imported.json(), "scorecard": card, "table": table,
            "scorecard_table": score}


def _amounts(amounts: dict[str, Any]) -> str:
    return ", ".join(str(Money(**m)) for m in amounts.values()) or "-"


async def _classification(client: PlatformClient, payments: str, order_id: str,
                          timeout: float = 15) -> dict[str, Any]:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        r = await client.http.get(f"{payments}/kolable/orders/{order_id}")
        if r.status_code == 200:
            return dict(r.json()["classification"])
        if asyncio.get_running_loop().time() > deadline:
            r.raise_for_status()
        await asyncio.sleep(0.1)
