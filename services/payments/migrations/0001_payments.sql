-- Lookup tables of the payments service. The event store stays the source of truth; these
-- are indexes the service keeps in the same transactions as the events that fill them.

-- Provider payment ids (charges, payment intents) -> our order: refunds and disputes name
-- only the charge or the payment intent.
CREATE TABLE payments_upstream_refs (
    provider_payment_id text PRIMARY KEY,
    order_id            text NOT NULL
);

-- Upstream facts that arrived before what they refer to (a refund before its charge, a
-- charge before the order's OrderPlaced reached us): applied when that arrives.
CREATE TABLE payments_parked_facts (
    fact_event_id uuid        PRIMARY KEY,
    order_key     text        NOT NULL,   -- an order id, or a provider payment id while unresolved
    parked_at     timestamptz NOT NULL DEFAULT now(),
    reason        text        NOT NULL
);
CREATE INDEX payments_parked_facts_key_idx ON payments_parked_facts (order_key);

-- The merchant of each order, from OrderAccepted (cancellations and cash confirmations need it).
CREATE TABLE payments_order_merchants (
    order_id    text PRIMARY KEY,
    merchant_id text NOT NULL
);
