"""Warranty replacement demand (seed 001, case 13): expected RMAs = units in warranty x failure rate,
rounded up, against the stock that can serve them (an EOL SKU's own stock never does)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from services.rma.domain.forecast import forecast_replacement_demand

CASES = [
    # the seed: 100,000 sold, 2% fail in the first year, 80% still in warranty -> 1,600 RMAs expected
    pytest.param(dict(eol=True, units_in_field=100_000, units_in_warranty=80_000, rmas=0, own_stock=5000,
                      substitute_stock={"NEW": 1000, "PRO": 100}, failure_rate=Fraction(2, 100)),
                 1600, 1100, 500, "given", id="the seed's example: EOL, own stock does not count"),
    pytest.param(dict(eol=False, units_in_field=10, units_in_warranty=5, rmas=1, own_stock=0,
                      substitute_stock={}), 1, 0, 1, "observed", id="observed rate 1/10 of 5 in warranty: 1"),
    pytest.param(dict(eol=False, units_in_field=10, units_in_warranty=5, rmas=1, own_stock=3,
                      substitute_stock={"NEW": 1}), 1, 4, 0, "observed", id="enough stock: no shortfall"),
    pytest.param(dict(eol=False, units_in_field=0, units_in_warranty=0, rmas=0, own_stock=0, substitute_stock={}),
                 0, 0, 0, "observed", id="nothing sold: nothing expected"),
    pytest.param(dict(eol=True, units_in_field=3, units_in_warranty=3, rmas=7, own_stock=0, substitute_stock={}),
                 3, 0, 3, "observed", id="more RMAs than units (repeats): the rate is capped at 1"),
]


@pytest.mark.parametrize(("kw", "expected", "supply", "shortfall", "source"), CASES)
def test_replacement_demand(kw: dict, expected: int, supply: int, shortfall: int, source: str) -> None:
    f = forecast_replacement_demand(sku="SKU", **kw)
    assert (f.expected_rmas, f.supply, f.shortfall, f.failure_rate_source) == (expected, supply, shortfall, source)
    assert 0 <= f.failure_rate <= 1


@pytest.mark.parametrize("kw", [dict(units_in_field=1, units_in_warranty=2), dict(units_in_field=1, rmas=-1),
                                dict(units_in_field=1, failure_rate=Fraction(3, 2))])
def test_bad_inputs_are_refused(kw: dict) -> None:
    args = dict(sku="SKU", eol=False, units_in_field=0, units_in_warranty=0, rmas=0, own_stock=0, substitute_stock={})
    with pytest.raises(ValueError):
        forecast_replacement_demand(**{**args, **kw})  # type: ignore[arg-type]
