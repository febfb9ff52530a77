"""Wires the shipping process (issue 4, docs/after-sales.md): event store and migrations, the consumer
of rma.events (return labels on RmaEligible, the outbound shipment on RmaReplacementReady), carrier
tracking from the raw `carrier.tracking` topic and over HTTP, manifests and duplicates, the HTTP API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import Field, field_validator, model_validator

from libs.application.reactions import Reactions
from libs.application.unit_of_work import UnitOfWork
from libs.domain.events import DomainEvent
from libs.eventstore import EventStore
from libs.eventstore.migrate import migrate
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch
from libs.messaging.deadletter import DeadLetterPublisher, Source, mark_redriven, publish_dead_letters
from libs.messaging.deadletter import attach as attach_dead_letters
from libs.messaging.deadletter import record as record_dead_letter
from libs.messaging.positions import record_positions, start_where_processed, subscribe
from libs.messaging.topics import ensure_topics
from libs.observability import CONSUMER_EVENTS, HANDLER_ERRORS
from libs.runtime import serve, setup_logging
from libs.settings import ServiceSettings
from services.registry import CARRIER_TRACKING, RMA_EVENTS, TOPICS
from services.shipping.application.duplicates import DuplicatesService
from services.shipping.application.labels import LabelsService
from services.shipping.application.reactions import rma_reactions
from services.shipping.application.shipments import ShipmentsService
from services.shipping.application.tracking import TrackingIngestor
from services.shipping.domain.carrier_formats import CarrierPayloadInvalid, detect_carrier
from services.shipping.domain.events import TrackingVia
from services.shipping.domain.label_payload import LabelSigner

log = logging.getLogger("closeloop.shipping")
MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "shipping"
DEV_LABEL_SECRET = "closeloop-label-signing-development-only"
DEV_CARRIER_SECRET = "closeloop-carrier-webhook-development-only"
CARRIER_HEADER = "carrier"


def _secrets(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


class ShippingSettings(ServiceSettings):
    http_port: int = Field(default=8005, ge=0, le=65535)
    # Comma-separated: the first signs new labels, every one verifies (rotation without reprinting).
    label_signing_secrets: str = DEV_LABEL_SECRET
    # Comma-separated HMAC-SHA256 secrets of the carriers' webhooks (header X-Carrier-Signature).
    carrier_webhook_secrets: str = DEV_CARRIER_SECRET
    carrier_max_body_bytes: int = Field(default=2_000_000, ge=1024)
    manifest_max_bytes: int = Field(default=20_000_000, ge=1024)

    @field_validator("label_signing_secrets", "carrier_webhook_secrets")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not _secrets(value):
            raise ValueError("at least one secret is required")
        return value

    @model_validator(mode="after")
    def _no_dev_secret_in_production(self) -> ShippingSettings:
        if self.environment == "production":
            if DEV_LABEL_SECRET in self.label_secrets:
                raise ValueError("CLOSELOOP_LABEL_SIGNING_SECRETS must be set outside development")
            if DEV_CARRIER_SECRET in self.carrier_secrets:
                raise ValueError("CLOSELOOP_CARRIER_WEBHOOK_SECRETS must be set outside development")
        return self

    @property
    def label_secrets(self) -> list[str]:
        return _secrets(self.label_signing_secrets)

    @property
    def carrier_secrets(self) -> list[str]:
        return _secrets(self.carrier_webhook_secrets)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Services:
    """The shipping use cases wired together, without Kafka or HTTP (tests use it too)."""

    store: EventStore
    labels: LabelsService
    shipments: ShipmentsService
    tracking: TrackingIngestor
    duplicates: DuplicatesService
    react: Callable[[UnitOfWork, DomainEvent], Any]


def wire(store: EventStore, label_secrets: list[str], clock: Callable[[], datetime] = utcnow) -> Services:
    """Connect the shipping use cases: a new shipment runs the duplicate detector's rule 4; the RMA
    reactions issue labels and create shipments through the same code as the HTTP commands."""
    labels = LabelsService(store, LabelSigner(label_secrets), clock)
    duplicates = DuplicatesService(store, clock, labels)
    shipments = ShipmentsService(store, clock, duplicates.on_new_shipment)
    return Services(store, labels, shipments, TrackingIngestor(store, clock), duplicates,
                    rma_reactions(labels, shipments))


@dataclass
class ShippingContainer:
    settings: ShippingSettings
    store: EventStore
    broker: KafkaBroker
    services: Services
    consumer: EnvelopeBatchConsumer
    reactions: Reactions
    kafka_stats: dict[str, int]


def _header(record: Any, name: str) -> str | None:
    for key, value in record.headers or ():
        if key.lower() == name and value is not None:
            return bytes(value).decode("utf-8", "replace").strip().lower()
    return None


async def ingest_carrier_record(services: Services, record: Any, stats: dict[str, int], name: str) -> bool:
    """One message of `carrier.tracking`: its carrier from the `carrier` header or its shape. A payload
    that cannot be used is dead-lettered (visible, re-drivable), never retried forever. True when it was
    dead-lettered."""
    body: bytes = record.value or b""
    carrier = _header(record, CARRIER_HEADER) or detect_carrier(body)
    source = Source.of(record)
    try:
        if carrier is None:
            raise CarrierPayloadInvalid("unknown", [(CARRIER_HEADER, "no carrier header, and the shape is neither "
                                                                     "globex's nor island's")])
        key = bytes(record.key).decode("utf-8", "replace") if record.key else None
        await services.tracking.ingest(carrier, body, None, TrackingVia.KAFKA, correlation_id=key)
        stats["ingested"] += 1
        CONSUMER_EVENTS.labels(name, "applied").inc()
        if source.redrive_id is not None:
            async with services.store.pool.acquire() as conn:
                await mark_redriven(conn, [source.redrive_id])
        return False
    except CarrierPayloadInvalid as exc:
        stats["dead_lettered"] += 1
        HANDLER_ERRORS.labels(name, "CarrierPayloadInvalid").inc()
        async with services.store.pool.acquire() as conn:
            await record_dead_letter(conn, name, "invalid_payload", exc.message, source=source, group=name)
        return True


def build_broker(settings: ShippingSettings, services: Services, consumer: EnvelopeBatchConsumer,
                 stats: dict[str, int]) -> KafkaBroker:
    broker = make_broker(settings, client_id="closeloop-shipping")
    starts = start_where_processed(consumer, settings)  # libs/messaging/positions.py
    name = settings.instance_prefix + CONSUMER_GROUP
    attach_dead_letters([consumer], broker)
    # The carriers' topic is consumed by the same group, without envelopes: its dead letters by hand.
    publisher = DeadLetterPublisher(broker, lambda: services.store.pool, name)

    @subscribe(broker, RMA_EVENTS, **starts, group_id=name, batch=True, max_records=200, batch_timeout_ms=20,
               ack_policy=AckPolicy.MANUAL, title="shipping consumes rma.events",
               **consumer_options(settings))
    async def on_rma_events(body: list[Any], msg: KafkaMessage) -> None:
        await consume_batch(consumer, msg)

    @subscribe(broker, CARRIER_TRACKING, **starts, group_id=name, batch=True, max_records=200, batch_timeout_ms=20,
               ack_policy=AckPolicy.MANUAL, title="shipping consumes carrier.tracking",
               **consumer_options(settings))
    async def on_carrier_tracking(body: list[Any], msg: KafkaMessage) -> None:
        # Each carrier event is recorded once however often it comes (the parcel's stream keeps its
        # key), so acknowledging after the appends is enough; a database fault raises and the batch
        # is fetched again.
        try:
            for record in msg.raw_message:
                if await ingest_carrier_record(services, record, stats, name):
                    publisher.pending = True
            await record_positions(services.store.pool, name, msg.raw_message)  # where to start after a rebalance
        except Exception:
            await asyncio.sleep(1.0)
            await msg.nack()
            raise
        await asyncio.wait_for(msg.ack(), 30)
        await publish_dead_letters(publisher)

    return broker


async def start(settings: ShippingSettings) -> ShippingContainer:
    store = await EventStore.connect(settings.database_url, min_size=settings.db_pool_min,
                                     max_size=settings.db_pool_max)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    async with store.pool.acquire() as conn:
        await migrate(conn, {"shipping": MIGRATIONS})
    services = wire(store, settings.label_secrets)
    reactions = Reactions(store, services.react, actor="shipping")
    consumer = EnvelopeBatchConsumer(store.pool, settings.instance_prefix + CONSUMER_GROUP, reactions.handle)
    stats = {"ingested": 0, "dead_lettered": 0}
    broker = build_broker(settings, services, consumer, stats)
    await broker.start()
    return ShippingContainer(settings, store, broker, services, consumer, reactions, stats)


async def main() -> None:
    settings = ShippingSettings()
    setup_logging(settings.log_level, "shipping")
    from services.shipping.entrypoints.http import create_app

    c = await start(settings)
    try:
        await serve(create_app(c), settings.http_host, settings.http_port)
    finally:
        await c.broker.stop()
        await c.store.close()
