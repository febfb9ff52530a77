"""Who may read what from the notifications API (libs/auth/policy.py): a customer only their own
messages (the list filtered on recipient=<them>; someone else's message is a 404) and the SLA of
their own RMAs; operations and the auditor everything. The test-only fault injection is staff's."""

from __future__ import annotations

from typing import Any

from libs.auth import OPERATIONS, READERS, STAFF, AccessTable, Own, Parties, Role, allow


async def _notification(conn: Any, _param: str, notification_id: str) -> Parties | None:
    recipient = await conn.fetchval("SELECT recipient FROM notifications WHERE notification_id = $1",
                                    notification_id)
    return None if recipient is None else Parties(customer_id=recipient)


async def _subject(conn: Any, _param: str, subject_id: str) -> Parties | None:
    customer = await conn.fetchval("SELECT customer_id FROM notifications_subjects WHERE subject_id = $1",
                                   subject_id)
    return None if customer is None else Parties(customer_id=customer)


ACCESS: AccessTable = {
    "GET /notifications": allow(Role.customer, READERS, OPERATIONS, own=Own.query("recipient", "notification")),
    "GET /notifications/{notification_id}": allow(
        Role.customer, READERS, OPERATIONS, own=Own.lookup_by("notification", "notification_id", _notification)),
    "GET /slas": allow(READERS, OPERATIONS),
    "GET /slas/{subject_id}": allow(Role.customer, READERS, OPERATIONS,
                                    own=Own.lookup_by("SLA", "subject_id", _subject)),
    "POST /senders/fail-next": allow(STAFF),  # served in the test environment only
}
