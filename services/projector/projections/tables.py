"""Every table the projector owns, with its key and the stream each row comes from: what a
rebuild replays into a shadow schema and swaps in, and what the reconciliation compares row by row.
They are a pure function of the event store: the projector writes nothing else into them."""

from __future__ import annotations

from services.projector.projections import facts
from services.projector.projections import orders as orders_projection
from services.projector.projections.common import TableSpec

RM_ORDERS = TableSpec("rm_orders", orders_projection.ORDER_COLUMNS, ["order_id"], "'order-' || order_id")
RM_BILLS = TableSpec("rm_bills", orders_projection.BILL_COLUMNS, ["bill_id"], "'bill-' || bill_id")
RM_ORDER_HISTORY = TableSpec("rm_order_history", orders_projection.HISTORY_COLUMNS, ["event_id"], "stream_id")
# Which version of each stream a projection applied (a duplicate is skipped, a gap filled).
PROJECTION_STREAMS = TableSpec("projection_streams", ["projection", "stream_id", "version"],
                               ["projection", "stream_id"], "stream_id")

READ_MODELS: tuple[TableSpec, ...] = (RM_ORDERS, RM_BILLS, RM_ORDER_HISTORY, *facts.TABLES)
# What a rebuild swaps in, together: the read models and the versions they reflect.
OWNED: tuple[TableSpec, ...] = (*READ_MODELS, PROJECTION_STREAMS)
BY_NAME = {t.name: t for t in OWNED}

# Stream category -> the projection (its name in projection_streams) that reads it.
PROJECTION_OF_CATEGORY: dict[str, str] = {
    **{c: orders_projection.PROJECTION for c in orders_projection.CATEGORIES},
    **{c: facts.PROJECTION for c in facts.CATEGORIES},
}
CATEGORIES = tuple(PROJECTION_OF_CATEGORY)
