"""The end checks of the reliability tests, run once the platform has caught up after the chaos:
what a user, an operator or an auditor would notice if the platform had lost or doubled anything.

1. `closeloop verify --grace 0`: every hash chain and stream version, every stream's tail against what
   the read models and consumers recorded, and every projector read model (and the services' mirrored
   tables) equal to a replay of the event store;
2. every command answered 2xx is in the store: its Idempotency-Key recorded with exactly the response
   the client got, and the aggregate at (at least) the version the response named;
3. money: no order refunded twice or above what was paid online; the refunds of each order of the
   workload are exactly what its story decides;
4. after-sales: no RMA with two outbound shipments (shipping's table and the store), every closed RMA
   with exactly one;
5. notifications: none sent twice: one per stage and channel, one per cause, one sink message per
   notification (a send repeated after a crash carries the same notification id: the provider's
   idempotency key; such repeats are counted in the summary);
6. nothing stored twice: one top-up per reference, one RMA per serial.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tests.reliability.chaos.workload import PREPAYMENT, Workload

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@dataclass
class CheckReport:
    passed: list[str] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)

    def check(self, name: str, problems: list[str]) -> None:
        if problems:
            self.failed[name] = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        else:
            self.passed.append(name)

    def summary(self) -> str:
        return "\n".join([f"passed: {', '.join(self.passed)}"] + [f"FAILED {k}: {v}" for k, v in self.failed.items()])


def closeloop_verify(dsn: str, timeout: float = 300) -> tuple[int, dict[str, Any]]:
    """`closeloop verify --grace 0 --json` as an auditor runs it; (exit code, report)."""
    proc = subprocess.run([sys.executable, "-m", "libs.cli", "verify", "--grace", "0", "--json"], cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": dsn}, capture_output=True, text=True, timeout=timeout)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = {"stdout": proc.stdout[-2000:], "stderr": proc.stderr[-2000:]}
    return proc.returncode, doc


async def wait_caught_up(dsn: str, relay_name: str, timeout: float = 240) -> None:
    """Bounded wait until the relay published everything and the projector holds every stream's last
    version (what `verify` then compares)."""
    deadline = time.monotonic() + timeout
    conn = await _connect(dsn, deadline)
    try:
        while True:
            try:
                behind = await conn.fetchval(
                    """SELECT count(*) FROM events e
                        WHERE (e.transaction_id, e.global_position) >
                              (SELECT transaction_id, global_position FROM relay_checkpoints WHERE name = $1)""",
                    relay_name)
                unprojected = await conn.fetchval(
                    """SELECT count(*) FROM (SELECT stream_id, max(stream_version) v FROM events
                                              WHERE split_part(stream_id, '-', 1) IN ('order', 'bill')
                                              GROUP BY stream_id) s
                        LEFT JOIN projection_streams p ON p.stream_id = s.stream_id
                        WHERE coalesce(p.version, 0) < s.v""")
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                behind, unprojected = -1, -1
            if behind == 0 and unprojected == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the platform did not catch up within {timeout:.0f} s: {behind} events not "
                                     f"published, {unprojected} order/bill streams behind in the projector")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _connect(dsn: str, deadline: float) -> asyncpg.Connection:
    while True:
        try:
            return await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def verify_until_clean(dsn: str, timeout: float = 240) -> list[str]:
    """verify with no grace; a finding may be an event still on its way, so retry within the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        rc, doc = await asyncio.to_thread(closeloop_verify, dsn)
        if rc == 0:
            return []
        if time.monotonic() > deadline:
            findings = doc.get("findings") or [doc]
            return [f"verify exit {rc}: {json.dumps(f, default=str)[:400]}" for f in findings]
        await asyncio.sleep(2)


async def end_checks(dsn: str, relay_name: str, workloads: list[Workload]) -> CheckReport:
    report = CheckReport()
    await wait_caught_up(dsn, relay_name)
    report.check("read models equal a replay; hash chains, versions and tails intact (closeloop verify)",
                 await verify_until_clean(dsn))
    conn = await asyncpg.connect(dsn)
    try:
        report.check("every 2xx command is in the store with the response the client got",
                     await _acknowledged_commands_stored(conn, workloads))
        report.check("no order refunded twice or above what was paid", await _refunds(conn, workloads))
        report.check("no RMA with two outbound shipments", await _shipments(conn, workloads))
        report.check("no notification sent twice", await _notifications(conn))
        report.check("nothing stored twice", await _stored_once(conn))
    finally:
        await conn.close()
    return report


async def resent_notifications(dsn: str) -> int:
    """Sends the provider was asked for again under the same notification id (deduped there)."""
    return await _count(dsn, "SELECT coalesce(sum(deliveries - 1), 0) FROM notifications_sink")


async def dead_letters(dsn: str) -> int:
    return await _count(dsn, "SELECT count(*) FROM dead_letters")


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _acknowledged_commands_stored(conn: asyncpg.Connection, workloads: list[Workload]) -> list[str]:
    ok = [s for w in workloads for s in w.rec.ok]
    rows = {r["key"]: json.loads(r["response"]) for r in await conn.fetch(
        "SELECT key, response FROM idempotency_keys WHERE key = ANY($1::text[])", [s.key for s in ok])}
    problems = []
    for s in ok:
        if s.key not in rows:
            if s.path.startswith("/carriers/") or s.path == "/labels/scan":
                continue  # carrier webhooks and scans are idempotent by content, not by key (checked below)
            problems.append(f"{s.method} {s.service}{s.path} answered {s.status} but its key {s.key} is not stored")
        elif (diff := _ids_differ(rows[s.key], s.body)):
            problems.append(f"{s.method} {s.service}{s.path}: stored response differs from the one answered in "
                            f"{diff}")
    versions: dict[str, int] = {}
    for s in ok:
        body = s.body if isinstance(s.body, dict) else {}
        for kind in ("order", "rma"):
            if f"{kind}_id" in body and isinstance(body.get("version"), int) and s.path.startswith(f"/{kind}s"):
                sid = f"{kind}-{body[f'{kind}_id']}"
                versions[sid] = max(versions.get(sid, 0), body["version"])
    stored = {r["stream_id"]: r["v"] for r in await conn.fetch(
        "SELECT stream_id, max(stream_version) v FROM events WHERE stream_id = ANY($1::text[]) GROUP BY 1",
        list(versions))}
    problems += [f"{sid}: a response named version {v}, the store has {stored.get(sid)}"
                 for sid, v in versions.items() if stored.get(sid, 0) < v]
    scans = [s for s in ok if s.path == "/labels/scan"]
    scanned = await conn.fetchval("SELECT count(DISTINCT stream_id) FROM events WHERE event_type = "
                                  "'InboundParcelScanned'")
    if scanned < len({json.dumps(s.body.get("label_id"), default=str) for s in scans if isinstance(s.body, dict)}):
        problems.append(f"{len(scans)} scans answered 2xx, {scanned} labels scanned in the store")
    return problems


def _ids_differ(stored: Any, answered: Any) -> list[str]:
    """The ids and versions of a stored response that the answer does not repeat (the HTTP layer may add
    fields, e.g. the read model's catch-up, and formats timestamps its own way)."""
    if not isinstance(stored, dict) or not isinstance(answered, dict):
        return [] if stored == answered else ["the whole response"]
    return [k for k, v in stored.items() if (k.endswith("_id") or k in ("version", "status")) and answered.get(k) != v]


async def _refunds(conn: asyncpg.Connection, workloads: list[Workload]) -> list[str]:
    problems = []
    over = await conn.fetch(
        """WITH paid AS (
             SELECT substr(e.stream_id, length('transaction-') + 1) order_id, e.event_type,
                    sum((t->'amount'->>'amount')::bigint) amount
               FROM events e, jsonb_array_elements(e.data->'tenders') t
              WHERE e.event_type IN ('TransactionPrepaymentCaptured', 'TransactionPrepaymentReserved',
                                     'TransactionSettled')
              GROUP BY 1, 2)
           SELECT r.order_id, sum(r.amount) refunded,
                  (SELECT max(p.amount) FROM paid p WHERE p.order_id = r.order_id) paid
             FROM payments_refunds r GROUP BY r.order_id""")
    problems += [f"order {r['order_id']}: refunded {r['refunded']} of {r['paid']} paid" for r in over
                 if r["paid"] and r["refunded"] > r["paid"]]
    twice = await conn.fetch("""SELECT order_id, source, count(*) n FROM payments_refunds
                                 WHERE source IN ('settlement', 'cancellation') GROUP BY 1, 2 HAVING count(*) > 1""")
    problems += [f"order {r['order_id']}: {r['n']} {r['source']} refunds" for r in twice]
    expected: dict[str, dict[str, int]] = {}
    for w in workloads:
        expected.update(w.expected_refunds)
    got: dict[str, dict[str, int]] = {}
    for r in await conn.fetch("SELECT order_id, source, amount FROM payments_refunds WHERE order_id = ANY($1::text[])",
                              list(expected)):
        got.setdefault(r["order_id"], {})
        got[r["order_id"]][r["source"]] = got[r["order_id"]].get(r["source"], 0) + r["amount"]
    problems += [f"order {oid}: refunds {got.get(oid, {})}, expected {want}" for oid, want in expected.items()
                 if got.get(oid, {}) != want]
    assert all(sum(v.values()) <= PREPAYMENT for v in expected.values())
    return problems


async def _shipments(conn: asyncpg.Connection, workloads: list[Workload]) -> list[str]:
    problems = [f"{r['subject_id']} {r['action']}: {r['n']} shipments in shipping's table" for r in await conn.fetch(
        "SELECT subject_id, action, count(*) n FROM shipping_shipments GROUP BY 1, 2 HAVING count(*) > 1")]
    created = {r["rma_id"]: r["n"] for r in await conn.fetch(
        """SELECT data->>'rma_id' rma_id, count(*) n FROM events WHERE event_type = 'ShipmentCreated'
            AND data->>'rma_id' IS NOT NULL GROUP BY 1""")}
    problems += [f"RMA {rid}: {n} ShipmentCreated events" for rid, n in created.items() if n > 1]
    closed = [rid for w in workloads for rid in w.closed_rmas]
    problems += [f"closed RMA {rid}: {created.get(rid, 0)} shipments" for rid in closed if created.get(rid) != 1]
    return problems


async def _notifications(conn: asyncpg.Connection) -> list[str]:
    """One message per stage and channel (the outbox's stage key), one per cause (its dedupe key), and the
    sink holds one message per notification: a send repeated after a crash between the send and its
    record (at-least-once) names the same notification id, which the provider dedupes (counted apart)."""
    problems = [f"{r['dedupe_key']}: {r['n']} notifications" for r in await conn.fetch(
        "SELECT dedupe_key, count(*) n FROM notifications GROUP BY 1 HAVING count(*) > 1")]
    problems += [f"sink row {r['notification_id']} has no notification" for r in await conn.fetch(
        """SELECT s.notification_id FROM notifications_sink s LEFT JOIN notifications n USING (notification_id)
            WHERE n.notification_id IS NULL""")]
    problems += [f"{r['stage_key']}: {r['n']} notifications" for r in await conn.fetch(
        "SELECT stage_key, count(*) n FROM notifications WHERE stage_key IS NOT NULL GROUP BY 1 HAVING count(*) > 1")]
    return problems


async def _stored_once(conn: asyncpg.Connection) -> list[str]:
    problems = [f"top-up {r['ref']} stored {r['n']} times" for r in await conn.fetch(
        """SELECT data->>'reference' ref, count(*) n FROM events WHERE event_type = 'WalletToppedUp'
            GROUP BY 1 HAVING count(*) > 1""")]
    problems += [f"serial {r['serial']}: {r['n']} RMAs opened" for r in await conn.fetch(
        """SELECT data->>'serial' serial, count(*) n FROM events WHERE event_type = 'RmaOpened'
            GROUP BY 1 HAVING count(*) > 1""")]
    problems += [f"event {r['event_id']} stored {r['n']} times" for r in await conn.fetch(
        "SELECT event_id, count(*) n FROM events GROUP BY 1 HAVING count(*) > 1")]
    return problems
