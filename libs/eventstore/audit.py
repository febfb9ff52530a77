"""Reads for auditors: filtered, streamed scans of the event store and its integrity checks,
all on one caller-supplied connection, so that a whole command runs in one snapshot
(`snapshot()`: REPEATABLE READ, READ ONLY) and needs nothing but SELECT on `events`.

Time filters compare `events.recorded_at`: the time the row was inserted, taken by
closeloop_append with clock_timestamp() on the database server (not the commit time, and not
any time inside the event's data). Bounds are inclusive: from <= recorded_at <= to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
# (jsonb's canonical text), so an export needs no decoding and re-encoding; recorded_at as ISO 8601
# in UTC, as PostgreSQL prints it for JSON (microseconds without trailing zeros).
EXPORT_COLUMNS = ("global_position", "transaction_id", "event_id", "stream_id", "stream_version", "event_type",
                  "schema_version", "recorded_at", "actor", "role", "correlation_id", "causation_id", "reason",
                  "data", "metadata", "prev_hash", "hash")
EXPORT_SELECT = (
    "global_position, transaction_id::text::bigint AS transaction_id, event_id::text AS event_id,"
    " stream_id, stream_version, event_type, schema_version,"
    " to_json(recorded_at AT TIME ZONE 'UTC')#>>'{}' || 'Z' AS recorded_at,"
    " metadata->>'actor' AS actor, metadata->>'role' AS role, metadata->>'correlation_id' AS correlation_id,"
    " metadata->>'causation_id' AS causation_id, metadata->>'reason' AS reason,"
    " data::text AS data, metadata::text AS metadata, prev_hash, hash")


async def iter_export_rows(conn: asyncpg.Connection, flt: EventFilter, *, after: int = 0, upto: int | None = None,
                           batch_size: int = 10000) -> AsyncIterator[list[asyncpg.Record]]:
    """Export rows (EXPORT_COLUMNS) with after < global_position <= upto, in position order,
    batched through a server-side cursor."""
    args: list[Any] = [after, upto]
    cur = await conn.cursor(f"SELECT {EXPORT_SELECT} FROM events WHERE global_position > $1 "
                            f"AND ($2::bigint IS NULL OR global_position <= $2) AND {flt.where(args)} "
                            f"ORDER BY global_position", *args)
    while True:
        rows = await cur.fetch(batch_size)
        if not rows:
            return
        yield rows


async def copy_export_csv(conn: asyncpg.Connection, flt: EventFilter, output: Callable[[bytes], Awaitable[None]], *,
                          after: int = 0, upto: int | None = None) -> None:
    """The same rows as iter_export_rows, as CSV with a header row, written by PostgreSQL (COPY)."""
    args: list[Any] = [after, upto]
    await conn.copy_from_query(f"SELECT {EXPORT_SELECT} FROM events WHERE global_position > $1 "
                               f"AND ($2::bigint IS NULL OR global_position <= $2) AND {flt.where(args)} "
                               f"ORDER BY global_position", *args, output=output, format="csv", header=True)


async def export_stats(conn: asyncpg.Connection, flt: EventFilter, file_events: int) -> dict[str, Any]:
    """What an export of `flt` will hold: counts (events, streams, per category, per event type),
    first and last position and recorded_at, and where each file of `file_events` events ends."""
    args: list[Any] = []
    where = flt.where(args)
    row = await conn.fetchrow(
        f"SELECT count(*) AS events, count(DISTINCT stream_id) AS streams, min(global_position) AS first_position,"
        f" max(global_position) AS last_position, min(recorded_at) AS first_at, max(recorded_at) AS last_at"
        f" FROM events WHERE {where}", *args)
    groups = await conn.fetch(f"SELECT split_part(stream_id, '-', 1) AS category, event_type, count(*) AS n "
                              f"FROM events WHERE {where} GROUP BY 1, 2", *args)
    args.append(file_events)
    ends = [r["global_position"] for r in await conn.fetch(
        f"SELECT global_position FROM (SELECT global_position, row_number() OVER (ORDER BY global_position) AS rn,"
        f" count(*) OVER () AS total FROM events WHERE {where}) x WHERE rn % ${len(args)} = 0 OR rn = total"
        f" ORDER BY 1", *args)]
    by_category: dict[str, int] = {}
    by_type: dict[str, int] = {}
    for g in groups:
        by_category[g["category"]] = by_category.get(g["category"], 0) + g["n"]
        by_type[g["event_type"]] = by_type.get(g["event_type"], 0) + g["n"]
    return {**dict(row), "by_category": dict(sorted(by_category.items())),
            "by_event_type": dict(sorted(by_type.items())), "file_ends": ends}


async def stream_events(conn: asyncpg.Connection, stream_id: str) -> list[RecordedEvent]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version", stream_id)
    return [_row_to_event(r) for r in rows]


async def share_snapshot(conn: asyncpg.Connection, others: Sequence[asyncpg.Connection]) -> None:
    """Make `others` see exactly what `conn` sees: `conn` is inside snapshot() (REPEATABLE READ);
    each other connection opens a READ ONLY transaction on the snapshot `conn` exports (they stay
    open until the caller ends them with end_shared())."""
    snapshot_id = await conn.fetchval("SELECT pg_export_snapshot()")
    for other in others:
        await other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        await other.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")


async def end_shared(others: Sequence[asyncpg.Connection]) -> None:
    for other in others:
        await other.execute("ROLLBACK")


def _hash_of(alias: str = "") -> str:
    a = f"{alias}." if alias else ""
    return (f"closeloop_event_hash({a}prev_hash, {a}event_id, {a}stream_id, {a}stream_version, {a}event_type, "
            f"{a}schema_version, {a}recorded_at, {a}data, {a}metadata)")


async def check_chains(conns: Sequence[asyncpg.Connection], flt: EventFilter, *, chunk: int = 20000,
                       progress: Callable[[int], None] | None = None) -> tuple[int, list[Finding]]:
    """Check every event the filter selects (all of `conns` must see one snapshot: share_snapshot):

    - its SHA-256, recomputed by the store's own closeloop_event_hash from the stored content:
      `tampered` when it differs from the stored hash;
    - its link to its predecessor in the stream (which may lie before a time range): `broken_link`
      when prev_hash is not the predecessor's hash (GENESIS_HASH for version 1), `version_gap` when
      the predecessor's version is missing (version 1 included).

    Hashing is the expensive part (done by PostgreSQL): it runs in ranges of `chunk` global
    positions spread over the connections, so two connections use two cores; the link check is
    one window query over (stream, version) that reads no event data. Only problems come back.
    Returns (events checked, findings); `progress(n)` is called as ranges finish.

    Deleting a stream's *last* events leaves a valid chain; that is found by comparing with what
    else records the stream's version (libs/cli/integrity.py)."""
    args: list[Any] = []
    bounds = await conns[0].fetchrow(
        f"SELECT min(global_position) AS lo, max(global_position) AS hi, count(*) AS n FROM events "
        f"WHERE {flt.where(args)}", *args)
    if not bounds["n"]:
        return 0, []
    ranges = [(a, min(a + chunk - 1, bounds["hi"])) for a in range(bounds["lo"], bounds["hi"] + 1, chunk)]
    findings: list[Finding] = []
    checked = 0

    async def hashes(conn: asyncpg.Connection, lo: int, hi: int) -> None:
        nonlocal checked
        a: list[Any] = [lo, hi]
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, coalesce(array_agg(global_position) FILTER (WHERE hash <> {_hash_of()}), "
            f"'{{}}') AS bad FROM events WHERE global_position BETWEEN $1 AND $2 AND {flt.where(a)}", *a)
        checked += row["n"]
        if row["bad"]:
            for r in await conn.fetch("SELECT stream_id, stream_version, global_position FROM events "
                                      "WHERE global_position = ANY($1::bigint[]) ORDER BY global_position",
                                      row["bad"]):
                findings.append(Finding("tampered", r["stream_id"], r["stream_version"], r["global_position"],
                                        "the stored hash does not match the event's content"))
        if progress is not None:
            progress(row["n"])

    async def links(conn: asyncpg.Connection) -> None:
        a: list[Any] = []
        if flt.has_time:
            time_only = EventFilter(from_time=flt.from_time, to_time=flt.to_time)
            rest = EventFilter(stream_prefix=flt.stream_prefix, actor=flt.actor, role=flt.role)
            inner = (f"stream_id IN (SELECT DISTINCT stream_id FROM events WHERE {time_only.where(a)}) "
                     f"AND {rest.where(a)}")
            outer = time_only.where(a)
        else:
            inner, outer = flt.where(a), "true"
        rows = await conn.fetch(
            f"""SELECT stream_id, stream_version, global_position, prev_hash, expected_prev, prev_version
                  FROM (SELECT stream_id, stream_version, global_position, recorded_at, prev_hash,
                               lag(hash) OVER w AS expected_prev, lag(stream_version) OVER w AS prev_version
                          FROM events WHERE {inner}
                        WINDOW w AS (PARTITION BY stream_id ORDER BY stream_version)) x
                 WHERE {outer} AND (stream_version <> coalesce(prev_version, 0) + 1
                                    OR prev_hash <> coalesce(expected_prev, '{GENESIS_HASH}'))
                 ORDER BY stream_id, stream_version""", *a)
        for r in rows:
            sid, ver, pos = r["stream_id"], r["stream_version"], r["global_position"]
            prev_version = r["prev_version"] or 0
            if ver != prev_version + 1:
                missing = f"version {prev_version + 1}" if ver == prev_version + 2 else \
                    f"versions {prev_version + 1}..{ver - 1}"
                findings.append(Finding("version_gap", sid, ver, pos, f"{missing} missing before version {ver}"))
            if r["prev_hash"] != (r["expected_prev"] or GENESIS_HASH):
                findings.append(Finding("broken_link", sid, ver, pos,
                                        "prev_hash does not match the hash of the previous event in the stream"))

    todo = list(reversed(ranges))

    async def worker(conn: asyncpg.Connection, with_links: bool) -> None:
        if with_links:  # one connection takes the link check first, the others start hashing
            await links(conn)
        while todo:
            await hashes(conn, *todo.pop())

    await asyncio.gather(*(worker(c, i == len(conns) - 1) for i, c in enumerate(conns)))
    findings.sort(key=lambda f: (f.stream_id, f.stream_version, f.kind))
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
