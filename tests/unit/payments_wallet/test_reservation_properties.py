"""Properties of a prepayment paid partly by card (hypothesis), over random prepayments, vouchers and balances:
the plan never goes negative and voucher + balance + remainder = prepayment; the reservation keeps
reserved + remainder = prepayment; the capture with the card's remainder captures exactly the prepayment;
and a wallet hold, captured or released, never creates or loses money."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.payments.domain.checkout import plan_prepayment
from services.payments.domain.events import Tender, TenderKind
from services.payments.domain.transaction import Transaction
from tests.unit.payments_wallet import CUSTOMER, LINE, NOW, ORDER, POLICY, amount_terms, funded_wallet, issue, twd


@settings(max_examples=300, deadline=None)
@given(prepayment=st.integers(min_value=1, max_value=500000),
       voucher_off=st.one_of(st.none(), st.integers(min_value=1, max_value=600000)),
       combinable=st.booleans(),
       top_up=st.integers(min_value=0, max_value=600000),
       use_vouchers=st.booleans(), use_balance=st.booleans(),
       card_pays=st.booleans())
def test_reserved_plus_remainder_is_the_prepayment_and_nothing_is_negative(
        prepayment: int, voucher_off: int | None, combinable: bool, top_up: int, use_vouchers: bool,
        use_balance: bool, card_pays: bool) -> None:
    if not (use_vouchers or use_balance):
        use_balance = True
    amount = twd(prepayment)
    vouchers = [issue("v-1", amount_terms(voucher_off, combinable_with_balance=combinable))] if voucher_off else []
    wallet = funded_wallet(top_up) if top_up else None
    available = (wallet.paid_in + wallet.bonus) if wallet else 0
    plan = plan_prepayment(amount, customer_id=CUSTOMER, product_line=LINE, at=NOW, vouchers=vouchers,
                           wallet=wallet, wallet_policy=POLICY, use_vouchers=use_vouchers, use_balance=use_balance,
                           balance_reference=f"prepay-{ORDER}", allow_remainder=True)
    voucher_value = plan.voucher.value.amount if plan.voucher else 0
    assert voucher_value >= 0 and plan.member_balance.amount >= 0 and plan.remainder.amount >= 0
    assert voucher_value + plan.member_balance.amount + plan.remainder.amount == prepayment
    assert sum(t.amount.amount for t in plan.tenders) + plan.remainder.amount == prepayment
    assert all(t.amount.amount > 0 for t in plan.tenders)
    assert plan.member_balance.amount <= available
    assert plan.covered == (plan.remainder.amount == 0)
    if plan.covered or not plan.tenders:
        return

    txn = Transaction.open(ORDER, customer_id=CUSTOMER, placed_at=NOW, estimated_total=amount, policy_version="p",
                           at=NOW, prepayment_bill_id="bill-1", payment_deadline=NOW + timedelta(minutes=15))
    remainder = txn.reserve_prepayment(plan.tenders, at=NOW)
    assert txn.reservation is not None
    assert remainder == plan.remainder and txn.reservation.reserved + remainder == amount
    assert remainder.amount > 0 and txn.reservation.reserved.amount > 0
    if wallet is not None and plan.member_balance.amount:
        wallet.hold(plan.member_balance, ORDER, f"prepay-{ORDER}", NOW, POLICY)
        assert wallet.paid_in >= 0 and wallet.bonus >= 0
        assert wallet.paid_in + wallet.bonus + wallet.held.amount == available
    if card_pays:
        txn.capture_reserved_prepayment(Tender(kind=TenderKind.THIRD_PARTY, amount=remainder, reference="pi_1"),
                                        at=NOW)
        assert sum(t.amount.amount for t in txn.prepaid_tenders) == prepayment
        if wallet is not None and plan.member_balance.amount:
            wallet.capture_hold(ORDER, f"prepay-{ORDER}", NOW)
            assert wallet.held.amount == 0 and wallet.paid_in + wallet.bonus == available - plan.member_balance.amount
            assert wallet.refundable(ORDER, f"prepay-{ORDER}") == plan.member_balance
    else:
        txn.release_reservation("cancelled", NOW)
        released = txn.released_reservations[-1]
        assert released.amount + remainder == amount and txn.prepaid_tenders == []
        if wallet is not None and plan.member_balance.amount:
            wallet.release_hold(ORDER, f"prepay-{ORDER}", "cancelled", NOW)
            assert wallet.held.amount == 0 and wallet.paid_in + wallet.bonus == available
