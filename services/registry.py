"""Where every service's events go: stream category -> Kafka topic, and the list of
topics. Importing this module registers every event model (for decoding and schemas)."""

from __future__ import annotations

from services.orders.domain import events as _orders_events  # noqa: F401  (registers models)
from services.payments.domain import events as _payments_events  # noqa: F401

ORDERS_EVENTS = "orders.events"
PAYMENTS_EVENTS = "payments.events"

STREAM_TOPICS: dict[str, str] = {
    "order": ORDERS_EVENTS,
    "bill": ORDERS_EVENTS,
    "customer": ORDERS_EVENTS,
    "schedule": ORDERS_EVENTS,
    "platform": ORDERS_EVENTS,
    "transaction": PAYMENTS_EVENTS,
}

TOPICS: list[str] = sorted(set(STREAM_TOPICS.values()))
