"""Does the projector's order read model equal a replay of the event store? (`closeloop verify`)

The replay uses the projector's own code (services/projector: OrdersProjection, the same reducers
the live consumer runs, and rebuild.diff's row-by-row comparison), so "equal" means what the
projector's rebuild test means by it.

Read-only: the shadow copy is built in *temporary* tables (`pg_temp`, private to this session and
dropped with its transaction, which is rolled back). That needs only the TEMPORARY privilege on
the database, which PostgreSQL grants to PUBLIC by default; no schema is created and nothing
persistent is written. A temporary `dead_letters` table is created too: an unreadable event is
dead-lettered by the projection into the unqualified `dead_letters`, and pg_temp comes first on
the search path, so even that write stays in the session.

Lag: the live projector follows Kafka, so it may not have applied the newest events yet. Each
stream is therefore replayed up to the version the live projection records having applied
(projection_streams); events it has not applied are a finding (`read_model_behind`) only when
they were recorded more than `grace` ago.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import asyncpg

from libs.cli.integrity import Finding
from libs.eventstore import EventStore
from libs.eventstore.audit import EventFilter
from libs.eventstore.store import _COLUMNS, _row_to_event
from services.projector import rebuild
from services.projector.projections.orders import CATEGORIES, PROJECTION, OrdersProjection, envelope_of

SHADOW = "pg_temp"


@dataclass
class ReadModelReport:
    name: str
    events_replayed: int = 0
    streams: int = 0
    rows_compared: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None  # why the check did not run


def _store_on(conn: asyncpg.Connection) -> EventStore:
    # The projector's functions take an EventStore and use only `.pool.fetch` (rebuild.diff) and
    # read_stream(conn=...) (OrdersProjection); a single connection answers `.fetch` like a pool,
    # and keeps every query in this session (the temporary tables) and in this snapshot.
    return EventStore(cast(asyncpg.Pool, conn))


async def check_orders(conn: asyncpg.Connection, flt: EventFilter, *, grace: timedelta = timedelta(seconds=60),
                       batch_size: int = 5000, progress: Callable[[int], None] | None = None,
                       ) -> tuple[ReadModelReport, list[Finding]]:
    """Replay the order and bill streams (those matching the filter, with every other stream of
    the same orders) into temporary tables and diff them with the live ones. Must run inside a
    transaction on `conn` that the caller rolls back."""
    report = ReadModelReport("orders (rm_orders, rm_bills, rm_order_history)")
    tables = [*rebuild.TABLES, "projection_streams", "dead_letters"]
    present = {r["relname"] for r in await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])", tables)}
    if present != set(tables):
        report.skipped = f"no projector tables here (missing: {', '.join(sorted(set(tables) - present))})"
        return report, []
    for table in tables:
        await conn.execute(f"CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING ALL) ON COMMIT DROP")

    categories = list(CATEGORIES)
    args: list[Any] = [categories]
    where = "split_part(stream_id, '-', 1) = ANY($1::text[])"
    order_ids: list[str] | None = None
    if flt.stream_prefix or flt.has_time:
        # The streams chosen, widened to whole orders: an order's bills are compared with it.
        sel_args: list[Any] = [categories]
        chosen = EventFilter(stream_prefix=flt.stream_prefix, from_time=flt.from_time, to_time=flt.to_time)
        rows = await conn.fetch(f"SELECT DISTINCT data->>'order_id' AS o FROM events WHERE "
                                f"split_part(stream_id, '-', 1) = ANY($1::text[]) AND {chosen.where(sel_args)}",
                                *sel_args)
        order_ids = sorted(r["o"] for r in rows if r["o"])
        args.append(order_ids)
        where += " AND data->>'order_id' = ANY($2::text[])"

    applied = {r["stream_id"]: r["version"] for r in await conn.fetch(
        "SELECT stream_id, version FROM public.projection_streams WHERE projection = $1", PROJECTION)}
    now = await conn.fetchval("SELECT now()")  # the snapshot's transaction start
    behind: dict[str, tuple[int, int, Any]] = {}  # stream -> (applied, head, first unapplied recorded_at)
    projection = OrdersProjection(_store_on(conn), SHADOW)
    seen: set[str] = set()
    cur = await conn.cursor(f"SELECT {_COLUMNS} FROM events WHERE {where} ORDER BY transaction_id, global_position",
                            *args)
    while True:
        rows = await cur.fetch(batch_size)
        if not rows:
            break
        envelopes = []
        for r in rows:
            e = _row_to_event(r)
            seen.add(e.stream_id)
            done = applied.get(e.stream_id, 0)
            if e.stream_version <= done:
                envelopes.append(envelope_of(e))
            else:
                prev = behind.get(e.stream_id)
                behind[e.stream_id] = (done, e.stream_version, prev[2] if prev else e.recorded_at)
        if envelopes:
            report.events_replayed += await projection.apply(conn, envelopes)
        if progress is not None:
            progress(len(rows))
    report.streams = len(seen)

    findings: list[Finding] = []
    for sid, (done, head, first_at) in sorted(behind.items()):
        if now - first_at > grace:
            findings.append(Finding(
                "read_model_behind", sid, head, None,
                f"the order projection applied up to version {done} of {head}; version {done + 1} was recorded "
                f"at {first_at.isoformat()}, more than {int(grace.total_seconds())} s ago",
                source="projection_streams"))
    for table in rebuild.TABLES:
        where_rows = "" if order_ids is None else " WHERE order_id = ANY($1::text[])"
        report.rows_compared[table] = int(await conn.fetchval(
            f"SELECT count(*) FROM public.{table}{where_rows}", *([order_ids] if order_ids is not None else [])))
    drifts = await rebuild.diff(_store_on(conn), SHADOW, "public", order_ids=order_ids)
    sides: dict[tuple[str, str], set[str]] = {}
    for d in drifts:
        sides.setdefault((d.table, d.key), set()).add(d.only_in)
    history = [k for t, k in sides if t == "rm_order_history"]
    where_of: dict[str, tuple[str, int]] = {}
    if history:
        for r in await conn.fetch(
                f"SELECT event_id::text AS k, stream_id, stream_version FROM public.rm_order_history "
                f"WHERE event_id = ANY($1::uuid[]) UNION SELECT event_id::text, stream_id, stream_version "
                f"FROM {SHADOW}.rm_order_history WHERE event_id = ANY($1::uuid[])", history):
            where_of[r["k"]] = (r["stream_id"], r["stream_version"])
    for (table, key), side in sorted(sides.items()):
        if side == {"live", "rebuilt"}:
            how = "differs between the live read model and the replay"
        elif side == {"live"}:
            how = "is in the live read model but not in the replay"
        else:
            how = "is in the replay but missing from the live read model"
        prefix = {"rm_orders": "order-", "rm_bills": "bill-"}.get(table)
        stream, version = (f"{prefix}{key}", None) if prefix else where_of.get(key, (None, None))
        findings.append(Finding("read_model_drift", stream, version, None, f"{table} row {key} {how}",
                                source=f"public.{table}"))
    return report, findings
