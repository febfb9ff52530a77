"""Do the projector's read models, and the services' own tables of the same facts, equal a replay
of the event store? (`closeloop verify`)

The replay is the projector's own: its tables and keys (services/projector/projections/tables.py),
its folds of one stream each (orders.fold_stream, facts.safe_fold: what a shadow rebuild and the
daily reconciliation replay with), the history rows as the live path writes them, and the
services' tables it mirrors (application/compare.py MIRRORS, on the columns both derive from the
events). Rows are compared as the reconciliation compares them: md5 of the row's jsonb text, by key.

Read-only, and in one snapshot. Nothing is written, not even to temporary tables: a transaction
that writes holds a transaction id, and the relay publishes only events below the oldest running
one, so a long verify that wrote would hold the whole event pipeline back. Instead the folded rows
travel to PostgreSQL as a JSON parameter and are typed there by `json_populate_recordset` against
the live table's own row type, then hashed exactly like the live rows; history rows are selected
from `events` directly. So `verify` needs SELECT only, and runs in the same READ ONLY snapshot as
the rest of it: no catch-up or re-check is needed, the live tables and the events are seen at one
instant. (`closeloop reconcile` is the full reconciliation: a shadow schema, the ledger against
the provider, a stored report and repair by swap; it needs write access.)

Lag: the live projector follows Kafka. A drifting row whose stream the projector has not applied
to the store's last version (projection_streams, in the same snapshot) is the consumer's lag, not
a drift: a finding (`read_model_behind`) only when the first event it has not applied was recorded
more than `grace` ago.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson

from libs.cli.integrity import Finding
from libs.domain.events import registry
from libs.eventstore.audit import EventFilter
from services.projector.application.compare import MIRRORS, Mirror
from services.projector.projections import facts
from services.projector.projections import orders as orders_projection
from services.projector.projections.common import StoredEvent, category_of
from services.projector.projections.tables import (
    CATEGORIES,
    OWNED,
    PROJECTION_OF_CATEGORY,
    PROJECTION_STREAMS,
    RM_ORDER_HISTORY,
)

COMPARE_ROWS = 5000  # replayed rows sent per comparison
DETAIL_LIMIT = 200  # drifting rows described per table (the rest are counted)


@dataclass
class TableReport:
    live: int = 0
    replayed: int = 0
    drifts: int = 0
    behind: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"live": self.live, "replayed": self.replayed, "drifts": self.drifts, "behind": self.behind}


@dataclass
class ReadModelReport:
    name: str = "projector read models and the services' mirrored tables"
    events_replayed: int = 0
    streams: int = 0
    tables: dict[str, TableReport] = field(default_factory=dict)
    replay_errors: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the check did not run

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "events_replayed": self.events_replayed, "streams": self.streams,
                "tables": {t: r.as_dict() for t, r in self.tables.items()},
                "rows_compared": {t: r.live for t, r in self.tables.items()},
                "replay_errors": self.replay_errors, "skipped": self.skipped}


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@dataclass
class _Target:
    """One comparison: a live table against the replay's rows of `replay` (a projector table)."""

    name: str  # the live table
    replay: str  # the projector table whose rows the replay produces
    key_sql: str
    row_sql: str
    stream_sql: str
    projector: bool  # a projector table (may lag) or a service's own (written with its events)
    report: TableReport = field(default_factory=TableReport)
    replayed_keys: set[str] = field(default_factory=set)
    drifting: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # key -> replayed row


class _Comparer:
    def __init__(self, conn: asyncpg.Connection, streams: list[str] | None) -> None:
        self.conn = conn
        self.streams = streams  # None: every stream

    async def batch(self, t: _Target, rows: list[dict[str, Any]]) -> None:
        """Compare replayed rows with the live rows of the same keys; remember the ones that differ.
        The replayed rows are typed by the live table's row type, so both sides hash alike."""
        if not rows:
            return
        found = await self.conn.fetch(
            f"""WITH r AS (SELECT e.n, {t.key_sql} AS k, md5(({t.row_sql})::text) AS h
                             FROM json_array_elements($1::text::json) WITH ORDINALITY AS e(j, n),
                                  LATERAL json_populate_record(null::public.{t.replay}, e.j) AS t),
                     l AS (SELECT {t.key_sql} AS k, md5(({t.row_sql})::text) AS h FROM public.{t.name} t
                            WHERE {t.key_sql} = ANY(ARRAY(SELECT k FROM r)))
                SELECT r.n, r.k, r.h IS DISTINCT FROM l.h AS differs FROM r LEFT JOIN l ON l.k = r.k""",
            orjson.dumps(rows, default=_default).decode())
        t.report.replayed += len(rows)
        for r in found:
            t.replayed_keys.add(r["k"])
            if r["differs"]:
                t.drifting[r["k"]] = rows[r["n"] - 1]

    async def finish(self, t: _Target) -> None:
        """Count the live rows, and take those no replayed row matched (a row the events do not give)."""
        args: list[Any] = []
        where = ""
        if self.streams is not None:
            args.append(self.streams)
            where = f" WHERE {t.stream_sql} = ANY($1::text[])"
        live = await self.conn.fetch(f"SELECT {t.key_sql} AS k FROM public.{t.name} t{where}", *args)
        t.report.live = len(live)
        for r in live:
            if r["k"] not in t.replayed_keys:
                t.drifting[r["k"]] = None


def _targets(present: set[str]) -> list[_Target]:
    out = [_Target(spec.name, spec.name, spec.key_sql, "to_jsonb(t)", spec.stream_sql, True) for spec in OWNED
           if spec is not RM_ORDER_HISTORY]
    mirrors: Sequence[Mirror] = [m for m in MIRRORS if m.table in present]
    out += [_Target(m.table, m.replay, m.key_sql, m.row_sql(), f"'{m.stream_prefix}' || {m.key}", False)
            for m in mirrors]
    return out


def _history_sql(streams: list[str] | None) -> tuple[str, list[Any]]:
    """The history rows the live path writes (one per order or bill event of a type it decodes), as a
    query over `events`: the same columns and types as rm_order_history."""
    kinds = [("order", t, registry.get(t).schema_version) for t in sorted(orders_projection.ORDER_TYPES)] + \
            [("bill", t, registry.get(t).schema_version) for t in sorted(orders_projection.BILL_TYPES)]
    args: list[Any] = [[k[0] for k in kinds], [k[1] for k in kinds], [k[2] for k in kinds]]
    where = ""
    if streams is not None:
        args.append(streams)
        where = " WHERE e.stream_id = ANY($4::text[])"
    return (f"""SELECT e.event_id, e.data->>'order_id' AS order_id, e.stream_id, e.stream_version,
                       e.global_position, e.event_type, e.recorded_at, e.metadata->>'actor' AS actor,
                       e.metadata->>'role' AS role, e.metadata->>'correlation_id' AS correlation_id, e.data
                  FROM events e
                  JOIN unnest($1::text[], $2::text[], $3::int[]) AS k(category, event_type, version)
                    ON k.category = split_part(e.stream_id, '-', 1) AND k.event_type = e.event_type
                   AND e.schema_version <= k.version{where}""", args)


async def _history_drift(conn: asyncpg.Connection, streams: list[str] | None, report: TableReport) -> list[str]:
    replay_sql, args = _history_sql(streams)
    live_where = ""
    if streams is not None:
        live_where = f" WHERE stream_id = ANY(${len(args)}::text[])"
    rows = await conn.fetch(
        f"""WITH r AS (SELECT event_id::text AS k, md5(to_jsonb(x)::text) AS h FROM ({replay_sql}) x),
                 l AS (SELECT event_id::text AS k, md5(to_jsonb(t)::text) AS h
                         FROM public.{RM_ORDER_HISTORY.name} t{live_where})
            SELECT (SELECT count(*) FROM l) AS live, (SELECT count(*) FROM r) AS replayed,
                   coalesce((SELECT array_agg(coalesce(l.k, r.k) ORDER BY coalesce(l.k, r.k))
                               FROM l FULL JOIN r ON l.k = r.k WHERE l.h IS DISTINCT FROM r.h), '{{}}') AS keys""",
        *args)
    report.live, report.replayed = rows[0]["live"], rows[0]["replayed"]
    return list(rows[0]["keys"])


async def check_projector(conn: asyncpg.Connection, flt: EventFilter, *, grace: timedelta = timedelta(seconds=60),
                          batch_size: int = 5000, progress: Callable[[int], None] | None = None,
                          ) -> tuple[ReadModelReport, list[Finding]]:
    """Replay the projected streams (those matching the filter's prefix and time range; all without
    one) with the projector's folds and compare (see the module docstring). `conn` must be inside
    snapshot(); nothing is written."""
    report = ReadModelReport()
    names = [s.name for s in OWNED] + [m.table for m in MIRRORS]
    present = {r["relname"] for r in await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])", names)}
    missing = sorted({s.name for s in OWNED} - present)
    if missing:
        report.skipped = f"no projector tables here (missing: {', '.join(missing)})"
        return report, []

    cats = list(CATEGORIES)
    streams: list[str] | None = None
    if flt.stream_prefix or flt.has_time:
        args: list[Any] = [cats]
        chosen = EventFilter(stream_prefix=flt.stream_prefix, from_time=flt.from_time, to_time=flt.to_time)
        streams = [r["stream_id"] for r in await conn.fetch(
            f"SELECT DISTINCT stream_id FROM events WHERE split_part(stream_id, '-', 1) = ANY($1::text[]) "
            f"AND {chosen.where(args)} ORDER BY 1", *args)]

    comparer = _Comparer(conn, streams)
    targets = _targets(present)
    by_replay: dict[str, list[_Target]] = {}
    for t in targets:
        by_replay.setdefault(t.replay, []).append(t)
    buffers: dict[str, list[dict[str, Any]]] = {name: [] for name in by_replay}

    async def flush(name: str) -> None:
        rows, buffers[name] = buffers[name], []
        for t in by_replay[name]:
            await comparer.batch(t, rows)

    stream: list[StoredEvent] = []

    def fold(events: list[StoredEvent]) -> None:
        sid = events[0].stream_id
        cat = category_of(sid)
        buffers[PROJECTION_STREAMS.name].append(
            {"projection": PROJECTION_OF_CATEGORY[cat], "stream_id": sid, "version": events[-1].stream_version})
        if cat in orders_projection.CATEGORIES:
            try:
                got = orders_projection.fold_stream(events)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                report.replay_errors.append(f"{sid}: {type(exc).__name__}: {exc}")
                return
            if got is not None:
                buffers[got[0]].append(got[1])
        else:
            rows_of, error = facts.safe_fold(events)
            if error is not None:
                report.replay_errors.append(f"{sid}: {error}")
            for table, rows in rows_of.items():
                buffers[table].extend(rows)

    # Stream order from the (stream_id, stream_version) index: a sort of every payload would spill.
    await conn.execute("SET LOCAL enable_sort = off")
    cur_args: list[Any] = [cats, sorted(facts.PAYLOAD_UNUSED)]
    only = ""
    if streams is not None:
        cur_args.append(streams)
        only = " AND stream_id = ANY($3::text[])"
    cur = await conn.cursor(
        f"""SELECT stream_id, stream_version, global_position, recorded_at, event_type, schema_version,
                   CASE WHEN event_type = ANY($2::text[]) THEN '{{}}'::jsonb ELSE data END AS data
              FROM events WHERE split_part(stream_id, '-', 1) = ANY($1::text[]){only}
             ORDER BY stream_id, stream_version""", *cur_args)
    while True:
        rows = await cur.fetch(batch_size)
        if not rows:
            break
        for r in rows:
            if stream and stream[0].stream_id != r[0]:
                fold(stream)
                report.streams += 1
                stream = []
            stream.append(StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6]))
        report.events_replayed += len(rows)
        for name in [n for n, b in buffers.items() if len(b) >= COMPARE_ROWS]:
            await flush(name)
        if progress is not None:
            progress(len(rows))
    if stream:
        fold(stream)
        report.streams += 1
    for name in buffers:
        await flush(name)
    for t in targets:
        await comparer.finish(t)

    history = TableReport()
    history_keys = await _history_drift(conn, streams, history)
    report.tables[RM_ORDER_HISTORY.name] = history
    findings = [Finding("replay_error", e.split(":", 1)[0], None, None,
                        f"the projector's reducers cannot fold this stream: {e.split(': ', 1)[1]}",
                        source="projector") for e in report.replay_errors]
    findings += await _describe(conn, targets, history_keys, history, grace)
    for t in targets:
        report.tables[t.name] = t.report
    return report, findings


async def _stream_state(conn: asyncpg.Connection, stream_id: str) -> tuple[int, int, datetime | None]:
    """(the store's last version, the version the live projector applied, when the first event it
    has not applied was recorded)."""
    row = await conn.fetchrow(
        """SELECT (SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1) AS head,
                  (SELECT coalesce(max(version), 0) FROM public.projection_streams WHERE stream_id = $1) AS applied""",
        stream_id)
    first = await conn.fetchval("SELECT recorded_at FROM events WHERE stream_id = $1 AND stream_version = $2",
                                stream_id, row["applied"] + 1)
    return row["head"], row["applied"], first


def _differing(live: dict[str, Any] | None, replayed: dict[str, Any] | None) -> list[str]:
    if live is None or replayed is None:
        return []
    return sorted(k for k in set(live) | set(replayed) if live.get(k) != replayed.get(k))


async def _describe(conn: asyncpg.Connection, targets: list[_Target], history_keys: list[str],
                    history: TableReport, grace: timedelta) -> list[Finding]:
    now = await conn.fetchval("SELECT now()")  # the snapshot's transaction start
    findings: list[Finding] = []

    async def judge(table: str, key: str, stream_id: str | None, projector: bool, report: TableReport,
                    live: dict[str, Any] | None, replayed: dict[str, Any] | None, how: str) -> None:
        if projector and stream_id is not None:
            head, applied, first = await _stream_state(conn, stream_id)
            if applied < head:  # the live projector has not applied the stream's latest events yet
                if first is not None and now - first > grace:
                    report.behind += 1
                    findings.append(Finding(
                        "read_model_behind", stream_id, head, None,
                        f"{table} row {key}: the projector applied version {applied} of {head}; version "
                        f"{applied + 1} was recorded at {first.isoformat()}, more than "
                        f"{int(grace.total_seconds())} s ago", source=f"public.{table}"))
                return
        report.drifts += 1
        columns = _differing(live, replayed)
        findings.append(Finding("read_model_drift", stream_id, None, None,
                                f"{table} row {key} {how}" + (f" (columns: {', '.join(columns)})" if columns else ""),
                                source=f"public.{table}"))

    for t in targets:
        for i, (key, replayed) in enumerate(sorted(t.drifting.items())):
            if i >= DETAIL_LIMIT:
                t.report.drifts += 1
                continue
            live_row = await conn.fetchrow(f"SELECT ({t.row_sql}) AS row, {t.stream_sql} AS s FROM public.{t.name} t "
                                           f"WHERE {t.key_sql} = $1", key)
            replayed_row = None
            stream_id = live_row["s"] if live_row else None
            if replayed is not None:
                got = await conn.fetchrow(
                    f"SELECT ({t.row_sql}) AS row, {t.stream_sql} AS s "
                    f"FROM json_populate_record(null::public.{t.replay}, $1::text::json) t",
                    orjson.dumps(replayed, default=_default).decode())
                replayed_row, stream_id = got["row"], got["s"]
            if live_row is None:
                how = "is in the replay but missing from the live table"
            elif replayed is None:
                how = "is in the live table but not in the replay"
            else:
                how = ("differs between the live read model and the replay" if t.projector else
                       f"of the service's own table differs from the replay of its stream ({t.replay})")
            await judge(t.name, key, stream_id, t.projector, t.report, live_row["row"] if live_row else None,
                        replayed_row, how)
    for key in history_keys[:DETAIL_LIMIT]:
        row = await conn.fetchrow("SELECT stream_id FROM public.rm_order_history WHERE event_id = $1::uuid "
                                  "UNION SELECT stream_id FROM events WHERE event_id = $1::uuid", key)
        await judge("rm_order_history", key, row["stream_id"] if row else None, True, history, None, None,
                    "differs between the live order history and the events")
    history.drifts += max(0, len(history_keys) - DETAIL_LIMIT)
    return findings
