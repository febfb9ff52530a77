"""Session advisory locks (the projector's rebuild and reconciliation runs take turns with one) are held on
a connection of their own (libs/application/pool.py session_lock), because the projector's pool no longer
resets connections on release: a lock left on a pooled connection would make every later run wait for ever.
After a run that failed, and after a wait that was cancelled, no session holds the lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from libs.application.pool import connect_store, session_lock
from libs.eventstore import EventStore

pytestmark = pytest.mark.integration
KEY = 7_401_337


async def holders(store: EventStore) -> int:
    return await store.pool.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1", KEY)


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[EventStore]:
    es = await connect_store(pg_dsn, max_size=4)
    try:
        yield es
    finally:
        await es.close()


async def test_a_failed_run_leaves_the_lock_free(store: EventStore) -> None:
    with pytest.raises(RuntimeError):
        async with session_lock(store, KEY):
            assert await holders(store) == 1
            raise RuntimeError("the run failed")
    assert await holders(store) == 0
    async with session_lock(store, KEY):  # the next run gets it
        assert await holders(store) == 1
    assert await holders(store) == 0


async def test_a_cancelled_wait_leaves_the_lock_free(store: EventStore) -> None:
    got = asyncio.Event()

    async def waiter() -> None:
        async with session_lock(store, KEY):
            got.set()

    async with session_lock(store, KEY):
        task = asyncio.create_task(waiter())
        while not await store.pool.fetchval(  # the waiter is queued on the lock
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1", KEY):
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not got.is_set()
    assert await holders(store) == 0
    # The pool's connections hold nothing either: each of them can take the lock and give it back.
    for _ in range(4):
        async with store.pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
            assert await conn.fetchval("SELECT pg_advisory_unlock($1)", KEY)
