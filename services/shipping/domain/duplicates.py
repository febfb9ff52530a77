"""The duplicate-shipment detector and the follow-up of a duplicate (seed 001, case 15). Pure.

closeloop itself ships an (RMA or order, action) once (shipment.py). A duplicate comes from
outside: a warehouse or a colleague shipping by hand, seen in the carrier's manifest. The rules
for one manifest row, given what is known (`classify_row`):

1. its carrier's tracking number is a closeloop shipment's → `closeloop_shipment` (the manifest
   lists our own parcel; never a duplicate, whatever reference the row carries);
2. it came in an earlier manifest → `already_imported` (a re-import changes nothing);
3. its (subject, action) already has a parcel — closeloop's shipment first, else the earliest
   parcel seen outside — → `duplicate` of that parcel: DuplicateShipmentDetected;
4. otherwise → `external_shipment`: recorded; should closeloop ship that (subject, action)
   later, the new shipment is flagged as the duplicate of it (`duplicate_of_new_shipment`).

A duplicate's id derives from the subject, the action and the extra parcel's tracking number, so
detecting it again (a re-import, a retry) finds it already there.

The follow-up (`ShipmentDuplicate`): ask the customer to return the extra unit (a return label is
issued for it; scanning it in closes the case), offset it against a later service, let the
customer pay for it (自付), keep it as goodwill, or dismiss it (not a duplicate after all). Every
step is an event with who decided it and the note.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from services.rma.domain.events import Contact
from services.shipping.domain.events import (
    DUPLICATE_CATEGORY,
    DuplicateShipmentDetected,
    ManifestRowOutcome,
    ShipmentDuplicateParcel,
    ShipmentDuplicateResolution,
    ShipmentDuplicateResolved,
    ShipmentDuplicateReturnRequested,
    ShipmentParcelOrigin,
)
from services.shipping.domain.shipment import Subject

R = ShipmentDuplicateResolution


class DuplicateStatus(StrEnum):
    OPEN = "open"
    RETURN_REQUESTED = "return_requested"
    RESOLVED = "resolved"
    DISMISSED = "dismissed"


MACHINE = StateMachine("shipment duplicate", {
    DuplicateStatus.OPEN: {R.RETURN_REQUESTED.value: DuplicateStatus.RETURN_REQUESTED,
                           R.OFFSET_AGAINST_LATER_SERVICE.value: DuplicateStatus.RESOLVED,
                           R.CUSTOMER_PAYS.value: DuplicateStatus.RESOLVED,
                           R.GOODWILL_KEPT.value: DuplicateStatus.RESOLVED,
                           R.NOT_A_DUPLICATE.value: DuplicateStatus.DISMISSED},
    # The customer was asked to send it back: it comes back (the label scanned), or they never
    # send it and another follow-up closes the case.
    DuplicateStatus.RETURN_REQUESTED: {R.UNIT_RETURNED.value: DuplicateStatus.RESOLVED,
                                       R.OFFSET_AGAINST_LATER_SERVICE.value: DuplicateStatus.RESOLVED,
                                       R.CUSTOMER_PAYS.value: DuplicateStatus.RESOLVED,
                                       R.GOODWILL_KEPT.value: DuplicateStatus.RESOLVED},
    DuplicateStatus.RESOLVED: {},
    DuplicateStatus.DISMISSED: {},
})


def duplicate_id_for(subject: Subject, action: str, extra_carrier: str, extra_tracking: str) -> str:
    digest = hashlib.sha256(f"{subject.kind}\n{subject.id}\n{action}\n{extra_carrier}\n{extra_tracking}".encode())
    return f"DUP-{digest.hexdigest()[:20].upper()}"


# --- detection -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowVerdict:
    outcome: ManifestRowOutcome
    original: ShipmentDuplicateParcel | None = None  # what the row duplicates


def classify_row(by_tracking: ShipmentDuplicateParcel | None,
                 for_subject: Sequence[ShipmentDuplicateParcel]) -> RowVerdict:
    """The detector's rules 1-4 for one manifest row. `by_tracking`: the parcel already known under the
    row's carrier and tracking number; `for_subject`: the parcels known for the row's (subject, action)."""
    if by_tracking is not None:
        if by_tracking.origin is ShipmentParcelOrigin.CLOSELOOP:
            return RowVerdict(ManifestRowOutcome.CLOSELOOP_SHIPMENT)
        return RowVerdict(ManifestRowOutcome.ALREADY_IMPORTED)
    original = first_parcel(for_subject)
    if original is not None:
        return RowVerdict(ManifestRowOutcome.DUPLICATE, original)
    return RowVerdict(ManifestRowOutcome.EXTERNAL_SHIPMENT)


def first_parcel(parcels: Sequence[ShipmentDuplicateParcel]) -> ShipmentDuplicateParcel | None:
    """The parcel a later one duplicates: closeloop's shipment, else the earliest shipped outside."""
    ours = [p for p in parcels if p.origin is ShipmentParcelOrigin.CLOSELOOP]
    if ours:
        return ours[0]
    outside = sorted(parcels, key=lambda p: (p.shipped_at is None, p.shipped_at or datetime.min, p.tracking_number))
    return outside[0] if outside else None


def duplicate_of_new_shipment(
        external_for_subject: Sequence[ShipmentDuplicateParcel]) -> ShipmentDuplicateParcel | None:
    """Rule 4: closeloop ships a (subject, action) that a parcel shipped outside already served."""
    return first_parcel([p for p in external_for_subject if p.origin is ShipmentParcelOrigin.EXTERNAL])


# --- follow-up -----------------------------------------------------------------------------------


class ShipmentDuplicate(Aggregate):
    category = DUPLICATE_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.detected: DuplicateShipmentDetected | None = None
        self.status: DuplicateStatus | None = None
        self.resolution: ShipmentDuplicateResolution | None = None
        self.label_id: str | None = None
        self.note = ""
        self.offset_reference = ""

    @classmethod
    def detect(cls, subject: Subject, action: str, original: ShipmentDuplicateParcel, extra: ShipmentDuplicateParcel,
               contact: Contact | None, at: datetime) -> ShipmentDuplicate:
        dup = cls(duplicate_id_for(subject, action, extra.carrier, extra.tracking_number))
        dup._record(DuplicateShipmentDetected(duplicate_id=dup.id, rma_id=subject.rma_id, order_id=subject.order_id,
                                              action=action, original=original, extra=extra, contact=contact, at=at))
        return dup

    def _check(self, resolution: ShipmentDuplicateResolution) -> None:
        assert self.status is not None
        MACHINE.check(self.id, self.status, resolution.value)

    def request_return(self, label_id: str, note: str, by: str, at: datetime) -> None:
        self._check(R.RETURN_REQUESTED)
        self._record(ShipmentDuplicateReturnRequested(duplicate_id=self.id, label_id=label_id, note=note, by=by,
                                                      at=at))

    def resolve(self, resolution: ShipmentDuplicateResolution, note: str, offset_reference: str, by: str,
                at: datetime) -> None:
        if resolution in (R.RETURN_REQUESTED, R.UNIT_RETURNED):
            raise RuleViolation("resolution", f"{resolution.value} is not a closing resolution here")
        self._check(resolution)
        self._record(ShipmentDuplicateResolved(duplicate_id=self.id, resolution=resolution, note=note,
                                               offset_reference=offset_reference, by=by, at=at))

    def unit_returned(self, label_id: str, by: str, at: datetime) -> bool:
        """The extra unit's label was scanned in; False when the case was closed otherwise meanwhile."""
        if self.status is not DuplicateStatus.RETURN_REQUESTED:
            return False
        self._record(ShipmentDuplicateResolved(duplicate_id=self.id, resolution=R.UNIT_RETURNED,
                                               note="the extra unit came back", label_id=label_id, by=by, at=at))
        return True

    def allowed(self) -> list[str]:
        assert self.status is not None
        return [c for c in MACHINE.allowed(self.status) if c != R.UNIT_RETURNED.value]

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, DuplicateShipmentDetected):
            self.detected, self.status = event, DuplicateStatus.OPEN
        elif isinstance(event, ShipmentDuplicateReturnRequested):
            self.status, self.label_id, self.note = DuplicateStatus.RETURN_REQUESTED, event.label_id, event.note
            self.resolution = R.RETURN_REQUESTED
        elif isinstance(event, ShipmentDuplicateResolved):
            self.resolution = event.resolution
            if event.resolution is not R.UNIT_RETURNED:  # keep what was agreed with the customer
                self.note = event.note or self.note
            self.offset_reference = event.offset_reference or self.offset_reference
            self.status = DuplicateStatus.DISMISSED if event.resolution is R.NOT_A_DUPLICATE else \
                DuplicateStatus.RESOLVED
