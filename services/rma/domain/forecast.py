"""Warranty replacement demand (seed 001, case 13): how many more RMAs a SKU's units still under
warranty will bring, against the stock that can replace them, so that an end-of-life SKU's tail is
covered before the last unit is gone (the seed: expected_rma = units_sold x fail_rate x in_warranty_ratio).

- units in the field: serials with a proof of purchase (sales record, registration, replacement unit);
  in warranty: those whose window (purchase date + the SKU's warranty days) has not ended today;
- failure rate: the one given (e.g. from a reliability model), else the observed one: RMAs of the SKU
  (not cancelled) per unit in the field;
- expected further RMAs = ceil(units in warranty x failure rate) (rounded up: a unit short is a customer
  waiting);
- supply: the SKU's own stock when it is still sold (an end-of-life SKU is never the replacement itself),
  plus its active substitutes' stock; shortfall = expected - supply when positive.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class DemandForecast:
    sku: str
    eol: bool
    units_in_field: int
    units_in_warranty: int
    rmas: int
    failure_rate: Fraction
    failure_rate_source: str  # "given" | "observed"
    expected_rmas: int
    own_stock: int
    substitute_stock: dict[str, int]
    supply: int
    shortfall: int


def forecast_replacement_demand(*, sku: str, eol: bool, units_in_field: int, units_in_warranty: int, rmas: int,
                                own_stock: int, substitute_stock: Mapping[str, int],
                                failure_rate: Fraction | None = None) -> DemandForecast:
    if units_in_warranty > units_in_field or min(units_in_field, units_in_warranty, rmas, own_stock) < 0:
        raise ValueError("counts must be non-negative and units in warranty at most the units in the field")
    if failure_rate is not None:
        if not 0 <= failure_rate <= 1:
            raise ValueError("failure_rate must be between 0 and 1")
        rate, source = failure_rate, "given"
    else:
        rate, source = (Fraction(min(rmas, units_in_field), units_in_field) if units_in_field else Fraction(0)), \
            "observed"
    expected = math.ceil(units_in_warranty * rate)
    supply = (0 if eol else own_stock) + sum(substitute_stock.values())
    return DemandForecast(sku=sku, eol=eol, units_in_field=units_in_field, units_in_warranty=units_in_warranty,
                          rmas=rmas, failure_rate=rate, failure_rate_source=source, expected_rmas=expected,
                          own_stock=own_stock, substitute_stock=dict(substitute_stock), supply=supply,
                          shortfall=max(expected - supply, 0))
