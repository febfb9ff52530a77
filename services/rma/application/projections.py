"""The RMA service's read models, written in the same database transaction as the events they show:
every use case calls `save(uow, *aggregates)` with the aggregates it changed, before the unit of work
appends their pending events (libs/application/unit_of_work.py), so a row and its stream always
commit or roll back together. Versions are the stream versions after the append.

Shipping's facts that are not RMA events (the return label, the carrier's tracking) are written to
the RMA's row by `record_label` / `record_tracking`, in the consumer's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from libs.application.unit_of_work import UnitOfWork
from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent
from services.rma.domain import events as ev
from services.rma.domain.catalogue import CatalogueItem
from services.rma.domain.rma import STAGE_LABELS_ZH, Rma
from services.rma.domain.stock import StockLevel, Warehouse
from services.rma.domain.transfer import StockTransfer
from services.rma.domain.warranty import WarrantyRecord
from services.shipping.domain import events as ship


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _at(event: DomainEvent) -> datetime:
    """Every event of this service (and shipping's) carries `at`, when it happened."""
    at: datetime = event.at  # type: ignore[attr-defined]
    return at


def _warranty_decision(rma: Rma) -> str | None:
    if rma.rejection is not None:
        return "rejected"
    if rma.basis is not None:
        return "eligible"
    return "awaiting_review" if rma.review_reason is not None else None


def rma_view(rma: Rma) -> dict[str, Any]:
    """What GET /rmas/{id} shows from the RMA's own stream."""
    o = rma.o
    d = rma.decision
    ready = rma.ready
    shipped = rma.shipped
    return {
        "rma_id": rma.id,
        "status": rma.status.value if rma.status else None,
        "status_label": rma.label_zh,
        "stage": rma.stage.value if rma.stage else None,
        "stage_label": STAGE_LABELS_ZH[rma.stage] if rma.stage else None,
        "version": rma.version + len(rma.pending),
        "allowed_commands": rma.allowed_commands(),
        "serial": o.serial, "sku": o.sku, "fault_code": o.fault_code, "description": o.description,
        "attachments": list(o.attachments), "contact": o.contact.model_dump(mode="json"),
        "ship_to": o.ship_to.model_dump(mode="json"), "warehouse_id": rma.warehouse_id,
        "opened_at": o.at.isoformat(),
        "warranty": {
            "decision": _warranty_decision(rma),
            "basis": rma.basis.model_dump(mode="json") if rma.basis else None,
            "review_reason": rma.review_reason,
            "rejection_reason": rma.rejection,
        },
        "repeat_failure": rma.repeat.model_dump(mode="json", exclude={"rma_id"}) if rma.repeat else None,
        "replacement": {
            "stage": rma.stage.value if rma.status is ev.RmaStatus.PROCESSING and rma.stage else None,
            "decision": d.model_dump(mode="json") if d else None,
            "decisions": len(rma.decisions),
            "approved_skus": sorted(rma.approved), "refused_skus": sorted(rma.refused_by_approver),
            "unavailable_reason": rma.unavailable_reason,
            "sku": ready.sku if ready else None, "same_sku": ready.same_sku if ready else None,
            "serial": ready.replacement_serial if ready else None,
            "warehouse_id": ready.warehouse_id if ready else None,
        },
        "transfer_id": rma.transfer_id,
        "shipment": {"shipment_id": shipped.shipment_id, "carrier": shipped.carrier,
                     "tracking_number": shipped.tracking_number, "eta": _iso(shipped.eta),
                     "shipped_at": shipped.at.isoformat()} if shipped else None,
        "label_id": rma.label_id,
        "cancellation_reason": rma.cancellation,
        "closed": {"resolution": rma.closed.resolution, "at": rma.closed.at.isoformat()} if rma.closed else None,
    }


def summary(event: DomainEvent) -> str:
    """One line of history for an event."""
    match event:
        case ev.RmaOpened():
            return f"opened for {event.serial} ({event.sku}), fault {event.fault_code}"
        case ev.RmaRepeatFailureFlagged():
            return (f"repeat failure ({event.kind.value}) of RMA {event.previous_rma_id}, "
                    f"{event.days_since_previous} days later")
        case ev.RmaWarrantyReviewRequired():
            return f"waits for a manual warranty review: {event.reason}"
        case ev.RmaEligible():
            b = event.basis
            return f"eligible ({b.source} {b.reference}, covered until {b.expires_on})"
        case ev.RmaRejected():
            return f"rejected: {event.reason}"
        case ev.RmaCancelled():
            return f"cancelled: {event.reason}"
        case ev.RmaShippedIn():
            return f"parcel received (label {event.label_id})"
        case ev.RmaProcessingStarted():
            return f"processing started by {event.technician}"
        case ev.RmaReplacementChosen():
            return f"replacement chosen: {event.decision.explanation}"
        case ev.RmaReplacementUnavailable():
            return f"no replacement available: {event.reason}"
        case ev.RmaSubstitutionApproved():
            return f"substitution by {event.sku} approved" + (f": {event.reason}" if event.reason else "")
        case ev.RmaSubstitutionRefused():
            alt = f"; alternative {event.alternative_sku}" if event.alternative_sku else ""
            return f"substitution by {event.sku} refused: {event.reason}{alt}"
        case ev.RmaStockTransferRequested():
            return f"transfer {event.transfer_id} of {event.sku} requested from {event.from_warehouse}"
        case ev.RmaStockTransferResolved():
            return f"transfer {event.transfer_id} {event.outcome}" + (f": {event.reason}" if event.reason else "")
        case ev.RmaReplacementReady():
            return f"replacement {event.sku} (serial {event.replacement_serial}) ready at {event.warehouse_id}"
        case ev.RmaShippedOut():
            return f"replacement shipped: {event.carrier} {event.tracking_number}"
        case ev.RmaClosed():
            return f"closed: {event.resolution}"
        case ev.StockTransferRequested():
            return (f"transfer {event.transfer_id}: {event.sku} from {event.from_warehouse} to {event.to_warehouse}, "
                    f"answer by {event.expires_at.isoformat()}")
        case ev.StockTransferAccepted():
            return f"transfer {event.transfer_id} accepted" + (f": {event.note}" if event.note else "")
        case ev.StockTransferRefused():
            return f"transfer {event.transfer_id} refused: {event.reason}"
        case ev.StockTransferEscalated():
            return f"transfer {event.transfer_id} unanswered since {event.expires_at.isoformat()}: escalated"
    return event.event_type


async def _history(conn: asyncpg.Connection, uow: UnitOfWork, rma_id: str, agg: Aggregate) -> None:
    rows = [(rma_id, agg.stream_id, agg.version + i, e.event_type, uow.ctx.actor, uow.ctx.role, uow.ctx.reason,
             _at(e), summary(e)[:1000]) for i, e in enumerate(agg.pending, start=1)]
    await conn.executemany(
        """INSERT INTO rma_history (rma_id, stream_id, stream_version, event_type, actor, role, reason, at, summary)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""", rows)


async def save(uow: UnitOfWork, *aggregates: Aggregate) -> None:
    """Write the read models of these aggregates' pending changes (see the module docstring). Call once
    per unit of work, after the last change."""
    conn = uow.conn
    seen: set[str] = set()
    for agg in aggregates:
        if not agg.pending or agg.stream_id in seen:
            continue
        seen.add(agg.stream_id)
        version = agg.version + len(agg.pending)
        at = _at(agg.pending[-1])
        match agg:
            case Rma():
                view = rma_view(agg)
                ready = agg.ready
                await conn.execute(
                    """INSERT INTO rma_cases (rma_id, status, stage, customer_id, serial, sku, fault_code, warehouse_id,
                                              replacement_sku, replacement_serial, repeat_kind, repeat_of, opened_at,
                                              updated_at, version, view)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb)
                       ON CONFLICT (rma_id) DO UPDATE SET status = EXCLUDED.status, stage = EXCLUDED.stage,
                           replacement_sku = EXCLUDED.replacement_sku,
                           replacement_serial = EXCLUDED.replacement_serial, repeat_kind = EXCLUDED.repeat_kind,
                           repeat_of = EXCLUDED.repeat_of, updated_at = EXCLUDED.updated_at,
                           version = EXCLUDED.version, view = EXCLUDED.view""",
                    agg.id, view["status"], view["stage"], agg.contact.customer_id, agg.serial, agg.sku,
                    agg.o.fault_code, agg.warehouse_id, ready.sku if ready else None,
                    ready.replacement_serial if ready else None, agg.repeat.kind.value if agg.repeat else None,
                    agg.repeat.previous_rma_id if agg.repeat else None, agg.o.at, at, version, view)
                await _history(conn, uow, agg.id, agg)
            case StockTransfer():
                r = agg.req
                await conn.execute(
                    """INSERT INTO rma_transfers (transfer_id, rma_id, sku, from_warehouse, to_warehouse, status,
                                                  requested_at, expires_at, escalated_at, resolved_at, resolution,
                                                  version)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                       ON CONFLICT (transfer_id) DO UPDATE SET status = EXCLUDED.status,
                           escalated_at = EXCLUDED.escalated_at, resolved_at = EXCLUDED.resolved_at,
                           resolution = EXCLUDED.resolution, version = EXCLUDED.version""",
                    agg.id, r.rma_id, r.sku, r.from_warehouse, r.to_warehouse, agg.status.value if agg.status else "",
                    r.at, r.expires_at, agg.escalated_at, agg.resolved_at, agg.resolution[:500], version)
                await _history(conn, uow, r.rma_id, agg)
            case StockLevel():
                await conn.execute(
                    """INSERT INTO rma_stock (warehouse_id, sku, available, version, updated_at)
                       VALUES ($1, $2, $3, $4, $5)
                       ON CONFLICT (warehouse_id, sku) DO UPDATE SET available = EXCLUDED.available,
                           version = EXCLUDED.version, updated_at = EXCLUDED.updated_at""",
                    agg.warehouse_id, agg.sku, agg.available, version, at)
            case Warehouse():
                await conn.execute(
                    """INSERT INTO rma_warehouses (warehouse_id, name, kind, transfer_ttl_seconds, version, updated_at)
                       VALUES ($1, $2, $3, $4, $5, $6)
                       ON CONFLICT (warehouse_id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
                           transfer_ttl_seconds = EXCLUDED.transfer_ttl_seconds, version = EXCLUDED.version,
                           updated_at = EXCLUDED.updated_at""",
                    agg.id, agg.name, agg.kind, agg.transfer_ttl_seconds, version, at)
            case CatalogueItem():
                assert agg.spec is not None
                await conn.execute(
                    """INSERT INTO rma_catalogue (sku, eol, item, version, updated_at)
                       VALUES ($1, $2, $3::jsonb, $4, $5)
                       ON CONFLICT (sku) DO UPDATE SET eol = EXCLUDED.eol, item = EXCLUDED.item,
                           version = EXCLUDED.version, updated_at = EXCLUDED.updated_at""",
                    agg.id, agg.spec.eol, agg.spec.model_dump(mode="json"), version, at)
            case WarrantyRecord():
                rows = []
                for e in agg.pending:
                    match e:
                        case ev.WarrantySaleRecorded():
                            rows.append((e.serial, "sales_record", e.invoice_number, e.sku, e.sold_on, e.at))
                        case ev.WarrantyProductRegistered():
                            rows.append((e.serial, "registration", e.registration_id, e.sku, e.purchase_date, e.at))
                        case ev.WarrantyReplacementIssued():
                            rows.append((e.serial, "replacement", e.rma_id, e.sku, e.issued_on, e.at))
                await conn.executemany(
                    """INSERT INTO rma_proofs (serial, kind, reference, sku, purchase_date, recorded_at)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""", rows)


async def record_label(conn: asyncpg.Connection, event: ship.ReturnLabelIssued) -> None:
    label = {"label_id": event.label_id, "carrier": event.carrier, "tracking_number": event.tracking_number,
             "barcode_payload": event.barcode_payload, "qr_payload": event.qr_payload,
             "issued_at": event.at.isoformat()}
    updated = await conn.execute("UPDATE rma_cases SET label = $2::jsonb WHERE rma_id = $1", event.rma_id, label)
    if updated.endswith(" 1"):
        await _external_history(conn, event.rma_id, f"label-{event.label_id}", event,
                                f"return label {event.label_id} issued ({event.carrier} {event.tracking_number})")


async def record_tracking(conn: asyncpg.Connection, event: ship.ShipmentStatusChanged) -> None:
    """The carrier's latest status of the RMA's shipment (an older report does not overwrite a newer one)."""
    tracking = {"shipment_id": event.shipment_id, "tracking_number": event.tracking_number,
                "status": event.status.value, "carrier_status": event.carrier_status, "location": event.location,
                "occurred_at": event.occurred_at.isoformat(), "eta": _iso(event.eta)}
    updated = await conn.execute(
        """UPDATE rma_cases SET tracking = $2::jsonb WHERE rma_id = $1
             AND (tracking IS NULL OR (tracking->>'occurred_at')::timestamptz <= $3)""",
        event.rma_id, tracking, event.occurred_at)
    if updated.endswith(" 1"):
        await _external_history(conn, event.rma_id or "", f"shipment-{event.shipment_id}", event,
                                f"tracking {event.tracking_number}: {event.status.value} ({event.carrier_status})"
                                + (f" at {event.location}" if event.location else ""))


async def _external_history(conn: asyncpg.Connection, rma_id: str, stream_id: str, event: DomainEvent,
                            text: str) -> None:
    await conn.execute(
        """INSERT INTO rma_history (rma_id, stream_id, stream_version, event_type, actor, role, reason, at, summary)
           VALUES ($1, $2, NULL, $3, 'shipping', 'service', NULL, $4, $5)""",
        rma_id, stream_id, event.event_type, _at(event), text[:1000])
