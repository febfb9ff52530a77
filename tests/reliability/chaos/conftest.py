"""The reliability stack: its own PostgreSQL, broker and service processes (the chaos stops and kills
them), shared by the tests of this package (each checks the whole store at its end, so they may run
in any order; pytest takes the files alphabetically, except that the load test goes first: see
pytest_collection_modifyitems). CLOSELOOP_RELIABILITY=full runs the full sizes
(`make test-reliability`); otherwise the bounded form that `make test` runs.

At the end of the session a summary table is printed: workload size, kills, restarts, broker restarts,
outage seconds, dead letters and the checks passed, per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.reliability.chaos.driver import Mode
from tests.reliability.chaos.platform import Platform
from tests.support.auth import actor_auth, actor_tokens

pytestmark = pytest.mark.reliability

SUMMARY: list[dict[str, Any]] = []
SUMMARY_NOTES: list[str] = []


@pytest.fixture(scope="package")
def mode() -> Mode:
    return Mode.of(os.environ.get("CLOSELOOP_RELIABILITY", "bounded"))


@pytest.fixture(scope="package")
def platform() -> Iterator[Platform]:
    p = Platform()
    SUMMARY_NOTES.append(f"logs of every process: {p.logs}")
    try:
        p.start()
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="package")
async def auth(platform: Platform) -> AsyncIterator[Any]:
    tokens = actor_tokens(platform.dsn)
    try:
        yield tokens, actor_auth(tokens)
    finally:
        await tokens.aclose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The load test first, on a broker that holds only its own records. The embedded Tansu keeps every
    record in memory with no retention, and its CPU per message grows with what it holds (measured on this
    machine: at 100 messages/s 9 % of a core with nothing stored, 28 % with 200,000 records stored, idle
    5 → 7 %). After the chaos tests' ~15,000 commands the broker alone took 50 to 76 % of a core of the 2 and
    the load test measured the broker's backlog, not the platform (the run of 2026-12-02 14:22: 25/s not
    sustained, the broker's share rising from 47 % to 76 % as the offered rate fell). A real Kafka's cost
    per message does not grow with the retained log."""
    load = [i for i in items if i.nodeid.endswith("test_load.py::test_sustained_load_latencies_errors_and_memory")]
    items[:] = load + [i for i in items if i not in load]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not SUMMARY:
        return
    cols = ["test", "commands", "2xx", "kills", "restarts", "broker restarts", "db outage s", "dead letters",
            "checks passed"]
    rows = [[str(r.get(c, "")) for c in cols] for r in SUMMARY]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    terminalreporter.write_sep("=", "reliability: crashes, broker loss, database outage, load")
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        terminalreporter.write_line("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    for r in SUMMARY:
        for line in r.get("notes", []):
            terminalreporter.write_line(f"  {r['test']}: {line}")
    for line in SUMMARY_NOTES:
        terminalreporter.write_line(f"  {line}")
