"""The order projector against the real PostgreSQL: redelivery, gaps, arrival order across
streams, and the check that a read model rebuilt from the event store equals the live one.

Events come from the orders domain (tests/integration/helpers.py), are appended to the
real event store, and reach the projection the way Kafka delivers them: encoded by the
relay's envelope code, in batches through EnvelopeBatchConsumer, in an order that keeps
each stream's versions but nothing across streams. Every test writes into shadow schemas
of its own (created like services/projector/rebuild.py does) and looks only at its orders.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from libs.eventstore import EventStore, RecordedEvent
from libs.messaging import envelope
from libs.messaging.consumer import EnvelopeBatchConsumer
from libs.messaging.topics import ensure_topics
from services.projector.bootstrap import ProjectorSettings, build_broker, migrate_projector
from services.projector.projections.orders import OrdersProjection
from services.projector.rebuild import Drift, create_shadow, diff, drop, rebuild
from services.registry import ORDERS_EVENTS, TOPICS
from tests.integration.helpers import (
    FakeRecord,
    Story,
    append_stories,
    chunks,
    fake_records,
    interleave,
    order_ids_of,
    recorded,
    snapshot,
    stories,
)

pytestmark = pytest.mark.integration

Shadow = Callable[..., Awaitable[str]]


@pytest.fixture(scope="module")
async def read_model(store: EventStore) -> EventStore:
    await migrate_projector(store)
    return store


@pytest.fixture
async def shadow(read_model: EventStore) -> AsyncIterator[Shadow]:
    """make(create=True): a new shadow schema (empty read-model tables), dropped afterwards."""
    made: list[str] = []

    async def make(create: bool = True) -> str:
        name = f"it_proj_{uuid.uuid4().hex[:16]}"
        made.append(name)
        if create:
            await create_shadow(read_model, name)
        return name

    yield make
    for name in made:
        await drop(read_model, name)


def projector_into(store: EventStore, schema: str) -> EnvelopeBatchConsumer:
    """The projector's consumer (inbox + offsets + projection in one transaction) on `schema`."""
    return EnvelopeBatchConsumer(store.pool, f"it-projector-{uuid.uuid4().hex}",
                                 OrdersProjection(store, schema=schema).apply, check_events=False)


async def given(store: EventStore, items: list[Story]) -> dict[str, list[RecordedEvent]]:
    """Append the stories; return the stored order and bill streams (what orders.events carries)."""
    await append_stories(store, items)
    return {s: events for s, events in (await recorded(store, items)).items() if s.startswith(("order-", "bill-"))}


async def deliver(consumer: EnvelopeBatchConsumer, batches: Sequence[Sequence[FakeRecord]]) -> None:
    for batch in batches:
        await consumer.process_records(batch)


def expected_status(story: Story) -> str:
    return "cancelled" if story.kind.startswith("cancelled") or story.kind == "payment_expired" else "completed"


async def test_projector_redelivery_is_a_no_op(store: EventStore, shadow: Shadow) -> None:
    rng = random.Random(1)
    items = stories("completed", "payment_abandoned_and_retried", "cancelled_before_prepayment", retries=2)
    streams = await given(store, items)
    records = fake_records(interleave(streams, rng))
    order_ids = order_ids_of(items)
    schema = await shadow()
    consumer = projector_into(store, schema)

    await deliver(consumer, chunks(records, rng))
    assert (consumer.stats.applied, consumer.stats.duplicates) == (len(records), 0)
    first = await snapshot(store, schema, order_ids)
    assert {r["order_id"]: r["status"] for r in first["rm_orders"]} == {s.order_id: expected_status(s) for s in items}
    assert len(first["rm_bills"]) == sum(len(s.bill_streams) for s in items)
    assert len(first["rm_order_history"]) == len(records)

    # Kafka redelivers everything (e.g. the acknowledgement was lost): one batch ...
    await consumer.process_records(records)
    assert await snapshot(store, schema, order_ids) == first
    assert (consumer.stats.applied, consumer.stats.duplicates) == (len(records), len(records))
    # ... and again, shuffled across two batches (a rebalance in between)
    shuffled = list(records)
    rng.shuffle(shuffled)
    await deliver(consumer, [shuffled[: len(shuffled) // 3], shuffled[len(shuffled) // 3:]])
    assert await snapshot(store, schema, order_ids) == first
    assert (consumer.stats.applied, consumer.stats.duplicates) == (len(records), 2 * len(records))
    assert consumer.stats.received == 3 * len(records)

    # Even without the inbox (another replica's records, or pruned processed ids) the
    # projection itself skips versions it already applied.
    projection = OrdersProjection(store, schema=schema)
    async with store.transaction() as conn:
        assert await projection.apply(conn, [envelope.decode(r.value) for r in shuffled]) == 0
    assert await snapshot(store, schema, order_ids) == first


async def test_projector_fills_a_gap_from_the_event_store(store: EventStore, shadow: Shadow) -> None:
    [story] = items = stories("completed")
    streams = await given(store, items)
    order = streams[story.order_stream]
    missing = order[1]  # version 2 (OrderCheckoutStarted) never arrives from Kafka
    assert (missing.stream_version, missing.event_type) == (2, "OrderCheckoutStarted")
    schema = await shadow()
    consumer = projector_into(store, schema)
    bills = [e for s, events in streams.items() if s != story.order_stream for e in events]

    await deliver(consumer, [fake_records([order[0], *bills]), fake_records(order[2:])])
    rows = await snapshot(store, schema, [story.order_id])
    [row] = rows["rm_orders"]
    assert (row["status"], row["order_version"], row["last_position"]) == (
        "completed", len(order), order[-1].global_position)
    prepaid = next(e for e in order if e.event_type == "OrderPrepaid")
    assert (row["prepaid_amount"], row["bill_revision"]) == (prepaid.data["amount"]["amount"], 2)
    history = {(h["stream_id"], h["stream_version"]): h for h in rows["rm_order_history"]}
    filled = history[(story.order_stream, 2)]
    assert (filled["event_id"], filled["event_type"], filled["global_position"], filled["data"]) == (
        missing.event_id, missing.event_type, missing.global_position, missing.data)
    assert len(history) == sum(len(v) for v in streams.values())
    assert consumer.stats.applied == sum(len(v) for v in streams.values()) - 1  # the store supplied one

    # the late copy of version 2 changes nothing, although the inbox has never seen its id
    before = await snapshot(store, schema, [story.order_id])
    assert await consumer.process_records(fake_records([missing])) == [envelope.decode(envelope.encode(missing)[1])]
    assert await snapshot(store, schema, [story.order_id]) == before

    rebuilt = await shadow(create=False)
    await rebuild(store, rebuilt, order_ids=[story.order_id])
    assert await diff(store, rebuilt, live=schema, order_ids=[story.order_id]) == []


async def test_read_model_rebuilt_from_the_store_equals_the_live_one(store: EventStore, shadow: Shadow) -> None:
    rng = random.Random(3)
    items = stories("completed", "completed", "completed_without_prepayment", "cancelled_before_prepayment",
                    "cancelled_after_prepayment", "payment_abandoned_and_retried", "payment_expired", retries=3)
    streams = await given(store, items)
    order_ids = order_ids_of(items)
    live = await shadow()
    consumer = projector_into(store, live)
    # Kafka keeps each stream's order, not the order across streams: one random merge per
    # three orders, in random batches, so order and bill streams arrive in varying orders.
    groups = [items[i:i + 3] for i in range(0, len(items), 3)]
    for group in groups:
        merged = interleave({s: streams[s] for story in group for s in story.projected_streams}, rng)
        await deliver(consumer, chunks(fake_records(merged), rng, 1, 9))
    assert consumer.stats.applied == sum(len(v) for v in streams.values())

    rebuilt = await shadow(create=False)
    applied = await rebuild(store, rebuilt, order_ids=order_ids)
    assert applied == sum(len(v) for v in streams.values())
    assert await diff(store, rebuilt, live=live, order_ids=order_ids) == []
    rows = await snapshot(store, live, order_ids)
    assert {r["order_id"]: r["status"] for r in rows["rm_orders"]} == {s.order_id: expected_status(s) for s in items}
    assert {r["status"] for r in rows["rm_bills"]} == {"completed", "closed"}

    # The check can fail: a live row that differs, a missing history row, a changed bill.
    cancelled = next(s for s in items if s.kind == "cancelled_after_prepayment")
    await store.pool.execute(f"UPDATE {live}.rm_orders SET status = 'completed' WHERE order_id = $1",
                             cancelled.order_id)
    lost = rows["rm_order_history"][0]["event_id"]
    await store.pool.execute(f"DELETE FROM {live}.rm_order_history WHERE event_id = $1", lost)
    bill = rows["rm_bills"][0]["bill_id"]
    await store.pool.execute(f"UPDATE {live}.rm_bills SET amount = amount + 1 WHERE bill_id = $1", bill)
    drifts = await diff(store, rebuilt, live=live, order_ids=order_ids)
    assert sorted(drifts, key=repr) == sorted([
        Drift("rm_orders", cancelled.order_id, "live"), Drift("rm_orders", cancelled.order_id, "rebuilt"),
        Drift("rm_bills", bill, "live"), Drift("rm_bills", bill, "rebuilt"),
        Drift("rm_order_history", str(lost), "rebuilt"),
    ], key=repr)


async def test_bill_events_arriving_before_their_order_events_give_the_same_read_model(
        store: EventStore, shadow: Shadow) -> None:
    rng = random.Random(4)
    items = stories("completed", "cancelled_before_prepayment", "payment_abandoned_and_retried",
                    "completed_without_prepayment")
    streams = await given(store, items)
    order_ids = order_ids_of(items)

    def arrival(first: str) -> list[RecordedEvent]:
        """Every event of the `first` category's streams, then the rest (each stream in order)."""
        head = {s: e for s, e in streams.items() if s.startswith(first)}
        tail = {s: e for s, e in streams.items() if not s.startswith(first)}
        return interleave(head, rng) + interleave(tail, rng)

    models: dict[str, str] = {}
    for first in ("bill-", "order-"):
        schema = models[first] = await shadow()
        consumer = projector_into(store, schema)
        records = fake_records(arrival(first))
        n_first = sum(len(e) for s, e in streams.items() if s.startswith(first))
        await deliver(consumer, chunks(records[:n_first], rng, 1, 6))
        halfway: dict[str, Any] = await snapshot(store, schema, order_ids)
        if first == "bill-":  # bills are projected although their orders are not known yet
            assert halfway["rm_orders"] == []
            assert {r["order_id"] for r in halfway["rm_bills"]} == set(order_ids)
        else:
            assert halfway["rm_bills"] == []
            assert len(halfway["rm_orders"]) == len(order_ids)
        await deliver(consumer, chunks(records[n_first:], rng, 1, 6))

    assert await diff(store, models["bill-"], live=models["order-"], order_ids=order_ids) == []
    rebuilt = await shadow(create=False)
    await rebuild(store, rebuilt, order_ids=order_ids)
    assert await diff(store, rebuilt, live=models["bill-"], order_ids=order_ids) == []
    rows = await snapshot(store, models["bill-"], order_ids)
    assert {r["order_id"]: r["status"] for r in rows["rm_orders"]} == {s.order_id: expected_status(s) for s in items}
    assert all(r["bill_id"] for r in rows["rm_orders"] if r["status"] == "completed")


async def test_projector_fetches_a_failed_batch_again_instead_of_skipping_it(
        store: EventStore, shadow: Shadow, kafka_bootstrap: str) -> None:
    """The projector process's subscriber (manual acks): a batch whose transaction failed
    with a non-transient error (say, an event version this build cannot read yet during a
    rolling deploy) must come back, not be skipped and later committed past."""
    await ensure_topics(kafka_bootstrap, TOPICS, partitions=6)
    [story] = items = stories("completed")
    streams = await given(store, items)
    schema = await shadow()
    projection = OrdersProjection(store, schema=schema)
    failures: list[int] = []

    async def flaky(conn: Any, envelopes: list[envelope.EventEnvelope]) -> None:
        mine = [e for e in envelopes if e.stream_id in streams]  # orders.events carries other tests' events too
        if mine and not failures:
            failures.append(len(mine))
            raise RuntimeError("cannot read this event yet")
        await projection.apply(conn, mine)

    consumer = EnvelopeBatchConsumer(store.pool, f"it-projector-{uuid.uuid4().hex}", flaky)
    settings = ProjectorSettings(kafka_bootstrap_servers=kafka_bootstrap, instance_prefix=f"it{uuid.uuid4().hex}-")
    broker = build_broker(settings, consumer)
    await broker.start()
    try:
        # all events of the order in one go: no later event of these streams could fill a gap
        for record in fake_records([e for events in streams.values() for e in events]):
            await broker.publish(record.value, topic=ORDERS_EVENTS, key=record.key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        want = len(streams[story.order_stream])
        while (await store.pool.fetchval(f"SELECT max(order_version) FROM {schema}.rm_orders WHERE order_id = $1",
                                         story.order_id) or 0) < want:
            assert loop.time() < deadline, f"the failed batch was not delivered again (failures: {failures})"
            await asyncio.sleep(0.05)
    finally:
        await broker.stop()
    assert len(failures) == 1
    rebuilt = await shadow(create=False)
    await rebuild(store, rebuilt, order_ids=[story.order_id])
    assert await diff(store, rebuilt, live=schema, order_ids=[story.order_id]) == []


async def test_an_unreadable_event_is_dead_lettered_and_the_projector_goes_on(store: EventStore,
                                                                             shadow: Shadow) -> None:
    from libs.eventstore import Metadata, NewEvent

    [story] = items = stories("completed")
    streams = await given(store, items)
    order = streams[story.order_stream]
    # A later version of the code wrote an event type this projector does not know.
    await store.append(story.order_stream, len(order), [NewEvent(
        "OrderTeleported", {"order_id": story.order_id, "to": "mars"},
        Metadata(actor="future", role="service", correlation_id="c"), schema_version=1)])
    [alien] = await store.read_stream(story.order_stream, from_version=len(order) + 1)
    schema = await shadow()
    consumer = projector_into(store, schema)
    everything = [e for events in streams.values() for e in events] + [alien]

    await deliver(consumer, [fake_records(everything)])
    [row] = (await snapshot(store, schema, [story.order_id]))["rm_orders"]
    assert row["status"] == "completed"  # everything readable was applied
    dead = await store.pool.fetch("SELECT * FROM dead_letters WHERE event_id = $1", alien.event_id)
    assert len(dead) == 1 and "OrderTeleported" in dead[0]["reason"]
    version = await store.pool.fetchval(f"SELECT version FROM {schema}.projection_streams WHERE stream_id = $1",
                                        story.order_stream)
    assert version == alien.stream_version  # the stream is not stuck behind it
    # Redelivery does not dead-letter it twice.
    await consumer.process_records(fake_records([alien]))
    assert await store.pool.fetchval("SELECT count(*) FROM dead_letters WHERE event_id = $1", alien.event_id) == 1
