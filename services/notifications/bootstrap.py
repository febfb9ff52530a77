"""Wires the notifications process: event store and migrations, the consumer of rma.events and
shipping.events (subjects, SLA clocks and the outbox written in the consumer's transaction), the
SLA timers, the outbox dispatcher with its sender, and the HTTP API (docs/after-sales.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import Field, field_validator, model_validator

from libs.application.timers import TimerRunner
from libs.eventstore import EventStore
from libs.eventstore.migrate import migrate
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch
from libs.messaging.deadletter import attach as attach_dead_letters
from libs.messaging.positions import start_where_processed, subscribe
from libs.messaging.topics import ensure_topics
from libs.runtime import serve, setup_logging
from libs.settings import ServiceSettings
from services.notifications.adapters.senders import FaultInjectingSender, Sender, SinkSender
from services.notifications.adapters.templates import Renderer
from services.notifications.application.dispatcher import Dispatcher
from services.notifications.application.messages import Formatter
from services.notifications.application.notifier import (
    OWNER,
    TIMER_SLA_DUE,
    NotificationsReactions,
    Notifier,
    NotifierConfig,
)
from services.notifications.application.queries import Queries
from services.notifications.domain.notification import RetryPolicy
from services.notifications.domain.sla import DEFAULT_TABLE, SlaPolicy
from services.registry import RMA_EVENTS, SHIPPING_EVENTS, TOPICS

log = logging.getLogger("closeloop.notifications")
MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "notifications"


def utcnow() -> datetime:
    return datetime.now(UTC)


class NotificationsSettings(ServiceSettings):
    http_port: int = Field(default=8006, ge=0, le=65535)
    # The sender: "sink" (the local sink: table notifications_sink and/or JSONL files in sink_dir).
    sender: Literal["sink"] = "sink"
    sink_dir: Path | None = None
    sink_table: bool = True
    sender_fail_first: int = Field(default=0, ge=0, description="the first n sends fail (tests of the retries)")
    retry_max_attempts: int = Field(default=8, ge=1, le=100)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_factor: float = Field(default=2.0, ge=1)
    retry_max_delay_seconds: float = Field(default=600.0, gt=0)
    dispatch_poll_seconds: float = Field(default=1.0, gt=0)
    dispatch_batch: int = Field(default=50, ge=1, le=1000)
    dispatch_lease_seconds: float = Field(default=60.0, ge=1)
    timer_poll_seconds: float = Field(default=0.5, gt=0)
    # SLA per stage: "stage=duration,...", e.g. "received=1d,eligible=7d,shipped_in=2d,processing=3d,shipped_out=3d".
    sla_table: str = DEFAULT_TABLE
    # rma events that mean "processing started" (the contract has none yet; matched by type and rma_id).
    processing_started_events: str = "RmaProcessingStarted"
    default_locale: Literal["zh-TW", "en"] = "zh-TW"
    ops_email: str = Field(default="operations@closeloop.local", pattern=r"^[^@\s]+@[^@\s]+$")
    ops_locale: Literal["zh-TW", "en"] = "zh-TW"
    display_timezone: str = "Asia/Taipei"
    # Tracking links in messages: {tracking_base_url}/track/{tracking number} (shipping's tracking page).
    tracking_base_url: str = "http://127.0.0.1:8005"

    @field_validator("sla_table")
    @classmethod
    def _sla_table(cls, value: str) -> str:
        SlaPolicy.parse(value)
        return value

    @field_validator("display_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> NotificationsSettings:
        if not self.sink_table and self.sink_dir is None:
            raise ValueError("the sink sender needs CLOSELOOP_SINK_TABLE=true or CLOSELOOP_SINK_DIR")
        if self.retry_max_delay_seconds < self.retry_base_seconds:
            raise ValueError("retry_max_delay_seconds must be at least retry_base_seconds")
        return self

    @property
    def owner(self) -> str:
        return self.instance_prefix + OWNER

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.retry_max_attempts, self.retry_base_seconds, self.retry_factor,
                           self.retry_max_delay_seconds)

    def notifier_config(self) -> NotifierConfig:
        return NotifierConfig(
            owner=self.owner, sla=SlaPolicy.parse(self.sla_table), retry=self.retry_policy(),
            formatter=Formatter(ZoneInfo(self.display_timezone), self.tracking_base_url),
            ops_email=self.ops_email, ops_locale=self.ops_locale,
            processing_started_events=frozenset(t.strip() for t in self.processing_started_events.split(",")
                                                if t.strip()))


@dataclass
class Services:
    """The notifications use cases wired together, without Kafka or HTTP (tests use it too)."""

    notifier: Notifier
    reactions: NotificationsReactions
    dispatcher: Dispatcher
    queries: Queries
    sender: FaultInjectingSender
    timers: TimerRunner


def wire(store: EventStore, settings: NotificationsSettings, clock: Callable[[], datetime] = utcnow,
         sender: Sender | None = None) -> Services:
    """Connect the use cases: reactions write the outbox and SLA clocks; the timer runner fires the SLA
    due times; the dispatcher sends the outbox through `sender` (default: the sink) wrapped so that
    failures can be injected."""
    config = settings.notifier_config()
    notifier = Notifier(store, Renderer(default_locale=settings.default_locale), config, clock)
    inner = sender or SinkSender(store.pool, directory=settings.sink_dir, table=settings.sink_table)
    faulty = FaultInjectingSender(inner, fail_first=settings.sender_fail_first)
    dispatcher = Dispatcher(store, faulty, config.retry, config.owner, clock, batch=settings.dispatch_batch,
                            lease_seconds=settings.dispatch_lease_seconds, poll_seconds=settings.dispatch_poll_seconds)
    timers = TimerRunner(store.pool, config.owner, {TIMER_SLA_DUE: notifier.on_sla_due},
                         poll_seconds=settings.timer_poll_seconds)
    return Services(notifier, NotificationsReactions(store, notifier), dispatcher, Queries(store, config.sla, clock),
                    faulty, timers)


@dataclass
class NotificationsContainer:
    settings: NotificationsSettings
    store: EventStore
    broker: KafkaBroker
    consumer: EnvelopeBatchConsumer
    services: Services


def build_broker(settings: NotificationsSettings, consumer: EnvelopeBatchConsumer) -> KafkaBroker:
    broker = make_broker(settings, client_id="closeloop-notifications")
    starts = start_where_processed(consumer, settings)  # libs/messaging/positions.py

    @subscribe(broker, RMA_EVENTS, SHIPPING_EVENTS, **starts, group_id=settings.instance_prefix + CONSUMER_GROUP,
               batch=True,
               max_records=200, batch_timeout_ms=20, ack_policy=AckPolicy.MANUAL,
               title="notifications consumes rma.events and shipping.events", **consumer_options(settings))
    async def on_after_sales_events(body: list[Any], msg: KafkaMessage) -> None:
        # The messages, SLA clocks, processed ids and offsets commit together; only then is the
        # batch acknowledged to Kafka (libs/messaging/consumer.py).
        await consume_batch(consumer, msg)

    attach_dead_letters([consumer], broker)
    return broker


async def start(settings: NotificationsSettings) -> NotificationsContainer:
    store = await EventStore.connect(settings.database_url, min_size=settings.db_pool_min,
                                     max_size=settings.db_pool_max)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    async with store.pool.acquire() as conn:
        await migrate(conn, {"notifications": MIGRATIONS})
    services = wire(store, settings)
    consumer = EnvelopeBatchConsumer(store.pool, settings.instance_prefix + CONSUMER_GROUP, services.reactions.handle)
    broker = build_broker(settings, consumer)
    await services.dispatcher.listen()
    await broker.start()
    log.info("notifications ready: sender %s, SLA %s", settings.sender, settings.sla_table)
    return NotificationsContainer(settings, store, broker, consumer, services)


async def main() -> None:
    settings = NotificationsSettings()
    setup_logging(settings.log_level, "notifications")
    from services.notifications.entrypoints.http import create_app

    c = await start(settings)
    try:
        await serve(create_app(c), settings.http_host, settings.http_port,
                    background=[c.services.timers.run, c.services.dispatcher.run])
    finally:
        await c.broker.stop()
        await c.services.dispatcher.close()
        await c.store.close()
