"""Request context: who is acting, the correlation id, idempotency and If-Match.

Until token authentication lands (issue 5), the actor and role are taken from the
X-Actor and X-Role headers and validated against the known roles.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request

from libs.application.unit_of_work import CommandContext, request_fingerprint
from libs.observability import correlation_id


class Role(StrEnum):
    customer = "customer"
    merchant = "merchant"
    service = "service"
    importer = "importer"
    reconciler = "reconciler"
    approver = "approver"
    auditor = "auditor"
    platform = "platform"


async def command_context(
    request: Request,
    x_actor: Annotated[
        str,
        Header(
            min_length=1,
            max_length=128,
            pattern=r"^[A-Za-z0-9_.:@-]+$",
            description="who acts (until bearer tokens arrive)",
        ),
    ] = "anonymous",
    x_role: Annotated[Role, Header(description="the actor's role")] = Role.customer,
    x_correlation_id: Annotated[str | None, Header(max_length=128)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(min_length=1, max_length=255, description="retries with the same key return the first result"),
    ] = None,
    if_match: Annotated[str | None, Header(description='expected aggregate version, e.g. "3"')] = None,
    x_reason: Annotated[str | None, Header(max_length=500)] = None,
) -> CommandContext:
    expected: int | None = None
    if if_match is not None:
        raw = if_match.strip().strip("W/").strip('"')
        if not raw.isdigit():
            raise HTTPException(422, 'If-Match must be the expected version number, e.g. "3"')
        expected = int(raw)
    body: Any = await request.body()
    correlation = x_correlation_id or correlation_id.get() or str(uuid.uuid4())
    return CommandContext(
        actor=x_actor,
        role=x_role.value,
        correlation_id=correlation,
        reason=x_reason,
        idempotency_key=idempotency_key,
        expected_version=expected,
        request_hash=request_fingerprint(request.method, request.url.path, body.decode(errors="replace")),
    )


Ctx = Annotated[CommandContext, Depends(command_context)]
