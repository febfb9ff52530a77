"""The shipping service's HTTP API: return labels and their scan, outbound shipments, carrier tracking
webhooks and the tracking page, carrier manifests and duplicate shipments. Routes validate and
dispatch to application/; errors go through libs/http/errors.py."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

import jinja2
from fastapi import APIRouter, FastAPI, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from libs.auth.http import install_auth
from libs.http.context import Ctx
from libs.http.errors import error_body, install_error_handlers
from libs.http.health import install_health
from libs.messaging.consumer import refresh_consumer_lag
from libs.observability import install_metrics
from services.shipping.application.queries import track as track_query
from services.shipping.domain.duplicates import DuplicateStatus
from services.shipping.domain.events import ShipmentDuplicateResolution, TrackingVia
from services.shipping.domain.shipment import ShipmentRequest
from services.shipping.entrypoints.access import ACCESS

SIGNATURE_HEADER = "X-Carrier-Signature"
IdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
IdQuery = Annotated[str | None, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
COMMAND_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"description": "the token's role may not do this (X-Role named); nothing stored"},
    404: {"description": "no such label / shipment / duplicate"},
    409: {"description": "not allowed in its state (named, with the allowed commands), or a version conflict; "
                         "nothing stored"},
    422: {"description": "a field breaks a rule (named with the rule); nothing stored"},
}
UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}}}

router = APIRouter()


def _c(request: Request) -> Any:
    return request.app.state.shipping


def sign_carrier_body(secret: str, body: bytes) -> str:
    """The X-Carrier-Signature value a carrier sends: sha256=<hex HMAC-SHA256 of the raw body>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _signature_ok(header: str | None, body: bytes, secrets: list[str]) -> bool:
    if not header:
        return False
    return any(hmac.compare_digest(header.strip(), sign_carrier_body(s, body)) for s in secrets)


def _too_large(limit: int) -> JSONResponse:
    rule = f"must be at most {limit} bytes"
    return JSONResponse(error_body("payload_too_large", f"body over {limit} bytes",
                                   fields=[{"field": "body", "rule": rule}]), status_code=413)


async def _bounded_body(request: Request, limit: int) -> bytes | JSONResponse:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _too_large(limit)
    body = await request.body()
    if len(body) > limit:
        return _too_large(limit)
    return body


# --- labels --------------------------------------------------------------------------------------


class Scan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: Annotated[str, Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="the label's barcode or QR payload as scanned; checked when given")
    location: Annotated[str, Field(max_length=200)] = Field(default="", description="where, e.g. the service centre")
    scanned_at: AwareDatetime | None = Field(default=None, description="when; now when omitted")


class ScanByPayload(Scan):
    payload: Annotated[str, Field(min_length=1, max_length=1000)] = Field(  # type: ignore[assignment]
        description="the label's barcode or QR payload as scanned")


def _scanned(response: Response, result: Any) -> dict[str, Any]:
    if not result.response["scanned"] or result.replayed:
        response.headers["Label-Already-Scanned"] = "true"
    return dict(result.response["label"])


@router.get("/labels/{label_id}", tags=["labels"], responses={404: COMMAND_RESPONSES[404]})
async def get_label(label_id: IdPath, request: Request) -> dict[str, Any]:
    """One return label: its RMA, carrier, tracking number, barcode and QR payloads, whether it was scanned in."""
    return await _c(request).services.labels.view(label_id)


@router.get("/labels", tags=["labels"])
async def labels_of_rma(request: Request, rma_id: Annotated[str, Query(min_length=1, max_length=64,
                                                                        pattern=r"^[A-Za-z0-9_.:-]+$")]) -> Any:
    """The labels bound to an RMA (its return label; extra-unit labels of its duplicates)."""
    return {"rma_id": rma_id, "labels": await _c(request).services.labels.of_rma(rma_id)}


@router.post("/labels/{label_id}/scan", tags=["labels"], responses=COMMAND_RESPONSES)
async def scan_label(label_id: IdPath, ctx: Ctx, request: Request, response: Response,
                     body: Scan | None = None) -> dict[str, Any]:
    """The label's parcel arrived at the service centre (roles service, platform): InboundParcelScanned, and
    the RMA goes SHIPPED_IN. A payload that does not verify or is another label's: 422. Scanning again changes
    nothing (`Label-Already-Scanned: true`)."""
    b = body or Scan()
    result = await _c(request).services.labels.scan(label_id, b.payload, b.location, b.scanned_at, ctx)
    return _scanned(response, result)


@router.post("/labels/scan", tags=["labels"], responses=COMMAND_RESPONSES)
async def scan_payload(body: ScanByPayload, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
    """Scan a parcel by its label's barcode or QR payload alone (the scanner reads the label)."""
    result = await _c(request).services.labels.scan(None, body.payload, body.location, body.scanned_at, ctx)
    return _scanned(response, result)


# --- shipments -----------------------------------------------------------------------------------


@router.post("/shipments", tags=["shipments"], status_code=201, responses={
    **COMMAND_RESPONSES, 200: {"description": "the (subject, action) was shipped before: that shipment, the same "
                                              "body, header Shipment-Existing: true"},
    409: {"description": "the (subject, action) was shipped with another SKU, warehouse, address or carrier "
                         "(the fields named); nothing stored"},
    422: {"description": "a field breaks a rule (named), e.g. no Idempotency-Key, both or neither of rma_id and "
                         "order_id; nothing stored"}})
async def create_shipment(body: ShipmentRequest, ctx: Ctx, request: Request, response: Response) -> dict[str, Any]:
    """Ship exactly once per (RMA or order, action) (roles service, platform; Idempotency-Key required):
    201 for the new shipment; any later attempt, concurrent or not, whatever its key, gets the same shipment
    back with 200 and `Shipment-Existing: true`."""
    result = await _c(request).services.shipments.create(body, ctx)
    shipment = result.response["shipment"]
    if result.replayed or not result.response["created"]:
        response.status_code = 200
        response.headers["Shipment-Existing"] = "true"
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/shipments/{shipment['shipment_id']}"
    return dict(shipment)


@router.get("/shipments/{shipment_id}", tags=["shipments"], responses={404: COMMAND_RESPONSES[404]})
async def get_shipment(shipment_id: IdPath, request: Request) -> dict[str, Any]:
    """One shipment: subject, action, SKU, carrier, tracking number, status, ETA."""
    return await _c(request).services.shipments.view(shipment_id)


@router.get("/shipments", tags=["shipments"])
async def search_shipments(request: Request, rma_id: IdQuery = None, order_id: IdQuery = None,
                           limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    """Shipments of an RMA or an order (newest first)."""
    return {"shipments": await _c(request).services.shipments.search(rma_id, order_id, limit)}


# --- tracking ------------------------------------------------------------------------------------


@router.post("/carriers/{carrier}/events", tags=["tracking"], openapi_extra=UPLOAD_BODY, responses={
    200: {"description": "applied: per parcel, what was recorded and what was a duplicate; events of unknown "
                         "tracking numbers are kept, not applied"},
    400: {"description": f"missing or wrong {SIGNATURE_HEADER}; nothing stored"},
    413: {"description": "body too large"},
    422: {"description": "a bad event (each field named); nothing stored"}})
async def carrier_events(carrier: Annotated[Literal["globex", "island"], Path()], request: Request) -> Any:
    """A carrier's tracking events: `globex` (JSON webhook, event codes PU/IT/OD/DL/EX/RS…, ISO times) or
    `island` (CSV or JSON, Chinese 貨態 such as 已取件/配送中/已送達/異常/退回, Asia/Taipei local times), signed
    with `X-Carrier-Signature: sha256=<hex HMAC-SHA256 of the body>`. Formats: services/shipping/domain/
    carrier_formats.py. Normalised to InTransit / OutForDelivery / Delivered / Exception / ReturnedToSender;
    duplicates and stale events never change the status."""
    c = _c(request)
    body = await _bounded_body(request, c.settings.carrier_max_body_bytes)
    if isinstance(body, JSONResponse):
        return body
    if not _signature_ok(request.headers.get(SIGNATURE_HEADER), body, c.settings.carrier_secrets):
        return JSONResponse(error_body("invalid_signature", f"{SIGNATURE_HEADER} does not verify",
                                       fields=[{"field": SIGNATURE_HEADER,
                                                "rule": "sha256=<hex HMAC-SHA256 of the raw body>"}]),
                            status_code=400)
    return await c.services.tracking.ingest(carrier, body, request.headers.get("content-type"), TrackingVia.HTTP)


@router.get("/track/{ref}", tags=["tracking"], responses={404: {"description": "no parcel with this tracking "
                                                                               "number or RMA id"}})
async def track(ref: IdPath, request: Request) -> dict[str, Any]:
    """Where is it: by tracking number or RMA id, the current status (and in Chinese), the history (normalised
    status beside the carrier's own), the ETA and where it comes from (carrier, out_for_delivery,
    service_level), the shipment and RMA ids, and the RMA's other parcels."""
    return await track_query(_c(request).store, ref)


_PAGES = jinja2.Environment(loader=jinja2.FileSystemLoader(FsPath(__file__).parents[1] / "templates"),
                            autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)


@router.get("/track/{ref}/page", tags=["tracking"], response_class=HTMLResponse,
            responses={404: {"description": "no parcel with this tracking number or RMA id"}})
async def track_page(ref: IdPath, request: Request) -> HTMLResponse:
    """The tracking page for customers: the same as GET /track/{ref}, as HTML (no scripts, nothing external)."""
    found = await track_query(_c(request).store, ref)
    return HTMLResponse(_PAGES.get_template("track.html.j2").render(t=found))


# --- manifests and duplicates --------------------------------------------------------------------


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: Literal["return_requested", "offset_against_later_service", "customer_pays", "goodwill_kept",
                        "not_a_duplicate"] = Field(description="the follow-up (seed 001, case 15)")
    note: Annotated[str, Field(min_length=1, max_length=2000, description="what was agreed with the customer")]
    offset_reference: Annotated[str, Field(max_length=128)] = Field(
        default="", description="offset_against_later_service: the later order or RMA it is offset against")


@router.post("/manifests/import", tags=["duplicates"], openapi_extra=UPLOAD_BODY, responses={
    200: {"description": "imported (or this very file before: its first report, nothing changed)"},
    403: COMMAND_RESPONSES[403], 413: {"description": "file too large"},
    422: {"description": "the file cannot be read (type, encoding, missing column) or has no valid row; "
                         "nothing stored"}})
async def import_manifest(request: Request, ctx: Ctx, response: Response,
                          carrier: Annotated[Literal["globex", "island"] | None, Query()] = None,
                          source: Annotated[str, Query(max_length=255)] = "") -> Any:
    """Import a carrier manifest (CSV or JSON; columns in services/shipping/domain/manifest.py; roles importer,
    service, platform). Parcels closeloop did not create that duplicate an (RMA or order, action) already shipped
    are flagged (DuplicateShipmentDetected); bad rows are reported by line."""
    c = _c(request)
    body = await _bounded_body(request, c.settings.manifest_max_bytes)
    if isinstance(body, JSONResponse):
        return body
    result = await c.services.duplicates.import_manifest(body, request.headers.get("content-type"), carrier, source,
                                                         ctx)
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return result.response


@router.get("/manifests/{manifest_id}", tags=["duplicates"], responses={404: {"description": "no such manifest"}})
async def get_manifest(manifest_id: IdPath, request: Request) -> dict[str, Any]:
    """The report of an imported manifest."""
    return await _c(request).services.duplicates.manifest(manifest_id)


@router.get("/duplicates", tags=["duplicates"])
async def duplicates(request: Request, status: DuplicateStatus | None = None,
                     limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
    """Duplicate shipments, newest first; `status=open` is the follow-up queue."""
    return {"duplicates": await _c(request).services.duplicates.search(status.value if status else None, limit)}


@router.get("/duplicates/{duplicate_id}", tags=["duplicates"], responses={404: COMMAND_RESPONSES[404]})
async def get_duplicate(duplicate_id: IdPath, request: Request) -> dict[str, Any]:
    """One duplicate: the two parcels, the follow-up so far, the resolutions still allowed."""
    return await _c(request).services.duplicates.view(duplicate_id)


@router.post("/duplicates/{duplicate_id}/resolve", tags=["duplicates"], responses=COMMAND_RESPONSES)
async def resolve_duplicate(duplicate_id: IdPath, body: Resolve, ctx: Ctx, request: Request,
                            response: Response) -> dict[str, Any]:
    """Record the follow-up (roles reconciler, approver, service, platform): return_requested issues a return
    label for the extra unit (scanning it in resolves the duplicate); offset_against_later_service,
    customer_pays, goodwill_kept resolve it; not_a_duplicate dismisses it."""
    result = await _c(request).services.duplicates.resolve(
        duplicate_id, ShipmentDuplicateResolution(body.resolution), body.note, body.offset_reference, ctx)
    if result.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return dict(result.response)


def create_app(shipping: Any | None) -> FastAPI:
    """The shipping FastAPI app; `shipping` (the running container) is None for OpenAPI only."""
    app = FastAPI(title="closeloop shipping", version="1.0.0",
                  description="Return labels, outbound shipments exactly once per (RMA or order, action), carrier "
                              "tracking in two formats, carrier manifests and duplicate shipments (seed 001).")
    app.state.shipping = shipping
    install_error_handlers(app)

    async def on_scrape() -> None:
        if app.state.shipping is not None:
            await refresh_consumer_lag(app.state.shipping.consumer.name, app.state.shipping.broker)

    install_metrics(app, on_scrape)

    async def ready_details() -> dict[str, Any]:
        c = app.state.shipping
        s = c.consumer.stats
        return {"consumer": {"batches": s.batches, "applied": s.applied, "duplicates": s.duplicates,
                             "undecodable": s.undecodable},
                "reactions": {"rejected": len(c.reactions.rejected), "dead_lettered": c.reactions.dead_lettered},
                "tracking": c.services.tracking.stats, "carrier_topic": c.kafka_stats}

    install_health(app, lambda: app.state.shipping.store.pool, ready_details,
                   readiness="consumer, reaction and tracking counters.")
    app.include_router(router)
    install_auth(app, ACCESS, shipping)
    return app
