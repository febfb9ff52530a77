"""Checkout rules of a transaction that are not the Transaction's own (pure: no I/O).

- `plan_prepayment`: which tenders pay an order's prepayment without the cashier (seed 二, 三.3):
  one voucher, bound automatically by the configured preference (or the one the customer picked),
  then the member balance, in the deduction priority voucher > member balance > third party.
  The plan is `covered` when the voucher and the balance pay the whole prepayment (captured at
  once). Otherwise the remainder is named, and either nothing is applied (the default: the
  prepayment is then paid whole at the cashier) or, with `allow_remainder`, the voucher and the
  balance are reserved (Transaction.reserve_prepayment: voucher bound, balance held) and the
  remainder is paid by card at the cashier; the provider's charge of the remainder captures the
  prepayment with every tender in one transaction. Either way the prepayment is captured in one
  piece, and reserved + remainder = prepayment.
- `collection_options`: which methods can collect a settlement's shortfall now (seed 三.1, 四):
  the member balance only for a member whose balance covers it, cash, online third party.
- `require_party`: who may run a payment command (the order's customer or merchant, or the
  platform's own services); the actor and role are the bearer token's (libs/auth).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.domain.errors import RuleViolation
from libs.domain.money import Money
from libs.domain.types import Id, Text
from services.payments.domain.events import Tender, TenderKind
from services.payments.domain.settlement import COLLECTION_METHODS, choose_collection_method
from services.payments.domain.voucher import BindingChoice, Voucher, choose_voucher
from services.payments.domain.wallet import Wallet, WalletPolicy, WalletSplit

__all__ = [
    "CashierMethod",
    "CollectionOption",
    "Forbidden",
    "PrepaymentPlan",
    "VoucherUse",
    "collection_options",
    "plan_prepayment",
    "require_party",
]


class CashierMethod(StrEnum):
    """How the customer pays online at the cashier (third-party providers)."""

    CREDIT_CARD = "credit_card"
    LINE_PAY = "line_pay"
    JKO_PAY = "jko_pay"
    APPLE_PAY = "apple_pay"


class Forbidden(RuleViolation):
    """The actor may not run this command (HTTP 403); names the header at fault. Nothing is stored."""

    code = "forbidden"


# The platform's own callers (a payment gateway adapter, operations tooling) act for anyone.
TRUSTED_ROLES = frozenset({"service", "platform"})


def require_party(role: str, actor: str, *, action: str, roles: Iterable[str], customer_id: str | None = None,
                  merchant_id: str | None = None) -> None:
    """Refuse (Forbidden) unless the role is among `roles` and, for a customer or a merchant, the
    actor is the order's own customer or merchant. `service` and `platform` act for anyone."""
    allowed = sorted(set(roles))
    if role not in allowed:
        raise Forbidden("X-Role", f"only the {' or '.join(allowed)} role may {action}; the role is {role!r}")
    # The refusal names neither the order's customer nor its merchant: it answers someone who is not.
    if role == "customer" and actor != customer_id:
        raise Forbidden("X-Actor", f"only the order's own customer may {action}; the actor {actor!r} is not")
    if role == "merchant" and (merchant_id is None or actor != merchant_id):
        who = "the order's merchant" if merchant_id else "the merchant who accepted the order"
        raise Forbidden("X-Actor", f"only {who} may {action}; the actor {actor!r} is not")


# --- prepayment without the cashier -------------------------------------------------------------


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VoucherUse(_Value):
    """The voucher a prepayment plan binds and redeems, and why it was chosen."""

    voucher_id: Id
    value: Money = Field(description="what it takes off the prepayment")
    expires_at: AwareDatetime
    using_balance: bool = Field(description="bound together with the member balance")
    choice: BindingChoice | None = Field(description="the automatic choice and its explanation; None when "
                                                     "the customer named the voucher")


class PrepaymentPlan(_Value):
    """How a prepayment would be paid from a voucher and the member balance; see the module doc."""

    prepayment: Money
    voucher: VoucherUse | None
    member_balance: Money = Field(description="taken from the member balance")
    member_balance_split: WalletSplit | None = Field(description="paid-in and bonus parts of it")
    remainder: Money = Field(description="left for a third-party payment; zero when covered")
    covered: bool
    tenders: list[Tender] = Field(description="voucher then member balance, as they would be captured")
    explanation: list[Text]


def plan_prepayment(prepayment: Money, *, customer_id: str, product_line: str, at: datetime,
                    vouchers: Sequence[Voucher], wallet: Wallet | None, wallet_policy: WalletPolicy,
                    use_vouchers: bool, use_balance: bool, voucher_id: str | None = None,
                    balance_reference: str, allow_remainder: bool = False) -> PrepaymentPlan:
    """Pay `prepayment` with one voucher and/or the member balance, deduction order voucher > balance.

    The voucher is the customer's `voucher_id`, or the best of `vouchers` by the policy's binding
    preference (valued on the prepayment). A voucher that alone pays the whole prepayment is
    bound without the balance, so it need not be combinable with it; otherwise, when the balance
    is used, only a voucher combinable with the balance is chosen (seed 二.1). The balance counts
    only for a member (a wallet with a top-up, seed 三.1). RuleViolation when nothing is asked for
    or the named voucher cannot be used. `allow_remainder` only changes what the explanation says
    of a remainder: it is reserved for a card instead of refused.
    """
    if prepayment.amount <= 0:
        raise RuleViolation("prepayment", "there is no prepayment to pay")
    if voucher_id is not None:
        use_vouchers = True
        vouchers = [v for v in vouchers if v.id == voucher_id]
        if not vouchers:
            raise RuleViolation("voucher_id", f"customer {customer_id} holds no voucher {voucher_id}")
    if not use_vouchers and not use_balance:
        raise RuleViolation("use_vouchers", "set use_vouchers or use_balance (or name voucher_id); "
                                            "a third-party payment goes through the cashier")
    currency = prepayment.currency
    lines: list[str] = [f"prepayment {prepayment}"]

    def choose(using_balance: bool) -> BindingChoice:
        return choose_voucher(vouchers, order_amount=prepayment, product_line=product_line, at=at,
                              using_balance=using_balance, preference=wallet_policy.binding_preference,
                              customer_id=customer_id, policy_version=wallet_policy.version)

    def named_voucher_refused(choice: BindingChoice) -> RuleViolation:
        [c] = choice.candidates
        return RuleViolation("voucher_id", c.explanation or f"voucher {voucher_id} cannot be used")

    member = wallet is not None and wallet.currency == currency and wallet.is_member
    available = Money(amount=wallet.paid_in + wallet.bonus, currency=currency) \
        if wallet is not None and member else Money.zero(currency)

    choice: BindingChoice | None = None
    using_balance = False
    if use_vouchers:
        alone = choose(using_balance=False)
        if alone.voucher_id is not None and alone.value == prepayment:
            choice = alone
            lines.append(f"voucher {alone.voucher_id} covers the whole prepayment ({alone.summary})"
                         + ("; the member balance is not needed" if use_balance else ""))
        elif use_balance and member and available.amount > 0:
            choice, using_balance = choose(using_balance=True), True
            lines.append(f"vouchers combinable with the member balance: {choice.summary}")
        else:
            choice = alone
            lines.append(f"vouchers: {choice.summary}")
        if choice.voucher_id is None:
            if voucher_id is not None:
                raise named_voucher_refused(choice)
            choice = None
    voucher_value = choice.value if choice is not None else Money.zero(currency)

    need = prepayment - voucher_value
    from_balance = Money.zero(currency)
    split: WalletSplit | None = None
    if use_balance and need.amount > 0:
        if wallet is None or wallet.currency is None:
            lines.append("member balance: the customer has no wallet")
        elif not member:
            lines.append("member balance: the customer is not a member (no top-up yet)")
        else:
            from_balance = Money(amount=min(need.amount, available.amount), currency=currency)
            if from_balance.amount:
                split = wallet.preview_debit(from_balance, wallet_policy)
            lines.append(f"member balance {available}: {from_balance} used"
                         + (f" (paid-in {split.paid_in}, bonus {split.bonus})" if split else ""))
    remainder = need - from_balance
    covered = remainder.amount == 0

    tenders: list[Tender] = []
    use: VoucherUse | None = None
    if choice is not None:
        assert choice.voucher_id is not None
        chosen = next(v for v in vouchers if v.id == choice.voucher_id)
        assert chosen.expires_at is not None
        use = VoucherUse(voucher_id=chosen.id, value=voucher_value, expires_at=chosen.expires_at,
                         using_balance=using_balance and from_balance.amount > 0,
                         choice=choice if voucher_id is None else None)
        tenders.append(Tender(kind=TenderKind.VOUCHER, amount=voucher_value, reference=chosen.id,
                              expires_at=chosen.expires_at))
    if from_balance.amount:
        tenders.append(Tender(kind=TenderKind.MEMBER_BALANCE, amount=from_balance, reference=balance_reference))
    if covered:
        lines.append("covered: " + " + ".join(f"{t.kind.value} {t.amount}" for t in tenders))
    elif allow_remainder and tenders:
        lines.append(f"{remainder} is left for a third-party payment: "
                     + " + ".join(f"{t.kind.value} {t.amount}" for t in tenders)
                     + f" reserved (voucher bound, balance held); pay exactly {remainder} at the cashier before "
                       "the payment deadline, or cancel the reservation")
    else:
        lines.append(f"{remainder} is left for a third-party payment: nothing is applied; pay the whole "
                     f"prepayment {prepayment} at the cashier, or top up the balance")
    return PrepaymentPlan(prepayment=prepayment, voucher=use, member_balance=from_balance,
                          member_balance_split=split, remainder=remainder, covered=covered, tenders=tenders,
                          explanation=lines)


# --- collecting a shortfall ---------------------------------------------------------------------


class CollectionOption(_Value):
    """One way to collect a settlement's shortfall, whether it is possible now, and how."""

    method: TenderKind
    available: bool
    detail: Text


_HOW = {
    TenderKind.MEMBER_BALANCE: "POST /payments/{order}/settle {\"method\": \"member_balance\"}: debited from the "
                               "member wallet and settled at once",
    TenderKind.CASH: "POST /payments/{order}/settle {\"method\": \"cash\"}: paid to the merchant, settled once "
                     "the merchant confirms it (POST /payments/{order}/cash-confirmation, 已確認)",
    TenderKind.THIRD_PARTY: "online at the cashier (POST /payments/{order}/attempts), settled by the provider's "
                            "charge (signed webhook or payments.upstream)",
}


def collection_options(shortfall: Money, *, is_member: bool, member_balance_available: Money | None
                       ) -> list[CollectionOption]:
    """The methods that can collect `shortfall` now; empty when there is nothing to collect. The
    availability is what `Transaction.settle` would accept (the same rule decides both)."""
    if shortfall.amount <= 0:
        return []
    options = []
    for method in COLLECTION_METHODS:
        try:
            choose_collection_method(shortfall, is_member=is_member, member_balance_available=member_balance_available,
                                     requested=method)
        except RuleViolation as exc:
            options.append(CollectionOption(method=method, available=False, detail=exc.rule))
            continue
        options.append(CollectionOption(method=method, available=True, detail=_HOW[method]))
    return options

