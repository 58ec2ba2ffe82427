-- +goose Up
-- Hot paths with less work per transition, measured with `pullwake bench`
-- (docs/performance.md). The lifecycle rules are unchanged; the tests of
-- 00002-00004 hold as they were. What changed:
--   * Fewer statements per call: every statement inside a function pays
--     executor start-up, a snapshot and a plan-cache check. claim_next_wake
--     reads the dispatch row and the entity in one statement and writes the
--     dispatch row, the claim, the entity and the wake in one more;
--     release_claim takes the dispatch slot with the UPDATE that clears it
--     (no separate SELECT ... FOR UPDATE, whose row lock is one more WAL
--     record) and no longer calls pw_clear_slot.
--   * A fast path for the common append (no producer headers, no
--     Stream-Seq, not closing): one UPDATE of the stream row that checks
--     closure, content type, expiry and the entity's status in its WHERE
--     clause, then the INSERT. Anything else, or any refusal, goes through
--     the full checks, now named pw_stream_write_checked.
--   * Room for HOT updates: the hot rows are updated in place on their page
--     (no new index entries) when the page has free space and no indexed
--     column changes. entities_status_idx made every status change a cold
--     update with two index insertions; the entity listing's status filter
--     does not need it (it walks the primary key of one tenant).

DROP INDEX entities_status_idx;
ALTER TABLE entities SET (fillfactor = 80);
ALTER TABLE entity_dispatch_state SET (fillfactor = 80);
ALTER TABLE streams SET (fillfactor = 80);
ALTER TABLE wakes SET (fillfactor = 90);
ALTER TABLE consumer_claims SET (fillfactor = 90);

ALTER FUNCTION pw_stream_write(text, text, text, bytea[], boolean, text, text, bigint, bigint, timestamptz)
    RENAME TO pw_stream_write_checked;

-- +goose StatementBegin
-- pw_stream_write appends (and closes) as pw_stream_write_checked does, with
-- the same statuses. A plain append that passes every check takes the fast
-- path; every other request is pw_stream_write_checked's.
CREATE FUNCTION pw_stream_write(p_tenant text, p_path text, p_content_type text, p_data bytea[],
                                p_close boolean, p_stream_seq text, p_producer_id text,
                                p_producer_epoch bigint, p_producer_seq bigint,
                                p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, tail_seq bigint, closed boolean, producer_epoch bigint, producer_seq bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now  timestamptz := coalesce(p_now, now());
    v_n    integer := coalesce(cardinality(p_data), 0);
    v_tail bigint;
BEGIN
    IF v_n > 0 AND p_producer_id IS NULL AND p_stream_seq IS NULL AND p_close IS NOT TRUE THEN
        -- The UPDATE locks the stream row, as the checked path's SELECT
        -- ... FOR UPDATE does, and matches only a stream that takes the
        -- append: open, same media type, not expired, entity not stopped.
        UPDATE streams s
           SET tail_seq = s.tail_seq + v_n, accessed_at = v_now, updated_at = v_now
         WHERE s.tenant_id = p_tenant AND s.path = p_path
           AND NOT s.closed
           AND pw_media_type(s.content_type) = p_content_type
           AND (s.entity_url IS NOT NULL OR NOT pw_stream_expired(s, v_now))
           AND (s.entity_url IS NULL
                OR NOT EXISTS (SELECT 1 FROM entities e
                                WHERE e.tenant_id = p_tenant AND e.url = s.entity_url
                                  AND e.status = 'stopped'))
        RETURNING s.tail_seq INTO v_tail;
        IF FOUND THEN
            INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
            SELECT p_tenant, p_path, v_tail - v_n + u.i, u.d, v_now
              FROM unnest(p_data) WITH ORDINALITY AS u(d, i);
            status := 'appended';
            tail_seq := v_tail;
            closed := false;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM pw_stream_write_checked(p_tenant, p_path, p_content_type, p_data, p_close,
                                                       p_stream_seq, p_producer_id, p_producer_epoch,
                                                       p_producer_seq, v_now);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION claim_next_wake(p_runner_id text, p_lease_ttl_ms integer DEFAULT 30000,
                                           p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (wake_id text, consumer_id text, epoch bigint, entity_url text,
               stream_path text, acked_offset text, claim_token text,
               lease_expires_at timestamptz, lease_ttl_ms integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_admin   text;
    v_wake    text;
    v_url     text;
    v_depoch  bigint;
    v_acked   bigint;
    v_active  text;
    v_aepoch  bigint;
    v_alease  timestamptz;
    v_status  text;
    v_stream  text;
    v_skip    text[] := '{}';
    v_epoch   bigint;
    v_lease   timestamptz;
    v_token   text;
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
        SELECT w.wake_id, w.entity_url INTO v_wake, v_url FROM wakes w
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

        -- Lock the dispatch row (reading the entity with it), then re-check
        -- what the pick assumed. A claim never waits for a dispatch lock
        -- (someone is releasing, sending to or sweeping that entity): it
        -- skips the wake. Holding the wake lock while waiting for the
        -- dispatch lock would invert the fixed order and could deadlock
        -- with stop_entity or a sweep.
        SELECT d.epoch, d.acked_offset, d.active_consumer_id, d.active_epoch, d.active_lease_expires_at,
               e.status, e.main_stream
          INTO v_depoch, v_acked, v_active, v_aepoch, v_alease, v_status, v_stream
          FROM entity_dispatch_state d
          JOIN entities e ON e.tenant_id = d.tenant_id AND e.url = d.entity_url
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
           FOR UPDATE OF d SKIP LOCKED;
        IF NOT FOUND THEN
            v_skip := v_skip || v_wake;
            CONTINUE;
        END IF;
        IF v_status IN ('stopping', 'stopped') THEN
            UPDATE wakes w SET status = 'superseded', finished_at = v_now, updated_at = v_now
             WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake;
            v_skip := v_skip || v_wake;
            CONTINUE;
        END IF;
        IF v_active IS NOT NULL AND v_alease > v_now THEN
            v_skip := v_skip || v_wake;
            CONTINUE;
        END IF;

        IF v_active IS NOT NULL THEN
            -- Takeover: the slot's claim lapsed; it ends here as expired.
            UPDATE consumer_claims c SET status = 'expired', updated_at = v_now
             WHERE c.tenant_id = p_tenant AND c.consumer_id = v_active
               AND c.epoch = v_aepoch AND c.status = 'active';
            IF FOUND THEN
                PERFORM pw_notify_claim(p_tenant, v_active, v_aepoch, v_stream, 'expired');
            END IF;
            UPDATE wakes w SET status = 'expired', finished_at = v_now, updated_at = v_now
             WHERE w.tenant_id = p_tenant AND w.wake_id = v_active AND w.status = 'claimed';
        END IF;

        v_epoch := v_depoch + 1;
        v_lease := v_now + p_lease_ttl_ms * interval '1 millisecond';
        v_token := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');

        -- Every write of the claim in one statement. The dispatch row and
        -- the wake are locked already; the entity's row is taken last and
        -- is only ever locked by holders of its dispatch lock, which is ours.
        WITH slot AS (
            UPDATE entity_dispatch_state d
               SET epoch = v_epoch, active_consumer_id = v_wake, active_epoch = v_epoch,
                   active_runner_id = p_runner_id, active_claimed_at = v_now,
                   active_lease_expires_at = v_lease, outstanding_wake_id = v_wake,
                   updated_at = v_now
             WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
        ), claim AS (
            INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path,
                                         runner_id, status, claim_token_hash, lease_ttl_ms, claimed_at,
                                         last_heartbeat_at, lease_expires_at, updated_at)
            VALUES (p_tenant, v_wake, v_epoch, v_wake, v_url, v_stream,
                    p_runner_id, 'active', sha256(convert_to(v_token, 'UTF8')), p_lease_ttl_ms, v_now,
                    v_now, v_lease, v_now)
        ), ent AS (
            UPDATE entities e SET status = 'running', updated_at = v_now
             WHERE e.tenant_id = p_tenant AND e.url = v_url AND e.status IN ('idle', 'running')
        )
        UPDATE wakes w
           SET status = 'claimed', claimed_at = v_now, consumer_id = v_wake,
               epoch = v_epoch, updated_at = v_now
         WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake;

        wake_id := v_wake;
        consumer_id := v_wake;
        epoch := v_epoch;
        entity_url := v_url;
        stream_path := v_stream;
        acked_offset := pw_offset(v_acked);
        claim_token := v_token;
        lease_expires_at := v_lease;
        lease_ttl_ms := p_lease_ttl_ms;
        RETURN NEXT;
        RETURN;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION release_claim(p_consumer_id text, p_epoch bigint, p_acks jsonb DEFAULT '[]',
                                         p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                                         p_claim_token_hash bytea DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (released boolean, entity_cleared boolean, claim_status text, entity_url text,
               stream_path text, entity_status text, acked_offset text, queued_wake_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_acks    jsonb := coalesce(p_acks, '[]'::jsonb);
    v_url     text;
    v_path    text;
    v_wake    text;
    v_status  text;
    v_hash    bytea;
    v_ack     bigint;
    v_sent    bigint;
    v_acked   bigint;
    v_cleared boolean;
    v_ended   integer;
    v_estatus text;
    v_queued  text;
BEGIN
    IF jsonb_typeof(v_acks) <> 'array' THEN
        RAISE EXCEPTION 'acks must be an array' USING ERRCODE = 'PW008';
    END IF;
    -- The claim, and for an active claim presented with its own token the
    -- main-stream ack: every ack's offset is parsed (a malformed one raises
    -- PW008), the main stream's highest one counts, clamped to the tail.
    SELECT c.entity_url, c.stream_path, c.wake_id, c.status, c.claim_token_hash,
           CASE WHEN c.status = 'active' AND jsonb_array_length(v_acks) > 0
                     AND (p_claim_token_hash IS NULL OR p_claim_token_hash = c.claim_token_hash)
           THEN (SELECT CASE WHEN x.m IS NOT NULL
                             THEN least(x.m, coalesce((SELECT s.tail_seq FROM streams s
                                                        WHERE s.tenant_id = p_tenant AND s.path = c.stream_path), 0))
                        END
                   FROM (SELECT max(CASE WHEN coalesce(y.a->>'stream', y.a->>'path')
                                               IN (c.stream_path, substr(c.stream_path, 11))
                                         THEN y.o END) AS m
                           FROM (SELECT a, pw_parse_offset(a->>'offset') AS o
                                   FROM jsonb_array_elements(v_acks) AS a
                                  WHERE jsonb_typeof(a) = 'object' AND a ? 'offset'
                                 OFFSET 0) y) x)  -- not flattened: every offset is parsed
           END
      INTO v_url, v_path, v_wake, v_status, v_hash, v_ack
      FROM consumer_claims c
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
    END IF;

    IF v_status = 'active' THEN
        -- Lock order: the dispatch row, then the claim, the entity, the
        -- wake. The UPDATE that clears the slot is what locks the dispatch
        -- row; it matches only while the slot names this claim. A wake
        -- queued while the claim's lease had lapsed stays outstanding.
        UPDATE entity_dispatch_state d
           SET active_consumer_id = NULL, active_epoch = NULL, active_runner_id = NULL,
               active_claimed_at = NULL, active_lease_expires_at = NULL,
               outstanding_wake_id = (SELECT w.wake_id FROM wakes w
                                       WHERE w.tenant_id = p_tenant AND w.entity_url = v_url
                                         AND w.status = 'queued'),
               acked_offset = greatest(d.acked_offset, coalesce(v_ack, 0)),
               last_released_at = v_now, last_completed_at = v_now, updated_at = v_now
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
           AND d.active_consumer_id = p_consumer_id AND d.active_epoch = p_epoch
        RETURNING d.last_sent_offset, d.acked_offset, d.outstanding_wake_id
             INTO v_sent, v_acked, v_queued;
        v_cleared := FOUND;

        -- The claim ends; only then (each later step reads the claim's
        -- result) its wake completes and, when it held the slot, the
        -- entity goes idle (stopping: stopped). The scalar subqueries run
        -- in order, so the claim is locked before the entity, and the
        -- wake's UPDATE, which nothing reads, runs last.
        WITH claim AS (
            UPDATE consumer_claims c
               SET status = 'released', released_at = v_now, acked_streams = v_acks, updated_at = v_now
             WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
               AND c.status = 'active'
            RETURNING 1
        ), ent AS (
            UPDATE entities e
               SET status = CASE e.status WHEN 'running' THEN 'idle' WHEN 'stopping' THEN 'stopped'
                            ELSE e.status END,
                   updated_at = v_now
             WHERE e.tenant_id = p_tenant AND e.url = v_url AND v_cleared
               AND EXISTS (SELECT 1 FROM claim)
            RETURNING e.status
        ), wake AS (
            UPDATE wakes w SET status = 'completed', finished_at = v_now, updated_at = v_now
             WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake AND w.status = 'claimed'
               AND EXISTS (SELECT 1 FROM claim)
        )
        SELECT (SELECT count(*) FROM claim),
               coalesce((SELECT ent.status FROM ent),
                        (SELECT e.status FROM entities e WHERE e.tenant_id = p_tenant AND e.url = v_url))
          INTO v_ended, v_estatus;
        IF v_ended = 1 THEN
            IF NOT v_cleared THEN
                -- Not the slot's claim (a leak being cleaned up): the entity
                -- and its slot are as they were.
                SELECT d.acked_offset INTO v_acked FROM entity_dispatch_state d
                 WHERE d.tenant_id = p_tenant AND d.entity_url = v_url;
            ELSIF v_estatus = 'idle' AND v_sent > v_acked AND v_queued IS NULL THEN
                v_queued := pw_queue_wake(p_tenant, v_url, v_now);
            END IF;
            IF p_notify THEN
                PERFORM pw_notify_claim(p_tenant, p_consumer_id, p_epoch, v_path, 'released');
            END IF;
            released := true;
            entity_cleared := v_cleared;
            claim_status := 'released';
            entity_url := v_url;
            stream_path := v_path;
            entity_status := v_estatus;
            acked_offset := pw_offset(v_acked);
            queued_wake_id := v_queued;
            RETURN NEXT;
            RETURN;
        END IF;
        IF v_cleared THEN
            -- Only a transaction holding the dispatch lock ends the claim a
            -- slot names, and this one holds it: this cannot happen.
            RAISE EXCEPTION 'claim %/% holds its entity''s slot but is not active', p_consumer_id, p_epoch;
        END IF;
    END IF;

    -- Not active (or ended while this call ran): a repeated release changes
    -- nothing and reports the claim's current status.
    RETURN QUERY
    SELECT false, false, c.status, c.entity_url, c.stream_path, e.status, pw_offset(d.acked_offset), NULL::text
      FROM consumer_claims c
      JOIN entities e ON e.tenant_id = c.tenant_id AND e.url = c.entity_url
      JOIN entity_dispatch_state d ON d.tenant_id = c.tenant_id AND d.entity_url = c.entity_url
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION pw_stream_write(text, text, text, bytea[], boolean, text, text, bigint, bigint, timestamptz);
ALTER FUNCTION pw_stream_write_checked(text, text, text, bytea[], boolean, text, text, bigint, bigint, timestamptz)
    RENAME TO pw_stream_write;
ALTER TABLE consumer_claims RESET (fillfactor);
ALTER TABLE wakes RESET (fillfactor);
ALTER TABLE streams RESET (fillfactor);
ALTER TABLE entity_dispatch_state RESET (fillfactor);
ALTER TABLE entities RESET (fillfactor);
CREATE INDEX entities_status_idx ON entities (tenant_id, status);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION claim_next_wake(p_runner_id text, p_lease_ttl_ms integer DEFAULT 30000,
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
CREATE OR REPLACE FUNCTION release_claim(p_consumer_id text, p_epoch bigint, p_acks jsonb DEFAULT '[]',
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

