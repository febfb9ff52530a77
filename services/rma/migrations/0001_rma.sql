-- Read models of the RMA service (issue 4). The event store stays the source of truth: every row
-- here is written in the same database transaction as the events it reflects (`version` = the
-- stream version shown), so a row never disagrees with its stream.

-- One row per RMA (stream rma-{rma_id}); `view` is the JSON the API returns (GET /rmas/{id}) minus
-- what other streams add: the return label and the carrier's tracking (from shipping's events), the
-- transfers (rma_transfers) and the history (rma_history).
CREATE TABLE rma_cases (
    rma_id             text        PRIMARY KEY,
    status             text        NOT NULL,
    stage              text,
    customer_id        text        NOT NULL,
    serial             text        NOT NULL,
    sku                text        NOT NULL,
    fault_code         text        NOT NULL,
    warehouse_id       text        NOT NULL,
    replacement_sku    text,
    replacement_serial text,                 -- assigned when the replacement unit is picked
    repeat_kind        text,                 -- same_serial | replacement_unit when flagged
    repeat_of          text,                 -- the previous RMA of the unit
    opened_at          timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL,
    view               jsonb       NOT NULL,
    label              jsonb,                -- ReturnLabelIssued
    tracking           jsonb                 -- the latest ShipmentStatusChanged
);
CREATE INDEX rma_cases_opened_idx ON rma_cases (opened_at DESC, rma_id DESC);
CREATE INDEX rma_cases_status_idx ON rma_cases (status, opened_at DESC, rma_id DESC);
CREATE INDEX rma_cases_customer_idx ON rma_cases (customer_id, opened_at DESC, rma_id DESC);
CREATE INDEX rma_cases_serial_idx ON rma_cases (serial);
CREATE INDEX rma_cases_replacement_serial_idx ON rma_cases (replacement_serial) WHERE replacement_serial IS NOT NULL;
CREATE INDEX rma_cases_fault_idx ON rma_cases (sku, fault_code);
CREATE INDEX rma_cases_repeat_idx ON rma_cases (opened_at DESC, rma_id DESC) WHERE repeat_kind IS NOT NULL;

-- Every event that concerns an RMA, with who did it: its own stream, its transfers, shipping's facts.
CREATE TABLE rma_history (
    seq            bigserial   PRIMARY KEY,
    rma_id         text        NOT NULL,
    stream_id      text        NOT NULL,
    stream_version bigint,                   -- NULL for another service's fact
    event_type     text        NOT NULL,
    actor          text        NOT NULL,
    role           text        NOT NULL,
    reason         text,
    at             timestamptz NOT NULL,
    summary        text        NOT NULL
);
CREATE INDEX rma_history_rma_idx ON rma_history (rma_id, seq);
CREATE UNIQUE INDEX rma_history_event_idx ON rma_history (stream_id, stream_version) WHERE stream_version IS NOT NULL;

-- Stock transfers (stream transfer-{transfer_id}).
CREATE TABLE rma_transfers (
    transfer_id    text        PRIMARY KEY,
    rma_id         text        NOT NULL,
    sku            text        NOT NULL,
    from_warehouse text        NOT NULL,
    to_warehouse   text        NOT NULL,
    status         text        NOT NULL,     -- REQUESTED | ESCALATED | ACCEPTED | REFUSED
    requested_at   timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    escalated_at   timestamptz,
    resolved_at    timestamptz,
    resolution     text        NOT NULL DEFAULT '',
    version        bigint      NOT NULL
);
CREATE INDEX rma_transfers_rma_idx ON rma_transfers (rma_id, requested_at);
CREATE INDEX rma_transfers_status_idx ON rma_transfers (status, requested_at DESC, transfer_id DESC);

-- Units available per warehouse (or department) and SKU (streams stock-{warehouse}/{sku}). The
-- replacement choice reads (and locks) these rows.
CREATE TABLE rma_stock (
    warehouse_id text        NOT NULL,
    sku          text        NOT NULL,
    available    integer     NOT NULL CHECK (available >= 0),
    version      bigint      NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (warehouse_id, sku)
);
CREATE INDEX rma_stock_sku_idx ON rma_stock (sku, warehouse_id);

CREATE TABLE rma_warehouses (
    warehouse_id         text        PRIMARY KEY,
    name                 text        NOT NULL,
    kind                 text        NOT NULL,
    transfer_ttl_seconds integer,
    version              bigint      NOT NULL,
    updated_at           timestamptz NOT NULL
);

-- The catalogue (streams catalogue-{sku}): the item as defined last.
CREATE TABLE rma_catalogue (
    sku        text        PRIMARY KEY,
    eol        boolean     NOT NULL,
    item       jsonb       NOT NULL,
    version    bigint      NOT NULL,
    updated_at timestamptz NOT NULL
);
