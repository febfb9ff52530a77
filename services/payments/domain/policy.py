"""The cancellation policy (seed 五): penalty windows, voucher handling and compensation, versioned.

The policy is data (services/payments/config/cancellation_policy.toml holds every version
ever in force); this module parses it and picks the version that applies. The rule is
"the policy in force when the order was placed": `policy_in_force(policies, placed_at)` is
the latest version whose `effective_from` is not after the placement, so changing the
windows never changes the terms of orders already placed. The chosen version is stored in
TransactionOpened and named again in every CancellationPlan.

Amounts are integer minor units of the policy's currency; hours and days are whole numbers.
Windows are half-open: a penalty window `below_hours = 24` holds every T with T < 24 h,
so exactly 24 h 0 s before the start already belongs to the next window.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from libs.domain.errors import RuleViolation
from libs.domain.money import CURRENCY_EXPONENTS, MAX_MINOR_UNITS, Currency, Money
from services.payments.domain.events import Rate

__all__ = [
    "CancellationPolicy",
    "CompensationAmounts",
    "CompensationWindow",
    "ExpiredVoucherAction",
    "HighValueCustomer",
    "PenaltyWindow",
    "parse_policies",
    "policy_by_version",
    "policy_in_force",
]

MinorUnits = Annotated[int, Field(ge=0, le=MAX_MINOR_UNITS, description="integer minor units of the currency")]
Hours = Annotated[int, Field(ge=-24 * 365, le=24 * 365)]

HOUR = 3600
DAY = 24 * HOUR


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PenaltyWindow(_Frozen):
    """A customer-fault cancellation less than `below_hours` before the start pays this rate of online_paid."""

    below_hours: Hours
    rate_numerator: Annotated[int, Field(ge=0)]
    rate_denominator: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _rate_at_most_one(self) -> PenaltyWindow:
        if self.rate_numerator > self.rate_denominator:
            raise ValueError("a penalty rate is at most 1 (rate_numerator <= rate_denominator)")
        return self

    @property
    def rate(self) -> Rate:
        """The window's rate as an exact fraction."""
        return Rate(numerator=self.rate_numerator, denominator=self.rate_denominator)


class CompensationWindow(_Frozen):
    """What the platform pays the merchant when an unprepaid order is cancelled less than `below_hours` ahead."""

    below_hours: Hours
    amount: MinorUnits


class CompensationAmounts(_Frozen):
    """The compensation voucher of each rule (seed 五, the four examples); 0 switches a rule off.

    The fourth example, a voucher that comes back expired, is replaced by a voucher of its
    own value (see `expired_voucher_action`), so it has no amount here.
    """

    loyal_customer_complaint: MinorUnits = 0
    no_merchant_available: MinorUnits = 0
    late_cancellation: MinorUnits = 0


class HighValueCustomer(_Frozen):
    """Who counts as a long-standing high-value customer (長期忠實高價值用戶): both thresholds met."""

    min_tenure_days: Annotated[int, Field(ge=0)]
    min_lifetime_value: MinorUnits


class ExpiredVoucherAction(StrEnum):
    """What to do with a voucher that would come back expired (or within the grace days of expiry)."""

    EXTEND = "extend"  # give it back with a later expiry
    COMPENSATE = "compensate"  # give a new compensation voucher of the same value instead


def _ascending(windows: Sequence[PenaltyWindow] | Sequence[CompensationWindow], name: str) -> None:
    hours = [w.below_hours for w in windows]
    if hours != sorted(set(hours)):
        raise ValueError(f"{name} must be in strictly ascending order of below_hours")


class CancellationPolicy(_Frozen):
    """One version of the cancellation policy, in force from `effective_from` until the next version."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    effective_from: AwareDatetime
    currency: Currency
    # Customer fault, prepaid: the first window with T < below_hours applies; after the last, no penalty.
    penalty_windows: list[PenaltyWindow]
    # Customer fault, unprepaid: the platform compensates the merchant (first window with T < below_hours).
    merchant_compensation: list[CompensationWindow] = Field(default_factory=list)
    # Returned vouchers expiring at or before now + grace days are extended or replaced.
    voucher_grace_days: Annotated[int, Field(ge=0, le=365)] = 0
    voucher_extension_days: Annotated[int, Field(ge=1, le=365)] = 30
    expired_voucher_action: ExpiredVoucherAction = ExpiredVoucherAction.EXTEND
    compensation_voucher_valid_days: Annotated[int, Field(ge=1, le=3650)] = 90
    compensation: CompensationAmounts = CompensationAmounts()
    # Merchant/platform fault less than this many hours before the start -> late_cancellation voucher.
    close_to_start_hours: Annotated[int, Field(ge=0, le=24 * 365)] = 0
    high_value: HighValueCustomer
    # Merchant/platform fault after this many failed dispatch rounds -> no_merchant_available voucher.
    dispatch_attempts_threshold: Annotated[int, Field(ge=1)] = 3

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in CURRENCY_EXPONENTS:
            raise ValueError(f"unsupported currency {value!r}")
        return value

    @model_validator(mode="after")
    def _windows_ascending(self) -> CancellationPolicy:
        _ascending(self.penalty_windows, "penalty_windows")
        _ascending(self.merchant_compensation, "merchant_compensation")
        return self

    def money(self, minor_units: int) -> Money:
        """An amount of the policy in its currency."""
        return Money(amount=minor_units, currency=self.currency)

    def penalty_window(self, seconds_before_start: int) -> PenaltyWindow | None:
        """The window a cancellation T seconds before the start falls in; None = no penalty."""
        for window in self.penalty_windows:
            if seconds_before_start < window.below_hours * HOUR:
                return window
        return None

    def penalty_rate(self, seconds_before_start: int) -> Rate:
        """The rate of online_paid a customer-fault cancellation T seconds before the start costs."""
        window = self.penalty_window(seconds_before_start)
        return window.rate if window else Rate(numerator=0, denominator=1)

    def merchant_compensation_for(self, seconds_before_start: int) -> Money:
        """What the platform pays the merchant for an unprepaid customer-fault cancellation T seconds ahead."""
        for window in self.merchant_compensation:
            if seconds_before_start < window.below_hours * HOUR:
                return self.money(window.amount)
        return self.money(0)


class _PolicyFile(_Frozen):
    policy: Annotated[list[CancellationPolicy], Field(min_length=1)]


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid cancellation policy: " + "; ".join(parts)


def parse_policies(text: str) -> list[CancellationPolicy]:
    """Parse every version (`[[policy]]` tables) from TOML, oldest first; a ValueError names the bad key."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid cancellation policy: TOML syntax error: {exc}") from None
    try:
        policies = _PolicyFile.model_validate(data).policy
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None
    versions = [p.version for p in policies]
    if len(set(versions)) != len(versions):
        raise ValueError("invalid cancellation policy: policy.version: each version must appear once")
    starts = [p.effective_from for p in policies]
    if len(set(starts)) != len(starts):
        raise ValueError("invalid cancellation policy: policy.effective_from: two versions start at the same time")
    return sorted(policies, key=lambda p: p.effective_from)


def policy_in_force(policies: Sequence[CancellationPolicy], placed_at: datetime) -> CancellationPolicy:
    """The version in force when the order was placed: the latest with effective_from <= placed_at."""
    if placed_at.tzinfo is None or placed_at.utcoffset() is None:
        raise RuleViolation("placed_at", "must be a time-zone-aware datetime")
    candidates = [p for p in policies if p.effective_from <= placed_at]
    if not candidates:
        earliest = min((p.effective_from for p in policies), default=None)
        raise RuleViolation("placed_at", f"no cancellation policy was in force at {placed_at.isoformat()}"
                            + (f"; the first one takes effect {earliest.isoformat()}" if earliest else ""))
    return max(candidates, key=lambda p: p.effective_from)


def policy_by_version(policies: Sequence[CancellationPolicy], version: str) -> CancellationPolicy:
    """The policy with this version (the one a transaction was opened under)."""
    for policy in policies:
        if policy.version == version:
            return policy
    raise RuleViolation("policy_version", f"unknown cancellation policy version {version!r}")
