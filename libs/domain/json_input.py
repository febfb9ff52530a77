"""What JSON from outside may hold before it is stored: the rules of the HTTP request guard
(libs/http/guard.py), also applied by the parsers of raw bodies (webhooks, Kafka payloads of other systems).

PostgreSQL text and jsonb cannot hold a NUL character or a lone UTF-16 surrogate, and nothing the services
accept nests deeper than MAX_DEPTH levels; Python's json module accepts all three (and recurses until it
fails on deep nesting), so a body that passed it could still fail at the database, as a 500.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "must not contain a NUL character (\\u0000)"
    if _SURROGATE.search(text):
        return "must be valid unicode (a lone surrogate, e.g. \\ud800, is not)"
    return None


def find_bad_json(value: Any, path: str = "body", depth: int = 0) -> tuple[str, str] | None:
    """(field, rule) of the first part of a parsed JSON value the services refuse, or None."""
    if depth > MAX_DEPTH:
        return path, f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        bad = _bad_text(value)
        return (path, bad) if bad else None
    if isinstance(value, dict):
        for k, v in value.items():
            bad = _bad_text(str(k))
            if bad:
                return path, f"a key {bad}"
            found = find_bad_json(v, f"{path}.{k}" if path != "body" else str(k), depth + 1)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = find_bad_json(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
    return None


def loads_checked(text: str | bytes) -> tuple[Any, tuple[str, str] | None]:
    """json.loads, then find_bad_json: (value, None) or (None, (field, rule)). ValueError when not JSON."""
    try:
        value = json.loads(text)
    except RecursionError:
        return None, ("body", f"nested deeper than {MAX_DEPTH} levels")
    return value, find_bad_json(value)
