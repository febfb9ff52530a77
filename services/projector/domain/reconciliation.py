"""The reconciliation as events (topic `projector.events`) and the lifecycle of a discrepancy. Pure.

Streams: `reconciliation-{run_id}` (one run: started, then completed or failed) and
`discrepancy-{discrepancy_id}` (one discrepancy across runs). A discrepancy's id is a function of
its kind and key (`discrepancy_id`), so a later run that finds it again continues the same
stream: an acknowledged one stays acknowledged, a resolved one that comes back is reopened.

    open --acknowledge--> acknowledged --resolve--> resolved --(found again by a run)--> open

Who: a reconciler or an approver acknowledges (someone is on it), an approver resolves (the
decision that it is fixed or accepted); both say why. The actor and role are the event's metadata
(and repeated in the event for the report).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, Field

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.types import Code, Id

TOPIC = "projector.events"
RUN_CATEGORY = "reconciliation"
DISCREPANCY_CATEGORY = "discrepancy"

Reason = Annotated[str, Field(min_length=1, max_length=500)]
Summary = Annotated[str, Field(max_length=1000)]
Key = Annotated[str, Field(min_length=1, max_length=500)]
Trigger = Literal["schedule", "api", "cli"]

ACKNOWLEDGE_ROLES = frozenset({"reconciler", "approver"})
RESOLVE_ROLES = frozenset({"approver"})
RUN_ROLES = frozenset({"reconciler", "approver", "platform", "service"})
REBUILD_ROLES = frozenset({"platform", "service", "reconciler"})


def discrepancy_id(kind: str, key: str) -> str:
    """The stable id of a discrepancy: the same kind and key in any run give the same id."""
    return "d-" + hashlib.sha256(f"{kind}\n{key}".encode()).hexdigest()[:24]


class Forbidden(RuleViolation):
    """The role may not do this (HTTP 403); nothing is stored."""

    code = "forbidden"


def require_role(role: str, roles: frozenset[str], action: str) -> None:
    if role not in roles:
        raise Forbidden("role", f"only the {' or '.join(sorted(roles))} role may {action}; the role is {role!r}")


class ReconciliationEvent(DomainEvent):
    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC


class ReconciliationStarted(ReconciliationEvent):
    """A run began: it replays the whole store into `shadow_schema` and compares."""

    run_id: Id
    trigger: Trigger
    repair: bool
    shadow_schema: Annotated[str, Field(max_length=63)]
    at: AwareDatetime


class ReconciliationCompleted(ReconciliationEvent):
    """A run's result: counts per kind, the discrepancies it found (ids, the first 1000), whether the
    shadow was swapped in, and the SHA-256 of the stored JSON report (GET /reconciliations/{id})."""

    run_id: Id
    started_at: AwareDatetime
    finished_at: AwareDatetime
    duration_seconds: float
    events_replayed: Annotated[int, Field(ge=0)]
    head_position: Annotated[int, Field(ge=0)]
    discrepancies: Annotated[int, Field(ge=0)]
    by_kind: dict[str, int]
    new_discrepancies: Annotated[int, Field(ge=0)]
    discrepancy_ids: list[Id]
    repaired: bool
    report_sha256: Annotated[str, Field(min_length=64, max_length=64)]
    at: AwareDatetime


class ReconciliationFailed(ReconciliationEvent):
    run_id: Id
    error: Annotated[str, Field(max_length=2000)]
    phase: Code
    at: AwareDatetime


class DiscrepancyEvent(ReconciliationEvent):
    abstract: ClassVar[bool] = True

    discrepancy_id: Id


class DiscrepancyOpened(DiscrepancyEvent):
    """A run found something new."""

    kind: Code
    key: Key
    run_id: Id
    summary: Summary
    order_id: Id | None = None
    at: AwareDatetime


class DiscrepancyAcknowledged(DiscrepancyEvent):
    by: Annotated[str, Field(min_length=1, max_length=128)]
    role: Code
    reason: Reason
    at: AwareDatetime


class DiscrepancyResolved(DiscrepancyEvent):
    by: Annotated[str, Field(min_length=1, max_length=128)]
    role: Code
    reason: Reason
    at: AwareDatetime


class DiscrepancyReopened(DiscrepancyEvent):
    """A resolved discrepancy was found again by a later run."""

    run_id: Id
    summary: Summary
    at: AwareDatetime


class DiscrepancyStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


S = DiscrepancyStatus
TRANSITIONS: Mapping[StrEnum, Mapping[str, StrEnum | None]] = {
    S.OPEN: {"acknowledge": S.ACKNOWLEDGED},
    S.ACKNOWLEDGED: {"resolve": S.RESOLVED},
    S.RESOLVED: {"reopen": S.OPEN},
}
MACHINE = StateMachine("discrepancy", TRANSITIONS)


class Discrepancy(Aggregate):
    category = DISCREPANCY_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: DiscrepancyStatus | None = None
        self.kind: str | None = None
        self.key: str | None = None

    @classmethod
    def open(cls, kind: str, key: str, *, run_id: str, summary: str, order_id: str | None,
             at: datetime) -> Discrepancy:
        d = cls(discrepancy_id(kind, key))
        d._record(DiscrepancyOpened(discrepancy_id=d.id, kind=kind, key=key[:500], run_id=run_id,
                                    summary=summary[:1000], order_id=order_id, at=at))
        return d

    def allowed_commands(self) -> list[str]:
        return MACHINE.allowed(self.status) if self.status else []

    def found_again(self, run_id: str, summary: str, at: datetime) -> bool:
        """A later run found it: a resolved one is reopened (True); otherwise its lifecycle goes on."""
        if self.status is not S.RESOLVED:
            return False
        self._record(DiscrepancyReopened(discrepancy_id=self.id, run_id=run_id, summary=summary[:1000], at=at))
        return True

    def acknowledge(self, by: str, role: str, reason: str, at: datetime) -> None:
        require_role(role, ACKNOWLEDGE_ROLES, "acknowledge a discrepancy")
        self._act("acknowledge", reason)
        self._record(DiscrepancyAcknowledged(discrepancy_id=self.id, by=by, role=role, reason=reason.strip(), at=at))

    def resolve(self, by: str, role: str, reason: str, at: datetime) -> None:
        require_role(role, RESOLVE_ROLES, "resolve a discrepancy")
        self._act("resolve", reason)
        self._record(DiscrepancyResolved(discrepancy_id=self.id, by=by, role=role, reason=reason.strip(), at=at))

    def _act(self, command: str, reason: str) -> None:
        if self.status is None:
            raise RuleViolation("discrepancy_id", f"discrepancy {self.id} does not exist")
        MACHINE.check(self.id, self.status, command)
        if not reason.strip():
            raise RuleViolation("reason", "is required: say why")

    def apply(self, event: DomainEvent) -> None:
        match event:
            case DiscrepancyOpened():
                self.status, self.kind, self.key = S.OPEN, event.kind, event.key
            case DiscrepancyAcknowledged():
                self.status = S.ACKNOWLEDGED
            case DiscrepancyResolved():
                self.status = S.RESOLVED
            case DiscrepancyReopened():
                self.status = S.OPEN
            case _:
                raise TypeError(f"Discrepancy cannot apply {type(event).__name__}")


def view_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A discrepancy row (reconciliation_discrepancies) as the API shows it."""
    out = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
    status = DiscrepancyStatus(row["status"])
    out["allowed"] = MACHINE.allowed(status)
    return out
