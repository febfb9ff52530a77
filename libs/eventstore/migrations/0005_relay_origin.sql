-- Where each relay started (the store's beginning, or its head when the relay was created with
-- CLOSELOOP_RELAY_START=head): after the broker lost what it held, the relay publishes again from
-- there (libs/messaging/broker_watch.py), and counts the resets it recovered from.
ALTER TABLE relay_checkpoints
    ADD COLUMN origin_transaction_id  xid8   NOT NULL DEFAULT '0'::xid8,
    ADD COLUMN origin_global_position bigint NOT NULL DEFAULT 0,
    ADD COLUMN broker_resets          bigint NOT NULL DEFAULT 0;
