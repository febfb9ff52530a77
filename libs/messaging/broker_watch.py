"""Noticing that the broker lost what it held, so that the relay publishes it again from the store.

The embedded broker (Tansu) keeps nothing on disk: a restart is a full loss of topics, messages,
consumer groups and offsets (../shared/notes/infrastructure.md); a real cluster can lose a topic too
(deleted, or re-created by an operator). Kafka is only the transport, the event store the source of
truth, so the relay treats such a loss as "publish again everything the consumers may not have
processed", which is safe because every consumer drops an event id it already processed
(libs/messaging/inbox.py).

How it notices: each relay owns a marker topic (`closeloop.relay.<name>`) that nobody else creates or
writes. It is created after the relay's topics are in place; a broker whose topic list lacks it has
lost its state (or never saw this relay). The relay checks the list (one metadata round trip) at most
every 0.1 s while it publishes, and after a publishing error (libs/messaging/relay.py).

What it repairs: every topic of the platform with its partition count. A topic that a client's
metadata request auto-created meanwhile (Tansu creates 4 partitions; aiokafka always allows it) with
another count is deleted and created again: it can only hold what was published since the loss,
which is published again anyway. Then the marker.

What the consumers do about it (libs/messaging/positions.py): Kafka's committed offsets survive such a
repair in the wrong way (an offset committed on the lost log, or on a topic auto-created during the loss
and committed after the repair re-created it, is accepted on the new log and skipped its head), so a
consumer starts a partition only where the record before its own recorded offset is the one it processed,
and otherwise at the beginning. A consumer must also see the new partition count: clients refresh their
metadata every few seconds (CLOSELOOP_KAFKA_METADATA_MAX_AGE_MS), and a stale assignment that Tansu hands
back on the rejoin is detected and the member joins again (positions.RecordingRoundRobin).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

log = logging.getLogger("closeloop.relay")


def marker_topic(relay_name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in relay_name)
    return f"closeloop.relay.{safe}"


class BrokerWatch:
    def __init__(self, bootstrap: str, topics: Iterable[str], *, partitions: int, replication: int,
                 relay_name: str, request_timeout_ms: int = 10000) -> None:
        self.bootstrap = bootstrap
        self.topics = sorted(set(topics))
        self.partitions = partitions
        self.replication = replication
        self.marker = marker_topic(relay_name)
        self.request_timeout_ms = request_timeout_ms
        self._admin: AIOKafkaAdminClient | None = None
        self.resets = 0

    async def _client(self) -> AIOKafkaAdminClient:
        if self._admin is None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=self.request_timeout_ms)
            await admin.start()
            self._admin = admin
        return self._admin

    async def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                await self._admin.close()
            self._admin = None

    async def _partitions(self) -> dict[str, int]:
        """Topic -> partition count, as the broker reports them now (a request for all topics, which
        never auto-creates one)."""
        try:
            described = await (await self._client()).describe_topics(None)
        except Exception:
            await self.close()  # a fresh client next time: the broker may be a new process
            raise
        return {t["topic"]: len(t["partitions"]) for t in described if not t.get("error_code")}

    async def intact(self) -> bool:
        """False when the broker lost its state since the marker was made (or never had it)."""
        return self.marker in await self._partitions()

    async def repair(self, attempts: int = 5) -> list[str]:
        """Every topic with its partition count (re-creating those made with another), then the marker;
        returns what was (re-)created.

        A client's metadata request can auto-create a topic again between its deletion and our create (the
        create then finds it there, with Tansu's 4 partitions): so the counts are checked again afterwards and
        such a topic deleted and created once more; the marker only once every count is right."""
        admin = await self._client()
        repaired: list[str] = []
        for _ in range(attempts):
            have = await self._partitions()
            wrong = [t for t in self.topics if t in have and have[t] != self.partitions]
            if wrong:
                log.warning("broker reset: topics %s were auto-created with another partition count; re-creating "
                            "them with %d", wrong, self.partitions)
                await admin.delete_topics(wrong)
                await self._until_gone(wrong)
            missing = [t for t in self.topics if t not in have or t in wrong]
            if not missing:
                break
            await self._create([NewTopic(t, num_partitions=self.partitions, replication_factor=self.replication)
                                for t in missing])
            repaired += [t for t in missing if t not in repaired]
        else:
            have = await self._partitions()
            wrong = [t for t in self.topics if have.get(t) != self.partitions]
            if wrong:
                raise KafkaError(f"topics {wrong} still lack {self.partitions} partitions after {attempts} repairs")
        await self._create([NewTopic(self.marker, num_partitions=1, replication_factor=self.replication)])
        self.resets += 1
        return repaired

    async def _create(self, topics: list[NewTopic]) -> None:
        with contextlib.suppress(TopicAlreadyExistsError):
            await (await self._client()).create_topics(topics)

    async def _until_gone(self, topics: list[str], timeout: float = 10) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while set(topics) & set(await self._partitions()):
            if asyncio.get_running_loop().time() > deadline:
                raise KafkaError(f"topics {topics} were not deleted within {timeout:.0f} s")
            await asyncio.sleep(0.1)
