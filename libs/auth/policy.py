"""Access rules of an HTTP API, written once per service (services/<name>/entrypoints/access.py).

Each route ("METHOD /path" as declared) has exactly one entry:

- `allow(roles…, own=…)`: the roles that may call it, and for the party roles (customer, merchant)
  how they are kept to their own: `Own.path` (a path parameter names the party, e.g.
  /wallets/{customer_id}), `Own.query` (a list filtered by a query parameter that must name the
  caller, e.g. ?customer=), `Own.lookup` (the resource's parties looked up, e.g. an order's
  customer and merchant). Staff, operations roles and the auditor are not limited by `own`.
- `Open(why)`: no token (health, metrics, and the webhooks that carry their own signature).

A rule that lets the auditor run a command, or that refuses no role at all, is refused when the
table is built, so that the auditor stays read-only and every endpoint has someone it refuses.
Commands still check in their domain who may act on the aggregate they load (the order's own
customer, the accepted merchant): the rule is the gate at the door, the domain the check at the desk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from libs.auth.roles import ALL_ROLES, PARTIES, Role

READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Parties:
    """Who a resource belongs to: its customer and (for an order) its merchant."""

    customer_id: str | None = None
    merchant_id: str | None = None

    def include(self, role: str, actor: str) -> bool:
        if role == Role.customer:
            return self.customer_id is not None and actor == self.customer_id
        if role == Role.merchant:
            return self.merchant_id is not None and actor == self.merchant_id
        return False


Lookup = Callable[[Any, str, str], Awaitable[Parties | None]]
"""(connection, parameter name, value) -> the parties of the resource it names, None when unknown."""


@dataclass(frozen=True)
class Own:
    """How a customer or a merchant is kept to their own (see the module doc)."""

    how: Literal["path", "query", "lookup"]
    params: tuple[str, ...]
    thing: str
    lookup: Lookup | None = field(default=None, compare=False)

    @classmethod
    def path(cls, param: str, thing: str) -> Own:
        """The path parameter `param` names the party itself (e.g. /wallets/{customer_id})."""
        return cls("path", (param,), thing)

    @classmethod
    def query(cls, param: str, thing: str) -> Own:
        """A list: the query parameter `param` must name the caller (e.g. ?customer=<me>)."""
        return cls("query", (param,), thing)

    @classmethod
    def lookup_by(cls, thing: str, params: str | tuple[str, ...], fn: Lookup) -> Own:
        """The parties of the resource named by the first of `params` present (path or query)."""
        return cls("lookup", (params,) if isinstance(params, str) else params, thing, fn)


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    own: Own | None = None
    # A page a browser reads: the console's session cookie (libs/auth/http.py SESSION_COOKIE) is
    # accepted in place of the Authorization header. Reads only, so a cross-site form cannot use it.
    browser: bool = False


@dataclass(frozen=True)
class Open:
    """No token: `why` says what protects it instead (shown in the OpenAPI)."""

    why: str


Entry = Rule | Open
AccessTable = Mapping[str, Entry]


def allow(*roles: str | Iterable[str], own: Own | None = None, browser: bool = False) -> Rule:
    """A rule for the given roles (each a role or a group of roles); `browser`: a page a browser
    reads with the console's session cookie as well as with a bearer token."""
    flat: set[str] = set()
    for r in roles:
        flat |= {r} if isinstance(r, str) else set(r)
    unknown = flat - ALL_ROLES
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    if own is not None and not flat & PARTIES:
        raise ValueError("an ownership rule without a customer or merchant role limits nobody")
    return Rule(frozenset(flat), own, browser)


def check_table(table: AccessTable) -> None:
    """Refuse a table whose rules would let the auditor change something or refuse nobody."""
    for key, entry in table.items():
        method, _, path = key.partition(" ")
        if not path.startswith("/") or method != method.upper():
            raise ValueError(f"access rule {key!r}: expected 'METHOD /path'")
        if isinstance(entry, Open):
            continue
        if method not in READ_METHODS and Role.auditor in entry.roles:
            raise ValueError(f"access rule {key!r}: the auditor reads and never changes anything")
        if entry.browser and method not in READ_METHODS:
            raise ValueError(f"access rule {key!r}: a session cookie is accepted for reads only (a cross-site "
                             "form could send it)")
        if entry.roles >= ALL_ROLES:
            raise ValueError(f"access rule {key!r}: refuses no role (name the roles that need it)")
