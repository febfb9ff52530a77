-- Proofs of purchase by serial (streams warranty-{serial}), for the replacement-demand forecast
-- (seed 001, case 13): which units of a SKU are in the field, and since when. Written in the same
-- transaction as the proof's event.
CREATE TABLE rma_proofs (
    serial        text        NOT NULL,
    kind          text        NOT NULL,   -- sales_record | registration | replacement
    reference     text        NOT NULL,   -- invoice number, registration id, RMA id
    sku           text        NOT NULL,
    purchase_date date        NOT NULL,   -- the day the warranty window starts
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (serial, kind, reference)
);
CREATE INDEX rma_proofs_sku_idx ON rma_proofs (sku, serial);
