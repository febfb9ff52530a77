"""The operations console (issue 5, item 5): server-rendered pages, no scripts, nothing loaded from
elsewhere (nothing external is reachable), so it works in any browser on the closed network. Each page
has a JSON twin with the same numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from services.projector.application.console import QUEUE_STATUSES, Console

router = APIRouter(prefix="/console", tags=["console"])
Ref = Annotated[str, Query(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$",
                           description="an order, RMA or shipment id, or a tracking number")]

_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(FsPath(__file__).parents[1] / "templates"),
                            autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)


def _console(request: Request) -> Console:
    return Console(request.app.state.projector.store)


def _render(template: str, request: Request, **context: Any) -> HTMLResponse:
    base = request.scope.get("root_path", "")
    return HTMLResponse(_PAGES.get_template(template).render(base=base, **context))


@router.get("", response_class=HTMLResponse)
async def console(request: Request) -> HTMLResponse:
    """The console: scorecard KPIs, the war room's queues, RMAs and shipments past their SLA, counts by status,
    the latest reconciliation report with its open discrepancies, and a search for any history."""
    data = await _console(request).overview()
    return _render("console/overview.html.j2", request, card=data["scorecard"], queues=data["queues"],
                   queue_statuses=QUEUE_STATUSES, late=data["late"], counts=data["counts"],
                   reconciliation=data["reconciliation"], generated_at=data["generated_at"])


@router.get("/data")
async def console_data(request: Request) -> dict[str, Any]:
    """The console's numbers as JSON (what the page shows)."""
    return await _console(request).overview()


@router.get("/history", response_class=HTMLResponse)
async def history_page(request: Request, ref: Ref) -> HTMLResponse:
    """The event history of an order, RMA or shipment (by id or tracking number), with the actor of each change."""
    h = await _console(request).history(ref)
    return _render("console/history.html.j2", request, h=h, generated_at=datetime.now(UTC).isoformat())


@router.get("/history.json")
async def history_data(request: Request, ref: Ref) -> dict[str, Any]:
    """The same history as JSON."""
    return await _console(request).history(ref)
