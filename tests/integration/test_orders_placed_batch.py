"""payments' reaction to a batch of orders.events opens the transactions of a run of OrderPlaced events
set-based (PaymentsService.on_orders_placed, libs/application/reactions.py `batched`). What it stores must
be exactly what the same events handled one at a time store: every event of every stream with its data
and metadata (each TransactionOpened caused by its own OrderPlaced), and the parked facts released. The
batch holds orders whose transaction does not exist yet, an order whose charge came first (parked: that
run goes one by one and releases it), an order delivered a second time, and the orders' other events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from libs.application.reactions import Reactions
from libs.devstack.stripe import charge_succeeded
from libs.eventstore import EventStore, NewEvent
from libs.messaging.envelope import EventEnvelope
from services.orders.domain.events import OrderPlaced
from services.payments.bootstrap import orders_reactions
from services.payments.domain.upstream_events import ReceivedVia
from tests.integration.test_upstream_batch import order_events, payments, snapshot
from tests.support.databases import fresh_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def databases(pg_dsn: str) -> AsyncIterator[list[str]]:
    async with fresh_database(pg_dsn, "it_opb") as a, fresh_database(pg_dsn, "it_opb") as b:
        yield [a, b]


def scenario() -> tuple[list[tuple[str, list[NewEvent]]], list[bytes]]:
    made = [order_events(n) for n in range(6)]
    parked_for, _, amount = made[4]
    charge = charge_succeeded(parked_for, amount)  # before its order reaches payments: parked
    return [(order_id, events) for order_id, events, _ in made], [json.dumps(charge).encode()]


SCENARIO = scenario()


async def store_orders(store: EventStore, orders: list[tuple[str, list[NewEvent]]]) -> list[EventEnvelope]:
    out = []
    for order_id, events in orders:
        await store.append(f"order-{order_id}", 0, events)
        out += [EventEnvelope.from_recorded(r) for r in await store.read_stream(f"order-{order_id}")]
    return out


async def run(dsn: str, *, batched: bool) -> tuple[dict[str, Any], int]:
    """The orders' events in three batches: four new orders; the parked order, another new one and a
    redelivery of the second; a redelivery of the first. Returns the snapshot and the number of runs
    applied set-based."""
    store, services = await payments(dsn)
    try:
        orders, upstream = SCENARIO
        for body in upstream:
            await services.ingestor.ingest_unbatched(body, via=ReceivedVia.KAFKA, signature_verified=False)
        placed = await store_orders(store, orders)
        batches = [placed[:4], [placed[4], placed[5], placed[1]], [placed[0]]]
        set_based = 0
        if batched:
            reactions = orders_reactions(store, services.service)
            inner = reactions.batched[OrderPlaced]

            async def counted(conn: Any, run: list[Any]) -> None:
                nonlocal set_based
                await inner(conn, run)
                set_based += 1  # reached only when the run was applied set-based

            reactions.batched[OrderPlaced] = counted
            for batch in batches:
                async with store.transaction() as conn:
                    await reactions.handle(conn, batch)
        else:
            plain = Reactions(store, services.service.on_orders_event, actor="payments")
            for e in (e for batch in batches for e in batch):
                async with store.transaction() as conn:
                    await plain.handle(conn, [e])
        return await snapshot(store), set_based
    finally:
        await store.close()


async def test_a_run_of_order_placed_stores_what_one_by_one_stores(databases: list[str]) -> None:
    expected, _ = await run(databases[0], batched=False)
    got, set_based = await run(databases[1], batched=True)
    assert got == expected
    assert set_based == 2  # the first and the last batch; the second went one by one (a parked fact)

    orders, _ = SCENARIO
    opened = {e["stream_id"]: e for e in got["events"] if e["event_type"] == "TransactionOpened"}
    assert len(opened) == len(orders)  # one transaction per order, the redelivered ones opened once
    for order_id, events in orders:
        [txn] = [e for sid, e in opened.items() if sid.endswith(order_id)]
        assert txn["metadata"]["causation_id"] == str(events[0].event_id)  # caused by its own OrderPlaced
    charged = [e for e in got["events"]
               if e["stream_id"].endswith(orders[4][0]) and e["event_type"] != "TransactionOpened"]
    assert charged, "the early charge was released onto its transaction"
    assert got["payments_parked_facts"] == []
