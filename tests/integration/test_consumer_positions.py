"""Issue 7: a consumer starts a partition only where the broker's log is the one it processed.

Against the platform's consumer code (EnvelopeBatchConsumer, consume_batch, and the subscriber helper every
bootstrap uses, libs/messaging/positions.py) on the real broker and PostgreSQL. The defect it guards: a
group's committed offset outlives its log. A consumer processed 10 messages of t/0; the topic is deleted and
created again with another partition count (what the relay's repair does after the broker lost its state,
libs/messaging/broker_watch.py); 20 messages are published again to t/0; the group commits its old position
10 (aiokafka's commit() commits every assigned partition's position: Kafka accepts it on the new log); a
member that then joins the group used to start at new offset 10, so new0..new9 never reached the group.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from libs.messaging import envelope
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch
from libs.messaging.positions import subscribe
from libs.settings import ServiceSettings
from services.orders.domain.events import CustomerCreditScoreRecorded
from tests.support.wait import holds, until

pytestmark = pytest.mark.integration


def _event(n: int) -> tuple[bytes, bytes, dict[str, str], uuid.UUID]:
    from datetime import UTC, datetime

    event_id = uuid.uuid4()
    key, value, headers = envelope.encode_external(
        CustomerCreditScoreRecorded(customer_id=f"c-{n}", score=n, source="positions-test", at=datetime.now(UTC)),
        stream_id=f"customer-{n}", stream_version=1, metadata={"correlation_id": str(event_id)}, event_id=event_id)
    return key, value, headers, event_id


async def _publish(bootstrap: str, topic: str, count: int, partition: int = 0) -> list[uuid.UUID]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    ids = []
    try:
        for n in range(count):
            key, value, headers, event_id = _event(n)
            await producer.send_and_wait(topic, value, key=key, partition=partition,
                                         headers=[(k, v.encode()) for k, v in headers.items()])
            ids.append(event_id)
    finally:
        await producer.stop()
    return ids


async def _create(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])

    async def there() -> bool:
        described = await admin.describe_topics([topic])
        return bool(described) and not described[0].get("error_code") and len(described[0]["partitions"]) == partitions
    await until(f"{topic} with {partitions} partitions", there)


@asynccontextmanager
async def _platform_consumer(bootstrap: str, pool: Any, name: str, topic: str,
                             seen: list[uuid.UUID]) -> AsyncIterator[tuple[EnvelopeBatchConsumer, Any]]:
    """A batch subscriber wired as the services wire theirs (bootstrap.py), whose handler notes the ids."""
    settings = ServiceSettings(kafka_bootstrap_servers=bootstrap)

    async def handler(conn: Any, envelopes: list[envelope.EventEnvelope]) -> None:
        seen.extend(e.event_id for e in envelopes)

    consumer = EnvelopeBatchConsumer(pool, name, handler, check_events=False)
    broker = make_broker(settings, client_id=name)

    subscriber = subscribe(broker, topic, name=name, pool=lambda: pool, bootstrap=bootstrap, group_id=name,
                           batch=True, max_records=200, batch_timeout_ms=20, ack_policy=AckPolicy.MANUAL,
                           **consumer_options(settings))

    @subscriber
    async def on_batch(body: list[Any], msg: KafkaMessage) -> None:
        await consume_batch(consumer, msg)

    await broker.start()
    try:
        yield consumer, subscriber.start_where_processed
    finally:
        await broker.stop()


async def _commit(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    """What the old member's commit() of its positions does after the topic was created again: a member
    of the group commits `offset` for `tp`, on the new log."""
    c = AIOKafkaConsumer(tp.topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                         session_timeout_ms=3000, heartbeat_interval_ms=500)
    await c.start()
    try:
        await until("the stale member's assignment", lambda: holds(tp in c.assignment()))
        await c.commit({tp: OffsetAndMetadata(offset, "")})
        assert await c.committed(tp) == offset
    finally:
        await c.stop()


async def test_a_committed_offset_of_a_topic_created_again_does_not_skip_the_head_of_the_new_log(
        store: Any, kafka_bootstrap: str) -> None:
    topic, name = f"positions-{uuid.uuid4().hex[:8]}", f"positions-{uuid.uuid4().hex[:8]}"
    tp = TopicPartition(topic, 0)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        # A topic as a client's metadata request auto-creates it during a broker loss (Tansu: 4 partitions).
        await _create(admin, topic, 4)
        old = await _publish(kafka_bootstrap, topic, 10)
        seen: list[uuid.UUID] = []
        async with _platform_consumer(kafka_bootstrap, store.pool, name, topic, seen):
            await until("the first 10 processed", lambda: holds(set(old) <= set(seen)))
            await until("their offsets committed to Kafka", lambda: _committed(kafka_bootstrap, name, tp, 10))

        # The relay's repair: deleted, created again with the platform's count, published again.
        await admin.delete_topics([topic])
        await until(f"{topic} deleted", lambda: _gone(admin, topic))
        await _create(admin, topic, 6)
        new = await _publish(kafka_bootstrap, topic, 20)
        await _commit(kafka_bootstrap, name, tp, 10)  # the stale commit, accepted on the new log

        seen.clear()
        async with _platform_consumer(kafka_bootstrap, store.pool, name, topic, seen):
            await until("the last of the 20 processed", lambda: holds(new[-1] in seen))
            # One partition, read in order: whatever was going to be read before new19 has been.
            missing = [i for i, event_id in enumerate(new) if event_id not in seen]
            assert missing == [], f"re-published messages never processed (offsets on the new log): {missing}"
    finally:
        await admin.close()


async def test_a_consumer_rejoining_the_same_log_goes_on_where_it_stopped(store: Any, kafka_bootstrap: str) -> None:
    topic, name = f"positions-{uuid.uuid4().hex[:8]}", f"positions-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await _create(admin, topic, 6)
        first = await _publish(kafka_bootstrap, topic, 10)
        seen: list[uuid.UUID] = []
        async with _platform_consumer(kafka_bootstrap, store.pool, name, topic, seen):
            await until("the first 10 processed", lambda: holds(set(first) <= set(seen)))
        later = await _publish(kafka_bootstrap, topic, 5)
        seen.clear()
        async with _platform_consumer(kafka_bootstrap, store.pool, name, topic, seen) as (consumer, listener):
            await until("the next 5 processed", lambda: holds(set(later) <= set(seen)))
            assert listener.resumed.get(TopicPartition(topic, 0)) == 10
            # Started at offset 10: none of the first 10 came again (not even as a duplicate).
            assert consumer.stats.received == 5 and consumer.stats.duplicates == 0
    finally:
        await admin.close()


async def test_a_topic_created_again_with_more_partitions_is_read_on_the_new_ones_too(
        store: Any, kafka_bootstrap: str) -> None:
    """The relay's repair turns a topic a client auto-created during the loss (4 partitions) into the
    platform's 6: a running consumer must rejoin and read partitions 4 and 5 too. aiokafka only refreshes
    its metadata every 5 minutes by default, and fetching partitions 0-3 of the new topic raises nothing:
    the consumer kept its 4 partitions and the orders keyed to 4 and 5 waited (the broker-loss chaos test's
    flows "transaction ... opened: not seen within 180 s")."""
    topic, name = f"positions-{uuid.uuid4().hex[:8]}", f"positions-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await _create(admin, topic, 4)
        first = await _publish(kafka_bootstrap, topic, 3)
        seen: list[uuid.UUID] = []
        async with _platform_consumer(kafka_bootstrap, store.pool, name, topic, seen):
            await until("the first 3 processed", lambda: holds(set(first) <= set(seen)))
            await admin.delete_topics([topic])
            await until(f"{topic} deleted", lambda: _gone(admin, topic))
            await _create(admin, topic, 6)
            on_new = await _publish(kafka_bootstrap, topic, 2, partition=5)
            # Well under aiokafka's default metadata age of 5 minutes: the setting makes it seconds.
            await until("the messages on the new partition 5 processed", lambda: holds(set(on_new) <= set(seen)),
                        timeout=60)
    finally:
        await admin.close()


async def _committed(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> bool:
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await c.start()
    try:
        return await c.committed(tp) == offset
    finally:
        await c.stop()


async def _gone(admin: AIOKafkaAdminClient, topic: str) -> bool:
    return topic not in {t["topic"] for t in await admin.describe_topics(None) if not t.get("error_code")}
