"""Stripe-format upstream events: parse the envelope and the objects we use, normalise them into facts.

Stripe's Event object: `id` (evt_...), `object` = "event", `api_version`, `created` (unix
seconds), `data.object` (the resource as it was when the event happened),
`data.previous_attributes` (only on *.updated events), `livemode`, `pending_webhooks`,
`request` {`id`, `idempotency_key`} and `type`. Amounts are integers in the currency's
smallest unit; currency codes are lower case. Stripe adds fields over time, so every model
allows extra fields and types only what we read.

`parse_event` refuses a body that is not an event (not JSON, no id/type/created/data.object,
or a supported type whose object lacks what we read) with `MalformedEvent` naming the field.
An event of a type we do not normalise parses fine and is marked unknown: it is stored and
acknowledged, never dropped. `normalise` turns a supported event into one `UpstreamFact`.

Ids of the internal events are deterministic (`event_uuid`), so a redelivered event
(same `evt_...`) is appended with the same event ids and the event store's idempotency
removes the duplicate.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, StrictInt, ValidationError
from pydantic_core import from_json

from libs.domain.errors import RuleViolation
from libs.domain.json_input import MAX_DEPTH, loads_checked
from libs.domain.money import CURRENCY_EXPONENTS, Money
from services.payments.domain.upstream_events import (
    OrderRef,
    ProviderAmount,
    ReceivedVia,
    RefundLine,
    UpstreamChargeRefunded,
    UpstreamChargeSucceeded,
    UpstreamDisputeClosed,
    UpstreamDisputeOpened,
    UpstreamDisputeUpdated,
    UpstreamEventReceived,
    UpstreamFact,
    UpstreamPaymentFailed,
    UpstreamRefundUpdated,
)

__all__ = [
    "DISPUTE_OUTCOMES",
    "PROVIDER",
    "SUPPORTED_TYPES",
    "UPSTREAM_NAMESPACE",
    "ChargeObject",
    "DisputeObject",
    "EventKind",
    "EvidenceDetails",
    "MalformedEvent",
    "PaymentIntentObject",
    "RefundObject",
    "StripeEvent",
    "event_uuid",
    "normalise",
    "parse_event",
    "received_event",
    "to_money",
]

PROVIDER = "stripe"

# uuid5 namespace of the internal events derived from upstream events (fixed forever: changing it
# would give redelivered events new ids and defeat deduplication).
UPSTREAM_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://closeloop.invalid/payments/upstream-events")


def event_uuid(provider: str, provider_event_id: str, part: str = "") -> uuid.UUID:
    """The id of an internal event derived from a provider event: uuid5 over "stripe:evt_...".

    `part` tells apart several internal events made from one provider event, e.g. the
    UpstreamEventReceived (no part), its fact ("fact") and a Dispute aggregate event ("dispute").
    """
    if not provider or not provider_event_id:
        raise ValueError("provider and provider_event_id are required")
    name = f"{provider}:{provider_event_id}" + (f"#{part}" if part else "")
    return uuid.uuid5(UPSTREAM_NAMESPACE, name)


class EventKind(StrEnum):
    """The Stripe event types we normalise, plus UNKNOWN for every other type."""

    PAYMENT_INTENT_SUCCEEDED = "payment_intent.succeeded"
    PAYMENT_INTENT_PAYMENT_FAILED = "payment_intent.payment_failed"
    CHARGE_SUCCEEDED = "charge.succeeded"
    CHARGE_REFUNDED = "charge.refunded"
    CHARGE_REFUND_UPDATED = "charge.refund.updated"
    REFUND_CREATED = "refund.created"
    REFUND_UPDATED = "refund.updated"
    REFUND_FAILED = "refund.failed"
    CHARGE_DISPUTE_CREATED = "charge.dispute.created"
    CHARGE_DISPUTE_UPDATED = "charge.dispute.updated"
    CHARGE_DISPUTE_CLOSED = "charge.dispute.closed"
    UNKNOWN = "unknown"


SUPPORTED_TYPES: frozenset[str] = frozenset(k.value for k in EventKind if k is not EventKind.UNKNOWN)

# Stripe's closing statuses and what they mean for the merchant's money. `warning_closed` is an
# inquiry closed without becoming a chargeback (the merchant keeps the money); `prevented` (e.g.
# resolved through Visa RDR, which refunds the cardholder) has no won/lost meaning and is a data gap.
DISPUTE_OUTCOMES: dict[str, Literal["won", "lost"]] = {"won": "won", "warning_closed": "won", "lost": "lost"}


class MalformedEvent(RuleViolation):
    """The body is not a usable Stripe event; `field` names the first bad field (HTTP 422, nothing stored)."""

    code = "malformed_event"


# --- Stripe objects (only what we read is typed) ------------------------------------------------


def _expandable_id(value: Any) -> Any:
    """An expandable field is an id, or the expanded object (then its id)."""
    if isinstance(value, Mapping):
        return value.get("id")
    return value


def _none_to_empty(value: Any) -> Any:
    return {} if value is None else value


StripeId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$")]
ExpandableId = Annotated[StripeId | None, BeforeValidator(_expandable_id)]
MinorUnits = Annotated[StrictInt, Field(ge=0, description="integer amount in the currency's smallest unit")]
UnixTime = Annotated[StrictInt, Field(ge=0, description="unix time in seconds")]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Za-z]{3}$", description="ISO 4217, lower case as Stripe sends")]
MetadataMap = Annotated[dict[str, Any], BeforeValidator(_none_to_empty)]


class StripeObject(BaseModel):
    """Base of the Stripe models: unknown fields are kept, the model is read-only."""

    model_config = ConfigDict(extra="allow", frozen=True)


class PaymentIntentObject(StripeObject):
    """A PaymentIntent (`data.object` of payment_intent.* events)."""

    id: StripeId
    object: Literal["payment_intent"]
    amount: MinorUnits
    amount_received: MinorUnits = 0
    currency: CurrencyCode
    status: str
    created: UnixTime | None = None
    latest_charge: ExpandableId = None
    charges: dict[str, Any] | None = Field(default=None, description="API versions before 2022-11-15: a list")
    last_payment_error: dict[str, Any] | None = None
    metadata: MetadataMap = Field(default_factory=dict)

    @property
    def charge_id(self) -> str | None:
        """The charge: `latest_charge`, or in older API versions the last charge of `charges.data`."""
        if self.latest_charge:
            return self.latest_charge
        data = (self.charges or {}).get("data") or []
        ids = [c.get("id") for c in data if isinstance(c, Mapping) and isinstance(c.get("id"), str)]
        return ids[0] if ids else None  # Stripe lists newest first


class ChargeObject(StripeObject):
    """A Charge (`data.object` of charge.succeeded and charge.refunded)."""

    id: StripeId
    object: Literal["charge"]
    amount: MinorUnits
    amount_captured: MinorUnits | None = None
    amount_refunded: MinorUnits = 0
    refunded: bool = False
    currency: CurrencyCode
    status: str | None = None
    created: UnixTime | None = None
    payment_intent: ExpandableId = None
    refunds: dict[str, Any] | None = Field(default=None, description="present by default before 2022-11-15")
    metadata: MetadataMap = Field(default_factory=dict)

    @property
    def captured_amount(self) -> int:
        """`amount_captured`, or `amount` in API versions that predate it."""
        return self.amount if self.amount_captured is None else self.amount_captured


class RefundObject(StripeObject):
    """A Refund (`data.object` of charge.refund.updated and refund.*)."""

    id: StripeId
    object: Literal["refund"]
    amount: MinorUnits
    currency: CurrencyCode
    status: str | None = None
    created: UnixTime
    charge: ExpandableId = None
    payment_intent: ExpandableId = None
    reason: str | None = None
    failure_reason: str | None = None
    metadata: MetadataMap = Field(default_factory=dict)


class EvidenceDetails(StripeObject):
    """A dispute's evidence_details: the deadline and whether evidence was submitted."""

    due_by: UnixTime | None = None
    has_evidence: bool = False
    past_due: bool = False
    submission_count: Annotated[StrictInt, Field(ge=0)] = 0


class DisputeObject(StripeObject):
    """A Dispute (`data.object` of charge.dispute.*): names its charge, usually without metadata."""

    id: StripeId
    object: Literal["dispute"]
    amount: MinorUnits
    currency: CurrencyCode
    status: str
    reason: str
    created: UnixTime
    charge: ExpandableId = None
    payment_intent: ExpandableId = None
    evidence_details: EvidenceDetails | None = None
    metadata: MetadataMap = Field(default_factory=dict)


Resource = PaymentIntentObject | ChargeObject | RefundObject | DisputeObject

RESOURCES: dict[EventKind, type[StripeObject]] = {
    EventKind.PAYMENT_INTENT_SUCCEEDED: PaymentIntentObject,
    EventKind.PAYMENT_INTENT_PAYMENT_FAILED: PaymentIntentObject,
    EventKind.CHARGE_SUCCEEDED: ChargeObject,
    EventKind.CHARGE_REFUNDED: ChargeObject,
    EventKind.CHARGE_REFUND_UPDATED: RefundObject,
    EventKind.REFUND_CREATED: RefundObject,
    EventKind.REFUND_UPDATED: RefundObject,
    EventKind.REFUND_FAILED: RefundObject,
    EventKind.CHARGE_DISPUTE_CREATED: DisputeObject,
    EventKind.CHARGE_DISPUTE_UPDATED: DisputeObject,
    EventKind.CHARGE_DISPUTE_CLOSED: DisputeObject,
}


# --- the event envelope -------------------------------------------------------------------------


def _request_info(value: Any) -> Any:
    """`request` was a bare request id in very old API versions."""
    return {"id": value, "idempotency_key": None} if isinstance(value, str) else value


class EventRequest(StripeObject):
    """The API request that caused the event; both null for automatic events (e.g. disputes)."""

    id: str | None = None
    idempotency_key: str | None = None


class EventData(StripeObject):
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None = None


class StripeEvent(StripeObject):
    """A Stripe Event. `payload` is the body as received; `resource` the typed `data.object` (known types)."""

    id: Annotated[str, Field(min_length=5, max_length=255, pattern=r"^evt_[A-Za-z0-9_]+$")]
    object: Literal["event"] = "event"
    api_version: str | None = None
    created: UnixTime
    data: EventData
    livemode: bool = False
    pending_webhooks: StrictInt = 0
    request: Annotated[EventRequest | None, BeforeValidator(_request_info)] = None
    type: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")]
    account: str | None = None

    _payload: dict[str, Any] = PrivateAttr(default_factory=dict)
    _resource: Resource | None = PrivateAttr(default=None)

    @property
    def kind(self) -> EventKind:
        return EventKind(self.type) if self.type in SUPPORTED_TYPES else EventKind.UNKNOWN

    @property
    def is_known(self) -> bool:
        return self.kind is not EventKind.UNKNOWN

    @property
    def payload(self) -> dict[str, Any]:
        """The event exactly as received (a copy is kept; treat it as read-only)."""
        return self._payload

    @property
    def resource(self) -> Resource | None:
        """The typed `data.object` of a supported type; None for unknown types."""
        return self._resource

    @property
    def occurred_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, UTC)


def _field(loc: tuple[int | str, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "body"


def _malformed(exc: ValidationError, prefix: str = "") -> MalformedEvent:
    err = exc.errors()[0]
    field = _field(tuple(err.get("loc", ())), prefix)
    rule = "is required" if err.get("type") == "missing" else str(err.get("msg", "is invalid"))
    return MalformedEvent(field, rule)


_NOT_FAST = object()
# A NUL is refused by the checked path (json.loads + find_bad_json); in JSON text it can only be the escape.
_NUL_ESCAPE = b"\\u0000"


def _too_deep(value: Any) -> bool:
    """Whether a decoded JSON value holds something deeper than MAX_DEPTH (find_bad_json's depth rule)."""
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if depth + 1 > MAX_DEPTH:
                return True
            if isinstance(child, dict | list):
                todo.append((child, depth + 1))
    return False


def _loads_fast(raw: bytes) -> Any:
    """The body decoded by pydantic's JSON parser when the checked path (loads_checked) would decode the same
    and refuse nothing; else _NOT_FAST, and the checked path decodes it (with its exact errors). It decodes
    what json.loads does (big integers as int, NaN and Infinity, the last of duplicate keys, in place) and
    refuses a lone surrogate escape (then the checked path names it); a NUL escape and depth are checked
    here. About 3x faster on a Stripe event: the checked path's Python walk over every string was most of
    it. (orjson would be no faster here, and turns integers beyond 64 bits into floats.)"""
    if _NUL_ESCAPE in raw:
        return _NOT_FAST
    try:
        value = from_json(raw)
    except ValueError:
        return _NOT_FAST  # not JSON, or JSON the checked path refuses: it names the error
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and isinstance(value, dict | list) and _too_deep(value):
        return _NOT_FAST
    return value


def parse_event(raw: bytes | str | Mapping[str, Any]) -> StripeEvent:
    """Parse a Stripe event from the raw body (bytes/str) or an already decoded dict.

    Raises MalformedEvent naming the field: "body" when it is not a JSON object, else the
    first bad field of the envelope ("id", "type", "created", "data.object", ...) or, for a
    supported type, of the object we read ("data.object.amount", ...).
    """
    decoded: Any = _NOT_FAST
    if isinstance(raw, bytes | bytearray | memoryview):
        decoded = _loads_fast(bytes(raw))
        if decoded is _NOT_FAST:
            try:
                text = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise MalformedEvent("body", "must be UTF-8 encoded JSON") from None
            raw = text
    if decoded is _NOT_FAST:
        if isinstance(raw, str):
            try:
                decoded, bad = loads_checked(raw)
            except ValueError as exc:
                raise MalformedEvent("body", f"is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
                                     if isinstance(exc, json.JSONDecodeError) else "is not JSON") from None
            if bad is not None:  # JSON the store cannot keep (a NUL, a lone surrogate) or absurdly deep
                raise MalformedEvent(*bad)
        else:
            decoded = raw
    if not isinstance(decoded, Mapping):
        raise MalformedEvent("body", "must be a JSON object (a Stripe event)")
    payload = dict(decoded)
    try:
        event = StripeEvent.model_validate(payload)
    except ValidationError as exc:
        raise _malformed(exc) from None
    event._payload = payload
    kind = event.kind
    if kind is not EventKind.UNKNOWN:
        model = RESOURCES[kind]
        try:
            event._resource = cast(Resource, model.model_validate(event.data.object))
        except ValidationError as exc:
            raise _malformed(exc, "data.object") from None
    return event


# --- normalisation ---------------------------------------------------------------------------------


def to_money(amount: int, currency: str) -> tuple[Money | None, str | None]:
    """Stripe's (minor units, lower-case code) as Money, or (None, why) for a currency we do not support."""
    code = currency.upper()
    if code not in CURRENCY_EXPONENTS:
        return None, f"unsupported currency {currency!r}; supported: {', '.join(sorted(CURRENCY_EXPONENTS))}"
    try:
        return Money(amount=amount, currency=code), None
    except ValidationError:
        return None, f"amount {amount} {code} is outside the accepted range"


def _at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _code(value: str | None) -> str:
    """A provider code fit for a fact (lower-case letters, digits, _ and .), else "unknown"."""
    if value and len(value) <= 100 and set(value) <= _CODE_CHARS:
        return value
    return "unknown"


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


_CODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.")


def _str_map(metadata: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


class _Gaps:
    """Collects the reasons a fact cannot be applied as it is."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def money(self, amount: int, currency: str) -> Money | None:
        value, gap = to_money(amount, currency)
        if gap and gap not in self.reasons:
            self.reasons.append(gap)
        return value

    def add(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons)[:500] if self.reasons else None


_ORDER_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


def _order_ref(metadata: Mapping[str, Any], charge_id: str | None, payment_intent_id: str | None,
               gaps: _Gaps) -> OrderRef:
    raw = metadata.get("order_id")
    order_id: str | None = None
    if isinstance(raw, str) and 0 < len(raw) <= 64 and set(raw) <= _ORDER_ID_CHARS:
        order_id = raw
    elif raw not in (None, ""):
        gaps.add(f"metadata.order_id {str(raw)[:80]!r} is not an order id of ours")
    ref = OrderRef(order_id=order_id, charge_id=charge_id, payment_intent_id=payment_intent_id)
    if ref.is_empty:
        gaps.add("the object names no order, charge or payment intent")
    return ref


def _common(event: StripeEvent, ref: OrderRef, gaps: _Gaps) -> dict[str, Any]:
    return {"provider": PROVIDER, "provider_event_id": event.id, "upstream_type": event.type,
            "order_ref": ref, "occurred_at": event.occurred_at, "livemode": event.livemode,
            "data_gap": gaps.reason}


def _payment_intent_succeeded(event: StripeEvent, pi: PaymentIntentObject) -> UpstreamFact:
    gaps = _Gaps()
    received = pi.amount_received or pi.amount
    amount = gaps.money(received, pi.currency)
    ref = _order_ref(pi.metadata, pi.charge_id, pi.id, gaps)
    return UpstreamChargeSucceeded(
        **_common(event, ref, gaps), source="payment_intent", payment_intent_id=pi.id, charge_id=pi.charge_id,
        amount=amount, provider_amount=ProviderAmount(amount=received, currency=pi.currency),
        metadata=_str_map(pi.metadata))


def _payment_failed(event: StripeEvent, pi: PaymentIntentObject) -> UpstreamFact:
    gaps = _Gaps()
    amount = gaps.money(pi.amount, pi.currency)
    error = pi.last_payment_error or {}
    error_charge = _expandable_id(error.get("charge"))
    charge_id = pi.charge_id or (error_charge if isinstance(error_charge, str) else None)
    ref = _order_ref(pi.metadata, charge_id, pi.id, gaps)

    return UpstreamPaymentFailed(
        **_common(event, ref, gaps), payment_intent_id=pi.id, charge_id=charge_id, amount=amount,
        provider_amount=ProviderAmount(amount=pi.amount, currency=pi.currency),
        failure_code=_text(error.get("code"), 100), decline_code=_text(error.get("decline_code"), 100),
        failure_message=_text(error.get("message"), 500), metadata=_str_map(pi.metadata))


def _charge_succeeded(event: StripeEvent, charge: ChargeObject) -> UpstreamFact:
    gaps = _Gaps()
    captured = charge.captured_amount
    amount = gaps.money(captured, charge.currency)
    ref = _order_ref(charge.metadata, charge.id, charge.payment_intent, gaps)
    return UpstreamChargeSucceeded(
        **_common(event, ref, gaps), source="charge", payment_intent_id=charge.payment_intent, charge_id=charge.id,
        amount=amount, provider_amount=ProviderAmount(amount=captured, currency=charge.currency),
        metadata=_str_map(charge.metadata))


def _refund_lines(event: StripeEvent, charge: ChargeObject, gaps: _Gaps) -> list[RefundLine]:
    """The refunds listed on the charge, when the payload includes them (older API versions)."""
    data = (charge.refunds or {}).get("data")
    if not isinstance(data, list):
        return []
    lines: list[RefundLine] = []
    for i, item in enumerate(data):
        try:
            refund = RefundObject.model_validate(item)
        except ValidationError as exc:
            raise _malformed(exc, f"data.object.refunds.data[{i}]") from None
        lines.append(RefundLine(
            refund_id=refund.id, amount=gaps.money(refund.amount, refund.currency),
            provider_amount=ProviderAmount(amount=refund.amount, currency=refund.currency),
            status=_code(refund.status), created_at=_at(refund.created)))
    return lines


def _charge_refunded(event: StripeEvent, charge: ChargeObject) -> UpstreamFact:
    gaps = _Gaps()
    captured = charge.captured_amount
    amount = gaps.money(captured, charge.currency)
    refunded = gaps.money(charge.amount_refunded, charge.currency)
    if charge.amount_refunded > captured:
        gaps.add(f"amount_refunded {charge.amount_refunded} is above the captured amount {captured}")
    lines = _refund_lines(event, charge, gaps)
    # Stripe lists newest first; the newest refund is the one this event is about.
    newest = max(reversed(lines), key=lambda line: line.created_at) if lines else None
    ref = _order_ref(charge.metadata, charge.id, charge.payment_intent, gaps)
    return UpstreamChargeRefunded(
        **_common(event, ref, gaps), charge_id=charge.id, payment_intent_id=charge.payment_intent,
        amount=amount, provider_amount=ProviderAmount(amount=captured, currency=charge.currency),
        amount_refunded=refunded, provider_amount_refunded=charge.amount_refunded,
        fully_refunded=charge.refunded, refund_id=newest.refund_id if newest else None,
        refund_amount=newest.amount if newest else None, refund_status=newest.status if newest else None,
        refunds=lines, metadata=_str_map(charge.metadata))


REFUND_STATUSES = frozenset({"pending", "requires_action", "succeeded", "failed", "canceled"})


def _refund_updated(event: StripeEvent, refund: RefundObject) -> UpstreamFact:
    gaps = _Gaps()
    amount = gaps.money(refund.amount, refund.currency)
    status = refund.status or "unknown"
    if status not in REFUND_STATUSES:
        gaps.add(f"refund status {refund.status!r} is not one we know")
    ref = _order_ref(refund.metadata, refund.charge, refund.payment_intent, gaps)
    return UpstreamRefundUpdated(
        **_common(event, ref, gaps), refund_id=refund.id, charge_id=refund.charge,
        payment_intent_id=refund.payment_intent, amount=amount,
        provider_amount=ProviderAmount(amount=refund.amount, currency=refund.currency),
        status=_code(status), reason=_text(refund.reason, 100), failure_reason=_text(refund.failure_reason, 100),
        refund_created_at=_at(refund.created), metadata=_str_map(refund.metadata))


DISPUTE_STATUSES = frozenset({"warning_needs_response", "warning_under_review", "warning_closed",
                              "needs_response", "under_review", "won", "lost", "prevented"})


def _dispute(event: StripeEvent, dispute: DisputeObject) -> UpstreamFact:
    gaps = _Gaps()
    amount = gaps.money(dispute.amount, dispute.currency)
    status = _code(dispute.status)
    if dispute.status not in DISPUTE_STATUSES:
        gaps.add(f"dispute status {dispute.status!r} is not one we know")
    ref = _order_ref(dispute.metadata, dispute.charge, dispute.payment_intent, gaps)
    details = dispute.evidence_details or EvidenceDetails()
    fields: dict[str, Any] = {
        "dispute_id": dispute.id, "charge_id": dispute.charge, "payment_intent_id": dispute.payment_intent,
        "amount": amount, "provider_amount": ProviderAmount(amount=dispute.amount, currency=dispute.currency),
        "status": status, "reason": _text(dispute.reason, 100) or "general",
        "evidence_due_by": _at(details.due_by) if details.due_by else None,
        "has_evidence": details.has_evidence, "submission_count": details.submission_count,
        "dispute_created_at": _at(dispute.created),
    }
    if event.kind is EventKind.CHARGE_DISPUTE_CLOSED:
        outcome = DISPUTE_OUTCOMES.get(dispute.status)
        if outcome is None and dispute.status in DISPUTE_STATUSES:
            gaps.add(f"dispute closed as {dispute.status!r}, which is neither won nor lost; needs a person")
        return UpstreamDisputeClosed(**_common(event, ref, gaps), **fields, outcome=outcome)
    # An update that already shows won/lost stays an update here; the Dispute aggregate closes on it.
    cls = UpstreamDisputeOpened if event.kind is EventKind.CHARGE_DISPUTE_CREATED else UpstreamDisputeUpdated
    return cls(**_common(event, ref, gaps), **fields)


_NORMALISERS: dict[EventKind, Callable[[StripeEvent, Any], UpstreamFact]] = {
    EventKind.PAYMENT_INTENT_SUCCEEDED: _payment_intent_succeeded,
    EventKind.PAYMENT_INTENT_PAYMENT_FAILED: _payment_failed,
    EventKind.CHARGE_SUCCEEDED: _charge_succeeded,
    EventKind.CHARGE_REFUNDED: _charge_refunded,
    EventKind.CHARGE_REFUND_UPDATED: _refund_updated,
    EventKind.REFUND_CREATED: _refund_updated,
    EventKind.REFUND_UPDATED: _refund_updated,
    EventKind.REFUND_FAILED: _refund_updated,
    EventKind.CHARGE_DISPUTE_CREATED: _dispute,
    EventKind.CHARGE_DISPUTE_UPDATED: _dispute,
    EventKind.CHARGE_DISPUTE_CLOSED: _dispute,
}


def normalise(event: StripeEvent) -> UpstreamFact | None:
    """The fact a supported event states, in our terms; None for an unknown type (stored, not normalised).

    Never raises for a currency we do not support: the fact is marked `data_gap` instead.
    """
    kind = event.kind
    if kind is EventKind.UNKNOWN:
        return None
    resource = event.resource
    if resource is None:  # built without parse_event
        resource = cast(Resource, RESOURCES[kind].model_validate(event.data.object))
    return _NORMALISERS[kind](event, resource)


def received_event(event: StripeEvent, *, via: ReceivedVia | str, signature_verified: bool,
                   received_at: datetime) -> UpstreamEventReceived:
    """The UpstreamEventReceived that records `event` as it arrived (store it with `event_uuid(...)`)."""
    return UpstreamEventReceived(
        provider=PROVIDER, provider_event_id=event.id, type=event.type, known=event.is_known,
        api_version=event.api_version[:64] if event.api_version else None, created=event.occurred_at,
        livemode=event.livemode, payload=event.payload or event.model_dump(mode="json"),
        received_via=ReceivedVia(via), signature_verified=signature_verified, received_at=received_at)
