"""The orders service end to end: HTTP commands, the relay, Kafka, the payments events
contract and the projector's read model, each a separate process."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest

from libs.devstack.client import ApiError, PaymentsFeed, PlatformClient
from libs.domain.money import Money
from services.payments.domain import events as pay

pytestmark = pytest.mark.e2e

TZ = ZoneInfo("Asia/Taipei")
ADDRESS = {"line1": "忠孝東路四段 1 號", "district": "大安區", "city": "臺北市"}


def uid() -> str:
    return uuid.uuid4().hex[:10]


def slot(days: int, hour: int, hours: int = 2) -> dict[str, str]:
    day = (datetime.now(TZ) + timedelta(days=days)).date()
    start = datetime(day.year, day.month, day.day, hour, 0, tzinfo=TZ)
    return {"start": start.isoformat(), "end": (start + timedelta(hours=hours)).isoformat()}


def order_body(customer: str, staff: str, *, hour: int = 10, days: int = 3, **extra: Any) -> dict[str, Any]:
    return {"customer_id": customer, "staff_id": staff, "service_code": "dishwash-standard",
            "slot": slot(days, hour), "address": ADDRESS, **extra}


async def event_count(pg_dsn: str, stream_prefix: str, mentioning: str = "") -> int:
    """Stored events of streams starting with `stream_prefix` whose data mention `mentioning`
    (a unique id of the test, so that other writers of the shared database do not count)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM events WHERE left(stream_id, length($1)) = $1"
                                   " AND strpos(data::text, $2) > 0", stream_prefix, mentioning)
    finally:
        await conn.close()


async def test_prepaid_order_runs_from_placement_to_completion_through_http_and_kafka(
        client: PlatformClient, feed: PaymentsFeed) -> None:
    customer, staff, merchant = f"c-{uid()}", f"s-{uid()}", f"m-{uid()}"
    # 19:00 local is in the after-dinner window of the shipped policy: prepayment required.
    placed = await client.command("/orders", order_body(customer, staff, hour=19), actor=customer, role="customer")
    oid = placed["order_id"]
    assert placed["status"] == "awaiting_prepayment"
    assert placed["prepayment"]["required"] is True
    assert [r["rule"] for r in placed["prepayment"]["reasons"]] == ["time_of_day"]
    assert placed["payment_deadline"] is not None
    estimate = Money(**placed["estimated_total"])
    assert estimate == Money(amount=120000, currency="TWD")  # 2 h at TWD 600.00

    await feed.publish(pay.PaymentAttemptStarted(order_id=oid, bill_id=placed["prepayment_bill_id"],
                                                 attempt_id="a1", amount=estimate, method="credit_card",
                                                 at=datetime.now(UTC)))
    assert (await client.wait_for_status(oid, "processing"))["status_label"] == "處理中"
    await feed.publish(pay.PrepaymentCaptured(
        order_id=oid, bill_id=placed["prepayment_bill_id"], amount=estimate, captured_at=datetime.now(UTC),
        tenders=[pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=estimate, reference="pi_1")]))
    prepaid = await client.wait_for_status(oid, "awaiting_confirmation")
    assert prepaid["prepaid_amount"] == {"amount": 120000, "currency": "TWD"}

    await client.command(f"/orders/{oid}/accept", {"merchant_id": merchant}, actor=merchant, role="merchant")
    await client.command(f"/orders/{oid}/start", {"merchant_id": merchant}, actor=merchant, role="merchant")
    pushed = await client.command(f"/orders/{oid}/bill", {"merchant_id": merchant, "actual_minutes": 150},
                                  actor=merchant, role="merchant")
    assert pushed["status"] == "billed" and pushed["bill"]["total"]["amount"] == 150000
    adjusted = await client.command(f"/orders/{oid}/bill/adjust", {
        "merchant_id": merchant, "actual_minutes": 120, "reason": "customer: it took two hours",
        "materials": [{"code": "sponge", "description": "sponge", "quantity": 2,
                       "unit_price": {"amount": 2500, "currency": "TWD"}}]}, actor=merchant, role="merchant")
    assert adjusted["bill"]["revision"] == 2 and adjusted["bill"]["total"]["amount"] == 125000
    confirmed = await client.command(f"/orders/{oid}/bill/confirm", {"customer_id": customer, "revision": 2},
                                     actor=customer, role="customer")
    assert confirmed["status"] == "awaiting_payment"
    bill_id = confirmed["bill"]["bill_id"]
    total = Money(amount=125000, currency="TWD")
    await feed.publish(pay.BillSettled(
        order_id=oid, bill_id=bill_id, total=total, refunded=Money(amount=0, currency="TWD"),
        collected=Money(amount=5000, currency="TWD"), settled_at=datetime.now(UTC),
        tenders=[pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=estimate, reference="pi_1"),
                 pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=Money(amount=5000, currency="TWD"),
                            reference="pi_2")]))
    done = await client.wait_for_status(oid, "completed")
    assert done["status_label"] == "已完成"
    assert done["settled_total"] == {"amount": 125000, "currency": "TWD"}
    assert done["bill_revision"] == 2
    bills = {b["kind"]: b for b in done["bills"]}
    assert bills["prepayment"]["status"] == "completed" and bills["final"]["status"] == "completed"
    assert bills["final"]["confirmed_revision"] == 2

    history = await client.history(oid)
    order_events = [h["event_type"] for h in history if h["stream_id"] == f"order-{oid}"]
    assert order_events == ["OrderPlaced", "OrderCheckoutStarted", "OrderPrepaid", "OrderAccepted",
                            "OrderServiceStarted", "OrderBilled", "OrderBillAdjusted", "OrderBillConfirmed",
                            "OrderCompleted"]
    by_type = {h["event_type"]: h for h in history}
    assert by_type["OrderAccepted"]["actor"] == merchant and by_type["OrderAccepted"]["role"] == "merchant"
    assert by_type["OrderPrepaid"]["role"] == "service"  # a reaction to the payments event
    assert by_type["OrderPlaced"]["data"]["prepayment"]["reasons"][0]["rule"] == "time_of_day"


async def test_order_without_prepayment_goes_straight_to_dispatch_with_the_reason_stored(
        client: PlatformClient) -> None:
    customer = f"c-{uid()}"
    placed = await client.command("/orders", order_body(customer, f"s-{uid()}", hour=10), actor=customer,
                                  role="customer")
    assert placed["status"] == "awaiting_confirmation"
    assert placed["prepayment"] == {"required": False, "policy_version": placed["prepayment"]["policy_version"],
                                    "reasons": [{"rule": "none", "detail": "no prepayment rule matched"}],
                                    "payment_deadline": None}
    view = await client.order(placed["order_id"], min_version=placed["version"])
    assert view["status_label"] == "待確認" and view["bills"] == []


async def test_low_credit_score_requires_prepayment(client: PlatformClient) -> None:
    customer = f"c-{uid()}"
    await client.command(f"/customers/{customer}/credit-score", {"score": 450, "source": "bureau"},
                         actor="bureau", role="service", method="PUT", wait=False)
    placed = await client.command("/orders", order_body(customer, f"s-{uid()}", hour=10), actor=customer,
                                  role="customer")
    assert placed["status"] == "awaiting_prepayment"
    assert [r["rule"] for r in placed["prepayment"]["reasons"]] == ["credit_score"]


async def test_refused_transition_is_409_naming_the_state_and_allowed_commands_and_stores_nothing(
        client: PlatformClient, stack: Any) -> None:
    customer, merchant = f"c-{uid()}", f"m-{uid()}"
    placed = await client.command("/orders", order_body(customer, f"s-{uid()}"), actor=customer, role="customer")
    oid = placed["order_id"]
    before = await event_count(stack.pg_dsn, f"order-{oid}")
    with pytest.raises(ApiError) as err:
        await client.command(f"/orders/{oid}/start", {"merchant_id": merchant}, actor=merchant, role="merchant")
    assert err.value.status == 409
    details = err.value.body["error"]["details"]
    assert details["current_state"] == "awaiting_confirmation"
    assert details["allowed_commands"] == ["accept", "cancel"]
    assert "awaiting_confirmation" in err.value.body["error"]["message"]
    assert await event_count(stack.pg_dsn, f"order-{oid}") == before

    await client.command(f"/orders/{oid}/accept", {"merchant_id": merchant}, actor=merchant, role="merchant")
    await client.command(f"/orders/{oid}/start", {"merchant_id": merchant}, actor=merchant, role="merchant")
    with pytest.raises(ApiError) as err:  # seed 三: after the service starts nobody can cancel
        await client.command(f"/orders/{oid}/cancel", {"cancelled_by": "customer", "reason_code": "changed_mind"},
                             actor=customer, role="customer")
    assert err.value.status == 409
    assert err.value.body["error"]["details"]["allowed_commands"] == ["push_bill"]


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b.pop("slot"), "slot"),
    (lambda b: b.update(service_code="unknown-service"), "service.service_code"),
    (lambda b: b.update(currency="XYZ"), "currency"),
    (lambda b: b["slot"].update(end=b["slot"]["start"]), "slot.end"),
    (lambda b: b.update(customer_id="has spaces"), "customer_id"),
    (lambda b: b.update(slot={"start": "2020-01-01T10:00:00+08:00", "end": "2020-01-01T11:00:00+08:00"}),
     "slot.start"),
])
async def test_malformed_input_is_422_naming_the_field_and_stores_nothing(
        client: PlatformClient, stack: Any, mutate: Any, field: str) -> None:
    customer, staff = f"c-{uid()}", f"s-{uid()}"
    body = order_body(customer, staff)
    mutate(body)
    r = await client.http.post(f"{stack.url('orders')}/orders", json=body, headers={"X-Actor": customer})
    assert r.status_code == 422, r.text
    fields = [f["field"] for f in r.json()["error"]["details"]["fields"]]
    assert field in fields, fields
    assert await event_count(stack.pg_dsn, "", mentioning=staff) == 0  # no order, slot or bill stored
    ok = await client.http.post(f"{stack.url('orders')}/orders", json=order_body(customer, staff),
                                headers={"X-Actor": customer})
    assert ok.status_code == 201 and await event_count(stack.pg_dsn, "", mentioning=staff) > 0


async def test_idempotent_retry_returns_the_first_result_and_appends_nothing(
        client: PlatformClient, stack: Any) -> None:
    customer, key, staff = f"c-{uid()}", f"key-{uid()}", f"s-{uid()}"
    body = order_body(customer, staff)
    url = f"{stack.url('orders')}/orders"
    first = await client.http.post(url, json=body, headers={"Idempotency-Key": key, "X-Actor": customer})
    before = await event_count(stack.pg_dsn, "", mentioning=staff)
    second = await client.http.post(url, json=body, headers={"Idempotency-Key": key, "X-Actor": customer})
    assert first.status_code == second.status_code == 201
    assert second.json()["order_id"] == first.json()["order_id"]
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert before > 0 and await event_count(stack.pg_dsn, "", mentioning=staff) == before
    other = {**body, "staff_id": f"s-{uid()}"}
    reused = await client.http.post(url, json=other, headers={"Idempotency-Key": key, "X-Actor": customer})
    assert reused.status_code == 422
    assert reused.json()["error"]["details"]["fields"][0]["field"] == "Idempotency-Key"


async def test_concurrent_retries_with_one_idempotency_key_create_one_order(client: PlatformClient,
                                                                             stack: Any) -> None:
    import asyncio

    customer, key = f"c-{uid()}", f"key-{uid()}"
    body = order_body(customer, f"s-{uid()}")
    async with httpx.AsyncClient(timeout=10, auth=stack.auth) as http:
        responses = await asyncio.gather(*[
            http.post(f"{stack.url('orders')}/orders", json=body, headers={"Idempotency-Key": key,
                                                                           "X-Actor": customer})
            for _ in range(5)])
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["order_id"] for r in responses}) == 1


async def test_if_match_with_a_stale_version_is_409(client: PlatformClient) -> None:
    customer, merchant = f"c-{uid()}", f"m-{uid()}"
    placed = await client.command("/orders", order_body(customer, f"s-{uid()}"), actor=customer, role="customer")
    oid = placed["order_id"]
    with pytest.raises(ApiError) as err:
        await client.command(f"/orders/{oid}/accept", {"merchant_id": merchant}, actor=merchant, role="merchant",
                             headers={"If-Match": f'"{placed["version"] + 1}"'})
    assert err.value.status == 409
    assert err.value.body["error"]["code"] == "version_conflict"
    ok = await client.command(f"/orders/{oid}/accept", {"merchant_id": merchant}, actor=merchant,
                              role="merchant", headers={"If-Match": f'"{placed["version"]}"'})
    assert ok["status"] == "accepted"


async def test_cancellation_records_fault_party_and_time_left_and_frees_the_slot(client: PlatformClient) -> None:
    customer, staff = f"c-{uid()}", f"s-{uid()}"
    body = order_body(customer, staff, hour=10, days=4)
    placed = await client.command("/orders", body, actor=customer, role="customer")
    with pytest.raises(ApiError) as err:  # the staff member's slot is held
        x = f"c-{uid()}"
        await client.command("/orders", order_body(x, staff, hour=11, days=4), actor=x, role="customer")
    assert err.value.status == 409
    cancelled = await client.command(f"/orders/{placed['order_id']}/cancel",
                                     {"cancelled_by": "customer", "reason_code": "plans_changed"},
                                     actor=customer, role="customer")
    assert cancelled["status"] == "cancelled"
    view = await client.order(placed["order_id"], min_version=cancelled["version"])
    assert view["fault_party"] == "customer" and view["cancelled_by"] == "customer"
    start = datetime.fromisoformat(body["slot"]["start"])
    expected = (start - datetime.fromisoformat(view["cancelled_at"])).total_seconds()
    assert abs(view["seconds_before_service_start"] - expected) <= 1
    y = f"c-{uid()}"
    again = await client.command("/orders", order_body(y, staff, hour=10, days=4), actor=y, role="customer")
    assert again["status"] == "awaiting_confirmation"


async def test_read_your_writes_wait_returns_once_the_read_model_shows_the_change(client: PlatformClient) -> None:
    customer = f"c-{uid()}"
    placed = await client.command("/orders", order_body(customer, f"s-{uid()}"), actor=customer, role="customer",
                                  wait=True)
    assert placed["read_model"]["caught_up"] is True
    r = await client.http.get(f"{client.projector_url}/orders/{placed['order_id']}")  # no waiting here
    assert r.status_code == 200 and r.json()["version"] >= placed["version"]


async def test_readers_waiting_for_a_version_get_it_once_projected_and_504_when_it_never_comes(
        client: PlatformClient) -> None:
    customer = f"c-{uid()}"
    placed = await client.command("/orders", order_body(customer, f"s-{uid()}"), actor=customer, role="customer",
                                  wait=True)
    oid, url = placed["order_id"], f"{client.projector_url}/orders/{placed['order_id']}"
    # Twenty readers wait for the version the cancellation will reach, before it exists.
    waiting = [asyncio.create_task(client.http.get(url, params={"min_version": placed["version"] + 1,
                                                                "wait_ms": 8000})) for _ in range(20)]
    await asyncio.sleep(0.3)
    assert not any(t.done() for t in waiting)  # they wait; nothing answers with the old version
    cancelled = await client.command(f"/orders/{oid}/cancel", {"cancelled_by": "customer", "reason_code": "oops"},
                                     actor=customer, role="customer")
    answers = await asyncio.gather(*waiting)
    assert [r.status_code for r in answers] == [200] * 20
    assert {r.json()["version"] for r in answers} == {cancelled["version"]}
    assert {r.json()["status"] for r in answers} == {"cancelled"}
    started = time.perf_counter()
    r = await client.http.get(url, params={"min_version": cancelled["version"] + 5, "wait_ms": 400})
    assert r.status_code == 504 and f"{cancelled['version'] + 5} not reached within 400 ms" in r.text
    assert time.perf_counter() - started >= 0.4
    r = await client.http.get(f"{client.projector_url}/orders/o-never-{uid()}", params={"min_version": 1,
                                                                                        "wait_ms": 200})
    assert r.status_code == 404


async def test_orders_list_filters_by_status_and_customer_and_pages(client: PlatformClient) -> None:
    customer = f"c-{uid()}"
    ids = []
    for i in range(5):
        placed = await client.command("/orders", order_body(customer, f"s-{uid()}", hour=9 + i), actor=customer,
                                      role="customer")
        ids.append(placed["order_id"])
    cancelled = await client.command(f"/orders/{ids[0]}/cancel", {"cancelled_by": "customer",
                                                                  "reason_code": "oops"},
                                     actor=customer, role="customer")
    await client.order(ids[0], min_version=cancelled["version"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"customer": customer, "limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.http.get(f"{client.projector_url}/orders", params=params)).json()
        seen += [o["order_id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    only_cancelled = (await client.http.get(f"{client.projector_url}/orders",
                                            params={"customer": customer, "status": "cancelled"})).json()
    assert [o["order_id"] for o in only_cancelled["items"]] == [ids[0]]
    bad = await client.http.get(f"{client.projector_url}/orders", params={"status": "lost"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["fields"][0]["field"] == "status"
