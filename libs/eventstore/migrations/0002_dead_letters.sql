-- Events a consumer could not process (undecodable, unknown type, a schema version from
-- the future, a payload its reducer rejects). The consumer records them here in the same
-- transaction as the rest of its batch and goes on, instead of stalling its partition;
-- they stay visible until someone re-drives or resolves them.
CREATE TABLE dead_letters (
    consumer        text        NOT NULL,
    event_id        uuid        NOT NULL,
    stream_id       text,
    stream_version  bigint,
    event_type      text,
    reason          text        NOT NULL,
    envelope        jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    PRIMARY KEY (consumer, event_id)
);
