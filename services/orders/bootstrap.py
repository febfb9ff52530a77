"""Wires the orders process: event store, configuration, the payments.events consumer,
the durable timer runner and the command API."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from libs.application.pool import connect_store
from libs.application.read_your_writes import ProjectionWaiter
from libs.application.timers import Timer, TimerRunner
from libs.application.unit_of_work import CommandContext
from libs.eventstore import EventStore
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch
from libs.messaging.deadletter import attach as attach_dead_letters
from libs.messaging.positions import start_where_processed, subscribe
from libs.messaging.topics import ensure_topics
from libs.runtime import serve, setup_logging
from libs.settings import ServiceSettings
from services.orders.adapters.config import load_catalogue, load_policy
from services.orders.application.payments_reactions import PaymentsReactions
from services.orders.application.services import OWNER, TIMER_PAYMENT_DEADLINE, OrdersService, utcnow
from services.registry import PAYMENTS_EVENTS, TOPICS

log = logging.getLogger("closeloop.orders")
CONSUMER_GROUP = "orders"


class OrdersSettings(ServiceSettings):
    http_port: int = 8001
    prepayment_policy_path: Path | None = None
    catalogue_path: Path | None = None
    read_your_writes_timeout_s: float = 5.0
    timer_poll_seconds: float = 0.5


@dataclass
class OrdersContainer:
    settings: OrdersSettings
    store: EventStore
    service: OrdersService
    broker: KafkaBroker
    consumer: EnvelopeBatchConsumer
    reactions: PaymentsReactions
    timers: TimerRunner
    waiter: ProjectionWaiter


def build_broker(settings: OrdersSettings, consumer: EnvelopeBatchConsumer) -> KafkaBroker:
    broker = make_broker(settings, client_id="closeloop-orders")
    starts = start_where_processed(consumer, settings)  # libs/messaging/positions.py

    @subscribe(broker, PAYMENTS_EVENTS, **starts, group_id=settings.instance_prefix + CONSUMER_GROUP, batch=True,
               max_records=200, batch_timeout_ms=20, ack_policy=AckPolicy.MANUAL,
               title="orders consumes payments.events",
               **consumer_options(settings))
    async def on_payments_events(body: list[Any], msg: KafkaMessage) -> None:
        # The effects, the processed ids and the offsets commit together; only then is the
        # batch acknowledged to Kafka (libs/messaging/consumer.py).
        await consume_batch(consumer, msg)

    attach_dead_letters([consumer], broker)
    return broker


async def start(settings: OrdersSettings) -> OrdersContainer:
    policy = load_policy(settings.prepayment_policy_path)
    catalogue = load_catalogue(settings.catalogue_path)
    store = await connect_store(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    service = OrdersService(store, policy, catalogue, timer_owner=settings.instance_prefix + OWNER)
    reactions = PaymentsReactions(store, utcnow)
    consumer = EnvelopeBatchConsumer(store.pool, settings.instance_prefix + CONSUMER_GROUP, reactions.handle)
    broker = build_broker(settings, consumer)

    async def on_deadline(timer: Timer) -> None:
        ctx = CommandContext(actor="payment-deadline-timer", role="service", correlation_id=timer.timer_id,
                             reason="payment deadline reached")
        await service.expire_payment_deadline(timer.payload["order_id"], ctx)

    timers = TimerRunner(store.pool, settings.instance_prefix + OWNER, {TIMER_PAYMENT_DEADLINE: on_deadline},
                         poll_seconds=settings.timer_poll_seconds)
    waiter = ProjectionWaiter(store.pool, store.dsn)
    await waiter.start()
    await broker.start()
    log.info("orders ready: policy %s, %d catalogue items", policy.version, len(catalogue.codes))
    return OrdersContainer(settings, store, service, broker, consumer, reactions, timers, waiter)


async def main() -> None:
    settings = OrdersSettings()
    setup_logging(settings.log_level, "orders")
    from services.orders.entrypoints.http import create_app

    c = await start(settings)
    try:
        await serve(create_app(c), settings.http_host, settings.http_port, background=[c.timers.run])
    finally:
        await c.broker.stop()
        await c.waiter.stop()
        await c.store.close()
