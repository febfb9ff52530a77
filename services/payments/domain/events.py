"""Events of the payments service (topic `payments.events`) and the value objects they carry.

Two groups live here.

The CONTRACT the orders service consumes (PaymentAttemptStarted, PaymentAttemptFailed,
PrepaymentCaptured, BillSettled, with Tender and TenderKind): the orders service moves its
orders and bills along on them. Their fields only ever grow backward compatibly.

The Transaction aggregate's own events (stream `transaction-{order_id}`, one Transaction per
order; see transaction.py). The application layer derives the contract events from them:

    TransactionPaymentAttempted       -> PaymentAttemptStarted
    TransactionAttemptAbandoned       -> PaymentAttemptFailed
    TransactionPrepaymentCaptured     -> PrepaymentCaptured
    TransactionSettled                -> BillSettled (settled_at = its `at`), unless it awaits the
                                         merchant's cash confirmation; then
    TransactionCashConfirmed          -> BillSettled (tenders/refunded/collected from the
                                         TransactionSettled, settled_at = the confirmation)
    TransactionPrepaymentReserved,    -> nothing: the order stays 待預付 until the card pays the
    TransactionReservationReleased       remainder and the prepayment is captured

Every event names its order and, where there is one, the bill it is about (`bill_id` is
None only while the order has no bill, e.g. an order placed without prepayment).

Definitions used throughout (settlement.py applies them):
- a Tender is one part of a payment: kind (third_party | member_balance | voucher | cash),
  amount, reference (provider payment, wallet entry, voucher id or cash receipt); a voucher
  tender may carry `expires_at`, the first moment it is no longer valid;
- online_paid = third_party + member_balance (+ cash when cash was taken): money the
  customer actually paid. Voucher value is granted by the platform, not paid, so it is
  never refunded as money and never penalised.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from libs.domain.events import DomainEvent
from libs.domain.money import Money
from libs.domain.types import Code, Id, Reference, Text, Version

# Who is at fault for a cancellation (seed 五): the orders service decides it and records it in
# OrderCancelled; payments applies it. One enum, so the two services cannot drift apart.
from services.orders.domain.events import FaultParty

TOPIC = "payments.events"
STREAM_CATEGORY = "transaction"



def transaction_stream_id(order_id: str) -> str:
    """The stream of an order's transaction: `transaction-{order_id}`."""
    return f"{STREAM_CATEGORY}-{order_id}"


class TenderKind(StrEnum):
    """How part of an amount was paid (seed 二/三: third-party payment, member balance, vouchers)."""

    THIRD_PARTY = "third_party"
    MEMBER_BALANCE = "member_balance"
    VOUCHER = "voucher"
    CASH = "cash"  # seed 一/四: cash handed to the merchant, who confirms it (交易 已確認)

    @property
    def is_money(self) -> bool:
        """Whether the customer paid this kind with money (everything except vouchers)."""
        return self is not TenderKind.VOUCHER


class FailureReason(StrEnum):
    """Why a payment attempt ended without payment."""

    ABANDONED = "abandoned"  # the customer came back from the cashier (seed 一: 從收銀臺點擊返回)
    DECLINED = "declined"
    EXPIRED = "expired"


class Tender(BaseModel):
    """One part of a payment: its kind, amount and the reference of the provider, wallet or voucher."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: TenderKind
    amount: Money
    reference: Reference
    expires_at: AwareDatetime | None = Field(
        default=None, description="vouchers only: the first moment the voucher is no longer valid")

    @model_validator(mode="after")
    def _expiry_only_for_vouchers(self) -> Tender:
        if self.expires_at is not None and self.kind is not TenderKind.VOUCHER:
            raise ValueError("expires_at is for voucher tenders only")
        return self


def _check_tenders(tenders: list[Tender], total: Money, field: str) -> None:
    for i, tender in enumerate(tenders):
        if tender.amount.currency != total.currency:
            raise ValueError(f"tenders[{i}].amount.currency must be {total.currency}, the {field} currency")
        if tender.amount.amount < 0:
            raise ValueError(f"tenders[{i}].amount must not be negative")
    paid = sum(t.amount.amount for t in tenders)
    if paid != total.amount:
        raise ValueError(f"the tenders add up to {paid} minor units, not the {field} {total.amount}")


class TransactionEvent(DomainEvent):
    """Base of the payments events: each names its order and bill."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    order_id: Id
    bill_id: Id


class PaymentAttemptStarted(TransactionEvent):
    """The customer opened the cashier to pay a bill."""

    attempt_id: Id
    amount: Money
    method: Annotated[str, Field(min_length=1, max_length=64,
                                 description="cashier method, e.g. credit_card, line_pay, jko_pay")]
    at: AwareDatetime


class PaymentAttemptFailed(TransactionEvent):
    """A payment attempt ended without payment."""

    attempt_id: Id
    reason: FailureReason
    at: AwareDatetime


class PrepaymentCaptured(TransactionEvent):
    """The prepayment of an order was captured in full; the tenders add up to `amount`."""

    amount: Money
    tenders: Annotated[list[Tender], Field(min_length=1)]
    captured_at: AwareDatetime

    @model_validator(mode="after")
    def _tenders_add_up(self) -> PrepaymentCaptured:
        _check_tenders(self.tenders, self.amount, "amount")
        return self


class BillSettled(TransactionEvent):
    """The final bill was settled: `tenders` pay `total` (after any refund of excess prepayment).

    `collected` is what was newly collected at settlement (a prepayment shortfall, 少補),
    `refunded` what went back to the customer (prepayment excess, 多退).
    """

    total: Money
    tenders: list[Tender]
    refunded: Money
    collected: Money
    settled_at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> BillSettled:
        _check_tenders(self.tenders, self.total, "total")
        for name, value in (("refunded", self.refunded), ("collected", self.collected)):
            if value.currency != self.total.currency:
                raise ValueError(f"{name}.currency must be {self.total.currency}, the total currency")
            if value.amount < 0:
                raise ValueError(f"{name} must not be negative")
        return self


# === The Transaction aggregate's events and the value objects they carry =====================



class Value(BaseModel):
    """Base of the immutable value objects carried by the Transaction's events."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TransactionStatus(StrEnum):
    """Where an order's payment is: the seed's seven transaction states (一, 交易)."""

    UNPAID = "unpaid"
    PREPAID = "prepaid"
    BILLED = "billed"
    PAID = "paid"
    CONFIRMED = "confirmed"
    REFUNDED = "refunded"
    VOIDED = "voided"

    @property
    def label_zh(self) -> str:
        """The Chinese label shown to users."""
        return TRANSACTION_LABELS_ZH[self]


TRANSACTION_LABELS_ZH: dict[TransactionStatus, str] = {
    TransactionStatus.UNPAID: "未支付",
    TransactionStatus.PREPAID: "已預付",
    TransactionStatus.BILLED: "已出賬",
    TransactionStatus.PAID: "已支付",
    TransactionStatus.CONFIRMED: "已確認",
    TransactionStatus.REFUNDED: "已退款",
    TransactionStatus.VOIDED: "已作廢",
}


class Rate(Value):
    """A penalty rate as an exact fraction, numerator/denominator, between 0 and 1."""

    numerator: Annotated[int, Field(ge=0)]
    denominator: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _at_most_one(self) -> Rate:
        if self.numerator > self.denominator:
            raise ValueError("a rate is at most 1 (numerator <= denominator)")
        return self

    @property
    def is_full(self) -> bool:
        """The whole amount (rate 1)."""
        return self.numerator == self.denominator

    def __str__(self) -> str:
        if self.numerator == 0:
            return "0"
        return "1" if self.is_full else f"{self.numerator}/{self.denominator}"


class Refund(Value):
    """One refund line: `amount` goes back to the original `tender` (原路退回), named by kind and reference."""

    kind: TenderKind
    amount: Money
    reference: Reference
    tender: Tender

    @model_validator(mode="after")
    def _back_to_its_tender(self) -> Refund:
        if (self.kind, self.reference) != (self.tender.kind, self.tender.reference):
            raise ValueError("a refund goes back to its own tender: kind and reference must match it")
        if self.amount.currency != self.tender.amount.currency:
            raise ValueError("a refund is in the currency of its tender")
        if not 0 < self.amount.amount <= self.tender.amount.amount:
            raise ValueError("a refund is positive and never more than its tender")
        return self


def _sum(amounts: Iterable[Money], currency: str) -> Money:
    return Money(amount=sum(m.amount for m in amounts), currency=currency)


def _each_tender_at_most_once(refunds: Iterable[Refund]) -> None:
    back: dict[tuple[TenderKind, str], int] = {}
    for r in refunds:
        key = (r.kind, r.reference)
        back[key] = back.get(key, 0) + r.amount.amount
        if back[key] > r.tender.amount.amount:
            raise ValueError(f"{r.kind.value} {r.reference} would get back more than it paid")


def _same_currency(currency: str, **named: Money) -> None:
    for name, value in named.items():
        if value.currency != currency:
            raise ValueError(f"{name}.currency must be {currency}")
        if value.amount < 0:
            raise ValueError(f"{name} must not be negative")


class SettlementPlan(Value):
    """How a final bill is settled from the prepayment (seed 三.3, 多退少補).

    `applied` are the prepaid tenders used for the bill (voucher > member balance > third
    party), `refunds` the unused rest going back along the original path, `shortfall` what
    is still to collect. Money is conserved: captured = applied_total + refunded and
    applied_total + shortfall = total.
    """

    total: Money
    captured: Money = Field(description="everything prepaid, vouchers included")
    applied: list[Tender]
    applied_total: Money
    refunds: list[Refund]
    refunded: Money
    shortfall: Money
    explanation: list[Text]

    @model_validator(mode="after")
    def _conserved(self) -> SettlementPlan:
        c = self.total.currency
        _same_currency(c, captured=self.captured, applied_total=self.applied_total, refunded=self.refunded,
                       shortfall=self.shortfall, total=self.total)
        if self.applied_total != _sum((t.amount for t in self.applied), c):
            raise ValueError("applied_total must be the sum of the applied tenders")
        if self.refunded != _sum((r.amount for r in self.refunds), c):
            raise ValueError("refunded must be the sum of the refunds")
        _each_tender_at_most_once(self.refunds)
        if self.captured != self.applied_total + self.refunded:
            raise ValueError("captured must equal applied_total + refunded")
        if self.applied_total + self.shortfall != self.total:
            raise ValueError("applied_total + shortfall must equal total")
        return self


class VoucherAction(StrEnum):
    """What happens to a voucher that goes back to the customer."""

    RETURNED = "returned"  # as it was
    EXTENDED = "extended"  # it would have come back expired (or about to): new expiry
    REPLACED = "replaced"  # it would have come back expired: a compensation voucher replaces it


class VoucherReturn(Value):
    """A prepaid voucher going back to the customer, and how (seed 五: 卡券異常情況處理)."""

    reference: Reference
    amount: Money
    tender: Tender
    action: VoucherAction
    new_expires_at: AwareDatetime | None = Field(default=None, description="set when the voucher is extended")

    @model_validator(mode="after")
    def _consistent(self) -> VoucherReturn:
        if self.tender.kind is not TenderKind.VOUCHER or self.reference != self.tender.reference \
                or self.amount != self.tender.amount:
            raise ValueError("a voucher return gives back one whole voucher tender")
        if (self.action is VoucherAction.EXTENDED) != (self.new_expires_at is not None):
            raise ValueError("new_expires_at is set exactly when the voucher is extended")
        return self


class CompensationRule(StrEnum):
    """Why the customer gets a compensation voucher (seed 五, the four examples)."""

    LOYAL_CUSTOMER_COMPLAINT = "loyal_customer_complaint"  # 長期忠實高價值用戶 complains
    NO_MERCHANT_AVAILABLE = "no_merchant_available"  # 無可派商家 / 多次派單都無法滿足
    LATE_CANCELLATION = "late_cancellation"  # 臨近服務時間, 臨時取消訂單
    VOUCHER_EXPIRED_ON_RETURN = "voucher_expired_on_return"  # 代金券因過期而無法原樣退回


class CompensationVoucher(Value):
    """A voucher granted to the customer by a compensation rule; not part of the money conservation."""

    rule: CompensationRule
    amount: Money
    expires_at: AwareDatetime
    replaces: Reference | None = Field(default=None, description="the voucher it replaces, for expired returns")
    detail: Text = ""


class CancellationPlan(Value):
    """The money side of a cancellation (seed 五): penalty, refunds, vouchers and compensation.

    Conservation: captured = penalty + refunded + (vouchers returned) + kept, where `refunded`
    is money, `kept` is the value of vouchers forfeited under a full penalty, and
    online_paid = refunded + penalty. The safety rule (兜底): refunded <= online_paid.
    """

    fault_party: FaultParty
    seconds_before_service_start: int
    policy_version: Version
    was_prepaid: bool
    captured: Money = Field(description="everything prepaid, vouchers included")
    online_paid: Money = Field(description="third_party + member_balance + cash of the prepayment")
    penalty_rate: Rate
    penalty: Money
    refunds: list[Refund]
    refunded: Money = Field(description="money refunded, the sum of `refunds`")
    vouchers_returned: list[VoucherReturn]
    vouchers_forfeited: list[Tender]
    kept: Money = Field(description="value of the vouchers forfeited")
    compensation_vouchers: list[CompensationVoucher]
    merchant_compensation: Money = Field(description="paid by the platform to the merchant (unprepaid, customer fault)")
    merchant_fault_recorded: bool
    explanation: list[Text]

    @property
    def vouchers_returned_value(self) -> Money:
        """The value of the vouchers going back to the customer."""
        return _sum((v.amount for v in self.vouchers_returned), self.captured.currency)

    @model_validator(mode="after")
    def _conserved(self) -> CancellationPlan:
        c = self.captured.currency
        _same_currency(c, online_paid=self.online_paid, penalty=self.penalty, refunded=self.refunded,
                       kept=self.kept, merchant_compensation=self.merchant_compensation)
        for i, v in enumerate(self.compensation_vouchers):
            _same_currency(c, **{f"compensation_vouchers[{i}].amount": v.amount})
        if any(not r.kind.is_money for r in self.refunds):
            raise ValueError("vouchers are returned as vouchers, never refunded as money")
        if any(t.kind is not TenderKind.VOUCHER for t in self.vouchers_forfeited):
            raise ValueError("only vouchers can be forfeited; money is refunded or kept as the penalty")
        if self.refunded != _sum((r.amount for r in self.refunds), c):
            raise ValueError("refunded must be the sum of the refunds")
        _each_tender_at_most_once(self.refunds)
        if self.kept != _sum((t.amount for t in self.vouchers_forfeited), c):
            raise ValueError("kept must be the value of the forfeited vouchers")
        if self.refunded > self.online_paid:
            raise ValueError("a refund can never exceed the amount paid online (seed 五, safety rule)")
        if self.refunded + self.penalty != self.online_paid:
            raise ValueError("online_paid must equal refunded + penalty")
        if self.captured != self.penalty + self.refunded + self.vouchers_returned_value + self.kept:
            raise ValueError("captured must equal penalty + refunded + vouchers returned + kept")
        if self.merchant_fault_recorded != (self.fault_party is FaultParty.MERCHANT):
            raise ValueError("merchant_fault_recorded is set exactly for merchant-fault cancellations")
        return self


class TransactionStreamEvent(DomainEvent):
    """Base of the Transaction aggregate's events: the order, and its bill once there is one."""

    abstract: ClassVar[bool] = True
    topic: ClassVar[str] = TOPIC

    order_id: Id
    bill_id: Id | None = None


class TransactionOpened(TransactionStreamEvent):
    """An order was placed: its transaction starts unpaid under the cancellation policy then in force."""

    customer_id: Id
    merchant_id: Id | None = None
    placed_at: AwareDatetime
    estimated_total: Money
    policy_version: Version
    payment_deadline: AwareDatetime | None = None
    at: AwareDatetime


class TransactionPaymentAttempted(TransactionStreamEvent):
    """The customer opened the cashier to pay the prepayment or the final bill's shortfall."""

    bill_id: Id
    attempt_id: Id
    amount: Money
    method: Annotated[str, Field(min_length=1, max_length=64)]
    at: AwareDatetime


class TransactionAttemptAbandoned(TransactionStreamEvent):
    """A payment attempt ended without payment; the transaction stays where it was."""

    bill_id: Id
    attempt_id: Id
    reason: FailureReason
    at: AwareDatetime


class TransactionPrepaymentCaptured(TransactionStreamEvent):
    """The prepayment was captured in full before the payment deadline; the tenders add up to `amount`."""

    bill_id: Id
    amount: Money
    tenders: Annotated[list[Tender], Field(min_length=1)]
    at: AwareDatetime

    @model_validator(mode="after")
    def _tenders_add_up(self) -> TransactionPrepaymentCaptured:
        _check_tenders(self.tenders, self.amount, "amount")
        return self


# What a reservation may hold: the platform's own tenders, never a card or cash.
RESERVABLE_KINDS = frozenset({TenderKind.VOUCHER, TenderKind.MEMBER_BALANCE})


class TransactionPrepaymentReserved(TransactionStreamEvent):
    """Part of the prepayment is reserved on a voucher (bound, not redeemed) and the member balance
    (held, not debited); the `remainder` is due by a third-party payment at the cashier. The
    provider's charge of exactly the remainder before the payment deadline captures the prepayment
    with these tenders and the card (TransactionPrepaymentCaptured); a cancellation of the order or
    of the reservation releases them (TransactionReservationReleased).
    Conservation: reserved = the sum of `tenders`, reserved + remainder = amount, both positive."""

    bill_id: Id
    amount: Money = Field(description="the whole prepayment")
    tenders: Annotated[list[Tender], Field(min_length=1, description="voucher then member balance, reserved")]
    reserved: Money = Field(description="the sum of `tenders`")
    remainder: Money = Field(description="due by a third-party payment (the cashier) before the deadline")
    payment_deadline: AwareDatetime | None = Field(default=None, description="the order's payment deadline: "
                                                                             "the reservation ends with the order")
    at: AwareDatetime

    @model_validator(mode="after")
    def _conserved(self) -> TransactionPrepaymentReserved:
        _check_tenders(self.tenders, self.reserved, "reserved")
        if any(t.kind not in RESERVABLE_KINDS for t in self.tenders):
            raise ValueError("only vouchers and the member balance are reserved; a card pays the remainder")
        for name, value in (("reserved", self.reserved), ("remainder", self.remainder)):
            if value.currency != self.amount.currency:
                raise ValueError(f"{name}.currency must be {self.amount.currency}, the prepayment currency")
            if value.amount <= 0:
                raise ValueError(f"{name} must be positive")
        if self.reserved.amount + self.remainder.amount != self.amount.amount:
            raise ValueError("reserved + remainder must equal the prepayment")
        return self


class TransactionReservationReleased(TransactionStreamEvent):
    """The reservation ended without a capture (the order was cancelled, e.g. at its payment deadline,
    or the customer cancelled the reservation): the voucher binding and the wallet hold go back."""

    bill_id: Id
    tenders: Annotated[list[Tender], Field(min_length=1)]
    amount: Money = Field(description="the sum of `tenders`")
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    at: AwareDatetime

    @model_validator(mode="after")
    def _sum(self) -> TransactionReservationReleased:
        _check_tenders(self.tenders, self.amount, "amount")
        return self


class TransactionBilled(TransactionStreamEvent):
    """The merchant's bill was confirmed and submitted (報單): settlement is pending (已出賬)."""

    bill_id: Id
    revision: Annotated[int, Field(ge=1)]
    total: Money
    at: AwareDatetime


class TransactionSettled(TransactionStreamEvent):
    """The bill was settled by the plan: excess refunded, shortfall collected by `method`.

    `tenders` pay `total` (the applied prepayment plus the collection). A cash collection
    awaits the merchant's confirmation (TransactionCashConfirmed) before the order is done.
    """

    bill_id: Id
    total: Money
    plan: SettlementPlan
    method: TenderKind | None = Field(description="how the shortfall was collected; None when there was none")
    collection: Tender | None
    collected: Money
    refunded: Money
    tenders: list[Tender]
    awaiting_cash_confirmation: bool
    at: AwareDatetime

    @model_validator(mode="after")
    def _consistent(self) -> TransactionSettled:
        _check_tenders(self.tenders, self.total, "total")
        if self.plan.total != self.total or self.collected != self.plan.shortfall \
                or self.refunded != self.plan.refunded:
            raise ValueError("total, collected and refunded must be the plan's total, shortfall and refunded")
        if (self.method is None) != (self.collection is None) \
                or (self.collection is not None and (self.collection.kind is not self.method
                                                     or self.collection.amount != self.collected)):
            raise ValueError("the collection is the shortfall paid by `method`")
        if self.awaiting_cash_confirmation != (self.method is TenderKind.CASH):
            raise ValueError("exactly a cash collection awaits the merchant's confirmation")
        return self


class TransactionCashConfirmed(TransactionStreamEvent):
    """The merchant confirmed receiving the cash for the shortfall (已確認)."""

    bill_id: Id
    merchant_id: Id
    amount: Money
    at: AwareDatetime


class TransactionRefunded(TransactionStreamEvent):
    """A prepaid order was cancelled: the plan's penalty is kept, the rest goes back (已退款)."""

    plan: CancellationPlan
    reason_code: Code
    at: AwareDatetime


class TransactionVoided(TransactionStreamEvent):
    """An order was cancelled before any payment (已作廢); the plan holds any compensation."""

    plan: CancellationPlan
    reason_code: Code
    at: AwareDatetime


class CompensationVoucherGranted(TransactionStreamEvent):
    """A compensation voucher is owed to the customer; the voucher service issues it (once per grant_no)."""

    customer_id: Id
    grant_no: Annotated[int, Field(ge=1, description="1-based, unique within the order's cancellation")]
    rule: CompensationRule
    amount: Money
    expires_at: AwareDatetime
    replaces: Reference | None = None
    at: AwareDatetime


class MerchantCompensationGranted(TransactionStreamEvent):
    """The platform owes the merchant for a late customer-fault cancellation of an unprepaid order."""

    merchant_id: Id
    amount: Money
    reason_code: Code
    seconds_before_service_start: int
    policy_version: Version
    at: AwareDatetime


class MerchantFaultRecorded(TransactionStreamEvent):
    """A cancellation was the merchant's fault; the merchant's record (GET /merchants/{id}/record) counts it."""

    merchant_id: Id
    reason_code: Code
    seconds_before_service_start: int
    at: AwareDatetime


class TransactionRefundsFrozen(TransactionStreamEvent):
    """A dispute was opened on the order's payment: no refund may run until it closes."""

    dispute_id: Id
    at: AwareDatetime


class TransactionRefundsUnfrozen(TransactionStreamEvent):
    """The dispute closed: refunds may run again (unless another dispute is open)."""

    dispute_id: Id
    at: AwareDatetime


class RefundSource(StrEnum):
    """What owes a refund: a cancellation (its plan's refunds), a settlement (the excess prepaid), money
    that arrived but could not be taken (payment_to_return), or a refund customer service issued."""

    CANCELLATION = "cancellation"
    SETTLEMENT = "settlement"
    PAYMENT_TO_RETURN = "payment_to_return"
    ISSUED = "issued"


class TransactionRefundsHeld(TransactionStreamEvent):
    """A cancellation or settlement owes these refunds while a dispute on the order's payment is open:
    they are decided (by the policy in force at placement) but wait, and run when no dispute is open
    (TransactionHeldRefundsReleased). Also recorded, and released at once, when a lost dispute's
    chargeback has to be set against them first."""

    source: RefundSource
    refunds: Annotated[list[Refund], Field(min_length=1)]
    amount: Money = Field(description="the sum of `refunds`")
    dispute_ids: Annotated[list[Id], Field(min_length=1, description="the disputes they wait for")]
    at: AwareDatetime

    @model_validator(mode="after")
    def _sum(self) -> TransactionRefundsHeld:
        if self.amount != _sum((r.amount for r in self.refunds), self.amount.currency):
            raise ValueError("amount must be the sum of the refunds")
        return self


class TransactionChargedBack(TransactionStreamEvent):
    """A dispute on one of the order's payments was lost: the card issuer returned `amount` of it to the
    customer (and the provider took it from us). Refunds still owed for that money are reduced by it,
    so the customer is never paid back twice."""

    dispute_id: Id
    reference: Reference = Field(description="the tender (payment) the chargeback took back")
    amount: Money
    at: AwareDatetime


class TransactionHeldRefundsReleased(TransactionStreamEvent):
    """No dispute is open any more: held refunds run. `refunds` are the lines that run now; the parts a
    lost dispute's chargeback already returned to the customer are `returned_by_chargeback`."""

    source: RefundSource
    held: Money = Field(description="what was held")
    refunds: list[Refund]
    refunded: Money = Field(description="the sum of `refunds`")
    returned_by_chargeback: list[Refund]
    at: AwareDatetime

    @model_validator(mode="after")
    def _conserved(self) -> TransactionHeldRefundsReleased:
        c = self.held.currency
        if self.refunded != _sum((r.amount for r in self.refunds), c):
            raise ValueError("refunded must be the sum of the refunds")
        if self.held != self.refunded + _sum((r.amount for r in self.returned_by_chargeback), c):
            raise ValueError("held must equal refunded + returned_by_chargeback")
        return self


class TransactionPaymentToReturn(TransactionStreamEvent):
    """Money arrived that the transaction cannot take (the order was cancelled or voided first, the
    payment deadline had passed, or the bill was already settled): it is owed back to the customer
    along its own path. Recorded, never dropped: the provider holds the customer's money."""

    tender: Tender
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    at: AwareDatetime


class TransactionRefundIssued(TransactionStreamEvent):
    """Customer service refunded part or all of what the order paid (a complaint, a goodwill gesture),
    after settlement or cancellation: `refunds` go back along the original path (third party >
    member balance), never more than a tender paid less what it already got back."""

    refund_request_id: Id = Field(description="the request's id: the same request again issues nothing")
    amount: Money
    refunds: Annotated[list[Refund], Field(min_length=1)]
    reason: Annotated[str, Field(min_length=1, max_length=500)]
    at: AwareDatetime

    @model_validator(mode="after")
    def _sum(self) -> TransactionRefundIssued:
        if self.amount != _sum((r.amount for r in self.refunds), self.amount.currency):
            raise ValueError("amount must be the sum of the refunds")
        return self


class TransactionExternalRefund(TransactionStreamEvent):
    """The payment provider reports a refund of one of the order's payments that closeloop did not
    request (made in the provider's dashboard, say). Recorded so that the money that went back is
    known, and never refunded again."""

    provider_refund_id: Reference
    reference: Reference = Field(description="the order's tender (payment) it refunded")
    amount: Money
    at: AwareDatetime
