"""Warranty eligibility (seed 001, case 7): from the serial's proofs of purchase and the product's
warranty window, decided in the Asia/Taipei calendar, with the basis kept for the audit.

The boundary. `purchase_date` is day 0; the RMA's opening day (its `at` as a date in Asia/Taipei) is
day `(opened_on - purchase_date).days`. A window of N days covers days 0..N: the last day covered
(`expires_on`) is purchase_date + N days, as in the seed's `purchase_date + INTERVAL '365 days' AS
warranty_expire`. Bought 2003-12-20 with 365 days (2004 is a leap year): 2004-12-19 is day 365
(covered, the last day), 2004-12-20 is day 366 (not covered). The local calendar decides, not UTC:
2004-12-19T15:59Z is 23:59 on the 19th in Taipei (day 365, covered) while 2004-12-19T16:00Z is already
the 20th there (day 366, not covered).

The proofs, in order of precedence:
1. a replacement unit this service shipped (`WarrantyReplacementIssued`): its window starts the day it
   left (the seed's customer was covered again a year after the first replacement);
2. a sales record (invoice): the seller's own record; the earliest sale if there are several;
3. a product registration by the customer; the earliest purchase date if there are several.
No proof, a proof for another SKU, or a purchase date after the opening day -> manual review by a
reconciler (the RMA waits in RECEIVED).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from libs.domain.aggregate import Aggregate
from libs.domain.errors import Conflict, RuleViolation
from libs.domain.events import DomainEvent
from services.rma.domain.events import (
    WARRANTY_CATEGORY,
    WarrantyBasis,
    WarrantyProductRegistered,
    WarrantyReplacementIssued,
    WarrantySaleRecorded,
)

TAIPEI = ZoneInfo("Asia/Taipei")


def local_date(at: datetime, tz: ZoneInfo = TAIPEI) -> date:
    """The calendar date of an aware moment in the warranty's time zone."""
    if at.tzinfo is None:
        raise ValueError("the moment must be timezone-aware")
    return at.astimezone(tz).date()


class WarrantyRecord(Aggregate):
    """Everything known about one serial's purchase (stream `warranty-{serial}`)."""

    category = WARRANTY_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.registrations: list[WarrantyProductRegistered] = []
        self.sales: list[WarrantySaleRecorded] = []
        self.replacements: list[WarrantyReplacementIssued] = []

    @property
    def serial(self) -> str:
        return self.id

    def apply(self, event: DomainEvent) -> None:
        match event:
            case WarrantyProductRegistered():
                self.registrations.append(event)
            case WarrantySaleRecorded():
                self.sales.append(event)
            case WarrantyReplacementIssued():
                self.replacements.append(event)

    # --- commands -------------------------------------------------------------------------------
    def register(self, *, sku: str, registration_id: str, customer_id: str | None, purchase_date: date,
                 at: datetime, tz: ZoneInfo = TAIPEI) -> bool:
        """Record a product registration; the same registration id again changes nothing (False)."""
        _not_in_future("purchase_date", purchase_date, at, tz)
        for r in self.registrations:
            if r.registration_id == registration_id:
                if (r.sku, r.purchase_date, r.customer_id) != (sku, purchase_date, customer_id):
                    raise Conflict(f"registration {registration_id} of serial {self.id} was recorded with other "
                                   "details", registration_id=registration_id)
                return False
        self._record(WarrantyProductRegistered(serial=self.id, sku=sku, registration_id=registration_id,
                                               customer_id=customer_id, purchase_date=purchase_date, at=at))
        return True

    def record_sale(self, *, sku: str, invoice_number: str, sold_on: date, channel: str, at: datetime,
                    tz: ZoneInfo = TAIPEI) -> bool:
        """Record a sales record; the same invoice again changes nothing (False)."""
        _not_in_future("sold_on", sold_on, at, tz)
        for s in self.sales:
            if s.invoice_number == invoice_number:
                if (s.sku, s.sold_on) != (sku, sold_on):
                    raise Conflict(f"invoice {invoice_number} of serial {self.id} was recorded with other details",
                                   invoice_number=invoice_number)
                return False
        self._record(WarrantySaleRecorded(serial=self.id, sku=sku, invoice_number=invoice_number, sold_on=sold_on,
                                          channel=channel, at=at))
        return True

    def record_replacement(self, *, sku: str, rma_id: str, replaces_serial: str, at: datetime,
                           tz: ZoneInfo = TAIPEI) -> bool:
        if any(r.rma_id == rma_id for r in self.replacements):
            return False
        self._record(WarrantyReplacementIssued(serial=self.id, sku=sku, rma_id=rma_id, replaces_serial=replaces_serial,
                                               issued_on=local_date(at, tz), at=at))
        return True


def _not_in_future(field: str, day: date, at: datetime, tz: ZoneInfo) -> None:
    if day > local_date(at, tz):
        raise RuleViolation(field, f"must not be after today ({local_date(at, tz).isoformat()}, {tz.key})")


@dataclass(frozen=True)
class WarrantyDecision:
    outcome: Literal["eligible", "rejected", "review"]
    reason: str
    basis: WarrantyBasis | None  # None only for a review (there is no proof to rest on)
    checked_on: date


@dataclass(frozen=True)
class _Proof:
    source: Literal["registration", "sales_record"]
    reference: str
    sku: str
    purchase_date: date
    what: str


def _best_proof(record: WarrantyRecord) -> _Proof | None:
    if record.replacements:
        r = max(record.replacements, key=lambda e: e.issued_on)
        # A registration made by this service on the customer's behalf: the replacement unit.
        return _Proof("registration", f"replacement of RMA {r.rma_id}", r.sku, r.issued_on,
                      f"replacement unit shipped by RMA {r.rma_id}")
    if record.sales:
        s = min(record.sales, key=lambda e: (e.sold_on, e.invoice_number))
        return _Proof("sales_record", s.invoice_number, s.sku, s.sold_on, f"sales record {s.invoice_number}")
    if record.registrations:
        g = min(record.registrations, key=lambda e: (e.purchase_date, e.registration_id))
        return _Proof("registration", g.registration_id, g.sku, g.purchase_date, f"registration {g.registration_id}")
    return None


def check_warranty(record: WarrantyRecord, *, sku: str, warranty_days: int, opened_at: datetime,
                   tz: ZoneInfo = TAIPEI) -> WarrantyDecision:
    """Eligible, rejected (out of warranty) or manual review; see the module docstring for the rules."""
    checked_on = local_date(opened_at, tz)
    proof = _best_proof(record)
    if proof is None:
        return WarrantyDecision("review", f"no proof of purchase for serial {record.serial} (no registration or "
                                          "sales record): a reconciler reviews the customer's documents",
                                None, checked_on)
    if proof.sku != sku:
        return WarrantyDecision("review", f"the {proof.what} names SKU {proof.sku}, the RMA names {sku}", None,
                                checked_on)
    if proof.purchase_date > checked_on:
        return WarrantyDecision("review", f"the {proof.what} has a purchase date ({proof.purchase_date}) after the "
                                          f"opening day ({checked_on})", None, checked_on)
    expires_on = proof.purchase_date + timedelta(days=warranty_days)
    day = (checked_on - proof.purchase_date).days
    basis = WarrantyBasis(source=proof.source, reference=proof.reference[:128], purchase_date=proof.purchase_date,
                          warranty_days=warranty_days, expires_on=expires_on, checked_on=checked_on)
    if day <= warranty_days:
        return WarrantyDecision("eligible", f"day {day} of a {warranty_days}-day warranty (covered until "
                                            f"{expires_on}, {proof.what})", basis, checked_on)
    return WarrantyDecision("rejected", f"out of warranty: day {day} of a {warranty_days}-day warranty (expired "
                                        f"after {expires_on}, {proof.what})", basis, checked_on)
