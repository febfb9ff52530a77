-- The shipping service's read models, each written in the same transaction as the events it
-- reflects (services/shipping/application/projections.py).

-- Return labels (stream `label-{label_id}`). An RMA has one return label: the partial unique
-- index backs the label id derived from the RMA id.
CREATE TABLE shipping_labels (
    label_id             text        PRIMARY KEY,
    purpose              text        NOT NULL,          -- rma_return | extra_unit_return
    rma_id               text,
    order_id             text,
    duplicate_id         text,
    carrier              text        NOT NULL,
    tracking_number      text        NOT NULL UNIQUE,
    barcode_payload      text        NOT NULL,
    qr_payload           text        NOT NULL,
    contact              jsonb,
    status               text        NOT NULL,          -- issued | scanned
    issued_at            timestamptz NOT NULL,
    scanned_at           timestamptz,
    location             text        NOT NULL DEFAULT '',
    tracking_status      text,                          -- the return parcel's carrier status
    tracking_occurred_at timestamptz,
    version              integer     NOT NULL
);
CREATE UNIQUE INDEX shipping_labels_one_per_rma ON shipping_labels (rma_id) WHERE purpose = 'rma_return';
CREATE INDEX shipping_labels_rma_idx ON shipping_labels (rma_id);

-- Outbound shipments (stream `shipment-{shipment_id}`). The unique constraint on (subject,
-- action) is the database's half of the exactly-once shipment (see application/shipments.py).
CREATE TABLE shipping_shipments (
    shipment_id        text        PRIMARY KEY,
    subject_kind       text        NOT NULL CHECK (subject_kind IN ('rma', 'order')),
    subject_id         text        NOT NULL,
    rma_id             text,
    order_id           text,
    action             text        NOT NULL,
    sku                text        NOT NULL,
    warehouse_id       text        NOT NULL,
    carrier            text        NOT NULL,
    service_level      text,
    tracking_number    text        NOT NULL UNIQUE,
    ship_to            jsonb       NOT NULL,
    contact            jsonb,
    status             text,                            -- NULL until the first carrier event
    status_carrier     text,
    status_location    text,
    status_occurred_at timestamptz,
    eta                timestamptz,
    eta_source         text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    version            integer     NOT NULL,
    CONSTRAINT shipping_shipments_one_per_subject_action UNIQUE (subject_kind, subject_id, action)
);
CREATE INDEX shipping_shipments_rma_idx ON shipping_shipments (rma_id) WHERE rma_id IS NOT NULL;
CREATE INDEX shipping_shipments_order_idx ON shipping_shipments (order_id) WHERE order_id IS NOT NULL;

-- Every distinct carrier event of a parcel (a shipment or a return label): the tracking history.
CREATE TABLE shipping_tracking_events (
    parcel_kind     text        NOT NULL,               -- shipment | label
    parcel_id       text        NOT NULL,
    carrier         text        NOT NULL,
    event_key       text        NOT NULL,
    tracking_number text        NOT NULL,
    status          text        NOT NULL,
    carrier_status  text        NOT NULL,
    description     text        NOT NULL DEFAULT '',
    location        text        NOT NULL DEFAULT '',
    occurred_at     timestamptz NOT NULL,
    eta             timestamptz,
    via             text        NOT NULL,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (parcel_kind, parcel_id, carrier, event_key)
);
CREATE INDEX shipping_tracking_events_number_idx ON shipping_tracking_events (tracking_number);

-- Carrier events for a tracking number closeloop does not know (kept, not applied; visible on
-- /readyz and re-drivable).
CREATE TABLE shipping_unmatched_tracking (
    carrier         text        NOT NULL,
    event_key       text        NOT NULL,
    tracking_number text        NOT NULL,
    status          text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    via             text        NOT NULL,
    payload         jsonb       NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (carrier, event_key)
);
CREATE INDEX shipping_unmatched_tracking_number_idx ON shipping_unmatched_tracking (tracking_number);

-- Imported carrier manifests (stream `carrier_manifest-{manifest_id}`) and the parcels they
-- listed that closeloop did not create.
CREATE TABLE shipping_manifests (
    manifest_id  text        PRIMARY KEY,
    carrier      text,
    format       text        NOT NULL,
    source_name  text        NOT NULL DEFAULT '',
    file_sha256  text        NOT NULL,
    rows         integer     NOT NULL,
    rejected     integer     NOT NULL,
    duplicates   integer     NOT NULL,
    imported_by  text        NOT NULL,
    imported_at  timestamptz NOT NULL
);
CREATE TABLE shipping_external_shipments (
    carrier         text        NOT NULL,
    tracking_number text        NOT NULL,
    subject_kind    text        NOT NULL,
    subject_id      text        NOT NULL,
    action          text        NOT NULL,
    sku             text,
    warehouse_id    text,
    shipped_at      timestamptz NOT NULL,
    recipient_name  text        NOT NULL DEFAULT '',
    reference       text        NOT NULL DEFAULT '',
    manifest_id     text        NOT NULL,
    line            integer     NOT NULL,
    outcome         text        NOT NULL,
    duplicate_id    text,
    PRIMARY KEY (carrier, tracking_number)
);
CREATE INDEX shipping_external_shipments_subject_idx ON shipping_external_shipments (subject_kind, subject_id, action);

-- Duplicate shipments and their follow-up (stream `shipment_duplicate-{duplicate_id}`).
CREATE TABLE shipping_duplicates (
    duplicate_id     text        PRIMARY KEY,
    subject_kind     text        NOT NULL,
    subject_id       text        NOT NULL,
    rma_id           text,
    order_id         text,
    action           text        NOT NULL,
    original         jsonb       NOT NULL,
    extra            jsonb       NOT NULL,
    contact          jsonb,
    status           text        NOT NULL,              -- open | return_requested | resolved | dismissed
    resolution       text,
    note             text        NOT NULL DEFAULT '',
    offset_reference text        NOT NULL DEFAULT '',
    label_id         text,
    detected_at      timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    version          integer     NOT NULL
);
CREATE INDEX shipping_duplicates_status_idx ON shipping_duplicates (status, detected_at);
CREATE INDEX shipping_duplicates_subject_idx ON shipping_duplicates (subject_kind, subject_id);
