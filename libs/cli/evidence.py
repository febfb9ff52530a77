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

The whole export reads one REPEATABLE READ, READ ONLY snapshot, streamed (JSONL: in batches
through a server-side cursor; CSV: written by PostgreSQL's COPY, which quotes like RFC 4180), so
a big export holds one batch in memory and is consistent even while services keep appending.
An event whose transaction had not committed when the snapshot was taken is not in it, even if
its recorded_at lies in the range: export ranges that ended longer ago than the longest write
transaction to get a set that can never change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import orjson

from libs.eventstore.audit import EXPORT_COLUMNS, EventFilter, copy_export_csv, export_stats, iter_export_rows

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
class ExportResult:
    manifest: dict[str, Any]
    out: Path


def _jsonl_line(r: asyncpg.Record) -> bytes:
    return orjson.dumps({
        "global_position": r["global_position"], "transaction_id": r["transaction_id"], "event_id": r["event_id"],
        "stream_id": r["stream_id"], "stream_version": r["stream_version"], "event_type": r["event_type"],
        "schema_version": r["schema_version"], "recorded_at": r["recorded_at"],
        "actor": r["actor"], "role": r["role"], "correlation_id": r["correlation_id"],
        "causation_id": r["causation_id"], "reason": r["reason"],
        "data": orjson.Fragment(r["data"]), "metadata": orjson.Fragment(r["metadata"]),
        "prev_hash": r["prev_hash"], "hash": r["hash"],
    }) + b"\n"


class _Sink:
    """One export file being written (plain blocking file I/O: the CLI runs one task, and
    PostgreSQL produces the next rows meanwhile)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: BinaryIO = path.open("wb")
        self.lines = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        # Exported JSON text never holds a raw newline (jsonb escapes it), so lines are rows.
        self.lines += data.count(b"\n")

    def close(self) -> dict[str, Any]:
        self.handle.close()
        return {"name": self.path.name, "bytes": self.path.stat().st_size, "sha256": sha256_of(self.path)}


def _prepare(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)


def _finish(out: Path, manifest: dict[str, Any]) -> None:
    (out / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    (out / SUMS).write_text("".join(f"{f['sha256']}  {f['name']}\n" for f in manifest["files"]))


async def export(conn: asyncpg.Connection, flt: EventFilter, out: Path, fmt: str, *, arguments: dict[str, Any],
                 batch_size: int = 10000, file_events: int = 1_000_000,
                 progress: Callable[[int], None] | None = None) -> ExportResult:
    """Write the export (the caller opens the snapshot on `conn`). See the module docstring.

    The counts come from PostgreSQL's aggregates over the snapshot, the files from a separate
    scan of it; an export whose files do not add up to the counts is refused (it cannot happen
    in one snapshot, and the check costs nothing)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    started = datetime.now(UTC)
    snapshot = await conn.fetchrow("SELECT pg_current_snapshot()::text AS snapshot, now() AS at")
    stats = await export_stats(conn, flt, file_events)
    _prepare(out)
    files: list[dict[str, Any]] = []
    after = 0
    for n, end in enumerate(stats["file_ends"], start=1):
        sink = _Sink(out / f"events-{n:05d}.{fmt}")
        try:
            if fmt == "jsonl":
                async for rows in iter_export_rows(conn, flt, after=after, upto=end, batch_size=batch_size):
                    sink.write(b"".join(_jsonl_line(r) for r in rows))
                    if progress is not None:
                        progress(len(rows))
            else:
                seen = 0

                async def write(data: bytes, sink: _Sink = sink) -> None:
                    nonlocal seen
                    sink.write(data)
                    if progress is not None:
                        progress(max(0, sink.lines - 1) - seen)  # the first line is the header
                    seen = max(0, sink.lines - 1)

                await copy_export_csv(conn, flt, write, after=after, upto=end)
        finally:
            listed = sink.close()
        events = sink.lines - (1 if fmt == "csv" else 0)
        bounds = await conn.fetchrow(
            "SELECT min(global_position) AS lo, max(global_position) AS hi FROM events"
            " WHERE global_position > $1 AND global_position <= $2 AND " + flt.where(args := [after, end]), *args)
        files.append({"name": listed["name"], "events": events, "first_position": bounds["lo"],
                      "last_position": bounds["hi"], "bytes": listed["bytes"], "sha256": listed["sha256"]})
        after = end
    written = sum(f["events"] for f in files)
    if written != stats["events"]:
        raise RuntimeError(f"export wrote {written} events but the snapshot holds {stats['events']}")
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
        "counts": {"events": stats["events"], "streams": stats["streams"], "files": len(files),
                   "by_category": stats["by_category"], "by_event_type": stats["by_event_type"]},
        "first_position": stats["first_position"], "last_position": stats["last_position"],
        "time_range": {"first_recorded_at": stats["first_at"].isoformat() if stats["first_at"] else None,
                       "last_recorded_at": stats["last_at"].isoformat() if stats["last_at"] else None},
        "files": files,
        "started_at": started.isoformat(), "finished_at": datetime.now(UTC).isoformat(),
    }
    _finish(out, manifest)
    return ExportResult(manifest, out)
