"""A service reacting to another service's events: refused events are skipped, a failing
reaction is dead-lettered, and neither stops the events after it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from libs.application.reactions import Reactions
from libs.application.unit_of_work import UnitOfWork
from libs.domain.errors import RuleViolation
from libs.domain.events import DomainEvent
from libs.eventstore import EventStore, Metadata, NewEvent
from libs.messaging.envelope import EventEnvelope
from services.orders.domain.events import OrderAccepted

pytestmark = pytest.mark.integration


async def test_refused_events_are_skipped_and_failing_ones_dead_lettered(store: EventStore) -> None:
    handled: list[str] = []

    async def react(uow: UnitOfWork, event: DomainEvent) -> None:
        assert isinstance(event, OrderAccepted)
        if event.merchant_id == "refuse":
            raise RuleViolation("merchant_id", "refused by the domain")
        if event.merchant_id == "crash":
            raise KeyError("a bug")
        handled.append(event.order_id)

    reactions = Reactions(store, react, actor=f"test-{uuid.uuid4().hex[:8]}")
    envelopes = []
    for merchant in ("ok1", "refuse", "crash", "ok2"):
        oid = f"o-{uuid.uuid4().hex[:8]}"
        event = OrderAccepted(order_id=oid, merchant_id=merchant, at=datetime.now(UTC))
        stream = f"order-{oid}"
        await store.append(stream, 0, [NewEvent(event.event_type, event.to_data(),
                                                Metadata(actor="t", role="service", correlation_id="c"))])
        [recorded] = await store.read_stream(stream)
        envelopes.append(EventEnvelope.from_recorded(recorded))
    async with store.transaction() as conn:
        await reactions.handle(conn, envelopes)
    assert handled == [envelopes[0].data["order_id"], envelopes[3].data["order_id"]]
    assert [r[0] for r in reactions.rejected] == [str(envelopes[1].event_id)]
    dead = await store.pool.fetch("SELECT event_id, reason FROM dead_letters WHERE consumer = $1", reactions.actor)
    assert [(d["event_id"], d["reason"].split(":")[0]) for d in dead] == [(envelopes[2].event_id, "KeyError")]
