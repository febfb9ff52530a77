-- The event store: the single source of truth of every aggregate.
--
-- Ordering for followers (relay, projector catch-up, replay): rows are read in
-- (transaction_id, global_position) order, and only rows whose transaction id is
-- below the oldest transaction still in flight, pg_snapshot_xmin(pg_current_snapshot()).
-- Why this never skips an event: a transaction id is assigned before the transaction
-- writes its first row, ids only grow, and every transaction with an id below the
-- snapshot's xmin has finished (committed or rolled back). So the set of rows below
-- xmin can no longer change, and any row committed in the future carries an id at or
-- above the current xmin, i.e. it sorts after everything a follower has already read.
-- A bigint identity alone is not enough: identities are handed out at insert time, so
-- position 11 can commit before position 10 and a follower reading "> 10" would skip it.
-- (The same technique as pyeventsourcing and Marten's "high water mark".)
CREATE TABLE events (
    global_position bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
    stream_version  bigint      NOT NULL CHECK (stream_version >= 1),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL,
    prev_hash       text        NOT NULL,
    hash            text        NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_follow_idx ON events (transaction_id, global_position);
CREATE INDEX events_recorded_at_idx ON events (recorded_at);

-- Hash of one event, chained to its predecessor in the same stream. jsonb's text
-- form is canonical (keys sorted, whitespace normalised), so the hash does not
-- depend on how a client serialised the JSON. recorded_at enters as integer
-- microseconds since the epoch, independent of the session's TimeZone.
CREATE FUNCTION closeloop_event_hash(
    p_prev_hash text, p_event_id uuid, p_stream_id text, p_stream_version bigint,
    p_event_type text, p_schema_version integer, p_recorded_at timestamptz,
    p_data jsonb, p_metadata jsonb
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(convert_to(jsonb_build_array(
        p_prev_hash, p_event_id, p_stream_id, p_stream_version, p_event_type, p_schema_version,
        (extract(epoch FROM p_recorded_at) * 1000000)::bigint, p_data, p_metadata)::text, 'UTF8')), 'hex')
$$;

-- Append events to one stream in one round trip.
--   p_expected_version: NULL = any version; 0 = the stream must not exist; n = it must be at n.
--   p_events: JSON array of {event_id, event_type, schema_version, data, metadata}.
-- Errors (SQLSTATE): CL001 wrong expected version; CL002 the stream was advanced by a
-- transaction younger than this one (retry the whole transaction, see below); CL003 an
-- event id that is already stored elsewhere. A concurrent writer of the same version
-- fails on events_stream_version_key, which callers also report as a version conflict.
-- Re-appending exactly the same event ids to the same stream returns the stored rows
-- with replayed = true and writes nothing (idempotent retry).
CREATE FUNCTION closeloop_append(p_stream_id text, p_expected_version bigint, p_events jsonb)
RETURNS TABLE (global_position bigint, stream_version bigint, event_id uuid, recorded_at timestamptz,
               transaction_id xid8, hash text, replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_count      integer := jsonb_array_length(p_events);
    v_ids        uuid[];
    v_found      integer;
    v_head_ver   bigint;
    v_head_hash  text;
    v_head_xid   xid8;
    v_prev       text;
    v_ver        bigint;
    v_at         timestamptz;
    v_hash       text;
    v_pos        bigint;
    v_xid        xid8;
    e            jsonb;
BEGIN
    IF v_count = 0 THEN
        RAISE EXCEPTION 'no events to append' USING ERRCODE = '22023';
    END IF;

    -- Idempotent retry: the same event ids were already appended to this stream.
    -- (An array and = ANY keep this an index lookup; an IN (subquery) can turn into a scan.)
    v_ids := ARRAY(SELECT (x->>'event_id')::uuid FROM jsonb_array_elements(p_events) x);
    SELECT count(*) INTO v_found FROM events ev WHERE ev.event_id = ANY(v_ids);
    IF v_found > 0 THEN
        IF v_found = v_count AND NOT EXISTS (
            SELECT 1 FROM events ev WHERE ev.event_id = ANY(v_ids) AND ev.stream_id <> p_stream_id) THEN
            RETURN QUERY SELECT ev.global_position, ev.stream_version, ev.event_id, ev.recorded_at,
                                ev.transaction_id, ev.hash, true
                           FROM events ev WHERE ev.event_id = ANY(v_ids) ORDER BY ev.stream_version;
            RETURN;
        END IF;
        RAISE EXCEPTION 'event id already stored in another append' USING ERRCODE = 'CL003';
    END IF;

    SELECT ev.stream_version, ev.hash, ev.transaction_id INTO v_head_ver, v_head_hash, v_head_xid
      FROM events ev WHERE ev.stream_id = p_stream_id ORDER BY ev.stream_version DESC LIMIT 1;
    v_ver := coalesce(v_head_ver, 0);
    IF p_expected_version IS NOT NULL AND p_expected_version <> v_ver THEN
        RAISE EXCEPTION 'stream % is at version %, expected %', p_stream_id, v_ver, p_expected_version
              USING ERRCODE = 'CL001', DETAIL = v_ver::text;
    END IF;

    -- Per-stream order for followers: followers read by transaction id, so a stream's
    -- events must also be in transaction-id order. If this transaction got its id
    -- before the head event's transaction did (it wrote something else first, then
    -- read the head that a younger transaction had committed meanwhile), appending now
    -- would let a follower see version n+1 before version n. Refuse; a retry of the
    -- whole transaction gets a fresh, larger id. Rare: needs a multi-write transaction
    -- racing another writer of the same stream.
    v_xid := pg_current_xact_id();
    IF v_head_xid IS NOT NULL AND v_head_xid > v_xid THEN
        RAISE EXCEPTION 'stream % was advanced by a younger transaction; retry', p_stream_id
              USING ERRCODE = 'CL002', DETAIL = v_ver::text;
    END IF;

    v_prev := coalesce(v_head_hash, repeat('0', 64));
    FOR e IN SELECT x FROM jsonb_array_elements(p_events) x LOOP
        v_ver := v_ver + 1;
        v_at := clock_timestamp();
        v_hash := closeloop_event_hash(v_prev, (e->>'event_id')::uuid, p_stream_id, v_ver,
                                       e->>'event_type', (e->>'schema_version')::integer, v_at,
                                       e->'data', e->'metadata');
        INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version,
                            data, metadata, recorded_at, prev_hash, hash)
        VALUES ((e->>'event_id')::uuid, p_stream_id, v_ver, e->>'event_type',
                (e->>'schema_version')::integer, e->'data', e->'metadata', v_at, v_prev, v_hash)
        RETURNING events.global_position INTO v_pos;
        global_position := v_pos; stream_version := v_ver; event_id := (e->>'event_id')::uuid;
        recorded_at := v_at; transaction_id := v_xid; hash := v_hash; replayed := false;
        RETURN NEXT;
        v_prev := v_hash;
    END LOOP;
    -- Wake followers (relay) when this transaction commits; NOTIFY is delivered on commit only.
    PERFORM pg_notify('closeloop_events', '');
END
$$;

-- Several appends (to different streams) in one round trip, in order, all or nothing:
-- a command that changes an order, its bill and a schedule pays one network round trip
-- instead of three. p_appends: JSON array of {stream_id, expected_version, events}.
CREATE FUNCTION closeloop_append_many(p_appends jsonb)
RETURNS TABLE (stream_id text, global_position bigint, stream_version bigint, event_id uuid,
               recorded_at timestamptz, transaction_id xid8, hash text, replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    a jsonb;
BEGIN
    FOR a IN SELECT x FROM jsonb_array_elements(p_appends) x LOOP
        RETURN QUERY SELECT a->>'stream_id', r.global_position, r.stream_version, r.event_id, r.recorded_at,
                            r.transaction_id, r.hash, r.replayed
                       FROM closeloop_append(a->>'stream_id', (a->>'expected_version')::bigint, a->'events') r;
    END LOOP;
END
$$;

-- Results of commands that carried an Idempotency-Key: a retry returns the stored
-- response and appends nothing. Written in the same transaction as the events.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash text        NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Relay checkpoints: the last (transaction_id, global_position) published.
CREATE TABLE relay_checkpoints (
    name            text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    published       bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Consumers (projectors, services reacting to other services' events) record what
-- they processed in the same transaction as its effect: effectively-once.
CREATE TABLE processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE consumer_offsets (
    consumer    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Durable timers (payment deadlines, SLAs): written in the same transaction as the
-- event that arms them, fired by the owning service after a restart as well.
CREATE TABLE timers (
    timer_id   text        PRIMARY KEY,
    owner      text        NOT NULL,
    kind       text        NOT NULL,
    stream_id  text        NOT NULL,
    due_at     timestamptz NOT NULL,
    payload    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    fired_at   timestamptz,
    attempts   integer     NOT NULL DEFAULT 0,
    last_error text,
    -- Timers are claimed with a lease instead of a row lock held while the handler runs:
    -- the handler's own transaction may delete or re-arm the same timer (a cancellation
    -- cancels the payment-deadline timer), which would wait forever on that row lock.
    locked_until timestamptz
);
CREATE INDEX timers_due_idx ON timers (owner, due_at) WHERE fired_at IS NULL;
