"""Shared fixtures of the RMA unit tests: a small catalogue (the seed's end-of-life mouse with two
substitutes), a policy, and builders of an Rma in any state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Literal

from libs.domain.money import Money
from services.rma.domain.catalogue import CatalogueItemSpec, SubstitutionPolicy
from services.rma.domain.events import Contact, RmaSubstitutionRule, ShippingAddress, WarrantyBasis
from services.rma.domain.rma import Rma
from services.rma.domain.substitution import ReplacementContext, ReplacementPlan, plan_replacement
from services.rma.domain.warranty import TAIPEI, WarrantyDecision

NOW = datetime(2004, 12, 10, 10, 0, tzinfo=TAIPEI)
LATER = NOW + timedelta(hours=1)
OLD, NEW, PRO = "MS-OLD", "MS-NEW", "MS-PRO"
HOME, RETAIL, OUTLET = "wh-home", "wh-retail", "wh-outlet"
CUSTOMER = "cust-1"


def twd(amount: int) -> Money:
    return Money(amount=amount, currency="TWD")


def rule(alt: str, score: int, delta: int, active: bool = True) -> RmaSubstitutionRule:
    return RmaSubstitutionRule(alt_sku=alt, feature_score=score, price_delta=twd(delta), active=active)


def spec(*, price: int = 129000, eol: bool = False, subs: Sequence[RmaSubstitutionRule] = (), warranty: int = 365,
         ceiling: int | None = None, threshold: int | None = None) -> CatalogueItemSpec:
    return CatalogueItemSpec(name="mouse", price=twd(price), warranty_days=warranty, eol=eol, substitutes=list(subs),
                             price_ceiling=twd(ceiling) if ceiling is not None else None,
                             approval_threshold=twd(threshold) if threshold is not None else None)


POLICY = SubstitutionPolicy(version="test", currency="TWD", price_ceiling=twd(100000), approval_threshold=twd(20000))
# The seed's story: the 2003 model is end of life; the newer optical (score 80, same price) and the
# laser (score 95, TWD 400 more: over the TWD 200 approval threshold).
CATALOGUE: dict[str, CatalogueItemSpec] = {
    OLD: spec(eol=True, subs=[rule(NEW, 80, 0), rule(PRO, 95, 40000)]),
    NEW: spec(),
    PRO: spec(price=169000, warranty=730),
}


def context(stock: dict[tuple[str, str], int], *, sku: str = OLD, items: dict[str, CatalogueItemSpec] | None = None,
            **kw: object) -> ReplacementContext:
    cat = items if items is not None else CATALOGUE
    return ReplacementContext(original_sku=sku, original=cat[sku], items=cat, policy=POLICY, home_warehouse=HOME,
                              stock=stock, **kw)  # type: ignore[arg-type]


CONTACT = Contact(customer_id=CUSTOMER, email="a@example.com", locale="zh-TW")
ADDRESS = ShippingAddress(name="王小明", line1="復興南路一段 100 號", city="臺北市", postal_code="106")


def opened(rma_id: str = "rma-1", serial: str = "SN-1", sku: str = OLD) -> Rma:
    rma = Rma.open(rma_id, serial=serial, sku=sku, fault_code="left_button.double_click", description="",
                   attachments=[], contact=CONTACT, ship_to=ADDRESS, warehouse_id=HOME, at=NOW)
    rma.mark_saved()
    return rma


BASIS = WarrantyBasis(source="sales_record", reference="INV-1", purchase_date=date(2004, 1, 1), warranty_days=365,
                      expires_on=date(2004, 12, 31), checked_on=NOW.date())
ELIGIBLE = WarrantyDecision("eligible", "day 344", BASIS, NOW.date())
REJECTED = WarrantyDecision("rejected", "out of warranty", BASIS, NOW.date())
REVIEW = WarrantyDecision("review", "no proof of purchase", None, NOW.date())

PlanKind = Literal["ready", "transfer", "awaiting_approval", "unavailable"]
STOCK_FOR: dict[PlanKind, dict[tuple[str, str], int]] = {
    "ready": {(HOME, NEW): 1},
    "transfer": {(RETAIL, NEW): 2},
    "awaiting_approval": {(HOME, PRO): 1},  # only the laser, over the threshold
    "unavailable": {},
}


def plan(kind: PlanKind) -> ReplacementPlan:
    p = plan_replacement(context(STOCK_FOR[kind]))
    assert p.kind == kind, p
    return p


def rma_in(state: str, *, source: Literal["local", "transfer"] = "local") -> Rma:
    """An Rma at rest in `state` ("STATUS" or "STATUS/stage"), built through its own commands."""
    rma = opened()
    steps: dict[str, list[str]] = {
        "RECEIVED/awaiting_check": [],
        "RECEIVED/awaiting_review": ["review"],
        "ELIGIBLE": ["eligible"],
        "REJECTED": ["rejected"],
        "CANCELLED": ["eligible", "cancel"],
        "SHIPPED_IN": ["eligible", "parcel"],
        "PROCESSING/planning": ["eligible", "parcel", "start"],
        "PROCESSING/chosen": ["eligible", "parcel", "start", "choose_" + source],
        "PROCESSING/awaiting_approval": ["eligible", "parcel", "start", "choose_approval"],
        "PROCESSING/awaiting_transfer": ["eligible", "parcel", "start", "choose_transfer", "request"],
        "PROCESSING/ready": ["eligible", "parcel", "start", "choose_local", "ready"],
        "PROCESSING/unavailable": ["eligible", "parcel", "start", "choose_none"],
        "SHIPPED_OUT": ["eligible", "parcel", "start", "choose_local", "ready", "ship"],
        "CLOSED": ["eligible", "parcel", "start", "choose_local", "ready", "ship", "close"],
    }
    for step in steps[state]:
        match step:
            case "review":
                rma.check_warranty(REVIEW, NOW)
            case "eligible":
                rma.check_warranty(ELIGIBLE, NOW)
            case "rejected":
                rma.check_warranty(REJECTED, NOW)
            case "cancel":
                rma.cancel("changed my mind", NOW)
            case "parcel":
                rma.receive_parcel("label-1", NOW)
            case "start":
                rma.start_processing("tech-1", NOW)
            case "choose_local":
                rma.choose(plan("ready"), NOW)
            case "choose_transfer":
                rma.choose(plan("transfer"), NOW)
            case "choose_approval":
                rma.choose(plan("awaiting_approval"), NOW)
            case "choose_none":
                rma.choose(plan("unavailable"), NOW)
            case "request":
                rma.request_transfer(rma.next_transfer_id(), LATER, NOW)
            case "ready":
                rma.mark_ready(NOW)
            case "ship":
                rma.ship_out(shipment_id="shp-1", carrier="tcat", tracking_number="T123", eta=None, at=NOW)
            case "close":
                rma.close("replacement_delivered", "shp-1", NOW)
    rma.mark_saved()
    return rma
