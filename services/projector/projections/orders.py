"""The order read model: rm_orders (one row per order), rm_bills (one row per bill) and
rm_order_history (one row per event).

The reducers are pure functions of (current row, stored event and its JSON payload);
OrdersProjection feeds them batches and writes the rows back, and `fold_stream` runs them
over a whole stream for a replay (services/projector/shadow.py). The same code serves the
live consumer and a rebuild from the event store into a shadow schema, which is what makes
"a rebuilt read model equals the live one" a meaningful check. They read the payload as
stored rather than the decoded model (projections/common.py says why); the live path still
decodes every event first, to dead-letter what it cannot read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
from pydantic import ValidationError

from libs.domain.events import UnknownEventType, UnsupportedSchemaVersion, registry
from libs.eventstore import EventStore, RecordedEvent
from libs.messaging.deadletter import current_batch, reason_code, record_envelope
from libs.messaging.envelope import EventEnvelope
from services.orders.domain import events as ev
from services.orders.domain.events import BillStatus, OrderStatus
from services.projector.projections.common import Stored, current_data, rows_json, ts, types_of, upsert_rows_sql

log = logging.getLogger("closeloop.projector")
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
HISTORY_COLUMNS = ["event_id", "order_id", "stream_id", "stream_version", "global_position", "event_type",
                   "recorded_at", "actor", "role", "correlation_id", "data"]
ORDER_TYPES = types_of(ev.OrderEvent)
BILL_TYPES = types_of(ev.BillEvent)


def _status(row: dict[str, Any], status: OrderStatus) -> None:
    row["status"] = status.value
    row["status_label"] = status.label_zh


def reduce_order(row: dict[str, Any] | None, e: Stored, d: dict[str, Any]) -> dict[str, Any]:
    """The order row after event `e` of an order-<id> stream, whose payload (current schema) is `d`."""
    r: dict[str, Any] = dict(row) if row else dict.fromkeys(ORDER_COLUMNS)
    match e.event_type:
        case "OrderPlaced":
            total, prepayment = d["estimated_total"], d["prepayment"]
            r.update(order_id=d["order_id"], customer_id=d["customer_id"], staff_id=d["staff_id"],
                     service_code=d["service"]["service_code"], product_line=d["service"]["product_line"],
                     service_name=d["service"]["name"], slot_start=ts(d["slot"]["start"]),
                     slot_end=ts(d["slot"]["end"]), city=d["address"]["city"], district=d["address"]["district"],
                     currency=total["currency"], estimated_total=total["amount"],
                     prepayment_required=prepayment["required"], prepayment_reasons=prepayment["reasons"],
                     prepayment_policy_version=prepayment["policy_version"],
                     payment_deadline=ts(d.get("payment_deadline")), prepayment_bill_id=d.get("prepayment_bill_id"),
                     placed_at=ts(d["placed_at"]))
            _status(r, OrderStatus.AWAITING_PREPAYMENT if prepayment["required"]
                    else OrderStatus.AWAITING_CONFIRMATION)
        case "OrderCheckoutStarted":
            _status(r, OrderStatus.PROCESSING)
        case "OrderCheckoutAbandoned":
            _status(r, OrderStatus.AWAITING_PREPAYMENT)
        case "OrderPrepaid":
            r["prepaid_amount"] = d["amount"]["amount"]
            _status(r, OrderStatus.AWAITING_CONFIRMATION)
        case "OrderAccepted":
            r["merchant_id"] = d["merchant_id"]
            _status(r, OrderStatus.ACCEPTED)
        case "OrderServiceStarted":
            _status(r, OrderStatus.IN_SERVICE)
        case "OrderBilled":
            r.update(bill_id=d["bill_id"], bill_total=d["total"]["amount"], bill_revision=1)
            _status(r, OrderStatus.BILLED)
        case "OrderBillAdjusted":
            r.update(bill_total=d["total"]["amount"], bill_revision=d["revision"])
        case "OrderBillConfirmed":
            r.update(bill_total=d["total"]["amount"], bill_revision=d["revision"])
            _status(r, OrderStatus.AWAITING_PAYMENT)
        case "OrderCompleted":
            r.update(settled_total=d["settled_total"]["amount"], completed_at=ts(d["at"]))
            _status(r, OrderStatus.COMPLETED)
        case "OrderCancelled":
            r.update(cancelled_by=d["cancelled_by"], fault_party=d["fault_party"], cancel_reason_code=d["reason_code"],
                     seconds_before_service_start=d["seconds_before_service_start"],
                     cancelled_at=ts(d["cancelled_at"]))
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


def reduce_bill(row: dict[str, Any] | None, e: Stored, d: dict[str, Any]) -> dict[str, Any]:
    """The bill row after event `e` of a bill-<id> stream, whose payload (current schema) is `d`."""
    r: dict[str, Any] = dict(row) if row else dict.fromkeys(BILL_COLUMNS)
    match e.event_type:
        case "BillIssued":
            r.update(bill_id=d["bill_id"], order_id=d["order_id"], kind=ev.BillKind.PREPAYMENT.value,
                     currency=d["amount"]["currency"], amount=d["amount"]["amount"], issued_at=ts(d["at"]))
            _bill_status(r, BillStatus.PENDING)
        case "BillPushed" | "BillAdjusted":
            r.update(bill_id=d["bill_id"], order_id=d["order_id"], kind=ev.BillKind.FINAL.value,
                     currency=d["total"]["currency"], amount=d["total"]["amount"], revision=d["revision"],
                     labour_minutes=d["labour"]["minutes"],
                     lines={"labour": d["labour"], "materials": d["materials"]})
            if e.event_type == "BillPushed":
                r["issued_at"] = ts(d["at"])
            _bill_status(r, BillStatus.PENDING)
        case "BillConfirmed":
            r["confirmed_revision"] = d["revision"]
        case "BillPaymentStarted":
            _bill_status(r, BillStatus.PROCESSING)
        case "BillPaymentAbandoned":
            _bill_status(r, BillStatus.PENDING)
        case "BillPaid":
            r.update(paid_amount=d["amount"]["amount"], payment_reference=d["reference"])
            _bill_status(r, BillStatus.COMPLETED)
        case "BillClosed":
            r["close_reason"] = d["reason"]
            _bill_status(r, BillStatus.CLOSED)
        case _:
            pass
    r["bill_version"] = e.stream_version
    r["last_position"] = e.global_position
    r["updated_at"] = e.recorded_at
    return r


def fold_stream(events: Sequence[Stored]) -> tuple[str, dict[str, Any]] | None:
    """The row (table, row) an order-<id> or bill-<id> stream gives when replayed from its first
    event; what the live consumer reaches by applying the same events one batch at a time.
    Events of the wrong kind for the stream or of an unknown type change nothing (the live path
    dead-letters them)."""
    if not events:
        return None
    is_order = events[0].stream_id.startswith("order-")
    wanted, reduce, table = (ORDER_TYPES, reduce_order, "rm_orders") if is_order else (BILL_TYPES, reduce_bill,
                                                                                        "rm_bills")
    row: dict[str, Any] | None = None
    for e in events:
        if e.event_type not in wanted:
            continue
        d = current_data(e)
        if d is not None:
            row = reduce(row, e, d)
    return None if row is None else (table, row)


def history_row(e: EventEnvelope) -> tuple[Any, ...]:
    return (e.event_id, e.data.get("order_id"), e.stream_id, e.stream_version, e.global_position, e.event_type,
            e.recorded_at, e.metadata.get("actor"), e.metadata.get("role"), e.metadata.get("correlation_id"),
            e.data)


def envelope_of(r: RecordedEvent) -> EventEnvelope:
    return EventEnvelope.from_recorded(r)


class OrdersProjection:
    """Applies order and bill events to the read model in `schema` (public = live)."""

    def __init__(self, store: EventStore, schema: str = "public", name: str = PROJECTION) -> None:
        self.store = store
        self.schema = schema
        self.name = name
        t = f"{schema}."
        self.t_orders, self.t_bills, self.t_history, self.t_streams = (
            t + "rm_orders", t + "rm_bills", t + "rm_order_history", t + "projection_streams")
        self._order_upsert = upsert_rows_sql(self.t_orders, ORDER_COLUMNS, ["order_id"])
        self._bill_upsert = upsert_rows_sql(self.t_bills, BILL_COLUMNS, ["bill_id"])
        self._history_insert = upsert_rows_sql(self.t_history, HISTORY_COLUMNS, ["event_id"], update=False)
        self.dead_lettered = 0
        self.dead_letter_consumer = f"projection:{schema}.{name}"

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
        batch = current_batch.get()
        counts, dead_ids = (len(batch.counts), set(batch.dead)) if batch is not None else (0, set())
        try:
            async with conn.transaction():  # a savepoint: a row PostgreSQL refuses undoes this attempt only
                return await self._write(conn, ordered, versions, stream_ids, validate=False)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, TypeError, ValueError) as exc:
            # A payload the reducers could fold into a row the table refuses (or JSON cannot carry): this
            # batch again, each event validated by its model first, so that the bad one is dead-lettered.
            log.warning("%s: batch refused (%s: %s); applying it again with every event validated",
                        self.dead_letter_consumer, type(exc).__name__, exc)
            if batch is not None:
                del batch.counts[counts:]
                batch.dead.intersection_update(dead_ids)
            return await self._write(conn, ordered, versions, stream_ids, validate=True)

    async def _write(self, conn: asyncpg.Connection, ordered: list[EventEnvelope], versions: dict[str, int],
                     stream_ids: list[str], *, validate: bool) -> int:
        # What cannot be read (an unknown type, a schema version from the future, a payload its reducer
        # cannot fold, an event of the wrong kind for its stream) is dead-lettered, not allowed to stall the
        # partition; the read model then lacks its effect, which reconciliation reports. The reducers read the
        # stored payload, as the replay does (common.py); only an old schema version is decoded (to upcast
        # it), and unknown types and versions from the future are named by the registry. With `validate`,
        # every event is decoded by its model first (the fallback above).
        readable: list[tuple[EventEnvelope, dict[str, Any], bool, str]] = []
        dead: list[tuple[EventEnvelope, str, str]] = []
        for e in ordered:
            is_order = e.stream_id.startswith("order-")
            kind = "order" if is_order else "bill"
            cls = registry.get(e.event_type) if e.event_type in registry else None
            if validate or cls is None or e.schema_version != cls.schema_version:
                try:
                    event = registry.decode(e.event_type, e.schema_version, e.data)
                except (UnknownEventType, UnsupportedSchemaVersion, ValidationError) as exc:
                    dead.append((e, reason_code(exc), f"{type(exc).__name__}: {exc}"))
                    continue
                if not isinstance(event, ev.OrderEvent if is_order else ev.BillEvent):
                    dead.append((e, "invalid_payload", f"{e.event_type} is not an event of a {kind} stream"))
                    continue
                d = e.data if e.schema_version == event.schema_version else event.to_data()
            else:
                if e.event_type not in (ORDER_TYPES if is_order else BILL_TYPES):
                    dead.append((e, "invalid_payload", f"{e.event_type} is not an event of a {kind} stream"))
                    continue
                d = e.data
            key = d.get(f"{kind}_id")
            if not isinstance(key, str):
                dead.append((e, "invalid_payload", f"{e.event_type} has no {kind}_id"))
                continue
            readable.append((e, d, is_order, key))
        order_ids = sorted({k for _, _, o, k in readable if o})
        bill_ids = sorted({k for _, _, o, k in readable if not o})
        orders = {r["order_id"]: dict(r) for r in await conn.fetch(
            f"SELECT * FROM {self.t_orders} WHERE order_id = ANY($1)", order_ids)} if order_ids else {}
        bills = {r["bill_id"]: dict(r) for r in await conn.fetch(
            f"SELECT * FROM {self.t_bills} WHERE bill_id = ANY($1)", bill_ids)} if bill_ids else {}
        applied: list[EventEnvelope] = []
        touched_orders: set[str] = set()
        touched_bills: set[str] = set()
        for e, d, is_order, key in readable:
            rows, reduce, touched = (orders, reduce_order, touched_orders) if is_order else (bills, reduce_bill,
                                                                                            touched_bills)
            try:
                rows[key] = reduce(rows.get(key), e, d)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                dead.append((e, "invalid_payload", f"{e.event_type} cannot be folded: {type(exc).__name__}: {exc}"))
                continue
            touched.add(key)
            applied.append(e)
        # One statement per table for the whole batch.
        if touched_orders:
            await conn.execute(self._order_upsert, rows_json(orders[o] for o in sorted(touched_orders)))
        if touched_bills:
            await conn.execute(self._bill_upsert, rows_json(bills[b] for b in sorted(touched_bills)))
        for e, code, reason in dead:
            await record_envelope(conn, self.dead_letter_consumer, e, code, reason)
        self.dead_lettered += len(dead)
        if applied:
            await conn.execute(self._history_insert,
                               rows_json(dict(zip(HISTORY_COLUMNS, history_row(e), strict=True)) for e in applied))
        done = [(s, v) for s, v in versions.items() if s in stream_ids]
        await conn.execute(
            f"""INSERT INTO {self.t_streams} (projection, stream_id, version)
                SELECT $1, s, v FROM unnest($2::text[], $3::bigint[]) AS u(s, v)
                ON CONFLICT (projection, stream_id) DO UPDATE SET version = EXCLUDED.version""",
            self.name, [s for s, _ in done], [v for _, v in done])
        if self.schema == "public":
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        return len(applied)
