"""The reconciliation's other checks: duplicate shipments (over the replay, so over the events) and
the event store's own integrity.

- duplicate_shipment: more than one parcel (carrier + tracking number) for one (RMA or order,
  action), counting closeloop's shipments and every parcel an imported carrier manifest lists (a
  parcel shipped outside closeloop). shipping_duplicates tells whether shipping already follows
  it up; the finding says so.
- store_tampered / store_broken_link / store_version_gap: every hash recomputed and linked to its
  predecessor, every stream's versions continuous from 1 (libs/eventstore/audit.check_chains, the
  check `closeloop verify` runs: the hashes are recomputed by PostgreSQL, only problems come back).
- store_missing_tail: a stream whose recorded version somewhere (the versions the projections
  applied, the services' read models written with their events) is above the store's last
  version: its last events were deleted, which the hash chain alone cannot see
  (libs/cli/integrity.check_tails, the same witnesses `closeloop verify` uses).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from libs.cli.integrity import check_tails
from libs.eventstore.audit import EventFilter, check_chains
from services.projector.application.compare import exists
from services.projector.application.ledger import Finding


async def duplicate_shipments(conn: asyncpg.Connection, s: str) -> list[Finding]:
    rows = await conn.fetch(f"""
        WITH parcels AS (
            SELECT subject_kind, subject_id, action, carrier, tracking_number, 'closeloop' AS origin,
                   shipment_id AS ref, created_at AS shipped_at, last_position AS position
              FROM {s}.rm_shipments
            UNION ALL
            SELECT subject_kind, subject_id, action, carrier, tracking_number, 'manifest',
                   manifest_id || '#' || line, shipped_at, global_position
              FROM {s}.rm_manifest_rows)
        SELECT subject_kind, subject_id, action, count(DISTINCT carrier || ':' || tracking_number) AS parcels,
               jsonb_agg(jsonb_build_object('origin', origin, 'ref', ref, 'carrier', carrier,
                                            'tracking_number', tracking_number, 'shipped_at', shipped_at,
                                            'position', position) ORDER BY shipped_at, ref) AS seen
          FROM parcels
         GROUP BY subject_kind, subject_id, action
        HAVING count(DISTINCT carrier || ':' || tracking_number) > 1
         ORDER BY subject_kind, subject_id, action""")
    followed: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    if rows and await exists(conn, "public.shipping_duplicates"):
        for d in await conn.fetch("SELECT duplicate_id, subject_kind, subject_id, action, status, resolution "
                                  "FROM public.shipping_duplicates"):
            followed.setdefault((d["subject_kind"], d["subject_id"], d["action"]), []).append(
                {"duplicate_id": d["duplicate_id"], "status": d["status"], "resolution": d["resolution"]})
    out = []
    for r in rows:
        subject = (r["subject_kind"], r["subject_id"], r["action"])
        parcels: dict[str, dict[str, Any]] = {}
        for p in r["seen"]:
            parcels.setdefault(f"{p['carrier']}:{p['tracking_number']}", p)
        follow = followed.get(subject, [])
        out.append(Finding(
            "duplicate_shipment", ":".join(subject),
            f"{r['subject_kind']} {r['subject_id']}: {r['parcels']} parcels for '{r['action']}' "
            f"({', '.join(parcels)})" + (f"; shipping follows it up ({', '.join(f['status'] for f in follow)})"
                                          if follow else ""),
            r["subject_id"] if r["subject_kind"] == "order" else None,
            {"subject_kind": r["subject_kind"], "subject_id": r["subject_id"], "action": r["action"],
             "parcels": list(parcels.values()), "listed": r["seen"], "followed_up": follow}))
    return out


async def store_integrity(conn: asyncpg.Connection) -> tuple[dict[str, Any], list[Finding]]:
    """Hash chains, version continuity and stream tails of the whole store; (counts, findings)."""
    # One connection: the replay keeps the other core busy meanwhile.
    checked, chain = await check_chains([conn], EventFilter())
    witnessed, tails = await check_tails(conn, EventFilter())
    found: list[Any] = [*chain, *tails]
    findings = [Finding(f"store_{f.kind}", f"{f.stream_id}@{f.stream_version}", f"{f.stream_id} version "
                        f"{f.stream_version}: {f.detail}", None,
                        {"stream_id": f.stream_id, "version": f.stream_version, "position": f.global_position,
                         "source": getattr(f, "source", "events"), "event_id": getattr(f, "event_id", None)})
                for f in found]
    return {"events_checked": checked, "witness_rows": witnessed}, findings
