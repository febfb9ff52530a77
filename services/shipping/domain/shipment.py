"""Shipment (`shipment-{shipment_id}`): one outbound parcel for an (RMA or order, action), and its
carrier tracking (seed 001, cases 5, 9, 11).

The shipment id is a function of the subject and the action (`shipment_id_for`): every attempt to
ship the same thing — an HTTP request, its retries, a redelivered or re-emitted
RmaReplacementReady — names the same stream, and the event store appends a stream's first event
only once (application/shipments.py says how that and the database's unique constraint together
make the shipment exactly-once).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.domain.aggregate import Aggregate
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.types import Code, Id
from services.rma.domain.events import Contact, ShippingAddress, Sku
from services.shipping.domain.events import (
    SHIPMENT_CATEGORY,
    CarrierTrackingUpdate,
    ShipmentCreated,
    ShipmentStatusChanged,
    ShipmentTrackingRecorded,
    TrackingStatus,
    TrackingVia,
)
from services.shipping.domain.tracking import TrackingLog, current_eta


class ShipmentRequest(BaseModel):
    """What to ship: for an RMA or an order (exactly one), the action, the SKU, from where, to whom."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rma_id: Id | None = Field(default=None, description="the RMA the parcel is for (or order_id)")
    order_id: Id | None = Field(default=None, description="the order the parcel is for (or rma_id)")
    action: Code = Field(description="what the parcel does, e.g. ship_replacement; one shipment per subject and "
                                     "action")
    sku: Sku
    warehouse_id: Id
    ship_to: ShippingAddress
    contact: Contact | None = None
    carrier: Code | None = Field(default=None, description="globex or island; by the destination when omitted")
    service_level: Code | None = Field(default=None, description="standard or express; the carrier's default when "
                                                                 "omitted")


@dataclass(frozen=True, order=True)
class Subject:
    kind: Literal["rma", "order"]
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @property
    def rma_id(self) -> str | None:
        return self.id if self.kind == "rma" else None

    @property
    def order_id(self) -> str | None:
        return self.id if self.kind == "order" else None


def subject_of(rma_id: str | None, order_id: str | None) -> Subject:
    """The subject of a shipment: exactly one of the RMA or the order."""
    if (rma_id is None) == (order_id is None):
        raise RuleViolation("rma_id", "exactly one of rma_id or order_id is required")
    return Subject("rma", rma_id) if rma_id is not None else Subject("order", order_id)  # type: ignore[arg-type]


def shipment_id_for(subject: Subject, action: str) -> str:
    """The shipment of (subject, action): the same for every attempt."""
    digest = hashlib.sha256(f"{subject.kind}\n{subject.id}\n{action}".encode()).hexdigest()[:24].upper()
    return f"SH-{digest}"


@dataclass(frozen=True)
class TrackingOutcome:
    new: bool  # False: a duplicate, nothing recorded
    status_changed: bool


class Shipment(Aggregate):
    category = SHIPMENT_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.created: ShipmentCreated | None = None
        self.tracking = TrackingLog()
        self.status: TrackingStatus | None = None  # None: no carrier event yet

    @property
    def subject(self) -> Subject:
        assert self.created is not None
        return subject_of(self.created.rma_id, self.created.order_id)

    @classmethod
    def create(cls, subject: Subject, request: ShipmentRequest, carrier: str, service_level: str,
               tracking_number: str, eta: datetime | None, at: datetime) -> Shipment:
        shipment = cls(shipment_id_for(subject, request.action))
        shipment._record(ShipmentCreated(
            shipment_id=shipment.id, rma_id=subject.rma_id, order_id=subject.order_id, action=request.action,
            sku=request.sku, warehouse_id=request.warehouse_id, carrier=carrier, tracking_number=tracking_number,
            ship_to=request.ship_to, contact=request.contact, eta=eta, at=at, service_level=service_level))
        return shipment

    def differences(self, request: ShipmentRequest) -> list[str]:
        """The fields in which `request` asks for something else than this shipment (empty: the same)."""
        c = self.created
        assert c is not None
        out = [f for f in ("sku", "warehouse_id", "ship_to") if getattr(request, f) != getattr(c, f)]
        if request.carrier is not None and request.carrier != c.carrier:
            out.append("carrier")
        if request.service_level is not None and request.service_level != c.service_level:
            out.append("service_level")
        return out

    def eta(self) -> tuple[datetime | None, str | None]:
        assert self.created is not None
        return current_eta(self.tracking.updates, self.created.eta, "service_level")

    def record_tracking(self, update: CarrierTrackingUpdate, via: TrackingVia, at: datetime) -> TrackingOutcome:
        """Add a carrier event to the history; a status change (tracking.py's rules) is recorded with it."""
        if self.tracking.seen(update):
            return TrackingOutcome(False, False)
        assert self.created is not None
        before = self.status
        self._record(ShipmentTrackingRecorded(shipment_id=self.id, update=update, via=via, at=at))
        deciding = self.tracking.deciding
        assert deciding is not None
        if deciding.status is before:
            return TrackingOutcome(True, False)
        eta, _ = self.eta()
        self._record(ShipmentStatusChanged(
            shipment_id=self.id, rma_id=self.created.rma_id, order_id=self.created.order_id,
            tracking_number=self.created.tracking_number, status=deciding.status,
            carrier_status=deciding.carrier_status, location=deciding.location, occurred_at=deciding.occurred_at,
            eta=eta, at=at, previous_status=before))
        return TrackingOutcome(True, True)

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, ShipmentCreated):
            self.created = event
        elif isinstance(event, ShipmentTrackingRecorded):
            self.tracking.add(event.update)
        elif isinstance(event, ShipmentStatusChanged):
            self.status = event.status
