"""Versioned SQL migrations, applied at start-up.

Each component (the event store, a service, a projector) owns a folder of files named
`NNNN_description.sql`. `migrate()` applies the ones not yet recorded in
`schema_migrations`, each in its own transaction, under an advisory lock so that
several processes starting at once apply each file exactly once. A file that was
changed after it was applied is refused (its checksum is recorded).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

_LOCK_KEY = 0x636C6F73  # "clos": one advisory lock for all migrations of this database
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

EVENTSTORE_MIGRATIONS = Path(__file__).parent / "migrations"


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(component: str, folder: Path) -> list[Migration]:
    found = []
    for path in sorted(folder.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file {path} is not named NNNN_description.sql")
        found.append(Migration(component, int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"{component}: migration versions must be 1..n without gaps, got {versions}")
    return found


async def migrate(conn: asyncpg.Connection, components: dict[str, Path]) -> list[str]:
    """Apply pending migrations of the given components (name -> folder). Returns what ran."""
    applied: list[str] = []
    plan = {component: load(component, folder) for component, folder in components.items()}
    # A session-level lock around the whole run: concurrent starters wait, then find
    # everything applied. (CREATE TABLE IF NOT EXISTS itself is not safe concurrently.)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   component text NOT NULL, version integer NOT NULL, name text NOT NULL,
                   checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
        )
        for component, migrations in plan.items():
            await _apply(conn, component, migrations, applied)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def _apply(
    conn: asyncpg.Connection, component: str, migrations: list[Migration], applied: list[str]
) -> None:
    for mig in migrations:
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT checksum FROM schema_migrations WHERE component = $1 AND version = $2",
                component,
                mig.version,
            )
            if row is not None:
                if row["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"{component} migration {mig.version:04d}_{mig.name} changed after it was applied"
                    )
                continue
            await conn.execute(mig.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (component, version, name, checksum) VALUES ($1, $2, $3, $4)",
                component,
                mig.version,
                mig.name,
                mig.checksum,
            )
            applied.append(f"{component}:{mig.version:04d}_{mig.name}")
