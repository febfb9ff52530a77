"""The Transaction aggregate (stream `transaction-{order_id}`): the payment side of one order.

The seed (002, 一) separates the bill (what is owed), the order (bill + transaction) and
the transaction (how the customer paid), with seven transaction states: 未支付 unpaid,
已預付 prepaid (only orders that were prepaid), 已出賬 billed (the merchant's bill was
confirmed and submitted; settlement pending), 已支付 paid (settled online or from the
member balance), 已確認 confirmed (settled in cash the merchant confirmed; used instead of
paid), 已退款 refunded (cancelled after a payment, whatever the penalty kept) and 已作廢
voided (cancelled with no payment).

Only the seed's transitions exist: unpaid -> prepaid, unpaid -> billed, prepaid -> billed,
billed -> paid, billed -> confirmed, prepaid -> refunded, unpaid -> voided. A payment attempt
that ends without payment leaves the state as it was (the attempt is recorded). A
settlement whose shortfall is collected in cash stays billed until the merchant confirms
the cash (seed 一: 商家在商家端點擊確認收到現金); meanwhile only `confirm_cash` is allowed,
so a second settlement is refused there too. Taking any payment for a settled or cancelled
order is refused with InvalidTransition naming the state (seed 三.5, 四).

Money rules are the pure functions of settlement.py; the cancellation policy is the
version in force when the order was placed, named in TransactionOpened.

Disputes. Refunds are frozen while a dispute on the order's payment is open
(`freeze_refunds` / `unfreeze_refunds`). A cancellation or settlement during a dispute is
still applied (the order's state, penalty and plan are facts of that moment: the order was
cancelled, the bill was settled) but the refunds it owes are held (TransactionRefundsHeld)
instead of refused; they run when the last open dispute closes
(TransactionHeldRefundsReleased). A lost dispute (`record_chargeback`) means the card issuer
already returned the disputed money to the customer, so it is set against the card refunds
still owed: the customer is never paid back twice. Refusing instead would lose the
cancellation: the consumer of orders.events skips an event the domain refuses.

A prepayment paid partly by card. `reserve_prepayment` reserves a voucher and/or the member
balance for part of the prepayment (TransactionPrepaymentReserved; the state stays unpaid, the
order 待預付) and leaves the remainder to the cashier: an attempt is then for exactly the
remainder, and the provider's charge of the remainder before the deadline captures the
prepayment with every tender at once (`capture_reserved_prepayment` -> one
TransactionPrepaymentCaptured with the reserved tenders and the card). An abandoned attempt
keeps the reservation; `release_reservation` (the customer) or the order's cancellation (e.g.
at its payment deadline) releases it (TransactionReservationReleased). Reserved + remainder =
prepayment at every step; while a reservation is open no other capture can leave it out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum

from libs.domain.aggregate import Aggregate, StateMachine
from libs.domain.errors import Conflict, NotFound, RuleViolation
from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.payments.domain.events import (
    RESERVABLE_KINDS,
    STREAM_CATEGORY,
    TRANSACTION_LABELS_ZH,
    CancellationPlan,
    CompensationVoucherGranted,
    FailureReason,
    FaultParty,
    MerchantCompensationGranted,
    MerchantFaultRecorded,
    Refund,
    RefundSource,
    SettlementPlan,
    Tender,
    TenderKind,
    TransactionAttemptAbandoned,
    TransactionBilled,
    TransactionCashConfirmed,
    TransactionChargedBack,
    TransactionExternalRefund,
    TransactionHeldRefundsReleased,
    TransactionOpened,
    TransactionPaymentAttempted,
    TransactionPaymentToReturn,
    TransactionPrepaymentCaptured,
    TransactionPrepaymentReserved,
    TransactionRefunded,
    TransactionRefundIssued,
    TransactionRefundsFrozen,
    TransactionRefundsHeld,
    TransactionRefundsUnfrozen,
    TransactionReservationReleased,
    TransactionSettled,
    TransactionStatus,
    TransactionVoided,
)
from services.payments.domain.policy import CancellationPolicy
from services.payments.domain.refund import plan_issued_refund
from services.payments.domain.settlement import (
    check_tenders,
    choose_collection_method,
    plan_cancellation_refund,
    plan_settlement,
)

__all__ = [
    "AWAITING_CASH_TRANSITIONS",
    "LABELS_ZH",
    "TRANSACTION_MACHINE",
    "TRANSACTION_TRANSITIONS",
    "Transaction",
    "TransactionStatus",
]

LABELS_ZH: dict[TransactionStatus, str] = TRANSACTION_LABELS_ZH

S = TransactionStatus

# A dispute can only concern money that was captured, so freezing (and recording a lost
# dispute's chargeback) is offered wherever a payment may exist; it changes no state.
_DISPUTES: dict[str, StrEnum | None] = {"freeze_refunds": None, "unfreeze_refunds": None,
                                        "record_chargeback": None, "record_external_refund": None}
# Customer service may refund what an order paid once the money side is decided: after settlement
# (paid, confirmed) or after a cancellation that kept a penalty (refunded). It changes no state.
_ISSUE: dict[str, StrEnum | None] = {"issue_refund": None}

# command -> target state, per state; None = the state does not change. Opening is not here:
# it creates the transaction. Typed with the base StrEnum because StateMachine takes any enum.
TRANSACTION_TRANSITIONS: Mapping[StrEnum, Mapping[str, StrEnum | None]] = {
    S.UNPAID: {
        "start_attempt": None,
        "fail_attempt": None,
        "capture_prepayment": S.PREPAID,
        "reserve_prepayment": None,
        "release_reservation": None,
        "bill": S.BILLED,
        "cancel": S.VOIDED,
        "record_external_refund": None,
    },
    S.PREPAID: {"bill": S.BILLED, "cancel": S.REFUNDED, **_DISPUTES},
    # settle -> paid; or, when cash collects the shortfall, billed until confirm_cash (below).
    S.BILLED: {"start_attempt": None, "fail_attempt": None, "settle": S.PAID, **_DISPUTES},
    S.PAID: {**_DISPUTES, **_ISSUE},
    S.CONFIRMED: {**_DISPUTES, **_ISSUE},
    S.REFUNDED: {**_DISPUTES, **_ISSUE},
    S.VOIDED: {"record_external_refund": None},
}

# Billed, settled, and waiting for the merchant to confirm the cash: nothing else may happen.
AWAITING_CASH_TRANSITIONS: Mapping[StrEnum, Mapping[str, StrEnum | None]] = {
    S.BILLED: {"confirm_cash": S.CONFIRMED, **_DISPUTES},
}

TRANSACTION_MACHINE = StateMachine("transaction", TRANSACTION_TRANSITIONS)
AWAITING_CASH_MACHINE = StateMachine("transaction", AWAITING_CASH_TRANSITIONS)


def _aware(field: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise RuleViolation(field, "must be a time-zone-aware datetime")


class Transaction(Aggregate):
    """The payment side of one order, from placement to settlement or cancellation."""

    category = STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.status: TransactionStatus | None = None
        self.customer_id: str | None = None
        self.merchant_id: str | None = None
        self.placed_at: datetime | None = None
        self.estimated_total: Money | None = None
        self.policy_version: str | None = None
        self.prepayment_bill_id: str | None = None
        self.payment_deadline: datetime | None = None
        self.attempt: TransactionPaymentAttempted | None = None  # the attempt at the cashier, if any
        self.abandoned_attempts: list[str] = []
        self.prepaid_tenders: list[Tender] = []
        self.prepaid_at: datetime | None = None
        self.reservation: TransactionPrepaymentReserved | None = None  # reserved, not yet captured or released
        self.captured_reservation: TransactionPrepaymentReserved | None = None  # the one the capture took
        self.released_reservations: list[TransactionReservationReleased] = []
        self.bill_id: str | None = None
        self.bill_revision: int | None = None
        self.bill_total: Money | None = None
        self.settlement: TransactionSettled | None = None
        self.cash_confirmed_at: datetime | None = None
        self.cancellation: CancellationPlan | None = None
        self.compensation_vouchers: list[CompensationVoucherGranted] = []
        self.merchant_compensation: MerchantCompensationGranted | None = None
        self.merchant_fault: MerchantFaultRecorded | None = None
        self.open_disputes: set[str] = set()
        self.held_refunds: list[TransactionRefundsHeld] = []  # held and not yet released
        self.released_refunds: list[TransactionHeldRefundsReleased] = []
        self.chargebacks: list[TransactionChargedBack] = []
        self.chargeback_unapplied = 0  # minor units of chargebacks not yet set against refunds
        self.payments_to_return: list[TransactionPaymentToReturn] = []
        self.issued_refunds: list[TransactionRefundIssued] = []
        self.external_refunds: list[TransactionExternalRefund] = []

    # --- queries ------------------------------------------------------------------------

    @property
    def label_zh(self) -> str | None:
        """The Chinese label of the current status."""
        return LABELS_ZH[self.status] if self.status else None

    @property
    def disputed(self) -> bool:
        """Whether a dispute is open: refunds are frozen."""
        return bool(self.open_disputes)

    @property
    def refunds_held(self) -> bool:
        """Whether refunds owed by a cancellation or settlement wait for a dispute to close."""
        return bool(self.held_refunds)

    @property
    def awaiting_cash_confirmation(self) -> bool:
        """Settled with a cash collection the merchant has not confirmed yet."""
        return self.status is S.BILLED and self.settlement is not None and self.settlement.awaiting_cash_confirmation

    @property
    def currency(self) -> str:
        assert self.estimated_total is not None
        return self.estimated_total.currency

    def _machine(self) -> StateMachine:
        return AWAITING_CASH_MACHINE if self.awaiting_cash_confirmation else TRANSACTION_MACHINE

    def allowed_commands(self) -> list[str]:
        """The commands the current state allows (empty before opening and when voided)."""
        return self._machine().allowed(self.status) if self.status else []

    def _check(self, command: str) -> None:
        if self.status is None:
            raise NotFound(f"transaction {self.id} does not exist", order_id=self.id)
        self._machine().check(self.id, self.status, command)

    def _require_currency(self, field: str, amount: Money) -> None:
        if amount.currency != self.currency:
            raise RuleViolation(f"{field}.currency", f"must be {self.currency}, the order's currency")

    def _refunds_owed(self, source: RefundSource, refunds: Sequence[Refund], at: datetime) -> None:
        """Record the refunds a cancellation or settlement owes when they cannot simply run: held
        while a dispute is open; held and released at once (so the offset is recorded) when a lost
        dispute's chargeback must be set against them first. Otherwise the plan's refunds run as
        recorded in TransactionRefunded / TransactionSettled."""
        if not refunds:
            return
        if self.disputed:
            waiting_for = sorted(self.open_disputes)
        elif self.chargeback_unapplied > 0:
            waiting_for = sorted({c.dispute_id for c in self.chargebacks})
        else:
            return
        self._record(TransactionRefundsHeld(
            order_id=self.id, bill_id=self.bill_id or self.prepayment_bill_id, source=source, refunds=list(refunds),
            amount=Money(amount=sum(r.amount.amount for r in refunds), currency=self.currency),
            dispute_ids=waiting_for, at=at))
        if not self.disputed:
            self._release_held(at)

    def _release_held(self, at: datetime) -> None:
        """Run the held refunds, card refunds reduced by what lost disputes already returned.

        Only third-party (card) lines are reduced: a chargeback returns card money, and the
        refund priority (third party first, seed 五) means a cancellation refunds the card before
        the member balance, so balance lines never need reducing. Lines of the charged-back
        payment are reduced first."""
        left = self.chargeback_unapplied
        charged = {c.reference for c in self.chargebacks}
        for hold in list(self.held_refunds):
            cut: dict[int, int] = {}
            order = sorted(range(len(hold.refunds)), key=lambda i: hold.refunds[i].reference not in charged)
            for i in order:
                line = hold.refunds[i]
                if left > 0 and line.kind is TenderKind.THIRD_PARTY:
                    cut[i] = min(left, line.amount.amount)
                    left -= cut[i]
            runs: list[Refund] = []
            returned: list[Refund] = []
            for i, line in enumerate(hold.refunds):
                back = cut.get(i, 0)
                if back:
                    returned.append(self._part_of(line, back))
                if line.amount.amount - back:
                    runs.append(self._part_of(line, line.amount.amount - back))
            self._record(TransactionHeldRefundsReleased(
                order_id=self.id, bill_id=hold.bill_id, source=hold.source, held=hold.amount, refunds=runs,
                refunded=Money(amount=sum(r.amount.amount for r in runs), currency=self.currency),
                returned_by_chargeback=returned, at=at))

    def _part_of(self, line: Refund, amount: int) -> Refund:
        return Refund(kind=line.kind, amount=Money(amount=amount, currency=self.currency), reference=line.reference,
                      tender=line.tender)

    # --- commands -----------------------------------------------------------------------

    @classmethod
    def open(cls, order_id: str, *, customer_id: str, placed_at: datetime, estimated_total: Money,
             policy_version: str, at: datetime, merchant_id: str | None = None,
             prepayment_bill_id: str | None = None, payment_deadline: datetime | None = None) -> Transaction:
        """Open the transaction of a newly placed order (未支付) under the policy version in force at placement."""
        _aware("placed_at", placed_at)
        if estimated_total.amount < 0:
            raise RuleViolation("estimated_total", "must not be negative")
        if payment_deadline is not None and payment_deadline <= placed_at:
            raise RuleViolation("payment_deadline", "must be after placed_at")
        tx = cls(order_id)
        tx._record(TransactionOpened(
            order_id=order_id, bill_id=prepayment_bill_id, customer_id=customer_id, merchant_id=merchant_id,
            placed_at=placed_at, estimated_total=estimated_total, policy_version=policy_version,
            payment_deadline=payment_deadline, at=at))
        return tx

    def start_attempt(self, attempt_id: str, amount: Money, method: str, at: datetime) -> None:
        """The customer opened the cashier: for the prepayment (unpaid) or the shortfall (billed)."""
        self._check("start_attempt")
        if self.attempt is not None:
            raise Conflict(f"transaction {self.id}: attempt {self.attempt.attempt_id} is still open",
                           current_attempt_id=self.attempt.attempt_id)
        self._require_currency("amount", amount)
        if self.status is S.UNPAID:
            assert self.estimated_total is not None
            if self.prepayment_bill_id is None:
                raise RuleViolation("bill_id", "this order has no prepayment bill to pay")
            if self.payment_deadline is not None and at >= self.payment_deadline:
                raise RuleViolation("payment_deadline", f"passed at {self.payment_deadline.isoformat()}")
            if not 0 < amount.amount <= self.estimated_total.amount:
                raise RuleViolation("amount", f"must be positive and at most the prepayment {self.estimated_total}")
            if self.reservation is not None and amount != self.reservation.remainder:
                raise RuleViolation("amount", f"must be the remainder {self.reservation.remainder}: "
                                              f"{self.reservation.reserved} of the prepayment is reserved")
            bill_id = self.prepayment_bill_id
        else:
            shortfall = self.preview_settlement().shortfall
            if shortfall.amount == 0:
                raise RuleViolation("amount", "nothing to pay: the prepayment covers the bill")
            if amount != shortfall:
                raise RuleViolation("amount", f"must be the shortfall {shortfall}")
            assert self.bill_id is not None
            bill_id = self.bill_id
        self._record(TransactionPaymentAttempted(order_id=self.id, bill_id=bill_id, attempt_id=attempt_id,
                                                 amount=amount, method=method, at=at))

    def fail_attempt(self, attempt_id: str, reason: FailureReason | str, at: datetime) -> None:
        """The attempt ended without payment (the customer came back from the cashier); the state stays."""
        self._check("fail_attempt")
        if self.attempt is None or self.attempt.attempt_id != attempt_id:
            current = self.attempt.attempt_id if self.attempt else None
            raise Conflict(f"transaction {self.id}: attempt {attempt_id} is not the open attempt ({current})",
                           current_attempt_id=current)
        try:
            why = FailureReason(reason)
        except ValueError:
            raise RuleViolation("reason", "must be one of " + ", ".join(r.value for r in FailureReason)) from None
        self._record(TransactionAttemptAbandoned(order_id=self.id, bill_id=self.attempt.bill_id,
                                                 attempt_id=attempt_id, reason=why, at=at))

    def capture_prepayment(self, tenders: Sequence[Tender], *, at: datetime, deadline: datetime | None = None,
                           bill_id: str | None = None) -> None:
        """The prepayment was captured (未支付 -> 已預付): before the deadline, tenders adding up to the estimate."""
        self._check("capture_prepayment")
        assert self.estimated_total is not None
        bill = bill_id or self.prepayment_bill_id
        if bill is None:
            raise RuleViolation("bill_id", "this order has no prepayment bill")
        if self.prepayment_bill_id is not None and bill != self.prepayment_bill_id:
            raise RuleViolation("bill_id", f"the order's prepayment bill is {self.prepayment_bill_id}")
        # Orders cancels an unpaid order AT its deadline, so a capture at that instant is already late.
        due = deadline or self.payment_deadline
        if due is not None and at >= due:
            raise RuleViolation("deadline", f"the payment deadline {due.isoformat()} has passed")
        if not tenders:
            raise RuleViolation("tenders", "at least one tender pays the prepayment")
        check_tenders(tenders, self.currency, "tenders")
        for i, tender in enumerate(tenders):
            if tender.kind is TenderKind.CASH:
                raise RuleViolation(f"tenders[{i}].kind",
                                    "cash cannot prepay; the merchant confirms cash at settlement")
        if self.reservation is not None and any(t not in tenders for t in self.reservation.tenders):
            # Otherwise the voucher would stay bound and the balance held for a prepayment paid another way.
            raise RuleViolation("tenders", f"{self.reservation.reserved} of the prepayment is reserved "
                                           "(voucher / member balance): capture it with the card remainder, "
                                           "or release the reservation first")
        paid = Money(amount=sum(t.amount.amount for t in tenders), currency=self.currency)
        if paid != self.estimated_total:
            raise RuleViolation("tenders", f"add up to {paid}, not the prepayment {self.estimated_total}")
        self._record(TransactionPrepaymentCaptured(order_id=self.id, bill_id=bill, amount=paid,
                                                   tenders=list(tenders), at=at))

    def reserve_prepayment(self, tenders: Sequence[Tender], *, at: datetime) -> Money:
        """Reserve vouchers and/or the member balance for part of the prepayment (未支付 stays);
        returns the remainder, due by a third-party payment at the cashier before the deadline.

        The tenders are the platform's own (voucher, member balance), positive, and together less
        than the prepayment: when they cover it, it is captured instead. One reservation at a time,
        and none while a cashier attempt is open (it is for the whole prepayment)."""
        self._check("reserve_prepayment")
        assert self.estimated_total is not None
        if self.prepayment_bill_id is None:
            raise RuleViolation("bill_id", "this order has no prepayment bill")
        if self.reservation is not None:
            raise Conflict(f"transaction {self.id}: {self.reservation.reserved} of the prepayment is already "
                           f"reserved; {self.reservation.remainder} is due by card",
                           remainder=str(self.reservation.remainder))
        if self.attempt is not None:
            raise Conflict(f"transaction {self.id}: attempt {self.attempt.attempt_id} is still open",
                           current_attempt_id=self.attempt.attempt_id)
        if self.payment_deadline is not None and at >= self.payment_deadline:
            raise RuleViolation("deadline", f"the payment deadline {self.payment_deadline.isoformat()} has passed")
        if not tenders:
            raise RuleViolation("tenders", "reserve at least one voucher or member-balance tender")
        check_tenders(tenders, self.currency, "tenders")
        for i, tender in enumerate(tenders):
            if tender.kind not in RESERVABLE_KINDS:
                raise RuleViolation(f"tenders[{i}].kind", "only vouchers and the member balance are reserved; "
                                                          "a card pays the remainder at the cashier")
        reserved = Money(amount=sum(t.amount.amount for t in tenders), currency=self.currency)
        if reserved.amount >= self.estimated_total.amount:
            raise RuleViolation("tenders", f"add up to {reserved}, which pays the whole prepayment "
                                           f"{self.estimated_total}: capture it instead")
        remainder = self.estimated_total - reserved
        self._record(TransactionPrepaymentReserved(
            order_id=self.id, bill_id=self.prepayment_bill_id, amount=self.estimated_total, tenders=list(tenders),
            reserved=reserved, remainder=remainder, payment_deadline=self.payment_deadline, at=at))
        return remainder

    def capture_reserved_prepayment(self, payment: Tender, *, at: datetime) -> None:
        """The provider's charge paid the remainder: the prepayment is captured with the reserved
        tenders and the card, in one event (未支付 -> 已預付). Before the deadline, exactly the remainder."""
        self._check("capture_prepayment")
        if self.reservation is None:
            raise Conflict(f"transaction {self.id}: nothing is reserved; the prepayment is captured whole")
        if payment.kind is not TenderKind.THIRD_PARTY:
            raise RuleViolation("payment.kind", "the remainder is paid by a third-party payment")
        if payment.amount != self.reservation.remainder:
            raise RuleViolation("payment.amount", f"must be the remainder {self.reservation.remainder}, "
                                                  f"not {payment.amount}")
        self.capture_prepayment([*self.reservation.tenders, payment], at=at)

    def release_reservation(self, reason: str, at: datetime) -> None:
        """The customer cancelled the reservation: the voucher binding and the wallet hold go back
        (未支付 stays). Refused while a cashier attempt for the remainder is open: abandon it first,
        so that a charge for the remainder never arrives after its reservation is gone."""
        self._check("release_reservation")
        if self.reservation is None:
            raise Conflict(f"transaction {self.id}: nothing is reserved")
        if self.attempt is not None:
            raise Conflict(f"transaction {self.id}: attempt {self.attempt.attempt_id} for the remainder is open; "
                           "abandon it first", current_attempt_id=self.attempt.attempt_id)
        self._release_reservation(reason, at)

    def _release_reservation(self, reason: str, at: datetime) -> None:
        assert self.reservation is not None
        r = self.reservation
        self._record(TransactionReservationReleased(order_id=self.id, bill_id=r.bill_id, tenders=list(r.tenders),
                                                    amount=r.reserved, reason=reason, at=at))

    def bill(self, bill_id: str, revision: int, total: Money, at: datetime) -> None:
        """The customer confirmed the merchant's bill and it was submitted (報單): 已出賬, settlement pending."""
        self._check("bill")
        self._require_currency("total", total)
        if total.amount < 0:
            raise RuleViolation("total", "must not be negative")
        if revision < 1:
            raise RuleViolation("revision", "must be at least 1")
        self._record(TransactionBilled(order_id=self.id, bill_id=bill_id, revision=revision, total=total, at=at))

    def preview_settlement(self) -> SettlementPlan:
        """What `settle` would do now: applied prepayment, refunds of excess, shortfall. No events."""
        self._check("settle")
        assert self.bill_total is not None
        return plan_settlement(self.bill_total, self.prepaid_tenders)

    def settle(self, *, at: datetime, method: TenderKind | str | None = None, reference: str | None = None,
               is_member: bool = False, member_balance_available: Money | None = None) -> SettlementPlan:
        """Settle the bill (多退少補): refund the excess, collect the shortfall by `method` (seed 三, 四).

        Paid at once, except that a cash collection waits in billed for `confirm_cash`.
        """
        plan = self.preview_settlement()
        collection: Tender | None = None
        chosen: TenderKind | None = None
        if plan.shortfall.amount == 0:
            if method is not None:
                raise RuleViolation("method", "nothing to collect: the prepayment covers the bill")
        else:
            if method is None:
                raise RuleViolation("method", f"the shortfall {plan.shortfall} must be collected: "
                                              "member_balance, cash or third_party")
            chosen = choose_collection_method(plan.shortfall, is_member=is_member,
                                              member_balance_available=member_balance_available, requested=method)
            if not reference:
                raise RuleViolation("reference", "name the payment, wallet entry or cash receipt that collected it")
            collection = Tender(kind=chosen, amount=plan.shortfall, reference=reference)
        assert self.bill_id is not None
        self._record(TransactionSettled(
            order_id=self.id, bill_id=self.bill_id, total=plan.total, plan=plan, method=chosen,
            collection=collection, collected=plan.shortfall, refunded=plan.refunded,
            tenders=plan.applied + ([collection] if collection else []),
            awaiting_cash_confirmation=chosen is TenderKind.CASH, at=at))
        self._refunds_owed(RefundSource.SETTLEMENT, plan.refunds, at)
        return plan

    def confirm_cash(self, merchant_id: str, at: datetime) -> None:
        """The merchant confirmed receiving the cash (已出賬 -> 已確認)."""
        self._check("confirm_cash")
        if self.merchant_id is not None and merchant_id != self.merchant_id:
            raise RuleViolation("merchant_id", "only the order's merchant can confirm the cash")
        assert self.settlement is not None and self.bill_id is not None
        self._record(TransactionCashConfirmed(order_id=self.id, bill_id=self.bill_id, merchant_id=merchant_id,
                                              amount=self.settlement.collected, at=at))

    def preview_cancellation(self, *, fault_party: FaultParty | str, seconds_before_service_start: int,
                             policy: CancellationPolicy, at: datetime, reason_code: str = "",
                             dispatch_attempts: int = 0, complained: bool = False, customer_tenure_days: int = 0,
                             lifetime_value: Money | None = None) -> CancellationPlan:
        """What `cancel` would do now, under the policy in force at placement. No events."""
        self._check("cancel")
        if policy.version != self.policy_version:
            raise RuleViolation("policy.version", f"this order was placed under cancellation policy "
                                                  f"{self.policy_version}, not {policy.version}")
        return plan_cancellation_refund(
            self.prepaid_tenders, fault_party=fault_party, seconds_before_service_start=seconds_before_service_start,
            policy=policy, now=at, reason_code=reason_code, dispatch_attempts=dispatch_attempts,
            complained=complained, customer_tenure_days=customer_tenure_days, lifetime_value=lifetime_value)

    def cancel(self, *, fault_party: FaultParty | str, seconds_before_service_start: int, reason_code: str,
               policy: CancellationPolicy, at: datetime, merchant_id: str | None = None,
               dispatch_attempts: int = 0, complained: bool = False, customer_tenure_days: int = 0,
               lifetime_value: Money | None = None) -> CancellationPlan:
        """The order was cancelled: 已退款 with the plan's refunds and penalty if prepaid, else 已作廢."""
        plan = self.preview_cancellation(
            fault_party=fault_party, seconds_before_service_start=seconds_before_service_start, policy=policy,
            at=at, reason_code=reason_code, dispatch_attempts=dispatch_attempts, complained=complained,
            customer_tenure_days=customer_tenure_days, lifetime_value=lifetime_value)
        merchant = merchant_id or self.merchant_id
        if merchant is None and (plan.merchant_fault_recorded or plan.merchant_compensation.amount):
            raise RuleViolation("merchant_id", "name the merchant: the cancellation is recorded for them")
        bill = self.prepayment_bill_id
        if self.status is S.PREPAID:
            self._record(TransactionRefunded(order_id=self.id, bill_id=bill, plan=plan, reason_code=reason_code,
                                             at=at))
        else:
            if self.reservation is not None:  # nothing was captured: the reserved tenders go back
                self._release_reservation(f"the order was cancelled ({reason_code})", at)
            self._record(TransactionVoided(order_id=self.id, bill_id=bill, plan=plan, reason_code=reason_code, at=at))
        self._refunds_owed(RefundSource.CANCELLATION, plan.refunds, at)
        assert self.customer_id is not None
        for no, voucher in enumerate(plan.compensation_vouchers, start=1):
            self._record(CompensationVoucherGranted(
                order_id=self.id, bill_id=bill, customer_id=self.customer_id, grant_no=no, rule=voucher.rule,
                amount=voucher.amount, expires_at=voucher.expires_at, replaces=voucher.replaces, at=at))
        if plan.merchant_compensation.amount:
            assert merchant is not None
            self._record(MerchantCompensationGranted(
                order_id=self.id, bill_id=bill, merchant_id=merchant, amount=plan.merchant_compensation,
                reason_code=reason_code, seconds_before_service_start=seconds_before_service_start,
                policy_version=plan.policy_version, at=at))
        if plan.merchant_fault_recorded:
            assert merchant is not None
            self._record(MerchantFaultRecorded(order_id=self.id, bill_id=bill, merchant_id=merchant,
                                               reason_code=reason_code,
                                               seconds_before_service_start=seconds_before_service_start, at=at))
        return plan

    def record_payment_to_return(self, tender: Tender, reason: str, at: datetime) -> None:
        """Record money that arrived but cannot be taken, so that it is returned (any state but
        before opening). The same payment reported again changes nothing."""
        if self.status is None:
            raise RuleViolation("order_id", f"transaction {self.id} is not open")
        self._require_currency("tender.amount", tender.amount)
        if any(p.tender.reference == tender.reference for p in self.payments_to_return):
            return
        self._record(TransactionPaymentToReturn(order_id=self.id, bill_id=self.bill_id or self.prepayment_bill_id,
                                                tender=tender, reason=reason, at=at))

    def freeze_refunds(self, dispute_id: str, at: datetime) -> None:
        """A dispute was opened on the payment: refunds wait until it closes. Repeating it changes nothing."""
        self._check("freeze_refunds")
        if dispute_id in self.open_disputes:
            return  # providers repeat their events
        self._record(TransactionRefundsFrozen(order_id=self.id, bill_id=self.bill_id or self.prepayment_bill_id,
                                              dispute_id=dispute_id, at=at))

    def unfreeze_refunds(self, dispute_id: str, at: datetime) -> None:
        """The dispute closed; refunds run again once no dispute is open, and the refunds held
        meanwhile are released (reduced by any chargeback). Repeating it changes nothing."""
        self._check("unfreeze_refunds")
        if dispute_id not in self.open_disputes:
            return
        self._record(TransactionRefundsUnfrozen(order_id=self.id, bill_id=self.bill_id or self.prepayment_bill_id,
                                                dispute_id=dispute_id, at=at))
        if not self.disputed and self.held_refunds:
            self._release_held(at)

    def record_chargeback(self, dispute_id: str, amount: Money, at: datetime,
                          payment_ids: Sequence[str] = ()) -> None:
        """A dispute was lost: the issuer returned `amount` of the payment named by `payment_ids`
        (the dispute's PaymentIntent / charge ids) to the customer. Record it before unfreezing, so
        that the held refunds are reduced by it. Repeating it for the same dispute changes nothing."""
        self._check("record_chargeback")
        self._require_currency("amount", amount)
        if amount.amount <= 0:
            raise RuleViolation("amount", "a chargeback is a positive amount")
        if any(c.dispute_id == dispute_id for c in self.chargebacks):
            return
        cards = [t.reference for t in self.prepaid_tenders if t.kind is TenderKind.THIRD_PARTY]
        if self.settlement is not None and self.settlement.collection is not None \
                and self.settlement.collection.kind is TenderKind.THIRD_PARTY:
            cards.append(self.settlement.collection.reference)
        ids = [p for p in payment_ids if p]
        reference = next((r for r in cards if r in ids), None) or (cards[0] if cards else None) \
            or (ids[0] if ids else dispute_id)
        self._record(TransactionChargedBack(order_id=self.id, bill_id=self.bill_id or self.prepayment_bill_id,
                                            dispute_id=dispute_id, reference=reference, amount=amount, at=at))

    # --- refunds customer service issues, and refunds the provider reports --------------

    def money_tenders(self) -> list[Tender]:
        """The money that pays for the order now: what paid the bill once settled, else the prepayment."""
        tenders = list(self.settlement.tenders) if self.settlement is not None else list(self.prepaid_tenders)
        return [t for t in tenders if t.kind.is_money]

    def money_back(self) -> dict[tuple[TenderKind, str], int]:
        """Per money tender (kind, reference), what has gone back to the customer: a cancellation's
        refunds (held ones included: they are owed), refunds issued, refunds made at the provider, and
        lost disputes' chargebacks not already set against a refund (the issuer returned that money).
        A settlement's excess refunds concern prepaid money that did not pay the bill, so they are not
        counted against the tenders that did."""
        back: dict[tuple[TenderKind, str], int] = {}

        def add(kind: TenderKind, reference: str, amount: int) -> None:
            back[(kind, reference)] = back.get((kind, reference), 0) + amount

        if self.cancellation is not None:
            for r in self.cancellation.refunds:
                add(r.kind, r.reference, r.amount.amount)
        for issued in self.issued_refunds:
            for r in issued.refunds:
                add(r.kind, r.reference, r.amount.amount)
        cards = {t.reference for t in self.money_tenders() if t.kind is TenderKind.THIRD_PARTY}
        for ext in self.external_refunds:
            if ext.reference in cards:
                add(TenderKind.THIRD_PARTY, ext.reference, ext.amount.amount)
        left = self.chargeback_unapplied
        for t in self.money_tenders():
            if left <= 0:
                break
            if t.kind is TenderKind.THIRD_PARTY:
                part = min(left, max(t.amount.amount - back.get((t.kind, t.reference), 0), 0))
                add(t.kind, t.reference, part)
                left -= part
        return back

    def refundable(self) -> Money:
        """What customer service may still refund: the money tenders less what went back."""
        back = self.money_back()
        return Money(amount=sum(max(t.amount.amount - back.get((t.kind, t.reference), 0), 0)
                                for t in self.money_tenders()), currency=self.currency)

    def issue_refund(self, request_id: str, amount: Money, reason: str, at: datetime) -> list[Refund]:
        """Refund `amount` of what the order paid, back along the original path (third party > member
        balance), never above what was paid online less what went back (seed 五, the safety rule).
        Refused while a dispute is open (the card network decides where the money goes). The same
        request id again changes nothing and returns its lines."""
        for done in self.issued_refunds:
            if done.refund_request_id == request_id:
                if done.amount != amount:
                    raise Conflict(f"refund request {request_id} was for {done.amount}, not {amount}",
                                   refund_request_id=request_id)
                return list(done.refunds)
        self._check("issue_refund")
        self._require_currency("amount", amount)
        text = (reason or "").strip()
        if not text:
            raise RuleViolation("reason", "is required: say why the money goes back")
        if self.disputed:
            open_now = sorted(self.open_disputes)
            raise Conflict(f"transaction {self.id}: refunds are frozen while dispute(s) {', '.join(open_now)} "
                           "are open", open_disputes=open_now)
        lines = plan_issued_refund(amount, self.money_tenders(), self.money_back())
        self._record(TransactionRefundIssued(order_id=self.id, bill_id=self.bill_id or self.prepayment_bill_id,
                                             refund_request_id=request_id, amount=amount, refunds=lines,
                                             reason=text[:500], at=at))
        return lines

    def record_external_refund(self, provider_refund_id: str, payment_ids: Sequence[str], amount: Money,
                               at: datetime) -> bool:
        """The provider reports a refund closeloop did not ask for; record it once. False when it is
        already recorded or concerns none of the order's payments."""
        self._check("record_external_refund")
        self._require_currency("amount", amount)
        if any(e.provider_refund_id == provider_refund_id for e in self.external_refunds):
            return False
        ours = [t.reference for t in [*self.money_tenders(), *(p.tender for p in self.payments_to_return)]]
        reference = next((p for p in payment_ids if p in ours), None)
        if reference is None:
            return False
        self._record(TransactionExternalRefund(order_id=self.id, bill_id=self.bill_id or self.prepayment_bill_id,
                                               provider_refund_id=provider_refund_id, reference=reference,
                                               amount=amount, at=at))
        return True

    # --- evolution ----------------------------------------------------------------------

    def apply(self, event: DomainEvent) -> None:
        """Evolve the state by one event; no checks here."""
        match event:
            case TransactionOpened():
                self.customer_id, self.merchant_id = event.customer_id, event.merchant_id
                self.placed_at, self.estimated_total = event.placed_at, event.estimated_total
                self.policy_version, self.prepayment_bill_id = event.policy_version, event.bill_id
                self.payment_deadline = event.payment_deadline
                self.status = S.UNPAID
            case TransactionPaymentAttempted():
                self.attempt = event
            case TransactionAttemptAbandoned():
                self.attempt = None
                self.abandoned_attempts.append(event.attempt_id)
            case TransactionPrepaymentCaptured():
                self.prepaid_tenders, self.prepaid_at = list(event.tenders), event.at
                self.captured_reservation, self.reservation = self.reservation, None
                self.attempt = None
                self.status = S.PREPAID
            case TransactionPrepaymentReserved():
                self.reservation = event
            case TransactionReservationReleased():
                self.reservation = None
                self.released_reservations.append(event)
            case TransactionBilled():
                self.bill_id, self.bill_revision, self.bill_total = event.bill_id, event.revision, event.total
                self.status = S.BILLED
            case TransactionSettled():
                self.settlement = event
                self.attempt = None
                self.status = S.BILLED if event.awaiting_cash_confirmation else S.PAID
            case TransactionCashConfirmed():
                self.merchant_id = self.merchant_id or event.merchant_id
                self.cash_confirmed_at = event.at
                self.status = S.CONFIRMED
            case TransactionRefunded():
                self.cancellation, self.attempt = event.plan, None
                self.status = S.REFUNDED
            case TransactionVoided():
                self.cancellation, self.attempt = event.plan, None
                self.status = S.VOIDED
            case CompensationVoucherGranted():
                self.compensation_vouchers.append(event)
            case MerchantCompensationGranted():
                self.merchant_compensation = event
            case MerchantFaultRecorded():
                self.merchant_fault = event
            case TransactionRefundsFrozen():
                self.open_disputes.add(event.dispute_id)
            case TransactionRefundsUnfrozen():
                self.open_disputes.discard(event.dispute_id)
            case TransactionRefundsHeld():
                self.held_refunds.append(event)
            case TransactionHeldRefundsReleased():
                self.held_refunds = [h for h in self.held_refunds if h.source is not event.source]
                self.released_refunds.append(event)
                self.chargeback_unapplied -= sum(r.amount.amount for r in event.returned_by_chargeback)
            case TransactionChargedBack():
                self.chargebacks.append(event)
                self.chargeback_unapplied += event.amount.amount
            case TransactionPaymentToReturn():
                self.payments_to_return.append(event)
            case TransactionRefundIssued():
                self.issued_refunds.append(event)
            case TransactionExternalRefund():
                self.external_refunds.append(event)
            case _:
                raise TypeError(f"Transaction cannot apply {type(event).__name__}")
