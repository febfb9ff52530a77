"""Wallet commands: top-up bonus tiers, debit split and idempotency, refunds to the same buckets, withdrawal."""

from __future__ import annotations

import pytest

from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.domain.money import Money
from services.payments.domain.wallet import (
    Wallet,
    WalletDebited,
    WalletOpened,
    WalletPaidInWithdrawn,
    WalletRefundCredited,
    WalletToppedUp,
)
from tests.unit.payments_wallet import (
    BONUS_FIRST,
    CUSTOMER,
    NOW,
    ORDER,
    POLICY,
    funded_wallet,
    open_wallet,
    tier,
    twd,
)


def balances(wallet: Wallet) -> tuple[int, int, int]:
    b = wallet.balance
    return b.paid_in.amount, b.bonus.amount, b.total.amount


# --- open and queries ---------------------------------------------------------------------------


def test_open_records_the_currency_and_starts_empty() -> None:
    wallet = Wallet.open(CUSTOMER, "TWD", NOW)
    [opened] = wallet.pending
    assert isinstance(opened, WalletOpened) and opened.customer_id == CUSTOMER and opened.currency == "TWD"
    assert wallet.stream_id == "wallet-c-1"
    assert balances(wallet) == (0, 0, 0)
    assert wallet.is_member is False
    assert wallet.can_pay(twd(0)) and not wallet.can_pay(twd(1))
    assert wallet.allowed_commands() == ["capture_hold", "credit_refund", "debit", "hold", "release_hold", "top_up",
                                         "withdraw_paid_in"]


def test_an_unopened_wallet_is_not_found_and_cannot_pay() -> None:
    wallet = Wallet(CUSTOMER)
    assert wallet.allowed_commands() == []
    assert wallet.can_pay(twd(1)) is False and wallet.is_member is False
    with pytest.raises(NotFound):
        wallet.top_up(twd(100000), "tu-1", NOW, POLICY)
    with pytest.raises(NotFound):
        _ = wallet.balance


def test_open_refuses_an_unknown_currency() -> None:
    with pytest.raises(RuleViolation) as caught:
        Wallet.open(CUSTOMER, "XYZ", NOW)
    assert caught.value.field == "currency"


def test_membership_starts_with_the_first_top_up_and_can_pay_checks_the_total_and_currency() -> None:
    wallet = funded_wallet(50000)
    assert wallet.is_member is True
    assert wallet.can_pay(twd(50000)) and not wallet.can_pay(twd(50001))
    assert wallet.can_pay(Money(amount=1, currency="USD")) is False


# --- top-up bonus tiers -------------------------------------------------------------------------

# (paid in, expected bonus, expected tier) with tiers 1,000 -> 100 and 3,000 -> 400.
TIER_CASES = [
    (1, 0, None),
    (99999, 0, None),           # 999.99: just below the first threshold
    (100000, 10000, "t1000"),   # exactly 1,000
    (100001, 10000, "t1000"),
    (200000, 10000, "t1000"),   # 2,000: the bonus is per tier, not per multiple
    (299999, 10000, "t1000"),
    (300000, 40000, "t3000"),   # exactly 3,000
    (900000, 40000, "t3000"),   # above the highest tier
]


@pytest.mark.parametrize("paid_in, bonus, tier_code", TIER_CASES, ids=[str(c[0]) for c in TIER_CASES])
def test_top_up_bonus_is_the_highest_tier_reached(paid_in: int, bonus: int, tier_code: str | None) -> None:
    wallet = open_wallet()
    wallet.top_up(twd(paid_in), "tu-1", NOW, POLICY)
    [event] = wallet.pending
    assert isinstance(event, WalletToppedUp)
    assert (event.paid_in, event.bonus) == (twd(paid_in), twd(bonus))
    assert (event.tier.code if event.tier else None) == tier_code
    assert event.policy_version == "test-3"
    assert balances(wallet) == (paid_in, bonus, paid_in + bonus)
    assert event.balance_after == wallet.balance


def test_tiers_in_any_order_in_the_policy_give_the_same_bonus() -> None:
    shuffled = POLICY.model_copy(update={"top_up_tiers": list(reversed(POLICY.top_up_tiers))})
    assert shuffled.tier_for(twd(350000)) == tier("t3000", 300000, 40000)
    assert shuffled.tier_for(twd(150000)) == tier("t1000", 100000, 10000)


def test_a_top_up_records_the_tier_as_it_was_so_later_policies_do_not_change_it() -> None:
    wallet = open_wallet()
    wallet.top_up(twd(300000), "tu-1", NOW, POLICY)
    richer = POLICY.model_copy(update={"version": "test-4", "top_up_tiers": [tier("t3000", 300000, 60000)]})
    wallet.top_up(twd(300000), "tu-2", NOW, richer)
    first, second = wallet.pending
    assert (first.bonus, first.policy_version) == (twd(40000), "test-3")
    assert (second.bonus, second.policy_version, second.tier.code) == (twd(60000), "test-4", "t3000")
    assert balances(wallet) == (600000, 100000, 700000)


def test_top_up_is_idempotent_per_reference_and_conflicts_on_another_amount() -> None:
    wallet = funded_wallet(100000)
    wallet.top_up(twd(100000), "tu-1", NOW, POLICY)
    assert wallet.pending == []
    with pytest.raises(Conflict):
        wallet.top_up(twd(200000), "tu-1", NOW, POLICY)


@pytest.mark.parametrize("amount, field", [(twd(0), "amount"), (twd(-5), "amount"),
                                           (Money(amount=100000, currency="USD"), "amount.currency")])
def test_top_up_refuses_non_positive_or_foreign_money(amount: Money, field: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        open_wallet().top_up(amount, "tu-1", NOW, POLICY)
    assert caught.value.field == field


# --- debits -------------------------------------------------------------------------------------

# After topping up 1,000 (+100 bonus): (amount, policy, from paid-in, from bonus).
DEBIT_CASES = [
    (30000, POLICY, 30000, 0),
    (100000, POLICY, 100000, 0),
    (105000, POLICY, 100000, 5000),
    (110000, POLICY, 100000, 10000),
    (5000, BONUS_FIRST, 0, 5000),
    (10000, BONUS_FIRST, 0, 10000),
    (30000, BONUS_FIRST, 20000, 10000),
]


@pytest.mark.parametrize("amount, policy, paid_in, bonus", DEBIT_CASES,
                         ids=[f"{c[0]}-{c[1].spend_order[0].value}-first" for c in DEBIT_CASES])
def test_debit_takes_from_the_buckets_in_the_spend_order_and_records_the_split(amount, policy, paid_in,
                                                                              bonus) -> None:
    wallet = funded_wallet(100000)
    wallet.debit(twd(amount), ORDER, "pay-1", NOW, policy)
    [event] = wallet.pending
    assert isinstance(event, WalletDebited)
    assert (event.from_paid_in, event.from_bonus) == (twd(paid_in), twd(bonus))
    assert event.spend_order == policy.spend_order and event.policy_version == policy.version
    assert balances(wallet) == (100000 - paid_in, 10000 - bonus, 110000 - amount)
    assert event.balance_after == wallet.balance


def test_preview_debit_shows_the_split_without_recording() -> None:
    wallet = funded_wallet(100000)
    split = wallet.preview_debit(twd(105000), POLICY)
    assert (split.paid_in, split.bonus) == (twd(100000), twd(5000))
    assert wallet.pending == []


def test_debit_above_the_total_names_the_available_balance() -> None:
    wallet = funded_wallet(100000)
    with pytest.raises(RuleViolation) as caught:
        wallet.debit(twd(110001), ORDER, "pay-1", NOW, POLICY)
    assert caught.value.field == "amount"
    assert "TWD 1,100.00" in caught.value.rule and "paid-in TWD 1,000.00" in caught.value.rule
    assert "bonus TWD 100.00" in caught.value.rule
    assert wallet.pending == []


def test_debit_is_idempotent_per_order_and_reference() -> None:
    wallet = funded_wallet(100000)
    wallet.debit(twd(60000), ORDER, "pay-1", NOW, POLICY)
    wallet.mark_saved()
    wallet.debit(twd(60000), ORDER, "pay-1", NOW, POLICY)  # a retry, even though 600 more would not fit
    assert wallet.pending == []
    with pytest.raises(Conflict):
        wallet.debit(twd(50000), ORDER, "pay-1", NOW, POLICY)
    wallet.debit(twd(50000), "o-2", "pay-1", NOW, POLICY)  # the same reference on another order is another debit
    assert balances(wallet) == (0, 0, 0)


@pytest.mark.parametrize("amount, field", [(twd(0), "amount"), (Money(amount=1, currency="JPY"), "amount.currency")])
def test_debit_refuses_non_positive_or_foreign_money(amount: Money, field: str) -> None:
    with pytest.raises(RuleViolation) as caught:
        funded_wallet(100000).debit(amount, ORDER, "pay-1", NOW, POLICY)
    assert caught.value.field == field


# --- refunds of debits --------------------------------------------------------------------------


def debited(amount: int, policy=POLICY, *top_ups: int) -> Wallet:
    wallet = funded_wallet(*(top_ups or (100000,)))
    wallet.debit(twd(amount), ORDER, "pay-1", NOW, policy)
    wallet.mark_saved()
    return wallet


def test_a_full_refund_restores_each_bucket_exactly() -> None:
    wallet = debited(105000)  # 1,000 paid-in + 50 bonus
    wallet.credit_refund(twd(105000), ORDER, "pay-1", NOW)
    [event] = wallet.pending
    assert isinstance(event, WalletRefundCredited)
    assert (event.to_paid_in, event.to_bonus) == (twd(100000), twd(5000))
    assert balances(wallet) == (100000, 10000, 110000)


def test_a_partial_refund_returns_paid_in_first_then_bonus() -> None:
    wallet = debited(105000)
    wallet.credit_refund(twd(99000), ORDER, "pay-1", NOW)
    wallet.credit_refund(twd(3000), ORDER, "pay-1", NOW)
    first, second = wallet.pending
    assert (first.to_paid_in, first.to_bonus) == (twd(99000), twd(0))
    assert (second.to_paid_in, second.to_bonus) == (twd(1000), twd(2000))
    assert wallet.refundable(ORDER, "pay-1") == twd(3000)


def test_refunding_a_bonus_first_debit_puts_the_bonus_back_into_the_bonus_bucket() -> None:
    wallet = debited(30000, BONUS_FIRST)  # 200 paid-in + 100 bonus
    wallet.credit_refund(twd(30000), ORDER, "pay-1", NOW)
    [event] = wallet.pending
    assert (event.to_paid_in, event.to_bonus) == (twd(20000), twd(10000))
    assert balances(wallet) == (100000, 10000, 110000)


def test_a_refund_never_exceeds_the_debit_minus_earlier_refunds() -> None:
    wallet = debited(50000)
    wallet.credit_refund(twd(30000), ORDER, "pay-1", NOW)
    with pytest.raises(RuleViolation) as caught:
        wallet.credit_refund(twd(20001), ORDER, "pay-1", NOW)
    assert caught.value.field == "amount" and "TWD 200.00" in caught.value.rule
    wallet.credit_refund(twd(20000), ORDER, "pay-1", NOW)
    with pytest.raises(RuleViolation):
        wallet.credit_refund(twd(1), ORDER, "pay-1", NOW)


def test_a_refund_of_an_unknown_debit_names_the_reference() -> None:
    wallet = debited(50000)
    with pytest.raises(RuleViolation) as caught:
        wallet.credit_refund(twd(100), ORDER, "pay-9", NOW)
    assert caught.value.field == "original_debit_reference"
    with pytest.raises(RuleViolation):
        wallet.credit_refund(twd(100), "o-2", "pay-1", NOW)  # the reference belongs to another order


def test_a_refund_with_a_reference_is_idempotent() -> None:
    wallet = debited(50000)
    wallet.credit_refund(twd(20000), ORDER, "pay-1", NOW, reference="rf-1")
    wallet.credit_refund(twd(20000), ORDER, "pay-1", NOW, reference="rf-1")
    assert len(wallet.pending) == 1
    with pytest.raises(Conflict):
        wallet.credit_refund(twd(10000), ORDER, "pay-1", NOW, reference="rf-1")


# --- withdrawal of paid-in money (refund of a top-up) -------------------------------------------


def test_withdrawing_a_whole_top_up_forfeits_its_whole_bonus() -> None:
    wallet = funded_wallet(100000)
    wallet.withdraw_paid_in("tu-1", twd(100000), "wd-1", NOW)
    [event] = wallet.pending
    assert isinstance(event, WalletPaidInWithdrawn)
    assert (event.paid_in, event.bonus_forfeited, event.clawed_back, event.paid_out) == (
        twd(100000), twd(10000), twd(0), twd(100000))
    assert balances(wallet) == (0, 0, 0)


def test_partial_withdrawals_forfeit_bonus_in_proportion_rounded_up_and_exactly_in_total() -> None:
    wallet = funded_wallet(300000)  # 3,000 + 400 bonus
    wallet.withdraw_paid_in("tu-1", twd(100001), "wd-1", NOW)  # 400 x 1000.01 / 3000 = 133.3366... -> 133.34
    wallet.withdraw_paid_in("tu-1", twd(199999), "wd-2", NOW)
    first, second = wallet.pending
    assert first.bonus_forfeited == twd(13334)
    assert second.bonus_forfeited == twd(40000 - 13334)
    assert balances(wallet) == (0, 0, 0)


def test_forfeited_bonus_that_was_already_spent_is_clawed_back_from_the_payout() -> None:
    wallet = funded_wallet(100000)
    wallet.debit(twd(10000), ORDER, "pay-1", NOW, BONUS_FIRST)  # spends the whole bonus
    wallet.withdraw_paid_in("tu-1", twd(50000), "wd-1", NOW)
    _, event = wallet.pending
    assert (event.bonus_forfeited, event.clawed_back, event.paid_out) == (twd(0), twd(5000), twd(45000))
    assert balances(wallet) == (50000, 0, 50000)


def test_withdrawal_is_limited_by_the_top_up_and_by_the_paid_in_balance() -> None:
    wallet = funded_wallet(100000, 50000)
    with pytest.raises(RuleViolation) as caught:
        wallet.withdraw_paid_in("tu-2", twd(50001), "wd-1", NOW)
    assert caught.value.field == "amount"
    wallet.debit(twd(120000), ORDER, "pay-1", NOW, POLICY)  # paid-in balance now 300
    assert wallet.withdrawable("tu-1") == twd(30000)
    with pytest.raises(RuleViolation):
        wallet.withdraw_paid_in("tu-1", twd(30001), "wd-1", NOW)
    with pytest.raises(RuleViolation) as unknown:
        wallet.withdraw_paid_in("tu-9", twd(1), "wd-1", NOW)
    assert unknown.value.field == "top_up_reference"


def test_withdrawal_is_idempotent_per_reference() -> None:
    wallet = funded_wallet(100000)
    wallet.withdraw_paid_in("tu-1", twd(40000), "wd-1", NOW)
    wallet.withdraw_paid_in("tu-1", twd(40000), "wd-1", NOW)
    assert len(wallet.pending) == 1
    with pytest.raises(Conflict):
        wallet.withdraw_paid_in("tu-1", twd(10000), "wd-1", NOW)
