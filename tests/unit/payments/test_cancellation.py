"""Cancellation money (seed 五): penalty tiers, refund path and priority, the safety cap, vouchers, compensation."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from libs.domain.errors import RuleViolation
from libs.domain.money import Money
from services.payments.domain.events import (
    CancellationPlan,
    CompensationRule,
    FaultParty,
    Rate,
    Tender,
    VoucherAction,
)
from services.payments.domain.policy import CancellationPolicy, PenaltyWindow
from services.payments.domain.settlement import cap_refund, penalty_for, plan_cancellation_refund
from tests.unit.payments import (
    HOUR,
    MINUTE,
    NOW,
    POLICY,
    POLICY_COMPENSATE,
    balance,
    card,
    cash,
    lines,
    twd,
    voucher,
)


def plan(prepaid: list[Tender], fault: str = "customer", T: int = 72 * HOUR,
         policy: CancellationPolicy = POLICY, **kw: Any) -> CancellationPlan:
    return plan_cancellation_refund(prepaid, fault_party=fault, seconds_before_service_start=T, policy=policy,
                                    now=NOW, **kw)


# --- customer fault, prepaid: the penalty tiers -------------------------------------------------------

FULL, HALF, FREE = "full", "half", "free"

# Card 1,000.00 + voucher 100.00. (T, tier, penalty, refund to the card, voucher returned?)
TIERS = [
    pytest.param(23 * HOUR + 59 * MINUTE, FULL, 100000, 0, False, id="23h59m full"),
    pytest.param(24 * HOUR - 1, FULL, 100000, 0, False, id="23h59m59s full"),
    pytest.param(24 * HOUR, HALF, 50000, 50000, True, id="24h00m00s half"),
    pytest.param(47 * HOUR + 59 * MINUTE, HALF, 50000, 50000, True, id="47h59m half"),
    pytest.param(48 * HOUR - 1, HALF, 50000, 50000, True, id="47h59m59s half"),
    pytest.param(48 * HOUR, FREE, 0, 100000, True, id="48h00m00s free"),
    pytest.param(30 * 24 * HOUR, FREE, 0, 100000, True, id="30 days free"),
    pytest.param(0, FULL, 100000, 0, False, id="at the start full"),
    pytest.param(-2 * HOUR, FULL, 100000, 0, False, id="2h after the start full"),
]


@pytest.mark.parametrize("T, tier, penalty, refund, voucher_back", TIERS)
def test_penalty_tiers(T: int, tier: str, penalty: int, refund: int, voucher_back: bool) -> None:
    p = plan([card(100000), voucher(10000)], T=T)
    assert p.penalty == twd(penalty)
    assert str(p.penalty_rate) == {FULL: "1", HALF: "1/2", FREE: "0"}[tier]
    assert lines(p.refunds) == ([("third_party", "pi_1", refund)] if refund else [])
    assert p.online_paid == twd(100000) and p.captured == twd(110000)
    if voucher_back:  # vouchers come back unless the full penalty applies
        assert [(v.reference, v.action) for v in p.vouchers_returned] == [("v-1", VoucherAction.RETURNED)]
        assert p.vouchers_forfeited == [] and p.kept == twd(0)
    else:
        assert p.vouchers_returned == [] and [t.reference for t in p.vouchers_forfeited] == ["v-1"]
        assert p.kept == twd(10000)
    assert p.compensation_vouchers == [] and p.merchant_compensation == twd(0)
    assert p.merchant_fault_recorded is False and p.was_prepaid is True
    assert p.policy_version == POLICY.version


# --- refund priority: third party > (cash) > member balance > vouchers ------------------------------------

PRIORITY = [
    pytest.param([voucher(20000), balance(60000), card(20000)], 24 * HOUR,
                 40000, [("third_party", "pi_1", 20000), ("member_balance", "wal-1", 20000)],
                 id="half of 800.00: the card first, the rest from the balance"),
    pytest.param([balance(60000), card(20000)], 48 * HOUR,
                 0, [("third_party", "pi_1", 20000), ("member_balance", "wal-1", 60000)],
                 id="free: everything, card line first"),
    pytest.param([balance(40000), cash(10000), card(10000)], 24 * HOUR,
                 30000, [("third_party", "pi_1", 10000), ("cash", "rcpt-1", 10000),
                         ("member_balance", "wal-1", 10000)],
                 id="cash is refunded as cash, after the card, before the balance"),
    pytest.param([card(30000, "pi_a"), card(30000, "pi_b")], 24 * HOUR,
                 30000, [("third_party", "pi_a", 30000)], id="two cards: in the order given"),
]


@pytest.mark.parametrize("prepaid, T, penalty, refunds", PRIORITY)
def test_refund_priority(prepaid: list[Tender], T: int, penalty: int, refunds: list) -> None:
    p = plan(prepaid, T=T)
    assert p.penalty == twd(penalty)
    assert lines(p.refunds) == refunds
    assert all(r.tender in prepaid for r in p.refunds)


def test_vouchers_are_returned_as_vouchers_not_money() -> None:
    p = plan([voucher(20000), balance(60000), card(20000)], T=24 * HOUR)
    assert all(r.kind.is_money for r in p.refunds)
    assert [v.reference for v in p.vouchers_returned] == ["v-1"]


# --- the safety rule (兜底) -----------------------------------------------------------------------------


def test_the_cap_where_a_naive_proportional_rule_would_refund_more_than_was_paid_online() -> None:
    prepaid = [voucher(80000), card(20000)]  # 1,000.00 prepaid, only 200.00 of it paid online
    # Naive: penalise half of what was prepaid and refund the other half in money.
    naive_refund = twd(100000) - twd(100000).fraction(1, 2)
    assert naive_refund == twd(50000) and naive_refund > twd(20000)  # more than the card ever paid
    assert cap_refund(naive_refund, twd(20000)) == twd(20000)

    p = plan(prepaid, T=30 * HOUR)
    assert p.penalty == twd(10000)  # half of the ONLINE-paid 200.00
    assert lines(p.refunds) == [("third_party", "pi_1", 10000)]
    assert p.refunded <= p.online_paid == twd(20000)
    assert [(v.reference, v.amount) for v in p.vouchers_returned] == [("v-1", twd(80000))]


def test_cap_refund_never_goes_below_zero() -> None:
    assert cap_refund(twd(-5), twd(100)) == twd(0)
    assert cap_refund(twd(60), twd(100)) == twd(60)


def test_the_plan_model_refuses_a_refund_above_the_online_paid_amount() -> None:
    data = plan([voucher(80000), card(20000)], T=48 * HOUR).model_dump()
    data["online_paid"]["amount"] = 10000
    with pytest.raises(ValueError, match="never exceed the amount paid online"):
        CancellationPlan.model_validate(data)


def test_the_plan_model_refuses_refunding_one_tender_twice() -> None:
    data = plan([voucher(80000), card(20000)], T=48 * HOUR).model_dump()
    data["refunds"] = data["refunds"] * 2
    data["refunded"]["amount"] = 40000
    with pytest.raises(ValueError, match="more than it paid"):
        CancellationPlan.model_validate(data)


# --- odd amounts ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prepaid, penalty, refunds", [
    pytest.param([card(1001)], 500, [("third_party", "pi_1", 501)], id="10.01: penalty 5.00, refund 5.01"),
    pytest.param([card(333), balance(334)], 333, [("third_party", "pi_1", 333), ("member_balance", "wal-1", 1)],
                 id="6.67 split over card and balance"),
    pytest.param([card(1)], 0, [("third_party", "pi_1", 1)], id="0.01: nothing to penalise"),
])
def test_half_of_an_odd_amount_rounds_in_the_customers_favour(prepaid: list[Tender], penalty: int,
                                                             refunds: list) -> None:
    p = plan(prepaid, T=36 * HOUR)
    assert p.penalty == twd(penalty)
    assert lines(p.refunds) == refunds
    assert p.penalty + p.refunded == p.online_paid


def test_penalty_rounds_down_for_any_rate() -> None:
    assert penalty_for(twd(100), Rate(numerator=1, denominator=3)) == twd(33)
    assert penalty_for(twd(100), Rate(numerator=2, denominator=3)) == twd(66)
    third = CancellationPolicy.model_validate(
        {**POLICY.model_dump(), "penalty_windows": [PenaltyWindow(below_hours=48, rate_numerator=2,
                                                                  rate_denominator=3).model_dump()]})
    p = plan([card(100)], T=HOUR, policy=third)
    assert (p.penalty, p.refunded) == (twd(66), twd(34))
    assert p.vouchers_forfeited == []  # only the full rate forfeits vouchers


# --- vouchers that would come back expired ---------------------------------------------------------------

DAY = timedelta(days=1)


@pytest.mark.parametrize("expires_at, action, new_expiry", [
    pytest.param(None, VoucherAction.RETURNED, None, id="no expiry"),
    pytest.param(NOW + 4 * DAY, VoucherAction.RETURNED, None, id="beyond the 3 grace days"),
    pytest.param(NOW + 3 * DAY, VoucherAction.EXTENDED, NOW + 33 * DAY, id="exactly at the grace limit"),
    pytest.param(NOW + DAY, VoucherAction.EXTENDED, NOW + 31 * DAY, id="within grace: from its expiry"),
    pytest.param(NOW, VoucherAction.EXTENDED, NOW + 30 * DAY, id="expires right now"),
    pytest.param(NOW - 10 * DAY, VoucherAction.EXTENDED, NOW + 30 * DAY, id="long expired: from now"),
])
def test_expired_voucher_is_extended(expires_at: Any, action: VoucherAction, new_expiry: Any) -> None:
    for fault, T in (("customer", 30 * HOUR), ("merchant", 72 * HOUR), ("platform", 72 * HOUR)):
        p = plan([card(10000), voucher(5000, expires_at=expires_at)], fault=fault, T=T)
        [back] = p.vouchers_returned
        assert (back.action, back.new_expires_at) == (action, new_expiry)
        assert [c for c in p.compensation_vouchers if c.rule is CompensationRule.VOUCHER_EXPIRED_ON_RETURN] == []


def test_expired_voucher_is_replaced_by_a_compensation_voucher_when_the_policy_says_so() -> None:
    p = plan([card(10000), voucher(5000, "v-old", expires_at=NOW - DAY), voucher(3000, "v-new")],
             T=30 * HOUR, policy=POLICY_COMPENSATE)
    assert [(v.reference, v.action) for v in p.vouchers_returned] == [
        ("v-old", VoucherAction.REPLACED), ("v-new", VoucherAction.RETURNED)]
    [comp] = p.compensation_vouchers
    assert (comp.rule, comp.amount, comp.replaces, comp.expires_at) == (
        CompensationRule.VOUCHER_EXPIRED_ON_RETURN, twd(5000), "v-old", NOW + 90 * DAY)


def test_a_forfeited_voucher_is_not_extended_or_replaced() -> None:
    p = plan([card(10000), voucher(5000, expires_at=NOW - DAY)], T=HOUR, policy=POLICY_COMPENSATE)
    assert p.compensation_vouchers == [] and p.vouchers_returned == []
    assert p.kept == twd(5000)


# --- merchant or platform fault ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["merchant", "platform"])
def test_merchant_or_platform_fault_gives_everything_back(fault: str) -> None:
    p = plan([voucher(10000), balance(50000), card(60000)], fault=fault, T=10 * HOUR)
    assert p.penalty == twd(0) and p.penalty_rate.numerator == 0
    assert lines(p.refunds) == [("third_party", "pi_1", 60000), ("member_balance", "wal-1", 50000)]
    assert [v.reference for v in p.vouchers_returned] == ["v-1"]
    assert p.merchant_fault_recorded is (fault == "merchant")
    assert p.fault_party is FaultParty(fault)


COMPENSATION = [
    pytest.param({"complained": True, "customer_tenure_days": 365, "lifetime_value": twd(2000000)},
                 72 * HOUR, [CompensationRule.LOYAL_CUSTOMER_COMPLAINT], id="loyal high-value customer complains"),
    pytest.param({"complained": True, "customer_tenure_days": 364, "lifetime_value": twd(9000000)},
                 72 * HOUR, [], id="not long-standing enough"),
    pytest.param({"complained": True, "customer_tenure_days": 900, "lifetime_value": twd(1999999)},
                 72 * HOUR, [], id="not high-value enough"),
    pytest.param({"complained": False, "customer_tenure_days": 900, "lifetime_value": twd(9000000)},
                 72 * HOUR, [], id="no complaint"),
    pytest.param({"reason_code": "no_merchant_available"}, 72 * HOUR, [CompensationRule.NO_MERCHANT_AVAILABLE],
                 id="no merchant available"),
    pytest.param({"dispatch_attempts": 3}, 72 * HOUR, [CompensationRule.NO_MERCHANT_AVAILABLE],
                 id="three failed dispatch rounds"),
    pytest.param({"dispatch_attempts": 2}, 72 * HOUR, [], id="two dispatch rounds"),
    pytest.param({}, 24 * HOUR - 1, [CompensationRule.LATE_CANCELLATION], id="23h59m59s: close to the start"),
    pytest.param({}, 24 * HOUR, [], id="24h: not close"),
    pytest.param({}, -HOUR, [CompensationRule.LATE_CANCELLATION], id="after the start"),
    pytest.param({"reason_code": "no_merchant_available", "complained": True, "customer_tenure_days": 400,
                  "lifetime_value": twd(3000000)}, HOUR,
                 [CompensationRule.LOYAL_CUSTOMER_COMPLAINT, CompensationRule.NO_MERCHANT_AVAILABLE,
                  CompensationRule.LATE_CANCELLATION], id="every rule: one voucher each"),
]


@pytest.mark.parametrize("facts, T, rules", COMPENSATION)
def test_compensation_vouchers_name_their_rule(facts: dict[str, Any], T: int, rules: list) -> None:
    amounts = {CompensationRule.LOYAL_CUSTOMER_COMPLAINT: 20000, CompensationRule.NO_MERCHANT_AVAILABLE: 10000,
               CompensationRule.LATE_CANCELLATION: 10000}
    for fault in ("merchant", "platform"):
        p = plan([card(60000)], fault=fault, T=T, **facts)
        assert [c.rule for c in p.compensation_vouchers] == rules
        assert [c.amount for c in p.compensation_vouchers] == [twd(amounts[r]) for r in rules]
        assert all(c.expires_at == NOW + timedelta(days=90) for c in p.compensation_vouchers)


def test_a_customer_fault_never_earns_compensation_vouchers() -> None:
    p = plan([card(60000)], fault="customer", T=HOUR, reason_code="no_merchant_available", complained=True,
             customer_tenure_days=900, lifetime_value=twd(9000000), dispatch_attempts=5)
    assert p.compensation_vouchers == []


def test_a_rule_whose_amount_is_zero_grants_nothing_but_says_so() -> None:
    off = CancellationPolicy.model_validate({**POLICY.model_dump(), "compensation": {"late_cancellation": 0}})
    p = plan([card(60000)], fault="platform", T=HOUR, policy=off)
    assert p.compensation_vouchers == []
    assert any("late_cancellation: applies, but the policy grants nothing" in line for line in p.explanation)


def test_merchant_or_platform_fault_on_an_unprepaid_order_can_still_compensate_the_customer() -> None:
    p = plan([], fault="platform", T=2 * HOUR, reason_code="no_merchant_available")
    assert p.was_prepaid is False and p.refunds == [] and p.penalty == twd(0)
    assert [c.rule for c in p.compensation_vouchers] == [CompensationRule.NO_MERCHANT_AVAILABLE,
                                                        CompensationRule.LATE_CANCELLATION]


# --- customer fault, unprepaid -------------------------------------------------------------------------------


@pytest.mark.parametrize("T, compensation", [
    pytest.param(-HOUR, 30000, id="after the start"),
    pytest.param(23 * HOUR + 59 * MINUTE, 30000, id="23h59m"),
    pytest.param(24 * HOUR, 15000, id="24h"),
    pytest.param(47 * HOUR + 59 * MINUTE, 15000, id="47h59m"),
    pytest.param(48 * HOUR, 0, id="48h"),
])
def test_unprepaid_customer_fault_the_platform_compensates_the_merchant_and_nothing_else(
        T: int, compensation: int) -> None:
    p = plan([], fault="customer", T=T, complained=True, reason_code="no_merchant_available")
    assert p.merchant_compensation == twd(compensation)
    assert (p.penalty, p.refunded, p.captured, p.kept) == (twd(0), twd(0), twd(0), twd(0))
    assert p.refunds == [] and p.vouchers_returned == [] and p.compensation_vouchers == []
    assert p.was_prepaid is False and p.merchant_fault_recorded is False


def test_only_unprepaid_customer_fault_compensates_the_merchant() -> None:
    assert plan([card(100)], fault="customer", T=HOUR).merchant_compensation == twd(0)
    assert plan([], fault="merchant", T=HOUR).merchant_compensation == twd(0)


# --- explanation and bad input -------------------------------------------------------------------------------


def test_the_plan_explains_itself() -> None:
    p = plan([voucher(10000), balance(50000), card(60000)], T=30 * HOUR)
    assert p.explanation == [
        "policy test-2025; customer fault; cancelled 30h00m00s before the service start; prepaid TWD 1,200.00 "
        "of which TWD 1,100.00 paid online",
        "penalty window T < 48 h: rate 1/2 of TWD 1,100.00 = TWD 550.00 (rounded down)",
        "refund TWD 550.00 to third_party pi_1 (original path)",
        "voucher v-1 TWD 100.00 returned as it was",
    ]


@pytest.mark.parametrize("prepaid, kw, field", [
    ([Tender(kind="third_party", amount=Money(amount=100, currency="USD"), reference="pi_u")], {},
     "prepaid[0].amount.currency"),
    ([card(100)], {"fault_party": "weather"}, "fault_party"),
    ([card(100)], {"lifetime_value": Money(amount=1, currency="USD")}, "lifetime_value.currency"),
    ([card(100)], {"dispatch_attempts": -1}, "dispatch_attempts"),
    ([card(100)], {"now": NOW.replace(tzinfo=None)}, "now"),
])
def test_bad_cancellation_input_names_the_field(prepaid: list[Tender], kw: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"fault_party": "customer", "seconds_before_service_start": HOUR, "policy": POLICY,
                            "now": NOW, **kw}
    with pytest.raises(RuleViolation) as caught:
        plan_cancellation_refund(prepaid, **args)
    assert caught.value.field == field
