"""The event store contract bound to the PostgreSQL implementation, plus what is specific
to PostgreSQL: transaction-id ordering, the hash chain against direct SQL edits, migrations.

Runs against the session's real PostgreSQL (tests/conftest.py). Nothing is truncated: each
test uses its own random streams, and the migration tests use a database of their own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest

from libs.eventstore import NO_STREAM, DuplicateEventId, EventStore, Finding, WrongExpectedVersion
from libs.eventstore.migrate import EVENTSTORE_MIGRATIONS, MigrationError, migrate
from tests.integration.eventstore_contract import EventStoreContract, event, events, new_stream, summary

pytestmark = pytest.mark.integration


def _database_dsn(dsn: str, database: str) -> str:
    return urlsplit(dsn)._replace(path=f"/{database}").geturl()


@pytest.fixture
async def fresh_database(pg_dsn: str) -> AsyncIterator[str]:
    """A new, empty database on the test server (dropped afterwards): DSN."""
    name = f"contract_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _database_dsn(pg_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _kinds(findings: list[Finding]) -> set[tuple[str, str, int]]:
    return {(f.kind, f.stream_id, f.stream_version) for f in findings}


class TestPostgresEventStore(EventStoreContract):
    idempotency_key_conflict = asyncpg.UniqueViolationError

    @pytest.fixture
    def store(self, store: EventStore) -> EventStore:  # the session's store from tests/conftest.py
        return store

    async def wait_until_blocked(self, store: EventStore) -> None:
        while not await store.pool.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            "   AND query LIKE 'INSERT INTO idempotency_keys%'"
        ):
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ transaction-id order
    async def test_per_stream_order_is_kept_when_a_transaction_got_its_id_before_the_stream_head(
        self, store: EventStore
    ) -> None:
        start = await store.head()
        stream = new_stream()
        await store.append(stream, NO_STREAM, events(2))

        for any_version in (False, True):
            other = new_stream()
            async with store.pool.acquire() as conn_a:
                tx_a = conn_a.transaction()
                await tx_a.start()
                try:
                    # A writes elsewhere first, so it holds an older transaction id ...
                    a = await store.append(other, NO_STREAM, [event("A")], conn=conn_a)
                    # ... then B advances the stream and commits
                    head_before = await store.stream_version(stream)
                    b = await store.append(stream, head_before, [event("B")])
                    assert b.transaction_id > a.transaction_id
                    # A now sees B's head; storing version n+1 with A's older id would let a
                    # follower deliver it before B's version n: refused, retry the transaction
                    with pytest.raises(WrongExpectedVersion) as info:
                        await store.append(stream, None if any_version else head_before + 1, [event("A2")], conn=conn_a)
                    assert info.value.retryable is True
                finally:
                    await tx_a.rollback()
            assert await store.read_stream(other) == []
            read = await store.read_stream(stream)
            assert [e.event_type for e in read][-1] == "B"
            assert all(e.event_type != "A2" for e in read)

        # the retry of the whole transaction gets a younger id and succeeds
        async with store.transaction() as conn:
            await store.append(new_stream(), NO_STREAM, [event("A")], conn=conn)
            retried = await store.append(stream, 4, [event("A2")], conn=conn)
        assert retried.first_version == 5
        followed = [e.stream_version async for batch in store.iter_all(start) for e in batch if e.stream_id == stream]
        assert followed == [1, 2, 3, 4, 5]

    # ------------------------------------------------------------------ one event on its own
    async def test_one_event_appended_on_its_own_keeps_every_append_guarantee(self, store: EventStore) -> None:
        # A command's usual append (one event, no caller transaction) is one statement of its own
        # (store.py _APPEND_SINGLE), not closeloop_append: the same guarantees, shown on that path.
        start = await store.head()
        stream, other = new_stream(), new_stream()
        first = await store.append(stream, NO_STREAM, [event("One")])
        assert (first.first_version, first.last_version, first.replayed) == (1, 1, False)
        second_event = event("Two", amount_minor=1250)
        second = await store.append(stream, 1, [second_event])
        assert second.first_version == 2 and second.transaction_id > first.transaction_id
        before = summary(await store.read_stream(stream))

        # optimistic concurrency: the actual version is named, nothing is stored
        for expected in (NO_STREAM, 1, 3):
            with pytest.raises(WrongExpectedVersion) as info:
                await store.append(stream, expected, [event("Refused")])
            assert (info.value.stream_id, info.value.expected, info.value.actual) == (stream, expected, 2)
        # idempotent retry (even with a stale expected version): the first result, nothing stored
        for expected in (1, 2, None):
            retry = await store.append(stream, expected, [second_event])
            assert retry.replayed is True
            assert (retry.first_version, retry.last_version, retry.global_positions, retry.event_ids,
                    retry.transaction_id) == (2, 2, second.global_positions, second.event_ids, second.transaction_id)
        # an event id stored elsewhere is refused
        with pytest.raises(DuplicateEventId):
            await store.append(other, NO_STREAM, [second_event])
        assert summary(await store.read_stream(stream)) == before
        assert await store.read_stream(other) == []

        # concurrent writers at the same expected version: one wins, the others conflict
        contenders = 10
        barrier = asyncio.Barrier(contenders)

        async def contend(i: int) -> int | Exception:
            await barrier.wait()
            try:
                return (await store.append(stream, 2, [event("Contended", contender=i)])).first_version
            except WrongExpectedVersion as exc:
                return exc

        outcomes = await asyncio.wait_for(asyncio.gather(*(contend(i) for i in range(contenders))), 60)
        assert [o for o in outcomes if not isinstance(o, Exception)] == [3]
        assert sum(isinstance(o, WrongExpectedVersion) for o in outcomes) == contenders - 1
        read = await store.read_stream(stream)
        assert [e.stream_version for e in read] == [1, 2, 3]
        assert read[1].data == {"amount_minor": 1250}
        # the chain links and hashes like every other append; a follower sees each event once, in order
        assert await store.verify(stream_prefix=stream) == []
        followed = [e.stream_version async for batch in store.iter_all(start) for e in batch if e.stream_id == stream]
        assert followed == [1, 2, 3]

    # ------------------------------------------------------------------ hash chain
    async def _chain(self, store: EventStore, n: int = 4) -> tuple[str, str]:
        prefix = f"tamper{uuid.uuid4().hex}-"
        stream = f"{prefix}s"
        await store.append(stream, NO_STREAM, events(n))
        return prefix, stream

    async def test_clean_stream_verifies_with_no_findings(self, store: EventStore) -> None:
        prefix, stream = await self._chain(store)
        await store.append(f"{prefix}t", NO_STREAM, events(3))
        await store.append(stream, 4, [event("Later", amount_minor=10**15, text="对账 ✅")])
        assert await store.verify(stream_prefix=prefix) == []

    async def test_the_append_hash_equals_the_reference_hash_for_any_payload(self, store: EventStore) -> None:
        # Appends hash with closeloop_chain_hash (0006, built as text); verify() and the auditor recompute
        # with closeloop_event_hash (0001): the two must agree on every payload, or a clean store would
        # look tampered. Payloads with escapes, unicode, numbers in every form, nesting, scalars.
        tricky: list[Any] = [
            {"q": 'say "hi"\\ now', "ctl": "\t\n\r\b\f\u0001\u001f", "zh": "對帳 ✅ 😀", "slash": "a/b"},
            {"n": [0, -1, 10**18, -(10**18), 1.5, 1e100, -2.5e-7, 0.1], "t": True, "f": False, "z": None},
            {"deep": {"a": [{"b": {"c": [[], {}, [1, [2, [3]]]]}}]}, "": "empty key", "k" * 300: 1},
            {}, [], "just a string", 42, None, [1, "two", {"three": 3}],
        ]
        rows = await store.pool.fetch(
            """SELECT closeloop_chain_hash(p.prev, p.id, p.sid, p.ver, p.typ, p.sch, p.at, p.dat, p.met) AS fast,
                      closeloop_event_hash(p.prev, p.id, p.sid, p.ver, p.typ, p.sch, p.at, p.dat, p.met) AS reference
                 FROM unnest($1::text[], $2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::integer[],
                             $7::timestamptz[], $8::text[]::jsonb[], $9::text[]::jsonb[])
                      AS p(prev, id, sid, ver, typ, sch, at, dat, met)""",
            ["0" * 64, 'pr"ev\\', "x"] * 3, [uuid.uuid4() for _ in range(9)],
            ['order-"q"', "stream-對帳", "s\\t"] * 3, [1, 2**40, 7] * 3, ["T", 'ty"pe', "ü"] * 3, [1, 2, 30000] * 3,
            [datetime(1969, 7, 20, 20, 17, 40, 123456, tzinfo=UTC),
             datetime(2026, 12, 1, 23, 59, 59, 999999, tzinfo=UTC), datetime(2000, 1, 1, tzinfo=UTC)] * 3,
            [orjson.dumps(d).decode() for d in tricky], [orjson.dumps(d).decode() for d in reversed(tricky)])
        assert [r["fast"] for r in rows] == [r["reference"] for r in rows]
        # and through every append path: one event, one stream, several streams (set-based and per stream)
        prefix = f"hash{uuid.uuid4().hex}-"
        objects = [d for d in tricky if isinstance(d, dict)]
        await store.append(f"{prefix}one", NO_STREAM, [event("Tricky", **objects[0])])
        await store.append(f"{prefix}many", NO_STREAM, [event("Tricky", **d) for d in objects])
        await store.append_many([(f"{prefix}a", NO_STREAM, [event("Tricky", **objects[1])]),
                                 (f"{prefix}b", NO_STREAM, [event("Tricky", **d) for d in objects])])
        replayed = [(f"{prefix}one", 1, [event("Later", **objects[2])])]
        await store.append_many(replayed)
        await store.append_many([*replayed, (f"{prefix}c", NO_STREAM, [event("Tricky", **objects[2])])])
        assert await store.verify(stream_prefix=prefix) == []

    async def test_edited_event_row_is_detected_by_hash_chain(self, store: EventStore) -> None:
        prefix, stream = await self._chain(store)
        await store.pool.execute(
            "UPDATE events SET data = data || '{\"n\": 1000}'::jsonb WHERE stream_id = $1 AND stream_version = 2",
            stream,
        )
        assert _kinds(await store.verify(stream_prefix=prefix)) == {("tampered", stream, 2)}

    async def test_edited_and_rehashed_row_breaks_the_link_to_its_successor(self, store: EventStore) -> None:
        prefix, stream = await self._chain(store)
        await store.pool.execute(
            "UPDATE events SET data = data || '{\"n\": 1000}'::jsonb WHERE stream_id = $1 AND stream_version = 2",
            stream,
        )
        await store.pool.execute(
            "UPDATE events SET hash = closeloop_event_hash(prev_hash, event_id, stream_id, stream_version,"
            " event_type, schema_version, recorded_at, data, metadata)"
            " WHERE stream_id = $1 AND stream_version = 2",
            stream,
        )
        assert _kinds(await store.verify(stream_prefix=prefix)) == {("broken_link", stream, 3)}

    async def test_deleted_event_row_is_detected(self, store: EventStore) -> None:
        prefix, stream = await self._chain(store)
        await store.pool.execute("DELETE FROM events WHERE stream_id = $1 AND stream_version = 2", stream)
        assert _kinds(await store.verify(stream_prefix=prefix)) == {
            ("version_gap", stream, 3),
            ("broken_link", stream, 3),
        }

    # ------------------------------------------------------------------ migrations
    async def test_migrations_are_applied_once_even_when_started_concurrently(self, fresh_database: str) -> None:
        conns = [await asyncpg.connect(fresh_database) for _ in range(3)]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(migrate(c, {"eventstore": EVENTSTORE_MIGRATIONS}) for c in conns)), 60
            )
            expected = [f"eventstore:{p.stem}" for p in sorted(EVENTSTORE_MIGRATIONS.glob("*.sql"))]
            assert len(expected) >= 2
            assert sorted(results) == [[], [], expected]  # one connection applied all, the others none
            rows = await conns[0].fetch("SELECT component, version, name FROM schema_migrations ORDER BY version")
            assert [f"{r['component']}:{r['version']:04d}_{r['name']}" for r in rows] == expected
            assert await migrate(conns[1], {"eventstore": EVENTSTORE_MIGRATIONS}) == []
        finally:
            for c in conns:
                await c.close()
        # the migrated database is a working event store
        fresh = await EventStore.connect(fresh_database, max_size=2)
        try:
            stream = new_stream()
            await fresh.append(stream, NO_STREAM, events(2))
            assert [e.stream_version for e in await fresh.read_all()] == [1, 2]
            assert await fresh.verify() == []
        finally:
            await fresh.close()

    async def test_changed_migration_file_is_refused(self, fresh_database: str, tmp_path: Path) -> None:
        folder = tmp_path / "migrations"
        folder.mkdir()
        path = folder / "0001_widgets.sql"
        original = "CREATE TABLE widgets (id integer PRIMARY KEY);\n"
        path.write_text(original)
        conn = await asyncpg.connect(fresh_database)
        try:
            assert await migrate(conn, {"widgets": folder}) == ["widgets:0001_widgets"]
            assert await migrate(conn, {"widgets": folder}) == []

            path.write_text("CREATE TABLE widgets (id integer PRIMARY KEY, name text);\n")
            with pytest.raises(MigrationError, match="changed after it was applied"):
                await migrate(conn, {"widgets": folder})
            columns = await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'widgets'"
            )
            assert [r["column_name"] for r in columns] == ["id"]
        finally:
            await conn.close()
        # the refusal released the migration lock: another starter is not blocked
        path.write_text(original)
        other = await asyncpg.connect(fresh_database)
        try:
            t0 = time.monotonic()
            assert await asyncio.wait_for(migrate(other, {"widgets": folder}), 10) == []
            assert time.monotonic() - t0 < 5
        finally:
            await other.close()
