"""Ingesting upstream payment events (Stripe's event format) from the webhook, the
`payments.upstream` Kafka topic or a CSV import.

Each provider event becomes, in one append to the stream `upstream-stripe-<evt id>`:
the raw event as received (UpstreamEventReceived, the evidence) and, for a supported type,
its normalised fact. Both carry ids derived from the provider's event id (uuid5), so a
redelivery of the same event, by any channel and any number of times, is recognised by
the event store itself and changes nothing. Unknown types are stored and acknowledged,
never dropped.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.eventstore import EventStore, Metadata, NewEvent, WrongExpectedVersion
from services.payments.domain.upstream import PROVIDER, event_uuid, normalise, parse_event, received_event
from services.payments.domain.upstream_events import ReceivedVia, UpstreamEventReceived, UpstreamFact

MAX_ATTEMPTS = 5


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


class UpstreamIngestor:
    def __init__(self, store: EventStore, clock: Callable[[], datetime], on_fact: FactHandler | None = None) -> None:
        self.store = store
        self.clock = clock
        self.on_fact = on_fact
        self.outcomes: dict[str, int] = {}

    async def ingest(self, raw: bytes | str | Mapping[str, Any], *, via: ReceivedVia,
                     signature_verified: bool) -> IngestOutcome:
        """Store one provider event (and its fact) and apply the fact, in one transaction.
        Raises MalformedEvent (nothing stored) for a body that is not a usable Stripe event."""
        event = parse_event(raw)
        received = received_event(event, via=via, signature_verified=signature_verified, received_at=self.clock())
        fact = normalise(event)
        order_id = fact.order_ref.order_id if fact is not None else None
        meta = Metadata(actor=f"{PROVIDER}:{via.value}", role="service",
                        correlation_id=f"order-{order_id}" if order_id else event.id)
        stream_id = upstream_stream_id(event.id)
        fact_id = event_uuid(PROVIDER, event.id, "fact")
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
                    outcome = await self.on_fact(conn, fact, fact_id)
                    self.outcomes[outcome.split(":")[0]] = self.outcomes.get(outcome.split(":")[0], 0) + 1
        return duplicate
