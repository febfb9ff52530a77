"""A batch subscriber polls again at once after an empty poll (libs/messaging/broker.py without_idle_sleep).

FastStream's own BatchSubscriber sleeps batch_timeout_ms after a poll that found nothing, so a record that
arrives meanwhile waits for the sleep's end on every hop of a command's path."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from faststream.kafka import KafkaBroker

from libs.messaging.broker import IDLE_POLL_MS, without_idle_sleep
from libs.messaging.positions import subscribe


class Polls:
    """aiokafka's getmany as the subscriber sees it: one answer per call."""

    def __init__(self, *answers: dict[str, list[str]]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[int, int | None]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int | None) -> dict[str, list[str]]:
        self.calls.append((timeout_ms, max_records))
        return self.answers.pop(0)


async def _no_sleep(*_: Any) -> None:
    raise AssertionError("the subscriber slept after an empty poll")


async def test_an_empty_poll_is_followed_by_the_next_poll_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = KafkaBroker("127.0.0.1:1")
    subscriber = without_idle_sleep(broker.subscriber("t", batch=True, batch_timeout_ms=20, max_records=7,
                                                      group_id="g"))
    polls = Polls({}, {"t/0": ["a", "b"], "t/1": ["c"]})
    monkeypatch.setattr(anyio, "sleep", _no_sleep)
    assert await subscriber.get_msg(polls) == ()
    assert await subscriber.get_msg(polls) == ("a", "b", "c")
    # getmany does the waiting (it returns as soon as a fetch brings records), with the subscriber's max_records
    assert polls.calls == [(IDLE_POLL_MS, 7), (IDLE_POLL_MS, 7)]


async def test_faststreams_own_batch_subscriber_sleeps_which_is_why_it_is_replaced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    broker = KafkaBroker("127.0.0.1:1")
    subscriber = broker.subscriber("t", batch=True, batch_timeout_ms=20, max_records=7, group_id="g")
    monkeypatch.setattr(anyio, "sleep", _no_sleep)
    with pytest.raises(AssertionError, match="slept"):
        await subscriber.get_msg(Polls({}))


def test_every_service_subscriber_made_by_subscribe_polls_without_sleeping() -> None:
    broker = KafkaBroker("127.0.0.1:1")
    batch = subscribe(broker, "t", name="c", pool=lambda: None, bootstrap="127.0.0.1:1", batch=True,
                      batch_timeout_ms=20, max_records=5, group_id="g")
    single = subscribe(broker, "u", name="c", pool=lambda: None, bootstrap="127.0.0.1:1", group_id="g")
    assert batch.get_msg.__func__.__name__ == "_next_batch"
    assert type(single).get_msg is single.get_msg.__func__  # not a batch subscriber: left as it is
