"""Issue 7, item 5: every consumer fed each event twice and in shuffled order gives what a clean run gives.

Two fresh databases get the same source events (orders and bills of every kind of order story, warranty
RMAs), byte for byte with the same event ids. In each, every consumer of the platform (the projector,
payments, orders' payment reactions, rma, shipping, notifications), wired as its service wires it with one
fixed clock, is fed the store's events as the relay would publish them (envelope, topic by category, key by
stream), round after round until none of them appends anything more (what they append is published in the
next round, as the relay would).

- clean run: every event once, in store order, in batches of 50;
- hostile run: every event twice (the copy redelivered at a random later point, as after a crash between
  commit and acknowledgement), the streams interleaved differently (a random merge that keeps each
  stream's own order: what Kafka guarantees by key), in batches of random sizes, each round's consumers in
  another order.

Then the two databases hold the same things: the events the consumers appended (per stream, type and
payload, ids and causation ids aside), every read model and service table (rows as multisets, with columns
that record the delivery itself, such as positions and write times, aside), and the notifications' outbox.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from libs.application.reactions import Reactions
from libs.cli.seed import Seeder
from libs.eventstore import NO_STREAM, EventStore, NewEvent
from libs.eventstore.migrate import EVENTSTORE_MIGRATIONS, migrate
from libs.eventstore.store import _COLUMNS, _row_to_event
from libs.messaging import envelope
from libs.messaging.consumer import EnvelopeBatchConsumer
from libs.messaging.topics import topic_router
from services.registry import STREAM_TOPICS
from tests.integration.helpers import FakeRecord, interleave
from tests.integration.test_reconciliation import Db, new_db
from tests.reliability.conftest import FULL, SUMMARY

pytestmark = pytest.mark.integration
_ = new_db  # the fixture (a fresh database per call)
ROOT = Path(__file__).resolve().parents[2] / "services"
COMPONENTS = {"eventstore": EVENTSTORE_MIGRATIONS,
              **{n: ROOT / n / "migrations" for n in ("projector", "payments", "shipping", "rma", "notifications")}}
CLOCK = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
CASES = 120 if FULL else 30
route = topic_router(STREAM_TOPICS)
SOURCE_CATEGORIES = {"order", "bill", "rma"}  # what the services' own commands would have stored
# Columns that record the delivery (when, in which position, under which random id), not the outcome.
VOLATILE = re.compile(r"(^|_)(position|positions|transaction_id|created_at|updated_at|recorded_at|processed_at|"
                      r"last_attempt_at|next_attempt_at|leased_until|lease_owner|claimed_at|version)$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
NOT_COMPARED = {"events", "processed_events", "consumer_offsets", "dead_letters", "schema_migrations",
                "relay_checkpoints", "idempotency_keys", "timers", "projection_streams", "access_tokens"}


def source_events(cases: int) -> list[tuple[str, list[NewEvent]]]:
    """The streams of `cases` seeded stories that the services' own commands store (not their reactions)."""
    seeder = Seeder(seed=77, now=CLOCK)
    out: list[tuple[str, list[NewEvent]]] = []
    for _, (_, streams) in zip(range(cases), seeder.cases(), strict=False):
        out += [(sid, evs) for sid, evs in streams if sid.split("-", 1)[0] in SOURCE_CATEGORIES]
    return out


def consumers(store: EventStore) -> dict[str, tuple[EnvelopeBatchConsumer, set[str]]]:
    """Every consumer of the platform as its service wires it (bootstrap.py), on one fixed clock."""
    from services.notifications.bootstrap import NotificationsSettings
    from services.notifications.bootstrap import wire as wire_notifications
    from services.orders.application.payments_reactions import PaymentsReactions
    from services.payments.bootstrap import PaymentsSettings, orders_reactions, parse_policies, parse_wallet_policy
    from services.payments.bootstrap import wire as wire_payments
    from services.projector.projections.facts import FactsProjection
    from services.projector.projections.orders import OrdersProjection
    from services.projector.shadow import live_apply
    from services.registry import NOTIFICATIONS_EVENTS, ORDERS_EVENTS, PAYMENTS_EVENTS, RMA_EVENTS, SHIPPING_EVENTS
    from services.rma.bootstrap import RmaSettings, load_config
    from services.rma.bootstrap import wire as wire_rma
    from services.shipping.bootstrap import wire as wire_shipping

    def clock() -> datetime:
        return CLOCK

    pay_settings = PaymentsSettings()
    payments = wire_payments(store, parse_policies(pay_settings.cancellation_policy_path.read_text()),
                             parse_wallet_policy(pay_settings.wallet_policy_path.read_text()), clock)
    faults, policy = load_config(RmaSettings())
    rma = wire_rma(store, faults, policy, clock)
    shipping = wire_shipping(store, ["reliability-label-secret"], clock)
    notifications = wire_notifications(store, NotificationsSettings(), clock)
    pool = store.pool
    return {
        "projector": (EnvelopeBatchConsumer(pool, "projector.orders", functools.partial(
            live_apply, OrdersProjection(store), FactsProjection(store)), check_events=False),
            {ORDERS_EVENTS, PAYMENTS_EVENTS, RMA_EVENTS, SHIPPING_EVENTS, NOTIFICATIONS_EVENTS}),
        "payments": (EnvelopeBatchConsumer(pool, "payments", orders_reactions(store, payments.service).handle),
                     {ORDERS_EVENTS}),
        "orders": (EnvelopeBatchConsumer(pool, "orders", PaymentsReactions(store, clock).handle), {PAYMENTS_EVENTS}),
        "rma": (EnvelopeBatchConsumer(pool, "rma", rma.reactions.handle), {SHIPPING_EVENTS}),
        "shipping": (EnvelopeBatchConsumer(pool, "shipping", Reactions(store, shipping.react, actor="shipping").handle),
                     {RMA_EVENTS}),
        "notifications": (EnvelopeBatchConsumer(pool, "notifications", notifications.reactions.handle),
                          {RMA_EVENTS, SHIPPING_EVENTS}),
    }


Feed = Callable[[list[FakeRecord]], list[list[FakeRecord]]]


def clean(records: list[FakeRecord]) -> list[list[FakeRecord]]:
    return [records[i:i + 50] for i in range(0, len(records), 50)]


def hostile(rng: random.Random) -> Feed:
    def feed(records: list[FakeRecord]) -> list[list[FakeRecord]]:
        by_key: dict[bytes, list[FakeRecord]] = {}
        for r in records:
            by_key.setdefault(r.key, []).append(r)
        merged: list[FakeRecord] = interleave({k.decode(): v for k, v in by_key.items()}, rng)
        out = list(merged)
        for r in merged:  # each one delivered again, somewhere after its first delivery
            out.insert(rng.randint(out.index(r) + 1, len(out)), r)
        batches, i = [], 0
        while i < len(out):
            n = rng.randint(1, 40)
            batches.append(out[i:i + n])
            i += n
        return batches
    return feed


async def run(db: Db, sources: list[tuple[str, list[NewEvent]]], feed: Feed,
              rng: random.Random | None) -> dict[str, tuple[int, int]]:
    """Append the sources, then publish the store round after round to every consumer until nothing new.
    Returns each consumer's (events applied, deliveries it recognised as duplicates)."""
    store = db.store
    await store.append_many([(sid, NO_STREAM, evs) for sid, evs in sources])
    wired = consumers(store)
    position, rounds, offsets = 0, 0, Counter[tuple[str, int]]()
    while True:
        # Everything appended so far (this database has no other writer, and every append here is awaited:
        # no need for read_all's wait on transactions still open elsewhere in the cluster).
        batch = [_row_to_event(r) for r in await store.pool.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE global_position > $1 ORDER BY global_position", position)]
        if not batch:
            return {name: (c.stats.applied, c.stats.duplicates) for name, (c, _) in wired.items()}
        rounds += 1
        assert rounds < 20, "the consumers keep appending"
        position = batch[-1].global_position
        names = list(wired)
        if rng is not None:
            rng.shuffle(names)
        for name in names:
            consumer, topics = wired[name]
            records = []
            for e in batch:
                topic = route(e.stream_id)
                if topic not in topics:
                    continue
                key, value, _ = envelope.encode(e)
                partition = sum(key) % 6
                records.append(FakeRecord(topic, partition, offsets[(topic, partition)], key, value))
                offsets[(topic, partition)] += 1
            for chunk in feed(records):
                await consumer.process_records(chunk)


def _normal(value: Any) -> Any:
    """A value with ids generated at delivery time (uuids) blanked; everything else as it is."""
    text = orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS).decode()
    return UUID.sub("<uuid>", text)


async def outcome(db: Db, source_ids: set[Any]) -> dict[str, Counter[str]]:
    """What the consumers made: their events and every other table's rows (multisets of normalised rows)."""
    conn_pool = db.store.pool
    out: dict[str, Counter[str]] = {}
    rows = await conn_pool.fetch("SELECT event_id, stream_id, stream_version, event_type, schema_version, data, "
                                 "metadata - 'causation_id' - 'correlation_id' AS metadata FROM events")
    out["events"] = Counter(_normal({k: r[k] for k in ("stream_id", "stream_version", "event_type",
                                                        "schema_version", "data", "metadata")})
                            for r in rows if r["event_id"] not in source_ids)
    tables = [r["table_name"] for r in await conn_pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
    for table in sorted(set(tables) - NOT_COMPARED):
        found = await conn_pool.fetch(f'SELECT * FROM "{table}"')
        out[table] = Counter(_normal({k: v for k, v in dict(r).items() if not VOLATILE.search(k)}) for r in found)
    return out


async def test_duplicated_and_reordered_deliveries_give_exactly_what_a_clean_run_gives(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    sources = source_events(CASES)
    source_ids = {e.event_id for _, evs in sources for e in evs}
    assert len(source_ids) > 100 and any(s.startswith("rma-") for s, _ in sources)

    clean_db = await new_db()
    async with clean_db.store.pool.acquire() as conn:
        await migrate(conn, COMPONENTS)
    clean_stats = await run(clean_db, sources, clean, None)
    expected = await outcome(clean_db, source_ids)

    rng = random.Random(2026)
    hostile_db = await new_db()
    async with hostile_db.store.pool.acquire() as conn:
        await migrate(conn, COMPONENTS)
    hostile_stats = await run(hostile_db, sources, hostile(rng), rng)
    got = await outcome(hostile_db, source_ids)

    # Each consumer applied every event exactly once, and recognised every second delivery as a duplicate.
    for name, (applied, duplicates) in clean_stats.items():
        assert duplicates == 0 and applied > 0, (name, clean_stats[name])
        assert hostile_stats[name] == (applied, applied), (name, clean_stats[name], hostile_stats[name])

    # The consumers did something worth comparing: events of every service, read models, notifications.
    made = {orjson.loads(k)["stream_id"].split("-", 1)[0] for k in expected["events"]}
    assert {"transaction", "label", "shipment", "notification"} <= made, made
    assert all(sum(expected[t].values()) for t in ("rm_orders", "rm_transactions", "rm_shipments", "notifications",
                                                    "shipping_labels", "shipping_shipments")), expected.keys()
    SUMMARY["duplicates and reordering"] = (
        f"{len(source_ids)} source events, {sum(expected['events'].values())} made by {len(clean_stats)} consumers, "
        f"{sum(a for a, _ in hostile_stats.values()) * 2} hostile deliveries; "
        f"{len(expected)} tables compared")
    for table in sorted(set(expected) | set(got)):
        missing = expected.get(table, Counter()) - got.get(table, Counter())
        extra = got.get(table, Counter()) - expected.get(table, Counter())
        assert not missing and not extra, (table, f"missing {list(missing.elements())[:3]}",
                                           f"extra {list(extra.elements())[:3]}")
