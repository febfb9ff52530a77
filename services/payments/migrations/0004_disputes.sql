-- Read model of card disputes (GitHub issue 3, item 7), one row per Dispute aggregate (stream
-- `dispute-{dispute_id}`, which stays the source of truth). Written in the same transaction as the
-- dispute's events, so a row never disagrees with its stream; `version` is the stream version it
-- reflects. The refund logic also reads it: a cancellation or settlement of an order freezes the
-- transaction for every open dispute listed here (the dispute may have arrived before the order's
-- transaction existed).
CREATE TABLE payments_disputes (
    dispute_id        text        PRIMARY KEY,
    order_id          text,                    -- NULL while the charge is unknown (the fact is parked)
    charge_id         text,
    payment_intent_id text,
    state             text        NOT NULL,    -- warning_needs_response | needs_response | under_review | won | lost
    is_open           boolean     NOT NULL,
    amount            bigint,                  -- minor units; NULL only for a currency we do not support
    currency          text,
    provider_amount   bigint      NOT NULL,    -- as the provider sent it
    provider_currency text        NOT NULL,
    reason            text        NOT NULL,
    evidence_due_by   timestamptz,
    opened_at         timestamptz NOT NULL,    -- when the dispute was created upstream
    closed_at         timestamptz,
    outcome           text,                    -- won | lost once closed
    version           bigint      NOT NULL,
    updated_at        timestamptz NOT NULL
);
CREATE INDEX payments_disputes_order_idx ON payments_disputes (order_id);
CREATE INDEX payments_disputes_state_idx ON payments_disputes (state, opened_at DESC, dispute_id DESC);
CREATE INDEX payments_disputes_open_due_idx ON payments_disputes (evidence_due_by) WHERE is_open;
CREATE INDEX payments_disputes_opened_idx ON payments_disputes (opened_at DESC, dispute_id DESC);
