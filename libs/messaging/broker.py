"""Construction of FastStream KafkaBrokers with the settings that matter.

Producers: acks="all"; idempotence and transactions stay off because aiokafka's
InitProducerId v0 fails on Tansu (see ../shared/notes/infrastructure.md). Exactly-once
effects are the job of the outbox relay and the consumers' processed-event records in
PostgreSQL, not of Kafka transactions.
"""

from __future__ import annotations

import logging
import types
from itertools import chain
from typing import Any

from faststream.kafka import KafkaBroker
from faststream.kafka.subscriber.usecase import BatchSubscriber

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


# How long one getmany waits when nothing comes. It returns as soon as a fetch brings records, so this
# bounds only the empty rounds of the consume loop (50 a second per subscriber at the batch timeout's 20 ms).
IDLE_POLL_MS = 1000


async def _next_batch(self: Any, consumer: Any) -> tuple[Any, ...]:
    """FastStream's BatchSubscriber.get_msg without its sleep after an empty poll."""
    pacer = getattr(self, "fetch_pacer", None)
    if pacer is not None:
        pacer.install(consumer)  # libs/messaging/pacing.py
    messages = await consumer.getmany(timeout_ms=max(self.batch_timeout_ms, IDLE_POLL_MS),
                                      max_records=self.max_records)
    if messages and pacer is not None:
        pacer.saw_records()
    return tuple(chain(*messages.values()))


async def _stop_paced(self: Any) -> None:
    try:
        await type(self).stop(self)
    finally:
        await self.fetch_pacer.close()


def without_idle_sleep(subscriber: Any, pacer: Any = None) -> Any:
    """A batch subscriber that waits for records only in aiokafka's getmany.

    FastStream 0.7's BatchSubscriber.get_msg, after a getmany(timeout_ms=batch_timeout_ms) that found
    nothing, sleeps batch_timeout_ms more before polling again, and a record that arrives during that sleep
    waits for its end: on an idle or lightly loaded topic up to batch_timeout_ms (20 ms here) on every hop
    of a command's path (measured: the read-your-writes wait of a placed order, relay → projector). getmany
    already waits up to its timeout and returns as soon as a fetch brings records, so the loop never spins
    without the sleep. With a FetchPacer (libs/messaging/pacing.py) its consumer's fetches are spaced out
    while idle. Subscribers that are not batch subscribers are returned as they are."""
    if isinstance(subscriber, BatchSubscriber):
        subscriber.get_msg = types.MethodType(_next_batch, subscriber)  # type: ignore[method-assign]
        if pacer is not None:
            subscriber.fetch_pacer = pacer  # type: ignore[attr-defined]
            subscriber.stop = types.MethodType(_stop_paced, subscriber)  # type: ignore[method-assign]
    return subscriber
