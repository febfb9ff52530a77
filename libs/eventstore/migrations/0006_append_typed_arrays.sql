-- Appends take the events as typed arrays instead of one jsonb document, and return one row per stream.
--
-- Why (issue 6, profiled on PostgreSQL 18 here): of closeloop_append's ~0.25 ms of server time for one
-- event, more than half went to taking the jsonb document apart: each `e->'data'`, `e->'metadata'`,
-- `e->>'event_id'` builds a new datum by copying the subtree, and 0003 did each of them twice (hash and
-- INSERT), plus the parse of the whole document. Now the client sends parallel arrays (event ids as
-- uuid[], types text[], schema versions integer[], payloads and metadata jsonb[]), which PostgreSQL
-- parses once into the element types the table has; PL/pgSQL keeps array parameters expanded, so
-- `p_data[i]` is O(1). The hash is still computed here, from the head this function read, by
-- closeloop_chain_hash below (the same value as 0001's closeloop_event_hash, which stays as it is: every
-- stored hash stays valid). Many events are inserted by one INSERT ... SELECT FROM unnest(...) and come
-- back as arrays per stream (one row per stream, not per event).
--
-- The guarantees and the error codes are those of 0001 and 0003: CL001 wrong expected version, CL002 the
-- stream was advanced by a younger transaction (per-stream order for followers), CL003 an event id already
-- stored elsewhere; a concurrent writer of the same version fails on events_stream_version_key; re-appending
-- exactly the same event ids to the same stream returns the stored result with replayed = true and writes
-- nothing. p_notify as in 0003 (the store wakes followers after commits it runs itself).
DROP FUNCTION closeloop_append_many(jsonb, boolean);
DROP FUNCTION closeloop_append(text, bigint, jsonb, boolean);

-- The same hash as closeloop_event_hash (0001), built as text instead of through jsonb_build_array. That
-- function is declared IMMUTABLE but uses extract() on a timestamptz (STABLE), so PostgreSQL never inlines
-- it: every call ran the SQL-function executor (~0.04 ms), and building the jsonb array re-encoded the
-- payload before printing it. This one is STABLE (inlined into the appends' statements) and prints the
-- array exactly as jsonb's output does: elements separated by ', ', strings escaped by to_jsonb(text), the
-- uuid as a quoted string, integers as digits, and data and metadata by their own jsonb output, which is
-- the same text whether a value stands alone or inside an array. closeloop_event_hash stays the reference:
-- verify() and the auditor recompute every stored hash with it (tests/integration/
-- test_event_store_contract.py::test_the_append_hash_equals_the_reference_hash_for_any_payload).
CREATE FUNCTION closeloop_chain_hash(
    p_prev_hash text, p_event_id uuid, p_stream_id text, p_stream_version bigint, p_event_type text,
    p_schema_version integer, p_recorded_at timestamptz, p_data jsonb, p_metadata jsonb
) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT encode(sha256(convert_to(
        '[' || to_jsonb(p_prev_hash)::text || ', "' || p_event_id::text || '", ' || to_jsonb(p_stream_id)::text
        || ', ' || p_stream_version::text || ', ' || to_jsonb(p_event_type)::text || ', ' || p_schema_version::text
        || ', ' || ((extract(epoch FROM p_recorded_at) * 1000000)::bigint)::text || ', ' || p_data::text || ', '
        || p_metadata::text || ']', 'UTF8')), 'hex')
$$;

-- Append events to one stream. p_event_ids .. p_metadata: one element per event, in order.
-- Returns one row: the versions written (or found, when replayed), their global positions and event ids
-- in version order, and the appending transaction's id.
CREATE FUNCTION closeloop_append(
    p_stream_id text, p_expected_version bigint, p_event_ids uuid[], p_event_types text[],
    p_schema_versions integer[], p_data jsonb[], p_metadata jsonb[], p_notify boolean DEFAULT true)
RETURNS TABLE (first_version bigint, last_version bigint, global_positions bigint[], event_ids uuid[],
               transaction_id xid8, replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_count      integer := coalesce(cardinality(p_event_ids), 0);
    v_found      integer;
    v_dup        text;
    v_head_ver   bigint;
    v_head_hash  text;
    v_head_xid   xid8;
    v_ver        bigint;
    v_prev       text;
    v_at         timestamptz;
    v_xid        xid8;
    v_pos        bigint;
    r_at         timestamptz[];
    r_prev       text[];
    r_hash       text[];
BEGIN
    IF v_count = 0 THEN
        RAISE EXCEPTION 'no events to append' USING ERRCODE = '22023';
    END IF;
    IF coalesce(cardinality(p_event_types), 0) <> v_count OR coalesce(cardinality(p_schema_versions), 0) <> v_count
       OR coalesce(cardinality(p_data), 0) <> v_count OR coalesce(cardinality(p_metadata), 0) <> v_count THEN
        RAISE EXCEPTION 'the event arrays differ in length' USING ERRCODE = '22023';
    END IF;

    IF v_count = 1 THEN
        -- One event (a command's usual append): the idempotency lookup and the stream head in one query.
        SELECT (SELECT d.stream_id FROM events d WHERE d.event_id = p_event_ids[1]),
               h.stream_version, h.hash, h.transaction_id
          INTO v_dup, v_head_ver, v_head_hash, v_head_xid
          FROM (SELECT 1) one LEFT JOIN LATERAL (
               SELECT ev.stream_version, ev.hash, ev.transaction_id FROM events ev
                WHERE ev.stream_id = p_stream_id ORDER BY ev.stream_version DESC LIMIT 1) h ON true;
        IF v_dup IS NOT NULL THEN
            IF v_dup = p_stream_id THEN
                RETURN QUERY SELECT ev.stream_version, ev.stream_version, ARRAY[ev.global_position],
                                    ARRAY[ev.event_id], ev.transaction_id, true
                               FROM events ev WHERE ev.event_id = p_event_ids[1];
                RETURN;
            END IF;
            RAISE EXCEPTION 'event id already stored in another append' USING ERRCODE = 'CL003';
        END IF;
    ELSE
        -- Idempotent retry: the same event ids were already appended to this stream.
        SELECT count(*) INTO v_found FROM events ev WHERE ev.event_id = ANY(p_event_ids);
        IF v_found > 0 THEN
            IF v_found = v_count AND NOT EXISTS (
                SELECT 1 FROM events ev WHERE ev.event_id = ANY(p_event_ids) AND ev.stream_id <> p_stream_id) THEN
                RETURN QUERY SELECT min(ev.stream_version), max(ev.stream_version),
                                    array_agg(ev.global_position ORDER BY ev.stream_version),
                                    array_agg(ev.event_id ORDER BY ev.stream_version),
                                    (array_agg(ev.transaction_id ORDER BY ev.stream_version))[1], true
                               FROM events ev WHERE ev.event_id = ANY(p_event_ids);
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
    -- Per-stream order for followers (see 0001): refuse to append after a head written by a transaction
    -- that got its id after this one.
    v_xid := pg_current_xact_id();
    IF v_head_xid IS NOT NULL AND v_head_xid > v_xid THEN
        RAISE EXCEPTION 'stream % was advanced by a younger transaction; retry', p_stream_id
              USING ERRCODE = 'CL002', DETAIL = v_ver::text;
    END IF;
    v_prev := coalesce(v_head_hash, repeat('0', 64));

    first_version := v_ver + 1;
    last_version := v_ver + v_count;
    event_ids := p_event_ids;
    transaction_id := v_xid;
    replayed := false;
    IF v_count = 1 THEN
        v_at := clock_timestamp();
        INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version,
                            data, metadata, recorded_at, prev_hash, hash)
        VALUES (p_event_ids[1], p_stream_id, first_version, p_event_types[1], p_schema_versions[1],
                p_data[1], p_metadata[1], v_at, v_prev,
                closeloop_chain_hash(v_prev, p_event_ids[1], p_stream_id, first_version, p_event_types[1],
                                     p_schema_versions[1], v_at, p_data[1], p_metadata[1]))
        RETURNING events.global_position INTO v_pos;
        global_positions := ARRAY[v_pos];
    ELSE
        FOR i IN 1..v_count LOOP
            v_at := clock_timestamp();
            r_at[i] := v_at;
            r_prev[i] := v_prev;
            v_prev := closeloop_chain_hash(v_prev, p_event_ids[i], p_stream_id, v_ver + i, p_event_types[i],
                                           p_schema_versions[i], v_at, p_data[i], p_metadata[i]);
            r_hash[i] := v_prev;
        END LOOP;
        WITH ins AS (
            INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version,
                                data, metadata, recorded_at, prev_hash, hash)
            SELECT u.id, p_stream_id, v_ver + u.n, u.typ, u.sch, u.dat, u.met, u.at, u.prv, u.hsh
              FROM unnest(p_event_ids, p_event_types, p_schema_versions, p_data, p_metadata, r_at, r_prev, r_hash)
                   WITH ORDINALITY AS u(id, typ, sch, dat, met, at, prv, hsh, n)
             ORDER BY u.n
            RETURNING events.global_position)
        SELECT array_agg(ins.global_position ORDER BY ins.global_position) INTO global_positions FROM ins;
    END IF;
    RETURN NEXT;
    IF p_notify THEN
        -- Wake followers (relay) when this transaction commits; NOTIFY is delivered on commit only.
        PERFORM pg_notify('closeloop_events', '');
    END IF;
END
$$;

-- Several appends (to different streams) in one round trip, in order, all or nothing. p_stream_ids,
-- p_expected_versions (NULL elements = any version) and p_counts: one element per append; the event arrays
-- hold every append's events one after the other (p_counts[j] of them for append j). Returns one row per
-- stream. Set-based when it can be: the heads of every stream in one query, the hash chains in one loop,
-- every row in one INSERT. When any event id is already stored (an idempotent retry, or a refused reuse) or
-- a stream or an id comes twice, it takes closeloop_append per stream, which sorts those cases out exactly.
CREATE FUNCTION closeloop_append_many(
    p_stream_ids text[], p_expected_versions bigint[], p_counts integer[], p_event_ids uuid[],
    p_event_types text[], p_schema_versions integer[], p_data jsonb[], p_metadata jsonb[],
    p_notify boolean DEFAULT true)
RETURNS TABLE (stream_id text, first_version bigint, last_version bigint, global_positions bigint[],
               event_ids uuid[], transaction_id xid8, replayed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_streams  integer := coalesce(cardinality(p_stream_ids), 0);
    v_total    integer := coalesce(cardinality(p_event_ids), 0);
    v_xid      xid8 := pg_current_xact_id();
    v_off      integer := 0;
    v_n        integer;
    v_sid      text;
    v_exp      bigint;
    v_ver      bigint;
    v_prev     text;
    v_at       timestamptz;
    v_i        integer;
    h_ver      bigint[];
    h_hash     text[];
    h_xid      xid8[];
    r_sid      text[];
    r_ver      bigint[];
    r_at       timestamptz[];
    r_prev     text[];
    r_hash     text[];
BEGIN
    IF coalesce(cardinality(p_expected_versions), 0) <> v_streams OR coalesce(cardinality(p_counts), 0) <> v_streams
       OR coalesce(cardinality(p_event_types), 0) <> v_total OR coalesce(cardinality(p_schema_versions), 0) <> v_total
       OR coalesce(cardinality(p_data), 0) <> v_total OR coalesce(cardinality(p_metadata), 0) <> v_total
       OR (SELECT coalesce(sum(c), 0) FROM unnest(p_counts) c) <> v_total THEN
        RAISE EXCEPTION 'the append arrays differ in length' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_counts) c WHERE c IS NULL OR c < 1) THEN
        RAISE EXCEPTION 'no events to append' USING ERRCODE = '22023';
    END IF;

    IF v_streams <> (SELECT count(DISTINCT s) FROM unnest(p_stream_ids) s)
       OR v_total <> (SELECT count(DISTINCT i) FROM unnest(p_event_ids) i)
       OR EXISTS (SELECT 1 FROM events ev WHERE ev.event_id = ANY(p_event_ids)) THEN
        FOR j IN 1..v_streams LOOP
            v_n := p_counts[j];
            RETURN QUERY SELECT p_stream_ids[j], r.first_version, r.last_version, r.global_positions, r.event_ids,
                                r.transaction_id, r.replayed
                           FROM closeloop_append(p_stream_ids[j], p_expected_versions[j],
                                                 p_event_ids[v_off + 1:v_off + v_n],
                                                 p_event_types[v_off + 1:v_off + v_n],
                                                 p_schema_versions[v_off + 1:v_off + v_n],
                                                 p_data[v_off + 1:v_off + v_n],
                                                 p_metadata[v_off + 1:v_off + v_n], false) r;
            v_off := v_off + v_n;
        END LOOP;
    ELSE
        SELECT array_agg(hd.stream_version ORDER BY s.n), array_agg(hd.hash ORDER BY s.n),
               array_agg(hd.transaction_id ORDER BY s.n)
          INTO h_ver, h_hash, h_xid
          FROM unnest(p_stream_ids) WITH ORDINALITY AS s(sid, n)
          LEFT JOIN LATERAL (SELECT ev.stream_version, ev.hash, ev.transaction_id FROM events ev
                              WHERE ev.stream_id = s.sid ORDER BY ev.stream_version DESC LIMIT 1) hd ON true;
        FOR j IN 1..v_streams LOOP
            v_sid := p_stream_ids[j];
            v_exp := p_expected_versions[j];
            v_ver := coalesce(h_ver[j], 0);
            IF v_exp IS NOT NULL AND v_exp <> v_ver THEN
                RAISE EXCEPTION 'stream % is at version %, expected %', v_sid, v_ver, v_exp
                      USING ERRCODE = 'CL001', DETAIL = v_ver::text;
            END IF;
            IF h_xid[j] IS NOT NULL AND h_xid[j] > v_xid THEN
                RAISE EXCEPTION 'stream % was advanced by a younger transaction; retry', v_sid
                      USING ERRCODE = 'CL002', DETAIL = v_ver::text;
            END IF;
            v_prev := coalesce(h_hash[j], repeat('0', 64));
            FOR k IN 1..p_counts[j] LOOP
                v_i := v_off + k;
                v_ver := v_ver + 1;
                v_at := clock_timestamp();
                r_sid[v_i] := v_sid;
                r_ver[v_i] := v_ver;
                r_at[v_i] := v_at;
                r_prev[v_i] := v_prev;
                v_prev := closeloop_chain_hash(v_prev, p_event_ids[v_i], v_sid, v_ver, p_event_types[v_i],
                                               p_schema_versions[v_i], v_at, p_data[v_i], p_metadata[v_i]);
                r_hash[v_i] := v_prev;
            END LOOP;
            v_off := v_off + p_counts[j];
        END LOOP;
        RETURN QUERY
        WITH ins AS (
            INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version,
                                data, metadata, recorded_at, prev_hash, hash)
            SELECT u.id, u.sid, u.ver, u.typ, u.sch, u.dat, u.met, u.at, u.prv, u.hsh
              FROM unnest(p_event_ids, r_sid, r_ver, p_event_types, p_schema_versions, p_data, p_metadata, r_at,
                          r_prev, r_hash)
                   WITH ORDINALITY AS u(id, sid, ver, typ, sch, dat, met, at, prv, hsh, n)
             ORDER BY u.n
            RETURNING events.stream_id, events.global_position, events.stream_version, events.event_id)
        SELECT ins.stream_id, min(ins.stream_version), max(ins.stream_version),
               array_agg(ins.global_position ORDER BY ins.stream_version),
               array_agg(ins.event_id ORDER BY ins.stream_version), v_xid, false
          FROM ins GROUP BY ins.stream_id;
    END IF;
    IF p_notify THEN
        PERFORM pg_notify('closeloop_events', '');
    END IF;
END
$$;
