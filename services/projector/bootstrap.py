"""Wires the projector process: event store, migrations, the Kafka batch consumer of
orders.events feeding the order read model, and the query API."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from libs.eventstore import EventStore
from libs.eventstore.migrate import migrate
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch
from libs.messaging.topics import ensure_topics
from libs.runtime import serve, setup_logging
from libs.settings import ServiceSettings
from services.projector.projections.orders import OrdersProjection
from services.registry import ORDERS_EVENTS, TOPICS

log = logging.getLogger("closeloop.projector")
MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "projector"


class ProjectorSettings(ServiceSettings):
    http_port: int = 8002
    projector_batch_max_records: int = 1000
    projector_batch_timeout_ms: int = 20


@dataclass
class Projector:
    settings: ProjectorSettings
    store: EventStore
    broker: KafkaBroker
    orders: OrdersProjection
    consumer: EnvelopeBatchConsumer


async def migrate_projector(store: EventStore) -> None:
    async with store.pool.acquire() as conn:
        await migrate(conn, {"projector": MIGRATIONS})


def build_broker(settings: ProjectorSettings, consumer: EnvelopeBatchConsumer) -> KafkaBroker:
    broker = make_broker(settings, client_id="closeloop-projector")

    @broker.subscriber(ORDERS_EVENTS, group_id=settings.instance_prefix + CONSUMER_GROUP, batch=True,
                       max_records=settings.projector_batch_max_records,
                       batch_timeout_ms=settings.projector_batch_timeout_ms,
                       ack_policy=AckPolicy.MANUAL, title="projector consumes orders.events",
                       **consumer_options(settings))
    async def on_orders_events(body: list[Any], msg: KafkaMessage) -> None:
        # The effects, the processed ids and the offsets commit together; only then is the
        # batch acknowledged to Kafka (libs/messaging/consumer.py).
        await consume_batch(consumer, msg)

    return broker


async def start(settings: ProjectorSettings) -> Projector:
    store = await EventStore.connect(settings.database_url, min_size=settings.db_pool_min,
                                     max_size=settings.db_pool_max)
    await migrate_projector(store)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    orders = OrdersProjection(store)
    consumer = EnvelopeBatchConsumer(store.pool, f"{settings.instance_prefix}{CONSUMER_GROUP}.{orders.name}",
                                     orders.apply)
    broker = build_broker(settings, consumer)
    await broker.start()
    return Projector(settings, store, broker, orders, consumer)


async def main() -> None:
    settings = ProjectorSettings()
    setup_logging(settings.log_level, "projector")
    from services.projector.entrypoints.http import create_app

    projector = await start(settings)
    try:
        await serve(create_app(projector), settings.http_host, settings.http_port)
    finally:
        await projector.broker.stop()
        await projector.store.close()
