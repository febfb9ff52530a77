"""A stock transfer (stream `transfer-{id}`, seed 001 case 4): one unit asked of another warehouse or
department for an RMA, with a time-to-live. The source accepts or refuses it; unanswered by the
deadline it is escalated (by a durable timer) and stays open to an answer. Only these transitions:

    REQUESTED --accept--> ACCEPTED      ESCALATED --accept--> ACCEPTED
    REQUESTED --refuse--> REFUSED       ESCALATED --refuse--> REFUSED
    REQUESTED --escalate--> ESCALATED
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.events import DomainEvent
from services.rma.domain.events import (
    TRANSFER_CATEGORY,
    StockTransferAccepted,
    StockTransferEscalated,
    StockTransferRefused,
    StockTransferRequested,
)


class TransferStatus(StrEnum):
    REQUESTED = "REQUESTED"
    ESCALATED = "ESCALATED"
    ACCEPTED = "ACCEPTED"
    REFUSED = "REFUSED"


T = TransferStatus
TRANSFER_TRANSITIONS: Mapping[StrEnum, Mapping[str, StrEnum | None]] = {
    T.REQUESTED: {"accept": T.ACCEPTED, "refuse": T.REFUSED, "escalate": T.ESCALATED},
    T.ESCALATED: {"accept": T.ACCEPTED, "refuse": T.REFUSED},
    T.ACCEPTED: {},
    T.REFUSED: {},
}
TRANSFER_MACHINE = StateMachine("stock transfer", TRANSFER_TRANSITIONS)


class StockTransfer(Aggregate):
    category = TRANSFER_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: TransferStatus | None = None
        self.request: StockTransferRequested | None = None
        self.escalated_at: datetime | None = None
        self.resolved_at: datetime | None = None
        self.resolution: str = ""

    @classmethod
    def request_unit(cls, transfer_id: str, *, rma_id: str, sku: str, from_warehouse: str, to_warehouse: str,
                     ttl_seconds: int, at: datetime) -> StockTransfer:
        t = cls(transfer_id)
        t._record(StockTransferRequested(transfer_id=transfer_id, rma_id=rma_id, sku=sku, from_warehouse=from_warehouse,
                                         to_warehouse=to_warehouse, ttl_seconds=ttl_seconds,
                                         expires_at=at + timedelta(seconds=ttl_seconds), at=at))
        return t

    def apply(self, event: DomainEvent) -> None:
        match event:
            case StockTransferRequested():
                self.request, self.status = event, T.REQUESTED
            case StockTransferEscalated():
                self.status, self.escalated_at = T.ESCALATED, event.at
            case StockTransferAccepted():
                self.status, self.resolved_at, self.resolution = T.ACCEPTED, event.at, event.note
            case StockTransferRefused():
                self.status, self.resolved_at, self.resolution = T.REFUSED, event.at, event.reason

    @property
    def req(self) -> StockTransferRequested:
        assert self.request is not None
        return self.request

    def allowed_commands(self) -> list[str]:
        return TRANSFER_MACHINE.allowed(self.status) if self.status else []

    def _check(self, command: str) -> None:
        assert self.status is not None
        TRANSFER_MACHINE.check(self.id, self.status, command)

    def accept(self, note: str, at: datetime) -> None:
        self._check("accept")
        self._record(StockTransferAccepted(transfer_id=self.id, rma_id=self.req.rma_id, note=note, at=at))

    def refuse(self, reason: str, at: datetime) -> None:
        self._check("refuse")
        self._record(StockTransferRefused(transfer_id=self.id, rma_id=self.req.rma_id, reason=reason, at=at))

    def escalate_if_unanswered(self, at: datetime) -> bool:
        """At (or after) the deadline, a transfer still unanswered is escalated; otherwise nothing happens
        (the timer may fire late, twice, or after an answer)."""
        if self.status is not T.REQUESTED or at < self.req.expires_at:
            return False
        r = self.req
        self._record(StockTransferEscalated(transfer_id=self.id, rma_id=r.rma_id, sku=r.sku,
                                            from_warehouse=r.from_warehouse, to_warehouse=r.to_warehouse,
                                            requested_at=r.at, expires_at=r.expires_at, at=at))
        return True
