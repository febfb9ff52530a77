"""Unit tests of the payments wallet and vouchers; shared builders live here.

The story: customer c-1 of the Taipei dish-washing platform tops up her member wallet and
holds a few vouchers; on Monday 2025-03-10 at 09:00 (Taipei) she books a TWD 1,200.00 order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from libs.domain.aggregate import Aggregate
from libs.domain.events import registry
from libs.domain.money import Money
from services.payments.domain.voucher import (
    CompensationGrant,
    Voucher,
    VoucherCategory,
    VoucherKind,
    VoucherTerms,
)
from services.payments.domain.wallet import Bucket, TopUpTier, Wallet, WalletPolicy

TZ = ZoneInfo("Asia/Taipei")
NOW = datetime(2025, 3, 10, 9, 0, tzinfo=TZ)
LATER = NOW + timedelta(hours=1)
CUSTOMER = "c-1"
ORDER = "o-1"
ORDER_AMOUNT_MINOR = 120000  # TWD 1,200.00
LINE = "dishwashing"

# Voucher validity used by default: issued a week ago, valid for 30 days from then.
VALID_FROM = NOW - timedelta(days=7)
EXPIRES_AT = NOW + timedelta(days=23)


def twd(amount: int) -> Money:
    """TWD in minor units: twd(100000) is TWD 1,000.00."""
    return Money(amount=amount, currency="TWD")


ORDER_AMOUNT = twd(ORDER_AMOUNT_MINOR)


def tier(code: str, threshold: int, bonus: int) -> TopUpTier:
    return TopUpTier(code=code, threshold=twd(threshold), bonus=twd(bonus))


# "top up 1,000 get 100", "top up 3,000 get 400"
POLICY = WalletPolicy(version="test-3", currency="TWD",
                      top_up_tiers=[tier("t1000", 100000, 10000), tier("t3000", 300000, 40000)])
BONUS_FIRST = POLICY.model_copy(update={"spend_order": [Bucket.BONUS, Bucket.PAID_IN], "version": "test-3b"})


def open_wallet(customer_id: str = CUSTOMER) -> Wallet:
    """An opened, saved wallet with nothing in it."""
    wallet = Wallet.open(customer_id, "TWD", NOW)
    wallet.mark_saved()
    return wallet


def funded_wallet(*top_ups: int) -> Wallet:
    """A saved wallet after the given top-ups (minor units), references tu-1, tu-2, ..."""
    wallet = open_wallet()
    for i, amount in enumerate(top_ups, start=1):
        wallet.top_up(twd(amount), f"tu-{i}", NOW, POLICY)
    wallet.mark_saved()
    return wallet


def amount_terms(amount_off: int, **changes: Any) -> VoucherTerms:
    """Terms of a fixed-amount voucher (代金券)."""
    base: dict[str, Any] = {"kind": VoucherKind.AMOUNT, "currency": "TWD", "amount_off": twd(amount_off),
                            "combinable_with_balance": True, "valid_from": VALID_FROM, "expires_at": EXPIRES_AT}
    return VoucherTerms(**{**base, **changes})


def discount_terms(percent_off_bp: int, cap: int | None = None, **changes: Any) -> VoucherTerms:
    """Terms of a percentage voucher (折扣券), basis points off, optional cap in minor units."""
    base: dict[str, Any] = {"kind": VoucherKind.DISCOUNT, "currency": "TWD", "percent_off_bp": percent_off_bp,
                            "cap": twd(cap) if cap is not None else None, "combinable_with_balance": True,
                            "valid_from": VALID_FROM, "expires_at": EXPIRES_AT}
    return VoucherTerms(**{**base, **changes})


def issue(voucher_id: str = "v-1", terms: VoucherTerms | None = None, *,
          category: VoucherCategory = VoucherCategory.CAMPAIGN, customer_id: str = CUSTOMER,
          compensation: CompensationGrant | None = None, saved: bool = True) -> Voucher:
    """A voucher issued a week ago through the command path."""
    voucher = Voucher.issue(voucher_id, customer_id=customer_id, category=category,
                            terms=terms or amount_terms(10000), issued_by="ops-1", at=VALID_FROM,
                            compensation=compensation)
    if saved:
        voucher.mark_saved()
    return voucher


def bind(voucher: Voucher, order_id: str = ORDER, amount: Money = ORDER_AMOUNT, at: datetime = NOW,
         using_balance: bool = False) -> None:
    voucher.bind(order_id, customer_id=CUSTOMER, order_amount=amount, product_line=LINE,
                 using_balance=using_balance, at=at)


def state(aggregate: Aggregate) -> dict[str, Any]:
    """Everything an aggregate knows, without bookkeeping (version, pending events)."""
    return {k: v for k, v in vars(aggregate).items() if k not in ("_pending", "version")}


def round_trip(events: list[Any]) -> list[Any]:
    """Events as the store would give them back: JSON data decoded through the registry."""
    return [registry.decode(e.event_type, e.schema_version, e.to_data()) for e in events]
