"""How the orders service reacts to the payments service's events (topic payments.events),
inside the consumer's transaction (see libs/application/reactions.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from libs.application.reactions import Reactions
from libs.application.unit_of_work import UnitOfWork
from libs.domain.events import DomainEvent
from libs.eventstore import EventStore
from services.orders.application.services import deadline_timer_id
from services.orders.domain.bill import Bill
from services.orders.domain.events import BillKind, BillStatus, OrderStatus
from services.orders.domain.order import Order
from services.payments.domain import events as pay

log = logging.getLogger("closeloop.orders.payments")


class PaymentsReactions(Reactions):
    def __init__(self, store: EventStore, clock: Callable[[], datetime]) -> None:
        super().__init__(store, self._react, actor="orders")
        self.clock = clock

    async def _react(self, uow: UnitOfWork, event: DomainEvent) -> None:
        await self.react(uow, event, self.clock())

    async def react(self, uow: UnitOfWork, event: DomainEvent, at: datetime) -> None:
        match event:
            case pay.PaymentAttemptStarted():
                bill = await uow.get(Bill, event.bill_id)
                if bill.kind is BillKind.PREPAYMENT:
                    order = await uow.get(Order, event.order_id)
                    order.start_checkout(event.attempt_id, at)
                bill.start_payment(event.attempt_id, at)
            case pay.PaymentAttemptFailed():
                bill = await uow.get(Bill, event.bill_id)
                if bill.kind is BillKind.PREPAYMENT:
                    order = await uow.get(Order, event.order_id)
                    if order.status is OrderStatus.PROCESSING:
                        order.abandon_checkout(event.attempt_id, event.reason, at)
                if bill.status is BillStatus.PROCESSING:
                    bill.abandon_payment(event.attempt_id, event.reason, at)
            case pay.PrepaymentCaptured():
                order = await uow.get(Order, event.order_id)
                reference = _reference(event.tenders, event.bill_id)
                order.record_prepayment(event.bill_id, event.amount, reference, at)
                bill = await uow.get(Bill, event.bill_id)
                if bill.status in (BillStatus.PENDING, BillStatus.PROCESSING):
                    bill.pay(event.amount, reference, at)
                await uow.cancel_timer(deadline_timer_id(event.order_id))
            case pay.BillSettled():
                order = await uow.get(Order, event.order_id)
                bill = await uow.get(Bill, event.bill_id)
                reference = _reference(event.tenders, event.bill_id)
                if bill.status is not BillStatus.COMPLETED:
                    bill.pay(event.total, reference, at)
                order.record_settlement(event.bill_id, event.total, at)
            case _:
                pass


def _reference(tenders: list[pay.Tender], fallback: str) -> str:
    """The payment's reference: the (last) third-party payment's, else the first tender's."""
    third_party = [t.reference for t in tenders if t.kind is pay.TenderKind.THIRD_PARTY]
    if third_party:
        return third_party[-1]
    return tenders[0].reference if tenders else fallback
