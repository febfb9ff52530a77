"""Issue 7, item 4: poison and odd messages, against every consumer of the running platform (projector,
payments, orders' payment reactions, rma, shipping, notifications) on the real broker and database.

Onto every topic a consumer reads go: an undecodable message, an oversized one, an event of a type nobody
knows, an event with a schema version from the future, and an event about an aggregate that does not exist
(for the consumers that load one: payments, orders, rma; the projector, whose read models fold the store,
for any event the store does not hold). An event of an unknown type and one from the future are also
stored, as a newer service would store them (the projector reads those). Then a good message, on the same
partition (same key). For every consumer: each odd message is a row in dead_letters and a message on the
`deadletters` topic with its reason, consumer group and source topic/partition/offset in dlq-* headers,
counted in its /metrics by consumer and reason; and the good message after them was processed. Finally
`closeloop deadletters list` shows them and `redrive` re-drives one that now succeeds (marked re-driven)
and one that fails again (still open, its re-drive counted)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from typer.testing import CliRunner

from libs.domain.events import DomainEvent
from libs.domain.money import Money
from libs.eventstore import EventStore, Metadata, NewEvent
from libs.messaging import envelope
from libs.messaging.broker import MAX_MESSAGE_BYTES
from libs.messaging.deadletter import DLQ_HEADERS
from services.orders.domain.events import CustomerCreditScoreRecorded, OrderAccepted, OrderBillConfirmed
from services.payments.domain.events import PrepaymentCaptured, Tender, TenderKind
from services.registry import (
    CARRIER_TRACKING,
    DEAD_LETTERS,
    NOTIFICATIONS_EVENTS,
    ORDERS_EVENTS,
    PAYMENTS_EVENTS,
    PAYMENTS_UPSTREAM,
    RMA_EVENTS,
    SHIPPING_EVENTS,
)
from services.shipping.domain.events import InboundParcelScanned
from tests.reliability.conftest import SUMMARY
from tests.support.wait import until

pytestmark = pytest.mark.e2e
NOW = datetime.now(UTC)

# Who consumes what (the bootstraps' subscribers), and the service that serves its /metrics.
CONSUMERS: dict[str, tuple[str, str]] = {  # consumer (processed-events name, without prefix) -> (service, ...)
    "projector.orders": ("projector", "projector"),
    "payments": ("payments", "payments"),
    "orders": ("orders", "orders"),
    "rma": ("rma", "rma"),
    "shipping": ("shipping", "shipping"),
    "notifications": ("notifications", "notifications"),
}
TOPIC_CONSUMERS = {
    ORDERS_EVENTS: ["projector.orders", "payments"],
    PAYMENTS_EVENTS: ["projector.orders", "orders"],
    RMA_EVENTS: ["projector.orders", "shipping", "notifications"],
    SHIPPING_EVENTS: ["projector.orders", "rma", "notifications"],
    NOTIFICATIONS_EVENTS: ["projector.orders"],
}
# An event about an aggregate nobody has, on a stream of a category the projector folds, and of a type the
# topic's consumers that load an aggregate react to (the others ignore it, or take what they need from it).
_SCORE = CustomerCreditScoreRecorded(customer_id="c-nobody", score=1, source="poison", at=NOW)
UNKNOWN_AGGREGATE: dict[str, tuple[str, DomainEvent]] = {
    ORDERS_EVENTS: ("order", OrderBillConfirmed(order_id="o-nobody", bill_id="b-nobody", revision=1,
                                                total=Money(amount=100, currency="TWD"), at=NOW)),
    PAYMENTS_EVENTS: ("transaction", PrepaymentCaptured(
        order_id="o-nobody", bill_id="b-nobody", amount=Money(amount=100, currency="TWD"),
        tenders=[Tender(kind=TenderKind.THIRD_PARTY, amount=Money(amount=100, currency="TWD"), reference="pi_x")],
        captured_at=NOW)),
    RMA_EVENTS: ("rma", _SCORE),
    SHIPPING_EVENTS: ("shipment", InboundParcelScanned(label_id="l-nobody", rma_id="rma-nobody", scanned_at=NOW,
                                                       at=NOW)),
    NOTIFICATIONS_EVENTS: ("notification", _SCORE),
}
# Which consumers load the aggregate (the others take everything they need from the event itself).
LOADS_AGGREGATE = {ORDERS_EVENTS: ["payments"], PAYMENTS_EVENTS: ["orders"], SHIPPING_EVENTS: ["rma"]}
OVERSIZED = 2 * 1024 * 1024 + 512 * 1024  # above the consumers' 2 MiB limit, below the broker's


def meta() -> dict[str, Any]:
    return {"actor": "poison-test", "role": "service", "correlation_id": f"poison-{uuid.uuid4().hex[:8]}",
            "causation_id": None}


def external(event: DomainEvent, stream_id: str, version: int = 1, **override: Any) -> bytes:
    _, value, _ = envelope.encode_external(event, stream_id=stream_id, stream_version=version, metadata=meta())
    if override:
        doc = orjson.loads(value)
        doc.update(override)
        value = orjson.dumps(doc)
    return value


def poisons(topic: str, key: str) -> list[tuple[str, bytes]]:
    """(what, message value) of the odd messages for one topic."""
    score = CustomerCreditScoreRecorded(customer_id="c-x", score=1, source="poison", at=NOW)
    out = [
        ("undecodable", b"\xff\xfe this is not an envelope {"),
        ("oversized", b'{"pad": "' + b"x" * OVERSIZED + b'"}'),
        ("unknown_event_type", external(score, key, event_type="TeleportedToMars")),
        ("future_schema_version", external(score, key, schema_version=99)),
    ]
    category, event = UNKNOWN_AGGREGATE[topic]
    out.append(("unknown_aggregate", external(event, f"{category}-nobody-{uuid.uuid4().hex[:8]}", version=3)))
    return out


def expected_reasons(topic: str, consumer: str) -> set[str]:
    if consumer == "projector.orders":
        # Its read models fold the store: an event the store does not hold is about no aggregate it knows.
        return {"undecodable", "oversized", "unknown_aggregate"}
    reasons = {"undecodable", "oversized", "unknown_event_type", "future_schema_version"}
    if consumer in LOADS_AGGREGATE.get(topic, []):
        reasons.add("unknown_aggregate")
    return reasons


def header_map(record: Any) -> dict[str, str]:
    return {k: bytes(v).decode() for k, v in record.headers or () if v is not None}


async def metric(http: httpx.AsyncClient, url: str, consumer: str, reason: str) -> float:
    text = (await http.get(f"{url}/metrics")).text
    needle = f'closeloop_dead_letters_total{{consumer="{consumer}",reason="{reason}"}}'
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


async def test_every_consumer_dead_letters_odd_messages_to_the_topic_and_goes_on(stack: Any) -> None:
    prefix = stack.prefix
    store = await EventStore.connect(stack.pg_dsn, max_size=4)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all", enable_idempotence=False,
                                max_request_size=MAX_MESSAGE_BYTES)
    dlq = AIOKafkaConsumer(DEAD_LETTERS, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest",
                           group_id=None, enable_auto_commit=False, fetch_max_bytes=16 * 1024 * 1024,
                           max_partition_fetch_bytes=16 * 1024 * 1024)
    await producer.start()
    await dlq.start()
    try:
        # A newer service stored an event type this code does not know, and a version from its future.
        sentinel_stream = f"customer-poison-{uuid.uuid4().hex[:10]}"
        order_stream = f"order-poison-{uuid.uuid4().hex[:10]}"
        accepted = OrderAccepted(order_id=order_stream[6:], merchant_id="m-poison", at=NOW)
        await store.append(order_stream, 0, [
            NewEvent("OrderTeleported", {"order_id": order_stream[6:], "to": "mars"},
                     Metadata(actor="future", role="service", correlation_id="c")),
            NewEvent(accepted.event_type, accepted.to_data(), Metadata(actor="future", role="service",
                                                                       correlation_id="c"), schema_version=99)])
        stored_odd = await store.read_stream(order_stream)

        sent: dict[tuple[str, str], tuple[int, int]] = {}  # (topic, what) -> (partition, offset)
        for topic in TOPIC_CONSUMERS:
            for what, value in poisons(topic, sentinel_stream):
                meta_ = await producer.send_and_wait(topic, value, key=sentinel_stream.encode(),
                                                     headers=[("source", b"poison-test")])
                sent[(topic, what)] = (meta_.partition, meta_.offset)
        await producer.send_and_wait(PAYMENTS_UPSTREAM, b'{"id": "evt_poison", "object": "not-an-event"',
                                     key=b"evt_poison")
        await producer.send_and_wait(CARRIER_TRACKING, b'{"who": "no carrier at all"}', key=b"poison")

        # Then a good event on the same partitions: stored, and sent after the poisons to every topic.
        good = CustomerCreditScoreRecorded(customer_id=sentinel_stream[9:], score=700, source="poison-test", at=NOW)
        await store.append(sentinel_stream, 0, [NewEvent(good.event_type, good.to_data(),
                                                         Metadata(actor="t", role="service", correlation_id="c"))])
        [stored_good] = await store.read_stream(sentinel_stream)
        key, value, headers = envelope.encode(stored_good)
        for topic in TOPIC_CONSUMERS:
            await producer.send_and_wait(topic, value, key=key, headers=[(k, v.encode()) for k, v in headers.items()])

        # Every consumer went on: the good event after the poison ones was processed.
        for topic, consumers in TOPIC_CONSUMERS.items():
            for c in consumers:
                await until(f"{c} processed the good event after the poison on {topic}",
                            lambda c=c: store.pool.fetchval(
                                "SELECT true FROM processed_events WHERE consumer = $1 AND event_id = $2",
                                prefix + c, stored_good.event_id), timeout=60)

        # Every odd message is a dead letter of every consumer of its topic, with its reason and source.
        for topic, consumers in TOPIC_CONSUMERS.items():
            for c in consumers:
                rows = await _dead_letters_of(store, prefix + c, topic, sent, expected_reasons(topic, c))
                got = {r["reason_code"] for r in rows}
                assert got == expected_reasons(topic, c), (topic, c, [(r["reason_code"], r["reason"]) for r in rows])
                for r in rows:
                    what = next(w for (t, w), (_, o) in sent.items() if t == topic and o == r["source_offset"])
                    assert (r["source_partition"], r["source_offset"]) == sent[(topic, what)]
                    assert r["reason"] and r["resolved_at"] is None and r["reason_code"] == what
        # The stored odd events: the projector's order projection and payments could not read them either.
        for c in ("projector.orders", "payments"):
            rows = await until(f"{c} dead-lettered the stored odd events", lambda c=c: store.pool.fetch(
                "SELECT reason_code FROM dead_letters WHERE consumer_group = $1 AND event_id = ANY($2::uuid[])",
                prefix + c, [e.event_id for e in stored_odd]), timeout=30)
            assert sorted(r["reason_code"] for r in rows) == ["future_schema_version", "unknown_event_type"], c
        for c, topic in (("payments", PAYMENTS_UPSTREAM), ("shipping", CARRIER_TRACKING)):
            await until(f"{c} dead-lettered the bad message on {topic}", lambda c=c, topic=topic: store.pool.fetchval(
                "SELECT count(*) FROM dead_letters WHERE consumer_group = $1 AND source_topic = $2",
                prefix + c, topic), timeout=30)

        # ... and a message on the dead-letter topic, with the reason, group and source in its headers.
        wanted = {(c, topic, *sent[(topic, what)]) for topic, cs in TOPIC_CONSUMERS.items() for c in cs
                  for what in expected_reasons(topic, c)}
        seen: dict[tuple[str, str, int, int], dict[str, str]] = {}

        async def dlq_has_them() -> bool:
            for records in (await dlq.getmany(timeout_ms=500, max_records=5000)).values():
                for h in map(header_map, records):
                    if h.get("dlq-consumer-group", "").startswith(prefix) and h["dlq-source-topic"] in TOPIC_CONSUMERS:
                        seen[(h["dlq-consumer-group"][len(prefix):], h["dlq-source-topic"],
                              int(h["dlq-source-partition"]), int(h["dlq-source-offset"]))] = h
            return wanted <= set(seen)

        with contextlib.suppress(AssertionError):
            await until("the dead letters on the topic", dlq_has_them, timeout=60)
        on_topic = seen
        for topic, consumers in TOPIC_CONSUMERS.items():
            for c in consumers:
                for what in {w for (t, w) in sent if t == topic}:
                    partition, offset = sent[(topic, what)]
                    h = on_topic.get((c, topic, partition, offset))
                    if what not in expected_reasons(topic, c):
                        assert h is None
                        continue
                    assert h is not None, (c, topic, what)
                    assert set(DLQ_HEADERS) <= set(h) and h["dlq-source-partition"] == str(partition)
                    assert h["dlq-reason"] and h["dlq-reason-code"] == what

        # Counted in each service's /metrics, by consumer and reason.
        async with httpx.AsyncClient(timeout=10) as http:
            for topic, consumers in TOPIC_CONSUMERS.items():
                for c in consumers:
                    service = CONSUMERS[c][0]
                    for reason in expected_reasons(topic, c):
                        assert await metric(http, stack.url(service), prefix + c, reason) >= 1, (c, reason)

        await _cli_lists_and_redrives(stack, store, stored_odd, sent)
        by_reason = await store.pool.fetch(
            "SELECT reason_code, count(*) AS n FROM dead_letters WHERE consumer_group LIKE $1 || '%' "
            "GROUP BY reason_code ORDER BY reason_code", prefix)
        SUMMARY["dead letters"] = ", ".join(f"{r['reason_code']} {r['n']}" for r in by_reason) + \
            f" ({len(CONSUMERS)} consumers, every one went on)"
    finally:
        await dlq.stop()
        await producer.stop()
        await store.close()


async def _dead_letters_of(store: EventStore, group: str, topic: str, sent: dict[tuple[str, str], tuple[int, int]],
                           expected: set[str]) -> list[Any]:
    """The group's dead letters of the odd messages sent to `topic`, once they are all there (or after 30 s)."""
    partition = sent[(topic, "undecodable")][0]
    offsets = [o for (t, _), (_, o) in sent.items() if t == topic]

    async def rows() -> list[Any]:
        return await store.pool.fetch(
            """SELECT * FROM dead_letters WHERE consumer_group = $1 AND source_topic = $2
                 AND source_partition = $3 AND source_offset = ANY($4::bigint[])""", group, topic, partition, offsets)

    try:
        return await until(f"{group}'s dead letters from {topic}",
                           lambda: _when(rows(), lambda found: {r["reason_code"] for r in found} >= expected),
                           timeout=30)
    except AssertionError:
        return await rows()  # compared (and reported) by the caller


async def _when(rows: Any, done: Any) -> Any:
    found = await rows
    return found if done(found) else None


async def _cli_lists_and_redrives(stack: Any, store: EventStore, stored_odd: list[Any],
                                  sent: dict[tuple[str, str], tuple[int, int]]) -> None:
    from libs.cli.main import app

    runner = CliRunner()
    env = {"DATABASE_URL": stack.pg_dsn, "KAFKA_BOOTSTRAP_SERVERS": stack.kafka_bootstrap}
    group = stack.prefix + "payments"
    listed = await asyncio.to_thread(runner.invoke, app, ["deadletters", "list", "--consumer", group, "--json"],
                                     env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["dead_letters"]
    assert {r["reason_code"] for r in rows} >= expected_reasons(ORDERS_EVENTS, "payments")
    assert all(r["consumer_group"] == group and r["status"] == "open" for r in rows)

    # Re-driven while nothing changed, they fail again: the order payments never saw placed is still unknown,
    # the undecodable bytes are still undecodable. They stay open, their re-drive counted, the last error kept.
    [missing] = [r for r in rows if r["reason_code"] == "unknown_aggregate"]
    [undecodable] = [r for r in rows if r["reason_code"] == "undecodable"]
    result = await asyncio.to_thread(runner.invoke, app, [
        "deadletters", "redrive", "--id", str(missing["id"]), "--id", str(undecodable["id"]), "--wait", "30",
        "--json"], env=env)
    outcomes = {r["id"]: r["outcome"] for r in json.loads(result.output)["redriven"]}
    assert outcomes == {missing["id"]: "failed", undecodable["id"]: "failed"}, result.output
    assert result.exit_code == 1
    after = {r["id"]: r for r in json.loads((await asyncio.to_thread(
        runner.invoke, app, ["deadletters", "list", "--consumer", group, "--json"], env=env)).output)["dead_letters"]}
    assert after[missing["id"]]["redrive_count"] == 1 and after[missing["id"]]["status"] == "failed"
    assert "NotFound" in after[missing["id"]]["last_redrive_error"]
    assert after[undecodable["id"]]["redrive_count"] == 1 and after[undecodable["id"]]["status"] == "failed"

    # The event from the future: once this code can read it (here: the stored event is corrected to the
    # version this code reads, as an upcaster would), its re-drive goes through and it is marked re-driven.
    [future] = [r for r in rows if r["reason_code"] == "future_schema_version" and r["event_id"] in
                {str(e.event_id) for e in stored_odd}]
    async with store.pool.acquire() as conn:
        await conn.execute("UPDATE dead_letters SET raw_value = $2 WHERE id = $1", future["id"],
                           envelope.encode(dataclasses.replace(stored_odd[1], schema_version=1))[1])
    result = await asyncio.to_thread(runner.invoke, app, ["deadletters", "redrive", "--id", str(future["id"]),
                                                          "--wait", "30", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["redriven"][0]["outcome"] == "redriven"
    listed = json.loads((await asyncio.to_thread(runner.invoke, app, [
        "deadletters", "list", "--consumer", group, "--all", "--json"], env=env)).output)["dead_letters"]
    [done] = [r for r in listed if r["id"] == future["id"]]
    assert done["status"] == "redriven" and done["redriven_at"] is not None
    # The other consumers of the topic ignored the re-driven message (it was not theirs).
    assert not await store.pool.fetchval(
        "SELECT count(*) FROM dead_letters WHERE consumer_group = $1 AND event_id = $2 AND redrive_count > 0",
        stack.prefix + "projector.orders", stored_odd[1].event_id)
    assert sent
