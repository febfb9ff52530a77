"""Wires the payments process: event store and migrations, the cancellation policies, the
consumer of orders.events (transactions follow their orders), upstream ingestion from the
Stripe webhook and the `payments.upstream` topic (facts applied to the transactions), and
the HTTP API. (Issue 3 in progress; see docs/status.md.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import Field, field_validator, model_validator

from libs.application.pool import connect_store
from libs.application.reactions import Reactions
from libs.application.unit_of_work import UnitOfWork
from libs.domain.errors import DomainError
from libs.eventstore import EventStore
from libs.eventstore.migrate import migrate
from libs.messaging.broker import consumer_options, make_broker
from libs.messaging.consumer import EnvelopeBatchConsumer, consume_batch, the_message
from libs.messaging.deadletter import DeadLetterPublisher, Source, mark_redriven, publish_dead_letters
from libs.messaging.deadletter import attach as attach_dead_letters
from libs.messaging.deadletter import record as record_dead_letter
from libs.messaging.positions import record_positions, start_where_processed, subscribe
from libs.messaging.topics import ensure_topics
from libs.observability import CONSUMER_EVENTS, HANDLER_ERRORS
from libs.runtime import serve, setup_logging
from libs.settings import ServiceSettings
from services.orders.domain import events as orders_ev
from services.payments.application.batch import BatchUnitOfWork
from services.payments.application.disputes import DisputesService
from services.payments.application.kolable import KolableService
from services.payments.application.refunds import RefundsService
from services.payments.application.service import PaymentsService, StoreFacts, reaction_context
from services.payments.application.transactions import TransactionsService
from services.payments.application.upstream import UpstreamIngestor
from services.payments.application.vouchers import VouchersService
from services.payments.application.wallets import WalletsService
from services.payments.domain.policy import CancellationPolicy, parse_policies
from services.payments.domain.upstream import MalformedEvent
from services.payments.domain.upstream_events import ReceivedVia
from services.payments.domain.wallet import WalletPolicy, parse_wallet_policy
from services.registry import ORDERS_EVENTS, PAYMENTS_UPSTREAM, TOPICS

log = logging.getLogger("closeloop.payments")
CONFIG_DIR = Path(__file__).parent / "config"
MIGRATIONS = Path(__file__).parent / "migrations"
CONSUMER_GROUP = "payments"
DEV_WEBHOOK_SECRET = "whsec_closeloop_development_only"


class PaymentsSettings(ServiceSettings):
    http_port: int = 8003
    # Comma-separated endpoint secrets: several are accepted while a secret is rotated.
    stripe_webhook_secrets: str = DEV_WEBHOOK_SECRET
    stripe_webhook_tolerance_s: int = Field(default=300, ge=1, le=3600)
    webhook_max_body_bytes: int = Field(default=1_000_000, ge=1024)
    cancellation_policy_path: Path = CONFIG_DIR / "cancellation_policy.toml"
    wallet_policy_path: Path = CONFIG_DIR / "wallet_policy.toml"

    @field_validator("stripe_webhook_secrets")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not [s for s in value.split(",") if s.strip()]:
            raise ValueError("at least one webhook secret is required")
        return value

    @model_validator(mode="after")
    def _no_dev_secret_in_production(self) -> PaymentsSettings:
        if self.environment == "production" and DEV_WEBHOOK_SECRET in self.webhook_secrets:
            raise ValueError("CLOSELOOP_STRIPE_WEBHOOK_SECRETS must be set outside development")
        return self

    @property
    def webhook_secrets(self) -> list[str]:
        return [s.strip() for s in self.stripe_webhook_secrets.split(",") if s.strip()]


@dataclass
class PaymentsContainer:
    settings: PaymentsSettings
    store: EventStore
    broker: KafkaBroker
    ingestor: UpstreamIngestor
    service: PaymentsService
    consumer: EnvelopeBatchConsumer
    reactions: Reactions
    stats: dict[str, int]
    wallets: WalletsService
    transactions: TransactionsService
    vouchers: VouchersService


def upstream_batch_handler(ingestor: UpstreamIngestor, stats: dict[str, int], name: str,
                           publisher: DeadLetterPublisher | None) -> Callable[[list[Any]], Awaitable[None]]:
    """What the `payments.upstream` subscriber does with a Kafka batch (the records as aiokafka gives
    them), without Kafka: tests and the benchmark drive it directly."""

    async def handle(records: list[Any]) -> None:
        # The whole batch in one transaction (UpstreamIngestor.ingest_batch): each provider event is
        # stored once whatever the number of deliveries (its event ids derive from the provider's
        # id), so acknowledging after the commit is enough; an exception leaves the batch
        # unacknowledged, and when it comes again what was stored is recognised.
        started = time.perf_counter()
        results = await ingestor.ingest_batch([record.value for record in records], via=ReceivedVia.KAFKA)
        log.debug("upstream batch of %d records in %.3f s", len(records), time.perf_counter() - started)
        malformed: list[tuple[Source, MalformedEvent]] = []
        redriven: list[int] = []
        duplicates = 0
        for record, result in zip(records, results, strict=True):
            if isinstance(result, MalformedEvent):
                malformed.append((Source.of(record), result))
                continue
            duplicates += result.duplicate
            if getattr(record, "headers", None):  # only a re-drive carries headers (its dead letter's id)
                source = Source.of(record)
                if source.redrive_id is not None:
                    redriven.append(source.redrive_id)
        # Counted once per batch (a metric's labels lookup per message was ~3 % of the service's time).
        applied = len(records) - len(malformed) - duplicates
        stats["malformed"] += len(malformed)
        stats["duplicates"] += duplicates
        stats["stored"] += applied
        if malformed:
            HANDLER_ERRORS.labels(name, "MalformedEvent").inc(len(malformed))
        if duplicates:
            CONSUMER_EVENTS.labels(name, "duplicate").inc(duplicates)
        if applied:
            CONSUMER_EVENTS.labels(name, "applied").inc(applied)
        if malformed or redriven:
            async with ingestor.store.pool.acquire() as conn:
                for source, exc in malformed:
                    await record_dead_letter(conn, name, "invalid_payload", f"malformed upstream event: {exc.message}",
                                             source=source, group=name)
                if redriven:
                    await mark_redriven(conn, redriven)
            if malformed and publisher is not None:
                publisher.pending = True

    return handle


def build_broker(settings: PaymentsSettings, ingestor: UpstreamIngestor, stats: dict[str, int],
                 consumer: EnvelopeBatchConsumer) -> KafkaBroker:
    # apply_types=False: no FastDepends around each batch; the handlers get the message (the_message).
    broker = make_broker(settings, client_id="closeloop-payments", apply_types=False)
    starts = start_where_processed(consumer, settings)  # libs/messaging/positions.py
    name = settings.instance_prefix + CONSUMER_GROUP
    attach_dead_letters([consumer], broker)
    # The upstream topic is consumed by the same group, without envelopes: its dead letters by hand.
    publisher = DeadLetterPublisher(broker, lambda: ingestor.store.pool, name)

    @subscribe(broker, ORDERS_EVENTS, **starts, group_id=name, batch=True, max_records=200, batch_timeout_ms=20,
               ack_policy=AckPolicy.MANUAL, title="payments consumes orders.events",
               decoder=the_message, **consumer_options(settings))
    async def on_orders_events(msg: KafkaMessage) -> None:
        await consume_batch(consumer, msg)

    @subscribe(broker, PAYMENTS_UPSTREAM, **starts, group_id=name, batch=True, max_records=500, batch_timeout_ms=20,
               ack_policy=AckPolicy.MANUAL, title="payments consumes payments.upstream",
               decoder=the_message, **consumer_options(settings))
    async def on_upstream(msg: KafkaMessage) -> None:
        await handle(list(msg.raw_message))  # raises: not acknowledged, the batch comes again
        await record_positions(ingestor.store.pool, name, msg.raw_message)  # where to start after a rebalance
        await asyncio.wait_for(msg.ack(), 30)
        await publish_dead_letters(publisher)

    handle = upstream_batch_handler(ingestor, stats, name, publisher)

    return broker


@dataclass
class Services:
    """The payments use cases wired together, without Kafka or HTTP (tests and benchmarks use it too)."""

    service: PaymentsService
    wallets: WalletsService
    ingestor: UpstreamIngestor
    transactions: TransactionsService
    vouchers: VouchersService


def wire(store: EventStore, policies: list[CancellationPolicy], wallet_policy: WalletPolicy,
         clock: Callable[[], datetime]) -> Services:
    """Connect the payments use cases: every Transaction change runs through
    `PaymentsService.publish_contract` (contract events, refund execution); dispute facts go to the
    Dispute aggregate; Kolable orders' facts to the reconciliation; upstream facts are applied in
    the ingestion's transaction, a refused one stays stored (a savepoint)."""
    service = PaymentsService(store, policies, clock)
    wallets = WalletsService(store, wallet_policy, clock, service.publish_contract)
    service.refunds = RefundsService(store, clock)
    service.kolable = KolableService(store, clock)
    # Dispute facts: the Dispute aggregate, its read model, refunds frozen / held / released.
    service.on_dispute = DisputesService(store, policies, clock, service.publish_contract).on_fact

    async def on_facts(conn: Any, facts: list[tuple[Any, Any]], store_facts: StoreFacts) -> list[str]:
        # A Kafka batch's facts set-based (application/batch.py); if the rules refuse one of them,
        # the batch's facts are applied one by one instead, each in its savepoint (on_fact).
        async def one_by_one(todo: list[tuple[Any, Any]]) -> list[str]:
            return [await on_fact(conn, fact, fact_id) for fact, fact_id in todo]

        uow = BatchUnitOfWork(store, conn, reaction_context("upstream-batch", "upstream-batch"))
        return await service.on_upstream_facts(uow, facts, store_facts, one_by_one)

    async def on_fact(conn: Any, fact: Any, fact_id: Any) -> str:
        ctx = reaction_context(correlation_id=fact.provider_event_id, causation_id=str(fact_id))
        try:
            async with conn.transaction():  # savepoint: a refused fact stays stored, unapplied
                uow = UnitOfWork(store, conn, ctx)
                outcome = await service.on_upstream_fact(uow, fact, fact_id)
                await uow.flush()
                return outcome
        except DomainError as exc:
            log.warning("upstream fact %s not applied: %s", fact.provider_event_id, exc)
            return f"refused: {exc}"

    return Services(service, wallets, UpstreamIngestor(store, clock, on_fact, on_facts),
                    TransactionsService(store, policies, wallet_policy, clock, service.publish_contract),
                    VouchersService(store, wallet_policy, clock))


def orders_reactions(store: EventStore, service: PaymentsService, actor: str = "payments") -> Reactions:
    """payments' reactions to orders.events; runs of OrderPlaced set-based (PaymentsService.on_orders_placed)."""
    return Reactions(store, service.on_orders_event, actor=actor,
                     batched={orders_ev.OrderPlaced: service.on_orders_placed})


async def start(settings: PaymentsSettings) -> PaymentsContainer:
    from services.orders.application.services import utcnow

    # No reset query on release (libs/application/pool.py): session locks are on connections of their own.
    store = await connect_store(settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_max)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    async with store.pool.acquire() as conn:
        await migrate(conn, {"payments": MIGRATIONS})
    services = wire(store, parse_policies(settings.cancellation_policy_path.read_text()),
                    parse_wallet_policy(settings.wallet_policy_path.read_text()), utcnow)
    service, wallets, ingestor = services.service, services.wallets, services.ingestor
    reactions = orders_reactions(store, service)
    consumer = EnvelopeBatchConsumer(store.pool, settings.instance_prefix + CONSUMER_GROUP, reactions.handle)
    stats = {"stored": 0, "duplicates": 0, "malformed": 0}
    broker = build_broker(settings, ingestor, stats, consumer)
    await broker.start()
    # The startup heap (modules, pydantic's validators: ~120k objects) lives as long as the process; frozen,
    # the full collections that an upstream batch's allocations set off do not walk it each time (measured
    # ~100 µs a message of upstream ingestion before).
    gc.collect()
    gc.freeze()
    return PaymentsContainer(settings, store, broker, ingestor, service, consumer, reactions, stats, wallets,
                             services.transactions, services.vouchers)


async def main() -> None:
    settings = PaymentsSettings()
    setup_logging(settings.log_level, "payments")
    from services.payments.entrypoints.http import create_app

    c = await start(settings)
    try:
        await serve(create_app(c), settings.http_host, settings.http_port)
    finally:
        await c.broker.stop()
        await c.store.close()
