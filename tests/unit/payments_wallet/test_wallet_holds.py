"""Wallet holds (a reserved prepayment's member-balance part): set aside, not spent; captured into the
order's debit, or released back into exactly the buckets they came from. And the application step that
carries a reservation's outcome over to the voucher and the wallet (application/reservations.py)."""

from __future__ import annotations

from typing import Any

import pytest

from libs.domain.aggregate import Aggregate
from libs.domain.errors import Conflict, NotFound, RuleViolation
from services.payments.application.reservations import follow_reservation, reserve
from services.payments.domain import events as ev
from services.payments.domain.checkout import plan_prepayment
from services.payments.domain.transaction import Transaction
from services.payments.domain.voucher import Voucher, VoucherStatus
from services.payments.domain.wallet import (
    Wallet,
    WalletAmountHeld,
    WalletHoldCaptured,
    WalletHoldReleased,
)
from tests.unit.payments_wallet import (
    BONUS_FIRST,
    CUSTOMER,
    LINE,
    NOW,
    ORDER,
    ORDER_AMOUNT,
    POLICY,
    amount_terms,
    funded_wallet,
    issue,
    open_wallet,
    twd,
)

REF = f"prepay-{ORDER}"


def buckets(wallet: Wallet) -> tuple[int, int, int]:
    return wallet.paid_in, wallet.bonus, wallet.held.amount


def test_a_hold_sets_money_aside_in_the_spend_order_and_a_release_puts_it_back_where_it_came_from() -> None:
    wallet = funded_wallet(100000)  # 1,000 paid in + 100 bonus
    wallet.hold(twd(105000), ORDER, REF, NOW, POLICY)  # paid-in first, then bonus
    [held] = wallet.pending
    assert isinstance(held, WalletAmountHeld) and (held.from_paid_in, held.from_bonus) == (twd(100000), twd(5000))
    assert held.balance_after.total == twd(5000)
    assert buckets(wallet) == (0, 5000, 105000) and wallet.balance.total == twd(5000)
    assert wallet.holding(ORDER, REF) == twd(105000)
    assert not wallet.can_pay(twd(5001))  # held money cannot be spent twice
    with pytest.raises(RuleViolation):
        wallet.withdraw_paid_in("tu-1", twd(1), "wd-1", NOW)  # nor withdrawn
    wallet.release_hold(ORDER, REF, "reservation cancelled", NOW)
    released = wallet.pending[-1]
    assert isinstance(released, WalletHoldReleased) and (released.to_paid_in, released.to_bonus) == (
        twd(100000), twd(5000))
    assert buckets(wallet) == (100000, 10000, 0) and wallet.holding(ORDER, REF) is None


def test_a_captured_hold_is_the_orders_debit_and_refunds_go_back_along_its_split() -> None:
    wallet = funded_wallet(100000)
    wallet.hold(twd(30000), ORDER, REF, NOW, BONUS_FIRST)  # bonus first: 100 bonus + 200 paid in
    before = wallet.balance
    wallet.capture_hold(ORDER, REF, NOW)
    captured = wallet.pending[-1]
    assert isinstance(captured, WalletHoldCaptured) and captured.balance_after == before  # already set aside
    assert (captured.from_paid_in, captured.from_bonus) == (twd(20000), twd(10000))
    assert wallet.held == twd(0) and wallet.refundable(ORDER, REF) == twd(30000)
    wallet.credit_refund(twd(25000), ORDER, REF, NOW, reference="refund-1")  # paid-in first, then bonus
    assert buckets(wallet) == (80000 + 20000, 5000, 0)


def test_holding_is_idempotent_per_key_and_a_released_hold_may_be_held_again() -> None:
    wallet = funded_wallet(100000)
    wallet.hold(twd(30000), ORDER, REF, NOW, POLICY)
    wallet.mark_saved()
    wallet.hold(twd(30000), ORDER, REF, NOW, POLICY)  # the same hold again
    assert wallet.pending == []
    with pytest.raises(Conflict):
        wallet.hold(twd(40000), ORDER, REF, NOW, POLICY)
    wallet.release_hold(ORDER, REF, "cancelled", NOW)
    wallet.release_hold(ORDER, REF, "cancelled", NOW)  # repeated: nothing more
    assert len(wallet.pending) == 1
    with pytest.raises(Conflict):
        wallet.capture_hold(ORDER, REF, NOW)  # released: nothing to capture
    wallet.hold(twd(40000), ORDER, REF, NOW, POLICY)  # a new reservation
    wallet.capture_hold(ORDER, REF, NOW)
    wallet.capture_hold(ORDER, REF, NOW)  # repeated: nothing more
    assert [type(e) for e in wallet.pending] == [WalletHoldReleased, WalletAmountHeld, WalletHoldCaptured]
    with pytest.raises(Conflict):
        wallet.release_hold(ORDER, REF, "too late", NOW)  # captured: refund it instead
    with pytest.raises(Conflict):
        wallet.hold(twd(40000), ORDER, REF, NOW, POLICY)  # already debited under this key


@pytest.mark.parametrize("amount, field", [(twd(0), "amount"), (twd(-1), "amount"), (twd(110001), "amount")])
def test_a_hold_needs_a_positive_amount_the_wallet_holds(amount: Any, field: str) -> None:
    wallet = funded_wallet(100000)
    with pytest.raises(RuleViolation) as caught:
        wallet.hold(amount, ORDER, REF, NOW, POLICY)
    assert caught.value.field == field and wallet.pending == []


def test_unknown_holds_and_closed_wallets() -> None:
    with pytest.raises(RuleViolation) as caught:
        open_wallet().capture_hold(ORDER, REF, NOW)
    assert caught.value.field == "reference"
    with pytest.raises(NotFound):
        Wallet(CUSTOMER).hold(twd(1), ORDER, REF, NOW, POLICY)


# --- application/reservations.py with an in-memory unit of work ---------------------------------------


class MemoryUow:
    """The two unit-of-work calls reservations.py makes, over aggregates in memory."""

    def __init__(self, *aggregates: Aggregate) -> None:
        self.tracked = {a.stream_id: a for a in aggregates}

    async def load(self, cls: type[Aggregate], aggregate_id: str) -> Aggregate:
        return self.tracked.setdefault(cls.stream_id_for(aggregate_id), cls(aggregate_id))

    async def get(self, cls: type[Aggregate], aggregate_id: str) -> Aggregate:
        agg = await self.load(cls, aggregate_id)
        if not agg.exists:
            raise NotFound(f"{aggregate_id} not found")
        return agg


async def reserved_story() -> tuple[MemoryUow, Transaction, Voucher, Wallet]:
    txn = Transaction.open(ORDER, customer_id=CUSTOMER, placed_at=NOW, estimated_total=ORDER_AMOUNT,
                           policy_version="p-1", at=NOW, prepayment_bill_id="bill-1",
                           payment_deadline=NOW.replace(hour=10))
    txn.mark_saved()
    voucher, wallet = issue("v-200", amount_terms(20000)), funded_wallet(30000)  # TWD 200 voucher, TWD 300 paid in
    plan = plan_prepayment(ORDER_AMOUNT, customer_id=CUSTOMER, product_line=LINE, at=NOW, vouchers=[voucher],
                           wallet=wallet, wallet_policy=POLICY, use_vouchers=True, use_balance=True,
                           balance_reference=f"prepay-{ORDER}", allow_remainder=True)
    assert not plan.covered and plan.remainder == twd(70000) and "reserved" in plan.explanation[-1]
    uow = MemoryUow(txn, voucher, wallet)
    assert await reserve(uow, txn, plan, product_line=LINE, wallet_policy=POLICY, at=NOW) == twd(70000)  # type: ignore[arg-type]
    assert voucher.status is VoucherStatus.BOUND and voucher.bound_order_id == ORDER
    assert wallet.balance.total == twd(0) and wallet.held == twd(30000)
    return uow, txn, voucher, wallet


async def test_the_charge_of_the_remainder_redeems_the_voucher_and_captures_the_hold() -> None:
    uow, txn, voucher, wallet = await reserved_story()
    txn.capture_reserved_prepayment(ev.Tender(kind=ev.TenderKind.THIRD_PARTY, amount=twd(70000), reference="pi_1"),
                                    at=NOW)
    await follow_reservation(uow, txn)  # type: ignore[arg-type]
    await follow_reservation(uow, txn)  # type: ignore[arg-type]  # again over the same events: nothing more
    assert voucher.status is VoucherStatus.REDEEMED and voucher.redeemed_value == twd(20000)
    assert wallet.held == twd(0) and wallet.refundable(ORDER, REF) == twd(30000)
    assert [type(e).__name__ for e in wallet.pending][-1] == "WalletHoldCaptured"


async def test_a_released_reservation_makes_the_voucher_usable_and_the_balance_whole_again() -> None:
    uow, txn, voucher, wallet = await reserved_story()
    txn.release_reservation("the customer cancelled it", NOW)
    await follow_reservation(uow, txn)  # type: ignore[arg-type]
    await follow_reservation(uow, txn)  # type: ignore[arg-type]
    assert voucher.status is VoucherStatus.ISSUED and voucher.bound_order_id is None
    assert wallet.balance.total == twd(30000) and wallet.held == twd(0)


async def test_a_refused_reservation_binds_and_holds_nothing() -> None:
    uow, txn, voucher, wallet = await reserved_story()
    voucher.mark_saved()
    wallet.mark_saved()
    plan = plan_prepayment(ORDER_AMOUNT, customer_id=CUSTOMER, product_line=LINE, at=NOW, vouchers=[],
                           wallet=funded_wallet(30000), wallet_policy=POLICY, use_vouchers=False, use_balance=True,
                           balance_reference=REF, allow_remainder=True)
    with pytest.raises(Conflict):  # already reserved
        await reserve(uow, txn, plan, product_line=LINE, wallet_policy=POLICY, at=NOW)  # type: ignore[arg-type]
    assert voucher.pending == [] and wallet.pending == []
