"""Reads for auditors: filtered, streamed scans of the event store and its integrity checks,
all on one caller-supplied connection, so that a whole command runs in one snapshot
(`snapshot()`: REPEATABLE READ, READ ONLY) and needs nothing but SELECT on `events`.

Time filters compare `events.recorded_at`: the time the row was inserted, taken by
closeloop_append with clock_timestamp() on the database server (not the commit time, and not
any time inside the event's data). Bounds are inclusive: from <= recorded_at <= to.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.eventstore.model import GENESIS_HASH, RecordedEvent
from libs.eventstore.store import _COLUMNS, Finding, _row_to_event


@dataclass(frozen=True)
class EventFilter:
    """Which events a scan covers. Every field is optional; None means no restriction."""

    stream_prefix: str | None = None
    from_time: datetime | None = None  # recorded_at >= from_time
    to_time: datetime | None = None  # recorded_at <= to_time
    actor: str | None = None  # metadata.actor; '*' matches any run of characters
    role: str | None = None  # metadata.role, exactly

    def where(self, args: list[Any], alias: str = "") -> str:
        """SQL conditions (joined with AND, "true" when none) and their parameters appended to `args`."""
        a = f"{alias}." if alias else ""
        out: list[str] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if self.stream_prefix:
            out.append(f"starts_with({a}stream_id, {arg(self.stream_prefix)}::text)")
        if self.from_time is not None:
            out.append(f"{a}recorded_at >= {arg(self.from_time)}::timestamptz")
        if self.to_time is not None:
            out.append(f"{a}recorded_at <= {arg(self.to_time)}::timestamptz")
        if self.actor is not None:
            if "*" in self.actor:
                pattern = self.actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%")
                out.append(f"({a}metadata->>'actor') LIKE {arg(pattern)}::text")
            else:
                out.append(f"({a}metadata->>'actor') = {arg(self.actor)}::text")
        if self.role is not None:
            out.append(f"({a}metadata->>'role') = {arg(self.role)}::text")
        return " AND ".join(out) or "true"

    @property
    def has_time(self) -> bool:
        return self.from_time is not None or self.to_time is not None


@contextlib.asynccontextmanager
async def snapshot(conn: asyncpg.Connection, *, readonly: bool = True) -> AsyncIterator[asyncpg.Connection]:
    """One consistent view for a whole command: every query inside sees the store as it was when
    the first one ran, whatever writers commit meanwhile. READ ONLY makes PostgreSQL refuse any
    write, so a command that works inside it provably needs no write access."""
    async with conn.transaction(isolation="repeatable_read", readonly=readonly):
        yield conn


async def count(conn: asyncpg.Connection, flt: EventFilter) -> int:
    args: list[Any] = []
    return int(await conn.fetchval(f"SELECT count(*) FROM events WHERE {flt.where(args)}", *args))


async def iter_events(conn: asyncpg.Connection, flt: EventFilter, *, batch_size: int = 5000,
                      newest_first: bool = False) -> AsyncIterator[list[RecordedEvent]]:
    """The matching events in global position order (or the reverse), in batches, through a
    server-side cursor (the caller's connection must be inside a transaction: snapshot())."""
    args: list[Any] = []
    order = "DESC" if newest_first else ""
    cur = await conn.cursor(f"SELECT {_COLUMNS} FROM events WHERE {flt.where(args)} "
                            f"ORDER BY global_position {order}", *args)
    while True:
        rows = await cur.fetch(batch_size)
        if not rows:
            return
        yield [_row_to_event(r) for r in rows]


# Columns of an export row, in order. data and metadata come as JSON text exactly as stored
# (jsonb's canonical text), so an export needs no decoding and re-encoding.
EXPORT_COLUMNS = ("global_position", "transaction_id", "event_id", "stream_id", "stream_version", "event_type",
                  "schema_version", "recorded_at", "actor", "role", "correlation_id", "causation_id", "reason",
                  "data", "metadata", "prev_hash", "hash")


async def iter_export_rows(conn: asyncpg.Connection, flt: EventFilter, *,
                           batch_size: int = 10000) -> AsyncIterator[list[asyncpg.Record]]:
    """Export rows (EXPORT_COLUMNS) in global position order, batched through a server-side cursor."""
    args: list[Any] = []
    cur = await conn.cursor(
        "SELECT global_position, transaction_id::text::bigint AS transaction_id, event_id::text AS event_id,"
        " stream_id, stream_version, event_type, schema_version, recorded_at,"
        " metadata->>'actor' AS actor, metadata->>'role' AS role, metadata->>'correlation_id' AS correlation_id,"
        " metadata->>'causation_id' AS causation_id, metadata->>'reason' AS reason,"
        " data::text AS data, metadata::text AS metadata, prev_hash, hash"
        f" FROM events WHERE {flt.where(args)} ORDER BY global_position", *args)
    while True:
        rows = await cur.fetch(batch_size)
        if not rows:
            return
        yield rows


async def stream_events(conn: asyncpg.Connection, stream_id: str) -> list[RecordedEvent]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version", stream_id)
    return [_row_to_event(r) for r in rows]


async def check_chains(conn: asyncpg.Connection, flt: EventFilter, *, batch_size: int = 5000,
                       progress: Any = None) -> tuple[int, list[Finding]]:
    """Recompute the hash of every event the filter selects and check it against its predecessor
    in the stream (which may lie outside a time range): `tampered` (content and stored hash
    differ), `broken_link` (prev_hash is not the predecessor's hash), `version_gap` (the
    predecessor version is missing, including version 1). Returns (events checked, findings).
    `progress(n)` is called after each batch with the number of events in it.

    Deleting a stream's *last* events leaves a valid chain; that is found by comparing with what
    else records the stream's version (libs/cli/integrity.py)."""
    args: list[Any] = []
    if flt.has_time:
        # The window must see each chosen stream's earlier events too; hashes are computed only
        # for the rows in the range (the outer WHERE), which is where the time goes.
        time_only = EventFilter(from_time=flt.from_time, to_time=flt.to_time)
        rest = EventFilter(stream_prefix=flt.stream_prefix, actor=flt.actor, role=flt.role)
        inner_where = (f"stream_id IN (SELECT DISTINCT stream_id FROM events WHERE {time_only.where(args)}) "
                       f"AND {rest.where(args)}")
        outer_where = time_only.where(args)
    else:
        inner_where, outer_where = flt.where(args), "true"
    sql = f"""
        SELECT stream_id, stream_version, global_position, hash, prev_hash, expected_prev, prev_version,
               closeloop_event_hash(prev_hash, event_id, stream_id, stream_version, event_type,
                                    schema_version, recorded_at, data, metadata) AS computed
          FROM (SELECT e.*, lag(hash) OVER w AS expected_prev, lag(stream_version) OVER w AS prev_version
                  FROM events e WHERE {inner_where}
                WINDOW w AS (PARTITION BY stream_id ORDER BY stream_version)) x
         WHERE {outer_where}"""
    findings: list[Finding] = []
    checked = 0
    cur = await conn.cursor(sql, *args)
    while True:
        rows = await cur.fetch(batch_size)
        if not rows:
            break
        checked += len(rows)
        for r in rows:
            sid, ver, pos = r["stream_id"], r["stream_version"], r["global_position"]
            if r["computed"] != r["hash"]:
                findings.append(Finding("tampered", sid, ver, pos,
                                        "the stored hash does not match the event's content"))
            prev_version = r["prev_version"] or 0
            if ver != prev_version + 1:
                missing = f"version {prev_version + 1}" if ver == prev_version + 2 else \
                    f"versions {prev_version + 1}..{ver - 1}"
                findings.append(Finding("version_gap", sid, ver, pos, f"{missing} missing before version {ver}"))
            if r["prev_hash"] != (r["expected_prev"] or GENESIS_HASH):
                findings.append(Finding("broken_link", sid, ver, pos,
                                        "prev_hash does not match the hash of the previous event in the stream"))
        if progress is not None:
            progress(len(rows))
    return checked, findings


async def stream_heads(conn: asyncpg.Connection, stream_ids: list[str]) -> dict[str, int]:
    """The highest stored version of each stream (absent: no events)."""
    rows = await conn.fetch("SELECT stream_id, max(stream_version) AS v FROM events WHERE stream_id = ANY($1::text[])"
                            " GROUP BY stream_id", stream_ids)
    return {r["stream_id"]: r["v"] for r in rows}


async def audit_page(conn: asyncpg.Connection, flt: EventFilter, *, limit: int,
                     before: tuple[datetime, int] | None = None) -> list[RecordedEvent]:
    """Up to `limit` matching events, newest first by (recorded_at, global_position), strictly
    before `before` (the keyset of the previous page's last event)."""
    args: list[Any] = []
    where = flt.where(args)
    if before is not None:
        args += [before[0], before[1]]
        where += f" AND (recorded_at, global_position) < (${len(args) - 1}::timestamptz, ${len(args)}::bigint)"
    args.append(limit)
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM events WHERE {where} "
                            f"ORDER BY recorded_at DESC, global_position DESC LIMIT ${len(args)}", *args)
    return [_row_to_event(r) for r in rows]
