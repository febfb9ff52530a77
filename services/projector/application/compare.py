"""Row-by-row comparison of live tables with a replay (a shadow schema built by shadow.py).

Each row is hashed in the database: md5 of its canonical JSON (`to_jsonb(row)::text`; jsonb's
text form has its keys sorted and whitespace normalised, so the hash depends on the values
only), and the hashes are compared by key with a full outer join: a key whose hashes differ,
or that exists on one side only, is a drift. Only the drifting rows travel to Python, with
both sides' values, the columns that differ and the events of the stream that produced the row
(versions and global positions), so that a report says what is wrong and where it came from.

Two comparisons use this:
- the projector's own tables (projections/tables.py) against the replay, the whole row;
- the services' own tables of the same facts (payments_refunds, rma_cases, shipping_shipments,
  notifications) against the projector's replay of them, on the columns both derive from the
  events (`MIRRORS`). Those are reported, never repaired here: the services own them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from services.projector.projections.common import TableSpec
from services.projector.projections.tables import RM_ORDER_HISTORY

DETAIL_LIMIT = 200  # drifting rows per table reported with their values and events
EVENTS_LIMIT = 100  # events listed per drifting row


@dataclass(frozen=True)
class Mirror:
    """A service's table of facts the projector also replays: compared on `columns` (same names on
    both sides unless mapped in `replay_columns`)."""

    service: str
    table: str
    replay: str
    key: str
    columns: tuple[str, ...]
    stream_prefix: str

    @property
    def key_sql(self) -> str:
        return f"{self.key}::text"

    def row_sql(self) -> str:
        return "jsonb_build_object(" + ", ".join(f"'{c}', {c}" for c in self.columns) + ")"


MIRRORS: tuple[Mirror, ...] = (
    Mirror("payments", "payments_refunds", "rm_refunds", "refund_id",
           ("order_id", "source", "kind", "amount", "currency", "reference", "provider", "status",
            "provider_refund_id", "attempt", "failure_reason", "requested_at", "version"), "refund-"),
    Mirror("rma", "rma_cases", "rm_rmas", "rma_id",
           ("status", "stage", "customer_id", "serial", "sku", "fault_code", "warehouse_id", "replacement_sku",
            "replacement_serial", "repeat_kind", "repeat_of", "opened_at", "version"), "rma-"),
    Mirror("shipping", "shipping_shipments", "rm_shipments", "shipment_id",
           ("subject_kind", "subject_id", "action", "sku", "warehouse_id", "carrier", "service_level",
            "tracking_number", "status", "status_carrier", "status_location", "status_occurred_at", "created_at",
            "version"), "shipment-"),
    Mirror("notifications", "notifications", "rm_notifications", "notification_id",
           ("audience", "recipient", "channel", "locale", "template", "subject_type", "subject_id", "stage", "status",
            "attempts", "version"), "notification-"),
)


@dataclass
class RowDrift:
    """One row that differs: `live` / `replayed` are the row on each side (None when missing)."""

    table: str
    key: str
    live: dict[str, Any] | None = None
    replayed: dict[str, Any] | None = None
    columns: list[str] = field(default_factory=list)
    stream_id: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    store_version: int | None = None  # the stream's last version in the event store
    live_version: int | None = None  # the version the live projector applied (projection_streams)
    detailed: bool = False

    projector: bool = True

    @property
    def lagging(self) -> bool:
        """The live projector has not yet applied the stream's latest events (consumer lag), as
        opposed to a live row that disagrees with the events it claims to reflect."""
        return self.projector and self.store_version is not None and (self.live_version or 0) < self.store_version

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "key": self.key, "stream_id": self.stream_id, "columns": self.columns,
                "live": self.live, "replayed": self.replayed, "store_version": self.store_version,
                "live_version": self.live_version, "events": self.events}


@dataclass
class TableCount:
    table: str
    live: int
    replayed: int
    drifts: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table, "live": self.live, "replayed": self.replayed, "drifts": self.drifts}


def _hashes(source: str, key_sql: str, row_sql: str, keyed: bool) -> str:
    where = f" WHERE {key_sql} = ANY($1::text[])" if keyed else ""
    return f"SELECT {key_sql} AS k, md5(({row_sql})::text) AS h FROM {source} t{where}"


async def differing_keys(conn: asyncpg.Connection, live: str, replay: str, key_sql: str, row_sql: str,
                         keys: Sequence[str] | None = None) -> list[str]:
    """Keys whose row hash differs between `live` and `replay` (qualified table names), or that
    exist on one side only. With `keys`, only those are compared."""
    args: list[Any] = [list(keys)] if keys is not None else []
    rows = await conn.fetch(
        f"""SELECT coalesce(l.k, r.k) AS k
              FROM ({_hashes(live, key_sql, row_sql, keys is not None)}) l
              FULL JOIN ({_hashes(replay, key_sql, row_sql, keys is not None)}) r ON l.k = r.k
             WHERE l.h IS DISTINCT FROM r.h
             ORDER BY 1""", *args)
    return [r["k"] for r in rows]


async def table_keys(conn: asyncpg.Connection, shadow: str, spec: TableSpec,
                     keys: Sequence[str] | None = None) -> list[str]:
    return await differing_keys(conn, f"public.{spec.name}", f"{shadow}.{spec.name}", spec.key_sql, "to_jsonb(t)",
                                keys)


async def mirror_keys(conn: asyncpg.Connection, shadow: str, m: Mirror, keys: Sequence[str] | None = None) -> list[str]:
    return await differing_keys(conn, f"public.{m.table}", f"{shadow}.{m.replay}", m.key_sql, m.row_sql(), keys)


async def counts(conn: asyncpg.Connection, live: str, replay: str) -> tuple[int, int]:
    return (await conn.fetchval(f"SELECT count(*) FROM {live}"), await conn.fetchval(f"SELECT count(*) FROM {replay}"))


async def exists(conn: asyncpg.Connection, table: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


async def _events(conn: asyncpg.Connection, stream_id: str | None, event_id: str | None = None) -> list[dict[str, Any]]:
    if event_id is not None:
        rows = await conn.fetch("SELECT stream_id, stream_version, global_position, event_type, recorded_at FROM events"
                                " WHERE event_id = $1::uuid", event_id)
    elif stream_id is not None:
        rows = await conn.fetch(
            "SELECT stream_id, stream_version, global_position, event_type, recorded_at FROM events"
            " WHERE stream_id = $1 ORDER BY stream_version LIMIT $2", stream_id, EVENTS_LIMIT)
    else:
        return []
    return [{"stream_id": r["stream_id"], "version": r["stream_version"], "position": r["global_position"],
             "event_type": r["event_type"], "recorded_at": r["recorded_at"].isoformat()} for r in rows]


def _differing(live: dict[str, Any] | None, replayed: dict[str, Any] | None) -> list[str]:
    if live is None or replayed is None:
        return sorted((live or replayed or {}).keys())
    return sorted(k for k in set(live) | set(replayed) if live.get(k) != replayed.get(k))


async def describe(conn: asyncpg.Connection, shadow: str, *, table: str, live_table: str, replay_table: str,
                   key_sql: str, row_sql: str, stream_sql: str, keys: Sequence[str],
                   history: bool = False, projector: bool = True) -> list[RowDrift]:
    """The drifting rows with both sides, the differing columns and the stream's events (the first
    DETAIL_LIMIT keys in detail; the rest by key)."""
    out: list[RowDrift] = []
    for i, key in enumerate(keys):
        drift = RowDrift(table, key, projector=projector)
        out.append(drift)
        if i >= DETAIL_LIMIT:
            continue
        drift.detailed = True
        sides: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
        for side, source in (("live", live_table), ("replayed", replay_table)):
            row = await conn.fetchrow(f"SELECT ({row_sql}) AS row, {stream_sql} AS stream_id FROM {source} t"
                                      f" WHERE {key_sql} = $1", key)
            sides[side] = (row["row"], row["stream_id"]) if row else (None, None)
        drift.live, drift.replayed = sides["live"][0], sides["replayed"][0]
        drift.columns = _differing(drift.live, drift.replayed)
        drift.stream_id = sides["replayed"][1] or sides["live"][1]
        drift.events = await _events(conn, drift.stream_id, key if history else None)
        if drift.stream_id is not None:
            drift.store_version = await conn.fetchval(
                "SELECT max(stream_version) FROM events WHERE stream_id = $1", drift.stream_id)
            if projector:  # what the live consumer applied of the stream (a service's row has its own version)
                drift.live_version = await conn.fetchval(
                    "SELECT max(version) FROM public.projection_streams WHERE stream_id = $1", drift.stream_id)
    return out


async def describe_table(conn: asyncpg.Connection, shadow: str, spec: TableSpec, keys: Sequence[str]) -> list[RowDrift]:
    return await describe(conn, shadow, table=spec.name, live_table=f"public.{spec.name}",
                          replay_table=f"{shadow}.{spec.name}", key_sql=spec.key_sql, row_sql="to_jsonb(t)",
                          stream_sql=spec.stream_sql, keys=keys, history=spec is RM_ORDER_HISTORY)


async def describe_mirror(conn: asyncpg.Connection, shadow: str, m: Mirror, keys: Sequence[str]) -> list[RowDrift]:
    return await describe(conn, shadow, table=m.table, live_table=f"public.{m.table}",
                          replay_table=f"{shadow}.{m.replay}", key_sql=m.key_sql, row_sql=m.row_sql(),
                          stream_sql=f"'{m.stream_prefix}' || {m.key}", keys=keys, projector=False)
