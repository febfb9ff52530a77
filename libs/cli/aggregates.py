"""Which aggregate class owns a stream: the category (the stream id up to its first "-") of every
service's streams -> the Aggregate subclass that the service itself rebuilds from them.

The replay CLI rebuilds state with the service's own class, so what an auditor sees is what the
service decides with. A category whose streams have no state of their own (the payments contract
streams, the stored upstream facts) is listed in EVENTS_ONLY with the reason, and shows events
only. tests/unit/cli/test_aggregates.py fails when an Aggregate subclass or a stream category of
services/registry.py is in neither table, so a new aggregate cannot be forgotten here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from libs.domain.aggregate import Aggregate
from services.notifications.domain.notification import Notification
from services.notifications.domain.sla import SlaClock
from services.orders.domain.bill import Bill
from services.orders.domain.customer import Customer
from services.orders.domain.order import Order
from services.orders.domain.platform import PlatformConditions
from services.orders.domain.schedule import StaffSchedule
from services.payments.application.kolable import KolableImport
from services.payments.application.service import PaymentContract
from services.payments.domain.dispute import Dispute
from services.payments.domain.kolable.decisions import KolableOrder
from services.payments.domain.refund import RefundExecution
from services.payments.domain.transaction import Transaction
from services.payments.domain.voucher import Voucher
from services.payments.domain.wallet import Wallet
from services.projector.domain.reconciliation import Discrepancy
from services.rma.domain.catalogue import CatalogueItem
from services.rma.domain.rma import Rma
from services.rma.domain.stock import StockLevel, Warehouse
from services.rma.domain.transfer import StockTransfer
from services.rma.domain.warranty import WarrantyRecord
from services.shipping.domain.duplicates import ShipmentDuplicate
from services.shipping.domain.label import ReturnLabel
from services.shipping.domain.manifest import CarrierManifest
from services.shipping.domain.shipment import Shipment

AggregateType = type[Aggregate]


@dataclass(frozen=True)
class StreamKind:
    """How one stream category is rebuilt: `choose(aggregate_id)` gives the class (one category
    can hold two aggregates, told apart by the shape of the id)."""

    category: str
    service: str
    classes: tuple[AggregateType, ...]
    choose: Callable[[str], AggregateType]


def _one(cls: AggregateType, service: str) -> StreamKind:
    return StreamKind(cls.category, service, (cls,), lambda _id: cls)


def _stock(aggregate_id: str) -> AggregateType:
    # stock-{warehouse} is the warehouse; stock-{warehouse}/{sku} its level of one SKU ("/" never
    # occurs in a warehouse id or a SKU: services/rma/domain/stock.py).
    return StockLevel if "/" in aggregate_id else Warehouse


AGGREGATES: dict[str, StreamKind] = {k.category: k for k in [
    _one(Order, "orders"), _one(Bill, "orders"), _one(Customer, "orders"), _one(StaffSchedule, "orders"),
    _one(PlatformConditions, "orders"),
    _one(Transaction, "payments"), _one(Wallet, "payments"), _one(Voucher, "payments"), _one(Dispute, "payments"),
    _one(RefundExecution, "payments"), _one(KolableOrder, "payments"), _one(KolableImport, "payments"),
    _one(Rma, "rma"), _one(StockTransfer, "rma"), _one(CatalogueItem, "rma"), _one(WarrantyRecord, "rma"),
    StreamKind(Warehouse.category, "rma", (Warehouse, StockLevel), _stock),
    _one(ReturnLabel, "shipping"), _one(Shipment, "shipping"), _one(CarrierManifest, "shipping"),
    _one(ShipmentDuplicate, "shipping"),
    _one(Notification, "notifications"), _one(SlaClock, "notifications"),
    _one(Discrepancy, "projector"),
]}

# Categories whose streams carry events but no state worth rebuilding, and why.
EVENTS_ONLY: dict[str, str] = {
    PaymentContract.category: "the payments contract events derived from a transaction (PaymentContract "
                              "applies nothing; the state is the transaction-{order} stream's)",
    "upstream": "an upstream payment system's event as received (raw payload), stored once per provider "
                "event id; it is applied to the transaction, dispute or Kolable order it concerns",
    "merchant": "reserved for merchant records, which are a read model of the payments service",
    "reconciliation": "one reconciliation run of the projector (started, then completed with its counts and the "
                      "report's SHA-256, or failed); the report itself is GET /reconciliations/{id}",
}
# Aggregate subclasses that are deliberately not rebuilt (their category is in EVENTS_ONLY).
EVENTS_ONLY_CLASSES: tuple[AggregateType, ...] = (PaymentContract,)


def category_of(stream_id: str) -> str:
    return stream_id.split("-", 1)[0]


def aggregate_for(stream_id: str) -> tuple[AggregateType | None, str]:
    """(the Aggregate class that owns `stream_id`, or None for an events-only or unknown category;
    the aggregate id, i.e. the stream id after "<category>-")."""
    category, _, aggregate_id = stream_id.partition("-")
    kind = AGGREGATES.get(category)
    if kind is None:
        return None, aggregate_id
    return kind.choose(aggregate_id), aggregate_id


def describe(stream_id: str) -> str:
    """A sentence on how the stream is shown: by which class, or why events only."""
    cls, _ = aggregate_for(stream_id)
    category = category_of(stream_id)
    if cls is not None:
        return f"{cls.__module__}.{cls.__qualname__} ({AGGREGATES[category].service})"
    if category in EVENTS_ONLY:
        return f"events only: {EVENTS_ONLY[category]}"
    return f"events only: no aggregate is registered for the category {category!r}"
