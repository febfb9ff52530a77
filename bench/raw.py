"""The raw baseline, measured in the same run as the targets: what asyncpg, aiokafka and FastStream do
on this machine's embedded PostgreSQL and Tansu broker with nothing of closeloop in between. Rows are
the same realistic events the targets append (the seeder's), in a table shaped like `events`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from bench.common import Row, Timer, chunks, latency_ms, load_average

RAW_TABLE = """CREATE TABLE IF NOT EXISTS bench_raw (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id uuid NOT NULL UNIQUE, stream_id text NOT NULL, stream_version bigint NOT NULL,
    event_type text NOT NULL, schema_version integer NOT NULL, data jsonb NOT NULL, metadata jsonb NOT NULL,
    recorded_at timestamptz NOT NULL, prev_hash text NOT NULL, hash text NOT NULL,
    UNIQUE (stream_id, stream_version))"""
COLUMNS = ("event_id", "stream_id", "stream_version", "event_type", "schema_version", "data", "metadata",
           "recorded_at", "prev_hash", "hash")
INSERT = ("INSERT INTO bench_raw (event_id, stream_id, stream_version, event_type, schema_version, data, metadata,"
          " recorded_at, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7::text::jsonb, $8, $9, $10)")
HASH = "f" * 64


def record(r: Row, tag: str) -> tuple[Any, ...]:
    """A row's values; `tag` keeps stream ids (and, with a fresh uuid, event ids) apart between runs."""
    e = r.event
    return (uuid.uuid4(), f"{r.stream_id}-{tag}", r.version, e.event_type, e.schema_version,
            orjson.dumps(e.data).decode(), orjson.dumps(e.metadata.to_json()).decode(), datetime.now(UTC),
            HASH, HASH)


async def _fresh(conn: asyncpg.Connection) -> None:
    await conn.execute("DROP TABLE IF EXISTS bench_raw")
    await conn.execute(RAW_TABLE)


async def single_row(dsn: str, rows: list[Row], conns: int, *, notify: bool = False) -> dict[str, Any]:
    """One event per transaction (autocommit INSERT), `conns` connections; with notify, each transaction
    also NOTIFYs (what the event store did on every append: a diagnostic, not a baseline)."""
    pool = await asyncpg.create_pool(dsn, min_size=conns, max_size=conns)
    assert pool is not None
    async with pool.acquire() as c:
        await _fresh(c)
    tag = uuid.uuid4().hex[:6]
    per_conn = [rows[i::conns] for i in range(conns)]
    latencies: list[float] = []

    async def writer(mine: list[Row]) -> None:
        async with pool.acquire() as c:
            for r in mine:
                values = record(r, tag)
                t0 = time.perf_counter()
                if notify:
                    async with c.transaction():
                        await c.execute(INSERT, *values)
                        await c.execute("SELECT pg_notify('bench_raw', '')")
                else:
                    await c.execute(INSERT, *values)
                latencies.append(time.perf_counter() - t0)

    with Timer() as t:
        await asyncio.gather(*[writer(m) for m in per_conn])
    await pool.close()
    return {"events": len(rows), "connections": conns, "rate": round(len(rows) / t.seconds),
            **latency_ms(latencies), "load": t.load}


async def _batched(dsn: str, rows: list[Row], size: int,
                   write: Callable[[asyncpg.Connection, list[tuple[Any, ...]]], Awaitable[Any]]) -> float:
    """Seconds to write `rows` in batches of `size` on one connection with `write` (into a fresh table)."""
    conn = await asyncpg.connect(dsn)
    try:
        await _fresh(conn)
        tag = uuid.uuid4().hex[:6]
        batches = [[record(r, tag) for r in batch] for batch in chunks(rows, size)]
        with Timer() as t:
            for batch in batches:
                await write(conn, batch)
        await conn.execute("DROP TABLE bench_raw")
    finally:
        await conn.close()
    return t.seconds


async def executemany(dsn: str, rows: list[Row], per_tx: int = 100) -> dict[str, Any]:
    async def write(conn: asyncpg.Connection, batch: list[tuple[Any, ...]]) -> None:
        async with conn.transaction():
            await conn.executemany(INSERT, batch)

    load = load_average()
    seconds = await _batched(dsn, rows, per_tx, write)
    return {"events": len(rows), "per_transaction": per_tx, "rate": round(len(rows) / seconds),
            "load": max(load, load_average())}


async def copy(dsn: str, rows: list[Row], per_copy: int = 1000) -> dict[str, Any]:
    async def write(conn: asyncpg.Connection, batch: list[tuple[Any, ...]]) -> None:
        await conn.copy_records_to_table("bench_raw", records=batch, columns=COLUMNS)

    load = load_average()
    seconds = await _batched(dsn, rows, per_copy, write)
    return {"events": len(rows), "per_copy": per_copy, "rate": round(len(rows) / seconds),
            "load": max(load, load_average())}


async def read_all(dsn: str, batch: int = 5000) -> dict[str, Any]:
    """Every event of the store by position in batches, data and metadata decoded with orjson."""
    conn = await asyncpg.connect(dsn)
    n = 0
    after = 0
    with Timer() as t:
        while True:
            rows = await conn.fetch(
                "SELECT global_position, transaction_id::text, event_id, stream_id, stream_version, event_type,"
                " schema_version, data::text, metadata::text, recorded_at, prev_hash, hash FROM events"
                " WHERE global_position > $1 ORDER BY global_position LIMIT $2", after, batch)
            if not rows:
                break
            for r in rows:
                orjson.loads(r[7])
                orjson.loads(r[8])
            n += len(rows)
            after = rows[-1][0]
    await conn.close()
    return {"events": n, "batch": batch, "rate": round(n / t.seconds), "load": t.load}


async def kafka_produce_consume(bootstrap: str, values: list[tuple[bytes, bytes]],
                                partitions: int = 6) -> dict[str, Any]:
    """aiokafka: produce every message with acks=all to a topic of `partitions`, then consume them all
    in a consumer group (batched getmany)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=256 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        with Timer() as tp:
            futures = [await producer.send(topic, value=v, key=k) for k, v in values]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}-g", auto_offset_reset="earliest",
                                fetch_max_wait_ms=10, session_timeout_ms=3000, heartbeat_interval_ms=500,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        got = 0
        t0 = None
        while got < len(values):
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batch and t0 is None:
                t0 = time.perf_counter()
            got += sum(len(v) for v in batch.values())
        consumed = time.perf_counter() - (t0 or time.perf_counter())
    finally:
        await consumer.stop()
    return {"messages": len(values), "partitions": partitions, "produce_rate": round(len(values) / tp.seconds),
            "consume_rate": round(len(values) / max(consumed, 1e-6)), "load": tp.load}


async def faststream_per_message(bootstrap: str, values: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """A FastStream subscriber called once per message (no database), on pre-produced messages."""
    from aiokafka import AIOKafkaProducer
    from faststream.kafka import KafkaBroker

    topic = f"bench-fs-{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=k) for k, v in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    broker = KafkaBroker(bootstrap, log_level=30)
    done = asyncio.Event()
    seen = 0
    first: list[float] = []

    @broker.subscriber(topic, group_id=f"{topic}-g", auto_offset_reset="earliest", fetch_max_wait_ms=10,
                       session_timeout_ms=3000, heartbeat_interval_ms=500)
    async def handle(body: dict[str, Any]) -> None:
        nonlocal seen
        if not first:
            first.append(time.perf_counter())
        seen += 1
        if seen >= len(values):
            done.set()

    await broker.start()
    try:
        await asyncio.wait_for(done.wait(), 120)
        seconds = time.perf_counter() - first[0]
    finally:
        await broker.stop()
    return {"messages": len(values), "rate": round(len(values) / seconds)}
