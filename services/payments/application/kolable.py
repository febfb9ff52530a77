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


class KolableBatch:
    """The Kolable tables as a one-by-one run would see them during a batch of provider facts:
    read once (lazily for what was not foreseen), changed in memory, written at the end (save_batch).
    Only the facts' own path writes these rows meanwhile: imports wait for the shared import lock
    this batch holds, and the batch holds the locks of its orders and students."""

    def __init__(self, locks: set[str]) -> None:
        self.locks = locks
        self.known_orders: set[str] = set()
        self.checked: set[str] = set()
        self.facts: dict[str, list[UpstreamFact]] = {}  # order -> provider facts (as _provider_facts)
        self.fact_ids: set[Any] = set()
        self.loaded_facts: set[str] = set()
        self.by_order: dict[str, set[str]] = {}  # order -> student keys (kolable_students)
        self.by_student: dict[str, set[str]] = {}  # student key -> orders
        self.loaded_orders: set[str] = set()
        self.loaded_students: set[str] = set()
        self.changed_students: set[str] = set()  # orders whose kolable_students rows are rewritten
        self.new_facts: list[tuple[Any, ...]] = []
        self.rows: dict[str, tuple[Any, ...]] = {}  # kolable_orders rows to upsert, last one per order
        # order -> (number of its facts, provider_inputs of them): a fact classifies its student's orders
        # again, and the other orders' facts have not changed since (facts are only ever appended).
        self._inputs: dict[str, tuple[int, tuple[OrderRecord | None, list[PaymentFact]]]] = {}

    def provider_inputs(self, order_id: str) -> tuple[OrderRecord | None, list[PaymentFact]]:
        """provider_inputs(order_id, its provider facts), computed again only when it has a new fact."""
        facts = self.facts.get(order_id, [])
        known = self._inputs.get(order_id)
        if known is None or known[0] != len(facts):
            known = (len(facts), provider_inputs(order_id, facts))
            self._inputs[order_id] = known
        return known[1]

    async def lock(self, conn: asyncpg.Connection, keys: list[str], *, shared: bool = False) -> None:
        todo = [k for k in keys if ("shared:" + k if shared else k) not in self.locks]
        if not todo:
            return
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        await conn.fetchval(f"SELECT count({fn}(hashtextextended(k, 0))) FROM unnest($1::text[]) AS k", todo)
        self.locks.update(("shared:" + k if shared else k) for k in todo)

    async def known_many(self, conn: asyncpg.Connection, orders: list[str]) -> None:
        todo = [o for o in orders if o not in self.checked]
        if not todo:
            return
        rows = await conn.fetch(
            "SELECT order_id FROM kolable_orders WHERE order_id = ANY($1::text[])"
            " UNION SELECT order_id FROM kolable_provider_facts WHERE order_id = ANY($1::text[])", todo)
        self.known_orders.update(r["order_id"] for r in rows)
        self.checked.update(todo)

    async def known(self, conn: asyncpg.Connection, order_id: str) -> bool:
        await self.known_many(conn, [order_id])
        return order_id in self.known_orders

    def _add_pair(self, student: str, order: str) -> None:
        self.by_order.setdefault(order, set()).add(student)
        self.by_student.setdefault(student, set()).add(order)

    async def load_orders(self, conn: asyncpg.Connection, orders: list[str]) -> None:
        """All kolable_students rows of these orders."""
        todo = [o for o in orders if o not in self.loaded_orders]
        if not todo:
            return
        for r in await conn.fetch("SELECT student_key, order_id FROM kolable_students WHERE order_id = ANY($1::text[])",
                                  todo):
            if r["order_id"] not in self.changed_students:
                self._add_pair(r["student_key"], r["order_id"])
        self.loaded_orders.update(todo)

    async def load_students(self, conn: asyncpg.Connection, students: list[str]) -> None:
        """Lock these students (sorted, after the shared import lock) and read all their rows."""
        todo = [s for s in students if s not in self.loaded_students]
        if not todo:
            return
        await self.lock(conn, [IMPORT_LOCK], shared=True)
        await self.lock(conn, [f"kolable-student:{s}" for s in todo])
        for r in await conn.fetch(
                "SELECT student_key, order_id FROM kolable_students WHERE student_key = ANY($1::text[])", todo):
            if r["order_id"] not in self.changed_students:
                self._add_pair(r["student_key"], r["order_id"])
        self.loaded_students.update(todo)

    async def load_facts(self, conn: asyncpg.Connection, orders: list[str]) -> None:
        todo = [o for o in orders if o not in self.loaded_facts]
        if not todo:
            return
        for o, facts in (await _provider_facts_with_ids(conn, todo)).items():
            for fact_event_id, fact in facts:
                self.fact_ids.add(fact_event_id)
                self.facts.setdefault(o, []).append(fact)
        self.loaded_facts.update(todo)

    def students_of(self, order: str) -> set[str]:
        return self.by_order.get(order, set())

    def orders_of(self, student: str) -> set[str]:
        return self.by_student.get(student, set())

    def record_fact(self, order_id: str, fact_event_id: Any, fact: UpstreamFact) -> bool:
        if fact_event_id in self.fact_ids:
            return False
        self.fact_ids.add(fact_event_id)
        self.facts.setdefault(order_id, []).append(fact)
        self.known_orders.add(order_id)
        self.new_facts.append((fact_event_id, order_id, fact.event_type, fact.schema_version, fact.to_data(),
                               fact.occurred_at))
        return True

    def set_students(self, order_id: str, students: list[str]) -> None:
        """The order's kolable_students rows are now exactly `students` (as _save_read_model writes them)."""
        for s in self.by_order.pop(order_id, set()):
            self.by_student.get(s, set()).discard(order_id)
        for s in students:
            self._add_pair(s, order_id)
        self.changed_students.add(order_id)


async def _provider_facts_with_ids(conn: asyncpg.Connection,
                                   order_ids: list[str]) -> dict[str, list[tuple[Any, UpstreamFact]]]:
    out: dict[str, list[tuple[Any, UpstreamFact]]] = {}
    for row in await conn.fetch(
            "SELECT fact_event_id, order_id, event_type, schema_version, data FROM kolable_provider_facts"
            " WHERE order_id = ANY($1::text[])", order_ids):
        fact = registry.decode(row["event_type"], row["schema_version"], row["data"])
        assert isinstance(fact, UpstreamFact)
        out.setdefault(row["order_id"], []).append((row["fact_event_id"], fact))
    return out


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

    async def owns(self, conn: asyncpg.Connection, order_id: str, fact: UpstreamFact, batch: Any = None) -> bool:
        """Whether a provider fact concerns a Kolable order: its payment metadata names a course, or
        the order is known here already (a refund or dispute names only the charge)."""
        if belongs_to_kolable(fact):
            return True
        if batch is not None and batch.kolable is not None:
            return await batch.kolable.known(conn, order_id)
        return bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM kolable_orders WHERE order_id = $1)"
            " OR EXISTS (SELECT 1 FROM kolable_provider_facts WHERE order_id = $1)", order_id))

    async def on_upstream_fact(self, uow: UnitOfWork, fact: UpstreamFact, order_id: str, fact_event_id: Any,
                               batch: Any = None) -> str:
        """Record a provider fact of a Kolable order and classify the student's orders again."""
        if batch is not None and batch.kolable is not None:
            return await self._on_fact_in_batch(uow, batch.kolable, fact, order_id, fact_event_id)
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

    # --- provider facts, a batch at a time (application/batch.py) ---------------------------

    async def prepare_batch(self, uow: UnitOfWork, orders: list[str], facts: list[UpstreamFact],
                            locks: set[str]) -> KolableBatch:
        """Read, for a batch of facts of `orders` (already locked), what on_upstream_fact would read one
        by one: which orders are known here, their students (locked, sorted, under the shared import
        lock), the students' orders, their provider facts and KolableOrder aggregates."""
        kb = KolableBatch(locks)
        named = {student_key(n) for f in facts
                 if (n := ((getattr(f, "metadata", None) or {}).get(STUDENT_KEY) or "").strip())}
        if not orders:
            return kb
        await kb.known_many(uow.conn, orders)
        if not kb.known_orders and not any(belongs_to_kolable(f) for f in facts):
            return kb  # no Kolable order in this batch
        await kb.load_orders(uow.conn, orders)
        students = {s for o in orders for s in kb.students_of(o)} | named
        await kb.load_students(uow.conn, sorted(students))
        group = sorted({o for s in students for o in kb.orders_of(s)} | set(orders))
        await kb.load_facts(uow.conn, group)
        await uow.load_many([(KolableOrder, o) for o in group])
        return kb

    async def _on_fact_in_batch(self, uow: UnitOfWork, kb: KolableBatch, fact: UpstreamFact, order_id: str,
                                fact_event_id: Any) -> str:
        """on_upstream_fact for a fact of a batch: the same steps on the batch's copy of the tables."""
        conn = uow.conn
        await kb.lock(conn, [IMPORT_LOCK], shared=True)
        await kb.load_facts(conn, [order_id])
        if not kb.record_fact(order_id, fact_event_id, fact):
            return "kolable: already recorded"
        await kb.load_orders(conn, [order_id])
        students = set(kb.students_of(order_id))
        named = (getattr(fact, "metadata", None) or {}).get(STUDENT_KEY, "").strip()
        if named:
            students.add(student_key(named))
        await kb.load_students(conn, sorted(students))
        order = await uow.load(KolableOrder, order_id)
        before = order.status
        at = self.clock()
        group: dict[str, KolableOrder] = {order_id: order}
        missing = sorted({o for s in students for o in kb.orders_of(s)} - set(group))
        await kb.load_facts(conn, missing)
        for agg in await uow.load_many([(KolableOrder, oid) for oid in missing]):
            assert isinstance(agg, KolableOrder)
            group[agg.id] = agg
        records: dict[str, OrderRecord] = {}
        facts: list[PaymentFact] = []
        for member in group.values():
            provider_record, provider_facts = kb.provider_inputs(member.id)
            record = OrderRecord.from_row(member.row) if member.row is not None else provider_record
            if record is not None:
                records[member.id] = record
            if member.row is not None:
                facts.extend(facts_from_row(member.row))
            facts.extend(provider_facts)
        touched: dict[str, KolableOrder] = {order_id: order}
        for classification in classify(list(records.values()), facts):
            classified = group.get(classification.order_id)
            if classified is not None and classified.record_classification(classification, at):
                touched[classified.id] = classified
        for o in touched.values():
            r = records.get(o.id)
            kb.rows[o.id] = (o.id, r.student_id if r else None, r.course_id if r else None,
                             o.status.value if o.status else None,
                             o.classification.model_dump(mode="json") if o.classification else None,
                             _decision_json(o), at)
            kb.known_orders.add(o.id)
        r = records.get(order_id)
        kb.set_students(order_id, [student_key(r.student_id)] if r and r.student_id else [])
        after = order.status.value if order.status else None
        return f"kolable: {before.value if before else 'new'} -> {after}"

    async def save_batch(self, conn: asyncpg.Connection, kb: KolableBatch) -> None:
        """Write a batch's provider facts and read model rows (the final state of each row)."""
        if kb.new_facts:
            await conn.executemany(
                """INSERT INTO kolable_provider_facts (fact_event_id, order_id, event_type, schema_version, data,
                                                       occurred_at)
                   VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (fact_event_id) DO NOTHING""", kb.new_facts)
        if kb.rows:
            await conn.executemany(
                """INSERT INTO kolable_orders (order_id, student_id, course_id, status, classification, decision,
                                               updated_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (order_id) DO UPDATE SET student_id = EXCLUDED.student_id,
                       course_id = EXCLUDED.course_id, status = EXCLUDED.status,
                       classification = EXCLUDED.classification, decision = EXCLUDED.decision,
                       updated_at = EXCLUDED.updated_at""", list(kb.rows.values()))
        if kb.changed_students:
            ids = sorted(kb.changed_students)
            await conn.execute("DELETE FROM kolable_students WHERE order_id = ANY($1::text[])", ids)
            pairs = [(s, o) for o in ids for s in sorted(kb.by_order.get(o, ()))]
            if pairs:
                await conn.execute(
                    "INSERT INTO kolable_students (student_key, order_id) SELECT * FROM unnest($1::text[], $2::text[])",
                    [p[0] for p in pairs], [p[1] for p in pairs])

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
