"""Vouchers: issue rules, value on an order (floor, cap), usability, expiry, and the lifecycle table."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from libs.domain.errors import Conflict, InvalidTransition, NotFound, RuleViolation
from libs.domain.money import Money
from services.payments.domain import voucher as vc
from services.payments.domain.voucher import (
    CompensationGrant,
    UnusableReason,
    Voucher,
    VoucherCategory,
    VoucherKind,
    VoucherStatus,
)
from tests.unit.payments_wallet import (
    CUSTOMER,
    EXPIRES_AT,
    LINE,
    NOW,
    ORDER,
    ORDER_AMOUNT,
    VALID_FROM,
    amount_terms,
    bind,
    discount_terms,
    issue,
    twd,
)

S = VoucherStatus

# --- issue --------------------------------------------------------------------------------------


def test_issue_records_the_terms_and_starts_issued() -> None:
    voucher = issue(saved=False)
    [event] = voucher.pending
    assert isinstance(event, vc.VoucherIssued)
    assert (event.voucher_id, event.customer_id, event.category, event.issued_by) == (
        "v-1", CUSTOMER, VoucherCategory.CAMPAIGN, "ops-1")
    assert voucher.status is S.ISSUED and voucher.expires_at == EXPIRES_AT
    assert voucher.stream_id == "voucher-v-1"
    assert voucher.kind is VoucherKind.AMOUNT


def test_a_compensation_voucher_names_the_rule_that_granted_it() -> None:
    grant = CompensationGrant(rule="voucher_expired_on_return", order_id="o-9", replaces_voucher_id="v-0")
    voucher = issue(category=VoucherCategory.COMPENSATION, compensation=grant)
    assert voucher.compensation == grant and voucher.voucher_category is VoucherCategory.COMPENSATION
    with pytest.raises(RuleViolation) as missing:
        issue(category=VoucherCategory.COMPENSATION)
    assert missing.value.field == "compensation"
    with pytest.raises(RuleViolation):
        issue(category=VoucherCategory.CAMPAIGN, compensation=grant)


@pytest.mark.parametrize("terms, field", [
    (lambda: amount_terms(10000).model_copy(update={"amount_off": None}), "terms.amount_off"),
    (lambda: amount_terms(0), "terms.amount_off"),
    (lambda: amount_terms(10000, percent_off_bp=1000), "terms.percent_off_bp"),
    (lambda: amount_terms(10000, cap=twd(100)), "terms.percent_off_bp"),
    (lambda: amount_terms(10000).model_copy(update={"amount_off": Money(amount=100, currency="USD")}),
     "terms.amount_off.currency"),
    (lambda: discount_terms(1000).model_copy(update={"percent_off_bp": None}), "terms.percent_off_bp"),
    (lambda: discount_terms(1000, amount_off=twd(100)), "terms.amount_off"),
    (lambda: discount_terms(1000, cap=0), "terms.cap"),
    (lambda: discount_terms(1000, min_spend=Money(amount=100, currency="USD")), "terms.min_spend.currency"),
    (lambda: amount_terms(10000, product_lines=["dishwashing", "dishwashing"]), "terms.product_lines"),
    (lambda: amount_terms(10000, expires_at=VALID_FROM), "terms.expires_at"),
    (lambda: amount_terms(10000, valid_from=VALID_FROM - timedelta(days=30),
                          expires_at=VALID_FROM - timedelta(days=1)), "terms.expires_at"),
], ids=["amount-without-amount", "zero-amount", "amount-with-percent", "amount-with-cap", "amount-currency",
        "discount-without-percent", "discount-with-amount", "zero-cap", "min-spend-currency", "repeated-line",
        "empty-validity", "born-expired"])
def test_issue_refuses_inconsistent_terms_naming_the_field(terms: Callable[[], vc.VoucherTerms], field: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        issue(terms=terms())
    assert caught.value.field == field


def test_issue_refuses_an_unknown_category_and_a_naive_time() -> None:
    with pytest.raises(RuleViolation) as caught:
        Voucher.issue("v-1", customer_id=CUSTOMER, category="birthday", terms=amount_terms(100), issued_by="ops-1",
                      at=VALID_FROM)
    assert caught.value.field == "category"
    with pytest.raises(RuleViolation) as naive:
        Voucher.issue("v-1", customer_id=CUSTOMER, category="campaign", terms=amount_terms(100), issued_by="ops-1",
                      at=datetime(2025, 3, 1, 9, 0))
    assert naive.value.field == "at"


# --- value on an order --------------------------------------------------------------------------

# (terms, order amount, value): amounts never exceed the order; discounts are floored, then capped.
VALUE_CASES = [
    (amount_terms(10000), 120000, 10000),
    (amount_terms(10000), 10000, 10000),
    (amount_terms(10000), 6000, 6000),            # never more than the order
    (amount_terms(10000), 0, 0),
    (discount_terms(1500), 120000, 18000),         # 15 % of 1,200.00
    (discount_terms(1500), 12345, 1851),           # 1851.75 -> 1851 (floor, not half-up)
    (discount_terms(1500), 1, 0),                  # 0.15 of a minor unit -> 0
    (discount_terms(3333), 3, 0),                  # 0.9999 -> 0
    (discount_terms(1, None), 10000, 1),           # 0.01 % of 100.00 = 1 minor unit
    (discount_terms(1500, cap=15000), 120000, 15000),  # 180.00 capped at 150.00
    (discount_terms(1500, cap=15000), 100000, 15000),  # exactly at the cap
    (discount_terms(1500, cap=15000), 99999, 14999),   # 149.9985 -> 149.99, under the cap
    (discount_terms(10000), 120000, 120000),       # 100 % off
]


@pytest.mark.parametrize("terms, order, value", VALUE_CASES, ids=[f"{c[0].kind.value}-{i}"
                                                                    for i, c in enumerate(VALUE_CASES)])
def test_value_on_an_order(terms: vc.VoucherTerms, order: int, value: int) -> None:
    assert issue(terms=terms).value_for(twd(order)) == twd(value)


def test_value_in_another_currency_is_refused() -> None:
    with pytest.raises(RuleViolation) as caught:
        issue().value_for(Money(amount=100, currency="USD"))
    assert caught.value.field == "order_amount.currency"


# --- usability ----------------------------------------------------------------------------------


def reasons(voucher: Voucher, amount: Money = ORDER_AMOUNT, line: str = LINE, at: datetime = NOW,
            with_balance: bool = False, customer_id: str | None = None) -> list[UnusableReason]:
    return [r.reason for r in voucher.usable_for(amount, line, at, with_balance, customer_id).reasons]


def test_a_plain_voucher_is_usable_and_reports_its_value() -> None:
    result = issue().usable_for(ORDER_AMOUNT, LINE, NOW, with_balance=True)
    assert (result.usable, result.value, result.reasons) == (True, twd(10000), [])


@pytest.mark.parametrize("at, expected", [
    (VALID_FROM - timedelta(microseconds=1), [UnusableReason.NOT_YET_VALID]),
    (VALID_FROM, []),
    (EXPIRES_AT - timedelta(microseconds=1), []),
    (EXPIRES_AT, [UnusableReason.EXPIRED]),   # expired at exactly expires_at
    (EXPIRES_AT + timedelta(days=1), [UnusableReason.EXPIRED]),
], ids=["before-valid-from", "at-valid-from", "just-before-expiry", "at-expiry", "after-expiry"])
def test_validity_is_half_open(at: datetime, expected: list[UnusableReason]) -> None:
    voucher = issue()
    assert reasons(voucher, at=at) == expected
    assert voucher.is_past_expiry(at) is (at >= EXPIRES_AT)


@pytest.mark.parametrize("order, usable", [(79999, False), (80000, True), (80001, True)])
def test_min_spend_is_met_at_exactly_the_minimum(order: int, usable: bool) -> None:
    voucher = issue(terms=amount_terms(10000, min_spend=twd(80000)))
    assert reasons(voucher, amount=twd(order)) == ([] if usable else [UnusableReason.MIN_SPEND])


@pytest.mark.parametrize("combinable, with_balance, usable", [
    (True, True, True), (True, False, True), (False, False, True), (False, True, False)])
def test_combination_with_the_member_balance(combinable: bool, with_balance: bool, usable: bool) -> None:
    voucher = issue(terms=amount_terms(10000, combinable_with_balance=combinable))
    assert reasons(voucher, with_balance=with_balance) == ([] if usable else [UnusableReason.BALANCE_COMBINATION])


def test_product_lines_limit_where_a_voucher_is_usable_and_empty_means_all() -> None:
    limited = issue(terms=amount_terms(10000, product_lines=["deep-cleaning"]))
    assert reasons(limited) == [UnusableReason.PRODUCT_LINE]
    assert reasons(limited, line="deep-cleaning") == []
    assert reasons(issue(), line="anything") == []


def test_every_reason_is_listed_at_once() -> None:
    voucher = issue(terms=amount_terms(10000, min_spend=twd(200000), combinable_with_balance=False,
                                       product_lines=["deep-cleaning"]))
    result = voucher.usable_for(ORDER_AMOUNT, LINE, EXPIRES_AT, with_balance=True, customer_id="c-2")
    assert [r.reason for r in result.reasons] == [
        UnusableReason.OTHER_CUSTOMER, UnusableReason.EXPIRED, UnusableReason.MIN_SPEND,
        UnusableReason.PRODUCT_LINE, UnusableReason.BALANCE_COMBINATION]
    assert result.usable is False and result.value == twd(0)
    assert all(r.detail for r in result.reasons)


def test_another_currency_and_a_zero_order_are_not_usable() -> None:
    assert reasons(issue(), amount=Money(amount=100, currency="USD")) == [UnusableReason.CURRENCY]
    assert reasons(issue(terms=discount_terms(1500)), amount=twd(1)) == [UnusableReason.NO_VALUE]


def test_a_bound_voucher_is_not_usable_for_another_order() -> None:
    voucher = issue()
    bind(voucher)
    assert reasons(voucher) == [UnusableReason.STATUS]


# --- lifecycle ----------------------------------------------------------------------------------

# The specification, written out here rather than read from the module under test.
EXPECTED_ALLOWED: dict[S, list[str]] = {
    S.ISSUED: ["bind", "expire", "extend"],
    S.BOUND: ["redeem", "release"],
    S.REDEEMED: ["return"],
    S.RETURNED: ["bind", "expire", "extend"],
    S.EXPIRED: ["extend"],
}
AFTER_EXPIRY = EXPIRES_AT + timedelta(hours=1)
NEW_EXPIRY = EXPIRES_AT + timedelta(days=30)


def voucher_in(status: S) -> Voucher:
    """A saved voucher driven through the command path to `status`."""
    voucher = issue()
    if status in (S.BOUND, S.REDEEMED, S.RETURNED):
        bind(voucher)
    if status in (S.REDEEMED, S.RETURNED):
        voucher.redeem(ORDER, ORDER_AMOUNT, NOW)
    if status is S.RETURNED:
        voucher.return_(ORDER, "order cancelled by the merchant", NOW)
    if status is S.EXPIRED:
        voucher.expire(EXPIRES_AT)
    voucher.mark_saved()
    assert voucher.status is status
    return voucher


COMMANDS: dict[str, Callable[[Voucher], None]] = {
    "bind": lambda v: bind(v, order_id="o-2"),
    "release": lambda v: v.release(ORDER, "order cancelled", NOW),
    "redeem": lambda v: v.redeem(ORDER, ORDER_AMOUNT, NOW),
    "return": lambda v: v.return_(ORDER, "refund", NOW),
    "expire": lambda v: v.expire(AFTER_EXPIRY),
    "extend": lambda v: v.extend(NEW_EXPIRY, "came back after a refund", AFTER_EXPIRY),
}

ALLOWED_TRANSITIONS = [
    (S.ISSUED, "bind", S.BOUND, vc.VoucherBound),
    (S.ISSUED, "expire", S.EXPIRED, vc.VoucherExpired),
    (S.ISSUED, "extend", S.ISSUED, vc.VoucherExtended),
    (S.BOUND, "release", S.ISSUED, vc.VoucherReleased),
    (S.BOUND, "redeem", S.REDEEMED, vc.VoucherRedeemed),
    (S.REDEEMED, "return", S.RETURNED, vc.VoucherReturned),
    (S.RETURNED, "bind", S.BOUND, vc.VoucherBound),
    (S.RETURNED, "expire", S.EXPIRED, vc.VoucherExpired),
    (S.RETURNED, "extend", S.RETURNED, vc.VoucherExtended),
    (S.EXPIRED, "extend", S.ISSUED, vc.VoucherExtended),
]


def test_every_table_edge_is_covered_by_a_case() -> None:
    covered = {(state, command) for state, command, _, _ in ALLOWED_TRANSITIONS}
    assert covered == {(state, command) for state, commands in EXPECTED_ALLOWED.items() for command in commands}
    assert {s: vc.VOUCHER_MACHINE.allowed(s) for s in S} == EXPECTED_ALLOWED


@pytest.mark.parametrize("start, command, target, event_type", ALLOWED_TRANSITIONS,
                         ids=[f"{s.value}-{c}" for s, c, _, _ in ALLOWED_TRANSITIONS])
def test_allowed_transition_lands_in_target_and_records_event(start: S, command: str, target: S,
                                                               event_type: type) -> None:
    voucher = voucher_in(start)
    COMMANDS[command](voucher)
    assert voucher.status is target
    [event] = voucher.pending
    assert type(event) is event_type and event.voucher_id == voucher.id
    assert voucher.allowed_commands() == EXPECTED_ALLOWED[target]


REFUSED = [(state, command) for state in S for command in COMMANDS if command not in EXPECTED_ALLOWED[state]]
# Repeating a redeem or a return for the same order is an idempotent no-op (tested below), so the
# refused cases use another order.
REFUSED_COMMANDS: dict[str, Callable[[Voucher], None]] = {
    **COMMANDS,
    "redeem": lambda v: v.redeem("o-2", ORDER_AMOUNT, NOW),
    "return": lambda v: v.return_("o-2", "refund", NOW),
}


@pytest.mark.parametrize("state, command", REFUSED, ids=[f"{s.value}-{c}" for s, c in REFUSED])
def test_refused_transition_names_the_allowed_commands_and_records_nothing(state: S, command: str) -> None:
    voucher = voucher_in(state)
    with pytest.raises(InvalidTransition) as caught:
        REFUSED_COMMANDS[command](voucher)
    assert caught.value.allowed == EXPECTED_ALLOWED[state]
    assert caught.value.details["current_state"] == state.value
    assert voucher.pending == [] and voucher.status is state


def test_commands_on_a_voucher_that_does_not_exist_are_not_found() -> None:
    with pytest.raises(NotFound):
        Voucher("v-404").expire(NOW)
    with pytest.raises(NotFound):
        Voucher("v-404").value_for(ORDER_AMOUNT)
    assert Voucher("v-404").allowed_commands() == []


def test_expiry_is_refused_before_expires_at_and_allowed_at_exactly_expires_at() -> None:
    voucher = issue()
    with pytest.raises(RuleViolation) as caught:
        voucher.expire(EXPIRES_AT - timedelta(microseconds=1))
    assert caught.value.field == "at"
    voucher.expire(EXPIRES_AT)
    assert voucher.status is S.EXPIRED
    assert voucher.pending[0].status_before is S.ISSUED


def test_binding_checks_usability_and_names_the_field() -> None:
    voucher = issue(terms=amount_terms(10000, min_spend=twd(200000)))
    with pytest.raises(RuleViolation) as caught:
        bind(voucher)
    assert caught.value.field == "order_amount" and "at least TWD 2,000.00" in caught.value.rule
    with pytest.raises(RuleViolation) as expired:
        bind(issue(), at=EXPIRES_AT)
    assert expired.value.field == "at"
    with pytest.raises(RuleViolation) as balance:
        bind(issue(terms=amount_terms(10000, combinable_with_balance=False)), using_balance=True)
    assert balance.value.field == "using_balance"
    with pytest.raises(RuleViolation) as other:
        issue(customer_id="c-2").bind(ORDER, customer_id=CUSTOMER, order_amount=ORDER_AMOUNT, product_line=LINE,
                                      using_balance=False, at=NOW)
    assert other.value.field == "customer_id"


def test_binding_records_the_value_on_the_order_and_is_idempotent_for_the_same_order() -> None:
    voucher = issue(terms=discount_terms(1500, cap=15000))
    bind(voucher)
    [event] = voucher.pending
    assert (event.order_id, event.order_amount, event.value, event.choice) == (ORDER, ORDER_AMOUNT, twd(15000), None)
    bind(voucher)
    assert len(voucher.pending) == 1
    with pytest.raises(InvalidTransition):
        bind(voucher, order_id="o-2")


def test_release_redeem_and_return_must_name_the_voucher_s_order() -> None:
    voucher = voucher_in(S.BOUND)
    for command in (lambda: voucher.release("o-2", "x", NOW), lambda: voucher.redeem("o-2", ORDER_AMOUNT, NOW)):
        with pytest.raises(RuleViolation) as caught:
            command()
        assert caught.value.field == "order_id"
    voucher.redeem(ORDER, ORDER_AMOUNT, NOW)
    with pytest.raises(RuleViolation):
        voucher.return_("o-2", "x", NOW)


def test_redeem_values_the_voucher_on_the_amount_at_capture() -> None:
    voucher = issue(terms=discount_terms(1500, cap=15000))
    bind(voucher)
    voucher.redeem(ORDER, twd(60000), NOW)  # the final bill was smaller than the estimate
    assert (voucher.redeemed_value, voucher.times_redeemed) == (twd(9000), 1)


def test_redeem_is_idempotent_and_conflicts_on_another_amount() -> None:
    voucher = voucher_in(S.REDEEMED)
    voucher.redeem(ORDER, ORDER_AMOUNT, NOW)
    assert voucher.pending == []
    with pytest.raises(Conflict):
        voucher.redeem(ORDER, twd(1), NOW)


def test_redeem_refuses_an_amount_below_the_min_spend() -> None:
    voucher = issue(terms=amount_terms(10000, min_spend=twd(100000)))
    bind(voucher)
    with pytest.raises(RuleViolation) as caught:
        voucher.redeem(ORDER, twd(99999), NOW)
    assert caught.value.field == "order_amount"


def test_a_voucher_bound_in_time_is_honoured_at_capture_after_its_expiry() -> None:
    voucher = issue()
    bind(voucher, at=EXPIRES_AT - timedelta(minutes=5))
    voucher.redeem(ORDER, ORDER_AMOUNT, EXPIRES_AT + timedelta(minutes=5))
    assert voucher.status is S.REDEEMED


def test_release_then_bind_elsewhere_and_repeated_release_is_a_no_op() -> None:
    voucher = voucher_in(S.BOUND)
    voucher.release(ORDER, "another voucher was bound instead", NOW)
    voucher.release(ORDER, "the same release again", NOW)
    assert len(voucher.pending) == 1 and voucher.status is S.ISSUED and voucher.bound_order_id is None
    bind(voucher, order_id="o-2")
    assert voucher.bound_order_id == "o-2"


def test_a_voucher_returned_after_its_expiry_says_so_and_can_then_be_extended() -> None:
    voucher = voucher_in(S.REDEEMED)
    voucher.return_(ORDER, "merchant cancelled", AFTER_EXPIRY)
    voucher.return_(ORDER, "merchant cancelled", AFTER_EXPIRY)  # the same return reported twice
    [returned] = voucher.pending
    assert returned.past_expiry is True and returned.expires_at == EXPIRES_AT
    assert reasons(voucher, at=AFTER_EXPIRY) == [UnusableReason.EXPIRED]
    voucher.extend(AFTER_EXPIRY + timedelta(days=7), "seed 五: extended because it came back expired", AFTER_EXPIRY)
    assert voucher.status is S.RETURNED and reasons(voucher, at=AFTER_EXPIRY) == []


def test_a_voucher_returned_in_time_is_not_past_expiry() -> None:
    voucher = voucher_in(S.REDEEMED)
    voucher.return_(ORDER, "refund", NOW)
    assert voucher.pending[0].past_expiry is False
    assert reasons(voucher) == []


def test_an_expired_returned_voucher_goes_back_to_returned_when_extended() -> None:
    voucher = voucher_in(S.RETURNED)
    voucher.expire(EXPIRES_AT)
    voucher.extend(NEW_EXPIRY, "goodwill", AFTER_EXPIRY)
    assert voucher.status is S.RETURNED and voucher.expires_at == NEW_EXPIRY


@pytest.mark.parametrize("new_expiry, at, rule_part", [
    (EXPIRES_AT, NOW, "later than the current expiry"),
    (EXPIRES_AT - timedelta(days=1), NOW, "later than the current expiry"),
    (EXPIRES_AT + timedelta(hours=1), EXPIRES_AT + timedelta(hours=2), "future"),
])
def test_extension_must_move_the_expiry_later_and_into_the_future(new_expiry: datetime, at: datetime,
                                                                   rule_part: str) -> None:
    voucher = issue()
    with pytest.raises(RuleViolation) as caught:
        voucher.extend(new_expiry, "x", at)
    assert caught.value.field == "new_expires_at" and rule_part in caught.value.rule
    with pytest.raises(RuleViolation) as naive:
        voucher.extend(datetime(2026, 1, 1), "x", NOW)
    assert naive.value.field == "new_expires_at"
