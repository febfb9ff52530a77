"""Access control across every running service, with real tokens (libs/auth) in the real database.

The cases of the first test are generated from the apps' own routes, so that a new endpoint cannot
slip through: each one refuses a request without a token (401) and a token of every role its rule
does not allow (403; the auditor on every command). Then: an expired or revoked token is refused at
once by every service; a customer can neither read nor change another customer's order, payment,
wallet, vouchers, RMA, labels, tracking, notifications or SLA (reading someone else's is a 404 like
reading nothing); a merchant sees only its own orders; and the events of a command carry the token's
actor and role, whatever headers the request sends."""

from __future__ import annotations

import asyncio
import functools
import importlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from libs.auth import ALL_ROLES, Rule, TokenStore
from tests.support.auth import bearer
from tests.support.wait import until

pytestmark = pytest.mark.e2e
TZ = ZoneInfo("Asia/Taipei")
SERVICES = ("orders", "projector", "payments", "rma", "shipping", "notifications")
STAFF = {"X-Actor": "access-tests", "X-Role": "service"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@functools.cache
def app_of(service: str) -> FastAPI:
    app: FastAPI = importlib.import_module(f"services.{service}.entrypoints.http").create_app(None)
    return app


def guarded(service: str) -> list[tuple[str, Rule]]:
    app = app_of(service)
    out = []
    for ctx in iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIRoute):
            for method in sorted(ctx.methods or ()):
                entry = app.state.access_table[f"{method} {ctx.path}"]
                if method != "HEAD" and isinstance(entry, Rule):
                    out.append((f"{method} {ctx.path}", entry))
    return out


CASES = [(service, key) for service in SERVICES for key, _ in guarded(service)]
# Served by the notifications process in the test environment only (not in its OpenAPI).
CASES.append(("notifications", "POST /senders/fail-next"))


@pytest.fixture
async def raw() -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends exactly the headers a test gives it (no token unless given)."""
    async with httpx.AsyncClient(timeout=15) as c:
        yield c


async def tok(stack: Any, actor: str, role: str) -> dict[str, str]:
    return bearer(await stack.tokens.token(actor, role))


async def test_every_route_of_every_running_service_is_in_its_access_table(stack: Any, raw: httpx.AsyncClient) -> None:
    for service in SERVICES:
        doc = (await raw.get(f"{stack.url(service)}/openapi.json")).json()  # the docs stay open
        served = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
        table = app_of(service).state.access_table
        assert served <= set(table), f"{service}: no rule for {sorted(served - set(table))}"
        assert {k for k, _ in guarded(service)} <= served


@pytest.mark.parametrize(("service", "key"), CASES, ids=[f"{s}:{k}" for s, k in CASES])
async def test_every_endpoint_refuses_a_missing_token_and_every_role_it_does_not_allow(
        stack: Any, raw: httpx.AsyncClient, service: str, key: str) -> None:
    rule = app_of("notifications").state.access_table[key] if key == "POST /senders/fail-next" else \
        dict(guarded(service))[key]
    method, path = key.split(" ", 1)
    url = stack.url(service) + re.sub(r"\{[^}]+\}", "probe-1", path)
    body = {} if method != "GET" else None

    r = await raw.request(method, url, json=body)
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    err = r.json()["error"]
    assert err["code"] == "unauthenticated" and err["details"]["reason"] == "missing"
    assert err["details"]["fields"] == [{"field": "Authorization", "rule": err["message"]}]

    refused = sorted(ALL_ROLES - rule.roles)
    assert refused, f"{service} {key} refuses no role"
    if method != "GET":
        assert "auditor" in refused, f"the auditor may change something: {service} {key}"
    for role in refused:
        r = await raw.request(method, url, json=body, headers=await tok(stack, f"probe-{role}", role))
        assert r.status_code == 403, (role, r.text)
        err = r.json()["error"]
        assert err["code"] == "forbidden" and err["details"]["fields"][0]["field"] == "X-Role"
        assert err["details"]["required_roles"] == sorted(rule.roles) and f"'{role}'" in err["message"]


async def test_open_routes_answer_without_a_token_and_webhooks_check_their_own_signature(
        stack: Any, raw: httpx.AsyncClient) -> None:
    for service in SERVICES:
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"):
            assert (await raw.get(f"{stack.url(service)}{path}")).status_code == 200, (service, path)
    r = await raw.post(f"{stack.url('payments')}/webhooks/stripe", content=b"{}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature"
    r = await raw.post(f"{stack.url('shipping')}/carriers/globex/events", content=b"{}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature"


# One read per service that the auditor may make.
READS = {"orders": "/policy/prepayment", "projector": "/orders?limit=1", "payments": "/refunds?limit=1",
         "rma": "/faults", "shipping": "/duplicates?limit=1", "notifications": "/slas?limit=1"}


async def test_a_revoked_token_is_refused_at_once_by_every_service(stack: Any, raw: httpx.AsyncClient) -> None:
    tokens = TokenStore(await asyncpg.create_pool(stack.pg_dsn, min_size=1, max_size=2),
                        stack.env["CLOSELOOP_SECRET_KEY"])
    try:
        issued = await tokens.create(uid("aud"), "auditor", created_by="access-tests")
        headers = bearer(issued.token)
        for service, path in READS.items():
            r = await raw.get(f"{stack.url(service)}{path}", headers=headers)
            assert r.status_code == 200, (service, r.text)
        await tokens.revoke(issued.record.token_id, revoked_by="access-tests")
        for service, path in READS.items():  # no cache anywhere: the very next request is refused
            r = await raw.get(f"{stack.url(service)}{path}", headers=headers)
            assert r.status_code == 401, (service, r.text)
            assert r.json()["error"]["details"]["reason"] == "revoked"
            assert r.json()["error"]["details"]["token_id"] == issued.record.token_id
    finally:
        await tokens.pool.close()


async def test_an_expired_token_is_refused_by_every_service(stack: Any, raw: httpx.AsyncClient) -> None:
    tokens = TokenStore(await asyncpg.create_pool(stack.pg_dsn, min_size=1, max_size=2),
                        stack.env["CLOSELOOP_SECRET_KEY"])
    try:
        issued = await tokens.create(uid("aud"), "auditor", created_by="access-tests",
                                     expires_in=timedelta(seconds=2))
        headers = bearer(issued.token)
        r = await raw.get(f"{stack.url('orders')}{READS['orders']}", headers=headers)
        assert r.status_code == 200, r.text
        await asyncio.sleep(max(0.0, (issued.record.expires_at - await tokens.now()).total_seconds()) + 0.2)
        for service, path in READS.items():
            r = await raw.get(f"{stack.url(service)}{path}", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["details"]["reason"] == "expired", (service, r.text)
            assert "error=\"invalid_token\"" in r.headers["WWW-Authenticate"]
    finally:
        await tokens.pool.close()


def order_body(customer: str, *, hour: int = 19, days: int = 3) -> dict[str, Any]:
    day = (datetime.now(TZ) + timedelta(days=days)).date()
    start = datetime(day.year, day.month, day.day, hour, 0, tzinfo=TZ)
    return {"customer_id": customer, "staff_id": uid("staff"), "service_code": "dishwash-standard",
            "slot": {"start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()},
            "address": {"line1": "忠孝東路四段 1 號", "district": "大安區", "city": "臺北市"}}


async def versions(pg_dsn: str, *streams: str) -> dict[str, int]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT stream_id, max(stream_version) AS v FROM events WHERE stream_id = ANY($1)"
                                " GROUP BY stream_id", list(streams))
        return {r["stream_id"]: r["v"] for r in rows}
    finally:
        await conn.close()


async def test_a_customer_can_neither_read_nor_change_another_customers_order_payment_or_wallet(
        stack: Any, raw: httpx.AsyncClient) -> None:
    alice, bob, merchant, stranger = uid("alice"), uid("bob"), uid("m"), uid("m")
    a, b, m, s = (await tok(stack, alice, "customer"), await tok(stack, bob, "customer"),
                  await tok(stack, merchant, "merchant"), await tok(stack, stranger, "merchant"))
    orders, projector, payments = stack.url("orders"), stack.url("projector"), stack.url("payments")
    r = await raw.post(f"{orders}/orders?wait=true", json=order_body(alice), headers=a)
    assert r.status_code == 201, r.text
    order = r.json()["order_id"]
    await until("the order's transaction", lambda: _ok(raw, f"{payments}/payments/{order}", a))
    r = await raw.post(f"{payments}/wallets/{alice}/top-ups", headers=a,
                       json={"amount": {"amount": 100000, "currency": "TWD"}, "reference": uid("topup")})
    assert r.status_code == 200, r.text

    # Reading: Alice sees her own; Bob and a stranger merchant get what an unknown id gets.
    for path in (f"{projector}/orders/{order}", f"{projector}/orders/{order}/history", f"{payments}/payments/{order}",
                 f"{payments}/payments/{order}/refunds", f"{payments}/payments/{order}/settlement-preview"):
        assert (await raw.get(path, headers=a)).status_code in (200, 409), path  # 409: nothing to settle yet
        unknown = path.replace(order, "no-such-order")
        for who in (b, s):
            theirs, nothing = await raw.get(path, headers=who), await raw.get(unknown, headers=who)
            assert theirs.status_code == nothing.status_code == 404, (path, theirs.text)
            assert theirs.json()["error"]["message"].replace(order, "?") == \
                nothing.json()["error"]["message"].replace("no-such-order", "?")
    for path in (f"{payments}/wallets/{alice}", f"{payments}/customers/{alice}/vouchers",
                 f"{orders}/customers/{alice}/standing"):
        assert (await raw.get(path, headers=a)).status_code == 200, path
        assert (await raw.get(path, headers=b)).status_code == 404, path
    # A list is a customer's own only when filtered on them.
    r = await raw.get(f"{projector}/orders", params={"customer": alice}, headers=a)
    assert [o["order_id"] for o in r.json()["items"]] == [order]
    for params in ({"customer": alice}, {}):
        r = await raw.get(f"{projector}/orders", params=params, headers=b)
        assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "customer"

    # Changing: refused on the actor (403 naming X-Actor, not the owner), nothing stored.
    before = await versions(stack.pg_dsn, f"order-{order}", f"transaction-{order}", f"wallet-{alice}")
    refusals = [
        (f"{orders}/orders/{order}/cancel", {"cancelled_by": "customer", "reason_code": "not_mine"}),
        (f"{orders}/orders/{order}/bill/confirm", {"customer_id": bob, "revision": 1}),
        (f"{payments}/payments/{order}/attempts", {"amount": r_amount(), "method": "credit_card"}),
        (f"{payments}/payments/{order}/prepay-with-balance", None),
        (f"{payments}/wallets/{alice}/top-ups", {"amount": r_amount(), "reference": uid("topup")}),
    ]
    for url, body in refusals:
        r = await raw.post(url, json=body, headers=b)
        assert r.status_code == 403, (url, r.text)
        assert r.json()["error"]["details"]["fields"][0]["field"] == "X-Actor" and alice not in r.text, url
    r = await raw.post(f"{orders}/orders/{order}/cancel", headers=a,
                       json={"cancelled_by": "platform", "fault_party": "merchant", "reason_code": "x"})
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "cancelled_by"
    r = await raw.post(f"{orders}/orders", json=order_body(alice, hour=10), headers=b)  # placing for someone else
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Actor"
    assert await versions(stack.pg_dsn, *before) == before

    # The merchant of the order (once it accepted it) sees it; a stranger merchant still does not.
    await _pay_prepayment(stack, order)
    await until("dispatch", lambda: _status(raw, f"{projector}/orders/{order}", a, "awaiting_confirmation"))
    assert (await raw.post(f"{orders}/orders/{order}/accept", json={"merchant_id": merchant}, headers=s)
            ).status_code == 403  # the stranger names itself, then cannot act as the real one...
    r = await raw.post(f"{orders}/orders/{order}/accept?wait=true", json={"merchant_id": merchant}, headers=m)
    assert r.status_code == 200, r.text
    assert (await raw.get(f"{projector}/orders/{order}", headers=m)).status_code == 200
    assert (await raw.get(f"{payments}/payments/{order}", headers=m)).status_code == 200
    assert (await raw.get(f"{projector}/orders/{order}", headers=s)).status_code == 404
    r = await raw.post(f"{orders}/orders/{order}/start", json={"merchant_id": merchant}, headers=s)
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Actor"
    assert (await raw.get(f"{payments}/merchants/{merchant}/record", headers=m)).status_code == 200
    assert (await raw.get(f"{payments}/merchants/{merchant}/record", headers=s)).status_code == 404


def r_amount() -> dict[str, Any]:
    return {"amount": 120000, "currency": "TWD"}


async def _ok(raw: httpx.AsyncClient, url: str, headers: dict[str, str]) -> bool:
    return (await raw.get(url, headers=headers)).status_code == 200


async def _status(raw: httpx.AsyncClient, url: str, headers: dict[str, str], status: str) -> bool:
    r = await raw.get(url, headers=headers)
    return r.status_code == 200 and r.json()["status"] == status


async def _pay_prepayment(stack: Any, order: str) -> None:
    from libs.devstack.stripe import charge_succeeded, send_webhook
    from tests.e2e.conftest import WEBHOOK_SECRET

    async with httpx.AsyncClient(timeout=15) as http:
        await send_webhook(http, f"{stack.url('payments')}/webhooks/stripe", WEBHOOK_SECRET,
                           charge_succeeded(order, 120000))


async def test_a_customer_sees_only_their_own_rmas_labels_tracking_notifications_and_slas(
        stack: Any, raw: httpx.AsyncClient) -> None:
    alice, bob = uid("alice"), uid("bob")
    a, b = await tok(stack, alice, "customer"), await tok(stack, bob, "customer")
    staff = await tok(stack, "access-tests", "service")
    rma, shipping, notifications = stack.url("rma"), stack.url("shipping"), stack.url("notifications")
    sku, serial = uid("SKU").upper(), uid("SN")
    r = await raw.put(f"{rma}/catalogue/{sku}", json={"name": "mouse", "price": r_amount(), "warranty_days": 365},
                      headers=staff)
    assert r.status_code == 200, r.text
    sold = (datetime.now(TZ).date() - timedelta(days=100)).isoformat()
    r = await raw.post(f"{rma}/sales-records", json={"serial": serial, "sku": sku, "invoice_number": uid("INV"),
                                                      "sold_on": sold}, headers=staff)
    assert r.status_code == 200, r.text
    body = {"serial": serial, "sku": sku, "fault_code": "left_button.double_click", "description": "雙擊",
            "contact": {"customer_id": alice, "email": f"{alice}@example.com", "locale": "zh-TW"},
            "ship_to": {"name": "王小明", "line1": "復興南路一段 100 號", "city": "臺北市", "postal_code": "106"}}
    r = await raw.post(f"{rma}/rmas", json={**body, "contact": {**body["contact"], "customer_id": alice}}, headers=b)
    assert r.status_code == 403  # Bob cannot open Alice's RMA
    r = await raw.post(f"{rma}/rmas", json=body, headers=a)
    assert r.status_code == 201, r.text
    rma_id = r.json()["rma_id"]

    async def label() -> dict[str, Any] | None:
        got = (await raw.get(f"{shipping}/labels", params={"rma_id": rma_id}, headers=staff)).json()["labels"]
        return got[0] if got else None

    async def message() -> dict[str, Any] | None:
        got = (await raw.get(f"{notifications}/notifications", params={"recipient": alice, "subject_id": rma_id},
                             headers=staff)).json()["items"]
        return got[0] if got else None

    lbl = await until("the return label", label)
    msg = await until("a notification to the customer", message)
    await until("the SLA clock", lambda: _ok(raw, f"{notifications}/slas/{rma_id}", a))
    own = [f"{rma}/rmas/{rma_id}", f"{shipping}/labels/{lbl['label_id']}", f"{shipping}/labels?rma_id={rma_id}",
           f"{shipping}/track/{lbl['tracking_number']}", f"{shipping}/track/{rma_id}",
           f"{shipping}/track/{rma_id}/page", f"{notifications}/notifications/{msg['notification_id']}",
           f"{notifications}/slas/{rma_id}"]
    for url in own:
        assert (await raw.get(url, headers=a)).status_code == 200, url
        r = await raw.get(url, headers=b)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (url, r.text)
        assert alice not in r.text
    for url, param in ((f"{rma}/rmas?customer={alice}", "customer"),
                       (f"{notifications}/notifications?recipient={alice}", "recipient")):
        assert (await raw.get(url, headers=a)).status_code == 200
        r = await raw.get(url, headers=b)
        assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == param
    r = await raw.post(f"{rma}/rmas/{rma_id}/cancel", json={"reason": "not mine"}, headers=b)
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Actor"
    # The auditor reads every one of them, and changes nothing.
    auditor = await tok(stack, "audrey", "auditor")
    for url in own:
        assert (await raw.get(url, headers=auditor)).status_code == 200, url
    r = await raw.post(f"{rma}/rmas/{rma_id}/cancel", json={"reason": "audit"}, headers=auditor)
    assert r.status_code == 403 and r.json()["error"]["details"]["fields"][0]["field"] == "X-Role"
    assert (await raw.get(f"{rma}/rmas/{rma_id}", headers=a)).json()["status"] == "ELIGIBLE"


async def test_the_events_of_a_command_carry_the_tokens_actor_and_role(stack: Any, raw: httpx.AsyncClient) -> None:
    customer = uid("cust")
    token = await tok(stack, customer, "customer")
    # X-Actor / X-Role that contradict the token are refused, and nothing is stored.
    for claim in ({"X-Actor": "someone-else"}, {"X-Role": "platform"}):
        r = await raw.post(f"{stack.url('orders')}/orders", json=order_body(customer, hour=10), headers={
            **token, **claim})
        assert r.status_code == 403, r.text
    correlation = uid("corr")
    r = await raw.post(f"{stack.url('orders')}/orders?wait=true", json=order_body(customer, hour=10),
                       headers={**token, "X-Correlation-ID": correlation})
    assert r.status_code == 201, r.text
    order = r.json()["order_id"]
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        # What the command itself appended (reactions of other services carry a causation id).
        rows = await conn.fetch("SELECT stream_id, metadata::text AS metadata FROM events"
                                " WHERE metadata->>'correlation_id' = $1 AND metadata->>'causation_id' IS NULL",
                                correlation)
        by_actor = await conn.fetchval("SELECT count(*) FROM events WHERE metadata->>'actor' = $1", customer)
    finally:
        await conn.close()
    metas = [json.loads(r["metadata"]) for r in rows]
    assert f"order-{order}" in {r["stream_id"] for r in rows}
    assert {(m["actor"], m["role"]) for m in metas} == {(customer, "customer")}
    assert by_actor == len(rows)  # the refused requests stored nothing
    history = (await raw.get(f"{stack.url('projector')}/orders/{order}/history", headers=token)).json()
    assert (history[0]["event_type"], history[0]["actor"], history[0]["role"]) == ("OrderPlaced", customer,
                                                                                   "customer")
