"""Issue 7, item 6: hostile HTTP input against every service of the running platform.

schemathesis generates requests from each service's own OpenAPI document (valid ones, and invalid ones:
wrong types, missing fields, values out of range), sent with a real token of a role the operation allows;
no response may be a 5xx, and every 4xx must name the field and the rule (`error.details.fields`).
Then explicit cases: oversized bodies (413), deep JSON, wrong content types (415), unicode edge cases,
negative and enormous amounts, a currency that is not the order's, and a signed Stripe event re-sent after
the signature's tolerance window (refused)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import time
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation.modes import GenerationMode

from libs.auth import Rule
from tests.e2e.test_access import order_body, uid
from tests.reliability.conftest import FULL, SUMMARY
from tests.support.auth import bearer

pytestmark = pytest.mark.e2e
SERVICES = ("orders", "projector", "payments", "rma", "shipping", "notifications")
EXAMPLES = 25 if FULL else 4
# Roles that may act on everything their rule allows without being a party to it: preferred, so that a
# generated request gets past the gate and reaches the route's own validation.
STAFF_ROLES = ("platform", "service", "approver", "reconciler", "importer", "merchant", "customer", "auditor")


@functools.cache
def access_table(service: str) -> dict[str, Any]:
    app = importlib.import_module(f"services.{service}.entrypoints.http").create_app(None)
    return dict(app.state.access_table)


def role_for(service: str, method: str, path: str) -> str | None:
    entry = access_table(service).get(f"{method.upper()} {path}")
    if not isinstance(entry, Rule):
        return None
    return next(r for r in STAFF_ROLES if r in entry.roles)


def problems(response: Any) -> list[str]:
    """What is wrong with a response to hostile input (empty: nothing)."""
    status = response.status_code
    if status >= 500:
        return [f"{status}: {response.text[:500]}"]
    if 400 <= status < 500:
        try:
            error = response.json()["error"]
            fields = error["details"]["fields"]
        except Exception:
            return [f"{status} without error.details.fields: {response.text[:300]}"]
        if not fields or not all(f.get("field") and f.get("rule") for f in fields):
            return [f"{status} with a field-less reason: {response.text[:300]}"]
    return []


def fuzz(service: str, url: str, tokens: dict[str, str]) -> list[str]:
    """Run schemathesis over every operation of one service; the problems found (one per operation/status)."""
    doc = httpx.get(f"{url}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    found: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        role = role_for(service, operation.method, operation.path)
        headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any, operation: Any = operation, headers: dict[str, str] = headers) -> None:
                response = case.call(base_url=url, headers=headers, timeout=15)
                for problem in problems(response):
                    key = f"{operation.method.upper()} {operation.path} -> {problem[:60]}"
                    found.setdefault(key, f"{problem} | request: {case.method} {case.formatted_path} "
                                          f"query={case.query} body={str(case.body)[:300]}")

            try:
                run()
            except Exception as exc:  # an unsatisfiable strategy for an odd parameter is not the app's fault
                found.setdefault(f"{operation.method.upper()} {operation.path} -> generation",
                                 f"could not generate: {type(exc).__name__}: {exc}"[:300])
    return [f"{k}: {v}" for k, v in sorted(found.items()) if not k.endswith("-> generation")]


@pytest.mark.parametrize("service", SERVICES)
async def test_schemathesis_finds_no_5xx_and_every_4xx_names_the_field(stack: Any, service: str) -> None:
    run = uuid.uuid4().hex[:8]
    tokens = {role: await stack.tokens.token(f"fuzz-{role}-{run}", role) for role in STAFF_ROLES}
    found = await asyncio.to_thread(fuzz, service, stack.url(service), tokens)
    SUMMARY[f"schemathesis {service}"] = f"up to {EXAMPLES} cases per operation and mode, {len(found)} problem(s)"
    assert not found, "\n".join(found)



# --- explicit hostile cases ------------------------------------------------------------------------------


def fields(r: httpx.Response) -> list[str]:
    return [f["field"] for f in r.json()["error"]["details"]["fields"]]


async def _placed_order(stack: Any, raw: httpx.AsyncClient, customer: str, headers: dict[str, str],
                        **address: str) -> httpx.Response:
    body = order_body(customer)
    body["address"].update(address)
    return await raw.post(f"{stack.url('orders')}/orders?wait=true", json=body, headers=headers)


@pytest.fixture
async def raw() -> Any:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


async def test_oversized_bodies_are_413_before_anything_is_read_or_stored(stack: Any, raw: httpx.AsyncClient) -> None:
    customer = uid("cust")
    me = bearer(await stack.tokens.token(customer, "customer"))
    huge = order_body(customer)
    huge["address"]["line1"] = "x" * (1024 * 1024 + 10)  # one JSON body above the 1 MiB limit
    before = await count_events(stack.pg_dsn)
    r = await raw.post(f"{stack.url('orders')}/orders", json=huge, headers=me)
    assert r.status_code == 413 and fields(r) == ["body"], r.text

    async def chunks() -> Any:  # streamed without a Content-Length: refused once the limit is passed
        for _ in range(20):
            yield b"x" * 100_000
    r = await raw.post(f"{stack.url('payments')}/wallets/{customer}/top-ups", content=chunks(),
                       headers={**me, "Content-Type": "application/json"})
    assert r.status_code == 413 and fields(r) == ["body"], r.text
    assert await count_events(stack.pg_dsn, customer) == 0
    assert await count_events(stack.pg_dsn) >= before  # (others may append meanwhile; ours appended nothing)


async def test_deep_json_wrong_content_types_and_broken_unicode_are_4xx_naming_the_field(
        stack: Any, raw: httpx.AsyncClient) -> None:
    customer = uid("cust")
    me = bearer(await stack.tokens.token(customer, "customer"))
    orders = f"{stack.url('orders')}/orders"
    body = order_body(customer)
    cases: list[tuple[bytes, str, int, str]] = [
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 422, "body"),  # beyond any parser's recursion
        (orjson.dumps({**body, "address": {**body["address"], "extra": functools.reduce(
            lambda inner, _: {"d": inner}, range(40), {})}}), "application/json", 422, "address.extra"),
        (orjson.dumps(body), "text/plain", 415, "Content-Type"),
        (orjson.dumps(body), "application/xml", 415, "Content-Type"),
        (b"customer_id=" + customer.encode(), "application/x-www-form-urlencoded", 415, "Content-Type"),
        (orjson.dumps(body).replace("忠孝".encode(), b"\\u0000"), "application/json", 422, "address.line1"),
        (orjson.dumps(body).replace("忠孝".encode(), b"\\ud800"), "application/json", 422, "body"),  # lone surrogate
        (b'{"customer_id": NaN}', "application/json", 422, "body"),
        ("\ufeff".encode() + orjson.dumps(body)[:-1], "application/json", 422, "body"),  # truncated
    ]
    for content, media, status, field in cases:
        r = await raw.post(orders, content=content, headers={**me, "Content-Type": media})
        assert r.status_code == status and any(f.startswith(field) for f in fields(r)), (
            media, content[:60], r.status_code, r.text[:300])
    assert await count_events(stack.pg_dsn, customer) == 0

    # Legitimate edge cases of unicode are stored and read back exactly.
    odd = {"line1": "👩‍👩‍👧‍👦 1F 忠孝東路 \u202eRTL\u202c e\u0301", "district": "𠀋𡈽𡌛", "city": "臺北市\u200d"}
    r = await _placed_order(stack, raw, customer, me, **odd)
    assert r.status_code == 201, r.text
    order_id = r.json()["order_id"]
    view = (await raw.get(f"{stack.url('projector')}/orders/{order_id}", headers=me)).json()
    assert (view["city"], view["district"]) == (odd["city"], odd["district"])
    async with asyncpg_connect(stack.pg_dsn) as conn:
        stored = await conn.fetchval("SELECT data->'address' FROM events WHERE stream_id = $1 AND stream_version = 1",
                                     f"order-{order_id}")
    assert {k: orjson.loads(stored)[k] for k in odd} == odd


async def test_negative_enormous_and_foreign_amounts_are_422_naming_the_field(stack: Any,
                                                                              raw: httpx.AsyncClient) -> None:
    customer = uid("cust")
    me = bearer(await stack.tokens.token(customer, "customer"))
    top_ups = f"{stack.url('payments')}/wallets/{customer}/top-ups"
    r = await raw.post(top_ups, json={"amount": {"amount": 100000, "currency": "TWD"}, "reference": uid("t")},
                       headers=me)
    assert r.status_code == 200, r.text
    before = await count_events(stack.pg_dsn, customer)
    for amount, field in [({"amount": -100, "currency": "TWD"}, "amount"),
                          ({"amount": 0, "currency": "TWD"}, "amount"),
                          ({"amount": 10**16, "currency": "TWD"}, "amount.amount"),
                          ({"amount": 10**40, "currency": "TWD"}, "amount.amount"),
                          ({"amount": 100.5, "currency": "TWD"}, "amount.amount"),
                          ({"amount": "100", "currency": "TWD"}, "amount.amount"),
                          ({"amount": 100, "currency": "twd"}, "amount.currency"),
                          ({"amount": 100, "currency": "USD"}, "currency")]:
        r = await raw.post(top_ups, json={"amount": amount, "reference": uid("t")}, headers=me)
        assert r.status_code == 422, (amount, r.status_code, r.text)
        assert any(f == field or f.startswith(field) or f.endswith(field) for f in fields(r)), (amount, r.text)
    assert await count_events(stack.pg_dsn, customer) == before
    wallet = (await raw.get(f"{stack.url('payments')}/wallets/{customer}", headers=me)).json()
    assert "100000" in orjson.dumps(wallet).decode()


async def test_a_signed_stripe_event_replayed_after_the_tolerance_window_is_refused(stack: Any,
                                                                                    raw: httpx.AsyncClient) -> None:
    from libs.devstack.stripe import charge_succeeded
    from services.payments.domain.signature import sign
    from tests.e2e.conftest import WEBHOOK_SECRET

    event = charge_succeeded(f"o-replay-{uuid.uuid4().hex[:8]}", 1000)
    payload = orjson.dumps(event)
    url = f"{stack.url('payments')}/webhooks/stripe"
    signed_then = sign(payload, WEBHOOK_SECRET, int(time.time()) - 301)  # captured 5 min + 1 s ago
    r = await raw.post(url, content=payload, headers={"Stripe-Signature": signed_then,
                                                      "Content-Type": "application/json"})
    assert r.status_code in (400, 401) and "Stripe-Signature" in fields(r), r.text
    assert "tolerance" in r.text
    async with asyncpg_connect(stack.pg_dsn) as conn:
        stored = await conn.fetchval("SELECT count(*) FROM events WHERE data::text LIKE $1", f"%{event['id']}%")
    assert stored == 0
    # The same event signed now goes through once; the old signature still does not.
    fresh = sign(payload, WEBHOOK_SECRET, int(time.time()))
    r = await raw.post(url, content=payload, headers={"Stripe-Signature": fresh, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    r = await raw.post(url, content=payload, headers={"Stripe-Signature": signed_then,
                                                      "Content-Type": "application/json"})
    assert r.status_code in (400, 401)


async def test_a_signed_webhook_body_the_store_cannot_keep_is_400_naming_the_field(stack: Any,
                                                                                raw: httpx.AsyncClient) -> None:
    """The webhook reads its raw body (its signature covers the bytes): it applies the guard's rules itself."""
    from libs.devstack.stripe import charge_succeeded
    from services.payments.domain.signature import sign
    from tests.e2e.conftest import WEBHOOK_SECRET

    url = f"{stack.url('payments')}/webhooks/stripe"
    event = charge_succeeded(f"o-odd-{uuid.uuid4().hex[:8]}", 1000)
    good = orjson.dumps(event)
    for payload, field in [(good.replace(b'"object":"event"', rb'"object":"event","note":"a\u0000b"'), "note"),
                           (good.replace(b'"object":"event"', rb'"object":"event","note":"\udc00"'), "note"),
                           (good[:-1] + b',"deep":' + b"[" * 40 + b"]" * 40 + b"}", "deep"),
                           (good[:-1] + b',"deeper":' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body")]:
        r = await raw.post(url, content=payload, headers={"Stripe-Signature": sign(payload, WEBHOOK_SECRET,
                                                                                   int(time.time())),
                                                          "Content-Type": "application/json"})
        assert r.status_code == 400 and any(f.startswith(field) for f in fields(r)), (payload[-80:], r.text[:300])
    async with asyncpg_connect(stack.pg_dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM events WHERE data::text LIKE $1", f"%{event['id']}%") == 0


async def count_events(pg_dsn: str, actor: str | None = None) -> int:
    async with asyncpg_connect(pg_dsn) as conn:
        if actor is None:
            return int(await conn.fetchval("SELECT count(*) FROM events"))
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE metadata->>'actor' = $1 "
                                       "OR stream_id LIKE '%' || $1 || '%'", actor))


@contextlib.asynccontextmanager
async def asyncpg_connect(dsn: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
