"""Pure money functions of settlement and cancellation (seed 三 and 五): no aggregates, no I/O.

Definitions:
- a Tender is one part of a payment: kind (third_party | member_balance | voucher | cash),
  amount and reference; a voucher tender may carry `expires_at` (first invalid moment);
- captured = the sum of every prepaid tender, vouchers included;
- online_paid = third_party + member_balance + cash: the money the customer paid. Voucher
  value is granted by the platform, so it is never refunded as money nor penalised;
- the deduction order at settlement is voucher > member_balance > cash > third_party (seed
  三.3: 代金券 > 會員余額 > 第三方支付), and the refund order is its exact reverse,
  third_party > cash > member_balance > voucher (seed 五: 第三方支付 > 會員卡 > 代金券). The
  two rules agree: what is deducted first is refunded last, so the privileged tenders the
  platform granted (balance bonuses, vouchers) are the last to come back. Cash, which the
  seed does not rank, sits with third-party payment as money without privilege, after it
  because giving cash back needs a person;
- cash is never refunded to a card or a wallet: a cash refund line (kind `cash`) is handed
  back in cash against the original cash receipt.

All arithmetic is on integer minor units. Every function refuses a tender in another
currency with a RuleViolation naming the field, e.g. `prepaid[1].amount.currency`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from libs.domain.errors import RuleViolation
from libs.domain.money import Money
from services.payments.domain.events import (
    CancellationPlan,
    CompensationRule,
    CompensationVoucher,
    FaultParty,
    Rate,
    Refund,
    SettlementPlan,
    Tender,
    TenderKind,
    VoucherAction,
    VoucherReturn,
)
from services.payments.domain.policy import CancellationPolicy, ExpiredVoucherAction

__all__ = [
    "APPLY_PRIORITY",
    "COLLECTION_METHODS",
    "NO_MERCHANT_AVAILABLE",
    "REFUND_PRIORITY",
    "CancellationPlan",
    "SettlementPlan",
    "cap_refund",
    "captured_total",
    "check_tenders",
    "choose_collection_method",
    "online_paid",
    "penalty_for",
    "plan_cancellation_refund",
    "plan_settlement",
]

K = TenderKind

APPLY_PRIORITY: tuple[TenderKind, ...] = (K.VOUCHER, K.MEMBER_BALANCE, K.CASH, K.THIRD_PARTY)
REFUND_PRIORITY: tuple[TenderKind, ...] = tuple(reversed(APPLY_PRIORITY))

# Seed 四: a shortfall is paid in cash, from the member balance (a member with enough balance)
# or online through a third party. Vouchers are bound when the order is paid, not afterwards.
COLLECTION_METHODS: tuple[TenderKind, ...] = (K.MEMBER_BALANCE, K.CASH, K.THIRD_PARTY)

NO_MERCHANT_AVAILABLE = "no_merchant_available"  # the orders service's reason code for failed dispatch


# --- helpers --------------------------------------------------------------------------------------


def check_tenders(tenders: Sequence[Tender], currency: str, field: str) -> None:
    """Refuse tenders in another currency, of no value, or listed twice (same kind and reference)."""
    seen: set[tuple[TenderKind, str]] = set()
    for i, tender in enumerate(tenders):
        if tender.amount.currency != currency:
            raise RuleViolation(f"{field}[{i}].amount.currency", f"must be {currency}, the currency of the order")
        if tender.amount.amount <= 0:
            raise RuleViolation(f"{field}[{i}].amount", "must be positive")
        key = (tender.kind, tender.reference)
        if key in seen:
            raise RuleViolation(f"{field}[{i}].reference",
                                f"{tender.kind.value} {tender.reference!r} is listed twice")
        seen.add(key)


def captured_total(tenders: Sequence[Tender], currency: str) -> Money:
    """Everything prepaid, vouchers included."""
    return Money(amount=sum(t.amount.amount for t in tenders), currency=currency)


def online_paid(tenders: Sequence[Tender], currency: str) -> Money:
    """The money the customer paid: every tender except vouchers."""
    return Money(amount=sum(t.amount.amount for t in tenders if t.kind.is_money), currency=currency)


def _ordered(tenders: Sequence[Tender], priority: Sequence[TenderKind]) -> list[Tender]:
    # Stable: tenders of one kind keep the order they were given in.
    return sorted(tenders, key=lambda t: priority.index(t.kind))


def _part(tender: Tender, amount: int) -> Tender:
    """The same tender with a smaller amount (the part used)."""
    return Tender(kind=tender.kind, amount=Money(amount=amount, currency=tender.amount.currency),
                  reference=tender.reference, expires_at=tender.expires_at)


def _refund(tender: Tender, amount: int) -> Refund:
    return Refund(kind=tender.kind, amount=Money(amount=amount, currency=tender.amount.currency),
                  reference=tender.reference, tender=tender)


def _name(tender: Tender) -> str:
    return f"{tender.kind.value} {tender.reference}"


def _hours(seconds: int) -> str:
    sign = "-" if seconds < 0 else ""
    h, rest = divmod(abs(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{sign}{h}h{m:02d}m{s:02d}s"


# --- settlement (seed 三.3, 多退少補) ----------------------------------------------------------------


def plan_settlement(total: Money, prepaid: Sequence[Tender]) -> SettlementPlan:
    """Cover the bill total from the prepaid tenders (voucher > member balance > third party),
    refund what is not used along the original path, and name the shortfall."""
    if total.amount < 0:
        raise RuleViolation("total", "must not be negative")
    currency = total.currency
    check_tenders(prepaid, currency, "prepaid")
    captured = captured_total(prepaid, currency)
    lines = [f"bill total {total}; prepaid {captured}"
             + (" (" + ", ".join(f"{_name(t)} {t.amount}" for t in prepaid) + ")" if prepaid else "")]

    remaining = total.amount
    applied: list[Tender] = []
    unused: list[tuple[Tender, int]] = []
    for tender in _ordered(prepaid, APPLY_PRIORITY):
        use = min(remaining, tender.amount.amount)
        remaining -= use
        if use:
            applied.append(_part(tender, use))
            lines.append(f"applied {_name(tender)}: {Money(amount=use, currency=currency)} of {tender.amount}")
        if tender.amount.amount - use:
            unused.append((tender, tender.amount.amount - use))

    refunds = [_refund(tender, rest) for tender, rest in sorted(unused, key=lambda u: REFUND_PRIORITY.index(u[0].kind))]
    for r in refunds:
        how = "returned as voucher value" if r.kind is K.VOUCHER else "refunded along the original path"
        lines.append(f"refund {r.amount} to {_name(r.tender)} ({how})")
    shortfall = Money(amount=remaining, currency=currency)
    if remaining:
        lines.append(f"shortfall {shortfall} to collect: member balance, cash confirmed by the merchant, "
                     "or online payment")
    elif not refunds:
        lines.append("the prepayment covers the bill exactly")
    applied_total = Money(amount=total.amount - remaining, currency=currency)
    refunded = Money(amount=sum(r.amount.amount for r in refunds), currency=currency)
    # Conservation, also checked by SettlementPlan's validator: prepaid = applied + refunded.
    assert captured.amount == applied_total.amount + refunded.amount
    return SettlementPlan(total=total, captured=captured, applied=applied, applied_total=applied_total,
                          refunds=refunds, refunded=refunded, shortfall=shortfall, explanation=lines)


def choose_collection_method(shortfall: Money, *, is_member: bool, member_balance_available: Money | None,
                             requested: TenderKind | str) -> TenderKind:
    """The method that collects the shortfall, or a RuleViolation saying why it cannot (seed 三.1, 四)."""
    try:
        method = TenderKind(requested)
    except ValueError:
        raise RuleViolation("method", "must be one of " + ", ".join(m.value for m in COLLECTION_METHODS)) from None
    if shortfall.amount <= 0:
        raise RuleViolation("method", "nothing to collect: the prepayment covers the bill")
    if method not in COLLECTION_METHODS:
        raise RuleViolation("method", f"a shortfall is collected by {', '.join(m.value for m in COLLECTION_METHODS)}; "
                                      "vouchers are bound when the order is paid")
    if method is K.MEMBER_BALANCE:
        if not is_member:
            raise RuleViolation("method", "the member balance can only be used by a member")
        if member_balance_available is None:
            raise RuleViolation("member_balance_available", "is needed to pay from the member balance")
        if member_balance_available.currency != shortfall.currency:
            raise RuleViolation("member_balance_available.currency",
                                f"must be {shortfall.currency}, the currency of the bill")
        if member_balance_available < shortfall:
            raise RuleViolation("member_balance_available",
                                f"the balance {member_balance_available} does not cover the shortfall {shortfall}")
    return method


# --- cancellation (seed 五) --------------------------------------------------------------------------


def penalty_for(online: Money, rate: Rate) -> Money:
    """rate x online-paid, rounded DOWN: half of an odd amount rounds in the customer's favour."""
    # Floor, not Money.fraction's half-up: the seed's penalty is "at most" the rate, and the
    # minor unit in doubt stays with the customer (TWD 10.01 at 1/2 -> penalty 5.00, refund 5.01).
    return Money(amount=online.amount * rate.numerator // rate.denominator, currency=online.currency)


def cap_refund(requested: Money, online: Money) -> Money:
    """The seed's safety rule (兜底): a money refund never exceeds what was paid online, nor goes below 0."""
    # With vouchers in the mix, a rule computed on the whole prepaid amount (e.g. "refund half
    # of what was prepaid") can exceed the money actually paid; the voucher part is not money.
    return Money(amount=max(0, min(requested.amount, online.amount)), currency=online.currency)


def _voucher_back(tender: Tender, policy: CancellationPolicy, now: datetime,
                  lines: list[str]) -> tuple[VoucherReturn, CompensationVoucher | None]:
    """Give one voucher back; one that would come back expired (or within the grace days) is
    extended or replaced by a compensation voucher of the same value, per the policy."""
    expires = tender.expires_at
    # A voucher is valid while now < expires_at; within the grace days it counts as expired,
    # because the customer could hardly use it before it lapses.
    if expires is None or expires > now + timedelta(days=policy.voucher_grace_days):
        lines.append(f"voucher {tender.reference} {tender.amount} returned as it was")
        return VoucherReturn(reference=tender.reference, amount=tender.amount, tender=tender,
                             action=VoucherAction.RETURNED), None
    if policy.expired_voucher_action is ExpiredVoucherAction.EXTEND:
        # Counted from the later of its expiry and now, so the customer always gets the full extension.
        new_expiry = max(expires, now) + timedelta(days=policy.voucher_extension_days)
        lines.append(f"voucher {tender.reference} {tender.amount} would come back expired "
                     f"({expires.isoformat()}): returned and extended to {new_expiry.isoformat()}")
        return VoucherReturn(reference=tender.reference, amount=tender.amount, tender=tender,
                             action=VoucherAction.EXTENDED, new_expires_at=new_expiry), None
    replacement = CompensationVoucher(
        rule=CompensationRule.VOUCHER_EXPIRED_ON_RETURN, amount=tender.amount,
        expires_at=now + timedelta(days=policy.compensation_voucher_valid_days), replaces=tender.reference,
        detail=f"voucher {tender.reference} expired {expires.isoformat()} and cannot come back as it was")
    lines.append(f"voucher {tender.reference} {tender.amount} would come back expired ({expires.isoformat()}): "
                 f"replaced by a compensation voucher of the same value")
    return VoucherReturn(reference=tender.reference, amount=tender.amount, tender=tender,
                         action=VoucherAction.REPLACED), replacement


def _compensations(policy: CancellationPolicy, *, seconds: int, reason_code: str, dispatch_attempts: int,
                   complained: bool, customer_tenure_days: int, lifetime_value: Money | None, now: datetime,
                   lines: list[str]) -> list[CompensationVoucher]:
    """The compensation vouchers of a merchant/platform-fault cancellation (seed 五, examples 1-3)."""
    expires = now + timedelta(days=policy.compensation_voucher_valid_days)
    granted: list[CompensationVoucher] = []

    def grant(rule: CompensationRule, amount: int, detail: str) -> None:
        if amount <= 0:
            lines.append(f"{rule.value}: applies, but the policy grants nothing for it")
            return
        granted.append(CompensationVoucher(rule=rule, amount=policy.money(amount), expires_at=expires,
                                           detail=detail))
        lines.append(f"compensation voucher {policy.money(amount)} ({rule.value}): {detail}")

    hv = policy.high_value
    value = lifetime_value.amount if lifetime_value is not None else 0
    if complained and customer_tenure_days >= hv.min_tenure_days and value >= hv.min_lifetime_value:
        grant(CompensationRule.LOYAL_CUSTOMER_COMPLAINT, policy.compensation.loyal_customer_complaint,
              f"a customer of {customer_tenure_days} days with lifetime value {policy.money(value)} complained")
    # Seed: 無可派商家, 或者是系統多次派單都無法滿足 - either one is enough.
    if reason_code == NO_MERCHANT_AVAILABLE or dispatch_attempts >= policy.dispatch_attempts_threshold:
        grant(CompensationRule.NO_MERCHANT_AVAILABLE, policy.compensation.no_merchant_available,
              f"no merchant available (reason {reason_code or 'not given'}, {dispatch_attempts} dispatch "
              f"attempt(s), threshold {policy.dispatch_attempts_threshold})")
    if seconds < policy.close_to_start_hours * 3600:
        grant(CompensationRule.LATE_CANCELLATION, policy.compensation.late_cancellation,
              f"cancelled {_hours(seconds)} before the service start "
              f"(less than {policy.close_to_start_hours} h)")
    return granted


def plan_cancellation_refund(prepaid: Sequence[Tender], *, fault_party: FaultParty | str,
                             seconds_before_service_start: int, policy: CancellationPolicy, now: datetime,
                             reason_code: str = "", dispatch_attempts: int = 0, complained: bool = False,
                             customer_tenure_days: int = 0, lifetime_value: Money | None = None) -> CancellationPlan:
    """What a cancellation costs and returns (seed 五), under the policy in force at placement.

    Customer fault: unprepaid -> the platform compensates the merchant, nothing else; prepaid
    -> penalty = rate x online_paid by the window T falls in, the rest of the money refunded
    third_party > cash > member_balance, vouchers returned unless the full penalty applies.
    Merchant or platform fault: everything back, no penalty, compensation vouchers where the
    policy's rules apply; merchant fault is flagged for the merchant's record. Vouchers that
    would come back expired are extended or replaced per the policy in every case.
    """
    try:
        fault = FaultParty(fault_party)
    except ValueError:
        raise RuleViolation("fault_party", "must be one of " + ", ".join(f.value for f in FaultParty)) from None
    if now.tzinfo is None or now.utcoffset() is None:
        raise RuleViolation("now", "must be a time-zone-aware datetime")
    if dispatch_attempts < 0 or customer_tenure_days < 0:
        raise RuleViolation("dispatch_attempts" if dispatch_attempts < 0 else "customer_tenure_days",
                            "must not be negative")
    currency = policy.currency
    check_tenders(prepaid, currency, "prepaid")
    if lifetime_value is not None and lifetime_value.currency != currency:
        raise RuleViolation("lifetime_value.currency", f"must be {currency}, the policy's currency")
    T = seconds_before_service_start
    zero = Money.zero(currency)
    captured = captured_total(prepaid, currency)
    online = online_paid(prepaid, currency)
    vouchers = [t for t in prepaid if t.kind is K.VOUCHER]
    money_tenders = _ordered([t for t in prepaid if t.kind.is_money], REFUND_PRIORITY)
    lines = [f"policy {policy.version}; {fault.value} fault; cancelled {_hours(T)} before the service start; "
             f"prepaid {captured} of which {online} paid online"]

    rate = Rate(numerator=0, denominator=1)
    penalty = zero
    merchant_compensation = zero
    compensation: list[CompensationVoucher] = []
    returned: list[VoucherReturn] = []
    forfeited: list[Tender] = []

    if fault is FaultParty.CUSTOMER and not prepaid:
        # Seed 五: the platform cannot fine an unprepaid customer, so it compensates the merchant
        # itself; the orders service flags the customer for prepayment on future orders.
        merchant_compensation = policy.merchant_compensation_for(T)
        lines.append(f"unprepaid: the platform compensates the merchant {merchant_compensation}"
                     if merchant_compensation.amount else "unprepaid: early enough that nobody is compensated")
        refundable = zero
    elif fault is FaultParty.CUSTOMER:
        window = policy.penalty_window(T)
        rate = window.rate if window else rate
        penalty = penalty_for(online, rate)
        where = f"T < {window.below_hours} h" if window else "after the last penalty window"
        lines.append(f"penalty window {where}: rate {rate} of {online} = {penalty} (rounded down)")
        refundable = cap_refund(online - penalty, online)
        if rate.is_full:
            forfeited = vouchers
            lines.extend(f"voucher {t.reference} {t.amount} forfeited (full penalty)" for t in vouchers)
    else:
        refundable = cap_refund(online, online)
        lines.append(f"{fault.value} fault: full refund along the original path, no penalty")
        compensation = _compensations(
            policy, seconds=T, reason_code=reason_code, dispatch_attempts=dispatch_attempts, complained=complained,
            customer_tenure_days=customer_tenure_days, lifetime_value=lifetime_value, now=now, lines=lines)

    # Money goes back in the refund priority; each tender gets at most what it paid.
    refunds: list[Refund] = []
    left = refundable.amount
    for tender in money_tenders:
        amount = min(left, tender.amount.amount)
        if amount:
            refunds.append(_refund(tender, amount))
            lines.append(f"refund {Money(amount=amount, currency=currency)} to {_name(tender)} (original path)")
        left -= amount
    assert left == 0, "the refundable amount never exceeds the money tenders"

    if not forfeited:
        for tender in vouchers:
            back, replacement = _voucher_back(tender, policy, now, lines)
            returned.append(back)
            if replacement:
                compensation.append(replacement)

    refunded = Money(amount=refundable.amount, currency=currency)
    kept = Money(amount=sum(t.amount.amount for t in forfeited), currency=currency)
    # The invariants (also enforced by CancellationPlan's validator), cheap enough to assert here.
    assert 0 <= refunded.amount <= online.amount, "safety rule: refund <= online paid"
    assert online.amount == refunded.amount + penalty.amount
    assert captured.amount == penalty.amount + refunded.amount + kept.amount + sum(v.amount.amount for v in returned)
    return CancellationPlan(
        fault_party=fault, seconds_before_service_start=T, policy_version=policy.version, was_prepaid=bool(prepaid),
        captured=captured, online_paid=online, penalty_rate=rate, penalty=penalty, refunds=refunds,
        refunded=refunded, vouchers_returned=returned, vouchers_forfeited=forfeited, kept=kept,
        compensation_vouchers=compensation, merchant_compensation=merchant_compensation,
        merchant_fault_recorded=fault is FaultParty.MERCHANT, explanation=lines)
