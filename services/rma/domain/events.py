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
    # Added (optional): who decided a manual review.
    reviewer: Id | None = None


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
    # Added (optional): the service centre (warehouse) handling the RMA.
    warehouse_id: Id | None = None


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
    # Added (optional): the serial of the unit picked as the replacement (assigned by the RMA service
    # when the unit is picked) and the SKU it replaces.
    replacement_serial: Serial | None = None
    original_sku: Sku | None = None


class RmaShippedOut(RmaEvent):
    """The replacement left (SHIPPED_OUT), with its tracking number."""

    shipment_id: Id
    carrier: Code
    tracking_number: Annotated[str, Field(min_length=1, max_length=64)]
    eta: AwareDatetime | None = None
    at: AwareDatetime
    # Added (optional): what left.
    sku: Sku | None = None
    replacement_serial: Serial | None = None


class RmaClosed(RmaEvent):
    """The replacement was delivered, or the case otherwise resolved (CLOSED)."""

    resolution: Code
    at: AwareDatetime
    # Added (optional): the shipment whose delivery closed it.
    shipment_id: Id | None = None


class RmaRejected(RmaEvent):
    """Not covered (REJECTED), with the basis of the decision."""

    reason: Text
    basis: WarrantyBasis | None = None
    at: AwareDatetime


class RmaCancelled(RmaEvent):
    reason: Text
    at: AwareDatetime



# ==================================================================================================
# Internal events of the RMA service (same topic; shipping and notifications may ignore them).
# Streams: `rma-{id}` (the Rma), `transfer-{id}` (StockTransfer), `stock-{warehouse}` (a warehouse or
# department), `stock-{warehouse}/{sku}` (its stock of one SKU), `catalogue-{sku}` (a catalogue item
# and its substitution rules), `warranty-{serial}` (registrations, sales records, replacement units).
# ==================================================================================================

STOCK_CATEGORY = "stock"
CATALOGUE_CATEGORY = "catalogue"
WARRANTY_CATEGORY = "warranty"

Warehouse = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                                 description="a warehouse or department id")]


class RepeatKind(StrEnum):
    SAME_SERIAL = "same_serial"  # the same unit failed again
    REPLACEMENT_UNIT = "replacement_unit"  # the replacement shipped by an earlier RMA failed


class ReplacementSource(StrEnum):
    LOCAL = "local"  # in stock at the RMA's warehouse
    TRANSFER = "transfer"  # to be transferred from another warehouse or department


class CandidateStatus(StrEnum):
    CHOSEN = "chosen"
    RANKED = "ranked"  # eligible, ranked below the chosen one (not tried)
    INACTIVE = "inactive"
    OVER_PRICE_CEILING = "over_price_ceiling"
    NOT_IN_CATALOGUE = "not_in_catalogue"
    END_OF_LIFE = "end_of_life"
    REFUSED_BY_APPROVER = "refused_by_approver"
    NO_STOCK = "no_stock"  # no unit in any warehouse (or every source refused)


class RmaSubstitutionCandidate(Value):
    """One candidate the replacement choice looked at, with its scores and what became of it."""

    sku: Sku
    same_sku: bool = False
    feature_score: Annotated[int, Field(ge=0, le=1000)] | None = None
    price_delta: Money
    active: bool = True
    rank: Annotated[int, Field(ge=1)] | None = None  # among the eligible ones, best first
    status: CandidateStatus
    note: Text = ""


class RmaReplacementDecision(Value):
    """Why this SKU replaces the unit (cases 3 and 12): the rule, the candidates with their scores, the
    price ceiling and approval threshold in force, and where the unit comes from."""

    sku: Sku
    original_sku: Sku
    same_sku: bool
    chosen_by: Literal["rules", "approver"] = "rules"
    source: ReplacementSource
    warehouse_id: Warehouse  # where the unit is: the RMA's warehouse, or the transfer's source
    price_delta: Money
    price_ceiling: Money
    approval_threshold: Money
    needs_approval: bool
    rule: Text
    explanation: Text
    candidates: list[RmaSubstitutionCandidate]


class RmaWarrantyReviewRequired(RmaEvent):
    """No usable proof of purchase: the RMA waits in RECEIVED for a reconciler's manual review."""

    reason: Text
    checked_on: date
    at: AwareDatetime


class RmaRepeatFailureFlagged(RmaEvent):
    """The unit failed before (same serial), or it is the replacement an earlier RMA shipped: flagged
    for quality follow-up (cases 2 and 10)."""

    serial: Serial
    sku: Sku
    fault_code: Code
    kind: RepeatKind
    previous_rma_id: Id
    previous_sku: Sku
    previous_fault_code: Code
    previous_opened_at: AwareDatetime
    days_since_previous: Annotated[int, Field(ge=0)]
    earlier_rma_ids: list[Id]
    at: AwareDatetime


class RmaProcessingStarted(RmaEvent):
    """A technician started on the returned unit (PROCESSING); the replacement is chosen next."""

    technician: Annotated[str, Field(min_length=1, max_length=128)]
    at: AwareDatetime


class RmaReplacementChosen(RmaEvent):
    """The replacement the rules (or the approver) chose, with the explanation."""

    decision: RmaReplacementDecision
    at: AwareDatetime


class RmaReplacementUnavailable(RmaEvent):
    """No candidate has a unit anywhere (or every source refused): waits for stock and a retry."""

    reason: Text
    candidates: list[RmaSubstitutionCandidate]
    at: AwareDatetime


class RmaSubstitutionApproved(RmaEvent):
    sku: Sku
    reason: Text = ""
    at: AwareDatetime


class RmaSubstitutionRefused(RmaEvent):
    """The approver refused the substitute; their alternative, if any, is tried first."""

    sku: Sku
    alternative_sku: Sku | None = None
    reason: Text
    at: AwareDatetime


class RmaStockTransferRequested(RmaEvent):
    transfer_id: Id
    sku: Sku
    from_warehouse: Warehouse
    to_warehouse: Warehouse
    expires_at: AwareDatetime
    at: AwareDatetime


class RmaStockTransferResolved(RmaEvent):
    transfer_id: Id
    outcome: Literal["accepted", "refused"]
    reason: Text = ""
    at: AwareDatetime


# --- stock transfers (`transfer-{id}`) --------------------------------------------------------------
class RmaServiceEvent(DomainEvent):
    """Base of the RMA service's events on streams other than `rma-{id}`."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC


class StockTransferRequested(RmaServiceEvent):
    """A unit asked of another warehouse or department, to be answered within the time-to-live (case 4)."""

    transfer_id: Id
    rma_id: Id
    sku: Sku
    quantity: Annotated[int, Field(ge=1)] = 1
    from_warehouse: Warehouse
    to_warehouse: Warehouse
    ttl_seconds: Annotated[int, Field(ge=1)]
    expires_at: AwareDatetime
    at: AwareDatetime


class StockTransferAccepted(RmaServiceEvent):
    transfer_id: Id
    rma_id: Id
    note: Text = ""
    at: AwareDatetime


class StockTransferRefused(RmaServiceEvent):
    transfer_id: Id
    rma_id: Id
    reason: Text
    at: AwareDatetime


class StockTransferEscalated(RmaServiceEvent):
    """Not answered within its time-to-live: escalated to management (still open to an answer)."""

    transfer_id: Id
    rma_id: Id
    sku: Sku
    from_warehouse: Warehouse
    to_warehouse: Warehouse
    requested_at: AwareDatetime
    expires_at: AwareDatetime
    at: AwareDatetime


# --- warehouses and stock levels (`stock-{warehouse}`, `stock-{warehouse}/{sku}`) ------------------
class StockWarehouseDefined(RmaServiceEvent):
    warehouse_id: Warehouse
    name: Name
    kind: Literal["warehouse", "department"] = "warehouse"
    transfer_ttl_seconds: Annotated[int, Field(ge=1, le=30 * 86400)] | None = None
    at: AwareDatetime


class StockLevelSet(RmaServiceEvent):
    """A count of the units available (a stock take or a goods receipt)."""

    warehouse_id: Warehouse
    sku: Sku
    available: Annotated[int, Field(ge=0)]
    previous: Annotated[int, Field(ge=0)]
    reason: Text = ""
    at: AwareDatetime


class StockReserved(RmaServiceEvent):
    """A unit picked as an RMA's replacement."""

    warehouse_id: Warehouse
    sku: Sku
    quantity: Annotated[int, Field(ge=1)] = 1
    rma_id: Id
    available: Annotated[int, Field(ge=0)]  # after
    at: AwareDatetime


class StockTransferredOut(RmaServiceEvent):
    warehouse_id: Warehouse
    sku: Sku
    quantity: Annotated[int, Field(ge=1)] = 1
    transfer_id: Id
    to_warehouse: Warehouse
    available: Annotated[int, Field(ge=0)]
    at: AwareDatetime


class StockTransferredIn(RmaServiceEvent):
    warehouse_id: Warehouse
    sku: Sku
    quantity: Annotated[int, Field(ge=1)] = 1
    transfer_id: Id
    from_warehouse: Warehouse
    available: Annotated[int, Field(ge=0)]
    at: AwareDatetime


# --- the catalogue (`catalogue-{sku}`) ----------------------------------------------------------------
class RmaSubstitutionRule(Value):
    """An alternative for an SKU (the seed's sku_substitution row)."""

    alt_sku: Sku
    feature_score: Annotated[int, Field(ge=0, le=1000)]
    price_delta: Money
    active: bool = True


class RmaCatalogueItemDefined(RmaServiceEvent):
    """A SKU's catalogue entry, replaced as a whole on each change: warranty window, end of life, price,
    and its substitution rules (with optional per-SKU price ceiling and approval threshold)."""

    sku: Sku
    name: Name
    price: Money
    warranty_days: Annotated[int, Field(ge=0, le=3650)]
    eol: bool = False
    substitutes: list[RmaSubstitutionRule] = Field(default_factory=list)
    price_ceiling: Money | None = None
    approval_threshold: Money | None = None
    at: AwareDatetime


# --- warranty proofs (`warranty-{serial}`) --------------------------------------------------------------
class WarrantyProductRegistered(RmaServiceEvent):
    """The customer registered the product (serial, purchase date)."""

    serial: Serial
    sku: Sku
    registration_id: Id
    customer_id: Id | None = None
    purchase_date: date
    at: AwareDatetime


class WarrantySaleRecorded(RmaServiceEvent):
    """A sales record (invoice) for the serial."""

    serial: Serial
    sku: Sku
    invoice_number: Annotated[str, Field(min_length=1, max_length=64)]
    sold_on: date
    channel: Annotated[str, Field(max_length=64)] = ""
    at: AwareDatetime


class WarrantyReplacementIssued(RmaServiceEvent):
    """The serial is a replacement unit an RMA shipped: its own warranty window starts the day it left."""

    serial: Serial
    sku: Sku
    rma_id: Id
    replaces_serial: Serial
    issued_on: date
    at: AwareDatetime


__all__ = [
    "CATALOGUE_CATEGORY",
    "STOCK_CATEGORY",
    "STREAM_CATEGORY",
    "TOPIC",
    "TRANSFER_CATEGORY",
    "WARRANTY_CATEGORY",
    "CandidateStatus",
    "Contact",
    "Locale",
    "Money",
    "RepeatKind",
    "ReplacementSource",
    "RmaCancelled",
    "RmaCatalogueItemDefined",
    "RmaClosed",
    "RmaEligible",
    "RmaEvent",
    "RmaOpened",
    "RmaProcessingStarted",
    "RmaRejected",
    "RmaRepeatFailureFlagged",
    "RmaReplacementChosen",
    "RmaReplacementDecision",
    "RmaReplacementReady",
    "RmaReplacementUnavailable",
    "RmaServiceEvent",
    "RmaShippedIn",
    "RmaShippedOut",
    "RmaStatus",
    "RmaStockTransferRequested",
    "RmaStockTransferResolved",
    "RmaSubstitutionApproved",
    "RmaSubstitutionCandidate",
    "RmaSubstitutionRefused",
    "RmaSubstitutionRule",
    "RmaWarrantyReviewRequired",
    "Serial",
    "ShippingAddress",
    "Sku",
    "StockLevelSet",
    "StockReserved",
    "StockTransferAccepted",
    "StockTransferEscalated",
    "StockTransferRefused",
    "StockTransferRequested",
    "StockTransferredIn",
    "StockTransferredOut",
    "StockWarehouseDefined",
    "Value",
    "Warehouse",
    "WarrantyBasis",
    "WarrantyProductRegistered",
    "WarrantyReplacementIssued",
    "WarrantySaleRecorded",
]
