"""Warranty eligibility (seed 001, case 7): the boundary (day 365 covered, day 366 not) in the
Asia/Taipei calendar, the precedence of the proofs, and no proof -> manual review."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from libs.domain.errors import Conflict, RuleViolation
from services.rma.domain.warranty import TAIPEI, WarrantyRecord, check_warranty, local_date

SKU = "MS-OLD"
BOUGHT = date(2003, 12, 20)  # the seed's mouse: bought at the end of 2003 (2004 is a leap year)
AT = datetime(2003, 12, 20, 12, 0, tzinfo=TAIPEI)
RECORDED = datetime(2006, 1, 1, tzinfo=TAIPEI)  # when the proofs were entered (after every date used here)


def record(*, sale: date | None = None, registration: date | None = None, sku: str = SKU) -> WarrantyRecord:
    r = WarrantyRecord("SN-1")
    if sale:
        r.record_sale(sku=sku, invoice_number="INV-1", sold_on=sale, channel="retail", at=RECORDED)
    if registration:
        r.register(sku=sku, registration_id="reg-1", customer_id="c-1", purchase_date=registration, at=RECORDED)
    return r


def taipei(y: int, m: int, d: int, hh: int = 12, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=TAIPEI)


BOUNDARY = [
    # (opened at, warranty days, outcome, day number)
    pytest.param(taipei(2003, 12, 20), 365, "eligible", 0, id="day 0: the purchase day"),
    pytest.param(taipei(2004, 12, 18), 365, "eligible", 364, id="day 364"),
    pytest.param(taipei(2004, 12, 19, 0, 0), 365, "eligible", 365, id="day 365 at 00:00: covered"),
    pytest.param(taipei(2004, 12, 19, 23, 59), 365, "eligible", 365, id="day 365 at 23:59: covered (last day)"),
    pytest.param(taipei(2004, 12, 20, 0, 0), 365, "rejected", 366, id="day 366 at 00:00: not covered"),
    pytest.param(datetime(2004, 12, 19, 15, 59, tzinfo=UTC), 365, "eligible", 365,
                 id="15:59Z is 23:59 of day 365 in Taipei"),
    pytest.param(datetime(2004, 12, 19, 16, 0, tzinfo=UTC), 365, "rejected", 366,
                 id="16:00Z is already day 366 in Taipei"),
    pytest.param(taipei(2005, 12, 19), 730, "eligible", 730, id="730-day window: day 730"),
    pytest.param(taipei(2005, 12, 20), 730, "rejected", 731, id="730-day window: day 731"),
    pytest.param(taipei(2003, 12, 20), 0, "eligible", 0, id="no window: the purchase day only"),
    pytest.param(taipei(2003, 12, 21), 0, "rejected", 1, id="no window: day 1"),
]


@pytest.mark.parametrize(("opened_at", "days", "outcome", "day"), BOUNDARY)
def test_warranty_boundary_in_the_taipei_calendar(opened_at: datetime, days: int, outcome: str, day: int) -> None:
    decision = check_warranty(record(sale=BOUGHT), sku=SKU, warranty_days=days, opened_at=opened_at)
    assert decision.outcome == outcome
    assert f"day {day} of a {days}-day warranty" in decision.reason
    b = decision.basis
    assert b is not None and b.source == "sales_record" and b.reference == "INV-1"
    assert b.purchase_date == BOUGHT and b.warranty_days == days
    assert b.checked_on == local_date(opened_at) == opened_at.astimezone(TAIPEI).date()
    # expires_on is the last day covered
    assert b.expires_on is not None and (b.checked_on <= b.expires_on) is (outcome == "eligible")


def test_expiry_is_purchase_date_plus_the_window() -> None:
    b = check_warranty(record(sale=BOUGHT), sku=SKU, warranty_days=365, opened_at=taipei(2004, 6, 1)).basis
    assert b is not None and b.expires_on == date(2004, 12, 19)  # 2003-12-20 + 365 days (leap year 2004)


def test_no_proof_of_purchase_waits_for_a_manual_review() -> None:
    decision = check_warranty(WarrantyRecord("SN-1"), sku=SKU, warranty_days=365, opened_at=taipei(2004, 6, 1))
    assert decision.outcome == "review" and decision.basis is None
    assert "no proof of purchase" in decision.reason and decision.checked_on == date(2004, 6, 1)


def test_a_proof_for_another_sku_waits_for_a_manual_review() -> None:
    decision = check_warranty(record(sale=BOUGHT, sku="MS-OTHER"), sku=SKU, warranty_days=365,
                              opened_at=taipei(2004, 6, 1))
    assert decision.outcome == "review" and "names SKU MS-OTHER" in decision.reason


def test_a_registration_is_a_proof_too() -> None:
    decision = check_warranty(record(registration=BOUGHT), sku=SKU, warranty_days=365, opened_at=taipei(2004, 6, 1))
    assert decision.outcome == "eligible"
    b = decision.basis
    assert b is not None and b.source == "registration" and b.reference == "reg-1"


def test_the_sales_record_wins_over_the_registration() -> None:
    # Registered later with a later date; the seller's invoice decides (day 366 -> rejected).
    r = record(sale=BOUGHT, registration=date(2004, 1, 15))
    decision = check_warranty(r, sku=SKU, warranty_days=365, opened_at=taipei(2004, 12, 20))
    assert decision.outcome == "rejected" and decision.basis is not None and decision.basis.source == "sales_record"


def test_the_earliest_of_several_sales_is_the_original_purchase() -> None:
    r = record(sale=date(2004, 3, 1))
    r.record_sale(sku=SKU, invoice_number="INV-0", sold_on=BOUGHT, channel="retail", at=AT)
    decision = check_warranty(r, sku=SKU, warranty_days=365, opened_at=taipei(2004, 12, 20))
    assert decision.basis is not None and decision.basis.reference == "INV-0" and decision.outcome == "rejected"


def test_a_replacement_unit_is_covered_from_the_day_it_shipped() -> None:
    # The seed: the replacement shipped at the end of 2004 failed at the end of 2005 and was covered.
    r = WarrantyRecord("RPL-rma-1")
    r.record_replacement(sku="MS-NEW", rma_id="rma-1", replaces_serial="SN-1", at=taipei(2004, 12, 22))
    assert r.record_replacement(sku="MS-NEW", rma_id="rma-1", replaces_serial="SN-1", at=taipei(2004, 12, 23)) is False
    ok = check_warranty(r, sku="MS-NEW", warranty_days=365, opened_at=taipei(2005, 12, 22))
    late = check_warranty(r, sku="MS-NEW", warranty_days=365, opened_at=taipei(2005, 12, 23))
    assert (ok.outcome, late.outcome) == ("eligible", "rejected")
    assert ok.basis is not None and ok.basis.reference == "replacement of RMA rma-1"
    assert ok.basis.purchase_date == date(2004, 12, 22)


def test_a_purchase_date_after_the_opening_day_waits_for_review() -> None:
    r = record(sale=date(2004, 6, 2))
    decision = check_warranty(r, sku=SKU, warranty_days=365, opened_at=taipei(2004, 6, 1))
    assert decision.outcome == "review" and "after the opening day" in decision.reason


def test_proofs_dated_in_the_future_are_refused_when_recorded() -> None:
    r = WarrantyRecord("SN-1")
    with pytest.raises(RuleViolation) as err:
        r.record_sale(sku=SKU, invoice_number="INV-9", sold_on=date(2003, 12, 21), channel="", at=AT)
    assert err.value.field == "sold_on"
    with pytest.raises(RuleViolation):
        r.register(sku=SKU, registration_id="r", customer_id=None, purchase_date=date(2003, 12, 21), at=AT)
    assert not r.pending


def test_recording_the_same_proof_again_changes_nothing_and_a_different_one_is_a_conflict() -> None:
    r = record(sale=BOUGHT, registration=BOUGHT)
    r.mark_saved()
    assert r.record_sale(sku=SKU, invoice_number="INV-1", sold_on=BOUGHT, channel="web", at=AT) is False
    assert r.register(sku=SKU, registration_id="reg-1", customer_id="c-1", purchase_date=BOUGHT, at=AT) is False
    assert not r.pending
    with pytest.raises(Conflict):
        r.record_sale(sku=SKU, invoice_number="INV-1", sold_on=date(2003, 12, 1), channel="", at=AT)
    with pytest.raises(Conflict):
        r.register(sku=SKU, registration_id="reg-1", customer_id="c-2", purchase_date=BOUGHT, at=AT)


def test_naive_moments_are_refused() -> None:
    with pytest.raises(ValueError):
        local_date(datetime(2004, 1, 1))
