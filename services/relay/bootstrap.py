"""Wires the relay process: event store, Kafka broker, topics, health endpoints."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from fastapi import FastAPI

from libs.application.pool import connect_store
from libs.http.health import install_health
from libs.messaging.broker import make_broker
from libs.messaging.broker_watch import BrokerWatch
from libs.messaging.relay import Relay
from libs.messaging.topics import ensure_topics, topic_router
from libs.observability import RELAY_LAG, install_metrics
from libs.runtime import serve, setup_logging
from libs.settings import ServiceSettings
from services.registry import STREAM_TOPICS, TOPICS

log = logging.getLogger("closeloop.relay")


class RelaySettings(ServiceSettings):
    relay_batch_size: int = 1000
    relay_name: str = "kafka"
    # Where a relay with no checkpoint yet starts: "beginning" publishes the whole store (the
    # right thing for a new deployment); "head" only what is appended from now on (a second
    # relay into a fresh test broker, or a new topic namespace that must not get the history).
    relay_start: Literal["beginning", "head"] = "beginning"


async def main() -> None:
    settings = RelaySettings()
    setup_logging(settings.log_level, "relay")
    store = await connect_store(settings.database_url, max_size=4)
    await ensure_topics(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor)
    broker = make_broker(settings, client_id="closeloop-relay")
    await broker.start()
    watch = BrokerWatch(settings.kafka_bootstrap_servers, TOPICS, partitions=settings.kafka_topic_partitions,
                        replication=settings.kafka_replication_factor, relay_name=settings.relay_name)
    relay = Relay(store, broker, topic_router(STREAM_TOPICS), name=settings.relay_name,
                  batch_size=settings.relay_batch_size, watch=watch,
                  reset_grace_seconds=2 * settings.kafka_session_timeout_ms / 1000)
    if settings.relay_start == "head":
        await relay.start_at_head_if_new()
    app = FastAPI(title="closeloop relay")

    async def on_scrape() -> None:
        RELAY_LAG.set(await relay.lag())

    install_metrics(app, on_scrape)

    async def ready_details() -> dict[str, Any]:
        return {"checkpoint": str(await relay.checkpoint()), "lag": await relay.lag(),
                "published_since_start": relay.stats.published, "broker_resets_since_start": relay.stats.broker_resets}

    install_health(app, lambda: store.pool, ready_details, readiness="the relay's position and lag.")

    try:
        log.info("relay publishing to %s", settings.kafka_bootstrap_servers)
        await serve(app, settings.http_host, settings.http_port, background=[relay.run])
    finally:
        await watch.close()
        await broker.stop()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
