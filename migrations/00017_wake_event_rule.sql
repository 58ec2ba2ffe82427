-- +goose Up
-- No message lost under a runner that claims once per wake event it reads
-- (Electric's runtime), and write tokens that outlive the process.
--
-- Wake-event rule: a runner that claims exactly once per wake event it
-- reads, and never otherwise, eventually claims every queued wake
-- addressed to it. Three parts:
--   * claim_wake_for_event claims the wake of the entity the event names,
--     or nothing; it waits for that entity's dispatch lock instead of
--     skipping it, so a send or a release in flight never makes it answer
--     "no work" for a wake that is claimable;
--   * pw_end_claim writes a new event when the claim that ends leaves an
--     already queued wake claimable (a claim answered 204 for it while it
--     was blocked spent its event);
--   * sweep_wake_events, run by the sweeper, writes a new event for a
--     claimable wake whose every event lies at or before the offset its
--     runner reported reading (heartbeat wake_stream_offset) and is older
--     than a bound: an event read but never claimed (the claim failed in
--     transit) is not left as the wake's last.
-- Duplicate events are harmless: a second claim of one wake answers 204.
--
-- Write tokens: the claim row keeps the hash of its write token's secret,
-- which is derived from the claim token (pw_write_secret), so the server
-- can check a token it does not hold in memory (after a restart, or on
-- another instance) with one primary-key lookup.

ALTER TABLE consumer_claims ADD COLUMN write_token_hash bytea;

-- The wake stream offset (as a sequence number) the runner's reader last
-- reported in a heartbeat; NULL = never reported.
ALTER TABLE runners ADD COLUMN wake_stream_read_seq bigint;

-- A forced pending event (forced_at set: its time, on the caller's clock)
-- is written even when the wake has an event for the same generation,
-- which may have been spent; other events carry their wake's time.
-- runner_id, when set, limits the event to that one target runner.
ALTER TABLE wake_event_pending ADD COLUMN forced_at timestamptz;
ALTER TABLE wake_event_pending ADD COLUMN runner_id text;

-- A wake may now have several events per runner and generation: the key
-- is the event's place in the runner's wake stream.
ALTER TABLE wake_events DROP CONSTRAINT wake_events_pkey;
DROP INDEX wake_events_runner_idx;
ALTER TABLE wake_events ADD CONSTRAINT wake_events_pkey PRIMARY KEY (tenant_id, runner_id, seq);
CREATE INDEX wake_events_wake_idx ON wake_events (tenant_id, wake_id, runner_id);

-- The key that signs write tokens (HMAC), one per tenant, shared by every
-- instance: a forged token is refused without a query.
CREATE TABLE token_keys (
    tenant_id  text        NOT NULL PRIMARY KEY,
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- +goose StatementBegin
-- pw_token_key returns the tenant's write-token signing key, creating it on
-- first use (every instance that races here ends with the same key).
CREATE FUNCTION pw_token_key(p_tenant text DEFAULT 'default') RETURNS bytea
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_key bytea;
BEGIN
    INSERT INTO token_keys (tenant_id, key)
    VALUES (p_tenant, sha256(convert_to(gen_random_uuid()::text || gen_random_uuid()::text
                                        || gen_random_uuid()::text, 'UTF8')))
    ON CONFLICT (tenant_id) DO NOTHING;
    SELECT k.key INTO v_key FROM token_keys k WHERE k.tenant_id = p_tenant;
    RETURN v_key;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_write_secret is the secret part of a claim's write token: the hex
-- SHA-256 of 'write:' and the claim token. Whoever holds the claim token
-- may obtain the write token anyway (the callback's claim request); the
-- write token, sent with every append, does not reveal the claim token.
CREATE FUNCTION pw_write_secret(p_claim_token text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    SELECT encode(sha256(convert_to('write:' || p_claim_token, 'UTF8')), 'hex')
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_claim_wake(p_tenant text, p_wake text, p_url text, p_runner_id text, p_lease_ttl_ms integer, p_now timestamp with time zone) RETURNS TABLE(wake_id text, consumer_id text, epoch bigint, entity_url text, stream_path text, acked_offset text, claim_token text, lease_expires_at timestamp with time zone, lease_ttl_ms integer)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_depoch  bigint;
    v_acked   bigint;
    v_active  text;
    v_aepoch  bigint;
    v_alease  timestamptz;
    v_status  text;
    v_stream  text;
    v_end     record;
    v_epoch   bigint;
    v_lease   timestamptz;
    v_token   text;
BEGIN
    -- Lock the dispatch row (reading the entity with it), then re-check
    -- what the pick assumed. A claim never waits for a dispatch lock
    -- (someone is releasing, sending to or sweeping that entity): it
    -- moves on. Holding the queue entry while waiting for the dispatch
    -- lock would invert the fixed order and could deadlock with
    -- stop_entity or a sweep.
    SELECT d.epoch, d.acked_offset, d.active_consumer_id, d.active_epoch, d.active_lease_expires_at,
           e.status, e.main_stream
      INTO v_depoch, v_acked, v_active, v_aepoch, v_alease, v_status, v_stream
      FROM entity_dispatch_state d
      JOIN entities e ON e.tenant_id = d.tenant_id AND e.url = d.entity_url
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url
       FOR UPDATE OF d SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_status IN ('stopping', 'stopped') THEN
        UPDATE wakes w SET status = 'superseded', finished_at = p_now, updated_at = p_now
         WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake AND w.status = 'queued';
        RETURN;
    END IF;
    IF v_active IS NOT NULL AND v_alease > p_now THEN
        RETURN;
    END IF;

    IF v_active IS NOT NULL THEN
        -- Takeover: the slot's claim lapsed; it ends here as expired,
        -- through the one path that ends claims.
        SELECT * INTO v_end FROM pw_end_claim(p_tenant, v_active, v_aepoch, 'expired', NULL, p_now, true);
        IF NOT v_end.entity_cleared THEN
            RAISE EXCEPTION 'PW008: claim: the lapsed claim %/% in the slot of % did not end',
                v_active, v_aepoch, p_url USING ERRCODE = 'PW008';
        END IF;
    END IF;

    v_epoch := v_depoch + 1;
    v_lease := p_now + p_lease_ttl_ms * interval '1 millisecond';
    v_token := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');

    -- The claim's writes, one statement each in the fixed lock order
    -- (dispatch state, claim, entity, wake), each under its guard. We
    -- hold the dispatch row and the wake's queue entry (every change of
    -- a queued wake's status deletes that entry, and only holders of
    -- the dispatch lock change it), so no guard can fail; if one did,
    -- the whole claim rolls back.
    UPDATE entity_dispatch_state d
       SET epoch = v_epoch, active_consumer_id = p_wake, active_epoch = v_epoch,
           active_runner_id = p_runner_id, active_claimed_at = p_now,
           active_lease_expires_at = v_lease, outstanding_wake_id = p_wake,
           updated_at = p_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url
       AND d.active_consumer_id IS NULL AND d.epoch = v_depoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW008: claim: the dispatch slot of % changed under its lock', p_url USING ERRCODE = 'PW008';
    END IF;
    -- The write token's secret is derived from the claim token (see
    -- pw_write_secret); the row keeps only its hash.
    INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path,
                                 runner_id, status, claim_token_hash, write_token_hash, lease_ttl_ms,
                                 claimed_at, last_heartbeat_at, lease_expires_at, updated_at)
    VALUES (p_tenant, p_wake, v_epoch, p_wake, p_url, v_stream,
            p_runner_id, 'active', sha256(convert_to(v_token, 'UTF8')),
            sha256(convert_to(pw_write_secret(v_token), 'UTF8')), p_lease_ttl_ms,
            p_now, p_now, v_lease, p_now);
    UPDATE entities e SET status = 'running', updated_at = p_now
     WHERE e.tenant_id = p_tenant AND e.url = p_url AND e.status IN ('idle', 'running');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW008: claim: entity % stopped under its dispatch lock', p_url USING ERRCODE = 'PW008';
    END IF;
    UPDATE wakes w
       SET status = 'claimed', claimed_at = p_now, consumer_id = p_wake,
           epoch = v_epoch, updated_at = p_now
     WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake AND w.status = 'queued';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW008: claim: wake % is no longer queued', p_wake USING ERRCODE = 'PW008';
    END IF;

    wake_id := p_wake;
    consumer_id := p_wake;
    epoch := v_epoch;
    entity_url := p_url;
    stream_path := v_stream;
    acked_offset := pw_offset(v_acked);
    claim_token := v_token;
    lease_expires_at := v_lease;
    lease_ttl_ms := p_lease_ttl_ms;
    RETURN NEXT;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_end_claim(p_tenant text, p_consumer_id text, p_epoch bigint, p_status text, p_acks jsonb, p_now timestamp with time zone, p_notify boolean DEFAULT true, OUT ended boolean, OUT entity_cleared boolean, OUT claim_status text, OUT entity_url text, OUT stream_path text, OUT entity_status text, OUT acked_offset bigint, OUT queued_wake_id text) RETURNS record
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_url      text;
    v_path     text;
    v_wake     text;
    v_slot_c   text;
    v_slot_e   bigint;
    v_acked    bigint;
    v_sent     bigint;
    v_ack      bigint;
    v_estatus  text;
    v_queued   text;
    v_acks     jsonb := coalesce(p_acks, '[]'::jsonb);
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('released', 'expired') THEN
        RAISE EXCEPTION 'PW008: a claim ends as released or expired, not %', coalesce(p_status, 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    IF jsonb_typeof(v_acks) <> 'array' THEN
        RAISE EXCEPTION 'PW008: acks must be an array' USING ERRCODE = 'PW008';
    END IF;
    -- 1. The dispatch row of the claim's entity, found through the claim
    -- (read, not locked: a claim's entity never changes).
    SELECT c.entity_url, d.active_consumer_id, d.active_epoch, d.acked_offset, d.last_sent_offset
      INTO v_url, v_slot_c, v_slot_e, v_acked, v_sent
      FROM consumer_claims c
      JOIN entity_dispatch_state d ON d.tenant_id = c.tenant_id AND d.entity_url = c.entity_url
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
       FOR UPDATE OF d;
    IF NOT FOUND THEN
        -- No such claim (or, after a hand edit, no dispatch row: then
        -- nothing names the claim, and it ends without touching a slot).
        SELECT c.entity_url INTO v_url FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'PW006: claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
        END IF;
    END IF;
    entity_url := v_url;

    -- 2. The claim, under its guard.
    UPDATE consumer_claims c
       SET status = p_status,
           released_at = CASE WHEN p_status = 'released' THEN p_now ELSE c.released_at END,
           acked_streams = CASE WHEN p_status = 'released' THEN v_acks ELSE c.acked_streams END,
           updated_at = p_now
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
       AND c.status = 'active'
       AND (p_status = 'released' OR c.lease_expires_at <= p_now)
    RETURNING c.stream_path, c.wake_id INTO v_path, v_wake;
    IF NOT FOUND THEN
        ended := false;
        entity_cleared := false;
        SELECT c.status, c.stream_path INTO claim_status, stream_path FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        SELECT e.status INTO entity_status FROM entities e WHERE e.tenant_id = p_tenant AND e.url = v_url;
        acked_offset := v_acked;
        RETURN;
    END IF;
    ended := true;
    claim_status := p_status;
    stream_path := v_path;

    -- The main-stream ack: every ack's offset is parsed (a malformed one
    -- raises PW008 and rolls everything back), the main stream's highest
    -- one counts, clamped to the stream's tail.
    IF jsonb_array_length(v_acks) > 0 THEN
        SELECT max(CASE WHEN coalesce(x.a->>'stream', x.a->>'path') IN (v_path, substr(v_path, 11))
                        THEN x.o END)
          INTO v_ack
          FROM (SELECT a, pw_parse_offset(a->>'offset') AS o
                  FROM jsonb_array_elements(v_acks) AS a
                 WHERE jsonb_typeof(a) = 'object' AND a ? 'offset'
                OFFSET 0) x;  -- not flattened: every offset is parsed
        IF v_ack IS NOT NULL THEN
            v_ack := least(v_ack, coalesce((SELECT s.tail_seq FROM streams s
                                              WHERE s.tenant_id = p_tenant AND s.path = v_path), 0));
        END IF;
    END IF;

    entity_cleared := coalesce(v_slot_c = p_consumer_id AND v_slot_e = p_epoch, false);
    IF entity_cleared THEN
        -- The slot is cleared only while it names this claim. A wake queued
        -- while the claim's lease had lapsed stays outstanding.
        UPDATE entity_dispatch_state d
           SET active_consumer_id = NULL, active_epoch = NULL, active_runner_id = NULL,
               active_claimed_at = NULL, active_lease_expires_at = NULL,
               outstanding_wake_id = (SELECT w.wake_id FROM wakes w
                                       WHERE w.tenant_id = p_tenant AND w.entity_url = v_url
                                         AND w.status = 'queued'),
               acked_offset = greatest(d.acked_offset, coalesce(v_ack, 0)),
               last_released_at = p_now,
               last_completed_at = CASE WHEN p_status = 'released' THEN p_now ELSE d.last_completed_at END,
               updated_at = p_now
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
           AND d.active_consumer_id = p_consumer_id AND d.active_epoch = p_epoch
        RETURNING d.acked_offset, d.last_sent_offset, d.outstanding_wake_id INTO v_acked, v_sent, v_queued;

        -- 3. The entity: the one place a claim's end moves its status.
        UPDATE entities e
           SET status = CASE e.status WHEN 'running' THEN 'idle' WHEN 'stopping' THEN 'stopped'
                        ELSE e.status END,
               updated_at = p_now
         WHERE e.tenant_id = p_tenant AND e.url = v_url
        RETURNING e.status INTO v_estatus;
    ELSE
        -- Not the slot's claim (a leak being cleaned up): the entity and
        -- its slot are as they were.
        SELECT e.status INTO v_estatus FROM entities e WHERE e.tenant_id = p_tenant AND e.url = v_url;
    END IF;

    -- 4. The claim's wake.
    UPDATE wakes w
       SET status = CASE p_status WHEN 'released' THEN 'completed' ELSE 'expired' END,
           finished_at = p_now, updated_at = p_now
     WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake AND w.status = 'claimed';

    -- No sent message is left without a wake.
    IF entity_cleared AND v_estatus = 'idle' AND v_sent > v_acked AND v_queued IS NULL THEN
        v_queued := pw_queue_wake(p_tenant, v_url, p_now);
    ELSIF entity_cleared AND v_estatus = 'idle' AND v_queued IS NOT NULL THEN
        -- Wake-event rule: a wake queued while this claim held the entity
        -- becomes claimable now. Its events may all have been spent (a
        -- claim answered 204 while it was blocked), so it gets a new one,
        -- written at commit like every event. A wake queued just above
        -- gets its event from the queueing itself.
        INSERT INTO wake_event_pending (xid, tenant_id, wake_id, forced_at)
        VALUES (pg_current_xact_id(), p_tenant, v_queued, p_now);
        PERFORM set_config('pullwake.wake_events_pending', 'yes', true);
    END IF;

    IF p_notify THEN
        PERFORM pw_notify_claim(p_tenant, p_consumer_id, p_epoch, v_path, p_status);
    END IF;
    entity_status := v_estatus;
    acked_offset := v_acked;
    queued_wake_id := CASE WHEN entity_cleared THEN v_queued END;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_flush_wake_events() RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_tenants text[];
    v_wakes   text[];
    v_forced  timestamptz[];
    v_only    text[];
    v_r       record;
    v_tail  bigint;
    v_n     integer := 0;
BEGIN
    PERFORM set_config('pullwake.wake_events_pending', '', true);
    WITH p AS (
        DELETE FROM wake_event_pending p WHERE p.xid = pg_current_xact_id()
        RETURNING p.tenant_id, p.wake_id, p.forced_at, p.runner_id
    )
    SELECT array_agg(q.tenant_id), array_agg(q.wake_id), array_agg(q.forced_at), array_agg(q.runner_id)
      INTO v_tenants, v_wakes, v_forced, v_only
      FROM (SELECT p.tenant_id, p.wake_id, max(p.forced_at) AS forced_at,
                   -- one runner only when every pending row names it
                   CASE WHEN bool_and(p.runner_id IS NOT NULL) AND min(p.runner_id) = max(p.runner_id)
                        THEN min(p.runner_id) END AS runner_id
              FROM p GROUP BY 1, 2) q;
    IF v_wakes IS NULL THEN
        RETURN 0;
    END IF;
    -- Who the targets are (runners, their admin status and wake streams)
    -- is read after this lock: a registration or an enable, which hold it
    -- exclusively while they back-fill, is either committed and seen here,
    -- or waits for this commit and back-fills these wakes itself.
    PERFORM pw_lock_wake_targets(t, false)
       FROM (SELECT DISTINCT t FROM unnest(v_tenants) t ORDER BY 1) q;
    FOR v_r IN
        SELECT x.tenant_id, x.runner_id,
               array_agg(x.event ORDER BY x.created_at, x.wake_id) AS data,
               array_agg(x.wake_id ORDER BY x.created_at, x.wake_id) AS wakes,
               array_agg(x.generation ORDER BY x.created_at, x.wake_id) AS gens,
               array_agg(x.queued_at ORDER BY x.created_at, x.wake_id) AS times,
               max(x.queued_at) AS now
          FROM (SELECT w.tenant_id, t.runner_id, w.wake_id, w.created_at,
                       coalesce(p.forced_at, w.updated_at) AS queued_at,
                       d.epoch + 1 AS generation,
                       convert_to(jsonb_build_object(
                           'type', 'wake',
                           'subscription_id', 'runner:' || t.runner_id,
                           'stream', e.main_stream,
                           'generation', d.epoch + 1,
                           'ts', (extract(epoch FROM coalesce(p.forced_at, w.updated_at)) * 1000)::bigint
                       )::text, 'UTF8') AS event
                  FROM unnest(v_tenants, v_wakes, v_forced, v_only) AS p(tenant_id, wake_id, forced_at, only_runner)
                  JOIN wakes w ON w.tenant_id = p.tenant_id AND w.wake_id = p.wake_id
                  JOIN entities e ON e.tenant_id = w.tenant_id AND e.url = w.entity_url
                  JOIN entity_dispatch_state d ON d.tenant_id = w.tenant_id AND d.entity_url = w.entity_url
                 CROSS JOIN LATERAL (
                       SELECT w.runner_id AS runner_id WHERE w.runner_id IS NOT NULL
                       UNION ALL
                       SELECT r.id FROM runners r
                        WHERE w.runner_id IS NULL AND r.tenant_id = w.tenant_id AND r.admin_status = 'enabled') t
                 WHERE w.status = 'queued'
                   AND (p.only_runner IS NULL OR t.runner_id = p.only_runner)
                   AND EXISTS (SELECT 1 FROM streams s
                                WHERE s.tenant_id = w.tenant_id AND s.path = pw_wake_stream(t.runner_id))
                   -- A forced event (wake-event rule) is written even when the
                   -- wake had one for this generation: that one may be spent.
                   AND (p.forced_at IS NOT NULL OR NOT EXISTS (SELECT 1 FROM wake_events v
                                    WHERE v.tenant_id = w.tenant_id AND v.wake_id = w.wake_id
                                      AND v.runner_id = t.runner_id AND v.generation = d.epoch + 1))) x
         GROUP BY x.tenant_id, x.runner_id
         ORDER BY x.tenant_id, x.runner_id
    LOOP
        v_tail := pw_stream_append(v_r.tenant_id, pw_wake_stream(v_r.runner_id), v_r.data, v_r.now);
        INSERT INTO wake_events (tenant_id, wake_id, runner_id, generation, seq, created_at)
        SELECT v_r.tenant_id, u.wake_id, v_r.runner_id, u.generation,
               v_tail - cardinality(v_r.wakes) + u.i, u.queued_at
          FROM unnest(v_r.wakes, v_r.gens, v_r.times) WITH ORDINALITY AS u(wake_id, generation, queued_at, i);
        v_n := v_n + cardinality(v_r.wakes);
    END LOOP;
    RETURN v_n;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_backfill_wake_events(p_tenant text, p_runner_id text, p_now timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Forced, for this runner alone: a runner that restarts or is enabled
    -- again may have read (and spent) the events it had.
    PERFORM pw_lock_wake_targets(p_tenant, true);
    INSERT INTO wake_event_pending (xid, tenant_id, wake_id, forced_at, runner_id)
    SELECT pg_current_xact_id(), w.tenant_id, w.wake_id, p_now, p_runner_id
      FROM wakes w
     WHERE w.tenant_id = p_tenant AND w.status = 'queued'
       AND (w.runner_id = p_runner_id
            OR w.runner_id IS NULL AND EXISTS (SELECT 1 FROM runners r
                                                WHERE r.tenant_id = p_tenant AND r.id = p_runner_id
                                                  AND r.admin_status = 'enabled'));
    RETURN pw_flush_wake_events();
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- claim_wake_for_event is the claim of a runner that was handed a wake
-- event naming p_stream (an entity's main stream): it claims that entity's
-- queued wake when this runner may take it and it is claimable, and
-- answers no row otherwise. It never hands out another entity's wake: an
-- event spent on another wake would leave its own wake without an event.
-- Unlike claim_next_wake it waits for the entity's dispatch lock (lock
-- order: dispatch row, then the wake): the lock holder is a send, a claim
-- end or another claim of this entity, and after it the answer is exact.
-- A wake blocked by a live claim answers no row; that claim's end writes
-- the wake a new event (pw_end_claim).
CREATE FUNCTION claim_wake_for_event(p_runner_id text, p_stream text, p_lease_ttl_ms integer DEFAULT 30000,
                                     p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
    RETURNS TABLE(wake_id text, consumer_id text, epoch bigint, entity_url text, stream_path text,
                  acked_offset text, claim_token text, lease_expires_at timestamptz, lease_ttl_ms integer)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_admin  text;
    v_url    text;
    v_wake   text;
    v_target text;
BEGIN
    IF p_lease_ttl_ms IS NULL OR p_lease_ttl_ms <= 0 THEN
        RAISE EXCEPTION 'PW008: lease ttl must be positive, got %', p_lease_ttl_ms USING ERRCODE = 'PW008';
    END IF;
    SELECT r.admin_status INTO v_admin FROM runners r
     WHERE r.tenant_id = p_tenant AND r.id = p_runner_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW004: runner % not found', p_runner_id USING ERRCODE = 'PW004';
    END IF;
    IF v_admin <> 'enabled' THEN
        RAISE EXCEPTION 'PW005: runner % is disabled', p_runner_id USING ERRCODE = 'PW005';
    END IF;
    IF p_stream IS NULL OR p_stream NOT LIKE '/v1/stream/%/main' THEN
        RETURN;
    END IF;
    v_url := substr(p_stream, 11, length(p_stream) - 15);

    PERFORM 1 FROM entity_dispatch_state d
      JOIN entities e ON e.tenant_id = d.tenant_id AND e.url = d.entity_url
     WHERE d.tenant_id = p_tenant AND d.entity_url = v_url AND e.main_stream = p_stream
       FOR UPDATE OF d;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT w.wake_id, w.runner_id INTO v_wake, v_target FROM wakes w
     WHERE w.tenant_id = p_tenant AND w.entity_url = v_url AND w.status = 'queued';
    IF NOT FOUND OR (v_target IS NOT NULL AND v_target <> p_runner_id) THEN
        RETURN;
    END IF;
    -- pw_claim_wake locks the dispatch row SKIP LOCKED: ours is held by
    -- this transaction, so it is not skipped.
    RETURN QUERY SELECT * FROM pw_claim_wake(p_tenant, v_wake, v_url, p_runner_id, p_lease_ttl_ms, v_now);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- sweep_wake_events is the wake-event rule's backstop, run by the sweeper
-- (one instance per tenant at a time): among the p_limit oldest queued
-- wakes queued at least p_min_age ago, each that is claimable (no claim
-- with a live lease holds its entity) and has, for some enabled, online
-- target runner that reports its read position, no event past that
-- position and none written within p_min_age, gets a new event. Returns
-- how many wakes it wrote events for (written at commit).
CREATE FUNCTION sweep_wake_events(p_min_age interval DEFAULT '5 seconds', p_limit integer DEFAULT 1000,
                                  p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
    RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_n   integer;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('pullwake.wake_event_sweep.' || p_tenant, 0)) THEN
        RETURN 0;
    END IF;
    INSERT INTO wake_event_pending (xid, tenant_id, wake_id, forced_at)
    SELECT pg_current_xact_id(), q.tenant_id, q.wake_id, v_now
      FROM (SELECT q.tenant_id, q.wake_id, q.entity_url, q.runner_id FROM wake_queue q
             WHERE q.tenant_id = p_tenant AND q.created_at <= v_now - p_min_age
             ORDER BY q.created_at, q.wake_id
             LIMIT p_limit) q
      JOIN entity_dispatch_state d ON d.tenant_id = q.tenant_id AND d.entity_url = q.entity_url
     WHERE NOT (d.active_consumer_id IS NOT NULL AND d.active_lease_expires_at > v_now)
       AND EXISTS (
           SELECT 1 FROM runners r
            WHERE r.tenant_id = q.tenant_id
              AND (r.id = q.runner_id OR q.runner_id IS NULL)
              AND r.admin_status = 'enabled'
              AND r.liveness_lease_expires_at > v_now
              AND r.wake_stream_read_seq IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM wake_events v
                               WHERE v.tenant_id = q.tenant_id AND v.wake_id = q.wake_id AND v.runner_id = r.id
                                 AND (v.seq > r.wake_stream_read_seq OR v.created_at > v_now - p_min_age)));
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n > 0 THEN
        PERFORM set_config('pullwake.wake_events_pending', 'yes', true);
    END IF;
    RETURN v_n;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION sweep_wake_events(interval, integer, timestamptz, text);
DROP FUNCTION claim_wake_for_event(text, text, integer, timestamptz, text);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_backfill_wake_events(p_tenant text, p_runner_id text, p_now timestamp with time zone) RETURNS integer
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pw_lock_wake_targets(p_tenant, true);
    INSERT INTO wake_event_pending (xid, tenant_id, wake_id)
    SELECT pg_current_xact_id(), w.tenant_id, w.wake_id
      FROM wakes w
     WHERE w.tenant_id = p_tenant AND w.status = 'queued'
       AND (w.runner_id = p_runner_id
            OR w.runner_id IS NULL AND EXISTS (SELECT 1 FROM runners r
                                                WHERE r.tenant_id = p_tenant AND r.id = p_runner_id
                                                  AND r.admin_status = 'enabled'));
    RETURN pw_flush_wake_events();
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_flush_wake_events() RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_tenants text[];
    v_wakes   text[];
    v_r       record;
    v_tail  bigint;
    v_n     integer := 0;
BEGIN
    PERFORM set_config('pullwake.wake_events_pending', '', true);
    WITH p AS (
        DELETE FROM wake_event_pending p WHERE p.xid = pg_current_xact_id() RETURNING p.tenant_id, p.wake_id
    )
    SELECT array_agg(q.tenant_id), array_agg(q.wake_id) INTO v_tenants, v_wakes
      FROM (SELECT DISTINCT p.tenant_id, p.wake_id FROM p) q;
    IF v_wakes IS NULL THEN
        RETURN 0;
    END IF;
    -- Who the targets are (runners, their admin status and wake streams)
    -- is read after this lock: a registration or an enable, which hold it
    -- exclusively while they back-fill, is either committed and seen here,
    -- or waits for this commit and back-fills these wakes itself.
    PERFORM pw_lock_wake_targets(t, false)
       FROM (SELECT DISTINCT t FROM unnest(v_tenants) t ORDER BY 1) q;
    FOR v_r IN
        SELECT x.tenant_id, x.runner_id,
               array_agg(x.event ORDER BY x.created_at, x.wake_id) AS data,
               array_agg(x.wake_id ORDER BY x.created_at, x.wake_id) AS wakes,
               array_agg(x.generation ORDER BY x.created_at, x.wake_id) AS gens,
               array_agg(x.queued_at ORDER BY x.created_at, x.wake_id) AS times,
               max(x.queued_at) AS now
          FROM (SELECT w.tenant_id, t.runner_id, w.wake_id, w.created_at, w.updated_at AS queued_at,
                       d.epoch + 1 AS generation,
                       convert_to(jsonb_build_object(
                           'type', 'wake',
                           'subscription_id', 'runner:' || t.runner_id,
                           'stream', e.main_stream,
                           'generation', d.epoch + 1,
                           'ts', (extract(epoch FROM w.updated_at) * 1000)::bigint)::text, 'UTF8') AS event
                  FROM unnest(v_tenants, v_wakes) AS p(tenant_id, wake_id)
                  JOIN wakes w ON w.tenant_id = p.tenant_id AND w.wake_id = p.wake_id
                  JOIN entities e ON e.tenant_id = w.tenant_id AND e.url = w.entity_url
                  JOIN entity_dispatch_state d ON d.tenant_id = w.tenant_id AND d.entity_url = w.entity_url
                 CROSS JOIN LATERAL (
                       SELECT w.runner_id AS runner_id WHERE w.runner_id IS NOT NULL
                       UNION ALL
                       SELECT r.id FROM runners r
                        WHERE w.runner_id IS NULL AND r.tenant_id = w.tenant_id AND r.admin_status = 'enabled') t
                 WHERE w.status = 'queued'
                   AND EXISTS (SELECT 1 FROM streams s
                                WHERE s.tenant_id = w.tenant_id AND s.path = pw_wake_stream(t.runner_id))
                   AND NOT EXISTS (SELECT 1 FROM wake_events v
                                    WHERE v.tenant_id = w.tenant_id AND v.wake_id = w.wake_id
                                      AND v.runner_id = t.runner_id AND v.generation = d.epoch + 1)) x
         GROUP BY x.tenant_id, x.runner_id
         ORDER BY x.tenant_id, x.runner_id
    LOOP
        v_tail := pw_stream_append(v_r.tenant_id, pw_wake_stream(v_r.runner_id), v_r.data, v_r.now);
        INSERT INTO wake_events (tenant_id, wake_id, runner_id, generation, seq, created_at)
        SELECT v_r.tenant_id, u.wake_id, v_r.runner_id, u.generation,
               v_tail - cardinality(v_r.wakes) + u.i, u.queued_at
          FROM unnest(v_r.wakes, v_r.gens, v_r.times) WITH ORDINALITY AS u(wake_id, generation, queued_at, i);
        v_n := v_n + cardinality(v_r.wakes);
    END LOOP;
    RETURN v_n;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_end_claim(p_tenant text, p_consumer_id text, p_epoch bigint, p_status text, p_acks jsonb, p_now timestamp with time zone, p_notify boolean DEFAULT true, OUT ended boolean, OUT entity_cleared boolean, OUT claim_status text, OUT entity_url text, OUT stream_path text, OUT entity_status text, OUT acked_offset bigint, OUT queued_wake_id text) RETURNS record
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_url      text;
    v_path     text;
    v_wake     text;
    v_slot_c   text;
    v_slot_e   bigint;
    v_acked    bigint;
    v_sent     bigint;
    v_ack      bigint;
    v_estatus  text;
    v_queued   text;
    v_acks     jsonb := coalesce(p_acks, '[]'::jsonb);
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('released', 'expired') THEN
        RAISE EXCEPTION 'PW008: a claim ends as released or expired, not %', coalesce(p_status, 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    IF jsonb_typeof(v_acks) <> 'array' THEN
        RAISE EXCEPTION 'PW008: acks must be an array' USING ERRCODE = 'PW008';
    END IF;
    -- 1. The dispatch row of the claim's entity, found through the claim
    -- (read, not locked: a claim's entity never changes).
    SELECT c.entity_url, d.active_consumer_id, d.active_epoch, d.acked_offset, d.last_sent_offset
      INTO v_url, v_slot_c, v_slot_e, v_acked, v_sent
      FROM consumer_claims c
      JOIN entity_dispatch_state d ON d.tenant_id = c.tenant_id AND d.entity_url = c.entity_url
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
       FOR UPDATE OF d;
    IF NOT FOUND THEN
        -- No such claim (or, after a hand edit, no dispatch row: then
        -- nothing names the claim, and it ends without touching a slot).
        SELECT c.entity_url INTO v_url FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'PW006: claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
        END IF;
    END IF;
    entity_url := v_url;

    -- 2. The claim, under its guard.
    UPDATE consumer_claims c
       SET status = p_status,
           released_at = CASE WHEN p_status = 'released' THEN p_now ELSE c.released_at END,
           acked_streams = CASE WHEN p_status = 'released' THEN v_acks ELSE c.acked_streams END,
           updated_at = p_now
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
       AND c.status = 'active'
       AND (p_status = 'released' OR c.lease_expires_at <= p_now)
    RETURNING c.stream_path, c.wake_id INTO v_path, v_wake;
    IF NOT FOUND THEN
        ended := false;
        entity_cleared := false;
        SELECT c.status, c.stream_path INTO claim_status, stream_path FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        SELECT e.status INTO entity_status FROM entities e WHERE e.tenant_id = p_tenant AND e.url = v_url;
        acked_offset := v_acked;
        RETURN;
    END IF;
    ended := true;
    claim_status := p_status;
    stream_path := v_path;

    -- The main-stream ack: every ack's offset is parsed (a malformed one
    -- raises PW008 and rolls everything back), the main stream's highest
    -- one counts, clamped to the stream's tail.
    IF jsonb_array_length(v_acks) > 0 THEN
        SELECT max(CASE WHEN coalesce(x.a->>'stream', x.a->>'path') IN (v_path, substr(v_path, 11))
                        THEN x.o END)
          INTO v_ack
          FROM (SELECT a, pw_parse_offset(a->>'offset') AS o
                  FROM jsonb_array_elements(v_acks) AS a
                 WHERE jsonb_typeof(a) = 'object' AND a ? 'offset'
                OFFSET 0) x;  -- not flattened: every offset is parsed
        IF v_ack IS NOT NULL THEN
            v_ack := least(v_ack, coalesce((SELECT s.tail_seq FROM streams s
                                              WHERE s.tenant_id = p_tenant AND s.path = v_path), 0));
        END IF;
    END IF;

    entity_cleared := coalesce(v_slot_c = p_consumer_id AND v_slot_e = p_epoch, false);
    IF entity_cleared THEN
        -- The slot is cleared only while it names this claim. A wake queued
        -- while the claim's lease had lapsed stays outstanding.
        UPDATE entity_dispatch_state d
           SET active_consumer_id = NULL, active_epoch = NULL, active_runner_id = NULL,
               active_claimed_at = NULL, active_lease_expires_at = NULL,
               outstanding_wake_id = (SELECT w.wake_id FROM wakes w
                                       WHERE w.tenant_id = p_tenant AND w.entity_url = v_url
                                         AND w.status = 'queued'),
               acked_offset = greatest(d.acked_offset, coalesce(v_ack, 0)),
               last_released_at = p_now,
               last_completed_at = CASE WHEN p_status = 'released' THEN p_now ELSE d.last_completed_at END,
               updated_at = p_now
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
           AND d.active_consumer_id = p_consumer_id AND d.active_epoch = p_epoch
        RETURNING d.acked_offset, d.last_sent_offset, d.outstanding_wake_id INTO v_acked, v_sent, v_queued;

        -- 3. The entity: the one place a claim's end moves its status.
        UPDATE entities e
           SET status = CASE e.status WHEN 'running' THEN 'idle' WHEN 'stopping' THEN 'stopped'
                        ELSE e.status END,
               updated_at = p_now
         WHERE e.tenant_id = p_tenant AND e.url = v_url
        RETURNING e.status INTO v_estatus;
    ELSE
        -- Not the slot's claim (a leak being cleaned up): the entity and
        -- its slot are as they were.
        SELECT e.status INTO v_estatus FROM entities e WHERE e.tenant_id = p_tenant AND e.url = v_url;
    END IF;

    -- 4. The claim's wake.
    UPDATE wakes w
       SET status = CASE p_status WHEN 'released' THEN 'completed' ELSE 'expired' END,
           finished_at = p_now, updated_at = p_now
     WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake AND w.status = 'claimed';

    -- No sent message is left without a wake.
    IF entity_cleared AND v_estatus = 'idle' AND v_sent > v_acked AND v_queued IS NULL THEN
        v_queued := pw_queue_wake(p_tenant, v_url, p_now);
    END IF;

    IF p_notify THEN
        PERFORM pw_notify_claim(p_tenant, p_consumer_id, p_epoch, v_path, p_status);
    END IF;
    entity_status := v_estatus;
    acked_offset := v_acked;
    queued_wake_id := CASE WHEN entity_cleared THEN v_queued END;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pw_claim_wake(p_tenant text, p_wake text, p_url text, p_runner_id text, p_lease_ttl_ms integer, p_now timestamp with time zone) RETURNS TABLE(wake_id text, consumer_id text, epoch bigint, entity_url text, stream_path text, acked_offset text, claim_token text, lease_expires_at timestamp with time zone, lease_ttl_ms integer)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    v_depoch  bigint;
    v_acked   bigint;
    v_active  text;
    v_aepoch  bigint;
    v_alease  timestamptz;
    v_status  text;
    v_stream  text;
    v_end     record;
    v_epoch   bigint;
    v_lease   timestamptz;
    v_token   text;
BEGIN
    -- Lock the dispatch row (reading the entity with it), then re-check
    -- what the pick assumed. A claim never waits for a dispatch lock
    -- (someone is releasing, sending to or sweeping that entity): it
    -- moves on. Holding the queue entry while waiting for the dispatch
    -- lock would invert the fixed order and could deadlock with
    -- stop_entity or a sweep.
    SELECT d.epoch, d.acked_offset, d.active_consumer_id, d.active_epoch, d.active_lease_expires_at,
           e.status, e.main_stream
      INTO v_depoch, v_acked, v_active, v_aepoch, v_alease, v_status, v_stream
      FROM entity_dispatch_state d
      JOIN entities e ON e.tenant_id = d.tenant_id AND e.url = d.entity_url
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url
       FOR UPDATE OF d SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF v_status IN ('stopping', 'stopped') THEN
        UPDATE wakes w SET status = 'superseded', finished_at = p_now, updated_at = p_now
         WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake AND w.status = 'queued';
        RETURN;
    END IF;
    IF v_active IS NOT NULL AND v_alease > p_now THEN
        RETURN;
    END IF;

    IF v_active IS NOT NULL THEN
        -- Takeover: the slot's claim lapsed; it ends here as expired,
        -- through the one path that ends claims.
        SELECT * INTO v_end FROM pw_end_claim(p_tenant, v_active, v_aepoch, 'expired', NULL, p_now, true);
        IF NOT v_end.entity_cleared THEN
            RAISE EXCEPTION 'PW008: claim: the lapsed claim %/% in the slot of % did not end',
                v_active, v_aepoch, p_url USING ERRCODE = 'PW008';
        END IF;
    END IF;

    v_epoch := v_depoch + 1;
    v_lease := p_now + p_lease_ttl_ms * interval '1 millisecond';
    v_token := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');

    -- The claim's writes, one statement each in the fixed lock order
    -- (dispatch state, claim, entity, wake), each under its guard. We
    -- hold the dispatch row and the wake's queue entry (every change of
    -- a queued wake's status deletes that entry, and only holders of
    -- the dispatch lock change it), so no guard can fail; if one did,
    -- the whole claim rolls back.
    UPDATE entity_dispatch_state d
       SET epoch = v_epoch, active_consumer_id = p_wake, active_epoch = v_epoch,
           active_runner_id = p_runner_id, active_claimed_at = p_now,
           active_lease_expires_at = v_lease, outstanding_wake_id = p_wake,
           updated_at = p_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url
       AND d.active_consumer_id IS NULL AND d.epoch = v_depoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW008: claim: the dispatch slot of % changed under its lock', p_url USING ERRCODE = 'PW008';
    END IF;
    INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path,
                                 runner_id, status, claim_token_hash, lease_ttl_ms, claimed_at,
                                 last_heartbeat_at, lease_expires_at, updated_at)
    VALUES (p_tenant, p_wake, v_epoch, p_wake, p_url, v_stream,
            p_runner_id, 'active', sha256(convert_to(v_token, 'UTF8')), p_lease_ttl_ms, p_now,
            p_now, v_lease, p_now);
    UPDATE entities e SET status = 'running', updated_at = p_now
     WHERE e.tenant_id = p_tenant AND e.url = p_url AND e.status IN ('idle', 'running');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW008: claim: entity % stopped under its dispatch lock', p_url USING ERRCODE = 'PW008';
    END IF;
    UPDATE wakes w
       SET status = 'claimed', claimed_at = p_now, consumer_id = p_wake,
           epoch = v_epoch, updated_at = p_now
     WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake AND w.status = 'queued';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW008: claim: wake % is no longer queued', p_wake USING ERRCODE = 'PW008';
    END IF;

    wake_id := p_wake;
    consumer_id := p_wake;
    epoch := v_epoch;
    entity_url := p_url;
    stream_path := v_stream;
    acked_offset := pw_offset(v_acked);
    claim_token := v_token;
    lease_expires_at := v_lease;
    lease_ttl_ms := p_lease_ttl_ms;
    RETURN NEXT;
END
$$;
-- +goose StatementEnd

DROP FUNCTION pw_write_secret(text);
DROP FUNCTION pw_token_key(text);
DROP TABLE token_keys;

-- Several events of one wake, runner and generation collapse to the first.
DELETE FROM wake_events v
 USING wake_events o
 WHERE o.tenant_id = v.tenant_id AND o.wake_id = v.wake_id AND o.runner_id = v.runner_id
   AND o.generation = v.generation AND o.seq < v.seq;
DROP INDEX wake_events_wake_idx;
ALTER TABLE wake_events DROP CONSTRAINT wake_events_pkey;
ALTER TABLE wake_events ADD CONSTRAINT wake_events_pkey PRIMARY KEY (tenant_id, wake_id, runner_id, generation);
CREATE INDEX wake_events_runner_idx ON wake_events (tenant_id, runner_id, seq);

ALTER TABLE wake_event_pending DROP COLUMN runner_id;
ALTER TABLE wake_event_pending DROP COLUMN forced_at;
ALTER TABLE runners DROP COLUMN wake_stream_read_seq;
ALTER TABLE consumer_claims DROP COLUMN write_token_hash;
