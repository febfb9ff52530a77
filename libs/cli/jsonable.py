"""One careful serializer for whatever an aggregate holds, so an auditor sees its state as JSON.

`to_jsonable(value)` returns only JSON types (dict with str keys, list, str, int, float, bool,
None) and never loses precision silently:

- Money (and every other pydantic model) becomes an object of its fields, each serialised by the
  same rules (so Money stays integer minor units plus currency, never a float);
- datetimes, dates and times become ISO 8601 strings (a datetime keeps its offset); a timedelta
  becomes an ISO 8601 duration in seconds ("PT5400S"); Decimal and UUID become strings;
- enums become their value; sets and frozensets become lists sorted by their JSON text (stable
  output for equal states); tuples become lists; dict keys become strings;
- dataclasses and plain objects become an object of their public attributes (names that do not
  start with "_"); properties are not evaluated (they may compute or raise);
- a value already on the current path (a cycle) becomes "<cycle: Type>", and anything else
  without a JSON form becomes its repr, marked "<repr: ...>", instead of failing the whole dump.

`state_of(aggregate)` is the aggregate's public instance attributes in definition order.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel

MAX_DEPTH = 64

JSON = dict[str, Any] | list[Any] | str | int | float | bool | None


def _duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    text = str(int(seconds)) if seconds == int(seconds) else repr(seconds)
    return f"PT{text}S" if seconds >= 0 else f"-PT{text.lstrip('-')}S"


def _key(value: Any, path: tuple[int, ...]) -> str:
    key = _convert(value, path, 0)
    return key if isinstance(key, str) else orjson.dumps(key).decode()


def _public(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if not f.name.startswith("_")}
    names: dict[str, Any] = {}
    if hasattr(obj, "__dict__"):
        names.update((k, v) for k, v in vars(obj).items() if not k.startswith("_"))
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if not slot.startswith("_") and slot not in names and hasattr(obj, slot):
                names[slot] = getattr(obj, slot)
    return names


def _convert(value: Any, path: tuple[int, ...], depth: int) -> JSON:
    # Scalars first (bool before int: bool is an int subclass).
    if value is None or type(value) is bool or type(value) is str or type(value) is int:
        return value
    if isinstance(value, Enum):  # before str/int: a StrEnum or IntEnum shows its plain value
        return _convert(value.value, path, depth)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration(value)
    if isinstance(value, Decimal | UUID | PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "base64:" + base64.b64encode(bytes(value)).decode()
    if depth >= MAX_DEPTH:
        return f"<too deep: {type(value).__name__}>"
    if id(value) in path:
        return f"<cycle: {type(value).__name__}>"
    inner = (*path, id(value))
    if isinstance(value, BaseModel):
        return {name: _convert(getattr(value, name), inner, depth + 1) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        return {_key(k, inner): _convert(v, inner, depth + 1) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [_convert(v, inner, depth + 1) for v in value]
        return sorted(items, key=lambda x: orjson.dumps(x))
    if isinstance(value, list | tuple):
        return [_convert(v, inner, depth + 1) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    attrs = _public(value)
    if attrs or dataclasses.is_dataclass(value):
        return {k: _convert(v, inner, depth + 1) for k, v in attrs.items()}
    return f"<repr: {value!r}>"


def to_jsonable(value: Any) -> JSON:
    """`value` as JSON types only (see the module docstring for the rules)."""
    return _convert(value, (), 0)


def state_of(aggregate: Any) -> dict[str, Any]:
    """An aggregate's state: its public instance attributes (id, version and the ones its
    __init__ defines), serialised by to_jsonable. Pending (unsaved) events are not state."""
    out = to_jsonable({k: v for k, v in vars(aggregate).items() if not k.startswith("_")})
    assert isinstance(out, dict)
    return out


def dumps(value: Any, *, pretty: bool = False) -> str:
    """JSON text of an already jsonable value (orjson; UTF-8 kept as is)."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if pretty else 0).decode()
