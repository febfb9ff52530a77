"""`closeloop deadletters list|redrive`: the messages consumers set aside (libs/messaging/deadletter.py).

    closeloop deadletters list [--consumer GROUP] [--reason CODE] [--all] [--json]
    closeloop deadletters redrive [--id N ...] [--consumer GROUP] [--reason CODE] [--wait SECONDS] [--json]

`list` shows the open dead letters (with --all, the re-driven and resolved ones too): id, consumer group,
reason code and text, where the message came from (topic/partition@offset), its event, when, re-drives.
`redrive` publishes each selected open dead letter again to its source topic, addressed to the consumer
group that gave up on it (header dlq-redrive-for); that consumer retries it and, when it goes through,
marks it re-driven. With --wait it waits (at most that many seconds) and reports each one's outcome:
`redriven`, `failed` (dead-lettered again: its last error is shown) or `pending`. Exit code 1 when a
re-drive failed or is still pending after --wait, 2 on an error.

The database is --database-url, else $DATABASE_URL, else the running `make run` stack's; Kafka is
--bootstrap-servers, else $KAFKA_BOOTSTRAP_SERVERS, else the stack's.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from libs.cli.db import DEV_JSON, CliError, DatabaseUrl, connect, resolve_dsn
from libs.cli.jsonable import dumps
from libs.messaging.deadletter import H_ID, H_REDRIVE_FOR, REASONS, dlq_message

deadletters = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="dead letters: list what consumers set aside, re-drive it")
console = Console()
err = Console(stderr=True)
JsonOut = typer.Option(False, "--json", help="machine-readable output")
Bootstrap = typer.Option(None, "--bootstrap-servers", metavar="HOST:PORT",
                         help="Kafka (default: $KAFKA_BOOTSTRAP_SERVERS, else the running `make run` stack's)")

COLUMNS = """id, consumer, consumer_group, reason_code, reason, event_id, event_type, stream_id, stream_version,
             source_topic, source_partition, source_offset, created_at, published_at, redrive_count,
             last_redrive_at, last_redrive_error, redriven_at, resolved_at"""


def _bootstrap(option: str | None) -> str:
    if option:
        return option
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    if DEV_JSON.exists():
        found = json.loads(DEV_JSON.read_text()).get("kafka_bootstrap_servers")
        if found:
            return str(found)
    raise CliError("no Kafka: pass --bootstrap-servers or set KAFKA_BOOTSTRAP_SERVERS")


def _status(row: dict[str, Any]) -> str:
    if row["redriven_at"] is not None:
        return "redriven"
    if row["resolved_at"] is not None:
        return "resolved"
    return "failed" if row["redrive_count"] else "open"


def _where(consumer: str | None, reason: str | None, ids: list[int] | None, everything: bool) -> tuple[str, list[Any]]:
    if reason is not None and reason not in REASONS:
        raise CliError(f"--reason {reason!r}: one of {', '.join(REASONS)}")
    clauses: list[str] = []
    args: list[Any] = []
    if not everything:
        clauses.append("resolved_at IS NULL")
    if consumer:
        args.append(consumer)
        clauses.append(f"(consumer_group = ${len(args)} OR consumer = ${len(args)})")
    if reason:
        args.append(reason)
        clauses.append(f"reason_code = ${len(args)}")
    if ids:
        args.append(ids)
        clauses.append(f"id = ANY(${len(args)}::bigint[])")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


async def fetch(dsn: str, *, consumer: str | None = None, reason: str | None = None, ids: list[int] | None = None,
                everything: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
    conn = await connect(dsn)
    try:
        where, args = _where(consumer, reason, ids, everything)
        rows = await conn.fetch(f"SELECT {COLUMNS} FROM dead_letters{where} ORDER BY created_at, id LIMIT {limit}",
                                *args)
    finally:
        await conn.close()
    return [{**dict(r), "event_id": str(r["event_id"]), "status": _status(dict(r))} for r in rows]


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("id", "status", "consumer group", "reason", "source", "event", "created", "re-drives"):
        table.add_column(col, overflow="fold")
    for r in rows:
        source = (f"{r['source_topic']}/{r['source_partition']}@{r['source_offset']}" if r["source_topic"]
                  else "(event store)")
        event = f"{r['event_type'] or '?'} {r['stream_id'] or ''} v{r['stream_version'] or '?'}".strip()
        reason = f"[bold]{r['reason_code'] or '?'}[/] {r['reason'][:160]}"
        if r["last_redrive_error"] and r["status"] == "failed":
            reason += f"\n[red]last re-drive: {r['last_redrive_error'][:160]}[/]"
        table.add_row(str(r["id"]), r["status"], r["consumer_group"] or r["consumer"], reason, source, event,
                      r["created_at"].isoformat(timespec="seconds"), str(r["redrive_count"]))
    return table


@deadletters.command("list")
def list_(consumer: str = typer.Option(None, "--consumer", help="a consumer group (or component) only"),
          reason: str = typer.Option(None, "--reason", help=f"one reason only: {', '.join(REASONS)}"),
          everything: bool = typer.Option(False, "--all", help="also the re-driven and resolved ones"),
          limit: int = typer.Option(1000, "--limit", min=1), as_json: bool = JsonOut,
          database_url: str = DatabaseUrl) -> None:
    """List dead letters (open ones unless --all)."""
    try:
        rows = asyncio.run(fetch(resolve_dsn(database_url), consumer=consumer, reason=reason, everything=everything,
                                 limit=limit))
    except CliError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(dumps({"dead_letters": rows, "count": len(rows)}))
        return
    if not rows:
        console.print("no dead letters" + ("" if everything else " open"))
        return
    console.print(_table(rows, f"{len(rows)} dead letter(s)"))


async def redrive_rows(dsn: str, bootstrap: str, *, ids: list[int] | None, consumer: str | None, reason: str | None,
                       wait: float) -> dict[str, Any]:
    """Publish each selected open dead letter again to its source topic for its consumer group; with `wait`,
    wait for each outcome."""
    from aiokafka import AIOKafkaProducer

    from libs.messaging.broker import MAX_MESSAGE_BYTES
    from services.registry import STREAM_TOPICS

    conn = await connect(dsn)
    try:
        where, args = _where(consumer, reason, ids, False)
        rows = [dict(r) for r in await conn.fetch(f"SELECT * FROM dead_letters{where} ORDER BY id", *args)]
    finally:
        await conn.close()
    if ids:
        missing = sorted(set(ids) - {r["id"] for r in rows})
        if missing:
            raise CliError(f"no open dead letter with id {', '.join(map(str, missing))} (see `closeloop deadletters "
                           "list --all`)")
    sent, skipped = [], []
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                                max_request_size=MAX_MESSAGE_BYTES)
    try:
        await asyncio.wait_for(producer.start(), 30)
    except Exception as exc:
        raise CliError(f"cannot connect to Kafka at {bootstrap}: {type(exc).__name__}: {exc}") from exc
    try:
        for r in rows:
            topic = r["source_topic"] or (STREAM_TOPICS.get((r["stream_id"] or "").split("-", 1)[0])
                                          if r["stream_id"] else None)
            if not r["consumer_group"] or not topic:
                skipped.append({"id": r["id"], "why": "recorded outside a consumer (no group or topic to re-drive to)"})
                continue
            key, value, _ = dlq_message(r)
            original = {k: v for k, v in (r["source_headers"] or {}).items() if not k.startswith("dlq-")}
            original.update({H_REDRIVE_FOR: r["consumer_group"], H_ID: str(r["id"])})
            await producer.send_and_wait(topic, value, key=key,
                                         headers=[(k, str(v).encode()) for k, v in original.items()])
            sent.append({"id": r["id"], "topic": topic, "consumer_group": r["consumer_group"],
                         "redrive_count": r["redrive_count"]})
    finally:
        await producer.stop()
    outcomes = await _wait(dsn, sent, wait) if wait > 0 else {s["id"]: "sent" for s in sent}
    for s in sent:
        s["outcome"] = outcomes[s["id"]]
    return {"redriven": sent, "skipped": skipped}


async def _wait(dsn: str, sent: list[dict[str, Any]], wait: float) -> dict[int, str]:
    deadline = time.monotonic() + wait
    before = {s["id"]: s["redrive_count"] for s in sent}
    outcomes = {i: "pending" for i in before}
    conn = await connect(dsn)
    try:
        while True:
            for r in await conn.fetch("SELECT id, redriven_at, redrive_count FROM dead_letters WHERE id = ANY($1)",
                                      list(before)):
                if r["redriven_at"] is not None:
                    outcomes[r["id"]] = "redriven"
                elif r["redrive_count"] > before[r["id"]]:
                    outcomes[r["id"]] = "failed"
            if "pending" not in outcomes.values() or time.monotonic() > deadline:
                return outcomes
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


@deadletters.command("redrive")
def redrive(ids: list[int] = typer.Option(None, "--id", help="a dead letter's id (repeat for several)"),
            consumer: str = typer.Option(None, "--consumer", help="every open one of this consumer group"),
            reason: str = typer.Option(None, "--reason", help="every open one with this reason code"),
            wait: float = typer.Option(0, "--wait", min=0, help="seconds to wait for the outcomes"),
            as_json: bool = JsonOut, database_url: str = DatabaseUrl,
            bootstrap_servers: str = Bootstrap) -> None:
    """Re-drive dead letters to the consumers that gave up on them (all open ones when nothing is selected)."""
    try:
        result = asyncio.run(redrive_rows(resolve_dsn(database_url), _bootstrap(bootstrap_servers), ids=ids or None,
                                          consumer=consumer, reason=reason, wait=wait))
    except CliError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(dumps(result))
    else:
        table = Table(title=f"{len(result['redriven'])} dead letter(s) re-driven")
        for col in ("id", "to", "consumer group", "outcome"):
            table.add_column(col)
        for s in result["redriven"]:
            table.add_row(str(s["id"]), s["topic"], s["consumer_group"], s["outcome"])
        console.print(table)
        for s in result["skipped"]:
            console.print(f"skipped {s['id']}: {s['why']}")
    if wait > 0 and any(s["outcome"] != "redriven" for s in result["redriven"]):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(deadletters, name="deadletters")
