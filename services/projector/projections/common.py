"""What every projector projection shares: the stored event as a reducer sees it, timestamps
from the stored JSON, the upcasting of old payloads, and the SQL of batched upserts.

Reducers read the event's JSON payload (`data`, exactly what the event store holds) rather than
a decoded pydantic model. Decoding with validation costs 15-120 us an event; a replay of a
million events cannot afford it (issue 6: the whole reconciliation in under 90 s), and the
payload was validated when it was appended. The live consumer still decodes each event first,
to dead-letter what it cannot read; the replay skips only unknown types. The row a reducer
computes is therefore the same on both paths, and an event the live path dead-lettered shows
in the reconciliation as a drift, which is what it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import orjson

from libs.domain.events import registry


class Stored(Protocol):
    """A stored event as reducers read it (EventEnvelope and StoredEvent both qualify)."""

    @property
    def stream_id(self) -> str: ...
    @property
    def stream_version(self) -> int: ...
    @property
    def global_position(self) -> int: ...
    @property
    def recorded_at(self) -> datetime: ...
    @property
    def event_type(self) -> str: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def data(self) -> dict[str, Any]: ...


class StoredEvent:
    """A row of the event store, read for a replay (only the columns reducers need)."""

    __slots__ = ("data", "event_type", "global_position", "recorded_at", "schema_version", "stream_id",
                 "stream_version")

    def __init__(self, stream_id: str, stream_version: int, global_position: int, recorded_at: datetime,
                 event_type: str, schema_version: int, data: dict[str, Any]) -> None:
        self.stream_id = stream_id
        self.stream_version = stream_version
        self.global_position = global_position
        self.recorded_at = recorded_at
        self.event_type = event_type
        self.schema_version = schema_version
        self.data = data


def category_of(stream_id: str) -> str:
    return stream_id.split("-", 1)[0]


def ts(value: Any) -> datetime | None:
    """A timestamp of the stored JSON (ISO 8601, as pydantic wrote it) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


def amount(money: dict[str, Any] | None) -> int | None:
    return None if money is None else int(money["amount"])


def current_data(e: Stored) -> dict[str, Any] | None:
    """The payload in the current schema version of its type (older versions through the registered
    upcasters, via the model), or None for a type this code does not know or a version from the future."""
    if e.event_type not in registry:
        return None
    cls = registry.get(e.event_type)
    if e.schema_version == cls.schema_version:
        return e.data
    if e.schema_version > cls.schema_version:
        return None
    return registry.decode(e.event_type, e.schema_version, e.data).to_data()


def types_of(base: type) -> frozenset[str]:
    """The event types (registered) that subclass `base`."""
    return frozenset(c.event_type for c in registry.all() if issubclass(c, base))


class TableSpec:
    """A projector read-model table: its columns in order, its key, and how a row names the
    stream that produced it (`stream_sql`, an SQL expression over the row's columns). `owner` is
    the column that ties a table holding several rows per stream to that stream (its rows are
    replaced together); None when a row is one stream's."""

    def __init__(self, name: str, columns: Sequence[str], key: Sequence[str], stream_sql: str,
                 owner: str | None = None) -> None:
        self.name = name
        self.columns = list(columns)
        self.key = list(key)
        self.stream_sql = stream_sql
        self.owner = owner

    @property
    def key_sql(self) -> str:
        """The row's key as one text (parts joined by '|')."""
        if len(self.key) == 1:
            return f"{self.key[0]}::text"
        return "concat_ws('|', " + ", ".join(f"{k}::text" for k in self.key) + ")"

    def __repr__(self) -> str:
        return f"TableSpec({self.name})"


def upsert_sql(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    cols = ", ".join(columns)
    params = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    return f"INSERT INTO {table} ({cols}) VALUES ({params}) ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"


def upsert_rows_sql(table: str, columns: Sequence[str], key: Sequence[str], *, update: bool = True) -> str:
    """One statement that upserts many rows, given as one JSON array of objects (`rows_json`): PostgreSQL
    reads each field into its column's type (json_populate_recordset). One execution per batch instead of
    one per row (asyncpg's executemany): the live tail's writes, per issue 6. The rows' keys must be
    distinct (a batch's rows are per key already). update=False: rows already there stay as they are."""
    cols = ", ".join(columns)
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    conflict = f"DO UPDATE SET {updates}" if updates and update else "DO NOTHING"
    return (f"INSERT INTO {table} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{table}, $1::text::json)"
            f" ON CONFLICT ({', '.join(key)}) {conflict}")


def rows_json(rows: Iterable[dict[str, Any]]) -> str:
    """Rows (column -> value) as the JSON `upsert_rows_sql` reads: datetimes as ISO 8601 with their offset
    (naive ones as UTC, as asyncpg sends them), UUIDs as text, jsonb columns as nested JSON."""
    return orjson.dumps(list(rows), default=_json_default, option=orjson.OPT_NAIVE_UTC).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID):  # asyncpg's own UUID type (rows read back), which orjson does not know
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a read-model value")
