"""The SKU catalogue (stream `catalogue-{sku}`): name, price, warranty window, end-of-life flag and the
substitution rules (the seed's `sku_substitution (eol_sku, alt_sku, feature_score, price_delta,
active)`, case 3), plus an optional per-SKU price ceiling and approval threshold. An item is defined
as a whole (PUT); each definition is an event, so the rules in force at any past decision can be
replayed. The substitution policy gives the defaults of the ceiling and threshold."""

from __future__ import annotations

import tomllib
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent
from libs.domain.money import Currency, Money
from libs.domain.types import Name
from services.rma.domain.events import CATALOGUE_CATEGORY, RmaCatalogueItemDefined, RmaSubstitutionRule, Sku


class CatalogueItemSpec(BaseModel):
    """What a catalogue item says (the body of `PUT /catalogue/{sku}`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    price: Money
    warranty_days: Annotated[int, Field(ge=0, le=3650, description="the warranty window, e.g. 365 or 730")]
    eol: bool = Field(default=False, description="end of life: no longer sold, so never the replacement itself")
    substitutes: list[RmaSubstitutionRule] = Field(default_factory=list, max_length=50)
    price_ceiling: Money | None = Field(default=None, description="a substitute may cost at most this much more "
                                                                  "(default: the substitution policy's)")
    approval_threshold: Money | None = Field(default=None, description="a substitute costing more than this needs "
                                                                       "an approver (default: the policy's)")

    @model_validator(mode="after")
    def _consistent(self) -> CatalogueItemSpec:
        if self.price.amount < 0:
            raise ValueError("price: must not be negative")
        seen: set[str] = set()
        for i, rule in enumerate(self.substitutes):
            if rule.alt_sku in seen:
                raise ValueError(f"substitutes[{i}].alt_sku: duplicate alternative {rule.alt_sku!r}")
            seen.add(rule.alt_sku)
            if rule.price_delta.currency != self.price.currency:
                raise ValueError(f"substitutes[{i}].price_delta.currency: {rule.price_delta.currency} differs from "
                                 f"the price's {self.price.currency}")
        for name in ("price_ceiling", "approval_threshold"):
            value: Money | None = getattr(self, name)
            if value is not None and value.currency != self.price.currency:
                raise ValueError(f"{name}.currency: {value.currency} differs from the price's {self.price.currency}")
        return self


class CatalogueItem(Aggregate):
    category = CATALOGUE_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.spec: CatalogueItemSpec | None = None

    @property
    def sku(self) -> str:
        return self.id

    def apply(self, event: DomainEvent) -> None:
        if isinstance(event, RmaCatalogueItemDefined):
            self.spec = CatalogueItemSpec(name=event.name, price=event.price, warranty_days=event.warranty_days,
                                          eol=event.eol, substitutes=event.substitutes,
                                          price_ceiling=event.price_ceiling,
                                          approval_threshold=event.approval_threshold)

    def define(self, spec: CatalogueItemSpec, at: datetime) -> bool:
        """Record the definition; the same definition again changes nothing (False)."""
        if spec.model_dump() == (self.spec.model_dump() if self.spec else None):
            return False
        self._record(RmaCatalogueItemDefined(sku=self.id, at=at, **spec.model_dump()))
        return True


class SubstitutionPolicy(BaseModel):
    """Defaults of the price ceiling and the approval threshold (services/rma/config/substitution_policy.toml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Annotated[str, Field(min_length=1, max_length=64)]
    currency: Currency
    price_ceiling: Money
    approval_threshold: Money

    @model_validator(mode="after")
    def _currency(self) -> SubstitutionPolicy:
        for name in ("price_ceiling", "approval_threshold"):
            if getattr(self, name).currency != self.currency:
                raise ValueError(f"{name}.currency: must be {self.currency}")
        return self

    def ceiling_for(self, spec: CatalogueItemSpec) -> Money:
        return spec.price_ceiling or _in(self.price_ceiling, spec.price.currency)

    def threshold_for(self, spec: CatalogueItemSpec) -> Money:
        return spec.approval_threshold or _in(self.approval_threshold, spec.price.currency)


def _in(value: Money, currency: str) -> Money:
    # A policy default only applies to items priced in its currency; another currency must set its own.
    if value.currency != currency:
        raise ValueError(f"the substitution policy is in {value.currency}; an item priced in {currency} must set "
                         "price_ceiling and approval_threshold itself")
    return value


def parse_substitution_policy(text: str) -> SubstitutionPolicy:
    try:
        return SubstitutionPolicy.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid substitution policy: TOML syntax error: {exc}") from None
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ValueError("invalid substitution policy: " + "; ".join(parts)) from None


class SeedItem(CatalogueItemSpec):
    sku: Sku


class SeedWarehouse(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    warehouse_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    name: Name
    kind: str = "warehouse"
    transfer_ttl_seconds: Annotated[int, Field(ge=1)] | None = None


class CatalogueSeed(BaseModel):
    """The catalogue and warehouses defined at start-up when missing (services/rma/config/catalogue.toml)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    items: list[SeedItem] = Field(default_factory=list)
    warehouses: list[SeedWarehouse] = Field(default_factory=list)


def parse_catalogue_seed(text: str) -> CatalogueSeed:
    try:
        return CatalogueSeed.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid catalogue seed: TOML syntax error: {exc}") from None
    except ValidationError as exc:
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ValueError("invalid catalogue seed: " + "; ".join(parts)) from None
