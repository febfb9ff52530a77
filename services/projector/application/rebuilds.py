"""The zero-downtime projection rebuild (issue 5, item 2): the projector's tables built again from
the event store in a shadow schema, caught up with the live stream, and swapped in atomically
(services/projector/shadow.py), while the live tables keep serving reads and the live consumer
keeps applying. `POST /rebuilds` and `closeloop reconcile rebuild` start one; progress (events
applied of the total, rate, phase) is kept on its row (GET /rebuilds/{id}).

It appends nothing to the event store and publishes nothing: the projector has no side effects
(notifications and shipments are the reactions of other services to events, never to a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from libs.application.pool import session_lock
from libs.application.unit_of_work import CommandContext
from libs.domain.errors import NotFound
from libs.eventstore import EventStore
from services.projector.application.reconciliation import RUN_LOCK
from services.projector.domain.reconciliation import REBUILD_ROLES, require_role
from services.projector.shadow import BuildProgress, ShadowBuild

log = logging.getLogger("closeloop.projector.rebuild")

ProgressFn = Callable[[dict[str, Any]], Awaitable[None] | None]
CATCH_UP_ROUNDS = 5  # catch-ups before the swap, until the tail left is small
SMALL_TAIL = 500


class Rebuilds:
    def __init__(self, store: EventStore, *, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.clock = clock or (lambda: datetime.now(UTC))
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self, ctx: CommandContext) -> str:
        require_role(ctx.role, REBUILD_ROLES, "rebuild the projections")
        now = self.clock()
        rebuild_id = f"b-{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        await self.store.pool.execute(
            """INSERT INTO projection_rebuilds (rebuild_id, requested_by, status, phase, shadow_schema, started_at,
                                                heartbeat_at)
               VALUES ($1, $2, 'running', 'waiting', $3, $4, $4)""",
            rebuild_id, ctx.actor, "rebuild_" + rebuild_id[2:].replace("-", "_").lower(), now)
        return rebuild_id

    def run_in_background(self, rebuild_id: str) -> asyncio.Task[Any]:
        async def go() -> None:
            try:
                await self.run(rebuild_id)
            except Exception:
                log.exception("rebuild %s failed", rebuild_id)

        task = asyncio.create_task(go(), name=f"rebuild {rebuild_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self, rebuild_id: str, *, on_progress: ProgressFn | None = None) -> dict[str, Any]:
        row = await self.store.pool.fetchrow("SELECT * FROM projection_rebuilds WHERE rebuild_id = $1", rebuild_id)
        if row is None:
            raise NotFound(f"rebuild {rebuild_id} not found", rebuild_id=rebuild_id)
        last: dict[str, Any] = {"at": 0.0, "phase": None}

        async def report(p: BuildProgress, force: bool = False) -> None:
            now = time.monotonic()
            if not force and p.phase == last["phase"] and now - last["at"] < 1.0:
                return
            last.update(at=now, phase=p.phase)
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await self.store.pool.execute(
                    """UPDATE projection_rebuilds SET phase = $2, progress = $3, heartbeat_at = now()
                        WHERE rebuild_id = $1""", rebuild_id, p.phase, p.as_dict())
            if on_progress is not None:
                result = on_progress(p.as_dict())
                if asyncio.iscoroutine(result):
                    await result

        build = ShadowBuild(self.store, row["shadow_schema"], on_progress=report)
        swapped = False
        async with session_lock(self.store, RUN_LOCK):  # its own connection (the pool does not reset)
            try:
                await build.build()
                for _ in range(CATCH_UP_ROUNDS):  # close in on the live stream before locking it
                    if await build.catch_up() < SMALL_TAIL:
                        break
                result = await build.swap()
                swapped = True
                await report(build.progress, force=True)
                out = {**build.progress.as_dict(), "tables": result.tables, "tail_applied_in_swap": result.tail_applied,
                       "swap_wait_ms": round(result.wait_ms, 1), "swap_locked_ms": round(result.locked_ms, 1),
                       "events_in_store": build.events_in_store, "head_position": build.head_position,
                       "fold_errors": build.fold_errors[:100]}
                await self.store.pool.execute(
                    """UPDATE projection_rebuilds SET status = 'swapped', phase = 'swapped', progress = $2,
                              finished_at = now(), heartbeat_at = now() WHERE rebuild_id = $1""", rebuild_id, out)
                return out
            except Exception as exc:
                await self.store.pool.execute(
                    """UPDATE projection_rebuilds SET status = 'failed', error = $2, finished_at = now()
                        WHERE rebuild_id = $1""", rebuild_id, f"{type(exc).__name__}: {exc}"[:2000])
                raise
            finally:
                if not swapped:
                    with contextlib.suppress(asyncpg.PostgresError, OSError):
                        await build.drop()

    async def get(self, rebuild_id: str) -> dict[str, Any]:
        row = await self.store.pool.fetchrow("SELECT * FROM projection_rebuilds WHERE rebuild_id = $1", rebuild_id)
        if row is None:
            raise NotFound(f"rebuild {rebuild_id} not found", rebuild_id=rebuild_id)
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(row).items()}

    async def list(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = await self.store.pool.fetch("SELECT * FROM projection_rebuilds ORDER BY started_at DESC LIMIT $1",
                                           limit)
        return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()} for r in rows]
