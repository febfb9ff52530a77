"""The event store of a command or relay process, on a pool whose release costs no round trip.

asyncpg's default release runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`
on every connection it takes back: one more round trip per `pool.fetchrow`/`pool.acquire()`. Counted
with log_statement=all at 40 place-order commands/s, that query was the most frequent statement of the
platform (8.2 per command across the processes, 2-4 of them in the orders process alone).

These processes never leave session state on a pooled connection, so the query resets nothing:
- advisory locks taken on pooled connections are transaction-scoped (`pg_advisory_xact_lock*`); the
  migration runner's session lock is released in its own `finally`; other session locks (the projector's
  rebuild and reconciliation runs) are held on a connection of their own (`session_lock` below);
- LISTEN happens only on dedicated connections (read-your-writes, the relay's leader connection, the
  store's follower wake-up), never on pooled ones;
- no `SET` (session settings) anywhere; cursors live only inside transactions.

What a release must still do, asyncpg does before calling `reset`: an open transaction is rolled back
and the connection's listeners are dropped (`Connection._reset`); a connection whose query was
cancelled is waited for or terminated.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from libs.eventstore import EventStore


async def _keep_session(conn: asyncpg.Connection) -> None:
    """asyncpg's pool `reset` hook: nothing to reset (module doc)."""


async def connect_store(dsn: str, *, min_size: int = 1, max_size: int = 10) -> EventStore:
    """Like `EventStore.connect` (migrations included), on a pool without the per-release reset query."""
    return await EventStore.connect(dsn, min_size=min_size, max_size=max_size, reset=_keep_session)


@contextlib.asynccontextmanager
async def session_lock(store: EventStore, key: int) -> AsyncIterator[None]:
    """Hold the session advisory lock `key` for the block (waiting for it), on a connection of its own that
    is closed afterwards: closing the session releases the lock whatever happened (a wait cancelled just as
    the lock was granted, an unlock that failed), so no pooled connection ever goes back to a pool without
    reset still holding it. Without the store's DSN, a pooled connection that unlocks everything it holds
    before going back, and is terminated if it cannot."""
    if store.dsn:
        conn = await asyncpg.connect(store.dsn)
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", key)
            yield
        finally:
            await conn.close()
        return
    async with store.pool.acquire() as pooled:
        try:
            await pooled.execute("SELECT pg_advisory_lock($1)", key)
            yield
        finally:
            try:
                await pooled.execute("SELECT pg_advisory_unlock_all()")
            except BaseException:
                pooled.terminate()
                raise
