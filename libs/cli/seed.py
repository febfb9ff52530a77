"""A generator of realistic event store content, for benchmarks and for auditing at scale
(`closeloop dev seed`).

Every event is produced by the services' own pure domain (the Order, Bill, Transaction, Rma and
Shipment aggregates driven through their commands, the payments contract derived from the
transaction, Stripe-format upstream events parsed and normalised by the payments domain), so a
replay of a seeded stream rebuilds without error and reads like the real thing. Each case is one
customer story across streams, with the metadata a service records (actor, role, correlation,
causation, reason):

- orders (prepaid or not) placed, accepted, started, billed, adjusted, confirmed and settled, with
  their bills, transaction, payments contract stream and the provider's charge events;
- orders cancelled by the customer before prepayment, by the merchant after it (refund by the
  cancellation policy, the provider's charge.refunded), or by the payment deadline;
- warranty RMAs from intake to a delivered replacement, with the outbound shipment and the
  carrier's tracking.

Business times spread over the `days` before `now`; the store's recorded_at is the insert time.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

import services
from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent, registry
from libs.domain.money import Money
from libs.eventstore import Metadata, NewEvent
from services.orders.domain.bill import Bill
from services.orders.domain.catalogue import ServiceItem
from services.orders.domain.commands import MaterialInput
from services.orders.domain.events import (
    Address,
    IntendedTenders,
    PrepaymentDecision,
    PrepaymentReason,
    PrepaymentRule,
    Slot,
)
from services.orders.domain.order import Order
from services.payments.application.contract import contract_events, contract_stream_id
from services.payments.application.upstream import upstream_stream_id
from services.payments.domain.events import Tender, TenderKind
from services.payments.domain.policy import CancellationPolicy, parse_policies, policy_in_force
from services.payments.domain.transaction import Transaction
from services.payments.domain.upstream import PROVIDER, event_uuid, normalise, parse_event, received_event
from services.payments.domain.upstream_events import ReceivedVia
from services.rma.domain.catalogue import CatalogueItemSpec, SubstitutionPolicy
from services.rma.domain.events import Contact, RmaSubstitutionRule, ShippingAddress, WarrantyBasis
from services.rma.domain.rma import Rma
from services.rma.domain.substitution import ReplacementContext, plan_replacement
from services.rma.domain.warranty import WarrantyDecision
from services.shipping.domain.events import CarrierTrackingUpdate, TrackingStatus, TrackingVia
from services.shipping.domain.shipment import Shipment, ShipmentRequest, Subject

TPE = ZoneInfo("Asia/Taipei")
POLICIES: list[CancellationPolicy] = parse_policies(
    (Path(next(iter(services.__path__))) / "payments" / "config" / "cancellation_policy.toml").read_text())

ITEMS = [
    ServiceItem(service_code="dishwash-standard", product_line="dishwashing", name="Standard home dish-washing",
                hourly_rate=Money(amount=60000, currency="TWD")),
    ServiceItem(service_code="dishwash-deep", product_line="dishwashing", name="Deep kitchen clean",
                hourly_rate=Money(amount=80000, currency="TWD")),
]
MATERIALS = [
    MaterialInput(code="detergent", description="eco detergent", quantity=1,
                  unit_price=Money(amount=8000, currency="TWD")),
    MaterialInput(code="sink-kit", description="sink cleaning kit", quantity=1,
                  unit_price=Money(amount=25000, currency="TWD")),
    MaterialInput(code="gloves", description="rubber gloves", quantity=2,
                  unit_price=Money(amount=3000, currency="TWD")),
]
DISTRICTS = [("大安區", "臺北市"), ("信義區", "臺北市"), ("中山區", "臺北市"), ("板橋區", "新北市"),
             ("西屯區", "臺中市")]
MICE = {"MS-2003": CatalogueItemSpec(name="optical mouse 2003", price=Money(amount=129000, currency="TWD"),
                                     warranty_days=365, eol=True,
                                     substitutes=[RmaSubstitutionRule(alt_sku="MS-2024", feature_score=80,
                                                                      price_delta=Money(amount=0, currency="TWD"))]),
        "MS-2024": CatalogueItemSpec(name="optical mouse 2024", price=Money(amount=129000, currency="TWD"),
                                     warranty_days=365)}
MOUSE_POLICY = SubstitutionPolicy(version="seed", currency="TWD", price_ceiling=Money(amount=100000, currency="TWD"),
                                  approval_threshold=Money(amount=20000, currency="TWD"))
FAULTS = ["left_button.double_click", "scroll_wheel.skips", "sensor.cursor_jumps", "cable.intermittent"]

# (case, weight)
MIX = [("completed_prepaid", 30), ("completed_postpaid", 15), ("cancelled_before_prepayment", 10),
       ("cancelled_after_prepayment", 10), ("payment_expired", 5), ("rma_replacement", 30)]

Streams = list[tuple[str, list[NewEvent]]]


@dataclass(frozen=True)
class ServiceRows:
    """What a service writes in its own tables for an aggregate's events (libs/cli/dev.py writes them
    with services/rma/application/projections.save and services/shipping/application/projections.py):
    `aggregate` holds every event of its stream as pending (rma), or is saved (shipment)."""

    service: str
    aggregate: Aggregate
    at: datetime


@dataclass
class _Case:
    """One story's streams; events are added in the order they happen, with who and why."""

    correlation_id: str
    streams: dict[str, list[NewEvent]] = field(default_factory=dict)
    last: uuid.UUID | None = None
    # The services' own read-model rows of the case's final state, as they write them with the events.
    service_rows: list[ServiceRows] = field(default_factory=list)

    def add(self, stream_id: str, events: list[DomainEvent], actor: str, role: str, reason: str | None = None) -> None:
        for e in events:
            meta = Metadata(actor=actor, role=role, correlation_id=self.correlation_id,
                            causation_id=str(self.last) if self.last else None, reason=reason)
            new = NewEvent(e.event_type, e.to_data(), meta, e.schema_version)
            self.streams.setdefault(stream_id, []).append(new)
            self.last = new.event_id

    def take(self, agg: Aggregate, actor: str, role: str, reason: str | None = None) -> None:
        self.add(agg.stream_id, agg.pending, actor, role, reason)
        agg.mark_saved()

    def raw(self, stream_id: str, event: NewEvent) -> None:
        self.streams.setdefault(stream_id, []).append(event)
        self.last = event.event_id


class Seeder:
    """Cases of the MIX, drawn with `seed`; ids carry `tag` so that runs never collide."""

    def __init__(self, *, seed: int | None = None, now: datetime | None = None, days: int = 30) -> None:
        self.rng = random.Random(seed)
        self.tag = f"{self.rng.getrandbits(32):08x}" if seed is not None else uuid.uuid4().hex[:8]
        self.now = (now or datetime.now(TPE)).astimezone(TPE)
        self.days = days
        self.n = 0
        self.kinds, self.weights = zip(*MIX, strict=True)

    def _id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.tag}-{self.n:08d}"

    def _moment(self) -> datetime:
        at = self.now - timedelta(seconds=self.rng.randrange(self.days * 86400))
        return at.replace(microsecond=0)

    def cases(self) -> Iterator[tuple[str, Streams]]:
        """Endless (kind, streams) pairs."""
        for kind, case in self.stories():
            yield kind, list(case.streams.items())

    def stories(self) -> Iterator[tuple[str, _Case]]:
        """Endless (kind, case) pairs, with the services' own rows of each case."""
        while True:
            kind = self.rng.choices(self.kinds, self.weights)[0]
            yield kind, self.rma_replacement() if kind == "rma_replacement" else self.order(kind)

    # ------------------------------------------------------------------------------- stripe
    def _stripe(self, case: _Case, order_id: str, amount: int, at: datetime, *, refunded: bool = False,
                charge_id: str | None = None) -> str:
        charge_id = charge_id or f"ch_{self.tag}{self.n:010d}{self.rng.getrandbits(16):04x}"
        created = int(at.timestamp())
        body = {"id": f"evt_{self.rng.getrandbits(96):024x}", "object": "event", "api_version": "2024-06-20",
                "type": "charge.refunded" if refunded else "charge.succeeded", "created": created,
                "livemode": False, "pending_webhooks": 1,
                "data": {"object": {"id": charge_id, "object": "charge", "amount": amount, "amount_captured": amount,
                                    "amount_refunded": amount if refunded else 0, "currency": "twd", "paid": True,
                                    "captured": True, "refunded": refunded, "status": "succeeded",
                                    "payment_intent": f"pi_{charge_id[3:]}", "created": created,
                                    "metadata": {"order_id": order_id}}}}
        event = parse_event(orjson.dumps(body))
        received = received_event(event, via=ReceivedVia.WEBHOOK, signature_verified=True,
                                  received_at=at + timedelta(seconds=2))
        fact = normalise(event)
        stream = upstream_stream_id(event.id)
        meta = Metadata(actor=f"{PROVIDER}:webhook", role="service", correlation_id=f"order-{order_id}")
        case.raw(stream, NewEvent(received.event_type, received.to_data(), meta, received.schema_version,
                                  event_id=event_uuid(PROVIDER, event.id)))
        if fact is not None:
            case.raw(stream, NewEvent(fact.event_type, fact.to_data(), meta, fact.schema_version,
                                      event_id=event_uuid(PROVIDER, event.id, "fact")))
        return charge_id

    # ------------------------------------------------------------------------------- orders
    def order(self, kind: str) -> _Case:
        rng = self.rng
        order_id, customer, merchant, staff = (self._id("ord"), self._id("cust"), self._id("merchant"),
                                               self._id("staff"))
        case = _Case(f"corr-{order_id}")
        cust, merch = (customer, "customer"), (merchant, "merchant")
        orders_svc, payments_svc = ("orders", "service"), ("payments", "service")
        t = self._moment()
        item = rng.choice(ITEMS)
        start = (t + timedelta(days=rng.randint(1, 4))).replace(hour=rng.choice([9, 10, 14, 19]), minute=0, second=0)
        slot = Slot(start=start, end=start + timedelta(hours=2))
        district, city = rng.choice(DISTRICTS)
        address = Address(line1=f"{rng.randint(1, 300)} 號 {rng.randint(1, 20)} 樓", district=district, city=city)
        prepaid = kind != "completed_postpaid"
        deadline = t + timedelta(minutes=15)
        decision = (
            PrepaymentDecision(required=True, policy_version="seed-1", payment_deadline=deadline, reasons=[
                PrepaymentReason(rule=PrepaymentRule.PRODUCT_LINE,
                                 detail="product line 'dishwashing' requires prepayment")])
            if prepaid else PrepaymentDecision(required=False, policy_version="seed-1", reasons=[
                PrepaymentReason(rule=PrepaymentRule.NONE, detail="no prepayment rule matched")]))
        pre_id = self._id("bpre") if prepaid else None
        order = Order.place(order_id, customer_id=customer, staff_id=staff, item=item, slot=slot, address=address,
                            tenders=IntendedTenders(), decision=decision, prepayment_bill_id=pre_id,
                            timezone="Asia/Taipei", at=t)
        estimate = order.estimated_total
        assert estimate is not None
        policy = policy_in_force(POLICIES, t)
        tx = Transaction.open(order_id, customer_id=customer, placed_at=t, estimated_total=estimate,
                              policy_version=policy.version, at=t + timedelta(seconds=1), prepayment_bill_id=pre_id,
                              payment_deadline=deadline if prepaid else None)
        pre_bill = Bill.issue_prepayment(pre_id, order_id, estimate, t) if pre_id else None
        case.take(order, *cust)
        if pre_bill:
            case.take(pre_bill, *cust)
        self._payments(case, tx, *payments_svc)

        def tick(minutes: int) -> datetime:
            nonlocal t
            t = t + timedelta(minutes=minutes, seconds=rng.randint(0, 59))
            return t

        if kind == "cancelled_before_prepayment":
            assert pre_bill is not None
            order.cancel(cancelled_by="customer", reason_code="changed_mind", reason="booked the wrong day",
                         at=tick(3))
            pre_bill.close("order cancelled before prepayment", t)
            case.take(order, *cust, reason="booked the wrong day")
            case.take(pre_bill, *cust)
            tx.cancel(fault_party="customer", seconds_before_service_start=int((slot.start - t).total_seconds()),
                      reason_code="changed_mind", policy=policy, at=t + timedelta(seconds=1), merchant_id=merchant)
            self._payments(case, tx, *payments_svc)
            return case
        charge: str | None = None
        if prepaid:
            assert pre_bill is not None and pre_id is not None
            attempt = f"att-{self.n}"
            tx.start_attempt(attempt, estimate, "credit_card", tick(1))
            order.start_checkout(attempt, t)
            pre_bill.start_payment(attempt, t)
            case.take(order, *cust)
            case.take(pre_bill, *cust)
            self._payments(case, tx, *cust)
            if kind == "payment_expired":
                t = deadline + timedelta(seconds=1)
                order.expire_payment_deadline(t)
                pre_bill.close("payment deadline passed", t)
                case.take(order, *orders_svc, reason="payment deadline passed")
                case.take(pre_bill, *orders_svc)
                tx.cancel(fault_party="customer", seconds_before_service_start=int((slot.start - t).total_seconds()),
                          reason_code="payment_timeout", policy=policy, at=t + timedelta(seconds=1),
                          merchant_id=merchant)
                self._payments(case, tx, *payments_svc)
                return case
            charge = self._stripe(case, order_id, estimate.amount, tick(1))
            tender = Tender(kind=TenderKind.THIRD_PARTY, amount=estimate, reference=f"pi_{charge[3:]}")
            tx.capture_prepayment([tender], at=t + timedelta(seconds=3))
            self._payments(case, tx, *payments_svc)
            pre_bill.pay(estimate, tender.reference, t + timedelta(seconds=4))
            order.record_prepayment(pre_id, estimate, tender.reference, t + timedelta(seconds=4))
            case.take(order, *orders_svc)
            case.take(pre_bill, *orders_svc)
        order.accept(merchant, tick(rng.randint(2, 120)))
        case.take(order, *merch)
        if kind == "cancelled_after_prepayment":
            reason = rng.choice(["the staff member is ill", "double booking", "no staff in the district"])
            order.cancel(cancelled_by="merchant", merchant_id=merchant, reason_code="staff_unavailable",
                         reason=reason, at=tick(rng.randint(10, 600)))
            case.take(order, *merch, reason=reason)
            tx.cancel(fault_party="merchant", seconds_before_service_start=int((slot.start - t).total_seconds()),
                      reason_code="staff_unavailable", policy=policy, at=t + timedelta(seconds=1),
                      merchant_id=merchant)
            self._payments(case, tx, *payments_svc)
            assert charge is not None
            self._stripe(case, order_id, estimate.amount, tick(5), refunded=True, charge_id=charge)
            return case
        t = slot.start + timedelta(minutes=rng.randint(-5, 10))
        order.start_service(merchant, t)
        case.take(order, *merch)
        minutes = rng.choice([105, 120, 135, 150, 180])
        materials = rng.sample(MATERIALS, rng.randint(0, 2))
        fin_id = self._id("bfin")
        final = Bill.push(fin_id, order_id, hourly_rate=item.hourly_rate, actual_minutes=minutes, materials=materials,
                          at=tick(minutes))
        assert final.amount is not None
        order.push_bill(merchant, fin_id, final.amount, t)
        case.take(final, *merch)
        case.take(order, *merch)
        if rng.random() < 0.3:
            note = f"customer: it took {(minutes - 15) // 60}h{(minutes - 15) % 60:02d}m"
            final.adjust(minutes - 15, materials, note, tick(5))
            assert final.amount is not None
            order.adjust_bill(merchant, fin_id, final.revision, final.amount, t)
            case.take(final, *merch, reason=note)
            case.take(order, *merch, reason=note)
        total = final.amount
        assert total is not None
        final.confirm(final.revision, tick(10))
        order.confirm_bill(customer, fin_id, final.revision, total, t)
        case.take(final, *cust)
        case.take(order, *cust)
        tx.bill(fin_id, final.revision, total, t + timedelta(seconds=1))
        shortfall = tx.preview_settlement().shortfall
        reference = None
        if shortfall.amount:
            reference = f"pi_{self._stripe(case, order_id, shortfall.amount, tick(2))[3:]}"
        tx.settle(at=t + timedelta(seconds=3), method=TenderKind.THIRD_PARTY if shortfall.amount else None,
                  reference=reference)
        self._payments(case, tx, *payments_svc)
        final.pay(total, reference or "prepayment", t + timedelta(seconds=4))
        order.record_settlement(fin_id, total, t + timedelta(seconds=4))
        case.take(final, *orders_svc)
        case.take(order, *orders_svc)
        return case

    def _payments(self, case: _Case, tx: Transaction, actor: str, role: str) -> None:
        """The transaction's new events and the contract events they imply, as payments appends them."""
        new = tx.pending
        derived = contract_events(new, tx.settlement)
        case.take(tx, actor, role)
        if derived:
            case.add(contract_stream_id(tx.id), derived, actor, role)

    # ------------------------------------------------------------------------------- after-sales
    def rma_replacement(self) -> _Case:
        rng = self.rng
        rma_id, customer = self._id("RMA"), self._id("cust")
        case = _Case(f"corr-{rma_id}")
        t = self._moment()
        contact = Contact(customer_id=customer, email=f"{customer}@example.com", locale="zh-TW")
        district, city = rng.choice(DISTRICTS)
        ship_to = ShippingAddress(name="王小明", line1=f"{district}{rng.randint(1, 300)} 號", city=city)
        sku = "MS-2003" if rng.random() < 0.6 else "MS-2024"
        home = rng.choice(["wh-tpe", "wh-txg"])
        rma = Rma.open(rma_id, serial=f"SN{self.n:010d}", sku=sku, fault_code=rng.choice(FAULTS),
                       description="the button clicks twice", attachments=[], contact=contact, ship_to=ship_to,
                       warehouse_id=home, at=t)
        case.take(rma, customer, "customer")
        purchase = (t - timedelta(days=rng.randint(20, 360))).date()
        basis = WarrantyBasis(source="sales_record", reference=f"INV-{self.n}", purchase_date=purchase,
                              warranty_days=365, expires_on=purchase + timedelta(days=365), checked_on=t.date())
        rma.check_warranty(WarrantyDecision("eligible", f"day {(t.date() - purchase).days} of 365", basis,
                                            t.date()), t + timedelta(seconds=1))
        case.take(rma, "rma", "service")
        t += timedelta(days=rng.randint(1, 3), hours=rng.randint(0, 8))
        rma.receive_parcel(f"LBL-{rma_id}", t)
        case.take(rma, "warehouse-scanner", "service")
        rma.start_processing(f"tech-{rng.randint(1, 12):02d}", t + timedelta(hours=2))
        case.take(rma, f"tech-{rng.randint(1, 12):02d}", "service")
        plan = plan_replacement(ReplacementContext(original_sku=sku, original=MICE[sku], items=MICE,
                                                   policy=MOUSE_POLICY, home_warehouse=home,
                                                   stock={(home, "MS-2024"): 5}))
        rma.choose(plan, t + timedelta(hours=2, minutes=5))
        ready = rma.mark_ready(t + timedelta(hours=2, minutes=6))
        case.take(rma, "rma", "service", reason=plan.reason or None)
        request = ShipmentRequest(rma_id=rma_id, action="ship_replacement", sku=ready.sku, warehouse_id=home,
                                  ship_to=ship_to, contact=contact)
        number = f"97{self.n:010d}"
        shipment = Shipment.create(Subject("rma", rma_id), request, "island", "standard", number,
                                   t + timedelta(days=2), t + timedelta(hours=3))
        case.take(shipment, "shipping", "service")
        rma.ship_out(shipment_id=shipment.id, carrier="island", tracking_number=number, eta=t + timedelta(days=2),
                     at=t + timedelta(hours=3, seconds=1))
        case.take(rma, "rma", "service")
        for i, status in enumerate([TrackingStatus.IN_TRANSIT, TrackingStatus.OUT_FOR_DELIVERY,
                                    TrackingStatus.DELIVERED]):
            at = t + timedelta(hours=8 + 14 * i)
            update = CarrierTrackingUpdate(carrier="island", event_key=f"id:{number}-{i}", tracking_number=number,
                                           status=status, carrier_status=status.value, occurred_at=at,
                                           location=city)
            shipment.record_tracking(update, TrackingVia.HTTP, at + timedelta(minutes=1))
            case.take(shipment, "island:http", "service")
        rma.close("replacement_delivered", shipment.id, t + timedelta(hours=37))
        case.take(rma, "rma", "service")
        # The rows rma and shipping keep of these streams: the RMA with all its events pending (its
        # read model is written from the pending events), the shipment as it stands.
        whole = Rma(rma_id)
        for e in (case.streams[rma.stream_id]):
            whole._record(registry.decode(e.event_type, e.schema_version, e.data))
        case.service_rows += [ServiceRows("rma", whole, t + timedelta(hours=37)),
                              ServiceRows("shipping", shipment, t + timedelta(hours=22, minutes=1))]
        return case


def batches(seeder: Seeder, events: int, batch_events: int) -> Iterator[tuple[Streams, dict[str, int]]]:
    """Whole cases grouped into batches of about `batch_events` events, `events` in all (the last
    case may end a little past it). Yields (streams, cases per kind)."""
    for streams, kinds, _ in batches_with_rows(seeder, events, batch_events):
        yield streams, kinds


def batches_with_rows(seeder: Seeder, events: int, batch_events: int,
                      ) -> Iterator[tuple[Streams, dict[str, int], list[ServiceRows]]]:
    """batches(), with the services' own read-model rows of each batch's cases."""
    produced = 0
    streams: Streams = []
    kinds: dict[str, int] = {}
    rows: list[ServiceRows] = []
    in_batch = 0
    for kind, case in seeder.stories():
        if produced >= events:
            break
        size = sum(len(evs) for evs in case.streams.values())
        streams += list(case.streams.items())
        rows += case.service_rows
        kinds[kind] = kinds.get(kind, 0) + 1
        produced += size
        in_batch += size
        if in_batch >= batch_events:
            yield streams, kinds, rows
            streams, kinds, rows, in_batch = [], {}, [], 0
    if streams:
        yield streams, kinds, rows
