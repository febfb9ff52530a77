"""Who may run which RMA command (the role and actor are the bearer token's: libs/auth; the HTTP gate,
entrypoints/access.py, has already refused the roles a route never allows). Staff act as `service`
(technicians, warehouses, customer service) or `platform`; customers only for their own RMAs."""

from __future__ import annotations

from collections.abc import Iterable

from libs.domain.errors import RuleViolation

STAFF = frozenset({"service", "platform"})


class Forbidden(RuleViolation):
    """The actor may not run this command (HTTP 403); names the header at fault. Nothing is stored."""

    code = "forbidden"


def require_role(role: str, actor: str, *, action: str, roles: Iterable[str], customer_id: str | None = None) -> None:
    """Refuse unless the role is among `roles`; a customer must be the RMA's own customer."""
    allowed = sorted(set(roles))
    if role not in allowed:
        raise Forbidden("X-Role", f"only the {' or '.join(allowed)} role may {action}; the role is {role!r}")
    if role == "customer" and actor != customer_id:
        raise Forbidden("X-Actor", f"only the RMA's own customer may {action}; the actor {actor!r} is not")
