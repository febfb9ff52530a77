"""`make run`'s demo tokens: one bearer token per role, printed and written to .closeloop/dev.json
(`tokens.<role>.token`), so that the APIs can be tried at once (`curl -H "Authorization: Bearer …"`).
Each start revokes the tokens an earlier start made and issues new ones (valid for 7 days); the demo
uses them, and mints tokens of its own for the per-run customers and merchants of its stories."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

from libs.auth.client import ActorAuth, ActorTokens
from libs.auth.roles import Role
from libs.auth.tokens import TokenStore, ensure_schema

CREATED_BY = "make-run"
DEMO_ACTORS: dict[str, str] = {
    Role.customer: "cust-demo", Role.merchant: "merchant-demo", Role.service: "svc-demo",
    Role.platform: "ops-demo", Role.importer: "wade", Role.reconciler: "huber", Role.approver: "louis",
    Role.auditor: "auditor-demo",
}


async def issue_demo_tokens(dsn: str, secret_key: str) -> dict[str, dict[str, Any]]:
    """Revoke the previous start's demo tokens and issue one per role: {role: {actor, token, token_id, …}}."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await ensure_schema(conn)
            await conn.execute("UPDATE access_tokens SET revoked_at = clock_timestamp(), revoked_by = $1"
                               " WHERE created_by = $1 AND revoked_at IS NULL", CREATED_BY)
        store = TokenStore(pool, secret_key)
        out: dict[str, dict[str, Any]] = {}
        for role, actor in DEMO_ACTORS.items():
            issued = await store.create(actor, role, created_by=CREATED_BY, expires_in=timedelta(days=7),
                                        note="make run demo token")
            r = issued.record
            out[str(role)] = {"actor": actor, "token": issued.token, "token_id": r.token_id,
                              "expires_at": r.expires_at.isoformat() if r.expires_at else None}
        return out
    finally:
        await pool.close()


def demo_auth(endpoints: dict[str, Any], secret_key: str) -> tuple[ActorTokens, ActorAuth]:
    """The demo's httpx auth: the demo tokens for their actors, tokens minted on first use for the
    stories' own customers and merchants; unnamed reads as the demo auditor."""
    demo = endpoints.get("tokens") or {}
    known = {(t["actor"], role): t["token"] for role, t in demo.items()}
    tokens = ActorTokens(endpoints["postgres_url"], secret_key, created_by="make-run-demo", known=known)
    return tokens, ActorAuth(tokens, read_as=(DEMO_ACTORS[Role.auditor], Role.auditor))
