"""Carrier tracking ingestion (seed 001, case 9): a carrier payload (either format, over HTTP or the
`carrier.tracking` topic) is parsed and normalised (domain/carrier_formats.py), and its events are
bound by tracking number to a shipment or a return label, one command per parcel.

Per parcel, in one transaction: each event not seen before (by carrier and event key) is recorded
(ShipmentTrackingRecorded / LabelTrackingRecorded) and a shipment's status change follows the
rules of domain/tracking.py (ShipmentStatusChanged only when the status changes). The same payload
delivered again, by either channel, at once or later, records nothing: the parcel's stream
remembers every key, and two concurrent deliveries conflict at the append and the loser, run
again, finds the keys. Events of a tracking number closeloop does not know are kept in
shipping_unmatched_tracking, not applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from libs.application.unit_of_work import CommandContext, UnitOfWork, execute
from libs.eventstore import EventStore
from services.shipping.application.projections import (
    park_unmatched,
    project_label,
    project_shipment,
    project_tracking,
)
from services.shipping.domain import carrier_formats
from services.shipping.domain.events import CarrierTrackingUpdate, TrackingVia
from services.shipping.domain.label import ReturnLabel
from services.shipping.domain.shipment import Shipment


@dataclass
class TrackingIngestor:
    store: EventStore
    clock: Callable[[], datetime]
    stats: dict[str, int] = field(default_factory=lambda: {"payloads": 0, "recorded": 0, "duplicates": 0,
                                                            "unmatched": 0, "status_changes": 0, "refused": 0})

    async def ingest(self, carrier: str, body: bytes | str, content_type: str | None, via: TrackingVia,
                     correlation_id: str | None = None) -> dict[str, Any]:
        """Parse and apply one carrier payload; CarrierPayloadInvalid (nothing stored) if any event is bad."""
        try:
            updates = carrier_formats.parse(carrier, body, content_type)
        except carrier_formats.CarrierPayloadInvalid:
            self.stats["refused"] += 1
            raise
        return await self.apply(carrier, updates, via, correlation_id)

    async def apply(self, carrier: str, updates: list[CarrierTrackingUpdate], via: TrackingVia,
                    correlation_id: str | None = None) -> dict[str, Any]:
        by_number: dict[str, list[CarrierTrackingUpdate]] = {}
        for u in updates:
            by_number.setdefault(u.tracking_number, []).append(u)
        rows = await self.store.pool.fetch(
            """SELECT 'shipment' AS kind, shipment_id AS id, tracking_number FROM shipping_shipments
                WHERE tracking_number = ANY($1::text[])
               UNION ALL
               SELECT 'label', label_id, tracking_number FROM shipping_labels
                WHERE tracking_number = ANY($1::text[])""",
            list(by_number))
        targets = {r["tracking_number"]: (r["kind"], r["id"]) for r in rows}
        parcels: list[dict[str, Any]] = []
        for number, ups in by_number.items():
            target = targets.get(number)
            if target is None:
                async with self.store.transaction() as conn:
                    new = await park_unmatched(conn, ups, via.value)
                self.stats["unmatched"] += len(ups)
                parcels.append({"tracking_number": number, "parcel": None, "outcome": "unmatched", "events": len(ups),
                                "new": new})
                continue
            kind, parcel_id = target
            ctx = CommandContext(actor=f"carrier:{carrier}", role="service",
                                 correlation_id=correlation_id or f"{kind}-{parcel_id}")
            if kind == "shipment":
                result = await execute(self.store, ctx, "", self._shipment_fn(parcel_id, ups, via))
            else:
                result = await execute(self.store, ctx, "", self._label_fn(parcel_id, ups, via))
            out = result.response
            self.stats["recorded"] += out["recorded"]
            self.stats["duplicates"] += out["duplicates"]
            self.stats["status_changes"] += 1 if out.get("status_changed") else 0
            parcels.append({"tracking_number": number, "parcel": kind, f"{kind}_id": parcel_id, "outcome": "applied",
                            **out})
        self.stats["payloads"] += 1
        return {"carrier": carrier, "events": len(updates),
                "recorded": sum(p.get("recorded", 0) for p in parcels),
                "duplicates": sum(p.get("duplicates", 0) for p in parcels),
                "unmatched": sum(p["events"] for p in parcels if p["outcome"] == "unmatched"),
                "parcels": parcels}

    def _shipment_fn(self, shipment_id: str, updates: list[CarrierTrackingUpdate],
                     via: TrackingVia) -> Callable[[UnitOfWork], Any]:
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            shipment = await uow.get(Shipment, shipment_id)
            before = shipment.status
            at = self.clock()
            new = [u for u in updates if shipment.record_tracking(u, via, at).new]
            if new:
                await uow.flush()
                await project_tracking(uow.conn, "shipment", shipment_id, new, via.value, at)
                await project_shipment(uow.conn, shipment, at)
            return {"recorded": len(new), "duplicates": len(updates) - len(new),
                    "status": shipment.status.value if shipment.status else None,
                    "status_changed": shipment.status is not before}

        return fn

    def _label_fn(self, label_id: str, updates: list[CarrierTrackingUpdate],
                  via: TrackingVia) -> Callable[[UnitOfWork], Any]:
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            label = await uow.get(ReturnLabel, label_id)
            at = self.clock()
            new = [u for u in updates if label.record_tracking(u, via, at)]
            if new:
                await uow.flush()
                await project_tracking(uow.conn, "label", label_id, new, via.value, at)
                await project_label(uow.conn, label)
            status = label.tracking.status
            return {"recorded": len(new), "duplicates": len(updates) - len(new),
                    "status": status.value if status else None}

        return fn
