"""A background loop outlives a database outage: the errors asyncpg raises while PostgreSQL goes away
(a refused connection, a server shutting down, a pooled connection left half-broken mid-operation) are
logged and retried, not fatal. The full reliability run's database outage killed the notifications
service this way: its timer runner met asyncpg's InternalClientError ("cannot switch to state 12;
another operation (2) is in progress"), which it did not catch, and the process stopped."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from libs.application.timers import TimerRunner

OUTAGE_ERRORS = [
    asyncpg.exceptions.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("connection is closed"),
    ConnectionRefusedError(111, "Connection refused"),
    TimeoutError(),
]


class _Away:
    """A pool whose database is away for `failures` calls, then answers with no due timers."""

    def __init__(self, error: BaseException, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0

    async def fetch(self, *_: Any, **__: Any) -> list[Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return []


@pytest.mark.parametrize("error", OUTAGE_ERRORS, ids=lambda e: type(e).__name__)
async def test_the_timer_runner_keeps_running_through_a_database_outage(error: BaseException) -> None:
    pool = _Away(error, failures=3)
    runner = TimerRunner(pool, "test", {}, poll_seconds=0.01)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(500):
        if pool.calls > 4:
            break
        await asyncio.sleep(0.01)
    assert not task.done(), f"the timer runner stopped on {type(error).__name__}: {task.exception()!r}"
    assert pool.calls > 4, "the runner did not try again after the outage"
    stop.set()
    await asyncio.wait_for(task, 5)
