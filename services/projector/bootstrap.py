"""Wires the projector process: event store, migrations, the Kafka batch consumer of every service's
events feeding the read models (orders, bills and history; the other services' key facts), the
daily reconciliation on a durable timer, projection rebuilds, and the query API."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import Field, field_validator

from libs.application.pool import connect_store
from libs.application.read_your_writes import ProjectionWaiter
from libs.application.timers import TimerRunner
from libs.eventstore import EventStore
from libs.eventstore.migrate import migrate
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch, the_message
from libs.messaging.deadletter import attach as attach_dead_letters
from libs.messaging.positions import start_where_processed, subscribe
from libs.messaging.topics import ensure_topics
from libs.runtime import Background, serve, setup_logging
from libs.settings import ServiceSettings
from services.projector.application.rebuilds import Rebuilds
from services.projector.application.reconciliation import Reconciler
from services.projector.application.schedule import TIMER_KIND, DailyReconciliation, parse_at
from services.projector.projections.facts import FactsProjection
from services.projector.projections.orders import OrdersProjection
from services.projector.shadow import live_apply
from services.registry import (
    NOTIFICATIONS_EVENTS,
    ORDERS_EVENTS,
    PAYMENTS_EVENTS,
    RMA_EVENTS,
    SHIPPING_EVENTS,
    TOPICS,
)

log = logging.getLogger("closeloop.projector")
MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "projector"
# What the read models are built from. (Since the facts read models, one consumer reads every
# topic; its name stays `projector.orders` so that the ids it claimed before are still its own.)
CONSUMED_TOPICS = (ORDERS_EVENTS, PAYMENTS_EVENTS, RMA_EVENTS, SHIPPING_EVENTS, NOTIFICATIONS_EVENTS)


class ProjectorSettings(ServiceSettings):
    http_port: int = 8002
    projector_batch_max_records: int = 1000
    projector_batch_timeout_ms: int = 20
    reconcile_at: str = Field(default="03:00", description="the daily reconciliation's local time, HH:MM[:SS]")
    reconcile_timezone: str = "Asia/Taipei"
    reconcile_enabled: bool = True
    reconcile_repair: bool = Field(default=False, description="the daily run swaps the replay in when the "
                                                              "projector's read models drifted")
    timer_poll_seconds: float = Field(default=1.0, gt=0)

    @field_validator("reconcile_at")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        parse_at(value)
        return value.strip()

    @field_validator("reconcile_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Asia/Taipei") from None
        return value


@dataclass
class Projector:
    settings: ProjectorSettings
    store: EventStore
    broker: KafkaBroker
    orders: OrdersProjection
    consumer: EnvelopeBatchConsumer
    facts: FactsProjection | None = None
    reconciler: Reconciler | None = None
    rebuilds: Rebuilds | None = None
    daily: DailyReconciliation | None = None
    timers: TimerRunner | None = None
    waiter: ProjectionWaiter | None = None  # read-your-writes waits of GET /orders/{id}?min_version=


async def migrate_projector(store: EventStore) -> None:
    async with store.pool.acquire() as conn:
        await migrate(conn, {"projector": MIGRATIONS})


def build_broker(settings: ProjectorSettings, consumer: EnvelopeBatchConsumer,
                 topics: tuple[str, ...] = (ORDERS_EVENTS,)) -> KafkaBroker:
    # apply_types=False: no FastDepends around each batch; the handler gets the message (the_message).
    broker = make_broker(settings, client_id="closeloop-projector", apply_types=False)
    starts = start_where_processed(consumer, settings)  # libs/messaging/positions.py

    @subscribe(broker, *topics, **starts, group_id=settings.instance_prefix + CONSUMER_GROUP, batch=True,
               max_records=settings.projector_batch_max_records,
               batch_timeout_ms=settings.projector_batch_timeout_ms,
               ack_policy=AckPolicy.MANUAL, title="projector consumes " + ", ".join(topics),
               decoder=the_message, **consumer_options(settings))
    async def on_events(msg: KafkaMessage) -> None:
        # The effects, the processed ids and the offsets commit together; only then is the
        # batch acknowledged to Kafka (libs/messaging/consumer.py).
        await consume_batch(consumer, msg)

    attach_dead_letters([consumer], broker)
    return broker


def daily_reconciliation(settings: ProjectorSettings, reconciler: Reconciler) -> DailyReconciliation:
    return DailyReconciliation(reconciler, owner=f"{settings.instance_prefix}projector",
                               at=parse_at(settings.reconcile_at), tz=ZoneInfo(settings.reconcile_timezone),
                               repair=settings.reconcile_repair)


async def start(settings: ProjectorSettings) -> Projector:
    # No reset query on release (libs/application/pool.py): session locks are on connections of their own.
    store = await connect_store(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    await migrate_projector(store)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    orders = OrdersProjection(store)
    facts = FactsProjection(store)
    consumer = EnvelopeBatchConsumer(store.pool, f"{settings.instance_prefix}{CONSUMER_GROUP}.{orders.name}",
                                     functools.partial(live_apply, orders, facts),
                                     check_events=False)  # each projection dead-letters what it cannot read
    reconciler = Reconciler(store)
    await reconciler.abandon_stale()
    daily = daily_reconciliation(settings, reconciler)
    timers = TimerRunner(store.pool, daily.owner, {TIMER_KIND: daily.on_due}, poll_seconds=settings.timer_poll_seconds,
                         lease_seconds=1800)
    if settings.reconcile_enabled:
        due = await daily.arm(store.pool)
        log.info("daily reconciliation at %s: next run due %s", daily.setting, due.isoformat())
    broker = build_broker(settings, consumer, CONSUMED_TOPICS)
    # One LISTEN connection wakes every reader waiting for a version (no query per waiter per tick on
    # the pool the consumer writes with: that starved the consumer under load, issue 7's load test).
    waiter = ProjectionWaiter(store.pool, store.dsn)
    await waiter.start()
    await broker.start()
    return Projector(settings, store, broker, orders, consumer, facts, reconciler, Rebuilds(store), daily, timers,
                     waiter)


async def main() -> None:
    settings = ProjectorSettings()
    setup_logging(settings.log_level, "projector")
    from services.projector.entrypoints.http import create_app

    projector = await start(settings)
    background: list[Background] = [projector.timers.run] if projector.timers is not None \
        and settings.reconcile_enabled else []
    try:
        await serve(create_app(projector), settings.http_host, settings.http_port, background=background)
    finally:
        await projector.broker.stop()
        if projector.waiter is not None:
            await projector.waiter.stop()
        await projector.store.close()
