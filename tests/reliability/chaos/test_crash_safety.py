"""Crash safety (issue 7, item 1): a workload of real HTTP commands across orders, payments, rma and
shipping runs while every service process (the relay, each command service, the consumers and the
projector) is killed with SIGKILL at random moments and started again. Afterwards every read model
equals a replay of the store, nothing is lost or stored twice, every 2xx command is in the store, no
order is refunded twice or above what was paid, no RMA has two outbound shipments, no notification
was sent twice (tests/reliability/chaos/checks.py)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.reliability.chaos.driver import ChaosLog, Mode, kill_each_process, kill_each_process_overlapping
from tests.reliability.chaos.platform import KILLABLE, Platform
from tests.reliability.chaos.scenario import assert_clean, run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(3600)]


async def test_kill_9_of_every_process_mid_workload_loses_nothing_and_doubles_nothing(
        platform: Platform, auth: Any, mode: Mode) -> None:
    async def chaos(log: ChaosLog, rng: random.Random) -> None:
        if mode.kill_window is not None and mode.kills_per_process == 1:
            await kill_each_process_overlapping(platform, KILLABLE, mode.kill_window, log, rng)
        else:
            await kill_each_process(platform, KILLABLE, mode.kills_per_process, log, rng)

    workload, report, log = await run_scenario("crash safety", platform, auth, mode, mode.crash_commands, chaos)
    assert sum(1 for _, a in log.actions if a.startswith("kill -9")) == len(KILLABLE) * mode.kills_per_process
    assert len(workload.rec.sent) >= mode.crash_commands
    assert_clean(workload, report)
