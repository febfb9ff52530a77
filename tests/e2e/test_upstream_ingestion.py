"""Upstream payment events in Stripe's format reach the payments service through the signed
webhook and the payments.upstream topic; each is stored once with its raw payload as
evidence, whatever the number of deliveries; bad signatures and bodies store nothing."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from faststream.kafka import KafkaBroker

from libs.devstack.client import PlatformClient
from libs.devstack.stripe import charge_succeeded, stripe_id
from services.payments.domain.signature import sign
from services.registry import PAYMENTS_UPSTREAM
from tests.e2e.conftest import OLD_WEBHOOK_SECRET, WEBHOOK_SECRET

pytestmark = pytest.mark.e2e


async def stored(pg_dsn: str, provider_event_id: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch("SELECT event_type, data FROM events WHERE stream_id = $1 ORDER BY stream_version",
                                f"upstream-stripe-{provider_event_id}")
        return [{"event_type": r["event_type"], "data": json.loads(r["data"])} for r in rows]
    finally:
        await conn.close()


async def post(client: PlatformClient, stack: Any, body: bytes, signature: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["Stripe-Signature"] = signature
    return await client.http.post(f"{stack.url('payments')}/webhooks/stripe", content=body, headers=headers)


async def test_signed_event_is_stored_once_however_often_it_is_delivered(client: PlatformClient, stack: Any) -> None:
    event = charge_succeeded(f"ord-{uuid.uuid4().hex[:8]}", 120000)
    body = json.dumps(event).encode()
    first = await post(client, stack, body, sign(body, WEBHOOK_SECRET, int(time.time())))
    assert first.status_code == 200, first.text
    assert first.json() == {"received": True, "id": event["id"], "type": "charge.succeeded", "duplicate": False,
                            "fact": "UpstreamChargeSucceeded"}
    again = await post(client, stack, body, sign(body, WEBHOOK_SECRET, int(time.time())))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    rows = await stored(stack.pg_dsn, event["id"])
    assert [r["event_type"] for r in rows] == ["UpstreamEventReceived", "UpstreamChargeSucceeded"]
    assert rows[0]["data"]["payload"] == event  # the raw event is kept as evidence
    assert rows[0]["data"]["signature_verified"] is True
    assert rows[1]["data"]["amount"] == {"amount": 120000, "currency": "TWD"}


async def test_a_second_secret_is_accepted_during_a_rotation(client: PlatformClient, stack: Any) -> None:
    event = charge_succeeded(f"ord-{uuid.uuid4().hex[:8]}", 120000)
    body = json.dumps(event).encode()
    r = await post(client, stack, body, sign(body, OLD_WEBHOOK_SECRET, int(time.time())))
    assert r.status_code == 200 and r.json()["duplicate"] is False


@pytest.mark.parametrize("case", ["tampered body", "wrong secret", "stale", "future", "no header", "garbage header"])
async def test_bad_or_stale_signature_is_400_and_stores_nothing(client: PlatformClient, stack: Any,
                                                                 case: str) -> None:
    event = charge_succeeded(f"ord-{uuid.uuid4().hex[:8]}", 120000)
    body = json.dumps(event).encode()
    now = int(time.time())
    signature: str | None = {
        "tampered body": sign(body, WEBHOOK_SECRET, now),
        "wrong secret": sign(body, "whsec_not_ours", now),
        "stale": sign(body, WEBHOOK_SECRET, now - 301),
        "future": sign(body, WEBHOOK_SECRET, now + 301),
        "no header": None,
        "garbage header": "v1=abc",
    }[case]
    sent = body.replace(b'"amount": 120000', b'"amount": 1') if case == "tampered body" else body
    r = await post(client, stack, sent, signature)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"]["fields"][0]["field"] == "Stripe-Signature"
    assert await stored(stack.pg_dsn, event["id"]) == []


@pytest.mark.parametrize(("body", "field"), [
    (b"not json", "body"),
    (b'{"object": "event"}', "id"),
    (json.dumps({**charge_succeeded("o1", 120000), "data": {}}).encode(), "data.object"),
])
async def test_a_malformed_body_is_400_naming_the_field_and_stores_nothing(client: PlatformClient, stack: Any,
                                                                           body: bytes, field: str) -> None:
    r = await post(client, stack, body, sign(body, WEBHOOK_SECRET, int(time.time())))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["details"]["fields"][0]["field"] == field


async def test_unknown_event_types_are_stored_and_acknowledged(client: PlatformClient, stack: Any) -> None:
    event = {**charge_succeeded("o1", 120000), "type": "customer.subscription.updated",
             "data": {"object": {"id": stripe_id("sub"), "object": "subscription"}}}
    body = json.dumps(event).encode()
    r = await post(client, stack, body, sign(body, WEBHOOK_SECRET, int(time.time())))
    assert r.status_code == 200 and r.json()["fact"] is None
    rows = await stored(stack.pg_dsn, event["id"])
    assert [r["event_type"] for r in rows] == ["UpstreamEventReceived"]
    assert rows[0]["data"]["known"] is False


async def test_events_on_the_upstream_topic_are_stored_once(stack: Any) -> None:
    event = charge_succeeded(f"ord-{uuid.uuid4().hex[:8]}", 120000)
    broker = KafkaBroker(stack.kafka_bootstrap, acks="all", enable_idempotence=False)
    await broker.start()
    try:
        for _ in range(3):  # redelivered by the producer
            await broker.publish(json.dumps(event).encode(), topic=PAYMENTS_UPSTREAM, key=event["id"].encode())
    finally:
        await broker.stop()
    deadline = time.monotonic() + 20
    while not (rows := await stored(stack.pg_dsn, event["id"])) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # give the duplicates time to arrive, then check nothing more was stored
    rows = await stored(stack.pg_dsn, event["id"])
    assert [r["event_type"] for r in rows] == ["UpstreamEventReceived", "UpstreamChargeSucceeded"]
    assert rows[0]["data"]["received_via"] == "kafka"


async def test_an_oversized_body_is_refused_with_413(client: PlatformClient, stack: Any) -> None:
    body = b'{"pad": "' + b"x" * 1_100_000 + b'"}'
    r = await post(client, stack, body, sign(body, WEBHOOK_SECRET, int(time.time())))
    assert r.status_code == 413
