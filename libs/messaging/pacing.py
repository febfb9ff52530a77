"""Fetch pacing: an idle consumer stops fetching every 10 ms until a commit rings its doorbell.

Tansu never answers a fetch before `fetch_max_wait_ms` (../shared/notes/infrastructure.md), so every
consumer here long-polls with a short wait (CLOSELOOP_KAFKA_FETCH_MAX_WAIT_MS, 10 ms): about 100 fetch
requests a second per consumer whether or not anything arrives. Measured on the 2-core VM with the
place-order stack (orders, projector, payments, relay) doing nothing: 0.71-0.78 of a core, of which Tansu
0.32-0.39 and the three consumer services 0.12-0.19 each (aiokafka encoding and decoding fetches in Python). The
same loops run under load too, for the consumers whose topics are quiet.

So a consumer that has seen no record for `idle_after` seconds pauses before each fetch until either the
doorbell rings or `idle_pause` passes. The doorbell is a LISTEN on the event store's commit channel
(`closeloop_events`, the NOTIFY that wakes the relay): every event that reaches Kafka through the relay
was committed to the store first, so a commit anywhere makes every paced consumer of the process fetch
at once and stay active for `idle_after`; the relay's publish follows within milliseconds and the
consumer's next short fetch finds it. Records that do not come through the store (an upstream producer's
`payments.upstream`, a carrier's `carrier.tracking`, a re-driven dead letter) wait at most `idle_pause`
after a quiet spell. A lost doorbell connection only means that bound until it is back (it reconnects by
itself); nothing is skipped or reordered, only the fetch requests are spaced out.

Measured (same stack, idle): 0.78 → 0.17 of a core (Tansu 0.39 → 0.06); after 2 s of quiet, a placed
order's read-your-writes wait is unchanged (the doorbell rings at the order's commit).
CLOSELOOP_KAFKA_IDLE_FETCH_PAUSE_MS=0 turns pacing off; on a real Kafka (which answers a fetch as soon as
data arrives) raise the fetch wait instead and turn pacing off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
from typing import Any

import asyncpg

from libs.eventstore.store import NOTIFY_CHANNEL

log = logging.getLogger("closeloop.consumer")

RECONNECT_SECONDS = 1.0


class Doorbell:
    """One LISTEN connection per (database, event loop), shared by the paced consumers of a process."""

    _shared: dict[tuple[str, int], Doorbell] = {}

    def __init__(self, dsn: str, key: tuple[str, int]) -> None:
        self.dsn = dsn
        self._key = key
        self.rung_at = 0.0
        self.rings = 0
        self.connected = False
        self.backend_pid: int | None = None
        self._users = 0
        self._future: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def acquire(cls, dsn: str) -> Doorbell:
        key = (dsn, id(asyncio.get_running_loop()))
        bell = cls._shared.get(key)
        if bell is None or bell._task is None or bell._task.done():
            bell = cls._shared[key] = cls(dsn, key)
            bell._task = asyncio.get_running_loop().create_task(bell._listen(), name="closeloop-doorbell")
        bell._users += 1
        return bell

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._shared.get(self._key) is self:
            del self._shared[self._key]
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def ring(self, *_: object) -> None:
        self.rung_at = time.monotonic()
        self.rings += 1
        if self._future is not None and not self._future.done():
            self._future.set_result(None)
        self._future = None

    async def wait(self, timeout: float) -> None:
        """Until the next ring or `timeout` seconds, whichever comes first."""
        if self._future is None:
            self._future = asyncio.get_running_loop().create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._future), timeout)

    async def _listen(self) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn)
                lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(lambda *_, lost=lost: lost.done() or lost.set_result(None))
                await conn.add_listener(NOTIFY_CHANNEL, self.ring)
                self.backend_pid = conn.get_server_pid()
                self.connected = True
                self.ring()  # commits made while it was not listening
                await lost
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: paced consumers fall back to idle_pause
                log.debug("fetch doorbell not listening (%s); retrying", exc)
            finally:
                self.connected = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(RECONNECT_SECONDS)


class FetchPacer:
    """Spaces out one aiokafka consumer's fetch requests while it is idle (see the module doc)."""

    def __init__(self, dsn: str, idle_after: float, idle_pause: float) -> None:
        self.dsn = dsn
        self.idle_after = idle_after
        self.idle_pause = idle_pause
        self.last_records = time.monotonic()
        self.fetches = 0
        self.bell: Doorbell | None = None
        self._fetcher: Any = None

    @property
    def idle(self) -> bool:
        rung = self.bell.rung_at if self.bell is not None else 0.0
        return time.monotonic() - max(self.last_records, rung) > self.idle_after

    def install(self, consumer: Any) -> None:
        """Wrap the consumer's fetcher (aiokafka creates it in start(); a restarted consumer has a new one)."""
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is None or fetcher is self._fetcher:
            return
        if self.bell is None:
            self.bell = Doorbell.acquire(self.dsn)
        original = fetcher._proc_fetch_request  # aiokafka's one request to one broker (checked by a test)
        pacer = self

        async def paced(self: Any, assignment: Any, node_id: int, request: Any) -> bool:
            pacer.fetches += 1
            if pacer.idle and pacer.bell is not None:
                try:
                    await pacer.bell.wait(pacer.idle_pause)
                except asyncio.CancelledError:  # closed or unassigned meanwhile: as aiokafka's own does
                    return False
            got = bool(await original(assignment, node_id, request))
            if got:
                pacer.last_records = time.monotonic()
            return got

        fetcher._proc_fetch_request = types.MethodType(paced, fetcher)
        self._fetcher = fetcher

    def saw_records(self) -> None:
        self.last_records = time.monotonic()

    async def close(self) -> None:
        if self.bell is not None:
            bell, self.bell = self.bell, None
            await bell.release()
