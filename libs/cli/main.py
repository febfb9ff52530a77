"""`closeloop`: the command line of auditors and operators (Typer + Rich).

Each group of commands lives in its own module of this package and registers itself here:
`tokens` (access tokens), the auditor's `replay`, `state`, `verify`, `export`, `audit`, and
`reconcile`. A module that does not exist yet is skipped, so the command grows as they land.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="closeloop: replay, verify and export the event store; tokens; reconciliation")

@app.callback()
def _root() -> None:
    """closeloop: replay, verify and export the event store; tokens; reconciliation."""


@app.command()
def version() -> None:
    """Print the closeloop version."""
    from importlib.metadata import version as v

    typer.echo(v("closeloop"))


# Each module defines `register(app)`, adding its commands or a sub-app (group).
MODULES = ("libs.cli.audit", "libs.cli.tokens", "libs.cli.reconcile", "libs.cli.dev", "libs.cli.deadletters")


def _load() -> None:
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not written yet
            raise
        module.register(app)


_load()

if __name__ == "__main__":
    app()
