"""Who may run which order command (pure: no I/O). The actor and role are the bearer token's
(libs/auth); the HTTP gate (entrypoints/access.py) has already refused roles a route never allows.
Here, on the order a command loaded: a customer acts only on their own orders, and as the customer;
a merchant only on the orders it accepted (or accepts), and as the merchant; `service` and
`platform` act for anyone. Refusals are 403 and name neither the order's customer nor its merchant."""

from __future__ import annotations

from collections.abc import Iterable

from libs.domain.errors import RuleViolation

STAFF = frozenset({"service", "platform"})
CUSTOMER = frozenset({"customer"}) | STAFF
MERCHANT = frozenset({"merchant"}) | STAFF
PARTY = frozenset({"customer", "merchant"}) | STAFF


class Forbidden(RuleViolation):
    """The actor may not run this command (HTTP 403); names X-Role or X-Actor. Nothing is stored."""

    code = "forbidden"


def require_party(role: str, actor: str, *, action: str, roles: Iterable[str], customer_id: str | None = None,
                  merchant_id: str | None = None) -> None:
    """Refuse unless the role is among `roles` and a customer (merchant) is `customer_id` (`merchant_id`)."""
    allowed = sorted(set(roles))
    if role not in allowed:
        raise Forbidden("X-Role", f"only the {' or '.join(allowed)} role may {action}; the role is {role!r}")
    if role == "customer" and (customer_id is None or actor != customer_id):
        raise Forbidden("X-Actor", f"only the order's own customer may {action}; the actor {actor!r} is not")
    if role == "merchant" and (merchant_id is None or actor != merchant_id):
        raise Forbidden("X-Actor", f"only the order's own merchant may {action}; the actor {actor!r} is not")


def require_canceller(role: str, cancelled_by: str) -> None:
    """A customer cancels as the customer, a merchant as the merchant; only staff cancel for the platform."""
    if role in ("customer", "merchant") and cancelled_by != role:
        raise Forbidden("cancelled_by", f"a {role} cancels as the {role}, not as {cancelled_by!r}")
