"""`closeloop verify`: is the event store intact, and do the read models equal a replay of it?

Four checks, each reported as findings:

1. Hash chains (libs/eventstore/audit.check_chains): every event's SHA-256 recomputed from its
   stored content and linked to its predecessor: an edited row is `tampered` (and, if the editor
   recomputed the hash, its successor a `broken_link`); a deleted row in the middle of a stream
   is a `version_gap` plus a `broken_link`.
2. Version continuity: part of the same scan (no gap in any stream's versions, starting at 1).
3. Stream tails. Deleting a stream's *last* events (or the whole stream) leaves a chain that is
   still valid, and the store keeps no separate per-stream head. But other tables record how far
   each stream went, written in the same transaction as its events or by a consumer that applied
   them: the WITNESSES below. A stream a witness saw at version n whose store head is below n
   has lost events: `missing_tail`. The order read model's history keeps the id of every order
   and bill event it applied, so a deleted one is named exactly: `deleted_event`.
4. Read models equal a replay (libs/cli/readmodels.py): `read_model_drift`, `read_model_behind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from libs.eventstore import Finding as StoreFinding
from libs.eventstore.audit import EventFilter


@dataclass(frozen=True)
class Finding:
    kind: str
    stream_id: str | None
    stream_version: int | None
    global_position: int | None
    detail: str
    source: str = "events"  # the table the finding comes from
    event_id: str | None = None

    @classmethod
    def of(cls, f: StoreFinding) -> Finding:
        return cls(f.kind, f.stream_id, f.stream_version, f.global_position, f.detail)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "stream_id": self.stream_id, "stream_version": self.stream_version,
                "global_position": self.global_position, "event_id": self.event_id, "detail": self.detail,
                "source": self.source}


@dataclass(frozen=True)
class Witness:
    """A table that records a stream's version: `sql` selects (stream_id, version) rows from it."""

    table: str
    sql: str
    what: str


def _rows(table: str, stream: str, version: str, what: str) -> Witness:
    return Witness(table, f"SELECT {stream} AS stream_id, {version}::bigint AS version FROM public.{table}", what)


WITNESSES: list[Witness] = [
    _rows("projection_streams", "stream_id", "version", "the version a projection applied"),
    _rows("rm_orders", "'order-' || order_id", "order_version", "the order read model's version"),
    _rows("rm_bills", "'bill-' || bill_id", "bill_version", "the bill read model's version"),
    Witness("rm_order_history", "SELECT stream_id, max(stream_version) AS version FROM public.rm_order_history "
            "GROUP BY stream_id", "the last event in the order history"),
    Witness("rma_history", "SELECT stream_id, max(stream_version) AS version FROM public.rma_history "
            "WHERE stream_version IS NOT NULL GROUP BY stream_id", "the last event in the RMA history"),
    _rows("rma_cases", "'rma-' || rma_id", "version", "the RMA read model's version"),
    _rows("rma_transfers", "'transfer-' || transfer_id", "version", "the stock transfer's version"),
    _rows("rma_stock", "'stock-' || warehouse_id || '/' || sku", "version", "the stock level's version"),
    _rows("rma_warehouses", "'stock-' || warehouse_id", "version", "the warehouse's version"),
    _rows("rma_catalogue", "'catalogue-' || sku", "version", "the catalogue item's version"),
    _rows("shipping_labels", "'label-' || label_id", "version", "the return label's version"),
    _rows("shipping_shipments", "'shipment-' || shipment_id", "version", "the shipment's version"),
    _rows("shipping_duplicates", "'shipment_duplicate-' || duplicate_id", "version",
          "the duplicate shipment's version"),
    _rows("payments_disputes", "'dispute-' || dispute_id", "version", "the dispute read model's version"),
    _rows("payments_refunds", "'refund-' || refund_id", "version", "the refund read model's version"),
    _rows("notifications", "'notification-' || notification_id", "version", "the notification's version"),
]


async def existing_tables(conn: asyncpg.Connection, names: list[str]) -> set[str]:
    rows = await conn.fetch("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])", names)
    return {r["relname"] for r in rows}


async def check_tails(conn: asyncpg.Connection, flt: EventFilter) -> tuple[dict[str, int], list[Finding]]:
    """Compare every witness with the store's stream heads (streams matching the prefix; a time
    range does not apply: a deleted event has no time left to filter on). Returns (rows checked
    per witness table, findings)."""
    present = await existing_tables(conn, [*(w.table for w in WITNESSES), "processed_events"])
    checked: dict[str, int] = {}
    findings: list[Finding] = []
    args: list[Any] = [flt.stream_prefix] if flt.stream_prefix else []
    only = "starts_with(w.stream_id, $1::text)" if flt.stream_prefix else "true"
    for w in WITNESSES:
        if w.table not in present:
            continue
        checked[w.table] = int(await conn.fetchval(f"SELECT count(*) FROM ({w.sql}) w WHERE {only}", *args))
        rows = await conn.fetch(
            f"""SELECT w.stream_id, w.version, coalesce(h.head, 0) AS head
                  FROM ({w.sql}) w
                  LEFT JOIN LATERAL (SELECT max(e.stream_version) AS head FROM events e
                                      WHERE e.stream_id = w.stream_id) h ON true
                 WHERE {only} AND w.version > coalesce(h.head, 0)
                 ORDER BY w.stream_id""", *args)
        for r in rows:
            lost = f"version {r['version']}" if r["version"] == r["head"] + 1 else \
                f"versions {r['head'] + 1}..{r['version']}"
            findings.append(Finding(
                "missing_tail", r["stream_id"], r["version"], None,
                f"{w.what} is {r['version']} but the store's last version is {r['head']}: {lost} missing",
                source=w.table))
    if "rm_order_history" in present:
        rows = await conn.fetch(
            f"""SELECT w.stream_id, w.stream_version, w.global_position, w.event_id, w.event_type
                  FROM public.rm_order_history w
                 WHERE {only} AND NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = w.event_id)
                 ORDER BY w.stream_id, w.stream_version""", *args)
        findings += [Finding("deleted_event", r["stream_id"], r["stream_version"], r["global_position"],
                             f"{r['event_type']} {r['event_id']} is in the order history but no longer in the store",
                             source="rm_order_history", event_id=str(r["event_id"])) for r in rows]
    if "rma_history" in present:
        rows = await conn.fetch(
            f"""SELECT w.stream_id, w.stream_version, w.event_type FROM public.rma_history w
                 WHERE {only} AND w.stream_version IS NOT NULL AND NOT EXISTS (
                       SELECT 1 FROM events e WHERE e.stream_id = w.stream_id AND e.stream_version = w.stream_version)
                 ORDER BY w.stream_id, w.stream_version""", *args)
        findings += [Finding("deleted_event", r["stream_id"], r["stream_version"], None,
                             f"{r['event_type']} is in the RMA history but no longer in the store",
                             source="rma_history") for r in rows]
    if "processed_events" in present and not flt.stream_prefix:
        # Consumers record the id of every event they were delivered (libs/messaging/inbox.py), in
        # the transaction of its effect: an id there that the store lacks was deleted after a
        # consumer saw it. The table has no stream id, so it is skipped under --stream-prefix.
        named = {f.event_id for f in findings if f.event_id}
        checked["processed_events"] = int(await conn.fetchval("SELECT count(*) FROM public.processed_events"))
        rows = await conn.fetch(
            """SELECT p.event_id::text AS event_id, array_agg(p.consumer ORDER BY p.consumer) AS consumers
                 FROM public.processed_events p
                WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = p.event_id)
                GROUP BY p.event_id ORDER BY p.event_id""")
        findings += [Finding("deleted_event", None, None, None,
                             f"event {r['event_id']} was processed by {', '.join(r['consumers'])} but is no longer "
                             "in the store (or was published around it, e.g. by a test feed)",
                             source="processed_events", event_id=r["event_id"]) for r in rows
                     if r["event_id"] not in named]
    return checked, findings
