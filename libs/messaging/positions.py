"""Where a consumer starts reading a partition: only where the log is the one it processed.

Kafka's committed offset of a group says "go on at offset n", not "of which log". After the broker lost
its state (Tansu keeps nothing on disk; libs/messaging/broker_watch.py) or a topic was deleted and created
again, an offset committed on the old log — or on a topic a client auto-created during the loss, committed
after the repair re-created it — is accepted on the new one, and the group starts the re-published
partition at that offset: what the relay re-published below it never reaches the group (seen on Tansu:
consumer at t/0 offset 10, t re-created and 20 messages re-published, the stale commit accepted, the next
member starts at new offset 10).

So each consumer records in its batch transaction, per (consumer, topic, partition), the next offset and a
mark of the last record it processed there (`record_mark`: a hash of the record's value and timestamp, so
it works for undecodable and dead-lettered records too; table consumer_offsets, migration 0007). On every
partition assignment `StartWhereProcessed` (an aiokafka rebalance listener given to the FastStream
subscriber) pauses the partitions, reads the stored pairs, reads the record at next_offset - 1 from the
broker with a small consumer outside the group, and seeks to next_offset only when that record carries the
mark; otherwise (no row, a high watermark below next_offset, another record, the broker not answering)
it seeks to the partition's beginning, logging a WARNING, and the processed event ids make the re-reading
harmless. Kafka's committed offsets are still written (lag tools read them) but no longer decide anything.

Two more things were needed for a topic created again with more partitions (the relay's repair of one a
client auto-created during the loss with Tansu's 4): aiokafka refreshes metadata every 5 minutes by
default, and fetching partitions 0-3 of the new topic raises nothing, so the consumer did not rejoin
(libs/messaging/broker.py now sets CLOSELOOP_KAFKA_METADATA_MAX_AGE_MS, 5 s); and on the rejoin Tansu 0.6.0
answered with the group's old assignment (RecordingRoundRobin below).

Cost: nothing per batch beyond a hash of one record per partition, folded into the existing offsets
statement; one database read and one broker round trip per assignment.

Limits: a pair is only as good as the start it continues from, and every start is checked here; a topic
deleted and created again under a consumer *without* a rebalance (same partition count, the group
coordinator kept) would let the consumer go on at its in-memory position — on Tansu a restart loses the
group too, so every member rejoins; the relay pauses after a repair before publishing again
(relay.py), so a consumer that fetches at its old position meanwhile finds an empty partition and
resets to its beginning. With retention (a real cluster), a record at next_offset - 1 that has been
deleted reads as "not the same log": the retained log is read again once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

from libs.messaging.broker import without_idle_sleep
from libs.messaging.pacing import FetchPacer

log = logging.getLogger("closeloop.consumer")

Positions = dict[tuple[str, int], tuple[int, bytes]]


class RecordingRoundRobin(RoundRobinPartitionAssignor):  # type: ignore[misc]
    """aiokafka's round robin (same name and protocol, so members with either agree), remembering what the
    group leader computed for each member id (in this process).

    Tansu 0.6.0 keeps a group's generation when its members rejoin and answers the leader's SyncGroup
    with the assignment of that generation it already has: after a topic went from 4 to 6 partitions
    (the relay's repair of a topic auto-created during a broker loss) the leader computed 0-5 and was
    given 0-3 again, for good; partitions 4 and 5 were never read (the broker-loss chaos test's flows
    "transaction ... opened: not seen within 180 s"). StartWhereProcessed compares; on a difference the
    member rejoins under a new member id, which Tansu gives a new generation."""

    computed: dict[str, set[TopicPartition]] = {}

    @classmethod
    def assign(cls, cluster: Any, members: Any) -> Any:
        result = super().assign(cluster, members)
        if len(cls.computed) > 1000:  # entries for members of other processes are never taken
            cls.computed.clear()
        for member_id, assignment in result.items():
            cls.computed[member_id] = {TopicPartition(t, p) for t, ps in assignment.assignment for p in ps}
        return result


def record_mark(record: Any) -> bytes:
    """A short identity of a Kafka record: its value bytes and its timestamp (a record published again
    after a broker loss gets a new one, so the same event at the same offset of another log differs too)."""
    h = hashlib.blake2b(getattr(record, "value", None) or b"", digest_size=16)
    h.update(int(getattr(record, "timestamp", None) or 0).to_bytes(8, "big", signed=True))
    return h.digest()


def positions_of(records: Iterable[Any]) -> Positions:
    """(topic, partition) -> (next offset, mark of the record before it) for the last record of each
    partition in a batch."""
    last: dict[tuple[str, int], Any] = {}
    for rec in records:
        key = (rec.topic, rec.partition)
        prev = last.get(key)
        if prev is None or rec.offset > prev.offset:
            last[key] = rec
    return {key: (rec.offset + 1, record_mark(rec)) for key, rec in last.items()}


async def record_positions(pool: asyncpg.Pool, consumer: str, records: Iterable[Any]) -> None:
    """For the subscribers that are not EnvelopeBatchConsumers (the external topics, whose effects are
    idempotent by the provider's ids): after their batch is stored, a statement of its own. A crash
    before it leaves the previous pair, which is still true: the partition is read again from there."""
    from libs.messaging.inbox import save_offsets

    positions = positions_of(records)
    if positions:
        async with pool.acquire() as conn:
            await save_offsets(conn, consumer, [(t, p, o, m) for (t, p), (o, m) in positions.items()])


class StartWhereProcessed(ConsumerRebalanceListener):  # type: ignore[misc]
    """The rebalance listener of one subscriber: see the module's docstring. `subscriber` is the FastStream
    subscriber it was given to (set by `subscribe`); its aiokafka consumer is the one that seeks."""

    def __init__(self, name: str, pool: Callable[[], asyncpg.Pool], bootstrap: str, *,
                 fetch_timeout: float = 5.0) -> None:
        self.name = name
        self.pool = pool
        self.bootstrap = bootstrap
        self.fetch_timeout = fetch_timeout
        self.subscriber: Any = None
        self.resumed: dict[TopicPartition, int] = {}  # the last decision per partition (tests, /readyz)
        self.rewound: set[TopicPartition] = set()
        self.stale_assignments = 0

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = getattr(self.subscriber, "consumer", None)
        tps = sorted(assigned)
        if consumer is None or not tps:
            return
        consumer.pause(*tps)  # first, before any await: nothing is fetched from a position not checked here
        self._rejoin_if_stale(consumer, set(tps))
        try:
            try:
                starts = await self.starts(tps)
            except Exception as exc:  # the database or the broker not answering: the safe start
                log.warning("%s: could not check the stored positions of %s (%s: %s); reading them from the "
                            "beginning", self.name, [f"{tp.topic}/{tp.partition}" for tp in tps],
                            type(exc).__name__, exc)
                starts = {}
            rewind = [tp for tp in tps if tp not in starts]
            for tp, offset in starts.items():
                consumer.seek(tp, offset)
                self.resumed[tp] = offset
                self.rewound.discard(tp)
            if rewind:
                await consumer.seek_to_beginning(*rewind)
                self.rewound.update(rewind)
        finally:
            still = consumer.assignment()
            consumer.resume(*[tp for tp in tps if tp in still])

    def _rejoin_if_stale(self, consumer: Any, assigned: set[TopicPartition]) -> None:
        """If this process's leader computed another assignment for this member than the broker gave it,
        rejoin as a new member (RecordingRoundRobin)."""
        coordinator: Any = getattr(consumer, "_coordinator", None)
        member_id = getattr(coordinator, "member_id", None)
        expected = RecordingRoundRobin.computed.pop(member_id, None) if member_id else None
        if expected is None or expected == assigned:
            return
        log.warning("%s: the broker assigned %s, not %s as the group leader computed (a stale assignment): "
                    "rejoining as a new member", self.name, _names(assigned), _names(expected))
        self.stale_assignments += 1
        coordinator.reset_generation()

    async def starts(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """The partitions whose stored pair matches the broker's log, with the offset to start at."""
        async with self.pool().acquire() as conn:
            rows = await conn.fetch(
                "SELECT topic, partition, next_offset, last_record FROM consumer_offsets "
                "WHERE consumer = $1 AND topic = ANY($2::text[])", self.name, sorted({tp.topic for tp in tps}))
        stored = {TopicPartition(r["topic"], r["partition"]): (r["next_offset"], r["last_record"]) for r in rows}
        wanted = {tp: stored[tp] for tp in tps
                  if tp in stored and stored[tp][0] > 0 and stored[tp][1] is not None}
        for tp in tps:
            if tp not in stored:
                log.info("%s: no position stored for %s/%d: reading it from the beginning",
                         self.name, tp.topic, tp.partition)
            elif tp not in wanted:
                log.warning("%s: the position stored for %s/%d has no mark of its record: reading it from "
                            "the beginning", self.name, tp.topic, tp.partition)
        if not wanted:
            return {}
        marks = await self._marks_at({tp: n - 1 for tp, (n, _) in wanted.items()})
        result: dict[TopicPartition, int] = {}
        for tp, (n, mark) in wanted.items():
            if marks.get(tp) == mark:
                result[tp] = n
            else:
                log.warning("%s: %s/%d at offset %d is not the log this consumer processed (%s): reading it "
                            "from the beginning", self.name, tp.topic, tp.partition, n - 1,
                            "another record there" if tp in marks else "no such record")
        return result

    async def _marks_at(self, at: dict[TopicPartition, int]) -> dict[TopicPartition, bytes]:
        """The mark of the record at the given offset of each partition (absent: no such record)."""
        probe = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
                                 client_id=f"{self.name}-position-check", request_timeout_ms=10000,
                                 max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024)
        await probe.start()
        try:
            tps = list(at)
            probe.assign(tps)
            ends = await probe.end_offsets(tps)
            pending = {tp for tp in tps if ends.get(tp, 0) > at[tp]}
            for tp in pending:
                probe.seek(tp, at[tp])
            marks: dict[TopicPartition, bytes] = {}
            deadline = asyncio.get_running_loop().time() + self.fetch_timeout
            while pending:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                got = await probe.getmany(*pending, timeout_ms=int(min(left, 1.0) * 1000), max_records=len(pending))
                for tp, recs in got.items():
                    for rec in recs:
                        if rec.offset == at[tp]:
                            marks[tp] = record_mark(rec)
                    if recs:
                        pending.discard(tp)  # the first record from there is the one (or it is gone)
            return marks
        finally:
            await probe.stop()


def subscribe(broker: Any, *topics: str, name: str, pool: Callable[[], asyncpg.Pool], bootstrap: str,
              pacing: tuple[str, float, float] | None = None, **options: Any) -> Any:
    """`broker.subscriber(*topics, **options)` whose partitions start where `name` processed them
    (StartWhereProcessed); the subscriber's consumer must record its positions (EnvelopeBatchConsumer does;
    others call save_positions). With `pacing` (dsn, idle after s, idle pause s) its fetches are spaced out
    while it is idle (libs/messaging/pacing.py)."""
    listener = StartWhereProcessed(name, pool, bootstrap)
    options.setdefault("partition_assignment_strategy", (RecordingRoundRobin,))
    pacer = FetchPacer(*pacing) if pacing is not None and pacing[2] > 0 else None
    subscriber = without_idle_sleep(broker.subscriber(*topics, listener=listener, **options), pacer)
    listener.subscriber = subscriber
    subscriber.start_where_processed = listener
    return subscriber


def start_where_processed(consumer: Any, settings: Any) -> dict[str, Any]:
    """The `subscribe` arguments for the subscribers of a service whose positions are recorded under
    `consumer.name` (an EnvelopeBatchConsumer, and the same name for its external topics)."""
    # (consumer is None where a broker is only built to list its subscribers: tests/unit/test_deploy_files.py)
    return {"name": getattr(consumer, "name", ""), "pool": lambda: consumer.pool,
            "bootstrap": settings.kafka_bootstrap_servers,
            "pacing": (settings.database_url, settings.kafka_idle_after_ms / 1000,
                       settings.kafka_idle_fetch_pause_ms / 1000)}


def _names(tps: Iterable[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in sorted(tps)]
