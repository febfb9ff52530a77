"""The shipping read models (migrations/0001_shipping.sql), written in the transaction of the events
they reflect, and the views the HTTP API returns from them.

Every writer calls `uow.flush()` first, so the aggregate's version already counts its new events
(and a concurrent writer of the same stream has already lost at the append)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from services.shipping.domain.carriers import CARRIERS
from services.shipping.domain.duplicates import MACHINE as DUPLICATE_MACHINE
from services.shipping.domain.duplicates import DuplicateStatus, ShipmentDuplicate
from services.shipping.domain.events import (
    CarrierManifestImported,
    CarrierTrackingUpdate,
    ManifestShipmentRow,
    ShipmentDuplicateResolution,
)
from services.shipping.domain.label import ReturnLabel
from services.shipping.domain.shipment import Shipment
from services.shipping.domain.tracking import STATUS_ZH

SUBJECT_CONSTRAINT = "shipping_shipments_one_per_subject_action"
LABEL_PER_RMA_INDEX = "shipping_labels_one_per_rma"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# --- writes --------------------------------------------------------------------------------------


async def project_label(conn: asyncpg.Connection, label: ReturnLabel) -> None:
    assert label.purpose is not None and label.status is not None and label.issued_at is not None
    deciding = label.tracking.deciding
    await conn.execute(
        """INSERT INTO shipping_labels (label_id, purpose, rma_id, order_id, duplicate_id, carrier, tracking_number,
                                        barcode_payload, qr_payload, contact, status, issued_at, scanned_at, location,
                                        tracking_status, tracking_occurred_at, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
           ON CONFLICT (label_id) DO UPDATE SET status = EXCLUDED.status, scanned_at = EXCLUDED.scanned_at,
               location = EXCLUDED.location, tracking_status = EXCLUDED.tracking_status,
               tracking_occurred_at = EXCLUDED.tracking_occurred_at, version = EXCLUDED.version""",
        label.id, label.purpose.value, label.rma_id, label.order_id, label.duplicate_id, label.carrier,
        label.tracking_number, label.barcode_payload, label.qr_payload,
        label.contact.model_dump(mode="json") if label.contact else None, label.status.value, label.issued_at,
        label.scanned_at, label.location, deciding.status.value if deciding else None,
        deciding.occurred_at if deciding else None, label.version)


async def project_shipment(conn: asyncpg.Connection, s: Shipment, at: datetime) -> None:
    """Insert or update the shipment's row. The insert names only the primary key as its conflict
    target: a row of *another* shipment id for the same (subject, action) violates
    shipping_shipments_one_per_subject_action and fails the whole transaction."""
    c = s.created
    assert c is not None
    deciding = s.tracking.deciding
    eta, eta_source = s.eta()
    await conn.execute(
        """INSERT INTO shipping_shipments (shipment_id, subject_kind, subject_id, rma_id, order_id, action, sku,
                                           warehouse_id, carrier, service_level, tracking_number, ship_to, contact,
                                           status, status_carrier, status_location, status_occurred_at, eta,
                                           eta_source, created_at, updated_at, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                   $22)
           ON CONFLICT (shipment_id) DO UPDATE SET status = EXCLUDED.status, status_carrier = EXCLUDED.status_carrier,
               status_location = EXCLUDED.status_location, status_occurred_at = EXCLUDED.status_occurred_at,
               eta = EXCLUDED.eta, eta_source = EXCLUDED.eta_source, updated_at = EXCLUDED.updated_at,
               version = EXCLUDED.version""",
        s.id, s.subject.kind, s.subject.id, c.rma_id, c.order_id, c.action, c.sku, c.warehouse_id, c.carrier,
        c.service_level, c.tracking_number, c.ship_to.model_dump(mode="json"),
        c.contact.model_dump(mode="json") if c.contact else None, s.status.value if s.status else None,
        deciding.carrier_status if deciding else None, deciding.location if deciding else None,
        deciding.occurred_at if deciding else None, eta, eta_source, c.at, at, s.version)


async def project_tracking(conn: asyncpg.Connection, parcel_kind: str, parcel_id: str,
                           updates: list[CarrierTrackingUpdate], via: str, at: datetime) -> None:
    if not updates:
        return
    await conn.executemany(
        """INSERT INTO shipping_tracking_events (parcel_kind, parcel_id, carrier, event_key, tracking_number, status,
                                                 carrier_status, description, location, occurred_at, eta, via,
                                                 received_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING""",
        [(parcel_kind, parcel_id, u.carrier, u.event_key, u.tracking_number, u.status.value, u.carrier_status,
          u.description, u.location, u.occurred_at, u.eta, via, at) for u in updates])


async def park_unmatched(conn: asyncpg.Connection, updates: list[CarrierTrackingUpdate], via: str) -> int:
    """Keep carrier events of an unknown tracking number; returns how many were new."""
    rows = await conn.fetch(
        """INSERT INTO shipping_unmatched_tracking (carrier, event_key, tracking_number, status, occurred_at, via,
                                                    payload)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                                $7::jsonb[])
           ON CONFLICT DO NOTHING RETURNING event_key""",
        [u.carrier for u in updates], [u.event_key for u in updates], [u.tracking_number for u in updates],
        [u.status.value for u in updates], [u.occurred_at for u in updates], [via] * len(updates),
        [u.model_dump(mode="json") for u in updates])
    return len(rows)


async def project_duplicate(conn: asyncpg.Connection, d: ShipmentDuplicate, at: datetime) -> None:
    e = d.detected
    assert e is not None and d.status is not None
    await conn.execute(
        """INSERT INTO shipping_duplicates (duplicate_id, subject_kind, subject_id, rma_id, order_id, action, original,
                                            extra, contact, status, resolution, note, offset_reference, label_id,
                                            detected_at, updated_at, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
           ON CONFLICT (duplicate_id) DO UPDATE SET status = EXCLUDED.status, resolution = EXCLUDED.resolution,
               note = EXCLUDED.note, label_id = EXCLUDED.label_id, updated_at = EXCLUDED.updated_at,
               offset_reference = EXCLUDED.offset_reference, version = EXCLUDED.version""",
        d.id, "rma" if e.rma_id else "order", e.rma_id or e.order_id, e.rma_id, e.order_id, e.action,
        e.original.model_dump(mode="json"), e.extra.model_dump(mode="json"),
        e.contact.model_dump(mode="json") if e.contact else None, d.status.value,
        d.resolution.value if d.resolution else None, d.note, d.offset_reference, d.label_id, e.at, at, d.version)


async def project_manifest(conn: asyncpg.Connection, e: CarrierManifestImported) -> None:
    duplicates = sum(1 for r in e.rows if r.duplicate_id)
    rejected = len({x.line for x in e.errors if x.line is not None})
    await conn.execute(
        """INSERT INTO shipping_manifests (manifest_id, carrier, format, source_name, file_sha256, rows, rejected,
                                           duplicates, imported_by, imported_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (manifest_id) DO NOTHING""",
        e.manifest_id, e.carrier, e.format, e.source_name, e.file_sha256, len(e.rows), rejected, duplicates, e.by,
        e.at)


async def record_external(conn: asyncpg.Connection, row: ManifestShipmentRow, manifest_id: str) -> None:
    assert row.outcome is not None
    await conn.execute(
        """INSERT INTO shipping_external_shipments (carrier, tracking_number, subject_kind, subject_id, action, sku,
                                                    warehouse_id, shipped_at, recipient_name, reference, manifest_id,
                                                    line, outcome, duplicate_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
           ON CONFLICT (carrier, tracking_number) DO NOTHING""",
        row.carrier, row.tracking_number, "rma" if row.rma_id else "order", row.rma_id or row.order_id, row.action,
        row.sku, row.warehouse_id, row.shipped_at, row.recipient_name, row.reference, manifest_id, row.line,
        row.outcome.value, row.duplicate_id)


# --- views ---------------------------------------------------------------------------------------


def status_view(status: str | None, default: str) -> dict[str, Any]:
    s = status or default
    return {"status": s, "status_zh": STATUS_ZH.get(s, s)}


def label_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "label_id": r["label_id"], "purpose": r["purpose"], "rma_id": r["rma_id"], "order_id": r["order_id"],
        "duplicate_id": r["duplicate_id"], "carrier": r["carrier"],
        "carrier_name": CARRIERS[r["carrier"]].name if r["carrier"] in CARRIERS else r["carrier"],
        "tracking_number": r["tracking_number"], "barcode_payload": r["barcode_payload"],
        "qr_payload": r["qr_payload"], "contact": r["contact"], "status": r["status"],
        "issued_at": _iso(r["issued_at"]), "scanned_at": _iso(r["scanned_at"]), "location": r["location"],
        "tracking_status": r["tracking_status"], "tracking_occurred_at": _iso(r["tracking_occurred_at"]),
        "version": r["version"],
    }


def shipment_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "shipment_id": r["shipment_id"], "rma_id": r["rma_id"], "order_id": r["order_id"], "action": r["action"],
        "sku": r["sku"], "warehouse_id": r["warehouse_id"], "carrier": r["carrier"],
        "carrier_name": CARRIERS[r["carrier"]].name if r["carrier"] in CARRIERS else r["carrier"],
        "service_level": r["service_level"], "tracking_number": r["tracking_number"], "ship_to": r["ship_to"],
        "contact": r["contact"], **status_view(r["status"], "Created"), "status_carrier": r["status_carrier"],
        "status_location": r["status_location"], "status_occurred_at": _iso(r["status_occurred_at"]),
        "eta": _iso(r["eta"]), "eta_source": r["eta_source"], "created_at": _iso(r["created_at"]),
        "version": r["version"],
    }


def duplicate_view(r: asyncpg.Record) -> dict[str, Any]:
    allowed = [c for c in DUPLICATE_MACHINE.allowed(DuplicateStatus(r["status"]))
               if c != ShipmentDuplicateResolution.UNIT_RETURNED.value]
    return {
        "duplicate_id": r["duplicate_id"], "rma_id": r["rma_id"], "order_id": r["order_id"], "action": r["action"],
        "original": r["original"], "extra": r["extra"], "contact": r["contact"], "status": r["status"],
        "resolution": r["resolution"], "note": r["note"], "offset_reference": r["offset_reference"],
        "label_id": r["label_id"], "allowed_resolutions": allowed, "detected_at": _iso(r["detected_at"]),
        "updated_at": _iso(r["updated_at"]), "version": r["version"],
    }


def history_view(r: asyncpg.Record) -> dict[str, Any]:
    return {
        **status_view(r["status"], r["status"]), "carrier": r["carrier"], "carrier_status": r["carrier_status"],
        "description": r["description"], "location": r["location"], "occurred_at": _iso(r["occurred_at"]),
        "eta": _iso(r["eta"]), "received_at": _iso(r["received_at"]), "via": r["via"], "event_key": r["event_key"],
    }
