"""The prepayment policy (seed 二): does this order have to be paid before dispatch?

The policy is data (a versioned TOML file); `decide()` is a pure function of the policy,
the order's facts, the customer's standing and the platform's conditions at one moment.
It lists every rule that matched, so the decision stored in OrderPlaced explains itself.
"""

from __future__ import annotations

import tomllib
from datetime import datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.orders.domain.events import (
    Code,
    PrepaymentDecision,
    PrepaymentReason,
    PrepaymentRule,
)

__all__ = [
    "ConditionsSnapshot",
    "CustomerStanding",
    "PrepaymentDecision",
    "PrepaymentPolicy",
    "PrepaymentReason",
    "PrepaymentRule",
    "TimeWindow",
    "city_key",
    "decide",
    "parse_policy",
]

HHMM = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="local time HH:MM")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeWindow(_Frozen):
    """A daily window of local time, half-open [start, end); end before start crosses midnight."""

    start: HHMM
    end: HHMM

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == self.end:
            raise ValueError("start and end must differ (an empty or 24-hour window is ambiguous)")
        return self

    def contains(self, local: time) -> bool:
        """Whether a local wall-clock time falls inside the window."""
        start, end = time.fromisoformat(self.start), time.fromisoformat(self.end)
        if start < end:
            return start <= local < end
        return local >= start or local < end  # crosses midnight, e.g. 22:00-06:00

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


class PrepaymentPolicy(_Frozen):
    """Which orders must be prepaid, and how long the customer has to pay."""

    version: Annotated[str, Field(min_length=1, max_length=64)]
    timezone: str = "Asia/Taipei"
    payment_window_minutes: Annotated[int, Field(ge=1, le=1440)] = 15
    # Overrides the minutes when set: short windows for flash bookings (and for tests that
    # must see a deadline pass without waiting a minute).
    payment_window_seconds: Annotated[int, Field(ge=5, le=86400)] | None = None
    product_lines: frozenset[Code] = frozenset()
    time_windows: list[TimeWindow] = Field(default_factory=list)
    max_customer_cancellations: Annotated[int, Field(ge=1)] | None = None
    cancellation_lookback_days: Annotated[int, Field(ge=1, le=3650)] = 90
    min_credit_score: Annotated[int, Field(ge=0, le=1000)] | None = None
    severe_weather: bool = True
    platform_load_threshold_pct: Annotated[int, Field(ge=0, le=100)] | None = None
    flag_unprepaid_cancellation_within_hours: Annotated[int, Field(ge=0, le=24 * 30)] = 48

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def payment_window(self) -> timedelta:
        """How long the customer has to prepay."""
        if self.payment_window_seconds is not None:
            return timedelta(seconds=self.payment_window_seconds)
        return timedelta(minutes=self.payment_window_minutes)

    @property
    def tz(self) -> ZoneInfo:
        """The policy's time zone, in which time windows and schedule days are read."""
        return ZoneInfo(self.timezone)


class CustomerStanding(_Frozen):
    """What the policy knows about a customer at one moment (see Customer.standing)."""

    credit_score: Annotated[int, Field(ge=0, le=1000)] | None = None
    recent_cancellations: Annotated[int, Field(ge=0)] = 0
    flagged: bool = False
    flag_reason: str | None = None


class ConditionsSnapshot(_Frozen):
    """The platform conditions at one moment (see PlatformConditions.snapshot)."""

    severe_weather_cities: frozenset[str] = frozenset()
    load_pct: Annotated[int, Field(ge=0, le=100)] = 0


def city_key(city: str) -> str:
    """Normalise a city name for comparison: case, surrounding blanks and 台/臺 do not matter."""
    # 台北市 and 臺北市 are the same city; addresses and weather alerts use both spellings.
    return city.strip().casefold().replace("台", "臺")


def decide(policy: PrepaymentPolicy, *, product_line: str, slot_start: datetime, city: str,
           standing: CustomerStanding, conditions: ConditionsSnapshot, at: datetime) -> PrepaymentDecision:
    """Apply every rule of the policy; prepayment is required when at least one matches."""
    reasons: list[PrepaymentReason] = []

    def match(rule: PrepaymentRule, detail: str) -> None:
        reasons.append(PrepaymentReason(rule=rule, detail=detail))

    if product_line in policy.product_lines:
        match(PrepaymentRule.PRODUCT_LINE, f"product line {product_line!r} always requires prepayment")

    local_start = slot_start.astimezone(policy.tz)
    for window in policy.time_windows:
        if window.contains(local_start.time()):
            match(PrepaymentRule.TIME_OF_DAY,
                  f"slot starts at {local_start:%H:%M} {policy.timezone}, inside the window {window}")
            break  # one time-of-day reason is enough even if windows overlap

    if policy.max_customer_cancellations is not None \
            and standing.recent_cancellations >= policy.max_customer_cancellations:
        match(PrepaymentRule.CUSTOMER_CANCELLATIONS,
              f"{standing.recent_cancellations} customer-fault cancellations in the last "
              f"{policy.cancellation_lookback_days} days (limit {policy.max_customer_cancellations})")

    # An unknown score does not trigger: new customers are not punished for having no history.
    if policy.min_credit_score is not None and standing.credit_score is not None \
            and standing.credit_score < policy.min_credit_score:
        match(PrepaymentRule.CREDIT_SCORE,
              f"credit score {standing.credit_score} is below {policy.min_credit_score}")

    if standing.flagged:
        match(PrepaymentRule.CUSTOMER_FLAGGED,
              f"customer is flagged for prepayment: {standing.flag_reason or 'no reason recorded'}")

    if policy.severe_weather and city_key(city) in {city_key(c) for c in conditions.severe_weather_cities}:
        match(PrepaymentRule.SEVERE_WEATHER, f"severe weather declared in {city}")

    if policy.platform_load_threshold_pct is not None \
            and conditions.load_pct >= policy.platform_load_threshold_pct:
        match(PrepaymentRule.PLATFORM_LOAD,
              f"platform load {conditions.load_pct}% is at or above {policy.platform_load_threshold_pct}%")

    if not reasons:
        return PrepaymentDecision(
            required=False, policy_version=policy.version,
            reasons=[PrepaymentReason(rule=PrepaymentRule.NONE, detail="no prepayment rule matched")])
    # The slot is held while the customer pays, so the window never runs past the slot start.
    deadline = min(at + policy.payment_window, slot_start)
    return PrepaymentDecision(required=True, policy_version=policy.version, reasons=reasons,
                              payment_deadline=deadline)


def describe_validation_error(what: str, exc: ValidationError) -> str:
    """One line per bad key, as `key.path: message`, for configuration errors."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return f"invalid {what}: " + "; ".join(parts)


def load_toml(what: str, text: str) -> dict[str, Any]:
    """Parse TOML text, turning a syntax error into a ValueError that names the file's role."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid {what}: TOML syntax error: {exc}") from None


def parse_policy(text: str) -> PrepaymentPolicy:
    """Parse a prepayment policy from TOML; a ValueError names the bad key."""
    data = load_toml("prepayment policy", text)
    try:
        return PrepaymentPolicy.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe_validation_error("prepayment policy", exc)) from None
