"""The notifications service's Prometheus counters (served on /metrics with the platform's)."""

from __future__ import annotations

from prometheus_client import Counter

QUEUED = Counter("closeloop_notifications_queued_total", "Messages written to the outbox", ["channel", "template"])
DEDUPLICATED = Counter("closeloop_notifications_deduplicated_total",
                       "Messages not written again: same cause (dedupe key) or stage already notified (stage key)",
                       ["channel"])
SENT = Counter("closeloop_notifications_sent_total", "Messages the sender accepted", ["channel"])
FAILED = Counter("closeloop_notifications_failed_total", "Send attempts that failed", ["channel"])
RETRIED = Counter("closeloop_notifications_retried_total", "Failed attempts scheduled to be tried again",
                  ["channel"])
GAVE_UP = Counter("closeloop_notifications_gave_up_total", "Messages given up after the last attempt",
                  ["channel"])
SLA_BREACHES = Counter("closeloop_sla_breach_warnings_total", "SlaBreachWarning events emitted", ["stage"])
