"""The query API over the read models (GET only)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, HTTPException, Path, Query, Request
from pydantic import AwareDatetime, BaseModel, Field

from libs.auth.http import install_auth
from libs.domain.money import Money
from libs.http.errors import install_error_handlers
from libs.http.health import install_health
from libs.messaging.consumer import assigned_partitions, refresh_consumer_lag
from libs.observability import install_metrics
from services.orders.domain.events import OrderStatus
from services.orders.domain.order import Order
from services.projector.entrypoints.access import ACCESS
from services.projector.entrypoints.console_http import router as console_router
from services.projector.entrypoints.reconciliation_http import router as reconciliation_router
from services.projector.projections.orders import PROJECTION

OrderId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class PrepaymentReasonView(BaseModel):
    rule: str
    detail: str


class BillView(BaseModel):
    bill_id: str
    kind: str
    status: str
    status_label: str
    amount: Money
    revision: int | None = None
    labour_minutes: int | None = None
    lines: dict[str, Any] | None = None
    confirmed_revision: int | None = None
    paid_amount: Money | None = None
    payment_reference: str | None = None
    close_reason: str | None = None
    issued_at: datetime | None = None
    updated_at: datetime | None = None
    version: int


class OrderView(BaseModel):
    """An order as the read model sees it."""

    order_id: str
    customer_id: str | None
    staff_id: str | None
    merchant_id: str | None
    service_code: str | None
    product_line: str | None
    service_name: str | None
    status: str | None
    status_label: str | None
    slot_start: datetime | None
    slot_end: datetime | None
    city: str | None
    district: str | None
    estimated_total: Money | None
    prepayment_required: bool | None
    prepayment_reasons: list[PrepaymentReasonView] | None
    prepayment_policy_version: str | None
    payment_deadline: datetime | None
    prepaid_amount: Money | None
    bill_total: Money | None
    bill_revision: int | None
    settled_total: Money | None
    cancelled_by: str | None
    fault_party: str | None
    cancel_reason_code: str | None
    seconds_before_service_start: int | None
    placed_at: datetime | None
    cancelled_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime | None
    version: int = Field(description="the order stream version this row reflects")
    bills: list[BillView] = Field(default_factory=list)


class HistoryItem(BaseModel):
    event_id: str
    stream_id: str
    stream_version: int
    global_position: int
    event_type: str
    recorded_at: datetime
    actor: str | None
    role: str | None
    correlation_id: str | None
    data: dict[str, Any]


class OrderPage(BaseModel):
    items: list[OrderView]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


def _money(amount: int | None, currency: str | None) -> Money | None:
    return None if amount is None or currency is None else Money(amount=amount, currency=currency)


def _order_view(r: dict[str, Any], bills: list[dict[str, Any]]) -> OrderView:
    cur = r["currency"]
    return OrderView(
        **{k: r[k] for k in ("order_id", "customer_id", "staff_id", "merchant_id", "service_code", "product_line",
                             "service_name", "status", "status_label", "slot_start", "slot_end", "city", "district",
                             "prepayment_required", "prepayment_reasons", "prepayment_policy_version",
                             "payment_deadline", "bill_revision", "cancelled_by", "fault_party",
                             "cancel_reason_code", "seconds_before_service_start", "placed_at", "cancelled_at",
                             "completed_at", "updated_at")},
        estimated_total=_money(r["estimated_total"], cur), prepaid_amount=_money(r["prepaid_amount"], cur),
        bill_total=_money(r["bill_total"], cur), settled_total=_money(r["settled_total"], cur),
        version=r["order_version"],
        bills=[BillView(**{k: b[k] for k in ("bill_id", "kind", "status", "status_label", "revision",
                                             "labour_minutes", "lines", "confirmed_revision", "payment_reference",
                                             "close_reason", "issued_at", "updated_at")},
                        amount=Money(amount=b["amount"], currency=b["currency"]),
                        paid_amount=_money(b["paid_amount"], b["currency"]), version=b["bill_version"])
               for b in bills],
    )


def _encode_cursor(placed_at: datetime, order_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([placed_at.isoformat(), order_id])).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        placed, oid = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(placed), str(oid)
    except Exception:
        raise HTTPException(422, "cursor: not a cursor returned by this API") from None


def create_app(projector: Any | None) -> FastAPI:
    """The projector's FastAPI app; `projector` is None when only the OpenAPI is needed."""
    app = FastAPI(title="closeloop projector (queries)", version="1.0.0",
                  description="Read models built from the event stream: orders, bills and their history; the "
                              "daily reconciliation and the zero-downtime projection rebuild.")
    app.state.projector = projector
    install_error_handlers(app)

    async def on_scrape() -> None:
        if projector is not None:
            await refresh_consumer_lag(projector.consumer.name, projector.broker)

    install_metrics(app, on_scrape)

    def pool(request: Request) -> Any:
        return request.app.state.projector.store.pool

    async def ready_details() -> dict[str, Any]:
        p = app.state.projector
        s = p.consumer.stats
        return {"batches": s.batches, "applied": s.applied, "duplicates": s.duplicates,
                "dead_lettered": p.orders.dead_lettered,
                "offsets": {f"{t}/{part}": o for (t, part), o in s.offsets.items()},
                "partitions": assigned_partitions(p.broker)}

    install_health(app, lambda: app.state.projector.store.pool, ready_details,
                   readiness="the consumer's progress (batches, events applied, duplicates, offsets) and the "
                             "partitions the consumer group assigned to this replica.")
    app.include_router(console_router)
    app.include_router(reconciliation_router)

    @app.get("/orders/{order_id}", response_model=OrderView, tags=["orders"],
             responses={404: {"description": "no such order in the read model (yet)"}})
    async def get_order(
        request: Request, order_id: OrderId,
        min_version: Annotated[int | None, Query(ge=1, description="wait until the row reflects this order "
                                                 "stream version (read-your-writes)")] = None,
        wait_ms: Annotated[int, Query(ge=0, le=10000)] = 2000,
    ) -> OrderView:
        """One order: summary, bills and status labels."""
        sql = "SELECT * FROM rm_orders WHERE order_id = $1"
        row = await pool(request).fetchrow(sql, order_id)
        if min_version is not None and (row is None or row["order_version"] < min_version) and wait_ms > 0:
            # Woken by the projector's NOTIFY (one LISTEN connection for all waiters), not by polling.
            caught, _ = await request.app.state.projector.waiter.wait(
                PROJECTION, Order.stream_id_for(order_id), min_version, wait_ms / 1000)
            if caught:
                row = await pool(request).fetchrow(sql, order_id)
        if row is None:
            raise HTTPException(404, f"order {order_id} not found")
        bills = await pool(request).fetch("SELECT * FROM rm_bills WHERE order_id = $1 ORDER BY issued_at, bill_id",
                                          order_id)
        view = _order_view(dict(row), [dict(b) for b in bills])
        if min_version is not None and view.version < min_version:
            raise HTTPException(504, f"order {order_id} is at version {view.version} in the read model; "
                                     f"{min_version} not reached within {wait_ms} ms")
        return view

    @app.get("/orders/{order_id}/history", response_model=list[HistoryItem], tags=["orders"])
    async def order_history(request: Request, order_id: OrderId) -> list[HistoryItem]:
        """Every event of the order and its bills, oldest first, with who did it."""
        rows = await pool(request).fetch(
            "SELECT * FROM rm_order_history WHERE order_id = $1 ORDER BY recorded_at, global_position", order_id)
        if not rows:
            raise HTTPException(404, f"order {order_id} not found")
        return [HistoryItem(**{**dict(r), "event_id": str(r["event_id"])}) for r in rows]

    @app.get("/orders", response_model=OrderPage, tags=["orders"])
    async def list_orders(
        request: Request,
        status: Annotated[OrderStatus | None, Query(description="filter by status")] = None,
        customer: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        from_: Annotated[AwareDatetime | None, Query(alias="from", description="placed at or after")] = None,
        to: Annotated[AwareDatetime | None, Query(description="placed before")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=500)] = None,
    ) -> OrderPage:
        """Orders, newest first, filtered and paged (keyset paging: stable under inserts)."""
        if from_ and to and from_ >= to:
            raise HTTPException(422, "from: must be before to")
        after = _decode_cursor(cursor) if cursor else None
        rows = await pool(request).fetch(
            """SELECT * FROM rm_orders
                WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR customer_id = $2)
                  AND ($3::timestamptz IS NULL OR placed_at >= $3) AND ($4::timestamptz IS NULL OR placed_at < $4)
                  AND ($5::timestamptz IS NULL OR (placed_at, order_id) < ($5, $6))
                ORDER BY placed_at DESC, order_id DESC LIMIT $7""",
            status.value if status else None, customer, from_, to, after[0] if after else None,
            after[1] if after else None, limit + 1)
        page = [dict(r) for r in rows[:limit]]
        bills_by_order: dict[str, list[dict[str, Any]]] = {}
        if page:
            for b in await pool(request).fetch(
                    "SELECT * FROM rm_bills WHERE order_id = ANY($1) ORDER BY issued_at, bill_id",
                    [r["order_id"] for r in page]):
                bills_by_order.setdefault(b["order_id"], []).append(dict(b))
        nxt = _encode_cursor(page[-1]["placed_at"], page[-1]["order_id"]) if len(rows) > limit else None
        return OrderPage(items=[_order_view(r, bills_by_order.get(r["order_id"], [])) for r in page],
                         next_cursor=nxt)

    install_auth(app, ACCESS, projector)
    return app
