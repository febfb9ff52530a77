"""Kolable refund/re-buy reconciliation use cases (war-room seed 000): import, scorecard, decide.

The rules live in `services.payments.domain.kolable`; this module loads and saves:

- **import**: the file is parsed (`parse_export`); its SHA-256 is the import id and the stream
  `kolable_import-{sha256}` gets one KolableImportCompleted, appended with expected version 0, so
  the same file imported again returns the stored result and changes nothing. Each good row is
  recorded on its KolableOrder (`kolable-{order_id}`) unless identical to the latest one; then every
  order of the students touched by a changed row (their old and new student) is classified again,
  because a new row can be the re-buy of an older order, and a classification that changed is
  recorded. Imports run one at a time (a transaction-scoped advisory lock): two files adding orders
  of the same student concurrently would otherwise each classify without the other's order.
- **read model**: `kolable_orders` (classification and latest decision per order) and
  `kolable_students` (student -> orders, for re-buy detection), written in the same transaction as
  the events; the scorecard is computed from it with the domain's `scorecard()`.
- **decide**: the approver's pursue / close / escalate, one KolableRefundDecided event each.

- **provider facts**: the upstream routing (service.py) hands over every Stripe fact of a Kolable
  order (its payment metadata names a `course_id`, or the order is already known here). The fact
  is copied to `kolable_provider_facts` and the order's student group is classified again, in the
  transaction that stored the fact. An order the export does not list takes its record (student,
  course, amount, time) from the payment metadata (domain/kolable/provider.py); per family the
  provider's facts replace the export's (classify.py). A re-buy can therefore be recognised from
  the Stripe stream alone, or from an export and the stream together.

Concurrency: an import holds one exclusive advisory lock; classifying from a provider fact holds
it shared, then a lock per student, so two facts of one student's orders (an order and its re-buy)
classify one after the other and never append to the same KolableOrder stream at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg

from libs.application.unit_of_work import CommandContext, UnitOfWork, execute
from libs.domain.aggregate import Aggregate
from libs.domain.errors import Conflict, DomainError
from libs.domain.events import DomainEvent, registry
from libs.eventstore import EventStore
from services.payments.domain.kolable import (
    KolableClassification,
    KolableImportCompleted,
    KolableOrder,
    RefundDecision,
    classify,
    parse_export,
    scorecard,
)
from services.payments.domain.kolable.classify import OrderRecord, PaymentFact, facts_from_row
from services.payments.domain.kolable.decisions import DECIDE_ROLES, IMPORT_ROLES, MARK_ROLES, check_role
from services.payments.domain.kolable.events import IMPORT_STREAM_CATEGORY
from services.payments.domain.kolable.provider import STUDENT_KEY, belongs_to_kolable, provider_inputs
from services.payments.domain.upstream_events import UpstreamFact

__all__ = ["InvalidExport", "KolableImport", "KolableService", "import_report", "student_key"]

IMPORT_LOCK = "kolable-import"


def utcnow() -> datetime:
    return datetime.now(UTC)


def student_key(student_id: str) -> str:
    """How students are matched: trimmed and case-folded (ids are often emails), as the classifier does."""
    return student_id.strip().casefold()


class InvalidExport(DomainError):
    """The file as a whole cannot be imported (type, encoding, missing columns): nothing stored (HTTP 422)."""

    code = "invalid_export"


class KolableImport(Aggregate):
    """One imported file (`kolable_import-{sha256}`): written once, when the import completes."""

    category: ClassVar[str] = IMPORT_STREAM_CATEGORY

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.completed: KolableImportCompleted | None = None

    def complete(self, event: KolableImportCompleted) -> None:
        if self.completed is not None:
            raise Conflict(f"import {self.id} was already completed", import_id=self.id)
        self._record(event)

    def apply(self, event: DomainEvent) -> None:
        if not isinstance(event, KolableImportCompleted):
            raise TypeError(f"KolableImport cannot apply {type(event).__name__}")
        self.completed = event


def import_report(event: KolableImportCompleted) -> dict[str, Any]:
    """The import's response, from its KolableImportCompleted event only (so a re-import answers the same)."""
    errors = [e.model_dump(mode="json") for e in event.errors]
    return {
        "import_id": event.import_id,
        "format": event.format,
        "rows": event.rows,
        "accepted": event.accepted,
        "unchanged": event.unchanged,
        "rejected": event.rejected,
        "errors": [e for e in errors if e["scope"] == "row"],
        "file_errors": [e for e in errors if e["scope"] == "file"],
        "errors_total": event.errors_total,
    }


async def _provider_facts(conn: asyncpg.Connection, order_ids: list[str]) -> dict[str, list[UpstreamFact]]:
    """The provider facts recorded for these orders, decoded."""
    out: dict[str, list[UpstreamFact]] = {}
    for row in await conn.fetch(
            "SELECT order_id, event_type, schema_version, data FROM kolable_provider_facts"
            " WHERE order_id = ANY($1::text[])", order_ids):
        fact = registry.decode(row["event_type"], row["schema_version"], row["data"])
        assert isinstance(fact, UpstreamFact)
        out.setdefault(row["order_id"], []).append(fact)
    return out


def _decision_json(order: KolableOrder) -> dict[str, Any] | None:
    current = order.current_decision
    return current.model_dump(mode="json") if current else None


@dataclass
class KolableService:
    store: EventStore
    clock: Callable[[], datetime] = utcnow

    # --- import ---------------------------------------------------------------------------

    async def import_export(self, data: bytes, filename_or_content_type: str | None,
                            ctx: CommandContext) -> dict[str, Any]:
        """Import an export file; the same file again returns the first result and changes nothing."""
        check_role(ctx.role, IMPORT_ROLES, "import orders and payments")
        result = parse_export(data, filename_or_content_type)
        if result.file_errors and not result.rows and not result.rejected:
            raise InvalidExport(
                "the file cannot be imported: " + "; ".join(f"{e.field}: {e.reason}" for e in result.file_errors),
                import_id=result.import_id, format=result.format,
                file_errors=[e.model_dump(mode="json") for e in result.file_errors])

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            await uow.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", IMPORT_LOCK)
            imp = await uow.load(KolableImport, result.import_id)
            if imp.completed is not None:
                return import_report(imp.completed)
            at = self.clock()
            loaded = await uow.load_many([(KolableOrder, r.order_id) for r in result.rows])
            orders: dict[str, KolableOrder] = {o.id: o for o in loaded if isinstance(o, KolableOrder)}
            students: set[str] = set()
            changed: list[KolableOrder] = []
            unchanged = 0
            for imported in result.rows:
                order = orders[imported.order_id]
                before = order.row.student_id if order.row else None
                if not order.record_import(imported, import_id=result.import_id, role=ctx.role, at=at):
                    unchanged += 1
                    continue
                changed.append(order)
                students.update(student_key(s) for s in (before, imported.row.student_id) if s)
            if changed:
                await self._reclassify(uow, orders, changed, students, at)
            completed = result.completed_event(unchanged=unchanged, actor=ctx.actor, at=at,
                                               source_name=filename_or_content_type or "")
            imp.complete(completed)
            return import_report(completed)

        return (await execute(self.store, ctx, "kolable-import", fn)).response

    async def _reclassify(self, uow: UnitOfWork, orders: dict[str, KolableOrder], changed: list[KolableOrder],
                          students: set[str], at: datetime) -> None:
        """Classify again the changed orders and every order of their students; save what changed."""
        others = await uow.conn.fetch(
            "SELECT order_id FROM kolable_students WHERE student_key = ANY($1::text[])", sorted(students))
        group: dict[str, KolableOrder] = {o.id: o for o in changed}
        missing = sorted({r["order_id"] for r in others} - set(group))
        for agg in await uow.load_many([(KolableOrder, oid) for oid in missing]):
            assert isinstance(agg, KolableOrder)
            group[agg.id] = agg
        provider = await _provider_facts(uow.conn, sorted(group))
        records: dict[str, OrderRecord] = {}
        facts: list[PaymentFact] = []
        for member in group.values():
            provider_record, provider_facts = provider_inputs(member.id, provider.get(member.id, []))
            record = OrderRecord.from_row(member.row) if member.row is not None else provider_record
            if record is not None:
                records[member.id] = record
            if member.row is not None:
                facts.extend(facts_from_row(member.row))
            facts.extend(provider_facts)
        touched: dict[str, KolableOrder] = {o.id: o for o in changed}
        for classification in classify(list(records.values()), facts):
            order = group.get(classification.order_id)
            if order is not None and order.record_classification(classification, at):
                touched[order.id] = order
        await self._save_read_model(uow, touched.values(), changed, records, at)

    async def _save_read_model(self, uow: UnitOfWork, touched: Iterable[KolableOrder],
                               changed: list[KolableOrder], records: dict[str, OrderRecord], at: datetime) -> None:
        def record(o: KolableOrder) -> OrderRecord | None:
            return records.get(o.id)

        rows = [(o.id, r.student_id if (r := record(o)) else None, r.course_id if r else None,
                 o.status.value if o.status else None,
                 o.classification.model_dump(mode="json") if o.classification else None, _decision_json(o), at)
                for o in touched]
        await uow.conn.executemany(
            """INSERT INTO kolable_orders (order_id, student_id, course_id, status, classification, decision,
                                           updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (order_id) DO UPDATE SET student_id = EXCLUDED.student_id,
                   course_id = EXCLUDED.course_id, status = EXCLUDED.status,
                   classification = EXCLUDED.classification, decision = EXCLUDED.decision,
                   updated_at = EXCLUDED.updated_at""", rows)
        ids = [o.id for o in changed]
        await uow.conn.execute("DELETE FROM kolable_students WHERE order_id = ANY($1::text[])", ids)
        await uow.conn.executemany(
            "INSERT INTO kolable_students (student_key, order_id) VALUES ($1, $2)",
            [(student_key(r.student_id), o.id) for o in changed if (r := record(o)) and r.student_id])

    # --- provider facts (Stripe) -----------------------------------------------------------

    async def owns(self, conn: asyncpg.Connection, order_id: str, fact: UpstreamFact) -> bool:
        """Whether a provider fact concerns a Kolable order: its payment metadata names a course, or
        the order is known here already (a refund or dispute names only the charge)."""
        if belongs_to_kolable(fact):
            return True
        return bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM kolable_orders WHERE order_id = $1)"
            " OR EXISTS (SELECT 1 FROM kolable_provider_facts WHERE order_id = $1)", order_id))

    async def on_upstream_fact(self, uow: UnitOfWork, fact: UpstreamFact, order_id: str, fact_event_id: Any) -> str:
        """Record a provider fact of a Kolable order and classify the student's orders again."""
        conn = uow.conn
        await conn.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", IMPORT_LOCK)
        stored = await conn.fetchval(
            """INSERT INTO kolable_provider_facts (fact_event_id, order_id, event_type, schema_version, data,
                                                   occurred_at)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (fact_event_id) DO NOTHING RETURNING 1""",
            fact_event_id, order_id, fact.event_type, fact.schema_version, fact.to_data(), fact.occurred_at)
        if not stored:
            return "kolable: already recorded"
        students = {r["student_key"] for r in await conn.fetch(
            "SELECT student_key FROM kolable_students WHERE order_id = $1", order_id)}
        named = (getattr(fact, "metadata", None) or {}).get(STUDENT_KEY, "").strip()
        if named:
            students.add(student_key(named))
        for key in sorted(students):  # sorted: two facts locking the same students never deadlock
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"kolable-student:{key}")
        order = await uow.load(KolableOrder, order_id)
        before = order.status
        await self._reclassify(uow, {order_id: order}, [order], students, self.clock())
        after = order.status.value if order.status else None
        return f"kolable: {before.value if before else 'new'} -> {after}"

    # --- scorecard ------------------------------------------------------------------------

    async def scorecard(self) -> dict[str, Any]:
        """The reconciliation scorecard over every imported order (from the read model)."""
        rows = await self.store.pool.fetch(
            "SELECT order_id, classification, decision FROM kolable_orders WHERE classification IS NOT NULL")
        classifications = [KolableClassification.model_validate(r["classification"]) for r in rows]
        decisions = {r["order_id"]: RefundDecision.model_validate(r["decision"]) for r in rows if r["decision"]}
        return scorecard(classifications, decisions).model_dump(mode="json")

    async def order_view(self, order_id: str) -> dict[str, Any]:
        """One order: classification, export row, provider facts, marks and decisions (404 if unknown)."""
        async with self.store.transaction() as conn:
            order = await UnitOfWork(self.store, conn, CommandContext("query", "service", "query")).get(
                KolableOrder, order_id)
            facts = (await _provider_facts(conn, [order_id])).get(order_id, [])
        return {
            "order_id": order.id, "status": order.status.value if order.status else None,
            "classification": order.classification.model_dump(mode="json") if order.classification else None,
            "export_row": order.row.model_dump(mode="json") if order.row else None,
            "import_id": order.import_id, "line": order.line,
            "provider_facts": [{"type": f.event_type, "provider_event_id": f.provider_event_id,
                                "upstream_type": f.upstream_type, "occurred_at": f.occurred_at.isoformat(),
                                "data_gap": f.data_gap}
                               for f in sorted(facts, key=lambda f: (f.occurred_at, f.provider_event_id))],
            "marks": [m.model_dump(mode="json") for m in order.marks],
            "decisions": [d.model_dump(mode="json") for d in order.decisions],
            "decision_in_force": d.model_dump(mode="json") if (d := order.decision_in_force) else None,
            "version": order.version,
        }

    async def mark(self, order_id: str, note: str, ctx: CommandContext) -> dict[str, Any]:
        """The reconciler marks a result on an order (Huber 補原因 / 標記核對結果); an event each."""
        check_role(ctx.role, MARK_ROLES, "mark reconciliation results")

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            order = await uow.get(KolableOrder, order_id)
            order.mark(note, actor=ctx.actor, role=ctx.role, at=self.clock())
            latest = order.marks[-1]
            return {"order_id": order.id, "status": order.status.value if order.status else None,
                    "mark": {"note": latest.note, "status_at_mark": latest.status_at_mark.value,
                             "actor": latest.actor, "at": latest.at.isoformat()}, "marks": len(order.marks)}

        return (await execute(self.store, ctx, "kolable-mark", fn)).response

    # --- decisions ------------------------------------------------------------------------

    async def decide(self, order_id: str, decision: str, reason: str, ctx: CommandContext) -> dict[str, Any]:
        """The approver decides pursue / close / escalate for one order; every decision is an event."""
        check_role(ctx.role, DECIDE_ROLES, "decide refunds (pursue / close / escalate)")

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            order = await uow.get(KolableOrder, order_id)
            before = len(order.decisions)
            taken = order.decide(decision, reason, actor=ctx.actor, role=ctx.role, at=self.clock())
            recorded = len(order.decisions) > before
            if recorded:
                await uow.conn.execute(
                    "UPDATE kolable_orders SET decision = $2, updated_at = $3 WHERE order_id = $1",
                    order.id, _decision_json(order), taken.decided_at)
            return {"order_id": order.id, "status": order.status.value if order.status else None,
                    "recorded": recorded, "decision": taken.model_dump(mode="json")}

        return (await execute(self.store, ctx, "kolable-decision", fn)).response
