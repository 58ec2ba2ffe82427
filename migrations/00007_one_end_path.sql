-- +goose Up
-- One SQL path to end a claim. A claim ends in three ways: a runner's done
-- or an operator's release (release_claim), the sweeper's expiry
-- (expire_claims), and a claim that takes over an entity whose claim's lease
-- lapsed (claim_next_wake). All three now call pw_end_claim, which holds the
-- one copy of the rule: lock the dispatch row, end the claim under its
-- guard, clear the slot only while it names this claim, move the entity
-- (running -> idle, stopping -> stopped), finish the wake, advance
-- acked_offset (never back) and re-queue a wake when a sent message lies
-- past it. pw_clear_slot, the second copy, is gone; release_claim no longer
-- clears the slot inline. Every step is its own statement, in the fixed lock
-- order (dispatch state, claim, entity, wake): nothing relies on the order
-- in which data-modifying CTEs run.
--
-- claim_next_wake's pick walks the queue's index from where it left off
-- until a wake can be claimed or the queue is exhausted (it gave up after 64
-- skipped wakes), and its final writes re-check their guards.
--
-- claim_request decides, on the database clock, whether a runner's claim
-- request (the wake-callback that recovers a write token after a restart)
-- names the entity's active claim with a live lease.

-- +goose StatementBegin
-- pw_end_claim ends the claim (p_consumer_id, p_epoch) as p_status
-- ('released' or 'expired'). An expiry ends only a claim whose lease has
-- passed at p_now (a heartbeat that won the race keeps its claim). p_acks
-- (a release's [{"stream", "offset"}]) is stored on the claim; the main
-- stream's highest ack, clamped to the stream's tail, advances acked_offset
-- when the claim held the slot. A claim that is not active (or, for an
-- expiry, whose lease is live) is left as it is: ended = false, with the
-- claim's current status. Notifies pullwake_claims at commit when p_notify.
-- Locks, in order: the entity's dispatch row, the claim, the entity, the
-- claim's wake; a re-queue inserts a new wake. Callers may hold the
-- dispatch row already; they must hold nothing later in the order
-- (claim_next_wake holds the queue entry of the wake it is claiming, which
-- this function never touches: that wake is queued, and it is not this
-- claim's).
CREATE FUNCTION pw_end_claim(p_tenant text, p_consumer_id text, p_epoch bigint, p_status text,
                             p_acks jsonb, p_now timestamptz, p_notify boolean DEFAULT true,
                             OUT ended boolean, OUT entity_cleared boolean, OUT claim_status text,
                             OUT entity_url text, OUT stream_path text, OUT entity_status text,
                             OUT acked_offset bigint, OUT queued_wake_id text)
LANGUAGE plpgsql AS $$
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
        RAISE EXCEPTION 'a claim ends as released or expired, not %', coalesce(p_status, 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    IF jsonb_typeof(v_acks) <> 'array' THEN
        RAISE EXCEPTION 'acks must be an array' USING ERRCODE = 'PW008';
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
            RAISE EXCEPTION 'claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
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
-- release_claim ends a claim by its durable identity (consumer, epoch),
-- whatever any server holds in memory, through pw_end_claim: the slot is
-- cleared only if it still names this claim (entity_cleared), and then, in
-- this same transaction, the entity goes idle (or stopped), the wake
-- completes, acked_offset advances to the main-stream ack and a wake is
-- re-queued when a sent message lies past it. A repeated release changes
-- nothing and reports released = false with the claim's current status.
-- p_acks: [{"stream": path, "offset": offset}, ...]. With p_claim_token_hash
-- (the SHA-256 of the token a runner presented) a mismatch is UNAUTHORIZED.
-- It notifies pullwake_claims at commit, so a release from psql reaches
-- every server's memory. The server passes p_notify = false and publishes
-- the same notification itself right after the commit, from a transaction
-- that writes nothing.
CREATE OR REPLACE FUNCTION release_claim(p_consumer_id text, p_epoch bigint, p_acks jsonb DEFAULT '[]',
                                         p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                                         p_claim_token_hash bytea DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (released boolean, entity_cleared boolean, claim_status text, entity_url text,
               stream_path text, entity_status text, acked_offset text, queued_wake_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now  timestamptz := coalesce(p_now, now());
    v_acks jsonb := coalesce(p_acks, '[]'::jsonb);
    v_hash bytea;
    v_r    record;
BEGIN
    IF jsonb_typeof(v_acks) <> 'array' THEN
        RAISE EXCEPTION 'acks must be an array' USING ERRCODE = 'PW008';
    END IF;
    SELECT c.claim_token_hash INTO v_hash FROM consumer_claims c
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
    END IF;
    SELECT * INTO v_r FROM pw_end_claim(p_tenant, p_consumer_id, p_epoch, 'released', v_acks, v_now, p_notify);
    RETURN QUERY SELECT v_r.ended, v_r.entity_cleared, v_r.claim_status, v_r.entity_url, v_r.stream_path,
                        v_r.entity_status, pw_offset(v_r.acked_offset), v_r.queued_wake_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- expire_claims ends every active claim whose lease has passed at p_now,
-- through pw_end_claim (which re-checks the lease under the locks: a
-- heartbeat racing the sweep wins or loses cleanly); a claim holding its
-- entity's slot frees the entity as a release would, without an ack.
-- Returns the claims it expired.
CREATE OR REPLACE FUNCTION expire_claims(p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                                         p_limit integer DEFAULT 1000)
RETURNS TABLE (consumer_id text, epoch bigint, entity_url text, stream_path text,
               entity_cleared boolean, entity_status text, queued_wake_id text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_r   record;
    v_e   record;
BEGIN
    FOR v_r IN
        SELECT c.consumer_id, c.epoch FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.status = 'active' AND c.lease_expires_at <= v_now
         -- Dispatch rows are locked in entity order: two sweeps (the
         -- server's and one from psql) never lock them crosswise.
         ORDER BY c.entity_url, c.epoch
         LIMIT p_limit
    LOOP
        SELECT * INTO v_e FROM pw_end_claim(p_tenant, v_r.consumer_id, v_r.epoch, 'expired', NULL, v_now, true);
        CONTINUE WHEN NOT v_e.ended;
        consumer_id := v_r.consumer_id;
        epoch := v_r.epoch;
        entity_url := v_e.entity_url;
        stream_path := v_e.stream_path;
        entity_cleared := v_e.entity_cleared;
        entity_status := v_e.entity_status;
        queued_wake_id := v_e.queued_wake_id;
        RETURN NEXT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- claim_next_wake hands the runner the oldest queued wake it may take: the
-- wake targets it or any runner, the entity is not stopping or stopped, and
-- no claim with a live lease holds the entity. A claim whose lease lapsed is
-- taken over: pw_end_claim expires it in this transaction. Returns no row
-- when there is no work. The claim token is returned here once; only its
-- hash is kept.
CREATE OR REPLACE FUNCTION claim_next_wake(p_runner_id text, p_lease_ttl_ms integer DEFAULT 30000,
                                           p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (wake_id text, consumer_id text, epoch bigint, entity_url text,
               stream_path text, acked_offset text, claim_token text,
               lease_expires_at timestamptz, lease_ttl_ms integer)
LANGUAGE plpgsql
-- The pick must walk the queue's index in order (00006): no statement of
-- the claim needs a sort.
SET enable_sort = off
AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_admin   text;
    v_after_t timestamptz := '-infinity';
    v_after_w text := '';
    v_created timestamptz;
    v_wake    text;
    v_url     text;
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

    -- The pick walks the queue's index in claim order, each probe starting
    -- just past the previous candidate, until a wake can be claimed or the
    -- queue is exhausted: a claimable wake is found however many wakes
    -- ahead of it are locked by other claims (SKIP LOCKED passes them) or
    -- cannot be taken (their entity's dispatch row is busy, or a live
    -- claim holds it). Every probe is one descent of wake_queue_pkey.
    LOOP
        SELECT q.wake_id, q.entity_url, q.created_at INTO v_wake, v_url, v_created FROM wake_queue q
         WHERE q.tenant_id = p_tenant
           AND (q.created_at, q.wake_id) > (v_after_t, v_after_w)
           AND (q.runner_id IS NULL OR q.runner_id = p_runner_id)
         ORDER BY q.created_at, q.wake_id
         LIMIT 1
         FOR UPDATE OF q SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        v_after_t := v_created;
        v_after_w := v_wake;

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
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
           FOR UPDATE OF d SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        IF v_status IN ('stopping', 'stopped') THEN
            UPDATE wakes w SET status = 'superseded', finished_at = v_now, updated_at = v_now
             WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake AND w.status = 'queued';
            CONTINUE;
        END IF;
        CONTINUE WHEN v_active IS NOT NULL AND v_alease > v_now;

        IF v_active IS NOT NULL THEN
            -- Takeover: the slot's claim lapsed; it ends here as expired,
            -- through the one path that ends claims.
            SELECT * INTO v_end FROM pw_end_claim(p_tenant, v_active, v_aepoch, 'expired', NULL, v_now, true);
            IF NOT v_end.entity_cleared THEN
                RAISE EXCEPTION 'claim_next_wake: the lapsed claim %/% in the slot of % did not end',
                    v_active, v_aepoch, v_url;
            END IF;
        END IF;

        v_epoch := v_depoch + 1;
        v_lease := v_now + p_lease_ttl_ms * interval '1 millisecond';
        v_token := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');

        -- The claim's writes, one statement each in the fixed lock order
        -- (dispatch state, claim, entity, wake), each under its guard. We
        -- hold the dispatch row and the wake's queue entry (every change of
        -- a queued wake's status deletes that entry, and only holders of
        -- the dispatch lock change it), so no guard can fail; if one did,
        -- the whole claim rolls back.
        UPDATE entity_dispatch_state d
           SET epoch = v_epoch, active_consumer_id = v_wake, active_epoch = v_epoch,
               active_runner_id = p_runner_id, active_claimed_at = v_now,
               active_lease_expires_at = v_lease, outstanding_wake_id = v_wake,
               updated_at = v_now
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
           AND d.active_consumer_id IS NULL AND d.epoch = v_depoch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'claim_next_wake: the dispatch slot of % changed under its lock', v_url;
        END IF;
        INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path,
                                     runner_id, status, claim_token_hash, lease_ttl_ms, claimed_at,
                                     last_heartbeat_at, lease_expires_at, updated_at)
        VALUES (p_tenant, v_wake, v_epoch, v_wake, v_url, v_stream,
                p_runner_id, 'active', sha256(convert_to(v_token, 'UTF8')), p_lease_ttl_ms, v_now,
                v_now, v_lease, v_now);
        UPDATE entities e SET status = 'running', updated_at = v_now
         WHERE e.tenant_id = p_tenant AND e.url = v_url AND e.status IN ('idle', 'running');
        IF NOT FOUND THEN
            RAISE EXCEPTION 'claim_next_wake: entity % stopped under its dispatch lock', v_url;
        END IF;
        UPDATE wakes w
           SET status = 'claimed', claimed_at = v_now, consumer_id = v_wake,
               epoch = v_epoch, updated_at = v_now
         WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake AND w.status = 'queued';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'claim_next_wake: wake % is no longer queued', v_wake;
        END IF;

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
-- claim_request answers a runner's claim request (the wake-callback that
-- recovers a claim's write token, e.g. after a server restart): active is
-- true only when (consumer, epoch) is active, its entity's dispatch slot
-- names it, its lease has not passed at p_now (the database clock when
-- NULL) and, when p_wake_id is given, it is that wake's claim. Otherwise
-- reason says why: not_active, not_in_slot, lease_passed or wrong_wake.
-- An unknown claim is CLAIM_NOT_FOUND; with p_claim_token_hash a mismatch
-- is UNAUTHORIZED. It changes nothing.
CREATE FUNCTION claim_request(p_consumer_id text, p_epoch bigint, p_wake_id text DEFAULT NULL,
                              p_claim_token_hash bytea DEFAULT NULL, p_now timestamptz DEFAULT NULL,
                              p_tenant text DEFAULT 'default')
RETURNS TABLE (active boolean, reason text, entity_url text, stream_path text, runner_id text,
               lease_expires_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_c      consumer_claims%ROWTYPE;
    v_slot   boolean;
    v_reason text;
BEGIN
    SELECT c.* INTO v_c FROM consumer_claims c
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_c.claim_token_hash THEN
        RAISE EXCEPTION 'wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
    END IF;
    SELECT coalesce(d.active_consumer_id = v_c.consumer_id AND d.active_epoch = v_c.epoch, false)
      INTO v_slot FROM entity_dispatch_state d
     WHERE d.tenant_id = p_tenant AND d.entity_url = v_c.entity_url;
    v_reason := CASE
        WHEN p_wake_id IS NOT NULL AND p_wake_id IS DISTINCT FROM v_c.wake_id THEN 'wrong_wake'
        WHEN v_c.status <> 'active' THEN 'not_active'
        WHEN NOT coalesce(v_slot, false) THEN 'not_in_slot'
        WHEN v_c.lease_expires_at <= v_now THEN 'lease_passed'
    END;
    RETURN QUERY SELECT v_reason IS NULL, v_reason, v_c.entity_url, v_c.stream_path, v_c.runner_id,
                        v_c.lease_expires_at;
END
$$;
-- +goose StatementEnd

DROP FUNCTION pw_clear_slot(text, text, text, text, bigint, timestamptz);

-- +goose Down
-- Back to 00006: the three ways of ending a claim as they were.
DROP FUNCTION claim_request(text, bigint, text, bytea, timestamptz, text);

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
-- expire_claims ends every active claim whose lease has passed at p_now.
-- Each is re-checked under its locks (a heartbeat racing the sweep wins or
-- loses cleanly); a claim holding its entity's slot frees the entity as a
-- release would, without an ack. Returns the claims it expired.
CREATE OR REPLACE FUNCTION expire_claims(p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
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

    -- The pick takes the oldest queued wake no other claim has locked; the
    -- dispatch row, locked next, decides whether its entity is free. It
    -- used to probe the dispatch row for every candidate, the ones other
    -- claims hold locked included: with N runners claiming at once that
    -- was up to N probes a pick for rows it then skipped. A queued wake
    -- whose entity a claim with a live lease holds is rare (a send queues
    -- no wake under a live lease, and a lapsed lease never comes back), so
    -- skipping such wakes here one by one costs little; the bound keeps a
    -- claim short if many pile up at the head.
    FOR i IN 1..64 LOOP
        -- The queue holds only queued wakes (wakes_queue_sync keeps it),
        -- and the sweeper vacuums it, so the oldest entries are found
        -- without walking past the entries of wakes claimed since.
        SELECT q.wake_id, q.entity_url INTO v_wake, v_url FROM wake_queue q
         WHERE q.tenant_id = p_tenant
           AND (q.runner_id IS NULL OR q.runner_id = p_runner_id)
           AND q.wake_id <> ALL (v_skip)
         ORDER BY q.created_at, q.wake_id
         LIMIT 1
         FOR UPDATE OF q SKIP LOCKED;
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
        -- the wake's queue entry are locked already (every change of a
        -- queued wake's status deletes that entry, so it is still queued); the entity's row is taken last and
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

ALTER FUNCTION claim_next_wake(text, integer, timestamptz, text) SET enable_sort = off;
DROP FUNCTION pw_end_claim(text, text, bigint, text, jsonb, timestamptz, boolean);
