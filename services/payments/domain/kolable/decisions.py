"""Refund decisions and the KolableOrder aggregate (stream `kolable-{order_id}`).

The seed's permissions (權限): Wade (importer) imports payment data, Huber (reconciler) marks
reconciliation results, Louis (approver) decides 補收 / 關閉 / 升級 -- here pursue / close /
escalate, each with a reason. Every change is an event, so the event store is the audit log.

A decision is allowed only while the order's status needs one (refunded_no_rebuy,
dispute_pending, data_gap). A later decision supersedes the current one; the history is kept.
A decision belongs to the status it was taken at: if a re-import changes the status (a re-buy
shows up), the old decision no longer counts as current for the scorecard, and the new status
asks for a new decision if it needs one.

One aggregate per order keeps what the application needs to stay idempotent and consistent: the
latest imported row's fingerprint (an identical re-import records nothing), the latest
classification (a Classified event only when it changes) and the decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.payments.domain.kolable.classify import DECISION_STATUSES
from services.payments.domain.kolable.events import (
    ORDER_STREAM_CATEGORY,
    DecisionKind,
    KolableClassification,
    KolableOrderClassified,
    KolableOrderImported,
    KolableOrderRow,
    KolableReconciliationMarked,
    KolableRefundDecided,
    KolableRole,
    ReconciliationStatus,
    Value,
)
from services.payments.domain.kolable.importer import ImportedRow

__all__ = [
    "DECIDE_ROLES",
    "IMPORT_ROLES",
    "KOLABLE_MACHINE",
    "MARK_ROLES",
    "KolableOrder",
    "PermissionDenied",
    "RefundDecision",
    "check_role",
]

S = ReconciliationStatus

IMPORT_ROLES: frozenset[KolableRole] = frozenset({KolableRole.IMPORTER})  # Wade 可匯入付款資料
MARK_ROLES: frozenset[KolableRole] = frozenset({KolableRole.RECONCILER})  # Huber 可標記核對結果
DECIDE_ROLES: frozenset[KolableRole] = frozenset({KolableRole.APPROVER})  # Louis 可決策補收/關閉/升級

# Importing, classifying and marking are allowed in every status; deciding only where the seed asks for it.
KOLABLE_TRANSITIONS: Mapping[StrEnum, Mapping[str, StrEnum | None]] = {
    status: {"import_row": None, "classify": None, "mark": None,
             **({"decide": None} if status in DECISION_STATUSES else {})}
    for status in ReconciliationStatus
}
KOLABLE_MACHINE = StateMachine("kolable order", KOLABLE_TRANSITIONS)


class PermissionDenied(RuleViolation):
    """The actor's role may not do this (names the role that may). Nothing is stored."""

    code = "forbidden"

    def __init__(self, action: str, role: str, allowed: Iterable[KolableRole]) -> None:
        names = sorted(r.value for r in allowed)
        super().__init__("role", f"only the {' or '.join(names)} role may {action}; the actor's role is {role!r}")
        self.details.update(role=role, allowed_roles=names)
        self.role = role
        self.allowed_roles = names


def check_role(role: str | KolableRole, allowed: frozenset[KolableRole], action: str) -> KolableRole:
    """The role as a KolableRole, or PermissionDenied when it is not among `allowed`."""
    value = role.value if isinstance(role, StrEnum) else str(role)
    if value not in {r.value for r in allowed}:
        raise PermissionDenied(action, value, allowed)
    return KolableRole(value)


class RefundDecision(Value):
    """One decision of the approver, as recorded."""

    decision_id: str
    order_id: str
    decision: DecisionKind
    reason: str
    actor: str
    role: KolableRole
    status_at_decision: ReconciliationStatus
    cash_gap_at_decision: Money
    supersedes: str | None = None
    decided_at: datetime

    @classmethod
    def from_event(cls, event: KolableRefundDecided) -> RefundDecision:
        return cls(decision_id=event.decision_id, order_id=event.order_id, decision=event.decision,
                   reason=event.reason, actor=event.actor, role=event.role,
                   status_at_decision=event.status_at_decision, cash_gap_at_decision=event.cash_gap_at_decision,
                   supersedes=event.supersedes, decided_at=event.at)

    def applies_to(self, classification: KolableClassification) -> bool:
        """Whether this decision still answers the order's current status."""
        return self.order_id == classification.order_id and self.status_at_decision is classification.status


class KolableOrder(Aggregate):
    """One Kolable order under reconciliation: latest row, latest classification, marks and decisions."""

    category = ORDER_STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.row: KolableOrderRow | None = None
        self.fingerprint: str | None = None
        self.import_id: str | None = None
        self.line: int | None = None
        self.classification: KolableClassification | None = None
        self.marks: list[KolableReconciliationMarked] = []
        self.decisions: list[RefundDecision] = []

    # --- queries ------------------------------------------------------------------------

    @property
    def status(self) -> ReconciliationStatus | None:
        return self.classification.status if self.classification else None

    @property
    def current_decision(self) -> RefundDecision | None:
        """The latest decision (it supersedes all earlier ones), whatever status it was taken at."""
        return self.decisions[-1] if self.decisions else None

    @property
    def decision_in_force(self) -> RefundDecision | None:
        """The latest decision when it was taken at the current status, else None."""
        current = self.current_decision
        if current is None or self.classification is None or not current.applies_to(self.classification):
            return None
        return current

    def allowed_commands(self) -> list[str]:
        return KOLABLE_MACHINE.allowed(self.status) if self.status else ["classify", "import_row"]

    def _check(self, command: str) -> ReconciliationStatus:
        if self.status is None:
            raise NotFound(f"kolable order {self.id} has not been classified yet", order_id=self.id)
        KOLABLE_MACHINE.check(self.id, self.status, command)
        return self.status

    # --- commands -----------------------------------------------------------------------

    def record_import(self, imported: ImportedRow, *, import_id: str, role: str | KolableRole, at: datetime) -> bool:
        """Record an imported row unless it is identical to the latest one; True when recorded.

        Compared with the latest row only: a row that changed and then changed back is recorded
        again, because the latest export is what the order says now.
        """
        check_role(role, IMPORT_ROLES, "import orders and payments")
        if imported.row.order_id != self.id:
            raise RuleViolation("order_id", f"the row is for order {imported.row.order_id}, not {self.id}")
        if imported.fingerprint == self.fingerprint:
            return False
        self._record(KolableOrderImported(order_id=self.id, import_id=import_id, line=imported.line,
                                          fingerprint=imported.fingerprint, row=imported.row, at=at))
        return True

    def record_classification(self, classification: KolableClassification, at: datetime) -> bool:
        """Record a classification when it differs from the current one; True when recorded."""
        if classification.order_id != self.id:
            raise RuleViolation("order_id", f"the classification is for order {classification.order_id}, not {self.id}")
        if classification == self.classification:
            return False
        self._record(KolableOrderClassified(order_id=self.id, classification=classification,
                                            previous_status=self.status, at=at))
        return True

    def mark(self, note: str, *, actor: str, role: str | KolableRole, at: datetime) -> None:
        """The reconciler marks a result, e.g. the refund reason (Huber 補原因)."""
        check_role(role, MARK_ROLES, "mark reconciliation results")
        status = self._check("mark")
        text = (note or "").strip()
        if not text:
            raise RuleViolation("note", "is required")
        if len(text) > 2000:
            raise RuleViolation("note", "at most 2000 characters")
        self._record(KolableReconciliationMarked(order_id=self.id, note=text, status_at_mark=status,
                                                 actor=actor, at=at))

    def decide(self, decision: DecisionKind | str, reason: str, *, actor: str, role: str | KolableRole,
               at: datetime, supersedes: str | None = None) -> RefundDecision:
        """The approver decides pursue / close / escalate, with a reason; returns the decision in force.

        `supersedes`, when given, must name the current decision (a stale view is a Conflict). The
        same decision with the same reason at the same status again records nothing.
        """
        who = check_role(role, DECIDE_ROLES, "decide refunds (pursue / close / escalate)")
        status = self._check("decide")
        try:
            kind = DecisionKind(decision)
        except ValueError:
            raise RuleViolation("decision", f"must be one of {', '.join(k.value for k in DecisionKind)}") from None
        text = (reason or "").strip()
        if not text:
            raise RuleViolation("reason", "is required: say why")
        if len(text) > 500:
            raise RuleViolation("reason", "at most 500 characters")
        current = self.current_decision
        if supersedes is not None and (current is None or current.decision_id != supersedes):
            raise Conflict(f"kolable order {self.id}: the current decision is "
                           f"{current.decision_id if current else 'none'}, not {supersedes}",
                           current_decision_id=current.decision_id if current else None)
        if current is not None and (current.decision, current.reason, current.status_at_decision) == (
                kind, text, status):
            return current
        assert self.classification is not None
        self._record(KolableRefundDecided(
            order_id=self.id, decision_id=f"d{len(self.decisions) + 1}", decision=kind, reason=text, actor=actor,
            role=who, status_at_decision=status, cash_gap_at_decision=self.classification.cash_gap,
            supersedes=current.decision_id if current else None, at=at))
        assert self.current_decision is not None
        return self.current_decision

    # --- evolution ----------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        match event:
            case KolableOrderImported():
                self.row, self.fingerprint = event.row, event.fingerprint
                self.import_id, self.line = event.import_id, event.line
            case KolableOrderClassified():
                self.classification = event.classification
            case KolableReconciliationMarked():
                self.marks.append(event)
            case KolableRefundDecided():
                self.decisions.append(RefundDecision.from_event(event))
            case _:
                raise TypeError(f"KolableOrder cannot apply {type(event).__name__}")
