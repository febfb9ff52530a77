"""Reacting to other services' events inside a consumer's transaction.

Each event is handled in its own savepoint by a function that loads aggregates through a
UnitOfWork and calls their commands; the effects commit together with the consumer's
processed-event records and offsets (libs.messaging.consumer). An event the domain refuses
(e.g. a payment for an order that was cancelled meanwhile) is logged and skipped without
holding up the batch; one that fails unexpectedly is dead-lettered (table dead_letters);
a concurrency conflict or a database outage aborts the batch, which the consumer retries.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

import asyncpg
from pydantic import ValidationError

from libs.application.unit_of_work import CommandContext, UnitOfWork
from libs.domain.errors import DomainError, NotFound
from libs.domain.events import DomainEvent, UnknownEventType, registry
from libs.eventstore import EventStore
from libs.messaging.consumer import TRANSIENT
from libs.messaging.deadletter import record_envelope
from libs.messaging.envelope import EventEnvelope
from libs.observability import HANDLER_ERRORS

log = logging.getLogger("closeloop.reactions")

React = Callable[[UnitOfWork, DomainEvent], Awaitable[None]]
# A reaction to a run of consecutive events of one type of a batch, set-based (one statement per kind of
# work for the run, instead of one per event): each event with the context its effects are recorded under.
BatchReact = Callable[[asyncpg.Connection, list[tuple[CommandContext, DomainEvent]]], Awaitable[None]]


class Reactions:
    """`batched`: event types whose runs (consecutive events of that type in a batch, so the order of
    the batch is kept) go to a set-based reaction, in one savepoint. If it raises anything but a transient
    error, the savepoint is rolled back and the run's events are handled one by one as any other event
    (the reaction may raise on purpose for a case it leaves to that path)."""

    def __init__(self, store: EventStore, react: React, *, actor: str,
                 batched: Mapping[type[DomainEvent], BatchReact] | None = None) -> None:
        self.store = store
        self.reaction = react
        self.actor = actor
        self.batched = dict(batched or {})
        self.rejected: list[tuple[str, str]] = []  # (event id, reason), for /readyz and tests
        self.dead_lettered = 0

    def _context(self, e: EventEnvelope) -> CommandContext:
        return CommandContext(actor=self.actor, role="service", correlation_id=e.correlation_id,
                              causation_id=str(e.event_id))

    async def handle(self, conn: asyncpg.Connection, envelopes: Sequence[EventEnvelope]) -> None:
        decoded: list[tuple[EventEnvelope, DomainEvent]] = []
        for e in envelopes:
            try:
                decoded.append((e, registry.decode(e.event_type, e.schema_version, e.data)))
            except UnknownEventType:
                continue  # events this service does not know are none of its business
        i = 0
        while i < len(decoded):
            kind = type(decoded[i][1])
            batch_react = self.batched.get(kind)
            if batch_react is not None:
                j = i + 1
                while j < len(decoded) and type(decoded[j][1]) is kind:
                    j += 1
                if await self._run(conn, batch_react, decoded[i:j]):
                    i = j
                    continue
                for e, event in decoded[i:j]:
                    await self._one(conn, e, event)
                i = j
                continue
            await self._one(conn, *decoded[i])
            i += 1

    async def _run(self, conn: asyncpg.Connection, batch_react: BatchReact,
                   run: list[tuple[EventEnvelope, DomainEvent]]) -> bool:
        """The run set-based in a savepoint; False (nothing of it kept) if the reaction raised."""
        try:
            async with conn.transaction():  # savepoint
                await batch_react(conn, [(self._context(e), event) for e, event in run])
            return True
        except TRANSIENT:
            raise  # the whole batch is retried
        except Exception as exc:
            log.debug("%s: a run of %d %s one by one (%s: %s)", self.actor, len(run), type(run[0][1]).__name__,
                      type(exc).__name__, exc)
            return False

    async def _one(self, conn: asyncpg.Connection, e: EventEnvelope, event: DomainEvent) -> None:
        ctx = self._context(e)
        try:
            async with conn.transaction():  # savepoint
                uow = UnitOfWork(self.store, conn, ctx)
                await self.reaction(uow, event)
                await uow.flush()
        except NotFound as exc:
            # An event about an aggregate this service does not have: dead-letter it (re-drivable once
            # the aggregate exists), rather than drop it as if the domain had refused it.
            HANDLER_ERRORS.labels(self.actor, "NotFound").inc()
            self.dead_lettered += 1
            await record_envelope(conn, self.actor, e, "unknown_aggregate", f"NotFound: {exc}")
        except (DomainError, ValidationError) as exc:
            log.warning("%s: %s %s refused: %s", self.actor, e.event_type, e.event_id, exc)
            HANDLER_ERRORS.labels(self.actor, type(exc).__name__).inc()
            self.rejected.append((str(e.event_id), str(exc)))
        except TRANSIENT:
            raise  # the whole batch is retried
        except Exception as exc:
            # A bug or an event this code cannot handle: dead-letter it (visible, re-drivable)
            # rather than stall the partition behind it forever.
            log.exception("%s: %s %s failed; dead-lettered", self.actor, e.event_type, e.event_id)
            HANDLER_ERRORS.labels(self.actor, type(exc).__name__).inc()
            self.dead_lettered += 1
            await record_envelope(conn, self.actor, e, "handler_error", f"{type(exc).__name__}: {exc}")
