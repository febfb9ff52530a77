"""Commands: the validated inputs of the orders service's use cases.

Field constraints live here so that malformed input is refused at the edge (HTTP 422
naming the field) before any aggregate is loaded. Business rules that need state or
the clock (slot in the future, fault party, merchant identity) are the aggregates' job.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.domain.money import Currency, Money
from services.orders.domain.events import Address, Code, FaultParty, Id, Name, Slot

Minutes = Annotated[int, Field(ge=1, le=1440, description="actual service minutes, 1-1440")]
Reason = Annotated[str, Field(max_length=500)]


class Command(BaseModel):
    """Base of every command: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class MaterialInput(Command):
    """A materials line as the merchant enters it; the bill computes the amount."""

    code: Id
    description: Name
    quantity: Annotated[int, Field(ge=1, le=999)]
    unit_price: Money


Materials = Annotated[list[MaterialInput], Field(max_length=50)]


class PlaceOrder(Command):
    """A customer books a service for a slot with a staff member."""

    customer_id: Id
    staff_id: Id
    service_code: Id
    slot: Slot
    address: Address
    voucher_ids: Annotated[list[Id], Field(max_length=10)] = Field(default_factory=list)
    use_member_balance: bool = False
    currency: Currency | None = Field(default=None, description="if given, must be the catalogue's currency")

    @model_validator(mode="after")
    def _distinct_vouchers(self) -> PlaceOrder:
        if len(set(self.voucher_ids)) != len(self.voucher_ids):
            raise ValueError("voucher_ids must not repeat a voucher")
        return self


class AcceptOrder(Command):
    """A merchant accepts a dispatched order."""

    merchant_id: Id


class StartService(Command):
    """The merchant is on site and starts the service; cancellation is locked from now on."""

    merchant_id: Id


class PushBill(Command):
    """The merchant pushes the final bill: actual minutes and materials."""

    merchant_id: Id
    actual_minutes: Minutes
    materials: Materials = Field(default_factory=list)


class AdjustBill(Command):
    """The merchant corrects the pushed bill before the customer confirms it."""

    merchant_id: Id
    actual_minutes: Minutes
    materials: Materials = Field(default_factory=list)
    reason: Annotated[str, Field(min_length=1, max_length=500)]


class ConfirmBill(Command):
    """The customer confirms the bill revision they reviewed."""

    customer_id: Id
    revision: Annotated[int, Field(ge=1)]


class CancelOrder(Command):
    """Someone cancels an order; only the platform may name a fault party other than itself."""

    cancelled_by: Literal["customer", "merchant", "platform"]
    fault_party: FaultParty | None = None
    reason_code: Code
    reason: Reason = ""
    merchant_id: Id | None = Field(default=None,
                                   description="the acting merchant; required when a merchant cancels")

    @model_validator(mode="after")
    def _merchant_named(self) -> CancelOrder:
        if self.cancelled_by == "merchant" and self.merchant_id is None:
            raise ValueError("merchant_id is required when cancelled_by is 'merchant'")
        return self


class RecordCreditScore(Command):
    """A credit score for a customer from an external source."""

    customer_id: Id
    score: Annotated[int, Field(ge=0, le=1000)]
    source: Annotated[str, Field(min_length=1, max_length=64)]


class SetPlatformConditions(Command):
    """Operations set the current severe-weather cities and platform load."""

    severe_weather_cities: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]],
                                     Field(max_length=100)] = Field(default_factory=list)
    load_pct: Annotated[int, Field(ge=0, le=100)]
    note: Reason = ""
