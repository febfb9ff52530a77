"""Rebuild the order read model from the event store into a shadow schema by applying the
events in batches through the live code path, and compare it with the live one row by row;
optionally for a few orders only, when other writers share the database. Used by the
projector's tests and by `closeloop verify` (libs/cli/readmodels.py).

The whole-store replay of every projector table, its catch-up and the atomic swap are
services/projector/shadow.py (the daily reconciliation and the zero-downtime rebuild)."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from libs.eventstore import EventStore
from services.projector.projections.orders import CATEGORIES, OrdersProjection, envelope_of

TABLES = {"rm_orders": "order_id", "rm_bills": "bill_id", "rm_order_history": "event_id"}
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Drift:
    table: str
    key: str
    only_in: str  # "live" or "rebuilt" (a row that differs shows once on each side)


async def create_shadow(store: EventStore, schema: str) -> None:
    """(Re)create `schema` with empty copies of the read-model tables (and the projection's
    stream versions), ready for OrdersProjection(store, schema)."""
    if not _SCHEMA.match(schema) or schema == "public":
        raise ValueError(f"bad shadow schema name {schema!r}")
    async with store.pool.acquire() as conn:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        for table in [*TABLES, "projection_streams"]:
            await conn.execute(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)")


async def rebuild(store: EventStore, schema: str, *, batch_size: int = 5000,
                  order_ids: Collection[str] | None = None) -> int:
    """Create `schema` with empty copies of the read-model tables and replay every event
    into it (with `order_ids`, only the order and bill events of those orders, when other
    writers share the database). Returns the number of events applied."""
    await create_shadow(store, schema)
    projection = OrdersProjection(store, schema)
    wanted = None if order_ids is None else set(order_ids)
    applied = 0
    async for batch in store.iter_all(batch_size=batch_size):
        envs = [envelope_of(r) for r in batch
                if wanted is None or (r.category in CATEGORIES and r.data.get("order_id") in wanted)]
        if not envs:
            continue
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
