"""Property tests: for random tender mixes, totals, fault parties, times and policies, money is conserved.

captured = kept + refunded + penalty (+ vouchers returned, which are value, not money);
nothing is negative; no refund above what was paid online; refunds go back only to tenders
that were used, never more than each paid, in the seed's priority.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.domain.money import Money
from services.payments.domain.events import Tender, TenderKind
from services.payments.domain.policy import CancellationPolicy, ExpiredVoucherAction, PenaltyWindow
from services.payments.domain.settlement import (
    APPLY_PRIORITY,
    REFUND_PRIORITY,
    plan_cancellation_refund,
    plan_settlement,
)
from tests.unit.payments import HOUR, NOW, POLICY

AMOUNT = st.integers(min_value=1, max_value=10**9)


@st.composite
def tender_mixes(draw: st.DrawFn, min_size: int = 0) -> list[Tender]:
    kinds = draw(st.lists(st.sampled_from(list(TenderKind)), min_size=min_size, max_size=7))
    tenders = []
    for i, kind in enumerate(kinds):
        expires = None
        if kind is TenderKind.VOUCHER and draw(st.booleans()):
            expires = NOW + timedelta(hours=draw(st.integers(min_value=-30 * 24, max_value=60 * 24)))
        tenders.append(Tender(kind=kind, amount=Money(amount=draw(AMOUNT), currency="TWD"),
                              reference=f"{kind.value}-{i}", expires_at=expires))
    return tenders


@st.composite
def policies(draw: st.DrawFn) -> CancellationPolicy:
    hours = sorted(set(draw(st.lists(st.integers(min_value=-24, max_value=24 * 10), max_size=4))))
    windows = []
    for h in hours:
        den = draw(st.integers(min_value=1, max_value=7))
        windows.append(PenaltyWindow(below_hours=h, rate_numerator=draw(st.integers(min_value=0, max_value=den)),
                                     rate_denominator=den))
    return CancellationPolicy.model_validate({
        **POLICY.model_dump(), "penalty_windows": [w.model_dump() for w in windows],
        "expired_voucher_action": draw(st.sampled_from(list(ExpiredVoucherAction))),
        "voucher_grace_days": draw(st.integers(min_value=0, max_value=10))})


def _key(t: Tender) -> tuple[TenderKind, str]:
    return (t.kind, t.reference)


@settings(max_examples=400, deadline=None)
@given(prepaid=tender_mixes(), total=st.integers(min_value=0, max_value=5 * 10**9))
def test_settlement_conserves_money_and_follows_the_priority(prepaid: list[Tender], total: int) -> None:
    plan = plan_settlement(Money(amount=total, currency="TWD"), prepaid)
    captured = sum(t.amount.amount for t in prepaid)

    assert captured == plan.applied_total.amount + plan.refunded.amount
    assert plan.applied_total.amount + plan.shortfall.amount == total
    assert min(plan.applied_total.amount, plan.refunded.amount, plan.shortfall.amount) >= 0
    assert plan.shortfall.amount == max(0, total - captured)

    # Every prepaid tender is accounted for exactly: applied + refunded = what it paid.
    by_tender = {_key(t): t.amount.amount for t in prepaid}
    used: dict[tuple[TenderKind, str], int] = {}
    for line in [*plan.applied, *(r for r in plan.refunds)]:
        assert _key(line) in by_tender, "only tenders that were used"
        assert line.amount.amount > 0
        used[_key(line)] = used.get(_key(line), 0) + line.amount.amount
    assert used == by_tender

    # Priority: no tender is refunded while one that ranks later in the deduction order is applied.
    refunded_ranks = [APPLY_PRIORITY.index(r.kind) for r in plan.refunds]
    applied_ranks = [APPLY_PRIORITY.index(t.kind) for t in plan.applied]
    if refunded_ranks and applied_ranks:
        assert min(refunded_ranks) >= max(applied_ranks)


@settings(max_examples=600, deadline=None)
@given(prepaid=tender_mixes(), fault=st.sampled_from(["customer", "merchant", "platform"]),
       T=st.integers(min_value=-3 * 24 * HOUR, max_value=6 * 24 * HOUR), policy=policies(),
       complained=st.booleans(), tenure=st.integers(min_value=0, max_value=3000),
       dispatch_attempts=st.integers(min_value=0, max_value=6),
       reason=st.sampled_from(["", "no_merchant_available", "customer_request"]))
def test_cancellation_conserves_money_and_never_refunds_more_than_was_paid_online(
        prepaid: list[Tender], fault: str, T: int, policy: CancellationPolicy, complained: bool, tenure: int,
        dispatch_attempts: int, reason: str) -> None:
    plan = plan_cancellation_refund(
        prepaid, fault_party=fault, seconds_before_service_start=T, policy=policy, now=NOW, reason_code=reason,
        complained=complained, customer_tenure_days=tenure, dispatch_attempts=dispatch_attempts,
        lifetime_value=Money(amount=tenure * 10000, currency="TWD"))
    captured = sum(t.amount.amount for t in prepaid)
    online = sum(t.amount.amount for t in prepaid if t.kind is not TenderKind.VOUCHER)
    vouchers_back = sum(v.amount.amount for v in plan.vouchers_returned)

    # conservation: captured = kept + refunded + penalty (+ vouchers returned as vouchers)
    assert captured == plan.captured.amount
    assert captured == plan.kept.amount + plan.refunded.amount + plan.penalty.amount + vouchers_back
    assert online == plan.online_paid.amount == plan.refunded.amount + plan.penalty.amount
    # nothing negative
    amounts = [plan.kept, plan.refunded, plan.penalty, plan.merchant_compensation,
               *(r.amount for r in plan.refunds), *(c.amount for c in plan.compensation_vouchers)]
    assert all(m.amount >= 0 for m in amounts)
    # the safety rule
    assert plan.refunded.amount <= online
    # refunds only to money tenders that were used, each at most once and never above what it paid
    by_tender = {_key(t): t for t in prepaid}
    seen = set()
    for r in plan.refunds:
        assert _key(r) in by_tender and r.tender == by_tender[_key(r)]
        assert r.kind is not TenderKind.VOUCHER
        assert 0 < r.amount.amount <= r.tender.amount.amount
        assert _key(r) not in seen
        seen.add(_key(r))
    # refund priority: a tender gets something only when every tender before it got everything
    money = sorted((t for t in prepaid if t.kind is not TenderKind.VOUCHER),
                   key=lambda t: REFUND_PRIORITY.index(t.kind))
    back = {_key(r): r.amount.amount for r in plan.refunds}
    for earlier, later in pairwise(money):
        if back.get(_key(later), 0):
            assert back.get(_key(earlier), 0) == earlier.amount.amount
    # every voucher is either returned or forfeited, never both
    vouchers = {_key(t) for t in prepaid if t.kind is TenderKind.VOUCHER}
    returned = {(TenderKind.VOUCHER, v.reference) for v in plan.vouchers_returned}
    forfeited = {_key(t) for t in plan.vouchers_forfeited}
    assert returned | forfeited == vouchers and not returned & forfeited

    if fault == "customer":
        rate = policy.penalty_rate(T)
        assert plan.penalty.amount == online * rate.numerator // rate.denominator
        assert plan.compensation_vouchers == [] or all(
            c.rule.value == "voucher_expired_on_return" for c in plan.compensation_vouchers)
        assert (plan.merchant_compensation.amount > 0) <= (not prepaid)
    else:
        assert plan.penalty.amount == 0 and plan.refunded.amount == online and not forfeited
        assert plan.merchant_compensation.amount == 0
    assert plan.merchant_fault_recorded is (fault == "merchant")
