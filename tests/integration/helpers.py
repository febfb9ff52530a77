"""Shared builders of the relay and projector integration tests.

Event sequences come from the pure orders domain (Order and Bill aggregates driven through
their commands), so every stream holds what the orders service would really store. Ids
are random (uuid4), so tests share the database and the broker with anything else.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from libs.domain.aggregate import Aggregate
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from libs.eventstore import NO_STREAM, Cursor, EventStore, Metadata, NewEvent, RecordedEvent
from libs.messaging import envelope
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
from services.payments.application.contract import contract_stream_id
from services.payments.domain import events as pay
from services.projector.rebuild import TABLES

TZ = ZoneInfo("Asia/Taipei")
NOW = datetime(2025, 3, 10, 9, 0, tzinfo=TZ)
SLOT = Slot(start=datetime(2025, 3, 11, 14, 0, tzinfo=TZ), end=datetime(2025, 3, 11, 16, 0, tzinfo=TZ))
ADDRESS = Address(line1="No. 7, Sec. 5, Xinyi Rd., 12F", district="信義區", city="臺北市", postal_code="110")
ITEM = ServiceItem(service_code="dishwash-standard", product_line="dishwashing",
                   name="Standard home dish-washing", hourly_rate=Money(amount=60000, currency="TWD"))
SINK_KIT = MaterialInput(code="sink-kit", description="sink cleaning kit", quantity=1,
                         unit_price=Money(amount=25000, currency="TWD"))
GLOVES = MaterialInput(code="gloves", description="rubber gloves", quantity=2,
                       unit_price=Money(amount=3000, currency="TWD"))

KINDS = (
    "completed",  # prepaid, accepted, started, bill pushed, adjusted, confirmed, paid, completed
    "completed_without_prepayment",
    "cancelled_before_prepayment",  # by the customer; the prepayment bill is closed
    "cancelled_after_prepayment",  # by the merchant, after accepting
    "payment_abandoned_and_retried",  # the cashier is left `retries` times, then paid; completed
    "payment_expired",  # the deadline passes unpaid: the system cancels, the bill is closed
)

Step = list[tuple[str, list[NewEvent]]]  # one transaction: (stream id, events) pairs


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


@dataclass
class Story:
    """One order's life as the orders service (and payments) would store it."""

    kind: str
    order_id: str
    steps: list[Step] = field(default_factory=list)

    @property
    def order_stream(self) -> str:
        return Order.stream_id_for(self.order_id)

    @property
    def streams(self) -> dict[str, list[NewEvent]]:
        """Each stream's events in version order (streams in order of first appearance)."""
        out: dict[str, list[NewEvent]] = {}
        for step in self.steps:
            for stream_id, events in step:
                out.setdefault(stream_id, []).extend(events)
        return out

    @property
    def bill_streams(self) -> list[str]:
        return [s for s in self.streams if s.startswith("bill-")]

    @property
    def projected_streams(self) -> list[str]:
        """The streams the order projection reads (order and bill)."""
        return [s for s in self.streams if s.startswith(("order-", "bill-"))]

    @property
    def event_ids(self) -> list[uuid.UUID]:
        return [e.event_id for events in self.streams.values() for e in events]

    def event_types(self, stream_id: str) -> list[str]:
        return [e.event_type for e in self.streams[stream_id]]


class _Recorder:
    """Turns the aggregates' pending events into steps with realistic metadata."""

    def __init__(self, story: Story, correlation_id: str) -> None:
        self.story = story
        self.correlation_id = correlation_id
        self.last_event_id: uuid.UUID | None = None

    def _new(self, event: DomainEvent, actor: str, role: str) -> NewEvent:
        meta = Metadata(actor=actor, role=role, correlation_id=self.correlation_id,
                        causation_id=str(self.last_event_id) if self.last_event_id else None)
        new = NewEvent(event_type=event.event_type, data=event.to_data(), metadata=meta,
                       schema_version=event.schema_version)
        self.last_event_id = new.event_id
        return new

    def step(self, actor: str, role: str, *parts: Aggregate | tuple[str, DomainEvent] | None) -> None:
        step: Step = []
        for part in parts:
            if part is None:
                continue
            if isinstance(part, Aggregate):
                events = part.pending
                part.mark_saved()
                stream_id = part.stream_id
            else:
                stream_id, event = part
                events = [event]
            if events:
                step.append((stream_id, [self._new(e, actor, role) for e in events]))
        if step:
            self.story.steps.append(step)


def _decision(required: bool) -> PrepaymentDecision:
    if required:
        return PrepaymentDecision(required=True, policy_version="it-1", payment_deadline=NOW + timedelta(minutes=15),
                                  reasons=[PrepaymentReason(rule=PrepaymentRule.PRODUCT_LINE,
                                                            detail="product line 'dishwashing' requires prepayment")])
    return PrepaymentDecision(required=False, policy_version="it-1",
                              reasons=[PrepaymentReason(rule=PrepaymentRule.NONE, detail="no prepayment rule matched")])


def order_story(kind: str = "completed", *, retries: int = 1, with_payments: bool = False,
                order_id: str | None = None) -> Story:
    """A realistic, valid event sequence for one order, per stream: order-<id>, its
    prepayment and final bill-<id> streams and (with_payments) the payments service's
    payment-<order id> stream (the payments contract stream). `retries` counts the abandoned cashier visits of
    payment_abandoned_and_retried."""
    if kind not in KINDS:
        raise ValueError(f"unknown story kind {kind!r}; one of {KINDS}")
    order_id = order_id or new_id("ord")
    story = Story(kind, order_id)
    rec = _Recorder(story, correlation_id=new_id("corr-"))
    customer, merchant = new_id("cus"), new_id("mer")
    as_customer = (f"customer:{customer}", "customer")
    as_merchant = (f"merchant:{merchant}", "merchant")
    as_payments = ("service:payments", "system")
    as_system = ("service:orders", "system")
    tx_stream = contract_stream_id(order_id)
    prepaid = kind != "completed_without_prepayment"
    pre_id = new_id("bpre") if prepaid else None
    t = NOW

    def tick(minutes: int = 1) -> datetime:
        nonlocal t
        t = t + timedelta(minutes=minutes)
        return t

    def payments(event: DomainEvent) -> tuple[str, DomainEvent] | None:
        return (tx_stream, event) if with_payments else None

    order = Order.place(order_id, customer_id=customer, staff_id=new_id("stf"), item=ITEM, slot=SLOT,
                        address=ADDRESS, tenders=IntendedTenders(), decision=_decision(prepaid),
                        prepayment_bill_id=pre_id, timezone="Asia/Taipei", at=t)
    assert order.estimated_total is not None
    estimate = order.estimated_total
    if pre_id is None:
        rec.step(*as_customer, order)
        pre_bill = None
    else:
        pre_bill = Bill.issue_prepayment(pre_id, order_id, estimate, t)
        rec.step(*as_customer, order, pre_bill)

    def checkout(attempt: str) -> None:
        assert pre_bill is not None and pre_id is not None
        order.start_checkout(attempt, tick())
        pre_bill.start_payment(attempt, t)
        rec.step(*as_customer, order, pre_bill, payments(pay.PaymentAttemptStarted(
            order_id=order_id, bill_id=pre_id, attempt_id=attempt, amount=estimate, method="credit_card", at=t)))

    def abandon(attempt: str) -> None:
        assert pre_bill is not None and pre_id is not None
        rec.step(*as_payments, payments(pay.PaymentAttemptFailed(
            order_id=order_id, bill_id=pre_id, attempt_id=attempt, reason=pay.FailureReason.ABANDONED, at=tick())))
        order.abandon_checkout(attempt, "customer returned from the cashier", t)
        pre_bill.abandon_payment(attempt, "customer returned from the cashier", t)
        rec.step(*as_system, order, pre_bill)

    def prepay(attempt: str) -> str:
        assert pre_bill is not None and pre_id is not None
        reference = f"psp-{uuid.uuid4().hex[:12]}"
        rec.step(*as_payments, payments(pay.PrepaymentCaptured(
            order_id=order_id, bill_id=pre_id, amount=estimate, captured_at=tick(),
            tenders=[pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=estimate, reference=reference)])))
        pre_bill.pay(estimate, reference, t)
        order.record_prepayment(pre_id, estimate, reference, t)
        rec.step(*as_system, order, pre_bill)
        return reference

    if kind == "cancelled_before_prepayment":
        assert pre_bill is not None
        order.cancel(cancelled_by="customer", reason_code="changed_mind", reason="booked the wrong day", at=tick(3))
        pre_bill.close("order cancelled before prepayment", t)
        rec.step(*as_customer, order, pre_bill)
        return story
    if kind == "payment_expired":
        assert pre_bill is not None and order.payment_deadline is not None
        checkout("att-1")
        t = order.payment_deadline + timedelta(seconds=1)
        order.expire_payment_deadline(t)
        pre_bill.close("payment deadline passed", t)
        rec.step(*as_system, order, pre_bill)
        return story

    prepay_reference = None
    if prepaid:
        for i in range(retries if kind == "payment_abandoned_and_retried" else 0):
            checkout(f"att-{i + 1}")
            abandon(f"att-{i + 1}")
        checkout("att-final")
        prepay_reference = prepay("att-final")

    order.accept(merchant, tick(10))
    rec.step(*as_merchant, order)
    if kind == "cancelled_after_prepayment":
        order.cancel(cancelled_by="merchant", merchant_id=merchant, reason_code="staff_unavailable",
                     reason="the staff member is ill", at=tick(30))
        rec.step(*as_merchant, order)
        return story

    t = SLOT.start
    order.start_service(merchant, t)
    rec.step(*as_merchant, order)
    fin_id = new_id("bfin")
    final = Bill.push(fin_id, order_id, hourly_rate=ITEM.hourly_rate, actual_minutes=135, materials=[SINK_KIT],
                      at=SLOT.end)
    assert final.amount is not None
    order.push_bill(merchant, fin_id, final.amount, SLOT.end)
    rec.step(*as_merchant, final, order)
    revision = 1
    if kind == "completed":  # the customer asks for a correction before confirming
        final.adjust(150, [SINK_KIT, GLOVES], "two more rooms and gloves, as agreed", SLOT.end + timedelta(minutes=5))
        revision = final.revision
        assert final.amount is not None
        order.adjust_bill(merchant, fin_id, revision, final.amount, SLOT.end + timedelta(minutes=5))
        rec.step(*as_merchant, final, order)
    t = SLOT.end + timedelta(minutes=10)
    total = final.amount
    assert total is not None
    final.confirm(revision, t)
    order.confirm_bill(customer, fin_id, revision, total, t)
    rec.step(*as_customer, final, order)
    t = t + timedelta(minutes=1)
    reference = f"psp-{uuid.uuid4().hex[:12]}"
    tenders = [pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=total, reference=reference)]
    collected = total
    if prepay_reference is not None:  # the prepayment counts towards the bill; the rest is collected
        collected = total - estimate
        tenders = [pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=estimate, reference=prepay_reference),
                   pay.Tender(kind=pay.TenderKind.THIRD_PARTY, amount=collected, reference=reference)]
    rec.step(*as_payments, payments(pay.BillSettled(
        order_id=order_id, bill_id=fin_id, total=total, tenders=tenders, refunded=Money.zero(total.currency),
        collected=collected, settled_at=t)))
    final.pay(total, reference, t)
    order.record_settlement(fin_id, total, t)
    rec.step(*as_system, final, order)
    return story


def stories(*kinds: str, **kwargs: Any) -> list[Story]:
    return [order_story(kind, **kwargs) for kind in kinds]


# ---------------------------------------------------------------------------- event store


async def append_story(store: EventStore, story: Story) -> None:
    """Append the story step by step, each step in one transaction (as a command handler
    would), with optimistic concurrency on every stream."""
    versions: dict[str, int] = {}
    for step in story.steps:
        async with store.transaction() as conn:
            for stream_id, events in step:
                result = await store.append(stream_id, versions.get(stream_id, NO_STREAM), events, conn=conn)
                versions[stream_id] = result.last_version


async def append_stories(store: EventStore, items: Iterable[Story]) -> None:
    """Append several stories concurrently: their transactions interleave (and commit out
    of position order), as they would under load."""
    await asyncio.gather(*(append_story(store, s) for s in items))


async def recorded(store: EventStore, items: Iterable[Story]) -> dict[str, list[RecordedEvent]]:
    """The stored events of the stories, per stream (version order)."""
    out: dict[str, list[RecordedEvent]] = {}
    for story in items:
        for stream_id in story.streams:
            out[stream_id] = await store.read_stream(stream_id)
    return out


def last_cursor(streams: dict[str, list[RecordedEvent]]) -> Cursor:
    return max(e.cursor for events in streams.values() for e in events)


def order_ids_of(items: Iterable[Story]) -> list[str]:
    return sorted(s.order_id for s in items)


# ---------------------------------------------------------------------------- Kafka side


@dataclass(frozen=True)
class FakeRecord:
    """What EnvelopeBatchConsumer.process_records reads from an aiokafka ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes


def fake_records(events: Sequence[RecordedEvent], *, topic: str = "orders.events",
                 partitions: int = 6) -> list[FakeRecord]:
    """The events as the relay would publish them, with plausible partitions and offsets."""
    offsets: dict[int, int] = {}
    out = []
    for e in events:
        key, value, _ = envelope.encode(e)
        partition = sum(key) % partitions
        offsets[partition] = offsets.get(partition, -1) + 1
        out.append(FakeRecord(topic, partition, offsets[partition], key, value))
    return out


def interleave(streams: dict[str, list[Any]], rng: random.Random) -> list[Any]:
    """A random merge of the streams that keeps each stream's own order (what Kafka
    guarantees: order within a key, none across keys)."""
    queues = {s: list(events) for s, events in streams.items() if events}
    out: list[Any] = []
    while queues:
        pick = rng.choice(sorted(queues))
        out.append(queues[pick].pop(0))
        if not queues[pick]:
            del queues[pick]
    return out


def chunks(items: Sequence[Any], rng: random.Random, low: int = 1, high: int = 12) -> list[list[Any]]:
    """Split into consecutive batches of random sizes."""
    out, i = [], 0
    while i < len(items):
        n = rng.randint(low, high)
        out.append(list(items[i:i + n]))
        i += n
    return out


def consumer_for(bootstrap: str, *topics: str) -> AIOKafkaConsumer:
    """A test consumer: fresh group, from the beginning, tuned for Tansu."""
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=f"it-{uuid.uuid4().hex}",
                            auto_offset_reset="earliest", enable_auto_commit=False, session_timeout_ms=3000,
                            heartbeat_interval_ms=500, fetch_max_wait_ms=10)


async def read_until(consumer: AIOKafkaConsumer, done: Callable[[list[ConsumerRecord]], bool], *,
                     timeout: float = 20.0, keep: Callable[[ConsumerRecord], bool] = lambda r: True,
                     ) -> list[ConsumerRecord]:
    """Records (those passing `keep`, in arrival order) until `done(records)` or the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    records: list[ConsumerRecord] = []
    while not done(records):
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s with {len(records)} matching records")
        batch = await consumer.getmany(timeout_ms=200)
        for recs in batch.values():
            records.extend(r for r in recs if keep(r))
    return records


async def read_to_end(consumer: AIOKafkaConsumer, *, timeout: float = 20.0,
                      keep: Callable[[ConsumerRecord], bool] = lambda r: True) -> list[ConsumerRecord]:
    """Every record on the subscribed topics up to their end offsets at assignment time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    records: list[ConsumerRecord] = []

    async def fetch() -> None:
        if loop.time() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s with {len(records)} matching records")
        batch = await consumer.getmany(timeout_ms=200)
        for recs in batch.values():
            records.extend(r for r in recs if keep(r))

    while not consumer.assignment():
        await fetch()
    ends: dict[TopicPartition, int] = await consumer.end_offsets(list(consumer.assignment()))
    while True:
        positions = {tp: await consumer.position(tp) for tp in ends}
        if all(positions[tp] >= end for tp, end in ends.items()):
            return records
        await fetch()


def headers_of(record: ConsumerRecord) -> dict[str, str]:
    names = [k for k, _ in record.headers]
    assert len(names) == len(set(names)), f"repeated headers: {names}"
    return {k: v.decode() for k, v in record.headers}


# ---------------------------------------------------------------------------- read model


async def snapshot(store: EventStore, schema: str, order_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """All read-model rows of these orders in `schema`, in a stable order."""
    out = {}
    for table, key in TABLES.items():
        rows = await store.pool.fetch(f"SELECT * FROM {schema}.{table} WHERE order_id = ANY($1) ORDER BY {key}",
                                      list(order_ids))
        out[table] = [dict(r) for r in rows]
    return out
