"""The duplicate-shipment detector and its follow-up (seed 001, case 15).

- `import_manifest(...)`: a carrier manifest (domain/manifest.py) is parsed; each valid row is
  classified by domain/duplicates.py's rules against closeloop's shipments and the parcels seen in
  earlier manifests, under the same per-(subject, action) lock shipments take; a duplicate is
  flagged (DuplicateShipmentDetected, stream `shipment_duplicate-{id}`); the import itself is one
  CarrierManifestImported with every row and its outcome. The manifest's id is a hash of the file
  (and its default carrier) and doubles as the idempotency key: the same file again returns the
  first report and changes nothing, even when both imports run at once.
- `on_new_shipment(...)`: rule 4, closeloop ships a (subject, action) a parcel seen outside served.
- `resolve(...)`: the follow-up -- ask for the extra unit back (a return label is issued for it),
  offset it against a later service, let the customer pay for it, keep it as goodwill, or dismiss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.errors import NotFound
from libs.eventstore import EventStore
from services.rma.domain.events import Contact
from services.shipping.application.common import lock_subject, require_role
from services.shipping.application.labels import LabelsService
from services.shipping.application.projections import (
    duplicate_view,
    label_view,
    project_duplicate,
    project_label,
    project_manifest,
    record_external,
)
from services.shipping.domain.duplicates import (
    ShipmentDuplicate,
    classify_row,
    duplicate_id_for,
    duplicate_of_new_shipment,
)
from services.shipping.domain.events import (
    CarrierManifestImported,
    ManifestRowOutcome,
    ShipmentDuplicateParcel,
    ShipmentDuplicateResolution,
    ShipmentParcelOrigin,
)
from services.shipping.domain.label import extra_unit_label_id
from services.shipping.domain.manifest import CarrierManifest, ManifestInvalid, parse_manifest
from services.shipping.domain.shipment import Shipment, Subject, subject_of

IMPORT_ROLES = frozenset({"importer", "service", "platform"})
RESOLVE_ROLES = frozenset({"reconciler", "approver", "service", "platform"})
MANIFEST_SCOPE = "shipping:manifest"


def _closeloop_parcel(r: asyncpg.Record) -> ShipmentDuplicateParcel:
    return ShipmentDuplicateParcel(origin=ShipmentParcelOrigin.CLOSELOOP, shipment_id=r["shipment_id"],
                                   carrier=r["carrier"], tracking_number=r["tracking_number"],
                                   shipped_at=r["created_at"], sku=r["sku"])


def _external_parcel(r: asyncpg.Record) -> ShipmentDuplicateParcel:
    return ShipmentDuplicateParcel(origin=ShipmentParcelOrigin.EXTERNAL, carrier=r["carrier"],
                                   tracking_number=r["tracking_number"], shipped_at=r["shipped_at"], sku=r["sku"],
                                   manifest_id=r["manifest_id"], line=r["line"])


def manifest_report(e: CarrierManifestImported) -> dict[str, Any]:
    outcomes = {o.value: 0 for o in ManifestRowOutcome}
    for r in e.rows:
        if r.outcome is not None:
            outcomes[r.outcome.value] += 1
    rejected = sorted({x.line for x in e.errors if x.line is not None})
    return {
        "manifest_id": e.manifest_id, "format": e.format, "carrier": e.carrier, "source_name": e.source_name,
        "file_sha256": e.file_sha256, "rows": len(e.rows) + len(rejected), "accepted": len(e.rows),
        "rejected": len(rejected), "rejected_lines": rejected,
        "errors": [x.model_dump(mode="json") for x in e.errors], "errors_total": e.errors_total,
        "outcomes": outcomes, "duplicates": sorted({r.duplicate_id for r in e.rows if r.duplicate_id}),
        "lines": [{"line": r.line, "carrier": r.carrier, "tracking_number": r.tracking_number,
                   "outcome": r.outcome.value if r.outcome else None, "duplicate_id": r.duplicate_id}
                  for r in e.rows],
        "imported_at": e.at.isoformat(), "imported_by": e.by,
    }


@dataclass
class DuplicatesService:
    store: EventStore
    clock: Callable[[], datetime]
    labels: LabelsService

    # --- detection -------------------------------------------------------------------------------
    async def _parcels_for(self, conn: asyncpg.Connection, subject: Subject,
                           action: str) -> list[ShipmentDuplicateParcel]:
        ours = await conn.fetch(
            "SELECT * FROM shipping_shipments WHERE subject_kind = $1 AND subject_id = $2 AND action = $3",
            subject.kind, subject.id, action)
        outside = await conn.fetch(
            """SELECT * FROM shipping_external_shipments WHERE subject_kind = $1 AND subject_id = $2 AND action = $3
                ORDER BY shipped_at, tracking_number""", subject.kind, subject.id, action)
        return [_closeloop_parcel(r) for r in ours] + [_external_parcel(r) for r in outside]

    async def _contact_of(self, conn: asyncpg.Connection, original: ShipmentDuplicateParcel) -> Contact | None:
        if original.shipment_id is None:
            return None
        raw = await conn.fetchval("SELECT contact FROM shipping_shipments WHERE shipment_id = $1",
                                  original.shipment_id)
        return Contact.model_validate(raw) if raw else None

    async def on_new_shipment(self, uow: UnitOfWork, shipment: Shipment, at: datetime) -> None:
        """Rule 4: the new closeloop shipment duplicates a parcel already shipped outside (the caller holds
        the subject's lock)."""
        c = shipment.created
        assert c is not None
        parcels = await self._parcels_for(uow.conn, shipment.subject, c.action)
        original = duplicate_of_new_shipment(parcels)
        if original is None:
            return
        extra = ShipmentDuplicateParcel(origin=ShipmentParcelOrigin.CLOSELOOP, shipment_id=shipment.id,
                                        carrier=c.carrier, tracking_number=c.tracking_number, shipped_at=c.at,
                                        sku=c.sku)
        dup = await uow.load(ShipmentDuplicate, duplicate_id_for(shipment.subject, c.action, c.carrier,
                                                                 c.tracking_number))
        if dup.exists:
            return
        dup = ShipmentDuplicate.detect(shipment.subject, c.action, original, extra, c.contact, at)
        uow.add(dup)
        await uow.flush()
        await project_duplicate(uow.conn, dup, at)

    async def import_manifest(self, body: bytes, content_type: str | None, carrier: str | None, source_name: str,
                              ctx: CommandContext) -> CommandResult:
        """Import a carrier manifest (roles importer, service, platform); see the module doc."""
        require_role(ctx.role, IMPORT_ROLES, "import carrier manifests")
        parsed = parse_manifest(body, content_type, carrier, source_name)
        if not parsed.rows:
            raise ManifestInvalid([(f"line {e.line}: {e.field}" if e.line else e.field, e.rule)
                                   for e in parsed.errors] or [("body", "has no valid row")])
        keyed = dataclasses.replace(ctx, idempotency_key=parsed.manifest_id, request_hash=parsed.file_sha256)

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            manifest = await uow.load(CarrierManifest, parsed.manifest_id)
            if manifest.imported is not None:
                return manifest_report(manifest.imported)
            conn, at = uow.conn, self.clock()
            # Every (subject, action) of the file, locked in one order (no deadlock with another import).
            for kind, sid, action in sorted({(subject_of(r.rma_id, r.order_id).kind,
                                              subject_of(r.rma_id, r.order_id).id, r.action) for r in parsed.rows}):
                await lock_subject(conn, kind, sid, action)
            rows, duplicates = [], []
            for row in parsed.rows:
                subject = subject_of(row.rma_id, row.order_id)
                known = await conn.fetchrow("SELECT * FROM shipping_shipments WHERE tracking_number = $1",
                                            row.tracking_number)
                by_tracking = _closeloop_parcel(known) if known is not None else None
                if by_tracking is None:
                    seen = await conn.fetchrow(
                        "SELECT * FROM shipping_external_shipments WHERE carrier = $1 AND tracking_number = $2",
                        row.carrier, row.tracking_number)
                    by_tracking = _external_parcel(seen) if seen is not None else None
                verdict = classify_row(by_tracking, await self._parcels_for(conn, subject, row.action))
                dup_id = None
                if verdict.outcome is ManifestRowOutcome.DUPLICATE:
                    assert verdict.original is not None
                    extra = ShipmentDuplicateParcel(origin=ShipmentParcelOrigin.EXTERNAL, carrier=row.carrier,
                                                    tracking_number=row.tracking_number, shipped_at=row.shipped_at,
                                                    sku=row.sku, manifest_id=parsed.manifest_id, line=row.line)
                    dup = await uow.load(ShipmentDuplicate, duplicate_id_for(subject, row.action, row.carrier,
                                                                             row.tracking_number))
                    if not dup.exists:
                        dup = ShipmentDuplicate.detect(subject, row.action, verdict.original, extra,
                                                       await self._contact_of(conn, verdict.original), at)
                        uow.add(dup)
                        duplicates.append(dup)
                    dup_id = dup.id
                classified = row.model_copy(update={"outcome": verdict.outcome, "duplicate_id": dup_id})
                if verdict.outcome in (ManifestRowOutcome.EXTERNAL_SHIPMENT, ManifestRowOutcome.DUPLICATE):
                    # Recorded at once: a later row of this very file sees it.
                    await record_external(conn, classified, parsed.manifest_id)
                rows.append(classified)
            manifest = CarrierManifest.record(parsed, rows, ctx.actor, at)
            uow.add(manifest)
            await uow.flush()
            assert manifest.imported is not None
            await project_manifest(conn, manifest.imported)
            for dup in duplicates:
                await project_duplicate(conn, dup, at)
            return manifest_report(manifest.imported)

        return await execute(self.store, keyed, MANIFEST_SCOPE, fn)

    # --- follow-up -------------------------------------------------------------------------------
    async def resolve(self, duplicate_id: str, resolution: ShipmentDuplicateResolution, note: str,
                      offset_reference: str, ctx: CommandContext) -> CommandResult:
        """Record the follow-up of a duplicate (roles reconciler, approver, service, platform)."""
        require_role(ctx.role, RESOLVE_ROLES, "decide the follow-up of duplicate shipments")

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            dup = await uow.get(ShipmentDuplicate, duplicate_id, check_version=True)
            at = self.clock()
            label = None
            if resolution is ShipmentDuplicateResolution.RETURN_REQUESTED:
                dup.request_return(extra_unit_label_id(dup.id), note, ctx.actor, at)
                label = await self.labels.issue_for_extra_unit(uow, dup)
            else:
                dup.resolve(resolution, note, offset_reference, ctx.actor, at)
            await uow.flush()
            await project_duplicate(uow.conn, dup, at)
            if label is not None:
                await project_label(uow.conn, label)
            return {"duplicate": await self.view(duplicate_id, conn=uow.conn),
                    "label": await self._label(label.id, uow.conn) if label is not None else None}

        return await execute(self.store, ctx, f"shipping:duplicate:{duplicate_id}", fn)

    # --- queries ---------------------------------------------------------------------------------
    async def _label(self, label_id: str, conn: asyncpg.Connection) -> dict[str, Any] | None:
        row = await conn.fetchrow("SELECT * FROM shipping_labels WHERE label_id = $1", label_id)
        return label_view(row) if row is not None else None

    async def view(self, duplicate_id: str, *, conn: Any = None) -> dict[str, Any]:
        row = await (conn or self.store.pool).fetchrow("SELECT * FROM shipping_duplicates WHERE duplicate_id = $1",
                                                       duplicate_id)
        if row is None:
            raise NotFound(f"duplicate {duplicate_id} not found", id=duplicate_id)
        return duplicate_view(row)

    async def search(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch(
            """SELECT * FROM shipping_duplicates WHERE ($1::text IS NULL OR status = $1)
                ORDER BY detected_at DESC, duplicate_id LIMIT $2""", status, limit)
        return [duplicate_view(r) for r in rows]

    async def manifest(self, manifest_id: str) -> dict[str, Any]:
        events = await self.store.read_stream(CarrierManifest.stream_id_for(manifest_id))
        if not events:
            raise NotFound(f"manifest {manifest_id} not found", id=manifest_id)
        return manifest_report(CarrierManifestImported.model_validate(events[0].data))
