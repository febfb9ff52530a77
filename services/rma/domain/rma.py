"""The Rma aggregate (stream `rma-{id}`): the seed's RMA state machine (001, case 1)

    RECEIVED -> ELIGIBLE -> SHIPPED_IN -> PROCESSING -> SHIPPED_OUT -> CLOSED
    RECEIVED -> REJECTED (out of warranty, or refused at review)
    RECEIVED, ELIGIBLE -> CANCELLED (before the parcel arrives)

and nothing else. Two states have stages the table also governs (like the payments transaction's
"billed, awaiting cash"): RECEIVED waits for the automatic warranty check (only inside the opening
command) or for a reconciler's review; PROCESSING walks through the replacement choice (planning ->
chosen -> ready, or awaiting an approver, awaiting a transfer, unavailable). The public state stays
one of the eight; the stage is shown beside it.

Which command moves where is one table (`RMA_TRANSITIONS`): the single source for checking a command
and for the allowed commands a 409 lists. Commands that replay a fact already recorded (a parcel
scanned twice, the same shipment reported again, a second delivery scan) change nothing, so a
redelivered or repeated event is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Literal

from libs.domain.aggregate import Aggregate
from libs.domain.errors import InvalidTransition, RuleViolation
from libs.domain.events import DomainEvent
from services.rma.domain.events import (
    STREAM_CATEGORY,
    Contact,
    ReplacementSource,
    RmaCancelled,
    RmaClosed,
    RmaEligible,
    RmaOpened,
    RmaProcessingStarted,
    RmaRejected,
    RmaRepeatFailureFlagged,
    RmaReplacementChosen,
    RmaReplacementDecision,
    RmaReplacementReady,
    RmaReplacementUnavailable,
    RmaShippedIn,
    RmaShippedOut,
    RmaStatus,
    RmaStockTransferRequested,
    RmaStockTransferResolved,
    RmaSubstitutionApproved,
    RmaSubstitutionRefused,
    RmaWarrantyReviewRequired,
    ShippingAddress,
    WarrantyBasis,
)
from services.rma.domain.repeat import RepeatFinding
from services.rma.domain.substitution import ReplacementPlan
from services.rma.domain.warranty import WarrantyDecision

S = RmaStatus


class Stage(StrEnum):
    AWAITING_CHECK = "awaiting_check"  # RECEIVED, inside the opening command only
    AWAITING_REVIEW = "awaiting_review"  # RECEIVED: no proof of purchase, a reconciler decides
    PLANNING = "planning"  # PROCESSING: the replacement is (re)chosen within the same command
    CHOSEN = "chosen"  # PROCESSING: chosen, not yet reserved or requested (within the command)
    AWAITING_APPROVAL = "awaiting_approval"
    AWAITING_TRANSFER = "awaiting_transfer"
    READY = "ready"  # RmaReplacementReady recorded: shipping creates the shipment
    UNAVAILABLE = "unavailable"  # no unit anywhere: waits for stock and a retry


LABELS_ZH: dict[RmaStatus, str] = {
    S.RECEIVED: "已受理", S.ELIGIBLE: "符合保固", S.SHIPPED_IN: "已收到寄回品", S.PROCESSING: "處理中",
    S.SHIPPED_OUT: "替換品已寄出", S.CLOSED: "已結案", S.REJECTED: "不符保固", S.CANCELLED: "已取消",
}
STAGE_LABELS_ZH: dict[Stage, str] = {
    Stage.AWAITING_CHECK: "保固驗證中", Stage.AWAITING_REVIEW: "待人工審核", Stage.PLANNING: "選擇替換品",
    Stage.CHOSEN: "已選定替換品", Stage.AWAITING_APPROVAL: "待主管核可", Stage.AWAITING_TRANSFER: "跨部門調貨中",
    Stage.READY: "待出貨", Stage.UNAVAILABLE: "缺貨待補",
}

Key = tuple[RmaStatus, Stage | None]
# (state, stage) -> command -> the states it may lead to. Written out once; tests restate it.
RMA_TRANSITIONS: Mapping[Key, Mapping[str, tuple[RmaStatus, ...]]] = {
    (S.RECEIVED, Stage.AWAITING_CHECK): {"flag_repeat_failure": (S.RECEIVED,),
                                         "check_warranty": (S.ELIGIBLE, S.REJECTED, S.RECEIVED)},
    (S.RECEIVED, Stage.AWAITING_REVIEW): {"review": (S.ELIGIBLE, S.REJECTED), "cancel": (S.CANCELLED,)},
    (S.ELIGIBLE, None): {"receive_parcel": (S.SHIPPED_IN,), "cancel": (S.CANCELLED,)},
    (S.SHIPPED_IN, None): {"start_processing": (S.PROCESSING,)},
    (S.PROCESSING, Stage.PLANNING): {"choose_replacement": (S.PROCESSING,)},
    (S.PROCESSING, Stage.CHOSEN): {"mark_ready": (S.PROCESSING,), "request_transfer": (S.PROCESSING,)},
    (S.PROCESSING, Stage.AWAITING_APPROVAL): {"approve_substitution": (S.PROCESSING,),
                                              "refuse_substitution": (S.PROCESSING,)},
    (S.PROCESSING, Stage.AWAITING_TRANSFER): {"resolve_transfer": (S.PROCESSING,)},
    (S.PROCESSING, Stage.READY): {"ship_out": (S.SHIPPED_OUT,)},
    (S.PROCESSING, Stage.UNAVAILABLE): {"retry_replacement": (S.PROCESSING,)},
    (S.SHIPPED_OUT, None): {"close": (S.CLOSED,)},
    (S.CLOSED, None): {},
    (S.REJECTED, None): {},
    (S.CANCELLED, None): {},
}


class RmaInvalidTransition(InvalidTransition):
    """InvalidTransition (HTTP 409) that also names the stage of RECEIVED or PROCESSING."""

    def __init__(self, rma_id: str, status: RmaStatus, stage: Stage | None, command: str,
                 allowed: list[str]) -> None:
        super().__init__("rma", rma_id, status.value, command, allowed)
        if stage is not None:
            where = f"{status.value} ({stage.value})"
            self.message = (f"rma {rma_id} is {where}; '{command}' is not allowed. Allowed from {where}: "
                            f"{', '.join(self.allowed) if self.allowed else 'none'}")
            self.args = (self.message,)
            self.details["stage"] = stage.value


def allowed_commands(status: RmaStatus, stage: Stage | None) -> list[str]:
    return sorted(RMA_TRANSITIONS.get((status, stage), {}))


def replacement_serial_for(rma_id: str) -> str:
    """The serial the RMA service assigns to the replacement unit when it is picked (printed on its
    label): known to the RMA, and to a later RMA for that unit, without a serial-tracked warehouse."""
    return f"RPL-{rma_id}"[:64]


class Rma(Aggregate):
    category = STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: RmaStatus | None = None
        self.stage: Stage | None = None
        self.opened: RmaOpened | None = None
        self.repeat: RmaRepeatFailureFlagged | None = None
        self.review_reason: str | None = None
        self.basis: WarrantyBasis | None = None
        self.rejection: str | None = None
        self.cancellation: str | None = None
        self.label_id: str | None = None
        self.decision: RmaReplacementDecision | None = None
        self.decisions: list[RmaReplacementDecision] = []
        self.unavailable_reason: str | None = None
        self.approved: set[str] = set()
        self.refused_by_approver: set[str] = set()
        self.preferred: str | None = None
        self.refused_sources: set[tuple[str, str]] = set()
        self.transfer_id: str | None = None
        self.transfer_ids: list[str] = []
        self.ready: RmaReplacementReady | None = None
        self.shipped: RmaShippedOut | None = None
        self.closed: RmaClosed | None = None

    # --- reading -----------------------------------------------------------------------------------
    @property
    def o(self) -> RmaOpened:
        assert self.opened is not None, "the RMA is not open"
        return self.opened

    @property
    def serial(self) -> str:
        return self.o.serial

    @property
    def sku(self) -> str:
        return self.o.sku

    @property
    def warehouse_id(self) -> str:
        return self.o.warehouse_id or ""

    @property
    def contact(self) -> Contact:
        return self.o.contact

    @property
    def ship_to(self) -> ShippingAddress:
        return self.o.ship_to

    @property
    def label_zh(self) -> str:
        return LABELS_ZH[self.status] if self.status else ""

    def allowed_commands(self) -> list[str]:
        return allowed_commands(self.status, self.stage) if self.status else []

    def _check(self, command: str) -> tuple[RmaStatus, ...]:
        assert self.status is not None
        commands = RMA_TRANSITIONS.get((self.status, self.stage), {})
        if command not in commands:
            raise RmaInvalidTransition(self.id, self.status, self.stage, command, sorted(commands))
        return commands[command]

    # --- applying events ---------------------------------------------------------------------------
    def apply(self, event: DomainEvent) -> None:
        match event:
            case RmaOpened():
                self.opened, self.status, self.stage = event, S.RECEIVED, Stage.AWAITING_CHECK
            case RmaRepeatFailureFlagged():
                self.repeat = event
            case RmaWarrantyReviewRequired():
                self.stage, self.review_reason = Stage.AWAITING_REVIEW, event.reason
            case RmaEligible():
                self.status, self.stage, self.basis = S.ELIGIBLE, None, event.basis
            case RmaRejected():
                self.status, self.stage, self.basis, self.rejection = S.REJECTED, None, event.basis, event.reason
            case RmaCancelled():
                self.status, self.stage, self.cancellation = S.CANCELLED, None, event.reason
            case RmaShippedIn():
                self.status, self.label_id = S.SHIPPED_IN, event.label_id
            case RmaProcessingStarted():
                self.status, self.stage = S.PROCESSING, Stage.PLANNING
            case RmaReplacementChosen():
                self.decision = event.decision
                self.decisions.append(event.decision)
                self.unavailable_reason = None
                self.stage = Stage.AWAITING_APPROVAL if event.decision.needs_approval else Stage.CHOSEN
            case RmaReplacementUnavailable():
                self.decision, self.stage, self.unavailable_reason = None, Stage.UNAVAILABLE, event.reason
            case RmaSubstitutionApproved():
                self.approved.add(event.sku)
                self.stage = Stage.PLANNING
            case RmaSubstitutionRefused():
                self.refused_by_approver.add(event.sku)
                self.preferred = event.alternative_sku
                if event.alternative_sku:
                    self.approved.add(event.alternative_sku)
                self.stage = Stage.PLANNING
            case RmaStockTransferRequested():
                self.transfer_id = event.transfer_id
                self.transfer_ids.append(event.transfer_id)
                self.stage = Stage.AWAITING_TRANSFER
            case RmaStockTransferResolved():
                assert self.decision is not None
                if event.outcome == "accepted":
                    # The unit is now at the RMA's warehouse.
                    self.decision = self.decision.model_copy(update={"source": ReplacementSource.LOCAL,
                                                                     "warehouse_id": self.warehouse_id})
                    self.stage = Stage.CHOSEN
                else:
                    self.refused_sources.add((self.decision.sku, self.decision.warehouse_id))
                    self.stage = Stage.PLANNING
                self.transfer_id = None
            case RmaReplacementReady():
                self.ready, self.stage = event, Stage.READY
            case RmaShippedOut():
                self.shipped, self.status, self.stage = event, S.SHIPPED_OUT, None
            case RmaClosed():
                self.closed, self.status, self.stage = event, S.CLOSED, None

    # --- opening and the warranty --------------------------------------------------------------------
    @classmethod
    def open(cls, rma_id: str, *, serial: str, sku: str, fault_code: str, description: str, attachments: list[str],
             contact: Contact, ship_to: ShippingAddress, warehouse_id: str, at: datetime) -> Rma:
        rma = cls(rma_id)
        rma._record(RmaOpened(rma_id=rma_id, serial=serial, sku=sku, fault_code=fault_code, description=description,
                              attachments=attachments, contact=contact, ship_to=ship_to, warehouse_id=warehouse_id,
                              at=at))
        return rma

    def flag_repeat_failure(self, finding: RepeatFinding, at: datetime) -> None:
        self._check("flag_repeat_failure")
        p = finding.previous
        self._record(RmaRepeatFailureFlagged(
            rma_id=self.id, serial=self.serial, sku=self.sku, fault_code=self.o.fault_code, kind=finding.kind,
            previous_rma_id=p.rma_id, previous_sku=p.sku, previous_fault_code=p.fault_code,
            previous_opened_at=p.opened_at, days_since_previous=finding.days_since_previous,
            earlier_rma_ids=[e.rma_id for e in finding.earlier], at=at))

    def check_warranty(self, decision: WarrantyDecision, at: datetime) -> None:
        """The automatic check at opening: ELIGIBLE, REJECTED, or waiting for a manual review."""
        self._check("check_warranty")
        if decision.outcome == "eligible":
            assert decision.basis is not None
            self._record(RmaEligible(rma_id=self.id, serial=self.serial, sku=self.sku, basis=decision.basis,
                                     contact=self.contact, ship_to=self.ship_to, at=at))
        elif decision.outcome == "rejected":
            self._record(RmaRejected(rma_id=self.id, reason=decision.reason[:500], basis=decision.basis, at=at))
        else:
            self._record(RmaWarrantyReviewRequired(rma_id=self.id, reason=decision.reason[:500],
                                                   checked_on=decision.checked_on, at=at))

    def review(self, *, decision: Literal["eligible", "rejected"], note: str, reviewer: str,
               purchase_date: date | None, warranty_days: int, checked_on: date, at: datetime) -> None:
        """A reconciler's decision on an RMA without proof of purchase; the basis is the review itself
        (the note, and the purchase date the reviewer saw on the customer's documents, if any)."""
        self._check("review")
        if purchase_date is not None and purchase_date > checked_on:
            raise RuleViolation("purchase_date", f"must not be after today ({checked_on})")
        basis = WarrantyBasis(
            source="manual_review", reference=note[:128], purchase_date=purchase_date,
            warranty_days=warranty_days if purchase_date else None,
            expires_on=purchase_date + timedelta(days=warranty_days) if purchase_date else None,
            checked_on=checked_on, reviewer=reviewer)
        if decision == "eligible":
            self._record(RmaEligible(rma_id=self.id, serial=self.serial, sku=self.sku, basis=basis,
                                     contact=self.contact, ship_to=self.ship_to, at=at))
        else:
            self._record(RmaRejected(rma_id=self.id, reason=f"rejected at review: {note}"[:500], basis=basis, at=at))

    def cancel(self, reason: str, at: datetime) -> None:
        self._check("cancel")
        self._record(RmaCancelled(rma_id=self.id, reason=reason, at=at))

    # --- the parcel and processing ---------------------------------------------------------------------
    def receive_parcel(self, label_id: str, at: datetime) -> bool:
        """The customer's parcel was scanned in. Already in (a second scan, a redelivery): nothing (False)."""
        if self.status in (S.SHIPPED_IN, S.PROCESSING, S.SHIPPED_OUT, S.CLOSED):
            return False
        self._check("receive_parcel")
        self._record(RmaShippedIn(rma_id=self.id, label_id=label_id, at=at))
        return True

    def start_processing(self, technician: str, at: datetime) -> None:
        self._check("start_processing")
        self._record(RmaProcessingStarted(rma_id=self.id, technician=technician, at=at))

    # --- the replacement ---------------------------------------------------------------------------------
    def choose(self, plan: ReplacementPlan, at: datetime, *, command: str = "choose_replacement") -> None:
        """Record the plan: chosen (maybe waiting for an approver), or unavailable. `retry_replacement` is
        the same step from UNAVAILABLE."""
        self._check(command)
        if plan.kind == "unavailable" or plan.decision is None:
            self._record(RmaReplacementUnavailable(rma_id=self.id, reason=plan.reason[:500],
                                                   candidates=plan.candidates, at=at))
        else:
            self._record(RmaReplacementChosen(rma_id=self.id, decision=plan.decision, at=at))

    def approve_substitution(self, reason: str, at: datetime) -> None:
        self._check("approve_substitution")
        assert self.decision is not None
        self._record(RmaSubstitutionApproved(rma_id=self.id, sku=self.decision.sku, reason=reason, at=at))

    def refuse_substitution(self, alternative_sku: str | None, reason: str, at: datetime) -> None:
        self._check("refuse_substitution")
        assert self.decision is not None
        if alternative_sku is not None and alternative_sku == self.decision.sku:
            raise RuleViolation("alternative_sku", f"must differ from the refused substitute {alternative_sku}")
        self._record(RmaSubstitutionRefused(rma_id=self.id, sku=self.decision.sku, alternative_sku=alternative_sku,
                                            reason=reason, at=at))

    def next_transfer_id(self) -> str:
        return f"{self.id}.{len(self.transfer_ids) + 1}"

    def request_transfer(self, transfer_id: str, expires_at: datetime, at: datetime) -> None:
        self._check("request_transfer")
        assert self.decision is not None
        if self.decision.source is not ReplacementSource.TRANSFER:
            raise RmaInvalidTransition(self.id, S.PROCESSING, self.stage, "request_transfer", ["mark_ready"])
        self._record(RmaStockTransferRequested(rma_id=self.id, transfer_id=transfer_id, sku=self.decision.sku,
                                               from_warehouse=self.decision.warehouse_id,
                                               to_warehouse=self.warehouse_id, expires_at=expires_at, at=at))

    def resolve_transfer(self, transfer_id: str, outcome: Literal["accepted", "refused"], reason: str,
                         at: datetime) -> None:
        self._check("resolve_transfer")
        if transfer_id != self.transfer_id:
            raise RuleViolation("transfer_id",
                                f"RMA {self.id} waits for transfer {self.transfer_id}, not {transfer_id}")
        self._record(RmaStockTransferResolved(rma_id=self.id, transfer_id=transfer_id, outcome=outcome,
                                              reason=reason, at=at))

    def mark_ready(self, at: datetime) -> RmaReplacementReady:
        """The chosen unit is reserved at the RMA's warehouse: shipping creates the outbound shipment."""
        self._check("mark_ready")
        d = self.decision
        assert d is not None
        if d.source is not ReplacementSource.LOCAL:
            raise RmaInvalidTransition(self.id, S.PROCESSING, self.stage, "mark_ready", ["request_transfer"])
        event = RmaReplacementReady(rma_id=self.id, sku=d.sku, same_sku=d.same_sku, warehouse_id=self.warehouse_id,
                                    contact=self.contact, ship_to=self.ship_to, at=at,
                                    replacement_serial=replacement_serial_for(self.id), original_sku=self.sku)
        self._record(event)
        return event

    # --- shipping's facts -----------------------------------------------------------------------------------
    def ship_out(self, *, shipment_id: str, carrier: str, tracking_number: str, eta: datetime | None,
                 at: datetime) -> bool:
        """The replacement's shipment exists (SHIPPED_OUT). The same shipment again: nothing (False)."""
        if self.shipped is not None and self.shipped.shipment_id == shipment_id:
            return False
        self._check("ship_out")
        assert self.ready is not None
        self._record(RmaShippedOut(rma_id=self.id, shipment_id=shipment_id, carrier=carrier,
                                   tracking_number=tracking_number, eta=eta, at=at, sku=self.ready.sku,
                                   replacement_serial=self.ready.replacement_serial))
        return True

    def close(self, resolution: str, shipment_id: str | None, at: datetime) -> bool:
        """CLOSED (the replacement was delivered). Already closed: nothing (False)."""
        if self.status is S.CLOSED:
            return False
        self._check("close")
        self._record(RmaClosed(rma_id=self.id, resolution=resolution, shipment_id=shipment_id, at=at))
        return True
