"""Service catalogue: the shipped TOML, lookups, currency and estimates."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from libs.domain.errors import RuleViolation
from services.orders.domain.catalogue import estimate, parse_catalogue
from services.orders.domain.events import Slot
from tests.unit.orders import TZ, twd

CONFIG = Path(__file__).resolve().parents[3] / "services" / "orders" / "config" / "catalogue.toml"
CATALOGUE = parse_catalogue(CONFIG.read_text(encoding="utf-8"))


def slot(minutes: int) -> Slot:
    start = datetime(2025, 3, 11, 14, 0, tzinfo=TZ)
    return Slot(start=start, end=start + timedelta(minutes=minutes))


def test_shipped_catalogue_has_the_three_services_in_twd() -> None:
    assert CATALOGUE.currency == "TWD"
    assert CATALOGUE.codes == ["cleaning-home", "dishwash-deep", "dishwash-standard"]
    standard = CATALOGUE.get("dishwash-standard")
    assert (standard.product_line, standard.hourly_rate) == ("dishwashing", twd(60000))
    deep = CATALOGUE.get("dishwash-deep")
    assert (deep.product_line, deep.hourly_rate) == ("deep-cleaning", twd(90000))
    assert CATALOGUE.get("cleaning-home").product_line == "home-cleaning"


def test_unknown_code_names_the_field_and_the_known_codes() -> None:
    with pytest.raises(RuleViolation) as caught:
        CATALOGUE.get("window-wash")
    assert caught.value.field == "service.service_code"
    assert "window-wash" in caught.value.rule
    assert "dishwash-standard" in caught.value.rule


@pytest.mark.parametrize("code, minutes, total", [
    ("dishwash-standard", 45, 45000),
    ("dishwash-standard", 120, 120000),
    ("dishwash-deep", 130, 195000),
    ("cleaning-home", 125, 135417),  # 650.00 * 125 / 60 = 1354.1666... -> 1354.17
])
def test_estimate_is_rate_times_minutes_over_60_half_up(code: str, minutes: int, total: int) -> None:
    assert estimate(CATALOGUE.get(code), slot(minutes)) == twd(total)


def test_requested_currency_must_be_the_catalogues() -> None:
    CATALOGUE.check_currency(None)
    CATALOGUE.check_currency("TWD")
    with pytest.raises(RuleViolation) as caught:
        CATALOGUE.check_currency("USD")
    assert caught.value.field == "currency"


ITEM = '[[services]]\nservice_code = "a"\nproduct_line = "x"\nname = "A"\n'


@pytest.mark.parametrize("text, key", [
    ('currency = "TWD"\n' + ITEM + 'hourly_rate = { amount = 100, currency = "USD" }\n',
     "services[0].hourly_rate.currency"),
    ('currency = "TWD"\n' + ITEM + 'hourly_rate = { amount = 100, currency = "TWD" }\n'
     + ITEM + 'hourly_rate = { amount = 100, currency = "TWD" }\n', "duplicate"),
    ('currency = "TWD"\n' + ITEM + 'hourly_rate = { amount = 1.5, currency = "TWD" }\n',
     "services.0.hourly_rate.amount"),
    ('currency = "TWD"\n' + ITEM + 'hourly_rate = { amount = 100, currency = "TWD" }\nprice = 1\n',
     "services.0.price"),
    ('currency = "TWD"\nservices = []\n', "services"),
])
def test_a_bad_catalogue_names_the_bad_key(text: str, key: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_catalogue(text)
    assert key in str(caught.value)
