"""The behaviour every event store implementation must have, as a reusable test base class.

In the style of pyeventsourcing's tests/persistence.py: `EventStoreContract` holds the test
methods and is not collected itself (its name does not start with "Test"). An implementation
is bound by subclassing it in a test module:

    class TestPostgresEventStore(EventStoreContract):
        idempotency_key_conflict = asyncpg.UniqueViolationError

        @pytest.fixture
        def store(self, store): ...  # any fixture returning the implementation

        async def wait_until_blocked(self, store): ...

The tests only use the store's public API (append / read_stream / read_all / iter_all / head /
transaction / idempotency keys). They never truncate anything: every test writes to its own
random streams (uuid4) and filters what it reads, so the database can be shared by a whole
test run, or be an existing one.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from libs.eventstore import (
    GENESIS_HASH,
    NO_STREAM,
    AppendResult,
    Cursor,
    DuplicateEventId,
    EventStore,
    IdempotencyKeyReused,
    Metadata,
    NewEvent,
    RecordedEvent,
    WrongExpectedVersion,
)


def new_stream(category: str = "contract") -> str:
    """A stream id no other test (or earlier run against the same database) uses."""
    return f"{category}-{uuid.uuid4().hex}"


def meta(**overrides: Any) -> Metadata:
    values: dict[str, Any] = {"actor": "contract-test", "role": "tester", "correlation_id": str(uuid.uuid4())}
    values.update(overrides)
    return Metadata(**values)


def event(event_type: str = "ContractTested", /, **data: Any) -> NewEvent:
    return NewEvent(event_type=event_type, data=data, metadata=meta())


def events(n: int, event_type: str = "ContractTested") -> list[NewEvent]:
    return [event(event_type, n=i) for i in range(n)]


def summary(recorded: list[RecordedEvent]) -> list[tuple[Any, ...]]:
    """Everything that must not change when a write is refused."""
    return [(e.event_id, e.stream_version, e.global_position, e.event_type, e.data, e.hash) for e in recorded]


class _Rollback(Exception):
    """Raised inside a transaction to roll it back on purpose."""


class EventStoreContract(abc.ABC):
    """Contract tests of an event store. Subclasses provide:

    - a `store` fixture returning the store under test (an EventStore-compatible object);
    - `idempotency_key_conflict`: the exception a transaction gets from
      save_idempotent_response() when a concurrent transaction stored the same key first;
    - `wait_until_blocked()`: returns once some writer waits for another transaction's lock.
    """

    idempotency_key_conflict: ClassVar[type[BaseException]]

    @abc.abstractmethod
    async def wait_until_blocked(self, store: EventStore) -> None:
        """Return once a writer of `store` is waiting for a lock held by another transaction."""

    # ------------------------------------------------------------------ append and read
    async def test_append_then_read_stream_returns_events_in_version_order_with_metadata(
        self, store: EventStore
    ) -> None:
        stream = new_stream("ledger")
        cause = uuid.uuid4()
        batch = [
            NewEvent("OrderPlaced", {"lines": 2}, meta(actor="user:alice", role="buyer", correlation_id="corr-1")),
            NewEvent(
                "OrderPriced",
                {"total_minor": 1999},
                meta(
                    actor="svc:pricing",
                    role="system",
                    correlation_id="corr-1",
                    causation_id=str(cause),
                    reason="list price",
                    extra={"tenant": "t1"},
                ),
                schema_version=2,
            ),
            NewEvent("OrderConfirmed", {}, meta(actor="user:bob", role="clerk", correlation_id="corr-1")),
        ]
        result = await store.append(stream, NO_STREAM, batch)
        assert isinstance(result, AppendResult)
        assert (result.stream_id, result.first_version, result.last_version) == (stream, 1, 3)
        assert result.next_expected_version == 3
        assert result.event_ids == [e.event_id for e in batch]
        assert result.global_positions == sorted(result.global_positions)
        assert result.replayed is False

        more = [
            NewEvent(
                "OrderShipped", {"carrier": "dhl"}, meta(actor="svc:shipping", role="system", correlation_id="corr-1")
            )
        ]
        second = await store.append(stream, 3, more)
        assert (second.first_version, second.last_version) == (4, 4)
        assert second.global_positions[0] > result.global_positions[-1]

        read = await store.read_stream(stream)
        written = [*batch, *more]
        assert [e.stream_version for e in read] == [1, 2, 3, 4]
        assert [e.event_id for e in read] == [e.event_id for e in written]
        assert [e.event_type for e in read] == [e.event_type for e in written]
        assert [e.data for e in read] == [e.data for e in written]
        assert [e.schema_version for e in read] == [1, 2, 1, 1]
        assert [e.global_position for e in read] == [*result.global_positions, *second.global_positions]
        for recorded, new in zip(read, written, strict=True):
            assert recorded.stream_id == stream
            assert recorded.category == "ledger"
            for key in ("actor", "role", "correlation_id", "causation_id", "recorded_at", "schema_version"):
                assert key in recorded.metadata, (key, recorded.metadata)
            assert recorded.metadata["actor"] == new.metadata.actor
            assert recorded.metadata["role"] == new.metadata.role
            assert recorded.metadata["correlation_id"] == "corr-1"
            assert recorded.metadata["schema_version"] == recorded.schema_version
            assert datetime.fromisoformat(recorded.metadata["recorded_at"]) == recorded.recorded_at
            assert recorded.recorded_at.tzinfo is not None
            assert recorded.cursor == Cursor(recorded.transaction_id, recorded.global_position)
        assert read[0].metadata["causation_id"] is None
        assert read[1].metadata["causation_id"] == str(cause)
        assert read[1].metadata["reason"] == "list price"
        assert read[1].metadata["tenant"] == "t1"
        assert [e.recorded_at for e in read] == sorted(e.recorded_at for e in read)
        # the hash chain links each event to its predecessor in the stream
        assert read[0].prev_hash == GENESIS_HASH
        assert [e.prev_hash for e in read[1:]] == [e.hash for e in read[:-1]]
        assert len({e.hash for e in read}) == 4

        assert [e.stream_version for e in await store.read_stream(stream, from_version=2, to_version=3)] == [2, 3]
        assert await store.stream_version(stream) == 4
        assert await store.read_stream(new_stream()) == []
        assert await store.stream_version(new_stream()) == 0

    async def test_wrong_expected_version_raises_conflict_and_stores_nothing(self, store: EventStore) -> None:
        stream = new_stream()
        await store.append(stream, NO_STREAM, events(3))
        before = summary(await store.read_stream(stream))
        attempt = events(2, "Refused")

        for expected in (NO_STREAM, 2, 4):
            with pytest.raises(WrongExpectedVersion) as info:
                await store.append(stream, expected, attempt)
            assert info.value.stream_id == stream
            assert info.value.expected == expected
            assert info.value.actual == 3
            assert summary(await store.read_stream(stream)) == before
            assert await store.stream_version(stream) == 3

        with pytest.raises(WrongExpectedVersion) as info:
            await store.append(new_stream(), 1, attempt)
        assert info.value.actual == 0

        # nothing of the refused attempts was stored: the same event ids append normally now
        ok = await store.append(stream, 3, attempt)
        assert (ok.first_version, ok.last_version, ok.replayed) == (4, 5, False)
        assert [e.event_type for e in await store.read_stream(stream, from_version=4)] == ["Refused", "Refused"]

    async def test_concurrent_appends_at_same_expected_version_one_wins_rest_conflict(self, store: EventStore) -> None:
        contenders = 10
        for initial in (0, 3):
            stream = new_stream()
            if initial:
                await store.append(stream, NO_STREAM, events(initial))
            barrier = asyncio.Barrier(contenders)

            async def contend(
                i: int, stream: str = stream, initial: int = initial, barrier: asyncio.Barrier = barrier
            ) -> tuple[NewEvent, AppendResult] | Exception:
                new = event("Contended", contender=i)
                try:
                    async with store.transaction() as conn:  # each contender on its own connection
                        await barrier.wait()
                        result = await store.append(stream, initial, [new], conn=conn)
                        await asyncio.sleep(0.01)  # hold the transaction: the others race against it
                    return new, result
                except WrongExpectedVersion as exc:
                    return exc

            outcomes = await asyncio.wait_for(asyncio.gather(*(contend(i) for i in range(contenders))), 60)
            winners = [o for o in outcomes if not isinstance(o, Exception)]
            losers = [o for o in outcomes if isinstance(o, Exception)]
            assert len(winners) == 1, outcomes
            assert len(losers) == contenders - 1
            assert all(isinstance(o, WrongExpectedVersion) and o.stream_id == stream for o in losers)
            winner_event, winner_result = winners[0]
            assert winner_result.first_version == initial + 1
            read = await store.read_stream(stream)
            assert len(read) == initial + 1
            assert read[-1].event_id == winner_event.event_id
            assert read[-1].data["contender"] == winner_event.data["contender"]

    # ------------------------------------------------------------------ idempotency
    async def test_append_many_is_all_or_nothing_across_streams(self, store: EventStore) -> None:
        a, b, c = new_stream(), new_stream(), new_stream()
        await store.append(b, 0, events(2))
        results = await store.append_many([(a, 0, events(2)), (c, 0, events(1))])
        assert [(r.stream_id, r.first_version, r.last_version) for r in results] == [(a, 1, 2), (c, 1, 1)]
        assert len({r.transaction_id for r in results}) == 1  # one transaction
        with pytest.raises(WrongExpectedVersion) as err:
            # b is at 2, not 1: the whole call fails, and the append to a (valid) is not stored either
            await store.append_many([(a, 2, events(1)), (b, 1, events(1))])
        assert err.value.stream_id == b and err.value.actual == 2
        assert await store.stream_version(a) == 2 and await store.stream_version(b) == 2
        streams = await store.read_streams([a, b, c, new_stream()])
        assert [len(v) for v in streams.values()] == [2, 2, 1, 0]

    async def test_idempotent_retry_with_same_event_ids_returns_first_result_and_appends_nothing(
        self, store: EventStore
    ) -> None:
        stream = new_stream()
        batch = events(3)
        first = await store.append(stream, NO_STREAM, batch)
        before = summary(await store.read_stream(stream))

        retry = await store.append(stream, NO_STREAM, batch)  # e.g. the client timed out and resent
        assert retry.replayed is True
        assert retry.global_positions == first.global_positions
        assert retry.event_ids == first.event_ids
        assert (retry.first_version, retry.last_version) == (first.first_version, first.last_version)
        assert retry.transaction_id == first.transaction_id
        assert summary(await store.read_stream(stream)) == before

        # a later append does not change what a retry of the first one returns
        await store.append(stream, 3, events(1))
        again = await store.append(stream, NO_STREAM, batch)
        assert again.replayed is True
        assert again.global_positions == first.global_positions
        assert await store.stream_version(stream) == 4

    async def test_reusing_an_event_id_in_another_stream_is_refused(self, store: EventStore) -> None:
        stream, other = new_stream(), new_stream()
        batch = events(2)
        await store.append(stream, NO_STREAM, batch)
        before = summary(await store.read_stream(stream))

        with pytest.raises(DuplicateEventId):
            await store.append(other, NO_STREAM, batch)
        with pytest.raises(DuplicateEventId):  # a stored id mixed with a new one
            await store.append(other, NO_STREAM, [batch[0], event()])
        with pytest.raises(DuplicateEventId):  # same stream, but not the same append
            await store.append(stream, 2, [batch[1], event()])
        assert await store.read_stream(other) == []
        assert summary(await store.read_stream(stream)) == before

    async def test_idempotency_key_returns_first_response_and_reused_key_with_other_request_is_refused(
        self, store: EventStore
    ) -> None:
        scope = f"contract-{uuid.uuid4().hex}"
        stream = new_stream()
        assert await store.idempotent_response(scope, "key-1", "hash-a") is None

        async with store.transaction() as conn:
            result = await store.append(stream, NO_STREAM, events(1), conn=conn)
            response = {
                "status": 201,
                "stream_id": stream,
                "version": result.last_version,
                "total_minor": 10**15,
                "message": "已确认 ✅",
            }
            await store.save_idempotent_response(conn, scope, "key-1", "hash-a", response)

        assert await store.idempotent_response(scope, "key-1", "hash-a") == response
        with pytest.raises(IdempotencyKeyReused) as info:
            await store.idempotent_response(scope, "key-1", "hash-b")
        assert (info.value.scope, info.value.key) == (scope, "key-1")
        assert await store.idempotent_response(f"{scope}-other", "key-1", "hash-b") is None  # keys are per scope

        # Two requests with the same new key race: both append, both store the key. The one
        # that commits second fails on the key and rolls its events back.
        first_stream, second_stream = new_stream(), new_stream()
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(store.transaction())
            await store.append(first_stream, NO_STREAM, events(1), conn=first)
            await store.save_idempotent_response(first, scope, "key-2", "hash-c", {"winner": "first"})

            async def second_request() -> None:
                async with store.transaction() as conn:
                    await store.append(second_stream, NO_STREAM, events(2), conn=conn)
                    await store.save_idempotent_response(conn, scope, "key-2", "hash-c", {"winner": "second"})

            second = asyncio.create_task(second_request())
            await asyncio.wait_for(self.wait_until_blocked(store), 10)
            assert not second.done()
        # the first transaction committed on leaving the stack
        with pytest.raises(self.idempotency_key_conflict):
            await asyncio.wait_for(second, 10)
        assert await store.idempotent_response(scope, "key-2", "hash-c") == {"winner": "first"}
        assert await store.stream_version(first_stream) == 1
        assert await store.read_stream(second_stream) == []

    # ------------------------------------------------------------------ followers
    async def test_follower_never_skips_or_duplicates_with_8_concurrent_writers(self, store: EventStore) -> None:
        writers, events_per_writer, streams_per_writer = 8, 650, 4
        seed = random.randrange(2**32)
        run = uuid.uuid4().hex
        prefix = f"follow{run}-"
        shared = [f"{prefix}shared-{k}" for k in range(2)]  # contended by every writer
        start = await store.head()

        committed: dict[uuid.UUID, tuple[str, int]] = {}
        rolled_back: set[uuid.UUID] = set()
        conflicts = 0
        out_of_order_commits = 0
        max_committed_position = 0
        cursor_regressions = 0
        writers_done = asyncio.Event()
        seen: list[RecordedEvent] = []

        async def writer(w: int) -> None:
            nonlocal conflicts, out_of_order_commits, max_committed_position
            rng = random.Random(seed * 100 + w)
            own = [f"{prefix}w{w}-s{k}" for k in range(streams_per_writer)]
            version = dict.fromkeys(own, 0)
            holds = w % 2 == 0  # half of the writers keep their transaction open a little
            written = 0
            while written < events_per_writer:
                first_stream = rng.choice(own)
                plan: list[tuple[str, list[NewEvent]]] = [
                    (first_stream, events(rng.choice((1, 1, 1, 2, 3, 5, 8)), f"W{w}"))
                ]
                roll = rng.random()
                if roll < 0.15:  # a second stream of this writer in the same transaction
                    plan.append(
                        (rng.choice([s for s in own if s != first_stream]), events(rng.choice((1, 2)), f"W{w}"))
                    )
                elif roll < 0.30:  # a stream every writer appends to: conflicts, retries
                    plan.append((rng.choice(shared), events(rng.choice((1, 2)), f"W{w}")))
                abort = rng.random() < 0.03
                for _attempt in range(200):
                    results: list[AppendResult] = []
                    try:
                        async with store.transaction() as conn:
                            for stream, batch in plan:
                                expected = (
                                    version[stream]
                                    if stream in version
                                    else await store.stream_version(stream, conn=conn)
                                )
                                results.append(await store.append(stream, expected, batch, conn=conn))
                                if holds and rng.random() < 0.5:
                                    await asyncio.sleep(rng.uniform(0.0005, 0.004))
                            if abort:
                                raise _Rollback
                    except _Rollback:
                        rolled_back.update(e.event_id for _, batch in plan for e in batch)
                        break
                    except WrongExpectedVersion:
                        conflicts += 1
                        await asyncio.sleep(rng.uniform(0, 0.002))
                        continue
                    positions = [p for r in results for p in r.global_positions]
                    if min(positions) < max_committed_position:
                        out_of_order_commits += 1
                    max_committed_position = max(max_committed_position, *positions)
                    for r in results:
                        assert not r.replayed
                        if r.stream_id in version:
                            assert r.first_version == version[r.stream_id] + 1
                            version[r.stream_id] = r.last_version
                        versions = range(r.first_version, r.last_version + 1)
                        for event_id, v in zip(r.event_ids, versions, strict=True):
                            committed[event_id] = (r.stream_id, v)
                        written += len(r.event_ids)
                    break
                else:
                    pytest.fail(f"writer {w} could not commit after 200 attempts")

        async def follower() -> None:
            nonlocal cursor_regressions
            rng = random.Random(seed)
            cursor = start
            while True:
                finished = writers_done.is_set()  # read before the query: every writer has committed
                batch = await store.read_all(cursor, limit=rng.choice((1, 10, 50, 200, 500)))
                if batch:
                    cursors = [cursor, *(e.cursor for e in batch)]
                    cursor_regressions += sum(a >= b for a, b in itertools.pairwise(cursors))
                    seen.extend(batch)
                    cursor = batch[-1].cursor
                elif finished:
                    return
                else:
                    await asyncio.sleep(0.001)

        async def all_writers() -> None:
            try:
                await asyncio.gather(*(writer(w) for w in range(writers)))
            finally:
                writers_done.set()

        await asyncio.wait_for(asyncio.gather(all_writers(), follower()), 240)

        mine = [e for e in seen if e.stream_id.startswith(prefix)]
        ids = [e.event_id for e in mine]
        info = f"seed={seed}"
        assert len(committed) >= 5000, info
        assert len(seen) == len({e.event_id for e in seen}), f"the follower got an event twice ({info})"
        assert set(ids) == set(committed), (
            f"missed {len(set(committed) - set(ids))}, unexpected {len(set(ids) - set(committed))} ({info})"
        )
        assert not rolled_back & set(ids)
        by_stream: dict[str, list[int]] = defaultdict(list)
        for e in mine:
            assert committed[e.event_id] == (e.stream_id, e.stream_version), info
            by_stream[e.stream_id].append(e.stream_version)
        for stream, versions in by_stream.items():
            assert versions == list(range(1, len(versions) + 1)), f"{stream}: {versions} ({info})"
        assert len(by_stream) == writers * streams_per_writer + len(shared)
        assert cursor_regressions == 0, f"cursors must only grow ({info})"
        # the run did what it claims: transactions committed out of position order
        assert out_of_order_commits > 0, info
        print(
            f"\n{len(committed)} events, {len(rolled_back)} rolled back, {conflicts} conflicts retried,"
            f" {out_of_order_commits} commits out of position order ({info})"
        )

    async def test_follower_cursor_is_not_passed_while_an_older_transaction_is_open(self, store: EventStore) -> None:
        start = await store.head()
        stream_a, stream_b = new_stream(), new_stream()

        def ours(batch: list[RecordedEvent]) -> list[RecordedEvent]:
            return [e for e in batch if e.stream_id in (stream_a, stream_b)]

        async with contextlib.AsyncExitStack() as stack:
            conn_a = await stack.enter_async_context(store.transaction())
            a = await store.append(stream_a, NO_STREAM, [event("A")], conn=conn_a)  # A stays open
            async with store.transaction() as conn_b:
                b = await store.append(stream_b, NO_STREAM, [event("B")], conn=conn_b)
            assert a.transaction_id < b.transaction_id
            assert len(await store.read_stream(stream_b)) == 1  # B is committed and readable ...
            assert ours(await store.read_all(start)) == []  # ... but a follower must not pass A
            head = await store.head()
            assert head < Cursor(a.transaction_id, a.global_positions[0])
            assert ours(await store.read_all(head)) == []
        # A committed
        delivered = ours(await store.read_all(start))
        assert [e.event_id for e in delivered] == [a.event_ids[0], b.event_ids[0]]
        assert await store.head() >= delivered[-1].cursor

    async def test_read_all_batches_resume_from_cursor(self, store: EventStore) -> None:
        start = await store.head()
        streams = [new_stream("batch") for _ in range(3)]
        expected: list[uuid.UUID] = []
        for round_ in range(4):
            for stream in streams:
                result = await store.append(stream, None, events(round_ % 3 + 1))
                expected += result.event_ids

        cursor, got = start, []
        while batch := await store.read_all(cursor, limit=3):
            assert 1 <= len(batch) <= 3
            got += batch
            cursor = batch[-1].cursor
        assert [e.cursor for e in got] == sorted({e.cursor for e in got})
        mine = [e for e in got if e.stream_id in streams]
        assert [e.event_id for e in mine] == expected
        assert all(e.cursor > start for e in got)

        batches = [batch async for batch in store.iter_all(start, batch_size=4)]
        assert all(1 <= len(b) <= 4 for b in batches)
        assert [e.event_id for b in batches for e in b if e.stream_id in streams] == expected

        # resuming from any delivered cursor continues right after it, also from its text form
        middle = mine[len(mine) // 2]
        rest = [batch async for batch in store.iter_all(Cursor.parse(str(middle.cursor)), batch_size=5)]
        assert [e.event_id for b in rest for e in b if e.stream_id in streams] == expected[len(mine) // 2 + 1 :]

    async def test_head_cursor_advances(self, store: EventStore) -> None:
        before = await store.head()
        stream = new_stream()
        result = await store.append(stream, NO_STREAM, events(2))
        newest = Cursor(result.transaction_id, result.global_positions[-1])
        after = await store.head()
        assert before < newest <= after
        result2 = await store.append(stream, 2, events(1))
        assert after < Cursor(result2.transaction_id, result2.global_positions[-1]) <= await store.head()
        delivered = [e for e in await store.read_all(before) if e.stream_id == stream]
        assert [e.cursor for e in delivered][-1] == Cursor(result2.transaction_id, result2.global_positions[-1])

    # ------------------------------------------------------------------ time travel and payloads
    async def test_read_stream_as_of_timestamp_returns_state_at_that_moment(self, store: EventStore) -> None:
        stream = new_stream()
        await store.append(stream, NO_STREAM, events(2))
        noted = (await store.read_stream(stream))[-1].recorded_at
        await asyncio.sleep(0.02)
        await store.append(stream, 2, events(2, "Later"))
        everything = await store.read_stream(stream)
        assert everything[2].recorded_at > noted

        def versions(recorded: list[RecordedEvent]) -> list[int]:
            return [e.stream_version for e in recorded]

        assert versions(await store.read_stream(stream, as_of=noted)) == [1, 2]  # inclusive
        between = noted + (everything[2].recorded_at - noted) / 2
        assert versions(await store.read_stream(stream, as_of=between)) == [1, 2]
        assert (
            versions(await store.read_stream(stream, as_of=everything[0].recorded_at - timedelta(microseconds=1))) == []
        )
        assert versions(await store.read_stream(stream, as_of=datetime.now(UTC) + timedelta(hours=1))) == [1, 2, 3, 4]
        assert versions(
            await store.read_stream(stream, as_of=between.astimezone(datetime.now().astimezone().tzinfo))
        ) == [1, 2]

    async def test_money_and_unicode_payloads_round_trip(self, store: EventStore) -> None:
        stream = new_stream("invoice")
        data = {
            "amount_minor": 10**15,
            "refund_minor": -(10**15),
            "exact_above_2_pow_53": 2**53 + 1,
            "currency": "EUR",
            "customer": "王小明",
            "note": "Zoë paid 💶 for the 🧾 — «merci», ありがとう, שלום",
            "nested": {
                "lines": [
                    {
                        "sku": "Ä-1",
                        "qty": 3,
                        "unit_minor": 999_999_999_999_999,
                        "tags": ["发票", "🎁"],
                        "discount": None,
                        "taxable": True,
                    }
                ],
                "address": {"city": "北京市", "zip": "100000"},
                "empty": {},
                "none": [],
            },
        }
        new = NewEvent("InvoiceIssued", data, meta(actor="user:李雷", role="会计", correlation_id="corr-💡"))
        result = await store.append(stream, NO_STREAM, [new])

        (read,) = await store.read_stream(stream)
        assert read.data == data
        assert type(read.data["amount_minor"]) is int
        assert read.data["exact_above_2_pow_53"] == 9_007_199_254_740_993
        assert read.metadata["actor"] == "user:李雷"
        assert read.metadata["role"] == "会计"
        assert read.metadata["correlation_id"] == "corr-💡"
        followed = [
            e
            for e in await store.read_all(Cursor(result.transaction_id, result.global_positions[0] - 1))
            if e.stream_id == stream
        ]
        assert [e.data for e in followed] == [data]
