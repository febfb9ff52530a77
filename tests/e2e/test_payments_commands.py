"""The payments service's command and query API end to end (seed 一-五), through the running stack:
cashier attempts move the order and its bill (and back when abandoned), a prepayment paid with the
best voucher and the member balance, settlements 多退少補 with exact tenders, a shortfall from the
balance, cash confirmed by the merchant (已確認), previews that equal what the commands then do,
and bad input refused with nothing stored."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from libs.devstack.client import PlatformClient
from libs.devstack.stripe import charge_succeeded
from tests.e2e.test_order_flow import order_body
from tests.e2e.test_payments_flow import asyncio_sleep, send

pytestmark = pytest.mark.e2e

TZ = ZoneInfo("Asia/Taipei")
PREPAYMENT = 120000  # a 2-hour slot at TWD 600.00 an hour


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def twd(amount: int) -> dict[str, Any]:
    return {"amount": amount, "currency": "TWD"}


def who(actor: str, role: str, **extra: str) -> dict[str, str]:
    return {"X-Actor": actor, "X-Role": role, **extra}


class Payments:
    """The payments API of the running stack, with bounded waits on its state."""

    def __init__(self, client: PlatformClient, stack: Any) -> None:
        self.client, self.stack, self.url = client, stack, stack.url("payments")

    async def get(self, path: str, **params: Any) -> Any:
        return await self.client.http.get(f"{self.url}{path}", params=params or None)

    async def post(self, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Any:
        return await self.client.http.post(f"{self.url}{path}", json=body, headers=headers)

    async def ok(self, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> dict[str, Any]:
        r = await self.post(path, body, headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def transaction(self, order_id: str) -> dict[str, Any]:
        r = await self.get(f"/payments/{order_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def wait(self, order_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            r = await self.get(f"/payments/{order_id}")
            if r.status_code == 200:
                last = r.json()
                if until(last):
                    return last
            await asyncio_sleep(0.05)
        raise TimeoutError(f"transaction of {order_id} never got there; last seen: {last}")

    async def top_up(self, customer: str, amount: int) -> None:
        await self.ok(f"/wallets/{customer}/top-ups", {"amount": twd(amount), "reference": uid("tu")},
                      who(customer, "customer"))

    async def issue(self, customer: str, voucher_id: str, amount_off: int, days: int, *,
                    combinable: bool = True, min_spend: int | None = None) -> dict[str, Any]:
        now = datetime.now(TZ)
        terms: dict[str, Any] = {"kind": "amount", "currency": "TWD", "amount_off": twd(amount_off),
                                 "combinable_with_balance": combinable,
                                 "valid_from": (now - timedelta(days=1)).isoformat(),
                                 "expires_at": (now + timedelta(days=days)).isoformat()}
        if min_spend is not None:
            terms["min_spend"] = twd(min_spend)
        return await self.ok("/vouchers", {"voucher_id": voucher_id, "customer_id": customer, "category": "campaign",
                                           "terms": terms}, who("ops-1", "platform"))


@pytest.fixture
def pay(client: PlatformClient, stack: Any) -> Payments:
    return Payments(client, stack)


async def place(client: PlatformClient, pay: Payments, customer: str, **body: Any) -> str:
    """Place an order (prepayment required) and wait until payments opened its transaction."""
    placed = await client.command("/orders", {**order_body(customer, uid("s"), hour=19), **body}, actor=customer,
                                  role="customer")
    assert placed["prepayment"]["required"] and placed["estimated_total"] == twd(PREPAYMENT), placed
    await pay.wait(placed["order_id"], lambda t: t["status"] == "unpaid")
    return placed["order_id"]


async def bill_and_confirm(client: PlatformClient, order_id: str, customer: str, merchant: str,
                           minutes: int) -> None:
    m = {"actor": merchant, "role": "merchant"}
    await client.command(f"/orders/{order_id}/accept", {"merchant_id": merchant}, **m)
    await client.command(f"/orders/{order_id}/start", {"merchant_id": merchant}, **m)
    await client.command(f"/orders/{order_id}/bill", {"merchant_id": merchant, "actual_minutes": minutes}, **m)
    await client.command(f"/orders/{order_id}/bill/confirm", {"customer_id": customer, "revision": 1},
                         actor=customer, role="customer")


async def prepaid_by_card(client: PlatformClient, stack: Any, pay: Payments, customer: str) -> str:
    order_id = await place(client, pay, customer)
    await send(client, stack, charge_succeeded(order_id, amount=PREPAYMENT))
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)
    return order_id


async def versions(pg_dsn: str, *stream_ids: str) -> dict[str, int]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return {s: await conn.fetchval("SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1", s)
                for s in stream_ids}
    finally:
        await conn.close()


async def event_data(pg_dsn: str, stream_id: str, event_type: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT data FROM events WHERE stream_id = $1 AND event_type = $2"
                                " ORDER BY stream_version", stream_id, event_type)
    finally:
        await conn.close()
    return [json.loads(r["data"]) for r in rows]


def bill_status(order: dict[str, Any], kind: str) -> str:
    [bill] = [b for b in order["bills"] if b["kind"] == kind]
    return bill["status"]


# --- cashier ----------------------------------------------------------------------------------------


async def test_an_abandoned_cashier_attempt_returns_the_order_and_the_bill_to_pending(
        client: PlatformClient, pay: Payments) -> None:
    customer = uid("c")
    order_id = await place(client, pay, customer)
    started = await pay.ok(f"/payments/{order_id}/attempts", {"amount": twd(PREPAYMENT), "method": "line_pay"},
                           who(customer, "customer"))
    attempt = started["attempt_id"]
    assert started["transaction"]["open_attempt"]["attempt_id"] == attempt
    order = await client.wait_for_status(order_id, "processing")  # 處理中: at the cashier
    assert bill_status(order, "prepayment") == "processing"

    # Only one cashier attempt at a time.
    again = await pay.post(f"/payments/{order_id}/attempts", {"amount": twd(PREPAYMENT), "method": "credit_card"},
                           who(customer, "customer"))
    assert again.status_code == 409 and again.json()["error"]["details"]["current_attempt_id"] == attempt

    # 從收銀臺點擊返回: the order is 待預付 again and its bill 待處理.
    done = await pay.ok(f"/payments/{order_id}/attempts/{attempt}/abandon", {"reason": "abandoned"},
                        who(customer, "customer"))
    assert done["transaction"]["open_attempt"] is None and done["transaction"]["abandoned_attempts"] == [attempt]
    order = await client.wait_for_status(order_id, "awaiting_prepayment")
    assert bill_status(order, "prepayment") == "pending"
    view = await pay.transaction(order_id)
    assert (view["status"], view["label_zh"]) == ("unpaid", "未支付")
    assert "start_attempt" in view["allowed_commands"]


async def test_paying_a_cancelled_order_is_refused_naming_the_state(client: PlatformClient, pay: Payments) -> None:
    customer = uid("c")
    order_id = await place(client, pay, customer)
    await client.command(f"/orders/{order_id}/cancel", {"cancelled_by": "customer", "reason_code": "changed_mind"},
                         actor=customer, role="customer")
    await pay.wait(order_id, lambda t: t["status"] == "voided")
    r = await pay.post(f"/payments/{order_id}/attempts", {"amount": twd(PREPAYMENT), "method": "credit_card"},
                       who(customer, "customer"))
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["details"]["current_state"] == "voided" and err["details"]["current_state_zh"] == "已作廢"
    assert "was cancelled" in err["message"]
    r = await pay.post(f"/payments/{order_id}/prepay", {"use_balance": True}, who(customer, "customer"))
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "voided"


# --- a seed-like worked case: voucher + balance prepay, then a card pays the shortfall ---------------


async def test_voucher_and_balance_prepay_then_a_card_shortfall_settle_with_exact_tenders(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer, merchant = uid("c"), uid("m")
    await pay.top_up(customer, 100000)  # 充1000送100: paid-in 1,000.00 + bonus 100.00
    v = {name: uid(f"v-{name}") for name in ("big", "soon", "solo", "min")}
    await pay.issue(customer, v["big"], 20000, days=30)                    # TWD 200, a month
    await pay.issue(customer, v["soon"], 15000, days=5)                    # TWD 150, soonest to expire
    await pay.issue(customer, v["solo"], 30000, days=30, combinable=False)  # TWD 300, not with the balance
    await pay.issue(customer, v["min"], 50000, days=30, min_spend=500000)  # TWD 500 from TWD 5,000 only
    listed = (await pay.get(f"/customers/{customer}/vouchers")).json()
    assert listed["binding_preference"] == "largest_first"  # services/payments/config/wallet_policy.toml
    assert listed["vouchers"][0]["voucher_id"] == v["soon"]  # soonest expiry first
    assert {x["status"] for x in listed["vouchers"]} == {"issued"}
    assert all(x["usable_now"] for x in listed["vouchers"])
    order_id = await place(client, pay, customer)

    # The binding follows the preference, valued on this order: the largest usable voucher alone, the
    # largest voucher combinable with the balance when the balance is used.
    alone = (await pay.get(f"/payments/{order_id}/prepay-preview", use_vouchers="true")).json()["plan"]
    assert alone["voucher"]["voucher_id"] == v["solo"] and not alone["covered"]
    assert alone["remainder"] == twd(90000)
    preview = (await pay.get(f"/payments/{order_id}/prepay-preview", use_vouchers="true", use_balance="true")).json()
    plan = preview["plan"]
    assert plan["covered"] and plan["voucher"]["voucher_id"] == v["big"] and plan["member_balance"] == twd(100000)
    reasons = {c["voucher_id"]: c for c in plan["voucher"]["choice"]["candidates"]}
    assert not reasons[v["solo"]]["usable"] and not reasons[v["min"]]["usable"]
    assert reasons[v["soon"]]["rank"] == 2

    paid = await pay.ok(f"/payments/{order_id}/prepay", {"use_vouchers": True, "use_balance": True},
                        who(customer, "customer", **{"Idempotency-Key": uid("k")}))
    assert paid["captured"] and paid["plan"]["tenders"] == plan["tenders"]  # the preview is what happened
    assert paid["wallet"]["paid_in"] == twd(0) and paid["wallet"]["bonus"] == twd(10000)  # paid-in spent first
    assert [(t["kind"], t["amount"]["amount"]) for t in paid["transaction"]["prepaid_tenders"]] == [
        ("voucher", 20000), ("member_balance", 100000)]
    bound = await event_data(stack.pg_dsn, f"voucher-{v['big']}", "VoucherBound")
    assert bound[0]["order_id"] == order_id and bound[0]["choice"]["preference"] == "largest_first"
    vouchers = {x["voucher_id"]: x for x in (await pay.get(f"/customers/{customer}/vouchers")).json()["vouchers"]}
    assert vouchers[v["big"]]["status"] == "redeemed" and vouchers[v["big"]]["redeemed_order_id"] == order_id
    assert {vouchers[v[n]]["status"] for n in ("soon", "solo", "min")} == {"issued"}
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)

    # 150 minutes: TWD 1,500.00 against TWD 1,200.00 prepaid. Voucher > balance are applied, 300 is short.
    await bill_and_confirm(client, order_id, customer, merchant, minutes=150)
    await pay.wait(order_id, lambda t: t["status"] == "billed")
    sp = (await pay.get(f"/payments/{order_id}/settlement-preview")).json()
    assert [(t["kind"], t["amount"]["amount"]) for t in sp["plan"]["applied"]] == [
        ("voucher", 20000), ("member_balance", 100000)]
    assert sp["shortfall"] == twd(30000) and sp["plan"]["refunds"] == []
    methods = {m["method"]: m["available"] for m in sp["collection_methods"]}
    assert methods == {"member_balance": False, "cash": True, "third_party": True}  # 100.00 left: not enough

    # The customer pays the shortfall by card at the cashier; the provider's charge settles it.
    await pay.ok(f"/payments/{order_id}/attempts", {"amount": twd(30000), "method": "credit_card"},
                 who(customer, "customer"))
    order = await client.wait_for_status(order_id, "awaiting_payment")
    deadline = time.monotonic() + 20
    while bill_status(order, "final") != "processing":
        assert time.monotonic() < deadline, order
        await asyncio_sleep(0.05)
        order = await client.order(order_id)
    await send(client, stack, charge_succeeded(order_id, amount=30000))
    done = await client.wait_for_status(order_id, "completed", timeout=20)
    assert done["settled_total"] == twd(150000)
    view = await pay.transaction(order_id)
    assert (view["status"], view["label_zh"]) == ("paid", "已支付")
    tenders = [(t["kind"], t["amount"]["amount"]) for t in view["settlement"]["tenders"]]
    assert tenders == [("voucher", 20000), ("member_balance", 100000), ("third_party", 30000)]
    assert sum(a for _, a in tenders) == 150000
    assert view["settlement"]["plan"] == sp["plan"]  # the settlement preview is what happened
    assert view["settlement"]["collected"] == twd(30000) and view["settlement"]["refunded"] == twd(0)


# --- shortfall from the member balance, second settlement refused -------------------------------------


async def test_a_shortfall_from_the_member_balance_settles_at_once_and_a_second_settlement_is_refused(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer, merchant = uid("c"), uid("m")
    await pay.top_up(customer, 300000)  # 充3000送400
    order_id = await prepaid_by_card(client, stack, pay, customer)
    await bill_and_confirm(client, order_id, customer, merchant, minutes=150)
    await pay.wait(order_id, lambda t: t["status"] == "billed")
    sp = (await pay.get(f"/payments/{order_id}/settlement-preview")).json()
    assert {m["method"]: m["available"] for m in sp["collection_methods"]}["member_balance"] is True

    # A third-party shortfall goes through the provider's charge, not this endpoint.
    r = await pay.post(f"/payments/{order_id}/settle", {"method": "third_party", "reference": "pi_x"},
                       who(merchant, "merchant"))
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "method"
    # Only the order's own merchant (or customer) collects.
    r = await pay.post(f"/payments/{order_id}/settle", {"method": "member_balance"}, who(uid("m"), "merchant"))
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Actor"

    settled = await pay.ok(f"/payments/{order_id}/settle", {"method": "member_balance"}, who(merchant, "merchant"))
    assert settled["transaction"]["status"] == "paid" and not settled["awaiting_cash_confirmation"]
    assert settled["wallet"]["paid_in"] == twd(270000) and settled["wallet"]["bonus"] == twd(40000)
    assert settled["plan"] == sp["plan"]
    done = await client.wait_for_status(order_id, "completed", timeout=20)
    assert done["settled_total"] == twd(150000)
    view = await pay.transaction(order_id)
    assert [(t["kind"], t["amount"]["amount"]) for t in view["settlement"]["tenders"]] == [
        ("third_party", 120000), ("member_balance", 30000)]
    assert (await pay.get(f"/wallets/{customer}")).json()["total"] == twd(310000)

    for body in ({"method": "member_balance"}, {"method": "cash"}):
        before = await versions(stack.pg_dsn, f"transaction-{order_id}", f"wallet-{customer}")
        again = await pay.post(f"/payments/{order_id}/settle", body, who(merchant, "merchant"))
        assert again.status_code == 409, again.text
        err = again.json()["error"]
        assert err["code"] == "invalid_transition" and err["details"]["current_state"] == "paid"
        assert "already paid" in err["message"]
        assert await versions(stack.pg_dsn, *before) == before


# --- cash, confirmed by the merchant ---------------------------------------------------------------------


async def test_cash_settles_awaiting_the_merchant_whose_confirmation_completes_the_order(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer, merchant = uid("c"), uid("m")
    order_id = await prepaid_by_card(client, stack, pay, customer)
    await bill_and_confirm(client, order_id, customer, merchant, minutes=150)
    await pay.wait(order_id, lambda t: t["status"] == "billed")
    settled = await pay.ok(f"/payments/{order_id}/settle", {"method": "cash", "reference": "receipt-0042"},
                           who(merchant, "merchant"))
    assert settled["awaiting_cash_confirmation"] is True
    view = settled["transaction"]
    assert view["status"] == "billed" and "confirm_cash" in view["allowed_commands"]
    assert "settle" not in view["allowed_commands"] and view["settlement"]["collected"] == twd(30000)

    # The order is not done until the merchant confirms; a second settlement is refused meanwhile.
    assert (await client.order(order_id))["status"] == "awaiting_payment"
    r = await pay.post(f"/payments/{order_id}/settle", {"method": "member_balance"}, who(customer, "customer"))
    assert r.status_code == 409 and r.json()["error"]["details"]["awaiting_cash_confirmation"] is True
    assert "waits for the merchant's confirmation" in r.json()["error"]["message"]

    before = await versions(stack.pg_dsn, f"transaction-{order_id}", f"payment-{order_id}")
    for headers, field in ((who(customer, "customer"), "X-Role"), (who(uid("m"), "merchant"), "X-Actor")):
        r = await pay.post(f"/payments/{order_id}/cash-confirmation", {}, headers)
        assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == field
    r = await pay.post(f"/payments/{order_id}/cash-confirmation", {"amount": twd(29999)}, who(merchant, "merchant"))
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "amount"
    assert await versions(stack.pg_dsn, *before) == before

    confirmed = await pay.ok(f"/payments/{order_id}/cash-confirmation", {"amount": twd(30000)},
                             who(merchant, "merchant"))
    assert (confirmed["transaction"]["status"], confirmed["transaction"]["label_zh"]) == ("confirmed", "已確認")
    done = await client.wait_for_status(order_id, "completed", timeout=20)
    assert done["settled_total"] == twd(150000)
    r = await pay.post(f"/payments/{order_id}/cash-confirmation", {}, who(merchant, "merchant"))
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "confirmed"


# --- cancellation preview equals the cancellation ---------------------------------------------------------


async def test_the_cancellation_preview_is_what_the_cancellation_then_does(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer = uid("c")
    await pay.top_up(customer, 100000)
    voucher = uid("v")
    await pay.issue(customer, voucher, 20000, days=30)
    # About 36 h ahead: a customer-fault cancellation pays half of the money paid online (24 h <= T < 48 h).
    start = (datetime.now(TZ) + timedelta(hours=36)).replace(minute=0, second=0, microsecond=0)
    if start.hour >= 22:
        start = start.replace(hour=20)
    await client.command(f"/customers/{customer}/credit-score", {"score": 300, "source": "t"}, actor="b",
                         role="service", method="PUT", wait=False)  # low score: prepayment required
    placed = await client.command("/orders", {**order_body(customer, uid("s")), "slot": {
        "start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()}}, actor=customer, role="customer")
    order_id = placed["order_id"]
    await pay.wait(order_id, lambda t: t["status"] == "unpaid")
    await pay.ok(f"/payments/{order_id}/prepay", {"use_vouchers": True, "use_balance": True},
                 who(customer, "customer"))
    await client.wait_for_status(order_id, "awaiting_confirmation", timeout=20)

    seconds = int((start - datetime.now(TZ)).total_seconds())
    r = await pay.get(f"/payments/{order_id}/cancellation-preview", fault_party="customer",
                      seconds_before_service_start=seconds, reason_code="plans_changed")
    assert r.status_code == 200, r.text
    preview = r.json()
    assert preview["status_after"] == "refunded" and preview["label_zh_after"] == "已退款"
    plan = preview["plan"]
    assert plan["penalty_rate"] == {"numerator": 1, "denominator": 2} and plan["penalty"] == twd(50000)
    assert [(x["kind"], x["amount"]["amount"]) for x in plan["refunds"]] == [("member_balance", 50000)]
    assert [(x["reference"], x["action"]) for x in plan["vouchers_returned"]] == [(voucher, "returned")]

    await client.command(f"/orders/{order_id}/cancel", {"cancelled_by": "customer", "reason_code": "plans_changed"},
                         actor=customer, role="customer")
    view = await pay.wait(order_id, lambda t: t["status"] == "refunded")
    time_dependent = {"seconds_before_service_start", "explanation"}
    assert {k: v for k, v in view["cancellation"].items() if k not in time_dependent} == {
        k: v for k, v in plan.items() if k not in time_dependent}
    deadline = time.monotonic() + 15  # the balance part of the refund goes back to the wallet
    while (await pay.get(f"/wallets/{customer}")).json()["total"] != twd(10000 + 50000):
        assert time.monotonic() < deadline, "the refund never reached the wallet"
        await asyncio_sleep(0.05)


# --- bad input: 4xx naming the field and the rule, nothing stored ----------------------------------------


async def test_bad_input_is_refused_naming_the_field_and_stores_nothing(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer = uid("c")
    order_id = await place(client, pay, customer)
    streams = (f"transaction-{order_id}", f"payment-{order_id}", f"wallet-{customer}")
    before = await versions(stack.pg_dsn, *streams)
    me = who(customer, "customer")
    cases: list[tuple[str, dict[str, Any], dict[str, str], int, str]] = [
        ("/attempts", {"amount": {"amount": PREPAYMENT, "currency": "USD"}, "method": "credit_card"}, me, 422,
         "amount.currency"),
        ("/attempts", {"amount": twd(-100), "method": "credit_card"}, me, 422, "amount"),
        ("/attempts", {"amount": twd(50000), "method": "credit_card"}, me, 422, "amount"),  # not the whole
        ("/attempts", {"amount": {"amount": 1200.5, "currency": "TWD"}, "method": "credit_card"}, me, 422,
         "amount.amount"),  # never a float
        ("/attempts", {"amount": twd(PREPAYMENT), "method": "bitcoin"}, me, 422, "method"),
        ("/attempts", {"amount": twd(PREPAYMENT), "method": "credit_card"}, who(uid("c"), "customer"), 403,
         "X-Actor"),
        ("/attempts", {"amount": twd(PREPAYMENT), "method": "credit_card"}, who("a-1", "auditor"), 403, "X-Role"),
        ("/settle", {"method": "bitcoin"}, me, 422, "method"),
        ("/prepay", {}, me, 422, "use_vouchers"),
        ("/prepay", {"use_balance": True}, me, 422, "prepayment"),  # no balance: nothing would be applied
        ("/prepay", {"use_balance": True, "surprise": 1}, me, 422, "surprise"),
    ]
    for path, body, headers, status, field in cases:
        r = await pay.post(f"/payments/{order_id}{path}", body, headers)
        assert r.status_code == status, (path, body, r.text)
        fields = [f["field"] for f in r.json()["error"]["details"]["fields"]]
        assert field in fields, (path, body, r.json())
        assert all(f.get("rule") for f in r.json()["error"]["details"]["fields"])

    voucher = uid("v")
    now = datetime.now(TZ)
    terms = {"kind": "amount", "currency": "TWD", "amount_off": {"amount": 10000, "currency": "USD"},
             "combinable_with_balance": True, "valid_from": now.isoformat(),
             "expires_at": (now + timedelta(days=3)).isoformat()}
    body = {"voucher_id": voucher, "customer_id": customer, "category": "campaign", "terms": terms}
    r = await pay.post("/vouchers", body, who(customer, "customer"))
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Role"
    r = await pay.post("/vouchers", body, who("ops-1", "platform"))
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "terms.amount_off.currency"
    r = await pay.post("/vouchers", {**body, "category": "lottery"}, who("ops-1", "platform"))
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "category"
    assert (await pay.get(f"/vouchers/{voucher}")).status_code == 404

    r = await pay.get(f"/payments/{order_id}/cancellation-preview", fault_party="nobody",
                      seconds_before_service_start=3600)
    assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == "fault_party"
    r = await pay.get(f"/payments/{order_id}/settlement-preview")
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "unpaid"
    assert (await pay.get(f"/payments/{uid('o')}")).status_code == 404

    assert await versions(stack.pg_dsn, *streams) == before
    view = await pay.transaction(order_id)
    assert view["status"] == "unpaid" and view["open_attempt"] is None


async def test_a_retried_prepay_with_its_idempotency_key_returns_the_first_result_and_debits_once(
        client: PlatformClient, stack: Any, pay: Payments) -> None:
    customer = uid("c")
    await pay.top_up(customer, 300000)
    order_id = await place(client, pay, customer)
    headers = who(customer, "customer", **{"Idempotency-Key": uid("k")})
    first = await pay.post(f"/payments/{order_id}/prepay", {"use_balance": True}, headers)
    second = await pay.post(f"/payments/{order_id}/prepay", {"use_balance": True}, headers)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() and second.headers.get("Idempotent-Replayed") == "true"
    debits = await event_data(stack.pg_dsn, f"wallet-{customer}", "WalletDebited")
    assert [d["amount"]["amount"] for d in debits] == [PREPAYMENT]
    # Without the key, the same command again finds the prepayment captured.
    r = await pay.post(f"/payments/{order_id}/prepay", {"use_balance": True}, who(customer, "customer"))
    assert r.status_code == 409 and r.json()["error"]["details"]["current_state"] == "prepaid"
