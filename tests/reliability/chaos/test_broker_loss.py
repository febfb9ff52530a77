"""Broker loss (issue 7, item 2): the embedded broker keeps nothing on disk, so restarting it in the
middle of the workload loses every topic, message, consumer group and offset. The platform recovers by
itself: the relay notices (its marker topic is gone), re-creates the topics with their partition counts
and publishes again from the store; consumers rejoin and drop what they already processed. The same end
checks as after the crashes hold (tests/reliability/chaos/checks.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from services.registry import TOPICS
from tests.reliability.chaos.driver import ChaosLog, Mode, restart_broker
from tests.reliability.chaos.platform import Platform
from tests.reliability.chaos.scenario import assert_clean, run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(3600)]


async def partition_counts(bootstrap: str) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(None)}
    finally:
        await admin.close()


async def test_a_broker_restart_mid_workload_is_recovered_from_the_event_store(
        platform: Platform, auth: Any, mode: Mode) -> None:
    async def chaos(log: ChaosLog, rng: random.Random) -> None:
        await restart_broker(platform, log, rng, mode.broker_lead_in)
        await asyncio.sleep(rng.uniform(*mode.lead_in))

    workload, report, _ = await run_scenario("broker loss", platform, auth, mode, mode.broker_commands, chaos)
    assert_clean(workload, report)
    counts = await partition_counts(platform.kafka.bootstrap)
    partitions = int(platform.env.get("CLOSELOOP_KAFKA_TOPIC_PARTITIONS", "6"))
    assert {t: counts.get(t) for t in TOPICS} == {t: partitions for t in TOPICS}


async def test_the_watch_notices_a_fresh_broker_and_repairs_topics_auto_created_with_another_count() -> None:
    """On a broker of its own: no marker means lost; a topic that a client's metadata request auto-created
    (Tansu: 4 partitions) is re-created with the platform's count; after the repair the broker is intact,
    and after a restart it is not again."""
    from aiokafka import AIOKafkaProducer

    from libs.devstack.kafka import EmbeddedKafka
    from libs.messaging.broker_watch import BrokerWatch

    kafka = EmbeddedKafka()
    kafka.start()
    watch = BrokerWatch(kafka.bootstrap, ["a.events", "b.events"], partitions=6, replication=1, relay_name="r-1")
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait("a.events", b"auto-created by the metadata request")
        finally:
            await producer.stop()
        assert (await partition_counts(kafka.bootstrap))["a.events"] != 6
        assert not await watch.intact()
        assert sorted(await watch.repair()) == ["a.events", "b.events"]
        assert await watch.intact()
        counts = await partition_counts(kafka.bootstrap)
        assert (counts["a.events"], counts["b.events"], counts[watch.marker]) == (6, 6, 1)
        await watch.close()
        kafka.stop()
        kafka.start()  # same port, nothing kept
        assert not await watch.intact()
    finally:
        await watch.close()
        kafka.stop()


async def test_a_topic_auto_created_again_during_the_repair_is_re_created_with_the_platforms_count() -> None:
    """The race the full broker-loss run met: the watch deletes a topic that a client auto-created with
    Tansu's 4 partitions, and before its create goes through, another client's metadata request auto-creates
    it again (with 4). The repair must not leave it so (a producer would then map a stream's new events to
    other partitions than its old ones, and consumers' commits to partitions 4 and 5 would fail)."""
    from aiokafka import AIOKafkaProducer

    from libs.devstack.kafka import EmbeddedKafka
    from libs.messaging.broker_watch import BrokerWatch

    kafka = EmbeddedKafka()
    kafka.start()

    async def auto_create(topic: str) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"auto-created by a client's metadata request")
        finally:
            await producer.stop()

    class RacedWatch(BrokerWatch):
        raced = False

        async def _until_gone(self, topics: list[str], timeout: float = 10) -> None:
            await super()._until_gone(topics, timeout)
            if not self.raced:  # a client comes in right after the deletion, once
                self.raced = True
                await auto_create(topics[0])

    watch = RacedWatch(kafka.bootstrap, ["a.events"], partitions=6, replication=1, relay_name="r-2")
    try:
        await auto_create("a.events")
        assert (await partition_counts(kafka.bootstrap))["a.events"] != 6
        await watch.repair()
        assert watch.raced
        counts = await partition_counts(kafka.bootstrap)
        assert (counts["a.events"], counts[watch.marker]) == (6, 1)
        assert await watch.intact()
    finally:
        await watch.close()
        kafka.stop()
