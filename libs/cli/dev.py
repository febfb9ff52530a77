"""`closeloop dev ...`: tools for development and benchmarks (not for production databases).

`closeloop dev seed --events N` appends N realistic events (libs/cli/seed.py: orders placed,
billed, completed and cancelled with their bills, transactions, payments contract and the
provider's Stripe events; warranty RMAs with their shipments and tracking) in bulk: whole cases,
many streams per EventStore.append_many call (one transaction each), several calls in flight
while the next batch is generated. By default the projector's read models are written in the same
transaction by its own consumer code (orders and facts), and the rows the rma and shipping services
keep of their RMAs and shipments by those services' own projection functions, so that `closeloop
verify` and the reconciliation compare real read models. Seed a database that no services run
against: they would react to the events.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from libs.cli.db import CliError, DatabaseUrl, redact, resolve_dsn

dev = typer.Typer(no_args_is_help=True, help="development tools: generate a large realistic store")


async def _seed(dsn: str, events: int, batch_events: int, concurrency: int, seed: int | None, days: int,
                read_model: bool, show_progress: bool) -> dict[str, Any]:
    from libs.application.unit_of_work import CommandContext, UnitOfWork
    from libs.cli.seed import Seeder, ServiceRows, batches_with_rows
    from libs.eventstore import NO_STREAM, EventStore
    from services.projector.projections.facts import FactsProjection
    from services.projector.projections.orders import OrdersProjection, envelope_of
    from services.projector.projections.tables import CATEGORIES
    from services.projector.shadow import live_apply
    from services.rma.application import projections as rma_rows
    from services.shipping.application.projections import project_shipment

    try:
        store = await EventStore.connect(dsn, min_size=concurrency, max_size=concurrency)
    except OSError as exc:
        raise CliError(f"cannot connect to {redact(dsn)}: {exc}") from exc
    seeder = Seeder(seed=seed, days=days)
    projections: tuple[OrdersProjection, FactsProjection] | None = None
    service_tables: set[str] = set()
    if read_model:
        present = {r["t"] for r in await store.pool.fetch(
            "SELECT c.relname AS t FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])",
            ["rm_orders", "rm_transactions", "rma_cases", "shipping_shipments"])}
        if {"rm_orders", "rm_transactions"} <= present:
            projections = (OrdersProjection(store), FactsProjection(store))
        service_tables = present & {"rma_cases", "shipping_shipments"}

    async def write_service_rows(conn: Any, rows: list[ServiceRows]) -> None:
        for r in rows:
            if r.service == "rma" and "rma_cases" in service_tables:
                ctx = CommandContext(actor="rma", role="service", correlation_id=f"seed-{r.aggregate.id}")
                await rma_rows.save(UnitOfWork(store, conn, ctx), r.aggregate)
            elif r.service == "shipping" and "shipping_shipments" in service_tables:
                await project_shipment(conn, r.aggregate, r.at)  # type: ignore[arg-type]
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=concurrency)
    appended = 0
    kinds: dict[str, int] = {}
    err = Console(stderr=True)
    bar = Progress(TextColumn("seed"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=err, disable=not (show_progress and err.is_terminal))
    task = bar.add_task("seed", total=events)

    async def appender() -> None:
        nonlocal appended
        while True:
            item = await queue.get()
            try:
                if item is None:
                    return
                streams, rows = item
                async with store.transaction() as conn:
                    await store.append_many([(sid, NO_STREAM, evs) for sid, evs in streams], conn=conn)
                    if projections is not None:
                        # What the projector's consumer would do with these events, in the same transaction.
                        mine = [sid for sid, _ in streams if sid.split("-", 1)[0] in CATEGORIES]
                        stored = await store.read_streams(mine, conn=conn)
                        await live_apply(*projections, conn, [envelope_of(e) for sid in mine for e in stored[sid]])
                    # And what the services write in their own tables with their events.
                    await write_service_rows(conn, rows)
                n = sum(len(evs) for _, evs in streams)
                appended += n
                bar.advance(task, n)
            finally:
                queue.task_done()

    started = time.perf_counter()
    workers = [asyncio.create_task(appender()) for _ in range(concurrency)]
    try:
        with bar:
            for streams, counts, rows in batches_with_rows(seeder, events, batch_events):
                for k, v in counts.items():
                    kinds[k] = kinds.get(k, 0) + v
                await queue.put((streams, rows))  # waits while `concurrency` batches are in flight
                if any(w.done() for w in workers):
                    break
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        await store.close()
    seconds = time.perf_counter() - started
    return {"events": appended, "cases": kinds, "seconds": round(seconds, 2),
            "events_per_second": round(appended / seconds) if seconds else None, "tag": seeder.tag,
            "read_models": projections is not None, "service_tables": sorted(service_tables)}


@dev.command("seed")
def seed_cmd(events: int = typer.Option(100_000, "--events", min=1, help="how many events to append (about)"),
             batch_events: int = typer.Option(2000, "--batch-events", min=1, help="events per append_many call"),
             concurrency: int = typer.Option(3, "--concurrency", min=1, max=32, help="append_many calls in flight"),
             seed: int | None = typer.Option(None, "--seed", help="random seed (the same seed makes the same ids: "
                                                                  "seed a database once per seed)"),
             days: int = typer.Option(30, "--days", min=1, help="business times spread over this many days"),
             read_model: bool = typer.Option(True, "--read-models/--no-read-models",
                                             help="also write the projector's read models and the services' own "
                                                  "rows of the seeded RMAs and shipments (where their tables "
                                                  "exist), as they would"),
             json_: bool = typer.Option(False, "--json", help="print the result as JSON"),
             database_url: str | None = DatabaseUrl) -> None:
    """Append about N realistic events of every service (orders, payments, upstream, RMAs, shipments)."""
    from libs.cli.jsonable import dumps

    try:
        doc = asyncio.run(_seed(resolve_dsn(database_url), events, batch_events, concurrency, seed, days,
                                read_model, not json_))
    except CliError as exc:
        Console(stderr=True).print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if json_:
        typer.echo(dumps(doc, pretty=True))
    else:
        Console().print(f"appended {doc['events']} events in {doc['seconds']} s ({doc['events_per_second']} events/s); "
                        f"cases: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["cases"].items())))


def register(app: typer.Typer) -> None:
    app.add_typer(dev, name="dev")
