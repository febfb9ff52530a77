"""Wires the RMA process: event store and migrations, the fault dictionary, the substitution policy
and the catalogue seed, the consumer of shipping.events (the process manager's reactions), the
durable timer runner (stock-transfer time-to-live) and the HTTP API."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import Field, field_validator

from libs.application.timers import Timer, TimerRunner
from libs.application.unit_of_work import CommandContext
from libs.eventstore import EventStore
from libs.eventstore.migrate import migrate
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch
from libs.messaging.deadletter import attach as attach_dead_letters
from libs.messaging.positions import start_where_processed, subscribe
from libs.messaging.topics import ensure_topics
from libs.runtime import serve, setup_logging
from libs.settings import ServiceSettings
from services.registry import SHIPPING_EVENTS, TOPICS
from services.rma.application.queries import RmaQueries
from services.rma.application.service import OWNER, TIMER_TRANSFER_TTL, RmaService, utcnow
from services.rma.application.shipping_reactions import ShippingReactions
from services.rma.domain.catalogue import (
    CatalogueSeed,
    SubstitutionPolicy,
    parse_catalogue_seed,
    parse_substitution_policy,
)
from services.rma.domain.faults import FaultDictionary, parse_faults

log = logging.getLogger("closeloop.rma")
CONFIG_DIR = Path(__file__).parent / "config"
MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "rma"


class RmaSettings(ServiceSettings):
    http_port: int = 8004
    fault_dictionary_path: Path = CONFIG_DIR / "faults.toml"
    substitution_policy_path: Path = CONFIG_DIR / "substitution_policy.toml"
    # Catalogue items and warehouses defined at start-up when missing; empty string: no seed.
    catalogue_seed_path: str = str(CONFIG_DIR / "catalogue.toml")
    default_warehouse: str = Field(default="tw-service-centre", min_length=1, max_length=64,
                                   pattern=r"^[A-Za-z0-9_.:-]+$")
    # How long a warehouse or department has to answer a transfer request before it escalates, unless the
    # warehouse sets its own (PUT /warehouses/{id}); the seed's example: 86,400,000 ms.
    transfer_ttl_seconds: int = Field(default=86400, ge=1, le=30 * 86400)
    warranty_timezone: str = "Asia/Taipei"
    timer_poll_seconds: float = Field(default=0.5, gt=0, le=60)

    @field_validator("warranty_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


@dataclass
class RmaContainer:
    settings: RmaSettings
    store: EventStore
    service: RmaService
    queries: RmaQueries
    reactions: ShippingReactions
    consumer: EnvelopeBatchConsumer
    broker: KafkaBroker
    timers: TimerRunner


@dataclass
class Services:
    """The RMA use cases wired together, without Kafka or HTTP (tests use it too)."""

    service: RmaService
    queries: RmaQueries
    reactions: ShippingReactions
    timer_handlers: dict[str, Callable[[Timer], Any]]


def load_config(settings: RmaSettings) -> tuple[FaultDictionary, SubstitutionPolicy]:
    return (parse_faults(settings.fault_dictionary_path.read_text()),
            parse_substitution_policy(settings.substitution_policy_path.read_text()))


def load_seed(settings: RmaSettings) -> CatalogueSeed | None:
    path = settings.catalogue_seed_path
    return parse_catalogue_seed(Path(path).read_text()) if path else None


def wire(store: EventStore, faults: FaultDictionary, policy: SubstitutionPolicy, clock: Callable[[], datetime], *,
         default_warehouse: str = "tw-service-centre", transfer_ttl_seconds: int = 86400,
         timer_owner: str = OWNER, tz: ZoneInfo | None = None) -> Services:
    """Connect the RMA use cases: the commands, the queries, the reactions to shipping's events and the
    transfer time-to-live timer's handler."""
    zone = tz or ZoneInfo("Asia/Taipei")
    service = RmaService(store, faults, policy, clock, default_warehouse=default_warehouse,
                         transfer_ttl_seconds=transfer_ttl_seconds, timer_owner=timer_owner, tz=zone)

    async def on_transfer_ttl(timer: Timer) -> None:
        ctx = CommandContext(actor="transfer-ttl-timer", role="service", correlation_id=timer.timer_id,
                             reason="stock transfer unanswered within its time-to-live")
        await service.escalate_transfer(timer.payload["transfer_id"], ctx)

    return Services(service, RmaQueries(store.pool, faults), ShippingReactions(store, clock, zone),
                    {TIMER_TRANSFER_TTL: on_transfer_ttl})


def build_broker(settings: RmaSettings, consumer: EnvelopeBatchConsumer) -> KafkaBroker:
    broker = make_broker(settings, client_id="closeloop-rma")
    starts = start_where_processed(consumer, settings)  # libs/messaging/positions.py

    @subscribe(broker, SHIPPING_EVENTS, **starts, group_id=settings.instance_prefix + CONSUMER_GROUP, batch=True,
               max_records=200, batch_timeout_ms=20, ack_policy=AckPolicy.MANUAL,
               title="rma consumes shipping.events", **consumer_options(settings))
    async def on_shipping_events(body: list[Any], msg: KafkaMessage) -> None:
        # The effects, the processed ids and the offsets commit together; only then is the batch acked.
        await consume_batch(consumer, msg)

    attach_dead_letters([consumer], broker)
    return broker


async def start(settings: RmaSettings) -> RmaContainer:
    faults, policy = load_config(settings)
    seed = load_seed(settings)
    store = await EventStore.connect(settings.database_url, min_size=settings.db_pool_min,
                                     max_size=settings.db_pool_max)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    async with store.pool.acquire() as conn:
        await migrate(conn, {"rma": MIGRATIONS})
    owner = settings.instance_prefix + OWNER
    services = wire(store, faults, policy, utcnow, default_warehouse=settings.default_warehouse,
                    transfer_ttl_seconds=settings.transfer_ttl_seconds, timer_owner=owner,
                    tz=ZoneInfo(settings.warranty_timezone))
    if seed is not None:
        created = await services.service.seed(seed)
        log.info("catalogue seed: %d item(s) or warehouse(s) defined", created)
    consumer = EnvelopeBatchConsumer(store.pool, settings.instance_prefix + CONSUMER_GROUP,
                                     services.reactions.handle)
    timers = TimerRunner(store.pool, owner, services.timer_handlers, poll_seconds=settings.timer_poll_seconds)
    broker = build_broker(settings, consumer)
    await broker.start()
    log.info("rma ready: fault dictionary %s (%d codes), substitution policy %s", faults.version, len(faults.codes),
             policy.version)
    return RmaContainer(settings, store, services.service, services.queries, services.reactions, consumer, broker,
                        timers)


async def main() -> None:
    settings = RmaSettings()
    setup_logging(settings.log_level, "rma")
    from services.rma.entrypoints.http import create_app

    c = await start(settings)
    try:
        await serve(create_app(c), settings.http_host, settings.http_port, background=[c.timers.run])
    finally:
        await c.broker.stop()
        await c.store.close()
