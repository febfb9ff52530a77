"""Request context: who is acting, the correlation id, idempotency and If-Match.

The actor and role are the bearer token's, as authenticated by the access gate in front of
every API (libs/auth/http.py); X-Actor / X-Role headers are not trusted (the gate refuses
them when they contradict the token).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from libs.application.unit_of_work import CommandContext, request_fingerprint
from libs.auth.http import principal_of
from libs.auth.roles import Role
from libs.domain.errors import RuleViolation
from libs.observability import correlation_id

__all__ = ["Ctx", "Role", "command_context"]


async def command_context(
    request: Request,
    x_correlation_id: Annotated[str | None, Header(max_length=128)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, description="retries with the same key return the first result"),
    ] = None,
    if_match: Annotated[str | None, Header(description='expected aggregate version, e.g. "3"')] = None,
    x_reason: Annotated[str | None, Header(max_length=500)] = None,
) -> CommandContext:
    principal = principal_of(request.scope)
    if principal is None:  # a route without an access rule never gets here (install_auth); fail closed anyway
        raise HTTPException(401, "no bearer token", headers={"WWW-Authenticate": 'Bearer realm="closeloop"'})
    expected: int | None = None
    if if_match is not None:
        raw = if_match.strip().strip("W/").strip('"')
        if not raw.isdigit():
            raise RuleViolation("If-Match", 'must be the expected version number, e.g. "3"')
        expected = int(raw)
    body: Any = await request.body()
    correlation = x_correlation_id or correlation_id.get() or str(uuid.uuid4())
    return CommandContext(
        actor=principal.actor,
        role=principal.role,
        correlation_id=correlation,
        reason=x_reason,
        idempotency_key=idempotency_key,
        expected_version=expected,
        # Who asks is part of the request: another actor's retry under the same key is refused (422),
        # never answered with the first actor's response.
        request_hash=request_fingerprint(request.method, request.url.path, body.decode(errors="replace"),
                                         principal.actor, principal.role),
    )


Ctx = Annotated[CommandContext, Depends(command_context)]
