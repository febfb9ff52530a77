"""The notifications settings fail fast on a bad value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.notifications.bootstrap import NotificationsSettings


def test_defaults() -> None:
    s = NotificationsSettings(_env_file=None)  # type: ignore[call-arg]
    assert s.http_port == 8006
    assert s.retry_policy().max_attempts == 8
    config = s.notifier_config()
    assert config.owner == "notifications" and "RmaProcessingStarted" in config.processing_started_events


def test_short_sla_and_owner_prefix() -> None:
    s = NotificationsSettings(sla_table="received=2s", instance_prefix="t1-", retry_base_seconds=0.2,
                              retry_max_delay_seconds=1)
    assert s.notifier_config().sla.sla("received").total_seconds() == 2
    assert s.owner == "t1-notifications"


@pytest.mark.parametrize("bad", [{"sla_table": "closed=1d"}, {"sla_table": "received=soon"},
                                 {"display_timezone": "Mars/Olympus"}, {"sink_table": False},
                                 {"retry_base_seconds": 10, "retry_max_delay_seconds": 1},
                                 {"ops_email": "not-an-address"}, {"default_locale": "fr"}])
def test_bad_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        NotificationsSettings(**bad)  # type: ignore[arg-type]
