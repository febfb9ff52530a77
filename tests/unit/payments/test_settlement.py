"""Settlement (seed 三.3, 多退少補) and the choice of how a shortfall is collected (seed 三.1, 四)."""

from __future__ import annotations

from itertools import permutations

import pytest

from libs.domain.errors import RuleViolation
from libs.domain.money import Money
from services.payments.domain.events import SettlementPlan, Tender, TenderKind
from services.payments.domain.settlement import (
    APPLY_PRIORITY,
    REFUND_PRIORITY,
    choose_collection_method,
    plan_settlement,
)
from tests.unit.payments import PREPAID, balance, card, cash, lines, twd, voucher


def test_deduction_and_refund_orders_are_the_seeds_and_mirror_each_other() -> None:
    K = TenderKind
    assert APPLY_PRIORITY == (K.VOUCHER, K.MEMBER_BALANCE, K.CASH, K.THIRD_PARTY)  # 代金券 > 會員余額 > 第三方支付
    assert REFUND_PRIORITY == (K.THIRD_PARTY, K.CASH, K.MEMBER_BALANCE, K.VOUCHER)  # 第三方支付 > 會員卡 > 代金券


# Prepaid: voucher 100.00 + balance 500.00 + card 600.00 = 1,200.00 (PREPAID), against several totals.
# (total, applied lines, refund lines, shortfall)
SETTLEMENT_CASES = [
    pytest.param(100000,
                 [("voucher", "v-1", 10000), ("member_balance", "wal-1", 50000), ("third_party", "pi_1", 40000)],
                 [("third_party", "pi_1", 20000)], 0, id="excess 200.00 back to the card"),
    pytest.param(50000,
                 [("voucher", "v-1", 10000), ("member_balance", "wal-1", 40000)],
                 [("third_party", "pi_1", 60000), ("member_balance", "wal-1", 10000)], 0,
                 id="excess 700.00: the whole card, then 100.00 of balance"),
    pytest.param(150000,
                 [("voucher", "v-1", 10000), ("member_balance", "wal-1", 50000), ("third_party", "pi_1", 60000)],
                 [], 30000, id="shortfall 300.00"),
    pytest.param(120000,
                 [("voucher", "v-1", 10000), ("member_balance", "wal-1", 50000), ("third_party", "pi_1", 60000)],
                 [], 0, id="exact"),
    pytest.param(5000, [("voucher", "v-1", 5000)],
                 [("third_party", "pi_1", 60000), ("member_balance", "wal-1", 50000), ("voucher", "v-1", 5000)], 0,
                 id="below the voucher: its unused 50.00 goes back as voucher value"),
    pytest.param(0, [],
                 [("third_party", "pi_1", 60000), ("member_balance", "wal-1", 50000), ("voucher", "v-1", 10000)], 0,
                 id="zero total: everything back"),
]


@pytest.mark.parametrize("total, applied, refunds, shortfall", SETTLEMENT_CASES)
def test_settlement_worked_cases(total: int, applied: list, refunds: list, shortfall: int) -> None:
    plan = plan_settlement(twd(total), PREPAID)
    assert lines(plan.applied) == applied
    assert lines(plan.refunds) == refunds
    assert plan.shortfall == twd(shortfall)
    assert plan.captured == twd(120000)
    assert plan.applied_total.amount == sum(a for _, _, a in applied) == total - shortfall
    assert plan.refunded.amount == sum(a for _, _, a in refunds) == 120000 - plan.applied_total.amount
    # each refund line names the tender it goes back to
    assert all(r.tender in PREPAID and r.reference == r.tender.reference for r in plan.refunds)


@pytest.mark.parametrize("order", list(permutations(range(3))))
def test_the_order_the_tenders_are_given_in_does_not_matter(order: tuple[int, ...]) -> None:
    tenders = [PREPAID[i] for i in order]
    assert plan_settlement(twd(50000), tenders).model_dump(exclude={"explanation"}) == \
        plan_settlement(twd(50000), PREPAID).model_dump(exclude={"explanation"})


def test_without_prepayment_the_whole_total_is_the_shortfall() -> None:
    plan = plan_settlement(twd(80000), [])
    assert (plan.applied, plan.refunds, plan.shortfall, plan.captured) == ([], [], twd(80000), twd(0))


def test_cash_is_deducted_after_balance_and_refunded_before_it() -> None:
    plan = plan_settlement(twd(30000), [card(10000), cash(20000), balance(20000), voucher(5000)])
    assert lines(plan.applied) == [("voucher", "v-1", 5000), ("member_balance", "wal-1", 20000),
                                   ("cash", "rcpt-1", 5000)]
    assert lines(plan.refunds) == [("third_party", "pi_1", 10000), ("cash", "rcpt-1", 15000)]


def test_two_tenders_of_one_kind_are_used_in_the_order_given() -> None:
    plan = plan_settlement(twd(70000), [card(50000, "pi_a"), card(50000, "pi_b")])
    assert lines(plan.applied) == [("third_party", "pi_a", 50000), ("third_party", "pi_b", 20000)]
    assert lines(plan.refunds) == [("third_party", "pi_b", 30000)]


def test_the_preview_explains_every_line() -> None:
    plan = plan_settlement(twd(100000), PREPAID)
    assert plan.explanation == [
        "bill total TWD 1,000.00; prepaid TWD 1,200.00 (voucher v-1 TWD 100.00, member_balance wal-1 TWD 500.00, "
        "third_party pi_1 TWD 600.00)",
        "applied voucher v-1: TWD 100.00 of TWD 100.00",
        "applied member_balance wal-1: TWD 500.00 of TWD 500.00",
        "applied third_party pi_1: TWD 400.00 of TWD 600.00",
        "refund TWD 200.00 to third_party pi_1 (refunded along the original path)",
    ]
    assert plan_settlement(twd(150000), PREPAID).explanation[-1].startswith("shortfall TWD 300.00 to collect")


@pytest.mark.parametrize("total, tenders, field", [
    (twd(100), [card(100), Tender(kind="third_party", amount=Money(amount=100, currency="USD"), reference="pi_u")],
     "prepaid[1].amount.currency"),
    (twd(-1), [], "total"),
    (twd(100), [card(0)], "prepaid[0].amount"),
    (twd(100), [card(100), card(100)], "prepaid[1].reference"),
])
def test_bad_input_names_the_field(total: Money, tenders: list, field: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        plan_settlement(total, tenders)
    assert caught.value.field == field


def test_the_plan_model_refuses_a_plan_that_loses_money() -> None:
    plan = plan_settlement(twd(100000), PREPAID)
    data = plan.model_dump()
    data["refunds"] = []
    data["refunded"] = {"amount": 0, "currency": "TWD"}
    with pytest.raises(ValueError, match="captured must equal"):
        SettlementPlan.model_validate(data)


# --- collecting the shortfall -------------------------------------------------------------------------

SHORTFALL = twd(30000)


@pytest.mark.parametrize("requested, is_member, available, expected", [
    ("member_balance", True, twd(30000), TenderKind.MEMBER_BALANCE),  # exactly enough
    ("member_balance", True, twd(90000), TenderKind.MEMBER_BALANCE),
    ("cash", False, None, TenderKind.CASH),
    ("cash", True, twd(0), TenderKind.CASH),
    ("third_party", False, None, TenderKind.THIRD_PARTY),
    (TenderKind.THIRD_PARTY, True, twd(90000), TenderKind.THIRD_PARTY),
])
def test_allowed_collection_methods(requested: str, is_member: bool, available: Money | None,
                                    expected: TenderKind) -> None:
    assert choose_collection_method(SHORTFALL, is_member=is_member, member_balance_available=available,
                                    requested=requested) is expected


@pytest.mark.parametrize("shortfall, requested, is_member, available, field, words", [
    (SHORTFALL, "member_balance", False, twd(90000), "method", "only be used by a member"),
    (SHORTFALL, "member_balance", True, twd(29999), "member_balance_available", "does not cover"),
    (SHORTFALL, "member_balance", True, None, "member_balance_available", "is needed"),
    (SHORTFALL, "member_balance", True, Money(amount=90000, currency="USD"), "member_balance_available.currency",
     "TWD"),
    (SHORTFALL, "voucher", True, None, "method", "vouchers are bound when the order is paid"),
    (SHORTFALL, "bitcoin", True, None, "method", "must be one of member_balance, cash, third_party"),
    (twd(0), "cash", True, None, "method", "nothing to collect"),
])
def test_refused_collection_methods_say_why(shortfall: Money, requested: str, is_member: bool,
                                            available: Money | None, field: str, words: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        choose_collection_method(shortfall, is_member=is_member, member_balance_available=available,
                                 requested=requested)
    assert caught.value.field == field
    assert words in caught.value.message
