"""A batch consumer of event envelopes with effectively-once effects.

For each Kafka batch: decode the envelopes, open one PostgreSQL transaction, claim the
event ids (libs.messaging.inbox), hand only the new ones to the handler, record the
offsets, commit, and only then acknowledge to Kafka. A crash before the commit leaves
nothing behind and Kafka redelivers; a crash after the commit but before the
acknowledgement makes Kafka redeliver events whose ids are already claimed.

Where a partition starts is decided by the consumer, not by Kafka's committed offset: the offsets
recorded with the effect carry a mark of the last record processed on each partition
(libs.messaging.positions.record_mark), and on every assignment the subscriber's rebalance
listener (positions.StartWhereProcessed, wired by positions.subscribe) starts at the recorded
offset only when the broker's record just before it carries that mark, otherwise at the
partition's beginning. A committed offset that outlived its log (the broker lost its state, a
topic created again) used to skip the head of the re-published partition.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import ValidationError

from libs.domain.events import UnknownEventType, UnsupportedSchemaVersion, registry
from libs.eventstore import DATABASE_UNAVAILABLE, WrongExpectedVersion
from libs.eventstore.store import pooled_transaction
from libs.messaging import envelope as env
from libs.messaging.deadletter import (
    H_ID,
    H_REDRIVE_FOR,
    Batch,
    DeadLetterPublisher,
    Source,
    current_batch,
    mark_redriven,
    publish_dead_letters,
    reason_code,
    record,
    record_envelope,
)
from libs.messaging.inbox import claim, save_offsets
from libs.messaging.positions import positions_of
from libs.observability import (
    CONSUMER_BATCH_SECONDS,
    CONSUMER_EVENTS,
    CONSUMER_LAG,
    CONSUMER_PARTITIONS,
    HANDLER_ERRORS,
)

log = logging.getLogger("closeloop.consumer")

# Errors after which the same batch is simply retried: concurrency conflicts and a database
# that is restarting or unreachable.
TRANSIENT = (WrongExpectedVersion, *DATABASE_UNAVAILABLE, asyncpg.exceptions.SerializationError,
             asyncpg.exceptions.DeadlockDetectedError)

Handler = Callable[[asyncpg.Connection, list[env.EventEnvelope]], Awaitable[Any]]

# A message above this many bytes is dead-lettered unread (reason `oversized`): no event is that large,
# and decoding it would hold the whole batch. CLOSELOOP_MAX_EVENT_BYTES overrides it.
MAX_EVENT_BYTES = int(os.environ.get("CLOSELOOP_MAX_EVENT_BYTES", str(2 * 1024 * 1024)))


class _Sources(dict[UUID, Any]):
    """Batch.sources whose values are made when asked for: the raw records stay as they came, and only a
    dead-lettered event's record becomes a Source (its headers decoded), not every record of every batch."""

    def get(self, key: UUID, default: Any = None) -> Any:
        value = dict.get(self, key, default)
        if value is not None and value is not default and not isinstance(value, Source):
            value = Source.of(value)
            self[key] = value
        return value

    def __getitem__(self, key: UUID) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value


def _redrive_headers(record: Any) -> tuple[str | None, bool]:
    """(the consumer group a re-driven message is for, whether it names the dead letter it re-drives)."""
    target, has_id = None, False
    for k, v in getattr(record, "headers", None) or ():
        if k == H_REDRIVE_FOR and v is not None:
            target = bytes(v).decode("utf-8", "replace")
        elif k == H_ID:
            has_id = True
    return target, has_id


@dataclass
class ConsumerStats:
    batches: int = 0
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    undecodable: int = 0
    last_batch_seconds: float = 0.0
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class EnvelopeBatchConsumer:
    """`check_events`: dead-letter, before the handler sees them, events whose type this code does not
    know, whose schema version is from the future or whose payload does not validate (the projector
    does it itself, per projection)."""

    def __init__(self, pool: asyncpg.Pool, name: str, handler: Handler, *,
                 after_commit: Callable[[list[env.EventEnvelope]], Awaitable[None]] | None = None,
                 check_events: bool = True, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.pool = pool
        self.name = name
        self.handler = handler
        self.after_commit = after_commit
        self.check_events = check_events
        self.max_event_bytes = max_event_bytes
        self.stats = ConsumerStats()
        self.dead_letters: DeadLetterPublisher | None = None  # libs.messaging.deadletter.attach

    async def process_records(self, records: Sequence[Any]) -> list[env.EventEnvelope]:
        """records: aiokafka ConsumerRecords (value bytes, topic, partition, offset).
        Returns the envelopes that were applied (new)."""
        started = time.perf_counter()
        envelopes: list[env.EventEnvelope] = []
        batch = Batch(self.name, _Sources())
        poison: list[tuple[Source, str, str]] = []
        for rec in records:
            target, has_id = _redrive_headers(rec)
            if target is not None and target != self.name:
                continue  # a dead letter re-driven for another consumer group of this topic
            value = rec.value or b""
            if len(value) > self.max_event_bytes:
                poison.append((Source.of(rec), "oversized", f"message of {len(value)} bytes, above the limit of "
                                                            f"{self.max_event_bytes} (CLOSELOOP_MAX_EVENT_BYTES)"))
                continue
            try:
                e = env.decode(value)
            except Exception as exc:  # a poison message must not stop the consumer
                self.stats.undecodable += 1
                poison.append((Source.of(rec), "undecodable", f"{type(exc).__name__}: {exc}"))
                continue
            # A re-drive's Source is needed at once (its dead letter's id); the others only if dead-lettered.
            batch.sources[e.event_id] = Source.of(rec) if target is not None and has_id else rec
            envelopes.append(e)
        # Where each partition is: the next offset and the mark of the record before it (one pass).
        positions = positions_of(records)
        offsets = {key: offset for key, (offset, _) in positions.items()}
        marks = {key: mark for key, (_, mark) in positions.items()}
        attempt = 0
        while True:
            try:
                applied = await self.process(envelopes, offsets, batch=batch, poison=poison, marks=marks)
                break
            except TRANSIENT as exc:
                # Nothing was committed; try the same batch again. Acknowledging it instead
                # would skip it until a restart, so a transient fault must never do that.
                attempt += 1
                HANDLER_ERRORS.labels(self.name, type(exc).__name__).inc()
                delay = min(0.05 * 2**attempt, 5.0)
                log.warning("%s: batch failed (%s: %s); retry %d in %.2fs", self.name, type(exc).__name__, exc,
                            attempt, delay)
                await asyncio.sleep(delay)
        self.stats.last_batch_seconds = time.perf_counter() - started
        CONSUMER_BATCH_SECONDS.labels(self.name).observe(self.stats.last_batch_seconds)
        return applied

    async def process(self, envelopes: list[env.EventEnvelope], offsets: dict[tuple[str, int], int] | None = None,
                      *, batch: Batch | None = None,
                      poison: Sequence[tuple[Source, str, str]] = (),
                      marks: dict[tuple[str, int], bytes] | None = None) -> list[env.EventEnvelope]:
        """marks: (topic, partition) -> record_mark of the record at offsets[...] - 1 (recorded with them)."""
        batch = Batch(self.name, _Sources(batch.sources) if batch else _Sources())  # afresh for each attempt
        token = current_batch.set(batch)
        try:
            fresh = await self._process(conn_batch=batch, envelopes=envelopes, offsets=offsets, poison=poison,
                                        marks=marks or {})
        finally:
            current_batch.reset(token)
        batch.count()
        if batch.recorded and self.dead_letters is not None:
            self.dead_letters.pending = True
        await publish_dead_letters(self.dead_letters)
        return fresh

    async def _process(self, *, conn_batch: Batch, envelopes: list[env.EventEnvelope],
                       offsets: dict[tuple[str, int], int] | None,
                       poison: Sequence[tuple[Source, str, str]],
                       marks: dict[tuple[str, int], bytes]) -> list[env.EventEnvelope]:
        redrives = {eid: s.redrive_id for eid, s in conn_batch.sources.items()
                    if isinstance(s, Source) and s.redrive_id is not None}
        async with pooled_transaction(self.pool) as conn:
            for source, code, reason in poison:
                await record(conn, self.name, code, reason, source=source)
            if redrives:  # a re-driven dead letter: forget that it was processed, and try it again
                await conn.execute("DELETE FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
                                   self.name, list(redrives))
            new_ids = await claim(conn, self.name, [e.event_id for e in envelopes])
            fresh: list[env.EventEnvelope] = []
            seen: set = set()
            for e in envelopes:  # keep arrival order; drop in-batch duplicates too
                if e.event_id in new_ids and e.event_id not in seen:
                    seen.add(e.event_id)
                    fresh.append(e)
            readable = [e for e in fresh if not self.check_events or await self._readable(conn, e)]
            if readable:
                await self.handler(conn, readable)
            done = [rid for eid, rid in redrives.items() if eid not in conn_batch.dead and rid is not None]
            await mark_redriven(conn, done)
            if offsets:
                await save_offsets(conn, self.name, [(t, p, o, marks.get((t, p))) for (t, p), o in offsets.items()])
        self.stats.batches += 1
        self.stats.received += len(envelopes)
        self.stats.applied += len(fresh)
        self.stats.duplicates += len(envelopes) - len(fresh)
        CONSUMER_EVENTS.labels(self.name, "applied").inc(len(fresh))
        CONSUMER_EVENTS.labels(self.name, "duplicate").inc(len(envelopes) - len(fresh))
        if offsets:
            self.stats.offsets.update(offsets)
        if fresh and self.after_commit is not None:
            await self.after_commit(fresh)
        return fresh

    async def _readable(self, conn: asyncpg.Connection, e: env.EventEnvelope) -> bool:
        """Whether this code can read the event; if not, it is dead-lettered (in the batch's transaction)."""
        try:
            registry.decode(e.event_type, e.schema_version, e.data)
            return True
        except (UnknownEventType, UnsupportedSchemaVersion, ValidationError) as exc:
            await record_envelope(conn, self.name, e, reason_code(exc), f"{type(exc).__name__}: {exc}")
            return False


RETRY_FAILED_BATCH_SECONDS = 1.0


async def the_message(msg: Any) -> Any:
    """FastStream decoder for batch subscribers of a broker made with `apply_types=False`
    (`make_broker(..., apply_types=False)`): the handler's one argument is then the decoded body, and this
    makes it the message itself (`KafkaMessage`: raw records, ack, nack), with nothing decoded.

    Without FastDepends a batch of 3 costs FastStream ~65 us of CPU instead of ~375 us: its dependency
    injection resolves and validates the handler's arguments on every call (measured in one process,
    docs/status.md "the cost of one command"); these handlers inject nothing but the message."""
    return msg


async def consume_batch(consumer: EnvelopeBatchConsumer, msg: Any) -> None:
    """The body of a FastStream batch subscriber with manual acks: process, then ack.

    If processing raises (after the transient retries above), nothing was committed. With
    manual acks the consumer's position is already past the batch, and the next batch's
    ack would commit past it for good; so the batch is rewound (nack) to be fetched again.
    """
    try:
        await consumer.process_records(msg.raw_message)
    except Exception:
        await asyncio.sleep(RETRY_FAILED_BATCH_SECONDS)  # do not spin on a batch that keeps failing
        await msg.nack()
        raise
    await asyncio.wait_for(msg.ack(), 30)


def _group_consumers(broker: Any) -> list[Any]:
    """The aiokafka consumers of a FastStream broker's subscribers (those started)."""
    return [c for c in (getattr(s, "consumer", None) for s in getattr(broker, "subscribers", [])) if c is not None]


def assigned_partitions(broker: Any) -> list[str]:
    """The partitions the broker's group subscribers own right now, as sorted "topic/partition".

    This is what a consumer group gave this replica: with several replicas each owns a share, and
    when one dies the group hands its share to the others (what /readyz reports, so that a takeover
    can be watched from outside)."""
    return sorted(f"{tp.topic}/{tp.partition}" for c in _group_consumers(broker) for tp in c.assignment())


async def refresh_consumer_lag(name: str, broker: Any) -> None:
    """Set the lag gauge of each partition the broker's subscribers own (highwater - position),
    labelled with the consumer's name and its Kafka consumer group, and the number of partitions owned."""
    owned = 0
    for consumer in _group_consumers(broker):
        group = str(getattr(consumer, "_group_id", None) or name)  # aiokafka keeps the group id here
        for tp in consumer.assignment():
            owned += 1
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), 1)
            except Exception:
                continue
            CONSUMER_LAG.labels(name, group, tp.topic, str(tp.partition)).set(max(high - position, 0))
    CONSUMER_PARTITIONS.labels(name).set(owned)
