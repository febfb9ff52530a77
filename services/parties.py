"""Who the parties of the subjects several services share are (an order's customer and merchant, an
RMA's customer), read from their streams in the event store, the single source of truth that every
service reads. The access rules (services/*/entrypoints/access.py) use them to keep a customer or a
merchant to their own; reading the store means a subject is known as soon as its first command
committed, before any read model caught up."""

from __future__ import annotations

from typing import Any

from libs.auth.policy import Parties
from services.orders.domain.events import OrderAccepted, OrderPlaced
from services.orders.domain.order import Order
from services.rma.domain.events import RmaOpened
from services.rma.domain.rma import Rma


async def order_parties(conn: Any, order_id: str) -> Parties | None:
    """The order's customer (OrderPlaced) and merchant (the latest OrderAccepted); None if unknown."""
    rows = await conn.fetch(
        """SELECT event_type, data->>'customer_id' AS customer_id, data->>'merchant_id' AS merchant_id
             FROM events WHERE stream_id = $1 AND event_type = ANY($2::text[])
            ORDER BY stream_version""",
        Order.stream_id_for(order_id), [OrderPlaced.event_type, OrderAccepted.event_type])
    customer = next((r["customer_id"] for r in rows if r["event_type"] == OrderPlaced.event_type), None)
    if customer is None:
        return None
    merchants = [r["merchant_id"] for r in rows if r["event_type"] == OrderAccepted.event_type]
    return Parties(customer_id=customer, merchant_id=merchants[-1] if merchants else None)


async def rma_parties(conn: Any, rma_id: str) -> Parties | None:
    """The RMA's customer (RmaOpened's contact); None if unknown."""
    customer = await conn.fetchval(
        """SELECT data->'contact'->>'customer_id' FROM events
            WHERE stream_id = $1 AND stream_version = 1 AND event_type = $2""", Rma.stream_id_for(rma_id),
        RmaOpened.event_type)
    return None if customer is None else Parties(customer_id=customer)


async def subject_parties(conn: Any, kind: str, subject_id: str) -> Parties | None:
    """The parties of a shipment's subject: an RMA or an order."""
    return await (rma_parties(conn, subject_id) if kind == "rma" else order_parties(conn, subject_id))
