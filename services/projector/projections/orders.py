"""The order read model: rm_orders (one row per order), rm_bills (one row per bill) and
rm_order_history (one row per event).

The reducers are pure functions of (current row, event); OrdersProjection feeds them
batches and writes the rows back. The same code serves the live consumer and a rebuild
from the event store into a shadow schema, which is what makes "a rebuilt read model
equals the live one" a meaningful check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic import ValidationError

from libs.domain.events import DomainEvent, UnknownEventType, UnsupportedSchemaVersion, registry
from libs.eventstore import EventStore, RecordedEvent
from libs.messaging.envelope import EventEnvelope
from services.orders.domain import events as ev
from services.orders.domain.events import BillStatus, OrderStatus

PROJECTION = "orders"
CATEGORIES = ("order", "bill")
NOTIFY_CHANNEL = "closeloop_projection"

ORDER_COLUMNS = [
    "order_id", "customer_id", "staff_id", "merchant_id", "service_code", "product_line", "service_name",
    "status", "status_label", "slot_start", "slot_end", "city", "district", "currency", "estimated_total",
    "prepayment_required", "prepayment_reasons", "prepayment_policy_version", "payment_deadline",
    "prepaid_amount", "prepayment_bill_id", "bill_id", "bill_total", "bill_revision", "settled_total",
    "cancelled_by", "fault_party", "cancel_reason_code", "seconds_before_service_start", "placed_at",
    "cancelled_at", "completed_at", "updated_at", "order_version", "last_position",
]
BILL_COLUMNS = [
    "bill_id", "order_id", "kind", "status", "status_label", "currency", "amount", "revision",
    "labour_minutes", "lines", "confirmed_revision", "paid_amount", "payment_reference", "close_reason",
    "issued_at", "updated_at", "bill_version", "last_position",
]


def _status(row: dict[str, Any], status: OrderStatus) -> None:
    row["status"] = status.value
    row["status_label"] = status.label_zh


def reduce_order(row: dict[str, Any] | None, e: EventEnvelope, event: DomainEvent) -> dict[str, Any]:
    """The order row after `event` (an event of an order-<id> stream)."""
    r: dict[str, Any] = dict(row) if row else {c: None for c in ORDER_COLUMNS}
    match event:
        case ev.OrderPlaced():
            r.update(order_id=event.order_id, customer_id=event.customer_id, staff_id=event.staff_id,
                     service_code=event.service.service_code, product_line=event.service.product_line,
                     service_name=event.service.name, slot_start=event.slot.start, slot_end=event.slot.end,
                     city=event.address.city, district=event.address.district,
                     currency=event.estimated_total.currency, estimated_total=event.estimated_total.amount,
                     prepayment_required=event.prepayment.required,
                     prepayment_reasons=[x.model_dump(mode="json") for x in event.prepayment.reasons],
                     prepayment_policy_version=event.prepayment.policy_version,
                     payment_deadline=event.payment_deadline, prepayment_bill_id=event.prepayment_bill_id,
                     placed_at=event.placed_at)
            _status(r, OrderStatus.AWAITING_PREPAYMENT if event.prepayment.required
                    else OrderStatus.AWAITING_CONFIRMATION)
        case ev.OrderCheckoutStarted():
            _status(r, OrderStatus.PROCESSING)
        case ev.OrderCheckoutAbandoned():
            _status(r, OrderStatus.AWAITING_PREPAYMENT)
        case ev.OrderPrepaid():
            r["prepaid_amount"] = event.amount.amount
            _status(r, OrderStatus.AWAITING_CONFIRMATION)
        case ev.OrderAccepted():
            r["merchant_id"] = event.merchant_id
            _status(r, OrderStatus.ACCEPTED)
        case ev.OrderServiceStarted():
            _status(r, OrderStatus.IN_SERVICE)
        case ev.OrderBilled():
            r.update(bill_id=event.bill_id, bill_total=event.total.amount, bill_revision=1)
            _status(r, OrderStatus.BILLED)
        case ev.OrderBillAdjusted():
            r.update(bill_total=event.total.amount, bill_revision=event.revision)
        case ev.OrderBillConfirmed():
            r.update(bill_total=event.total.amount, bill_revision=event.revision)
            _status(r, OrderStatus.AWAITING_PAYMENT)
        case ev.OrderCompleted():
            r.update(settled_total=event.settled_total.amount, completed_at=event.at)
            _status(r, OrderStatus.COMPLETED)
        case ev.OrderCancelled():
            r.update(cancelled_by=event.cancelled_by.value, fault_party=event.fault_party.value,
                     cancel_reason_code=event.reason_code,
                     seconds_before_service_start=event.seconds_before_service_start,
                     cancelled_at=event.cancelled_at)
            _status(r, OrderStatus.CANCELLED)
        case _:
            pass  # e.g. OrderPaymentReceivedAfterCancellation: history only
    r["order_version"] = e.stream_version
    r["last_position"] = e.global_position
    r["updated_at"] = e.recorded_at
    return r


def _bill_status(row: dict[str, Any], status: BillStatus) -> None:
    row["status"] = status.value
    row["status_label"] = status.label_zh


def reduce_bill(row: dict[str, Any] | None, e: EventEnvelope, event: DomainEvent) -> dict[str, Any]:
    """The bill row after `event` (an event of a bill-<id> stream)."""
    r: dict[str, Any] = dict(row) if row else {c: None for c in BILL_COLUMNS}
    match event:
        case ev.BillIssued():
            r.update(bill_id=event.bill_id, order_id=event.order_id, kind=ev.BillKind.PREPAYMENT.value,
                     currency=event.amount.currency, amount=event.amount.amount, issued_at=event.at)
            _bill_status(r, BillStatus.PENDING)
        case ev.BillPushed() | ev.BillAdjusted():
            r.update(bill_id=event.bill_id, order_id=event.order_id, kind=ev.BillKind.FINAL.value,
                     currency=event.total.currency, amount=event.total.amount, revision=event.revision,
                     labour_minutes=event.labour.minutes,
                     lines={"labour": event.labour.model_dump(mode="json"),
                            "materials": [m.model_dump(mode="json") for m in event.materials]})
            if isinstance(event, ev.BillPushed):
                r["issued_at"] = event.at
            _bill_status(r, BillStatus.PENDING)
        case ev.BillConfirmed():
            r["confirmed_revision"] = event.revision
        case ev.BillPaymentStarted():
            _bill_status(r, BillStatus.PROCESSING)
        case ev.BillPaymentAbandoned():
            _bill_status(r, BillStatus.PENDING)
        case ev.BillPaid():
            r.update(paid_amount=event.amount.amount, payment_reference=event.reference)
            _bill_status(r, BillStatus.COMPLETED)
        case ev.BillClosed():
            r["close_reason"] = event.reason
            _bill_status(r, BillStatus.CLOSED)
        case _:
            pass
    r["bill_version"] = e.stream_version
    r["last_position"] = e.global_position
    r["updated_at"] = e.recorded_at
    return r


def history_row(e: EventEnvelope) -> tuple[Any, ...]:
    return (e.event_id, e.data.get("order_id"), e.stream_id, e.stream_version, e.global_position, e.event_type,
            e.recorded_at, e.metadata.get("actor"), e.metadata.get("role"), e.metadata.get("correlation_id"),
            e.data)


def envelope_of(r: RecordedEvent) -> EventEnvelope:
    return EventEnvelope.from_recorded(r)


def _upsert_sql(table: str, columns: list[str], key: str) -> str:
    cols = ", ".join(columns)
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != key)
    return f"INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({key}) DO UPDATE SET {updates}"


class OrdersProjection:
    """Applies order and bill events to the read model in `schema` (public = live)."""

    def __init__(self, store: EventStore, schema: str = "public", name: str = PROJECTION) -> None:
        self.store = store
        self.schema = schema
        self.name = name
        t = f"{schema}."
        self.t_orders, self.t_bills, self.t_history, self.t_streams = (
            t + "rm_orders", t + "rm_bills", t + "rm_order_history", t + "projection_streams")
        self._order_upsert = _upsert_sql(self.t_orders, ORDER_COLUMNS, "order_id")
        self._bill_upsert = _upsert_sql(self.t_bills, BILL_COLUMNS, "bill_id")
        self.dead_lettered = 0

    @staticmethod
    def handles(e: EventEnvelope) -> bool:
        return e.stream_id.split("-", 1)[0] in CATEGORIES

    async def apply(self, conn: asyncpg.Connection, envelopes: Sequence[EventEnvelope]) -> int:
        """Apply a batch in one transaction (the caller's). Per stream: versions at or
        below the applied one are skipped; a gap is filled from the event store first.
        Returns the number of events applied."""
        mine = [e for e in envelopes if self.handles(e)]
        if not mine:
            return 0
        stream_ids = sorted({e.stream_id for e in mine})
        versions = {r["stream_id"]: r["version"] for r in await conn.fetch(
            f"SELECT stream_id, version FROM {self.t_streams} WHERE projection = $1 AND stream_id = ANY($2)",
            self.name, stream_ids)}
        ordered: list[EventEnvelope] = []
        for e in mine:
            known = versions.get(e.stream_id, 0)
            if e.stream_version <= known:
                continue  # already applied (redelivery, or filled from the store earlier)
            if e.stream_version > known + 1:
                # Kafka has not delivered (or lost) earlier events of this stream:
                # the event store is the source of truth, so read them from there.
                missing = await self.store.read_stream(e.stream_id, from_version=known + 1,
                                                       to_version=e.stream_version - 1, conn=conn)
                ordered.extend(envelope_of(m) for m in missing)
            ordered.append(e)
            versions[e.stream_id] = e.stream_version
        if not ordered:
            return 0
        # Decode first: an event that cannot be read (unknown type, a schema version from the
        # future, a payload the model rejects) is dead-lettered, not allowed to stall the
        # partition; the read model then lacks its effect, which reconciliation reports.
        decoded: list[tuple[EventEnvelope, DomainEvent]] = []
        dead: list[tuple[EventEnvelope, str]] = []
        for e in ordered:
            try:
                event = registry.decode(e.event_type, e.schema_version, e.data)
            except (UnknownEventType, UnsupportedSchemaVersion, ValidationError) as exc:
                dead.append((e, f"{type(exc).__name__}: {exc}"))
                continue
            expected = ev.OrderEvent if e.stream_id.startswith("order-") else ev.BillEvent
            if not isinstance(event, expected):
                dead.append((e, f"{e.event_type} is not an event of a {expected.__name__[:-5].lower()} stream"))
                continue
            decoded.append((e, event))
        order_ids = sorted({x.order_id for _, x in decoded if isinstance(x, ev.OrderEvent)})
        bill_ids = sorted({x.bill_id for _, x in decoded if isinstance(x, ev.BillEvent)})
        orders = {r["order_id"]: dict(r) for r in await conn.fetch(
            f"SELECT * FROM {self.t_orders} WHERE order_id = ANY($1)", order_ids)} if order_ids else {}
        bills = {r["bill_id"]: dict(r) for r in await conn.fetch(
            f"SELECT * FROM {self.t_bills} WHERE bill_id = ANY($1)", bill_ids)} if bill_ids else {}
        for e, event in decoded:
            if isinstance(event, ev.OrderEvent):
                orders[event.order_id] = reduce_order(orders.get(event.order_id), e, event)
            elif isinstance(event, ev.BillEvent):
                bills[event.bill_id] = reduce_bill(bills.get(event.bill_id), e, event)
        if order_ids:
            await conn.executemany(self._order_upsert, [tuple(orders[o][c] for c in ORDER_COLUMNS) for o in order_ids])
        if bill_ids:
            await conn.executemany(self._bill_upsert, [tuple(bills[b][c] for c in BILL_COLUMNS) for b in bill_ids])
        if dead:
            await conn.executemany(
                """INSERT INTO dead_letters
                       (consumer, event_id, stream_id, stream_version, event_type, reason, envelope)
                   VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (consumer, event_id) DO NOTHING""",
                [(f"projection:{self.schema}.{self.name}", e.event_id, e.stream_id, e.stream_version, e.event_type,
                  reason[:1000], e.model_dump(mode="json")) for e, reason in dead])
            self.dead_lettered += len(dead)
        await conn.executemany(
            f"""INSERT INTO {self.t_history} (event_id, order_id, stream_id, stream_version, global_position,
                    event_type, recorded_at, actor, role, correlation_id, data)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (event_id) DO NOTHING""",
            [history_row(e) for e, _ in decoded])
        await conn.executemany(
            f"""INSERT INTO {self.t_streams} (projection, stream_id, version) VALUES ($1, $2, $3)
                ON CONFLICT (projection, stream_id) DO UPDATE SET version = EXCLUDED.version""",
            [(self.name, s, v) for s, v in versions.items() if s in stream_ids])
        if self.schema == "public":
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        return len(decoded)
