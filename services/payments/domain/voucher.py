"""The Voucher aggregate (stream `voucher-{voucher_id}`) and the automatic choice of a voucher.

Seed 002 names vouchers among the platform's operating tools: 代金券 issued by operations or
customer service that count as cash (二, 三), compensation vouchers after a cancellation or
a complaint (五, 六), and vouchers given back after a refund that are extended or replaced
when they would come back expired (五). Section 二 asks two questions that are answered here:

- which vouchers may be used together with the member balance: each voucher says so itself
  (`combinable_with_balance`), so operations decide per campaign rather than per kind;
- which voucher to bind automatically: `choose_voucher` ranks by a configurable preference
  (`largest_first` 大額優先 or `soonest_expiry_first` 近期失效優先), comparing amount vouchers
  (代金券) and discount vouchers (折扣券) by what each is worth on THIS order, and explains
  every candidate; the explanation is stored in VoucherBound.

Lifecycle::

    issued --bind--> bound --redeem--> redeemed --return--> returned
      ^                |                                       |
      +----release-----+            returned --bind--> bound   |
    issued/returned --expire--> expired (at or after expires_at)
    issued/returned/expired --extend--> same state (expired: back to the state before expiry)

A voucher is valid on the half-open interval [valid_from, expires_at): at exactly
`expires_at` it is expired.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import Currency, Money
from libs.domain.types import Code, Text
from services.payments.domain.events import TOPIC, Id

__all__ = [
    "BASIS_POINTS",
    "VOUCHER_MACHINE",
    "VOUCHER_TRANSITIONS",
    "BindingChoice",
    "BindingPreference",
    "CandidateAssessment",
    "CompensationGrant",
    "UnusableDetail",
    "UnusableReason",
    "Voucher",
    "VoucherBound",
    "VoucherCategory",
    "VoucherEvent",
    "VoucherExpired",
    "VoucherExtended",
    "VoucherIssued",
    "VoucherKind",
    "VoucherRedeemed",
    "VoucherReleased",
    "VoucherReturned",
    "VoucherStatus",
    "VoucherTerms",
    "VoucherUsability",
    "choose_voucher",
    "voucher_value",
]

STREAM_CATEGORY = "voucher"
BASIS_POINTS = 10_000  # 100 %: discounts are integer basis points, 1500 = 15 % off (85折)

Reason = Annotated[str, Field(min_length=1, max_length=500)]


class Value(BaseModel):
    """Base of the immutable value objects carried by the voucher events."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --- enums --------------------------------------------------------------------------------------


class VoucherKind(StrEnum):
    """代金券 (a fixed amount off) or 折扣券 (a percentage off, optionally capped)."""

    AMOUNT = "amount"
    DISCOUNT = "discount"


class VoucherCategory(StrEnum):
    """Why the voucher exists; `compensation` vouchers name the rule that granted them."""

    NEWCOMER = "newcomer"  # welcome voucher for a first order
    CAMPAIGN = "campaign"  # operations' marketing campaigns
    COMPENSATION = "compensation"  # seed 五/六: cancellation, complaint, expired on return, after-sales
    CUSTOMER_SERVICE = "customer_service"  # goodwill from customer service outside the compensation rules


class VoucherStatus(StrEnum):
    """Where a voucher is in its lifecycle (see the module docstring)."""

    ISSUED = "issued"
    BOUND = "bound"
    REDEEMED = "redeemed"
    RETURNED = "returned"
    EXPIRED = "expired"


class BindingPreference(StrEnum):
    """Seed 二: which voucher to bind automatically. Ties: see `choose_voucher`."""

    LARGEST_FIRST = "largest_first"  # 大額優先: the largest value on this order
    SOONEST_EXPIRY_FIRST = "soonest_expiry_first"  # 近期失效優先: the one that expires first


class UnusableReason(StrEnum):
    """Why a voucher cannot be used on an order."""

    STATUS = "status"  # not issued/returned (bound to another order, redeemed, expired)
    OTHER_CUSTOMER = "other_customer"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    CURRENCY = "currency"
    MIN_SPEND = "min_spend"
    PRODUCT_LINE = "product_line"
    BALANCE_COMBINATION = "balance_combination"
    NO_VALUE = "no_value"


# Which command field an unusable reason is about, for the RuleViolation of `bind`.
_REASON_FIELDS: dict[UnusableReason, str] = {
    UnusableReason.STATUS: "voucher_id",
    UnusableReason.OTHER_CUSTOMER: "customer_id",
    UnusableReason.NOT_YET_VALID: "at",
    UnusableReason.EXPIRED: "at",
    UnusableReason.CURRENCY: "order_amount.currency",
    UnusableReason.MIN_SPEND: "order_amount",
    UnusableReason.PRODUCT_LINE: "product_line",
    UnusableReason.BALANCE_COMBINATION: "using_balance",
    UnusableReason.NO_VALUE: "order_amount",
}


# --- value objects ------------------------------------------------------------------------------


class VoucherTerms(Value):
    """What a voucher is worth and where it may be used, as issued.

    `amount` vouchers carry `amount_off`; `discount` vouchers carry `percent_off_bp`
    (basis points of the order amount) and an optional `cap`. `Voucher.issue` checks
    the combination and the currencies.
    """

    kind: VoucherKind
    currency: Currency
    amount_off: Money | None = None
    percent_off_bp: Annotated[int, Field(ge=1, le=BASIS_POINTS)] | None = None
    cap: Money | None = None
    min_spend: Money | None = Field(default=None, description="the order amount must be at least this")
    combinable_with_balance: bool = Field(description="may be used on an order paid with the member balance")
    product_lines: Annotated[list[Code], Field(max_length=50,
                                               description="where it may be used; empty = every line")] = \
        Field(default_factory=list)
    valid_from: AwareDatetime
    expires_at: AwareDatetime = Field(description="first moment the voucher is no longer valid")


class CompensationGrant(Value):
    """Why a compensation voucher was granted (seed 五/六).

    `rule` is the compensation rule's code, e.g. `loyal_customer_complaint`,
    `no_merchant_available`, `late_cancellation`, `voucher_expired_on_return`,
    `after_sales_quality`.
    """

    rule: Code
    order_id: Id | None = None
    replaces_voucher_id: Id | None = Field(default=None,
                                           description="the voucher that came back expired, if that is why")
    note: Text = ""


class UnusableDetail(Value):
    """One reason a voucher cannot be used on an order."""

    reason: UnusableReason
    detail: Text


class VoucherUsability(Value):
    """Whether a voucher can be used on one order, its value there, and why not."""

    voucher_id: Id
    usable: bool
    value: Money = Field(description="what the voucher would take off this order (zero when unusable)")
    reasons: list[UnusableDetail] = Field(default_factory=list)


class CandidateAssessment(Value):
    """One candidate of an automatic binding: its value on the order and why it was (not) chosen."""

    voucher_id: Id
    kind: VoucherKind
    category: VoucherCategory
    value: Money = Field(description="its value on this order, shown even when it is not usable")
    expires_at: AwareDatetime
    usable: bool
    rank: Annotated[int, Field(ge=1)] | None = Field(default=None, description="1 = chosen; None = unusable")
    chosen: bool
    explanation: Text
    unusable: list[UnusableDetail] = Field(default_factory=list)


class BindingChoice(Value):
    """The outcome of `choose_voucher`, kept in VoucherBound for audit and customer service."""

    voucher_id: Id | None = Field(description="the chosen voucher; None when no candidate is usable")
    value: Money
    preference: BindingPreference
    policy_version: Annotated[str, Field(max_length=64)] | None = None
    order_amount: Money
    product_line: Code
    using_balance: bool
    at: AwareDatetime
    summary: Text
    candidates: list[CandidateAssessment] = Field(default_factory=list)


# --- events -------------------------------------------------------------------------------------


class VoucherEvent(DomainEvent):
    """Base of the Voucher aggregate's events."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    voucher_id: Id


class VoucherIssued(VoucherEvent):
    """A voucher was issued to a customer by operations, customer service or a compensation rule."""

    customer_id: Id
    category: VoucherCategory
    terms: VoucherTerms
    compensation: CompensationGrant | None = None
    issued_by: Id = Field(description="operator id, or 'system' for automatic grants")
    at: AwareDatetime


class VoucherBound(VoucherEvent):
    """The voucher is reserved for one order; `choice` explains an automatic binding."""

    customer_id: Id
    order_id: Id
    order_amount: Money
    value: Money = Field(description="its value on the order amount at binding")
    product_line: Code
    using_balance: bool
    choice: BindingChoice | None = Field(default=None, description="None when the customer picked it")
    at: AwareDatetime


class VoucherReleased(VoucherEvent):
    """The order let go of the voucher before capture (cancelled, or another voucher bound)."""

    order_id: Id
    reason: Reason
    at: AwareDatetime


class VoucherRedeemed(VoucherEvent):
    """The voucher was applied when the order's payment was captured."""

    order_id: Id
    order_amount: Money
    value: Money
    at: AwareDatetime


class VoucherReturned(VoucherEvent):
    """The voucher was given back after a cancellation or refund and can be used again.

    `past_expiry` tells the refund logic that it came back already expired (seed 五: extend
    it, or compensate with a new voucher).
    """

    order_id: Id
    reason: Reason
    expires_at: AwareDatetime
    past_expiry: bool
    at: AwareDatetime


class VoucherExpired(VoucherEvent):
    """The voucher reached its expiry unused."""

    expires_at: AwareDatetime
    status_before: VoucherStatus
    at: AwareDatetime


class VoucherExtended(VoucherEvent):
    """The expiry was moved later (e.g. it came back expired after a refund)."""

    previous_expires_at: AwareDatetime
    new_expires_at: AwareDatetime
    status_after: VoucherStatus
    reason: Reason
    at: AwareDatetime


# --- pure rules ---------------------------------------------------------------------------------


def voucher_value(terms: VoucherTerms, order_amount: Money) -> Money:
    """What a voucher takes off an order of `order_amount` (never more than the order).

    Discounts are floor(order_amount x percent), then capped. Floor, because a discount is
    money the platform gives away: it must never exceed the advertised rate, and the
    customer's share (order - discount) is then never rounded below the exact figure.
    The difference is under one minor unit.
    """
    if order_amount.currency != terms.currency:
        raise RuleViolation("order_amount.currency", f"must be {terms.currency}, the voucher's currency")
    if order_amount.amount <= 0:
        return Money.zero(terms.currency)
    if terms.kind is VoucherKind.AMOUNT:
        assert terms.amount_off is not None
        return Money(amount=min(terms.amount_off.amount, order_amount.amount), currency=terms.currency)
    assert terms.percent_off_bp is not None
    value = order_amount.amount * terms.percent_off_bp // BASIS_POINTS
    if terms.cap is not None:
        value = min(value, terms.cap.amount)
    return Money(amount=value, currency=terms.currency)


def _require_aware(field: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise RuleViolation(field, "must be a time-zone-aware datetime")


def _check_terms(terms: VoucherTerms, at: datetime) -> None:
    """The business checks of a voucher's terms, each naming its field."""
    money_fields = {"amount_off": terms.amount_off, "cap": terms.cap, "min_spend": terms.min_spend}
    for name, money in money_fields.items():
        if money is None:
            continue
        if money.currency != terms.currency:
            raise RuleViolation(f"terms.{name}.currency", f"must be {terms.currency}, the voucher's currency")
        if money.amount <= 0:
            raise RuleViolation(f"terms.{name}", "must be positive")
    if terms.kind is VoucherKind.AMOUNT:
        if terms.amount_off is None:
            raise RuleViolation("terms.amount_off", "an amount voucher needs the amount it takes off")
        if terms.percent_off_bp is not None or terms.cap is not None:
            raise RuleViolation("terms.percent_off_bp", "an amount voucher has no percentage or cap")
    else:
        if terms.percent_off_bp is None:
            raise RuleViolation("terms.percent_off_bp", "a discount voucher needs its percentage (basis points)")
        if terms.amount_off is not None:
            raise RuleViolation("terms.amount_off", "a discount voucher has no fixed amount; use cap for a limit")
    if len(set(terms.product_lines)) != len(terms.product_lines):
        raise RuleViolation("terms.product_lines", "must not repeat a product line")
    if terms.expires_at <= terms.valid_from:
        raise RuleViolation("terms.expires_at", "must be after terms.valid_from")
    if terms.expires_at <= at:
        raise RuleViolation("terms.expires_at", "must be after the issue time (the voucher would be born expired)")


# --- the aggregate ------------------------------------------------------------------------------

S = VoucherStatus

# command -> target state, per state; None = the state does not change (extend), or is decided
# by the event (extend from expired goes back to the state before expiry).
VOUCHER_TRANSITIONS: dict[StrEnum, dict[str, StrEnum | None]] = {
    S.ISSUED: {"bind": S.BOUND, "expire": S.EXPIRED, "extend": None},
    S.BOUND: {"release": S.ISSUED, "redeem": S.REDEEMED},
    S.REDEEMED: {"return": S.RETURNED},
    S.RETURNED: {"bind": S.BOUND, "expire": S.EXPIRED, "extend": None},
    S.EXPIRED: {"extend": None},
}
VOUCHER_MACHINE = StateMachine("voucher", VOUCHER_TRANSITIONS)

_USABLE_STATES = (S.ISSUED, S.RETURNED)


class Voucher(Aggregate):
    """One voucher of one customer, from issue to redemption, return or expiry."""

    category = STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: VoucherStatus | None = None
        self.customer_id: str | None = None
        self.voucher_category: VoucherCategory | None = None
        self.terms: VoucherTerms | None = None
        self.compensation: CompensationGrant | None = None
        self.issued_by: str | None = None
        self.issued_at: datetime | None = None
        self.expires_at: datetime | None = None  # current expiry (terms.expires_at as issued, then extended)
        self.bound_order_id: str | None = None
        self.bound_value: Money | None = None
        self.binding_choice: BindingChoice | None = None
        self.last_released_order_id: str | None = None
        self.redeemed_order_id: str | None = None
        self.redeemed_order_amount: Money | None = None
        self.redeemed_value: Money | None = None
        self.returned_order_id: str | None = None
        self.status_before_expiry: VoucherStatus | None = None
        self.times_redeemed: int = 0

    # --- queries ------------------------------------------------------------------------

    def allowed_commands(self) -> list[str]:
        """The commands the current status allows (empty before issue)."""
        return VOUCHER_MACHINE.allowed(self.status) if self.status else []

    def _terms(self) -> VoucherTerms:
        if self.terms is None:
            raise NotFound(f"voucher {self.id} does not exist", voucher_id=self.id)
        return self.terms

    def _check(self, command: str) -> None:
        if self.status is None:
            raise NotFound(f"voucher {self.id} does not exist", voucher_id=self.id)
        VOUCHER_MACHINE.check(self.id, self.status, command)

    @property
    def kind(self) -> VoucherKind:
        return self._terms().kind

    def is_past_expiry(self, at: datetime) -> bool:
        """Whether `at` is at or after the current expiry (the voucher is no longer valid then)."""
        self._terms()
        _require_aware("at", at)
        assert self.expires_at is not None
        return at >= self.expires_at

    def value_for(self, order_amount: Money) -> Money:
        """What this voucher would take off an order of `order_amount` (see `voucher_value`)."""
        return voucher_value(self._terms(), order_amount)

    def usable_for(self, order_amount: Money, product_line: str, at: datetime, with_balance: bool,
                   customer_id: str | None = None) -> VoucherUsability:
        """Whether the voucher can be bound to this order now; every reason when it cannot."""
        terms = self._terms()
        _require_aware("at", at)
        assert self.status is not None and self.expires_at is not None
        reasons: list[UnusableDetail] = []

        def no(reason: UnusableReason, detail: str) -> None:
            reasons.append(UnusableDetail(reason=reason, detail=detail))

        if self.status not in _USABLE_STATES:
            where = f" to order {self.bound_order_id}" if self.status is S.BOUND else ""
            no(UnusableReason.STATUS, f"the voucher is {self.status.value}{where}")
        if customer_id is not None and customer_id != self.customer_id:
            no(UnusableReason.OTHER_CUSTOMER, f"issued to customer {self.customer_id}, not {customer_id}")
        if at < terms.valid_from:
            no(UnusableReason.NOT_YET_VALID, f"valid from {terms.valid_from.isoformat()}")
        if at >= self.expires_at:
            no(UnusableReason.EXPIRED, f"expired at {self.expires_at.isoformat()}")
        value = Money.zero(terms.currency)
        if order_amount.currency != terms.currency:
            no(UnusableReason.CURRENCY, f"the voucher is in {terms.currency}, the order in {order_amount.currency}")
        else:
            value = voucher_value(terms, order_amount)
            if terms.min_spend is not None and order_amount < terms.min_spend:
                no(UnusableReason.MIN_SPEND, f"needs an order of at least {terms.min_spend}, this one is "
                                             f"{order_amount}")
            if value.is_zero:
                no(UnusableReason.NO_VALUE, f"worth nothing on an order of {order_amount}")
        if terms.product_lines and product_line not in terms.product_lines:
            no(UnusableReason.PRODUCT_LINE, f"only for {', '.join(terms.product_lines)}, not {product_line}")
        if with_balance and not terms.combinable_with_balance:
            no(UnusableReason.BALANCE_COMBINATION, "cannot be combined with the member balance")
        if reasons:
            value = Money.zero(terms.currency)
        return VoucherUsability(voucher_id=self.id, usable=not reasons, value=value, reasons=reasons)

    # --- commands -----------------------------------------------------------------------

    @classmethod
    def issue(cls, voucher_id: str, *, customer_id: str, category: VoucherCategory | str, terms: VoucherTerms,
              issued_by: str, at: datetime, compensation: CompensationGrant | None = None) -> Voucher:
        """Issue a new voucher; compensation vouchers must name the rule that granted them."""
        _require_aware("at", at)
        try:
            kind = VoucherCategory(category)
        except ValueError:
            raise RuleViolation("category", f"must be one of {', '.join(c.value for c in VoucherCategory)}") \
                from None
        _check_terms(terms, at)
        if kind is VoucherCategory.COMPENSATION and compensation is None:
            raise RuleViolation("compensation", "a compensation voucher must name the rule that granted it")
        if kind is not VoucherCategory.COMPENSATION and compensation is not None:
            raise RuleViolation("compensation", "only compensation vouchers carry a compensation grant")
        voucher = cls(voucher_id)
        voucher._record(VoucherIssued(voucher_id=voucher_id, customer_id=customer_id, category=kind, terms=terms,
                                      compensation=compensation, issued_by=issued_by, at=at))
        return voucher

    def bind(self, order_id: str, *, customer_id: str, order_amount: Money, product_line: str,
             using_balance: bool, at: datetime, choice: BindingChoice | None = None) -> None:
        """Reserve the voucher for one order; a repeated binding to the same order changes nothing."""
        if self.status is S.BOUND and self.bound_order_id == order_id:
            return
        self._check("bind")
        if choice is not None and choice.voucher_id != self.id:
            raise RuleViolation("choice.voucher_id", f"the choice is {choice.voucher_id}, not voucher {self.id}")
        usability = self.usable_for(order_amount, product_line, at, using_balance, customer_id=customer_id)
        if not usability.usable:
            first = usability.reasons[0].reason
            raise RuleViolation(_REASON_FIELDS[first], "; ".join(r.detail for r in usability.reasons),
                                f"voucher {self.id} cannot be used on order {order_id}: "
                                + "; ".join(r.detail for r in usability.reasons))
        self._record(VoucherBound(voucher_id=self.id, customer_id=customer_id, order_id=order_id,
                                  order_amount=order_amount, value=usability.value, product_line=product_line,
                                  using_balance=using_balance, choice=choice, at=at))

    def release(self, order_id: str, reason: str, at: datetime) -> None:
        """The order lets the voucher go before capture (cancelled, or another voucher bound)."""
        if self.status is S.ISSUED and self.last_released_order_id == order_id:
            return  # the same release reported again
        self._check("release")
        self._require_order(self.bound_order_id, order_id)
        self._record(VoucherReleased(voucher_id=self.id, order_id=order_id, reason=reason, at=at))

    def redeem(self, order_id: str, order_amount: Money, at: datetime) -> None:
        """Apply the voucher at capture, on the order amount then; its min spend must still be met.

        A voucher bound while it was valid is honoured even if it expires before the capture:
        the customer chose it in good time, and the binding reserved it.
        """
        if self.status is S.REDEEMED and self.redeemed_order_id == order_id:
            if order_amount != self.redeemed_order_amount:
                raise Conflict(f"voucher {self.id} was already redeemed on order {order_id} for an amount of "
                               f"{self.redeemed_order_amount}, not {order_amount}",
                               redeemed_order_amount=str(self.redeemed_order_amount))
            return
        self._check("redeem")
        self._require_order(self.bound_order_id, order_id)
        terms = self._terms()
        value = voucher_value(terms, order_amount)
        if terms.min_spend is not None and order_amount < terms.min_spend:
            raise RuleViolation("order_amount", f"the voucher needs an order of at least {terms.min_spend}; "
                                                f"release it instead")
        if value.is_zero:
            raise RuleViolation("order_amount", "the voucher is worth nothing on this amount; release it instead")
        self._record(VoucherRedeemed(voucher_id=self.id, order_id=order_id, order_amount=order_amount,
                                     value=value, at=at))

    def return_(self, order_id: str, reason: str, at: datetime) -> None:
        """Give the redeemed voucher back after a cancellation or refund (usable again).

        When it comes back at or after its expiry, the event says so (`past_expiry`) and the
        refund logic extends it (`extend`) or compensates with a new voucher (seed 五).
        """
        if self.status is S.RETURNED and self.returned_order_id == order_id:
            return
        self._check("return")
        self._require_order(self.redeemed_order_id, order_id)
        assert self.expires_at is not None
        _require_aware("at", at)
        self._record(VoucherReturned(voucher_id=self.id, order_id=order_id, reason=reason,
                                     expires_at=self.expires_at, past_expiry=at >= self.expires_at, at=at))

    def expire(self, at: datetime) -> None:
        """Mark an unused voucher expired; allowed at or after its expiry."""
        self._check("expire")
        _require_aware("at", at)
        assert self.expires_at is not None and self.status is not None
        if at < self.expires_at:
            raise RuleViolation("at", f"the voucher expires at {self.expires_at.isoformat()}, not before")
        self._record(VoucherExpired(voucher_id=self.id, expires_at=self.expires_at, status_before=self.status,
                                    at=at))

    def extend(self, new_expires_at: datetime, reason: str, at: datetime) -> None:
        """Move the expiry later; an expired voucher goes back to the state it had before expiring."""
        self._check("extend")
        _require_aware("new_expires_at", new_expires_at)
        _require_aware("at", at)
        assert self.expires_at is not None and self.status is not None
        if new_expires_at <= self.expires_at:
            raise RuleViolation("new_expires_at", f"must be later than the current expiry "
                                                  f"{self.expires_at.isoformat()}")
        if new_expires_at <= at:
            raise RuleViolation("new_expires_at", "must be in the future")
        after = self.status_before_expiry if self.status is S.EXPIRED else self.status
        assert after is not None
        self._record(VoucherExtended(voucher_id=self.id, previous_expires_at=self.expires_at,
                                     new_expires_at=new_expires_at, status_after=after, reason=reason, at=at))

    def _require_order(self, expected: str | None, order_id: str) -> None:
        if order_id != expected:
            raise RuleViolation("order_id", f"voucher {self.id} is for order {expected}, not {order_id}")

    # --- evolution ----------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case VoucherIssued():
                self.customer_id, self.voucher_category = event.customer_id, event.category
                self.terms, self.compensation = event.terms, event.compensation
                self.issued_by, self.issued_at = event.issued_by, event.at
                self.expires_at = event.terms.expires_at
                self.status = S.ISSUED
            case VoucherBound():
                self.bound_order_id, self.bound_value = event.order_id, event.value
                self.binding_choice = event.choice
                self.status = S.BOUND
            case VoucherReleased():
                self.bound_order_id, self.bound_value, self.binding_choice = None, None, None
                self.last_released_order_id = event.order_id
                self.status = S.ISSUED
            case VoucherRedeemed():
                self.redeemed_order_id = event.order_id
                self.redeemed_order_amount, self.redeemed_value = event.order_amount, event.value
                self.times_redeemed += 1
                self.status = S.REDEEMED
            case VoucherReturned():
                self.returned_order_id = event.order_id
                self.bound_order_id, self.bound_value, self.binding_choice = None, None, None
                self.status = S.RETURNED
            case VoucherExpired():
                self.status_before_expiry = event.status_before
                self.status = S.EXPIRED
            case VoucherExtended():
                self.expires_at = event.new_expires_at
                self.status_before_expiry = None
                self.status = event.status_after
            case _:
                raise TypeError(f"Voucher cannot apply {type(event).__name__}")


# --- automatic binding --------------------------------------------------------------------------

_KIND_ORDER = {VoucherKind.AMOUNT: 0, VoucherKind.DISCOUNT: 1}


def _rank_key(preference: BindingPreference, a: CandidateAssessment) -> tuple[object, ...]:
    by_value = -a.value.amount
    if preference is BindingPreference.LARGEST_FIRST:
        return (by_value, a.expires_at, _KIND_ORDER[a.kind], a.voucher_id)
    return (a.expires_at, by_value, _KIND_ORDER[a.kind], a.voucher_id)


def _why_not(preference: BindingPreference, a: CandidateAssessment, chosen: CandidateAssessment) -> str:
    """Why a usable candidate lost to the chosen one: the first ranking criterion that differs."""
    worth = f"worth {a.value} on this order"
    value_first = preference is BindingPreference.LARGEST_FIRST
    for criterion in ("value", "expiry") if value_first else ("expiry", "value"):
        if criterion == "value" and a.value != chosen.value:
            return f"{worth}, less than {chosen.voucher_id} ({chosen.value})"
        if criterion == "expiry" and a.expires_at != chosen.expires_at:
            return (f"{worth}; expires {a.expires_at.isoformat()}, later than {chosen.voucher_id} "
                    f"({chosen.expires_at.isoformat()})")
        if criterion == "value":
            worth += ", the same value"
        else:
            worth += ", the same expiry"
    if a.kind != chosen.kind:
        return (f"{worth} as {chosen.voucher_id}; an amount voucher is used before a discount voucher, "
                f"whose value can grow on a larger order")
    return f"{worth} and kind as {chosen.voucher_id}, which comes first by voucher id"


def choose_voucher(candidates: Iterable[Voucher], *, order_amount: Money, product_line: str, at: datetime,
                   using_balance: bool, preference: BindingPreference | str, customer_id: str | None = None,
                   policy_version: str | None = None) -> BindingChoice:
    """Pick the voucher to bind automatically, and explain every candidate.

    Every candidate is valued on THIS order (`value_for`), so an amount voucher (代金券) and
    a discount voucher (折扣券) compare by what they actually take off. Unusable candidates
    (wrong state, not yet valid, expired, below min spend, other product line, not
    combinable with the member balance when `using_balance`, worth nothing) are listed
    with their reasons and never chosen. The usable ones are ranked:

    - `largest_first`: largest value, then soonest expiry, then amount before discount,
      then voucher id;
    - `soonest_expiry_first`: soonest expiry, then largest value, then amount before
      discount, then voucher id.

    Amount before discount on a full tie: an amount voucher is never worth more later than
    now, while a discount voucher can be worth more on a larger order, so keeping the
    discount voucher keeps more value for the customer. The voucher id makes the choice
    deterministic. A candidate given twice is assessed once.
    """
    try:
        pref = BindingPreference(preference)
    except ValueError:
        raise RuleViolation("preference", f"must be one of {', '.join(p.value for p in BindingPreference)}") \
            from None
    _require_aware("at", at)
    usable: list[CandidateAssessment] = []
    unusable: list[CandidateAssessment] = []
    seen: set[str] = set()
    for voucher in candidates:
        if voucher.id in seen:
            continue
        seen.add(voucher.id)
        terms = voucher._terms()
        assert voucher.voucher_category is not None and voucher.expires_at is not None
        check = voucher.usable_for(order_amount, product_line, at, using_balance, customer_id=customer_id)
        # The value is shown for unusable candidates too ("worth 150, but not with the balance").
        same_currency = order_amount.currency == terms.currency
        value = voucher.value_for(order_amount) if same_currency else Money.zero(terms.currency)
        assessment = CandidateAssessment(
            voucher_id=voucher.id, kind=terms.kind, category=voucher.voucher_category,
            value=value, expires_at=voucher.expires_at, usable=check.usable,
            chosen=False, unusable=check.reasons,
            explanation="not usable: " + "; ".join(r.detail for r in check.reasons) if not check.usable else "")
        (usable if check.usable else unusable).append(assessment)

    usable.sort(key=lambda a: _rank_key(pref, a))
    unusable.sort(key=lambda a: a.voucher_id)
    ranked: list[CandidateAssessment] = []
    chosen = usable[0] if usable else None
    criterion = "largest value on this order" if pref is BindingPreference.LARGEST_FIRST else "soonest expiry"
    for rank, a in enumerate(usable, start=1):
        if a is chosen:
            text = (f"chosen ({pref.value}: {criterion}): worth {a.value} on this order, expires "
                    f"{a.expires_at.isoformat()}")
        else:
            assert chosen is not None
            text = f"ranked {rank}: {_why_not(pref, a, chosen)}"
        ranked.append(a.model_copy(update={"rank": rank, "chosen": a is chosen, "explanation": text}))

    total = len(usable) + len(unusable)
    if chosen is None:
        summary = f"{total} candidate(s), none usable on this order: no voucher bound"
        value = Money.zero(order_amount.currency)
    else:
        summary = (f"{total} candidate(s), {len(usable)} usable; chose {chosen.voucher_id} worth {chosen.value} "
                   f"by {pref.value}")
        value = chosen.value
    return BindingChoice(
        voucher_id=chosen.voucher_id if chosen else None, value=value, preference=pref,
        policy_version=policy_version, order_amount=order_amount, product_line=product_line,
        using_balance=using_balance, at=at, summary=summary, candidates=ranked + unusable)
