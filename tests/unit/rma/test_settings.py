"""The RMA process's settings fail fast on a bad value; the defaults are the documented ones."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.rma.bootstrap import RmaSettings, load_config, load_seed


def test_defaults() -> None:
    s = RmaSettings(_env_file=None)  # type: ignore[call-arg]
    assert (s.http_port, s.transfer_ttl_seconds, s.default_warehouse, s.warranty_timezone) == (
        8004, 86400, "tw-service-centre", "Asia/Taipei")
    faults, policy = load_config(s)
    assert "left_button.double_click" in faults.codes and policy.currency == "TWD"
    seed = load_seed(s)
    assert seed is not None and seed.items


def test_the_environment_sets_a_short_transfer_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOSELOOP_TRANSFER_TTL_SECONDS", "2")
    monkeypatch.setenv("CLOSELOOP_CATALOGUE_SEED_PATH", "")
    s = RmaSettings()
    assert s.transfer_ttl_seconds == 2 and load_seed(s) is None


@pytest.mark.parametrize(("name", "value"), [("transfer_ttl_seconds", 0), ("warranty_timezone", "Mars/Olympus"),
                                             ("default_warehouse", "has space"), ("timer_poll_seconds", 0)])
def test_bad_values_fail_at_start(name: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        RmaSettings(**{name: value})
    assert name in str(err.value)
