"""The payments service's use cases: reactions to the orders service's events and to the
upstream payment facts, in the transaction of the consumer or of the ingestion that
delivers them. Every change of a Transaction also appends the contract events the orders
service consumes (application/contract.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

import asyncpg

from libs.application.unit_of_work import CommandContext, UnitOfWork
from libs.domain.aggregate import Aggregate
from libs.domain.errors import DomainError
from libs.domain.events import DomainEvent, registry
from libs.eventstore import EventStore
from services.orders.domain import events as orders_ev
from services.payments.application.batch import BatchUnitOfWork, UpstreamBatch, lock_many
from services.payments.application.contract import CONTRACT_CATEGORY, contract_events
from services.payments.application.disputes import apply_disputes
from services.payments.application.refunds import RefundsService
from services.payments.application.reservations import follow_reservation
from services.payments.domain import events as ev
from services.payments.domain.policy import CancellationPolicy, policy_by_version, policy_in_force
from services.payments.domain.transaction import Transaction
from services.payments.domain.upstream_events import (
    UpstreamChargeRefunded,
    UpstreamChargeSucceeded,
    UpstreamDisputeFact,
    UpstreamFact,
    UpstreamPaymentFailed,
    UpstreamRefundUpdated,
)
from services.payments.domain.voucher import CompensationGrant, Voucher, VoucherKind, VoucherTerms

log = logging.getLogger("closeloop.payments")
# A batch's store step: appends the facts not stored yet; returns them and event id -> global position.
StoreFacts = Callable[[], Awaitable[tuple[list[tuple[UpstreamFact, Any]], dict[Any, int]]]]
ApplyFacts = Callable[[list[tuple[UpstreamFact, Any]]], Awaitable[list[str]]]


class KolableFacts(Protocol):
    """What the upstream routing needs of the Kolable reconciliation."""

    async def owns(self, conn: asyncpg.Connection, order_id: str, fact: UpstreamFact,
                   batch: Any = None) -> bool: ...

    async def on_upstream_fact(self, uow: UnitOfWork, fact: UpstreamFact, order_id: str,
                               fact_event_id: Any, batch: Any = None) -> str: ...

    async def prepare_batch(self, uow: UnitOfWork, orders: list[str], facts: list[UpstreamFact],
                            locks: set[str]) -> Any: ...

    async def save_batch(self, conn: asyncpg.Connection, kb: Any) -> None: ...


class PaymentContract(Aggregate):
    """The stream of contract events of one order (`payment-{order_id}`): append-only, no rules."""

    category: ClassVar[str] = CONTRACT_CATEGORY

    def apply(self, event: DomainEvent) -> None:
        pass

    def emit(self, events: list[DomainEvent]) -> None:
        for e in events:
            self._record(e)


@dataclass
class PaymentsService:
    store: EventStore
    policies: list[CancellationPolicy]
    clock: Callable[[], datetime]
    rejected: int = 0
    # Runs the refunds a Transaction change decides (application/refunds.py; set by the bootstrap).
    refunds: RefundsService | None = None
    # Dispute facts: (uow, fact, order id or None) -> outcome. Set by the bootstrap.
    on_dispute: Callable[[UnitOfWork, UpstreamDisputeFact, str | None], Awaitable[str]] | None = None
    # The Kolable course reconciliation (application/kolable.py), fed with its orders' facts.
    kolable: KolableFacts | None = None

    # --- helpers --------------------------------------------------------------------------
    async def publish_contract(self, uow: UnitOfWork, txn: Transaction) -> None:
        """Everything a Transaction change implies, in its database transaction: the contract events the
        orders service consumes, and the refunds it decided (requested; member-balance ones credited).
        Called after every change; when called several times in one unit of work (parked facts applied
        one after another), each call handles only the events recorded since the previous call."""
        key = ("transaction-change", txn.id)
        seen = uow.notes.get(key, 0)
        if seen > len(txn.pending):  # flushed meanwhile
            seen = 0
        new = txn.pending[seen:]
        uow.notes[key] = len(txn.pending)
        if not new:
            return
        derived = contract_events(new, txn.settlement)
        if derived:
            contract = await uow.load(PaymentContract, txn.id)
            contract.emit(derived)
        if self.refunds is not None:
            await self.refunds.after_change(uow, txn, len(new))
        await _record_merchants(uow.conn, new)

    async def _merchant_of(self, conn: asyncpg.Connection, order_id: str) -> str | None:
        return await conn.fetchval("SELECT merchant_id FROM payments_order_merchants WHERE order_id = $1", order_id)

    # --- reactions to orders.events -------------------------------------------------------
    def _opened(self, event: orders_ev.OrderPlaced, at: datetime) -> Transaction:
        """The transaction an OrderPlaced opens, under the cancellation policy in force when it was placed."""
        policy = policy_in_force(self.policies, event.placed_at)
        return Transaction.open(
            event.order_id, customer_id=event.customer_id, placed_at=event.placed_at,
            estimated_total=event.estimated_total, policy_version=policy.version, at=at,
            prepayment_bill_id=event.prepayment_bill_id, payment_deadline=event.payment_deadline)

    async def on_orders_event(self, uow: UnitOfWork, event: DomainEvent) -> None:
        at = self.clock()
        match event:
            case orders_ev.OrderPlaced():
                await _lock_order(uow.conn, event.order_id)
                txn = await uow.load(Transaction, event.order_id)
                if txn.exists:
                    return
                uow.add(self._opened(event, at))
                await self._apply_parked(uow, event.order_id)
            case orders_ev.OrderAccepted():
                await uow.conn.execute(
                    """INSERT INTO payments_order_merchants (order_id, merchant_id) VALUES ($1, $2)
                       ON CONFLICT (order_id) DO UPDATE SET merchant_id = EXCLUDED.merchant_id""",
                    event.order_id, event.merchant_id)
            case orders_ev.OrderBillConfirmed():
                # Under the order's lock (as upstream facts are applied): the order's open disputes
                # freeze the transaction first -- a dispute may have arrived before the transaction
                # existed -- so that an excess the settlement refunds is held, not refused (a refusal
                # would skip this event and lose the settlement).
                await _lock_order(uow.conn, event.order_id)
                txn = await uow.get(Transaction, event.order_id)
                await apply_disputes(uow, txn, at)
                txn.bill(event.bill_id, event.revision, event.total, at)
                # 多退少補: with nothing to collect the bill settles at once (refunding any excess);
                # a shortfall waits for the customer's or merchant's collection.
                if txn.preview_settlement().shortfall.amount == 0:
                    txn.settle(at=at)
                await self.publish_contract(uow, txn)
                await self._apply_parked(uow, event.order_id)  # a charge of this bill that came first
            case orders_ev.OrderCancelled():
                # As above: during a dispute the cancellation is applied (state, penalty, vouchers) and
                # its refunds are held until the dispute closes (services/payments/application/disputes.py).
                await _lock_order(uow.conn, event.order_id)
                txn = await uow.get(Transaction, event.order_id)
                await apply_disputes(uow, txn, at)
                assert txn.policy_version is not None
                txn.cancel(fault_party=event.fault_party.value, reason_code=event.reason_code,
                                  seconds_before_service_start=event.seconds_before_service_start,
                                  policy=policy_by_version(self.policies, txn.policy_version), at=at,
                                  merchant_id=await self._merchant_of(uow.conn, event.order_id))
                await follow_reservation(uow, txn)  # an unpaid order's reserved voucher and balance go back
                self._issue_compensation_vouchers(uow, txn, at)
                await self.publish_contract(uow, txn)
            case _:
                pass

    async def on_orders_placed(self, conn: asyncpg.Connection,
                               placed: list[tuple[CommandContext, DomainEvent]]) -> None:
        """OrderPlaced events that came in a row in a batch (libs/application/reactions.py `batched`): what
        on_orders_event does for each, set-based: the orders' locks in one statement, their transactions
        read in one, one look for facts parked for them (there are none, normally: the order comes first),
        one append, each TransactionOpened with the metadata of its own OrderPlaced. Facts parked for one of
        these orders raise ParkedFactsWaiting: the reactions then go one by one, which releases them."""
        events = [(ctx, e) for ctx, e in placed if isinstance(e, orders_ev.OrderPlaced)]
        assert len(events) == len(placed), "only OrderPlaced runs come here"
        uow = BatchUnitOfWork(self.store, conn, events[0][0])
        order_ids = list(dict.fromkeys(e.order_id for _, e in events))
        await lock_many(conn, [f"payments-order:{o}" for o in order_ids], set())  # as _lock_order, each
        await uow.load_many([(Transaction, o) for o in order_ids])
        at = self.clock()
        opened: list[str] = []
        for ctx, event in events:
            uow.use(ctx)
            txn = await uow.load(Transaction, event.order_id)
            if txn.exists:
                continue
            uow.add(self._opened(event, at))
            opened.append(event.order_id)
        if opened and await conn.fetchval(_ANY_PARKED, opened):
            raise ParkedFactsWaiting(opened)
        await uow.flush()

    def _issue_compensation_vouchers(self, uow: UnitOfWork, txn: Transaction, at: datetime) -> None:
        """Seed 五: the compensation vouchers a cancellation granted become real vouchers of the customer
        (id `comp-<order>-<n>`, so a redelivered cancellation cannot issue them twice)."""
        for grant in (e for e in txn.pending if isinstance(e, ev.CompensationVoucherGranted)):
            terms = VoucherTerms(kind=VoucherKind.AMOUNT, currency=grant.amount.currency, amount_off=grant.amount,
                                 combinable_with_balance=True, valid_from=at, expires_at=grant.expires_at)
            uow.add(Voucher.issue(
                f"comp-{txn.id}-{grant.grant_no}", customer_id=grant.customer_id, category="compensation",
                terms=terms, issued_by="payments", at=at,
                compensation=CompensationGrant(rule=grant.rule.value, order_id=txn.id,
                                               replaces_voucher_id=grant.replaces)))

    # --- upstream facts --------------------------------------------------------------------
    async def on_upstream_fact(self, uow: UnitOfWork, fact: UpstreamFact, fact_event_id: Any,
                               batch: UpstreamBatch | None = None) -> str:
        """Apply a stored upstream fact; park it while its order cannot be found. Returns what
        happened (for logs and tests).

        Routing, once the order is known (named by `metadata.order_id`, or found through the
        charge / PaymentIntent index that earlier facts filled):
        - every dispute fact goes to the dispute handler (the Dispute aggregate; it freezes the
          order's refunds) -- also while the order is unknown, with `order_id` None;
        - a fact of a Kolable course order (its metadata names a `course_id`, or the order is
          already known to the Kolable reconciliation) goes to the Kolable reconciliation;
        - any other fact applies to the order's Transaction.
        A fact that taught the index a new charge or PaymentIntent id releases the facts that were
        parked waiting for it (a refund or dispute delivered before its charge), which then run
        through this same routing. Every handler is idempotent: a parked fact may be seen twice.

        With `batch` (on_upstream_facts), the index, the locks and the parking are the batch's
        (application/batch.py), which answers as the database would at this point of a one-by-one run.
        """
        refs = fact.order_ref.index_entries()
        learned: list[str] = []
        if batch is not None:
            learned = batch.learn(fact)
            await lock_many(uow.conn, [f"payments-ref:{pid}" for pid in learned], batch.locks)
        elif refs:
            rows = await uow.conn.fetch(
                """INSERT INTO payments_upstream_refs (provider_payment_id, order_id)
                   SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (provider_payment_id) DO NOTHING
                   RETURNING provider_payment_id""", list(refs), list(refs.values()))
            learned = sorted(r["provider_payment_id"] for r in rows)
            # Taken after the insert, and by a fact that parks for want of these ids before it looks
            # them up: either the parker sees this index row, or this transaction sees its parked row.
            await _lock_refs(uow.conn, learned)
        order_id = fact.order_ref.order_id
        ids = sorted({i for i in (fact.order_ref.charge_id, fact.order_ref.payment_intent_id) if i})
        if order_id is None and ids and batch is not None:
            # The batch took the ids' locks before it read the index (prepare_batch).
            await lock_many(uow.conn, [f"payments-ref:{pid}" for pid in ids], batch.locks)
            order_id = batch.order_of(ids)
        elif order_id is None and ids:
            order_id = await _order_of(uow.conn, ids)
            if order_id is None:
                await _lock_refs(uow.conn, ids)
                order_id = await _order_of(uow.conn, ids)
        if order_id is not None:
            if batch is not None:
                await lock_many(uow.conn, [f"payments-order:{order_id}"], batch.locks)
            else:
                await _lock_order(uow.conn, order_id)
        outcomes: list[str] = []
        if isinstance(fact, UpstreamDisputeFact) and self.on_dispute is not None:
            outcomes.append(await self.on_dispute(uow, fact, order_id))
        if order_id is None:
            if not ids:
                outcomes.append(f"data gap: {fact.data_gap}")
            else:
                key = fact.order_ref.charge_id or ids[0]
                await self._park(uow, fact_event_id, key, "order not known yet", batch, fact)
                outcomes.append("parked: order not known yet")
        elif self.kolable is not None and await self.kolable.owns(uow.conn, order_id, fact, batch):
            outcomes.append(await self.kolable.on_upstream_fact(uow, fact, order_id, fact_event_id, batch))
        elif not isinstance(fact, UpstreamDisputeFact):
            outcomes.append(await self._on_transaction_fact(uow, fact, order_id, fact_event_id, batch))
        if learned:
            await self._release_parked(uow, learned, batch)
        return "; ".join(outcomes) or "recorded"

    async def on_upstream_facts(self, uow: BatchUnitOfWork, candidates: list[tuple[UpstreamFact, Any]],
                                store: StoreFacts, one_by_one: ApplyFacts) -> list[str]:
        """Apply a batch of upstream facts, in batch order, with the results of `on_upstream_fact`
        one by one (application/batch.py). `candidates` are the batch's facts; `store` appends the
        ones not stored yet and returns them (with the events' positions): only those are applied.
        Every lock is taken before anything is written (so that this transaction's id is younger
        than that of every writer it waited for). If the rules refuse one of the facts, the batch's
        work rolls back to a savepoint and `one_by_one` applies them instead, each in its savepoint."""
        batch = await self._prepare_batch(uow, candidates)
        facts, batch.positions = await store()
        if not facts:
            return []
        try:
            async with uow.conn.transaction():  # savepoint
                await self._insert_index(uow.conn, batch, facts)
                outcomes = []
                for fact, fact_event_id in facts:
                    uow.use(reaction_context(correlation_id=fact.provider_event_id, causation_id=str(fact_event_id)))
                    outcomes.append(await self.on_upstream_fact(uow, fact, fact_event_id, batch))
                await batch.save(uow.conn)
                if batch.kolable is not None and self.kolable is not None:
                    await self.kolable.save_batch(uow.conn, batch.kolable)
                await uow.flush()
                return outcomes
        except DomainError as exc:
            log.info("upstream batch of %d facts applied one by one: %s", len(facts), exc)
        return await one_by_one(facts)

    async def _prepare_batch(self, uow: UnitOfWork, facts: list[tuple[UpstreamFact, Any]]) -> UpstreamBatch:
        """Locks and reads of a whole batch, set-based, in the one-by-one path's lock order, before
        anything is written. The ids a fact may learn (its index entries not in the index yet) and
        those it may park for (no order named) are locked before the index is read: a parker of one
        of them then either waits for this batch or is seen by it (see on_upstream_fact)."""
        conn = uow.conn
        batch = UpstreamBatch({})
        entries: dict[str, str] = {}
        for fact, _ in facts:
            for pid, oid in fact.order_ref.index_entries().items():
                entries.setdefault(pid, oid)  # the first fact to name an id is the one that learns it
        ids = {i for fact, _ in facts for i in (fact.order_ref.charge_id, fact.order_ref.payment_intent_id) if i}
        unnamed = {i for fact, _ in facts if fact.order_ref.order_id is None
                   for i in (fact.order_ref.charge_id, fact.order_ref.payment_intent_id) if i}
        await lock_many(conn, [f"payments-ref:{pid}" for pid in sorted(set(entries) | unnamed)], batch.locks)
        wanted = sorted(ids | set(entries))
        if wanted:
            batch.refs = {r["provider_payment_id"]: r["order_id"] for r in await conn.fetch(
                "SELECT provider_payment_id, order_id FROM payments_upstream_refs"
                " WHERE provider_payment_id = ANY($1::text[])", wanted)}
        candidates = {pid: oid for pid, oid in entries.items() if pid not in batch.refs}
        # The orders the facts resolve to, in batch order (what is learned becomes visible on the way).
        visible = dict(batch.refs)
        orders: set[str] = set()
        for fact, _ in facts:
            for pid in fact.order_ref.index_entries():
                if pid in candidates:
                    visible.setdefault(pid, candidates[pid])
            ref_ids = sorted({i for i in (fact.order_ref.charge_id, fact.order_ref.payment_intent_id) if i})
            order_id = fact.order_ref.order_id or next((visible[i] for i in ref_ids if i in visible), None)
            if order_id is not None:
                orders.add(order_id)
        await lock_many(conn, [f"payments-order:{o}" for o in sorted(orders)], batch.locks)
        if self.kolable is not None:
            batch.kolable = await self.kolable.prepare_batch(uow, sorted(orders), [f for f, _ in facts],
                                                              batch.locks)
        await uow.load_many([(cls, o) for o in sorted(orders) for cls in (Transaction, PaymentContract)])
        await batch.load_stored_parked(conn, sorted(candidates))
        return batch

    async def _insert_index(self, conn: asyncpg.Connection, batch: UpstreamBatch,
                            facts: list[tuple[UpstreamFact, Any]]) -> None:
        """The index entries of the batch's facts in one statement; those it inserted become visible to
        the batch's facts when the first fact naming them runs (UpstreamBatch.learn)."""
        entries: dict[str, str] = {}
        for fact, _ in facts:
            for pid, oid in fact.order_ref.index_entries().items():
                entries.setdefault(pid, oid)
        if entries:
            rows = await conn.fetch(
                """INSERT INTO payments_upstream_refs (provider_payment_id, order_id)
                   SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (provider_payment_id) DO NOTHING
                   RETURNING provider_payment_id, order_id""", list(entries), list(entries.values()))
            batch.ours = {r["provider_payment_id"]: r["order_id"] for r in rows}
        for pid in batch.ours:  # inserted meanwhile by someone else: visible as stored
            batch.refs.pop(pid, None)
        await lock_many(conn, [f"payments-ref:{pid}" for pid in sorted(batch.ours)], batch.locks)

    async def _on_transaction_fact(self, uow: UnitOfWork, fact: UpstreamFact, order_id: str,
                                   fact_event_id: Any, batch: UpstreamBatch | None = None) -> str:
        if fact.data_gap:
            return f"data gap: {fact.data_gap}"
        txn = await uow.load(Transaction, order_id)
        if not txn.exists:
            await self._park(uow, fact_event_id, order_id, "transaction not opened yet", batch, fact)
            return "parked: transaction not opened yet"
        if _for_a_bill_not_seen_yet(txn, fact):
            # The customer paid the final bill (its id in the charge's metadata) before this service
            # saw the bill confirmed (the two reach it over different topics): wait for the bill.
            await self._park(uow, fact_event_id, order_id, "bill not known yet", batch, fact)
            return "parked: bill not known yet"
        if isinstance(fact, UpstreamRefundUpdated | UpstreamChargeRefunded) and self.refunds is not None:
            outcome = await self.refunds.on_provider_refund(uow, txn, fact)
        else:
            outcome = self._apply_fact(txn, fact)
        await follow_reservation(uow, txn)  # a charge of the remainder redeems the voucher, captures the hold
        await self.publish_contract(uow, txn)
        return outcome

    def _apply_fact(self, txn: Transaction, fact: UpstreamFact) -> str:
        match fact:
            case UpstreamChargeSucceeded():
                reference = fact.payment_intent_id or fact.charge_id or fact.provider_event_id
                paid = [t.reference for t in txn.prepaid_tenders]
                paid += [p.tender.reference for p in txn.payments_to_return]
                if txn.settlement and txn.settlement.collection:
                    paid.append(txn.settlement.collection.reference)
                if reference in paid:
                    return "duplicate: this payment is already applied"  # Stripe reports it twice
                assert fact.amount is not None
                tender = ev.Tender(kind=ev.TenderKind.THIRD_PARTY, amount=fact.amount, reference=reference)
                if txn.status is ev.TransactionStatus.UNPAID:
                    # A reservation stays as it is until the order's cancellation at the deadline releases it.
                    if txn.payment_deadline is not None and fact.occurred_at >= txn.payment_deadline:
                        txn.record_payment_to_return(tender, "paid after the payment deadline", fact.occurred_at)
                        return "to return: paid after the payment deadline"
                    # Reserved voucher / balance: the card pays exactly the remainder; otherwise the whole
                    # prepayment. Any other amount is returned (never captured in part, never dropped), and
                    # the reservation stays: the customer may still pay the right amount before the deadline.
                    reserved = txn.reservation
                    assert txn.estimated_total is not None
                    due = reserved.remainder if reserved is not None else txn.estimated_total
                    if fact.amount != due:
                        what = "the remainder left by the reserved tenders" if reserved else "the prepayment"
                        txn.record_payment_to_return(tender, f"{fact.amount} is not {what} {due}", fact.occurred_at)
                        return f"to return: {fact.amount} is not {what} {due}"
                    if reserved is not None:
                        txn.capture_reserved_prepayment(tender, at=fact.occurred_at)
                        return "prepayment captured with the reserved tenders"
                    txn.capture_prepayment([tender], at=fact.occurred_at)
                    return "prepayment captured"
                if txn.status is ev.TransactionStatus.BILLED and txn.settlement is None:
                    # The charge collects the shortfall only when it is exactly the shortfall; any other
                    # amount goes back, and the shortfall is still owed (paid again at the cashier).
                    shortfall = txn.preview_settlement().shortfall
                    if fact.amount != shortfall:
                        txn.record_payment_to_return(tender, f"{fact.amount} is not the shortfall {shortfall}",
                                                     fact.occurred_at)
                        return f"to return: {fact.amount} is not the shortfall {shortfall}"
                    txn.settle(at=fact.occurred_at, method=ev.TenderKind.THIRD_PARTY, reference=reference)
                    return "shortfall collected"
                # The order was cancelled, or is paid already: the money goes back.
                txn.record_payment_to_return(tender, f"the transaction is {txn.status}", fact.occurred_at)
                return f"to return: the transaction is {txn.status}"
            case UpstreamPaymentFailed():
                if txn.attempt is not None:
                    txn.fail_attempt(txn.attempt.attempt_id, ev.FailureReason.DECLINED, fact.occurred_at)
                    return "attempt failed"
                return "no open attempt"
            case _:
                return "recorded"

    async def _park(self, uow: UnitOfWork, fact_event_id: Any, key: str, reason: str,
                    batch: UpstreamBatch | None = None, fact: UpstreamFact | None = None) -> None:
        if batch is not None:
            batch.park(fact_event_id, fact, key, reason)
            return
        await uow.conn.execute(
            "INSERT INTO payments_parked_facts (fact_event_id, order_key, reason) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING", fact_event_id, key, reason)

    async def _apply_parked(self, uow: UnitOfWork, order_id: str) -> None:
        """The order's transaction was just opened: run the facts that waited for it."""
        keys = [order_id, *[r["provider_payment_id"] for r in await uow.conn.fetch(
            "SELECT provider_payment_id FROM payments_upstream_refs WHERE order_id = $1", order_id)]]
        await self._release_parked(uow, keys)

    async def _release_parked(self, uow: UnitOfWork, keys: list[str], batch: UpstreamBatch | None = None) -> None:
        """Run again, in stored order, the parked facts waiting for one of `keys`. A fact the
        rules refuse is logged and stays stored (the savepoint keeps the rest of the batch). In a
        batch, a refusal propagates instead (the batch is then applied one by one)."""
        if batch is not None:
            for parked in batch.release(keys):
                if parked.fact is not None:
                    await self.on_upstream_fact(uow, parked.fact, parked.fact_event_id, batch)
            return
        rows = await uow.conn.fetch(
            "DELETE FROM payments_parked_facts WHERE order_key = ANY($1) RETURNING fact_event_id", keys)
        if not rows:
            return
        stored = await uow.conn.fetch(
            "SELECT event_id, event_type, schema_version, data FROM events WHERE event_id = ANY($1)"
            " ORDER BY global_position", [r["fact_event_id"] for r in rows])
        for row in stored:
            fact = registry.decode(row["event_type"], row["schema_version"], row["data"])
            if not isinstance(fact, UpstreamFact):
                continue
            try:
                async with uow.conn.transaction():
                    await self.on_upstream_fact(uow, fact, row["event_id"])
            except DomainError as exc:
                log.warning("parked fact %s refused: %s", fact.provider_event_id, exc)


# Whether facts are parked for one of the orders ($1), under their own id or one of their payments' (what
# _apply_parked releases).
_ANY_PARKED = """SELECT EXISTS (SELECT 1 FROM payments_parked_facts WHERE order_key = ANY($1::text[])
                                   OR order_key IN (SELECT provider_payment_id FROM payments_upstream_refs
                                                     WHERE order_id = ANY($1::text[])))"""


class ParkedFactsWaiting(Exception):
    """on_orders_placed: facts wait for one of these orders; the one-by-one path releases them."""


async def _lock_order(conn: asyncpg.Connection, order_id: str) -> None:
    """Serialise, per order, opening its transaction and applying upstream facts to it. Without it a
    fact could be parked by one transaction while another, opening the order's transaction, looks
    for parked facts before the first commits: the fact would stay parked for ever."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"payments-order:{order_id}")


def _for_a_bill_not_seen_yet(txn: Transaction, fact: UpstreamFact) -> bool:
    """A charge naming (metadata.bill_id) a bill of the order other than its prepayment, before the
    transaction is billed with it."""
    if not isinstance(fact, UpstreamChargeSucceeded):
        return False
    bill_id = fact.metadata.get("bill_id")
    return bool(bill_id) and bill_id != txn.prepayment_bill_id and txn.bill_id is None and txn.status in (
        ev.TransactionStatus.UNPAID, ev.TransactionStatus.PREPAID)


async def _record_merchants(conn: asyncpg.Connection, events: list[DomainEvent]) -> None:
    """The merchant's record: merchant-fault cancellations and compensations the platform owes."""
    rows: list[tuple[Any, ...]] = []
    for e in events:
        if isinstance(e, ev.MerchantFaultRecorded):
            rows.append((e.merchant_id, e.order_id, "fault_cancellation", e.reason_code,
                         e.seconds_before_service_start, None, None, None, e.at))
        elif isinstance(e, ev.MerchantCompensationGranted):
            rows.append((e.merchant_id, e.order_id, "compensation_owed", e.reason_code,
                         e.seconds_before_service_start, e.amount.amount, e.amount.currency, e.policy_version, e.at))
    if rows:
        await conn.executemany(
            """INSERT INTO payments_merchant_records (merchant_id, order_id, kind, reason_code,
                   seconds_before_service_start, amount, currency, policy_version, at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""", rows)


async def merchant_record(conn: asyncpg.Connection, merchant_id: str) -> dict[str, Any]:
    """A merchant's record: fault cancellations and compensation owed, newest first, with totals."""
    rows = await conn.fetch("SELECT * FROM payments_merchant_records WHERE merchant_id = $1 ORDER BY at DESC",
                            merchant_id)
    owed: dict[str, int] = {}
    for r in rows:
        if r["kind"] == "compensation_owed":
            owed[r["currency"]] = owed.get(r["currency"], 0) + r["amount"]
    return {
        "merchant_id": merchant_id,
        "fault_cancellations": sum(1 for r in rows if r["kind"] == "fault_cancellation"),
        "compensation_owed": [{"amount": a, "currency": c} for c, a in sorted(owed.items())],
        "entries": [{"order_id": r["order_id"], "kind": r["kind"], "reason_code": r["reason_code"],
                     "seconds_before_service_start": r["seconds_before_service_start"],
                     "amount": {"amount": r["amount"], "currency": r["currency"]} if r["amount"] is not None else None,
                     "policy_version": r["policy_version"], "at": r["at"].isoformat()} for r in rows],
    }


async def _order_of(conn: asyncpg.Connection, provider_ids: list[str]) -> str | None:
    return await conn.fetchval(
        "SELECT order_id FROM payments_upstream_refs WHERE provider_payment_id = ANY($1) LIMIT 1", provider_ids)


async def _lock_refs(conn: asyncpg.Connection, provider_ids: list[str]) -> None:
    """Serialise learning a provider payment id with parking a fact for want of it (sorted: no deadlock)."""
    for pid in provider_ids:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"payments-ref:{pid}")


def reaction_context(correlation_id: str, causation_id: str) -> CommandContext:
    return CommandContext(actor="payments", role="service", correlation_id=correlation_id, causation_id=causation_id)
