"""The auditor's CLI (`closeloop replay | state | verify | export | audit`) against the real
PostgreSQL, as an auditor runs it: the Typer app with its arguments and exit codes, on a
database of its own.

Every test here works in a fresh database created on the session's PostgreSQL and migrated
like the services do (event store, projector, payments, rma, shipping, notifications), so that
`verify` of the *whole* store can be clean, and a test that tampers with rows does so in a
database of its own. Order stories come from the orders domain (tests/integration/helpers.py);
the live order read model is written by the projector's own code through the effectively-once
consumer, as Kafka would deliver them. Nothing is truncated; the databases and the read-only
role are dropped at the end.

The CLI runs asyncio.run() itself, so it is invoked in a worker thread (CliRunner), away from
the test's event loop; one test runs the installed entry point as a subprocess too.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from typer.testing import CliRunner

import services
from libs.cli.jsonable import state_of
from libs.cli.main import app
from libs.domain.events import registry
from libs.eventstore import NO_STREAM, EventStore, RecordedEvent
from libs.eventstore.audit import EventFilter, check_chains, end_shared, share_snapshot, snapshot
from libs.eventstore.migrate import EVENTSTORE_MIGRATIONS, migrate
from libs.messaging.consumer import EnvelopeBatchConsumer
from services.orders.domain.order import Order
from services.projector.projections.orders import OrdersProjection
from tests.integration.helpers import Story, append_story, fake_records, order_story
from tests.support.databases import fresh_database

pytestmark = pytest.mark.integration

ROOT = Path(services.__file__).parent
COMPONENTS = {"eventstore": EVENTSTORE_MIGRATIONS,
              **{name: ROOT / name / "migrations" for name in ("projector", "payments", "rma", "shipping",
                                                               "notifications")}}
runner = CliRunner()


@dataclass
class Db:
    dsn: str
    store: EventStore

    async def cli(self, *args: str, dsn: str | None = None) -> Any:
        """Run `closeloop ARGS` against this database (or `dsn`); returns the click Result."""
        env = {"DATABASE_URL": dsn or self.dsn, "COLUMNS": "250"}
        return await asyncio.to_thread(runner.invoke, app, list(args), env=env)

    async def cli_json(self, *args: str, dsn: str | None = None, code: int = 0) -> Any:
        result = await self.cli(*args, "--json", dsn=dsn)
        assert result.exit_code == code, (result.exit_code, result.output, result.exception)
        return json.loads(result.stdout)


def _with_db(dsn: str, name: str, user: str | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc if user is None else f"{user}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(path=f"/{name}", netloc=netloc))


@pytest.fixture(scope="module")
async def new_db(pg_dsn: str) -> AsyncIterator[Callable[[], Awaitable[Db]]]:
    """make(): a fresh, migrated database with an EventStore on it (dropped at the end)."""
    async with contextlib.AsyncExitStack() as stack:
        async def make() -> Db:
            dsn = await stack.enter_async_context(fresh_database(pg_dsn, "it_cli"))
            store = await EventStore.connect(dsn, max_size=4)
            stack.push_async_callback(store.close)  # closed before its database is dropped
            async with store.pool.acquire() as conn:
                await migrate(conn, COMPONENTS)
            return Db(dsn, store)

        yield make


async def project(db: Db, stories: list[Story]) -> None:
    """What the live projector does with the stories' events: consume them (ids claimed, effects
    in the same transaction) into the public order read model."""
    projection = OrdersProjection(db.store)
    consumer = EnvelopeBatchConsumer(db.store.pool, "it-cli.projector.orders", projection.apply, check_events=False)
    events = sorted([e for s in stories for sid in s.streams for e in await db.store.read_stream(sid)],
                    key=lambda e: e.global_position)
    await consumer.process_records(fake_records(events))


async def populated(make: Callable[[], Awaitable[Db]]) -> tuple[Db, list[Story]]:
    db = await make()
    stories = [order_story(kind, with_payments=True) for kind in
               ("completed", "cancelled_after_prepayment", "payment_abandoned_and_retried", "payment_expired")]
    for s in stories:
        await append_story(db.store, s)
    await project(db, stories)
    return db, stories


@pytest.fixture(scope="module")
async def shared(new_db: Callable[[], Awaitable[Db]]) -> tuple[Db, list[Story]]:
    """One populated database for the tests that only read."""
    return await populated(new_db)


def _state(stream_id: str, events: list[RecordedEvent]) -> dict[str, Any]:
    return state_of(Order.rehydrate(stream_id.split("-", 1)[1],
                                    [registry.decode(e.event_type, e.schema_version, e.data) for e in events]))


# ------------------------------------------------------------------------------------ replay, state


async def test_replay_shows_every_event_with_who_and_why_and_the_state_after_it(
        shared: tuple[Db, list[Story]]) -> None:
    db, stories = shared
    story = stories[0]
    stored = await db.store.read_stream(story.order_stream)
    doc = await db.cli_json("replay", story.order_stream)
    assert doc["aggregate"].startswith("services.orders.domain.order.Order")
    assert doc["events_shown"] == doc["events_stored"] == len(stored)
    for n, (shown, e) in enumerate(zip(doc["events"], stored, strict=True), start=1):
        assert (shown["global_position"], shown["stream_version"], shown["event_type"], shown["recorded_at"]) == (
            e.global_position, e.stream_version, e.event_type, e.recorded_at.isoformat())
        assert (shown["actor"], shown["role"], shown["correlation_id"]) == (
            e.metadata["actor"], e.metadata["role"], e.metadata["correlation_id"])
        assert shown["state"] == _state(story.order_stream, stored[:n])  # the service's own Order class
    assert doc["final_state"]["status"] == "completed"

    text = await db.cli("replay", story.order_stream)
    assert text.exit_code == 0 and "OrderCompleted" in text.stdout and "status = completed" in text.stdout

    contract = await db.cli_json("replay", f"payment-{story.order_id}")  # a contract stream: events only
    assert contract["aggregate"].startswith("events only")
    assert contract["events"] and all(e["state"] is None for e in contract["events"])

    missing = await db.cli("replay", f"order-nosuch{uuid.uuid4().hex}")
    assert missing.exit_code == 1 and "no events" in missing.output


async def test_state_as_of_a_moment_returns_exactly_the_state_recorded_then(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db = await new_db()
    story = order_story("completed", with_payments=True)
    versions: dict[str, int] = {}
    moments: list[tuple[datetime, dict[str, Any], int]] = []
    for i, step in enumerate(story.steps):
        async with db.store.transaction() as conn:
            for stream_id, events in step:
                r = await db.store.append(stream_id, versions.get(stream_id, NO_STREAM), events, conn=conn)
                versions[stream_id] = r.last_version
        if i in (0, 3, len(story.steps) // 2):
            # The moment, on the database clock the rule compares with (recorded_at), and the state
            # the CLI reports at that moment (no --as-of: everything stored so far).
            now = await db.store.pool.fetchval("SELECT clock_timestamp()")
            seen = await db.cli_json("state", story.order_stream)
            moments.append((now, seen["state"], seen["version"]))
    final = await db.cli_json("state", story.order_stream)
    assert final["state"]["status"] == "completed"
    stored = await db.store.read_stream(story.order_stream)
    for at, recorded_state, version in moments:
        doc = await db.cli_json("state", story.order_stream, "--as-of", at.isoformat())
        assert doc["state"] == recorded_state and doc["version"] == version < final["version"]
        assert doc["state"] == _state(story.order_stream, [e for e in stored if e.recorded_at <= at])
        assert datetime.fromisoformat(doc["last_event"]["recorded_at"]) <= at
    first = stored[0].recorded_at
    before = await db.cli_json("state", story.order_stream, "--as-of", (first - timedelta(microseconds=1)).isoformat())
    assert before["exists"] is False and before["version"] == 0 and before["state"]["status"] is None
    exact = await db.cli_json("state", story.order_stream, "--as-of", first.isoformat())
    assert exact["version"] == 1  # inclusive: an event recorded at exactly TIME is in
    naive = await db.cli("state", story.order_stream, "--as-of", "2025-03-10T09:00:00")
    assert naive.exit_code == 2 and "UTC offset" in naive.output


# ------------------------------------------------------------------------------------ verify


async def test_verify_exits_zero_on_a_clean_store(shared: tuple[Db, list[Story]]) -> None:
    db, stories = shared
    doc = await db.cli_json("verify")
    assert doc["ok"] is True and doc["findings"] == [] and doc["counts"] == {}
    total = await db.store.pool.fetchval("SELECT count(*) FROM events")
    assert doc["checked"]["events"] == total > 0
    assert doc["checked"]["witness_rows"]["rm_orders"] == len(stories)
    assert doc["checked"]["witness_rows"]["processed_events"] == total
    [orders] = doc["checked"]["read_models"]
    assert orders["skipped"] is None and orders["events_replayed"] > 0
    assert orders["rows_compared"]["rm_orders"] == len(stories)
    text = await db.cli("verify")
    assert text.exit_code == 0 and "OK" in text.stdout
    scoped = await db.cli_json("verify", "--stream-prefix", stories[0].order_stream)
    assert scoped["ok"] and scoped["checked"]["events"] == len(await db.store.read_stream(stories[0].order_stream))


async def _tamper(db: Db, sql: str, *args: Any) -> None:
    await db.store.pool.execute(sql, *args)


async def test_verify_finds_an_edited_event_row(new_db: Callable[[], Awaitable[Db]]) -> None:
    db, stories = await populated(new_db)
    stream = stories[0].order_stream
    await _tamper(db, """UPDATE events SET data = jsonb_set(data, '{placed_at}', '"2025-03-01T09:00:00+08:00"')
                          WHERE stream_id = $1 AND stream_version = 1""", stream)
    result = await db.cli("verify")
    assert result.exit_code == 1, result.output
    assert "tampered" in result.stdout and stream in result.stdout and "FAILED" in result.stdout
    doc = await db.cli_json("verify", code=1)
    assert {(f["kind"], f["stream_id"], f["stream_version"]) for f in doc["findings"] if f["source"] == "events"} == {
        ("tampered", stream, 1)}
    # The replay carries the edit, so the read model (built from the original) differs too.
    assert any(f["kind"] == "read_model_drift" and f["stream_id"] == stream for f in doc["findings"])
    # A time range checks the events recorded in it (each against its predecessor, wherever that is).
    edited = (await db.store.read_stream(stream))[0]
    later = (await db.store.read_stream(stories[1].order_stream))[0].recorded_at
    after = await db.cli_json("verify", "--from", later.isoformat(), "--no-read-models")
    assert after["ok"] and after["checked"]["events"] == await db.store.pool.fetchval(
        "SELECT count(*) FROM events WHERE recorded_at >= $1", later)
    upto = await db.cli_json("verify", "--to", edited.recorded_at.isoformat(), "--no-read-models", code=1)
    assert [(f["kind"], f["stream_id"]) for f in upto["findings"]] == [("tampered", stream)]
    # The same finding when the hashing is spread over small ranges and three connections.
    conns = [await asyncpg.connect(db.dsn) for _ in range(3)]
    try:
        async with snapshot(conns[0]):
            await share_snapshot(conns[0], conns[1:])
            checked, found = await check_chains(conns, EventFilter(), chunk=3)
            await end_shared(conns[1:])
    finally:
        for c in conns:
            await c.close()
    assert checked == await db.store.pool.fetchval("SELECT count(*) FROM events")
    assert [(f.kind, f.stream_id, f.stream_version) for f in found] == [("tampered", stream, 1)]

    # An editor who also recomputes the row's hash breaks the link to the next event instead.
    other = stories[1].order_stream
    await _tamper(db, """UPDATE events SET data = data || '{"reason": "edited"}'::jsonb,
                                hash = closeloop_event_hash(prev_hash, event_id, stream_id, stream_version, event_type,
                                                            schema_version, recorded_at,
                                                            data || '{"reason": "edited"}'::jsonb, metadata)
                          WHERE stream_id = $1 AND stream_version = 2""", other)
    doc = await db.cli_json("verify", "--stream-prefix", other, code=1)
    assert ("broken_link", other, 3) in {(f["kind"], f["stream_id"], f["stream_version"]) for f in doc["findings"]}


async def test_verify_finds_a_removed_event_even_the_last_one_of_a_stream(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    db, stories = await populated(new_db)
    last_stream, mid_stream = stories[0].order_stream, stories[1].order_stream
    contract = f"payment-{stories[2].order_id}"
    head = await db.store.stream_version(last_stream)
    last = (await db.store.read_stream(last_stream))[-1]
    await _tamper(db, "DELETE FROM events WHERE stream_id = $1 AND stream_version = $2", last_stream, head)
    # The chain of what is left is intact: only the other records of the stream's version tell.
    assert not [f for f in await db.store.verify(stream_prefix=last_stream)]

    result = await db.cli("verify")
    assert result.exit_code == 1, result.output
    assert "missing_tail" in result.stdout and "deleted_event" in result.stdout and last_stream in result.stdout
    doc = await db.cli_json("verify", code=1)
    found = {(f["kind"], f["source"]) for f in doc["findings"] if f["stream_id"] == last_stream}
    assert {("missing_tail", "rm_orders"), ("missing_tail", "projection_streams"),
            ("deleted_event", "rm_order_history")} <= found
    [named] = [f for f in doc["findings"] if f["kind"] == "deleted_event" and f["stream_id"] == last_stream]
    assert (named["event_id"], named["stream_version"], named["global_position"]) == (
        str(last.event_id), head, last.global_position)

    # The last event of a contract stream has no read model; the consumers that were delivered it
    # (processed_events) still know its id.
    gone = (await db.store.read_stream(contract))[-1]
    await _tamper(db, "DELETE FROM events WHERE event_id = $1", gone.event_id)
    doc = await db.cli_json("verify", code=1)
    assert any(f["kind"] == "deleted_event" and f["event_id"] == str(gone.event_id) and
               f["source"] == "processed_events" for f in doc["findings"])

    # A removed event in the middle of a stream: a gap in the versions and a broken link.
    await _tamper(db, "DELETE FROM events WHERE stream_id = $1 AND stream_version = 2", mid_stream)
    doc = await db.cli_json("verify", "--stream-prefix", mid_stream, "--no-read-models", code=1)
    assert {("version_gap", 3), ("broken_link", 3)} <= {
        (f["kind"], f["stream_version"]) for f in doc["findings"] if f["stream_id"] == mid_stream}


async def test_verify_finds_a_drifted_read_model_row(new_db: Callable[[], Awaitable[Db]]) -> None:
    db, stories = await populated(new_db)
    await _tamper(db, "UPDATE rm_orders SET status = 'completed' WHERE order_id = $1", stories[1].order_id)
    doc = await db.cli_json("verify", code=1)
    assert [(f["kind"], f["stream_id"], f["source"]) for f in doc["findings"]] == [
        ("read_model_drift", stories[1].order_stream, "public.rm_orders")]


async def test_a_seeded_store_verifies_clean_and_every_read_model_is_compared(
        new_db: Callable[[], Awaitable[Db]]) -> None:
    """`closeloop dev seed` writes what the services and the projector would; verify replays every
    projected stream with the projector's folds and compares its tables and the services' own."""
    db = await new_db()
    seeded = await db.cli_json("dev", "seed", "--events", "1500", "--seed", "11", "--batch-events", "300")
    assert seeded["events"] >= 1500 and seeded["service_tables"] == ["rma_cases", "shipping_shipments"]
    doc = await db.cli_json("verify", "--grace", "0")
    assert doc["ok"], doc["findings"][:5]
    [models] = doc["checked"]["read_models"]
    tables = models["tables"]
    assert {"rm_orders", "rm_bills", "rm_order_history", "rm_transactions", "rm_upstream_facts", "rm_rmas",
            "rm_shipments", "projection_streams", "rma_cases", "shipping_shipments"} <= set(tables)
    assert all(t["live"] == t["replayed"] for name, t in tables.items() if name not in ("payments_refunds",
                                                                                          "notifications"))
    assert tables["rma_cases"]["live"] > 0 and tables["rm_transactions"]["live"] > 0

    # A service's own table that no longer says what its stream says.
    shipment = await db.store.pool.fetchval("SELECT shipment_id FROM shipping_shipments ORDER BY 1 LIMIT 1")
    await _tamper(db, "UPDATE shipping_shipments SET status = 'returned_to_sender' WHERE shipment_id = $1", shipment)
    # A projector row whose stream is gone from the live table.
    rma = await db.store.pool.fetchval("SELECT rma_id FROM rm_rmas ORDER BY 1 LIMIT 1")
    await _tamper(db, "DELETE FROM rm_rmas WHERE rma_id = $1", rma)
    doc = await db.cli_json("verify", "--grace", "0", code=1)
    found = {(f["kind"], f["stream_id"], f["source"]) for f in doc["findings"]}
    assert found == {("read_model_drift", f"shipment-{shipment}", "public.shipping_shipments"),
                     ("read_model_drift", f"rma-{rma}", "public.rm_rmas")}, doc["findings"]
    [ship] = [f for f in doc["findings"] if f["source"] == "public.shipping_shipments"]
    assert "status" in ship["detail"]
    # Scoped to one stream, the rest is not looked at.
    scoped = await db.cli_json("verify", "--grace", "0", "--stream-prefix", f"rma-{rma}", code=1)
    assert {f["stream_id"] for f in scoped["findings"]} == {f"rma-{rma}"}


# ------------------------------------------------------------------------------------ export


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_export_manifest_counts_and_checksums_match_the_files(
        shared: tuple[Db, list[Story]], tmp_path: Path) -> None:
    db, stories = shared
    stored = sorted([e for s in stories for sid in s.streams for e in await db.store.read_stream(sid)],
                    key=lambda e: e.global_position)
    start, end = stored[3].recorded_at, stored[-4].recorded_at
    wanted = [e for e in stored if start <= e.recorded_at <= end]
    for fmt in ("jsonl", "csv"):
        out = tmp_path / fmt
        doc = await db.cli_json("export", "--from", start.isoformat(), "--to", end.isoformat(), "--format", fmt,
                                "--out", str(out), "--file-events", "7", "--batch-size", "5")
        manifest = json.loads((out / "manifest.json").read_text())
        assert doc["events"] == manifest["counts"]["events"] == len(wanted)
        assert manifest["counts"]["streams"] == len({e.stream_id for e in wanted})
        assert sum(manifest["counts"]["by_event_type"].values()) == len(wanted)
        assert (manifest["first_position"], manifest["last_position"]) == (
            wanted[0].global_position, wanted[-1].global_position)
        assert manifest["time_range"]["first_recorded_at"] == start.isoformat()
        assert manifest["arguments"]["format"] == fmt and manifest["arguments"]["from"] == start.isoformat()
        assert len(manifest["files"]) == -(-len(wanted) // 7)
        sums = dict(reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines())
        rows: list[dict[str, Any]] = []
        for f in manifest["files"]:
            path = out / f["name"]
            assert f["sha256"] == _sha256(path) == sums[f["name"]] and f["bytes"] == path.stat().st_size
            with path.open(newline="", encoding="utf-8") as handle:
                got = ([json.loads(line) for line in handle] if fmt == "jsonl"
                       else list(csv.DictReader(handle)))
            assert len(got) == f["events"]
            rows += got
        assert [int(r["global_position"]) for r in rows] == [e.global_position for e in wanted]
        for r, e in zip(rows, wanted, strict=True):
            data = r["data"] if fmt == "jsonl" else json.loads(r["data"])
            assert (data, r["stream_id"], r["hash"]) == (e.data, e.stream_id, e.hash)
    # An export never writes into a directory that holds something.
    again = await db.cli("export", "--out", str(tmp_path / "jsonl"))
    assert again.exit_code == 2 and "not empty" in again.output


async def test_export_by_stream_prefix(shared: tuple[Db, list[Story]], tmp_path: Path) -> None:
    db, stories = shared
    stream = stories[2].order_stream
    doc = await db.cli_json("export", "--stream-prefix", stream, "--out", str(tmp_path / "x"))
    assert doc["events"] == len(await db.store.read_stream(stream))
    lines = (tmp_path / "x" / "events-00001.jsonl").read_text().splitlines()
    assert {json.loads(line)["stream_id"] for line in lines} == {stream}


# ------------------------------------------------------------------------------------ audit


async def test_audit_filters_by_actor_role_time_and_prefix_newest_first_in_pages(
        shared: tuple[Db, list[Story]]) -> None:
    db, stories = shared
    all_events = sorted([e for s in stories for sid in s.streams for e in await db.store.read_stream(sid)],
                        key=lambda e: (e.recorded_at, e.global_position), reverse=True)
    merchant_events = [e for e in all_events if e.metadata["role"] == "merchant"]
    doc = await db.cli_json("audit", "--role", "merchant", "--limit", "1000")
    assert [i["event_id"] for i in doc["items"]] == [str(e.event_id) for e in merchant_events]
    assert doc["next_cursor"] is None

    actor = stories[0].steps[0][0][1][0].metadata.actor  # the first story's customer
    doc = await db.cli_json("audit", "--actor", actor, "--limit", "1000")
    assert doc["items"] and {i["actor"] for i in doc["items"]} == {actor}
    assert len(doc["items"]) == sum(1 for e in all_events if e.metadata["actor"] == actor)
    wildcard = await db.cli_json("audit", "--actor", "merchant:*", "--limit", "1000")
    assert {i["actor"].split(":")[0] for i in wildcard["items"]} == {"merchant"}
    assert len(wildcard["items"]) == sum(1 for e in all_events if e.metadata["actor"].startswith("merchant:"))

    start, end = all_events[-3].recorded_at, all_events[2].recorded_at
    ranged = await db.cli_json("audit", "--from", start.isoformat(), "--to", end.isoformat(), "--limit", "1000")
    assert [i["event_id"] for i in ranged["items"]] == [str(e.event_id) for e in all_events[2:-2]]

    prefix = stories[1].order_stream
    pages, cursor = [], None
    while True:
        args = ["audit", "--stream-prefix", prefix, "--limit", "2", *(["--cursor", cursor] if cursor else [])]
        page = await db.cli_json(*args)
        pages.append([i["stream_version"] for i in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    head = await db.store.stream_version(prefix)
    assert [v for p in pages for v in p] == list(range(head, 0, -1)) and all(len(p) <= 2 for p in pages)

    text = await db.cli("audit", "--role", "merchant", "--limit", "2")
    assert text.exit_code == 0 and "newest first" in text.stdout and "next page: --cursor" in text.stdout


# ------------------------------------------------------------------------------------ read-only role


async def test_every_command_works_with_a_read_only_role(
        new_db: Callable[[], Awaitable[Db]], pg_dsn: str, tmp_path: Path) -> None:
    db, stories = await populated(new_db)
    role = f"auditor_{uuid.uuid4().hex[:10]}"
    dbname = urlsplit(db.dsn).path.lstrip("/")
    async with db.store.pool.acquire() as conn:
        # SELECT on the tables and nothing else (pg_read_all_data would do as well); not even the
        # TEMPORARY privilege PostgreSQL gives PUBLIC by default. EXECUTE (closeloop_event_hash) is
        # PUBLIC's default for functions.
        await conn.execute(f"REVOKE TEMPORARY ON DATABASE {dbname} FROM PUBLIC")
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f"GRANT CONNECT ON DATABASE {dbname} TO {role}")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    ro = _with_db(pg_dsn, dbname, user=role)
    try:
        probe = await asyncpg.connect(ro)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await probe.execute("INSERT INTO relay_checkpoints (name, transaction_id, global_position) "
                                    "VALUES ('x', '1', 1)")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await probe.execute("CREATE SCHEMA auditor_was_here")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await probe.execute("CREATE TEMP TABLE auditor_scratch (x int)")
        finally:
            await probe.close()
        story = stories[0]
        assert (await db.cli_json("replay", story.order_stream, dsn=ro))["final_state"]["status"] == "completed"
        assert (await db.cli_json("state", story.order_stream, "--as-of", "now", dsn=ro))["version"] > 0
        clean = await db.cli_json("verify", dsn=ro)
        assert clean["ok"] and clean["checked"]["read_models"][0]["events_replayed"] > 0
        exported = await db.cli_json("export", "--format", "csv", "--out", str(tmp_path / "ro"), dsn=ro)
        assert exported["events"] == await db.store.pool.fetchval("SELECT count(*) FROM events")
        assert (await db.cli_json("audit", "--role", "customer", dsn=ro))["items"]

        # The installed entry point, as an auditor types it, with the role's DATABASE_URL.
        env = {**os.environ, "DATABASE_URL": ro}
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "libs.cli", "verify", "--json"],
                                       capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["ok"] is True

        # And it still finds what is wrong.
        await _tamper(db, "DELETE FROM events WHERE stream_id = $1 AND stream_version = "
                          "(SELECT max(stream_version) FROM events WHERE stream_id = $1)", story.order_stream)
        doc = await db.cli_json("verify", dsn=ro, code=1)
        assert any(f["kind"] == "missing_tail" and f["stream_id"] == story.order_stream for f in doc["findings"])
        # Nothing was left behind by the read-only runs.
        assert await db.store.pool.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspowner = (SELECT oid FROM pg_roles WHERE rolname = $1)",
            role) == 0
    finally:
        async with db.store.pool.acquire() as conn:
            await conn.execute(f"DROP OWNED BY {role}")  # its grants in this database
            await conn.execute(f"REVOKE ALL ON DATABASE {dbname} FROM {role}")
            await conn.execute(f"DROP ROLE {role}")
