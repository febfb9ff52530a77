"""The service catalogue (what can be booked, at which hourly rate) and price estimates."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from libs.domain.errors import RuleViolation
from libs.domain.money import Currency, Money
from services.orders.domain.events import Code, Id, Name, ServiceSnapshot, Slot
from services.orders.domain.prepayment import describe_validation_error, load_toml


class ServiceItem(BaseModel):
    """A bookable service, billed by the hour."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    service_code: Id
    product_line: Code
    name: Name
    hourly_rate: Money
    min_minutes: Annotated[int, Field(ge=1, le=720)] = 60

    def snapshot(self) -> ServiceSnapshot:
        """The copy of this item an order keeps, so later price changes do not touch it."""
        return ServiceSnapshot(service_code=self.service_code, product_line=self.product_line,
                               name=self.name, hourly_rate=self.hourly_rate)


class Catalogue(BaseModel):
    """All bookable services of one market, priced in one currency."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    currency: Currency
    services: Annotated[list[ServiceItem], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> Catalogue:
        seen: set[str] = set()
        for i, item in enumerate(self.services):
            if item.service_code in seen:
                raise ValueError(f"services[{i}].service_code: duplicate code {item.service_code!r}")
            seen.add(item.service_code)
            if item.hourly_rate.currency != self.currency:
                raise ValueError(f"services[{i}].hourly_rate.currency: {item.hourly_rate.currency} "
                                 f"differs from the catalogue currency {self.currency}")
            if item.hourly_rate.amount <= 0:
                raise ValueError(f"services[{i}].hourly_rate.amount: must be positive")
        return self

    @property
    def codes(self) -> list[str]:
        """The service codes, sorted."""
        return sorted(item.service_code for item in self.services)

    def get(self, service_code: str) -> ServiceItem:
        """The item with this code, or RuleViolation naming the known codes."""
        for item in self.services:
            if item.service_code == service_code:
                return item
        raise RuleViolation("service.service_code",
                            f"unknown service code {service_code!r}; known: {', '.join(self.codes)}")

    def check_currency(self, currency: str | None, field: str = "currency") -> None:
        """Refuse a requested currency other than the catalogue's (None means 'whatever it is')."""
        if currency is not None and currency != self.currency:
            raise RuleViolation(field, f"must be {self.currency}, the currency of the catalogue")


def slot_minutes(slot: Slot) -> int:
    """Length of the slot in whole minutes (slots are validated to whole minutes)."""
    return (slot.end - slot.start) // timedelta(minutes=1)


def estimate(item: ServiceItem, slot: Slot) -> Money:
    """hourly_rate x slot minutes / 60, rounded half-up to the minor unit."""
    # One rounding, on the total: rounding a per-minute rate first would drift by up to a
    # minor unit per minute.
    return item.hourly_rate.fraction(slot_minutes(slot), 60)


def parse_catalogue(text: str) -> Catalogue:
    """Parse a catalogue from TOML; a ValueError names the bad key."""
    data = load_toml("catalogue", text)
    try:
        return Catalogue.model_validate(data)
    except ValidationError as exc:
        raise ValueError(describe_validation_error("catalogue", exc)) from None
