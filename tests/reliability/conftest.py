"""The reliability suite runs on the same platform as the end-to-end tests: every service as its own process
on the session's PostgreSQL and Kafka (tests/e2e/conftest.py's `stack`, package-scoped here too).

`make test` runs it bounded (CLOSELOOP_RELIABILITY=bounded, the default): fewer hypothesis examples and
schemathesis cases; `make test-reliability` runs the full form (CLOSELOOP_RELIABILITY=full)."""

from __future__ import annotations

import os
from typing import Any

from tests.e2e.conftest import _close_test_tokens, client, feed, stack  # noqa: F401  (fixtures, this package too)

FULL = os.environ.get("CLOSELOOP_RELIABILITY", "bounded") == "full"

# Figures the tests report, printed as one table at the end of the run (make test-reliability's summary).
SUMMARY: dict[str, str] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    stats = terminalreporter.stats
    ours = [r for key in ("passed", "failed") for r in stats.get(key, []) if "tests/reliability" in r.nodeid]
    if not ours:
        return
    passed = sum(1 for r in ours if r.passed)
    rows = {"form": "full" if FULL else "bounded", **SUMMARY, "checks passed": f"{passed} of {len(ours)}"}
    width = max(len(k) for k in rows)
    terminalreporter.write_sep("=", "reliability summary (issue 7)")
    for k, v in rows.items():
        terminalreporter.write_line(f"{k:<{width}}  {v}")
