"""Automatic voucher binding (seed 二): both preferences, the tie-breakers, balance combination, explanations."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.domain.errors import RuleViolation
from services.payments.domain.voucher import (
    BindingChoice,
    BindingPreference,
    UnusableReason,
    Voucher,
    VoucherBound,
    VoucherKind,
    choose_voucher,
)
from tests.unit.payments_wallet import (
    CUSTOMER,
    LINE,
    NOW,
    ORDER,
    ORDER_AMOUNT,
    amount_terms,
    discount_terms,
    issue,
    twd,
)

LARGEST = BindingPreference.LARGEST_FIRST
SOONEST = BindingPreference.SOONEST_EXPIRY_FIRST


def days(n: float):
    return NOW + timedelta(days=n)


def wallet_of_vouchers() -> list[Voucher]:
    """Five vouchers of c-1, valued on the TWD 1,200.00 order."""
    return [
        issue("v-a", amount_terms(10000, expires_at=days(23))),                          # 100, 23 days
        issue("v-b", discount_terms(1500, cap=15000, expires_at=days(10))),             # 15 % capped: 150, 10 days
        issue("v-c", discount_terms(1000, expires_at=days(5))),                         # 10 %: 120, 5 days
        issue("v-d", amount_terms(20000, combinable_with_balance=False, expires_at=days(30))),  # 200, no balance
        issue("v-e", amount_terms(30000, min_spend=twd(200000), expires_at=days(2))),   # 300, min spend 2,000
    ]


def choose(candidates: list[Voucher], preference=LARGEST, using_balance: bool = False, amount=ORDER_AMOUNT,
           **kwargs) -> BindingChoice:
    return choose_voucher(candidates, order_amount=amount, product_line=LINE, at=NOW, using_balance=using_balance,
                          preference=preference, **kwargs)


@pytest.mark.parametrize("preference, using_balance, chosen, value", [
    (LARGEST, False, "v-d", 20000),
    (LARGEST, True, "v-b", 15000),    # v-d cannot be combined with the member balance
    (SOONEST, False, "v-c", 12000),   # v-e expires sooner but is below its min spend
    (SOONEST, True, "v-c", 12000),
])
def test_the_choice_under_each_preference(preference: BindingPreference, using_balance: bool, chosen: str,
                                          value: int) -> None:
    choice = choose(wallet_of_vouchers(), preference, using_balance)
    assert (choice.voucher_id, choice.value, choice.preference) == (chosen, twd(value), preference)


def test_the_explanation_lists_every_candidate_with_its_value_rank_and_reason() -> None:
    choice = choose(wallet_of_vouchers(), LARGEST, using_balance=True, policy_version="test-3")
    rows = {c.voucher_id: c for c in choice.candidates}
    assert [c.voucher_id for c in choice.candidates] == ["v-b", "v-c", "v-a", "v-d", "v-e"]  # ranked, then unusable
    assert [(c.rank, c.chosen, c.usable) for c in choice.candidates] == [
        (1, True, True), (2, False, True), (3, False, True), (None, False, False), (None, False, False)]
    assert rows["v-b"].explanation.startswith("chosen (largest_first")
    assert "less than v-b (TWD 150.00)" in rows["v-c"].explanation
    assert rows["v-d"].value == twd(20000)  # shown even though it is not usable here
    assert [r.reason for r in rows["v-d"].unusable] == [UnusableReason.BALANCE_COMBINATION]
    assert [r.reason for r in rows["v-e"].unusable] == [UnusableReason.MIN_SPEND]
    assert rows["v-e"].explanation.startswith("not usable: needs an order of at least TWD 2,000.00")
    assert choice.policy_version == "test-3" and "chose v-b" in choice.summary
    assert {c.kind for c in choice.candidates} == {VoucherKind.AMOUNT, VoucherKind.DISCOUNT}


def test_amount_and_discount_vouchers_compare_by_their_value_on_this_order() -> None:
    candidates = [issue("v-amount", amount_terms(20000)), issue("v-pct", discount_terms(2000))]  # 200 vs 20 %
    assert choose(candidates, amount=twd(120000)).voucher_id == "v-pct"  # 240 > 200
    assert choose(candidates, amount=twd(50000)).voucher_id == "v-amount"  # 100 < 200


# (preference, vouchers as (id, kind, value in minor units on the order, days to expiry), chosen, reason part)
TIES = [
    (LARGEST, [("v-1", "amount", 10000, 9), ("v-2", "amount", 10000, 3)], "v-2", "later than v-2"),
    (SOONEST, [("v-1", "amount", 5000, 3), ("v-2", "amount", 10000, 3)], "v-2", "less than v-2"),
    (LARGEST, [("v-1", "discount", 10000, 3), ("v-2", "amount", 10000, 3)], "v-2", "amount voucher is used before"),
    (SOONEST, [("v-1", "discount", 10000, 3), ("v-2", "amount", 10000, 3)], "v-2", "amount voucher is used before"),
    (LARGEST, [("v-2", "amount", 10000, 3), ("v-1", "amount", 10000, 3)], "v-1", "first by voucher id"),
    (SOONEST, [("v-2", "amount", 10000, 3), ("v-1", "amount", 10000, 3)], "v-1", "first by voucher id"),
    (LARGEST, [("v-1", "amount", 10000, 1), ("v-2", "amount", 12000, 20)], "v-2", "less than v-2"),
    (SOONEST, [("v-1", "amount", 10000, 1), ("v-2", "amount", 12000, 20)], "v-1", "later than v-1"),
]


def make(voucher_id: str, kind: str, value: int, days_left: int) -> Voucher:
    expires = days(days_left)
    if kind == "amount":
        return issue(voucher_id, amount_terms(value, expires_at=expires))
    return issue(voucher_id, discount_terms(1000, cap=value, expires_at=expires))  # 10 % of 1,200 capped at value


@pytest.mark.parametrize("preference, rows, chosen, reason_part", TIES,
                         ids=["largest-tie-expiry", "soonest-tie-value", "largest-tie-kind", "soonest-tie-kind",
                              "largest-tie-id", "soonest-tie-id", "largest-plain", "soonest-plain"])
def test_ties_are_broken_as_documented(preference: BindingPreference, rows: list, chosen: str,
                                       reason_part: str) -> None:
    choice = choose([make(*row) for row in rows], preference)
    assert choice.voucher_id == chosen
    [loser] = [c for c in choice.candidates if not c.chosen]
    assert loser.rank == 2 and reason_part in loser.explanation


def test_no_usable_voucher_means_no_choice_and_says_why() -> None:
    choice = choose([issue("v-e", amount_terms(30000, min_spend=twd(200000)))])
    assert choice.voucher_id is None and choice.value == twd(0)
    assert "none usable" in choice.summary
    assert choose([]).candidates == []


def test_vouchers_of_other_customers_and_duplicates_are_handled() -> None:
    mine, theirs = issue("v-1", amount_terms(10000)), issue("v-9", amount_terms(50000), customer_id="c-2")
    choice = choose([theirs, mine, mine], customer_id=CUSTOMER)
    assert choice.voucher_id == "v-1" and len(choice.candidates) == 2
    [other] = [c for c in choice.candidates if c.voucher_id == "v-9"]
    assert [r.reason for r in other.unusable] == [UnusableReason.OTHER_CUSTOMER]


def test_an_unknown_preference_is_refused() -> None:
    with pytest.raises(RuleViolation) as caught:
        choose(wallet_of_vouchers(), preference="cheapest_first")
    assert caught.value.field == "preference"


def test_binding_stores_the_choice_explanation() -> None:
    vouchers = wallet_of_vouchers()
    choice = choose(vouchers, LARGEST, using_balance=True)
    chosen = next(v for v in vouchers if v.id == choice.voucher_id)
    chosen.bind(ORDER, customer_id=CUSTOMER, order_amount=ORDER_AMOUNT, product_line=LINE, using_balance=True,
                at=NOW, choice=choice)
    [event] = chosen.pending
    assert isinstance(event, VoucherBound) and event.choice == choice and chosen.binding_choice == choice
    other = next(v for v in vouchers if v.id == "v-a")
    with pytest.raises(RuleViolation) as caught:
        other.bind(ORDER, customer_id=CUSTOMER, order_amount=ORDER_AMOUNT, product_line=LINE, using_balance=True,
                   at=NOW, choice=choice)
    assert caught.value.field == "choice.voucher_id"


# --- properties ---------------------------------------------------------------------------------

voucher_specs = st.lists(
    st.tuples(
        st.sampled_from(["amount", "discount"]),
        st.integers(min_value=1, max_value=50000),          # amount off, or cap
        st.integers(min_value=1, max_value=10000),          # basis points
        st.booleans(),                                      # capped
        st.integers(min_value=1, max_value=60),             # days to expiry
        st.booleans(),                                      # combinable with the balance
        st.one_of(st.none(), st.integers(min_value=1, max_value=300000)),  # min spend
    ),
    max_size=8)


def build(specs: list) -> list[Voucher]:
    vouchers = []
    for i, (kind, money, bp, capped, days_left, combinable, min_spend) in enumerate(specs):
        extra = {"expires_at": days(days_left), "combinable_with_balance": combinable,
                 "min_spend": twd(min_spend) if min_spend else None}
        terms = amount_terms(money, **extra) if kind == "amount" else \
            discount_terms(bp, cap=money if capped else None, **extra)
        vouchers.append(issue(f"v-{i:02d}", terms))
    return vouchers


@settings(max_examples=150, deadline=None)
@given(specs=voucher_specs, amount=st.integers(min_value=0, max_value=300000), using_balance=st.booleans(),
       preference=st.sampled_from(list(BindingPreference)), seed=st.randoms(use_true_random=False))
def test_the_choice_is_the_best_usable_candidate_whatever_the_input_order(specs, amount, using_balance, preference,
                                                                         seed) -> None:
    vouchers = build(specs)
    choice = choose(vouchers, preference, using_balance, amount=twd(amount))
    shuffled = list(vouchers)
    seed.shuffle(shuffled)
    assert choose(shuffled, preference, using_balance, amount=twd(amount)) == choice
    assert len(choice.candidates) == len(vouchers)
    usable = [c for c in choice.candidates if c.usable]
    assert all(c.value.amount > 0 for c in usable)
    assert all(not (using_balance and c.voucher_id in {v.id for v in vouchers if not v.terms.combinable_with_balance})
               for c in usable)
    if not usable:
        assert choice.voucher_id is None
        return
    [best] = [c for c in choice.candidates if c.chosen]
    assert best.voucher_id == choice.voucher_id and best.value == choice.value and best.rank == 1
    for c in usable:
        assert c.value.amount <= twd(amount).amount
        if preference is LARGEST:
            assert c.value <= best.value
        else:
            assert c.expires_at >= best.expires_at
