"""Events recording what an upstream payment provider told us (topic `payments.events`).

Two layers, both stored:

* `UpstreamEventReceived` keeps the provider's event exactly as it arrived (the raw
  payload is the evidence), whatever its type, including types we do not understand:
  those are stored and acknowledged, never dropped.
* The normalised facts (`UpstreamChargeSucceeded`, `UpstreamPaymentFailed`,
  `UpstreamChargeRefunded`, `UpstreamRefundUpdated`, `UpstreamDisputeOpened`,
  `UpstreamDisputeUpdated`, `UpstreamDisputeClosed`) say the same thing in our terms:
  an `OrderRef`, the provider's ids, `Money` and `occurred_at` (the provider's `created`).

How the order is found. Our integration puts `metadata.order_id` on the PaymentIntent
and its Charge, so payment facts usually name the order. Refunds and disputes are
separate Stripe objects that carry only `charge` and `payment_intent` ids and usually no
metadata; their `OrderRef` then holds those ids and the application resolves them
through the index it keeps from earlier facts (`OrderRef.index_entries` feeds it,
`OrderRef.resolve` reads it). A fact whose order cannot be found yet is parked by the
application, not rejected here.

A fact that cannot be applied as it is (a currency we do not support, an order id that
is not one of ours, a status we do not know) carries `data_gap` with the reason; its
`Money` fields are then empty and `provider_amount` still holds what the provider sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from libs.domain.events import DomainEvent
from libs.domain.money import Money

__all__ = [
    "TOPIC",
    "DataGap",
    "OrderRef",
    "Provider",
    "ProviderAmount",
    "ProviderId",
    "ReceivedVia",
    "RefundLine",
    "UpstreamChargeRefunded",
    "UpstreamChargeSucceeded",
    "UpstreamDisputeClosed",
    "UpstreamDisputeFact",
    "UpstreamDisputeOpened",
    "UpstreamDisputeUpdated",
    "UpstreamEventReceived",
    "UpstreamFact",
    "UpstreamPaymentFailed",
    "UpstreamRefundUpdated",
]

TOPIC = "payments.events"

Provider = Literal["stripe"]

# Our own order ids (same rule as the orders service's Id).
OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# A provider object id: evt_..., pi_..., ch_..., re_..., dp_... / du_...
ProviderId = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_]+$",
                                  description="a provider object id, e.g. ch_3Nx... or dp_1Mt...")]
ProviderCode = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_.]+$",
                                    description="a provider code as sent, e.g. 'needs_response' or 'card_declined'")]
DataGap = Annotated[str, Field(min_length=1, max_length=500,
                               description="why this fact cannot be applied as it is")]
Metadata = dict[str, str]  # Stripe metadata: string keys and values


class ReceivedVia(StrEnum):
    """How an upstream event reached us."""

    WEBHOOK = "webhook"
    KAFKA = "kafka"
    CSV = "csv"


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OrderRef(_Value):
    """What we know that leads to the order: our order id, or the provider's charge / PaymentIntent ids.

    `order_id` is set when the provider object carried `metadata.order_id`; otherwise the
    application resolves the charge or PaymentIntent id through its index. All three may be
    known at once (a charge with metadata); an empty ref goes with a `data_gap`.
    """

    order_id: OrderId | None = None
    charge_id: ProviderId | None = None
    payment_intent_id: ProviderId | None = None

    @property
    def is_resolved(self) -> bool:
        """Whether the order is named directly."""
        return self.order_id is not None

    @property
    def is_empty(self) -> bool:
        return self.order_id is None and self.charge_id is None and self.payment_intent_id is None

    def index_entries(self) -> dict[str, str]:
        """provider payment id -> order id, for the application's index (empty when the order is unknown)."""
        if self.order_id is None:
            return {}
        return {pid: self.order_id for pid in (self.charge_id, self.payment_intent_id) if pid is not None}

    def resolve(self, index: Mapping[str, str]) -> str | None:
        """The order id: named directly, else found by charge id, else by PaymentIntent id; None if unknown."""
        if self.order_id is not None:
            return self.order_id
        for pid in (self.charge_id, self.payment_intent_id):
            if pid is not None and pid in index:
                return index[pid]
        return None


class ProviderAmount(_Value):
    """An amount exactly as the provider sent it: integer minor units and its (lower-case) currency code."""

    amount: int
    currency: Annotated[str, Field(min_length=3, max_length=3, pattern=r"^[A-Za-z]{3}$")]


class RefundLine(_Value):
    """One refund as listed on a charge (`charge.refunds.data`, present in older API versions)."""

    refund_id: ProviderId
    amount: Money | None = None
    provider_amount: ProviderAmount
    status: ProviderCode
    created_at: AwareDatetime


# --- the raw event ----------------------------------------------------------------------------


class UpstreamEventReceived(DomainEvent):
    """A provider event as it arrived; stored for every event, known type or not (the evidence)."""

    topic: ClassVar[str] = TOPIC

    provider: Provider
    provider_event_id: ProviderId
    type: Annotated[str, Field(min_length=1, max_length=100, description="the provider's event type")]
    known: bool = Field(description="whether this type is normalised into a fact")
    api_version: Annotated[str, Field(max_length=64)] | None = None
    created: AwareDatetime = Field(description="the provider's `created` (when the event happened)")
    livemode: bool
    payload: dict[str, Any] = Field(description="the event body as received, unchanged")
    received_via: ReceivedVia
    signature_verified: bool = Field(description="true when a webhook signature was checked; "
                                                 "Kafka and CSV deliveries carry none")
    received_at: AwareDatetime


# --- normalised facts ---------------------------------------------------------------------------


class UpstreamFact(DomainEvent):
    """Base of the normalised facts: each names the provider event it came from and the order it concerns."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC
    # Money fields that must be present unless the fact carries a data gap.
    required_money: ClassVar[tuple[str, ...]] = ("amount",)

    provider: Provider = "stripe"
    provider_event_id: ProviderId
    upstream_type: Annotated[str, Field(min_length=1, max_length=100)]
    order_ref: OrderRef
    occurred_at: AwareDatetime
    livemode: bool = False
    data_gap: DataGap | None = None

    @model_validator(mode="after")
    def _money_or_gap(self) -> UpstreamFact:
        if self.data_gap is None:
            missing = [name for name in self.required_money if getattr(self, name) is None]
            if missing:
                raise ValueError(f"{', '.join(missing)} may be empty only when data_gap says why")
            if self.order_ref.is_empty:
                raise ValueError("order_ref may be empty only when data_gap says why")
        return self


class UpstreamChargeSucceeded(UpstreamFact):
    """A payment was captured. Stripe reports it twice (payment_intent.succeeded and charge.succeeded);
    both become this fact, so consumers count a payment once by `charge_id` / `payment_intent_id`."""

    source: Literal["payment_intent", "charge"]
    payment_intent_id: ProviderId | None = None
    charge_id: ProviderId | None = None
    amount: Money | None = None
    provider_amount: ProviderAmount
    metadata: Metadata = Field(default_factory=dict)


class UpstreamPaymentFailed(UpstreamFact):
    """A payment attempt failed (payment_intent.payment_failed); the PaymentIntent may be retried."""

    payment_intent_id: ProviderId
    charge_id: ProviderId | None = None
    amount: Money | None = None
    provider_amount: ProviderAmount
    failure_code: Annotated[str, Field(max_length=100)] | None = None
    decline_code: Annotated[str, Field(max_length=100)] | None = None
    failure_message: Annotated[str, Field(max_length=500)] | None = None
    metadata: Metadata = Field(default_factory=dict)


class UpstreamChargeRefunded(UpstreamFact):
    """A charge was refunded, in part or in full (charge.refunded carries the charge).

    `amount_refunded` is the charge's cumulative refunded amount at `occurred_at`. The
    refund itself (`refund_id`, `refund_amount`, `refund_status`) is known only when the
    payload lists the charge's refunds (API versions before 2022-11-15 did by default);
    otherwise it arrives as `UpstreamRefundUpdated`.
    """

    required_money: ClassVar[tuple[str, ...]] = ("amount", "amount_refunded")

    charge_id: ProviderId
    payment_intent_id: ProviderId | None = None
    amount: Money | None = Field(default=None, description="the captured amount of the charge")
    provider_amount: ProviderAmount
    amount_refunded: Money | None = None
    provider_amount_refunded: int
    fully_refunded: bool
    refund_id: ProviderId | None = None
    refund_amount: Money | None = None
    refund_status: ProviderCode | None = None
    refunds: list[RefundLine] = Field(default_factory=list)
    metadata: Metadata = Field(default_factory=dict)


class UpstreamRefundUpdated(UpstreamFact):
    """A refund was created or changed status (charge.refund.updated, refund.created/updated/failed).

    Status is Stripe's: pending, requires_action, succeeded, failed or canceled.
    """

    refund_id: ProviderId
    charge_id: ProviderId | None = None
    payment_intent_id: ProviderId | None = None
    amount: Money | None = None
    provider_amount: ProviderAmount
    status: ProviderCode
    reason: Annotated[str, Field(max_length=100)] | None = None
    failure_reason: Annotated[str, Field(max_length=100)] | None = None
    refund_created_at: AwareDatetime
    metadata: Metadata = Field(default_factory=dict, description="the refund's metadata; closeloop's own refunds "
                                                                 "carry `closeloop_refund_id`")


class UpstreamDisputeFact(UpstreamFact):
    """Base of the dispute facts: the dispute object as Stripe sent it, in our terms."""

    abstract: ClassVar[bool] = True

    dispute_id: ProviderId
    charge_id: ProviderId | None = None
    payment_intent_id: ProviderId | None = None
    amount: Money | None = None
    provider_amount: ProviderAmount
    status: ProviderCode = Field(description="Stripe's status: warning_needs_response, warning_under_review, "
                                             "warning_closed, needs_response, under_review, won, lost, prevented")
    reason: Annotated[str, Field(max_length=100)]
    evidence_due_by: AwareDatetime | None = None
    has_evidence: bool = False
    submission_count: Annotated[int, Field(ge=0)] = 0
    dispute_created_at: AwareDatetime


class UpstreamDisputeOpened(UpstreamDisputeFact):
    """A customer disputed a charge with their bank (charge.dispute.created)."""


class UpstreamDisputeUpdated(UpstreamDisputeFact):
    """A dispute changed, usually its status after evidence was submitted (charge.dispute.updated)."""


class UpstreamDisputeClosed(UpstreamDisputeFact):
    """A dispute was decided (charge.dispute.closed). `outcome` is empty only with a data gap
    (e.g. status `prevented`, which needs a person to look at it)."""

    outcome: Literal["won", "lost"] | None = None

    @model_validator(mode="after")
    def _outcome_or_gap(self) -> UpstreamDisputeClosed:
        if self.outcome is None and self.data_gap is None:
            raise ValueError("outcome may be empty only when data_gap says why")
        return self
