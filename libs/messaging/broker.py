"""Construction of FastStream KafkaBrokers with the settings that matter.

Producers: acks="all"; idempotence and transactions stay off because aiokafka's
InitProducerId v0 fails on Tansu (see ../shared/notes/infrastructure.md). Exactly-once
effects are the job of the outbox relay and the consumers' processed-event records in
PostgreSQL, not of Kafka transactions.
"""

from __future__ import annotations

import logging
from typing import Any

from faststream.kafka import KafkaBroker

from libs.settings import ServiceSettings

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def make_broker(settings: ServiceSettings, *, client_id: str, **kwargs: Any) -> KafkaBroker:
    return KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        max_request_size=MAX_MESSAGE_BYTES,
        linger_ms=kwargs.pop("linger_ms", 2),
        # The level FastStream logs its "Received" / "Processed" lines at, for every message or batch
        # consumed: below the services' level (libs/runtime.py sets "faststream" to WARNING), so they are
        # dropped at the logger's level check. At WARNING (before) they passed: two formatted lines per
        # batch written to every consumer's log (profiled on the command path, issue 6 target 5).
        # Errors are logged at ERROR whatever this level.
        log_level=kwargs.pop("log_level", logging.DEBUG),
        graceful_timeout=kwargs.pop("graceful_timeout", 10.0),
        # consumers rejoin when a topic's partition count changed (the relay's repair): see the setting
        metadata_max_age_ms=kwargs.pop("metadata_max_age_ms", settings.kafka_metadata_max_age_ms),
        **kwargs,
    )


def consumer_options(settings: ServiceSettings) -> dict[str, Any]:
    """Subscriber keyword arguments tuned by settings (group join time, fetch wait)."""
    return {
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "auto_offset_reset": "earliest",
    }
