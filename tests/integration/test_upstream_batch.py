"""A `payments.upstream` Kafka batch is applied set-based, in one transaction
(services/payments/application/batch.py). What it stores must be exactly what the same events
stored one at a time (the webhook's path) would: every event of every stream with its data and
metadata, and every read model row. The stream mixes Kolable course orders (charges, refunds,
disputes, re-buys, data gaps, duplicates, refunds before their charge) with orders that have a
Transaction (prepaid, paid the wrong amount, disputed, paid before the order reached payments:
parked, then released by the order), a refund report the rules refuse (which makes its batch go
one by one, the refusal stored and unapplied) and a malformed message (dead-lettered, the rest of
its batch stored). A second test sends part of the same events through the webhook while the
batches run: the results equal the one-by-one run's."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from libs.application.reactions import Reactions
from libs.devstack.stripe import charge_succeeded, dispute_created, stripe_id
from libs.domain.money import Money
from libs.eventstore import EventStore, Metadata, NewEvent
from libs.eventstore.migrate import migrate
from libs.messaging.envelope import EventEnvelope
from services.orders.domain.catalogue import ServiceItem
from services.orders.domain.events import (
    Address,
    IntendedTenders,
    PrepaymentDecision,
    PrepaymentReason,
    PrepaymentRule,
    Slot,
)
from services.orders.domain.order import Order
from services.payments.bootstrap import CONFIG_DIR, MIGRATIONS, Services, upstream_batch_handler, wire
from services.payments.domain.policy import parse_policies
from services.payments.domain.upstream import MalformedEvent
from services.payments.domain.upstream_events import ReceivedVia
from services.payments.domain.wallet import parse_wallet_policy
from tests.support.databases import fresh_database
from tests.support.stripe_events import generate

pytestmark = pytest.mark.integration
TZ = ZoneInfo("Asia/Taipei")
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # one clock for both runs: the same data
BATCH = 41
TABLES = {  # read models, with the columns that say when a row was written left out
    "payments_upstream_refs": "provider_payment_id", "payments_parked_facts": "fact_event_id",
    "kolable_orders": "order_id", "kolable_students": "student_key, order_id",
    "kolable_provider_facts": "fact_event_id", "payments_disputes": "dispute_id", "payments_refunds": "refund_id"}
WHEN = {"updated_at", "parked_at", "recorded_at", "created_at", "inserted_at"}


@dataclass
class Record:
    """A Kafka record as aiokafka hands it to the subscriber."""

    value: bytes
    offset: int
    topic: str = "payments.upstream"
    partition: int = 0
    key: bytes | None = None
    headers: list[Any] = field(default_factory=list)


def order_events(n: int) -> tuple[str, list[NewEvent], int]:
    """An order that requires a prepayment, as the orders service stores it (fixed event ids)."""
    order_id = f"o-{uuid.uuid4().hex[:10]}"
    now = datetime.now(TZ).replace(second=0, microsecond=0)
    day = (now + timedelta(days=3)).date()
    start = datetime(day.year, day.month, day.day, 19, 0, tzinfo=TZ)
    order = Order.place(
        order_id, customer_id=f"c-{n}", staff_id="s-1",
        item=ServiceItem(service_code="dishwash-standard", product_line="dishwashing", name="Dish-washing",
                         hourly_rate=Money(amount=60000, currency="TWD")),
        slot=Slot(start=start, end=start + timedelta(hours=2)),
        address=Address(line1="忠孝東路四段 1 號", district="大安區", city="臺北市"), tenders=IntendedTenders(),
        decision=PrepaymentDecision(required=True, policy_version="test", payment_deadline=now + timedelta(days=1),
                                    reasons=[PrepaymentReason(rule=PrepaymentRule.TIME_OF_DAY, detail="19:00")]),
        prepayment_bill_id=f"b-{order_id}", timezone="Asia/Taipei", at=now)
    assert order.estimated_total is not None
    events = [NewEvent(e.event_type, e.to_data(), Metadata(actor="orders", role="service",
                                                           correlation_id=f"order-{order_id}"),
                       e.schema_version, event_id=uuid.uuid4()) for e in order.pending]
    return order_id, events, order.estimated_total.amount


def refund_report(charge: dict[str, Any], amount: int, metadata: dict[str, str]) -> dict[str, Any]:
    obj = charge["data"]["object"]
    return {"id": stripe_id("evt"), "object": "event", "type": "charge.refund.updated", "livemode": False,
            "created": obj["created"] + 60,
            "data": {"object": {"id": stripe_id("re"), "object": "refund", "amount": amount, "currency": "twd",
                                "charge": obj["id"], "payment_intent": obj["payment_intent"], "status": "succeeded",
                                "created": obj["created"] + 60, "metadata": metadata}}}


@dataclass
class Stream:
    bodies: list[bytes]  # delivery order
    early: list[tuple[str, list[NewEvent]]]  # orders stored (and reacted to) before the stream
    late: list[tuple[str, list[NewEvent]]]  # orders that reach payments after it
    malformed: int  # index of the malformed body


def build_stream() -> Stream:
    scenario = generate(20261201, 60)
    assert scenario.refund_before_charge and scenario.duplicate_ids
    bodies = scenario.bodies()
    early, late, extra = [], [], []
    for n in range(3):
        order_id, events, amount = order_events(n)
        early.append((order_id, events))
        charge = charge_succeeded(order_id, amount)
        extra += [charge, dispute_created(charge) if n == 0 else charge]  # a dispute; a charge reported twice
    wrong_id, wrong_events, amount = order_events(3)
    early.append((wrong_id, wrong_events))
    wrong = charge_succeeded(wrong_id, amount - 1)  # not the prepayment: money to return
    # A refund report naming a refund that is not one of the order's: refused (RuleViolation).
    refused = refund_report(wrong, amount - 1, {"closeloop_refund_id": "r-not-of-this-order"})
    late_id, late_events, amount = order_events(4)
    late.append((late_id, late_events))
    extra += [wrong, refused, charge_succeeded(late_id, amount)]  # the last one parks: no transaction yet
    # A refund report delivered before its charge (no metadata: parked until the charge names the order).
    first = charge_succeeded(early[1][0], 100)
    mixed = [json.dumps(e).encode() for e in extra]
    bodies = [*bodies[:5], json.dumps(refund_report(first, 100, {})).encode(), *bodies[5:]]
    for i, body in enumerate(mixed):
        bodies.insert(17 + i * 23, body)
    bodies.insert(BATCH * 2 + 3, json.dumps(first).encode())  # the charge comes in a later batch
    bodies.insert(60, bodies[3])  # a duplicate within the second batch
    malformed = 30
    bodies.insert(malformed, b'{"id": "evt_broken", "object": "event", "type": 7}')
    return Stream(bodies, early, late, malformed)


async def payments(dsn: str) -> tuple[EventStore, Services]:
    store = await EventStore.connect(dsn)
    async with store.pool.acquire() as conn:
        await migrate(conn, {"payments": MIGRATIONS})
    services = wire(store, parse_policies((CONFIG_DIR / "cancellation_policy.toml").read_text()),
                    parse_wallet_policy((CONFIG_DIR / "wallet_policy.toml").read_text()), lambda: NOW)
    return store, services


async def deliver_orders(store: EventStore, services: Services, orders: list[tuple[str, list[NewEvent]]]) -> None:
    """Store the orders service's events and hand them to payments' reaction, as its consumer does."""
    reactions = Reactions(store, services.service.on_orders_event, actor="payments")
    for order_id, events in orders:
        await store.append(f"order-{order_id}", 0, events)
        recorded = await store.read_stream(f"order-{order_id}")
        async with store.transaction() as conn:
            await reactions.handle(conn, [EventEnvelope.from_recorded(r) for r in recorded])


async def snapshot(store: EventStore) -> dict[str, Any]:
    """Every event (without what differs by nature: event ids of derived events, hashes, positions,
    times of writing) and every read model row."""
    rows = await store.pool.fetch(
        "SELECT stream_id, stream_version, event_type, schema_version, data, metadata FROM events"
        " ORDER BY stream_id, stream_version")
    out: dict[str, Any] = {"events": [dict(r) for r in rows]}
    for table, key in TABLES.items():
        out[table] = [{k: v for k, v in dict(r).items() if k not in WHEN}
                      for r in await store.pool.fetch(f"SELECT * FROM {table} ORDER BY {key}")]
    return out


@pytest.fixture
async def databases(pg_dsn: str) -> AsyncIterator[list[str]]:
    async with fresh_database(pg_dsn, "it_upb") as a, fresh_database(pg_dsn, "it_upb") as b:
        yield [a, b]


async def one_by_one(dsn: str, stream: Stream) -> dict[str, Any]:
    store, services = await payments(dsn)
    try:
        await deliver_orders(store, services, stream.early)
        for i, body in enumerate(stream.bodies):
            try:
                await services.ingestor.ingest_unbatched(body, via=ReceivedVia.KAFKA, signature_verified=False)
            except MalformedEvent:
                assert i == stream.malformed
        await deliver_orders(store, services, stream.late)
        return await snapshot(store)
    finally:
        await store.close()


async def test_batches_store_exactly_what_one_by_one_ingestion_stores(databases: list[str]) -> None:
    stream = build_stream()
    expected = await one_by_one(databases[0], stream)
    store, services = await payments(databases[1])
    try:
        await deliver_orders(store, services, stream.early)
        stats = {"stored": 0, "duplicates": 0, "malformed": 0}
        handle = upstream_batch_handler(services.ingestor, stats, "payments-test", None)
        records = [Record(body, offset) for offset, body in enumerate(stream.bodies)]
        for i in range(0, len(records), BATCH):
            await handle(records[i:i + BATCH])
        await deliver_orders(store, services, stream.late)
        got = await snapshot(store)
        dead = await store.pool.fetch("SELECT reason_code, source_offset FROM dead_letters")
        outcomes = services.ingestor.outcomes
    finally:
        await store.close()
    assert stats["malformed"] == 1 and [(d["reason_code"], d["source_offset"]) for d in dead] == [
        ("invalid_payload", stream.malformed)]
    assert stats["duplicates"] >= 2 and stats["stored"] + stats["duplicates"] + 1 == len(stream.bodies)
    assert outcomes.get("refused", 0) == 1  # the refund report of another refund, in the batch gone one by one
    assert len(got["events"]) == len(expected["events"])
    for mine, theirs in zip(got["events"], expected["events"], strict=True):
        assert mine == theirs
    for table in TABLES:
        assert got[table] == expected[table], table
    kinds = {e["event_type"] for e in got["events"]}
    assert {"TransactionPrepaymentCaptured", "TransactionPaymentToReturn", "DisputeOpened",
            "KolableOrderClassified"} <= kinds, kinds
    assert got["payments_parked_facts"] == []  # the refund before its charge and the early charge were released


async def test_the_same_events_through_the_webhook_meanwhile_change_nothing(databases: list[str]) -> None:
    stream = build_stream()
    expected = await one_by_one(databases[0], stream)
    store, services = await payments(databases[1])
    try:
        await deliver_orders(store, services, stream.early)
        handle = upstream_batch_handler(services.ingestor, {"stored": 0, "duplicates": 0, "malformed": 0},
                                        "payments-test", None)
        records = [Record(body, offset) for offset, body in enumerate(stream.bodies)]

        async def kafka() -> None:
            for i in range(0, len(records), BATCH):
                await handle(records[i:i + BATCH])

        async def webhook(bodies: list[bytes]) -> None:
            for body in bodies:
                await services.ingestor.ingest(body, via=ReceivedVia.WEBHOOK, signature_verified=True)

        good = [b for i, b in enumerate(stream.bodies) if i != stream.malformed]
        await asyncio.gather(kafka(), webhook(good[::3]), webhook(good[1::5]))
        await deliver_orders(store, services, stream.late)
        got = await snapshot(store)
    finally:
        await store.close()

    def upstream(snap: dict[str, Any]) -> list[tuple[str, int, str, Any]]:
        """The provider events stored: one receipt and at most one fact per provider event, the same facts."""
        return [(e["stream_id"], e["stream_version"], e["event_type"],
                 e["data"] if e["event_type"] != "UpstreamEventReceived" else e["data"]["payload"])
                for e in snap["events"] if e["stream_id"].startswith("upstream-")]

    assert upstream(got) == upstream(expected)
    # Who applied which fact first differs, the outcome does not: the read models are the same.
    for table in ("payments_upstream_refs", "payments_parked_facts", "kolable_students", "kolable_provider_facts"):
        assert got[table] == expected[table], table
    for mine, theirs in zip(got["kolable_orders"], expected["kolable_orders"], strict=True):
        assert (mine["order_id"], mine["status"], mine["student_id"]) == (
            theirs["order_id"], theirs["status"], theirs["student_id"])
    assert [(d["dispute_id"], d["state"], d["order_id"]) for d in got["payments_disputes"]] == [
        (d["dispute_id"], d["state"], d["order_id"]) for d in expected["payments_disputes"]]
    transactions = sorted({e["stream_id"] for e in expected["events"] if e["stream_id"].startswith("transaction-")})
    for sid in transactions:  # the webhook may deliver an order's two charges in the other order
        assert sorted(e["event_type"] for e in got["events"] if e["stream_id"] == sid) == sorted(
            e["event_type"] for e in expected["events"] if e["stream_id"] == sid), sid
