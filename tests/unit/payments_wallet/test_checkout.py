"""Checkout rules (domain/checkout.py): paying a prepayment with a voucher and the member balance
(all or nothing, deduction order voucher > balance), the shortfall collection methods, who may act."""

from __future__ import annotations

from datetime import timedelta

import pytest

from libs.domain.errors import RuleViolation
from services.payments.domain.checkout import (
    Forbidden,
    PrepaymentPlan,
    collection_options,
    plan_prepayment,
    require_party,
)
from services.payments.domain.events import TenderKind
from services.payments.domain.voucher import BindingPreference, Voucher
from services.payments.domain.wallet import Wallet
from tests.unit.payments_wallet import (
    CUSTOMER,
    LINE,
    NOW,
    ORDER_AMOUNT,
    POLICY,
    amount_terms,
    discount_terms,
    funded_wallet,
    issue,
    open_wallet,
    twd,
)

SOONEST_POLICY = POLICY.model_copy(update={"binding_preference": BindingPreference.SOONEST_EXPIRY_FIRST})


def vouchers() -> list[Voucher]:
    """Valued on the TWD 1,200.00 prepayment."""
    return [
        issue("v-small-soon", amount_terms(10000, expires_at=NOW + timedelta(days=2))),        # 100, in 2 days
        issue("v-big-late", amount_terms(25000, expires_at=NOW + timedelta(days=60))),        # 250, in 60 days
        issue("v-solo", amount_terms(40000, combinable_with_balance=False,
                                     expires_at=NOW + timedelta(days=30))),                     # 400, no balance
        issue("v-min", amount_terms(50000, min_spend=twd(500000))),                            # below min spend
    ]


def plan(candidates: list[Voucher] | None = None, wallet: Wallet | None = None, *, use_vouchers: bool = True,
         use_balance: bool = True, policy=POLICY, voucher_id: str | None = None) -> PrepaymentPlan:
    return plan_prepayment(ORDER_AMOUNT, customer_id=CUSTOMER, product_line=LINE, at=NOW,
                           vouchers=vouchers() if candidates is None else candidates, wallet=wallet,
                           wallet_policy=policy, use_vouchers=use_vouchers, use_balance=use_balance,
                           voucher_id=voucher_id, balance_reference="prepay-o-1")


def test_a_combinable_voucher_then_the_balance_cover_the_prepayment_in_deduction_order() -> None:
    p = plan(wallet=funded_wallet(100000))  # 1,000 paid in + 100 bonus
    assert p.covered and p.remainder == twd(0)
    # v-solo is worth more but cannot be combined with the balance, which is needed here.
    assert p.voucher is not None and p.voucher.voucher_id == "v-big-late" and p.voucher.using_balance
    assert [(t.kind, t.amount.amount, t.reference) for t in p.tenders] == [
        (TenderKind.VOUCHER, 25000, "v-big-late"), (TenderKind.MEMBER_BALANCE, 95000, "prepay-o-1")]
    assert p.member_balance_split is not None and p.member_balance_split.paid_in == twd(95000)
    assert p.voucher.choice is not None and p.voucher.choice.preference is BindingPreference.LARGEST_FIRST


def test_the_soonest_expiry_preference_binds_the_voucher_that_lapses_first() -> None:
    p = plan(wallet=funded_wallet(300000), policy=SOONEST_POLICY)
    assert p.covered and p.voucher is not None and p.voucher.voucher_id == "v-small-soon"
    assert p.member_balance == twd(110000)


def test_a_voucher_that_covers_the_whole_prepayment_needs_no_balance_and_no_combinability() -> None:
    whole = issue("v-whole", amount_terms(150000, combinable_with_balance=False))  # worth the whole 1,200
    p = plan([*vouchers(), whole], wallet=funded_wallet(300000))
    assert p.covered and p.voucher is not None and p.voucher.voucher_id == "v-whole"
    assert not p.voucher.using_balance and p.member_balance == twd(0)
    assert [t.kind for t in p.tenders] == [TenderKind.VOUCHER]
    assert p.tenders[0].amount == ORDER_AMOUNT  # a voucher never takes off more than the amount


def test_without_the_balance_the_largest_voucher_is_used_and_the_remainder_named() -> None:
    p = plan(wallet=funded_wallet(300000), use_balance=False)
    assert not p.covered and p.voucher is not None and p.voucher.voucher_id == "v-solo"
    assert p.remainder == twd(80000) and p.member_balance == twd(0)
    assert "left for a third-party payment" in p.explanation[-1]


@pytest.mark.parametrize("wallet, why", [
    (None, "no wallet"),
    (open_wallet(), "not a member"),
])
def test_the_balance_counts_only_for_a_member(wallet: Wallet | None, why: str) -> None:
    p = plan(wallet=wallet, use_vouchers=False)
    assert not p.covered and p.remainder == ORDER_AMOUNT and p.tenders == []
    assert any(why in line for line in p.explanation)


def test_a_balance_short_of_the_rest_leaves_a_remainder_and_the_plan_is_not_covered() -> None:
    p = plan(wallet=funded_wallet(50000))  # no tier: 500 paid in
    assert not p.covered
    assert p.voucher is not None and p.voucher.value == twd(25000)
    assert p.member_balance == twd(50000) and p.remainder == twd(45000)
    assert p.prepayment == p.remainder + p.member_balance + p.voucher.value


def test_with_allow_remainder_the_same_plan_reserves_the_tenders_and_leaves_the_rest_to_the_card() -> None:
    strict = plan(wallet=funded_wallet(50000))
    p = plan_prepayment(ORDER_AMOUNT, customer_id=CUSTOMER, product_line=LINE, at=NOW, vouchers=vouchers(),
                        wallet=funded_wallet(50000), wallet_policy=POLICY, use_vouchers=True, use_balance=True,
                        balance_reference="prepay-o-1", allow_remainder=True)
    assert p.model_dump(exclude={"explanation"}) == strict.model_dump(exclude={"explanation"})  # the same tenders
    assert not p.covered and p.remainder == twd(45000)
    assert "reserved" in p.explanation[-1] and "pay exactly TWD" in p.explanation[-1]
    assert "nothing is applied" in strict.explanation[-1]


def test_the_balance_alone_pays_when_vouchers_are_not_asked_for() -> None:
    p = plan(wallet=funded_wallet(300000), use_vouchers=False)
    assert p.covered and p.voucher is None
    assert [(t.kind, t.amount) for t in p.tenders] == [(TenderKind.MEMBER_BALANCE, ORDER_AMOUNT)]


def test_a_named_voucher_is_used_as_chosen_or_refused_with_its_reason() -> None:
    p = plan(wallet=funded_wallet(300000), voucher_id="v-small-soon")
    assert p.covered and p.voucher is not None and p.voucher.voucher_id == "v-small-soon"
    assert p.voucher.choice is None  # the customer's own choice, not an automatic binding
    with pytest.raises(RuleViolation) as caught:
        plan(wallet=funded_wallet(300000), voucher_id="v-solo")  # needs the balance, cannot be combined
    assert caught.value.field == "voucher_id" and "cannot be combined with the member balance" in caught.value.rule
    with pytest.raises(RuleViolation) as caught:
        plan(wallet=funded_wallet(300000), voucher_id="v-unknown")
    assert caught.value.field == "voucher_id"


def test_asking_for_nothing_is_refused() -> None:
    with pytest.raises(RuleViolation) as caught:
        plan(use_vouchers=False, use_balance=False)
    assert caught.value.field == "use_vouchers"


def test_a_discount_voucher_is_valued_on_the_prepayment() -> None:
    p = plan([issue("v-pct", discount_terms(2000))], wallet=funded_wallet(300000))  # 20 % of 1,200 = 240
    assert p.voucher is not None and p.voucher.value == twd(24000) and p.member_balance == twd(96000)


# --- collecting a shortfall ------------------------------------------------------------------------


def test_collection_methods_offer_the_balance_only_to_a_member_with_enough() -> None:
    shortfall = twd(30000)
    rich = {o.method: o for o in collection_options(shortfall, is_member=True, member_balance_available=twd(30000))}
    assert [m for m, o in rich.items() if o.available] == [TenderKind.MEMBER_BALANCE, TenderKind.CASH,
                                                           TenderKind.THIRD_PARTY]
    poor = {o.method: o for o in collection_options(shortfall, is_member=True, member_balance_available=twd(29999))}
    assert not poor[TenderKind.MEMBER_BALANCE].available and "does not cover" in poor[TenderKind.MEMBER_BALANCE].detail
    guest = {o.method: o for o in collection_options(shortfall, is_member=False, member_balance_available=None)}
    assert not guest[TenderKind.MEMBER_BALANCE].available and "member" in guest[TenderKind.MEMBER_BALANCE].detail
    assert guest[TenderKind.CASH].available and guest[TenderKind.THIRD_PARTY].available
    assert collection_options(twd(0), is_member=True, member_balance_available=twd(1)) == []


# --- who may act -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role, actor, field", [
    ("customer", "c-1", None),
    ("customer", "c-2", "X-Actor"),
    ("merchant", "m-1", None),
    ("merchant", "m-2", "X-Actor"),
    ("service", "gateway", None),
    ("auditor", "a-1", "X-Role"),
])
def test_only_the_orders_own_parties_or_the_platform_may_act(role: str, actor: str, field: str | None) -> None:
    def check() -> None:
        require_party(role, actor, action="settle this order", roles={"customer", "merchant", "service"},
                      customer_id="c-1", merchant_id="m-1")

    if field is None:
        check()
        return
    with pytest.raises(Forbidden) as caught:
        check()
    assert caught.value.field == field and caught.value.code == "forbidden"


def test_a_merchant_cannot_act_before_a_merchant_accepted_the_order() -> None:
    with pytest.raises(Forbidden) as caught:
        require_party("merchant", "m-1", action="confirm the cash", roles={"merchant"}, merchant_id=None)
    assert "the merchant who accepted the order" in caught.value.rule
