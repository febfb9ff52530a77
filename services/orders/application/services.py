"""The orders service's use cases. Each one loads aggregates through a UnitOfWork,
calls their command methods (the rules live in the domain) and returns the response
body. Entry points (HTTP, Kafka, timers) only build the command and call these."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.eventstore import EventStore, uuid7
from services.orders.domain.access import CUSTOMER, MERCHANT, PARTY, STAFF, require_canceller, require_party
from services.orders.domain.bill import Bill
from services.orders.domain.catalogue import Catalogue
from services.orders.domain.commands import (
    AcceptOrder,
    AdjustBill,
    CancelOrder,
    ConfirmBill,
    PlaceOrder,
    PushBill,
    RecordCreditScore,
    SetPlatformConditions,
    StartService,
)
from services.orders.domain.customer import Customer
from services.orders.domain.events import BillStatus, FaultParty, IntendedTenders, OrderStatus
from services.orders.domain.order import ORDER_MACHINE, Order
from services.orders.domain.platform import PlatformConditions
from services.orders.domain.prepayment import PrepaymentPolicy, decide
from services.orders.domain.schedule import StaffSchedule, schedule_stream_key

OWNER = "orders"
TIMER_PAYMENT_DEADLINE = "payment_deadline"
PLATFORM_ID = "conditions"


def utcnow() -> datetime:
    return datetime.now(UTC)


def deadline_timer_id(order_id: str) -> str:
    return f"payment-deadline:{order_id}"


def order_response(order: Order) -> dict[str, Any]:
    """The body every order command returns: where the order is now and what it allows."""
    assert order.status is not None
    return {
        "order_id": order.id,
        "status": order.status.value,
        "status_label": order.label_zh,
        "version": order.version + len(order.pending),
        "allowed_commands": order.allowed_commands(),
        "prepayment": order.prepayment.model_dump(mode="json") if order.prepayment else None,
        "payment_deadline": order.payment_deadline.isoformat() if order.payment_deadline else None,
        "estimated_total": order.estimated_total.model_dump() if order.estimated_total else None,
        "prepayment_bill_id": order.prepayment_bill_id,
        "bill_id": order.bill_id,
    }


def bill_response(order: Order, bill: Bill) -> dict[str, Any]:
    body = order_response(order)
    body["bill"] = {
        "bill_id": bill.id, "status": bill.status.value if bill.status else None,
        "revision": bill.revision, "total": bill.amount.model_dump() if bill.amount else None,
        "labour": bill.labour.model_dump(mode="json") if bill.labour else None,
        "materials": [m.model_dump(mode="json") for m in bill.materials],
        "confirmed": bill.confirmed, "allowed_commands": bill.allowed_commands(),
    }
    return body


@dataclass
class OrdersService:
    store: EventStore
    policy: PrepaymentPolicy
    catalogue: Catalogue
    timer_owner: str = OWNER
    clock: Callable[[], datetime] = utcnow

    async def _run(self, ctx: CommandContext, scope: str, fn: Callable[[UnitOfWork, datetime], Any]) -> CommandResult:
        async def body(uow: UnitOfWork) -> dict[str, Any]:
            return await fn(uow, self.clock())

        return await execute(self.store, ctx, scope, body)

    # --- placement ------------------------------------------------------------------------
    async def place_order(self, cmd: PlaceOrder, ctx: CommandContext) -> CommandResult:
        require_party(ctx.role, ctx.actor, action="place an order", roles=CUSTOMER, customer_id=cmd.customer_id)
        item = self.catalogue.get(cmd.service_code)
        self.catalogue.check_currency(cmd.currency)
        order_id = str(uuid7())

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            schedule_id = schedule_stream_key(cmd.staff_id, cmd.slot.start, self.policy.tz)
            loaded = await uow.load_many([(Customer, cmd.customer_id), (PlatformConditions, PLATFORM_ID),
                                          (StaffSchedule, schedule_id)])
            customer, conditions, schedule = cast(tuple[Customer, PlatformConditions, StaffSchedule], tuple(loaded))
            decision = decide(self.policy, product_line=item.product_line, slot_start=cmd.slot.start,
                              city=cmd.address.city, standing=customer.standing(at, self.policy),
                              conditions=conditions.snapshot(), at=at)
            bill_id = f"{order_id}-prepay" if decision.required else None
            order = Order.place(order_id, customer_id=cmd.customer_id, staff_id=cmd.staff_id, item=item,
                                slot=cmd.slot, address=cmd.address,
                                tenders=IntendedTenders(voucher_ids=cmd.voucher_ids,
                                                        use_member_balance=cmd.use_member_balance),
                                decision=decision, prepayment_bill_id=bill_id, timezone=self.policy.tz, at=at)
            uow.add(order)
            schedule.hold(order_id, cmd.slot, at, self.policy.tz)
            if decision.required:
                assert bill_id and order.estimated_total and decision.payment_deadline
                uow.add(Bill.issue_prepayment(bill_id, order_id, order.estimated_total, at))
                # The deadline timer is stored with the events: it fires after a restart too.
                await uow.schedule_timer(deadline_timer_id(order_id), self.timer_owner, TIMER_PAYMENT_DEADLINE,
                                         order.stream_id, decision.payment_deadline, {"order_id": order_id})
            return order_response(order)

        return await self._run(ctx, "orders:place", fn)

    # --- merchant ---------------------------------------------------------------------------
    async def accept(self, order_id: str, cmd: AcceptOrder, ctx: CommandContext) -> CommandResult:
        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            order = await uow.get(Order, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="accept an order", roles=MERCHANT, merchant_id=cmd.merchant_id)
            order.accept(cmd.merchant_id, at)
            return order_response(order)

        return await self._run(ctx, f"orders:{order_id}:accept", fn)

    async def start_service(self, order_id: str, cmd: StartService, ctx: CommandContext) -> CommandResult:
        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            order = await uow.get(Order, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="start the service", roles=MERCHANT,
                          merchant_id=order.merchant_id or cmd.merchant_id)
            order.start_service(cmd.merchant_id, at)
            return order_response(order)

        return await self._run(ctx, f"orders:{order_id}:start", fn)

    async def push_bill(self, order_id: str, cmd: PushBill, ctx: CommandContext) -> CommandResult:
        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            order = await uow.get(Order, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="bill this order", roles=MERCHANT,
                          merchant_id=order.merchant_id or cmd.merchant_id)
            assert order.status is not None
            ORDER_MACHINE.check(order.id, order.status, "push_bill")
            assert order.service is not None
            bill = Bill.push(f"{order_id}-final", order_id, hourly_rate=order.service.hourly_rate,
                             actual_minutes=cmd.actual_minutes, materials=cmd.materials, at=at)
            assert bill.amount is not None
            order.push_bill(cmd.merchant_id, bill.id, bill.amount, at)
            uow.add(bill)
            return bill_response(order, bill)

        return await self._run(ctx, f"orders:{order_id}:push-bill", fn)

    async def adjust_bill(self, order_id: str, cmd: AdjustBill, ctx: CommandContext) -> CommandResult:
        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            order = await uow.get(Order, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="adjust this order's bill", roles=MERCHANT,
                          merchant_id=order.merchant_id or cmd.merchant_id)
            assert order.status is not None
            ORDER_MACHINE.check(order.id, order.status, "adjust_bill")
            assert order.bill_id is not None
            bill = await uow.get(Bill, order.bill_id)
            bill.adjust(cmd.actual_minutes, cmd.materials, cmd.reason, at)
            assert bill.amount is not None
            order.adjust_bill(cmd.merchant_id, bill.id, bill.revision, bill.amount, at)
            return bill_response(order, bill)

        return await self._run(ctx, f"orders:{order_id}:adjust-bill", fn)

    # --- customer ---------------------------------------------------------------------------
    async def confirm_bill(self, order_id: str, cmd: ConfirmBill, ctx: CommandContext) -> CommandResult:
        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            order = await uow.get(Order, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="confirm this order's bill", roles=CUSTOMER,
                          customer_id=order.customer_id)
            assert order.status is not None
            ORDER_MACHINE.check(order.id, order.status, "confirm_bill")
            assert order.bill_id is not None
            bill = await uow.get(Bill, order.bill_id)
            assert bill.amount is not None
            order.confirm_bill(cmd.customer_id, bill.id, cmd.revision, bill.amount, at)
            bill.confirm(cmd.revision, at)
            return bill_response(order, bill)

        return await self._run(ctx, f"orders:{order_id}:confirm-bill", fn)

    async def cancel(self, order_id: str, cmd: CancelOrder, ctx: CommandContext) -> CommandResult:
        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            order = await uow.get(Order, order_id, check_version=True)
            require_party(ctx.role, ctx.actor, action="cancel this order", roles=PARTY, customer_id=order.customer_id,
                          merchant_id=order.merchant_id or cmd.merchant_id)
            require_canceller(ctx.role, cmd.cancelled_by)
            order.cancel(cancelled_by=cmd.cancelled_by, fault_party=cmd.fault_party, reason_code=cmd.reason_code,
                         reason=cmd.reason, merchant_id=cmd.merchant_id, at=at)
            await self._after_cancellation(uow, order, at)
            return order_response(order)

        return await self._run(ctx, f"orders:{order_id}:cancel", fn)

    async def _after_cancellation(self, uow: UnitOfWork, order: Order, at: datetime) -> None:
        """What a cancellation frees or records besides the order itself."""
        cancelled = order.cancellation
        assert cancelled is not None and order.slot is not None and order.staff_id and order.customer_id
        schedule = await uow.load(StaffSchedule, schedule_stream_key(order.staff_id, order.slot.start,
                                                                       self.policy.tz))
        schedule.release(order.id, f"order cancelled: {cancelled.reason_code}", at)
        if order.prepayment_bill_id:
            bill = await uow.load(Bill, order.prepayment_bill_id)
            if bill.status in (BillStatus.PENDING, BillStatus.PROCESSING):
                bill.close(f"order cancelled ({cancelled.reason_code})", at)
            await uow.cancel_timer(deadline_timer_id(order.id))
        # A payment time-out is not a cancellation the merchant suffered from (the order was
        # never dispatched), so it does not count against the customer's standing.
        if cancelled.fault_party is FaultParty.CUSTOMER and cancelled.reason_code != "payment_timeout":
            customer = await uow.load(Customer, order.customer_id)
            customer.record_cancellation(order.id, cancelled.was_prepaid, cancelled.seconds_before_service_start,
                                         at, self.policy)

    # --- timers -----------------------------------------------------------------------------
    async def expire_payment_deadline(self, order_id: str, ctx: CommandContext) -> CommandResult:
        """Fired by the durable timer. A no-op if the order was paid or cancelled meanwhile."""

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            order = await uow.get(Order, order_id)
            if order.status in (OrderStatus.AWAITING_PREPAYMENT, OrderStatus.PROCESSING):
                assert order.payment_deadline is not None
                if at >= order.payment_deadline:
                    order.expire_payment_deadline(at)
                    await self._after_cancellation(uow, order, at)
            return order_response(order)

        return await self._run(ctx, f"orders:{order_id}:expire", fn)

    # --- customers and platform ------------------------------------------------------------
    async def record_credit_score(self, cmd: RecordCreditScore, ctx: CommandContext) -> CommandResult:
        require_party(ctx.role, ctx.actor, action="record credit scores", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            customer = await uow.load(Customer, cmd.customer_id)
            customer.record_credit_score(cmd.score, cmd.source, at)
            standing = customer.standing(at, self.policy)
            return {"customer_id": customer.id, **standing.model_dump(mode="json")}

        return await self._run(ctx, f"orders:customer:{cmd.customer_id}:credit", fn)

    async def set_platform_conditions(self, cmd: SetPlatformConditions, ctx: CommandContext) -> CommandResult:
        require_party(ctx.role, ctx.actor, action="set the platform conditions", roles=STAFF)

        async def fn(uow: UnitOfWork, at: datetime) -> dict[str, Any]:
            platform = await uow.load(PlatformConditions, PLATFORM_ID)
            platform.change(severe_weather_cities=cmd.severe_weather_cities, load_pct=cmd.load_pct,
                            note=cmd.note, at=at)
            snap = platform.snapshot()
            return {"severe_weather_cities": sorted(snap.severe_weather_cities), "load_pct": snap.load_pct}

        return await self._run(ctx, "orders:platform", fn)

    async def customer_standing(self, customer_id: str) -> dict[str, Any]:
        async with self.store.transaction() as conn:
            uow = UnitOfWork(self.store, conn, CommandContext("system", "service", "query"))
            customer = await uow.load(Customer, customer_id)
        standing = customer.standing(self.clock(), self.policy)
        return {"customer_id": customer_id, **standing.model_dump(mode="json")}
