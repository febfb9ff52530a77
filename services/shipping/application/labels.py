"""Return labels (seed 001, case 14): issued when an RMA becomes eligible, scanned in at the service
centre; and the label of a duplicate shipment's extra unit (case 15).

- `issue_for_rma(uow, ...)`: the reaction to RmaEligible. Once per RMA whatever the redeliveries:
  the label id derives from the RMA id (a second issue finds the stream written), and the partial
  unique index shipping_labels_one_per_rma backs it in the database.
- `scan(...)`: by label id (the payload optional, checked when given) or by the payload alone. A
  payload that does not verify, or that names another label, is a 422 with nothing stored; the
  second scan of a label changes nothing. Scanning an extra unit's label closes its duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.errors import NotFound, RuleViolation
from libs.eventstore import EventStore
from services.rma.domain.events import Contact, ShippingAddress
from services.shipping.application.common import clash_is_a_conflict, require_role
from services.shipping.application.projections import (
    LABEL_PER_RMA_INDEX,
    label_view,
    project_duplicate,
    project_label,
)
from services.shipping.domain.carriers import carrier, carrier_for, tracking_number
from services.shipping.domain.duplicates import ShipmentDuplicate
from services.shipping.domain.label import LabelPurpose, ReturnLabel, extra_unit_label_id, rma_label_id
from services.shipping.domain.label_payload import LabelSigner

SCAN_ROLES = frozenset({"service", "platform"})


@dataclass
class LabelsService:
    store: EventStore
    signer: LabelSigner
    clock: Callable[[], datetime]

    async def issue_for_rma(self, uow: UnitOfWork, rma_id: str, contact: Contact,
                            ship_to: ShippingAddress) -> ReturnLabel:
        """The RMA's return label (the existing one when it was issued before)."""
        label = await uow.load(ReturnLabel, rma_label_id(rma_id))
        if label.exists:
            return label
        c = carrier_for(ship_to.country)
        number = tracking_number(c, label.id, outbound=False)
        label = ReturnLabel.issue_for_rma(rma_id, contact, c.code, number, self.signer.barcode(label.id, rma_id),
                                          self.signer.qr(label.id, rma_id, c.code, number), self.clock())
        uow.add(label)
        await uow.flush()
        async with clash_is_a_conflict(label.stream_id, [LABEL_PER_RMA_INDEX, "shipping_labels_pkey"]):
            await project_label(uow.conn, label)
        return label

    async def issue_for_extra_unit(self, uow: UnitOfWork, dup: ShipmentDuplicate) -> ReturnLabel:
        """The return label of a duplicate's extra unit, with the carrier that delivered it."""
        d = dup.detected
        assert d is not None
        label = await uow.load(ReturnLabel, extra_unit_label_id(dup.id))
        if label.exists:
            return label
        c = carrier(d.extra.carrier)
        number = tracking_number(c, label.id, outbound=False)
        label = ReturnLabel.issue_for_extra_unit(
            dup.id, d.rma_id, d.order_id, d.contact, c.code, number, self.signer.barcode(label.id, dup.id),
            self.signer.qr(label.id, dup.id, c.code, number), self.clock())
        uow.add(label)
        return label

    async def scan(self, label_id: str | None, payload: str | None, location: str, scanned_at: datetime | None,
                   ctx: CommandContext) -> CommandResult:
        """The parcel of a label arrived (roles service, platform)."""
        require_role(ctx.role, SCAN_ROLES, "scan parcels in")
        claim = self.signer.verify(payload) if payload else None
        if claim is None and label_id is None:
            raise RuleViolation("payload", "is required: the label's barcode or QR payload")
        if claim is not None and label_id is not None and claim.label_id != label_id:
            raise RuleViolation("payload", f"the payload is label {claim.label_id}'s, not {label_id}'s")
        target = label_id or (claim.label_id if claim else "")

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            label = await uow.get(ReturnLabel, target)
            if claim is not None:
                label.check_claim(claim.ref)
            at = self.clock()
            scanned = label.scan(location, scanned_at or at, at)
            dup = None
            if scanned and label.purpose is LabelPurpose.EXTRA_UNIT_RETURN:
                assert label.duplicate_id is not None
                dup = await uow.get(ShipmentDuplicate, label.duplicate_id)
                if not dup.unit_returned(label.id, ctx.actor, at):
                    dup = None
            await uow.flush()
            await project_label(uow.conn, label)
            if dup is not None:
                await project_duplicate(uow.conn, dup, at)
            return {"scanned": scanned, "label": await self.view(target, conn=uow.conn)}

        return await execute(self.store, ctx, f"shipping:label:{target}:scan", fn)

    # --- queries ---------------------------------------------------------------------------------
    async def view(self, label_id: str, *, conn: Any = None) -> dict[str, Any]:
        row = await (conn or self.store.pool).fetchrow("SELECT * FROM shipping_labels WHERE label_id = $1", label_id)
        if row is None:
            raise NotFound(f"label {label_id} not found", id=label_id)
        return label_view(row)

    async def of_rma(self, rma_id: str) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch(
            "SELECT * FROM shipping_labels WHERE rma_id = $1 ORDER BY issued_at, label_id", rma_id)
        return [label_view(r) for r in rows]
