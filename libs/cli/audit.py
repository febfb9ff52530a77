"""The auditor's commands: replay, state, verify, export, audit.

Every command reads one consistent snapshot of the database (REPEATABLE READ, READ ONLY) and
writes nothing, not even a temporary table, so a role with SELECT on the tables (e.g.
`pg_read_all_data`) can run all of them, and none holds back the relay (which publishes only below
the oldest transaction that writes). `--json` prints one
JSON document on stdout for scripts; progress bars go to stderr, only on a terminal.

Times: ISO 8601 with a UTC offset. A time compares with `events.recorded_at`, the insert time
the store takes on the database server (libs/cli/replay.py has the precise --as-of rule).
Exit codes: 0 done (verify: no finding), 1 verify found something / the stream does not exist,
2 a bad argument or no database.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from libs.cli.db import CliError, DatabaseUrl, connect, parse_time, redact, resolve_dsn
from libs.cli.jsonable import dumps

T = TypeVar("T")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

JsonOpt = typer.Option(False, "--json", help="print one JSON document instead of tables")
FromOpt = typer.Option(None, "--from", metavar="TIME", help="events recorded at or after TIME (ISO 8601 with offset)")
ToOpt = typer.Option(None, "--to", metavar="TIME", help="events recorded at or before TIME (ISO 8601 with offset)")
PrefixOpt = typer.Option(None, "--stream-prefix", metavar="PREFIX", help="only streams whose id starts with PREFIX")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _guard(fn: Callable[..., None]) -> Callable[..., None]:
    """A command whose CliError (bad argument, no database) is printed plainly, exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        global out, err
        # Made per command, so that the width ($COLUMNS) and the streams are those of this run.
        out, err = Console(highlight=False), Console(stderr=True, highlight=False)
        try:
            fn(*args, **kwargs)
        except CliError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(2) from None

    return wrapper


def _print_json(value: Any) -> None:
    typer.echo(dumps(value, pretty=True))


@contextmanager
def _progress(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on stderr (shown on a terminal only); yields advance(n)."""
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=err, transient=True, disable=not (enabled and err.is_terminal))
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _filter(stream_prefix: str | None = None, from_: str | None = None, to: str | None = None,
            actor: str | None = None, role: str | None = None) -> Any:
    from libs.eventstore.audit import EventFilter

    flt = EventFilter(stream_prefix=stream_prefix or None, from_time=parse_time(from_, "--from"),
                      to_time=parse_time(to, "--to"), actor=actor, role=role)
    if flt.from_time and flt.to_time and flt.from_time > flt.to_time:
        raise CliError("--from is after --to")
    return flt


def _short(value: Any, width: int = 80) -> str:
    text = value if isinstance(value, str) else dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _cells(*values: Any) -> list[Text]:
    """Table cells as plain text: stored values are shown as they are, never read as Rich markup."""
    return [Text("" if v is None else str(v)) for v in values]


# ---------------------------------------------------------------------------------------- replay


async def _load_replay(dsn: str, stream_id: str, as_of: datetime | None) -> tuple[Any, int]:
    from libs.cli.replay import events_as_of, replay
    from libs.eventstore.audit import snapshot, stream_events

    conn = await connect(dsn)
    try:
        async with snapshot(conn):
            events = await stream_events(conn, stream_id)
    finally:
        await conn.close()
    if not events:
        raise _NoStream(stream_id)
    return replay(stream_id, events_as_of(events, as_of)), len(events)


class _NoStream(Exception):
    pass


def _when(iso: str) -> str:
    """A recorded_at for tables: UTC to the millisecond (JSON output keeps the full value)."""
    at = datetime.fromisoformat(iso).astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}"


def _why(e: dict[str, Any]) -> str:
    """The reason, and where it comes from when it is not the command's own (metadata.reason)."""
    if not e.get("why"):
        return ""
    return e["why"] if e["why_from"] == "metadata.reason" else f"{e['why']} ({e['why_from']})"


def _meta_lines(e: dict[str, Any]) -> list[str]:
    who = f"   by {escape(str(e['actor']))} ({escape(str(e['role']))}) · correlation {escape(str(e['correlation_id']))}"
    if e.get("why"):
        who += f" · why: {escape(_why(e))}"
    return [f"[bold]#{e['stream_version']} {escape(e['event_type'])}[/]  position {e['global_position']} · "
            f"recorded {_when(e['recorded_at'])} UTC", who]


def _replay_cmd(stream: str = typer.Argument(..., metavar="STREAM", help="stream id, e.g. order-ord123"),
                as_of: str | None = typer.Option(None, "--as-of", metavar="TIME",
                                                 help="only events recorded at or before TIME"),
                full_state: bool = typer.Option(False, "--full-state",
                                                help="print the whole state after every event (default: the "
                                                     "attributes each event changed, then the final state)"),
                json_: bool = JsonOpt, database_url: str | None = DatabaseUrl) -> None:
    """Each event of STREAM and the state of its aggregate after it.

    Every event with its position, version, type, time, actor, role, reason and correlation id; the
    state is rebuilt by the service's own aggregate class (events only for a category without one).
    """
    at = parse_time(as_of, "--as-of") if as_of else None
    try:
        result, stored = _run(_load_replay(resolve_dsn(database_url), stream, at))
    except _NoStream:
        err.print(f"[red]no events in stream {escape(repr(stream))}[/]")
        raise typer.Exit(1) from None
    doc = {"stream_id": stream, "aggregate": result.shown_by, "as_of": at.isoformat() if at else None,
           "events_shown": len(result.steps), "events_stored": stored, "error": result.error,
           "events": [s.to_json() for s in result.steps], "final_state": result.state}
    if json_:
        _print_json(doc)
        return
    out.print(f"[bold]{escape(stream)}[/]  {escape(result.shown_by)}")
    out.print(f"{len(result.steps)} of {stored} events" + (f" recorded at or before {at.isoformat()}" if at else ""))
    if result.error:
        out.print(f"[red]{escape(result.error)}[/]")
    for step in result.steps:
        e = step.to_json()
        out.print()
        for line in _meta_lines(e):
            out.print(line)
        if step.error:
            out.print(f"   [red]{escape(step.error)}[/]")
        elif step.state is not None:
            if full_state:
                out.print_json(dumps(step.state))
            else:
                for key in step.changed:
                    # One line per attribute, cut at the terminal's width (wide characters counted).
                    out.print(f"   {key} = {_short(step.state.get(key), 2000)}", markup=False, no_wrap=True,
                              overflow="ellipsis", crop=True)
    if result.state is not None and not full_state:
        out.print()
        out.print("[bold]state after the last event shown[/]")
        out.print_json(dumps(result.state))


def _state_cmd(stream: str = typer.Argument(..., metavar="STREAM"),
               as_of: str | None = typer.Option(None, "--as-of", metavar="TIME",
                                                help="the moment (default: now); events recorded at or before it"),
               json_: bool = JsonOpt, database_url: str | None = DatabaseUrl) -> None:
    """The state of STREAM's aggregate at a moment.

    Its events recorded at or before --as-of (events.recorded_at: the store's insert time, database
    clock), applied by the service's own aggregate class.
    """
    at = parse_time(as_of, "--as-of") if as_of else None
    try:
        result, stored = _run(_load_replay(resolve_dsn(database_url), stream, at))
    except _NoStream:
        err.print(f"[red]no events in stream {escape(repr(stream))}[/]")
        raise typer.Exit(1) from None
    last = result.steps[-1].event if result.steps else None
    doc = {"stream_id": stream, "aggregate": result.shown_by, "as_of": at.isoformat() if at else None,
           "rule": "events with recorded_at <= as_of (the store's insert time, database clock)",
           "version": len(result.steps), "events_stored": stored, "exists": bool(result.steps),
           "last_event": None if last is None else {
               "global_position": last.global_position, "stream_version": last.stream_version,
               "event_type": last.event_type, "recorded_at": last.recorded_at.isoformat()},
           "error": result.error or next((s.error for s in result.steps if s.error), None),
           "state": result.state}
    if json_:
        _print_json(doc)
        return
    out.print(f"[bold]{escape(stream)}[/]  {escape(result.shown_by)}")
    when = f"as of {at.isoformat()}" if at else "now"
    if last is None:
        out.print(f"{when}: no event recorded yet (the stream's first event is later)")
    else:
        out.print(f"{when}: version {len(result.steps)} of {stored}, last event #{last.stream_version} "
                  f"{escape(last.event_type)} at {last.recorded_at.isoformat()} (position {last.global_position})")
    if doc["error"]:
        out.print(f"[red]{escape(str(doc['error']))}[/]")
    if result.state is not None:
        out.print_json(dumps(result.state))


# ---------------------------------------------------------------------------------------- verify


async def _verify(dsn: str, flt: Any, *, read_models: bool, grace: float, jobs: int,
                  show_progress: bool) -> dict[str, Any]:
    from libs.cli.integrity import Finding, check_tails
    from libs.eventstore.audit import check_chains, count, end_shared, share_snapshot, snapshot

    conn = await connect(dsn)
    helpers: list[Any] = []
    started = time.perf_counter()
    try:
        helpers += [await connect(dsn) for _ in range(jobs - 1)]
        findings: list[Finding] = []
        async with snapshot(conn):
            await share_snapshot(conn, helpers)  # every connection sees the same store
            total = await count(conn, flt)
            with _progress("hash chains", total, show_progress) as advance:
                t0 = time.perf_counter()
                checked, chain_findings = await check_chains([conn, *helpers], flt, progress=advance)
                chain_seconds = time.perf_counter() - t0
            await end_shared(helpers)
            findings += [Finding.of(f) for f in chain_findings]
            t0 = time.perf_counter()
            witnesses, tail_findings = await check_tails(conn, flt)
            tail_seconds = time.perf_counter() - t0
            findings += tail_findings
            models: list[dict[str, Any]] = []
            model_seconds = 0.0
            if read_models:
                from libs.cli.readmodels import check_projector

                # Same snapshot: the live tables and the events are compared as of one instant.
                t0 = time.perf_counter()
                with _progress("read model replay", None, show_progress) as advance:
                    report, model_findings = await check_projector(conn, flt, grace=timedelta(seconds=grace),
                                                                   progress=advance)
                model_seconds = time.perf_counter() - t0
                findings += model_findings
                models.append(report.as_dict())
    finally:
        for c in (conn, *helpers):
            await c.close()
    elapsed = time.perf_counter() - started
    return {
        "ok": not findings, "database": redact(dsn),
        "filter": {"stream_prefix": flt.stream_prefix,
                   "from": flt.from_time.isoformat() if flt.from_time else None,
                   "to": flt.to_time.isoformat() if flt.to_time else None},
        "checked": {"events": checked, "witness_rows": witnesses, "read_models": models},
        "counts": dict(Counter(f.kind for f in findings)),
        "findings": [f.to_json() for f in findings],
        "seconds": {"total": round(elapsed, 3), "chains": round(chain_seconds, 3), "tails": round(tail_seconds, 3),
                    "read_models": round(model_seconds, 3)},
        "events_per_second": round(checked / chain_seconds) if chain_seconds > 0 else None,
    }


def _verify_cmd(from_: str | None = FromOpt, to: str | None = ToOpt, stream_prefix: str | None = PrefixOpt,
                read_models: bool = typer.Option(True, "--read-models/--no-read-models",
                                                 help="also replay the projector's read model and compare"),
                grace: float = typer.Option(60.0, "--grace", metavar="SECONDS",
                                            help="events younger than this may still be on their way to the "
                                                 "projector (not a finding)"),
                max_findings: int = typer.Option(1000, "--max-findings", help="list at most this many"),
                jobs: int = typer.Option(2, "--jobs", min=1, max=16,
                                         help="database connections hashing in parallel (one snapshot)"),
                json_: bool = JsonOpt, database_url: str | None = DatabaseUrl) -> None:
    """Verify the store: hash chains, versions, stream tails, read models. Exit 1 on any finding.

    Every hash recomputed and linked to its predecessor, no gap in any stream's versions, every
    stream's last version against what the read models and consumers recorded (a deleted last
    event), and the projector's read model equal to a replay. Exit 0 on a clean store.
    """
    flt = _filter(stream_prefix, from_, to)
    doc = _run(_verify(resolve_dsn(database_url), flt, read_models=read_models, grace=grace, jobs=jobs,
                       show_progress=not json_))
    shown = doc["findings"][:max_findings]
    if len(doc["findings"]) > max_findings:
        doc["findings_truncated"] = len(doc["findings"]) - max_findings
    doc["findings"] = shown
    if json_:
        _print_json(doc)
    else:
        c = doc["checked"]
        out.print(f"checked {c['events']} events' hash chains and versions "
                  f"({doc['events_per_second'] or '-'} events/s), "
                  f"{sum(c['witness_rows'].values())} read-model version rows in {len(c['witness_rows'])} tables")
        for m in c["read_models"]:
            if m["skipped"]:
                out.print(f"read models: skipped, {m['skipped']}")
            else:
                rows = sum(t["live"] for t in m["tables"].values())
                out.print(f"read models: replayed {m['events_replayed']} events of {m['streams']} streams with the "
                          f"projector's folds; compared {rows} rows of {len(m['tables'])} tables "
                          f"(projector's and services' own)")
        if doc["ok"]:
            out.print(f"[green]OK[/]: no finding ({doc['seconds']['total']} s)")
        else:
            table = Table(title=f"{sum(doc['counts'].values())} findings", show_lines=False)
            table.add_column("kind", no_wrap=True)
            table.add_column("where: stream #version (position)", overflow="fold", ratio=2)
            table.add_column("found by", overflow="fold")
            table.add_column("detail", overflow="fold", ratio=3)
            for f in shown:
                where = " ".join(x for x in (f["stream_id"] or "", f"#{f['stream_version']}" if f["stream_version"]
                                             else "", f"({f['global_position']})" if f["global_position"] else "") if x)
                table.add_row(*_cells(f["kind"], where or "-", f["source"], f["detail"]))
            out.print(table)
            if doc.get("findings_truncated"):
                out.print(f"… and {doc['findings_truncated']} more (--max-findings)")
            out.print("[red]FAILED[/]: " + ", ".join(f"{k} {n}" for k, n in sorted(doc["counts"].items())))
    if not doc["ok"]:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------- export


async def _export(dsn: str, flt: Any, out_dir: Path, fmt: str, arguments: dict[str, Any], batch_size: int,
                  file_events: int, show_progress: bool) -> dict[str, Any]:
    from libs.cli.evidence import export
    from libs.eventstore.audit import count, snapshot

    conn = await connect(dsn)
    try:
        async with snapshot(conn):
            total = await count(conn, flt)
            t0 = time.perf_counter()
            with _progress(f"export {fmt}", total, show_progress) as advance:
                result = await export(conn, flt, out_dir, fmt, arguments=arguments, batch_size=batch_size,
                                      file_events=file_events, progress=advance)
            seconds = time.perf_counter() - t0
    finally:
        await conn.close()
    events = result.manifest["counts"]["events"]
    return {"out": str(out_dir), "manifest": str(out_dir / "manifest.json"), "events": events,
            "files": result.manifest["files"], "seconds": round(seconds, 3),
            "events_per_second": round(events / seconds) if seconds > 0 else None,
            "first_position": result.manifest["first_position"], "last_position": result.manifest["last_position"]}


def _export_cmd(out_dir: Path = typer.Option(..., "--out", metavar="DIR", help="directory to write (new or empty)"),
                from_: str | None = FromOpt, to: str | None = ToOpt,
                fmt: str = typer.Option("jsonl", "--format", metavar="jsonl|csv", help="jsonl or csv"),
                stream_prefix: str | None = PrefixOpt,
                batch_size: int = typer.Option(10000, "--batch-size", min=1, help="events fetched per round trip"),
                file_events: int = typer.Option(1_000_000, "--file-events", min=1, help="events per file at most"),
                json_: bool = JsonOpt, database_url: str | None = DatabaseUrl) -> None:
    """Export events (a time range, a stream prefix) as JSONL or CSV with a manifest.

    The manifest holds the counts, the first and last global position, the time range, the
    arguments and the SHA-256 of each file (also in SHA256SUMS).
    """
    from libs.cli.evidence import FORMATS

    if fmt not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    if out_dir.exists() and any(out_dir.iterdir()):
        err.print(f"[red]error:[/] {out_dir} is not empty (an export never overwrites one)")
        raise typer.Exit(2)
    flt = _filter(stream_prefix, from_, to)
    arguments = {"from": from_, "to": to, "format": fmt, "stream_prefix": stream_prefix, "out": str(out_dir),
                 "batch_size": batch_size, "file_events": file_events}
    doc = _run(_export(resolve_dsn(database_url), flt, out_dir, fmt, arguments, batch_size, file_events,
                       not json_))
    if json_:
        _print_json(doc)
        return
    table = Table(title=f"{doc['events']} events exported to {out_dir}")
    for col in ("file", "events", "positions", "bytes", "sha256"):
        table.add_column(col, overflow="fold")
    for f in doc["files"]:
        table.add_row(*_cells(f["name"], f["events"], f"{f['first_position']}..{f['last_position']}", f["bytes"],
                              f["sha256"]))
    out.print(table)
    out.print(f"manifest: {doc['manifest']}  ({doc['seconds']} s, {doc['events_per_second'] or '-'} events/s)")


# ---------------------------------------------------------------------------------------- audit


def _parse_cursor(text: str | None) -> tuple[datetime, int] | None:
    if not text:
        return None
    position, _, at = text.partition("@")
    try:
        return datetime.fromisoformat(at), int(position)
    except ValueError:
        raise CliError(f"--cursor: {text!r} is not a cursor printed by an earlier page") from None


async def _audit(dsn: str, flt: Any, limit: int, cursor: tuple[datetime, int] | None) -> dict[str, Any]:
    from libs.cli.replay import event_view
    from libs.eventstore.audit import audit_page, snapshot

    conn = await connect(dsn)
    try:
        async with snapshot(conn):
            events = await audit_page(conn, flt, limit=limit + 1, before=cursor)
    finally:
        await conn.close()
    page, more = events[:limit], len(events) > limit
    last = page[-1] if page else None
    return {"items": [event_view(e) for e in page],
            "next_cursor": f"{last.global_position}@{last.recorded_at.isoformat()}" if more and last else None}


def _audit_cmd(actor: str | None = typer.Option(None, "--actor", help="who (metadata actor); * matches anything"),
               role: str | None = typer.Option(None, "--role", help="in which role (metadata role)"),
               from_: str | None = FromOpt, to: str | None = ToOpt, stream_prefix: str | None = PrefixOpt,
               limit: int = typer.Option(50, "--limit", min=1, max=10000, help="events per page"),
               cursor: str | None = typer.Option(None, "--cursor", help="continue after a page (printed at its end)"),
               data: bool = typer.Option(False, "--data", help="show each event's data too (always in --json)"),
               json_: bool = JsonOpt, database_url: str | None = DatabaseUrl) -> None:
    """Who changed what, when and why (each event's metadata), newest first, paged."""
    flt = _filter(stream_prefix, from_, to, actor, role)
    doc = _run(_audit(resolve_dsn(database_url), flt, limit, _parse_cursor(cursor)))
    if json_:
        _print_json(doc)
        return
    table = Table(title=f"{len(doc['items'])} changes, newest first", show_lines=True)
    table.add_column("recorded (UTC)", no_wrap=True)
    table.add_column("who (role)", overflow="fold")
    table.add_column("what: event, stream #version", overflow="fold")
    table.add_column("why", overflow="fold")
    table.add_column("correlation", overflow="fold")
    if data:
        table.add_column("data", overflow="fold")
    for e in doc["items"]:
        row = [_when(e["recorded_at"]), f"{e['actor']} ({e['role']})",
               f"{e['event_type']}\n{e['stream_id']} #{e['stream_version']}", _why(e), str(e["correlation_id"])]
        table.add_row(*_cells(*row, *([_short(e["data"], 200)] if data else [])))
    out.print(table)
    if doc["next_cursor"]:
        out.print(f"next page: --cursor {doc['next_cursor']}")


def register(app: typer.Typer) -> None:
    app.command("replay")(_guard(_replay_cmd))
    app.command("state")(_guard(_state_cmd))
    app.command("verify")(_guard(_verify_cmd))
    app.command("export")(_guard(_export_cmd))
    app.command("audit")(_guard(_audit_cmd))
