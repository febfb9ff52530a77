"""`GET /track/{tracking number or RMA id}`: where a parcel is (seed 001, case 9).

A tracking number names one parcel (an outbound shipment or a return label). An RMA id names all
of the RMA's parcels: the primary one is its newest outbound shipment, or its return parcel
before anything ships; the others are listed. Unknown references are a 404.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.domain.errors import NotFound
from libs.eventstore import EventStore
from services.shipping.application.projections import history_view, label_view, shipment_view
from services.shipping.domain.tracking import STATUS_ZH


async def _history(conn: Any, kind: str, parcel_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT * FROM shipping_tracking_events WHERE parcel_kind = $1 AND parcel_id = $2
            ORDER BY occurred_at, carrier, event_key""", kind, parcel_id)
    return [history_view(r) for r in rows]


def _shipment_parcel(r: asyncpg.Record) -> dict[str, Any]:
    v = shipment_view(r)
    return {"parcel": "outbound", "shipment_id": v["shipment_id"], "label_id": None, "rma_id": v["rma_id"],
            "order_id": v["order_id"], "action": v["action"], "carrier": v["carrier"],
            "carrier_name": v["carrier_name"], "tracking_number": v["tracking_number"], "status": v["status"],
            "status_zh": v["status_zh"], "status_occurred_at": v["status_occurred_at"],
            "status_location": v["status_location"], "eta": v["eta"], "eta_source": v["eta_source"]}


def _label_parcel(r: asyncpg.Record) -> dict[str, Any]:
    v = label_view(r)
    status = v["tracking_status"] or ("Scanned" if v["status"] == "scanned" else "Issued")
    return {"parcel": "return", "shipment_id": None, "label_id": v["label_id"], "rma_id": v["rma_id"],
            "order_id": v["order_id"], "action": v["purpose"], "carrier": v["carrier"],
            "carrier_name": v["carrier_name"], "tracking_number": v["tracking_number"], "status": status,
            "status_zh": STATUS_ZH.get(status, "已送達服務中心" if status == "Scanned" else status),
            "status_occurred_at": v["tracking_occurred_at"], "status_location": None, "eta": None,
            "eta_source": None, "scanned_at": v["scanned_at"]}


async def track(store: EventStore, ref: str) -> dict[str, Any]:
    """Current status, history (normalised and the carrier's own status), ETA, shipment and RMA ids."""
    pool = store.pool
    number = ref.strip().upper()
    shipment = await pool.fetchrow("SELECT * FROM shipping_shipments WHERE tracking_number = $1", number)
    label = None if shipment else await pool.fetchrow("SELECT * FROM shipping_labels WHERE tracking_number = $1",
                                                      number)
    parcels: list[dict[str, Any]]
    if shipment is not None:
        parcels, kind = [_shipment_parcel(shipment)], "tracking_number"
    elif label is not None:
        parcels, kind = [_label_parcel(label)], "tracking_number"
    else:
        shipments = await pool.fetch("SELECT * FROM shipping_shipments WHERE rma_id = $1 ORDER BY created_at DESC",
                                     ref)
        labels = await pool.fetch("SELECT * FROM shipping_labels WHERE rma_id = $1 ORDER BY issued_at DESC", ref)
        parcels = [_shipment_parcel(r) for r in shipments] + [_label_parcel(r) for r in labels]
        kind = "rma_id"
    if not parcels:
        raise NotFound(f"no parcel has the tracking number or RMA id {ref!r}", id=ref)
    primary = parcels[0]
    parcel_kind, parcel_id = ("shipment", primary["shipment_id"]) if primary["parcel"] == "outbound" else \
        ("label", primary["label_id"])
    return {"query": ref, "matched": kind, **primary, "history": await _history(pool, parcel_kind, parcel_id),
            "parcels": parcels}
