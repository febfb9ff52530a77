"""The RMA service's events (topic `rma.events`) that other services consume: the after-sales
contract (docs/after-sales.md). Streams: `rma-{rma_id}` (the Rma aggregate) and
`transfer-{transfer_id}` (a stock transfer between warehouses or departments).

Fields only ever grow backward compatibly. The RMA service adds its internal events next to
these (in this module or its own); the ones here are what shipping and notifications read.
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.domain.events import DomainEvent
from libs.domain.money import Money
from libs.domain.types import Code, Id, Name, Text

TOPIC = "rma.events"
STREAM_CATEGORY = "rma"
TRANSFER_CATEGORY = "transfer"

Serial = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$",
                              description="a product serial number")]
Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$", description="a SKU")]
Locale = Literal["zh-TW", "en"]


class Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RmaStatus(StrEnum):
    """The seed's RMA states (001, case 1) plus the two ends it implies."""

    RECEIVED = "RECEIVED"
    ELIGIBLE = "ELIGIBLE"
    SHIPPED_IN = "SHIPPED_IN"
    PROCESSING = "PROCESSING"
    SHIPPED_OUT = "SHIPPED_OUT"
    CLOSED = "CLOSED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"


class ShippingAddress(Value):
    name: Name
    line1: Annotated[str, Field(min_length=1, max_length=200)]
    city: Annotated[str, Field(min_length=1, max_length=100)]
    postal_code: Annotated[str, Field(max_length=20)] = ""
    country: Annotated[str, Field(min_length=2, max_length=2, pattern=r"^[A-Z]{2}$")] = "TW"
    phone: Annotated[str, Field(max_length=32)] = ""


class Contact(Value):
    """How the customer is told about the RMA (notifications use it)."""

    customer_id: Id
    email: Annotated[str, Field(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    phone: Annotated[str, Field(max_length=32)] | None = None
    locale: Locale = "zh-TW"


class WarrantyBasis(Value):
    """What a warranty decision rests on (stored in the event: the audit of case 7)."""

    source: Literal["registration", "sales_record", "manual_review"]
    reference: Annotated[str, Field(max_length=128)] = ""  # registration id, invoice number, reviewer note
    purchase_date: date | None = None
    warranty_days: Annotated[int, Field(ge=0)] | None = None
    expires_on: date | None = None  # the last day covered
    checked_on: date


class RmaEvent(DomainEvent):
    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    rma_id: Id


class RmaOpened(RmaEvent):
    """An RMA was opened (RECEIVED) for a serial number and SKU with a fault code from the dictionary."""

    serial: Serial
    sku: Sku
    fault_code: Code
    description: Text = ""
    attachments: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(default_factory=list)
    contact: Contact
    ship_to: ShippingAddress
    at: AwareDatetime


class RmaEligible(RmaEvent):
    """Warranty confirmed (ELIGIBLE): shipping issues the return label."""

    serial: Serial
    sku: Sku
    basis: WarrantyBasis
    contact: Contact
    ship_to: ShippingAddress
    at: AwareDatetime


class RmaShippedIn(RmaEvent):
    """The customer's parcel was scanned in at the service centre (SHIPPED_IN)."""

    label_id: Id
    at: AwareDatetime


class RmaReplacementReady(RmaEvent):
    """The replacement is chosen, approved where needed, and in stock at `warehouse_id`: shipping
    creates the outbound shipment (exactly once per RMA and action)."""

    action: Code = "ship_replacement"
    sku: Sku
    same_sku: bool
    warehouse_id: Id
    contact: Contact
    ship_to: ShippingAddress
    at: AwareDatetime


class RmaShippedOut(RmaEvent):
    """The replacement left (SHIPPED_OUT), with its tracking number."""

    shipment_id: Id
    carrier: Code
    tracking_number: Annotated[str, Field(min_length=1, max_length=64)]
    eta: AwareDatetime | None = None
    at: AwareDatetime


class RmaClosed(RmaEvent):
    """The replacement was delivered, or the case otherwise resolved (CLOSED)."""

    resolution: Code
    at: AwareDatetime


class RmaRejected(RmaEvent):
    """Not covered (REJECTED), with the basis of the decision."""

    reason: Text
    basis: WarrantyBasis | None = None
    at: AwareDatetime


class RmaCancelled(RmaEvent):
    reason: Text
    at: AwareDatetime


__all__ = [
    "STREAM_CATEGORY",
    "TOPIC",
    "TRANSFER_CATEGORY",
    "Contact",
    "Locale",
    "Money",
    "RmaCancelled",
    "RmaClosed",
    "RmaEligible",
    "RmaEvent",
    "RmaOpened",
    "RmaRejected",
    "RmaReplacementReady",
    "RmaShippedIn",
    "RmaShippedOut",
    "RmaStatus",
    "Serial",
    "ShippingAddress",
    "Sku",
    "Value",
    "WarrantyBasis",
]
