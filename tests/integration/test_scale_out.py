"""Scale-out (issue 6): two projector replicas in one consumer group, one killed mid-workload.

Real processes, as `make run` starts them (libs/devstack/supervisor.py): a relay and two projectors,
on a fresh database of the session's PostgreSQL and a Tansu broker of their own (a takeover is about
one group's membership, which other suites' consumers on the shared broker must not disturb; and the
final check replays the *whole* store, which must hold only this test's events). Orders from the
orders domain (tests/integration/helpers.py) are appended to the event store while the test runs; the
relay publishes them keyed by stream id to topics of several partitions; the group splits those
partitions between the replicas. One replica is killed with SIGKILL by its pid while events keep
coming. What a user would notice is checked: the broker's group loses the dead member, the survivor
reports (its /readyz) that it now owns every partition, it consumed partitions that were the dead
replica's, and `closeloop verify` - the auditor's check that the projector's read models equal a
replay of the store, with hash chains and stream tails - finds nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from libs.devstack.kafka import EmbeddedKafka
from libs.devstack.supervisor import Child
from libs.eventstore import EventStore
from services.projector.bootstrap import CONSUMED_TOPICS, CONSUMER_GROUP
from services.projector.projections.tables import CATEGORIES
from tests.e2e.conftest import start_child
from tests.integration.helpers import KINDS, Story, append_story, order_story
from tests.support.auth import TEST_SECRET_KEY
from tests.support.databases import fresh_database
from tests.support.wait import until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PARTITIONS = 6  # per topic, as the services create them (CLOSELOOP_KAFKA_TOPIC_PARTITIONS)
EVERY_PARTITION = sorted(f"{t}/{p}" for t in CONSUMED_TOPICS for p in range(PARTITIONS))
ORDERS = 72  # order stories (each 2-4 streams, 6-20 events), about 900 events in all
KILL_AFTER = ORDERS // 3  # the victim dies once this many orders are stored; the rest come during the takeover


@dataclass
class Cluster:
    dsn: str
    bootstrap: str
    group: str
    relay: Child
    replicas: list[Child]
    logs: Path

    def tail(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(self.logs.iterdir()))


@pytest.fixture
async def cluster(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with fresh_database(pg_dsn, "it_scale") as dsn:
        broker = EmbeddedKafka(log_path=tmp_path / "logs" / "tansu.log")
        broker.start()
        prefix = f"so{uuid.uuid4().hex[:6]}-"
        env = {**os.environ, "DATABASE_URL": dsn, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
               "CLOSELOOP_ENVIRONMENT": "test", "CLOSELOOP_SECRET_KEY": TEST_SECRET_KEY,
               "CLOSELOOP_INSTANCE_PREFIX": prefix, "CLOSELOOP_RELAY_NAME": f"{prefix}relay",
               "CLOSELOOP_KAFKA_TOPIC_PARTITIONS": str(PARTITIONS), "PYTHONUNBUFFERED": "1",
               # small batches, so that a batch is often in flight when the victim dies
               "CLOSELOOP_PROJECTOR_BATCH_MAX_RECORDS": "50"}
        started: list[Child] = []

        async def start(name: str) -> Child:
            child = await asyncio.to_thread(start_child, name, env, tmp_path / "logs")
            started.append(child)
            return child

        try:
            # Both replicas start at once, as a Deployment's pods do (migrations under a lock, the
            # daily timer armed by whichever comes first).
            relay, *replicas = await asyncio.gather(start("relay"), start("projector"), start("projector"))
            yield Cluster(dsn, broker.bootstrap, prefix + CONSUMER_GROUP, relay, replicas, tmp_path / "logs")
        finally:
            for child in started:  # by pid (Child.stop signals its own Popen), also on failure
                await asyncio.to_thread(child.stop)
            broker.stop()


async def readyz(http: httpx.AsyncClient, child: Child) -> dict[str, Any]:
    r = await http.get(f"{child.url}/readyz")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def group_members(bootstrap: str, group: str) -> list[str]:
    """The member ids of the consumer group, as the broker sees them (Tansu does not report the
    members' assignments, so those come from the replicas themselves)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        response = (await admin.describe_consumer_groups([group]))[0]
        return sorted(str(m[0]) for m in response.groups[0][5])
    finally:
        await admin.close()


async def poll(what: str, check: Callable[[], Awaitable[Any]], timeout: float, cluster: Cluster) -> Any:
    """tests/support/wait.until, with the processes' log tails when it gives up."""
    try:
        return await until(what, check, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.tail()}") from None


async def lagging_streams(store: EventStore) -> int:
    """Projected streams whose read model is not yet at the store's last version."""
    return int(await store.pool.fetchval(
        """SELECT count(*)
             FROM (SELECT stream_id, max(stream_version) AS head FROM events
                    WHERE split_part(stream_id, '-', 1) = ANY($1::text[]) GROUP BY stream_id) s
            WHERE s.head > coalesce((SELECT max(version) FROM projection_streams p
                                      WHERE p.stream_id = s.stream_id), 0)""",
        list(CATEGORIES)))


async def test_a_projector_replica_killed_mid_workload_hands_its_partitions_to_the_survivor_and_nothing_is_lost(
        cluster: Cluster) -> None:
    victim, survivor = cluster.replicas
    store = await EventStore.connect(cluster.dsn, max_size=6, run_migrations=False)
    appended: list[Story] = []
    workload: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            async def split() -> tuple[list[str], list[str]] | None:
                a, b = (await readyz(http, victim))["partitions"], (await readyz(http, survivor))["partitions"]
                members = await group_members(cluster.bootstrap, cluster.group)
                if len(members) == 2 and a and b and not set(a) & set(b) and sorted(a + b) == EVERY_PARTITION:
                    return a, b
                return None

            victims_share, survivors_share = await poll("the group split the partitions between two replicas",
                                                        split, 60, cluster)

            async def produce() -> None:
                # Orders of every kind, four at a time, each step one transaction as a command would.
                kinds = itertools.cycle(KINDS)
                pending = [order_story(next(kinds), with_payments=True) for _ in range(ORDERS)]
                running: set[asyncio.Task[None]] = set()
                for story in pending:
                    if len(running) >= 4:
                        _, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    running.add(asyncio.create_task(append_story(store, story)))
                    appended.append(story)
                    await asyncio.sleep(0.05)  # a steady flow over a few seconds, not one burst
                await asyncio.gather(*running)

            workload = asyncio.create_task(produce())

            async def victim_working() -> bool:
                return len(appended) >= KILL_AFTER and (await readyz(http, victim))["applied"] > 0

            await poll("the victim applied events", victim_working, 60, cluster)
            assert not workload.done(), "the workload ended before the kill: it does not overlap the takeover"
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.to_thread(victim.proc.wait, 10)
            assert victim.proc.returncode == -signal.SIGKILL

            async def taken_over() -> dict[str, Any] | None:
                members = await group_members(cluster.bootstrap, cluster.group)
                ready = await readyz(http, survivor)
                return ready if len(members) == 1 and ready["partitions"] == EVERY_PARTITION else None

            await poll("the survivor owns every partition", taken_over, 60, cluster)
            takeover = time.monotonic() - killed_at
            await workload
            assert survivor.alive() and cluster.relay.alive(), cluster.tail()

            await poll("the survivor caught up with the store", lambda: _caught_up(store), 60, cluster)
            consumed = (await readyz(http, survivor))["offsets"]
            assert set(consumed) & set(victims_share), (
                f"the survivor consumed none of the dead replica's partitions {victims_share}: {consumed}")
    finally:
        if workload is not None and not workload.done():
            workload.cancel()
        await store.close()

    # The auditor's check, as a user runs it: hash chains, stream tails, and the projector's read
    # models against a replay of the whole store, with no grace for lag.
    verify = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "libs.cli", "verify", "--json", "--grace", "0", "--jobs", "1",
                         "--database-url", cluster.dsn], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, f"closeloop verify found drift after the takeover:\n{verify.stdout[-4000:]}" \
                                   f"\n{verify.stderr[-2000:]}"
    doc = json.loads(verify.stdout)
    models = doc["checked"]["read_models"][0]
    assert models["skipped"] is None and not models["replay_errors"], models
    assert models["tables"]["rm_orders"] == {"live": ORDERS, "replayed": ORDERS, "drifts": 0, "behind": 0}, models
    stored = sum(len(events) for story in appended for events in story.streams.values())
    assert doc["checked"]["events"] == stored, (doc["checked"], stored)
    print(f"\nscale-out: {len(victims_share)}+{len(survivors_share)} partitions, {stored} events, "
          f"takeover {takeover:.1f} s after SIGKILL")


async def _caught_up(store: EventStore) -> bool:
    return await lagging_streams(store) == 0
