"""The Wallet aggregate (stream `wallet-{customer_id}`): member stored value, 會員余額 (充X送Y).

A customer tops up paid-in money and receives a bonus by the policy's tiers ("top up
1,000 get 100"). The two are kept in separate buckets that never mix:

- paid-in money is the customer's own: the platform owes it back, so it is the only
  money that can be withdrawn (refund of a top-up);
- bonus money is a promotional grant: it pays for orders like paid-in money, but it is
  never paid out.

Every debit records how much it took from each bucket, so a refund puts money back into
exactly the buckets it came from (seed 五: 原路退回, along the original path).

A hold sets money aside for an order whose prepayment is reserved, not yet captured (a
voucher and the balance now, the card remainder at the cashier): `hold` takes it out of the
buckets like a debit, so it cannot be spent twice, but it is not spent. `capture_hold` makes
it the order's debit (refundable like any other), `release_hold` puts it back into exactly
the buckets it came from. Held money is not in the balance and cannot be withdrawn.

The policy (versioned TOML, `parse_wallet_policy`) holds the top-up tiers, the order in
which a debit draws on the buckets, and the voucher binding preference (seed 二).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from libs.domain.aggregate import Aggregate
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import CURRENCY_EXPONENTS, Currency, Money
from libs.domain.types import Code
from services.payments.domain.events import TOPIC, Id, Reference
from services.payments.domain.voucher import BindingPreference

__all__ = [
    "Bucket",
    "TopUpTier",
    "Wallet",
    "WalletAmountHeld",
    "WalletBalance",
    "WalletDebited",
    "WalletEvent",
    "WalletHoldCaptured",
    "WalletHoldReleased",
    "WalletOpened",
    "WalletPaidInWithdrawn",
    "WalletPolicy",
    "WalletRefundCredited",
    "WalletSplit",
    "WalletToppedUp",
    "parse_wallet_policy",
]

STREAM_CATEGORY = "wallet"



class Value(BaseModel):
    """Base of the immutable value objects of the wallet."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Bucket(StrEnum):
    """The two kinds of money in a wallet; they never mix."""

    PAID_IN = "paid_in"
    BONUS = "bonus"


# --- policy -------------------------------------------------------------------------------------


class TopUpTier(Value):
    """充X送Y: a top-up of at least `threshold` receives `bonus` (a fixed amount, not per multiple)."""

    code: Code
    threshold: Money
    bonus: Money


class WalletPolicy(Value):
    """Top-up bonus tiers, the order in which debits draw on the buckets, and voucher binding.

    Spend order, default paid-in first, then bonus:

    - paid-in money is a debt the platform owes the customer (withdrawable, and in Taiwan
      stored value must be backed by a trust or bank guarantee); drawing it down first
      keeps that liability, and the cash that must be guaranteed, as small as possible;
    - bonus money is a promotional grant whose purpose is to bring the member back; using
      it last keeps that incentive in the wallet for the next order;
    - it does not cost the customer anything when refunding an order: a refund returns
      money to the buckets the debit took it from.

    `["bonus", "paid_in"]` is accepted for operators who prefer to burn promotions first.
    """

    version: Annotated[str, Field(min_length=1, max_length=64)]
    currency: Currency = "TWD"
    top_up_tiers: list[TopUpTier] = Field(default_factory=list)
    spend_order: list[Bucket] = Field(default_factory=lambda: [Bucket.PAID_IN, Bucket.BONUS])
    binding_preference: BindingPreference = BindingPreference.LARGEST_FIRST

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in CURRENCY_EXPONENTS:
            raise ValueError(f"unsupported currency {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WalletPolicy:
        if sorted(self.spend_order) != sorted(Bucket):
            raise ValueError("spend_order: must name paid_in and bonus once each, e.g. [\"paid_in\", \"bonus\"]")
        codes: set[str] = set()
        thresholds: set[int] = set()
        for i, tier in enumerate(self.top_up_tiers):
            key = f"top_up_tiers.{i}"
            for name, money in (("threshold", tier.threshold), ("bonus", tier.bonus)):
                if money.currency != self.currency:
                    raise ValueError(f"{key}.{name}.currency: {money.currency} differs from the policy "
                                     f"currency {self.currency}")
                if money.amount <= 0:
                    raise ValueError(f"{key}.{name}: must be positive")
            if tier.bonus > tier.threshold:
                raise ValueError(f"{key}.bonus: must not exceed the threshold (a bonus above the top-up)")
            if tier.code in codes:
                raise ValueError(f"{key}.code: duplicate tier code {tier.code!r}")
            if tier.threshold.amount in thresholds:
                raise ValueError(f"{key}.threshold: two tiers with the threshold {tier.threshold}")
            codes.add(tier.code)
            thresholds.add(tier.threshold.amount)
        ordered = sorted(self.top_up_tiers, key=lambda t: t.threshold.amount)
        for lower, higher in pairwise(ordered):
            if higher.bonus < lower.bonus:
                i = self.top_up_tiers.index(higher)
                raise ValueError(f"top_up_tiers.{i}.bonus: a higher tier ({higher.code}) must not give less "
                                 f"than a lower one ({lower.code})")
        return self

    def tier_for(self, paid_in: Money) -> TopUpTier | None:
        """The highest tier whose threshold is at most `paid_in`; None below the lowest tier."""
        eligible = [t for t in self.top_up_tiers if t.threshold.currency == paid_in.currency and t.threshold <= paid_in]
        return max(eligible, key=lambda t: t.threshold.amount, default=None)


def _describe_validation_error(what: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid {what}: " + "; ".join(parts)


def parse_wallet_policy(text: str) -> WalletPolicy:
    """Parse the wallet policy from TOML; a ValueError names the bad key."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid wallet policy: TOML syntax error: {exc}") from None
    try:
        return WalletPolicy.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_describe_validation_error("wallet policy", exc)) from None


# --- value objects and events -------------------------------------------------------------------


class WalletBalance(Value):
    """The two buckets and their total."""

    paid_in: Money
    bonus: Money
    total: Money


class WalletSplit(Value):
    """How an amount is (or would be) split between the buckets."""

    paid_in: Money
    bonus: Money


class WalletEvent(DomainEvent):
    """Base of the Wallet aggregate's events; `balance_after` lets read models skip replay."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    customer_id: Id


class WalletOpened(WalletEvent):
    """The customer's wallet exists, in one currency."""

    currency: Currency
    at: AwareDatetime


class WalletToppedUp(WalletEvent):
    """Paid-in money arrived, with the bonus of the tier it reached under the policy in force."""

    reference: Reference = Field(description="the payment reference of the top-up; idempotency key")
    paid_in: Money
    bonus: Money
    tier: TopUpTier | None = Field(description="the tier applied, as it was; None below the lowest tier")
    policy_version: Annotated[str, Field(min_length=1, max_length=64)]
    balance_after: WalletBalance
    at: AwareDatetime


class WalletDebited(WalletEvent):
    """The wallet paid for (part of) an order; the split records which buckets paid."""

    order_id: Id
    reference: Reference
    amount: Money
    from_paid_in: Money
    from_bonus: Money
    spend_order: list[Bucket]
    policy_version: Annotated[str, Field(min_length=1, max_length=64)]
    balance_after: WalletBalance
    at: AwareDatetime


class WalletAmountHeld(WalletEvent):
    """Money is set aside for an order's reserved prepayment: out of the buckets (split as a debit
    would take it), not spent until the hold is captured or released."""

    order_id: Id
    reference: Reference = Field(description="the hold's key with the order; the debit's once captured")
    amount: Money
    from_paid_in: Money
    from_bonus: Money
    spend_order: list[Bucket]
    policy_version: Annotated[str, Field(min_length=1, max_length=64)]
    balance_after: WalletBalance
    at: AwareDatetime


class WalletHoldCaptured(WalletEvent):
    """The held money paid the order: the hold is now the order's debit (refundable along its split).
    The balance does not change: the money left the buckets when it was held."""

    order_id: Id
    reference: Reference
    amount: Money
    from_paid_in: Money
    from_bonus: Money
    balance_after: WalletBalance
    at: AwareDatetime


class WalletHoldReleased(WalletEvent):
    """The hold ended without payment (the reservation or the order was cancelled): the money is back
    in the buckets it came from."""

    order_id: Id
    reference: Reference
    amount: Money
    to_paid_in: Money
    to_bonus: Money
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    balance_after: WalletBalance
    at: AwareDatetime


class WalletRefundCredited(WalletEvent):
    """Money of a debit came back (order cancelled or refunded), into the buckets it came from."""

    order_id: Id
    debit_reference: Reference
    reference: Reference | None = Field(default=None, description="idempotency key of the refund, if given")
    amount: Money
    to_paid_in: Money
    to_bonus: Money
    balance_after: WalletBalance
    at: AwareDatetime


class WalletPaidInWithdrawn(WalletEvent):
    """Paid-in money of a top-up was paid back out; its bonus is forfeited in proportion.

    `paid_in` leaves the paid-in bucket and `bonus_forfeited` the bonus bucket. When the
    bonus was already spent, the missing part (`clawed_back`) is kept out of the payout:
    `paid_out = paid_in - clawed_back`.
    """

    top_up_reference: Reference
    reference: Reference
    paid_in: Money
    bonus_forfeited: Money
    clawed_back: Money
    paid_out: Money
    balance_after: WalletBalance
    at: AwareDatetime


# --- the aggregate ------------------------------------------------------------------------------


@dataclass(slots=True)
class _TopUp:
    paid_in: int
    bonus: int
    withdrawn: int = 0
    forfeited: int = 0


@dataclass(slots=True)
class _Debit:
    amount: int
    from_paid_in: int
    from_bonus: int
    refunded_paid_in: int = 0
    refunded_bonus: int = 0

    @property
    def refundable(self) -> int:
        return self.amount - self.refunded_paid_in - self.refunded_bonus


class _HoldState(StrEnum):
    HELD = "held"
    CAPTURED = "captured"
    RELEASED = "released"


@dataclass(slots=True)
class _Hold:
    amount: int
    from_paid_in: int
    from_bonus: int
    state: _HoldState = _HoldState.HELD


@dataclass(frozen=True, slots=True)
class _Keyed:
    """An operation kept for idempotency: what it was about and its amount."""

    about: tuple[str, ...]
    amount: int


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


class Wallet(Aggregate):
    """A customer's stored value: paid-in and bonus buckets, top-ups, debits, refunds, withdrawals."""

    category = STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.currency: str | None = None
        self.opened_at: datetime | None = None
        self.paid_in: int = 0  # minor units
        self.bonus: int = 0
        self.top_ups: dict[str, _TopUp] = {}
        self.debits: dict[tuple[str, str], _Debit] = {}
        self.refunds: dict[str, _Keyed] = {}
        self.withdrawals: dict[str, _Keyed] = {}
        self.holds: dict[tuple[str, str], _Hold] = {}  # (order_id, reference) -> the latest hold

    # --- queries ------------------------------------------------------------------------

    def allowed_commands(self) -> list[str]:
        """Every command once the wallet is open; none before."""
        return ["capture_hold", "credit_refund", "debit", "hold", "release_hold", "top_up",
                "withdraw_paid_in"] if self.currency else []

    def _money(self, amount: int) -> Money:
        assert self.currency is not None
        return Money(amount=amount, currency=self.currency)

    @property
    def balance(self) -> WalletBalance:
        """Paid-in, bonus and total (NotFound before the wallet is opened)."""
        self._require_open()
        return WalletBalance(paid_in=self._money(self.paid_in), bonus=self._money(self.bonus),
                             total=self._money(self.paid_in + self.bonus))

    @property
    def held(self) -> Money:
        """Money set aside by holds not yet captured or released (not part of the balance)."""
        self._require_open()
        return self._money(sum(h.amount for h in self.holds.values() if h.state is _HoldState.HELD))

    def holding(self, order_id: str, reference: str) -> Money | None:
        """The amount of an open hold, or None."""
        hold = self.holds.get((order_id, reference))
        return self._money(hold.amount) if hold is not None and hold.state is _HoldState.HELD else None

    @property
    def is_member(self) -> bool:
        """A member is a customer whose wallet has received at least one top-up (seed 三)."""
        return bool(self.top_ups)

    def can_pay(self, amount: Money) -> bool:
        """Whether the whole `amount` can be paid from the wallet (seed 三/四: 會員卡余額充足)."""
        return self.currency == amount.currency and 0 <= amount.amount <= self.paid_in + self.bonus

    def preview_debit(self, amount: Money, policy: WalletPolicy) -> WalletSplit:
        """How `debit` would split `amount` now, without recording anything."""
        self._require_open()
        self._require_amount("amount", amount)
        self._require_funds(amount)
        return self._split(amount.amount, policy.spend_order)

    def refundable(self, order_id: str, debit_reference: str) -> Money:
        """What of one debit can still be refunded (debited minus earlier refunds)."""
        return self._money(self._debit(order_id, debit_reference).refundable)

    def withdrawable(self, top_up_reference: str) -> Money:
        """Paid-in money of one top-up that can still be withdrawn (also limited by the bucket)."""
        top_up = self._top_up(top_up_reference)
        return self._money(min(top_up.paid_in - top_up.withdrawn, self.paid_in))

    # --- checks -------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self.currency is None:
            raise NotFound(f"wallet of customer {self.id} does not exist", customer_id=self.id)

    def _require_amount(self, field: str, amount: Money) -> None:
        if amount.currency != self.currency:
            raise RuleViolation(f"{field}.currency", f"must be {self.currency}, the wallet's currency")
        if amount.amount <= 0:
            raise RuleViolation(field, "must be positive")

    def _require_funds(self, amount: Money) -> None:
        if amount.amount > self.paid_in + self.bonus:
            raise RuleViolation("amount", f"the wallet holds {self._money(self.paid_in + self.bonus)} "
                                          f"(paid-in {self._money(self.paid_in)}, bonus {self._money(self.bonus)}), "
                                          f"less than {amount}")

    def _debit(self, order_id: str, reference: str) -> _Debit:
        self._require_open()
        debit = self.debits.get((order_id, reference))
        if debit is None:
            raise RuleViolation("original_debit_reference",
                                f"no debit {reference!r} for order {order_id} in this wallet")
        return debit

    def _top_up(self, reference: str) -> _TopUp:
        self._require_open()
        top_up = self.top_ups.get(reference)
        if top_up is None:
            raise RuleViolation("top_up_reference", f"no top-up {reference!r} in this wallet")
        return top_up

    def _split(self, amount: int, order: list[Bucket]) -> WalletSplit:
        available = {Bucket.PAID_IN: self.paid_in, Bucket.BONUS: self.bonus}
        taken = {Bucket.PAID_IN: 0, Bucket.BONUS: 0}
        rest = amount
        for bucket in order:
            taken[bucket] = min(rest, available[bucket])
            rest -= taken[bucket]
        assert rest == 0
        return WalletSplit(paid_in=self._money(taken[Bucket.PAID_IN]), bonus=self._money(taken[Bucket.BONUS]))

    def _after(self, paid_in_delta: int, bonus_delta: int) -> WalletBalance:
        paid_in, bonus = self.paid_in + paid_in_delta, self.bonus + bonus_delta
        return WalletBalance(paid_in=self._money(paid_in), bonus=self._money(bonus),
                             total=self._money(paid_in + bonus))

    # --- commands -----------------------------------------------------------------------

    @classmethod
    def open(cls, customer_id: str, currency: str, at: datetime) -> Wallet:
        """Open the customer's wallet in one currency."""
        if currency not in CURRENCY_EXPONENTS:
            raise RuleViolation("currency", f"unsupported currency {currency!r}")
        wallet = cls(customer_id)
        wallet._record(WalletOpened(customer_id=customer_id, currency=currency, at=at))
        return wallet

    def top_up(self, paid_in: Money, reference: str, at: datetime, policy: WalletPolicy) -> None:
        """Add paid-in money and the bonus of the highest tier it reaches; idempotent per reference."""
        self._require_open()
        existing = self.top_ups.get(reference)
        if existing is not None:
            if existing.paid_in != paid_in.amount or paid_in.currency != self.currency:
                raise Conflict(f"top-up {reference!r} was already recorded for {self._money(existing.paid_in)}, "
                               f"not {paid_in}", reference=reference)
            return
        self._require_amount("amount", paid_in)  # the field the command and the API call it
        if policy.currency != self.currency:
            raise RuleViolation("policy.currency", f"the policy is in {policy.currency}, the wallet in {self.currency}")
        tier = policy.tier_for(paid_in)
        bonus = tier.bonus.amount if tier else 0
        self._record(WalletToppedUp(
            customer_id=self.id, reference=reference, paid_in=paid_in, bonus=self._money(bonus), tier=tier,
            policy_version=policy.version, balance_after=self._after(paid_in.amount, bonus), at=at))

    def debit(self, amount: Money, order_id: str, reference: str, at: datetime, policy: WalletPolicy) -> None:
        """Pay `amount` for an order from the buckets in the policy's spend order.

        Idempotent per (order_id, reference): the same debit again changes nothing; the
        same key with another amount is a Conflict.
        """
        self._require_open()
        existing = self.debits.get((order_id, reference))
        if existing is not None:
            if existing.amount != amount.amount or amount.currency != self.currency:
                raise Conflict(f"debit {reference!r} of order {order_id} was already recorded for "
                               f"{self._money(existing.amount)}, not {amount}", reference=reference)
            return
        self._take(WalletDebited, amount, order_id, reference, at, policy)

    def hold(self, amount: Money, order_id: str, reference: str, at: datetime, policy: WalletPolicy) -> None:
        """Set `amount` aside for an order, split over the buckets in the policy's spend order.

        Idempotent per (order_id, reference) while the hold is open: the same hold again changes
        nothing, another amount is a Conflict. A released hold may be held again (a new reservation);
        a captured one, or a key already debited, is a Conflict.
        """
        self._require_open()
        key = (order_id, reference)
        existing = self.holds.get(key)
        if existing is not None and existing.state is _HoldState.HELD:
            if existing.amount != amount.amount or amount.currency != self.currency:
                raise Conflict(f"hold {reference!r} of order {order_id} is open for {self._money(existing.amount)}, "
                               f"not {amount}", reference=reference)
            return
        if key in self.debits:
            raise Conflict(f"{reference!r} of order {order_id} is already debited", reference=reference)
        self._take(WalletAmountHeld, amount, order_id, reference, at, policy)

    def _take(self, event: type[WalletDebited] | type[WalletAmountHeld], amount: Money, order_id: str,
              reference: str, at: datetime, policy: WalletPolicy) -> None:
        """Take `amount` out of the balance (a debit, or a hold), split over the policy's spend order."""
        self._require_amount("amount", amount)
        self._require_funds(amount)
        split = self._split(amount.amount, policy.spend_order)
        self._record(event(
            customer_id=self.id, order_id=order_id, reference=reference, amount=amount,
            from_paid_in=split.paid_in, from_bonus=split.bonus, spend_order=list(policy.spend_order),
            policy_version=policy.version,
            balance_after=self._after(-split.paid_in.amount, -split.bonus.amount), at=at))

    def _hold(self, order_id: str, reference: str) -> _Hold:
        self._require_open()
        hold = self.holds.get((order_id, reference))
        if hold is None:
            raise RuleViolation("reference", f"no hold {reference!r} for order {order_id} in this wallet")
        return hold

    def capture_hold(self, order_id: str, reference: str, at: datetime) -> None:
        """The held money pays the order: the hold becomes its debit (same key, same split). Repeating it
        changes nothing; a released hold cannot be captured."""
        hold = self._hold(order_id, reference)
        if hold.state is _HoldState.CAPTURED:
            return
        if hold.state is _HoldState.RELEASED:
            raise Conflict(f"hold {reference!r} of order {order_id} was released; nothing to capture",
                           reference=reference)
        self._record(WalletHoldCaptured(
            customer_id=self.id, order_id=order_id, reference=reference, amount=self._money(hold.amount),
            from_paid_in=self._money(hold.from_paid_in), from_bonus=self._money(hold.from_bonus),
            balance_after=self._after(0, 0), at=at))

    def release_hold(self, order_id: str, reference: str, reason: str, at: datetime) -> None:
        """Put the held money back into the buckets it came from. Repeating it changes nothing; a
        captured hold is the order's debit now (refund it with `credit_refund`)."""
        hold = self._hold(order_id, reference)
        if hold.state is _HoldState.RELEASED:
            return
        if hold.state is _HoldState.CAPTURED:
            raise Conflict(f"hold {reference!r} of order {order_id} was captured: refund it instead",
                           reference=reference)
        self._record(WalletHoldReleased(
            customer_id=self.id, order_id=order_id, reference=reference, amount=self._money(hold.amount),
            to_paid_in=self._money(hold.from_paid_in), to_bonus=self._money(hold.from_bonus), reason=reason,
            balance_after=self._after(hold.from_paid_in, hold.from_bonus), at=at))

    def credit_refund(self, amount: Money, order_id: str, original_debit_reference: str, at: datetime, *,
                      reference: str | None = None) -> None:
        """Return money of one debit to the buckets it came from.

        Never more than the debit minus its earlier refunds. A partial refund goes back to
        paid-in first, then bonus: like the seed's refund priority (五: money the customer
        paid before money the platform granted), so a penalty kept from a refund is taken
        from the bonus part first. With `reference`, a repeated refund changes nothing.
        """
        debit = self._debit(order_id, original_debit_reference)
        about = (order_id, original_debit_reference)
        if reference is not None and reference in self.refunds:
            seen = self.refunds[reference]
            if seen.about != about or seen.amount != amount.amount or amount.currency != self.currency:
                raise Conflict(f"refund {reference!r} was already recorded for {self._money(seen.amount)} of debit "
                               f"{seen.about[1]!r} (order {seen.about[0]})", reference=reference)
            return
        self._require_amount("amount", amount)
        if amount.amount > debit.refundable:
            raise RuleViolation("amount", f"at most {self._money(debit.refundable)} of debit "
                                          f"{original_debit_reference!r} can still be refunded (debited "
                                          f"{self._money(debit.amount)}, refunded "
                                          f"{self._money(debit.amount - debit.refundable)})")
        to_paid_in = min(amount.amount, debit.from_paid_in - debit.refunded_paid_in)
        to_bonus = amount.amount - to_paid_in
        assert to_bonus <= debit.from_bonus - debit.refunded_bonus
        self._record(WalletRefundCredited(
            customer_id=self.id, order_id=order_id, debit_reference=original_debit_reference, reference=reference,
            amount=amount, to_paid_in=self._money(to_paid_in), to_bonus=self._money(to_bonus),
            balance_after=self._after(to_paid_in, to_bonus), at=at))

    def withdraw_paid_in(self, top_up_reference: str, amount: Money, reference: str, at: datetime) -> None:
        """Pay paid-in money of one top-up back out (refund of a top-up); only paid-in money is refundable.

        The top-up's bonus is forfeited in proportion to the paid-in money taken back,
        rounded up and computed on the running total so the whole bonus is forfeited
        exactly when the whole top-up is withdrawn: forfeited so far =
        ceil(bonus x withdrawn so far / paid_in). A customer keeps bonus only for paid-in
        money left in. Forfeited bonus that was already spent is kept out of the payout
        (clawed back). Idempotent per `reference`.
        """
        top_up = self._top_up(top_up_reference)
        if reference in self.withdrawals:
            seen = self.withdrawals[reference]
            if seen.about != (top_up_reference,) or seen.amount != amount.amount or amount.currency != self.currency:
                raise Conflict(f"withdrawal {reference!r} was already recorded for {self._money(seen.amount)} of "
                               f"top-up {seen.about[0]!r}", reference=reference)
            return
        self._require_amount("amount", amount)
        limit = min(top_up.paid_in - top_up.withdrawn, self.paid_in)
        if amount.amount > limit:
            raise RuleViolation("amount", f"at most {self._money(limit)} can be withdrawn from top-up "
                                          f"{top_up_reference!r} (unwithdrawn paid-in "
                                          f"{self._money(top_up.paid_in - top_up.withdrawn)}, paid-in balance "
                                          f"{self._money(self.paid_in)})")
        forfeit = _ceil_div(top_up.bonus * (top_up.withdrawn + amount.amount), top_up.paid_in) - top_up.forfeited
        from_bonus = min(forfeit, self.bonus)
        clawed_back = min(forfeit - from_bonus, amount.amount)
        self._record(WalletPaidInWithdrawn(
            customer_id=self.id, top_up_reference=top_up_reference, reference=reference, paid_in=amount,
            bonus_forfeited=self._money(from_bonus), clawed_back=self._money(clawed_back),
            paid_out=self._money(amount.amount - clawed_back),
            balance_after=self._after(-amount.amount, -from_bonus), at=at))

    # --- evolution ----------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case WalletOpened():
                self.currency, self.opened_at = event.currency, event.at
            case WalletToppedUp():
                self.top_ups[event.reference] = _TopUp(paid_in=event.paid_in.amount, bonus=event.bonus.amount)
                self.paid_in += event.paid_in.amount
                self.bonus += event.bonus.amount
            case WalletDebited():
                self.debits[(event.order_id, event.reference)] = _Debit(
                    amount=event.amount.amount, from_paid_in=event.from_paid_in.amount,
                    from_bonus=event.from_bonus.amount)
                self.paid_in -= event.from_paid_in.amount
                self.bonus -= event.from_bonus.amount
            case WalletAmountHeld():
                self.holds[(event.order_id, event.reference)] = _Hold(
                    amount=event.amount.amount, from_paid_in=event.from_paid_in.amount,
                    from_bonus=event.from_bonus.amount)
                self.paid_in -= event.from_paid_in.amount
                self.bonus -= event.from_bonus.amount
            case WalletHoldCaptured():
                self.holds[(event.order_id, event.reference)].state = _HoldState.CAPTURED
                self.debits[(event.order_id, event.reference)] = _Debit(
                    amount=event.amount.amount, from_paid_in=event.from_paid_in.amount,
                    from_bonus=event.from_bonus.amount)
            case WalletHoldReleased():
                self.holds[(event.order_id, event.reference)].state = _HoldState.RELEASED
                self.paid_in += event.to_paid_in.amount
                self.bonus += event.to_bonus.amount
            case WalletRefundCredited():
                debit = self.debits[(event.order_id, event.debit_reference)]
                debit.refunded_paid_in += event.to_paid_in.amount
                debit.refunded_bonus += event.to_bonus.amount
                if event.reference is not None:
                    self.refunds[event.reference] = _Keyed((event.order_id, event.debit_reference),
                                                           event.amount.amount)
                self.paid_in += event.to_paid_in.amount
                self.bonus += event.to_bonus.amount
            case WalletPaidInWithdrawn():
                top_up = self.top_ups[event.top_up_reference]
                top_up.withdrawn += event.paid_in.amount
                # The whole proportional forfeit is settled: from the bucket, or clawed back.
                top_up.forfeited += event.bonus_forfeited.amount + event.clawed_back.amount
                self.withdrawals[event.reference] = _Keyed((event.top_up_reference,), event.paid_in.amount)
                self.paid_in -= event.paid_in.amount
                self.bonus -= event.bonus_forfeited.amount
            case _:
                raise TypeError(f"Wallet cannot apply {type(event).__name__}")
