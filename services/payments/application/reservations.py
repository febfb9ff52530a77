"""A prepayment paid partly by card: the voucher and the member balance reserved for it, and what
happens to them when the card pays the remainder or the reservation ends (seed 二, 三.3).

- `reserve`: bind the plan's voucher (VoucherBound, not redeemed), hold its member-balance part
  (WalletAmountHeld, not debited) and record the reservation on the transaction
  (TransactionPrepaymentReserved), in the caller's unit of work, so the three streams change
  together or not at all.
- `follow_reservation`: after a Transaction change, carry the reservation's outcome over to the
  voucher and the wallet in the same unit of work: a capture of the reservation
  (TransactionPrepaymentCaptured, by the provider's charge of the remainder) redeems the voucher
  and makes the hold the order's debit; a release (TransactionReservationReleased: the customer
  cancelled it, or the order was cancelled, e.g. at its payment deadline) releases the binding and
  the hold. Every step is idempotent (redeem, capture and release repeated change nothing), so a
  caller may run it again over the same pending events, e.g. when parked facts are applied one
  after another in one unit of work.

The wallet hold's key is the member-balance tender's reference (`prepay-<order>`), so once captured
it is the debit a cancellation refund later credits back (原路退回).
"""

from __future__ import annotations

from datetime import datetime

from libs.application.unit_of_work import UnitOfWork
from libs.domain.money import Money
from services.payments.domain import events as ev
from services.payments.domain.checkout import PrepaymentPlan
from services.payments.domain.transaction import Transaction
from services.payments.domain.voucher import Voucher
from services.payments.domain.wallet import Wallet, WalletPolicy


async def reserve(uow: UnitOfWork, txn: Transaction, plan: PrepaymentPlan, *, product_line: str,
                  wallet_policy: WalletPolicy, at: datetime) -> Money:
    """Reserve the plan's voucher and member balance on the transaction; returns the remainder due by
    card. The Transaction's rules run first, so a refused reservation binds and holds nothing."""
    assert txn.customer_id is not None
    remainder = txn.reserve_prepayment(plan.tenders, at=at)
    if plan.voucher is not None:
        voucher = await uow.load(Voucher, plan.voucher.voucher_id)
        voucher.bind(txn.id, customer_id=txn.customer_id, order_amount=plan.prepayment, product_line=product_line,
                     using_balance=plan.voucher.using_balance, at=at, choice=plan.voucher.choice)
        if voucher.bound_value != plan.voucher.value:  # valued on the same prepayment: cannot differ
            raise AssertionError(f"voucher {voucher.id} bound for {voucher.bound_value}, planned {plan.voucher.value}")
    for tender in plan.tenders:
        if tender.kind is ev.TenderKind.MEMBER_BALANCE:
            wallet = await uow.get(Wallet, txn.customer_id)
            wallet.hold(tender.amount, txn.id, tender.reference, at, wallet_policy)
    return remainder


async def follow_reservation(uow: UnitOfWork, txn: Transaction) -> None:
    """Redeem / capture, or release, what the transaction's pending events say of its reservation."""
    for event in txn.pending:
        match event:
            case ev.TransactionPrepaymentCaptured() if txn.captured_reservation is not None:
                await _capture(uow, txn, txn.captured_reservation, event.at)
            case ev.TransactionReservationReleased():
                await _release(uow, txn, event.tenders, event.reason, event.at)
            case _:
                pass


async def _capture(uow: UnitOfWork, txn: Transaction, reservation: ev.TransactionPrepaymentReserved,
                   at: datetime) -> None:
    assert txn.customer_id is not None
    for tender in reservation.tenders:
        if tender.kind is ev.TenderKind.VOUCHER:
            voucher = await uow.get(Voucher, tender.reference)
            voucher.redeem(txn.id, reservation.amount, at)
        elif tender.kind is ev.TenderKind.MEMBER_BALANCE:
            wallet = await uow.get(Wallet, txn.customer_id)
            wallet.capture_hold(txn.id, tender.reference, at)


async def _release(uow: UnitOfWork, txn: Transaction, tenders: list[ev.Tender], reason: str, at: datetime) -> None:
    assert txn.customer_id is not None
    for tender in tenders:
        if tender.kind is ev.TenderKind.VOUCHER:
            voucher = await uow.get(Voucher, tender.reference)
            voucher.release(txn.id, reason, at)
        elif tender.kind is ev.TenderKind.MEMBER_BALANCE:
            wallet = await uow.get(Wallet, txn.customer_id)
            wallet.release_hold(txn.id, tender.reference, reason, at)
