"""Money as integer minor units plus an ISO 4217 currency. Never a float.

Arithmetic refuses to mix currencies; division-like operations take an explicit
rounding rule so that every rounding decision is visible where money is split.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

# ISO 4217 codes we accept, with their minor-unit exponent. The list is deliberately
# explicit: an unknown code is refused at the edge (422) instead of silently accepted.
CURRENCY_EXPONENTS: dict[str, int] = {
    "TWD": 2, "CNY": 2, "HKD": 2, "USD": 2, "EUR": 2, "GBP": 2, "SGD": 2, "AUD": 2,
    "CAD": 2, "CHF": 2, "MYR": 2, "THB": 2, "JPY": 0, "KRW": 0, "VND": 0,
}

# Largest amount we accept in minor units: 10^15 fits in a PostgreSQL bigint with room
# for sums of many amounts, and is far above any single order.
MAX_MINOR_UNITS = 10**15

Currency = Annotated[str, Field(min_length=3, max_length=3, pattern=r"^[A-Z]{3}$",
                                description="ISO 4217 currency code, e.g. TWD")]


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined."""


class Money(BaseModel):
    """An amount in integer minor units (cents, fen) and its ISO 4217 currency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: StrictInt = Field(description="integer minor units, e.g. 150000 = TWD 1,500.00",
                              ge=-MAX_MINOR_UNITS, le=MAX_MINOR_UNITS)
    currency: Currency

    @field_validator("currency")
    @classmethod
    def _known_currency(cls, value: str) -> str:
        if value not in CURRENCY_EXPONENTS:
            raise ValueError(f"unsupported currency {value!r}; supported: {', '.join(sorted(CURRENCY_EXPONENTS))}")
        return value

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(amount=0, currency=currency)

    def _same(self, other: Money) -> None:
        if self.currency != other.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same(other)
        return Money(amount=self.amount + other.amount, currency=self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same(other)
        return Money(amount=self.amount - other.amount, currency=self.currency)

    def __neg__(self) -> Money:
        return Money(amount=-self.amount, currency=self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same(other)
        return self.amount <= other.amount

    def __gt__(self, other: Money) -> bool:
        self._same(other)
        return self.amount > other.amount

    def __ge__(self, other: Money) -> bool:
        self._same(other)
        return self.amount >= other.amount

    def times(self, quantity: int) -> Money:
        """Multiply by an integer quantity (units, minutes)."""
        if not isinstance(quantity, int) or isinstance(quantity, bool):
            raise TypeError("quantity must be an int")
        return Money(amount=self.amount * quantity, currency=self.currency)

    def fraction(self, numerator: int, denominator: int) -> Money:
        """self * numerator / denominator, rounded half-up in favour of nobody in particular.

        Half-up on the absolute value (0.5 minor unit goes away from zero), the usual
        commercial rounding. Integer arithmetic only.
        """
        if denominator <= 0:
            raise ValueError("denominator must be positive")
        sign = -1 if self.amount < 0 else 1
        q, r = divmod(abs(self.amount) * numerator, denominator)
        if 2 * r >= denominator:
            q += 1
        return Money(amount=sign * q, currency=self.currency)

    @property
    def is_zero(self) -> bool:
        return self.amount == 0

    def format(self) -> str:
        exp = CURRENCY_EXPONENTS[self.currency]
        if exp == 0:
            return f"{self.currency} {self.amount:,}"
        sign = "-" if self.amount < 0 else ""
        whole, minor = divmod(abs(self.amount), 10**exp)
        return f"{sign}{self.currency} {whole:,}.{minor:0{exp}d}"

    def __str__(self) -> str:
        return self.format()
