"""Topics: one per service (`orders.events`, `payments.events`, ...), created
explicitly with their partition count. Never rely on broker auto-creation: Tansu
auto-creates with 4 partitions and FastStream declares subscriber topics with 1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError


def topic_router(category_topics: Mapping[str, str]) -> Callable[[str], str]:
    """stream id -> topic, by the stream's category (the part before the first '-').
    A category nobody declared goes to `<category>.events` rather than being dropped."""

    def route(stream_id: str) -> str:
        category = stream_id.split("-", 1)[0]
        return category_topics.get(category) or f"{category}.events"

    return route


async def ensure_topics(bootstrap: str, topics: Iterable[str], *, partitions: int,
                        replication: int = 1, timeout: float = 30) -> list[str]:
    """Create the missing topics; returns the ones created. Safe to call concurrently."""
    wanted = sorted(set(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await admin.start()
            break
        except KafkaError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=replication)
                                           for t in missing])
        return missing
    finally:
        await admin.close()
