"""Card disputes (GitHub issue 3, item 7): the Dispute aggregate fed by the upstream dispute facts,
the refunds of the disputed order frozen while a dispute is open, a read model, and the evidence
packet.

How a fact is applied (`DisputesService.on_fact`, the `PaymentsService.on_dispute` hook, in the
transaction that stored the fact):

1. The Dispute (`dispute-{dispute_id}`) observes the fact. It only moves forward (a stale or
   repeated update records nothing, a closed dispute stays closed), so the result does not depend
   on the order or number of deliveries. Its events get ids derived from the provider event and
   the stream version (`event_uuid`), so applying the same fact again from the same state appends
   nothing even without the lock below.
2. The order, once known (the routing passes it; it is None while the charge is unknown and the
   fact is parked, and the routing calls again with it when the charge arrives), is linked.
3. The read model `payments_disputes` is written in the same transaction.
4. The order's Transaction, if it exists, is brought in line with all the order's disputes
   (`apply_disputes`): frozen for every open one; for a closed one, a lost dispute's chargeback
   recorded, then unfrozen, which releases the refunds held meanwhile. A member-balance refund of a
   cancellation that was held goes back to the wallet at that moment.

Locking: the routing holds the order's advisory lock when it knows the order; this module then
takes the dispute's lock, always in that order (order, then dispute), so two facts of one dispute
(created and closed delivered at once) apply one after the other, and a dispute fact and a
cancellation of its order never interleave. The cancellation and settlement reactions
(service.py) call `apply_disputes` under the same order lock before computing refunds, which
covers a dispute that arrived before the order's transaction existed.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from libs.application.unit_of_work import UnitOfWork
from libs.domain.errors import NotFound, RuleViolation
from libs.domain.events import DomainEvent, registry
from libs.domain.money import Money
from libs.eventstore import EventStore, NewEvent, RecordedEvent
from services.payments.domain import events as ev
from services.payments.domain.dispute import (
    Dispute,
    DisputeClosed,
    DisputeOpened,
    DisputeOutcome,
    DisputeState,
    DisputeStateChanged,
    dispute_stream_id,
    evidence_packet,
)
from services.payments.domain.evidence import (
    StoredEvent,
    activity_log,
    bill_views,
    customer_communication,
    not_available,
    order_view,
    primary_bill,
    refund_policy_section,
    service_documentation,
)
from services.payments.domain.policy import CancellationPolicy, policy_by_version
from services.payments.domain.transaction import Transaction
from services.payments.domain.upstream import PROVIDER, event_uuid
from services.payments.domain.upstream_events import UpstreamDisputeFact

__all__ = ["DisputesService", "apply_disputes", "dispute_row"]

AfterChange = Callable[[UnitOfWork, Transaction], Awaitable[None]]
AWAITING_EVIDENCE = (DisputeState.WARNING_NEEDS_RESPONSE.value, DisputeState.NEEDS_RESPONSE.value)


async def _lock_dispute(conn: asyncpg.Connection, dispute_id: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"payments-dispute:{dispute_id}")


async def apply_disputes(uow: UnitOfWork, txn: Transaction, at: datetime) -> list[str]:
    """Bring the order's transaction in line with every dispute of the order in the read model:
    frozen while a dispute is open; a lost dispute's chargeback recorded, then unfrozen once closed
    (which releases held refunds when no other dispute is open). Idempotent. Call it under the
    order's lock. A transaction with no captured payment (unpaid, voided) has nothing to freeze."""
    if "freeze_refunds" not in txn.allowed_commands():
        return [f"transaction {txn.status}: no captured payment to freeze"] if txn.status else []
    rows = await uow.conn.fetch(
        """SELECT dispute_id, is_open, outcome, amount, currency, charge_id, payment_intent_id
             FROM payments_disputes WHERE order_id = $1 ORDER BY opened_at, dispute_id""", txn.id)
    done: list[str] = []
    # Freeze for every open dispute first, so that closing one of several releases nothing.
    for r in rows:
        if r["is_open"] and r["dispute_id"] not in txn.open_disputes:
            txn.freeze_refunds(r["dispute_id"], at)
            done.append(f"refunds frozen for {r['dispute_id']}")
    for r in rows:
        if r["is_open"]:
            continue
        if r["outcome"] == DisputeOutcome.LOST.value and r["amount"] and r["currency"] == txn.currency \
                and not any(c.dispute_id == r["dispute_id"] for c in txn.chargebacks):
            # Before unfreezing: the release of held refunds sets the chargeback against them.
            txn.record_chargeback(r["dispute_id"], Money(amount=r["amount"], currency=r["currency"]), at,
                                  [p for p in (r["payment_intent_id"], r["charge_id"]) if p])
            done.append(f"chargeback of {r['dispute_id']} recorded")
        if r["dispute_id"] in txn.open_disputes:
            txn.unfreeze_refunds(r["dispute_id"], at)
            done.append(f"refunds unfrozen for {r['dispute_id']}")
    if any(isinstance(e, ev.TransactionHeldRefundsReleased) for e in txn.pending):
        done.append("held refunds released")
    return done


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def dispute_row(r: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """A read-model row as the API shows it (money as {amount, currency})."""
    awaiting = r["state"] in AWAITING_EVIDENCE
    due = r["evidence_due_by"]
    return {
        "dispute_id": r["dispute_id"], "order_id": r["order_id"], "charge_id": r["charge_id"],
        "payment_intent_id": r["payment_intent_id"], "state": r["state"], "is_open": r["is_open"],
        "outcome": r["outcome"], "reason": r["reason"],
        "amount": {"amount": r["amount"], "currency": r["currency"]} if r["amount"] is not None else None,
        "provider_amount": {"amount": r["provider_amount"], "currency": r["provider_currency"]},
        "evidence_due_by": _iso(due), "evidence_overdue": bool(r["is_open"] and awaiting and due and due < now),
        "opened_at": _iso(r["opened_at"]), "closed_at": _iso(r["closed_at"]), "version": r["version"],
        "updated_at": _iso(r["updated_at"]),
    }


def _encode_cursor(opened_at: datetime, dispute_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([opened_at.isoformat(), dispute_id])).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        opened, dispute_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(opened), str(dispute_id)
    except Exception:
        raise RuleViolation("cursor", "not a cursor returned by this API") from None


def _stored(e: RecordedEvent) -> StoredEvent:
    try:
        decoded: DomainEvent | None = registry.decode(e.event_type, e.schema_version, e.data)
    except Exception:  # a type this service does not know: listed with its raw data
        decoded = None
    return StoredEvent(stream_id=e.stream_id, stream_version=e.stream_version, global_position=e.global_position,
                       event_type=e.event_type, recorded_at=e.recorded_at, metadata=e.metadata, data=e.data,
                       event=decoded)


def _transaction_view(txn: Transaction, dispute_id: str) -> dict[str, Any]:
    if not txn.exists:
        return {"exists": False}
    return {
        "exists": True, "status": txn.status.value if txn.status else None, "label_zh": txn.label_zh,
        "policy_version": txn.policy_version,
        "refunds_frozen": dispute_id in txn.open_disputes, "open_disputes": sorted(txn.open_disputes),
        "held_refunds": [h.model_dump(mode="json") for h in txn.held_refunds],
        "released_refunds": [r.model_dump(mode="json") for r in txn.released_refunds],
        "chargebacks": [c.model_dump(mode="json") for c in txn.chargebacks],
    }


@dataclass
class DisputesService:
    store: EventStore
    policies: list[CancellationPolicy]
    clock: Callable[[], datetime]
    # Everything a Transaction change implies (contract events, refunds that run): set by the bootstrap
    # to PaymentsService.publish_contract, so released refunds run like any other.
    after_change: AfterChange | None = None

    # --- applying upstream facts -------------------------------------------------------------
    async def on_fact(self, uow: UnitOfWork, fact: UpstreamDisputeFact, order_id: str | None) -> str:
        """Apply one dispute fact (see the module docstring); returns what happened."""
        conn = uow.conn
        if order_id is None:
            # The routing holds no order lock; if the dispute is already linked to an order (from an
            # earlier fact), take that lock first, keeping the order-then-dispute lock order.
            known = await conn.fetchval("SELECT order_id FROM payments_disputes WHERE dispute_id = $1",
                                        fact.dispute_id)
            if known is not None:
                from services.payments.application.service import _lock_order  # service.py imports this module

                await _lock_order(conn, known)
        await _lock_dispute(conn, fact.dispute_id)
        dispute = await uow.load(Dispute, fact.dispute_id)
        dispute.observe(fact)
        if order_id is not None and dispute.order_id != order_id:
            dispute.link_order(order_id, fact.occurred_at)  # RuleViolation if linked to another order
        recorded = len(dispute.pending)
        await self._save(uow, dispute, fact.provider_event_id)
        await self._project(conn, dispute)
        state = dispute.state.value if dispute.state else "?"
        parts = [f"dispute {dispute.id} {state}" + ("" if recorded else " (nothing new)")]
        if dispute.order_id is None:
            parts.append("order not known yet")
            return "; ".join(parts)
        txn = await uow.load(Transaction, dispute.order_id)
        if not txn.exists:
            # Applied to the transaction when its cancellation or settlement computes refunds.
            parts.append(f"order {dispute.order_id} has no transaction yet")
            return "; ".join(parts)
        at = self.clock()
        parts += await apply_disputes(uow, txn, at)
        if self.after_change is not None:
            await self.after_change(uow, txn)
        return "; ".join(parts)

    async def _save(self, uow: UnitOfWork, dispute: Dispute, provider_event_id: str) -> None:
        """Append the dispute's new events with ids derived from the provider event and the version
        they land at, so the same fact applied again to the same state appends nothing."""
        if not dispute.pending:
            return
        meta = uow.ctx.metadata()
        await uow.store.append(dispute.stream_id, dispute.version, [
            NewEvent(e.event_type, e.to_data(), meta, e.schema_version,
                     event_id=event_uuid(PROVIDER, provider_event_id, f"dispute:{dispute.version + n}"))
            for n, e in enumerate(dispute.pending, start=1)], conn=uow.conn)
        dispute.mark_saved()

    async def _project(self, conn: asyncpg.Connection, d: Dispute) -> None:
        assert d.state is not None and d.provider_amount is not None and d.opened_at is not None
        await conn.execute(
            """INSERT INTO payments_disputes (dispute_id, order_id, charge_id, payment_intent_id, state, is_open,
                   amount, currency, provider_amount, provider_currency, reason, evidence_due_by, opened_at,
                   closed_at, outcome, version, updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
               ON CONFLICT (dispute_id) DO UPDATE SET order_id = EXCLUDED.order_id, charge_id = EXCLUDED.charge_id,
                   payment_intent_id = EXCLUDED.payment_intent_id, state = EXCLUDED.state,
                   is_open = EXCLUDED.is_open, amount = EXCLUDED.amount, currency = EXCLUDED.currency,
                   provider_amount = EXCLUDED.provider_amount, provider_currency = EXCLUDED.provider_currency,
                   reason = EXCLUDED.reason, evidence_due_by = EXCLUDED.evidence_due_by,
                   opened_at = EXCLUDED.opened_at, closed_at = EXCLUDED.closed_at, outcome = EXCLUDED.outcome,
                   version = EXCLUDED.version, updated_at = EXCLUDED.updated_at
               WHERE payments_disputes.version <= EXCLUDED.version""",
            d.id, d.order_id, d.charge_id, d.payment_intent_id, d.state.value, d.is_open,
            d.amount.amount if d.amount else None, d.amount.currency if d.amount else None,
            d.provider_amount.amount, d.provider_amount.currency.upper(), d.reason or "general", d.evidence_due_by,
            d.opened_at, d.closed_at, d.outcome.value if d.outcome else None, d.version,
            d.updated_at or d.opened_at)

    # --- queries ------------------------------------------------------------------------------
    async def search(self, *, state: DisputeState | None = None, overdue: bool | None = None,
                   order_id: str | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        """Disputes, newest first (keyset paging). `overdue`: open, evidence still awaited, past its deadline."""
        now = self.clock()
        after = _decode_cursor(cursor) if cursor else None
        rows = await self.store.pool.fetch(
            """SELECT * FROM payments_disputes
                WHERE ($1::text IS NULL OR state = $1)
                  AND ($2::text IS NULL OR order_id = $2)
                  AND ($3::boolean IS NULL OR $3 = (is_open AND state = ANY($4::text[])
                                                    AND evidence_due_by IS NOT NULL AND evidence_due_by < $5))
                  AND ($6::timestamptz IS NULL OR (opened_at, dispute_id) < ($6, $7))
                ORDER BY opened_at DESC, dispute_id DESC LIMIT $8""",
            state.value if state else None, order_id, overdue, list(AWAITING_EVIDENCE), now,
            after[0] if after else None, after[1] if after else None, limit + 1)
        items = [dispute_row(r, now) for r in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        return {"items": items,
                "next_cursor": _encode_cursor(last["opened_at"], last["dispute_id"]) if last else None}

    async def _load(self, conn: asyncpg.Connection, dispute_id: str) -> tuple[Dispute, list[StoredEvent]]:
        events = [_stored(e) for e in await self.store.read_stream(dispute_stream_id(dispute_id), conn=conn)]
        dispute = Dispute.rehydrate(dispute_id, (s.event for s in events if s.event is not None))
        if dispute.state is None:
            raise NotFound(f"dispute {dispute_id} not found", dispute_id=dispute_id)
        return dispute, events

    async def detail(self, dispute_id: str) -> dict[str, Any]:
        """The dispute's state, its history (every event with actor and time) and what it did to the
        order's refunds."""
        now = self.clock()
        async with self.store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                      readonly=True):
            dispute, events = await self._load(conn, dispute_id)
            row = await conn.fetchrow("SELECT * FROM payments_disputes WHERE dispute_id = $1", dispute_id)
            txn = Transaction(dispute.order_id or "")
            if dispute.order_id:
                tx_events = [_stored(e) for e in await self.store.read_stream(
                    Transaction.stream_id_for(dispute.order_id), conn=conn)]
                txn = Transaction.rehydrate(dispute.order_id, (s.event for s in tx_events if s.event is not None))
        view: dict[str, Any] = dispute_row(row, now) if row is not None else {"dispute_id": dispute_id}
        view["evidence_overdue"] = dispute.evidence_overdue(now)
        view["history"] = [self._history_entry(s) for s in events]
        view["transaction"] = _transaction_view(txn, dispute_id)
        return view

    @staticmethod
    def _history_entry(s: StoredEvent) -> dict[str, Any]:
        e = s.event
        entry: dict[str, Any] = {"event_type": s.event_type, "stream_version": s.stream_version,
                                 "recorded_at": s.recorded_at.isoformat(), "actor": s.metadata.get("actor"),
                                 "role": s.metadata.get("role"), "correlation_id": s.metadata.get("correlation_id")}
        if isinstance(e, DisputeOpened | DisputeStateChanged):
            entry.update(state=e.state.value, at=e.at.isoformat(), evidence_due_by=_iso(e.evidence_due_by),
                         provider_event_id=e.provider_event_id)
        elif isinstance(e, DisputeClosed):
            entry.update(state=e.outcome.value, at=e.at.isoformat(), evidence_due_by=_iso(e.evidence_due_by),
                         provider_event_id=e.provider_event_id)
        elif e is not None:
            entry.update(order_id=getattr(e, "order_id", None), at=_iso(getattr(e, "at", None)))
        return entry

    async def evidence(self, dispute_id: str) -> dict[str, Any]:
        """The evidence packet of one dispute as one JSON document (see domain/dispute.py and evidence.py)."""
        now = self.clock()
        async with self.store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                                      readonly=True):
            # One snapshot: the order, its bills, the transaction and the dispute as of one moment.
            dispute, dispute_events = await self._load(conn, dispute_id)
            order_id = dispute.order_id
            own = [f"{c}-{order_id}" for c in ("order", "transaction", "payment", "kolable")] if order_id else []
            upstream = sorted({f"upstream-{PROVIDER}-{s.event.provider_event_id}" for s in dispute_events
                               if isinstance(s.event, DisputeOpened | DisputeStateChanged | DisputeClosed)
                               and s.event.provider_event_id})
            streams = {sid: [_stored(e) for e in es]
                       for sid, es in (await self.store.read_streams([*own, *upstream], conn=conn)).items()}
            order_events = streams.get(f"order-{order_id}", [])
            bill_ids = sorted({b for s in order_events for b in (
                getattr(s.event, "prepayment_bill_id", None), getattr(s.event, "bill_id", None)) if b})
            bills = {sid: [_stored(e) for e in es] for sid, es in (await self.store.read_streams(
                [f"bill-{b}" for b in bill_ids], conn=conn)).items()}
        tx_events = streams.get(f"transaction-{order_id}", [])
        txn = Transaction.rehydrate(order_id or "", (s.event for s in tx_events if s.event is not None))
        policy: CancellationPolicy | None = None
        if txn.policy_version:
            try:
                policy = policy_by_version(self.policies, txn.policy_version)
            except RuleViolation:
                policy = None
        order = order_view(order_events)
        bill = primary_bill(bill_views(bills))
        refund_policy = refund_policy_section(policy, txn.placed_at)
        everything = [*dispute_events, *[s for es in streams.values() for s in es],
                      *[s for es in bills.values() for s in es]]
        packet = evidence_packet(dispute, order, bill, service_documentation(order_events, bills),
                                 customer_communication(order_events, bills), refund_policy,
                                 activity_log(everything))
        packet["summary"]["evidence_overdue"] = dispute.evidence_overdue(now)
        packet["summary"]["refund_policy_version"] = txn.policy_version
        packet["summary"]["generated_at"] = now.isoformat()
        # The document's sections in a stable order, the notes on missing evidence before `packet`.
        tail = packet.pop("packet")
        packet["transaction"] = _transaction_view(txn, dispute_id)
        packet["not_available"] = not_available(order, bill, refund_policy)
        packet["packet"] = tail
        return packet
