"""The chaos driver: while the workload runs, kill -9 service processes at random moments and start them
again; restart the broker (a full loss); stop PostgreSQL for a few seconds. Blocking process work runs in
a thread so that the workload's event loop keeps sending."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.reliability.chaos.platform import Platform


@dataclass
class Mode:
    """Sizes of a run: the bounded form (`make test`) or the full one (`make test-reliability`)."""

    name: str
    crash_commands: int
    kills_per_process: int
    broker_commands: int
    db_commands: int
    db_outage_seconds: float
    load_seconds: float
    load_rate: int
    concurrency: int
    # Seconds of workload before the chaos starts (a random moment in this range).
    lead_in: tuple[float, float] = (2.0, 4.0)
    # The same for the broker's restart: early, while the services' consumers are still joining and the first
    # orders' events are in flight (a consumer's committed offset used to outlive the lost log there and
    # skip the head of the re-published partition: libs/messaging/positions.py).
    broker_lead_in: tuple[float, float] = (1.0, 2.0)
    # The kills: one after another (each process back before the next kill), or all within this many
    # seconds of each other, overlapping (several processes down at once), when set.
    kill_window: float | None = None

    @classmethod
    def of(cls, name: str) -> Mode:
        if name == "full":
            return cls("full", 10_000, 3, 2_000, 2_000, 6.0, 60, 300, 64)
        # make test: every scenario and every check, at sizes that keep it a few minutes of CI.
        return cls("bounded", 400, 1, 150, 150, 3.0, 10, 25, 32, kill_window=15.0)


@dataclass
class ChaosLog:
    actions: list[tuple[float, str]] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.actions.append((time.monotonic(), what))


async def kill_each_process(platform: Platform, names: list[str], kills_per_process: int, log: ChaosLog,
                            rng: random.Random, *, gap: tuple[float, float] = (0.5, 3.0)) -> None:
    """kill -9 every process in `names` `kills_per_process` times, in a random order, at random moments
    (a random gap before each kill, and a random short downtime before the restart)."""
    order = [n for n in names for _ in range(kills_per_process)]
    rng.shuffle(order)
    for name in order:
        await asyncio.sleep(rng.uniform(*gap))
        await asyncio.to_thread(platform.kill, name)
        log.add(f"kill -9 {name}")
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        await platform.restart(name)
        log.add(f"restarted {name}")


async def kill_each_process_overlapping(platform: Platform, names: list[str], window: float, log: ChaosLog,
                                       rng: random.Random) -> None:
    """kill -9 every process in `names` once, each at a random moment within `window` seconds (so several
    may be down at once), and start each again after a random short downtime."""

    async def one(name: str) -> None:
        await asyncio.sleep(rng.uniform(0.0, window))
        await asyncio.to_thread(platform.kill, name)
        log.add(f"kill -9 {name}")
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        await platform.restart(name)
        log.add(f"restarted {name}")

    await asyncio.gather(*[one(n) for n in names])


async def restart_broker(platform: Platform, log: ChaosLog, rng: random.Random,
                         lead_in: tuple[float, float] = (2.0, 4.0)) -> None:
    await asyncio.sleep(rng.uniform(*lead_in))
    platform.restart_broker()  # from the loop's thread (PR_SET_PDEATHSIG is per thread)
    log.add("broker restarted (empty)")


async def database_outage(platform: Platform, seconds: float, log: ChaosLog, rng: random.Random,
                          lead_in: tuple[float, float] = (2.0, 4.0)) -> None:
    await asyncio.sleep(rng.uniform(*lead_in))
    stopped = await asyncio.to_thread(platform.stop_database)
    log.add("postgres stopped")
    await asyncio.sleep(seconds)
    platform.start_database(stopped)  # from the loop's thread (PR_SET_PDEATHSIG is per thread)
    log.add("postgres started")


async def during(workload: Callable[[asyncio.Event], Awaitable[None]], chaos: Awaitable[None]) -> None:
    """Run the workload until it has sent what it should and the chaos is over; the chaos is awaited
    first so that an error in it (a service that does not come back) surfaces."""
    chaos_over = asyncio.Event()
    work = asyncio.create_task(workload(chaos_over))
    try:
        await chaos
    finally:
        chaos_over.set()
    await work
