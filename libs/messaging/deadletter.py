"""Dead letters: messages a consumer cannot process, set aside so that the partition goes on.

A consumer records each one in the `dead_letters` table in the transaction of its batch (so a crash
loses neither the message nor the offset past it), counts it in `closeloop_dead_letters_total{consumer,
reason}`, and, once the batch has committed, publishes it to the `deadletters` topic: the message's own
bytes, key and headers, plus `dlq-*` headers that say why and where it came from (DLQ_HEADERS). Rows
not yet published (a crash between commit and publish) are published by the next batch.

Reason codes (the metric's label): undecodable, oversized, unknown_event_type, future_schema_version,
invalid_payload, unknown_aggregate, handler_error.

`closeloop deadletters redrive` publishes a dead letter again to its source topic with the header
`dlq-redrive-for: <consumer group>`: the other groups on that topic ignore it, the one that gave up on it
forgets that it processed it and tries again. If that succeeds the row is marked re-driven (and resolved);
if not, its re-drive count and last error are kept and it stays open.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from libs.observability import DEAD_LETTERS

log = logging.getLogger("closeloop.deadletters")

DLQ_TOPIC = "deadletters"
REASONS = ("undecodable", "oversized", "unknown_event_type", "future_schema_version", "invalid_payload",
           "unknown_aggregate", "handler_error")

H_REASON = "dlq-reason"
H_REASON_CODE = "dlq-reason-code"
H_CONSUMER = "dlq-consumer"
H_GROUP = "dlq-consumer-group"
H_TOPIC = "dlq-source-topic"
H_PARTITION = "dlq-source-partition"
H_OFFSET = "dlq-source-offset"
H_ID = "dlq-id"
H_REDRIVE_FOR = "dlq-redrive-for"
DLQ_HEADERS = (H_REASON, H_REASON_CODE, H_CONSUMER, H_GROUP, H_TOPIC, H_PARTITION, H_OFFSET, H_ID)

_NAMESPACE = uuid.UUID("6f1d3c2a-6a8e-4f55-9a53-2f4d1c0e7b10")


@dataclass(frozen=True)
class Source:
    """Where a message came from, and the message as it came."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]

    @property
    def redrive_id(self) -> int | None:
        """The dead letter this message re-drives (its `dlq-id`), when it is a re-drive."""
        value = self.headers.get(H_ID)
        return int(value) if value and value.isdigit() and H_REDRIVE_FOR in self.headers else None

    @classmethod
    def of(cls, record: Any) -> Source:
        return cls(record.topic, record.partition, record.offset, getattr(record, "key", None), record.value or b"",
                   headers_of(record))


def headers_of(record: Any) -> dict[str, str]:
    headers = getattr(record, "headers", None) or ()
    return {k: bytes(v).decode("utf-8", "replace") for k, v in headers if v is not None}


def redrive_target(record: Any) -> str | None:
    """The consumer group a re-driven message is for (None: an ordinary message, for everyone)."""
    for k, v in getattr(record, "headers", None) or ():
        if k == H_REDRIVE_FOR and v is not None:
            return bytes(v).decode("utf-8", "replace")
    return None


def message_id(source: Source) -> UUID:
    """A stable id for a message without a readable event id (the same message redelivered: the same id)."""
    return uuid.uuid5(_NAMESPACE, f"{source.topic}/{source.partition}/{source.offset}")


@dataclass
class Batch:
    """The consumer batch being processed (a context variable), so that whoever dead-letters an event
    deep inside a handler records which group gave up on it and where the message came from."""

    group: str
    sources: dict[UUID, Source] = field(default_factory=dict)
    dead: set[UUID] = field(default_factory=set)  # event ids dead-lettered in this batch's transaction
    counts: list[str] = field(default_factory=list)  # reason codes of the new ones, counted once it commits

    @property
    def recorded(self) -> int:
        return len(self.counts)

    def count(self) -> None:
        """The batch committed: count its dead letters."""
        for code in self.counts:
            DEAD_LETTERS.labels(self.group, code).inc()


current_batch: contextvars.ContextVar[Batch | None] = contextvars.ContextVar("dead_letter_batch", default=None)


def reason_code(exc: BaseException) -> str:
    """The reason code of an exception raised while decoding or handling an event."""
    from pydantic import ValidationError

    from libs.domain.errors import NotFound
    from libs.domain.events import UnknownEventType, UnsupportedSchemaVersion

    if isinstance(exc, UnknownEventType):
        return "unknown_event_type"
    if isinstance(exc, UnsupportedSchemaVersion):
        return "future_schema_version"
    if isinstance(exc, ValidationError):
        return "invalid_payload"
    if isinstance(exc, NotFound):
        return "unknown_aggregate"
    return "handler_error"


async def record(conn: asyncpg.Connection, consumer: str, code: str, reason: str, *,
                 envelope: dict[str, Any] | None = None, event_id: UUID | None = None, stream_id: str | None = None,
                 stream_version: int | None = None, event_type: str | None = None,
                 source: Source | None = None, group: str | None = None) -> bool:
    """Record a dead letter in the caller's transaction; True when it is a new one.

    `consumer` names the component (e.g. `shipping`, `projection:public.orders`); the consumer group and
    the message's source come from the batch being processed, when there is one (else `group`, `source`).
    A re-driven message
    that fails again updates its dead letter instead of adding one.
    """
    assert code in REASONS, code
    batch = current_batch.get()
    if source is None and batch is not None and event_id is not None:
        source = batch.sources.get(event_id)
    if event_id is None:
        event_id = message_id(source) if source is not None else uuid.uuid4()
    reason = reason[:1000]
    if batch is not None:
        batch.dead.add(event_id)
    if source is not None and source.redrive_id is not None:
        await conn.execute(
            """UPDATE dead_letters SET redrive_count = redrive_count + 1, last_redrive_at = now(),
                                       last_redrive_error = $2
                WHERE id = $1""", source.redrive_id, f"{code}: {reason}")
        log.warning("%s: re-driven dead letter %s failed again: %s", consumer, source.redrive_id, reason)
        return False
    group = batch.group if batch is not None else group
    new = await conn.fetchval(
        """INSERT INTO dead_letters (consumer, event_id, stream_id, stream_version, event_type, reason, envelope,
                                     reason_code, consumer_group, source_topic, source_partition, source_offset,
                                     source_key, source_headers, raw_value)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           ON CONFLICT (consumer, event_id) DO NOTHING RETURNING true""",
        consumer, event_id, stream_id, stream_version, event_type, reason, envelope, code, group,
        source.topic if source else None, source.partition if source else None, source.offset if source else None,
        source.key if source else None, source.headers if source else None, source.value if source else None)
    if new:
        if batch is not None:
            batch.counts.append(code)
        else:
            DEAD_LETTERS.labels(group or consumer, code).inc()
        log.warning("%s: dead-lettered %s (%s): %s", group or consumer, event_id, code, reason)
    return bool(new)


async def record_envelope(conn: asyncpg.Connection, consumer: str, e: Any, code: str, reason: str) -> bool:
    """`record` for an event envelope (libs.messaging.envelope.EventEnvelope)."""
    return await record(conn, consumer, code, reason, envelope=e.model_dump(mode="json"), event_id=e.event_id,
                        stream_id=e.stream_id, stream_version=e.stream_version, event_type=e.event_type)


async def mark_redriven(conn: asyncpg.Connection, ids: Sequence[int]) -> None:
    """Mark these dead letters re-driven and resolved: their re-driven message went through."""
    if ids:
        await conn.execute(
            """UPDATE dead_letters SET redriven_at = now(), resolved_at = coalesce(resolved_at, now()),
                                       redrive_count = redrive_count + 1, last_redrive_at = now()
                WHERE id = ANY($1::bigint[]) AND redriven_at IS NULL""", list(ids))


def dlq_message(row: Any) -> tuple[bytes | None, bytes, dict[str, str]]:
    """(key, value, headers) of a dead letter on the `deadletters` topic: the message as it came (or the
    stored envelope), its own headers, and the dlq-* headers."""
    value = row["raw_value"] if row["raw_value"] is not None else orjson.dumps(row["envelope"])
    headers = {k: v for k, v in (row["source_headers"] or {}).items() if not k.startswith("dlq-")}
    headers.update({
        H_REASON: (row["reason"] or "")[:500], H_REASON_CODE: row["reason_code"] or "handler_error",
        H_CONSUMER: row["consumer"], H_GROUP: row["consumer_group"] or "",
        H_TOPIC: row["source_topic"] or "", H_PARTITION: "" if row["source_partition"] is None
        else str(row["source_partition"]), H_OFFSET: "" if row["source_offset"] is None else str(row["source_offset"]),
        H_ID: str(row["id"]), "event-id": str(row["event_id"]),
    })
    if row["event_type"]:
        headers.setdefault("event-type", row["event_type"])
    key = row["source_key"] if row["source_key"] is not None else (row["stream_id"] or str(row["event_id"])).encode()
    return key, bytes(value), headers


class DeadLetterPublisher:
    """Publishes a consumer group's unpublished dead letters to the `deadletters` topic, after the batch
    that recorded them committed (and, at start, those a crash left unpublished)."""

    def __init__(self, broker: Any, pool: asyncpg.Pool | Callable[[], asyncpg.Pool], group: str,
                 topic: str = DLQ_TOPIC) -> None:
        self.broker = broker
        self._pool = pool  # or how to get it, once the service's store exists
        self.group = group
        self.topic = topic
        self.pending = True  # sweep once at start
        self.published = 0

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool if isinstance(self._pool, asyncpg.Pool) else self._pool()

    async def publish_pending(self) -> int:
        if not self.pending:
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT * FROM dead_letters WHERE consumer_group = $1 AND published_at IS NULL
                    ORDER BY id LIMIT 500 FOR UPDATE SKIP LOCKED""", self.group)
            for row in rows:
                key, value, headers = dlq_message(row)
                await self.broker.publish(value, topic=self.topic, key=key, headers=headers)
            if rows:
                await conn.execute("UPDATE dead_letters SET published_at = now() WHERE id = ANY($1::bigint[])",
                                   [r["id"] for r in rows])
        self.published += len(rows)
        self.pending = len(rows) == 500
        return len(rows)


async def publish_dead_letters(publisher: DeadLetterPublisher | None) -> None:
    """Publish what is pending, never failing the caller: what is not published now is published later
    (the rows stay unpublished, `pending` stays set)."""
    if publisher is None or not publisher.pending:
        return
    try:
        await asyncio.wait_for(publisher.publish_pending(), 30)
    except Exception as exc:
        publisher.pending = True
        log.warning("%s: dead letters not published yet: %s: %s", publisher.group, type(exc).__name__, exc)


def attach(consumers: Sequence[Any], broker: Any) -> None:
    """Give each consumer (EnvelopeBatchConsumer, or anything with `pool` and `name`) its publisher (None: a
    broker built only to describe its subscribers)."""
    for c in consumers:
        if c is not None:
            c.dead_letters = DeadLetterPublisher(broker, c.pool, c.name)
