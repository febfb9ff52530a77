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
                       offsets: Iterable[tuple[str, int, int, bytes | None]]) -> None:
    """Record (topic, partition, next offset, mark of the record at next offset - 1) checkpoints in the
    effect's transaction (libs/messaging/positions.py).

    The row becomes what this batch wrote, not the greatest offset seen: after the broker lost its state
    offsets start again from 0, and a checkpoint is only useful as a (next offset, mark) pair that was true
    of one log. A replica that still writes an older pair (during a rebalance) writes a true pair too: at
    worst the partition is read again from further back."""
    rows = list(offsets)
    if not rows:
        return
    await conn.execute(  # one statement for the batch's partitions (each once: they come from a dict)
        """INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, last_record, updated_at)
           SELECT $1, t, p, o, m, now()
             FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::bytea[]) AS u(t, p, o, m)
           ON CONFLICT (consumer, topic, partition) DO UPDATE
             SET next_offset = EXCLUDED.next_offset, last_record = EXCLUDED.last_record, updated_at = now()""",
        consumer, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows])
