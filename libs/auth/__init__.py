"""Access control: bearer tokens and API keys mapped to roles (tokens.py), the roles (roles.py), the
access rules each service writes (policy.py) and the gate in front of every HTTP API (http.py)."""

from libs.auth.policy import AccessTable, Open, Own, Parties, Rule, allow
from libs.auth.roles import ALL_ROLES, OPERATIONS, PARTIES, READERS, STAFF, Role
from libs.auth.tokens import (
    AUTH_MIGRATIONS,
    IssuedToken,
    Principal,
    TokenRecord,
    TokenRefused,
    TokenStore,
    UnknownToken,
    ensure_schema,
)

__all__ = [
    "ALL_ROLES", "AUTH_MIGRATIONS", "OPERATIONS", "PARTIES", "READERS", "STAFF", "AccessTable", "IssuedToken",
    "Open", "Own", "Parties", "Principal", "Role", "Rule", "TokenRecord", "TokenRefused", "TokenStore",
    "UnknownToken", "allow", "ensure_schema",
]
