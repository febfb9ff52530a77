"""Wallet properties under random sequences of top-ups, debits, refunds and withdrawals.

An independent model keeps its own two buckets; after every step the wallet must agree with
it, no bucket may go negative, and each bucket must equal what its own events put in minus
what they took out (paid-in and bonus never mix). At the end, replaying the stored events
gives the same wallet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from services.payments.domain.wallet import (
    Wallet,
    WalletDebited,
    WalletPaidInWithdrawn,
    WalletRefundCredited,
    WalletToppedUp,
)
from tests.unit.payments_wallet import BONUS_FIRST, CUSTOMER, NOW, POLICY, round_trip, state, twd

amounts = st.integers(min_value=1, max_value=400000)


@dataclass
class _ModelDebit:
    order_id: str
    reference: str
    paid_in: int
    bonus: int
    refunded_paid_in: int = 0
    refunded_bonus: int = 0


@dataclass
class _ModelTopUp:
    reference: str
    paid_in: int
    bonus: int
    withdrawn: int = 0


@dataclass
class _Model:
    paid_in: int = 0
    bonus: int = 0
    debits: list[_ModelDebit] = field(default_factory=list)
    top_ups: list[_ModelTopUp] = field(default_factory=list)


def expected_bonus(paid_in: int) -> int:
    """The test's own reading of the tiers: 1,000 -> 100, 3,000 -> 400."""
    return 40000 if paid_in >= 300000 else 10000 if paid_in >= 100000 else 0


class WalletMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.wallet = Wallet.open(CUSTOMER, "TWD", NOW)
        self.stored: list[DomainEvent] = []  # every event, as the store holds it
        self._save()
        self.model = _Model()
        self.counter = 0

    def _save(self) -> None:
        self.stored.extend(self.wallet.pending)
        self.wallet.mark_saved()

    def _next(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    @rule(amount=amounts)
    def top_up(self, amount: int) -> None:
        reference = self._next("tu")
        self.wallet.top_up(twd(amount), reference, NOW, POLICY)
        bonus = expected_bonus(amount)
        self.model.paid_in += amount
        self.model.bonus += bonus
        self.model.top_ups.append(_ModelTopUp(reference, amount, bonus))
        self._save()

    @rule(amount=amounts, bonus_first=st.booleans())
    def debit(self, amount: int, bonus_first: bool) -> None:
        policy = BONUS_FIRST if bonus_first else POLICY
        reference = self._next("pay")
        total = self.model.paid_in + self.model.bonus
        if amount > total:
            try:
                self.wallet.debit(twd(amount), "o-1", reference, NOW, policy)
            except RuleViolation as exc:
                assert exc.field == "amount"
            else:
                raise AssertionError("a debit above the balance was accepted")
            assert self.wallet.pending == []
            return
        self.wallet.debit(twd(amount), "o-1", reference, NOW, policy)
        first, second = ("bonus", "paid_in") if bonus_first else ("paid_in", "bonus")
        taken = {"paid_in": 0, "bonus": 0}
        left = amount
        for bucket in (first, second):
            taken[bucket] = min(left, getattr(self.model, bucket))
            left -= taken[bucket]
        self.model.paid_in -= taken["paid_in"]
        self.model.bonus -= taken["bonus"]
        self.model.debits.append(_ModelDebit("o-1", reference, taken["paid_in"], taken["bonus"]))
        self._save()

    @precondition(lambda self: self.model.debits)
    @rule(pick=st.integers(min_value=0))
    def repeat_a_debit(self, pick: int) -> None:
        debit = self.model.debits[pick % len(self.model.debits)]
        self.wallet.debit(twd(debit.paid_in + debit.bonus), debit.order_id, debit.reference, NOW, POLICY)
        assert self.wallet.pending == []

    @precondition(lambda self: self.model.debits)
    @rule(pick=st.integers(min_value=0), amount=amounts)
    def refund(self, pick: int, amount: int) -> None:
        debit = self.model.debits[pick % len(self.model.debits)]
        refundable = debit.paid_in + debit.bonus - debit.refunded_paid_in - debit.refunded_bonus
        if amount > refundable:
            try:
                self.wallet.credit_refund(twd(amount), debit.order_id, debit.reference, NOW)
            except RuleViolation as exc:
                assert exc.field == "amount"
            else:
                raise AssertionError("a refund above the debit was accepted")
            return
        self.wallet.credit_refund(twd(amount), debit.order_id, debit.reference, NOW)
        to_paid_in = min(amount, debit.paid_in - debit.refunded_paid_in)
        to_bonus = amount - to_paid_in
        debit.refunded_paid_in += to_paid_in
        debit.refunded_bonus += to_bonus
        self.model.paid_in += to_paid_in
        self.model.bonus += to_bonus
        self._save()

    @precondition(lambda self: self.model.top_ups)
    @rule(pick=st.integers(min_value=0), amount=amounts)
    def withdraw(self, pick: int, amount: int) -> None:
        top_up = self.model.top_ups[pick % len(self.model.top_ups)]
        limit = min(top_up.paid_in - top_up.withdrawn, self.model.paid_in)
        reference = self._next("wd")
        if amount > limit:
            try:
                self.wallet.withdraw_paid_in(top_up.reference, twd(amount), reference, NOW)
            except RuleViolation as exc:
                assert exc.field == "amount"
            else:
                raise AssertionError("a withdrawal above the limit was accepted")
            return
        self.wallet.withdraw_paid_in(top_up.reference, twd(amount), reference, NOW)
        [event] = self.wallet.pending
        assert isinstance(event, WalletPaidInWithdrawn)
        assert event.paid_out.amount + event.clawed_back.amount == amount
        assert event.bonus_forfeited.amount <= self.model.bonus
        top_up.withdrawn += amount
        self.model.paid_in -= amount
        self.model.bonus -= event.bonus_forfeited.amount
        self._save()

    @invariant()
    def agrees_with_the_model_and_never_goes_negative(self) -> None:
        balance = self.wallet.balance
        assert (balance.paid_in.amount, balance.bonus.amount) == (self.model.paid_in, self.model.bonus)
        assert balance.paid_in.amount >= 0 and balance.bonus.amount >= 0
        assert balance.total.amount == balance.paid_in.amount + balance.bonus.amount

    @invariant()
    def each_bucket_is_the_sum_of_its_own_movements(self) -> None:
        paid_in = bonus = 0
        debits: dict[str, list[int]] = {}
        for e in self.stored:
            match e:
                case WalletToppedUp():
                    paid_in, bonus = paid_in + e.paid_in.amount, bonus + e.bonus.amount
                case WalletDebited():
                    assert e.from_paid_in.amount + e.from_bonus.amount == e.amount.amount
                    paid_in, bonus = paid_in - e.from_paid_in.amount, bonus - e.from_bonus.amount
                    debits[e.reference] = [e.from_paid_in.amount, e.from_bonus.amount]
                case WalletRefundCredited():
                    # a refund never returns more to a bucket than its debit took from it
                    debits[e.debit_reference][0] -= e.to_paid_in.amount
                    debits[e.debit_reference][1] -= e.to_bonus.amount
                    assert min(debits[e.debit_reference]) >= 0
                    paid_in, bonus = paid_in + e.to_paid_in.amount, bonus + e.to_bonus.amount
                case WalletPaidInWithdrawn():
                    paid_in, bonus = paid_in - e.paid_in.amount, bonus - e.bonus_forfeited.amount
            if hasattr(e, "balance_after"):
                assert (e.balance_after.paid_in.amount, e.balance_after.bonus.amount) == (paid_in, bonus)
        assert (paid_in, bonus) == (self.wallet.paid_in, self.wallet.bonus)

    def teardown(self) -> None:
        replayed = Wallet.rehydrate(self.wallet.id, round_trip(self.stored))
        assert state(replayed) == state(self.wallet)
        assert replayed.version == len(self.stored)


WalletMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=30, deadline=None)
TestWalletProperties = WalletMachine.TestCase
