"""The operations console (issue 5, item 5): server-rendered pages, no scripts, nothing loaded from
elsewhere (nothing external is reachable), so it works in any browser on the closed network. Each page
has a JSON twin with the same numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Any
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from libs.auth.http import SESSION_COOKIE
from libs.auth.tokens import TokenRefused, TokenStore
from libs.domain.money import Money
from services.projector.application.console import QUEUE_STATUSES, Console
from services.projector.entrypoints.access import CONSOLE

router = APIRouter(prefix="/console", tags=["console"])
Ref = Annotated[str, Query(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$",
                           description="an order, RMA or shipment id, or a tracking number")]
Next = Annotated[str, Query(max_length=2048, description="where to go after signing in (a path of this service)")]
FORM_BYTES = 8192
SESSION_HOURS = 12

_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(FsPath(__file__).parents[1] / "templates"),
                            autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
# Amounts are integer minor units: shown with the currency's exponent by Money.format, never via a float.
_PAGES.filters["money"] = lambda m: Money(amount=m["amount"], currency=m["currency"]).format()


def _console(request: Request) -> Console:
    return Console(request.app.state.projector.store)


def _render(template: str, request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
    base = request.scope.get("root_path", "")
    return HTMLResponse(_PAGES.get_template(template).render(base=base, **context), status_code=status_code)


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


# ------------------------------------------------------------------------------------ sign-in

def _safe_next(value: str | None) -> str:
    """Only a path of this service (never another site: `//host` or a scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/console"
    return value


_REASONS = {"expired": "Your session's token has expired: sign in again.",
            "revoked": "Your session's token was revoked: sign in again."}


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: Next = "/console", reason: str | None = None) -> HTMLResponse:
    """The console's sign-in form: paste a token (`closeloop tokens create`, or one `make run` printed)."""
    return _render("console/login.html.j2", request, next=_safe_next(next), error=_REASONS.get(reason or ""),
                   roles=sorted(CONSOLE.roles), generated_at=datetime.now(UTC).isoformat(), status_code=200)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the token of the form (field `token`, role among the console's) and keep it in an HttpOnly,
    SameSite=Strict session cookie, then go back to `next`. The cookie opens the console's pages (reads)
    only; the API keeps asking for the Authorization header."""
    body = await request.body()
    form = {k: v[0] for k, v in parse_qs(body[:FORM_BYTES].decode("utf-8", "replace")).items()}
    target = _safe_next(form.get("next"))
    store = TokenStore(request.app.state.projector.store.pool, request.app.state.projector.settings.secret_key)

    def again(message: str, status: int) -> HTMLResponse:
        return _render("console/login.html.j2", request, next=target, error=message, roles=sorted(CONSOLE.roles),
                       generated_at=datetime.now(UTC).isoformat(), status_code=status)

    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return again("send the sign-in form (application/x-www-form-urlencoded, field token)", 415)
    try:
        principal = await store.authenticate(form.get("token", "").strip() or None)
    except TokenRefused as exc:
        return again(exc.message, 401)
    if principal.role not in CONSOLE.roles:
        return again(f"the console is for the {', '.join(sorted(CONSOLE.roles))} roles; this token's role is "
                     f"{principal.role!r}", 403)
    base = request.scope.get("root_path", "")
    response = RedirectResponse(base + target, status_code=303)
    response.set_cookie(SESSION_COOKIE, form["token"].strip(), max_age=SESSION_HOURS * 3600, path=base or "/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session cookie (the token itself stays valid until revoked: `closeloop tokens revoke`)."""
    base = request.scope.get("root_path", "")
    response = RedirectResponse(base + "/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=base or "/")
    return response
