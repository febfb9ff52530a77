"""ReturnLabel (`label-{label_id}`): a return label bound to its RMA, scanned in once (seed 001, case 14).

An RMA has exactly one return label: its id derives from the RMA id (`rma_label_id`), so every
redelivery of RmaEligible finds the label already issued. The extra unit of a duplicate shipment
gets its own label (`extra_unit_label_id`, case 15), which is no step of the RMA's flow: its issue
and its scan are internal events, so that scanning it never moves the RMA.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from libs.domain.aggregate import Aggregate
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from services.rma.domain.events import Contact
from services.shipping.domain.events import (
    LABEL_CATEGORY,
    CarrierTrackingUpdate,
    InboundParcelScanned,
    LabelExtraUnitReceived,
    LabelExtraUnitReturnIssued,
    LabelTrackingRecorded,
    ReturnLabelIssued,
    TrackingVia,
)
from services.shipping.domain.tracking import TrackingLog


class LabelPurpose(StrEnum):
    RMA_RETURN = "rma_return"  # the customer sends the faulty unit in
    EXTRA_UNIT_RETURN = "extra_unit_return"  # the customer sends back the extra unit of a duplicate shipment


class LabelStatus(StrEnum):
    ISSUED = "issued"
    SCANNED = "scanned"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20].upper()


def rma_label_id(rma_id: str) -> str:
    """The one return label of an RMA."""
    return f"RL-{_digest('rma_return', rma_id)}"


def extra_unit_label_id(duplicate_id: str) -> str:
    """The return label of a duplicate shipment's extra unit."""
    return f"RX-{_digest('extra_unit_return', duplicate_id)}"


class ReturnLabel(Aggregate):
    category = LABEL_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.purpose: LabelPurpose | None = None
        self.rma_id: str | None = None
        self.order_id: str | None = None
        self.duplicate_id: str | None = None
        self.carrier = ""
        self.tracking_number = ""
        self.barcode_payload = ""
        self.qr_payload = ""
        self.contact: Contact | None = None
        self.issued_at: datetime | None = None
        self.status: LabelStatus | None = None
        self.scanned_at: datetime | None = None
        self.location = ""
        self.tracking = TrackingLog()

    @property
    def ref(self) -> str:
        """What its payloads bind it to: the RMA, or the duplicate whose extra unit it returns."""
        return (self.duplicate_id if self.purpose is LabelPurpose.EXTRA_UNIT_RETURN else self.rma_id) or ""

    # --- commands ------------------------------------------------------------------------------
    @classmethod
    def issue_for_rma(cls, rma_id: str, contact: Contact, carrier: str, tracking_number: str, barcode: str, qr: str,
                      at: datetime) -> ReturnLabel:
        label = cls(rma_label_id(rma_id))
        label._record(ReturnLabelIssued(label_id=label.id, rma_id=rma_id, carrier=carrier,
                                        tracking_number=tracking_number, barcode_payload=barcode, qr_payload=qr,
                                        contact=contact, at=at))
        return label

    @classmethod
    def issue_for_extra_unit(cls, duplicate_id: str, rma_id: str | None, order_id: str | None,
                             contact: Contact | None, carrier: str, tracking_number: str, barcode: str, qr: str,
                             at: datetime) -> ReturnLabel:
        label = cls(extra_unit_label_id(duplicate_id))
        label._record(LabelExtraUnitReturnIssued(
            label_id=label.id, duplicate_id=duplicate_id, rma_id=rma_id, order_id=order_id, carrier=carrier,
            tracking_number=tracking_number, barcode_payload=barcode, qr_payload=qr, contact=contact, at=at))
        return label

    def scan(self, location: str, scanned_at: datetime, at: datetime) -> bool:
        """The parcel arrived at the service centre. Scanning it again changes nothing (False)."""
        if self.status is LabelStatus.SCANNED:
            return False
        if self.purpose is LabelPurpose.EXTRA_UNIT_RETURN:
            assert self.duplicate_id is not None
            self._record(LabelExtraUnitReceived(label_id=self.id, duplicate_id=self.duplicate_id, location=location,
                                                scanned_at=scanned_at, at=at))
        else:
            assert self.rma_id is not None
            self._record(InboundParcelScanned(label_id=self.id, rma_id=self.rma_id, location=location,
                                              scanned_at=scanned_at, at=at))
        return True

    def check_claim(self, ref: str) -> None:
        """A verified payload names this label: it must also name what this label is bound to."""
        if ref != self.ref:
            raise RuleViolation("payload", f"the payload binds label {self.id} to {ref!r}, not to {self.ref!r}")

    def record_tracking(self, update: CarrierTrackingUpdate, via: TrackingVia, at: datetime) -> bool:
        """A carrier event of the return parcel; False for one seen before (nothing recorded)."""
        if self.tracking.seen(update):
            return False
        self._record(LabelTrackingRecorded(label_id=self.id, rma_id=self.rma_id, update=update, via=via, at=at))
        return True

    # --- state ---------------------------------------------------------------------------------
    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, ReturnLabelIssued):
            self.purpose, self.rma_id, self.contact = LabelPurpose.RMA_RETURN, event.rma_id, event.contact
            self._issued(event.carrier, event.tracking_number, event.barcode_payload, event.qr_payload, event.at)
        elif isinstance(event, LabelExtraUnitReturnIssued):
            self.purpose, self.duplicate_id = LabelPurpose.EXTRA_UNIT_RETURN, event.duplicate_id
            self.rma_id, self.order_id, self.contact = event.rma_id, event.order_id, event.contact
            self._issued(event.carrier, event.tracking_number, event.barcode_payload, event.qr_payload, event.at)
        elif isinstance(event, InboundParcelScanned | LabelExtraUnitReceived):
            self.status, self.scanned_at, self.location = LabelStatus.SCANNED, event.scanned_at, event.location
        elif isinstance(event, LabelTrackingRecorded):
            self.tracking.add(event.update)

    def _issued(self, carrier: str, tracking_number: str, barcode: str, qr: str, at: datetime) -> None:
        self.carrier, self.tracking_number = carrier, tracking_number
        self.barcode_payload, self.qr_payload = barcode, qr
        self.issued_at, self.status = at, LabelStatus.ISSUED
