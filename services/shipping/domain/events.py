"""The shipping service's events (topic `shipping.events`) that other services consume: the
after-sales contract (docs/after-sales.md). Streams: `label-{label_id}` (a return label),
`shipment-{shipment_id}` (an outbound shipment and its tracking).

Fields only ever grow backward compatibly; the shipping service adds its internal events beside
(below the contract, in this module so that every process decoding shipping.events knows them):
`carrier_manifest-{manifest_id}` (an imported carrier manifest) and
`shipment_duplicate-{duplicate_id}` (a duplicate shipment and its follow-up, seed 001 case 15).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.domain.events import DomainEvent
from libs.domain.types import Code, Id
from services.rma.domain.events import Contact, ShippingAddress, Sku

TOPIC = "shipping.events"
LABEL_CATEGORY = "label"
SHIPMENT_CATEGORY = "shipment"
MANIFEST_CATEGORY = "carrier_manifest"
DUPLICATE_CATEGORY = "shipment_duplicate"

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
    service_level: Code | None = None  # added: the carrier service booked (standard, express)


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
    previous_status: TrackingStatus | None = None  # added: None before the first carrier event


# ============================================================================================
# Internal events of the shipping service (other services may read them; nothing requires it).
# Names start with Shipment / Label / Carrier so that they stay unique across the platform.
# ============================================================================================

Note = Annotated[str, Field(max_length=2000)]
Actor = Annotated[str, Field(min_length=1, max_length=128)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ShippingValue(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrackingVia(StrEnum):
    """How a carrier's tracking event reached closeloop."""

    HTTP = "http"
    KAFKA = "kafka"


class CarrierTrackingUpdate(ShippingValue):
    """One carrier tracking event, normalised (services/shipping/domain/carrier_formats.py)."""

    carrier: Code
    event_key: Annotated[str, Field(min_length=1, max_length=128,
                                    description="dedupe key: 'id:<carrier event id>', 'seq:<bill>:<n>' or "
                                                "'sha256:<content hash>'")]
    tracking_number: TrackingNumber
    status: TrackingStatus
    carrier_status: Annotated[str, Field(min_length=1, max_length=100, description="the carrier's own code or text")]
    description: Annotated[str, Field(max_length=300)] = ""
    location: Annotated[str, Field(max_length=200)] = ""
    occurred_at: AwareDatetime
    eta: AwareDatetime | None = None  # the carrier's estimate, when it gives one
    original: dict[str, Any] = Field(default_factory=dict, description="the carrier's event as received")


class ShipmentTrackingRecorded(ShippingEvent):
    """A new carrier event of the shipment (a duplicate records nothing). It enters the history whether
    or not it changes the status; ShipmentStatusChanged follows when it does."""

    shipment_id: Id
    update: CarrierTrackingUpdate
    via: TrackingVia
    at: AwareDatetime


class LabelTrackingRecorded(ShippingEvent):
    """A new carrier event of a return parcel (the customer's parcel on its way to the service centre)."""

    label_id: Id
    rma_id: Id | None = None
    update: CarrierTrackingUpdate
    via: TrackingVia
    at: AwareDatetime


class LabelExtraUnitReturnIssued(ShippingEvent):
    """A return label for the extra unit of a duplicate shipment (case 15). Not a ReturnLabelIssued:
    it is no step of the RMA's flow, and scanning it must not move the RMA."""

    label_id: Id
    duplicate_id: Id
    rma_id: Id | None = None
    order_id: Id | None = None
    carrier: Code
    tracking_number: TrackingNumber
    barcode_payload: Annotated[str, Field(min_length=1, max_length=500)]
    qr_payload: Annotated[str, Field(min_length=1, max_length=1000)]
    contact: Contact | None = None
    at: AwareDatetime


class LabelExtraUnitReceived(ShippingEvent):
    """The extra unit came back: its label was scanned in."""

    label_id: Id
    duplicate_id: Id
    location: Annotated[str, Field(max_length=200)] = ""
    scanned_at: AwareDatetime
    at: AwareDatetime


class ManifestRowOutcome(StrEnum):
    """What the duplicate detector made of one manifest row (services/shipping/domain/duplicates.py)."""

    CLOSELOOP_SHIPMENT = "closeloop_shipment"  # the carrier's record of a shipment closeloop created
    EXTERNAL_SHIPMENT = "external_shipment"  # shipped outside closeloop, the first for its (subject, action)
    DUPLICATE = "duplicate"  # shipped outside closeloop for a (subject, action) that already has a shipment
    ALREADY_IMPORTED = "already_imported"  # this carrier's tracking number came in an earlier manifest


class ManifestShipmentRow(ShippingValue):
    """One valid row of a carrier manifest: a parcel the carrier picked up."""

    line: Annotated[int, Field(ge=1)]
    carrier: Code
    tracking_number: TrackingNumber
    shipped_at: AwareDatetime
    rma_id: Id | None = None
    order_id: Id | None = None
    action: Code
    sku: Sku | None = None
    warehouse_id: Id | None = None
    recipient_name: Annotated[str, Field(max_length=200)] = ""
    reference: Annotated[str, Field(max_length=128)] = ""
    outcome: ManifestRowOutcome | None = None
    duplicate_id: Id | None = None


class ManifestRowError(ShippingValue):
    """A bad row (or a problem with the whole file when line is None)."""

    line: Annotated[int, Field(ge=1)] | None = None
    field: Annotated[str, Field(max_length=100)]
    rule: Annotated[str, Field(max_length=500)]


class CarrierManifestImported(ShippingEvent):
    """A carrier manifest was imported: its valid rows with the detector's outcome, and its bad rows. The
    manifest id comes from the file's content, so importing the same file again finds this stream."""

    MAX_ERRORS_IN_EVENT: ClassVar[int] = 500

    manifest_id: Id
    carrier: Code | None = None  # the manifest's default carrier (rows may name their own)
    format: Literal["csv", "json"]
    source_name: Annotated[str, Field(max_length=255)] = ""
    file_sha256: Sha256
    rows: list[ManifestShipmentRow]
    errors: list[ManifestRowError] = Field(default_factory=list)
    errors_total: Annotated[int, Field(ge=0)] = 0
    by: Actor
    at: AwareDatetime


class ShipmentParcelOrigin(StrEnum):
    CLOSELOOP = "closeloop"  # created by closeloop (exactly once per subject and action)
    EXTERNAL = "external"  # seen only in a carrier manifest


class ShipmentDuplicateParcel(ShippingValue):
    """One of the two parcels of a duplicate."""

    origin: ShipmentParcelOrigin
    shipment_id: Id | None = None  # closeloop's shipment
    carrier: Code
    tracking_number: TrackingNumber
    shipped_at: AwareDatetime | None = None
    sku: Sku | None = None
    manifest_id: Id | None = None
    line: Annotated[int, Field(ge=1)] | None = None


class DuplicateShipmentDetected(ShippingEvent):
    """A second parcel went out for the same (RMA or order, action): `extra` duplicates `original`.
    The alert of case 15; the follow-up is recorded on the same stream."""

    duplicate_id: Id
    rma_id: Id | None = None
    order_id: Id | None = None
    action: Code
    original: ShipmentDuplicateParcel
    extra: ShipmentDuplicateParcel
    contact: Contact | None = None
    at: AwareDatetime


class ShipmentDuplicateResolution(StrEnum):
    """The follow-up of a duplicate shipment (seed 001, case 15)."""

    RETURN_REQUESTED = "return_requested"  # ask the customer to send the extra unit back (a return label)
    OFFSET_AGAINST_LATER_SERVICE = "offset_against_later_service"  # 於下次服務中扣抵
    CUSTOMER_PAYS = "customer_pays"  # 自付選項: the customer keeps it and pays for it
    GOODWILL_KEPT = "goodwill_kept"  # the customer keeps it as goodwill (case 8)
    NOT_A_DUPLICATE = "not_a_duplicate"  # reviewed: the second parcel was intended
    UNIT_RETURNED = "unit_returned"  # the extra unit's return label was scanned in (not a command)


class ShipmentDuplicateReturnRequested(ShippingEvent):
    """The customer is asked to return the extra unit, with a return label for it."""

    duplicate_id: Id
    label_id: Id
    note: Note
    by: Actor
    at: AwareDatetime


class ShipmentDuplicateResolved(ShippingEvent):
    """The duplicate's follow-up ended: offset, paid, kept as goodwill, dismissed, or the unit returned."""

    duplicate_id: Id
    resolution: ShipmentDuplicateResolution
    note: Note = ""
    offset_reference: Annotated[str, Field(max_length=128)] = ""  # the later order / RMA it is offset against
    label_id: Id | None = None
    by: Actor
    at: AwareDatetime


__all__ = [
    "DUPLICATE_CATEGORY", "LABEL_CATEGORY", "MANIFEST_CATEGORY", "SHIPMENT_CATEGORY", "TOPIC",
    "CarrierManifestImported", "CarrierTrackingUpdate", "DuplicateShipmentDetected", "InboundParcelScanned",
    "LabelExtraUnitReceived", "LabelExtraUnitReturnIssued", "LabelTrackingRecorded", "ManifestRowError",
    "ManifestRowOutcome", "ManifestShipmentRow", "ReturnLabelIssued", "ShipmentCreated", "ShipmentDuplicateParcel",
    "ShipmentDuplicateResolution", "ShipmentDuplicateResolved", "ShipmentDuplicateReturnRequested",
    "ShipmentParcelOrigin", "ShipmentStatusChanged", "ShipmentTrackingRecorded", "ShippingEvent", "TrackingNumber",
    "TrackingStatus", "TrackingVia",
]
