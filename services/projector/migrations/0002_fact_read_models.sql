-- The other services' key facts as projector read models, built from their events alone
-- (services/projector/projections/facts.py). Each row is a function of one stream: what needs
-- several streams (a refund report naming only its charge, duplicate shipments, the ledger of an
-- order against the provider) is computed from these rows by the reconciliation, in SQL.
-- The services keep tables of the same facts in their own transactions (payments_refunds,
-- rma_cases, shipping_shipments, notifications); the reconciliation compares them with these.

-- One row per transaction-{order_id} stream: the money of an order.
CREATE TABLE rm_transactions (
    order_id         text PRIMARY KEY,
    customer_id      text,
    merchant_id      text,
    status           text,
    status_label     text,
    currency         text,
    estimated_total  bigint,
    prepaid          bigint NOT NULL,   -- the prepayment captured, vouchers included
    paid             bigint NOT NULL,   -- money tenders taken: third party + member balance + cash (+ money to return)
    card_paid        bigint NOT NULL,   -- of which third party (the provider's charges)
    bill_total       bigint,
    settled_total    bigint,
    refunded         bigint NOT NULL,   -- money refunds decided, less what chargebacks returned instead
    penalty          bigint NOT NULL,
    chargebacks      bigint NOT NULL,   -- lost disputes
    external_refunds bigint NOT NULL,   -- refunds made at the provider, not requested by closeloop
    refunds_held     bigint NOT NULL,   -- refunds waiting for a dispute to close
    open_disputes    integer NOT NULL,
    placed_at        timestamptz,
    updated_at       timestamptz,
    version          bigint NOT NULL,
    last_position    bigint NOT NULL
);
CREATE INDEX rm_transactions_status_idx ON rm_transactions (status);

-- The internal payment ledger of an order (from its transaction stream): every money tender taken
-- (capture), money that arrived and is owed back (to_return), lost disputes (chargeback, reference =
-- the provider's dispute id) and refunds made at the provider (external_refund, reference = the
-- provider's refund id). Card refunds closeloop requested are rm_refunds.
CREATE TABLE rm_ledger_entries (
    order_id          text        NOT NULL,
    entry             text        NOT NULL,
    reference         text        NOT NULL,
    kind              text        NOT NULL,   -- the tender kind: third_party | member_balance | cash
    amount            bigint      NOT NULL,
    currency          text        NOT NULL,
    payment_reference text,                   -- chargeback / external refund: the payment concerned
    at                timestamptz NOT NULL,
    stream_version    bigint      NOT NULL,
    global_position   bigint      NOT NULL,
    PRIMARY KEY (order_id, entry, reference)
);
CREATE INDEX rm_ledger_entries_reference_idx ON rm_ledger_entries (reference);

-- One row per refund-{refund_id} stream (the payments service's payments_refunds, from events).
CREATE TABLE rm_refunds (
    refund_id          text        PRIMARY KEY,
    order_id           text        NOT NULL,
    source             text        NOT NULL,
    kind               text        NOT NULL,
    amount             bigint      NOT NULL,
    currency           text        NOT NULL,
    reference          text        NOT NULL,
    provider           text,
    status             text        NOT NULL,
    provider_refund_id text,
    attempt            integer     NOT NULL,
    failure_reason     text,
    requested_at       timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL,
    last_position      bigint      NOT NULL
);
CREATE INDEX rm_refunds_order_idx ON rm_refunds (order_id);
CREATE INDEX rm_refunds_provider_refund_idx ON rm_refunds (provider_refund_id);

-- One row per upstream-stripe-{event} stream that carries a normalised fact: what the provider said.
CREATE TABLE rm_upstream_facts (
    stream_id           text        PRIMARY KEY,
    provider_event_id   text        NOT NULL,
    fact_type           text        NOT NULL,
    upstream_type       text        NOT NULL,
    order_id            text,                 -- when the provider named it (metadata.order_id)
    charge_id           text,
    payment_intent_id   text,
    payment_key         text,                 -- charges: how the ledger names the payment (intent, else charge)
    refund_id           text,
    dispute_id          text,
    amount              bigint,               -- minor units; NULL with a data gap
    currency            text,
    provider_amount     bigint,
    provider_currency   text,
    amount_refunded     bigint,
    status              text,                 -- succeeded | failed (payments), the refund's or dispute's status
    outcome             text,                 -- disputes closed: won | lost
    closeloop_refund_id text,
    kolable             boolean     NOT NULL, -- a Kolable course payment (reconciled by the Kolable war room)
    data_gap            text,
    occurred_at         timestamptz NOT NULL,
    version             bigint      NOT NULL,
    last_position       bigint      NOT NULL
);
CREATE INDEX rm_upstream_facts_order_idx ON rm_upstream_facts (order_id);
CREATE INDEX rm_upstream_facts_charge_idx ON rm_upstream_facts (charge_id);
CREATE INDEX rm_upstream_facts_intent_idx ON rm_upstream_facts (payment_intent_id);

-- One row per rma-{rma_id} stream.
CREATE TABLE rm_rmas (
    rma_id             text        PRIMARY KEY,
    status             text        NOT NULL,
    status_label       text        NOT NULL,
    stage              text,
    customer_id        text        NOT NULL,
    serial             text        NOT NULL,
    sku                text        NOT NULL,
    fault_code         text        NOT NULL,
    warehouse_id       text        NOT NULL,
    replacement_sku    text,
    replacement_serial text,
    repeat_kind        text,
    repeat_of          text,
    label_id           text,
    shipment_id        text,
    tracking_number    text,
    opened_at          timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL,
    last_position      bigint      NOT NULL
);
CREATE INDEX rm_rmas_status_idx ON rm_rmas (status, opened_at DESC);
CREATE INDEX rm_rmas_customer_idx ON rm_rmas (customer_id, opened_at DESC);

-- One row per shipment-{shipment_id} stream.
CREATE TABLE rm_shipments (
    shipment_id        text        PRIMARY KEY,
    subject_kind       text        NOT NULL,
    subject_id         text        NOT NULL,
    rma_id             text,
    order_id           text,
    action             text        NOT NULL,
    sku                text        NOT NULL,
    warehouse_id       text        NOT NULL,
    carrier            text        NOT NULL,
    service_level      text,
    tracking_number    text        NOT NULL,
    status             text,                  -- NULL until the first carrier event
    status_carrier     text,
    status_location    text,
    status_occurred_at timestamptz,
    eta                timestamptz,
    eta_source         text,
    tracking_events    integer     NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            bigint      NOT NULL,
    last_position      bigint      NOT NULL
);
-- Not unique: the replay shows what the events say, and a second shipment for one (subject,
-- action) is exactly what the reconciliation looks for.
CREATE INDEX rm_shipments_subject_idx ON rm_shipments (subject_kind, subject_id, action);
CREATE INDEX rm_shipments_tracking_idx ON rm_shipments (tracking_number);

-- Every parcel an imported carrier manifest lists (carrier_manifest-{manifest_id} streams).
CREATE TABLE rm_manifest_rows (
    manifest_id     text        NOT NULL,
    line            integer     NOT NULL,
    carrier         text        NOT NULL,
    tracking_number text        NOT NULL,
    subject_kind    text        NOT NULL,
    subject_id      text        NOT NULL,
    action          text        NOT NULL,
    sku             text,
    shipped_at      timestamptz NOT NULL,
    outcome         text,
    duplicate_id    text,
    imported_at     timestamptz NOT NULL,
    global_position bigint      NOT NULL,
    PRIMARY KEY (manifest_id, line)
);
CREATE INDEX rm_manifest_rows_subject_idx ON rm_manifest_rows (subject_kind, subject_id, action);

-- One row per notification-{id} stream (per stage and channel: GROUP BY subject_id, stage, channel).
CREATE TABLE rm_notifications (
    notification_id   text        PRIMARY KEY,
    audience          text        NOT NULL,
    recipient         text        NOT NULL,
    channel           text        NOT NULL,
    locale            text        NOT NULL,
    template          text        NOT NULL,
    subject_type      text        NOT NULL,
    subject_id        text        NOT NULL,
    stage             text        NOT NULL,
    source_event_type text        NOT NULL,
    status            text        NOT NULL,   -- pending | retrying | sent | gave_up
    attempts          integer     NOT NULL,
    last_error        text,
    created_at        timestamptz NOT NULL,
    sent_at           timestamptz,
    updated_at        timestamptz NOT NULL,
    version           bigint      NOT NULL,
    last_position     bigint      NOT NULL
);
CREATE INDEX rm_notifications_subject_idx ON rm_notifications (subject_id, stage, channel);
