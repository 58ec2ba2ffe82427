-- +goose Up
-- The claim lifecycle. Each public function is one transaction when called
-- as one statement (from Go or from psql). Rows are locked in one fixed
-- order everywhere: entity_dispatch_state, then consumer_claims, then
-- entities, then wakes, then streams. Errors carry SQLSTATEs of class PW,
-- which the Go server maps to HTTP codes:
--   PW001 ENTITY_NOT_FOUND   PW002 ENTITY_EXISTS    PW003 ENTITY_STOPPED
--   PW004 RUNNER_NOT_FOUND   PW005 RUNNER_DISABLED  PW006 CLAIM_NOT_FOUND
--   PW007 CLAIM_NOT_ACTIVE   PW008 INVALID_REQUEST  PW009 STREAM_NOT_FOUND
--   PW010 RUNNER_EXISTS      PW011 STREAM_CONFLICT  PW012 STREAM_CLOSED
--   PW013 UNAUTHORIZED (a claim token that does not match the claim)

-- +goose StatementBegin
CREATE FUNCTION pw_offset(p_seq bigint) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT lpad(p_seq::text, 16, '0')
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_parse_offset turns a client offset into a seq: '-1' is the start,
-- otherwise exactly 16 digits as pw_offset makes them.
CREATE FUNCTION pw_parse_offset(p_offset text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_offset = '-1' THEN
        RETURN 0;
    END IF;
    IF p_offset IS NULL OR p_offset !~ '^[0-9]{16}$' THEN
        RAISE EXCEPTION 'invalid offset %', coalesce(quote_literal(p_offset), 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    RETURN p_offset::bigint;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_notify_claim tells every server (LISTEN pullwake_claims) that a claim
-- ended, so it can drop the claim's write token. Delivered at commit.
CREATE FUNCTION pw_notify_claim(p_tenant text, p_consumer_id text, p_epoch bigint,
                                p_stream_path text, p_status text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('pullwake_claims', json_build_object(
        'tenant_id', p_tenant, 'consumer_id', p_consumer_id, 'epoch', p_epoch,
        'stream_path', p_stream_path, 'status', p_status)::text)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_append appends raw messages to a stream: it locks the stream
-- row (serializing appends per stream), takes the next seqs and inserts the
-- rows. It checks nothing else; callers check content type, closure, owner.
CREATE FUNCTION pw_stream_append(p_tenant text, p_path text, p_data bytea[], p_now timestamptz)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_n    bigint := coalesce(cardinality(p_data), 0);
    v_tail bigint;
BEGIN
    UPDATE streams s
       SET tail_seq = s.tail_seq + v_n, updated_at = p_now
     WHERE s.tenant_id = p_tenant AND s.path = p_path
    RETURNING s.tail_seq INTO v_tail;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stream % not found', p_path USING ERRCODE = 'PW009';
    END IF;
    INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
    SELECT p_tenant, p_path, v_tail - v_n + u.i, u.d, p_now
      FROM unnest(p_data) WITH ORDINALITY AS u(d, i);
    RETURN v_tail;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_queue_wake queues a wake for an entity unless one is queued already.
-- The caller holds the entity's dispatch row lock. Returns the queued wake.
CREATE FUNCTION pw_queue_wake(p_tenant text, p_entity_url text, p_now timestamptz)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_wake_id text;
BEGIN
    SELECT w.wake_id INTO v_wake_id FROM wakes w
     WHERE w.tenant_id = p_tenant AND w.entity_url = p_entity_url AND w.status = 'queued';
    IF NOT FOUND THEN
        INSERT INTO wakes (tenant_id, wake_id, entity_url, runner_id, status, created_at, updated_at)
        SELECT p_tenant, 'wake-' || nextval('wake_seq'), e.url, e.runner_id, 'queued', p_now, p_now
          FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_entity_url
        RETURNING wake_id INTO v_wake_id;
    END IF;
    UPDATE entity_dispatch_state d SET outstanding_wake_id = v_wake_id, updated_at = p_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_entity_url;
    RETURN v_wake_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_clear_slot ends the entity's active claim slot after its claim was
-- released or expired: slot emptied, entity running -> idle (stopping ->
-- stopped), the claim's wake finished, acked_offset advanced (never back),
-- and a new wake queued when a sent message lies past the acked offset.
-- The caller holds the dispatch row lock and has checked that the slot names
-- the ending claim. Returns the entity's new status and any queued wake.
CREATE FUNCTION pw_clear_slot(p_tenant text, p_entity_url text, p_wake_id text,
                              p_wake_status text, p_acked bigint, p_now timestamptz,
                              OUT entity_status text, OUT queued_wake_id text,
                              OUT acked_offset bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_sent bigint;
BEGIN
    -- A wake queued while the claim's lease had lapsed stays outstanding.
    UPDATE entity_dispatch_state d
       SET active_consumer_id = NULL, active_epoch = NULL, active_runner_id = NULL,
           active_claimed_at = NULL, active_lease_expires_at = NULL,
           outstanding_wake_id = (SELECT w.wake_id FROM wakes w
                                   WHERE w.tenant_id = p_tenant AND w.entity_url = p_entity_url
                                     AND w.status = 'queued'),
           acked_offset = greatest(d.acked_offset, coalesce(p_acked, 0)),
           last_released_at = p_now,
           last_completed_at = CASE WHEN p_wake_status = 'completed' THEN p_now ELSE d.last_completed_at END,
           updated_at = p_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_entity_url
    RETURNING d.last_sent_offset, d.acked_offset, d.outstanding_wake_id
         INTO v_sent, acked_offset, queued_wake_id;

    UPDATE entities e
       SET status = CASE e.status WHEN 'running' THEN 'idle' WHEN 'stopping' THEN 'stopped' ELSE e.status END,
           updated_at = p_now
     WHERE e.tenant_id = p_tenant AND e.url = p_entity_url
    RETURNING e.status INTO entity_status;

    UPDATE wakes w SET status = p_wake_status, finished_at = p_now, updated_at = p_now
     WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake_id AND w.status = 'claimed';

    IF entity_status = 'idle' AND v_sent > acked_offset AND queued_wake_id IS NULL THEN
        queued_wake_id := pw_queue_wake(p_tenant, p_entity_url, p_now);
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- spawn_entity creates an entity, its dispatch row and its main stream.
CREATE FUNCTION spawn_entity(p_url text, p_runner_id text DEFAULT NULL,
                             p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_stream text := '/v1/stream' || p_url || '/main';
BEGIN
    IF EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_stream) THEN
        RAISE EXCEPTION 'stream % exists already', v_stream USING ERRCODE = 'PW002';
    END IF;
    BEGIN
        INSERT INTO entities (tenant_id, url, status, main_stream, runner_id, created_at, updated_at)
        VALUES (p_tenant, p_url, 'idle', v_stream, p_runner_id, v_now, v_now);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'entity % exists already', p_url USING ERRCODE = 'PW002';
    END;
    INSERT INTO entity_dispatch_state (tenant_id, entity_url, updated_at)
    VALUES (p_tenant, p_url, v_now);
    INSERT INTO streams (tenant_id, path, content_type, entity_url, created_at, updated_at)
    VALUES (p_tenant, v_stream, 'application/json', p_url, v_now, v_now);
    RETURN QUERY SELECT * FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_url;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- send_to_entity appends an inbox event to the entity's main stream and, in
-- the same transaction, queues a wake unless one is queued already or a
-- claim with a live lease holds the entity (its release re-queues).
CREATE FUNCTION send_to_entity(p_url text, p_payload jsonb, p_from text DEFAULT NULL,
                               p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (msg_offset text, wake_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_d      entity_dispatch_state%ROWTYPE;
    v_status text;
    v_stream text;
    v_seq    bigint;
    v_wake   text;
    v_event  jsonb;
BEGIN
    SELECT d.* INTO v_d FROM entity_dispatch_state d
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'entity % not found', p_url USING ERRCODE = 'PW001';
    END IF;
    SELECT e.status, e.main_stream INTO v_status, v_stream FROM entities e
     WHERE e.tenant_id = p_tenant AND e.url = p_url;
    IF v_status IN ('stopping', 'stopped') THEN
        RAISE EXCEPTION 'entity % is %', p_url, v_status USING ERRCODE = 'PW003';
    END IF;
    v_event := jsonb_build_object(
        'type', 'inbox',
        'key', 'inbox-' || replace(gen_random_uuid()::text, '-', ''),
        'value', jsonb_build_object(
            'from', coalesce(p_from, 'admin'),
            'payload', p_payload,
            'timestamp', to_char(v_now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'mode', 'immediate',
            'status', 'processed'),
        'headers', jsonb_build_object('operation', 'insert'));
    v_seq := pw_stream_append(p_tenant, v_stream, ARRAY[convert_to(v_event::text, 'UTF8')], v_now);
    UPDATE entity_dispatch_state d SET last_sent_offset = v_seq, updated_at = v_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url;
    IF NOT (v_d.active_consumer_id IS NOT NULL AND v_d.active_lease_expires_at > v_now) THEN
        v_wake := pw_queue_wake(p_tenant, p_url, v_now);
    END IF;
    RETURN QUERY SELECT pw_offset(v_seq), v_wake;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- stop_entity stops an idle entity at once and marks a running one
-- stopping (its claim's end stops it). A queued wake is superseded.
CREATE FUNCTION stop_entity(p_url text, p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
BEGIN
    PERFORM 1 FROM entity_dispatch_state d
      WHERE d.tenant_id = p_tenant AND d.entity_url = p_url FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'entity % not found', p_url USING ERRCODE = 'PW001';
    END IF;
    UPDATE entities e
       SET status = CASE WHEN e.status = 'running' THEN 'stopping'
                         WHEN e.status = 'idle' THEN 'stopped' ELSE e.status END,
           updated_at = v_now
     WHERE e.tenant_id = p_tenant AND e.url = p_url;
    UPDATE wakes w SET status = 'superseded', finished_at = v_now, updated_at = v_now
     WHERE w.tenant_id = p_tenant AND w.entity_url = p_url AND w.status = 'queued';
    UPDATE entity_dispatch_state d SET outstanding_wake_id = d.active_consumer_id, updated_at = v_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url;
    RETURN QUERY SELECT * FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_url;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- claim_next_wake hands the runner the oldest queued wake it may take: the
-- wake targets it or any runner, the entity is not stopping or stopped, and
-- no claim with a live lease holds the entity. A claim whose lease lapsed is
-- taken over (marked expired) in this transaction. Returns no row when there
-- is no work. The claim token is returned here once; only its hash is kept.
CREATE FUNCTION claim_next_wake(p_runner_id text, p_lease_ttl_ms integer DEFAULT 30000,
                                p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (wake_id text, consumer_id text, epoch bigint, entity_url text,
               stream_path text, acked_offset text, claim_token text,
               lease_expires_at timestamptz, lease_ttl_ms integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_admin  text;
    v_wake   wakes%ROWTYPE;
    v_d      entity_dispatch_state%ROWTYPE;
    v_status text;
    v_stream text;
    v_skip   text[] := '{}';
    v_epoch  bigint;
    v_lease  timestamptz;
    v_token  text;
BEGIN
    IF p_lease_ttl_ms IS NULL OR p_lease_ttl_ms <= 0 THEN
        RAISE EXCEPTION 'lease ttl must be positive, got %', p_lease_ttl_ms USING ERRCODE = 'PW008';
    END IF;
    SELECT r.admin_status INTO v_admin FROM runners r
     WHERE r.tenant_id = p_tenant AND r.id = p_runner_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'runner % not found', p_runner_id USING ERRCODE = 'PW004';
    END IF;
    IF v_admin <> 'enabled' THEN
        RAISE EXCEPTION 'runner % is disabled', p_runner_id USING ERRCODE = 'PW005';
    END IF;

    FOR i IN 1..16 LOOP
        SELECT w.* INTO v_wake FROM wakes w
         WHERE w.tenant_id = p_tenant AND w.status = 'queued'
           AND (w.runner_id IS NULL OR w.runner_id = p_runner_id)
           AND w.wake_id <> ALL (v_skip)
           -- A scalar subquery (one primary-key probe per candidate) rather
           -- than NOT EXISTS: plpgsql's generic plan turned that into an
           -- anti join over a scan of every dispatch row. Every entity has
           -- its dispatch row, so this returns one row.
           AND (SELECT d.active_consumer_id IS NULL OR d.active_lease_expires_at <= v_now
                  FROM entity_dispatch_state d
                 WHERE d.tenant_id = w.tenant_id AND d.entity_url = w.entity_url)
         ORDER BY w.created_at, w.wake_id
         LIMIT 1
         FOR UPDATE OF w SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;

        -- Lock the dispatch row, then re-check what the pick assumed. A claim
        -- never waits for a dispatch lock (someone is releasing, sending to
        -- or sweeping that entity): it skips the wake. Holding the wake lock
        -- while waiting for the dispatch lock would invert the fixed order
        -- and could deadlock with stop_entity or a sweep.
        SELECT d.* INTO v_d FROM entity_dispatch_state d
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_wake.entity_url
           FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            v_skip := v_skip || v_wake.wake_id;
            CONTINUE;
        END IF;
        SELECT e.status, e.main_stream INTO v_status, v_stream FROM entities e
         WHERE e.tenant_id = p_tenant AND e.url = v_wake.entity_url;
        IF v_status IN ('stopping', 'stopped') THEN
            UPDATE wakes w SET status = 'superseded', finished_at = v_now, updated_at = v_now
             WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake.wake_id;
            v_skip := v_skip || v_wake.wake_id;
            CONTINUE;
        END IF;
        IF v_d.active_consumer_id IS NOT NULL AND v_d.active_lease_expires_at > v_now THEN
            v_skip := v_skip || v_wake.wake_id;
            CONTINUE;
        END IF;

        IF v_d.active_consumer_id IS NOT NULL THEN
            -- Takeover: the slot's claim lapsed; it ends here as expired.
            UPDATE consumer_claims c SET status = 'expired', updated_at = v_now
             WHERE c.tenant_id = p_tenant AND c.consumer_id = v_d.active_consumer_id
               AND c.epoch = v_d.active_epoch AND c.status = 'active';
            IF FOUND THEN
                PERFORM pw_notify_claim(p_tenant, v_d.active_consumer_id, v_d.active_epoch, v_stream, 'expired');
            END IF;
            UPDATE wakes w SET status = 'expired', finished_at = v_now, updated_at = v_now
             WHERE w.tenant_id = p_tenant AND w.wake_id = v_d.active_consumer_id AND w.status = 'claimed';
        END IF;

        v_epoch := v_d.epoch + 1;
        v_lease := v_now + p_lease_ttl_ms * interval '1 millisecond';
        v_token := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');

        UPDATE entity_dispatch_state d
           SET epoch = v_epoch, active_consumer_id = v_wake.wake_id, active_epoch = v_epoch,
               active_runner_id = p_runner_id, active_claimed_at = v_now,
               active_lease_expires_at = v_lease, outstanding_wake_id = v_wake.wake_id,
               updated_at = v_now
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_wake.entity_url;
        INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path,
                                     runner_id, status, claim_token_hash, lease_ttl_ms, claimed_at,
                                     last_heartbeat_at, lease_expires_at, updated_at)
        VALUES (p_tenant, v_wake.wake_id, v_epoch, v_wake.wake_id, v_wake.entity_url, v_stream,
                p_runner_id, 'active', sha256(convert_to(v_token, 'UTF8')), p_lease_ttl_ms, v_now,
                v_now, v_lease, v_now);
        UPDATE entities e SET status = 'running', updated_at = v_now
         WHERE e.tenant_id = p_tenant AND e.url = v_wake.entity_url AND e.status IN ('idle', 'running');
        UPDATE wakes w
           SET status = 'claimed', claimed_at = v_now, consumer_id = v_wake.wake_id,
               epoch = v_epoch, updated_at = v_now
         WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake.wake_id;

        RETURN QUERY SELECT v_wake.wake_id, v_wake.wake_id, v_epoch, v_wake.entity_url, v_stream,
                            pw_offset(v_d.acked_offset), v_token, v_lease, p_lease_ttl_ms;
        RETURN;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- heartbeat_claim extends an active claim's lease by its TTL (or by
-- p_lease_ttl_ms when given). A claim that is no longer active, or whose
-- lease has passed, cannot be revived: CLAIM_NOT_ACTIVE. With
-- p_claim_token_hash (the server passes the SHA-256 of the presented claim
-- token) a mismatch is UNAUTHORIZED: one round trip checks and acts.
CREATE FUNCTION heartbeat_claim(p_consumer_id text, p_epoch bigint,
                                p_lease_ttl_ms integer DEFAULT NULL,
                                p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                                p_claim_token_hash bytea DEFAULT NULL)
RETURNS TABLE (lease_expires_at timestamptz, entity_url text, stream_path text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now   timestamptz := coalesce(p_now, now());
    v_url   text;
    v_path  text;
    v_lease timestamptz;
    v_hash  bytea;
BEGIN
    SELECT c.entity_url, c.claim_token_hash INTO v_url, v_hash FROM consumer_claims c
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
    END IF;
    PERFORM 1 FROM entity_dispatch_state d
      WHERE d.tenant_id = p_tenant AND d.entity_url = v_url FOR UPDATE;
    UPDATE consumer_claims c
       SET lease_expires_at = v_now + coalesce(p_lease_ttl_ms, c.lease_ttl_ms) * interval '1 millisecond',
           last_heartbeat_at = v_now, updated_at = v_now
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
       AND c.status = 'active' AND c.lease_expires_at > v_now
    RETURNING c.lease_expires_at, c.stream_path INTO v_lease, v_path;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim %/% is not active', p_consumer_id, p_epoch USING ERRCODE = 'PW007';
    END IF;
    UPDATE entity_dispatch_state d SET active_lease_expires_at = v_lease, updated_at = v_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
       AND d.active_consumer_id = p_consumer_id AND d.active_epoch = p_epoch;
    RETURN QUERY SELECT v_lease, v_url, v_path;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- release_claim ends a claim by its durable identity (consumer, epoch),
-- whatever any server holds in memory. It clears the entity's dispatch slot
-- only if the slot still names this claim (entity_cleared), and then, in
-- this same transaction, moves the entity to idle (or stopped), completes
-- the wake, advances acked_offset to the main-stream ack and re-queues a
-- wake when a sent message lies past it. A repeated release changes nothing
-- and reports released = false with the claim's current status.
-- p_acks: [{"stream": path, "offset": offset}, ...]. With p_claim_token_hash
-- (the SHA-256 of the token a runner presented) a mismatch is UNAUTHORIZED.
-- It notifies pullwake_claims at commit, so a release from psql reaches
-- every server's memory. The server passes p_notify = false and publishes
-- the same notification itself right after the commit, from a transaction
-- that writes nothing: a NOTIFY inside a writing transaction holds a
-- cluster-wide lock until the commit is flushed and serializes all releases.
CREATE FUNCTION release_claim(p_consumer_id text, p_epoch bigint, p_acks jsonb DEFAULT '[]',
                              p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                              p_claim_token_hash bytea DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (released boolean, entity_cleared boolean, claim_status text, entity_url text,
               stream_path text, entity_status text, acked_offset text, queued_wake_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_c       consumer_claims%ROWTYPE;
    v_d       entity_dispatch_state%ROWTYPE;
    v_ack     bigint;
    v_tail    bigint;
    v_acked   bigint;
    v_cleared boolean := false;
    v_estatus text;
    v_queued  text;
    v_acks    jsonb := coalesce(p_acks, '[]'::jsonb);
BEGIN
    IF jsonb_typeof(v_acks) <> 'array' THEN
        RAISE EXCEPTION 'acks must be an array' USING ERRCODE = 'PW008';
    END IF;
    SELECT c.* INTO v_c FROM consumer_claims c
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_c.claim_token_hash THEN
        RAISE EXCEPTION 'wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
    END IF;

    -- Lock order: dispatch row, then the claim.
    SELECT d.* INTO v_d FROM entity_dispatch_state d
     WHERE d.tenant_id = p_tenant AND d.entity_url = v_c.entity_url FOR UPDATE;
    SELECT c.* INTO v_c FROM consumer_claims c
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch FOR UPDATE;

    IF v_c.status <> 'active' THEN
        SELECT e.status INTO v_estatus FROM entities e
         WHERE e.tenant_id = p_tenant AND e.url = v_c.entity_url;
        RETURN QUERY SELECT false, false, v_c.status, v_c.entity_url, v_c.stream_path, v_estatus,
                            pw_offset(v_d.acked_offset), NULL::text;
        RETURN;
    END IF;

    -- The main-stream ack, validated, clamped to the stream's tail.
    -- Every ack's offset is parsed (a malformed one raises PW008); the
    -- main stream's highest one counts.
    IF jsonb_array_length(v_acks) > 0 THEN
        SELECT max(CASE WHEN coalesce(x.a->>'stream', x.a->>'path') IN (v_c.stream_path, substr(v_c.stream_path, 11))
                        THEN x.o END)
          INTO v_ack
          FROM (SELECT a, pw_parse_offset(a->>'offset') AS o
                  FROM jsonb_array_elements(v_acks) AS a
                 WHERE jsonb_typeof(a) = 'object' AND a ? 'offset'
                OFFSET 0) x;  -- not flattened: every offset is parsed
    END IF;
    IF v_ack IS NOT NULL THEN
        SELECT s.tail_seq INTO v_tail FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = v_c.stream_path;
        v_ack := least(v_ack, coalesce(v_tail, 0));
    END IF;

    UPDATE consumer_claims c
       SET status = 'released', released_at = v_now, acked_streams = v_acks, updated_at = v_now
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
       AND c.status = 'active';

    IF v_d.active_consumer_id = p_consumer_id AND v_d.active_epoch = p_epoch THEN
        v_cleared := true;
        SELECT s.entity_status, s.queued_wake_id, s.acked_offset INTO v_estatus, v_queued, v_acked
          FROM pw_clear_slot(p_tenant, v_c.entity_url, v_c.wake_id, 'completed', v_ack, v_now) s;
    ELSE
        -- Not the slot's claim (a leak being cleaned up): finish its wake only.
        UPDATE wakes w SET status = 'completed', finished_at = v_now, updated_at = v_now
         WHERE w.tenant_id = p_tenant AND w.wake_id = v_c.wake_id AND w.status = 'claimed';
        SELECT e.status INTO v_estatus FROM entities e
         WHERE e.tenant_id = p_tenant AND e.url = v_c.entity_url;
        v_acked := v_d.acked_offset;
    END IF;

    IF p_notify THEN
        PERFORM pw_notify_claim(p_tenant, p_consumer_id, p_epoch, v_c.stream_path, 'released');
    END IF;
    RETURN QUERY SELECT true, v_cleared, 'released'::text, v_c.entity_url, v_c.stream_path, v_estatus,
                        pw_offset(v_acked), v_queued;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- expire_claims ends every active claim whose lease has passed at p_now.
-- Each is re-checked under its locks (a heartbeat racing the sweep wins or
-- loses cleanly); a claim holding its entity's slot frees the entity as a
-- release would, without an ack. Returns the claims it expired.
CREATE FUNCTION expire_claims(p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                              p_limit integer DEFAULT 1000)
RETURNS TABLE (consumer_id text, epoch bigint, entity_url text, stream_path text,
               entity_cleared boolean, entity_status text, queued_wake_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_r       record;
    v_d       entity_dispatch_state%ROWTYPE;
    v_c       consumer_claims%ROWTYPE;
    v_estatus text;
    v_queued  text;
BEGIN
    FOR v_r IN
        SELECT c.consumer_id, c.epoch, c.entity_url FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.status = 'active' AND c.lease_expires_at <= v_now
         -- Dispatch rows are locked in entity order: two sweeps (the
         -- server's and one from psql) never lock them crosswise.
         ORDER BY c.entity_url, c.epoch
         LIMIT p_limit
    LOOP
        SELECT d.* INTO v_d FROM entity_dispatch_state d
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_r.entity_url FOR UPDATE;
        UPDATE consumer_claims c SET status = 'expired', updated_at = v_now
         WHERE c.tenant_id = p_tenant AND c.consumer_id = v_r.consumer_id AND c.epoch = v_r.epoch
           AND c.status = 'active' AND c.lease_expires_at <= v_now
        RETURNING c.* INTO v_c;
        CONTINUE WHEN NOT FOUND;
        v_queued := NULL;
        IF v_d.active_consumer_id = v_c.consumer_id AND v_d.active_epoch = v_c.epoch THEN
            SELECT s.entity_status, s.queued_wake_id INTO v_estatus, v_queued
              FROM pw_clear_slot(p_tenant, v_c.entity_url, v_c.wake_id, 'expired', NULL, v_now) s;
            entity_cleared := true;
        ELSE
            UPDATE wakes w SET status = 'expired', finished_at = v_now, updated_at = v_now
             WHERE w.tenant_id = p_tenant AND w.wake_id = v_c.wake_id AND w.status = 'claimed';
            SELECT e.status INTO v_estatus FROM entities e
             WHERE e.tenant_id = p_tenant AND e.url = v_c.entity_url;
            entity_cleared := false;
        END IF;
        PERFORM pw_notify_claim(p_tenant, v_c.consumer_id, v_c.epoch, v_c.stream_path, 'expired');
        consumer_id := v_c.consumer_id;
        epoch := v_c.epoch;
        entity_url := v_c.entity_url;
        stream_path := v_c.stream_path;
        entity_status := v_estatus;
        queued_wake_id := v_queued;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- sweep_claims is expire_claims for the servers' sweepers: it runs only if
-- no other sweeper of the tenant holds the sweep lock (a transaction-level
-- advisory lock), so one instance sweeps at a time; the others get no rows.
CREATE FUNCTION sweep_claims(p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                             p_limit integer DEFAULT 1000)
RETURNS TABLE (consumer_id text, epoch bigint, entity_url text, stream_path text,
               entity_cleared boolean, entity_status text, queued_wake_id text)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('pullwake.sweeper.' || p_tenant, 0)) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM expire_claims(p_now, p_tenant, p_limit);
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION sweep_claims(timestamptz, text, integer);
DROP FUNCTION expire_claims(timestamptz, text, integer);
DROP FUNCTION release_claim(text, bigint, jsonb, timestamptz, text, bytea, boolean);
DROP FUNCTION heartbeat_claim(text, bigint, integer, timestamptz, text, bytea);
DROP FUNCTION claim_next_wake(text, integer, timestamptz, text);
DROP FUNCTION stop_entity(text, timestamptz, text);
DROP FUNCTION send_to_entity(text, jsonb, text, timestamptz, text);
DROP FUNCTION spawn_entity(text, text, timestamptz, text);
DROP FUNCTION pw_clear_slot(text, text, text, text, bigint, timestamptz);
DROP FUNCTION pw_queue_wake(text, text, timestamptz);
DROP FUNCTION pw_stream_append(text, text, bytea[], timestamptz);
DROP FUNCTION pw_notify_claim(text, text, bigint, text, text);
DROP FUNCTION pw_parse_offset(text);
DROP FUNCTION pw_offset(bigint);
