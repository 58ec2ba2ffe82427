-- +goose Up
-- Set-based forms of the hot transitions, for group commit: the server
-- gathers the claims, releases and appends that arrive while a batch is in
-- flight and runs them as one statement, one transaction, one commit
-- (internal/groupcommit). Each takes arrays (one element per item) and
-- returns one row per item, in input order (ord = the item's 1-based
-- position), with a per-item outcome instead of an exception: err_code and
-- err_message carry the SQLSTATE and message the single-item function
-- raised for that item (NULL on success), so one bad item never fails its
-- batch-mates.
--
-- One implementation of each rule: every item is a call of the public
-- single-item function (release_claim, claim_next_wake, pw_stream_write_as)
-- inside a BEGIN ... EXCEPTION block. The block is a subtransaction: an
-- item that raises is rolled back alone, the others stay.
--
-- Lock order. The locks an item takes stay held until the whole batch
-- commits, so a batch holds many rows at once and the order in which it
-- visits its items matters. Items run sorted by the key of the first row
-- their function locks, in the fixed order of 00002 (dispatch state, then
-- claims, entities, wakes, streams):
--   release_claims   by (entity_url, consumer_id, epoch): release_claim
--                    locks the entity's dispatch row first; entity_url is
--                    read from the claim row, which never changes; unknown
--                    claims lock nothing and come last;
--   claim_next_wakes by (runner_id, ord): claim_next_wake never waits for
--                    a queue entry or a dispatch row (SKIP LOCKED);
--   pw_stream_writes by (path, ord): the stream row is the one row an
--                    append locks; appends to one stream keep their order.
-- Two batches of the same function therefore take their first locks in
-- one order. Where a batch meets another writer whose order crosses its
-- own (an expiry pass holding several dispatch rows, say), PostgreSQL
-- detects the deadlock (40P01) in one item of one side; for a batch the
-- item's block catches it: that item's subtransaction rolls back, the batch
-- goes on and commits, and the item reports 40P01; the server runs such
-- items again (internal/groupcommit). Wake events of the wakes a batch
-- queues are written once, at commit (00008), as for a single call.
--
-- Cost. A subtransaction that writes takes a subtransaction id; a
-- transaction with more than 64 of them overflows the per-backend cache
-- and makes every other session's snapshots slower until it ends. The
-- server caps its batches at 64 items for that reason.

-- +goose StatementBegin
CREATE FUNCTION release_claims(p_consumer_ids text[], p_epochs bigint[], p_acks jsonb[],
                               p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                               p_claim_token_hashes bytea[] DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (ord integer, err_code text, err_message text,
               released boolean, entity_cleared boolean, claim_status text, entity_url text,
               stream_path text, entity_status text, acked_offset text, queued_wake_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_n       integer := coalesce(cardinality(p_consumer_ids), 0);
    v_it      record;
    v_r       record;
    o_code    text[] := '{}';
    o_msg     text[] := '{}';
    o_rel     boolean[] := '{}';
    o_clr     boolean[] := '{}';
    o_cst     text[] := '{}';
    o_url     text[] := '{}';
    o_path    text[] := '{}';
    o_est     text[] := '{}';
    o_acked   text[] := '{}';
    o_queued  text[] := '{}';
BEGIN
    IF coalesce(cardinality(p_epochs), 0) <> v_n OR coalesce(cardinality(p_acks), 0) <> v_n
       OR (p_claim_token_hashes IS NOT NULL AND cardinality(p_claim_token_hashes) <> v_n) THEN
        RAISE EXCEPTION 'release_claims: the arrays differ in length' USING ERRCODE = 'PW008';
    END IF;
    FOR v_it IN
        SELECT u.i::integer AS i, u.c, u.e, u.a, p_claim_token_hashes[u.i] AS h
          FROM unnest(p_consumer_ids, p_epochs, p_acks) WITH ORDINALITY AS u(c, e, a, i)
          LEFT JOIN consumer_claims c ON c.tenant_id = p_tenant AND c.consumer_id = u.c AND c.epoch = u.e
         ORDER BY c.entity_url NULLS LAST, u.c, u.e, u.i
    LOOP
        BEGIN
            SELECT * INTO STRICT v_r
              FROM release_claim(v_it.c, v_it.e, coalesce(v_it.a, '[]'::jsonb), p_now, p_tenant, v_it.h, p_notify);
            o_rel[v_it.i] := v_r.released;
            o_clr[v_it.i] := v_r.entity_cleared;
            o_cst[v_it.i] := v_r.claim_status;
            o_url[v_it.i] := v_r.entity_url;
            o_path[v_it.i] := v_r.stream_path;
            o_est[v_it.i] := v_r.entity_status;
            o_acked[v_it.i] := v_r.acked_offset;
            o_queued[v_it.i] := v_r.queued_wake_id;
        EXCEPTION WHEN OTHERS THEN
            o_code[v_it.i] := SQLSTATE;
            o_msg[v_it.i] := SQLERRM;
        END;
    END LOOP;
    RETURN QUERY
    SELECT g.i, o_code[g.i], o_msg[g.i], o_rel[g.i], o_clr[g.i], o_cst[g.i], o_url[g.i], o_path[g.i],
           o_est[g.i], o_acked[g.i], o_queued[g.i]
      FROM generate_series(1, v_n) AS g(i)
     ORDER BY g.i;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- claim_next_wakes claims one wake for each item's runner, as
-- claim_next_wake does (a runner named twice gets two wakes). An item with
-- no work gets a row whose wake_id is NULL.
CREATE FUNCTION claim_next_wakes(p_runner_ids text[], p_lease_ttl_ms integer[],
                                 p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (ord integer, err_code text, err_message text,
               wake_id text, consumer_id text, epoch bigint, entity_url text,
               stream_path text, acked_offset text, claim_token text,
               lease_expires_at timestamptz, lease_ttl_ms integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_n      integer := coalesce(cardinality(p_runner_ids), 0);
    v_it     record;
    v_r      record;
    o_code   text[] := '{}';
    o_msg    text[] := '{}';
    o_wake   text[] := '{}';
    o_epoch  bigint[] := '{}';
    o_url    text[] := '{}';
    o_path   text[] := '{}';
    o_acked  text[] := '{}';
    o_token  text[] := '{}';
    o_lease  timestamptz[] := '{}';
    o_ttl    integer[] := '{}';
BEGIN
    IF coalesce(cardinality(p_lease_ttl_ms), 0) <> v_n THEN
        RAISE EXCEPTION 'claim_next_wakes: the arrays differ in length' USING ERRCODE = 'PW008';
    END IF;
    FOR v_it IN
        SELECT u.i::integer AS i, u.r, u.t
          FROM unnest(p_runner_ids, p_lease_ttl_ms) WITH ORDINALITY AS u(r, t, i)
         ORDER BY u.r, u.i
    LOOP
        BEGIN
            SELECT * INTO v_r FROM claim_next_wake(v_it.r, v_it.t, p_now, p_tenant);
            IF FOUND THEN
                o_wake[v_it.i] := v_r.wake_id;
                o_epoch[v_it.i] := v_r.epoch;
                o_url[v_it.i] := v_r.entity_url;
                o_path[v_it.i] := v_r.stream_path;
                o_acked[v_it.i] := v_r.acked_offset;
                o_token[v_it.i] := v_r.claim_token;
                o_lease[v_it.i] := v_r.lease_expires_at;
                o_ttl[v_it.i] := v_r.lease_ttl_ms;
            END IF;
        EXCEPTION WHEN OTHERS THEN
            o_code[v_it.i] := SQLSTATE;
            o_msg[v_it.i] := SQLERRM;
        END;
    END LOOP;
    RETURN QUERY
    SELECT g.i, o_code[g.i], o_msg[g.i], o_wake[g.i], o_wake[g.i], o_epoch[g.i], o_url[g.i], o_path[g.i],
           o_acked[g.i], o_token[g.i], o_lease[g.i], o_ttl[g.i]
      FROM generate_series(1, v_n) AS g(i)
     ORDER BY g.i;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_writes appends each item's messages to its stream as a plain
-- pw_stream_write_as does (no producer headers, no Stream-Seq, not
-- closing: those keep the single-item call); p_entity_writers[i] says
-- whether item i carried the stream's live write token. Item i's messages
-- are the next p_counts[i] elements of p_data, in input order.
CREATE FUNCTION pw_stream_writes(p_tenant text, p_paths text[], p_content_types text[],
                                 p_entity_writers boolean[], p_counts integer[], p_data bytea[],
                                 p_now timestamptz DEFAULT NULL)
RETURNS TABLE (ord integer, err_code text, err_message text,
               status text, tail_seq bigint, closed boolean, producer_epoch bigint, producer_seq bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_n      integer := coalesce(cardinality(p_paths), 0);
    v_first  integer[] := '{}';
    v_acc    integer := 0;
    v_it     record;
    v_r      record;
    o_code   text[] := '{}';
    o_msg    text[] := '{}';
    o_status text[] := '{}';
    o_tail   bigint[] := '{}';
    o_closed boolean[] := '{}';
    o_pep    bigint[] := '{}';
    o_pseq   bigint[] := '{}';
BEGIN
    IF coalesce(cardinality(p_content_types), 0) <> v_n OR coalesce(cardinality(p_counts), 0) <> v_n
       OR coalesce(cardinality(p_entity_writers), 0) <> v_n THEN
        RAISE EXCEPTION 'pw_stream_writes: the arrays differ in length' USING ERRCODE = 'PW008';
    END IF;
    FOR i IN 1..v_n LOOP
        IF p_counts[i] IS NULL OR p_counts[i] < 0 THEN
            RAISE EXCEPTION 'pw_stream_writes: item % has no message count', i USING ERRCODE = 'PW008';
        END IF;
        v_first[i] := v_acc + 1;
        v_acc := v_acc + p_counts[i];
    END LOOP;
    IF v_acc <> coalesce(cardinality(p_data), 0) THEN
        RAISE EXCEPTION 'pw_stream_writes: the counts add up to %, the data has % messages',
            v_acc, coalesce(cardinality(p_data), 0) USING ERRCODE = 'PW008';
    END IF;
    FOR v_it IN
        SELECT u.i::integer AS i, u.p, u.ct, coalesce(u.ew, false) AS ew
          FROM unnest(p_paths, p_content_types, p_entity_writers) WITH ORDINALITY AS u(p, ct, ew, i)
         ORDER BY u.p, u.i
    LOOP
        BEGIN
            SELECT * INTO STRICT v_r
              FROM pw_stream_write_as(v_it.ew, p_tenant, v_it.p, v_it.ct,
                                      coalesce(p_data[v_first[v_it.i]:v_first[v_it.i] + p_counts[v_it.i] - 1], '{}'),
                                      false, NULL, NULL, NULL, NULL, p_now);
            o_status[v_it.i] := v_r.status;
            o_tail[v_it.i] := v_r.tail_seq;
            o_closed[v_it.i] := v_r.closed;
            o_pep[v_it.i] := v_r.producer_epoch;
            o_pseq[v_it.i] := v_r.producer_seq;
        EXCEPTION WHEN OTHERS THEN
            o_code[v_it.i] := SQLSTATE;
            o_msg[v_it.i] := SQLERRM;
        END;
    END LOOP;
    RETURN QUERY
    SELECT g.i, o_code[g.i], o_msg[g.i], o_status[g.i], o_tail[g.i], o_closed[g.i], o_pep[g.i], o_pseq[g.i]
      FROM generate_series(1, v_n) AS g(i)
     ORDER BY g.i;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION pw_stream_writes(text, text[], text[], boolean[], integer[], bytea[], timestamptz);
DROP FUNCTION claim_next_wakes(text[], integer[], timestamptz, text);
DROP FUNCTION release_claims(text[], bigint[], jsonb[], timestamptz, text, bytea[], boolean);
