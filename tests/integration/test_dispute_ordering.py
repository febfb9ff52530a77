"""The payments service's dispute handling on a real PostgreSQL, driven in process so that the arrival
order is exact: a charge and a dispute that reach payments before the order does (the transaction does
not exist yet), then the order, then its cancellation. The cancellation must still find the open
dispute (from the read model), be applied (never refused and skipped by the consumer) and hold its
refunds; the lost dispute then releases them less the chargeback."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from libs.application.reactions import Reactions
from libs.devstack.stripe import charge_succeeded, stripe_id
from libs.domain.money import Money
from libs.eventstore import EventStore, Metadata, NewEvent
from libs.eventstore.migrate import migrate
from libs.messaging.envelope import EventEnvelope
from services.orders.domain.catalogue import ServiceItem
from services.orders.domain.events import (
    Address,
    IntendedTenders,
    PrepaymentDecision,
    PrepaymentReason,
    PrepaymentRule,
    Slot,
)
from services.orders.domain.order import Order
from services.payments.application.service import PaymentsService
from services.payments.application.upstream import UpstreamIngestor
from services.payments.bootstrap import CONFIG_DIR, MIGRATIONS, wire
from services.payments.domain.policy import parse_policies
from services.payments.domain.upstream_events import ReceivedVia
from services.payments.domain.wallet import parse_wallet_policy

pytestmark = pytest.mark.integration
TZ = ZoneInfo("Asia/Taipei")


def utcnow() -> datetime:
    return datetime.now(UTC)


async def payments(store: EventStore) -> tuple[PaymentsService, UpstreamIngestor]:
    """The payments service wired as services/payments/bootstrap.py wires it, without Kafka or HTTP."""
    async with store.pool.acquire() as conn:
        await migrate(conn, {"payments": MIGRATIONS})
    wired = wire(store, parse_policies((CONFIG_DIR / "cancellation_policy.toml").read_text()),
                 parse_wallet_policy((CONFIG_DIR / "wallet_policy.toml").read_text()), utcnow)
    return wired.service, wired.ingestor


def dispute(type_: str, dispute_id: str, charge: dict[str, Any], status: str, amount: int) -> dict[str, Any]:
    now = int(time.time())
    return {"id": stripe_id("evt"), "object": "event", "created": now, "type": type_, "livemode": False,
            "data": {"object": {"id": dispute_id, "object": "dispute", "amount": amount, "currency": "twd",
                                "status": status, "reason": "fraudulent", "created": now - 60, "metadata": {},
                                "charge": charge["id"], "payment_intent": charge["payment_intent"],
                                "evidence_details": {"due_by": now + 86400, "has_evidence": status != "needs_response",
                                                     "submission_count": 0 if status == "needs_response" else 1}}}}


async def types(store: EventStore, stream_id: str) -> list[str]:
    return [e.event_type for e in await store.read_stream(stream_id)]


async def test_a_dispute_that_arrived_before_the_transaction_still_holds_the_cancellations_refunds(
        store: EventStore) -> None:
    service, ingestor = await payments(store)
    reactions = Reactions(store, service.on_orders_event, actor=f"payments-test-{uuid.uuid4().hex[:6]}")
    order_id = f"o-{uuid.uuid4().hex[:10]}"
    now = datetime.now(TZ).replace(second=0, microsecond=0)
    day = (now + timedelta(days=3)).date()
    start = datetime(day.year, day.month, day.day, 19, 0, tzinfo=TZ)
    order = Order.place(
        order_id, customer_id=f"c-{uuid.uuid4().hex[:8]}", staff_id="s-1",
        item=ServiceItem(service_code="dishwash-standard", product_line="dishwashing", name="Dish-washing",
                         hourly_rate=Money(amount=60000, currency="TWD")),
        slot=Slot(start=start, end=start + timedelta(hours=2)),
        address=Address(line1="忠孝東路四段 1 號", district="大安區", city="臺北市"), tenders=IntendedTenders(),
        decision=PrepaymentDecision(required=True, policy_version="test", payment_deadline=now + timedelta(minutes=15),
                                    reasons=[PrepaymentReason(rule=PrepaymentRule.TIME_OF_DAY, detail="19:00")]),
        prepayment_bill_id=f"b-{order_id}", timezone="Asia/Taipei", at=now)
    estimate = order.estimated_total
    assert estimate is not None
    amount = estimate.amount

    async def deliver(events: list[Any]) -> None:
        """Append the orders service's events and hand them to the payments reaction, as the consumer does."""
        stream = f"order-{order_id}"
        version = len(await store.read_stream(stream))
        await store.append(stream, version, [NewEvent(e.event_type, e.to_data(), Metadata(
            actor="orders", role="service", correlation_id=f"order-{order_id}")) for e in events])
        recorded = (await store.read_stream(stream))[version:]
        async with store.transaction() as conn:
            await reactions.handle(conn, [EventEnvelope.from_recorded(r) for r in recorded])

    async def ingest(event: dict[str, Any]) -> None:
        await ingestor.ingest(json.dumps(event).encode(), via=ReceivedVia.WEBHOOK, signature_verified=True)

    charge_event = charge_succeeded(order_id, amount)
    charge = charge_event["data"]["object"]
    dp = stripe_id("dp")
    disputed = amount // 3  # a partial dispute
    # 1. The charge and the dispute arrive before OrderPlaced reaches payments: no transaction yet.
    await ingest(charge_event)
    await ingest(dispute("charge.dispute.created", dp, charge, "needs_response", disputed))
    assert await types(store, f"transaction-{order_id}") == []
    row = await store.pool.fetchrow("SELECT order_id, is_open FROM payments_disputes WHERE dispute_id = $1", dp)
    assert (row["order_id"], row["is_open"]) == (order_id, True)
    # 2. The order arrives: the transaction opens and the parked charge prepays it (the dispute was not parked).
    await deliver(order.pending)
    order.mark_saved()
    assert await types(store, f"transaction-{order_id}") == ["TransactionOpened", "TransactionPrepaymentCaptured"]
    # 3. The customer cancels: the cancellation finds the open dispute, is applied, and holds its refund.
    order.record_prepayment(f"b-{order_id}", estimate, charge["payment_intent"], now)
    order.mark_saved()
    order.cancel(cancelled_by="customer", reason_code="changed_mind", reason="", at=datetime.now(TZ))
    await deliver(order.pending)
    assert reactions.rejected == []  # before: Conflict, logged, and the cancellation skipped for good
    assert (await types(store, f"transaction-{order_id}"))[2:] == [
        "TransactionRefundsFrozen", "TransactionRefunded", "TransactionRefundsHeld"]
    # 4. The dispute is lost: the held refund runs less what the bank already gave back.
    await ingest(dispute("charge.dispute.closed", dp, charge, "lost", disputed))
    events = await store.read_stream(f"transaction-{order_id}")
    assert [e.event_type for e in events][5:] == [
        "TransactionChargedBack", "TransactionRefundsUnfrozen", "TransactionHeldRefundsReleased"]
    released = events[-1].data
    assert [(r["reference"], r["amount"]["amount"]) for r in released["refunds"]] == [
        (charge["payment_intent"], amount - disputed)]
    assert [(r["reference"], r["amount"]["amount"]) for r in released["returned_by_chargeback"]] == [
        (charge["payment_intent"], disputed)]
