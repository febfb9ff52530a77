-- The daily reconciliation (services/projector/application/reconciliation.py) and projection
-- rebuilds. The runs and discrepancies are also events (streams reconciliation-{run_id} and
-- discrepancy-{id}, topic projector.events); these tables are written in the same transactions
-- as those events, and hold what a query needs (progress while running, the stored report).

CREATE TABLE reconciliation_runs (
    run_id         text        PRIMARY KEY,
    trigger        text        NOT NULL,               -- schedule | api | cli
    requested_by   text        NOT NULL,
    requested_role text        NOT NULL,
    repair         boolean     NOT NULL,
    status         text        NOT NULL,               -- running | completed | failed
    phase          text        NOT NULL,
    progress       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    summary        jsonb,                              -- counts per kind, timings (the report without rows)
    error          text,
    shadow_schema  text        NOT NULL,
    report_sha256  text,
    started_at     timestamptz NOT NULL,
    heartbeat_at   timestamptz NOT NULL,
    finished_at    timestamptz
);
CREATE INDEX reconciliation_runs_started_idx ON reconciliation_runs (started_at DESC, run_id DESC);

-- The whole report of a run (every discrepancy with its rows and event positions) as JSON, served by
-- GET /reconciliations/{id}, and the HTML page rendered from that JSON when the run completed,
-- served by GET /reconciliations/{id}.html. Both are as of the run (a discrepancy's later
-- lifecycle is GET /discrepancies/{id}).
CREATE TABLE reconciliation_reports (
    run_id text  PRIMARY KEY REFERENCES reconciliation_runs (run_id),
    report jsonb NOT NULL,
    html   text  NOT NULL
);

-- One row per discrepancy across runs (id = kind + key), with its lifecycle.
CREATE TABLE reconciliation_discrepancies (
    discrepancy_id      text        PRIMARY KEY,
    kind                text        NOT NULL,
    key                 text        NOT NULL,
    category            text        NOT NULL,          -- read_model | service | ledger | shipping | refunds | store
    order_id            text,
    summary             text        NOT NULL,
    details             jsonb       NOT NULL,          -- as found by the last run that saw it
    status              text        NOT NULL,          -- open | acknowledged | resolved
    present             boolean     NOT NULL,          -- found by the latest completed run
    first_seen_run      text        NOT NULL,
    first_seen_at       timestamptz NOT NULL,
    last_seen_run       text        NOT NULL,
    last_seen_at        timestamptz NOT NULL,
    seen_count          integer     NOT NULL,
    acknowledged_by     text,
    acknowledged_role   text,
    acknowledged_reason text,
    acknowledged_at     timestamptz,
    resolved_by         text,
    resolved_role       text,
    resolved_reason     text,
    resolved_at         timestamptz,
    version             bigint      NOT NULL           -- the discrepancy stream's version
);
CREATE INDEX reconciliation_discrepancies_status_idx ON reconciliation_discrepancies (status, last_seen_at DESC);
CREATE INDEX reconciliation_discrepancies_kind_idx ON reconciliation_discrepancies (kind, last_seen_at DESC);
CREATE INDEX reconciliation_discrepancies_order_idx ON reconciliation_discrepancies (order_id);

-- Which discrepancies each run found.
CREATE TABLE reconciliation_findings (
    run_id         text NOT NULL REFERENCES reconciliation_runs (run_id),
    discrepancy_id text NOT NULL,
    PRIMARY KEY (run_id, discrepancy_id)
);
CREATE INDEX reconciliation_findings_discrepancy_idx ON reconciliation_findings (discrepancy_id);

-- Projection rebuilds (shadow build, catch-up, swap) and their progress.
CREATE TABLE projection_rebuilds (
    rebuild_id    text        PRIMARY KEY,
    requested_by  text        NOT NULL,
    status        text        NOT NULL,                -- running | swapped | failed
    phase         text        NOT NULL,
    progress      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    shadow_schema text        NOT NULL,
    error         text,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    finished_at   timestamptz
);
CREATE INDEX projection_rebuilds_started_idx ON projection_rebuilds (started_at DESC);
