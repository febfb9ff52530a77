"""`closeloop reconcile`: the daily reconciliation on demand, and the zero-downtime projection rebuild.

    closeloop reconcile [--repair] [--json]     replay the store, compare, reconcile the ledger, report
    closeloop reconcile rebuild [--json]        rebuild the projector's read models and swap them in

Both run here, against the database (--database-url, else $DATABASE_URL, else the `make run`
stack's), with the projector's own code (services/projector/application/reconciliation.py,
rebuilds.py): the run is recorded like one the projector starts (its events, its stored report,
GET /reconciliations/{id} on the projector shows it), so the CLI needs a role that may append
events and write the projector's tables. A progress bar (phase, events applied of the total, rate)
goes to stderr on a terminal; --json prints the whole report (or the rebuild's result) on stdout.
Exit codes: 0 nothing found (rebuild: swapped), 1 discrepancies found, 2 an error.
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from libs.cli.db import CliError, DatabaseUrl, redact, resolve_dsn
from libs.cli.jsonable import dumps

reconcile = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                        help="the reconciliation (replay, compare, ledger vs provider) and the projection rebuild")

ROLES = ("reconciler", "approver", "platform", "service")


def _actor(actor: str | None) -> str:
    if actor:
        return actor
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


class _Bar:
    """The progress bar: phase, events applied of the total, rate."""

    def __init__(self, err: Console, enabled: bool) -> None:
        self.progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err,
                                 disable=not enabled)
        self.task: TaskID = self.progress.add_task("starting", total=None, rate="")

    def update(self, p: dict[str, Any]) -> None:
        replay = p.get("replay", p)
        total = replay.get("total") or None
        rate = replay.get("events_per_second")
        self.progress.update(self.task, description=str(p.get("phase", "")), total=total,
                             completed=replay.get("applied", 0), rate=f"{rate:,.0f} ev/s" if rate else "")


async def _store(dsn: str) -> Any:
    import services.registry  # noqa: F401  (every event type, for decoding)
    from libs.eventstore import EventStore
    from services.projector.bootstrap import migrate_projector

    try:
        store = await EventStore.connect(dsn, min_size=2, max_size=6)
    except (OSError, Exception) as exc:
        if isinstance(exc, OSError) or "connect" in type(exc).__name__.lower():
            raise CliError(f"cannot connect to {redact(dsn)}: {exc}") from exc
        raise
    await migrate_projector(store)
    return store


async def _reconcile(dsn: str, repair: bool, actor: str, role: str, bar: _Bar, keep_shadow: bool) -> dict[str, Any]:
    from libs.application.unit_of_work import CommandContext
    from services.projector.application.reconciliation import Reconciler

    store = await _store(dsn)
    try:
        ctx = CommandContext(actor=actor, role=role, correlation_id=str(uuid.uuid4()),
                             reason="closeloop reconcile" + (" --repair" if repair else ""))
        return await Reconciler(store, keep_shadow=keep_shadow).reconcile(ctx, trigger="cli", repair=repair,
                                                                           on_progress=bar.update)
    finally:
        await store.close()


async def _rebuild(dsn: str, actor: str, role: str, bar: _Bar) -> dict[str, Any]:
    from libs.application.unit_of_work import CommandContext
    from services.projector.application.rebuilds import Rebuilds

    store = await _store(dsn)
    try:
        rebuilds = Rebuilds(store)
        rebuild_id = await rebuilds.start(CommandContext(actor=actor, role=role, correlation_id=str(uuid.uuid4())))
        result = await rebuilds.run(rebuild_id, on_progress=bar.update)
        return {"rebuild_id": rebuild_id, **result}
    finally:
        await store.close()


def _guarded(fn: Any) -> Any:
    try:
        return fn()
    except CliError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # a refused role, a failed run: said plainly, exit 2
        code = getattr(exc, "code", None)
        Console(stderr=True).print(f"[red]error:[/] {exc}" + (f" ({code})" if code else ""))
        raise typer.Exit(2) from None


@reconcile.callback()
def run(ctx: typer.Context,
        repair: bool = typer.Option(False, "--repair", help="swap the replayed read models in when the projector's "
                                                             "own tables drifted (services' tables are only reported)"),
        json_: bool = typer.Option(False, "--json", help="print the whole report as JSON"),
        database_url: str | None = DatabaseUrl,
        actor: str | None = typer.Option(None, "--actor", help="who runs it (recorded in the events; default: "
                                                                "cli:<user>)"),
        role: str = typer.Option("reconciler", "--role", help=f"the role it runs with: {', '.join(ROLES)}"),
        keep_shadow: bool = typer.Option(False, "--keep-shadow", help="keep the replay's shadow schema to inspect")
        ) -> None:
    """Replay the whole event store into a fresh shadow schema and compare it with the live read models row
    by row, reconcile the payment ledger with the provider's events, look for duplicate shipments and refunds
    above what was paid, check the store's hash chains and versions. Exit 1 when anything is found."""
    if ctx.invoked_subcommand is not None:
        ctx.ensure_object(dict)
        ctx.obj.update(database_url=database_url, actor=actor, role=role, json=json_)
        return
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    bar = _Bar(err, enabled=err.is_terminal and not json_)

    def go() -> dict[str, Any]:
        dsn = resolve_dsn(database_url)
        with bar.progress:
            return asyncio.run(_reconcile(dsn, repair, _actor(actor), role, bar, keep_shadow))

    report = _guarded(go)
    if json_:
        out.print_json(dumps(report))
    else:
        _print(out, report)
    raise typer.Exit(1 if report["totals"]["discrepancies"] else 0)


def _print(out: Console, report: dict[str, Any]) -> None:
    t = report["totals"]
    store = report["store"]
    out.print(f"reconciliation [bold]{report['run_id']}[/]: {store['events_replayed']:,} events replayed "
              f"(of {store['events']:,} in the store, head {store['head_position']}) in "
              f"{report['duration_seconds']:.1f} s")
    tables = Table("table", "live", "replayed", "drifting", title="read models: live vs replay")
    for row in [*report["tables"], *report["services"]]:
        tables.add_row(row["table"], str(row["live"]), str(row["replayed"]),
                       f"[red]{row['drifts']}[/]" if row["drifts"] else "0")
    out.print(tables)
    if not t["discrepancies"]:
        out.print("[green]no discrepancies[/]")
    else:
        kinds = Table("kind", "count", title=f"{t['discrepancies']} discrepancies ({t['new']} new)")
        for kind, n in t["by_kind"].items():
            kinds.add_row(kind, str(n))
        out.print(kinds)
        for d in report["discrepancies"][:20]:
            out.print(f"  [yellow]{d['discrepancy_id']}[/] {d['kind']}: {d['summary']}")
        if len(report["discrepancies"]) > 20:
            out.print(f"  … {len(report['discrepancies']) - 20} more (--json lists every one)")
    if report.get("repaired"):
        r = report["repaired"]
        out.print(f"[green]repaired[/]: the replay was swapped in ({len(r['tables'])} tables, "
                  f"{r['tail_applied']} events caught up during the swap, locked {r['locked_ms']:.0f} ms)")


@reconcile.command("rebuild")
def rebuild(ctx: typer.Context,
            json_: bool = typer.Option(False, "--json", help="print the result as JSON"),
            database_url: str | None = DatabaseUrl,
            actor: str | None = typer.Option(None, "--actor", help="who runs it (default: cli:<user>)"),
            role: str = typer.Option("platform", "--role", help="platform, service or reconciler")) -> None:
    """Rebuild every projector read model from the event store in a shadow schema, catch it up with the live
    stream and swap it in atomically; the live tables serve reads meanwhile. Appends nothing to the store."""
    parent = ctx.obj or {}
    json_ = json_ or bool(parent.get("json"))
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    bar = _Bar(err, enabled=err.is_terminal and not json_)

    def go() -> dict[str, Any]:
        dsn = resolve_dsn(database_url or parent.get("database_url"))
        with bar.progress:
            return asyncio.run(_rebuild(dsn, _actor(actor or parent.get("actor")), role, bar))

    result = _guarded(go)
    if json_:
        out.print_json(dumps(result))
    else:
        out.print(f"rebuild [bold]{result['rebuild_id']}[/]: {result['applied']:,} events applied "
                  f"({result['events_per_second']:,.0f}/s, {result['tail']} after the snapshot), swapped in "
                  f"({result['swap_locked_ms']:.0f} ms locked)")


def register(app: typer.Typer) -> None:
    app.add_typer(reconcile, name="reconcile")
