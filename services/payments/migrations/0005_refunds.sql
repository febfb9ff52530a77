-- Refunds on their way back to customers (stream `refund-{refund_id}`, the RefundExecution
-- aggregate): one row per refund, written in the same transaction as its events. The queue a
-- provider connector works from (status requested, provider stripe), the per-order list, and the
-- lookup of the provider's refund reports (by provider refund id, or by payment and amount).
CREATE TABLE payments_refunds (
    refund_id          text        PRIMARY KEY,
    order_id           text        NOT NULL,
    source             text        NOT NULL,
    kind               text        NOT NULL,
    amount             bigint      NOT NULL,
    currency           text        NOT NULL,
    reference          text        NOT NULL,   -- the payment refunded (PaymentIntent / charge, wallet entry)
    provider           text,
    status             text        NOT NULL,
    provider_refund_id text UNIQUE,
    attempt            int         NOT NULL,
    failure_reason     text,
    requested_at       timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            int         NOT NULL
);
CREATE INDEX payments_refunds_order_idx ON payments_refunds (order_id);
CREATE INDEX payments_refunds_open_idx ON payments_refunds (status, requested_at) WHERE status IN ('requested', 'failed');
