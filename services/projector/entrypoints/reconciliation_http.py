"""The reconciliation and rebuild API of the projector: start a run (202 + id), follow its progress,
read its report (JSON, and the HTML page stored with it), work through the discrepancies
(open -> acknowledged -> resolved, with who and why), and rebuild the projections without downtime.

Who may do what is decided from the request context (libs/http/context.py, `Ctx`): running a
reconciliation needs reconciler, approver, platform or service; acknowledging a discrepancy a
reconciler or an approver; resolving one an approver; a rebuild platform, service or reconciler
(services/projector/domain/reconciliation.py). A refusal is a 403 naming the role.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.http.context import Ctx

router = APIRouter(tags=["reconciliation"])

RunId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
DiscrepancyId = Annotated[str, Path(min_length=3, max_length=64, pattern=r"^d-[0-9a-f]+$")]
RebuildId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]

# The access rules of these routes, for the projector's access table (libs/auth): who reads, who acts.
ROUTE_ROLES: dict[str, frozenset[str]] = {
    "POST /reconciliations": frozenset({"reconciler", "approver", "platform", "service"}),
    "GET /reconciliations": frozenset({"reconciler", "approver", "platform", "service", "auditor"}),
    "GET /reconciliations/{run_id}": frozenset({"reconciler", "approver", "platform", "service", "auditor"}),
    "GET /reconciliations/{run_id}.html": frozenset({"reconciler", "approver", "platform", "service", "auditor"}),
    "GET /discrepancies": frozenset({"reconciler", "approver", "platform", "service", "auditor"}),
    "GET /discrepancies/{discrepancy_id}": frozenset({"reconciler", "approver", "platform", "service", "auditor"}),
    "POST /discrepancies/{discrepancy_id}/acknowledge": frozenset({"reconciler", "approver"}),
    "POST /discrepancies/{discrepancy_id}/resolve": frozenset({"approver"}),
    "POST /rebuilds": frozenset({"platform", "service", "reconciler"}),
    "GET /rebuilds": frozenset({"reconciler", "approver", "platform", "service", "auditor"}),
    "GET /rebuilds/{rebuild_id}": frozenset({"reconciler", "approver", "platform", "service", "auditor"}),
}


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repair: bool = Field(default=False, description="swap the replayed tables in when the projector's read models "
                                                    "drifted (the services' tables are only reported)")


class RunAccepted(BaseModel):
    run_id: str
    status: str
    status_url: str
    report_url: str
    html_url: str


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500, description="why (kept with who and when)")]


class RebuildAccepted(BaseModel):
    rebuild_id: str
    status: str
    status_url: str


def _projector(request: Request) -> Any:
    projector = request.app.state.projector
    if projector is None:
        raise HTTPException(503, "the projector is not running")
    return projector


@router.post("/reconciliations", status_code=202, response_model=RunAccepted)
async def start_reconciliation(request: Request, ctx: Ctx, body: RunRequest | None = None) -> RunAccepted:
    """Start a reconciliation now (it runs in the background; follow GET /reconciliations/{id})."""
    p = _projector(request)
    repair = body.repair if body is not None else False
    run_id, _ = await p.reconciler.start(ctx, trigger="api", repair=repair)
    p.reconciler.run_in_background(run_id, ctx)
    return RunAccepted(run_id=run_id, status="running", status_url=f"/reconciliations/{run_id}",
                       report_url=f"/reconciliations/{run_id}", html_url=f"/reconciliations/{run_id}.html")


@router.get("/reconciliations")
async def list_reconciliations(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[AwareDatetime | None, Query(description="runs started before this time (paging)")] = None,
) -> list[dict[str, Any]]:
    """The history of runs, newest first: status, phase, summary counts."""
    return list(await _projector(request).reconciler.runs(limit, before))


@router.get("/reconciliations/{run_id}.html", response_class=HTMLResponse,
            responses={404: {"description": "no such run, or it has not completed"}})
async def reconciliation_page(request: Request, run_id: RunId) -> HTMLResponse:
    """The report's HTML page, rendered from the stored JSON report when the run completed."""
    html = await _projector(request).reconciler.html(run_id)
    if html is None:
        raise HTTPException(404, f"reconciliation {run_id} has no report yet (see GET /reconciliations/{run_id})")
    return HTMLResponse(html)


@router.get("/reconciliations/{run_id}")
async def get_reconciliation(request: Request, run_id: RunId) -> dict[str, Any]:
    """One run: while running its phase and counts (events applied of the total, rate); once completed its
    whole report (every discrepancy with its rows and event positions)."""
    return dict(await _projector(request).reconciler.get(run_id))


@router.get("/discrepancies")
async def list_discrepancies(
    request: Request,
    status: Annotated[str | None, Query(pattern=r"^(open|acknowledged|resolved)$")] = None,
    kind: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+$")] = None,
    run_id: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] = None,
    present: Annotated[bool | None, Query(description="found by the latest run")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[dict[str, Any]]:
    """Discrepancies across runs with their lifecycle, newest first."""
    return list(await _projector(request).reconciler.discrepancies(status=status, kind=kind, run_id=run_id,
                                                                    present=present, limit=limit))


@router.get("/discrepancies/{discrepancy_id}")
async def get_discrepancy(request: Request, discrepancy_id: DiscrepancyId) -> dict[str, Any]:
    """One discrepancy: what the last run found, its status, and its history (who did what and why)."""
    return dict(await _projector(request).reconciler.discrepancy(discrepancy_id))


@router.post("/discrepancies/{discrepancy_id}/acknowledge")
async def acknowledge(request: Request, discrepancy_id: DiscrepancyId, body: Reason, ctx: Ctx) -> dict[str, Any]:
    """open -> acknowledged (a reconciler or an approver is on it)."""
    return dict(await _projector(request).reconciler.acknowledge(discrepancy_id, body.reason, ctx))


@router.post("/discrepancies/{discrepancy_id}/resolve")
async def resolve(request: Request, discrepancy_id: DiscrepancyId, body: Reason, ctx: Ctx) -> dict[str, Any]:
    """acknowledged -> resolved (an approver's decision)."""
    return dict(await _projector(request).reconciler.resolve(discrepancy_id, body.reason, ctx))


@router.post("/rebuilds", status_code=202, response_model=RebuildAccepted)
async def start_rebuild(request: Request, ctx: Ctx) -> RebuildAccepted:
    """Rebuild every projector read model from the event store in a shadow schema, catch it up with the live
    stream and swap it in; reads go on from the live tables meanwhile. Appends nothing, publishes nothing."""
    p = _projector(request)
    rebuild_id = await p.rebuilds.start(ctx)
    p.rebuilds.run_in_background(rebuild_id)
    return RebuildAccepted(rebuild_id=rebuild_id, status="running", status_url=f"/rebuilds/{rebuild_id}")


@router.get("/rebuilds")
async def list_rebuilds(request: Request, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[dict[str, Any]]:
    """Rebuilds, newest first."""
    return list(await _projector(request).rebuilds.list(limit))


@router.get("/rebuilds/{rebuild_id}")
async def get_rebuild(request: Request, rebuild_id: RebuildId) -> JSONResponse:
    """A rebuild's phase and progress: events applied of the total, rate, the tail caught up, the swap."""
    return JSONResponse(await _projector(request).rebuilds.get(rebuild_id))
