"""The outbox relay against the real PostgreSQL and Kafka protocol: routing, keys and
headers, per-stream order across batches, crash safety between the Kafka acknowledgement
and the checkpoint commit (with a real SIGKILL of a relay process), clean resumption from
the checkpoint, and waking on NOTIFY instead of polling.

Every relay here has its own name and starts at the store's head, so it publishes only
what the test appends (plus whatever other writers append meanwhile, which the tests
filter out by stream id).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker

from libs.devstack.procs import free_port
from libs.devstack.supervisor import Child
from libs.eventstore import NO_STREAM, Cursor, EventStore
from libs.eventstore.store import NOTIFY_CHANNEL
from libs.messaging import envelope
from libs.messaging.broker import make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer
from libs.messaging.relay import FAILPOINT_AFTER_PUBLISH, FAILPOINT_ENV, Relay
from libs.messaging.topics import ensure_topics, topic_router
from libs.settings import ServiceSettings
from services.projector.bootstrap import migrate_projector
from services.projector.projections.orders import OrdersProjection
from services.projector.rebuild import create_shadow, diff, drop, rebuild
from services.registry import ORDERS_EVENTS, PAYMENTS_EVENTS, STREAM_TOPICS, TOPICS
from tests.integration.helpers import (
    Story,
    append_stories,
    append_story,
    consumer_for,
    headers_of,
    last_cursor,
    order_ids_of,
    order_story,
    read_to_end,
    read_until,
    recorded,
    snapshot,
    stories,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6
route = topic_router(STREAM_TOPICS)


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
async def topics(kafka_bootstrap: str) -> str:
    await ensure_topics(kafka_bootstrap, TOPICS, partitions=PARTITIONS)
    return kafka_bootstrap


@pytest.fixture(scope="module")
async def broker(topics: str) -> AsyncIterator[KafkaBroker]:
    b = make_broker(ServiceSettings(kafka_bootstrap_servers=topics), client_id="it-relay")
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture(scope="module")
async def read_model(store: EventStore) -> EventStore:
    await migrate_projector(store)
    return store


@pytest.fixture
async def private_topic(topics: str) -> str:
    """A topic only this test's relay writes to (so no other relay's copies show up)."""
    name = f"it.relay.{uuid.uuid4().hex}"
    await ensure_topics(topics, [name], partitions=PARTITIONS)
    return name


@pytest.fixture
async def schemas(read_model: EventStore) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    made: list[str] = []

    async def make() -> str:
        name = f"it_relay_{uuid.uuid4().hex[:16]}"
        made.append(name)
        return name

    yield make
    for name in made:
        await drop(read_model, name)


async def relay_at_head(store: EventStore, broker: KafkaBroker, route_: Callable[[str], str] = route, *,
                        name: str | None = None, **kwargs: Any) -> Relay:
    """A relay with a name of its own whose checkpoint is the store's head."""
    relay = Relay(store, broker, route_, name=name or f"it-relay-{uuid.uuid4().hex}", **kwargs)
    await relay._save_checkpoint(await store.head(), 0)
    return relay


async def publish_until(relay: Relay, target: Cursor, timeout: float = 20) -> None:
    """publish_once until the relay's checkpoint reaches `target`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await relay.checkpoint() < target:
        assert loop.time() < deadline, f"relay {relay.name} stuck at {await relay.checkpoint()} < {target}"
        await relay.publish_once()


async def checkpoint_row(store: EventStore, name: str) -> tuple[Cursor, int] | None:
    row = await store.pool.fetchrow(
        "SELECT transaction_id::text::bigint AS tx, global_position, published FROM relay_checkpoints"
        " WHERE name = $1", name)
    return (Cursor(row["tx"], row["global_position"]), row["published"]) if row else None


def keyed(stream_ids: Iterable[str]) -> Callable[[ConsumerRecord], bool]:
    wanted = {s.encode() for s in stream_ids}
    return lambda r: r.key in wanted


def event_ids_of(records: Iterable[ConsumerRecord]) -> Counter[str]:
    return Counter(headers_of(r)[envelope.H_EVENT_ID] for r in records)


def assert_stream_order(records: list[ConsumerRecord], expected: dict[str, int]) -> None:
    """Per stream, in arrival order: the first delivery of each version comes in version
    order 1..n, and so does every later copy (a redelivered batch repeats, it never reorders)."""
    copies: dict[str, list[list[int]]] = defaultdict(list)
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    for r in records:
        stream = r.key.decode()
        version = int(headers_of(r)[envelope.H_STREAM_VERSION])
        k = seen[stream][version]
        seen[stream][version] += 1
        while len(copies[stream]) <= k:
            copies[stream].append([])
        copies[stream][k].append(version)
    assert set(copies) == set(expected)
    for stream, n in expected.items():
        first, *later = copies[stream]
        assert first == list(range(1, n + 1)), f"{stream}: first deliveries in order {first}"
        for copy in later:
            assert copy == sorted(set(copy)), f"{stream}: a repeated copy is out of order: {copy}"


# ---------------------------------------------------------------------------- tests


async def test_relay_publishes_each_event_to_its_service_topic_keyed_by_stream_with_headers(
        store: EventStore, broker: KafkaBroker, topics: str) -> None:
    relay = await relay_at_head(store, broker)
    story = order_story("completed", with_payments=True)
    assert {s.split("-", 1)[0] for s in story.streams} == {"order", "bill", "payment"}
    await append_story(store, story)
    stored = await recorded(store, [story])
    by_id = {e.event_id: e for events in stored.values() for e in events}
    await publish_until(relay, last_cursor(stored))

    consumer = consumer_for(topics, ORDERS_EVENTS, PAYMENTS_EVENTS)
    await consumer.start()
    try:
        records = await read_until(consumer, lambda rs: set(event_ids_of(rs)) >= {str(i) for i in by_id},
                                   keep=keyed(stored))
    finally:
        await consumer.stop()

    for r in records:
        e = by_id[uuid.UUID(headers_of(r)[envelope.H_EVENT_ID])]
        assert r.topic == {"order": ORDERS_EVENTS, "bill": ORDERS_EVENTS, "payment": PAYMENTS_EVENTS}[e.category]
        assert r.key == e.stream_id.encode()
        h = headers_of(r)
        assert h[envelope.H_EVENT_TYPE] == e.event_type
        assert h[envelope.H_POSITION] == str(e.global_position)
        assert h[envelope.H_STREAM_VERSION] == str(e.stream_version)
        assert h[envelope.H_SCHEMA_VERSION] == str(e.schema_version) == "1"
        assert h[envelope.H_CORRELATION] == e.metadata["correlation_id"]
        assert h[envelope.H_CAUSATION] == (e.metadata["causation_id"] or "")
        env = envelope.decode(r.value)
        assert (env.event_id, env.event_type, env.schema_version, env.stream_id, env.stream_version,
                env.global_position, env.transaction_id, env.recorded_at, env.data, env.metadata) == (
            e.event_id, e.event_type, e.schema_version, e.stream_id, e.stream_version,
            e.global_position, e.transaction_id, e.recorded_at, e.data, e.metadata)
    # all events of one order share its correlation id; only the first one has no cause
    assert len({headers_of(r)[envelope.H_CORRELATION] for r in records}) == 1
    causes = {headers_of(r)[envelope.H_EVENT_ID]: headers_of(r)[envelope.H_CAUSATION] for r in records}
    assert [i for i, cause in causes.items() if not cause] == [str(story.event_ids[0])]
    # one stream, one partition, versions in order
    assert all(len({r.partition for r in records if r.key == s.encode()}) == 1 for s in stored)
    assert_stream_order(records, {s: len(events) for s, events in stored.items()})


async def test_relay_keeps_per_stream_order_across_many_streams_and_batches(
        store: EventStore, broker: KafkaBroker, topics: str, private_topic: str) -> None:
    relay = await relay_at_head(store, broker, lambda _stream: private_topic, batch_size=37)
    # 25 orders whose customers leave the cashier 9 times: 50 streams of 20+ events (and 25
    # short final-bill streams), appended concurrently so that transactions interleave.
    items = stories(*["payment_abandoned_and_retried"] * 25, retries=9)
    await append_stories(store, items)
    stored = await recorded(store, items)
    assert sum(len(v) >= 20 for v in stored.values()) == 50
    total = sum(len(v) for v in stored.values())
    await publish_until(relay, last_cursor(stored), timeout=30)
    assert relay.stats.batches >= total // 37

    consumer = consumer_for(topics, private_topic)
    await consumer.start()
    try:
        records = await read_until(consumer, lambda rs: len(rs) >= total, keep=keyed(stored))
    finally:
        await consumer.stop()
    # this topic has a single publisher, which was never restarted: no copies at all
    assert len(records) == total == len(event_ids_of(records))
    assert_stream_order(records, {s: len(events) for s, events in stored.items()})


async def test_relay_killed_between_database_commit_and_kafka_ack_loses_nothing_and_the_duplicate_is_harmless(
        store: EventStore, pg_dsn: str, topics: str, schemas: Callable[[], Awaitable[str]],
        tmp_path: Path) -> None:
    name = f"it-crash-{uuid.uuid4().hex}"
    head = await store.head()
    probe = Relay(store, None, route, name=name)  # type: ignore[arg-type]  # only for the checkpoint
    await probe._save_checkpoint(head, 0)
    items = stories("completed", "cancelled_after_prepayment", "payment_abandoned_and_retried",
                    "cancelled_before_prepayment", "completed_without_prepayment")
    await append_stories(store, items)
    stored = await recorded(store, items)
    target = last_cursor(stored)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": pg_dsn, "KAFKA_BOOTSTRAP_SERVERS": topics, "CLOSELOOP_HTTP_PORT": str(port),
           "CLOSELOOP_RELAY_NAME": name, "CLOSELOOP_RELAY_BATCH_SIZE": "5000", "CLOSELOOP_ENVIRONMENT": "test",
           "PYTHONUNBUFFERED": "1", "CLOSELOOP_SECRET_KEY": "closeloop-relay-test-" + uuid.uuid4().hex}
    log = tmp_path / "relay.log"

    def tail() -> str:
        return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"

    loop = asyncio.get_running_loop()
    crashing = Child("relay", port, {**env, FAILPOINT_ENV: FAILPOINT_AFTER_PUBLISH}, log)
    crashing.start()
    try:
        deadline = loop.time() + 30
        while crashing.alive():
            assert loop.time() < deadline, f"the relay did not hit its failpoint:\n{tail()}"
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(crashing.stop)
    assert crashing.proc is not None and crashing.proc.returncode == -signal.SIGKILL, tail()
    assert f"failpoint {FAILPOINT_AFTER_PUBLISH}" in tail()
    assert await checkpoint_row(store, name) == (head, 0), "the checkpoint moved although the relay died first"

    relay = Child("relay", port, env, log)
    relay.start()
    try:
        deadline = loop.time() + 30
        while (row := await checkpoint_row(store, name)) is None or row[0] < target:
            assert relay.alive(), f"the restarted relay exited:\n{tail()}"
            assert loop.time() < deadline, f"the restarted relay did not catch up:\n{tail()}"
            await asyncio.sleep(0.05)
    finally:
        await asyncio.to_thread(relay.stop)
    assert relay.proc is not None and relay.proc.returncode == 0, tail()

    projected = {s: events for s, events in stored.items() if s.startswith(("order-", "bill-"))}
    appended = {str(e.event_id) for events in projected.values() for e in events}
    consumer = consumer_for(topics, ORDERS_EVENTS)
    await consumer.start()
    try:
        records = await read_to_end(consumer, keep=keyed(projected))
    finally:
        await consumer.stop()
    delivered = event_ids_of(records)
    assert set(delivered) == appended, "an appended event never reached Kafka"
    twice = [i for i, n in delivered.items() if n >= 2]
    assert twice, "no event was delivered twice: the crash window was not hit"
    assert_stream_order(records, {s: len(events) for s, events in projected.items()})

    # Everything that arrived, duplicates included and in arrival order, through the
    # projector's consumer into a shadow read model; compare with a rebuild from the store.
    live, rebuilt = await schemas(), await schemas()
    await create_shadow(store, live)
    consumer_name = f"it-crash-projector-{uuid.uuid4().hex}"
    projector = EnvelopeBatchConsumer(store.pool, consumer_name, OrdersProjection(store, schema=live).apply)
    for i in range(0, len(records), 40):
        await projector.process_records(records[i:i + 40])
    assert projector.stats.received == len(records)
    assert projector.stats.duplicates == len(records) - len(appended) >= len(twice)
    assert projector.stats.applied == len(appended)
    order_ids = order_ids_of(items)
    await rebuild(store, rebuilt, order_ids=order_ids)
    assert await diff(store, rebuilt, live=live, order_ids=order_ids) == []
    rows = await snapshot(store, live, order_ids)
    assert {r["order_id"]: r["status"] for r in rows["rm_orders"]} == {
        s.order_id: "cancelled" if s.kind.startswith("cancelled") else "completed" for s in items}
    assert len(rows["rm_order_history"]) == len(appended)


async def test_relay_resumes_from_its_checkpoint_after_a_clean_restart_without_republishing(
        store: EventStore, topics: str, private_topic: str) -> None:
    name = f"it-resume-{uuid.uuid4().hex}"
    first_story, second_story = order_story("completed"), order_story("cancelled_after_prepayment")

    async def run(story_: Story) -> tuple[Relay, Cursor, int]:
        broker = make_broker(ServiceSettings(kafka_bootstrap_servers=topics), client_id="it-relay-resume")
        await broker.start()
        try:
            relay = Relay(store, broker, lambda _stream: private_topic, name=name, batch_size=7)
            start = await relay.checkpoint()
            await append_story(store, story_)
            stored_ = await recorded(store, [story_])
            await publish_until(relay, last_cursor(stored_))
            return relay, start, sum(len(v) for v in stored_.values())
        finally:
            await broker.stop()

    await Relay(store, None, route, name=name)._save_checkpoint(await store.head(), 0)  # type: ignore[arg-type]
    first, _, n_first = await run(first_story)
    after_first = await first.checkpoint()
    second, resumed_at, n_second = await run(second_story)
    assert resumed_at == after_first  # the second run starts where the first one stopped

    stored = await recorded(store, [first_story, second_story])
    consumer = consumer_for(topics, private_topic)
    await consumer.start()
    try:
        records = await read_to_end(consumer, keep=keyed(stored))
    finally:
        await consumer.stop()
    delivered = event_ids_of(records)
    assert set(delivered) == {str(i) for i in first_story.event_ids + second_story.event_ids}
    assert set(delivered.values()) == {1}, "an event was published again after the restart"
    assert len(records) == n_first + n_second
    published = (await checkpoint_row(store, name) or (None, 0))[1]
    assert published == first.stats.published + second.stats.published


async def test_relay_waits_for_a_notification_instead_of_polling(
        store: EventStore, broker: KafkaBroker, topics: str, private_topic: str) -> None:
    relay = await relay_at_head(store, broker, lambda _stream: private_topic, idle_poll_seconds=30)
    loop = asyncio.get_running_loop()
    idle_since: list[float] = []
    publish_once = relay.publish_once

    async def observed() -> int:
        n = await publish_once()
        if n == 0:
            idle_since.append(loop.time())
        return n

    relay.publish_once = observed  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        deadline = loop.time() + 10
        while not idle_since:  # caught up, now waiting (for a NOTIFY or 30 s)
            assert not task.done(), task
            assert loop.time() < deadline, "the relay never caught up"
            await asyncio.sleep(0.02)
        story = order_story("cancelled_before_prepayment")
        started = loop.time()
        await append_story(store, story)
        target = last_cursor(await recorded(store, [story]))
        while relay.stats.last_cursor < target:
            assert not task.done(), task
            assert loop.time() - started < 10, "not published: the relay slept through the notification"
            await asyncio.sleep(0.01)
        latency = loop.time() - started
        assert latency < 5, f"published after {latency:.1f} s"
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    assert task.done() and task.exception() is None

    consumer = consumer_for(topics, private_topic)
    await consumer.start()
    try:
        ids = {str(i) for i in story.event_ids}
        await read_until(consumer, lambda rs: set(event_ids_of(rs)) >= ids, keep=keyed(story.streams))
    finally:
        await consumer.stop()


async def test_every_way_of_appending_notifies_followers_once_committed(store: EventStore) -> None:
    """The store NOTIFYs after the commits it knows of (an append alone, store.transaction()) and inside
    a transaction it did not open; a follower LISTENing is woken by each, and not by a rolled-back one."""
    assert store.dsn is not None
    listener = await asyncpg.connect(store.dsn)
    woken: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(NOTIFY_CHANNEL, lambda *_: woken.put_nowait("notified"))

    async def woken_by(append: Callable[[Any], Awaitable[None]]) -> bool:
        while not woken.empty():
            woken.get_nowait()
        stream_id, events = order_story("cancelled_before_prepayment").steps[0][0]
        await append(lambda conn=None: store.append(stream_id, NO_STREAM, events, conn=conn))
        try:
            await asyncio.wait_for(woken.get(), 5)
            return True
        except TimeoutError:
            return False

    async def alone(do: Any) -> None:
        await do()

    async def in_store_transaction(do: Any) -> None:
        async with store.transaction() as conn:
            await do(conn)

    async def in_foreign_transaction(do: Any) -> None:
        async with store.pool.acquire() as conn, conn.transaction():
            await do(conn)

    async def rolled_back(do: Any) -> None:
        with contextlib.suppress(ZeroDivisionError):
            async with store.transaction() as conn:
                await do(conn)
                raise ZeroDivisionError

    try:
        assert await woken_by(alone)
        assert await woken_by(in_store_transaction)
        assert await woken_by(in_foreign_transaction)
        assert not await woken_by(rolled_back)
    finally:
        await listener.close()


async def test_only_one_relay_per_name_publishes_and_a_standby_takes_over(
        store: EventStore, broker: KafkaBroker, private_topic: str) -> None:
    first = await relay_at_head(store, broker, lambda _stream: private_topic, idle_poll_seconds=0.2)
    second = Relay(store, broker, lambda _stream: private_topic, name=first.name, idle_poll_seconds=0.2)
    stop_first, stop_second = asyncio.Event(), asyncio.Event()
    t1 = asyncio.create_task(first.run(stop_first))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while first._listen_conn is None:  # the first one is the leader
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    t2 = asyncio.create_task(second.run(stop_second))
    try:
        story = order_story("completed")
        await append_story(store, story)
        target = last_cursor(await recorded(store, [story]))
        await publish_until_seen(first, target)
        await asyncio.sleep(0.5)
        assert second.stats.published == 0, "a standby relay published while the leader was active"

        stop_first.set()  # the leader goes away; the standby takes over
        await asyncio.wait_for(t1, 10)
        story2 = order_story("completed")
        await append_story(store, story2)
        target2 = last_cursor(await recorded(store, [story2]))
        await publish_until_seen(second, target2, timeout=15)
        assert second.stats.published == len(story2.event_ids)
    finally:
        stop_first.set()
        stop_second.set()
        for t in (t1, t2):
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(t, 10)


async def publish_until_seen(relay: Relay, target: Cursor, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while relay.stats.last_cursor < target:
        assert loop.time() < deadline, f"relay {relay.name} did not publish up to {target}"
        await asyncio.sleep(0.02)
