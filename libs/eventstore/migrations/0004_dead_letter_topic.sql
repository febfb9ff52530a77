-- Dead letters also go to the `deadletters` Kafka topic (libs/messaging/deadletter.py): each row keeps the
-- message as it came (bytes, key, headers, topic/partition/offset), the consumer group that gave up on it, a
-- reason code (the label of closeloop_dead_letters_total), when it was published to the topic, and its
-- re-drives (`closeloop deadletters redrive`): how many, the last error, and when one succeeded.
ALTER TABLE dead_letters
    ADD COLUMN id                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    ADD COLUMN reason_code       text,
    ADD COLUMN consumer_group    text,
    ADD COLUMN source_topic      text,
    ADD COLUMN source_partition  integer,
    ADD COLUMN source_offset     bigint,
    ADD COLUMN source_key        bytea,
    ADD COLUMN source_headers    jsonb,
    ADD COLUMN raw_value         bytea,
    ADD COLUMN published_at      timestamptz,
    ADD COLUMN redrive_count     integer NOT NULL DEFAULT 0,
    ADD COLUMN last_redrive_at   timestamptz,
    ADD COLUMN last_redrive_error text,
    ADD COLUMN redriven_at       timestamptz;

CREATE INDEX dead_letters_unpublished_idx ON dead_letters (consumer_group) WHERE published_at IS NULL;
CREATE INDEX dead_letters_open_idx ON dead_letters (created_at) WHERE resolved_at IS NULL;
