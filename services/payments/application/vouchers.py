"""Vouchers (代金券, seed 二/三/五): issuing them (operations, customer service, the platform's own
services), a customer's vouchers with their status and expiry, and loading a customer's vouchers
as candidates of an automatic binding (application/transactions.py, prepay).

A customer's vouchers are found from their VoucherIssued events in the store (a voucher never
changes hands). There is no per-customer lookup table yet; a migration adding one is a follow-up
(reported, not added: migrations are being added by another change).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from libs.application.unit_of_work import CommandContext, CommandResult, UnitOfWork, execute
from libs.domain.errors import Conflict
from libs.eventstore import EventStore
from services.payments.domain.checkout import require_party
from services.payments.domain.voucher import (
    CompensationGrant,
    Voucher,
    VoucherCategory,
    VoucherIssued,
    VoucherStatus,
    VoucherTerms,
)
from services.payments.domain.wallet import WalletPolicy

ISSUER_ROLES = frozenset({"platform", "service"})
_USABLE = (VoucherStatus.ISSUED, VoucherStatus.RETURNED)


def voucher_view(voucher: Voucher, now: datetime) -> dict[str, Any]:
    """A voucher as the API shows it: terms, status, current expiry and where it is used."""
    assert voucher.terms is not None and voucher.expires_at is not None and voucher.status is not None
    past_expiry = now >= voucher.expires_at
    return {
        "voucher_id": voucher.id, "customer_id": voucher.customer_id,
        "category": voucher.voucher_category.value if voucher.voucher_category else None,
        "status": voucher.status.value,
        "usable_now": voucher.status in _USABLE and not past_expiry and now >= voucher.terms.valid_from,
        "expires_at": voucher.expires_at.isoformat(), "past_expiry": past_expiry,
        "terms": voucher.terms.model_dump(mode="json"),
        "bound_order_id": voucher.bound_order_id,
        "bound_value": voucher.bound_value.model_dump() if voucher.bound_value else None,
        "redeemed_order_id": voucher.redeemed_order_id if voucher.status is VoucherStatus.REDEEMED else None,
        "redeemed_value": voucher.redeemed_value.model_dump()
        if voucher.redeemed_value and voucher.status is VoucherStatus.REDEEMED else None,
        "compensation": voucher.compensation.model_dump(mode="json") if voucher.compensation else None,
        "issued_by": voucher.issued_by, "issued_at": voucher.issued_at.isoformat() if voucher.issued_at else None,
        "allowed_commands": voucher.allowed_commands(), "version": voucher.version + len(voucher.pending),
    }


async def customer_voucher_ids(conn: asyncpg.Connection, customer_id: str) -> list[str]:
    """The ids of every voucher issued to the customer, oldest first."""
    prefix = f"{Voucher.category}-"
    rows = await conn.fetch(
        "SELECT stream_id FROM events WHERE event_type = $1 AND stream_version = 1 AND data->>'customer_id' = $2"
        " ORDER BY global_position", VoucherIssued.event_type, customer_id)
    return [r["stream_id"].removeprefix(prefix) for r in rows if r["stream_id"].startswith(prefix)]


async def load_customer_vouchers(uow: UnitOfWork, customer_id: str) -> list[Voucher]:
    """The customer's vouchers, tracked by the unit of work (so a binding is appended with its version)."""
    ids = await customer_voucher_ids(uow.conn, customer_id)
    loaded = await uow.load_many([(Voucher, i) for i in ids]) if ids else []
    return [v for v in loaded if isinstance(v, Voucher) and v.exists]


@dataclass
class VouchersService:
    store: EventStore
    policy: WalletPolicy
    clock: Callable[[], datetime]

    async def issue(self, voucher_id: str | None, customer_id: str, category: VoucherCategory, terms: VoucherTerms,
                    compensation: CompensationGrant | None, ctx: CommandContext) -> CommandResult:
        """Issue a voucher (platform or service role). Issuing the same voucher again returns it; another
        voucher under an existing id is a Conflict."""
        require_party(ctx.role, ctx.actor, action="issue vouchers", roles=ISSUER_ROLES)
        # Generated once, outside the retried function; a retry with the same Idempotency-Key gets the
        # first response (the scope does not depend on the generated id).
        vid = voucher_id or f"v-{uuid.uuid4().hex[:16]}"

        async def fn(uow: UnitOfWork) -> dict[str, Any]:
            at = self.clock()
            existing = await uow.load(Voucher, vid)
            if existing.exists:
                same = (existing.customer_id, existing.voucher_category, existing.terms, existing.compensation) == (
                    customer_id, category, terms, compensation)
                if not same:
                    raise Conflict(f"voucher {vid} already exists with other terms or another customer",
                                   voucher_id=vid)
                return voucher_view(existing, at)
            voucher = Voucher.issue(vid, customer_id=customer_id, category=category, terms=terms,
                                    issued_by=ctx.actor, at=at, compensation=compensation)
            uow.add(voucher)
            return voucher_view(voucher, at)

        return await execute(self.store, ctx, "payments:vouchers:issue", fn)

    async def of_customer(self, customer_id: str) -> dict[str, Any]:
        """A customer's vouchers, soonest expiry first, with the binding preference in force."""
        now = self.clock()
        async with self.store.transaction() as conn:
            uow = UnitOfWork(self.store, conn, CommandContext("query", "service", "query"))
            vouchers = await load_customer_vouchers(uow, customer_id)
        vouchers.sort(key=lambda v: (v.expires_at or now, v.id))
        return {"customer_id": customer_id, "binding_preference": self.policy.binding_preference.value,
                "vouchers": [voucher_view(v, now) for v in vouchers]}

    async def get(self, voucher_id: str) -> dict[str, Any]:
        """One voucher (NotFound when it was never issued)."""
        async with self.store.transaction() as conn:
            voucher = await UnitOfWork(self.store, conn, CommandContext("query", "service", "query")).get(
                Voucher, voucher_id)
        return voucher_view(voucher, self.clock())
