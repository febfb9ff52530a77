"""One reliability scenario: a workload on the running platform while some chaos happens, then the end
checks; its row of the summary table."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tests.reliability.chaos.checks import CheckReport, dead_letters, end_checks, resent_notifications
from tests.reliability.chaos.conftest import SUMMARY
from tests.reliability.chaos.driver import ChaosLog, Mode, during
from tests.reliability.chaos.platform import Platform
from tests.reliability.chaos.workload import Workload

Chaos = Callable[[ChaosLog, random.Random], Awaitable[None]]


async def run_scenario(name: str, platform: Platform, auth: Any, mode: Mode, commands: int,
                       chaos: Chaos) -> tuple[Workload, CheckReport, ChaosLog]:
    tokens, actor_auth = auth
    rng = random.Random()
    workload = Workload(platform, actor_auth, seed=rng.randrange(1 << 30))
    for actor, role in workload.identities():  # tokens minted while the database is up
        await tokens.token(actor, role)
    await workload.setup()
    log = ChaosLog()
    before = copy.deepcopy(platform.events)
    t0 = time.monotonic()
    try:
        await during(lambda over: workload.run_until(commands, mode.concurrency, over), chaos(log, rng))
        t1 = time.monotonic()
        report = await end_checks(platform.dsn, platform.relay_name, [workload])
        t2 = time.monotonic()
    finally:
        await workload.aclose()
    ev = platform.events
    rec = workload.rec
    SUMMARY.append({
        "test": name, "commands": len(rec.sent), "2xx": len(rec.ok),
        "kills": sum(ev.kills.values()) - sum(before.kills.values()),
        "restarts": sum(ev.restarts.values()) - sum(before.restarts.values()),
        "broker restarts": ev.broker_restarts - before.broker_restarts,
        "db outage s": f"{ev.db_outage_seconds - before.db_outage_seconds:.1f}",
        "dead letters": await dead_letters(platform.dsn),
        "checks passed": f"{len(report.passed)}/{len(report.passed) + len(report.failed)}",
        "notes": [f"statuses {dict(rec.statuses())}; every answer incl. retried {dict(rec.attempt_status)}",
                  f"flows {dict(rec.flows_done)}; flow errors {len(rec.flow_errors)}; notification sends repeated "
                  f"under the same id (deduped by the sink) so far: {await resent_notifications(platform.dsn)}",
                  "chaos: " + ", ".join(a for _, a in log.actions),
                  f"seconds: workload under chaos {t1 - t0:.0f}, end checks {t2 - t1:.0f}"]})
    return workload, report, log


def assert_clean(workload: Workload, report: CheckReport) -> None:
    rec = workload.rec
    assert not report.failed, report.summary()
    assert rec.attempt_status.get(500, 0) == 0, f"{rec.attempt_status[500]} answers were 500"
    assert not rec.flow_errors, f"{len(rec.flow_errors)} flows failed: {rec.flow_errors[:5]}"
    assert rec.retry_after_missing == 0, f"{rec.retry_after_missing} 503 answers without Retry-After"
