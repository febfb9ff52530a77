"""Warehouses and departments (stream `stock-{warehouse}`) and their stock of each SKU (stream
`stock-{warehouse}/{sku}`; `/` never occurs in a warehouse id or a SKU, so the id is unambiguous).
A unit is reserved when it is picked as an RMA's replacement; a transfer moves one unit from one
warehouse to another. The level never goes below zero."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from libs.domain.aggregate import Aggregate
from libs.domain.errors import Conflict
from libs.domain.events import DomainEvent
from services.rma.domain.events import (
    STOCK_CATEGORY,
    StockLevelSet,
    StockReserved,
    StockTransferredIn,
    StockTransferredOut,
    StockWarehouseDefined,
)


def stock_id(warehouse_id: str, sku: str) -> str:
    return f"{warehouse_id}/{sku}"


class Warehouse(Aggregate):
    category = STOCK_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.name: str | None = None
        self.kind: str = "warehouse"
        self.transfer_ttl_seconds: int | None = None

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, StockWarehouseDefined):
            self.name, self.kind, self.transfer_ttl_seconds = event.name, event.kind, event.transfer_ttl_seconds

    def define(self, *, name: str, kind: Literal["warehouse", "department"], transfer_ttl_seconds: int | None,
               at: datetime) -> bool:
        if self.exists and (self.name, self.kind, self.transfer_ttl_seconds) == (name, kind, transfer_ttl_seconds):
            return False
        self._record(StockWarehouseDefined(warehouse_id=self.id, name=name, kind=kind,
                                           transfer_ttl_seconds=transfer_ttl_seconds, at=at))
        return True


class StockLevel(Aggregate):
    category = STOCK_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.warehouse_id, _, self.sku = aggregate_id.partition("/")
        self.available = 0
        self.reserved_for: list[str] = []

    @classmethod
    def id_for(cls, warehouse_id: str, sku: str) -> str:
        return stock_id(warehouse_id, sku)

    def apply(self, event: DomainEvent) -> None:
        match event:
            case StockLevelSet():
                self.available = event.available
            case StockReserved():
                self.available = event.available
                self.reserved_for.append(event.rma_id)
            case StockTransferredOut() | StockTransferredIn():
                self.available = event.available

    def set_level(self, available: int, reason: str, at: datetime) -> bool:
        if self.exists and available == self.available:
            return False
        self._record(StockLevelSet(warehouse_id=self.warehouse_id, sku=self.sku, available=available,
                                   previous=self.available, reason=reason, at=at))
        return True

    def _take(self, what: str) -> int:
        if self.available < 1:
            raise Conflict(f"no unit of {self.sku} available at {self.warehouse_id} to {what}",
                           warehouse_id=self.warehouse_id, sku=self.sku, available=self.available)
        return self.available - 1

    def reserve(self, rma_id: str, at: datetime) -> None:
        """Pick one unit as `rma_id`'s replacement (Conflict if none is left)."""
        if rma_id in self.reserved_for:
            return
        self._record(StockReserved(warehouse_id=self.warehouse_id, sku=self.sku, rma_id=rma_id,
                                   available=self._take("reserve"), at=at))

    def transfer_out(self, transfer_id: str, to_warehouse: str, at: datetime) -> None:
        self._record(StockTransferredOut(warehouse_id=self.warehouse_id, sku=self.sku, transfer_id=transfer_id,
                                         to_warehouse=to_warehouse, available=self._take("transfer"), at=at))

    def transfer_in(self, transfer_id: str, from_warehouse: str, at: datetime) -> None:
        self._record(StockTransferredIn(warehouse_id=self.warehouse_id, sku=self.sku, transfer_id=transfer_id,
                                        from_warehouse=from_warehouse, available=self.available + 1, at=at))
