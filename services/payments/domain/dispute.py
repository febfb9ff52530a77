"""The Dispute aggregate (stream `dispute-{dispute_id}`) and the evidence packet for one dispute.

Lifecycle (Stripe's statuses, simplified): an inquiry `warning_needs_response` may come
first; then `needs_response` (evidence due by a deadline) -> `under_review` (evidence
submitted) -> closed `won` or `lost`. Stripe's `warning_under_review` counts as
`under_review` and `warning_closed` (an inquiry closed without a chargeback: the merchant
keeps the money) as `won`.

Upstream delivery is out of order and repeats itself, so the aggregate moves only
forward: an update for a state at or before the current one is stale and is ignored
(nothing recorded, no error), and once closed a dispute stays closed. The first fact seen
opens the dispute, whatever its type: if it already shows a decision, the dispute is
opened in the open state the Stripe object implies (`under_review` when evidence was
submitted, else `needs_response`, or `warning_needs_response` for an inquiry) and closed
at once. Each forward move takes the evidence deadline its snapshot shows (an inquiry that
escalates gets a new one), so the final state does not depend on the arrival order.
While a dispute is open the payment's refunds are frozen (the Transaction reacts to these
events).

`evidence_packet` gathers everything for the response into one JSON-ready document,
following Stripe's dispute-evidence best practice: a summary first, evidence grouped by
type (service documentation, customer communication, refund policy and its disclosure,
activity log) and each group in chronological order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from enum import Enum, StrEnum
from typing import Annotated, Any, ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, Field, model_validator

from libs.domain.aggregate import Aggregate
from libs.domain.errors import NotFound, RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.payments.domain.upstream_events import (
    TOPIC,
    OrderRef,
    ProviderAmount,
    ProviderId,
    UpstreamDisputeClosed,
    UpstreamDisputeFact,
)

__all__ = [
    "PACKET_FORMAT",
    "STREAM_CATEGORY",
    "Dispute",
    "DisputeClosed",
    "DisputeOpened",
    "DisputeOrderLinked",
    "DisputeOutcome",
    "DisputeState",
    "DisputeStateChanged",
    "dispute_stream_id",
    "evidence_packet",
    "state_for",
]

STREAM_CATEGORY = "dispute"
PACKET_FORMAT = "closeloop.dispute-evidence"
PACKET_VERSION = 1

OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def dispute_stream_id(dispute_id: str) -> str:
    """The stream of a dispute: `dispute-{dispute_id}`."""
    return f"{STREAM_CATEGORY}-{dispute_id}"


class DisputeState(StrEnum):
    """Where a dispute is; only forward moves are applied."""

    WARNING_NEEDS_RESPONSE = "warning_needs_response"
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def is_open(self) -> bool:
        return self not in (DisputeState.WON, DisputeState.LOST)


_RANK: dict[DisputeState, int] = {
    DisputeState.WARNING_NEEDS_RESPONSE: 0, DisputeState.NEEDS_RESPONSE: 1, DisputeState.UNDER_REVIEW: 2,
    DisputeState.WON: 3, DisputeState.LOST: 3,
}


class DisputeOutcome(StrEnum):
    WON = "won"
    LOST = "lost"


_FROM_STRIPE: dict[str, DisputeState] = {
    "warning_needs_response": DisputeState.WARNING_NEEDS_RESPONSE,
    "needs_response": DisputeState.NEEDS_RESPONSE,
    "warning_under_review": DisputeState.UNDER_REVIEW,
    "under_review": DisputeState.UNDER_REVIEW,
    "won": DisputeState.WON,
    "warning_closed": DisputeState.WON,
    "lost": DisputeState.LOST,
}


def state_for(stripe_status: str) -> DisputeState | None:
    """Our state for a Stripe dispute status; None for one without a won/lost meaning (`prevented`) or unknown."""
    return _FROM_STRIPE.get(stripe_status)


# --- events ------------------------------------------------------------------------------------


class DisputeEvent(DomainEvent):
    """Base of the Dispute aggregate's events."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    dispute_id: ProviderId


class DisputeOpened(DisputeEvent):
    """A dispute on one of our payments was seen for the first time; the payment's refunds freeze."""

    order_ref: OrderRef
    charge_id: ProviderId | None = None
    payment_intent_id: ProviderId | None = None
    amount: Money | None = Field(default=None, description="empty only for a currency we do not support")
    provider_amount: ProviderAmount
    reason: Annotated[str, Field(min_length=1, max_length=100, description="Stripe's reason, e.g. fraudulent")]
    state: DisputeState
    evidence_due_by: AwareDatetime | None = None
    opened_at: AwareDatetime = Field(description="when the dispute was created upstream")
    at: AwareDatetime = Field(description="when the upstream event that showed it happened")
    provider_event_id: ProviderId | None = None

    @model_validator(mode="after")
    def _opens_open(self) -> DisputeOpened:
        if not self.state.is_open:
            raise ValueError("a dispute opens in an open state; a decided one is opened then closed")
        return self


class DisputeStateChanged(DisputeEvent):
    """The dispute moved forward, e.g. needs_response -> under_review once evidence was submitted."""

    from_state: DisputeState
    state: DisputeState
    evidence_due_by: AwareDatetime | None = None
    at: AwareDatetime
    provider_event_id: ProviderId | None = None

    @model_validator(mode="after")
    def _forward_and_open(self) -> DisputeStateChanged:
        if not self.state.is_open:
            raise ValueError("a decision is recorded as DisputeClosed")
        if self.state.rank <= self.from_state.rank:
            raise ValueError("a dispute only moves forward")
        return self


class DisputeClosed(DisputeEvent):
    """The dispute was decided; the payment's refunds unfreeze."""

    from_state: DisputeState
    outcome: DisputeOutcome
    evidence_due_by: AwareDatetime | None = Field(default=None, description="the deadline the decided dispute showed")
    at: AwareDatetime
    provider_event_id: ProviderId | None = None


class DisputeOrderLinked(DisputeEvent):
    """The order of a dispute that named only its charge was found (through the charge -> order index)."""

    order_id: OrderId
    at: AwareDatetime


# --- aggregate ---------------------------------------------------------------------------------


class Dispute(Aggregate):
    """A card dispute on one payment, from the first sighting to won or lost."""

    category = STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.state: DisputeState | None = None
        self.outcome: DisputeOutcome | None = None
        self.order_ref: OrderRef | None = None
        self.order_id: str | None = None
        self.charge_id: str | None = None
        self.payment_intent_id: str | None = None
        self.amount: Money | None = None
        self.provider_amount: ProviderAmount | None = None
        self.reason: str | None = None
        self.evidence_due_by: datetime | None = None
        self.opened_at: datetime | None = None
        self.closed_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.state_history: list[tuple[DisputeState, datetime]] = []

    # --- queries ------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the dispute awaits a decision (False before it exists and once decided)."""
        return self.state is not None and self.state.is_open

    @property
    def freezes_refunds(self) -> bool:
        """Refunds of the disputed payment are frozen while the dispute is open."""
        return self.is_open

    def evidence_overdue(self, at: datetime) -> bool:
        """Whether the evidence deadline has passed while evidence is still awaited."""
        awaiting = self.state in (DisputeState.WARNING_NEEDS_RESPONSE, DisputeState.NEEDS_RESPONSE)
        return awaiting and self.evidence_due_by is not None and at > self.evidence_due_by

    def _require(self) -> DisputeState:
        if self.state is None:
            raise NotFound(f"dispute {self.id} does not exist", dispute_id=self.id)
        return self.state

    # --- commands -----------------------------------------------------------------------

    @classmethod
    def open(cls, dispute_id: str, *, state: DisputeState | str, order_ref: OrderRef, provider_amount: ProviderAmount,
             amount: Money | None, reason: str, opened_at: datetime, at: datetime, charge_id: str | None = None,
             payment_intent_id: str | None = None, evidence_due_by: datetime | None = None,
             provider_event_id: str | None = None) -> Dispute:
        """Open a dispute in an open state (warning_needs_response, needs_response or under_review)."""
        dispute = cls(dispute_id)
        dispute._open(state=_state(state), order_ref=order_ref, provider_amount=provider_amount, amount=amount,
                      reason=reason, opened_at=opened_at, at=at, charge_id=charge_id,
                      payment_intent_id=payment_intent_id, evidence_due_by=evidence_due_by,
                      provider_event_id=provider_event_id)
        return dispute

    def _open(self, *, state: DisputeState, order_ref: OrderRef, provider_amount: ProviderAmount,
              amount: Money | None, reason: str, opened_at: datetime, at: datetime, charge_id: str | None,
              payment_intent_id: str | None, evidence_due_by: datetime | None,
              provider_event_id: str | None) -> None:
        if self.state is not None:
            raise RuleViolation("dispute_id", f"dispute {self.id} is already open")
        if not state.is_open:
            raise RuleViolation("state", "a dispute opens as warning_needs_response, needs_response or under_review")
        self._record(DisputeOpened(
            dispute_id=self.id, order_ref=order_ref, charge_id=charge_id or order_ref.charge_id,
            payment_intent_id=payment_intent_id or order_ref.payment_intent_id, amount=amount,
            provider_amount=provider_amount, reason=reason or "general", state=state,
            evidence_due_by=evidence_due_by, opened_at=opened_at, at=at, provider_event_id=provider_event_id))

    def update(self, state: DisputeState | str, *, at: datetime, evidence_due_by: datetime | None = None,
               provider_event_id: str | None = None) -> bool:
        """Move forward to an open state; False (nothing recorded) when the update is stale or the dispute closed."""
        current = self._require()
        target = _state(state)
        if not target.is_open:
            raise RuleViolation("state", "won and lost close the dispute: use close()")
        if not current.is_open or target.rank <= current.rank:
            return False
        self._record(DisputeStateChanged(dispute_id=self.id, from_state=current, state=target,
                                         evidence_due_by=evidence_due_by or self.evidence_due_by, at=at,
                                         provider_event_id=provider_event_id))
        return True

    def close(self, outcome: DisputeOutcome | str, *, at: datetime, evidence_due_by: datetime | None = None,
              provider_event_id: str | None = None) -> bool:
        """Record the decision (won or lost); False when already closed (a repeat, or a contradicting late report)."""
        current = self._require()
        try:
            decided = DisputeOutcome(outcome)
        except ValueError:
            raise RuleViolation("outcome", "closing a dispute needs the outcome won or lost") from None
        if not current.is_open:
            return False
        self._record(DisputeClosed(dispute_id=self.id, from_state=current, outcome=decided,
                                   evidence_due_by=evidence_due_by or self.evidence_due_by, at=at,
                                   provider_event_id=provider_event_id))
        return True

    def link_order(self, order_id: str, at: datetime) -> bool:
        """Name the order once it is resolved; False when it was already known."""
        self._require()
        if self.order_id is not None:
            if self.order_id != order_id:
                raise RuleViolation("order_id", f"dispute {self.id} is about order {self.order_id}")
            return False
        self._record(DisputeOrderLinked(dispute_id=self.id, order_id=order_id, at=at))
        return True

    def observe(self, fact: UpstreamDisputeFact) -> bool:
        """Apply an upstream dispute fact in whatever order it arrives; True when something was recorded."""
        if fact.dispute_id != self.id:
            raise RuleViolation("dispute_id", f"the fact is about dispute {fact.dispute_id}, not {self.id}")
        target = state_for(fact.status)
        if isinstance(fact, UpstreamDisputeClosed) and fact.outcome is not None:
            target = DisputeState(fact.outcome)
        before = len(self._pending)
        if self.state is None:
            opening = target if target is not None and target.is_open else _implied_open_state(fact)
            self._open(state=opening, order_ref=fact.order_ref, provider_amount=fact.provider_amount,
                       amount=fact.amount, reason=fact.reason, opened_at=fact.dispute_created_at,
                       at=fact.occurred_at, charge_id=fact.charge_id, payment_intent_id=fact.payment_intent_id,
                       evidence_due_by=fact.evidence_due_by, provider_event_id=fact.provider_event_id)
        if target is not None and not target.is_open:
            self.close(target.value, at=fact.occurred_at, evidence_due_by=fact.evidence_due_by,
                       provider_event_id=fact.provider_event_id)
        elif target is not None:
            self.update(target, at=fact.occurred_at, evidence_due_by=fact.evidence_due_by,
                        provider_event_id=fact.provider_event_id)
        if fact.order_ref.order_id is not None and self.order_id is None:
            self.link_order(fact.order_ref.order_id, fact.occurred_at)
        return len(self._pending) > before

    # --- evolution ----------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        match event:
            case DisputeOpened():
                self.state, self.order_ref = event.state, event.order_ref
                self.order_id = event.order_ref.order_id
                self.charge_id, self.payment_intent_id = event.charge_id, event.payment_intent_id
                self.amount, self.provider_amount, self.reason = event.amount, event.provider_amount, event.reason
                self.evidence_due_by, self.opened_at, self.updated_at = event.evidence_due_by, event.opened_at, event.at
                self.state_history.append((event.state, event.at))
            case DisputeStateChanged():
                self.state, self.updated_at = event.state, event.at
                if event.evidence_due_by is not None:
                    self.evidence_due_by = event.evidence_due_by
                self.state_history.append((event.state, event.at))
            case DisputeClosed():
                self.state, self.outcome = DisputeState(event.outcome.value), event.outcome
                if event.evidence_due_by is not None:
                    self.evidence_due_by = event.evidence_due_by
                self.closed_at = self.updated_at = event.at
                self.state_history.append((self.state, event.at))
            case DisputeOrderLinked():
                self.order_id = event.order_id
            case _:
                raise TypeError(f"Dispute cannot apply {type(event).__name__}")


def _state(value: DisputeState | str) -> DisputeState:
    try:
        return DisputeState(value)
    except ValueError:
        raise RuleViolation("state", f"must be one of {', '.join(s.value for s in DisputeState)}") from None


def _implied_open_state(fact: UpstreamDisputeFact) -> DisputeState:
    """The open state a dispute first seen already decided (or with an unmapped status) must have passed."""
    if fact.submission_count > 0 or fact.has_evidence:
        return DisputeState.UNDER_REVIEW
    if fact.status.startswith("warning_"):
        return DisputeState.WARNING_NEEDS_RESPONSE
    return DisputeState.NEEDS_RESPONSE


# --- evidence packet -----------------------------------------------------------------------------

_TIME_KEYS = ("at", "occurred_at", "recorded_at", "created_at", "sent_at", "timestamp", "time", "date")
_ORDER_KEYS = ("global_position", "position", "stream_version", "version")
_ACCESS_WORDS = ("access", "login", "view", "watch", "download", "lesson", "attend")


def _json_ready(value: Any) -> Any:
    """Money as {amount, currency}, times as ISO 8601, enums as values, dict keys sorted (stable output)."""
    if isinstance(value, Money):
        return {"amount": value.amount, "currency": value.currency}
    if isinstance(value, BaseModel):
        return _json_ready(value.model_dump(mode="python"))
    if isinstance(value, Enum):
        return _json_ready(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _json_ready(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_json_ready(v) for v in value), key=repr)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _instant(value: Any) -> float | None:
    """A sortable instant from a datetime, an ISO 8601 string (naive = UTC) or unix seconds."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    else:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _when(item: Mapping[str, Any]) -> Any:
    for key in _TIME_KEYS:
        if item.get(key) is not None:
            return item[key]
    return None


def _chronological(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Oldest first; items without a time keep their order after the dated ones."""
    indexed = list(enumerate(items))

    def key(pair: tuple[int, Mapping[str, Any]]) -> tuple[int, float, float, int]:
        index, item = pair
        instant = _instant(_when(item))
        position = next((item[k] for k in _ORDER_KEYS if isinstance(item.get(k), int)), 0)
        return (0 if instant is not None else 1, instant or 0.0, float(position), index)

    return [_json_ready(dict(item)) for _, item in sorted(indexed, key=key)]


def _text_lines(items: list[dict[str, Any]], limit: int = 20_000) -> str | None:
    lines = []
    for item in items:
        when = _when(item) or ""
        kind = item.get("kind") or item.get("type") or item.get("channel") or ""
        detail = item.get("detail") or item.get("summary") or item.get("text") or item.get("description") or ""
        lines.append(" ".join(str(p) for p in (when, kind, detail) if p))
    text = "\n".join(lines)
    return text[:limit] if text else None


def evidence_packet(dispute: Dispute, order_view: Mapping[str, Any], bill_view: Mapping[str, Any] | None,
                    service_proof: list[dict[str, Any]], communications: list[dict[str, Any]],
                    refund_policy: Mapping[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """One JSON-ready evidence document for a dispute: summary first, then the evidence grouped by type.

    Sections, in this order: summary, dispute, order, bill, service_documentation (proof the
    service or course was delivered), customer_communication, refund_policy (the policy in
    force and how it was disclosed), activity_log (the event history), stripe_evidence (the
    text fields of Stripe's evidence form, prefilled) and packet (format and version).
    Lists are sorted oldest first; money is {amount, currency}; the inputs are not changed.
    """
    if dispute.state is None:
        raise NotFound(f"dispute {dispute.id} does not exist", dispute_id=dispute.id)
    proof = _chronological(service_proof)
    messages = _chronological(communications)
    log = _chronological(history)
    order = _json_ready(order_view)
    bill = _json_ready(bill_view) if bill_view is not None else None
    policy = _json_ready(refund_policy)
    order_id = dispute.order_id or order.get("order_id")

    missing = [name for name, present in (
        ("order", bool(order)), ("bill", bill is not None), ("service_documentation", bool(proof)),
        ("customer_communication", bool(messages)), ("refund_policy", bool(policy)),
        ("activity_log", bool(log))) if not present]
    amount_text = str(dispute.amount) if dispute.amount is not None else (
        f"{dispute.provider_amount.amount} {dispute.provider_amount.currency}" if dispute.provider_amount else "?")
    due = dispute.evidence_due_by.isoformat() if dispute.evidence_due_by else "not set"
    narrative = (
        f"Dispute {dispute.id} ({dispute.reason}, {amount_text}) on order {order_id or 'not yet resolved'}, "
        f"charge {dispute.charge_id or '-'}: {dispute.state.value}; evidence due by {due}. "
        f"Enclosed: {len(proof)} service record(s), {len(messages)} customer message(s), "
        f"the refund policy in force{' (' + str(policy['version']) + ')' if policy.get('version') else ''} "
        f"and {len(log)} history entr{'y' if len(log) == 1 else 'ies'}.")

    summary = {
        "dispute_id": dispute.id,
        "order_id": order_id,
        "state": dispute.state.value,
        "is_open": dispute.is_open,
        "outcome": dispute.outcome.value if dispute.outcome else None,
        "reason": dispute.reason,
        "amount": _json_ready(dispute.amount),
        "evidence_due_by": _json_ready(dispute.evidence_due_by),
        "charge_id": dispute.charge_id,
        "payment_intent_id": dispute.payment_intent_id,
        "counts": {"service_documentation": len(proof), "customer_communication": len(messages),
                   "activity_log": len(log)},
        "missing": missing,
        "narrative": narrative,
    }
    dispute_section = {
        "dispute_id": dispute.id,
        "state": dispute.state.value,
        "outcome": dispute.outcome.value if dispute.outcome else None,
        "reason": dispute.reason,
        "amount": _json_ready(dispute.amount),
        "provider_amount": _json_ready(dispute.provider_amount),
        "order_ref": _json_ready(dispute.order_ref),
        "charge_id": dispute.charge_id,
        "payment_intent_id": dispute.payment_intent_id,
        "opened_at": _json_ready(dispute.opened_at),
        "evidence_due_by": _json_ready(dispute.evidence_due_by),
        "closed_at": _json_ready(dispute.closed_at),
        "state_history": [{"state": s.value, "at": at.isoformat()} for s, at in dispute.state_history],
    }
    access = [p for p in proof if any(w in str(p.get("kind") or p.get("type") or "").lower() for w in _ACCESS_WORDS)]
    first_service = next((_when(p) for p in proof if _when(p) is not None), None)
    stripe_evidence = {
        "customer_name": order.get("customer_name"),
        "customer_email_address": order.get("customer_email"),
        "product_description": order.get("product_description") or order.get("description"),
        "service_date": str(first_service)[:10] if first_service is not None else None,
        "service_documentation": _text_lines(proof),
        "customer_communication": _text_lines(messages),
        "access_activity_log": _text_lines(access),
        "refund_policy": policy.get("text") or policy.get("summary"),
        "refund_policy_disclosure": policy.get("disclosure"),
        "uncategorized_text": narrative,
    }
    return {
        "summary": summary,
        "dispute": dispute_section,
        "order": order,
        "bill": bill,
        "service_documentation": proof,
        "customer_communication": messages,
        "refund_policy": policy,
        "activity_log": log,
        "stripe_evidence": stripe_evidence,
        "packet": {"format": PACKET_FORMAT, "version": PACKET_VERSION},
    }
