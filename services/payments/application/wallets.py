"""Member stored value (會員余額, 充X送Y): top-ups, the balance, paying an order's prepayment
with it. (Refunds of balance payments are credited back by application/refunds.py.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.errors import RuleViolation
from libs.domain.money import Money
from libs.eventstore import EventStore
from services.payments.domain import events as ev
from services.payments.domain.checkout import require_party
from services.payments.domain.transaction import Transaction
from services.payments.domain.wallet import Wallet, WalletPolicy

# A customer tops up and spends their own balance; the platform's services for anyone.
BALANCE_ROLES = frozenset({"customer", "service", "platform"})


def wallet_view(wallet: Wallet) -> dict[str, Any]:
    b = wallet.balance
    return {"customer_id": wallet.id, "is_member": wallet.is_member, "paid_in": b.paid_in.model_dump(),
            "bonus": b.bonus.model_dump(), "total": b.total.model_dump(),
            "held": wallet.held.model_dump(),  # set aside for reserved prepayments, not in the total
            "version": wallet.version + len(wallet.pending)}


@dataclass
class WalletsService:
    store: EventStore
    policy: WalletPolicy
    clock: Callable[[], datetime]
    publish_contract: Callable[[UnitOfWork, Transaction], Any]

    async def top_up(self, customer_id: str, amount: Money, reference: str, ctx: CommandContext) -> CommandResult:
        require_party(ctx.role, ctx.actor, action="top up this wallet", roles=BALANCE_ROLES, customer_id=customer_id)

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            wallet = await uow.load(Wallet, customer_id)
            if not wallet.exists:
                wallet = Wallet.open(customer_id, amount.currency, at)
                uow.add(wallet)
            wallet.top_up(amount, reference, at, self.policy)
            return wallet_view(wallet)

        return await execute(self.store, ctx, f"payments:wallet:{customer_id}:top-up", fn)

    async def balance(self, customer_id: str) -> dict[str, Any]:
        async with self.store.transaction() as conn:
            wallet = await UnitOfWork(self.store, conn, CommandContext("query", "service", "query")).load(
                Wallet, customer_id)
        if not wallet.exists:
            return {"customer_id": customer_id, "is_member": False, "paid_in": None, "bonus": None, "total": None,
                    "version": 0}
        return wallet_view(wallet)

    async def prepay_with_balance(self, order_id: str, ctx: CommandContext) -> CommandResult:
        """Pay an order's whole prepayment from the customer's member balance (seed 二: 會員余額)."""

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            txn = await uow.get(Transaction, order_id)
            require_party(ctx.role, ctx.actor, action="pay this order from the member balance", roles=BALANCE_ROLES,
                          customer_id=txn.customer_id)
            if txn.status is not ev.TransactionStatus.UNPAID or txn.prepayment_bill_id is None:
                raise RuleViolation("order_id", f"order {order_id} has no prepayment to pay (transaction {txn.status})")
            assert txn.customer_id is not None and txn.estimated_total is not None
            wallet = await uow.get(Wallet, txn.customer_id)
            reference = f"prepay-{order_id}"
            wallet.debit(txn.estimated_total, order_id, reference, at, self.policy)
            txn.capture_prepayment([ev.Tender(kind=ev.TenderKind.MEMBER_BALANCE, amount=txn.estimated_total,
                                              reference=reference)], at=at)
            await self.publish_contract(uow, txn)
            return {"order_id": order_id, "status": txn.status.value if txn.status else None,
                    "wallet": wallet_view(wallet)}

        return await execute(self.store, ctx, f"payments:{order_id}:prepay-balance", fn)
