"""The outbox relay: publishes every stored event to Kafka, at least once, in order.

Loop: read the next batch after the checkpoint (libs.eventstore read_all, which never
skips a late-committing transaction), send each event keyed by its stream id to its
service's topic, wait for every acknowledgement (acks=all), then store the new
checkpoint in PostgreSQL. A crash anywhere before the checkpoint commit means the batch
is sent again after restart: duplicates are possible, losses are not. Consumers drop
duplicates by event id (libs.messaging.inbox).

While it leads, the relay keeps the checkpoint it stored in memory (it is the only writer of its row)
and asks the broker whether it lost its state at most every `watch_interval_seconds` (0.1 s) and
after any error, rather than before every batch: at 40 commands/s (about one batch each) the
checkpoint read and the topic listing were two of the relay's four round trips per batch.

Per-stream order: a stream's events are read in version order, a stream always maps to
one partition (key = stream id), and aiokafka keeps at most one produce request in
flight per broker connection, so a retried batch cannot overtake a later one.

The relay does not sleep-poll: every commit that appended NOTIFYs `closeloop_events` (the
event store sends it right after the commits it knows of, libs/eventstore/store.py) and the
relay wakes on it; a slow timer remains as a safety net.

A broker that lost what it held (the embedded broker restarted; a topic deleted) is noticed before
the next batch (libs/messaging/broker_watch.py): the relay re-creates the topics with their partition
counts, moves its checkpoint back to where it started and publishes everything again; consumers drop
the event ids they already processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from faststream.kafka import KafkaBroker

from libs.eventstore import START, Cursor, EventStore, RecordedEvent
from libs.eventstore.errors import DATABASE_ERRORS
from libs.eventstore.store import NOTIFY_CHANNEL
from libs.messaging import envelope
from libs.messaging.broker_watch import BrokerWatch
from libs.observability import RELAY_PUBLISHED

log = logging.getLogger("closeloop.relay")


# Failpoint for the crash-safety test: kill the process after the batch was sent and
# acknowledged by Kafka but before the checkpoint commit - the worst moment.
FAILPOINT_ENV = "CLOSELOOP_FAILPOINT"
FAILPOINT_AFTER_PUBLISH = "relay.after_publish_before_checkpoint"


@dataclass
class RelayStats:
    published: int = 0
    batches: int = 0
    last_cursor: Cursor = START
    last_publish_at: float = 0.0
    broker_resets: int = 0


class Relay:
    def __init__(self, store: EventStore, broker: KafkaBroker, route: Callable[[str], str], *,
                 name: str = "kafka", batch_size: int = 1000, idle_poll_seconds: float = 1.0,
                 watch: BrokerWatch | None = None, reset_grace_seconds: float = 0.0,
                 watch_interval_seconds: float = 0.1) -> None:
        self.store = store
        self.watch = watch
        # How often run() asks the broker whether it lost its state (one metadata round trip that lists
        # every topic): at most every this many seconds, and always after a publishing error.
        self.watch_interval_seconds = watch_interval_seconds
        self._watched_at = -float("inf")
        # After a broker reset, a pause before publishing again, so that consumers first notice the new
        # broker (their positions reset to its empty topics) and rejoin their groups.
        self.reset_grace_seconds = reset_grace_seconds
        self.broker = broker
        self.route = route
        self.name = name
        self.batch_size = batch_size
        self.idle_poll_seconds = idle_poll_seconds
        self.stats = RelayStats()
        self._wake = asyncio.Event()
        self._listen_conn: asyncpg.Connection | None = None
        # While run() leads (holds the name's lock), the checkpoint it last stored: the next batch starts
        # there without reading it back. None: read it from the table (publish_once called on its own,
        # after an error, after a rewind).
        self._cursor: Cursor | None = None

    async def checkpoint(self) -> Cursor:
        row = await self.store.pool.fetchrow(
            "SELECT transaction_id::text::bigint AS tx, global_position FROM relay_checkpoints WHERE name = $1",
            self.name)
        return Cursor(row["tx"], row["global_position"]) if row else START

    async def start_at_head_if_new(self) -> None:
        """Give a relay that has no checkpoint yet the store's current head as its checkpoint."""
        head = await self.store.head()
        await self.store.pool.execute(
            """INSERT INTO relay_checkpoints (name, transaction_id, global_position, origin_transaction_id,
                                              origin_global_position)
               VALUES ($1, $2::text::xid8, $3, $2::text::xid8, $3)
               ON CONFLICT (name) DO NOTHING""", self.name, str(head.transaction_id), head.global_position)

    async def origin(self) -> Cursor:
        """Where this relay started: the store's beginning, or its head when it was created at the head."""
        row = await self.store.pool.fetchrow(
            """SELECT origin_transaction_id::text::bigint AS tx, origin_global_position FROM relay_checkpoints
                WHERE name = $1""", self.name)
        return Cursor(row["tx"], row["origin_global_position"]) if row else START

    async def rewind_to_origin(self) -> Cursor:
        """Move the checkpoint back to where this relay started (after the broker lost its messages)."""
        row = await self.store.pool.fetchrow(
            """UPDATE relay_checkpoints SET transaction_id = origin_transaction_id,
                      global_position = origin_global_position, broker_resets = broker_resets + 1, updated_at = now()
                WHERE name = $1
            RETURNING origin_transaction_id::text::bigint AS tx, origin_global_position""", self.name)
        return Cursor(row["tx"], row["origin_global_position"]) if row else START

    async def ensure_broker(self) -> bool:
        """If the broker lost its state, repair it and rewind; True when it did (module doc)."""
        if self.watch is None or await self.watch.intact():
            return False
        was = await self.checkpoint()
        origin = await self.origin()
        if was == origin:  # nothing published yet (a new relay, or a new broker): just the topics
            log.info("relay %s: creating the topics and the marker %s", self.name, self.watch.marker)
            await self.watch.repair()
            return False
        log.warning("relay %s: the broker lost its topics (no marker %s); re-creating them and publishing again "
                    "from %s (was at %s)", self.name, self.watch.marker, origin, was)
        await self.rewind_to_origin()
        await self.watch.repair()
        # The producer must see the new partition counts before it picks a partition for a key.
        await self.broker.stop()
        await self.broker.start()
        if self.reset_grace_seconds:
            await asyncio.sleep(self.reset_grace_seconds)
        self.stats.broker_resets += 1
        return True

    async def _save_checkpoint(self, cursor: Cursor, count: int) -> None:
        await self.store.pool.execute(
            # A row made without anything published is a start position, so it is also the origin.
            """INSERT INTO relay_checkpoints (name, transaction_id, global_position, published, updated_at,
                                              origin_transaction_id, origin_global_position)
               VALUES ($1, $2::text::xid8, $3::bigint, $4::bigint, now(),
                       CASE WHEN $4::bigint = 0 THEN $2::text::xid8 ELSE '0'::xid8 END,
                       CASE WHEN $4::bigint = 0 THEN $3::bigint ELSE 0 END)
               ON CONFLICT (name) DO UPDATE SET transaction_id = EXCLUDED.transaction_id,
                   global_position = EXCLUDED.global_position,
                   published = relay_checkpoints.published + EXCLUDED.published, updated_at = now()
               -- never move backwards (a stale writer must not undo a newer checkpoint)
               WHERE (relay_checkpoints.transaction_id, relay_checkpoints.global_position)
                     < (EXCLUDED.transaction_id, EXCLUDED.global_position)""",
            self.name, str(cursor.transaction_id), cursor.global_position, count)

    async def _publish(self, batch: list[RecordedEvent]) -> None:
        futures = []
        for event in batch:
            key, value, headers = envelope.encode(event)
            fut = await self.broker.publish(
                value, topic=self.route(event.stream_id), key=key, headers=headers,
                correlation_id=headers[envelope.H_CORRELATION], no_confirm=True)
            futures.append(fut)
        await asyncio.gather(*futures)  # raises if any send failed: the checkpoint stays
        for event in batch:
            RELAY_PUBLISHED.labels(self.route(event.stream_id)).inc()

    async def publish_once(self) -> int:
        """Publish one batch after the checkpoint; returns how many events it held."""
        cursor = self._cursor if self._cursor is not None else await self.checkpoint()
        batch = await self.store.read_all(cursor, self.batch_size)
        if not batch:
            return 0
        await self._publish(batch)
        if os.environ.get(FAILPOINT_ENV) == FAILPOINT_AFTER_PUBLISH:
            log.warning("failpoint %s: killing the relay before its checkpoint", FAILPOINT_AFTER_PUBLISH)
            os.kill(os.getpid(), signal.SIGKILL)
        await self._save_checkpoint(batch[-1].cursor, len(batch))
        if self._cursor is not None:
            self._cursor = batch[-1].cursor
        self.stats.published += len(batch)
        self.stats.batches += 1
        self.stats.last_cursor = batch[-1].cursor
        self.stats.last_publish_at = time.time()
        return len(batch)

    async def _connect_leader(self, stop: asyncio.Event) -> asyncpg.Connection | None:
        """A dedicated connection that holds this relay name's advisory lock and LISTENs.

        Only one relay per name publishes at a time: a second one (a standby replica) waits
        here until the first one's connection ends. Returns None if stopped meanwhile.
        """
        if self.store.dsn is None:
            return None
        announced = False
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self.store.dsn)
            except DATABASE_ERRORS as exc:
                log.warning("relay %s: cannot connect for LISTEN (%s); retrying", self.name, exc)
                await self._sleep(stop, 1.0)
                continue
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", f"relay:{self.name}"):
                await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self._wake.set())
                return conn
            await conn.close()
            if not announced:
                log.info("relay %s: another relay with this name is active; standing by", self.name)
                announced = True
            await self._sleep(stop, 2.0)
        return None

    @staticmethod
    async def _sleep(stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until `stop` is set. Errors (broker or database away) are retried
        with backoff; nothing is skipped. If the leader connection drops, the lock is
        gone too: publishing pauses until it is re-acquired."""
        backoff = 0.2
        while not stop.is_set():
            self._listen_conn = await self._connect_leader(stop)
            if self._listen_conn is None and self.store.dsn is not None:
                return  # stopped while standing by
            try:
                while not stop.is_set():
                    if self._listen_conn is not None and self._listen_conn.is_closed():
                        log.warning("relay %s: leader connection lost; re-acquiring", self.name)
                        break
                    try:
                        self._wake.clear()
                        if time.monotonic() - self._watched_at >= self.watch_interval_seconds:
                            if await self.ensure_broker():
                                self._cursor = None  # rewound
                            self._watched_at = time.monotonic()
                        if self._cursor is None:
                            self._cursor = await self.checkpoint()
                        n = await self.publish_once()
                        backoff = 0.2
                        if n == self.batch_size or self._wake.is_set():
                            continue  # more waiting, or something committed since this batch was read
                        # (Also after a batch that was not full: a commit after the read NOTIFYs, so an
                        # empty read right after each batch, as before, found nothing but cost a query.)
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._wait_wake_or_stop(stop), self.idle_poll_seconds)
                    except Exception as exc:
                        self._cursor = None  # read it back, and check the broker, before the next batch
                        self._watched_at = -float("inf")
                        if stop.is_set():
                            break
                        log.warning("relay error, retrying in %.1fs: %s", backoff, exc)
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
            finally:
                self._cursor = None  # no longer leading: another relay may move the checkpoint
                if self._listen_conn is not None:
                    with contextlib.suppress(Exception):
                        await self._listen_conn.close()
                    self._listen_conn = None

    async def _wait_wake_or_stop(self, stop: asyncio.Event) -> None:
        wake = asyncio.create_task(self._wake.wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({wake, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            stopped.cancel()

    async def lag(self) -> int:
        """Events stored but not yet published (approximate: by position)."""
        cursor = await self.checkpoint()
        return await self.store.pool.fetchval(
            "SELECT count(*) FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
            str(cursor.transaction_id), cursor.global_position)
