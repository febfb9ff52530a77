-- The payment provider's facts (Stripe) about Kolable course orders, kept beside the Kolable read
-- model so that an order can be classified again without scanning the event store. Each row is a
-- copy of one stored upstream fact event (the store stays the source of truth; this table is
-- rebuilt from the `upstream-stripe-*` streams), written in the same transaction as the event.
CREATE TABLE kolable_provider_facts (
    fact_event_id  uuid        PRIMARY KEY,
    order_id       text        NOT NULL,
    event_type     text        NOT NULL,
    schema_version int         NOT NULL,
    data           jsonb       NOT NULL,
    occurred_at    timestamptz NOT NULL
);
CREATE INDEX kolable_provider_facts_order_idx ON kolable_provider_facts (order_id);
