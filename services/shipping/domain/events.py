"""The shipping service's events (topic `shipping.events`) that other services consume: the
after-sales contract (docs/after-sales.md). Streams: `label-{label_id}` (a return label),
`shipment-{shipment_id}` (an outbound shipment and its tracking).

Fields only ever grow backward compatibly; the shipping service adds its internal events beside.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, Field

from libs.domain.events import DomainEvent
from libs.domain.types import Code, Id
from services.rma.domain.events import Contact, ShippingAddress, Sku

TOPIC = "shipping.events"
LABEL_CATEGORY = "label"
SHIPMENT_CATEGORY = "shipment"

TrackingNumber = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


class TrackingStatus(StrEnum):
    """Every carrier's statuses normalised to these (seed 001, case 9)."""

    IN_TRANSIT = "InTransit"
    OUT_FOR_DELIVERY = "OutForDelivery"
    DELIVERED = "Delivered"
    EXCEPTION = "Exception"
    RETURNED_TO_SENDER = "ReturnedToSender"


class ShippingEvent(DomainEvent):
    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC


class ReturnLabelIssued(ShippingEvent):
    """A return label bound to the RMA (case 14): the barcode / QR payload the customer prints."""

    label_id: Id
    rma_id: Id
    carrier: Code
    tracking_number: TrackingNumber
    barcode_payload: Annotated[str, Field(min_length=1, max_length=500)]
    qr_payload: Annotated[str, Field(min_length=1, max_length=1000)]
    contact: Contact
    at: AwareDatetime


class InboundParcelScanned(ShippingEvent):
    """The parcel of a return label was scanned in at the service centre."""

    label_id: Id
    rma_id: Id
    location: Annotated[str, Field(max_length=200)] = ""
    scanned_at: AwareDatetime
    at: AwareDatetime


class ShipmentCreated(ShippingEvent):
    """An outbound shipment: exactly one per (RMA or order, action) (cases 5 and 11)."""

    shipment_id: Id
    rma_id: Id | None = None
    order_id: Id | None = None
    action: Code
    sku: Sku
    warehouse_id: Id
    carrier: Code
    tracking_number: TrackingNumber
    ship_to: ShippingAddress
    contact: Contact | None = None
    eta: AwareDatetime | None = None
    at: AwareDatetime


class ShipmentStatusChanged(ShippingEvent):
    """A carrier's tracking event, normalised and bound to the shipment; `status` is the shipment's
    status after it (a stale or duplicate carrier event changes nothing and records nothing)."""

    shipment_id: Id
    rma_id: Id | None = None
    order_id: Id | None = None
    tracking_number: TrackingNumber
    status: TrackingStatus
    carrier_status: Annotated[str, Field(max_length=100)]
    location: Annotated[str, Field(max_length=200)] = ""
    occurred_at: AwareDatetime
    eta: AwareDatetime | None = None
    at: AwareDatetime


__all__ = ["LABEL_CATEGORY", "SHIPMENT_CATEGORY", "TOPIC", "InboundParcelScanned", "ReturnLabelIssued",
           "ShipmentCreated", "ShipmentStatusChanged", "ShippingEvent", "TrackingNumber", "TrackingStatus"]
