"""Unit tests of the payments domain; shared builders live here so every test file reads the same story.

The story: on Monday 2025-03-10 at 09:00 (Taipei) customer c-1 orders dish-washing for
Tuesday 14:00, estimated at TWD 1,200.00, and must prepay within 15 minutes. The prepayment
is a TWD 100.00 voucher, TWD 500.00 of member balance and TWD 600.00 by card. The merchant
m-1 bills TWD 1,500.00 after the service. The cancellation policy is the seed's (section 五).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from libs.domain.money import Money
from services.payments.domain.events import Tender, TenderKind
from services.payments.domain.policy import (
    CancellationPolicy,
    CompensationAmounts,
    CompensationWindow,
    ExpiredVoucherAction,
    HighValueCustomer,
    PenaltyWindow,
)
from services.payments.domain.transaction import Transaction

TZ = ZoneInfo("Asia/Taipei")
NOW = datetime(2025, 3, 10, 9, 0, tzinfo=TZ)
SOON = NOW + timedelta(minutes=5)
DEADLINE = NOW + timedelta(minutes=15)
SERVICE_START = datetime(2025, 3, 11, 14, 0, tzinfo=TZ)
SERVICE_END = datetime(2025, 3, 11, 16, 0, tzinfo=TZ)

HOUR = 3600
MINUTE = 60

ORDER = "o-1"
CUSTOMER = "c-1"
MERCHANT = "m-1"
PREPAY_BILL = "bill-pre-1"
FINAL_BILL = "bill-fin-1"


def twd(amount: int) -> Money:
    """TWD in minor units: twd(60000) is TWD 600.00."""
    return Money(amount=amount, currency="TWD")


def card(amount: int, ref: str = "pi_1") -> Tender:
    return Tender(kind=TenderKind.THIRD_PARTY, amount=twd(amount), reference=ref)


def balance(amount: int, ref: str = "wal-1") -> Tender:
    return Tender(kind=TenderKind.MEMBER_BALANCE, amount=twd(amount), reference=ref)


def voucher(amount: int, ref: str = "v-1", expires_at: datetime | None = None) -> Tender:
    return Tender(kind=TenderKind.VOUCHER, amount=twd(amount), reference=ref, expires_at=expires_at)


def cash(amount: int, ref: str = "rcpt-1") -> Tender:
    return Tender(kind=TenderKind.CASH, amount=twd(amount), reference=ref)


ESTIMATE = twd(120000)
PREPAID = [voucher(10000), balance(50000), card(60000)]  # = ESTIMATE
BILL_TOTAL = twd(150000)  # TWD 300.00 more than prepaid: a shortfall

# The seed's policy (五): < 24 h full, 24-48 h half, >= 48 h free.
POLICY = CancellationPolicy(
    version="test-2025", effective_from=datetime(2025, 3, 1, tzinfo=TZ), currency="TWD",
    penalty_windows=[PenaltyWindow(below_hours=24, rate_numerator=1, rate_denominator=1),
                     PenaltyWindow(below_hours=48, rate_numerator=1, rate_denominator=2)],
    merchant_compensation=[CompensationWindow(below_hours=24, amount=30000),
                           CompensationWindow(below_hours=48, amount=15000)],
    voucher_grace_days=3, voucher_extension_days=30, expired_voucher_action=ExpiredVoucherAction.EXTEND,
    compensation_voucher_valid_days=90,
    compensation=CompensationAmounts(loyal_customer_complaint=20000, no_merchant_available=10000,
                                     late_cancellation=10000),
    close_to_start_hours=24, high_value=HighValueCustomer(min_tenure_days=365, min_lifetime_value=2000000),
    dispatch_attempts_threshold=3)

# The same, but a voucher that would come back expired is replaced by a compensation voucher.
POLICY_COMPENSATE = CancellationPolicy.model_validate(
    {**POLICY.model_dump(), "version": "test-2025-c", "expired_voucher_action": "compensate"})

# An older version with other windows: < 12 h half, 12-24 h a quarter, >= 24 h free.
OLD_POLICY = CancellationPolicy.model_validate(
    {**POLICY.model_dump(), "version": "test-2024", "effective_from": datetime(2024, 1, 1, tzinfo=TZ),
     "penalty_windows": [{"below_hours": 12, "rate_numerator": 1, "rate_denominator": 2},
                         {"below_hours": 24, "rate_numerator": 1, "rate_denominator": 4}]})


def open_transaction(*, prepay: bool = True, placed_at: datetime = NOW, policy: CancellationPolicy = POLICY,
                     merchant_id: str | None = MERCHANT) -> Transaction:
    """A transaction opened for a new order (its TransactionOpened is pending)."""
    return Transaction.open(ORDER, customer_id=CUSTOMER, placed_at=placed_at, estimated_total=ESTIMATE,
                            policy_version=policy.version, at=placed_at, merchant_id=merchant_id,
                            prepayment_bill_id=PREPAY_BILL if prepay else None,
                            payment_deadline=placed_at + timedelta(minutes=15) if prepay else None)


CANCEL_EARLY: dict[str, Any] = {"fault_party": "customer", "seconds_before_service_start": 72 * HOUR,
                                "reason_code": "customer_request", "policy": POLICY, "at": SOON}


def transaction_in(state: str, *, attempt: bool = False, dispute: str | None = None,
                   online: bool = False, reserved: bool = False) -> Transaction:
    """A transaction driven through the command path to `state`, saved (no pending events).

    `state` is a TransactionStatus value, or `billed_awaiting_cash` (settled in cash, not yet
    confirmed), `billed_unprepaid` (billed without a prepayment). `attempt` leaves a payment
    attempt open; `dispute` leaves a dispute open; `online` prepays a confirmed one too (by card,
    balance and voucher; the shortfall in cash), and cancels a refunded one late (a penalty kept).
    """
    prepaid = state not in ("voided", "confirmed", "billed_awaiting_cash", "billed_unprepaid") or online
    tx = open_transaction(prepay=prepaid)
    if state in ("prepaid", "billed", "paid", "refunded") or (online and state == "confirmed"):
        tx.capture_prepayment(PREPAID, at=SOON)
    if state in ("billed", "paid", "confirmed", "billed_awaiting_cash", "billed_unprepaid"):
        tx.bill(FINAL_BILL, 1, BILL_TOTAL, SERVICE_END)
    if state == "paid":
        tx.settle(method="third_party", reference="pi_2", at=SERVICE_END)
    if state in ("confirmed", "billed_awaiting_cash"):
        tx.settle(method="cash", reference="rcpt-9", at=SERVICE_END)
    if state == "confirmed":
        tx.confirm_cash(MERCHANT, SERVICE_END)
    if state in ("refunded", "voided"):
        # `online`: cancelled by the customer under 24 h before the start, so the penalty keeps money
        # that customer service may still refund.
        tx.cancel(**({**CANCEL_EARLY, "seconds_before_service_start": 10 * HOUR} if online else CANCEL_EARLY))
    if reserved:  # unpaid: the voucher and the balance of PREPAID reserved, the card part due at the cashier
        tx.reserve_prepayment(PREPAID[:2], at=SOON)
    if attempt:
        due = ESTIMATE if tx.status.value == "unpaid" else tx.preview_settlement().shortfall
        tx.start_attempt("att-1", due, "credit_card", SOON)
    if dispute:
        tx.freeze_refunds(dispute, SOON)
    tx.mark_saved()
    return tx


def lines(refunds: Any) -> list[tuple[str, str, int]]:
    """Refund or tender lines as (kind, reference, amount) for exact comparison."""
    return [(r.kind.value, r.reference, r.amount.amount) for r in refunds]
