"""The Notification aggregate: dedupe key and stable id, the backoff schedule, sent / retried / given up."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.notifications.domain.events import (
    NotificationFailed,
    NotificationGaveUp,
    NotificationQueued,
    NotificationSent,
)
from services.notifications.domain.notification import (
    Notification,
    NotificationStatus,
    RetryPolicy,
    dedupe_key,
    notification_id,
)
from tests.unit.notifications.samples import T0


def queued(max_attempts: int = 4) -> NotificationQueued:
    key = dedupe_key("0190b1c2-aaaa-7bbb-8ccc-000000000001", "email", "rma_opened")
    return NotificationQueued(notification_id=notification_id(key), dedupe_key=key,
                              stage_key="customer:rma-1:received:email", audience="customer", recipient="cust-1",
                              address="ming@example.com", channel="email", locale="zh-TW", template="rma_opened",
                              subject_type="rma", subject_id="rma-1", stage="received",
                              source_id="0190b1c2-aaaa-7bbb-8ccc-000000000001", source_event_type="RmaOpened",
                              title="t", body="b", max_attempts=max_attempts, at=T0)


def test_dedupe_key_is_source_channel_and_template_and_the_id_derives_from_it() -> None:
    key = dedupe_key("ev-1", "sms", "rma_shipped_out")
    assert key == "ev-1:sms:rma_shipped_out"
    assert notification_id(key) == notification_id("ev-1:sms:rma_shipped_out")  # a redelivery names the same id
    assert notification_id(key) != notification_id(dedupe_key("ev-1", "email", "rma_shipped_out"))
    assert notification_id(key) != notification_id(dedupe_key("ev-2", "sms", "rma_shipped_out"))
    assert len(notification_id(key)) == 36


def test_backoff_schedule_doubles_up_to_the_cap_and_gives_up_after_the_last_attempt() -> None:
    policy = RetryPolicy(max_attempts=6, base_seconds=2, factor=2, max_delay_seconds=20)
    assert [d.total_seconds() for d in policy.schedule()] == [2, 4, 8, 16, 20]
    assert policy.next_attempt_at(1, T0) == T0 + timedelta(seconds=2)
    assert policy.next_attempt_at(5, T0) == T0 + timedelta(seconds=20)
    assert policy.next_attempt_at(6, T0) is None
    assert RetryPolicy(max_attempts=1).schedule() == []
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_seconds=10, max_delay_seconds=5)
    with pytest.raises(ValueError):
        policy.delay_after(0)


def test_queue_then_sent() -> None:
    n = Notification.queue(queued())
    assert n.status is NotificationStatus.PENDING and n.next_attempt_at == T0
    n.mark_saved()
    assert n.record_sent(1, "sink", T0 + timedelta(seconds=1))
    assert n.status is NotificationStatus.SENT and n.attempts == 1 and n.next_attempt_at is None
    assert [type(e) for e in n.pending] == [NotificationSent]
    # the same attempt's outcome again (a replica whose lease expired) records nothing
    assert not n.record_sent(1, "sink", T0 + timedelta(seconds=2))
    assert not n.record_failure(2, "late", RetryPolicy(), T0)
    assert n.allowed_commands() == []


def test_failures_are_retried_with_backoff_then_given_up() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=2, factor=2, max_delay_seconds=60)
    n = Notification.queue(queued(max_attempts=3))
    n.mark_saved()
    assert n.record_failure(1, "smtp 451", policy, T0)
    assert n.status is NotificationStatus.RETRYING and n.next_attempt_at == T0 + timedelta(seconds=2)
    assert n.record_failure(2, "smtp 451", policy, T0 + timedelta(seconds=2))
    assert n.next_attempt_at == T0 + timedelta(seconds=6)
    assert not n.record_failure(2, "again", policy, T0)  # stale attempt number
    assert n.record_failure(3, "smtp 451", policy, T0 + timedelta(seconds=6))
    assert n.status is NotificationStatus.GAVE_UP and n.next_attempt_at is None
    kinds = [type(e) for e in n.pending]
    assert kinds == [NotificationFailed, NotificationFailed, NotificationFailed, NotificationGaveUp]
    gave_up = n.pending[-1]
    assert isinstance(gave_up, NotificationGaveUp) and gave_up.attempts == 3 and "smtp 451" in gave_up.reason
    again = Notification.rehydrate(n.id, [queued(3), *n.pending])
    assert not again.record_sent(4, "sink", T0)  # given up: a late outcome records nothing
    assert again.allowed_commands() == []


def test_a_permanent_failure_gives_up_at_once() -> None:
    n = Notification.queue(queued())
    assert n.record_failure(1, "mailbox does not exist", RetryPolicy(), T0, permanent=True)
    failed, gave_up = n.pending[-2:]
    assert isinstance(failed, NotificationFailed) and failed.permanent and failed.next_attempt_at is None
    assert isinstance(gave_up, NotificationGaveUp) and gave_up.reason.startswith("permanent failure")


def test_the_attempts_allowed_when_queued_bound_the_retries() -> None:
    n = Notification.queue(queued(max_attempts=2))
    n.record_failure(1, "x", RetryPolicy(max_attempts=10), T0)
    n.record_failure(2, "x", RetryPolicy(max_attempts=10), T0)
    assert n.status is NotificationStatus.GAVE_UP


def test_rehydrated_state_matches() -> None:
    policy = RetryPolicy(max_attempts=4)
    n = Notification.queue(queued())
    n.record_failure(1, "x", policy, T0)
    n.record_sent(2, "sink", T0 + timedelta(seconds=3))
    again = Notification.rehydrate(n.id, n.pending)
    assert (again.status, again.attempts, again.sent_at) == (NotificationStatus.SENT, 2, T0 + timedelta(seconds=3))


def test_the_id_must_derive_from_the_dedupe_key() -> None:
    bad = queued().model_copy(update={"notification_id": "something-else"})
    with pytest.raises(ValueError):
        Notification.queue(bad)
