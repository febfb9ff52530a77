"""Set-based application of a batch of upstream facts (a `payments.upstream` Kafka batch) in one
database transaction, with the same results as applying them one by one, in batch order.

One by one, a fact costs about fifteen round trips (its transaction, two appends, the index of
charge / PaymentIntent ids, a lock per id and per order, the aggregate loads, the parked facts, the
Kolable read model, the flush). For a batch, `UpstreamBatch` does these once: the index entries of
every fact in one INSERT, every lock in one statement per kind (sorted), the aggregates of every
order in one read, the parked facts in one query, and the rows written in a few statements at the
end. The per-fact rules still run fact after fact (services/payments/application/service.py
`on_upstream_fact`, kolable.py `on_upstream_fact`); where they would ask the database, they ask this
batch, which answers as the database would have at that point of a one-by-one run:

- the index: an id learned by an earlier fact of the batch is visible to the later ones only;
- parked facts: a fact parked earlier in the batch is released by a later fact that learns its id;
  rows are written (and released rows deleted) at the end;
- aggregates: one BatchUnitOfWork shared by the batch; each event keeps the metadata (correlation,
  causation) of the fact that recorded it, and everything is appended in one append_many.

Locks, in the order the one-by-one path takes them (so that neither it, the webhook, nor the
orders consumer can deadlock with a batch on them): provider payment ids (after the index insert,
and before the index is read: the race `_lock_refs` prevents stays prevented), then orders, then
the shared Kolable import lock and the Kolable students. A lock a rule needs that the batch did not
foresee is taken when it is needed (still re-entrant, still correct; PostgreSQL would resolve a
deadlock by aborting one side, which retries).

A fact the rules refuse (DomainError) aborts the fast path: the caller rolls back to a savepoint and
applies the batch's facts one by one, each in its savepoint, as before (bootstrap.wire).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from libs.application.unit_of_work import CommandContext, UnitOfWork
from libs.domain.aggregate import Aggregate
from libs.domain.events import registry
from libs.eventstore import AppendResult, EventStore, Metadata, NewEvent
from services.payments.domain.upstream_events import UpstreamFact

LOCK_MANY = "SELECT count(pg_advisory_xact_lock(hashtextextended(k, 0))) FROM unnest($1::text[]) AS k"


async def lock_many(conn: asyncpg.Connection, keys: Iterable[str], held: set[str]) -> None:
    """Advisory transaction locks on `keys` not held yet, in one statement, in the order given."""
    todo = [k for k in dict.fromkeys(keys) if k not in held]
    if not todo:
        return
    if len(todo) == 1:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", todo[0])
    else:
        await conn.fetchval(LOCK_MANY, todo)
    held.update(todo)


class BatchUnitOfWork(UnitOfWork):
    """One unit of work for a batch of facts: aggregates are loaded once and appended once, and every
    event keeps the metadata of the fact (`use(ctx)`) during which it was recorded."""

    def __init__(self, store: EventStore, conn: asyncpg.Connection, ctx: CommandContext) -> None:
        super().__init__(store, conn, ctx)
        # stream id -> (version when marked, [(pending count up to which, metadata)])
        self._marks: dict[str, tuple[int, list[tuple[int, Metadata]]]] = {}
        # Aggregates handed out since the last use(): only they can have recorded events meanwhile
        # (the rules keep no aggregate from one fact to the next; flush() checks every one anyway).
        self._handed: set[str] = set()

    async def load_many(self, wanted: list[tuple[type[Aggregate], str]]) -> list[Aggregate]:
        found = await super().load_many(wanted)
        self._handed.update(a.stream_id for a in found)
        return found

    def add(self, agg: Aggregate) -> None:
        super().add(agg)
        self._handed.add(agg.stream_id)

    def use(self, ctx: CommandContext) -> None:
        """The next events are recorded for `ctx` (the next fact)."""
        self._seal(self._handed)
        self._handed = set()
        self.ctx = ctx

    def _seal(self, stream_ids: Iterable[str]) -> None:
        meta: Metadata | None = None
        for sid in stream_ids:
            agg = self._tracked[sid]
            n = len(agg._pending)
            version, marks = self._marks.get(sid, (agg.version, []))
            if version != agg.version:  # saved meanwhile (e.g. a Dispute appends itself)
                marks = []
            done = marks[-1][0] if marks else 0
            if n > done:
                meta = meta or self.ctx.metadata()
                marks.append((n, meta))
            if marks:
                self._marks[sid] = (agg.version, marks)

    def _metadata_of(self, sid: str, index: int) -> Metadata:
        for end, meta in self._marks[sid][1]:
            if index < end:
                return meta
        raise AssertionError(f"no metadata for event {index} of {sid}")

    async def flush(self) -> list[AppendResult]:
        self._seal(self._tracked)
        dirty = [agg for agg in self._tracked.values() if agg.pending]
        if not dirty:
            return self.appended
        results = await self.store.append_many(
            [(agg.stream_id, agg.version, [NewEvent(e.event_type, e.to_data(), self._metadata_of(agg.stream_id, i),
                                                    e.schema_version)
                                           for i, e in enumerate(agg.pending)]) for agg in dirty],
            conn=self.conn)
        for agg in dirty:
            agg.mark_saved()
        self._marks.clear()
        self.appended.extend(results)
        return self.appended


@dataclass
class ParkedFact:
    position: int  # the fact event's global position: released facts run in stored order
    fact_event_id: Any
    fact: UpstreamFact | None
    key: str
    reason: str


@dataclass
class UpstreamBatch:
    """What the database would answer a one-by-one run, for one batch (see the module docstring)."""

    positions: dict[Any, int]  # fact event id -> global position, for the batch's facts
    locks: set[str] = field(default_factory=set)
    refs: dict[str, str] = field(default_factory=dict)  # the index as visible now (in batch order)
    ours: dict[str, str] = field(default_factory=dict)  # entries this batch inserted, not visible yet
    parked: dict[Any, ParkedFact] = field(default_factory=dict)  # parked in this batch, not released
    stored_parked: dict[str, list[ParkedFact]] = field(default_factory=dict)  # key -> rows parked before
    released: set[Any] = field(default_factory=set)  # stored rows released by this batch (to delete)
    kolable: Any = None  # the Kolable reconciliation's batch state (kolable.KolableBatch)

    # --- the index ------------------------------------------------------------------------
    def learn(self, fact: UpstreamFact) -> list[str]:
        """The fact's index entries that this batch inserted and that become visible now (learned)."""
        learned = []
        for pid in fact.order_ref.index_entries():
            if pid in self.ours:
                self.refs[pid] = self.ours.pop(pid)
                learned.append(pid)
        return sorted(learned)

    def order_of(self, ids: list[str]) -> str | None:
        return next((self.refs[i] for i in ids if i in self.refs), None)

    # --- parked facts ---------------------------------------------------------------------
    def park(self, fact_event_id: Any, fact: UpstreamFact | None, key: str, reason: str) -> None:
        if fact_event_id in self.parked:
            return  # ON CONFLICT DO NOTHING
        self.parked[fact_event_id] = ParkedFact(self.positions.get(fact_event_id, 0), fact_event_id, fact, key,
                                                reason)

    def release(self, keys: list[str]) -> list[ParkedFact]:
        """The parked facts waiting for one of `keys` (removed), in stored order."""
        wanted = set(keys)
        out = [p for p in self.parked.values() if p.key in wanted]
        for p in out:
            del self.parked[p.fact_event_id]
        for key in keys:
            for p in self.stored_parked.pop(key, []):
                self.released.add(p.fact_event_id)
                out.append(p)
        return sorted(out, key=lambda p: p.position)

    async def load_stored_parked(self, conn: asyncpg.Connection, keys: list[str]) -> None:
        if not keys:
            return
        rows = await conn.fetch(
            """SELECT p.order_key, p.fact_event_id, p.reason, e.global_position, e.event_type, e.schema_version, e.data
                 FROM payments_parked_facts p LEFT JOIN events e ON e.event_id = p.fact_event_id
                WHERE p.order_key = ANY($1::text[])""", keys)
        for r in rows:
            fact = None
            if r["event_type"] is not None:
                decoded = registry.decode(r["event_type"], r["schema_version"], r["data"])
                fact = decoded if isinstance(decoded, UpstreamFact) else None
            self.stored_parked.setdefault(r["order_key"], []).append(
                ParkedFact(r["global_position"] or 0, r["fact_event_id"], fact, r["order_key"], r["reason"]))

    async def save(self, conn: asyncpg.Connection) -> None:
        """Write what the batch changed in the parking (the rest is written by its owners)."""
        if self.released:
            await conn.execute("DELETE FROM payments_parked_facts WHERE fact_event_id = ANY($1::uuid[])",
                               list(self.released))
        if self.parked:
            rows = list(self.parked.values())
            await conn.execute(
                """INSERT INTO payments_parked_facts (fact_event_id, order_key, reason)
                   SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING""",
                [p.fact_event_id for p in rows], [p.key for p in rows], [p.reason for p in rows])
