-- What a consumer's checkpoint is about: besides the next offset of (consumer, topic, partition), a mark of
-- the last record it processed there (libs/messaging/positions.py: a hash of the record's value and
-- timestamp). On every partition assignment the consumer reads the record just before `next_offset` from
-- the broker and starts there only when it carries this mark; otherwise (the broker lost its state, the
-- topic was deleted and created again) it starts at the partition's beginning. NULL in rows written before:
-- such a partition is read from the beginning once (the processed ids make that harmless).
ALTER TABLE consumer_offsets ADD COLUMN last_record bytea;
