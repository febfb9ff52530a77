"""Events of the Kolable refund/re-buy reconciliation (topic `payments.events`) and the values they carry.

The war-room seed (000) reconciles ~28,000 online-course orders of Kolable that were refunded (退刷)
and re-bought (重買). Streams:

- `kolable-{order_id}`: one KolableOrder per order (decisions.py): its imported rows, its
  classifications and the approver's decisions;
- `kolable_import-{import_id}`: one KolableImportCompleted per imported file; the import id is the
  SHA-256 of the file, so importing the same file twice finds the stream already written.

Status enums and the value objects live here, not next to the code that computes them, because the
events carry them. Event names start with `Kolable` so that they stay unique across the platform.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from libs.domain.events import DomainEvent
from libs.domain.money import Money

TOPIC = "payments.events"
ORDER_STREAM_CATEGORY = "kolable"
IMPORT_STREAM_CATEGORY = "kolable_import"

ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
OrderId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN,
                               description="Kolable order id: 1-64 of A-Z a-z 0-9 _ . : -")]
# Student and course identifiers come from Kolable's export as they are (an email, a member number).
Key = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Reference = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256, lower-case hex")]
Note = Annotated[str, Field(max_length=2000)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]
Actor = Annotated[str, Field(min_length=1, max_length=128)]


def order_stream_id(order_id: str) -> str:
    """The stream of one Kolable order: `kolable-{order_id}`."""
    return f"{ORDER_STREAM_CATEGORY}-{order_id}"


def import_stream_id(import_id: str) -> str:
    """The stream of one imported file: `kolable_import-{import_id}`."""
    return f"{IMPORT_STREAM_CATEGORY}-{import_id}"


class Value(BaseModel):
    """Base of the immutable value objects carried by events."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- statuses and roles --------------------------------------------------------------------


class ReconciliationStatus(StrEnum):
    """The seed's status codes (狀態碼), in the order the seed lists them."""

    PAID_VALID = "paid_valid"
    REFUNDED_NO_REBUY = "refunded_no_rebuy"
    REFUNDED_REBOUGHT = "refunded_rebought"
    DISPUTE_PENDING = "dispute_pending"
    DATA_GAP = "data_gap"


class PaymentStatus(StrEnum):
    """The payment state of an order as the export reports it."""

    PAID = "paid"
    FAILED = "failed"
    PENDING = "pending"
    REFUNDED = "refunded"  # fully refunded
    PARTIALLY_REFUNDED = "partially_refunded"

    @property
    def charged(self) -> bool:
        """Whether a charge succeeded (a refund presupposes one)."""
        return self in (PaymentStatus.PAID, PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED)

    @property
    def refunded(self) -> bool:
        return self in (PaymentStatus.REFUNDED, PaymentStatus.PARTIALLY_REFUNDED)


class DisputeStatus(StrEnum):
    """A card dispute's lifecycle (Stripe's, simplified): needs_response -> under_review -> won / lost."""

    NONE = "none"
    NEEDS_RESPONSE = "needs_response"
    UNDER_REVIEW = "under_review"
    WON = "won"
    LOST = "lost"

    @property
    def is_open(self) -> bool:
        return self in (DisputeStatus.NEEDS_RESPONSE, DisputeStatus.UNDER_REVIEW)

    @property
    def rank(self) -> int:
        """How far along the lifecycle; breaks ties between two reports of one dispute at the same time."""
        return {DisputeStatus.NONE: 0, DisputeStatus.NEEDS_RESPONSE: 1, DisputeStatus.UNDER_REVIEW: 2,
                DisputeStatus.WON: 3, DisputeStatus.LOST: 3}[self]


class KolableRole(StrEnum):
    """The seed's three roles, named as closeloop's roles (the X-Role values)."""

    IMPORTER = "importer"  # Wade (data): exports and imports orders and payments
    RECONCILER = "reconciler"  # Huber (ops): marks reconciliation results
    APPROVER = "approver"  # Louis (owner): decides 補收 / 關閉 / 升級

    @property
    def person(self) -> str:
        """Who holds the role in the seed."""
        return {KolableRole.IMPORTER: "Wade", KolableRole.RECONCILER: "Huber", KolableRole.APPROVER: "Louis"}[self]


class DecisionKind(StrEnum):
    """What the approver decides for an order that needs a decision."""

    PURSUE = "pursue"  # 追補: collect the money again
    CLOSE = "close"  # 關閉: close the case, no collection
    ESCALATE = "escalate"  # 升級: escalate

    @property
    def label_zh(self) -> str:
        return {DecisionKind.PURSUE: "追補", DecisionKind.CLOSE: "關閉", DecisionKind.ESCALATE: "升級"}[self]


# --- value objects -------------------------------------------------------------------------


class KolableOrderRow(Value):
    """One validated, normalised row of an orders/payments export (see docs/kolable-import-format.md).

    Normalised means: identifiers stripped, empty cells as None, amounts in integer minor units,
    every time in UTC. Its canonical JSON is what the row's fingerprint is computed from, so the same
    order exported as CSV or as JSON, or with its times in another offset, has the same fingerprint.
    """

    order_id: OrderId
    student_id: Key | None = None
    course_id: Key | None = None
    amount: Money
    ordered_at: AwareDatetime | None = None
    payment_status: PaymentStatus | None = None
    paid_at: AwareDatetime | None = None
    payment_ref: Reference | None = None
    refunded_amount: Money | None = None
    refunded_at: AwareDatetime | None = None
    dispute_status: DisputeStatus = DisputeStatus.NONE
    disputed_at: AwareDatetime | None = None
    line_thread: Reference | None = None
    notes: Note | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KolableOrderRow:
        if self.amount.amount < 0:
            raise ValueError("amount must not be negative")
        if self.refunded_amount is not None:
            if self.refunded_amount.currency != self.amount.currency:
                raise ValueError("refunded_amount must be in the currency of amount")
            if not 0 <= self.refunded_amount.amount <= self.amount.amount:
                raise ValueError("refunded_amount must be between 0 and amount")
        return self


class ImportRowError(Value):
    """A problem with one row (`line` set) or with the whole file (`scope` = file)."""

    scope: Literal["row", "file"] = "row"
    line: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="CSV: physical line, the header being line 1; JSON: array index + 1")
    field: Annotated[str, Field(min_length=1, max_length=100)]
    reason: Annotated[str, Field(min_length=1, max_length=1000)]
    order_id: str | None = None


class KolableClassification(Value):
    """What the reconciliation says about one order: status, why, what next, who, and the money.

    Amounts are in the order's currency. `refunded` includes money taken back by a lost dispute.
    `cash_gap` = refunded - recovered + open_dispute: the money that left and has not come back
    through a re-buy, plus the money a still-open dispute may take.
    """

    order_id: OrderId
    status: ReconciliationStatus
    provisional_status: ReconciliationStatus | None = Field(
        default=None, description="for data_gap: the status the known facts point to; None when they point nowhere")
    reason: Annotated[str, Field(min_length=1)]
    reason_zh: Annotated[str, Field(min_length=1)]
    next_step_zh: str
    next_step_en: str
    owner: KolableRole
    missing_fields: tuple[str, ...] = ()
    student_id: Key | None = None
    course_id: Key | None = None
    rebuy_order_id: OrderId | None = Field(default=None, description="the re-buy that recovered this order")
    recovers_order_id: OrderId | None = Field(default=None, description="on a re-buy: the refunded order it recovers")
    amount: Money
    paid: Money
    refunded: Money
    recovered: Money
    open_dispute: Money
    cash_gap: Money

    @model_validator(mode="after")
    def _money_adds_up(self) -> KolableClassification:
        currency = self.amount.currency
        for name in ("paid", "refunded", "recovered", "open_dispute", "cash_gap"):
            value: Money = getattr(self, name)
            if value.currency != currency:
                raise ValueError(f"{name} must be in {currency}, the order's currency")
            if value.amount < 0:
                raise ValueError(f"{name} must not be negative")
        if self.recovered.amount > self.refunded.amount:
            raise ValueError("recovered cannot exceed refunded")
        if self.cash_gap.amount != self.refunded.amount - self.recovered.amount + self.open_dispute.amount:
            raise ValueError("cash_gap must be refunded - recovered + open_dispute")
        if (self.status is ReconciliationStatus.DATA_GAP) != bool(self.missing_fields):
            raise ValueError("missing_fields are named exactly when the status is data_gap")
        return self


# --- events --------------------------------------------------------------------------------


class KolableOrderEvent(DomainEvent):
    """Base of the KolableOrder aggregate's events (stream `kolable-{order_id}`)."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    order_id: OrderId


class KolableOrderImported(KolableOrderEvent):
    """A new or changed export row of the order was imported (an unchanged row records nothing)."""

    import_id: Sha256
    line: Annotated[int, Field(ge=1)]
    fingerprint: Sha256
    row: KolableOrderRow
    at: AwareDatetime


class KolableOrderClassified(KolableOrderEvent):
    """The order's classification changed (status, reason, amounts or re-buy link)."""

    classification: KolableClassification
    previous_status: ReconciliationStatus | None = None
    at: AwareDatetime


class KolableReconciliationMarked(KolableOrderEvent):
    """The reconciler (Huber) marked a result on the order, e.g. the refund reason (Huber 補原因)."""

    note: Annotated[str, Field(min_length=1, max_length=2000)]
    status_at_mark: ReconciliationStatus
    actor: Actor
    at: AwareDatetime


class KolableRefundDecided(KolableOrderEvent):
    """The approver (Louis) decided: pursue (追補), close (關閉) or escalate (升級)."""

    decision_id: Annotated[str, Field(pattern=r"^d[1-9][0-9]*$", description="d1, d2, ... per order")]
    decision: DecisionKind
    reason: Reason
    actor: Actor
    role: KolableRole
    status_at_decision: ReconciliationStatus
    cash_gap_at_decision: Money
    supersedes: str | None = Field(default=None, description="the decision this one replaces")
    at: AwareDatetime


class KolableImportCompleted(DomainEvent):
    """An export file was imported (stream `kolable_import-{import_id}`).

    rows = accepted + unchanged + rejected; `accepted` rows were new or changed and recorded,
    `unchanged` rows were identical to what the order already had. `errors` keeps the first
    MAX_ERRORS_IN_EVENT problems; `errors_total` counts them all.
    """

    MAX_ERRORS_IN_EVENT: ClassVar[int] = 1000
    topic: ClassVar[str] = TOPIC

    import_id: Sha256
    source_name: Annotated[str, Field(max_length=255)] = ""
    format: Literal["csv", "json"] | None = None
    rows: Annotated[int, Field(ge=0)]
    accepted: Annotated[int, Field(ge=0)]
    unchanged: Annotated[int, Field(ge=0)]
    rejected: Annotated[int, Field(ge=0)]
    errors: Annotated[list[ImportRowError], Field(max_length=1000)] = Field(default_factory=list)
    errors_total: Annotated[int, Field(ge=0)] = 0
    actor: Actor
    at: AwareDatetime

    @model_validator(mode="after")
    def _counts_add_up(self) -> KolableImportCompleted:
        if self.rows != self.accepted + self.unchanged + self.rejected:
            raise ValueError("rows must equal accepted + unchanged + rejected")
        if self.errors_total < len(self.errors):
            raise ValueError("errors_total cannot be less than the errors listed")
        return self
