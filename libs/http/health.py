"""/healthz (liveness) and /readyz (readiness: the database answers, plus the process's
own progress figures) for every service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from libs.http.errors import error_body

Details = Callable[[], Awaitable[dict[str, Any]]]


def install_health(app: FastAPI, pool: Callable[[], Any], details: Details, *, readiness: str) -> None:
    """`pool()` returns the process's asyncpg pool; `details()` the figures /readyz reports."""

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    async def readyz() -> JSONResponse:
        try:
            await pool().fetchval("SELECT 1")
        except Exception as exc:
            return JSONResponse(error_body("not_ready", f"database: {exc}"), status_code=503)
        return JSONResponse({"status": "ready", **await details()})

    app.add_api_route("/readyz", readyz, methods=["GET"], tags=["ops"], summary="Readiness",
                      description=f"Readiness: the database answers; {readiness}")
