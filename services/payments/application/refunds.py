"""Refund execution (domain/refund.py): every refund a Transaction decides becomes a
RefundExecution in the same database transaction, and the provider's refund reports move it on.

- `after_change(uow, txn)`: called with every Transaction change (PaymentsService.publish_contract
  calls it). The lines that run now (`refunds_to_run`) are requested; member-balance lines are
  credited back to the wallet at once; vouchers a cancellation gives back are returned (and
  extended when they would come back expired). Deterministic ids: a redelivered event that
  changes nothing requests nothing.
- `on_provider_refund(uow, txn, fact)`: a `refund.updated` / `charge.refund.updated` (or an old
  API's `charge.refunded` naming its refund) for an order's payment. Found by
  `metadata.closeloop_refund_id` (what our connector sets), by the provider refund id seen
  before, or by the payment and amount of a refund still waiting; a refund closeloop did not
  ask for is recorded on the transaction (TransactionExternalRefund) when it succeeded.
- `issue(order, amount, reason)`: customer service refunds what an order paid (the safety rule
  caps it); concurrent duplicates give one refund (the request id / Idempotency-Key, and the
  transaction stream's optimistic concurrency re-checking the cap).
- `retry(refund, reason)`: an operator asks the provider again for a failed refund.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.errors import NotFound, RuleViolation
from libs.domain.money import Money
from libs.eventstore import EventStore
from services.payments.domain import events as ev
from services.payments.domain.checkout import require_party
from services.payments.domain.refund import RefundExecution, RefundStatus, refunds_to_run
from services.payments.domain.transaction import Transaction
from services.payments.domain.upstream_events import UpstreamChargeRefunded, UpstreamFact, UpstreamRefundUpdated
from services.payments.domain.voucher import Voucher
from services.payments.domain.wallet import Wallet

__all__ = ["REFUND_METADATA_KEY", "RefundsService", "refund_view"]

REFUND_METADATA_KEY = "closeloop_refund_id"
ISSUE_ROLES = frozenset({"platform", "service"})
FAILED_STATUSES = frozenset({"failed", "canceled"})
PENDING_STATUSES = frozenset({"pending", "requires_action"})


def refund_view(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    return {"refund_id": row["refund_id"], "order_id": row["order_id"], "source": row["source"],
            "kind": row["kind"], "amount": {"amount": row["amount"], "currency": row["currency"]},
            "reference": row["reference"], "provider": row["provider"], "status": row["status"],
            "provider_refund_id": row["provider_refund_id"], "attempt": row["attempt"],
            "failure_reason": row["failure_reason"], "requested_at": row["requested_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(), "version": row["version"]}


async def _project(conn: asyncpg.Connection, r: RefundExecution, at: datetime) -> None:
    q = r.requested
    assert q is not None and r.status is not None
    await conn.execute(
        """INSERT INTO payments_refunds (refund_id, order_id, source, kind, amount, currency, reference, provider,
                                         status, provider_refund_id, attempt, failure_reason, requested_at,
                                         updated_at, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           ON CONFLICT (refund_id) DO UPDATE SET status = EXCLUDED.status,
               provider_refund_id = EXCLUDED.provider_refund_id, attempt = EXCLUDED.attempt,
               failure_reason = EXCLUDED.failure_reason, updated_at = EXCLUDED.updated_at,
               version = EXCLUDED.version""",
        r.id, q.order_id, q.source.value, q.kind.value, q.amount.amount, q.amount.currency, q.reference, q.provider,
        r.status.value, r.provider_refund_id, r.attempt, r.failure_reason, q.at, at, r.version + len(r.pending))


@dataclass
class RefundsService:
    store: EventStore
    clock: Callable[[], datetime]

    # --- refunds decided by a Transaction change --------------------------------------------
    async def after_change(self, uow: UnitOfWork, txn: Transaction, new: int | None = None) -> None:
        """Run the refunds the Transaction's last `new` pending events decided (all pending by default)."""
        pending = txn.pending if new is None else txn.pending[len(txn.pending) - new:]
        base = txn.version + len(txn.pending) - len(pending)
        at = self.clock()
        for refund_id, source, line in refunds_to_run(txn.id, base, pending):
            refund = await uow.load(RefundExecution, refund_id)
            if refund.exists:
                continue
            refund = RefundExecution.request(refund_id, txn.id, source, line, at=at, customer_id=txn.customer_id,
                                             reason=_reason(source))
            uow.add(refund)
            if line.kind is ev.TenderKind.MEMBER_BALANCE:
                assert txn.customer_id is not None
                wallet = await uow.get(Wallet, txn.customer_id)
                wallet.credit_refund(line.amount, txn.id, line.reference, at, reference=f"refund-{refund_id}")
                refund.succeed(at)
            await _project(uow.conn, refund, at)
        for e in pending:
            if isinstance(e, ev.TransactionRefunded | ev.TransactionVoided):
                await self._return_vouchers(uow, txn, e.plan, at)

    async def _return_vouchers(self, uow: UnitOfWork, txn: Transaction, plan: ev.CancellationPlan,
                               at: datetime) -> None:
        """Seed 五 卡券: a voucher the cancellation gives back is returned as it was, or extended when it
        would come back expired; a replaced one stays used (its compensation voucher is issued)."""
        for back in plan.vouchers_returned:
            if back.action is ev.VoucherAction.REPLACED:
                continue
            voucher = await uow.load(Voucher, back.reference)
            if not voucher.exists or voucher.status is None or voucher.status.value == "returned":
                continue
            voucher.return_(txn.id, "order cancelled: the voucher goes back along the original path", at)
            if back.action is ev.VoucherAction.EXTENDED and back.new_expires_at is not None:
                voucher.extend(back.new_expires_at, "it would have come back expired (cancellation policy)", at)

    # --- the provider's reports ----------------------------------------------------------------
    async def on_provider_refund(self, uow: UnitOfWork, txn: Transaction, fact: UpstreamFact) -> str:
        """Apply a provider refund report of one of the order's payments; returns what happened."""
        report = _report(fact)
        if report is None:
            return "recorded (the charge's cumulative refunded amount; its refunds report themselves)"
        provider_refund_id, status, amount, metadata, payment_ids = report
        conn = uow.conn
        refund_id = metadata.get(REFUND_METADATA_KEY) or await conn.fetchval(
            "SELECT refund_id FROM payments_refunds WHERE provider_refund_id = $1", provider_refund_id)
        if refund_id is None and amount is not None:
            # A refund of ours whose report carries no metadata: the oldest one waiting for this
            # payment with this amount (FOR UPDATE: two reports never take the same refund).
            refund_id = await conn.fetchval(
                """SELECT refund_id FROM payments_refunds
                    WHERE order_id = $1 AND reference = ANY($2) AND amount = $3 AND currency = $4
                      AND provider_refund_id IS NULL AND status IN ('requested', 'pending')
                    ORDER BY requested_at, refund_id LIMIT 1 FOR UPDATE""",
                txn.id, payment_ids, amount.amount, amount.currency)
        at = fact.occurred_at
        if refund_id is None:
            if status == "succeeded" and amount is not None and txn.record_external_refund(
                    provider_refund_id, payment_ids, amount, at):
                return f"external refund {provider_refund_id} recorded"
            return f"refund {provider_refund_id} ({status}) is not one of ours"
        refund = await uow.load(RefundExecution, refund_id)
        if not refund.exists or refund.order_id != txn.id:
            raise RuleViolation("metadata.closeloop_refund_id",
                                f"refund {refund_id} is not a refund of order {txn.id}")
        changed = False
        if status == "succeeded":
            changed = refund.succeed(at, provider_refund_id)
        elif status in FAILED_STATUSES:
            if refund.provider_refund_id in (None, provider_refund_id):
                changed = refund.fail(fact.failure_reason if isinstance(fact, UpstreamRefundUpdated)
                                      and fact.failure_reason else status, at, provider_refund_id)
        elif status in PENDING_STATUSES:
            changed = refund.accept(provider_refund_id, at)
        if changed:
            await _project(conn, refund, at)
        return f"refund {refund_id} {refund.status.value if refund.status else '?'}" + ("" if changed else
                                                                                         " (nothing new)")

    # --- commands --------------------------------------------------------------------------------
    async def issue(self, order_id: str, amount: Money, reason: str, ctx: CommandContext,
                    publish: Callable[[UnitOfWork, Transaction], Any]) -> CommandResult:
        """Customer service refunds part or all of what the order paid (roles platform / service)."""
        require_party(ctx.role, ctx.actor, action="issue refunds", roles=ISSUE_ROLES)
        request_id = _request_id(ctx)

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            txn = await uow.get(Transaction, order_id, check_version=True)
            before = len(txn.issued_refunds)
            lines = txn.issue_refund(request_id, amount, reason, self.clock())
            await publish(uow, txn)
            issued = next(e for e in txn.issued_refunds if e.refund_request_id == request_id)
            return {"order_id": order_id, "refund_request_id": request_id, "amount": amount.model_dump(),
                    "recorded": len(txn.issued_refunds) > before, "issued_at": issued.at.isoformat(),
                    "lines": [{"kind": r.kind.value, "amount": r.amount.model_dump(), "reference": r.reference}
                              for r in lines],
                    "refundable_after": txn.refundable().model_dump()}

        return await execute(self.store, ctx, f"payments:{order_id}:refund", fn)

    async def retry(self, refund_id: str, reason: str, ctx: CommandContext) -> CommandResult:
        """Ask the provider again for a failed refund (roles platform / service)."""
        require_party(ctx.role, ctx.actor, action="retry refunds", roles=ISSUE_ROLES)

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            refund = await uow.get(RefundExecution, refund_id)
            at = self.clock()
            refund.retry(reason, at)
            await _project(uow.conn, refund, at)
            return {"refund_id": refund_id, "status": refund.status.value if refund.status else None,
                    "attempt": refund.attempt}

        return await execute(self.store, ctx, f"payments:refund:{refund_id}:retry", fn)

    # --- queries -----------------------------------------------------------------------------------
    async def of_order(self, order_id: str) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch(
            "SELECT * FROM payments_refunds WHERE order_id = $1 ORDER BY requested_at, refund_id", order_id)
        return [refund_view(r) for r in rows]

    async def get(self, refund_id: str) -> dict[str, Any]:
        row = await self.store.pool.fetchrow("SELECT * FROM payments_refunds WHERE refund_id = $1", refund_id)
        if row is None:
            raise NotFound(f"refund {refund_id} not found", refund_id=refund_id)
        return refund_view(row)

    async def search(self, status: RefundStatus | None, provider: str | None, limit: int) -> list[dict[str, Any]]:
        """The refunds in a status, oldest first: `requested` + provider `stripe` is the connector's queue."""
        rows = await self.store.pool.fetch(
            """SELECT * FROM payments_refunds WHERE ($1::text IS NULL OR status = $1)
                 AND ($2::text IS NULL OR provider = $2) ORDER BY requested_at, refund_id LIMIT $3""",
            status.value if status else None, provider, limit)
        return [refund_view(r) for r in rows]


def _reason(source: ev.RefundSource) -> str:
    return {ev.RefundSource.CANCELLATION: "cancellation refund (policy in force at placement)",
            ev.RefundSource.SETTLEMENT: "settlement: the prepayment exceeded the bill (多退)",
            ev.RefundSource.PAYMENT_TO_RETURN: "money that arrived but could not be taken",
            ev.RefundSource.ISSUED: "issued by customer service"}[source]


def _request_id(ctx: CommandContext) -> str:
    """The refund request's id: from the Idempotency-Key (a retried request is the same refund), else
    the request's correlation id."""
    basis = ctx.idempotency_key or ctx.correlation_id
    return "rq-" + hashlib.sha256(basis.encode()).hexdigest()[:24]


def _report(fact: UpstreamFact) -> tuple[str, str, Money | None, dict[str, str], list[str]] | None:
    """(provider refund id, status, amount, metadata, payment ids) of a provider refund report."""
    if isinstance(fact, UpstreamRefundUpdated):
        ids = [i for i in (fact.payment_intent_id, fact.charge_id) if i]
        return fact.refund_id, fact.status, fact.amount, dict(fact.metadata), ids
    if isinstance(fact, UpstreamChargeRefunded) and fact.refund_id:
        ids = [i for i in (fact.payment_intent_id, fact.charge_id) if i]
        return fact.refund_id, fact.refund_status or "succeeded", fact.refund_amount, {}, ids
    return None

