-- Appends no longer NOTIFY inside the appending transaction by default.
--
-- Why: at commit, a transaction that has queued a NOTIFY takes a cluster-wide lock
-- (PreCommit_Notify: AccessExclusiveLock on the database object) and holds it until its
-- commit record is flushed, so every notifying writer commits one after the other and
-- group commit is lost. Measured here with 8 connections and fsync on: 3,885 single-row
-- INSERT transactions/s without, 1,825/s with a pg_notify in each (bench/results).
-- The event store (libs/eventstore/store.py) now wakes followers after the commits of the
-- transactions it runs itself, coalesced and from a session with synchronous_commit off;
-- callers that append inside a transaction the store did not open keep the NOTIFY in
-- their transaction (p_notify => true, the default), so every commit still wakes the relay.
--
-- closeloop_append_many notifies once per call instead of once per stream, and an append of
-- one event (a command's usual one) looks up its id and the stream head in one query. The
-- guarantees and the error codes are those of 0001 (see there).
DROP FUNCTION closeloop_append_many(jsonb);
DROP FUNCTION closeloop_append(text, bigint, jsonb);

CREATE FUNCTION closeloop_append(p_stream_id text, p_expected_version bigint, p_events jsonb,
                                 p_notify boolean DEFAULT true)
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
    v_id         uuid;
    v_dup        text;
    v_xid        xid8;
    e            jsonb;
BEGIN
    IF v_count = 0 THEN
        RAISE EXCEPTION 'no events to append' USING ERRCODE = '22023';
    END IF;

    IF v_count = 1 THEN
        -- One event (a command's usual append): the idempotency lookup and the stream head in one query.
        v_id := (p_events->0->>'event_id')::uuid;
        SELECT (SELECT d.stream_id FROM events d WHERE d.event_id = v_id), h.stream_version, h.hash, h.transaction_id
          INTO v_dup, v_head_ver, v_head_hash, v_head_xid
          FROM (SELECT 1) one LEFT JOIN LATERAL (
               SELECT ev.stream_version, ev.hash, ev.transaction_id FROM events ev
                WHERE ev.stream_id = p_stream_id ORDER BY ev.stream_version DESC LIMIT 1) h ON true;
        IF v_dup IS NOT NULL THEN
            IF v_dup = p_stream_id THEN
                RETURN QUERY SELECT ev.global_position, ev.stream_version, ev.event_id, ev.recorded_at,
                                    ev.transaction_id, ev.hash, true FROM events ev WHERE ev.event_id = v_id;
                RETURN;
            END IF;
            RAISE EXCEPTION 'event id already stored in another append' USING ERRCODE = 'CL003';
        END IF;
    ELSE
        -- Idempotent retry: the same event ids were already appended to this stream.
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
    END IF;
    v_ver := coalesce(v_head_ver, 0);
    IF p_expected_version IS NOT NULL AND p_expected_version <> v_ver THEN
        RAISE EXCEPTION 'stream % is at version %, expected %', p_stream_id, v_ver, p_expected_version
              USING ERRCODE = 'CL001', DETAIL = v_ver::text;
    END IF;

    -- Per-stream order for followers (see 0001): refuse to append after a head written by
    -- a transaction that got its id after this one.
    v_xid := pg_current_xact_id();
    IF v_head_xid IS NOT NULL AND v_head_xid > v_xid THEN
        RAISE EXCEPTION 'stream % was advanced by a younger transaction; retry', p_stream_id
              USING ERRCODE = 'CL002', DETAIL = v_ver::text;
    END IF;

    v_prev := coalesce(v_head_hash, repeat('0', 64));
    FOR e IN SELECT x FROM jsonb_array_elements(p_events) x LOOP
        v_ver := v_ver + 1;
        v_at := clock_timestamp();
        v_id := (e->>'event_id')::uuid;
        v_hash := closeloop_event_hash(v_prev, v_id, p_stream_id, v_ver, e->>'event_type',
                                       (e->>'schema_version')::integer, v_at, e->'data', e->'metadata');
        INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version,
                            data, metadata, recorded_at, prev_hash, hash)
        VALUES (v_id, p_stream_id, v_ver, e->>'event_type', (e->>'schema_version')::integer,
                e->'data', e->'metadata', v_at, v_prev, v_hash)
        RETURNING events.global_position INTO global_position;
        stream_version := v_ver; event_id := v_id; recorded_at := v_at; transaction_id := v_xid;
        hash := v_hash; replayed := false;
        RETURN NEXT;
        v_prev := v_hash;
    END LOOP;
    IF p_notify THEN
        -- Wake followers (relay) when this transaction commits; NOTIFY is delivered on commit only.
        PERFORM pg_notify('closeloop_events', '');
    END IF;
END
$$;

-- Several appends in one round trip (see 0001). Set-based when it can be: the heads of every
-- stream in one query, the hash chains computed in one loop, every row in one INSERT. When any
-- event id is already stored (an idempotent retry, or a refused reuse) or a stream or an id comes twice,
-- it takes the per-stream path of closeloop_append, which sorts those cases out exactly.
CREATE FUNCTION closeloop_append_many(p_appends jsonb, p_notify boolean DEFAULT true)
RETURNS TABLE (stream_id text, global_position bigint, stream_version bigint, event_id uuid,
               recorded_at timestamptz, transaction_id xid8, hash text, replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    a          jsonb;
    e          jsonb;
    v_streams  text[];
    v_ids      uuid[];
    v_heads    jsonb;
    h          jsonb;
    v_ver      bigint;
    v_prev     text;
    v_xid      xid8 := pg_current_xact_id();
    v_at       timestamptz;
    v_sid      text;
    v_exp      bigint;
    r_sid      text[] := '{}';
    r_ver      bigint[] := '{}';
    r_id       uuid[] := '{}';
    r_type     text[] := '{}';
    r_schema   integer[] := '{}';
    r_data     jsonb[] := '{}';
    r_meta     jsonb[] := '{}';
    r_at       timestamptz[] := '{}';
    r_prev     text[] := '{}';
    r_hash     text[] := '{}';
BEGIN
    v_streams := ARRAY(SELECT x->>'stream_id' FROM jsonb_array_elements(p_appends) x);
    v_ids := ARRAY(SELECT (y->>'event_id')::uuid FROM jsonb_array_elements(p_appends) x,
                          jsonb_array_elements(x->'events') y);
    IF cardinality(v_streams) <> (SELECT count(DISTINCT s) FROM unnest(v_streams) s)
       OR cardinality(v_ids) <> (SELECT count(DISTINCT i) FROM unnest(v_ids) i)
       OR EXISTS (SELECT 1 FROM events ev WHERE ev.event_id = ANY(v_ids)) THEN
        FOR a IN SELECT x FROM jsonb_array_elements(p_appends) x LOOP
            RETURN QUERY SELECT a->>'stream_id', r.global_position, r.stream_version, r.event_id, r.recorded_at,
                                r.transaction_id, r.hash, r.replayed
                           FROM closeloop_append(a->>'stream_id', (a->>'expected_version')::bigint, a->'events',
                                                 false) r;
        END LOOP;
    ELSE
        SELECT coalesce(jsonb_object_agg(hd.stream_id, jsonb_build_array(hd.stream_version, hd.hash,
                                                                          hd.transaction_id::text)), '{}')
          INTO v_heads
          FROM (SELECT DISTINCT ON (ev.stream_id) ev.stream_id, ev.stream_version, ev.hash, ev.transaction_id
                  FROM events ev WHERE ev.stream_id = ANY(v_streams)
                 ORDER BY ev.stream_id, ev.stream_version DESC) hd;
        FOR a IN SELECT x FROM jsonb_array_elements(p_appends) x LOOP
            v_sid := a->>'stream_id';
            v_exp := (a->>'expected_version')::bigint;
            h := v_heads->v_sid;
            v_ver := coalesce((h->>0)::bigint, 0);
            IF jsonb_array_length(a->'events') = 0 THEN
                RAISE EXCEPTION 'no events to append' USING ERRCODE = '22023';
            END IF;
            IF v_exp IS NOT NULL AND v_exp <> v_ver THEN
                RAISE EXCEPTION 'stream % is at version %, expected %', v_sid, v_ver, v_exp
                      USING ERRCODE = 'CL001', DETAIL = v_ver::text;
            END IF;
            IF h IS NOT NULL AND (h->>2)::xid8 > v_xid THEN
                RAISE EXCEPTION 'stream % was advanced by a younger transaction; retry', v_sid
                      USING ERRCODE = 'CL002', DETAIL = v_ver::text;
            END IF;
            v_prev := coalesce(h->>1, repeat('0', 64));
            FOR e IN SELECT y FROM jsonb_array_elements(a->'events') y LOOP
                v_ver := v_ver + 1;
                v_at := clock_timestamp();
                r_sid := r_sid || v_sid;
                r_ver := r_ver || v_ver;
                r_id := r_id || (e->>'event_id')::uuid;
                r_type := r_type || (e->>'event_type');
                r_schema := r_schema || (e->>'schema_version')::integer;
                r_data := r_data || (e->'data');
                r_meta := r_meta || (e->'metadata');
                r_at := r_at || v_at;
                r_prev := r_prev || v_prev;
                v_prev := closeloop_event_hash(v_prev, (e->>'event_id')::uuid, v_sid, v_ver, e->>'event_type',
                                               (e->>'schema_version')::integer, v_at, e->'data', e->'metadata');
                r_hash := r_hash || v_prev;
            END LOOP;
        END LOOP;
        RETURN QUERY
        WITH ins AS (
            INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version,
                                data, metadata, recorded_at, prev_hash, hash)
            SELECT u.id, u.sid, u.ver, u.typ, u.sch, u.dat, u.met, u.at, u.prv, u.hsh
              FROM unnest(r_id, r_sid, r_ver, r_type, r_schema, r_data, r_meta, r_at, r_prev, r_hash)
                   WITH ORDINALITY AS u(id, sid, ver, typ, sch, dat, met, at, prv, hsh, n)
             ORDER BY u.n
            RETURNING events.stream_id, events.global_position, events.stream_version, events.event_id,
                      events.recorded_at, events.hash)
        SELECT ins.stream_id, ins.global_position, ins.stream_version, ins.event_id, ins.recorded_at, v_xid,
               ins.hash, false
          FROM ins ORDER BY ins.global_position;
    END IF;
    IF p_notify THEN
        PERFORM pg_notify('closeloop_events', '');
    END IF;
END
$$;
