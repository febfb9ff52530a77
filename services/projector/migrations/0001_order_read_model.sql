-- Order read model: one summary row per order and one history row per event.
-- rm_orders is written only from order-<id> streams and rm_bills only from bill-<id>
-- streams: Kafka orders events within a stream (one key, one partition) but not across
-- streams, so no row may depend on the arrival order of two different streams.
CREATE TABLE rm_orders (
    order_id                    text PRIMARY KEY,
    customer_id                 text,
    staff_id                    text,
    merchant_id                 text,
    service_code                text,
    product_line                text,
    service_name                text,
    status                      text,
    status_label                text,
    slot_start                  timestamptz,
    slot_end                    timestamptz,
    city                        text,
    district                    text,
    currency                    text,
    estimated_total             bigint,
    prepayment_required         boolean,
    prepayment_reasons          jsonb,
    prepayment_policy_version   text,
    payment_deadline            timestamptz,
    prepaid_amount              bigint,
    prepayment_bill_id          text,
    bill_id                     text,
    bill_total                  bigint,
    bill_revision               integer,
    settled_total               bigint,
    cancelled_by                text,
    fault_party                 text,
    cancel_reason_code          text,
    seconds_before_service_start bigint,
    placed_at                   timestamptz,
    cancelled_at                timestamptz,
    completed_at                timestamptz,
    updated_at                  timestamptz,
    order_version               bigint NOT NULL DEFAULT 0,
    last_position               bigint NOT NULL DEFAULT 0
);
CREATE INDEX rm_orders_customer_idx ON rm_orders (customer_id, placed_at DESC);
CREATE INDEX rm_orders_status_idx ON rm_orders (status, placed_at DESC);
CREATE INDEX rm_orders_placed_idx ON rm_orders (placed_at DESC, order_id);

CREATE TABLE rm_bills (
    bill_id          text PRIMARY KEY,
    order_id         text NOT NULL,
    kind             text NOT NULL,
    status           text NOT NULL,
    status_label     text NOT NULL,
    currency         text NOT NULL,
    amount           bigint NOT NULL,
    revision         integer,
    labour_minutes   integer,
    lines            jsonb,
    confirmed_revision integer,
    paid_amount      bigint,
    payment_reference text,
    close_reason     text,
    issued_at        timestamptz,
    updated_at       timestamptz,
    bill_version     bigint NOT NULL DEFAULT 0,
    last_position    bigint NOT NULL DEFAULT 0
);
CREATE INDEX rm_bills_order_idx ON rm_bills (order_id);

CREATE TABLE rm_order_history (
    event_id        uuid PRIMARY KEY,
    order_id        text NOT NULL,
    stream_id       text NOT NULL,
    stream_version  bigint NOT NULL,
    global_position bigint NOT NULL,
    event_type      text NOT NULL,
    recorded_at     timestamptz NOT NULL,
    actor           text,
    role            text,
    correlation_id  text,
    data            jsonb NOT NULL
);
CREATE INDEX rm_order_history_order_idx ON rm_order_history (order_id, recorded_at, global_position);

-- The last version of each stream a projection applied: a duplicate is skipped, and a
-- gap (an event Kafka lost or has not delivered) is filled from the event store.
CREATE TABLE projection_streams (
    projection text   NOT NULL,
    stream_id  text   NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (projection, stream_id)
);
