"""The roles a token (or API key) can carry, and the groups the services' access rules are written in.

- customer, merchant: the parties of an order (and a customer of an RMA); they see and change only
  their own (the token's actor is the customer id, or the merchant id).
- service, platform: the platform's own systems (service: integrations, timers, technicians and
  warehouses) and its staff (platform: operations, customer service); they act for anyone.
- importer, reconciler, approver: the war room's operations roles (seed 000: Wade imports, Huber
  marks reconciliation results, Louis decides), also for the after-sales work that is theirs
  (sales records and manifests; warranty reviews and duplicate follow-ups; substitution approval).
- auditor: reads everything, changes nothing.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    customer = "customer"
    merchant = "merchant"
    service = "service"
    importer = "importer"
    reconciler = "reconciler"
    approver = "approver"
    auditor = "auditor"
    platform = "platform"


ALL_ROLES: frozenset[str] = frozenset(Role)
STAFF: frozenset[str] = frozenset({Role.service, Role.platform})
"""The platform's own systems and staff: act for anyone."""
PARTIES: frozenset[str] = frozenset({Role.customer, Role.merchant})
"""See and change only their own (their token's actor is the customer or merchant id)."""
OPERATIONS: frozenset[str] = frozenset({Role.importer, Role.reconciler, Role.approver})
READERS: frozenset[str] = STAFF | {Role.auditor}
"""Read everything: the platform's systems and staff, and the auditor."""
