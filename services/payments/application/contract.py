"""The payments contract the orders service consumes (PaymentAttemptStarted,
PaymentAttemptFailed, PrepaymentCaptured, BillSettled), derived from the Transaction
aggregate's own events. They are appended to the stream `payment-{order_id}` in the same
database transaction as the Transaction events they come from, so the two never disagree,
and the Transaction stream holds only the aggregate's events."""

from __future__ import annotations

from collections.abc import Sequence

from libs.domain.events import DomainEvent
from libs.domain.money import Money
from services.payments.domain import events as ev

CONTRACT_CATEGORY = "payment"


def contract_stream_id(order_id: str) -> str:
    return f"{CONTRACT_CATEGORY}-{order_id}"


def contract_events(pending: Sequence[DomainEvent], settlement: ev.TransactionSettled | None) -> list[DomainEvent]:
    """The contract events that the given new Transaction events imply.

    `settlement` is the transaction's recorded settlement (for a cash confirmation, whose
    BillSettled carries the tenders and amounts of that settlement)."""
    out: list[DomainEvent] = []
    for e in pending:
        match e:
            case ev.TransactionPaymentAttempted():
                out.append(ev.PaymentAttemptStarted(order_id=e.order_id, bill_id=e.bill_id, attempt_id=e.attempt_id,
                                                    amount=e.amount, method=e.method, at=e.at))
            case ev.TransactionAttemptAbandoned():
                out.append(ev.PaymentAttemptFailed(order_id=e.order_id, bill_id=e.bill_id, attempt_id=e.attempt_id,
                                                   reason=e.reason, at=e.at))
            case ev.TransactionPrepaymentCaptured():
                out.append(ev.PrepaymentCaptured(order_id=e.order_id, bill_id=e.bill_id, amount=e.amount,
                                                 tenders=list(e.tenders), captured_at=e.at))
            case ev.TransactionSettled() if not e.awaiting_cash_confirmation:
                out.append(_bill_settled(e, e.at))
            case ev.TransactionCashConfirmed():
                assert settlement is not None
                out.append(_bill_settled(settlement, e.at))
            case _:
                pass
    return out


def _bill_settled(s: ev.TransactionSettled, at: object) -> ev.BillSettled:
    zero = Money.zero(s.total.currency)
    return ev.BillSettled(order_id=s.order_id, bill_id=s.bill_id, total=s.total, tenders=list(s.tenders),
                          refunded=s.refunded or zero, collected=s.collected or zero, settled_at=at)
