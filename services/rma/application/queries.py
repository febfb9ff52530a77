"""Queries on the RMA service's read models (projections.py). Lists are keyset-paged (newest first;
`next_cursor` continues after the last row, stable under concurrent inserts)."""

from __future__ import annotations

import base64
from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any

import asyncpg
import orjson

from libs.domain.errors import NotFound, RuleViolation
from services.rma.domain.catalogue import CatalogueItemSpec
from services.rma.domain.faults import FaultDictionary
from services.rma.domain.forecast import forecast_replacement_demand

# Which proof dates a serial's warranty, as in domain/warranty.py: a replacement unit, a sale, a registration.
_PROOF_PRIORITY = {"replacement": 0, "sales_record": 1, "registration": 2}


def _cursor(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at.isoformat(), key])).decode()


def _decode(cursor: str | None) -> tuple[datetime | None, str | None]:
    if cursor is None:
        return None, None
    try:
        at, key = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(at), str(key)
    except Exception:
        raise RuleViolation("cursor", "not a cursor returned by this API") from None


def _load(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _transfer_row(r: asyncpg.Record) -> dict[str, Any]:
    return {"transfer_id": r["transfer_id"], "rma_id": r["rma_id"], "sku": r["sku"],
            "from_warehouse": r["from_warehouse"], "to_warehouse": r["to_warehouse"], "status": r["status"],
            "requested_at": _iso(r["requested_at"]), "expires_at": _iso(r["expires_at"]),
            "escalated_at": _iso(r["escalated_at"]), "resolved_at": _iso(r["resolved_at"]),
            "resolution": r["resolution"], "version": r["version"]}


class RmaQueries:
    def __init__(self, pool: asyncpg.Pool, faults: FaultDictionary) -> None:
        self.pool = pool
        self.faults = faults

    async def rma(self, rma_id: str) -> dict[str, Any]:
        """The RMA with its label, transfers, shipment tracking and history (who did what, when)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT view, label, tracking FROM rma_cases WHERE rma_id = $1", rma_id)
            if row is None:
                raise NotFound(f"rma {rma_id} not found", rma_id=rma_id)
            transfers = await conn.fetch("SELECT * FROM rma_transfers WHERE rma_id = $1 ORDER BY requested_at", rma_id)
            history = await conn.fetch(
                """SELECT stream_id, stream_version, event_type, actor, role, reason, at, summary FROM rma_history
                    WHERE rma_id = $1 ORDER BY seq""", rma_id)
        view = _load(row["view"])
        fault = self.faults.get(view["fault_code"])
        view["fault"] = fault.model_dump() if fault else {"code": view["fault_code"]}
        view["label"] = _load(row["label"]) if row["label"] else None
        view["tracking"] = _load(row["tracking"]) if row["tracking"] else None
        if view.get("shipment") and view["tracking"]:
            view["shipment"]["status"] = view["tracking"]["status"]
        view["transfers"] = [_transfer_row(t) for t in transfers]
        view["transfer"] = next((t for t in view["transfers"] if t["transfer_id"] == view.get("transfer_id")),
                                view["transfers"][-1] if view["transfers"] else None)
        view["history"] = [{"stream_id": h["stream_id"], "stream_version": h["stream_version"],
                            "event_type": h["event_type"], "actor": h["actor"], "role": h["role"],
                            "reason": h["reason"], "at": _iso(h["at"]), "summary": h["summary"]} for h in history]
        return view

    async def search(self, *, status: str | None, customer: str | None, serial: str | None, sku: str | None,
                     limit: int, cursor: str | None) -> dict[str, Any]:
        after_at, after_id = _decode(cursor)
        rows = await self.pool.fetch(
            """SELECT rma_id, status, stage, customer_id, serial, sku, fault_code, warehouse_id, replacement_sku,
                      replacement_serial, repeat_kind, repeat_of, opened_at, updated_at, version,
                      view->>'status_label' AS status_label, view->'allowed_commands' AS allowed_commands
                 FROM rma_cases
                WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR customer_id = $2)
                  AND ($3::text IS NULL OR serial = $3 OR replacement_serial = $3)
                  AND ($4::text IS NULL OR sku = $4)
                  AND ($5::timestamptz IS NULL OR (opened_at, rma_id) < ($5, $6))
                ORDER BY opened_at DESC, rma_id DESC LIMIT $7""",
            status, customer, serial, sku, after_at, after_id, limit + 1)
        page = rows[:limit]
        items = [{"rma_id": r["rma_id"], "status": r["status"], "status_label": r["status_label"],
                  "stage": r["stage"], "customer_id": r["customer_id"], "serial": r["serial"], "sku": r["sku"],
                  "fault_code": r["fault_code"], "warehouse_id": r["warehouse_id"],
                  "replacement_sku": r["replacement_sku"], "replacement_serial": r["replacement_serial"],
                  "repeat_kind": r["repeat_kind"], "repeat_of": r["repeat_of"], "opened_at": _iso(r["opened_at"]),
                  "updated_at": _iso(r["updated_at"]), "version": r["version"],
                  "allowed_commands": _load(r["allowed_commands"])} for r in page]
        more = len(rows) > limit
        return {"items": items,
                "next_cursor": _cursor(page[-1]["opened_at"], page[-1]["rma_id"]) if more and page else None}

    async def fault_counts(self, sku: str | None) -> dict[str, Any]:
        """RMAs by SKU and fault code (cases 2 and 10), with the repeat failures among them."""
        rows = await self.pool.fetch(
            """SELECT sku, fault_code, count(*) AS rmas, count(repeat_kind) AS repeats,
                      count(*) FILTER (WHERE repeat_kind = 'replacement_unit') AS replacement_repeats
                 FROM rma_cases WHERE $1::text IS NULL OR sku = $1
                GROUP BY sku, fault_code ORDER BY sku, count(*) DESC, fault_code""", sku)
        counts = []
        for r in rows:
            fault = self.faults.get(r["fault_code"])
            counts.append({"sku": r["sku"], "fault_code": r["fault_code"], "rmas": r["rmas"], "repeats": r["repeats"],
                           "replacement_repeats": r["replacement_repeats"],
                           "category": fault.category if fault else None,
                           "component": fault.component if fault else None,
                           "symptom": fault.symptom if fault else None,
                           "label_en": fault.label_en if fault else None,
                           "label_zh": fault.label_zh if fault else None})
        return {"sku": sku, "dictionary_version": self.faults.version, "total": sum(c["rmas"] for c in counts),
                "counts": counts}

    async def repeat_failures(self, *, sku: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        after_at, after_id = _decode(cursor)
        rows = await self.pool.fetch(
            """SELECT rma_id, status, serial, sku, fault_code, repeat_kind, repeat_of, opened_at,
                      view->'repeat_failure' AS finding
                 FROM rma_cases WHERE repeat_kind IS NOT NULL AND ($1::text IS NULL OR sku = $1)
                  AND ($2::timestamptz IS NULL OR (opened_at, rma_id) < ($2, $3))
                ORDER BY opened_at DESC, rma_id DESC LIMIT $4""", sku, after_at, after_id, limit + 1)
        page = rows[:limit]
        items = [{"rma_id": r["rma_id"], "status": r["status"], "serial": r["serial"], "sku": r["sku"],
                  "fault_code": r["fault_code"], "kind": r["repeat_kind"], "previous_rma_id": r["repeat_of"],
                  "opened_at": _iso(r["opened_at"]), "finding": _load(r["finding"])} for r in page]
        more = len(rows) > limit
        return {"items": items,
                "next_cursor": _cursor(page[-1]["opened_at"], page[-1]["rma_id"]) if more and page else None}

    async def transfer(self, transfer_id: str) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT * FROM rma_transfers WHERE transfer_id = $1", transfer_id)
        if row is None:
            raise NotFound(f"stock transfer {transfer_id} not found", transfer_id=transfer_id)
        return _transfer_row(row)

    async def transfers(self, *, status: str | None, warehouse: str | None, limit: int,
                        cursor: str | None) -> dict[str, Any]:
        after_at, after_id = _decode(cursor)
        rows = await self.pool.fetch(
            """SELECT * FROM rma_transfers
                WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR from_warehouse = $2)
                  AND ($3::timestamptz IS NULL OR (requested_at, transfer_id) < ($3, $4))
                ORDER BY requested_at DESC, transfer_id DESC LIMIT $5""", status, warehouse, after_at, after_id,
            limit + 1)
        page = rows[:limit]
        more = len(rows) > limit
        return {"items": [_transfer_row(r) for r in page],
                "next_cursor": _cursor(page[-1]["requested_at"], page[-1]["transfer_id"]) if more and page else None}

    async def stock(self, *, warehouse: str | None, sku: str | None) -> dict[str, Any]:
        rows = await self.pool.fetch(
            """SELECT warehouse_id, sku, available, version, updated_at FROM rma_stock
                WHERE ($1::text IS NULL OR warehouse_id = $1) AND ($2::text IS NULL OR sku = $2)
                ORDER BY warehouse_id, sku LIMIT 1000""", warehouse, sku)
        return {"items": [{"warehouse_id": r["warehouse_id"], "sku": r["sku"], "available": r["available"],
                           "version": r["version"], "updated_at": _iso(r["updated_at"])} for r in rows]}

    async def warehouses(self) -> dict[str, Any]:
        rows = await self.pool.fetch("SELECT * FROM rma_warehouses ORDER BY warehouse_id LIMIT 1000")
        return {"items": [{"warehouse_id": r["warehouse_id"], "name": r["name"], "kind": r["kind"],
                           "transfer_ttl_seconds": r["transfer_ttl_seconds"], "version": r["version"]} for r in rows]}

    async def catalogue(self, *, eol: bool | None) -> dict[str, Any]:
        rows = await self.pool.fetch(
            """SELECT sku, item, version FROM rma_catalogue WHERE $1::boolean IS NULL OR eol = $1
                ORDER BY sku LIMIT 1000""", eol)
        return {"items": [{"sku": r["sku"], **_load(r["item"]), "version": r["version"]} for r in rows]}

    async def item(self, sku: str) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT sku, item, version FROM rma_catalogue WHERE sku = $1", sku)
        if row is None:
            raise NotFound(f"sku {sku} is not in the catalogue", sku=sku)
        return {"sku": row["sku"], **_load(row["item"]), "version": row["version"]}

    async def replacement_demand(self, sku: str, *, today: date, failure_rate: Fraction | None) -> dict[str, Any]:
        """The warranty replacement demand of a SKU against the stock that can serve it (case 13)."""
        row = await self.pool.fetchrow("SELECT item FROM rma_catalogue WHERE sku = $1", sku)
        if row is None:
            raise NotFound(f"sku {sku} is not in the catalogue", sku=sku)
        spec = CatalogueItemSpec.model_validate(_load(row["item"]))
        proofs = await self.pool.fetch("SELECT serial, kind, purchase_date FROM rma_proofs WHERE sku = $1", sku)
        started: dict[str, tuple[int, date]] = {}
        for p in proofs:
            rank = (_PROOF_PRIORITY.get(p["kind"], 9), p["purchase_date"])
            if p["serial"] not in started or rank < started[p["serial"]]:
                started[p["serial"]] = rank
        last_day = timedelta(days=spec.warranty_days)
        in_warranty = sum(1 for _, start in started.values() if start <= today <= start + last_day)
        rmas = await self.pool.fetchval("SELECT count(*) FROM rma_cases WHERE sku = $1 AND status <> 'CANCELLED'", sku)
        active = sorted({r.alt_sku for r in spec.substitutes if r.active})
        levels = await self.pool.fetch(
            "SELECT sku, sum(available) AS units FROM rma_stock WHERE sku = ANY($1::text[]) GROUP BY sku",
            [sku, *active])
        stock = {r["sku"]: int(r["units"]) for r in levels}
        f = forecast_replacement_demand(sku=sku, eol=spec.eol, units_in_field=len(started),
                                        units_in_warranty=in_warranty, rmas=rmas, own_stock=stock.get(sku, 0),
                                        substitute_stock={s: stock.get(s, 0) for s in active},
                                        failure_rate=failure_rate)
        return {"sku": sku, "eol": f.eol, "as_of": today.isoformat(), "warranty_days": spec.warranty_days,
                "units_in_field": f.units_in_field, "units_in_warranty": f.units_in_warranty, "rmas": f.rmas,
                "failure_rate": float(f.failure_rate), "failure_rate_source": f.failure_rate_source,
                "expected_rmas": f.expected_rmas, "own_stock": f.own_stock, "substitute_stock": f.substitute_stock,
                "supply": f.supply, "shortfall": f.shortfall}
