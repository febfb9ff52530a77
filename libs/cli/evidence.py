"""`closeloop export`: the events of a time range (and stream prefix) as evidence files plus a
manifest an auditor can check without closeloop.

Layout of the output directory:
- events-00001.jsonl (or .csv), events-00002..., at most `file_events` events each, in global
  position order. A JSONL line is one object with EXPORT_COLUMNS as keys; `data` and `metadata`
  are the stored JSON exactly as PostgreSQL's jsonb prints it. A CSV file has a header row and
  the same columns, with data and metadata as JSON text.
- manifest.json: the command's arguments, counts (events, streams, per category and per event
  type), the first and last global position, the time range asked for and the one found, the
  snapshot the export was read in, and each file's name, event count, positions, size and
  SHA-256 (computed from the file as written to disk).
- SHA256SUMS: the same checksums in `sha256sum -c` format.

The whole export reads one REPEATABLE READ, READ ONLY snapshot, streamed in batches through a
server-side cursor, so a big export holds one batch in memory and is consistent even while
services keep appending. An event whose transaction had not committed when the snapshot was taken
is not in it, even if its recorded_at lies in the range: export ranges that ended longer ago than
the longest write transaction to get a set that can never change.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import asyncpg
import orjson

from libs.eventstore.audit import EXPORT_COLUMNS, EventFilter, iter_export_rows

FORMATS = ("jsonl", "csv")
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _File:
    name: str
    events: int = 0
    first_position: int | None = None
    last_position: int | None = None


@dataclass
class ExportResult:
    manifest: dict[str, Any]
    out: Path
    files: list[_File] = field(default_factory=list)


def _jsonl_line(r: asyncpg.Record) -> bytes:
    return orjson.dumps({
        "global_position": r["global_position"], "transaction_id": r["transaction_id"], "event_id": r["event_id"],
        "stream_id": r["stream_id"], "stream_version": r["stream_version"], "event_type": r["event_type"],
        "schema_version": r["schema_version"], "recorded_at": r["recorded_at"].isoformat(),
        "actor": r["actor"], "role": r["role"], "correlation_id": r["correlation_id"],
        "causation_id": r["causation_id"], "reason": r["reason"],
        "data": orjson.Fragment(r["data"]), "metadata": orjson.Fragment(r["metadata"]),
        "prev_hash": r["prev_hash"], "hash": r["hash"],
    }) + b"\n"


def _csv_row(r: asyncpg.Record) -> list[Any]:
    return [r["recorded_at"].isoformat() if c == "recorded_at" else r[c] for c in EXPORT_COLUMNS]


class _Writer:
    """The export files: rotates after `file_events` events; checksums what is on disk at the end.
    (Plain blocking file I/O: the CLI runs one task, and the next batch is already being fetched
    by PostgreSQL's cursor while it writes.)"""

    def __init__(self, out: Path, fmt: str, file_events: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.fmt, self.file_events = out, fmt, file_events
        self.files: list[_File] = []
        self._binary: BinaryIO | None = None
        self._text: TextIO | None = None
        self._csv: Any = None

    def _open_next(self) -> None:
        self.close()
        f = _File(f"events-{len(self.files) + 1:05d}.{self.fmt}")
        self.files.append(f)
        if self.fmt == "jsonl":
            self._binary = (self.out / f.name).open("wb")
        else:
            self._text = (self.out / f.name).open("w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._text, lineterminator="\n")
            self._csv.writerow(EXPORT_COLUMNS)

    def write(self, rows: list[asyncpg.Record]) -> None:
        i = 0
        while i < len(rows):
            if not self.files or self.files[-1].events >= self.file_events:
                self._open_next()
            current = self.files[-1]
            part = rows[i:i + self.file_events - current.events]
            i += len(part)
            if self._binary is not None:
                self._binary.write(b"".join(_jsonl_line(r) for r in part))
            else:
                self._csv.writerows(_csv_row(r) for r in part)
            if current.first_position is None:
                current.first_position = part[0]["global_position"]
            current.last_position = part[-1]["global_position"]
            current.events += len(part)

    def close(self) -> None:
        for handle in (self._binary, self._text):
            if handle is not None:
                handle.close()
        self._binary = self._text = None

    def listing(self) -> list[dict[str, Any]]:
        self.close()
        return [{"name": f.name, "events": f.events, "first_position": f.first_position,
                 "last_position": f.last_position, "bytes": (self.out / f.name).stat().st_size,
                 "sha256": sha256_of(self.out / f.name)} for f in self.files]

    def finish(self, manifest: dict[str, Any]) -> None:
        (self.out / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
        (self.out / SUMS).write_text("".join(f"{f['sha256']}  {f['name']}\n" for f in manifest["files"]))


async def export(conn: asyncpg.Connection, flt: EventFilter, out: Path, fmt: str, *, arguments: dict[str, Any],
                 batch_size: int = 10000, file_events: int = 1_000_000,
                 progress: Callable[[int], None] | None = None) -> ExportResult:
    """Write the export (the caller opens the snapshot on `conn`). See the module docstring."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    writer = _Writer(out, fmt, file_events)
    categories: Counter[str] = Counter()
    types: Counter[str] = Counter()
    streams: set[str] = set()
    first_at: datetime | None = None
    last_at: datetime | None = None
    started = datetime.now(UTC)
    snapshot = await conn.fetchrow("SELECT pg_current_snapshot()::text AS snapshot, now() AS at")
    try:
        async for rows in iter_export_rows(conn, flt, batch_size=batch_size):
            writer.write(rows)
            for r in rows:
                sid = r["stream_id"]
                streams.add(sid)
                categories[sid.split("-", 1)[0]] += 1
                types[r["event_type"]] += 1
                at = r["recorded_at"]
                if first_at is None or at < first_at:
                    first_at = at
                if last_at is None or at > last_at:
                    last_at = at
            if progress is not None:
                progress(len(rows))
    finally:
        writer.close()
    listed = writer.listing()
    files = writer.files
    events = sum(f.events for f in files)
    manifest: dict[str, Any] = {
        "kind": "closeloop event export", "manifest_version": 1, "format": fmt,
        "columns": list(EXPORT_COLUMNS), "order": "global_position ascending",
        "arguments": arguments,
        "filter": {"stream_prefix": flt.stream_prefix,
                   "recorded_at_from": flt.from_time.isoformat() if flt.from_time else None,
                   "recorded_at_to": flt.to_time.isoformat() if flt.to_time else None,
                   "rule": "from <= events.recorded_at <= to (the insert time, database clock); inclusive"},
        "snapshot": {"taken_at": snapshot["at"].isoformat(), "pg_snapshot": snapshot["snapshot"],
                     "isolation": "repeatable read, read only"},
        "counts": {"events": events, "streams": len(streams), "files": len(files),
                   "by_category": dict(sorted(categories.items())), "by_event_type": dict(sorted(types.items()))},
        "first_position": files[0].first_position if files else None,
        "last_position": files[-1].last_position if files else None,
        "time_range": {"first_recorded_at": first_at.isoformat() if first_at else None,
                       "last_recorded_at": last_at.isoformat() if last_at else None},
        "files": listed,
        "started_at": started.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
    }
    writer.finish(manifest)
    return ExportResult(manifest, out, files)
