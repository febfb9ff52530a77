"""The other services' key facts as projector read models, built from their events alone
(migration 0002): payments (rm_transactions, rm_ledger_entries, rm_refunds, rm_upstream_facts),
after-sales (rm_rmas, rm_shipments, rm_manifest_rows) and notifications (rm_notifications).

Each row is a function of ONE stream (`fold_*`: the stream's events from version 1 to the
version the row shows). Kafka orders events within a stream, not across streams, so no row may
depend on the arrival order of two streams; whatever needs several streams (a refund report
naming only its charge, a duplicate shipment, a ledger per order) is computed by the
reconciliation in SQL over these rows, where order does not matter.

The live consumer (`FactsProjection.apply`) and a replay use the same folds: the consumer reads
the touched streams back from the event store up to the version Kafka delivered and folds them
again, the replay folds each stream once (services/projector/shadow.py). Streams are short
(a transaction has tens of events), so re-reading one costs less than keeping fold state.

The services keep their own tables of the same facts (payments_refunds, rma_cases,
shipping_shipments, notifications); the reconciliation compares those with these rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg

from libs.domain.events import registry
from libs.eventstore import EventStore
from libs.messaging.deadletter import record
from libs.messaging.envelope import EventEnvelope
from services.notifications.domain.events import NOTIFICATION_CATEGORY
from services.payments.domain import events as pay
from services.payments.domain.kolable.provider import COURSE_KEY  # what belongs_to_kolable reads
from services.payments.domain.refund import STREAM_CATEGORY as REFUND_CATEGORY
from services.payments.domain.upstream_events import UpstreamFact
from services.projector.projections.common import (
    Stored,
    StoredEvent,
    TableSpec,
    amount,
    category_of,
    current_data,
    rows_json,
    ts,
    types_of,
    upsert_rows_sql,
)
from services.rma.domain.events import STREAM_CATEGORY as RMA_CATEGORY
from services.rma.domain.rma import LABELS_ZH as RMA_LABELS_ZH
from services.rma.domain.rma import Rma
from services.shipping.domain.events import MANIFEST_CATEGORY, SHIPMENT_CATEGORY
from services.shipping.domain.shipment import Shipment

PROJECTION = "facts"

RM_TRANSACTIONS = TableSpec("rm_transactions", [
    "order_id", "customer_id", "merchant_id", "status", "status_label", "currency", "estimated_total",
    "prepaid", "paid", "card_paid", "bill_total", "settled_total", "refunded", "penalty", "chargebacks",
    "external_refunds", "refunds_held", "open_disputes", "placed_at", "updated_at", "version", "last_position",
], ["order_id"], "'transaction-' || order_id")
RM_LEDGER = TableSpec("rm_ledger_entries", [
    "order_id", "entry", "reference", "kind", "amount", "currency", "payment_reference", "at", "stream_version",
    "global_position",
], ["order_id", "entry", "reference"], "'transaction-' || order_id", owner="order_id")
RM_REFUNDS = TableSpec("rm_refunds", [
    "refund_id", "order_id", "source", "kind", "amount", "currency", "reference", "provider", "status",
    "provider_refund_id", "attempt", "failure_reason", "requested_at", "updated_at", "version", "last_position",
], ["refund_id"], "'refund-' || refund_id")
RM_UPSTREAM = TableSpec("rm_upstream_facts", [
    "stream_id", "provider_event_id", "fact_type", "upstream_type", "order_id", "charge_id", "payment_intent_id",
    "payment_key", "refund_id", "dispute_id", "amount", "currency", "provider_amount", "provider_currency",
    "amount_refunded", "status", "outcome", "closeloop_refund_id", "kolable", "data_gap", "occurred_at", "version",
    "last_position",
], ["stream_id"], "stream_id")
RM_RMAS = TableSpec("rm_rmas", [
    "rma_id", "status", "status_label", "stage", "customer_id", "serial", "sku", "fault_code", "warehouse_id",
    "replacement_sku", "replacement_serial", "repeat_kind", "repeat_of", "label_id", "shipment_id",
    "tracking_number", "opened_at", "updated_at", "version", "last_position",
], ["rma_id"], "'rma-' || rma_id")
RM_SHIPMENTS = TableSpec("rm_shipments", [
    "shipment_id", "subject_kind", "subject_id", "rma_id", "order_id", "action", "sku", "warehouse_id", "carrier",
    "service_level", "tracking_number", "status", "status_carrier", "status_location", "status_occurred_at", "eta",
    "eta_source", "tracking_events", "created_at", "updated_at", "version", "last_position",
], ["shipment_id"], "'shipment-' || shipment_id")
RM_MANIFEST_ROWS = TableSpec("rm_manifest_rows", [
    "manifest_id", "line", "carrier", "tracking_number", "subject_kind", "subject_id", "action", "sku",
    "shipped_at", "outcome", "duplicate_id", "imported_at", "global_position",
], ["manifest_id", "line"], "'carrier_manifest-' || manifest_id", owner="manifest_id")
RM_NOTIFICATIONS = TableSpec("rm_notifications", [
    "notification_id", "audience", "recipient", "channel", "locale", "template", "subject_type", "subject_id",
    "stage", "source_event_type", "status", "attempts", "last_error", "created_at", "sent_at", "updated_at",
    "version", "last_position",
], ["notification_id"], "'notification-' || notification_id")

TABLES: tuple[TableSpec, ...] = (RM_TRANSACTIONS, RM_LEDGER, RM_REFUNDS, RM_UPSTREAM, RM_RMAS, RM_SHIPMENTS,
                                 RM_MANIFEST_ROWS, RM_NOTIFICATIONS)

Row = dict[str, Any]
Rows = dict[str, list[Row]]  # table name -> rows of one stream
Fold = Callable[[Sequence[Stored]], Rows]

TRANSACTION_TYPES = types_of(pay.TransactionStreamEvent)
MONEY_KINDS = frozenset(k.value for k in pay.TenderKind if k.is_money)


# --- payments: the transaction of an order ------------------------------------------------------------


def _ledger(order_id: str, entry: str, reference: str, kind: str, money: dict[str, Any], e: Stored,
            payment_reference: str | None = None) -> Row:
    return {"order_id": order_id, "entry": entry, "reference": reference, "kind": kind,
            "amount": int(money["amount"]), "currency": money["currency"], "payment_reference": payment_reference,
            "at": ts(e.data.get("at")) or e.recorded_at, "stream_version": e.stream_version,
            "global_position": e.global_position}


def _take(row: Row, entries: dict[tuple[str, str], Row], tender: dict[str, Any], entry: str, e: Stored) -> None:
    """A tender taken: money (not a voucher) counts as paid and is a ledger entry."""
    if tender["kind"] not in MONEY_KINDS:
        return
    row["paid"] += tender["amount"]["amount"]
    if tender["kind"] == pay.TenderKind.THIRD_PARTY.value:
        row["card_paid"] += tender["amount"]["amount"]
    entries[(entry, tender["reference"])] = _ledger(row["order_id"], entry, tender["reference"], tender["kind"],
                                                    tender["amount"], e)


def fold_transaction(events: Sequence[Stored]) -> Rows:
    """transaction-{order}: the order's money (what was paid, decided back, kept, charged back) and
    its ledger entries: every money tender taken (capture), money that arrived and is owed back
    (to_return), lost disputes (chargeback) and refunds made at the provider (external_refund).

    `paid` counts every money tender (third party, member balance, cash; vouchers are not money);
    `refunded` every money refund decided (a cancellation's and a settlement's plan, customer
    service, payments to return), less what a lost dispute's chargeback returned instead."""
    row: Row | None = None
    entries: dict[tuple[str, str], Row] = {}
    disputes: set[str] = set()
    for e in events:
        if e.event_type not in TRANSACTION_TYPES:
            continue
        d = current_data(e)
        if d is None:
            continue
        if row is None:
            row = dict.fromkeys(RM_TRANSACTIONS.columns)
            row.update(order_id=d["order_id"], prepaid=0, paid=0, card_paid=0, refunded=0, penalty=0,
                       chargebacks=0, external_refunds=0, refunds_held=0, open_disputes=0)
        oid = row["order_id"]
        status: pay.TransactionStatus | None = None
        match e.event_type:
            case "TransactionOpened":
                row.update(customer_id=d["customer_id"], merchant_id=d.get("merchant_id"),
                           currency=d["estimated_total"]["currency"], estimated_total=d["estimated_total"]["amount"],
                           placed_at=ts(d["placed_at"]))
                status = pay.TransactionStatus.UNPAID
            case "TransactionPrepaymentCaptured":
                row["prepaid"] = d["amount"]["amount"]
                for tender in d["tenders"]:
                    _take(row, entries, tender, "capture", e)
                status = pay.TransactionStatus.PREPAID
            case "TransactionBilled":
                row["bill_total"] = d["total"]["amount"]
                status = pay.TransactionStatus.BILLED
            case "TransactionSettled":
                row["settled_total"] = d["total"]["amount"]
                row["refunded"] += d["plan"]["refunded"]["amount"]
                if d.get("collection"):
                    _take(row, entries, d["collection"], "capture", e)
                status = pay.TransactionStatus.BILLED if d["awaiting_cash_confirmation"] else pay.TransactionStatus.PAID
            case "TransactionCashConfirmed":
                row["merchant_id"] = row["merchant_id"] or d.get("merchant_id")
                status = pay.TransactionStatus.CONFIRMED
            case "TransactionRefunded":
                row["penalty"] = d["plan"]["penalty"]["amount"]
                row["refunded"] += d["plan"]["refunded"]["amount"]
                status = pay.TransactionStatus.REFUNDED
            case "TransactionVoided":
                row["penalty"] = d["plan"]["penalty"]["amount"]
                status = pay.TransactionStatus.VOIDED
            case "TransactionRefundsFrozen":
                disputes.add(d["dispute_id"])
            case "TransactionRefundsUnfrozen":
                disputes.discard(d["dispute_id"])
            case "TransactionRefundsHeld":
                row["refunds_held"] += d["amount"]["amount"]
            case "TransactionHeldRefundsReleased":
                row["refunds_held"] -= d["held"]["amount"]
                row["refunded"] -= sum(r["amount"]["amount"] for r in d["returned_by_chargeback"])
            case "TransactionChargedBack":
                row["chargebacks"] += d["amount"]["amount"]
                entries[("chargeback", d["dispute_id"])] = _ledger(
                    oid, "chargeback", d["dispute_id"], pay.TenderKind.THIRD_PARTY.value, d["amount"], e,
                    payment_reference=d["reference"])
            case "TransactionPaymentToReturn":
                tender = d["tender"]
                _take(row, entries, tender, "to_return", e)
                if tender["kind"] in MONEY_KINDS:
                    row["refunded"] += tender["amount"]["amount"]
            case "TransactionRefundIssued":
                row["refunded"] += d["amount"]["amount"]
            case "TransactionExternalRefund":
                row["external_refunds"] += d["amount"]["amount"]
                entries[("external_refund", d["provider_refund_id"])] = _ledger(
                    oid, "external_refund", d["provider_refund_id"], pay.TenderKind.THIRD_PARTY.value, d["amount"],
                    e, payment_reference=d["reference"])
            case _:
                pass
        if status is not None:
            row["status"], row["status_label"] = status.value, status.label_zh
        row["open_disputes"] = len(disputes)
        row["updated_at"] = e.recorded_at
        row["version"] = e.stream_version
        row["last_position"] = e.global_position
    if row is None:
        return {}
    return {RM_TRANSACTIONS.name: [row], RM_LEDGER.name: list(entries.values())}


# --- payments: refunds on their way back ----------------------------------------------------------------

REFUND_TYPES = frozenset({"RefundRequested", "RefundPending", "RefundSucceeded", "RefundFailed", "RefundRetried"})


def fold_refund(events: Sequence[Stored]) -> Rows:
    """refund-{id}: one refund line, as payments_refunds shows it (services/payments/application/refunds.py)."""
    r: Row | None = None
    for e in events:
        if e.event_type not in REFUND_TYPES:
            continue
        d = current_data(e)
        if d is None:
            continue
        if e.event_type == "RefundRequested":
            r = {"refund_id": d["refund_id"], "order_id": d["order_id"], "source": d["source"], "kind": d["kind"],
                 "amount": d["amount"]["amount"], "currency": d["amount"]["currency"], "reference": d["reference"],
                 "provider": d.get("provider"), "status": "requested", "provider_refund_id": None, "attempt": 1,
                 "failure_reason": None, "requested_at": ts(d["at"])}
        elif r is None:
            continue
        elif e.event_type == "RefundPending":
            r.update(provider_refund_id=d["provider_refund_id"], status="pending")
        elif e.event_type == "RefundSucceeded":
            r.update(provider_refund_id=d.get("provider_refund_id") or r["provider_refund_id"], status="succeeded")
        elif e.event_type == "RefundFailed":
            r.update(provider_refund_id=d.get("provider_refund_id") or r["provider_refund_id"], status="failed",
                     failure_reason=d["failure_reason"])
        elif e.event_type == "RefundRetried":
            r.update(status="requested", attempt=d["attempt"], provider_refund_id=None, failure_reason=None)
        r.update(updated_at=ts(d["at"]), version=e.stream_version, last_position=e.global_position)
    return {RM_REFUNDS.name: [r]} if r is not None else {}


# --- payments: what the provider reported -----------------------------------------------------------------

UPSTREAM_FACT_TYPES = types_of(UpstreamFact)
# Types whose payload no fold reads (the provider's raw event: large, and only its fact matters here);
# a replay does not fetch it.
PAYLOAD_UNUSED = frozenset({"UpstreamEventReceived"})
_REFUND_METADATA_KEY = "closeloop_refund_id"  # services/payments/application/refunds.py REFUND_METADATA_KEY


def fold_upstream(events: Sequence[Stored]) -> Rows:
    """upstream-stripe-{evt}: the provider's event (version 1) and, when its type is understood, the
    normalised fact (version 2). One row per fact: the ids that lead to the order, the money as the
    provider meant it, the status (succeeded / failed for payments, the refund's, the dispute's)."""
    r: Row | None = None
    for e in events:
        if e.event_type not in UPSTREAM_FACT_TYPES:
            continue
        d = current_data(e)
        if d is None:
            continue
        ref = d.get("order_ref") or {}
        money = d.get("amount")
        provider_money = d.get("provider_amount") or {}
        t = e.event_type
        status: str | None = d.get("status")
        refund_id = d.get("refund_id")
        if t == "UpstreamChargeSucceeded":
            status = "succeeded"
        elif t == "UpstreamPaymentFailed":
            status = "failed"
        elif t == "UpstreamChargeRefunded":
            # The charge's cumulative refunded amount; a refund it names is a refund report of its own.
            status = (d.get("refund_status") or "succeeded") if refund_id else "refunded"
            if refund_id and d.get("refund_amount"):
                money = d["refund_amount"]
        charge_id = d.get("charge_id") or ref.get("charge_id")
        intent_id = d.get("payment_intent_id") or ref.get("payment_intent_id")
        metadata = d.get("metadata") or {}
        r = {"stream_id": e.stream_id, "provider_event_id": d["provider_event_id"], "fact_type": t,
             "upstream_type": d["upstream_type"], "order_id": ref.get("order_id"), "charge_id": charge_id,
             "payment_intent_id": intent_id,
             # How the payments service names a card payment (services/payments/application/service.py).
             "payment_key": (intent_id or charge_id or d["provider_event_id"]) if t == "UpstreamChargeSucceeded"
             else None,
             "refund_id": refund_id, "dispute_id": d.get("dispute_id"),
             "amount": amount(money), "currency": money["currency"] if money else None,
             "provider_amount": provider_money.get("amount"), "provider_currency": provider_money.get("currency"),
             "amount_refunded": amount(d.get("amount_refunded")), "status": status, "outcome": d.get("outcome"),
             "closeloop_refund_id": metadata.get(_REFUND_METADATA_KEY),
             "kolable": bool(metadata.get(COURSE_KEY)), "data_gap": d.get("data_gap"),
             "occurred_at": ts(d["occurred_at"]), "version": e.stream_version, "last_position": e.global_position}
    return {RM_UPSTREAM.name: [r]} if r is not None else {}


# --- after-sales: RMAs, shipments, manifests -----------------------------------------------------------------


def _decoded(events: Sequence[Stored]) -> Iterable[tuple[Stored, Any]]:
    """Events as models (for the aggregates whose rules the rows need), skipping unknown ones."""
    for e in events:
        if e.event_type not in registry:
            continue
        try:
            yield e, registry.decode(e.event_type, e.schema_version, e.data)
        except Exception:
            continue


def fold_rma(events: Sequence[Stored]) -> Rows:
    """rma-{id}: the RMA's state and stage by the rma service's own aggregate (the stages are its rules)."""
    if not events:
        return {}
    rma = Rma(events[0].stream_id.split("-", 1)[1])
    last: Stored | None = None
    for e, event in _decoded(events):
        try:
            rma.apply(event)
        except (TypeError, AssertionError):
            continue
        rma.version = e.stream_version
        last = e
    if last is None or rma.opened is None or rma.status is None:
        return {}
    o, ready, shipped = rma.opened, rma.ready, rma.shipped
    return {RM_RMAS.name: [{
        "rma_id": rma.id, "status": rma.status.value, "status_label": RMA_LABELS_ZH[rma.status],
        "stage": rma.stage.value if rma.stage else None, "customer_id": o.contact.customer_id, "serial": o.serial,
        "sku": o.sku, "fault_code": o.fault_code, "warehouse_id": o.warehouse_id or "",
        "replacement_sku": ready.sku if ready else None,
        "replacement_serial": ready.replacement_serial if ready else None,
        "repeat_kind": rma.repeat.kind.value if rma.repeat else None,
        "repeat_of": rma.repeat.previous_rma_id if rma.repeat else None, "label_id": rma.label_id,
        "shipment_id": shipped.shipment_id if shipped else None,
        "tracking_number": shipped.tracking_number if shipped else None, "opened_at": o.at,
        "updated_at": ts(last.data.get("at")) or last.recorded_at, "version": last.stream_version,
        "last_position": last.global_position}]}


def fold_shipment(events: Sequence[Stored]) -> Rows:
    """shipment-{id}: the parcel and its carrier status by shipping's own tracking rules (the status is a
    function of the set of distinct carrier events, services/shipping/domain/tracking.py)."""
    if not events:
        return {}
    s = Shipment(events[0].stream_id.split("-", 1)[1])
    last: Stored | None = None
    for e, event in _decoded(events):
        s.apply(event)
        s.version = e.stream_version
        last = e
    c = s.created
    if last is None or c is None:
        return {}
    deciding = s.tracking.deciding
    eta, eta_source = s.eta()
    subject = s.subject
    return {RM_SHIPMENTS.name: [{
        "shipment_id": s.id, "subject_kind": subject.kind, "subject_id": subject.id, "rma_id": c.rma_id,
        "order_id": c.order_id, "action": c.action, "sku": c.sku, "warehouse_id": c.warehouse_id,
        "carrier": c.carrier, "service_level": c.service_level, "tracking_number": c.tracking_number,
        "status": s.status.value if s.status else None,
        "status_carrier": deciding.carrier_status if deciding else None,
        "status_location": deciding.location if deciding else None,
        "status_occurred_at": deciding.occurred_at if deciding else None, "eta": eta, "eta_source": eta_source,
        "tracking_events": len(s.tracking.updates), "created_at": c.at,
        "updated_at": ts(last.data.get("at")) or last.recorded_at, "version": last.stream_version,
        "last_position": last.global_position}]}


def fold_manifest(events: Sequence[Stored]) -> Rows:
    """carrier_manifest-{id}: every parcel an imported carrier manifest lists, with the detector's outcome."""
    rows: list[Row] = []
    for e in events:
        if e.event_type != "CarrierManifestImported":
            continue
        d = current_data(e)
        if d is None:
            continue
        for line in d["rows"]:
            rows.append({"manifest_id": d["manifest_id"], "line": line["line"], "carrier": line["carrier"],
                         "tracking_number": line["tracking_number"],
                         "subject_kind": "rma" if line.get("rma_id") else "order",
                         "subject_id": line.get("rma_id") or line.get("order_id"), "action": line["action"],
                         "sku": line.get("sku"), "shipped_at": ts(line["shipped_at"]), "outcome": line.get("outcome"),
                         "duplicate_id": line.get("duplicate_id"), "imported_at": ts(d["at"]),
                         "global_position": e.global_position})
    return {RM_MANIFEST_ROWS.name: rows} if rows else {}


# --- notifications ------------------------------------------------------------------------------------------

NOTIFICATION_TYPES = frozenset({"NotificationQueued", "NotificationSent", "NotificationFailed", "NotificationGaveUp"})


def fold_notification(events: Sequence[Stored]) -> Rows:
    """notification-{id}: one message and its delivery (pending -> sent | retrying -> ... | gave_up).
    Per stage and channel counts are `SELECT subject_id, stage, channel, status, count(*) ... GROUP BY`."""
    r: Row | None = None
    for e in events:
        if e.event_type not in NOTIFICATION_TYPES:
            continue
        d = current_data(e)
        if d is None:
            continue
        if e.event_type == "NotificationQueued":
            r = {k: d.get(k) for k in ("notification_id", "audience", "recipient", "channel", "locale", "template",
                                       "subject_type", "subject_id", "stage", "source_event_type")}
            r.update(status="pending", attempts=0, last_error=None, created_at=ts(d["at"]), sent_at=None)
        elif r is None:
            continue
        elif e.event_type == "NotificationSent":
            r.update(status="sent", attempts=d["attempt"], sent_at=ts(d["at"]), last_error=None)
        elif e.event_type == "NotificationFailed":
            r.update(status="retrying", attempts=d["attempt"], last_error=d["error"])
        elif e.event_type == "NotificationGaveUp":
            r["status"] = "gave_up"
        r.update(updated_at=ts(d["at"]), version=e.stream_version, last_position=e.global_position)
    return {RM_NOTIFICATIONS.name: [r]} if r is not None else {}


FOLDS: dict[str, Fold] = {
    pay.STREAM_CATEGORY: fold_transaction,
    REFUND_CATEGORY: fold_refund,
    "upstream": fold_upstream,
    RMA_CATEGORY: fold_rma,
    SHIPMENT_CATEGORY: fold_shipment,
    MANIFEST_CATEGORY: fold_manifest,
    NOTIFICATION_CATEGORY: fold_notification,
}
CATEGORIES = tuple(FOLDS)
SPECS = {t.name: t for t in TABLES}


def fold(events: Sequence[Stored]) -> Rows:
    """The rows of one stream (its events in version order), by its category."""
    fn = FOLDS.get(category_of(events[0].stream_id)) if events else None
    return fn(events) if fn is not None else {}


def safe_fold(events: Sequence[Stored]) -> tuple[Rows, str | None]:
    """fold(), or no rows and the reason when a payload cannot be folded (a stored event the reducers
    do not understand must not stop the consumer or a replay: its stream's rows are then missing on
    both sides, and the dead letter says why)."""
    try:
        return fold(events), None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return {}, f"{type(exc).__name__}: {exc}"


# --- the live consumer ------------------------------------------------------------------------------------------


class FactsProjection:
    """Applies the facts' events to the read models in `schema` (public = live), effectively once:
    per stream, versions at or below the applied one are skipped; a newer one makes the stream be read
    back from the event store up to that version (which also fills any gap Kafka left) and folded."""

    def __init__(self, store: EventStore, schema: str = "public", name: str = PROJECTION) -> None:
        self.store = store
        self.schema = schema
        self.name = name
        self.t_streams = f"{schema}.projection_streams"
        self._upserts = {t.name: upsert_rows_sql(f"{schema}.{t.name}", t.columns, t.key) for t in TABLES}

    @staticmethod
    def handles(e: Stored) -> bool:
        return category_of(e.stream_id) in FOLDS

    async def apply(self, conn: asyncpg.Connection, envelopes: Sequence[EventEnvelope]) -> int:
        """Apply a batch in the caller's transaction; returns the number of new events."""
        latest: dict[str, int] = {}
        for e in envelopes:
            if self.handles(e):
                latest[e.stream_id] = max(latest.get(e.stream_id, 0), e.stream_version)
        if not latest:
            return 0
        known = {r["stream_id"]: r["version"] for r in await conn.fetch(
            f"SELECT stream_id, version FROM {self.t_streams} WHERE projection = $1 AND stream_id = ANY($2)",
            self.name, sorted(latest))}
        todo = {s: v for s, v in latest.items() if v > known.get(s, 0)}
        if not todo:
            return 0
        rows = await conn.fetch(
            """SELECT e.stream_id, e.stream_version, e.global_position, e.recorded_at, e.event_type, e.schema_version,
                      e.data
                 FROM events e JOIN unnest($1::text[], $2::bigint[]) AS w(stream_id, upto)
                   ON e.stream_id = w.stream_id AND e.stream_version <= w.upto
                ORDER BY e.stream_id, e.stream_version""", list(todo), list(todo.values()))
        streams: dict[str, list[Stored]] = {}
        for r in rows:
            streams.setdefault(r["stream_id"], []).append(StoredEvent(*r.values()))
        folded: dict[str, Rows] = {}
        dead: list[tuple[Stored, str]] = []
        for sid, evs in streams.items():
            folded[sid], error = safe_fold(evs)
            if error is not None:
                dead.append((evs[-1], error))
        await self.write(conn, folded)
        for last, reason in dead:
            row = await conn.fetchrow("SELECT event_id, event_type, to_jsonb(e) AS envelope FROM events e "
                                      "WHERE stream_id = $1 AND stream_version = $2", last.stream_id,
                                      last.stream_version)
            if row is not None:
                await record(conn, f"projection:{self.schema}.{self.name}", "invalid_payload", reason,
                             envelope=row["envelope"], event_id=row["event_id"], stream_id=last.stream_id,
                             stream_version=last.stream_version, event_type=row["event_type"])
        # The version each stream was folded to, as the store holds it: a message for a stream the
        # store does not have (published by something else than the relay) is not counted as applied.
        applied = {sid: evs[-1].stream_version for sid, evs in streams.items()
                   if evs[-1].stream_version > known.get(sid, 0)}
        if applied:
            await conn.execute(
                f"""INSERT INTO {self.t_streams} (projection, stream_id, version)
                    SELECT $1, s, v FROM unnest($2::text[], $3::bigint[]) AS u(s, v)
                    ON CONFLICT (projection, stream_id) DO UPDATE SET version = EXCLUDED.version""",
                self.name, list(applied), list(applied.values()))
        return sum(v - known.get(s, 0) for s, v in applied.items())

    async def write(self, conn: asyncpg.Connection, folded: dict[str, Rows]) -> None:
        """Replace the rows of these streams by their folded rows."""
        for spec in TABLES:
            if spec.owner is not None:
                owners = sorted({r[spec.owner] for rows in folded.values() for r in rows.get(spec.name, [])}
                                | {_owner_of(sid) for sid in folded if FOLDS.get(category_of(sid)) is
                                   _FOLD_OF_TABLE[spec.name]})
                if owners:
                    await conn.execute(f"DELETE FROM {self.schema}.{spec.name} WHERE {spec.owner} = ANY($1)", owners)
            batch = [r for rows in folded.values() for r in rows.get(spec.name, [])]
            if batch:  # one statement per table (a stream's rows are its own: keys are distinct)
                await conn.execute(self._upserts[spec.name], rows_json(batch))


def _owner_of(stream_id: str) -> str:
    return stream_id.split("-", 1)[1]


# Which fold writes a table (for replacing the rows of a stream that now has none).
_FOLD_OF_TABLE: dict[str, Fold] = {RM_TRANSACTIONS.name: fold_transaction, RM_LEDGER.name: fold_transaction,
                                   RM_REFUNDS.name: fold_refund, RM_UPSTREAM.name: fold_upstream,
                                   RM_RMAS.name: fold_rma, RM_SHIPMENTS.name: fold_shipment,
                                   RM_MANIFEST_ROWS.name: fold_manifest, RM_NOTIFICATIONS.name: fold_notification}
