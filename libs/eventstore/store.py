"""The PostgreSQL event store (asyncpg).

Guarantees (each proven by tests/integration/test_event_store_contract.py):
- append() is atomic per call, checks the expected stream version (optimistic
  concurrency) and raises WrongExpectedVersion without storing anything on a mismatch;
- re-appending the same event ids to the same stream returns the first result and
  stores nothing (idempotent retry); event ids are globally unique;
- read_all() delivers every committed event exactly once to a follower that passes back
  the last cursor it saw, in an order that keeps each stream's versions ascending, even
  while many writers commit out of order (see the comment in 0001_event_store.sql);
- every event is chained to its predecessor in the stream by a SHA-256 hash, so an
  edited or deleted row is found by verify().

Followers (the relay) are woken on commit by a NOTIFY on `closeloop_events`. The NOTIFY is
not sent inside the appending transaction when the store knows when that transaction
commits (an append on its own, or one inside store.transaction()): a notifying commit
takes a cluster-wide lock until its WAL is flushed, which made concurrent writers commit
one at a time (migrations/0003). The store sends it right after such commits instead,
coalesced (at most one in flight, one more if commits came meanwhile) from a session with
synchronous_commit off. An append on a connection whose transaction someone else opened
notifies inside it, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from libs.eventstore.errors import (
    DATABASE_ERRORS,
    DATABASE_UNAVAILABLE,
    DuplicateEventId,
    IdempotencyKeyReused,
    WrongExpectedVersion,
)
from libs.eventstore.migrate import EVENTSTORE_MIGRATIONS, migrate
from libs.eventstore.model import (
    GENESIS_HASH,
    START,
    AppendResult,
    Cursor,
    NewEvent,
    RecordedEvent,
)
from libs.observability import APPEND_CONFLICTS, EVENTS_APPENDED

log = logging.getLogger("closeloop.eventstore")

# Followers LISTEN here (libs/messaging/relay.py).
NOTIFY_CHANNEL = "closeloop_events"

_COLUMNS = """global_position, transaction_id::text::bigint AS transaction_id, event_id, stream_id,
    stream_version, event_type, schema_version, data, metadata, recorded_at, prev_hash, hash"""


# Payloads and metadata go as JSON text (text[] cast to jsonb[] by the server): asyncpg would take a JSON array
# inside a jsonb[] for a sub-array, and one orjson call per value is the cheapest encoding anyway.
_APPEND_ONE = ("SELECT $1::text AS stream_id, * FROM closeloop_append($1, $2, $3::uuid[], $4::text[], $5::integer[],"
               " $6::text[]::jsonb[], $7::text[]::jsonb[], $8)")
_APPEND_MANY = ("SELECT * FROM closeloop_append_many($1::text[], $2::bigint[], $3::integer[], $4::uuid[], $5::text[],"
                " $6::integer[], $7::text[]::jsonb[], $8::text[]::jsonb[], $9)")

# One event appended on its own (a command's usual append, conn=None): ONE autocommit statement that does
# what closeloop_append does for one event, without the PL/pgSQL call. Profiled on target 1 of make bench
# (one connection, server CPU of the backend): the function cost ~130 us more than a plain INSERT that also
# computes the chain hash, i.e. most of the append's extra server time (the SPI round of each statement in
# the function, the set-returning call's tuplestore, the arrays). One snapshot serves the idempotency lookup,
# the stream head and the INSERT; the checks are in the INSERT's WHERE, so a refused append writes nothing,
# and the outcome comes back as columns (the client raises the same errors as for CL001/CL002/CL003).
# A concurrent writer of the same version or event id fails on the unique indexes, as with the function.
# The payloads are cast to jsonb once (st.dat, st.met), and closeloop_chain_hash (migrations/0006, the same
# value as closeloop_event_hash) is inlined. Inside a caller's transaction the function is used as before.
_APPEND_SINGLE = """
WITH st AS (
    SELECT coalesce(h.stream_version, 0) AS ver, coalesce(h.hash, repeat('0', 64)) AS prev,
           h.transaction_id AS head_xid, d.stream_id AS dup_stream, d.stream_version AS dup_version,
           d.global_position AS dup_position, d.transaction_id AS dup_xid,
           clock_timestamp() AS at, $6::text::jsonb AS dat, $7::text::jsonb AS met
      FROM (SELECT 1) one
      LEFT JOIN events d ON d.event_id = $3::uuid
      LEFT JOIN LATERAL (SELECT ev.stream_version, ev.hash, ev.transaction_id FROM events ev
                          WHERE ev.stream_id = $1::text ORDER BY ev.stream_version DESC LIMIT 1) h ON true),
ins AS (
    INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, data, metadata,
                        recorded_at, prev_hash, hash)
    SELECT $3::uuid, $1::text, st.ver + 1, $4::text, $5::integer, st.dat, st.met, st.at, st.prev,
           closeloop_chain_hash(st.prev, $3::uuid, $1::text, st.ver + 1, $4::text, $5::integer, st.at, st.dat,
                                st.met)
      FROM st
     WHERE st.dup_stream IS NULL AND ($2::bigint IS NULL OR $2::bigint = st.ver)
       AND (st.head_xid IS NULL OR st.head_xid <= pg_current_xact_id())
    RETURNING global_position, stream_version, transaction_id)
SELECT ins.global_position, ins.stream_version, ins.transaction_id::text::bigint AS transaction_id, st.ver,
       st.dup_stream, st.dup_version, st.dup_position, st.dup_xid::text::bigint AS dup_xid
  FROM st LEFT JOIN ins ON true"""

# After a commit, followers are woken at once; commits that come while a wake-up is in flight, or within
# this many seconds after it, share the next one (one NOTIFY transaction per commit would double the
# transactions of a busy writer: profiled on target 1 of make bench).
WAKE_MIN_INTERVAL = 0.003


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# Pooled connections that were used only for the store's own single statements (an append on its own, a
# read): nothing of their session changed, so the pool need not reset them (asyncpg's reset is one more round
# trip, `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`, on every release).
_UNTOUCHED: weakref.WeakSet[asyncpg.Connection] = weakref.WeakSet()


async def _reset(conn: asyncpg.Connection) -> None:
    """The pool's reset (asyncpg has already rolled back an open transaction): the default reset query,
    unless the store marked the connection untouched."""
    if conn in _UNTOUCHED:
        _UNTOUCHED.discard(conn)
        return
    query = conn.get_reset_query()
    if query:
        await conn.execute(query)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup: jsonb and json as Python objects via orjson."""
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(typ, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    kwargs.setdefault("reset", _reset)
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init_connection, **kwargs)
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def pooled_transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection inside a transaction; terminated (never handed out again) when the database
    cut it off or left it half-broken meanwhile: the pool then opens a fresh one."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                yield conn
        except DATABASE_UNAVAILABLE:
            conn.terminate()
            raise


Appends = Sequence[tuple[str, int | None, Sequence[NewEvent]]]


def _stream_in(exc: Exception, appends: Appends) -> str:
    """Which append an error is about: its message or detail names the stream."""
    text = f"{exc} {getattr(exc, 'detail', '') or ''}"
    for sid, _, _ in appends:
        if f"stream {sid} " in text or f"({sid}," in text:
            return sid
    return appends[0][0] if len(appends) == 1 else ", ".join(s for s, _, _ in appends)


def _expected_of(stream_id: str, appends: Appends) -> int | None:
    return next((exp for sid, exp, _ in appends if sid == stream_id), None)


def _row_to_event(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        global_position=row["global_position"],
        transaction_id=row["transaction_id"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        stream_version=row["stream_version"],
        event_type=row["event_type"],
        schema_version=row["schema_version"],
        data=row["data"],
        metadata={
            **row["metadata"],
            "recorded_at": row["recorded_at"].isoformat(),
            "schema_version": row["schema_version"],
        },
        recorded_at=row["recorded_at"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


@dataclass(frozen=True, slots=True)
class Finding:
    """A problem found by verify(): kind is one of tampered, broken_link, version_gap."""

    kind: str
    stream_id: str
    stream_version: int
    global_position: int
    detail: str


class EventStore:
    def __init__(self, pool: asyncpg.Pool, dsn: str | None = None) -> None:
        self.pool = pool
        self.dsn = dsn  # for dedicated connections (LISTEN, the followers' wake-up)
        # Connections inside a store.transaction(), and whether that transaction appended.
        self._own_tx: dict[asyncpg.Connection, bool] = {}
        self._waker: asyncio.Task[None] | None = None
        self._wake_again = False
        self._wake_conn: asyncpg.Connection | None = None
        self._wake_loop: asyncio.AbstractEventLoop | None = None
        # Pooled connections between two of the store's own statements (see _plain), and their hand-back.
        self._idle: list[asyncpg.Connection] = []
        self._trim: asyncio.Handle | None = None
        self._trim_loop: asyncio.AbstractEventLoop | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 1, max_size: int = 10, run_migrations: bool = True, **pool_kwargs: Any
    ) -> EventStore:
        pool = await create_pool(dsn, min_size=min_size, max_size=max_size, **pool_kwargs)
        if run_migrations:
            async with pool.acquire() as conn:
                await migrate(conn, {"eventstore": EVENTSTORE_MIGRATIONS})
        return cls(pool, dsn)

    async def close(self) -> None:
        self._hand_back_idle()
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._waker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._waker, 2)
        if self._wake_conn is not None and self._wake_loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await self._wake_conn.close()
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def _plain(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one of the store's own statements outside any transaction (an append
        on its own, a read).

        After a statement that succeeded the connection is kept (self._idle) until the event loop's next
        round, where _hand_back_idle returns it to the pool without the pool's reset (nothing of its session
        changed, see _UNTOUCHED). The next statement of a caller that goes on at once (a client appending
        command after command) takes it back without the pool: asyncpg's acquire and release cost ~60 us of
        client CPU per statement (a shielded task for the release, two timer handles, the proxy), as much as
        the statement's own client work (profiled on target 1 of make bench). After an error the connection
        goes back to the pool at once, with the pool's reset (or terminated by it when broken)."""
        conn = self._idle.pop() if self._idle else await self.pool.acquire()
        try:
            yield conn
        except BaseException:
            await self.pool.release(conn)
            raise
        self._idle.append(conn)
        loop = asyncio.get_running_loop()
        if self._trim is None or self._trim_loop is not loop:
            self._trim_loop = loop
            self._trim = loop.call_soon(self._hand_back_idle)

    def _hand_back_idle(self) -> None:
        """Return the connections that no statement took back meanwhile to the pool (untouched)."""
        self._trim = None
        while self._idle:
            conn = self._idle.pop()
            raw = getattr(conn, "_con", None)  # the pool hands out a proxy of the connection
            if raw is not None:
                _UNTOUCHED.add(raw)
            task = asyncio.get_running_loop().create_task(self.pool.release(conn))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction: appends and other writes made with it
        commit or roll back together. Followers are woken after the commit if it appended. A
        connection that the database cut off (or left half-broken) during the transaction is
        terminated, so that the pool opens a fresh one instead of handing it out again."""
        async with self.pool.acquire() as conn:
            self._own_tx[conn] = False
            try:
                async with conn.transaction():
                    yield conn
                appended = self._own_tx[conn]
            except DATABASE_UNAVAILABLE:
                conn.terminate()
                raise
            finally:
                self._own_tx.pop(conn, None)
        if appended:
            self.wake_followers()

    # ------------------------------------------------------------------ waking followers
    def wake_followers(self) -> None:
        """NOTIFY followers that something committed: now, or right after the NOTIFY in flight."""
        loop = asyncio.get_running_loop()
        if self._waker is not None and not self._waker.done() and self._waker.get_loop() is loop:
            self._wake_again = True
            return
        self._waker = loop.create_task(self._wake())

    async def _wake(self) -> None:
        self._wake_again = True
        last = 0.0
        while self._wake_again:
            self._wake_again = False
            pause = last + WAKE_MIN_INTERVAL - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            last = time.monotonic()
            try:
                if self.dsn is not None:
                    loop = asyncio.get_running_loop()
                    if self._wake_conn is None or self._wake_conn.is_closed() or self._wake_loop is not loop:
                        self._wake_loop = loop
                        # The NOTIFY's transaction writes nothing worth a flush: don't wait for one.
                        self._wake_conn = await asyncpg.connect(self.dsn,
                                                                server_settings={"synchronous_commit": "off"})
                    await self._wake_conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
                else:
                    async with self.pool.acquire() as c, c.transaction():
                        await c.execute("SET LOCAL synchronous_commit = off")
                        await c.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
            except DATABASE_ERRORS as exc:
                # Followers also poll slowly as a safety net; the next commit tries again.
                log.warning("could not wake the event store's followers: %s", exc)
                self._wake_conn = None
                return

    # ------------------------------------------------------------------ writing
    async def append(self, stream_id: str, expected_version: int | None, events: Sequence[NewEvent], *,
                     conn: asyncpg.Connection | None = None) -> AppendResult:
        """Append `events` to `stream_id` atomically.

        expected_version: None = any, 0 = the stream must not exist, n = it must be at n.
        Raises WrongExpectedVersion (nothing stored) on a mismatch or a concurrent writer.
        Re-appending the same event ids returns the first result with replayed=True.
        """
        if conn is None and len(events) == 1:
            return await self._append_single(stream_id, expected_version, events[0])
        [result] = await self.append_many([(stream_id, expected_version, events)], conn=conn)
        return result

    async def _append_single(self, stream_id: str, expected_version: int | None, e: NewEvent) -> AppendResult:
        """One event on its own: one autocommit statement (_APPEND_SINGLE), the guarantees of closeloop_append."""
        try:
            async with self._plain() as c:
                row = await c.fetchrow(_APPEND_SINGLE, stream_id, expected_version, e.event_id, e.event_type,
                                       e.schema_version, _dumps(e.data), _dumps(e.metadata.to_json()))
        except asyncpg.UniqueViolationError as exc:
            # A concurrent writer stored this version (or this event id) and committed first.
            APPEND_CONFLICTS.inc()
            raise WrongExpectedVersion(stream_id, expected_version, None) from exc
        assert row is not None
        if row["global_position"] is not None:
            self.wake_followers()  # committed on its own
            EVENTS_APPENDED.labels(stream_id.split("-", 1)[0]).inc()
            version = row["stream_version"]
            return AppendResult(stream_id=stream_id, first_version=version, last_version=version,
                                global_positions=[row["global_position"]], event_ids=[e.event_id],
                                transaction_id=row["transaction_id"])
        if row["dup_stream"] is not None:
            if row["dup_stream"] != stream_id:
                raise DuplicateEventId("event id already stored in another append")
            version = row["dup_version"]  # an idempotent retry: the first result, nothing stored
            return AppendResult(stream_id=stream_id, first_version=version, last_version=version,
                                global_positions=[row["dup_position"]], event_ids=[e.event_id],
                                transaction_id=row["dup_xid"], replayed=True)
        APPEND_CONFLICTS.inc()
        if expected_version is not None and expected_version != row["ver"]:
            raise WrongExpectedVersion(stream_id, expected_version, row["ver"])
        # The head was written by a transaction younger than this one (CL002 of closeloop_append).
        raise WrongExpectedVersion(stream_id, expected_version, None)

    async def append_many(self, appends: Sequence[tuple[str, int | None, Sequence[NewEvent]]], *,
                          conn: asyncpg.Connection | None = None) -> list[AppendResult]:
        """Several appends to different streams in one round trip, all or nothing (each with
        the guarantees of append()). Returns one AppendResult per append, in order."""
        if not appends:
            return []
        for stream_id, _, events in appends:
            if not events:
                raise ValueError(f"append to {stream_id} needs at least one event")
        # NOTIFY inside the transaction only when the store cannot tell when it commits.
        notify_inside = conn is not None and conn not in self._own_tx
        # The events as typed arrays (migrations/0006): PostgreSQL parses each payload once, straight into
        # the column's type, instead of taking one jsonb document apart.
        ids: list[UUID] = []
        types: list[str] = []
        schemas: list[int] = []
        data: list[str] = []
        metadata: list[str] = []
        for _, _, events in appends:
            for e in events:
                ids.append(e.event_id)
                types.append(e.event_type)
                schemas.append(e.schema_version)
                data.append(_dumps(e.data))
                metadata.append(_dumps(e.metadata.to_json()))
        if len(appends) == 1:
            sid, exp, _ = appends[0]
            sql = _APPEND_ONE
            args: tuple[Any, ...] = (sid, exp, ids, types, schemas, data, metadata, notify_inside)
        else:
            sql = _APPEND_MANY
            args = ([a[0] for a in appends], [a[1] for a in appends], [len(a[2]) for a in appends],
                    ids, types, schemas, data, metadata, notify_inside)
        try:
            if conn is None:
                async with self._plain() as c:
                    rows = await c.fetch(sql, *args)
            else:
                rows = await conn.fetch(sql, *args)
        except asyncpg.UniqueViolationError as exc:
            # A concurrent transaction wrote the same stream version (or the same event
            # ids) and committed first: a classic optimistic-concurrency loss.
            APPEND_CONFLICTS.inc()
            sid = _stream_in(exc, appends)
            raise WrongExpectedVersion(sid, _expected_of(sid, appends), None) from exc
        except asyncpg.PostgresError as exc:
            state = getattr(exc, "sqlstate", None)
            if state in ("CL001", "CL002"):
                APPEND_CONFLICTS.inc()
                sid = _stream_in(exc, appends)
                actual = int(exc.detail) if state == "CL001" and getattr(exc, "detail", None) else None
                raise WrongExpectedVersion(sid, _expected_of(sid, appends), actual) from exc
            if state == "CL003":
                raise DuplicateEventId(str(exc)) from exc
            raise
        if conn is None:
            self.wake_followers()  # committed on its own
        elif not notify_inside:
            self._own_tx[conn] = True
        by_stream = {r["stream_id"]: r for r in rows}
        results = []
        for sid, _, _ in appends:
            r = by_stream[sid]
            results.append(AppendResult(
                stream_id=sid, first_version=r["first_version"], last_version=r["last_version"],
                global_positions=list(r["global_positions"]), event_ids=list(r["event_ids"]),
                transaction_id=int(str(r["transaction_id"])), replayed=bool(r["replayed"])))
            if not r["replayed"]:
                # Counted when the statement succeeds; inside a transaction that later rolls
                # back this over-counts, which a rate metric tolerates.
                EVENTS_APPENDED.labels(sid.split("-", 1)[0]).inc(len(r["global_positions"]))
        return results

    # ------------------------------------------------------------------ reading
    async def _fetch(self, conn: asyncpg.Connection | None, sql: str, *args: Any) -> list[asyncpg.Record]:
        if conn is not None:
            return await conn.fetch(sql, *args)
        async with self._plain() as c:
            return await c.fetch(sql, *args)

    async def read_stream(
        self,
        stream_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        as_of: datetime | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """A stream's events in version order; with `as_of`, only those recorded at or before it."""
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 AND stream_version >= $2"
            " AND ($3::bigint IS NULL OR stream_version <= $3)"
            " AND ($4::timestamptz IS NULL OR recorded_at <= $4) ORDER BY stream_version"
        )
        args = (stream_id, from_version, to_version, as_of)
        rows = await self._fetch(conn, sql, *args)
        return [_row_to_event(r) for r in rows]

    async def read_streams(self, stream_ids: Sequence[str], *,
                           conn: asyncpg.Connection | None = None) -> dict[str, list[RecordedEvent]]:
        """Several whole streams in one query: stream id -> events in version order
        (an empty list for a stream that does not exist)."""
        out: dict[str, list[RecordedEvent]] = {sid: [] for sid in stream_ids}
        rows = await self._fetch(
            conn, f"SELECT {_COLUMNS} FROM events WHERE stream_id = ANY($1::text[]) ORDER BY stream_id, stream_version",
            list(stream_ids))
        for r in rows:
            out[r["stream_id"]].append(_row_to_event(r))
        return out

    async def stream_version(self, stream_id: str, *, conn: asyncpg.Connection | None = None) -> int:
        sql = "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1"
        rows = await self._fetch(conn, sql, stream_id)
        return int(rows[0][0])

    async def read_all(
        self, after: Cursor = START, limit: int = 1000, *, conn: asyncpg.Connection | None = None
    ) -> list[RecordedEvent]:
        """Up to `limit` events after `after`, in follower order, only from finished
        transactions. Pass the last event's `.cursor` back to continue; an empty list means
        the follower is caught up (for now)."""
        sql = (
            f"SELECT {_COLUMNS} FROM events"
            " WHERE (transaction_id, global_position) > ($1::text::xid8, $2::bigint)"
            "   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY transaction_id, global_position LIMIT $3"
        )
        args = (str(after.transaction_id), after.global_position, limit)
        rows = await self._fetch(conn, sql, *args)
        return [_row_to_event(r) for r in rows]

    async def iter_all(self, after: Cursor = START, batch_size: int = 5000) -> AsyncIterator[list[RecordedEvent]]:
        """Batches of read_all() until caught up."""
        cursor = after
        while True:
            batch = await self.read_all(cursor, batch_size)
            if not batch:
                return
            yield batch
            cursor = batch[-1].cursor

    async def head(self) -> Cursor:
        """The cursor of the newest event a follower can read now."""
        rows = await self._fetch(
            None, "SELECT transaction_id::text::bigint AS tx, global_position FROM events"
            " WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY transaction_id DESC, global_position DESC LIMIT 1"
        )
        row = rows[0] if rows else None
        return Cursor(row["tx"], row["global_position"]) if row else START

    # ------------------------------------------------------------------ integrity
    async def verify(self, *, stream_prefix: str | None = None) -> list[Finding]:
        """Recompute every hash and walk every chain. An edited row shows as `tampered`
        (and its successor as `broken_link` if the hash was recomputed by the editor); a
        deleted row shows as `version_gap` and `broken_link`."""
        sql = """
            SELECT stream_id, stream_version, global_position, hash, prev_hash,
                   closeloop_event_hash(prev_hash, event_id, stream_id, stream_version, event_type,
                                        schema_version, recorded_at, data, metadata) AS computed,
                   lag(hash) OVER w AS expected_prev, lag(stream_version) OVER w AS prev_version
              FROM events
             WHERE ($1::text IS NULL OR left(stream_id, length($1)) = $1)
            WINDOW w AS (PARTITION BY stream_id ORDER BY stream_version)
             ORDER BY stream_id, stream_version"""
        findings: list[Finding] = []
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            async for r in conn.cursor(sql, stream_prefix, prefetch=5000):
                sid, ver, pos = r["stream_id"], r["stream_version"], r["global_position"]
                if r["computed"] != r["hash"]:
                    findings.append(
                        Finding("tampered", sid, ver, pos, "stored hash does not match the event's content")
                    )
                expected_prev = r["expected_prev"] or GENESIS_HASH
                if r["prev_hash"] != expected_prev:
                    findings.append(
                        Finding("broken_link", sid, ver, pos, "prev_hash does not match the previous event's hash")
                    )
                expected_ver = (r["prev_version"] or 0) + 1
                if ver != expected_ver:
                    findings.append(Finding("version_gap", sid, ver, pos, f"version {ver} follows {expected_ver - 1}"))
        return findings

    # ------------------------------------------------------------------ idempotency keys
    async def idempotent_response(
        self, scope: str, key: str, request_hash: str, *, conn: asyncpg.Connection | None = None
    ) -> dict[str, Any] | None:
        """The stored response of an earlier command with this key, or None.
        Raises IdempotencyKeyReused when the key came with a different request."""
        row = await (conn or self.pool).fetchrow(
            "SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
        )
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise IdempotencyKeyReused(scope, key)
        return row["response"]

    async def save_idempotent_response(
        self, conn: asyncpg.Connection, scope: str, key: str, request_hash: str, response: dict[str, Any]
    ) -> None:
        """Record a command's response in the caller's transaction. A concurrent request
        with the same key that committed first makes this raise WrongExpectedVersion-like
        UniqueViolationError; the caller then rolls back and returns the stored response."""
        await conn.execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, response) VALUES ($1, $2, $3, $4)",
            scope,
            key,
            request_hash,
            response,
        )
