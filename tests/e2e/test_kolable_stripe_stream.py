"""The refund/re-buy reconciliation from the payment provider's events alone: a generated Stripe
stream of 1,000 Kolable course orders (charges, failed attempts, partial and full refunds, pending
refunds settled later, re-buys and near misses, disputes won, lost and still open, inquiries, data
gaps, duplicates and out-of-order deliveries, refunds before their charge) is sent half through the
`payments.upstream` Kafka topic and half through the signed webhook, at the same time. The
scorecard then equals a calculation made from the generator's own plan, never from the events.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import asyncpg
import pytest
from faststream.kafka import KafkaBroker

from libs.devstack.client import PlatformClient
from services.payments.domain.signature import sign
from services.registry import PAYMENTS_UPSTREAM
from tests.e2e.conftest import WEBHOOK_SECRET
from tests.support.stripe_events import Scenario, encode, generate

pytestmark = pytest.mark.e2e

SEED = 5_12_2025
STATUSES = ("paid_valid", "refunded_no_rebuy", "refunded_rebought", "dispute_pending", "data_gap")
NEEDING_ACTION = ("refunded_no_rebuy", "dispute_pending", "data_gap")


def minor(amounts: dict[str, Any], currency: str) -> int:
    return int(amounts.get(currency, {}).get("amount", 0))


def expected_card(s: Scenario) -> dict[str, Any]:
    """The scorecard's figures computed from the generator's truth, by the scorecard's definitions:
    refunded = refunds + lost disputes; recovered = min(re-buy, refunded) per re-bought order;
    open dispute = the amount under a dispute not closed yet; cash gap = refunded - recovered + open."""
    c = s.currency
    counts: Counter[str] = Counter()
    amount: Counter[str] = Counter()
    cash_gap = refunded = recovered = open_disputes = 0
    for o in s.orders.values():
        status = o.expected_status
        counts[status] += 1
        if o.currency != c:
            continue  # an unsupported currency: the order is a data gap that counts no money
        amount[status] += o.amount
        back = o.money_back
        at_stake = min(o.dispute.amount, o.paid - back) if o.dispute_open and o.dispute else 0
        refunded += back
        recovered += o.recovered
        open_disputes += at_stake
        cash_gap += back - o.recovered + at_stake
    return {"counts": counts, "amount": amount, "cash_gap": cash_gap, "refunded": refunded,
            "recovered": recovered, "open_disputes": open_disputes,
            "rebuys": sum(1 for o in s.orders.values() if o.rebought_by is not None)}


async def get_scorecard(client: PlatformClient, stack: Any) -> dict[str, Any]:
    r = await client.http.get(f"{stack.url('payments')}/kolable/reconciliation/scorecard")
    assert r.status_code == 200, r.text
    return r.json()


async def send_to_kafka(bootstrap: str, events: list[dict[str, Any]]) -> None:
    broker = KafkaBroker(bootstrap, acks="all", enable_idempotence=False, client_id="stripe-stream-test")
    await broker.start()
    try:
        for e in events:
            # Keyed by event id, as a provider bridge without order knowledge would: the events of
            # one order land on different partitions and are consumed in any order.
            await broker.publish(encode(e), topic=PAYMENTS_UPSTREAM, key=e["id"].encode())
    finally:
        await broker.stop()


async def send_to_webhook(client: PlatformClient, url: str, events: list[dict[str, Any]], workers: int = 4) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for e in events:
        queue.put_nowait(e)

    async def worker() -> None:
        while not queue.empty():
            e = queue.get_nowait()
            body = encode(e)
            r = await client.http.post(url, content=body, headers={
                "Content-Type": "application/json", "Stripe-Signature": sign(body, WEBHOOK_SECRET, int(time.time()))})
            assert r.status_code == 200, r.text

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_a_stripe_stream_of_a_thousand_orders_gives_the_scorecard_of_the_truth(client: PlatformClient,
                                                                                    stack: Any) -> None:
    s = generate(SEED, 1000)
    ids = sorted({e["id"] for e in s.events})
    assert len(s.events) > len(ids)  # duplicates are in the stream
    assert s.refund_before_charge and s.out_of_order  # and refunds delivered before their charge
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        assert not await conn.fetchval("SELECT count(*) FROM kolable_orders WHERE order_id = ANY($1)",
                                       list(s.orders)), "the scenario's orders must be new to this database"
        before = await get_scorecard(client, stack)
        # Alternate channels: a duplicate often arrives through the other channel than its first copy.
        to_kafka = [e for i, e in enumerate(s.events) if i % 2 == 0]
        to_webhook = [e for i, e in enumerate(s.events) if i % 2 == 1]
        await asyncio.gather(send_to_kafka(stack.kafka_bootstrap, to_kafka),
                             send_to_webhook(client, f"{stack.url('payments')}/webhooks/stripe", to_webhook))

        streams = [f"upstream-stripe-{i}" for i in ids]
        deadline = time.monotonic() + 240
        while (done := await conn.fetchval(
                "SELECT count(DISTINCT stream_id) FROM events WHERE stream_id = ANY($1)", streams)) < len(ids):
            assert time.monotonic() < deadline, f"only {done} of {len(ids)} provider events were stored"
            await asyncio.sleep(0.25)

        # Each provider event is stored once, however many times and by whichever channel it came.
        received = await conn.fetchval(
            "SELECT count(*) FROM events WHERE stream_id = ANY($1) AND event_type = 'UpstreamEventReceived'", streams)
        assert received == len(ids)
        # Nothing stays parked: every refund or dispute that came before its charge was applied.
        refs = [o.charge_id for o in s.orders.values()] + [o.payment_intent_id for o in s.orders.values()]
        assert await conn.fetchval("SELECT count(*) FROM payments_parked_facts WHERE order_key = ANY($1)", refs) == 0

        rows = await conn.fetch("SELECT order_id, status, classification FROM kolable_orders WHERE order_id = ANY($1)",
                                list(s.orders))
    finally:
        await conn.close()

    status = {r["order_id"]: r["status"] for r in rows}
    wrong = {oid: (o.expected_status, status.get(oid), o.kinds) for oid, o in s.orders.items()
             if status.get(oid) != o.expected_status}
    assert not wrong, f"{len(wrong)} orders classified wrongly, e.g. {list(wrong.items())[:3]}"
    classification = {r["order_id"]: json.loads(r["classification"]) for r in rows}
    for oid, o in s.orders.items():
        c = classification[oid]
        if o.rebought_by is not None:
            assert c["rebuy_order_id"] == o.rebought_by
            assert classification[o.rebought_by]["recovers_order_id"] == oid

    after = await get_scorecard(client, stack)
    want = expected_card(s)
    cur = s.currency
    lines_before = {line["status"]: line for line in before["by_status"]}
    lines_after = {line["status"]: line for line in after["by_status"]}
    for name in STATUSES:
        assert lines_after[name]["count"] - lines_before[name]["count"] == want["counts"][name], name
        assert (minor(lines_after[name]["amount"], cur) - minor(lines_before[name]["amount"], cur)
                == want["amount"][name]), name
    assert after["orders"] - before["orders"] == len(s.orders)
    assert minor(after["refunded"], cur) - minor(before["refunded"], cur) == want["refunded"]
    assert minor(after["recovered_by_rebuy"], cur) - minor(before["recovered_by_rebuy"], cur) == want["recovered"]
    assert minor(after["cash_gap_disputes"], cur) - minor(before["cash_gap_disputes"], cur) == want["open_disputes"]
    assert minor(after["cash_gap"], cur) - minor(before["cash_gap"], cur) == want["cash_gap"]
    assert after["rebuys"] - before["rebuys"] == want["rebuys"]
    needing = {a["order_id"] for a in after["needing_action"] if a["order_id"] in s.orders}
    assert needing == {oid for oid, o in s.orders.items() if o.expected_status in NEEDING_ACTION}
    assert want["counts"]["refunded_rebought"] > 0 and want["counts"]["dispute_pending"] > 0  # every case is there
