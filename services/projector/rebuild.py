"""Rebuild the order read model from the event store into a shadow schema, and compare
it with the live one row by row. Used by tests now and by the daily reconciliation and
the zero-downtime rebuild (issue 5) later."""

from __future__ import annotations

import re
from dataclasses import dataclass

from libs.eventstore import EventStore
from services.projector.projections.orders import OrdersProjection, envelope_of

TABLES = {"rm_orders": "order_id", "rm_bills": "bill_id", "rm_order_history": "event_id"}
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Drift:
    table: str
    key: str
    only_in: str  # "live" or "rebuilt" (a row that differs shows once on each side)


async def rebuild(store: EventStore, schema: str, *, batch_size: int = 5000) -> int:
    """Create `schema` with empty copies of the read-model tables and replay every event
    into it. Returns the number of events applied."""
    if not _SCHEMA.match(schema) or schema == "public":
        raise ValueError(f"bad shadow schema name {schema!r}")
    async with store.pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        for table in [*TABLES, "projection_streams"]:
            await conn.execute(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)")
    projection = OrdersProjection(store, schema)
    applied = 0
    async for batch in store.iter_all(batch_size=batch_size):
        envs = [envelope_of(r) for r in batch]
        async with store.transaction() as conn:
            applied += await projection.apply(conn, envs)
    return applied


async def diff(store: EventStore, shadow: str, live: str = "public", *,
               order_ids: list[str] | None = None) -> list[Drift]:
    """Rows that differ between the live and the rebuilt read model (optionally only for
    some orders, when other writers share the database)."""
    drifts: list[Drift] = []
    for table, key in TABLES.items():
        where = "" if order_ids is None else " WHERE order_id = ANY($1)"
        args = [] if order_ids is None else [order_ids]
        for a, b, side in ((live, shadow, "live"), (shadow, live, "rebuilt")):
            rows = await store.pool.fetch(
                f"SELECT {key}::text AS k FROM (SELECT * FROM {a}.{table}{where} "
                f"EXCEPT SELECT * FROM {b}.{table}{where}) d ORDER BY 1", *args)
            drifts += [Drift(table, r["k"], side) for r in rows]
    return drifts


async def drop(store: EventStore, schema: str) -> None:
    if not _SCHEMA.match(schema) or schema == "public":
        raise ValueError(f"bad shadow schema name {schema!r}")
    await store.pool.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
