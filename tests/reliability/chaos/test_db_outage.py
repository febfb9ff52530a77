"""Database outage (issue 7, item 3): PostgreSQL is stopped for a few seconds in the middle of the
workload. Commands meanwhile get 503 with Retry-After (never a 500, never a half-applied change: the
client's retry with the same Idempotency-Key applies it once), the services reconnect by themselves,
and the same end checks hold (tests/reliability/chaos/checks.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.reliability.chaos.driver import ChaosLog, Mode, database_outage
from tests.reliability.chaos.platform import Platform
from tests.reliability.chaos.scenario import assert_clean, run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(3600)]


async def test_a_database_outage_mid_workload_is_503_with_retry_after_and_then_heals(
        platform: Platform, auth: Any, mode: Mode) -> None:
    async def chaos(log: ChaosLog, rng: random.Random) -> None:
        await database_outage(platform, mode.db_outage_seconds, log, rng, mode.lead_in)

    workload, report, _ = await run_scenario("database outage", platform, auth, mode, mode.db_commands, chaos)
    assert workload.rec.attempt_status.get(503, 0) > 0, "no command met the outage (503): the test proved nothing"
    assert_clean(workload, report)
    assert all(c.alive() for c in platform.children.values()), "a service died instead of reconnecting"
