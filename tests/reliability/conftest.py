"""The reliability suite runs on the same platform as the end-to-end tests: every service as its own process
on the session's PostgreSQL and Kafka (tests/e2e/conftest.py's `stack`, package-scoped here too).

`make test` runs it bounded (CLOSELOOP_RELIABILITY=bounded, the default): fewer hypothesis examples and
schemathesis cases; `make test-reliability` runs the full form (CLOSELOOP_RELIABILITY=full)."""

from __future__ import annotations

import os

from tests.e2e.conftest import _close_test_tokens, client, feed, stack  # noqa: F401  (fixtures, this package too)

FULL = os.environ.get("CLOSELOOP_RELIABILITY", "bounded") == "full"
