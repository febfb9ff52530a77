"""Domain errors. Entry points map them to HTTP status codes in one place
(`libs.http.errors`), so handlers and aggregates never speak HTTP."""

from __future__ import annotations

from collections.abc import Iterable


class DomainError(Exception):
    """Base class: a command that the domain refuses. Nothing is stored."""

    code = "domain_error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidTransition(DomainError):
    """The command is not allowed in the aggregate's current state (HTTP 409)."""

    code = "invalid_transition"

    def __init__(self, aggregate: str, aggregate_id: str, state: str, command: str,
                 allowed: Iterable[str]) -> None:
        allowed_sorted = sorted(set(allowed))
        super().__init__(
            f"{aggregate} {aggregate_id} is {state}; '{command}' is not allowed. "
            f"Allowed from {state}: {', '.join(allowed_sorted) if allowed_sorted else 'none (final state)'}",
            aggregate=aggregate, aggregate_id=aggregate_id, current_state=state,
            command=command, allowed_commands=allowed_sorted,
        )
        self.state = state
        self.allowed = allowed_sorted


class RuleViolation(DomainError):
    """Input is well formed but breaks a business rule; names the field and the rule (HTTP 422)."""

    code = "rule_violation"

    def __init__(self, field: str, rule: str, message: str | None = None) -> None:
        super().__init__(message or f"{field}: {rule}", field=field, rule=rule)
        self.field = field
        self.rule = rule


class Conflict(DomainError):
    """The command conflicts with other state, e.g. a time slot already held (HTTP 409)."""

    code = "conflict"


class NotFound(DomainError):
    """The aggregate does not exist (HTTP 404)."""

    code = "not_found"
