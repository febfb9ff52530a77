"""Where every service's events go: stream category -> Kafka topic, and the list of
topics. Importing this module registers every event model (for decoding and schemas)."""

from __future__ import annotations

from services.notifications.domain import events as _notification_events  # noqa: F401
from services.orders.domain import events as _orders_events  # noqa: F401  (registers models)
from services.payments.domain import dispute as _dispute  # noqa: F401
from services.payments.domain import events as _payments_events  # noqa: F401
from services.payments.domain import refund as _refund  # noqa: F401
from services.payments.domain import upstream_events as _upstream_events  # noqa: F401
from services.payments.domain import voucher as _voucher  # noqa: F401
from services.payments.domain import wallet as _wallet  # noqa: F401
from services.payments.domain.kolable import events as _kolable_events  # noqa: F401
from services.projector.domain import reconciliation as _reconciliation_events  # noqa: F401
from services.rma.domain import events as _rma_events  # noqa: F401
from services.shipping.domain import events as _shipping_events  # noqa: F401

ORDERS_EVENTS = "orders.events"
PAYMENTS_EVENTS = "payments.events"
# Upstream payment systems publish their events (Stripe's event format) here; the payments
# service consumes them. Not written by the relay.
PAYMENTS_UPSTREAM = "payments.upstream"
RMA_EVENTS = "rma.events"
SHIPPING_EVENTS = "shipping.events"
NOTIFICATIONS_EVENTS = "notifications.events"
# The projector's own events: reconciliation runs and the discrepancies they find.
PROJECTOR_EVENTS = "projector.events"
# Carriers publish their tracking events here (two formats, normalised by shipping); not written by the relay.
CARRIER_TRACKING = "carrier.tracking"

STREAM_TOPICS: dict[str, str] = {
    "order": ORDERS_EVENTS,
    "bill": ORDERS_EVENTS,
    "customer": ORDERS_EVENTS,
    "schedule": ORDERS_EVENTS,
    "platform": ORDERS_EVENTS,
    "transaction": PAYMENTS_EVENTS,
    "upstream": PAYMENTS_EVENTS,
    "wallet": PAYMENTS_EVENTS,
    "voucher": PAYMENTS_EVENTS,
    "dispute": PAYMENTS_EVENTS,
    "refund": PAYMENTS_EVENTS,
    "merchant": PAYMENTS_EVENTS,
    "kolable": PAYMENTS_EVENTS,
    "kolable_import": PAYMENTS_EVENTS,
    "payment": PAYMENTS_EVENTS,  # the contract events derived from transactions (payments/application/contract.py)
    "rma": RMA_EVENTS,
    "transfer": RMA_EVENTS,
    "stock": RMA_EVENTS,  # warehouses (stock-{warehouse}) and their stock levels (stock-{warehouse}/{sku})
    "catalogue": RMA_EVENTS,  # the rma service's SKU catalogue and substitution rules
    "warranty": RMA_EVENTS,  # warranty proofs of a serial (registrations, sales records, replacement units)
    "label": SHIPPING_EVENTS,
    "shipment": SHIPPING_EVENTS,
    "carrier_manifest": SHIPPING_EVENTS,  # an imported carrier manifest (duplicate-shipment detector)
    "shipment_duplicate": SHIPPING_EVENTS,  # a duplicate shipment and its follow-up
    "notification": NOTIFICATIONS_EVENTS,
    "sla": NOTIFICATIONS_EVENTS,
    "reconciliation": PROJECTOR_EVENTS,  # a reconciliation run (services/projector/domain/reconciliation.py)
    "discrepancy": PROJECTOR_EVENTS,  # a discrepancy it found, and its lifecycle
}

# Messages a consumer could not process, with why and where from in dlq-* headers (libs/messaging/deadletter.py).
DEAD_LETTERS = "deadletters"

TOPICS: list[str] = sorted({*STREAM_TOPICS.values(), PAYMENTS_UPSTREAM, CARRIER_TRACKING, DEAD_LETTERS})
