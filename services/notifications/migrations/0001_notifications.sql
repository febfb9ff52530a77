-- The notifications service (issue 4, docs/after-sales.md). The event store stays the source of
-- truth (streams notification-{id} and sla-{subject}); these tables are written in the same
-- transaction as those events.

-- The outbox and read model of messages: one row per Notification aggregate. A reaction inserts the
-- row (ON CONFLICT DO NOTHING) and appends NotificationQueued in its own transaction, so a message
-- exists exactly when its cause was processed. The dispatcher claims due rows with a lease
-- (locked_until, FOR UPDATE SKIP LOCKED: replicas never claim the same row) and records each
-- attempt's outcome with its event.
CREATE TABLE notifications (
    notification_id   text        PRIMARY KEY,           -- uuid5 of dedupe_key
    owner             text        NOT NULL,              -- instance prefix + 'notifications': whose dispatcher sends it
    dedupe_key        text        NOT NULL UNIQUE,       -- source id : channel : template (a redelivered event adds nothing)
    stage_key         text        UNIQUE,                -- audience : subject : stage : channel (one message per stage)
    audience          text        NOT NULL,              -- customer | operations
    recipient         text        NOT NULL,              -- customer id, or 'operations'
    address           text        NOT NULL,              -- e-mail address, phone number or in-app inbox
    channel           text        NOT NULL,              -- email | sms | in_app
    locale            text        NOT NULL,
    template          text        NOT NULL,
    subject_type      text        NOT NULL,
    subject_id        text        NOT NULL,
    stage             text        NOT NULL,
    source_id         text        NOT NULL,
    source_event_type text        NOT NULL,
    title             text        NOT NULL,
    body              text        NOT NULL,
    status            text        NOT NULL,              -- pending | retrying | sent | gave_up
    attempts          integer     NOT NULL DEFAULT 0,
    max_attempts      integer     NOT NULL,
    next_attempt_at   timestamptz,                       -- NULL once sent or given up
    locked_until      timestamptz,                       -- a dispatcher's lease on the row
    last_error        text,
    created_at        timestamptz NOT NULL,
    sent_at           timestamptz,
    updated_at        timestamptz NOT NULL,
    version           bigint      NOT NULL               -- the stream version the row reflects
);
CREATE INDEX notifications_due_idx ON notifications (owner, next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX notifications_recipient_idx ON notifications (recipient, created_at DESC, notification_id DESC);
CREATE INDEX notifications_subject_idx ON notifications (subject_id, created_at DESC, notification_id DESC);
CREATE INDEX notifications_created_idx ON notifications (created_at DESC, notification_id DESC);

-- The default sender's sink: what was "sent". At-least-once sending (a crash between the send and
-- recording it sends again after the lease) lands on the same row: `deliveries` counts the sends.
CREATE TABLE notifications_sink (
    notification_id text        PRIMARY KEY,
    channel         text        NOT NULL,
    recipient       text        NOT NULL,
    address         text        NOT NULL,
    locale          text        NOT NULL,
    template        text        NOT NULL,
    subject_id      text        NOT NULL,
    title           text        NOT NULL,
    body            text        NOT NULL,
    first_sent_at   timestamptz NOT NULL DEFAULT now(),
    last_sent_at    timestamptz NOT NULL DEFAULT now(),
    deliveries      integer     NOT NULL DEFAULT 1
);
CREATE INDEX notifications_sink_subject_idx ON notifications_sink (subject_id);

-- What later messages need to know about an RMA, from the events that carry it (contact and
-- locale from RmaOpened / RmaEligible / ReturnLabelIssued / RmaReplacementReady; the shipment,
-- tracking number and the carrier's ETA from ShipmentCreated / RmaShippedOut / ShipmentStatusChanged).
CREATE TABLE notifications_subjects (
    subject_id      text        PRIMARY KEY,
    subject_type    text        NOT NULL,
    customer_id     text,
    email           text,
    phone           text,
    locale          text,
    customer_name   text,
    shipment_id     text,
    carrier         text,
    tracking_number text,
    carrier_eta     timestamptz,
    updated_at      timestamptz NOT NULL
);

-- SLA clocks (read model of the sla-{subject} streams): one row per subject and stage.
CREATE TABLE notifications_sla_clocks (
    subject_id   text        NOT NULL,
    stage        text        NOT NULL,
    subject_type text        NOT NULL,
    sla_seconds  integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    due_at       timestamptz NOT NULL,
    stopped_at   timestamptz,
    late         boolean     NOT NULL DEFAULT false,     -- stopped after its due time
    breached_at  timestamptz,                            -- when SlaBreachWarning was emitted
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (subject_id, stage)
);
CREATE INDEX notifications_sla_running_idx ON notifications_sla_clocks (due_at) WHERE stopped_at IS NULL;
CREATE INDEX notifications_sla_started_idx ON notifications_sla_clocks (started_at DESC, subject_id, stage);
