"""The commands and queries of an order's Transaction over HTTP (seed 一-五): the transaction view,
cashier attempts, settlement and cancellation previews, collecting a shortfall (member balance or
cash), the merchant's cash confirmation (已確認), and paying the prepayment with a voucher and the
member balance (automatic binding).

Every command runs in `execute()`: one PostgreSQL transaction, optimistic concurrency on every
stream it touches (a concurrent change re-runs the command on fresh state; with If-Match it is a
409 instead), the Idempotency-Key response stored with the events, and the contract events the
orders service reacts to appended with the Transaction events (application/contract.py). A
refused command stores nothing.

Design choices (see also domain/checkout.py):
- Prepay with vouchers and balance. When they cover the prepayment, the voucher is bound and
  redeemed, the wallet debited and the prepayment captured in one transaction. When a
  third-party remainder is left, by default nothing is applied and the answer says so (the
  prepayment is then paid whole at the cashier). With `allow_remainder` the voucher is bound and
  the balance held instead (a reservation, application/reservations.py) and the remainder is
  paid at the cashier: an attempt is then for exactly the remainder, and the provider's charge of
  it (service.py) captures the prepayment with every tender at once. The reservation survives an
  abandoned attempt and ends with `cancel_reservation` or the order's cancellation (deadline).
  Without a reservation an attempt on an unpaid order is for the whole prepayment.
- A shortfall paid by a third party is collected by the provider's charge (cashier attempt, then
  the signed webhook or `payments.upstream`): only that path has the provider's evidence that the
  money arrived. `settle` takes `member_balance` and `cash`, and refuses `third_party` naming the path.
- While a cashier attempt is open, neither `settle` nor `prepay` runs: one payment path at a time,
  so the customer is never charged twice for the same amount.
- The order's product line (which vouchers apply) is read from its OrderPlaced event in the store,
  the event the payments service consumes from orders.events; the merchant comes from
  `payments_order_merchants` (filled on OrderAccepted).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.errors import Conflict, InvalidTransition, NotFound, RuleViolation
from libs.domain.events import registry
from libs.domain.money import Money
from libs.eventstore import EventStore
from services.orders.domain.events import OrderPlaced
from services.orders.domain.order import Order
from services.payments.application.reservations import follow_reservation, reserve
from services.payments.application.vouchers import load_customer_vouchers
from services.payments.application.wallets import wallet_view
from services.payments.domain import events as ev
from services.payments.domain.checkout import (
    CashierMethod,
    PrepaymentPlan,
    collection_options,
    plan_prepayment,
    require_party,
)
from services.payments.domain.policy import CancellationPolicy, policy_by_version
from services.payments.domain.transaction import Transaction
from services.payments.domain.voucher import Voucher
from services.payments.domain.wallet import Wallet, WalletPolicy

S = ev.TransactionStatus
PAYER_ROLES = frozenset({"customer", "service", "platform"})
SETTLE_ROLES = frozenset({"customer", "merchant", "service", "platform"})

_STATE_PHRASES: dict[S, str] = {
    S.UNPAID: "is unpaid",
    S.PREPAID: "is prepaid; the rest is paid once the merchant's bill is confirmed",
    S.BILLED: "is billed",
    S.PAID: "is already paid",
    S.CONFIRMED: "is already paid in cash, confirmed by the merchant",
    S.REFUNDED: "was cancelled and refunded",
    S.VOIDED: "was cancelled",
}


def prepayment_reference(order_id: str) -> str:
    """The wallet debit (and tender) reference of a prepayment from the balance (shared with wallets.py)."""
    return f"prepay-{order_id}"


def shortfall_reference(order_id: str) -> str:
    """The wallet debit (and tender) reference of a shortfall collected from the balance."""
    return f"settle-{order_id}"


def _explained(txn: Transaction, exc: InvalidTransition, what: str) -> InvalidTransition:
    """The state machine's refusal, in words that name the state (and its Chinese label)."""
    assert txn.status is not None
    phrase = _STATE_PHRASES[txn.status]
    if txn.awaiting_cash_confirmation:
        phrase = "is settled in cash and waits for the merchant's confirmation"
    exc.message = (f"order {txn.id}: the transaction {phrase} ({txn.status.value}, {txn.label_zh}); {what} is "
                   f"refused. Allowed now: {', '.join(exc.allowed) or 'nothing (final state)'}")
    exc.args = (exc.message,)
    exc.details["current_state_zh"] = txn.label_zh
    exc.details["awaiting_cash_confirmation"] = txn.awaiting_cash_confirmation
    return exc


@contextmanager
def _state_named(txn: Transaction, what: str) -> Iterator[None]:
    try:
        yield
    except InvalidTransition as exc:
        raise _explained(txn, exc, what) from None


def _refused(txn: Transaction, command: str, what: str) -> InvalidTransition:
    assert txn.status is not None
    return _explained(txn, InvalidTransition("transaction", txn.id, txn.status.value, command,
                                             txn.allowed_commands()), what)


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if value is not None else None


def transaction_view(txn: Transaction, merchant_id: str | None) -> dict[str, Any]:
    """Everything the Transaction knows, as the API shows it."""
    assert txn.status is not None
    s = txn.settlement
    return {
        "order_id": txn.id, "status": txn.status.value, "label_zh": txn.label_zh,
        "allowed_commands": txn.allowed_commands(), "version": txn.version + len(txn.pending),
        "customer_id": txn.customer_id, "merchant_id": merchant_id or txn.merchant_id,
        "policy_version": txn.policy_version, "placed_at": txn.placed_at.isoformat() if txn.placed_at else None,
        "estimated_total": _dump(txn.estimated_total), "prepayment_bill_id": txn.prepayment_bill_id,
        "payment_deadline": txn.payment_deadline.isoformat() if txn.payment_deadline else None,
        "prepaid_tenders": [_dump(t) for t in txn.prepaid_tenders],
        "prepaid_at": txn.prepaid_at.isoformat() if txn.prepaid_at else None,
        "reservation": _reservation_view(txn.reservation),
        "open_attempt": {"attempt_id": txn.attempt.attempt_id, "bill_id": txn.attempt.bill_id,
                         "amount": _dump(txn.attempt.amount), "method": txn.attempt.method,
                         "at": txn.attempt.at.isoformat()} if txn.attempt else None,
        "abandoned_attempts": list(txn.abandoned_attempts),
        "bill": {"bill_id": txn.bill_id, "revision": txn.bill_revision, "total": _dump(txn.bill_total)}
        if txn.bill_id else None,
        "settlement": {"method": s.method.value if s.method else None, "collected": _dump(s.collected),
                       "refunded": _dump(s.refunded), "tenders": [_dump(t) for t in s.tenders],
                       "awaiting_cash_confirmation": txn.awaiting_cash_confirmation,
                       "cash_confirmed_at": txn.cash_confirmed_at.isoformat() if txn.cash_confirmed_at else None,
                       "settled_at": s.at.isoformat(), "plan": _dump(s.plan)} if s else None,
        "cancellation": _dump(txn.cancellation),
        "compensation_vouchers": [{"grant_no": g.grant_no, "rule": g.rule.value, "amount": _dump(g.amount),
                                   "expires_at": g.expires_at.isoformat()} for g in txn.compensation_vouchers],
        "payments_to_return": [{"tender": _dump(p.tender), "reason": p.reason, "at": p.at.isoformat()}
                               for p in txn.payments_to_return],
        "open_disputes": sorted(txn.open_disputes), "refunds_frozen": txn.disputed,
        "held_refunds": [{"source": h.source.value, "amount": _dump(h.amount), "dispute_ids": list(h.dispute_ids),
                          "refunds": [_dump(r) for r in h.refunds]} for h in txn.held_refunds],
        # What customer service may still refund (POST /payments/{order}/refunds); the refunds themselves
        # and where each one is: GET /payments/{order}/refunds.
        "refundable": _dump(txn.refundable()) if txn.status is not None else None,
        "refunds_issued": [{"refund_request_id": e.refund_request_id, "amount": _dump(e.amount), "reason": e.reason,
                            "at": e.at.isoformat()} for e in txn.issued_refunds],
        "external_refunds": [{"provider_refund_id": e.provider_refund_id, "reference": e.reference,
                              "amount": _dump(e.amount), "at": e.at.isoformat()} for e in txn.external_refunds],
    }


def _reservation_view(r: ev.TransactionPrepaymentReserved | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"tenders": [_dump(t) for t in r.tenders], "reserved": _dump(r.reserved), "remainder": _dump(r.remainder),
            "payment_deadline": r.payment_deadline.isoformat() if r.payment_deadline else None,
            "at": r.at.isoformat()}


async def merchant_of(conn: asyncpg.Connection, order_id: str) -> str | None:
    """The merchant who accepted the order (payments_order_merchants, filled on OrderAccepted)."""
    return await conn.fetchval("SELECT merchant_id FROM payments_order_merchants WHERE order_id = $1", order_id)


async def order_placed(store: EventStore, conn: asyncpg.Connection, order_id: str) -> OrderPlaced:
    """The order's OrderPlaced event (its product line, slot and intended tenders)."""
    events = await store.read_stream(Order.stream_id_for(order_id), to_version=1, conn=conn)
    if not events or events[0].event_type != OrderPlaced.event_type:
        raise NotFound(f"order {order_id} not found", order_id=order_id)
    placed = registry.decode(events[0].event_type, events[0].schema_version, events[0].data)
    assert isinstance(placed, OrderPlaced)
    return placed


@dataclass
class TransactionsService:
    store: EventStore
    policies: list[CancellationPolicy]
    wallet_policy: WalletPolicy
    clock: Callable[[], datetime]
    publish_contract: Callable[[UnitOfWork, Transaction], Awaitable[None]]

    # --- queries ------------------------------------------------------------------------------
    async def _query(self, fn: Callable[[UnitOfWork], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        async with self.store.transaction() as conn:
            return await fn(UnitOfWork(self.store, conn, CommandContext("query", "service", "query")))

    async def view(self, order_id: str) -> dict[str, Any]:
        """The transaction of an order (NotFound for an order the payments service does not know)."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            txn = await uow.get(Transaction, order_id)
            return transaction_view(txn, await merchant_of(uow.conn, order_id))

        return await self._query(fn)

    async def settlement_preview(self, order_id: str) -> dict[str, Any]:
        """What settling now would do (多退少補) and the methods that can collect the shortfall now."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            txn = await uow.get(Transaction, order_id)
            with _state_named(txn, "a settlement preview"):
                plan = txn.preview_settlement()
            assert txn.customer_id is not None
            wallet = await uow.load(Wallet, txn.customer_id)
            is_member = wallet.exists and wallet.is_member
            balance = wallet.balance.total if wallet.exists else None
            return {"order_id": order_id, "status": txn.status.value if txn.status else None,
                    "label_zh": txn.label_zh, "plan": _dump(plan), "shortfall": _dump(plan.shortfall),
                    "member": {"is_member": is_member, "balance": _dump(balance)},
                    "collection_methods": [_dump(o) for o in collection_options(
                        plan.shortfall, is_member=is_member, member_balance_available=balance)],
                    "open_attempt_id": txn.attempt.attempt_id if txn.attempt else None}

        return await self._query(fn)

    async def cancellation_preview(self, order_id: str, fault_party: str, seconds_before_service_start: int,
                                   reason_code: str = "") -> dict[str, Any]:
        """What a cancellation now would cost and return, under the policy in force at placement."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            txn = await uow.get(Transaction, order_id)
            assert txn.policy_version is not None and txn.status is not None
            policy = policy_by_version(self.policies, txn.policy_version)
            with _state_named(txn, "a cancellation preview"):
                # The same inputs as the reaction to OrderCancelled (service.py) passes to `cancel`.
                plan = txn.preview_cancellation(fault_party=fault_party, reason_code=reason_code,
                                                seconds_before_service_start=seconds_before_service_start,
                                                policy=policy, at=self.clock())
            after = S.REFUNDED if txn.status is S.PREPAID else S.VOIDED
            return {"order_id": order_id, "status": txn.status.value, "label_zh": txn.label_zh,
                    "policy_version": policy.version, "status_after": after.value, "label_zh_after": after.label_zh,
                    # During an open dispute the cancellation applies, its refunds are held until it closes.
                    "refunds_held": txn.disputed and plan.refunded.amount > 0, "plan": _dump(plan)}

        return await self._query(fn)

    async def prepay_preview(self, order_id: str, *, use_vouchers: bool, use_balance: bool,
                             voucher_id: str | None, allow_remainder: bool = False) -> dict[str, Any]:
        """What `prepay` would do now: the voucher it would bind, the balance it would take, the remainder."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            txn = await uow.get(Transaction, order_id)
            plan, _ = await self._prepay_plan(uow, txn, use_vouchers, use_balance, voucher_id, self.clock(),
                                              allow_remainder)
            return {"order_id": order_id, "status": txn.status.value if txn.status else None, "plan": _dump(plan),
                    "reservation": _reservation_view(txn.reservation)}

        return await self._query(fn)

    # --- cashier attempts -----------------------------------------------------------------------
    async def start_attempt(self, order_id: str, attempt_id: str | None, amount: Money, method: CashierMethod,
                            ctx: CommandContext) -> CommandResult:
        """The customer opened the cashier for the prepayment (unpaid) or the bill's shortfall (billed)."""
        attempt = attempt_id or f"att-{uuid.uuid4().hex[:16]}"

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            txn = await uow.get(Transaction, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="pay this order", roles=PAYER_ROLES,
                          customer_id=txn.customer_id)
            assert txn.estimated_total is not None
            if (txn.status is S.UNPAID and txn.reservation is None and amount.currency == txn.currency
                    and amount.amount > 0 and amount != txn.estimated_total):
                # Without a reservation the charge path captures a card payment as the whole prepayment.
                raise RuleViolation("amount", f"must be the whole prepayment {txn.estimated_total}: a third-party "
                                              "payment pays the prepayment in full, or the remainder left by "
                                              "vouchers and the member balance reserved through "
                                              "POST /payments/{order}/prepay with allow_remainder")
            with _state_named(txn, "a payment attempt"):
                txn.start_attempt(attempt, amount, method.value, at)
            await self.publish_contract(uow, txn)
            return {"attempt_id": attempt, "transaction": transaction_view(txn, await merchant_of(uow.conn, order_id))}

        return await execute(self.store, ctx, f"payments:{order_id}:attempt", fn)

    async def abandon_attempt(self, order_id: str, attempt_id: str, reason: ev.FailureReason,
                              ctx: CommandContext) -> CommandResult:
        """The attempt ended without payment (從收銀臺點擊返回): the order and its bill go back to pending."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            txn = await uow.get(Transaction, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="abandon this order's payment attempt", roles=PAYER_ROLES,
                          customer_id=txn.customer_id)
            with _state_named(txn, "abandoning a payment attempt"):
                txn.fail_attempt(attempt_id, reason, at)
            await self.publish_contract(uow, txn)
            return {"attempt_id": attempt_id, "reason": reason.value,
                    "transaction": transaction_view(txn, await merchant_of(uow.conn, order_id))}

        return await execute(self.store, ctx, f"payments:{order_id}:attempt:{attempt_id}:abandon", fn)

    # --- prepayment with a voucher and the member balance -------------------------------------------
    async def _prepay_plan(self, uow: UnitOfWork, txn: Transaction, use_vouchers: bool, use_balance: bool,
                           voucher_id: str | None, at: datetime,
                           allow_remainder: bool = False) -> tuple[PrepaymentPlan, str]:
        """The prepayment plan, and the order's product line it was made for."""
        if "capture_prepayment" not in txn.allowed_commands():
            raise _refused(txn, "capture_prepayment", "paying the prepayment")
        if txn.prepayment_bill_id is None:
            raise RuleViolation("order_id", f"order {txn.id} has no prepayment: it is paid after the service")
        assert txn.customer_id is not None and txn.estimated_total is not None
        placed = await order_placed(self.store, uow.conn, txn.id)
        wallet = await uow.load(Wallet, txn.customer_id)
        vouchers = await load_customer_vouchers(uow, txn.customer_id) if use_vouchers or voucher_id else []
        line = placed.service.product_line
        return plan_prepayment(txn.estimated_total, customer_id=txn.customer_id, product_line=line, at=at,
                               vouchers=vouchers, wallet=wallet if wallet.exists else None,
                               wallet_policy=self.wallet_policy, use_vouchers=use_vouchers, use_balance=use_balance,
                               voucher_id=voucher_id, balance_reference=prepayment_reference(txn.id),
                               allow_remainder=allow_remainder), line

    async def prepay(self, order_id: str, *, use_vouchers: bool, use_balance: bool, voucher_id: str | None,
                     ctx: CommandContext, allow_remainder: bool = False) -> CommandResult:
        """Pay the whole prepayment with a voucher (bound automatically unless named) and the member
        balance, in one transaction; when they do not cover it, refused with nothing applied, or with
        `allow_remainder` reserved (voucher bound, balance held) with the remainder due by card."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            txn = await uow.get(Transaction, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="pay this order", roles=PAYER_ROLES,
                          customer_id=txn.customer_id)
            if txn.reservation is not None:
                r = txn.reservation
                raise Conflict(f"order {order_id}: {r.reserved} of the prepayment is already reserved; pay the "
                               f"remainder {r.remainder} at the cashier (POST /payments/{{order}}/attempts), or "
                               "cancel the reservation (POST /payments/{order}/prepay/cancel)",
                               reservation=_reservation_view(r))
            plan, product_line = await self._prepay_plan(uow, txn, use_vouchers, use_balance, voucher_id, at,
                                                         allow_remainder)
            if txn.attempt is not None:
                raise Conflict(f"order {order_id}: payment attempt {txn.attempt.attempt_id} is open at the cashier; "
                               "abandon it before paying another way", current_attempt_id=txn.attempt.attempt_id)
            if not plan.covered and allow_remainder:
                if not plan.tenders:
                    raise RuleViolation("prepayment", f"no voucher and no member balance can be reserved for the "
                                                      f"prepayment {plan.prepayment}; pay it whole at the cashier "
                                                      "(POST /payments/{order}/attempts). Nothing was reserved")
                remainder = await reserve(uow, txn, plan, product_line=product_line,
                                          wallet_policy=self.wallet_policy, at=at)
                await self.publish_contract(uow, txn)
                assert txn.customer_id is not None
                wallet = await uow.load(Wallet, txn.customer_id)
                return {"order_id": order_id, "captured": False, "reserved": True, "plan": _dump(plan),
                        "remainder": _dump(remainder),
                        "next": f"POST /payments/{order_id}/attempts with amount {remainder.amount} "
                                f"{remainder.currency}; the provider's charge of it captures the prepayment",
                        "wallet": wallet_view(wallet) if wallet.exists else None,
                        "transaction": transaction_view(txn, await merchant_of(uow.conn, order_id))}
            if not plan.covered:
                covered = plan.prepayment - plan.remainder
                raise RuleViolation("prepayment", f"the voucher and the member balance cover {covered} of the "
                                                  f"prepayment {plan.prepayment}; {plan.remainder} would be left for "
                                                  "a third-party payment, which pays the whole prepayment at the "
                                                  "cashier (POST /payments/{order}/attempts). Nothing was bound or "
                                                  "debited")
            assert txn.customer_id is not None
            if plan.voucher is not None:
                voucher = await uow.load(Voucher, plan.voucher.voucher_id)
                voucher.bind(order_id, customer_id=txn.customer_id, order_amount=plan.prepayment,
                             product_line=product_line,
                             using_balance=plan.voucher.using_balance, at=at, choice=plan.voucher.choice)
                voucher.redeem(order_id, plan.prepayment, at)
            wallet = await uow.load(Wallet, txn.customer_id)
            if plan.member_balance.amount:
                wallet.debit(plan.member_balance, order_id, prepayment_reference(order_id), at, self.wallet_policy)
            txn.capture_prepayment(plan.tenders, at=at)
            await self.publish_contract(uow, txn)
            return {"order_id": order_id, "captured": True, "reserved": False, "plan": _dump(plan),
                    "wallet": wallet_view(wallet) if wallet.exists else None,
                    "transaction": transaction_view(txn, await merchant_of(uow.conn, order_id))}

        return await execute(self.store, ctx, f"payments:{order_id}:prepay", fn)

    async def cancel_reservation(self, order_id: str, reason: str | None, ctx: CommandContext) -> CommandResult:
        """The customer cancels the reservation of a prepayment paid partly by card: the voucher binding
        and the wallet hold are released (usable again); the order stays 待預付."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            txn = await uow.get(Transaction, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="cancel this order's prepayment reservation",
                          roles=PAYER_ROLES, customer_id=txn.customer_id)
            released = txn.reservation
            with _state_named(txn, "cancelling a prepayment reservation"):
                txn.release_reservation(reason or f"cancelled by {ctx.role} {ctx.actor}", at)
            assert released is not None and txn.customer_id is not None
            await follow_reservation(uow, txn)
            await self.publish_contract(uow, txn)
            wallet = await uow.load(Wallet, txn.customer_id)
            return {"order_id": order_id, "released": _reservation_view(released),
                    "wallet": wallet_view(wallet) if wallet.exists else None,
                    "transaction": transaction_view(txn, await merchant_of(uow.conn, order_id))}

        return await execute(self.store, ctx, f"payments:{order_id}:prepay:cancel", fn)

    # --- settlement -------------------------------------------------------------------------------
    async def settle(self, order_id: str, method: ev.TenderKind, reference: str | None,
                     ctx: CommandContext) -> CommandResult:
        """Collect the bill's shortfall from the member balance (settled at once) or in cash (settled,
        awaiting the merchant's confirmation). A second settlement is refused naming the state."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            txn = await uow.get(Transaction, order_id, check_version=True)
            merchant = await merchant_of(uow.conn, order_id)
            require_party(ctx.role, ctx.actor, action="settle this order", roles=SETTLE_ROLES,
                          customer_id=txn.customer_id, merchant_id=merchant)
            with _state_named(txn, "a settlement"):
                plan = txn.preview_settlement()
            if txn.attempt is not None:
                raise Conflict(f"order {order_id}: payment attempt {txn.attempt.attempt_id} is open at the cashier; "
                               "abandon it before collecting another way", current_attempt_id=txn.attempt.attempt_id)
            assert txn.customer_id is not None
            wallet: Wallet | None = None
            if method is ev.TenderKind.MEMBER_BALANCE:
                if reference is not None:
                    raise RuleViolation("reference", "a member-balance collection names its own wallet entry; "
                                                     "leave reference out")
                wallet = await uow.load(Wallet, txn.customer_id)
                ref = shortfall_reference(order_id)
                txn.settle(at=at, method=method, reference=ref, is_member=wallet.exists and wallet.is_member,
                           member_balance_available=wallet.balance.total if wallet.exists else None)
                wallet.debit(plan.shortfall, order_id, ref, at, self.wallet_policy)
            elif method is ev.TenderKind.CASH:
                txn.settle(at=at, method=method, reference=reference or f"cash-{order_id}")
            else:
                raise RuleViolation("method", "a third-party shortfall is collected by the provider's charge: open "
                                              "the cashier (POST /payments/{order}/attempts); the signed webhook or "
                                              "payments.upstream then settles it. Here: member_balance or cash")
            await self.publish_contract(uow, txn)
            return {"order_id": order_id, "method": method.value, "plan": _dump(plan),
                    "awaiting_cash_confirmation": txn.awaiting_cash_confirmation,
                    "wallet": wallet_view(wallet) if wallet is not None else None,
                    "transaction": transaction_view(txn, merchant)}

        return await execute(self.store, ctx, f"payments:{order_id}:settle", fn)

    async def confirm_cash(self, order_id: str, amount: Money | None, ctx: CommandContext) -> CommandResult:
        """The order's merchant confirms receiving the cash (已出賬 -> 已確認); the order completes."""
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            txn = await uow.get(Transaction, order_id, check_version=True)
            merchant = await merchant_of(uow.conn, order_id)
            require_party(ctx.role, ctx.actor, action="confirm the cash of this order", roles={"merchant"},
                          merchant_id=merchant)
            if not txn.awaiting_cash_confirmation:
                raise _refused(txn, "confirm_cash", "confirming cash")
            assert txn.settlement is not None
            if amount is not None and amount != txn.settlement.collected:
                raise RuleViolation("amount", f"must be {txn.settlement.collected}, the cash to collect")
            txn.confirm_cash(ctx.actor, at)
            await self.publish_contract(uow, txn)
            return {"order_id": order_id, "transaction": transaction_view(txn, merchant)}

        return await execute(self.store, ctx, f"payments:{order_id}:cash-confirmation", fn)
