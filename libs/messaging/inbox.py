"""Effectively-once consumption: a consumer records the ids of the events it processed
and its Kafka offsets in the same PostgreSQL transaction as the effect. A redelivered
event finds its id already recorded and changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from uuid import UUID

import asyncpg


async def claim(conn: asyncpg.Connection, consumer: str, event_ids: Sequence[UUID]) -> set[UUID]:
    """Record the ids as processed by `consumer`; return those that were new.

    Must run inside the transaction of the effect. If another replica is processing the
    same event concurrently, this blocks on the primary key until that transaction ends,
    then reports the id as not new (or as new, if that transaction rolled back).
    """
    if not event_ids:
        return set()
    rows = await conn.fetch(
        """INSERT INTO processed_events (consumer, event_id)
           SELECT $1, unnest($2::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id""",
        consumer, list(event_ids))
    return {r["event_id"] for r in rows}


async def save_offsets(conn: asyncpg.Connection, consumer: str,
                       offsets: Iterable[tuple[str, int, int]]) -> None:
    """Record (topic, partition, next offset) checkpoints in the effect's transaction."""
    rows = list(offsets)
    if not rows:
        return
    await conn.execute(  # one statement for the batch's partitions (each once: they come from a dict)
        """INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, updated_at)
           SELECT $1, t, p, o, now() FROM unnest($2::text[], $3::integer[], $4::bigint[]) AS u(t, p, o)
           ON CONFLICT (consumer, topic, partition) DO UPDATE
             SET next_offset = GREATEST(consumer_offsets.next_offset, EXCLUDED.next_offset), updated_at = now()""",
        consumer, [t for t, _, _ in rows], [p for _, p, _ in rows], [o for _, _, o in rows])
