"""A deterministic generator of realistic Stripe-format event streams for Kolable course orders.

`generate(seed, orders)` returns a `Scenario`: the Stripe events as a webhook endpoint (or the
`payments.upstream` Kafka topic) would receive them, and the ground truth per order, computed
straight from the generator's plan (never from the events), so that integration tests and
benchmarks can compare what the system concluded with what really happened.

What the stream contains (every case is present in a scenario of a few hundred orders or more):

* every order: `charge.succeeded` then `payment_intent.succeeded` (Stripe reports a payment
  twice); metadata {order_id, student_id, course_id} on both objects;
* failed attempts before the payment: `charge.failed` (a type we do not normalise: it must be
  stored and acknowledged) and `payment_intent.payment_failed`, same PaymentIntent;
* refunds, partial and full: `charge.refunded` carrying the charge with the cumulative
  `amount_refunded` (API version 2024-06-20: the charge no longer lists its refunds); some
  refunds start `pending` and settle later with `charge.refund.updated` (the refund object,
  which names its charge and payment intent but has no metadata);
* re-buys: the same student buys the same course again after a full refund, as a new order id
  (same price, a discount, or the upgraded curriculum at a higher price); near misses that are
  not re-buys: another course after a refund, or the same course bought again before the refund;
* disputes: `charge.dispute.created` / `.updated` / `.closed`, won and lost, some still open
  (needs_response, under_review), some starting as inquiries (warning_needs_response, one closed
  as warning_closed); the dispute object names its charge and has no metadata;
  `charge.dispute.funds_withdrawn` / `funds_reinstated` are sent too (types we do not normalise);
* data gaps: an order paid in a currency we do not support, and orders whose metadata lacks
  the student id;
* delivery: every event once in a shuffled order where no event moves more than `window`
  positions from its place in time, a few refunds delivered before their own charge (a late
  charge webhook), and duplicates of some events (same `evt_` id, delivered again later).

Ids look like Stripe's (evt_/pi_/ch_/re_/dp_/txn_/req_ + base62; a PaymentIntent and its
charges share a prefix as Stripe's do), amounts are integer minor units, `created` never
decreases in truth order and strictly increases within one order. Same seed, same scenario.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import string
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from libs.domain.money import CURRENCY_EXPONENTS

__all__ = [
    "API_VERSION",
    "COURSES",
    "KINDS",
    "Course",
    "DisputeTruth",
    "OrderTruth",
    "RefundTruth",
    "Scenario",
    "encode",
    "generate",
]

API_VERSION = "2024-06-20"
WINDOW_START = 1746979200  # 2025-05-12 00:00 Asia/Taipei: the seed's 5/12-5/21 export window
WINDOW_DAYS = 10
MINUTE, HOUR, DAY = 60, 3600, 86400
BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
GAP_CURRENCY = "idr"  # Stripe supports it, we do not: such an order is a data gap
TAIPEI = timezone(timedelta(hours=8))


@dataclass(frozen=True)
class Course:
    course_id: str
    title: str
    price: int  # whole units of the currency (TWD 2,980 is 298000 minor units)


COURSES: tuple[Course, ...] = (
    Course("course-ai-pm", "AI Product Management in Practice", 2980),
    Course("course-growth", "Growth Marketing Bootcamp", 4800),
    Course("course-data", "Data Analysis with Python", 6800),
    Course("course-ux", "UX Research Essentials", 3600),
    Course("course-ops", "Revenue Operations", 9800),
    Course("course-lead", "Leadership for New Managers", 12800),
    Course("course-pro", "Kolable Pro Training (28,000 cohort)", 28000),
)

# Case kinds an order can carry (OrderTruth.kinds).
FAILED_THEN_PAID = "failed_then_paid"
PARTIAL_REFUND = "partial_refund"
TWO_PARTIAL_REFUNDS = "two_partial_refunds"
PARTIAL_THEN_FULL = "partial_then_full"
FULL_REFUND = "full_refund"
PENDING_REFUND = "pending_refund"
EARLY_REFUND = "early_refund"  # refunded within a minute; its refund is delivered before its charge
REBOUGHT = "rebought"  # fully refunded, then bought again by the same student (the original)
REBUY = "rebuy"  # the new order
REBUY_SAME_PRICE, REBUY_CHEAPER, REBUY_DEARER = "rebuy_same_price", "rebuy_cheaper", "rebuy_dearer"
OTHER_COURSE_AFTER_REFUND = "other_course_after_refund"  # refunded; the student then bought another course
OTHER_COURSE_PURCHASE = "other_course_purchase"  # that other purchase (not a re-buy)
BOUGHT_AGAIN_BEFORE_REFUND = "bought_again_before_refund"  # refunded after the student had bought it again
PURCHASE_BEFORE_REFUND = "purchase_before_refund"  # that earlier second purchase (not a re-buy)
DISPUTE_WON, DISPUTE_LOST = "dispute_won", "dispute_lost"
DISPUTE_NEEDS_RESPONSE, DISPUTE_UNDER_REVIEW = "dispute_needs_response", "dispute_under_review"
DISPUTE_INQUIRY = "dispute_inquiry"  # started as warning_needs_response
DISPUTE_LOST_NO_EVIDENCE = "dispute_lost_no_evidence"
INQUIRY_CLOSED = "inquiry_closed"  # warning_closed: no chargeback, the money stays
GAP_UNSUPPORTED_CURRENCY = "gap_unsupported_currency"
GAP_MISSING_STUDENT_ID = "gap_missing_student_id"

KINDS: tuple[str, ...] = (
    FAILED_THEN_PAID, PARTIAL_REFUND, TWO_PARTIAL_REFUNDS, PARTIAL_THEN_FULL, FULL_REFUND, PENDING_REFUND,
    EARLY_REFUND, REBOUGHT, REBUY, REBUY_SAME_PRICE, REBUY_CHEAPER, REBUY_DEARER, OTHER_COURSE_AFTER_REFUND,
    OTHER_COURSE_PURCHASE, BOUGHT_AGAIN_BEFORE_REFUND, PURCHASE_BEFORE_REFUND, DISPUTE_WON, DISPUTE_LOST,
    DISPUTE_NEEDS_RESPONSE, DISPUTE_UNDER_REVIEW, DISPUTE_INQUIRY, DISPUTE_LOST_NO_EVIDENCE, INQUIRY_CLOSED,
    GAP_UNSUPPORTED_CURRENCY, GAP_MISSING_STUDENT_ID,
)

DISPUTE_REASONS = ("fraudulent", "product_not_received", "product_unacceptable", "credit_not_processed",
                   "subscription_canceled", "unrecognized", "general")
DECLINES = (("insufficient_funds", "Your card has insufficient funds."),
            ("generic_decline", "Your card was declined."),
            ("do_not_honor", "Your card was declined."),
            ("expired_card", "Your card has expired."))


# --- ground truth ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefundTruth:
    refund_id: str
    amount: int
    created: int
    pending_first: bool  # created pending, settled later (charge.refund.updated)
    status: str = "succeeded"  # final status; every generated refund succeeds


@dataclass(frozen=True)
class DisputeTruth:
    dispute_id: str
    amount: int
    reason: str
    created: int
    evidence_due_by: int  # the latest deadline (an inquiry that escalates gets a new one)
    statuses: tuple[str, ...]  # Stripe statuses in the order they happened
    closed_at: int | None

    @property
    def status(self) -> str:
        return self.statuses[-1]

    @property
    def is_open(self) -> bool:
        return self.status not in ("won", "lost", "warning_closed")

    @property
    def outcome(self) -> str | None:
        return {"won": "won", "warning_closed": "won", "lost": "lost"}.get(self.status)


@dataclass(frozen=True)
class OrderTruth:
    """What really happened to one order; amounts in minor units of `currency`."""

    order_id: str
    student_id: str | None  # None when the metadata lacks it (a data gap)
    course_id: str
    currency: str  # ISO 4217, upper case
    amount: int  # the price, paid in full once
    ordered_at: int  # first payment attempt (unix seconds)
    paid_at: int
    payment_intent_id: str
    charge_id: str
    failed_charge_ids: tuple[str, ...]
    refunds: tuple[RefundTruth, ...]
    dispute: DisputeTruth | None
    rebuy_of: str | None  # this order re-buys that fully refunded order
    rebought_by: str | None  # this fully refunded order was re-bought by that order
    recovered: int  # for a re-bought order: min(re-buy price, refunded)
    data_gap: str | None
    kinds: tuple[str, ...]

    @property
    def paid(self) -> int:
        return self.amount

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds)

    @property
    def fully_refunded(self) -> bool:
        return self.refunded >= self.amount

    @property
    def lost(self) -> int:
        """Money taken back by a lost dispute."""
        return self.dispute.amount if self.dispute is not None and self.dispute.outcome == "lost" else 0

    @property
    def money_back(self) -> int:
        return min(self.paid, self.refunded + self.lost)

    @property
    def net(self) -> int:
        """What the business keeps: paid - refunded - lost in a dispute."""
        return self.paid - self.money_back

    @property
    def dispute_open(self) -> bool:
        return self.dispute is not None and self.dispute.is_open

    @property
    def expected_status(self) -> str:
        """The seed's status from what Stripe shows (the export-only fields, e.g. the LINE thread, aside).

        data_gap > dispute_pending > refunded_rebought / refunded_no_rebuy (any refund or lost
        dispute; a partial refund is never re-bought) > paid_valid (a won dispute is closed).
        """
        if self.data_gap is not None:
            return "data_gap"
        if self.dispute_open:
            return "dispute_pending"
        if self.money_back > 0:
            return "refunded_rebought" if self.rebought_by is not None else "refunded_no_rebuy"
        return "paid_valid"


def encode(event: dict[str, Any]) -> bytes:
    """The body Stripe would send: pretty-printed JSON (sign these exact bytes)."""
    return json.dumps(event, indent=2, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Scenario:
    seed: int
    currency: str
    window: int
    events: list[dict[str, Any]]  # delivery order, duplicates included
    truth_events: list[dict[str, Any]]  # every event once, in the order it happened
    orders: dict[str, OrderTruth]  # by order id, in order-id order
    order_of_event: dict[str, str]  # evt_... -> order id
    duplicate_ids: tuple[str, ...]  # event ids delivered more than once
    refund_before_charge: tuple[str, ...]  # orders whose first refund is delivered before their charge
    out_of_order: tuple[str, ...]  # orders with an event delivered before an earlier one of theirs
    max_displacement: int  # how far any event moved from its place in time, in positions

    def bodies(self) -> list[bytes]:
        return [encode(e) for e in self.events]

    def with_kind(self, kind: str) -> list[OrderTruth]:
        return [o for o in self.orders.values() if kind in o.kinds]

    def events_for(self, order_id: str) -> list[dict[str, Any]]:
        """The order's events in truth order."""
        return [e for e in self.truth_events if self.order_of_event[e["id"]] == order_id]

    def status_counts(self) -> dict[str, int]:
        counts = Counter(o.expected_status for o in self.orders.values())
        return dict(sorted(counts.items()))

    def totals(self) -> dict[str, int]:
        """Sums in minor units over the orders in the scenario currency (data-gap currencies left out)."""
        mine = [o for o in self.orders.values() if o.currency == self.currency]
        return {"paid": sum(o.paid for o in mine), "refunded": sum(o.refunded for o in mine),
                "lost_in_disputes": sum(o.lost for o in mine), "net": sum(o.net for o in mine),
                "recovered_by_rebuys": sum(o.recovered for o in mine),
                "open_disputes": sum(o.dispute.amount for o in mine if o.dispute and o.dispute.is_open)}


# --- planning ----------------------------------------------------------------------------------------


class _Ids:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[str] = set()

    def chars(self, n: int) -> str:
        return "".join(self.rng.choice(BASE62) for _ in range(n))

    def make(self, prefix: str, n: int = 24) -> str:
        while True:
            value = prefix + self.chars(n)
            if value not in self.seen:
                self.seen.add(value)
                return value

    def family(self) -> str:
        """A shared prefix: a PaymentIntent and its charges look alike (pi_3Nx.../ch_3Nx...)."""
        return "3" + self.chars(13)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


@dataclass
class _Refund:
    amount: int
    at: int
    pending: bool = False
    settle_at: int = 0
    refund_id: str = ""


@dataclass
class _Dispute:
    reason: str
    created: int
    final: str
    inquiry: bool = False
    evidence: bool = True
    dispute_id: str = ""
    due_by: int = 0
    steps: list[tuple[int, str, str, int]] = field(default_factory=list)  # (at, event type, status, due_by)


@dataclass
class _Plan:
    index: int
    student_id: str
    course: Course
    currency: str  # lower case, as Stripe sends
    price: int  # minor units
    start: int
    kinds: list[str] = field(default_factory=list)
    failed: int = 0
    attempts: list[int] = field(default_factory=list)  # times of the failed attempts
    pay_at: int = 0
    refunds: list[_Refund] = field(default_factory=list)
    dispute: _Dispute | None = None
    rebuy_of: _Plan | None = None
    rebought_by: _Plan | None = None
    gap: str | None = None
    drop_student: bool = False
    order_id: str = ""
    family: str = ""
    pi_id: str = ""
    charge_id: str = ""
    failed_charges: list[str] = field(default_factory=list)
    customer: str = ""
    payment_method: str = ""

    @property
    def last_refund_at(self) -> int:
        return max((r.settle_at if r.pending else r.at) for r in self.refunds)

    @property
    def metadata(self) -> dict[str, str]:
        meta = {"order_id": self.order_id, "course_id": self.course.course_id}
        if not self.drop_student:
            meta["student_id"] = self.student_id
        return meta


def _mix(n: int) -> dict[str, int]:
    """How many orders of each case, for n orders in all (each at least 1 from ~150 orders up)."""

    def part(rate: float) -> int:
        exact = n * rate
        return max(1, round(exact)) if n >= 150 else int(exact)

    full = part(0.10)
    mix = {
        "full": full,
        "rebought": max(1, round(full * 0.45)) if full else 0,
        "other_course": max(1, round(full * 0.08)) if full >= 4 else 0,
        "bought_before": max(1, round(full * 0.06)) if full >= 6 else 0,
        "partial": part(0.05), "two_partial": part(0.015), "partial_then_full": part(0.02),
        "dispute_won": part(0.012), "dispute_lost": part(0.012), "dispute_needs_response": part(0.006),
        "dispute_under_review": part(0.006), "inquiry_closed": part(0.002),
        "gap_currency": part(0.004), "gap_student": part(0.006),
        "failed": part(0.06), "early_refund": min(3, full),
    }
    return mix


def _whole(price_minor: int, exponent: int, fraction: float) -> int:
    """A fraction of a price, rounded to whole currency units (as course refunds are), at least one unit."""
    unit = 10**exponent
    return max(unit, int(price_minor * fraction) // unit * unit)


def _due_by(at: int, days: int) -> int:
    """Stripe's evidence deadline: 23:59:59 UTC of the day `days` after `at`."""
    return (at + days * DAY) // DAY * DAY + DAY - 1


def _plan(rng: random.Random, n: int, currency: str) -> list[_Plan]:
    exponent = CURRENCY_EXPONENTS[currency.upper()]
    unit = 10**exponent
    mix = _mix(n)
    extra = mix["rebought"] + mix["other_course"] + mix["bought_before"]
    base_count = n - extra
    students = [f"stu-{k:05d}" for k in range(1, max(2, int(n * 0.8)) + 1)]
    used: set[tuple[str, str]] = set()

    def pair(student: str | None = None, avoid: str | None = None) -> tuple[str, Course]:
        for _ in range(10_000):
            s = student or rng.choice(students)
            c = rng.choice(COURSES)
            if c.course_id != avoid and (s, c.course_id) not in used:
                used.add((s, c.course_id))
                return s, c
        raise RuntimeError("ran out of student/course pairs")

    plans: list[_Plan] = []
    for i in range(base_count):
        s, c = pair()
        start = WINDOW_START + rng.randrange(0, WINDOW_DAYS * DAY - 6 * HOUR)
        plans.append(_Plan(i, s, c, currency.lower(), c.price * unit, start))

    order = list(range(base_count))
    rng.shuffle(order)

    def take(k: int) -> list[_Plan]:
        chosen = [plans[i] for i in order[:k]]
        del order[:k]
        return chosen

    full = take(mix["full"])
    # Roles of fully refunded orders whose student buys again (those extra orders are made below).
    cut1, cut2 = mix["rebought"], mix["rebought"] + mix["other_course"]
    rebought, other_course, bought_before = full[:cut1], full[cut1:cut2], full[cut2:extra]
    partial, two_partial, partial_full = take(mix["partial"]), take(mix["two_partial"]), take(mix["partial_then_full"])
    disputes = {k: take(mix[k]) for k in ("dispute_won", "dispute_lost", "dispute_needs_response",
                                         "dispute_under_review", "inquiry_closed")}
    gap_currency, gap_student = take(mix["gap_currency"]), take(mix["gap_student"])

    for p in rng.sample(plans, min(mix["failed"], len(plans))):
        p.failed = 1 if rng.random() < 0.75 else 2
        p.kinds.append(FAILED_THEN_PAID)
    for p in plans:
        at = p.start
        for _ in range(p.failed):
            p.attempts.append(at)
            at += rng.randrange(40, 600)
        p.pay_at = at

    def refund_at(p: _Plan) -> int:
        return p.pay_at + rng.randrange(2 * HOUR, 6 * DAY)

    for p in full:
        p.refunds = [_Refund(p.price, refund_at(p))]
        p.kinds.append(FULL_REFUND)
    for p in partial:
        p.refunds = [_Refund(_whole(p.price, exponent, rng.uniform(0.2, 0.6)), refund_at(p))]
        p.kinds.append(PARTIAL_REFUND)
    for p in two_partial:
        first = _whole(p.price, exponent, rng.uniform(0.1, 0.35))
        second = _whole(p.price, exponent, rng.uniform(0.1, 0.35))
        t = refund_at(p)
        p.refunds = [_Refund(first, t), _Refund(second, t + rng.randrange(HOUR, 4 * DAY))]
        p.kinds.append(TWO_PARTIAL_REFUNDS)
    for p in partial_full:
        first = _whole(p.price, exponent, rng.uniform(0.2, 0.5))
        t = refund_at(p)
        p.refunds = [_Refund(first, t), _Refund(p.price - first, t + rng.randrange(HOUR, 4 * DAY))]
        p.kinds.append(PARTIAL_THEN_FULL)

    # A few refunds right after the payment: delivered before their own charge below.
    refundable = [p for p in full[extra:] + partial if not p.failed]
    for p in refundable[: mix["early_refund"]]:
        p.refunds[0].at = p.pay_at + rng.randrange(5, 60)
        p.kinds.append(EARLY_REFUND)

    refunded = full + partial + two_partial + partial_full
    for p in refunded:
        for r in p.refunds:
            if rng.random() < 0.25:
                r.pending, r.settle_at = True, r.at + rng.randrange(HOUR, 3 * DAY)
    if refunded and not any(r.pending for p in refunded for r in p.refunds):
        r = refunded[-1].refunds[0]
        r.pending, r.settle_at = True, r.at + rng.randrange(HOUR, 3 * DAY)
    for p in refunded:
        if any(r.pending for r in p.refunds):
            p.kinds.append(PENDING_REFUND)
        # Refunds of one charge never overlap in time (the next starts after the previous settled).
        for prev, nxt in itertools.pairwise(p.refunds):
            floor = (prev.settle_at if prev.pending else prev.at) + MINUTE
            if nxt.at < floor:
                nxt.at = floor + rng.randrange(0, HOUR)
                if nxt.pending:
                    nxt.settle_at = nxt.at + rng.randrange(HOUR, 3 * DAY)

    for kind, members in disputes.items():
        for p in members:
            final = {"dispute_won": "won", "dispute_lost": "lost", "dispute_needs_response": "needs_response",
                     "dispute_under_review": "under_review", "inquiry_closed": "warning_closed"}[kind]
            inquiry = final == "warning_closed" or rng.random() < 0.25
            p.dispute = _Dispute(rng.choice(DISPUTE_REASONS), p.pay_at + rng.randrange(3 * DAY, 25 * DAY), final,
                                 inquiry=inquiry, evidence=final != "lost" or rng.random() < 0.5)
            p.kinds.append(INQUIRY_CLOSED if final == "warning_closed" else f"dispute_{final}")
            if inquiry and final != "warning_closed":
                p.kinds.append(DISPUTE_INQUIRY)
            if final == "lost" and not p.dispute.evidence:
                p.kinds.append(DISPUTE_LOST_NO_EVIDENCE)

    for p in gap_currency:
        p.currency = GAP_CURRENCY
        p.price = p.course.price * 500 * 100  # IDR is a two-decimal currency at Stripe
        p.gap = f"unsupported currency {GAP_CURRENCY!r}"
        p.kinds.append(GAP_UNSUPPORTED_CURRENCY)
    for p in gap_student:
        p.drop_student = True
        p.gap = "metadata.student_id is missing"
        p.kinds.append(GAP_MISSING_STUDENT_ID)

    # Orders that exist because of another order's refund.
    index = base_count
    for p in rebought:
        variant = rng.random()
        if variant < 0.6:
            price, kind = p.price, REBUY_SAME_PRICE
        elif variant < 0.85:
            price, kind = _whole(p.price, exponent, 0.9), REBUY_CHEAPER  # a discount code
        else:
            price, kind = _whole(p.price, exponent, 1.2), REBUY_DEARER  # the upgraded curriculum
        new = _Plan(index, p.student_id, p.course, p.currency, price,
                    p.last_refund_at + rng.randrange(HOUR, 4 * DAY), kinds=[REBUY, kind])
        new.pay_at, new.rebuy_of, p.rebought_by = new.start, p, new
        p.kinds.append(REBOUGHT)
        plans.append(new)
        index += 1
    for p in other_course:
        s, c = pair(p.student_id, avoid=p.course.course_id)
        new = _Plan(index, s, c, p.currency, c.price * unit, p.last_refund_at + rng.randrange(HOUR, 4 * DAY),
                    kinds=[OTHER_COURSE_PURCHASE])
        new.pay_at = new.start
        p.kinds.append(OTHER_COURSE_AFTER_REFUND)
        plans.append(new)
        index += 1
    for p in bought_before:
        new = _Plan(index, p.student_id, p.course, p.currency, p.price, p.pay_at + rng.randrange(HOUR, DAY),
                    kinds=[PURCHASE_BEFORE_REFUND])
        new.pay_at = new.start
        r = p.refunds[0]
        r.at = new.pay_at + rng.randrange(HOUR, 2 * DAY)
        if r.pending:
            r.settle_at = r.at + rng.randrange(HOUR, 3 * DAY)
        p.kinds.append(BOUGHT_AGAIN_BEFORE_REFUND)
        plans.append(new)
        index += 1
    return plans


# --- Stripe objects --------------------------------------------------------------------------------


def _envelope(ids: _Ids, type_: str, created: int, obj: dict[str, Any], *,
              previous: dict[str, Any] | None = None, api_request: bool = True) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    request = ({"id": ids.make("req_", 14), "idempotency_key": ids.uuid()} if api_request
               else {"id": None, "idempotency_key": None})
    return {"id": ids.make("evt_"), "object": "event", "api_version": API_VERSION, "created": created,
            "data": data, "livemode": False, "pending_webhooks": 1, "request": request, "type": type_}


def _charge(p: _Plan, charge_id: str, created: int, *, failed: tuple[str, str] | None = None,
            amount_refunded: int = 0, ids: _Ids) -> dict[str, Any]:
    ok = failed is None
    decline, message = failed if failed is not None else (None, None)
    return {
        "id": charge_id, "object": "charge", "amount": p.price, "amount_captured": p.price if ok else 0,
        "amount_refunded": amount_refunded, "balance_transaction": ids.make("txn_") if ok else None,
        "billing_details": {"address": {"country": "TW"}, "email": f"{p.student_id}@students.example",
                            "name": None, "phone": None},
        "captured": ok, "created": created, "currency": p.currency, "customer": p.customer,
        "description": f"Kolable: {p.course.title}", "disputed": False,
        "failure_code": None if ok else "card_declined", "failure_message": message,
        "livemode": False, "metadata": p.metadata,
        "outcome": ({"network_status": "approved_by_network", "reason": None, "risk_level": "normal",
                     "seller_message": "Payment complete.", "type": "authorized"} if ok else
                    {"network_status": "declined_by_network", "reason": decline, "risk_level": "normal",
                     "seller_message": "The bank did not return any further details with this decline.",
                     "type": "issuer_declined"}),
        "paid": ok, "payment_intent": p.pi_id, "payment_method": p.payment_method,
        "payment_method_details": {"card": {"brand": "visa", "country": "TW", "exp_month": 8, "exp_year": 2028,
                                            "funding": "credit", "last4": "4242"}, "type": "card"},
        "refunded": ok and amount_refunded >= p.price, "status": "succeeded" if ok else "failed",
    }


def _payment_intent(p: _Plan, *, succeeded: bool, latest_charge: str,
                    error: tuple[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": p.pi_id, "object": "payment_intent", "amount": p.price, "amount_capturable": 0,
        "amount_received": p.price if succeeded else 0, "capture_method": "automatic", "created": p.start,
        "currency": p.currency, "customer": p.customer, "description": f"Kolable: {p.course.title}",
        "last_payment_error": None if error is None else {
            "charge": latest_charge, "code": "card_declined", "decline_code": error[0],
            "doc_url": "https://stripe.com/docs/error-codes/card-declined", "message": error[1],
            "type": "card_error"},
        "latest_charge": latest_charge, "livemode": False, "metadata": p.metadata,
        "payment_method": p.payment_method if succeeded else None, "payment_method_types": ["card"],
        "status": "succeeded" if succeeded else "requires_payment_method",
    }


def _refund(p: _Plan, r: _Refund, status: str, ids: _Ids) -> dict[str, Any]:
    return {"id": r.refund_id, "object": "refund", "amount": r.amount, "balance_transaction": ids.make("txn_"),
            "charge": p.charge_id, "created": r.at, "currency": p.currency, "metadata": {},
            "payment_intent": p.pi_id, "reason": "requested_by_customer", "receipt_number": None, "status": status}


def _dispute(p: _Plan, d: _Dispute, status: str, due_by: int, *, submissions: int, past_due: bool = False,
             withdrawn: bool = False) -> dict[str, Any]:
    fields = ("access_activity_log", "customer_communication", "customer_email_address", "product_description",
              "refund_policy", "refund_policy_disclosure", "service_date", "service_documentation",
              "uncategorized_text")
    evidence: dict[str, str | None] = dict.fromkeys(fields)
    if submissions:
        evidence.update(customer_email_address=f"{p.student_id}@students.example",
                        product_description=p.course.title, refund_policy_disclosure="Shown at checkout.")
    return {"id": d.dispute_id, "object": "dispute", "amount": p.price,
            "balance_transactions": [{"id": f"txn_{d.dispute_id[3:]}", "object": "balance_transaction"}]
            if withdrawn else [],
            "charge": p.charge_id, "created": d.created, "currency": p.currency, "evidence": evidence,
            "evidence_details": {"due_by": due_by, "has_evidence": submissions > 0, "past_due": past_due,
                                 "submission_count": submissions},
            "is_charge_refundable": False, "livemode": False, "metadata": {}, "payment_intent": p.pi_id,
            "reason": d.reason, "status": status}


def _order_events(p: _Plan, rng: random.Random, ids: _Ids) -> list[dict[str, Any]]:
    """The order's events, times strictly increasing."""
    events: list[dict[str, Any]] = []
    for t, charge_id in zip(p.attempts, p.failed_charges, strict=True):
        decline = rng.choice(DECLINES)
        events.append(_envelope(ids, "charge.failed", t, _charge(p, charge_id, t, failed=decline, ids=ids)))
        events.append(_envelope(ids, "payment_intent.payment_failed", t + 1,
                                _payment_intent(p, succeeded=False, latest_charge=charge_id, error=decline)))
    events.append(_envelope(ids, "charge.succeeded", p.pay_at, _charge(p, p.charge_id, p.pay_at, ids=ids)))
    events.append(_envelope(ids, "payment_intent.succeeded", p.pay_at + 1,
                            _payment_intent(p, succeeded=True, latest_charge=p.charge_id)))
    cumulative = 0
    for r in p.refunds:
        cumulative += r.amount
        charge = _charge(p, p.charge_id, p.pay_at, amount_refunded=cumulative, ids=ids)
        events.append(_envelope(ids, "charge.refunded", r.at, charge))
        if r.pending:
            events.append(_envelope(ids, "charge.refund.updated", r.settle_at, _refund(p, r, "succeeded", ids),
                                    previous={"status": "pending"}, api_request=False))
    d = p.dispute
    if d is not None:
        submissions = 0
        previous_status: str | None = None
        due: int | None = None
        for at, type_, status, step_due in d.steps:
            if type_ == "charge.dispute.updated" and status == "under_review":
                submissions = 1
            past_due = status == "lost" and submissions == 0
            withdrawn = not status.startswith("warning_")
            obj = _dispute(p, d, status, step_due, submissions=submissions, past_due=past_due, withdrawn=withdrawn)
            previous: dict[str, Any] | None = None
            if type_ == "charge.dispute.updated":
                previous = {"status": previous_status}
                if status == "under_review":
                    previous["evidence_details"] = {"has_evidence": False, "submission_count": 0}
                elif step_due != due:
                    previous["evidence_details"] = {"due_by": due}
            events.append(_envelope(ids, type_, at, obj, previous=previous, api_request=False))
            if type_ in ("charge.dispute.funds_withdrawn", "charge.dispute.funds_reinstated"):
                continue
            previous_status, due = status, step_due
    events.sort(key=lambda e: e["created"])  # stable: equal times keep their causal order
    last = None
    for e in events:
        if last is not None and e["created"] <= last:
            e["created"] = last + 1
        last = e["created"]
    return events


def _dispute_steps(rng: random.Random, d: _Dispute) -> None:
    """The dispute's path: (at, event type, status, due_by at that step)."""
    t = d.created
    due = _due_by(t, rng.randrange(7, 15))
    steps: list[tuple[int, str, str, int]] = []
    if d.inquiry:
        steps.append((t, "charge.dispute.created", "warning_needs_response", due))
        if d.final == "warning_closed":
            steps.append((t + rng.randrange(3 * DAY, 10 * DAY), "charge.dispute.closed", "warning_closed", due))
            d.steps, d.due_by = steps, due
            return
        t += rng.randrange(DAY, 4 * DAY)
        due = _due_by(t, rng.randrange(7, 15))
        steps.append((t, "charge.dispute.updated", "needs_response", due))
    else:
        steps.append((t, "charge.dispute.created", "needs_response", due))
    steps.append((t + 1, "charge.dispute.funds_withdrawn", "needs_response", due))
    if d.final == "needs_response":
        pass
    elif d.final == "lost" and not d.evidence:
        steps.append((due + rng.randrange(HOUR, 2 * DAY), "charge.dispute.closed", "lost", due))
    else:
        submitted = min(due - HOUR, t + rng.randrange(DAY, 5 * DAY))
        steps.append((submitted, "charge.dispute.updated", "under_review", due))
        if d.final in ("won", "lost"):
            closed = submitted + rng.randrange(10 * DAY, 45 * DAY)
            steps.append((closed, "charge.dispute.closed", d.final, due))
            if d.final == "won":
                steps.append((closed + 1, "charge.dispute.funds_reinstated", "won", due))
    d.steps, d.due_by = steps, due


# --- generation ------------------------------------------------------------------------------------


def generate(seed: int, orders: int, *, currency: str = "TWD", window: int = 40,
             duplicates_per_mille: int | None = None) -> Scenario:
    """A scenario of `orders` orders (re-buys and other later purchases included in the count).

    `window` bounds the shuffle: no event is delivered more than `window` positions away from
    its place in time. `duplicates_per_mille` events in a thousand are delivered twice (default 30).
    """
    if orders < 1:
        raise ValueError("orders must be at least 1")
    if currency.upper() not in CURRENCY_EXPONENTS:
        raise ValueError(f"unsupported scenario currency {currency!r}")
    if window < 2:
        raise ValueError("window must be at least 2")
    rng = random.Random(seed)
    ids = _Ids(rng)
    plans = _plan(rng, orders, currency)

    # Order ids in time order, like Kolable's: KOL-<Taipei date>-<sequence>.
    for seq, p in enumerate(sorted(plans, key=lambda q: (q.start, q.index)), start=1):
        day = datetime.fromtimestamp(p.start, TAIPEI).strftime("%Y%m%d")
        p.order_id = f"KOL-{day}-{seq:05d}"
        p.family = ids.family()
        p.pi_id = f"pi_{p.family}{ids.chars(10)}"
        p.charge_id = f"ch_{p.family}{ids.chars(10)}"
        p.failed_charges = [f"ch_{p.family}{ids.chars(10)}" for _ in range(p.failed)]
        p.customer = ids.make("cus_", 14)
        p.payment_method = ids.make("pm_")
        for r in p.refunds:
            r.refund_id = f"re_{p.family}{ids.chars(10)}"
        if p.dispute is not None:
            p.dispute.dispute_id = ids.make("dp_")
            _dispute_steps(rng, p.dispute)

    by_order: list[tuple[_Plan, list[dict[str, Any]]]] = []
    for p in sorted(plans, key=lambda q: q.order_id):
        by_order.append((p, _order_events(p, rng, ids)))

    tagged = [(e["created"], n, i, p.order_id, e) for n, (p, evs) in enumerate(by_order) for i, e in enumerate(evs)]
    tagged.sort(key=lambda x: (x[0], x[1], x[2]))
    truth_events = [x[4] for x in tagged]
    order_of_event = {x[4]["id"]: x[3] for x in tagged}
    position = {e["id"]: i for i, e in enumerate(truth_events)}

    # Delivery: each event may slip behind later ones by less than `window` positions.
    keys = {e["id"]: position[e["id"]] + rng.random() * (window - 1) for e in truth_events}
    for p, evs in by_order:
        if EARLY_REFUND not in p.kinds:
            continue
        charge = next(e for e in evs if e["type"] == "charge.succeeded")
        refund = next(e for e in evs if e["type"] == "charge.refunded")
        if position[refund["id"]] - position[charge["id"]] < window // 2:
            # The charge webhook failed once and came back late; the refund went through first.
            keys[charge["id"]] = position[charge["id"]] + window - 1
            keys[refund["id"]] = keys[charge["id"]] - 0.5
    delivery = sorted(truth_events, key=lambda e: keys[e["id"]])
    max_displacement = max(abs(i - position[e["id"]]) for i, e in enumerate(delivery))

    rate = 30 if duplicates_per_mille is None else duplicates_per_mille
    count = min(len(truth_events), max(1 if rate else 0, len(truth_events) * rate // 1000))
    dup_sources = rng.sample(truth_events, count)
    extra: list[tuple[float, dict[str, Any]]] = []
    for e in dup_sources:
        copy_ = copy.deepcopy(e)
        if rng.random() < 0.5:
            copy_["pending_webhooks"] = e["pending_webhooks"] + 1  # re-rendered on retry: bytes differ, id same
        extra.append((keys[e["id"]] + 1 + rng.random() * (window - 1), copy_))
    merged = [(keys[e["id"]], 0, e) for e in delivery] + [(k, 1, e) for k, e in extra]
    merged.sort(key=lambda x: (x[0], x[1]))
    events = [x[2] for x in merged]

    first_seen: dict[str, int] = {}
    for i, e in enumerate(events):
        first_seen.setdefault(e["id"], i)
    refund_before_charge = []
    out_of_order = []
    for p, evs in by_order:
        charge = next(e for e in evs if e["type"] == "charge.succeeded")
        refunds = [e for e in evs if e["type"] == "charge.refunded"]
        if refunds and first_seen[refunds[0]["id"]] < first_seen[charge["id"]]:
            refund_before_charge.append(p.order_id)
        seen = [first_seen[e["id"]] for e in evs]
        if seen != sorted(seen):
            out_of_order.append(p.order_id)

    truth: dict[str, OrderTruth] = {}
    for p, _ in by_order:
        d = p.dispute
        truth[p.order_id] = OrderTruth(
            order_id=p.order_id, student_id=None if p.drop_student else p.student_id,
            course_id=p.course.course_id, currency=p.currency.upper(), amount=p.price, ordered_at=p.start,
            paid_at=p.pay_at, payment_intent_id=p.pi_id, charge_id=p.charge_id,
            failed_charge_ids=tuple(p.failed_charges),
            refunds=tuple(RefundTruth(r.refund_id, r.amount, r.at, r.pending) for r in p.refunds),
            dispute=None if d is None else DisputeTruth(
                d.dispute_id, p.price, d.reason, d.created, d.due_by,
                tuple(s[2] for s in d.steps if not s[1].endswith(("funds_withdrawn", "funds_reinstated"))),
                next((s[0] for s in d.steps if s[1] == "charge.dispute.closed"), None)),
            rebuy_of=p.rebuy_of.order_id if p.rebuy_of else None,
            rebought_by=p.rebought_by.order_id if p.rebought_by else None,
            recovered=min(p.rebought_by.price, sum(r.amount for r in p.refunds)) if p.rebought_by else 0,
            data_gap=p.gap, kinds=tuple(sorted(p.kinds)))
    return Scenario(seed=seed, currency=currency.upper(), window=window, events=events, truth_events=truth_events,
                    orders=truth, order_of_event=order_of_event,
                    duplicate_ids=tuple(sorted({e["id"] for e in dup_sources})),
                    refund_before_charge=tuple(refund_before_charge), out_of_order=tuple(out_of_order),
                    max_displacement=max_displacement)
