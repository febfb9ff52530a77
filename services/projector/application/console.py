"""What the operations console shows (issue 5, item 5), read from the read models.

The console is served by the projector. Every service keeps its read models in the one PostgreSQL
database beside the event store, so the console reads them where they are, with the services' own
query code where it exists (the Kolable scorecard is `KolableService.scorecard`, the very function
behind `GET /kolable/reconciliation/scorecard`, so the page and the API cannot disagree):

- the scorecard KPIs and the queues of the war room (data_gap, dispute_pending, refunded_no_rebuy);
- RMAs and shipments past their SLA (the notifications service's SLA clocks);
- counts of orders, RMAs and shipments by status;
- the latest reconciliation report with its open discrepancies (when the reconciliation exists);
- the event history of any order, RMA or shipment (by id or tracking number), with the actor,
  role and reason of each change, from the event store itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.eventstore import EventStore
from services.payments.application.kolable import KolableService

QUEUE_STATUSES = ("data_gap", "dispute_pending", "refunded_no_rebuy")
HISTORY_LIMIT = 500


async def _exists(conn: asyncpg.Connection, table: str) -> bool:
    """Whether a table exists: the console shows what the services that run have written."""
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


@dataclass
class Console:
    store: EventStore

    async def overview(self, now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        async with self.store.pool.acquire() as conn:
            card = await KolableService(self.store).scorecard() if await _exists(conn, "kolable_orders") else None
            needing = (card or {}).get("needing_action", [])
            queues = {s: [a for a in needing if a["status"] == s] for s in QUEUE_STATUSES}
            return {
                "generated_at": now.isoformat(),
                "scorecard": card,
                "queues": queues,
                "late": await self._late(conn, now),
                "counts": await self._counts(conn),
                "reconciliation": await self._latest_reconciliation(conn),
            }

    async def _late(self, conn: asyncpg.Connection, now: datetime) -> dict[str, list[dict[str, Any]]]:
        """Stages running past their SLA (or that ended late and were warned), by RMA and by shipment stage."""
        if not await _exists(conn, "notifications_sla_clocks"):
            return {"rmas": [], "shipments": []}
        rows = await conn.fetch(
            """SELECT subject_type, subject_id, stage, started_at, due_at, stopped_at, breached_at
                 FROM notifications_sla_clocks
                WHERE (stopped_at IS NULL AND due_at < $1) OR (breached_at IS NOT NULL AND stopped_at IS NULL)
                ORDER BY due_at LIMIT 200""", now)
        items = [{"subject_type": r["subject_type"], "subject_id": r["subject_id"], "stage": r["stage"],
                  "started_at": r["started_at"].isoformat(), "due_at": r["due_at"].isoformat(),
                  "late_by_hours": round((now - r["due_at"]).total_seconds() / 3600, 1),
                  "warned": r["breached_at"] is not None} for r in rows]
        # The shipment stage of an RMA (shipped out, not yet delivered) is the shipment's SLA.
        shipments = [i for i in items if i["subject_type"] == "shipment" or i["stage"] == "shipped_out"]
        rmas = [i for i in items if i not in shipments]
        return {"rmas": rmas, "shipments": shipments}

    async def _counts(self, conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {}
        for name, table in (("orders", "rm_orders"), ("rmas", "rma_cases"), ("shipments", "shipping_shipments")):
            if await _exists(conn, table):
                rows = await conn.fetch(f"SELECT status, count(*) AS n FROM {table} GROUP BY status ORDER BY status")
                counts[name] = {r["status"]: r["n"] for r in rows}
        return counts

    async def _latest_reconciliation(self, conn: asyncpg.Connection) -> dict[str, Any] | None:
        """The latest reconciliation report, when the projector's reconciliation has run."""
        if not await _exists(conn, "reconciliation_runs"):
            return None
        row = await conn.fetchrow("SELECT * FROM reconciliation_runs ORDER BY started_at DESC LIMIT 1")
        if row is None:
            return None
        report: dict[str, Any] = dict(row)
        for key, value in list(report.items()):
            if isinstance(value, datetime):
                report[key] = value.isoformat()
        if await _exists(conn, "reconciliation_discrepancies"):
            found = await conn.fetch(
                """SELECT * FROM reconciliation_discrepancies WHERE status <> 'resolved'
                    ORDER BY last_seen_at DESC LIMIT 100""")
            report["open_discrepancies"] = [
                {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(d).items()} for d in found]
        return report

    async def history(self, ref: str) -> dict[str, Any]:
        """The events of an order (its bills, transaction, payments contract, refunds), an RMA (its transfers,
        label, shipments) or a shipment, found by id or tracking number, oldest first, with who and why."""
        async with self.store.pool.acquire() as conn:
            streams = await self._streams_of(conn, ref)
            rows = await conn.fetch(
                """SELECT global_position, stream_id, stream_version, event_type, data, metadata, recorded_at
                     FROM events WHERE stream_id = ANY($1) ORDER BY global_position LIMIT $2""",
                sorted(streams), HISTORY_LIMIT)
        events = []
        for r in rows:
            meta = r["metadata"] or {}
            events.append({"position": r["global_position"], "stream_id": r["stream_id"],
                           "version": r["stream_version"], "event_type": r["event_type"],
                           "at": r["recorded_at"].isoformat(), "actor": meta.get("actor"), "role": meta.get("role"),
                           "reason": meta.get("reason"), "correlation_id": meta.get("correlation_id")})
        return {"ref": ref, "streams": sorted(streams), "events": events, "truncated": len(events) == HISTORY_LIMIT}

    async def _streams_of(self, conn: asyncpg.Connection, ref: str) -> set[str]:
        streams: set[str] = set()
        # A tracking number names a shipment (or a return label): take its RMA or order.
        for table, column in (("shipping_shipments", "tracking_number"), ("shipping_labels", "tracking_number")):
            if await _exists(conn, table):
                row = await conn.fetchrow(f"SELECT * FROM {table} WHERE {column} = $1 OR {column} = upper($1)", ref)
                if row is not None:
                    keys = dict(row)
                    ref = keys.get("rma_id") or keys.get("order_id") or ref
                    break
        if await _exists(conn, "shipping_shipments"):
            row = await conn.fetchrow("SELECT rma_id, order_id FROM shipping_shipments WHERE shipment_id = $1", ref)
            if row is not None:
                ref = row["rma_id"] or row["order_id"] or ref
        # The ref's own streams, and its satellites found through the read models (indexed), not by scanning
        # the events: bills, refunds, stock transfers, return labels and shipments.
        candidates = [f"{c}-{ref}" for c in ("order", "transaction", "payment", "rma", "kolable", "dispute")]
        found = await conn.fetch("SELECT DISTINCT stream_id FROM events WHERE stream_id = ANY($1)", candidates)
        streams |= {r["stream_id"] for r in found}
        for category, table, key, owners in (("bill", "rm_bills", "bill_id", ("order_id",)),
                                             ("refund", "payments_refunds", "refund_id", ("order_id",)),
                                             ("transfer", "rma_transfers", "transfer_id", ("rma_id",)),
                                             ("label", "shipping_labels", "label_id", ("rma_id", "order_id")),
                                             ("shipment", "shipping_shipments", "shipment_id", ("rma_id", "order_id"))):
            if await _exists(conn, table):
                where = " OR ".join(f"{o} = $1" for o in owners)
                rows = await conn.fetch(f"SELECT {key} AS k FROM {table} WHERE {where} LIMIT 100", ref)
                streams |= {f"{category}-{r['k']}" for r in rows}
        return streams
