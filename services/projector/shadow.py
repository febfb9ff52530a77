"""Replaying the event store into a shadow schema, catching up with the live stream, and swapping
the shadow in: the zero-downtime projection rebuild (issue 5, item 2) and the replay side of the
daily reconciliation (services/projector/application/reconciliation.py).

A build has four steps.

1. `create`: a fresh schema with empty copies of every projector table (projections/tables.py),
   without their indexes (a bulk load into an unindexed table is several times faster).
2. `load`: one REPEATABLE READ transaction over the event store fixes a snapshot; every stream of
   the projected categories is read in (stream, version) order and folded by the same reducers
   the live consumer uses (a row is a function of one stream), and the rows go in by COPY. In
   parallel, on a connection that imports the same snapshot, plain SQL fills the history rows
   (one per order or bill event) and the versions each stream reached.
3. `index`: the live tables' primary keys and indexes, same names, on the shadow tables.
4. `catch_up`: the events committed after the snapshot (the tail: every transaction the snapshot
   does not see) are applied through the live code path (OrdersProjection, FactsProjection)
   into the shadow, as often as wanted.

Reads are served from the live tables all along. `swap` then moves the shadow in (see its
docstring for why that is safe with the live consumer running). Nothing here appends to the
event store or publishes anything: the projector has no side effects, and a replay only reads
`events` and writes its own schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from libs.domain.events import registry
from libs.eventstore import Cursor, EventStore
from libs.eventstore.store import init_connection
from libs.messaging.deadletter import record_envelope
from services.projector.projections import facts
from services.projector.projections import orders as orders_projection
from services.projector.projections.common import StoredEvent, category_of
from services.projector.projections.facts import FactsProjection
from services.projector.projections.orders import OrdersProjection, envelope_of
from services.projector.projections.tables import (
    BY_NAME,
    CATEGORIES,
    OWNED,
    PROJECTION_OF_CATEGORY,
    PROJECTION_STREAMS,
    RM_ORDER_HISTORY,
)

log = logging.getLogger("closeloop.projector.shadow")

# Taken shared by the live consumer's batch transaction before it touches a read model, and
# exclusively by a swap: a swap waits for the batch in flight and holds the next one back, and
# neither ever waits for the other while holding a read-model lock (no deadlock).
SWAP_LOCK = 0x636C7377  # "clsw"
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_INDEX_ON = re.compile(r" ON (ONLY )?(?:[a-z_][a-z0-9_]*\.)?([a-z_][a-z0-9_]*) USING ")
FOLD_BATCH = 5000
COPY_ROWS = 5000
HISTORY_SLICE = 50_000  # global positions per history insert


def check_schema_name(schema: str) -> str:
    if not _SCHEMA.match(schema) or schema in ("public", "pg_catalog", "information_schema"):
        raise ValueError(f"bad shadow schema name {schema!r}")
    return schema


@dataclass(frozen=True)
class Snapshot:
    """A PostgreSQL snapshot (`xmin:xmax:xip,...`): which transactions' rows it sees."""

    text: str
    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(text, int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def sees(self, xid: int) -> bool:
        """Whether the snapshot sees (the committed rows of) transaction `xid`."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)


@dataclass
class BuildProgress:
    """Where a build is: the phase, events applied of the total, and the rate."""

    phase: str = "starting"
    applied: int = 0
    total: int = 0
    tail: int = 0  # events applied by catch-ups (after the snapshot)
    rows: int = 0
    started: float = field(default_factory=time.monotonic)
    seconds: dict[str, float] = field(default_factory=dict)  # per finished phase

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Events applied per second so far."""
        return self.applied / self.elapsed if self.elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "applied": self.applied, "total": self.total, "tail": self.tail,
                "rows": self.rows, "elapsed_seconds": round(self.elapsed, 3),
                "events_per_second": round(self.rate, 1),
                "phase_seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


ProgressFn = Callable[[BuildProgress], Awaitable[None] | None]


@dataclass(frozen=True)
class SwapResult:
    tables: list[str]
    tail_applied: int  # events applied inside the swap transaction (the last catch-up)
    wait_ms: float  # waiting for the live consumer's batch in flight and for readers
    locked_ms: float  # how long readers and the live consumer waited on the swap


class ShadowBuild:
    """One build of every projector table into `schema` (see the module docstring)."""

    def __init__(self, store: EventStore, schema: str, *, on_progress: ProgressFn | None = None) -> None:
        self.store = store
        self.schema = check_schema_name(schema)
        self.on_progress = on_progress
        self.progress = BuildProgress()
        self.snapshot: Snapshot | None = None
        self.cursor: Cursor | None = None  # the catch-ups' position in follower order
        self.events_in_store = 0  # in the snapshot
        self.fold_errors: list[str] = []  # streams whose events could not be folded (no rows; the live path
        # dead-letters them too, so the reconciliation shows whatever a live row still holds of them)
        self.head_position = 0  # the highest global position in the snapshot
        self._last_report = 0.0
        self._phase_at = time.monotonic()

    # ------------------------------------------------------------------ progress
    async def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.on_progress is None or (not force and now - self._last_report < 0.5):
            return
        self._last_report = now
        result = self.on_progress(self.progress)
        if inspect.isawaitable(result):
            await result

    async def _phase(self, name: str) -> None:
        p = self.progress
        if p.phase != "starting":
            p.seconds[p.phase] = p.seconds.get(p.phase, 0.0) + (time.monotonic() - self._phase_at)
        self._phase_at = time.monotonic()
        p.phase = name
        await self._report(force=True)

    # ------------------------------------------------------------------ connections
    @contextlib.asynccontextmanager
    async def _connection(self, *, binary_json: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A connection of its own (not one of the pool's, which serve the live projector) when the
        store knows its DSN; jsonb in binary form for COPY."""
        if self.store.dsn:
            conn = await asyncpg.connect(self.store.dsn)
            try:
                await init_connection(conn)
                if binary_json:
                    await _binary_json(conn)
                yield conn
            finally:
                await conn.close()
        else:
            async with self.store.pool.acquire() as conn:
                if binary_json:
                    await _binary_json(conn)
                try:
                    yield conn
                finally:
                    if binary_json:
                        await init_connection(conn)

    # ------------------------------------------------------------------ 1. create
    async def create(self) -> None:
        """(Re)create the schema with empty, unindexed copies of the projector's tables."""
        await self._phase("creating")
        async with self.store.pool.acquire() as conn, conn.transaction():
            await conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE; CREATE SCHEMA {self.schema}")
            for spec in OWNED:
                await conn.execute(f"CREATE TABLE {self.schema}.{spec.name} (LIKE public.{spec.name} "
                                   "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED)")

    # ------------------------------------------------------------------ 2. load
    async def load(self) -> int:
        """Replay the store as of one snapshot into the shadow; returns the events folded."""
        await self._phase("replaying")
        cats = list(CATEGORIES)
        async with self._connection() as reader, self._connection(binary_json=True) as writer, \
                self._connection() as side:
            async with reader.transaction(isolation="repeatable_read", readonly=True):
                snap, exported = await reader.fetchrow("SELECT pg_current_snapshot()::text, pg_export_snapshot()")
                self.snapshot = Snapshot.parse(snap)
                counted = await reader.fetchrow(
                    """SELECT count(*) AS events,
                              count(*) FILTER (WHERE split_part(stream_id, '-', 1) = ANY($1::text[])) AS projected,
                              coalesce(max(global_position), 0) AS head
                         FROM events""", cats)
                self.progress.total = counted["projected"]
                self.events_in_store, self.head_position = counted["events"], counted["head"]
                await self._report(force=True)
                sql_side = asyncio.create_task(self._load_by_sql(side, exported))
                try:
                    folded = await self._fold_all(reader, writer, cats)
                finally:
                    if not sql_side.done():
                        await asyncio.wait([sql_side])
                self.progress.rows += sql_side.result()
        self.cursor = Cursor(self.snapshot.xmin, 0)
        return folded

    async def _load_by_sql(self, conn: asyncpg.Connection, exported: str) -> int:
        """The history rows (one per order or bill event, nothing to fold) in the database, as of the same
        snapshot, in slices of positions: each slice is a short transaction of its own. A transaction that
        writes holds a transaction id, and followers (the relay) read only below the oldest one running:
        one long insert would hold the whole event pipeline back for its duration."""
        s = self.schema
        kinds = [("order", t, registry.get(t).schema_version) for t in orders_projection.ORDER_TYPES] + \
                [("bill", t, registry.get(t).schema_version) for t in orders_projection.BILL_TYPES]
        rows = 0
        low = 0
        while low < self.head_position:
            high = low + HISTORY_SLICE
            async with conn.transaction(isolation="repeatable_read"):
                await conn.execute(f"SET TRANSACTION SNAPSHOT '{exported}'")
                # The live path writes a history row for each order or bill event it could decode.
                done = await conn.execute(
                    f"""INSERT INTO {s}.{RM_ORDER_HISTORY.name} ({', '.join(RM_ORDER_HISTORY.columns)})
                        SELECT e.event_id, e.data->>'order_id', e.stream_id, e.stream_version, e.global_position,
                               e.event_type, e.recorded_at, e.metadata->>'actor', e.metadata->>'role',
                               e.metadata->>'correlation_id', e.data
                          FROM events e
                          JOIN unnest($1::text[], $2::text[], $3::int[]) AS k(category, event_type, version)
                            ON k.category = split_part(e.stream_id, '-', 1) AND k.event_type = e.event_type
                           AND e.schema_version <= k.version
                         WHERE e.global_position > $4 AND e.global_position <= $5""",
                    [k[0] for k in kinds], [k[1] for k in kinds], [k[2] for k in kinds], low, high)
            rows += int(done.split()[-1])
            low = high
        return rows

    async def _fold_all(self, reader: asyncpg.Connection, writer: asyncpg.Connection, cats: list[str]) -> int:
        # Stream order comes from the (stream_id, stream_version) unique index; a sort of every
        # payload would spill to disk.
        await reader.execute("SET LOCAL enable_sort = off")
        cur = await reader.cursor(
            """SELECT stream_id, stream_version, global_position, recorded_at, event_type, schema_version,
                      CASE WHEN event_type = ANY($2::text[]) THEN '{}'::jsonb ELSE data END
                 FROM events WHERE split_part(stream_id, '-', 1) = ANY($1::text[])
                ORDER BY stream_id, stream_version""", cats, sorted(facts.PAYLOAD_UNUSED))
        buffers: dict[str, list[tuple[Any, ...]]] = {}
        copies: list[asyncio.Task[None]] = []
        stream: list[StoredEvent] = []
        folded = 0

        versions = buffers.setdefault(PROJECTION_STREAMS.name, [])

        def flush_stream() -> None:
            if not stream:
                return
            cat = category_of(stream[0].stream_id)
            # The version the live projection records for the stream: its last event's, read or not.
            versions.append((PROJECTION_OF_CATEGORY[cat], stream[0].stream_id, stream[-1].stream_version))
            if cat in orders_projection.CATEGORIES:
                try:
                    got = orders_projection.fold_stream(stream)
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    got = None
                    self.fold_errors.append(f"{stream[0].stream_id}: {type(exc).__name__}: {exc}")
                if got is not None:
                    table, row = got
                    buffers.setdefault(table, []).append(tuple(row[c] for c in BY_NAME[table].columns))
            else:
                rows_of, error = facts.safe_fold(stream)
                if error is not None:
                    self.fold_errors.append(f"{stream[0].stream_id}: {error}")
                for table, rows in rows_of.items():
                    cols = BY_NAME[table].columns
                    buffers.setdefault(table, []).extend(tuple(r[c] for c in cols) for r in rows)

        async def copy(table: str, records: list[tuple[Any, ...]]) -> None:
            await writer.copy_records_to_table(table, records=records, columns=BY_NAME[table].columns,
                                               schema_name=self.schema)

        pending = asyncio.ensure_future(cur.fetch(FOLD_BATCH))
        while True:
            rows = await pending
            if not rows:
                break
            # The database reads the next batch while this one is folded.
            pending = asyncio.ensure_future(cur.fetch(FOLD_BATCH))
            await asyncio.sleep(0)
            for r in rows:
                sid = r[0]
                if stream and stream[0].stream_id != sid:
                    flush_stream()
                    stream = []
                stream.append(StoredEvent(sid, r[1], r[2], r[3], r[4], r[5], r[6]))
            folded += len(rows)
            self.progress.applied = folded
            for table in [t for t, b in buffers.items() if len(b) >= COPY_ROWS]:
                records = buffers[table][:]
                buffers[table].clear()
                self.progress.rows += len(records)
                # One COPY at a time on the writer; it runs while the next batch is folded.
                if copies:
                    await copies.pop()
                copies.append(asyncio.ensure_future(copy(table, records)))
            await self._report()
        flush_stream()
        for task in copies:
            await task
        for table, records in buffers.items():
            if records:
                self.progress.rows += len(records)
                await copy(table, records)
        return folded

    # ------------------------------------------------------------------ 3. index
    async def index(self) -> None:
        """The live tables' primary keys, unique constraints and indexes, same names, on the shadow."""
        await self._phase("indexing")
        s = self.schema
        async with self.store.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT c.relname AS table_name, i.relname AS index_name, pg_get_indexdef(i.oid) AS indexdef,
                          con.conname, pg_get_constraintdef(con.oid) AS condef
                     FROM pg_index x
                     JOIN pg_class i ON i.oid = x.indexrelid
                     JOIN pg_class c ON c.oid = x.indrelid
                     JOIN pg_namespace n ON n.oid = c.relnamespace
                LEFT JOIN pg_constraint con ON con.conindid = i.oid AND con.conrelid = c.oid
                                           AND con.contype IN ('p', 'u', 'x')
                    WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
                    ORDER BY c.relname, con.conname NULLS LAST, i.relname""", [t.name for t in OWNED])
            for r in rows:
                if r["conname"] is not None:
                    await conn.execute(f"ALTER TABLE {s}.{r['table_name']} ADD CONSTRAINT {r['conname']} "
                                       f"{r['condef']}")
                else:
                    sql, n = _INDEX_ON.subn(lambda m: f" ON {s}.{m.group(2)} USING ", r["indexdef"], count=1)
                    if n != 1:
                        raise RuntimeError(f"cannot move index definition to {s}: {r['indexdef']}")
                    await conn.execute(sql)
            await conn.execute("ANALYZE " + ", ".join(f"{s}.{t.name}" for t in OWNED))

    # ------------------------------------------------------------------ 4. catch up
    async def catch_up(self, conn: asyncpg.Connection | None = None, *, batch: int = 2000) -> int:
        """Apply what committed after the snapshot (and after the previous catch-up), through the
        live consumer's code; returns the number of events applied. With `conn`, in its transaction."""
        assert self.snapshot is not None and self.cursor is not None, "load() first"
        if self.progress.phase != "catching_up" and conn is None:
            await self._phase("catching_up")
        orders = OrdersProjection(self.store, self.schema)
        fact_rows = FactsProjection(self.store, self.schema)
        applied = 0
        while True:
            events = await self.store.read_all(self.cursor, batch, conn=conn)
            if not events:
                break
            self.cursor = events[-1].cursor
            tail = [envelope_of(e) for e in events
                    if not self.snapshot.sees(e.transaction_id) and category_of(e.stream_id) in CATEGORIES]
            if not tail:
                continue
            if conn is not None:
                n = await orders.apply(conn, tail) + await fact_rows.apply(conn, tail)
            else:
                async with self.store.transaction() as c:
                    n = await orders.apply(c, tail) + await fact_rows.apply(c, tail)
            applied += n
            self.progress.tail += n
            self.progress.applied += n
            self.progress.total += n
            await self._report()
        return applied

    async def build(self) -> None:
        """create, load, index and a first catch-up."""
        await self.create()
        await self.load()
        await self.index()
        await self.catch_up()

    # ------------------------------------------------------------------ swap
    async def swap(self, *, lock_timeout_s: float = 10, attempts: int = 5) -> SwapResult:
        """Replace the live tables by the shadow ones, in one transaction, with the live consumer running.

        Why this is safe. The transaction first takes SWAP_LOCK exclusively: the live consumer's batch
        transaction takes it shared before touching any read model, so the swap waits for the batch in
        flight to commit and holds the next one back (its ids are claimed, its read-model writes wait).
        Then it locks the live tables (ACCESS EXCLUSIVE: readers wait the few milliseconds the swap
        lasts) and catches the shadow up once more, inside the transaction. Every event the live
        consumer has applied came through the relay, which publishes only events below the oldest
        running transaction; that horizon only moves forward, so this last catch-up has read them all:
        the shadow now holds everything the live tables hold, and what the event store added since.
        The tables (with projection_streams, the versions each stream reached) are then exchanged by
        ALTER TABLE ... SET SCHEMA, which is transactional. When the consumer's batch goes on, its
        statements resolve the names again (PostgreSQL re-plans on the invalidation), find the new
        tables and the versions in them, and skip what the shadow already applied: its Kafka offsets
        and processed-event ids (which are not swapped) stay true, since everything they cover is in
        the store and hence in the shadow. A deadlock or lock timeout rolls the whole swap back; it is
        retried.
        """
        assert self.snapshot is not None, "build() first"
        await self._phase("swapping")
        s = self.schema
        retired = f"{s}_retired"[:63]
        names = [t.name for t in OWNED]
        for attempt in range(1, attempts + 1):
            try:
                async with self.store.transaction() as conn:
                    await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
                    t0 = time.monotonic()
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", SWAP_LOCK)
                    await conn.execute("LOCK TABLE " + ", ".join(f"public.{n}" for n in names)
                                       + " IN ACCESS EXCLUSIVE MODE")
                    t1 = time.monotonic()
                    tail = await self.catch_up(conn)
                    grants = await conn.fetch(
                        """SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants
                            WHERE table_schema = 'public' AND table_name = ANY($1::text[])
                              AND grantee <> current_user""", names)
                    for g in grants:
                        await conn.execute(f'GRANT {g["privilege_type"]} ON {s}.{g["table_name"]} TO "{g["grantee"]}"')
                    await conn.execute(f"DROP SCHEMA IF EXISTS {retired} CASCADE; CREATE SCHEMA {retired}")
                    for n in names:
                        await conn.execute(f"ALTER TABLE public.{n} SET SCHEMA {retired}")
                        await conn.execute(f"ALTER TABLE {s}.{n} SET SCHEMA public")
                    locked_ms = (time.monotonic() - t1) * 1000
                result = SwapResult(names, tail, (t1 - t0) * 1000, locked_ms)
                break
            except (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.LockNotAvailableError) as exc:
                if attempt == attempts:
                    raise
                log.warning("swap of %s: %s; retrying (%d)", s, exc, attempt)
                await asyncio.sleep(0.2 * attempt)
        await self.store.pool.execute(f"DROP SCHEMA IF EXISTS {retired} CASCADE; DROP SCHEMA IF EXISTS {s} CASCADE")
        await self._phase("swapped")
        return result

    async def drop(self) -> None:
        await self.store.pool.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


async def _binary_json(conn: asyncpg.Connection) -> None:
    """jsonb in PostgreSQL's binary form (a version byte, then the text), which COPY needs."""
    for typ in ("jsonb",):
        await conn.set_type_codec(typ, encoder=lambda v: b"\x01" + orjson.dumps(v),
                                  decoder=lambda b: orjson.loads(b[1:]), schema="pg_catalog", format="binary")


async def live_apply(orders: OrdersProjection, fact_rows: FactsProjection, conn: asyncpg.Connection,
                     envelopes: list[Any]) -> None:
    """The live consumer's handler: every projection in the batch's transaction, after SWAP_LOCK (shared)."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", SWAP_LOCK)
    envelopes = await stored_only(conn, [e for e in envelopes if orders.handles(e) or fact_rows.handles(e)])
    await orders.apply(conn, envelopes)
    await fact_rows.apply(conn, envelopes)


async def stored_only(conn: asyncpg.Connection, envelopes: list[Any]) -> list[Any]:
    """The read models are folds of the event store: an event the store does not hold (published by something
    other than the relay) is about an aggregate that does not exist here, and is dead-lettered."""
    if not envelopes:
        return []
    stored = {r["event_id"] for r in await conn.fetch(
        "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])", [e.event_id for e in envelopes])}
    for e in envelopes:
        if e.event_id not in stored:
            await record_envelope(conn, "projector", e, "unknown_aggregate",
                                  f"event {e.event_id} ({e.stream_id} v{e.stream_version}) is not in the event "
                                  "store: no such aggregate")
    return [e for e in envelopes if e.event_id in stored]
