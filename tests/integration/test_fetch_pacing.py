"""An idle consumer stops polling the broker every 10 ms, and an event-store commit wakes it at once
(libs/messaging/pacing.py), against the real PostgreSQL and broker with the subscriber helper every
service's bootstrap uses.

What a user notices: an idle platform no longer burns most of a core on empty fetches (measured 0.78 →
0.17 of a core for the place-order stack), while a command after a quiet spell is still delivered as fast
as before, because the commit rings the doorbell; and records that do not come through the store are still
delivered, only later."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from faststream import AckPolicy
from faststream.kafka import KafkaMessage

from libs.eventstore import Metadata, NewEvent
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.pacing import Doorbell, FetchPacer
from libs.messaging.positions import record_positions, subscribe
from libs.settings import ServiceSettings
from tests.support.wait import holds, until

pytestmark = pytest.mark.integration

IDLE_AFTER = 0.3
IDLE_PAUSE = 6.0  # long, so that "woken by the doorbell" and "waited out the pause" cannot be confused


@asynccontextmanager
async def _paced_consumer(bootstrap: str, dsn: str, pool: Any, topic: str,
                          seen: list[tuple[bytes, float]]) -> AsyncIterator[FetchPacer]:
    settings = ServiceSettings(kafka_bootstrap_servers=bootstrap)
    name = f"pacing-{uuid.uuid4().hex[:8]}"
    broker = make_broker(settings, client_id=name)
    subscriber = subscribe(broker, topic, name=name, pool=lambda: pool, bootstrap=bootstrap,
                           pacing=(dsn, IDLE_AFTER, IDLE_PAUSE), group_id=name, batch=True, max_records=100,
                           batch_timeout_ms=20, ack_policy=AckPolicy.MANUAL, **consumer_options(settings))

    @subscriber
    async def on_batch(body: list[Any], msg: KafkaMessage) -> None:
        seen.extend((r.value, time.monotonic()) for r in msg.raw_message)
        await record_positions(pool, name, msg.raw_message)
        await msg.ack()

    await broker.start()
    try:
        yield subscriber.fetch_pacer
    finally:
        await broker.stop()
    assert subscriber.fetch_pacer.bell is None  # the doorbell's connection closed with the subscriber


async def _send(bootstrap: str, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()


async def _fetches_in(pacer: FetchPacer, seconds: float) -> int:
    before = pacer.fetches
    await asyncio.sleep(seconds)
    return pacer.fetches - before


async def test_an_idle_consumer_fetches_rarely_and_a_commit_wakes_it_for_the_next_record(
        store: Any, pg_dsn: str, kafka_bootstrap: str) -> None:
    topic = f"pacing-{uuid.uuid4().hex[:8]}"
    await _send(kafka_bootstrap, topic, b"first")  # the topic exists before the group joins
    seen: list[tuple[bytes, float]] = []
    async with _paced_consumer(kafka_bootstrap, pg_dsn, store.pool, topic, seen) as pacer:
        await until("the first record", lambda: holds(any(v == b"first" for v, _ in seen)))
        await until("the doorbell listening", lambda: holds(pacer.bell is not None and pacer.bell.connected))
        assert pacer.fetches > 0, "the pacer did not wrap aiokafka's fetches (its private API changed?)"

        # Active: fetches back to back at the 10 ms fetch wait. Idle: about one fetch per pause.
        await asyncio.sleep(IDLE_AFTER + 0.2)
        assert pacer.idle
        idle_fetches = await _fetches_in(pacer, 2.0)
        assert idle_fetches <= 2, f"{idle_fetches} fetches in 2 s while idle (unpaced: about 200)"

        # A commit to the event store (what precedes every record the relay publishes) rings the doorbell:
        # the consumer fetches at once instead of waiting out the 6 s pause.
        rings = pacer.bell.rings if pacer.bell else 0
        meta = Metadata(actor="test", role="service", correlation_id=str(uuid.uuid4()))
        await store.append(f"pacing-{uuid.uuid4().hex[:8]}", 0, [NewEvent("PacingProbe", {"n": 1}, meta)])
        await until("the commit's doorbell", lambda: holds(pacer.bell is not None and pacer.bell.rings > rings))
        sent = time.monotonic()
        await _send(kafka_bootstrap, topic, b"after-commit")
        await until("the record after the commit", lambda: holds(any(v == b"after-commit" for v, _ in seen)),
                    timeout=IDLE_PAUSE * 3)
        delivered = next(t for v, t in seen if v == b"after-commit")
        assert delivered - sent < IDLE_PAUSE / 2, "the doorbell did not wake the idle consumer"
        assert not pacer.idle or time.monotonic() - delivered > IDLE_AFTER

        # A record that no commit announces (an upstream producer's) is delivered too, within the pause.
        await asyncio.sleep(IDLE_AFTER + 0.2)
        assert pacer.idle
        await _send(kafka_bootstrap, topic, b"unannounced")
        await until("the unannounced record", lambda: holds(any(v == b"unannounced" for v, _ in seen)),
                    timeout=IDLE_PAUSE * 3)
    assert [v for v, _ in seen] == [b"first", b"after-commit", b"unannounced"]


async def test_the_doorbell_reconnects_and_rings_when_its_connection_is_lost(pg_dsn: str) -> None:
    bell = Doorbell.acquire(pg_dsn)
    try:
        await until("listening", lambda: holds(bell.connected))
        rings = bell.rings
        async with _admin(pg_dsn) as conn:  # the database drops the LISTEN connection (an outage, a failover)
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", bell.backend_pid)
        await until("listening again", lambda: holds(bell.connected and bell.rings > rings), timeout=15)
    finally:
        await bell.release()
    assert bell._task is not None and bell._task.done()


@asynccontextmanager
async def _admin(dsn: str) -> AsyncIterator[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()
