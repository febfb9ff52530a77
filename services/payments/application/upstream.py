"""Ingesting upstream payment events (Stripe's event format) from the webhook, the
`payments.upstream` Kafka topic or a CSV import.

Each provider event becomes, in one append to the stream `upstream-stripe-<evt id>`:
the raw event as received (UpstreamEventReceived, the evidence) and, for a supported type,
its normalised fact. Both carry ids derived from the provider's event id (uuid5), so a
redelivery of the same event, by any channel and any number of times, is recognised by
the event store itself and changes nothing. Unknown types are stored and acknowledged,
never dropped.

`ingest` stores and applies one event in its own transaction (the webhook). `ingest_batch` does a
whole `payments.upstream` Kafka batch in one transaction: the events already stored are found in
one query, every new receipt and fact is appended in one append_many, and the new facts are
applied together (FactsHandler: application/batch.py), with the results of `ingest` one by one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.eventstore import EventStore, Metadata, NewEvent, WrongExpectedVersion
from services.payments.domain.upstream import (
    PROVIDER,
    MalformedEvent,
    StripeEvent,
    event_uuid,
    normalise,
    parse_event,
    received_event,
)
from services.payments.domain.upstream_events import ReceivedVia, UpstreamEventReceived, UpstreamFact

MAX_ATTEMPTS = 5
log = logging.getLogger("closeloop.payments")


def upstream_stream_id(provider_event_id: str) -> str:
    return f"upstream-{PROVIDER}-{provider_event_id}"


@dataclass(frozen=True)
class IngestOutcome:
    provider_event_id: str
    type: str
    duplicate: bool
    fact: UpstreamFact | None
    stream_id: str

    def as_response(self) -> dict[str, Any]:
        return {"received": True, "id": self.provider_event_id, "type": self.type, "duplicate": self.duplicate,
                "fact": self.fact.event_type if self.fact else None}


FactHandler = Callable[[asyncpg.Connection, UpstreamFact, Any], Awaitable[str]]
# (connection, the batch's facts [(fact, fact event id)] in batch order, store) -> outcomes of the new
# facts. `store()` appends what is not stored yet and returns the new facts and event id -> position;
# the handler calls it once, after taking its locks (application/service.py on_upstream_facts).
StoreStep = Callable[[], Awaitable[tuple[list[tuple[UpstreamFact, uuid.UUID]], dict[Any, int]]]]
FactsHandler = Callable[[asyncpg.Connection, list[tuple[UpstreamFact, uuid.UUID]], StoreStep],
                        Awaitable[list[str]]]


@dataclass(frozen=True)
class _Prepared:
    event: StripeEvent
    received: UpstreamEventReceived
    fact: UpstreamFact | None
    meta: Metadata
    stream_id: str
    received_id: uuid.UUID
    fact_id: uuid.UUID
    received_data: dict[str, Any]  # received.to_data()


def _received_data(received: UpstreamEventReceived) -> dict[str, Any]:
    """received.to_data() for a payload decoded from JSON text: the payload is JSON already and is stored
    as received, so it is not dumped once more (that walk over every value was ~18 µs a message)."""
    rest = received.model_dump(mode="json", exclude={"payload"})
    return {name: received.payload if name == "payload" else rest[name] for name in type(received).model_fields}


class _NoCyclicGC:
    """Python's cyclic garbage collector off while batches run (re-entrant, shared by concurrent batches).

    A batch keeps every parsed event, fact and aggregate alive until it commits, so the collector, set off
    by those allocations, walked them again and again: about a third of the CPU of a batch (~300 µs a
    message, measured). Reference counting still frees everything else at once; what the batch, or another
    task meanwhile, leaves in reference cycles is collected after the last batch ends (the collector is
    on again and runs at its next threshold)."""

    active = 0
    was_enabled = False

    def __enter__(self) -> None:
        if _NoCyclicGC.active == 0:
            _NoCyclicGC.was_enabled = gc.isenabled()
            gc.disable()
        _NoCyclicGC.active += 1

    def __exit__(self, *_: object) -> None:
        _NoCyclicGC.active -= 1
        if _NoCyclicGC.active == 0 and _NoCyclicGC.was_enabled:
            gc.enable()


class UpstreamIngestor:
    def __init__(self, store: EventStore, clock: Callable[[], datetime], on_fact: FactHandler | None = None,
                 on_facts: FactsHandler | None = None) -> None:
        self.store = store
        self.clock = clock
        self.on_fact = on_fact
        self.on_facts = on_facts
        self.outcomes: dict[str, int] = {}

    def _count(self, outcome: str) -> None:
        kind = outcome.split(":")[0]
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1

    def _prepare(self, raw: bytes | str | Mapping[str, Any], via: ReceivedVia, signature_verified: bool) -> _Prepared:
        event = parse_event(raw)
        received = received_event(event, via=via, signature_verified=signature_verified, received_at=self.clock())
        fact = normalise(event)
        order_id = fact.order_ref.order_id if fact is not None else None
        meta = Metadata(actor=f"{PROVIDER}:{via.value}", role="service",
                        correlation_id=f"order-{order_id}" if order_id else event.id)
        data = _received_data(received) if isinstance(raw, bytes | bytearray | memoryview | str) else received.to_data()
        return _Prepared(event, received, fact, meta, upstream_stream_id(event.id), event_uuid(PROVIDER, event.id),
                         event_uuid(PROVIDER, event.id, "fact"), data)

    async def ingest_batch(self, raws: Sequence[bytes | str | Mapping[str, Any]], *, via: ReceivedVia,
                           signature_verified: bool = False) -> list[IngestOutcome | MalformedEvent]:
        """Store and apply a batch of provider events (in the order given) in one transaction. Returns,
        per event, its outcome, or the MalformedEvent that kept it out (nothing stored for it); an
        event given twice is a duplicate the second time. A concurrent writer of the same events (the
        webhook) or a deadlock makes the batch run again, which then finds them stored."""
        with _NoCyclicGC():
            return await self._ingest_batch(raws, via=via, signature_verified=signature_verified)

    async def _ingest_batch(self, raws: Sequence[bytes | str | Mapping[str, Any]], *, via: ReceivedVia,
                            signature_verified: bool) -> list[IngestOutcome | MalformedEvent]:
        results: list[IngestOutcome | MalformedEvent | None] = [None] * len(raws)
        prepared: dict[str, _Prepared] = {}
        slots: list[tuple[int, str]] = []
        for i, raw in enumerate(raws):
            try:
                p = self._prepare(raw, via, signature_verified)
            except MalformedEvent as exc:
                results[i] = exc
                continue
            prepared.setdefault(p.event.id, p)
            slots.append((i, p.event.id))
        fresh: set[str] = set()
        attempt = 0
        while prepared:
            attempt += 1
            try:
                fresh = await self._store_batch(list(prepared.values()))
                break
            except (WrongExpectedVersion, asyncpg.exceptions.DeadlockDetectedError) as exc:
                if attempt >= MAX_ATTEMPTS:
                    raise
                log.info("upstream batch of %d events runs again (%d): %s", len(prepared), attempt,
                         type(exc).__name__)
                await asyncio.sleep(0.01 * attempt)
        first: set[str] = set()
        for i, eid in slots:
            p = prepared[eid]
            duplicate = eid in first or eid not in fresh
            first.add(eid)
            results[i] = IngestOutcome(eid, p.event.type, duplicate, p.fact, p.stream_id)
        return [r for r in results if r is not None]

    async def _store_batch(self, batch: list[_Prepared]) -> set[str]:
        fresh: set[str] = set()
        async with self.store.transaction() as conn:
            async def store() -> tuple[list[tuple[UpstreamFact, uuid.UUID]], dict[Any, int]]:
                """Append what is not stored yet (one query, one append_many): the new facts and positions."""
                ids = [p.received_id for p in batch] + [p.fact_id for p in batch if p.fact is not None]
                stored = {r["event_id"] for r in await conn.fetch(
                    "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])", ids)}
                appends: list[tuple[str, int | None, list[NewEvent]]] = []
                new_facts: list[tuple[UpstreamFact, uuid.UUID]] = []
                for p in batch:
                    events = []
                    if p.received_id not in stored:
                        events.append(NewEvent(p.received.event_type, p.received_data, p.meta,
                                               p.received.schema_version, event_id=p.received_id))
                    if p.fact is not None and p.fact_id not in stored:
                        # An event stored before its type was supported (received only) gets its fact now.
                        events.append(NewEvent(p.fact.event_type, p.fact.to_data(), p.meta, p.fact.schema_version,
                                               event_id=p.fact_id))
                        new_facts.append((p.fact, p.fact_id))
                    if events:
                        appends.append((p.stream_id, None, events))
                        fresh.add(p.event.id)
                results = await self.store.append_many(appends, conn=conn)
                return new_facts, {eid: pos for r in results
                                   for eid, pos in zip(r.event_ids, r.global_positions, strict=True)}

            if self.on_facts is not None:
                candidates = [(p.fact, p.fact_id) for p in batch if p.fact is not None]
                for outcome in await self.on_facts(conn, candidates, store):
                    self._count(outcome)
            else:
                new_facts, _ = await store()
                for fact, fact_id in new_facts:
                    if self.on_fact is not None:
                        self._count(await self.on_fact(conn, fact, fact_id))
        return fresh

    async def ingest(self, raw: bytes | str | Mapping[str, Any], *, via: ReceivedVia,
                     signature_verified: bool) -> IngestOutcome:
        """Store one provider event (and its fact) and apply the fact, in one transaction: a batch of
        one, so that the webhook and the topic take their locks the same way, before writing.
        Raises MalformedEvent (nothing stored) for a body that is not a usable Stripe event."""
        [result] = await self.ingest_batch([raw], via=via, signature_verified=signature_verified)
        if isinstance(result, MalformedEvent):
            raise result
        return result

    async def ingest_unbatched(self, raw: bytes | str | Mapping[str, Any], *, via: ReceivedVia,
                               signature_verified: bool) -> IngestOutcome:
        """The per-event path without the batch's set-based steps: two appends, then `on_fact`
        (the rules one fact at a time, as a batch falls back to after a refusal). What any batch
        must store is what this stores event after event (tests/integration/test_upstream_batch.py)."""
        p = self._prepare(raw, via, signature_verified)
        event, received, fact, meta, stream_id, fact_id = p.event, p.received, p.fact, p.meta, p.stream_id, p.fact_id
        attempt = 0
        while True:
            attempt += 1
            try:
                duplicate = await self._store(stream_id, received, fact, meta, event.id, fact_id)
                return IngestOutcome(event.id, event.type, duplicate, fact, stream_id)
            except WrongExpectedVersion:
                # The same provider event arriving at once by two channels (the webhook and the topic,
                # or two webhook retries): the loser rolls back; run again, it then finds the event
                # stored and reports a duplicate.
                if attempt >= MAX_ATTEMPTS:
                    raise

    async def _store(self, stream_id: str, received: UpstreamEventReceived, fact: UpstreamFact | None,
                     meta: Metadata, provider_event_id: str, fact_id: uuid.UUID) -> bool:
        async with self.store.transaction() as conn:
            # Two appends, so that an event stored before its type was supported (received
            # only) gets its fact added on a redelivery instead of clashing with it.
            first = await self.store.append(stream_id, None, [NewEvent(
                received.event_type, received.to_data(), meta, received.schema_version,
                event_id=event_uuid(PROVIDER, provider_event_id))], conn=conn)
            duplicate = first.replayed
            if fact is not None:
                second = await self.store.append(stream_id, None, [NewEvent(
                    fact.event_type, fact.to_data(), meta, fact.schema_version, event_id=fact_id)], conn=conn)
                duplicate = duplicate and second.replayed
                if not second.replayed and self.on_fact is not None:
                    self._count(await self.on_fact(conn, fact, fact_id))
        return duplicate
