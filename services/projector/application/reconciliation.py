"""The daily replay-based reconciliation (issue 5, item 1), run by the projector at a configured time,
by `POST /reconciliations` and by `closeloop reconcile`.

A run:
1. replays the whole event store into a fresh shadow schema (`recon_<run id>`, services/projector/
   shadow.py) and catches it up with what committed meanwhile; in parallel the event store's own
   integrity is checked (hash chains, version continuity, stream tails);
2. compares every projector table with the replay row by row (a hash per row, by key), and the
   services' own tables of the same facts on the columns both derive from the events
   (application/compare.py); a difference is checked again after a further catch-up, so that a
   row the live consumer or a service changed during the run is not reported;
3. reconciles the internal payment ledger with the provider's reports (application/ledger.py),
   and looks for duplicate shipments and refunds above what was paid (application/checks.py);
4. stores the report (JSON, and its HTML page rendered once from that JSON), emits it as events
   (ReconciliationCompleted on `reconciliation-{run_id}`, a DiscrepancyOpened per new discrepancy),
   and keeps each discrepancy's lifecycle across runs (its id is its kind and key);
5. with `repair`, swaps the shadow in when the projector's own tables drifted (never the
   services' tables: they are reported, and their owners repair them).

Runs take turns (a session advisory lock), whichever replica or CLI starts them. The replay and
the comparison append nothing to the event store and publish nothing: the only events a run
writes are its own (reconciliation-*, discrepancy-*).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from libs.application.pool import session_lock
from libs.application.unit_of_work import CommandContext, UnitOfWork, execute
from libs.domain.errors import NotFound
from libs.eventstore import NO_STREAM, EventStore, NewEvent
from services.projector.application import checks, compare, ledger
from services.projector.application.report_html import render_report
from services.projector.domain.reconciliation import (
    DISCREPANCY_CATEGORY,
    RUN_CATEGORY,
    RUN_ROLES,
    Discrepancy,
    DiscrepancyOpened,
    DiscrepancyReopened,
    ReconciliationCompleted,
    ReconciliationFailed,
    ReconciliationStarted,
    Trigger,
    discrepancy_id,
    require_role,
    view_of,
)
from services.projector.projections.tables import OWNED
from services.projector.shadow import BuildProgress, ShadowBuild, SwapResult

log = logging.getLogger("closeloop.projector.reconciliation")

RUN_LOCK = 0x636C7263  # "clrc": one run at a time
MAX_PER_KIND = 1000  # discrepancies tracked one by one per kind and run; the rest are counted
RECHECKS = 3
COMPARE_LANES = 2
tables_by_name = {t.name: t for t in OWNED}
EVENT_IDS_LIMIT = 1000

CATEGORY_OF = {"read_model_drift": "read_model", "read_model_lag": "read_model", "service_drift": "service",
               "refund_above_paid": "refunds", "duplicate_shipment": "shipping"}

ProgressFn = Callable[[dict[str, Any]], Awaitable[None] | None]


def category_of(kind: str) -> str:
    if kind in CATEGORY_OF:
        return CATEGORY_OF[kind]
    return kind.split("_", 1)[0]  # ledger_*, store_*


def new_run_id(now: datetime) -> str:
    return f"r-{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def shadow_schema_of(run_id: str) -> str:
    return ("recon_" + re.sub(r"[^a-z0-9_]", "_", run_id.lower()))[:50]


def canonical(report: dict[str, Any]) -> bytes:
    return orjson.dumps(report, option=orjson.OPT_SORT_KEYS)


@dataclass
class Found:
    """A discrepancy as one run found it."""

    kind: str
    key: str
    summary: str
    order_id: str | None
    details: dict[str, Any]

    @property
    def discrepancy_id(self) -> str:
        return discrepancy_id(self.kind, self.key)


class RunInProgress(Exception):
    pass


class Reconciler:
    """Runs reconciliations on `store` and serves their history and discrepancies."""

    def __init__(self, store: EventStore, *, clock: Callable[[], datetime] | None = None,
                 keep_shadow: bool = False) -> None:
        self.store = store
        self.clock = clock or (lambda: datetime.now(UTC))
        self.keep_shadow = keep_shadow
        self.tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ starting
    async def start(self, ctx: CommandContext, *, trigger: Trigger, repair: bool = False,
                    run_id: str | None = None) -> tuple[str, bool]:
        """Record a new run (its row and ReconciliationStarted, in one transaction). Returns (run id,
        created); created is False when a run of that id exists (a daily run another replica took)."""
        require_role(ctx.role, RUN_ROLES, "run a reconciliation")
        now = self.clock()
        run_id = run_id or new_run_id(now)
        schema = shadow_schema_of(run_id)
        async with self.store.transaction() as conn:
            inserted = await conn.fetchval(
                """INSERT INTO reconciliation_runs (run_id, trigger, requested_by, requested_role, repair, status,
                                                    phase, shadow_schema, started_at, heartbeat_at)
                   VALUES ($1, $2, $3, $4, $5, 'running', 'waiting', $6, $7, $7)
                   ON CONFLICT (run_id) DO NOTHING RETURNING 1""",
                run_id, trigger, ctx.actor, ctx.role, repair, schema, now)
            if not inserted:
                return run_id, False
            event = ReconciliationStarted(run_id=run_id, trigger=trigger, repair=repair, shadow_schema=schema, at=now)
            await self.store.append(f"{RUN_CATEGORY}-{run_id}", NO_STREAM,
                                    [NewEvent(event.event_type, event.to_data(), ctx.metadata())], conn=conn)
        return run_id, True

    def run_in_background(self, run_id: str, ctx: CommandContext) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._background(run_id, ctx), name=f"reconciliation {run_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _background(self, run_id: str, ctx: CommandContext) -> None:
        try:
            await self.run(run_id, ctx)
        except Exception:  # recorded as ReconciliationFailed by run()
            log.exception("reconciliation %s failed", run_id)

    async def reconcile(self, ctx: CommandContext, *, trigger: Trigger, repair: bool = False,
                        on_progress: ProgressFn | None = None) -> dict[str, Any]:
        """Start a run and wait for its report."""
        run_id, _ = await self.start(ctx, trigger=trigger, repair=repair)
        return await self.run(run_id, ctx, on_progress=on_progress)

    # ------------------------------------------------------------------ running
    async def run(self, run_id: str, ctx: CommandContext, *, on_progress: ProgressFn | None = None) -> dict[str, Any]:
        row = await self.store.pool.fetchrow("SELECT * FROM reconciliation_runs WHERE run_id = $1", run_id)
        if row is None:
            raise NotFound(f"reconciliation {run_id} not found", run_id=run_id)
        run = _Run(self, dict(row), ctx, on_progress)
        # Runs take turns: one replay at a time is what the machine has room for. The session lock is held on a
        # connection of its own (the projector's pool does not reset connections on release).
        await run.set_phase("waiting")
        async with session_lock(self.store, RUN_LOCK):
            return await run.execute()

    # ------------------------------------------------------------------ lifecycle
    async def acknowledge(self, discrepancy: str, reason: str, ctx: CommandContext) -> dict[str, Any]:
        return await self._act(discrepancy, "acknowledge", reason, ctx)

    async def resolve(self, discrepancy: str, reason: str, ctx: CommandContext) -> dict[str, Any]:
        return await self._act(discrepancy, "resolve", reason, ctx)

    async def _act(self, discrepancy: str, command: str, reason: str, ctx: CommandContext) -> dict[str, Any]:
        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            d = await uow.get(Discrepancy, discrepancy)
            now = self.clock()
            if command == "acknowledge":
                d.acknowledge(ctx.actor, ctx.role, reason, now)
            else:
                d.resolve(ctx.actor, ctx.role, reason, now)
            await uow.flush()
            who = "acknowledged" if command == "acknowledge" else "resolved"
            row = await uow.conn.fetchrow(
                f"""UPDATE reconciliation_discrepancies
                       SET status = $2, {who}_by = $3, {who}_role = $4, {who}_reason = $5, {who}_at = $6, version = $7
                     WHERE discrepancy_id = $1 RETURNING *""",
                d.id, d.status.value if d.status else None, ctx.actor, ctx.role, reason.strip(), now, d.version)
            if row is None:
                raise NotFound(f"discrepancy {discrepancy} not found", discrepancy_id=discrepancy)
            return view_of(dict(row))

        result = await execute(self.store, ctx, f"discrepancy-{command}", fn)
        return result.response

    # ------------------------------------------------------------------ queries
    async def runs(self, limit: int = 50, before: datetime | None = None) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch(
            """SELECT run_id, trigger, requested_by, requested_role, repair, status, phase, progress, summary, error,
                      report_sha256, started_at, heartbeat_at, finished_at
                 FROM reconciliation_runs WHERE ($1::timestamptz IS NULL OR started_at < $1)
                ORDER BY started_at DESC, run_id DESC LIMIT $2""", before, limit)
        return [_jsonable(dict(r)) for r in rows]

    async def get(self, run_id: str) -> dict[str, Any]:
        row = await self.store.pool.fetchrow(
            """SELECT r.*, p.report FROM reconciliation_runs r LEFT JOIN reconciliation_reports p USING (run_id)
                WHERE r.run_id = $1""", run_id)
        if row is None:
            raise NotFound(f"reconciliation {run_id} not found", run_id=run_id)
        return _jsonable(dict(row))

    async def html(self, run_id: str) -> str | None:
        row = await self.store.pool.fetchrow("SELECT html FROM reconciliation_reports WHERE run_id = $1", run_id)
        if row is None:
            await self.get(run_id)  # NotFound for an unknown run
            return None
        return str(row["html"])

    async def discrepancies(self, *, status: str | None = None, kind: str | None = None, run_id: str | None = None,
                            present: bool | None = None, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch(
            """SELECT d.* FROM reconciliation_discrepancies d
                WHERE ($1::text IS NULL OR d.status = $1) AND ($2::text IS NULL OR d.kind = $2)
                  AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM reconciliation_findings f
                                                    WHERE f.run_id = $3 AND f.discrepancy_id = d.discrepancy_id))
                  AND ($4::boolean IS NULL OR d.present = $4)
                ORDER BY d.last_seen_at DESC, d.discrepancy_id LIMIT $5""", status, kind, run_id, present, limit)
        return [view_of(dict(r)) for r in rows]

    async def discrepancy(self, discrepancy: str) -> dict[str, Any]:
        row = await self.store.pool.fetchrow(
            "SELECT * FROM reconciliation_discrepancies WHERE discrepancy_id = $1", discrepancy)
        if row is None:
            raise NotFound(f"discrepancy {discrepancy} not found", discrepancy_id=discrepancy)
        out = view_of(dict(row))
        out["history"] = [
            {"version": e.stream_version, "event_type": e.event_type, "at": e.recorded_at.isoformat(),
             "actor": e.metadata.get("actor"), "role": e.metadata.get("role"), "data": e.data}
            for e in await self.store.read_stream(f"{DISCREPANCY_CATEGORY}-{discrepancy}")]
        return out

    async def abandon_stale(self, older_than_s: float = 900) -> int:
        """Runs whose process died (no heartbeat for a while) are marked failed."""
        rows = await self.store.pool.fetch(
            """UPDATE reconciliation_runs SET status = 'failed', error = 'abandoned: no heartbeat', finished_at = now()
                WHERE status = 'running' AND heartbeat_at < now() - make_interval(secs => $1) RETURNING run_id""",
            float(older_than_s))
        return len(rows)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


class _Run:
    """One run's execution (see the module docstring)."""

    def __init__(self, owner: Reconciler, row: dict[str, Any], ctx: CommandContext,
                 on_progress: ProgressFn | None) -> None:
        self.owner = owner
        self.store = owner.store
        self.row = row
        self.run_id: str = row["run_id"]
        self.ctx = ctx
        self.on_progress = on_progress
        self.phase = row["phase"]
        self.timings: dict[str, float] = {}
        self.counts: dict[str, Any] = {}
        self.build: ShadowBuild | None = None
        self._phase_started = time.monotonic()
        self._last_beat = 0.0

    async def set_phase(self, phase: str) -> None:
        now = time.monotonic()
        if self.phase not in ("waiting",):
            self.timings[self.phase] = self.timings.get(self.phase, 0.0) + now - self._phase_started
        self._phase_started = now
        self.phase = phase
        await self.beat(force=True)

    def progress(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "counts": self.counts,
                               "phase_seconds": {k: round(v, 3) for k, v in self.timings.items()}}
        if self.build is not None:
            out["replay"] = self.build.progress.as_dict()
        return out

    async def beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < 1.0:
            return
        self._last_beat = now
        progress = self.progress()
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            await self.store.pool.execute(
                "UPDATE reconciliation_runs SET phase = $2, progress = $3, heartbeat_at = now() WHERE run_id = $1",
                self.run_id, self.phase, progress)
        if self.on_progress is not None:
            result = self.on_progress(progress)
            if asyncio.iscoroutine(result):
                await result

    async def _on_build(self, p: BuildProgress) -> None:
        if p.phase in ("replaying", "indexing", "catching_up") and self.phase != p.phase:
            await self.set_phase(p.phase)
        else:
            await self.beat()

    async def execute(self) -> dict[str, Any]:
        started = self.owner.clock()
        t0 = time.monotonic()
        schema = self.row["shadow_schema"]
        self.build = ShadowBuild(self.store, schema, on_progress=self._on_build)
        swapped: SwapResult | None = None
        try:
            # The store's integrity is checked while the replay runs (the database does the hashing).
            integrity = asyncio.create_task(self._integrity())
            try:
                await self.build.build()
            finally:
                if not integrity.done():
                    await self.set_phase("checking_store")
                    await asyncio.wait([integrity])
            integrity_counts, store_findings = integrity.result()
            self.counts["integrity"] = integrity_counts
            await self.set_phase("comparing")
            drift_found, tables, services = await self._compare(schema)
            await self.set_phase("ledger")
            async with self.store.pool.acquire() as conn:
                ledger_findings, ledger_counts = await ledger.check_ledger(conn, schema)
                await self.set_phase("shipments")
                shipping = await checks.duplicate_shipments(conn, schema)
            self.counts["ledger"] = ledger_counts
            found = [*drift_found, *ledger_findings_to_found(ledger_findings), *ledger_findings_to_found(shipping),
                     *ledger_findings_to_found(store_findings)]
            if self.row["repair"] and any(f.kind in ("read_model_drift", "read_model_lag") for f in found):
                await self.set_phase("repairing")
                swapped = await self.build.swap()
                for f in found:
                    if f.kind in ("read_model_drift", "read_model_lag"):
                        f.details["repaired"] = True
            await self.set_phase("reporting")
            report = await self._persist(found, tables, services, started, t0, swapped)
        except Exception as exc:
            await self._failed(exc)
            raise
        finally:
            if swapped is None and not self.owner.keep_shadow:
                with contextlib.suppress(asyncpg.PostgresError, OSError):
                    await self.build.drop()
        return report

    async def _integrity(self) -> tuple[dict[str, Any], list[ledger.Finding]]:
        async with self.store.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await checks.store_integrity(conn)

    async def _compare(self, schema: str) -> tuple[list[Found], list[dict[str, Any]], list[dict[str, Any]]]:
        """Drifting keys per table, checked again after a further catch-up (see the module docstring)."""
        assert self.build is not None
        tables: list[dict[str, Any]] = []
        services: list[dict[str, Any]] = []
        candidates: dict[str, list[str]] = {}
        mirrors: dict[str, compare.Mirror] = {}
        async with self.store.pool.acquire() as conn:
            for m in compare.MIRRORS:
                if await compare.exists(conn, f"public.{m.table}"):
                    mirrors[m.table] = m
            # The hashing is the database's work: two tables at a time keep both cores busy.
            lanes = asyncio.Semaphore(COMPARE_LANES)

            async def keys_of(name: str) -> None:
                async with lanes, self.store.pool.acquire() as c:
                    if name in mirrors:
                        candidates[name] = await compare.mirror_keys(c, schema, mirrors[name])
                    else:
                        candidates[name] = await compare.table_keys(c, schema, tables_by_name[name])

            # Biggest first, so that the two lanes finish together.
            order = sorted([*tables_by_name, *mirrors], key=lambda n: n not in ("rm_order_history",
                                                                                  "projection_streams"))
            await asyncio.gather(*(keys_of(n) for n in order))
            for attempt in range(1, RECHECKS + 1):
                if not any(candidates.values()):
                    break
                # The live consumer (or a service) may have moved on since the snapshot, or not yet
                # applied what the shadow caught up with: wait a little, catch up, compare those keys again.
                await asyncio.sleep(0.25 * attempt)
                await self.build.catch_up()
                for name, keys in list(candidates.items()):
                    if not keys:
                        continue
                    if name in mirrors:
                        candidates[name] = await compare.mirror_keys(conn, schema, mirrors[name], keys)
                    else:
                        candidates[name] = await compare.table_keys(conn, schema, tables_by_name[name], keys)
            found: list[Found] = []
            for spec in OWNED:
                live, replayed = await compare.counts(conn, f"public.{spec.name}", f"{schema}.{spec.name}")
                keys = candidates[spec.name]
                tables.append(compare.TableCount(spec.name, live, replayed, len(keys)).as_dict())
                for d in await compare.describe_table(conn, schema, spec, keys[:MAX_PER_KIND]):
                    found.append(_drift_found("read_model_lag" if d.lagging else "read_model_drift", d))
                if len(keys) > MAX_PER_KIND:
                    found.append(_overflow("read_model_drift", spec.name, len(keys) - MAX_PER_KIND))
            for name, m in mirrors.items():
                live, replayed = await compare.counts(conn, f"public.{m.table}", f"{schema}.{m.replay}")
                keys = candidates[name]
                services.append({**compare.TableCount(m.table, live, replayed, len(keys)).as_dict(),
                                 "service": m.service, "replay": m.replay, "columns": list(m.columns)})
                for d in await compare.describe_mirror(conn, schema, m, keys[:MAX_PER_KIND]):
                    found.append(_drift_found("service_drift", d, service=m.service))
                if len(keys) > MAX_PER_KIND:
                    found.append(_overflow("service_drift", m.table, len(keys) - MAX_PER_KIND))
        self.counts["tables"] = tables
        self.counts["services"] = services
        return found, tables, services

    async def _persist(self, found: list[Found], tables: list[dict[str, Any]], services: list[dict[str, Any]],
                       started: datetime, t0: float, swapped: SwapResult | None) -> dict[str, Any]:
        assert self.build is not None
        # One discrepancy per id (a key found twice in one run, e.g. by two rules, keeps the first).
        unique: dict[str, Found] = {}
        for f in found:
            unique.setdefault(f.discrepancy_id, f)
        found = list(unique.values())
        by_kind = Counter(f.kind for f in found)
        finished = self.owner.clock()
        self.timings[self.phase] = self.timings.get(self.phase, 0.0) + time.monotonic() - self._phase_started
        b = self.build
        meta = self.ctx.metadata()
        async with self.store.transaction() as conn:
            ids = [f.discrepancy_id for f in found]
            existing = {r["discrepancy_id"]: dict(r) for r in await conn.fetch(
                "SELECT discrepancy_id, status, version FROM reconciliation_discrepancies"
                " WHERE discrepancy_id = ANY($1::text[]) FOR UPDATE", ids)}
            appends: list[tuple[str, int | None, list[NewEvent]]] = []
            items: list[dict[str, Any]] = []
            new = 0
            for f in found:
                did = f.discrepancy_id
                old = existing.get(did)
                status = old["status"] if old else "open"
                version = old["version"] if old else 0
                reopened = False
                if old is None:
                    new += 1
                    ev: Any = DiscrepancyOpened(discrepancy_id=did, kind=f.kind, key=f.key[:500], run_id=self.run_id,
                                                summary=f.summary[:1000], order_id=_id_or_none(f.order_id), at=finished)
                    appends.append((f"{DISCREPANCY_CATEGORY}-{did}", NO_STREAM,
                                    [NewEvent(ev.event_type, ev.to_data(), meta)]))
                    version = 1
                elif old["status"] == "resolved":
                    ev = DiscrepancyReopened(discrepancy_id=did, run_id=self.run_id, summary=f.summary[:1000],
                                             at=finished)
                    appends.append((f"{DISCREPANCY_CATEGORY}-{did}", old["version"],
                                    [NewEvent(ev.event_type, ev.to_data(), meta)]))
                    status, version, reopened = "open", old["version"] + 1, True
                items.append({"discrepancy_id": did, "kind": f.kind, "category": category_of(f.kind), "key": f.key,
                              "order_id": f.order_id, "summary": f.summary, "details": f.details,
                              "status": status, "new": old is None, "reopened": reopened, "version": version})
            if appends:
                await self.store.append_many(appends, conn=conn)
            await conn.executemany(
                """INSERT INTO reconciliation_discrepancies
                       (discrepancy_id, kind, key, category, order_id, summary, details, status, present,
                        first_seen_run, first_seen_at, last_seen_run, last_seen_at, seen_count, version)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, true, $9, $10, $9, $10, 1, $11)
                   ON CONFLICT (discrepancy_id) DO UPDATE SET
                       summary = EXCLUDED.summary, details = EXCLUDED.details, status = EXCLUDED.status, present = true,
                       last_seen_run = EXCLUDED.last_seen_run, last_seen_at = EXCLUDED.last_seen_at,
                       seen_count = reconciliation_discrepancies.seen_count + 1, version = EXCLUDED.version""",
                [(i["discrepancy_id"], i["kind"], i["key"], i["category"], i["order_id"], i["summary"], i["details"],
                  i["status"], self.run_id, finished, i["version"]) for i in items])
            await conn.execute("UPDATE reconciliation_discrepancies SET present = false"
                               " WHERE present AND NOT (discrepancy_id = ANY($1::text[]))", ids)
            await conn.executemany("INSERT INTO reconciliation_findings (run_id, discrepancy_id) VALUES ($1, $2)",
                                   [(self.run_id, i) for i in ids])
            report: dict[str, Any] = {
                "run_id": self.run_id, "trigger": self.row["trigger"], "requested_by": self.row["requested_by"],
                "requested_role": self.row["requested_role"], "repair": self.row["repair"],
                "started_at": started.isoformat(), "finished_at": finished.isoformat(),
                "duration_seconds": round(time.monotonic() - t0, 3),
                "store": {"events": b.events_in_store, "events_replayed": b.progress.applied,
                          "events_after_snapshot": b.progress.tail, "head_position": b.head_position,
                          "snapshot": b.snapshot.text if b.snapshot else None,
                          "fold_errors": b.fold_errors[:100]},
                "phases": {k: round(v, 3) for k, v in self.timings.items()},
                "replay": b.progress.as_dict(),
                "tables": tables, "services": services, "ledger": self.counts.get("ledger", {}),
                "integrity": self.counts.get("integrity", {}),
                "totals": {"discrepancies": len(items), "new": new, "by_kind": dict(sorted(by_kind.items())),
                           "by_category": dict(sorted(Counter(i["category"] for i in items).items()))},
                "discrepancies": items,
                "repaired": None if swapped is None else {
                    "tables": swapped.tables, "tail_applied": swapped.tail_applied,
                    "wait_ms": round(swapped.wait_ms, 1), "locked_ms": round(swapped.locked_ms, 1)},
            }
            sha = hashlib.sha256(canonical(report)).hexdigest()
            html = render_report(report, sha)
            await conn.execute("INSERT INTO reconciliation_reports (run_id, report, html) VALUES ($1, $2, $3)",
                               self.run_id, report, html)
            summary = {k: report[k] for k in ("duration_seconds", "store", "phases", "totals", "repaired")}
            await conn.execute(
                """UPDATE reconciliation_runs SET status = 'completed', phase = 'completed', progress = $2,
                          summary = $3, report_sha256 = $4, finished_at = $5, heartbeat_at = now()
                    WHERE run_id = $1""",
                self.run_id, self.progress(), summary, sha, finished)
            done = ReconciliationCompleted(
                run_id=self.run_id, started_at=started, finished_at=finished,
                duration_seconds=report["duration_seconds"], events_replayed=b.progress.applied,
                head_position=b.head_position, discrepancies=len(items), by_kind=dict(by_kind), new_discrepancies=new,
                discrepancy_ids=ids[:EVENT_IDS_LIMIT], repaired=swapped is not None, report_sha256=sha, at=finished)
            await self.store.append(f"{RUN_CATEGORY}-{self.run_id}", None,
                                    [NewEvent(done.event_type, done.to_data(), meta)], conn=conn)
        self.phase = "completed"
        if self.on_progress is not None:
            result = self.on_progress({**self.progress(), "report": report})
            if asyncio.iscoroutine(result):
                await result
        return report

    async def _failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"[:2000]
        with contextlib.suppress(Exception):
            async with self.store.transaction() as conn:
                await conn.execute(
                    """UPDATE reconciliation_runs SET status = 'failed', error = $2, finished_at = now(),
                              heartbeat_at = now() WHERE run_id = $1""", self.run_id, text)
                failed = ReconciliationFailed(run_id=self.run_id, error=text, phase=self.phase, at=self.owner.clock())
                await self.store.append(f"{RUN_CATEGORY}-{self.run_id}", None,
                                        [NewEvent(failed.event_type, failed.to_data(), self.ctx.metadata())],
                                        conn=conn)


_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _id_or_none(value: str | None) -> str | None:
    return value if value is not None and _ID.match(value) else None


def _drift_found(kind: str, d: compare.RowDrift, service: str | None = None) -> Found:
    what = {"read_model_drift": "differs from the replay", "read_model_lag": "is behind the event store",
            "service_drift": "differs from the replay of its events"}[kind]
    if d.detailed and d.live is None:
        lag = " (the live consumer has not applied the stream yet)" if kind == "read_model_lag" else ""
        what = "is missing" + lag
    elif d.detailed and d.replayed is None:
        what = "exists but no event produces it"
    cols = f" ({', '.join(d.columns[:8])})" if d.columns and d.live is not None and d.replayed is not None else ""
    owner = f"{service} table " if service else ""
    positions = [e["position"] for e in d.events]
    where = f"; events {d.stream_id} at positions {positions[0]}..{positions[-1]}" if positions else ""
    order_id = None
    for side in (d.replayed, d.live):
        if side and isinstance(side.get("order_id"), str):
            order_id = side["order_id"]
            break
    return Found(kind, f"{d.table}:{d.key}", f"{owner}{d.table} row {d.key} {what}{cols}{where}", order_id,
                 {**d.as_dict(), **({"service": service} if service else {})})


def _overflow(kind: str, table: str, n: int) -> Found:
    return Found(kind, f"{table}:*", f"{table}: {n} more drifting rows (listed by key only up to {MAX_PER_KIND})",
                 None, {"table": table, "more": n})


def ledger_findings_to_found(findings: list[ledger.Finding]) -> list[Found]:
    per_kind: Counter[str] = Counter()
    out: list[Found] = []
    for f in findings:
        per_kind[f.kind] += 1
        if per_kind[f.kind] <= MAX_PER_KIND:
            out.append(Found(f.kind, f.key, f.summary, f.order_id, f.details))
    for kind, n in per_kind.items():
        if n > MAX_PER_KIND:
            out.append(Found(kind, "*", f"{n - MAX_PER_KIND} more {kind} findings (up to {MAX_PER_KIND} listed)",
                             None, {"more": n - MAX_PER_KIND}))
    return out
