-- +goose Up
-- Errors that tell the truth, and two edges of the wake-callback.
--
-- 1. Every RAISE EXCEPTION of a pullwake function starts its message with
--    its SQLSTATE ('PW006: claim wake-3/2 not found'), so psql shows the
--    code at its default verbosity; the internal invariant checks of
--    claim_next_wake, which had none, raise assert_failure (P0004). Only
--    the messages change in the functions below; their logic is that of
--    their newest definition (named in the Down section), except:
--
-- 2. CLAIM_SUPERSEDED (PW014). A callback's (consumer, epoch) that names no
--    claim, from a consumer that has one, with an epoch older than the
--    newest claim of that consumer's entity, is superseded, not unknown:
--    release_claim, heartbeat_claim and claim_request raise PW014 naming the
--    newest epoch (pw_claim_missing). The claim token, when given, must be
--    the token of a claim of that consumer (else UNAUTHORIZED). An epoch
--    newer than every claim of the entity stays CLAIM_NOT_FOUND, as does a
--    consumer with no claim. A late or repeated done on a claim that exists
--    is unchanged: released = false with its status; a heartbeat on an
--    ended claim stays CLAIM_NOT_ACTIVE.
--
-- 3. Acks are checked by release_claim before anything changes (PW008,
--    naming the ack): every ack is an object naming the claim's own stream
--    (with or without the /v1/stream prefix) and a 16-digit offset no
--    further than the stream's tail; '-1' acks nothing and is refused. The
--    tail only grows, so a done retried with the acks that once passed
--    passes again (and answers released = false).

-- +goose StatementBegin
-- pw_claim_missing raises the error of a callback whose (consumer, epoch)
-- names no claim (release_claim, heartbeat_claim and claim_request call it
-- then): CLAIM_SUPERSEDED (PW014) when the consumer has a claim and p_epoch
-- is older than the newest epoch of that claim's entity, provided
-- p_claim_token_hash, when given, is the hash of a claim of that consumer
-- (else UNAUTHORIZED, PW013); CLAIM_NOT_FOUND (PW006) otherwise: a consumer
-- without a claim, or an epoch newer than every claim. It never returns.
CREATE FUNCTION pw_claim_missing(p_tenant text, p_consumer_id text, p_epoch bigint,
                                 p_claim_token_hash bytea DEFAULT NULL) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_url    text;
    v_newest bigint;
BEGIN
    SELECT c.entity_url, greatest(c.epoch, d.epoch) INTO v_url, v_newest
      FROM consumer_claims c
      LEFT JOIN entity_dispatch_state d ON d.tenant_id = c.tenant_id AND d.entity_url = c.entity_url
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id
     ORDER BY c.epoch DESC
     LIMIT 1;
    IF FOUND AND p_epoch < v_newest THEN
        IF p_claim_token_hash IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM consumer_claims c
             WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id
               AND c.claim_token_hash = p_claim_token_hash) THEN
            RAISE EXCEPTION 'PW013: wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
        END IF;
        RAISE EXCEPTION 'PW014: claim %/% is superseded: the newest claim of % has epoch %',
            p_consumer_id, p_epoch, v_url, v_newest USING ERRCODE = 'PW014';
    END IF;
    RAISE EXCEPTION 'PW006: claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_parse_offset turns a client offset into a seq: '-1' is the start,
-- otherwise exactly 16 digits as pw_offset makes them.
CREATE OR REPLACE FUNCTION pw_parse_offset(p_offset text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_offset = '-1' THEN
        RETURN 0;
    END IF;
    IF p_offset IS NULL OR p_offset !~ '^[0-9]{16}$' THEN
        RAISE EXCEPTION 'PW008: invalid offset %', coalesce(quote_literal(p_offset), 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    RETURN p_offset::bigint;
END
$$;
-- +goose StatementEnd

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
CREATE OR REPLACE FUNCTION pw_end_claim(p_tenant text, p_consumer_id text, p_epoch bigint, p_status text,
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
-- release_claim ends a claim by its durable identity (consumer, epoch),
-- whatever any server holds in memory, through pw_end_claim: the slot is
-- cleared only if it still names this claim (entity_cleared), and then, in
-- this same transaction, the entity goes idle (or stopped), the wake
-- completes, acked_offset advances to the main-stream ack and a wake is
-- re-queued when a sent message lies past it. A repeated release changes
-- nothing and reports released = false with the claim's current status.
-- p_acks: [{"stream": path, "offset": offset}, ...] ("path" may spell
-- "stream"), checked before anything changes: each names the claim's own
-- stream (with or without the /v1/stream prefix) and an offset of 16 digits
-- no further than its tail; anything else is INVALID_REQUEST naming the ack
-- (the tail only grows, so a retried done's acks pass again). With
-- p_claim_token_hash (the SHA-256 of the token a runner presented) a
-- mismatch is UNAUTHORIZED. An unknown (consumer, epoch) is CLAIM_NOT_FOUND,
-- or CLAIM_SUPERSEDED when older than the consumer's entity's newest claim
-- (pw_claim_missing). It notifies pullwake_claims at commit, so a release
-- from psql reaches every server's memory. The server passes p_notify =
-- false and publishes the same notification itself right after the commit,
-- from a transaction that writes nothing.
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
    v_path text;
    v_tail bigint;
    v_a    jsonb;
    v_i    bigint;
    v_s    jsonb;
    v_o    jsonb;
    v_r    record;
BEGIN
    IF jsonb_typeof(v_acks) <> 'array' THEN
        RAISE EXCEPTION 'PW008: acks must be an array' USING ERRCODE = 'PW008';
    END IF;
    SELECT c.claim_token_hash, c.stream_path INTO v_hash, v_path FROM consumer_claims c
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
    IF NOT FOUND THEN
        PERFORM pw_claim_missing(p_tenant, p_consumer_id, p_epoch, p_claim_token_hash);
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'PW013: wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
    END IF;
    -- The acks, before anything changes. The tail is read without a lock:
    -- it only grows (pw_end_claim still clamps to the tail it reads).
    IF jsonb_array_length(v_acks) > 0 THEN
        v_tail := coalesce((SELECT s.tail_seq FROM streams s
                             WHERE s.tenant_id = p_tenant AND s.path = v_path), 0);
        FOR v_a, v_i IN SELECT a.value, a.ord - 1
                          FROM jsonb_array_elements(v_acks) WITH ORDINALITY AS a(value, ord) LOOP
            IF jsonb_typeof(v_a) <> 'object' THEN
                RAISE EXCEPTION 'PW008: an ack is an object {"stream", "offset"}, not % (acks[%])',
                    jsonb_typeof(v_a), v_i USING ERRCODE = 'PW008';
            END IF;
            v_s := coalesce(nullif(v_a->'stream', 'null'), v_a->'path');
            IF v_s IS NULL OR jsonb_typeof(v_s) <> 'string' THEN
                RAISE EXCEPTION 'PW008: an ack names its stream (or path) as a string (acks[%])', v_i
                    USING ERRCODE = 'PW008';
            END IF;
            IF v_s #>> '{}' NOT IN (v_path, substr(v_path, 11)) THEN
                RAISE EXCEPTION 'PW008: claim %/% owns stream %, not % (acks[%])',
                    p_consumer_id, p_epoch, v_path, quote_literal(v_s #>> '{}'), v_i USING ERRCODE = 'PW008';
            END IF;
            v_o := v_a->'offset';
            IF v_o IS NULL OR jsonb_typeof(v_o) <> 'string' OR v_o #>> '{}' !~ '^(-1|[0-9]{16})$' THEN
                RAISE EXCEPTION 'PW008: invalid offset % (acks[%])',
                    CASE jsonb_typeof(v_o) WHEN 'string' THEN quote_literal(v_o #>> '{}')
                                           ELSE coalesce(v_o::text, 'NULL') END,
                    v_i USING ERRCODE = 'PW008';
            END IF;
            IF v_o #>> '{}' = '-1' THEN
                RAISE EXCEPTION 'PW008: offset -1 acks nothing: ack the offset read up to, or send no ack (acks[%])',
                    v_i USING ERRCODE = 'PW008';
            END IF;
            IF (v_o #>> '{}')::bigint > v_tail THEN
                RAISE EXCEPTION 'PW008: offset % is beyond the tail % of % (acks[%])',
                    v_o #>> '{}', pw_offset(v_tail), v_path, v_i USING ERRCODE = 'PW008';
            END IF;
        END LOOP;
    END IF;
    SELECT * INTO v_r FROM pw_end_claim(p_tenant, p_consumer_id, p_epoch, 'released', v_acks, v_now, p_notify);
    RETURN QUERY SELECT v_r.ended, v_r.entity_cleared, v_r.claim_status, v_r.entity_url, v_r.stream_path,
                        v_r.entity_status, pw_offset(v_r.acked_offset), v_r.queued_wake_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- heartbeat_claim extends an active claim's lease by its TTL (or by
-- p_lease_ttl_ms when given). A claim that is no longer active, or whose
-- lease has passed, cannot be revived: CLAIM_NOT_ACTIVE. With
-- p_claim_token_hash (the server passes the SHA-256 of the presented claim
-- token) a mismatch is UNAUTHORIZED: one round trip checks and acts. An
-- unknown (consumer, epoch) is CLAIM_NOT_FOUND, or CLAIM_SUPERSEDED when
-- older than the consumer's entity's newest claim (pw_claim_missing).
CREATE OR REPLACE FUNCTION heartbeat_claim(p_consumer_id text, p_epoch bigint,
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
        PERFORM pw_claim_missing(p_tenant, p_consumer_id, p_epoch, p_claim_token_hash);
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_hash THEN
        RAISE EXCEPTION 'PW013: wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
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
        RAISE EXCEPTION 'PW007: claim %/% is not active', p_consumer_id, p_epoch USING ERRCODE = 'PW007';
    END IF;
    UPDATE entity_dispatch_state d SET active_lease_expires_at = v_lease, updated_at = v_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
       AND d.active_consumer_id = p_consumer_id AND d.active_epoch = p_epoch;
    RETURN QUERY SELECT v_lease, v_url, v_path;
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
-- An unknown claim is CLAIM_NOT_FOUND, or CLAIM_SUPERSEDED when older than
-- the consumer's entity's newest claim (pw_claim_missing); with
-- p_claim_token_hash a mismatch is UNAUTHORIZED. It changes nothing.
CREATE OR REPLACE FUNCTION claim_request(p_consumer_id text, p_epoch bigint, p_wake_id text DEFAULT NULL,
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
        PERFORM pw_claim_missing(p_tenant, p_consumer_id, p_epoch, p_claim_token_hash);
    END IF;
    IF p_claim_token_hash IS NOT NULL AND p_claim_token_hash IS DISTINCT FROM v_c.claim_token_hash THEN
        RAISE EXCEPTION 'PW013: wrong claim token for claim %/%', p_consumer_id, p_epoch USING ERRCODE = 'PW013';
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
                RAISE EXCEPTION 'P0004: claim_next_wake: the lapsed claim %/% in the slot of % did not end',
                    v_active, v_aepoch, v_url USING ERRCODE = 'P0004';
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
            RAISE EXCEPTION 'P0004: claim_next_wake: the dispatch slot of % changed under its lock', v_url
                USING ERRCODE = 'P0004';
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
            RAISE EXCEPTION 'P0004: claim_next_wake: entity % stopped under its dispatch lock', v_url
                USING ERRCODE = 'P0004';
        END IF;
        UPDATE wakes w
           SET status = 'claimed', claimed_at = v_now, consumer_id = v_wake,
               epoch = v_epoch, updated_at = v_now
         WHERE w.tenant_id = p_tenant AND w.wake_id = v_wake AND w.status = 'queued';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'P0004: claim_next_wake: wake % is no longer queued', v_wake
                USING ERRCODE = 'P0004';
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
-- release_and_claim_next is a done that also claims the runner's next wake,
-- in one transaction: release_claim, then, only if that call released the
-- claim, claim_next_wake for p_runner_id (NULL = the claim's own runner).
-- A steady-state runner cycle is then two commits (append, done) instead of
-- three. The release columns are release_claim's; the next_* columns are
-- claim_next_wake's, all NULL when there is no next wake. A repeated done
-- (released = false) claims nothing: the first call's next claim, if its
-- answer was lost, ends by lease expiry like any unanswered claim.
-- A runner that is unknown or disabled gets no next wake (next_error says
-- why) and its release still commits: the claim runs in a subtransaction.
-- p_claim_token_hash and p_notify are release_claim's.
CREATE OR REPLACE FUNCTION release_and_claim_next(p_consumer_id text, p_epoch bigint, p_acks jsonb DEFAULT '[]',
                                       p_runner_id text DEFAULT NULL, p_lease_ttl_ms integer DEFAULT 30000,
                                       p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                                       p_claim_token_hash bytea DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (released boolean, entity_cleared boolean, claim_status text, entity_url text,
               stream_path text, entity_status text, acked_offset text, queued_wake_id text,
               next_wake_id text, next_consumer_id text, next_epoch bigint, next_entity_url text,
               next_stream_path text, next_acked_offset text, next_claim_token text,
               next_lease_expires_at timestamptz, next_lease_ttl_ms integer, next_error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_r      record;
    v_runner text := p_runner_id;
    v_err    text;
    n_wake   text;
    n_cons   text;
    n_epoch  bigint;
    n_url    text;
    n_path   text;
    n_acked  text;
    n_token  text;
    n_lease  timestamptz;
    n_ttl    integer;
BEGIN
    IF p_lease_ttl_ms IS NULL OR p_lease_ttl_ms <= 0 THEN
        RAISE EXCEPTION 'PW008: lease ttl must be positive, got %', p_lease_ttl_ms USING ERRCODE = 'PW008';
    END IF;
    SELECT * INTO v_r FROM release_claim(p_consumer_id, p_epoch, p_acks, v_now, p_tenant,
                                          p_claim_token_hash, p_notify);
    IF v_r.released THEN
        IF v_runner IS NULL THEN
            SELECT c.runner_id INTO v_runner FROM consumer_claims c
             WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        END IF;
        BEGIN
            SELECT n.wake_id, n.consumer_id, n.epoch, n.entity_url, n.stream_path, n.acked_offset,
                   n.claim_token, n.lease_expires_at, n.lease_ttl_ms
              INTO n_wake, n_cons, n_epoch, n_url, n_path, n_acked, n_token, n_lease, n_ttl
              FROM claim_next_wake(v_runner, p_lease_ttl_ms, v_now, p_tenant) n;
        EXCEPTION
            WHEN SQLSTATE 'PW004' THEN v_err := 'RUNNER_NOT_FOUND';
            WHEN SQLSTATE 'PW005' THEN v_err := 'RUNNER_DISABLED';
        END;
    END IF;
    RETURN QUERY SELECT v_r.released, v_r.entity_cleared, v_r.claim_status, v_r.entity_url,
                        v_r.stream_path, v_r.entity_status, v_r.acked_offset, v_r.queued_wake_id,
                        n_wake, n_cons, n_epoch, n_url, n_path, n_acked, n_token, n_lease, n_ttl, v_err;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- stop_entity stops an idle entity at once and marks a running one
-- stopping (its claim's end stops it). A queued wake is superseded.
CREATE OR REPLACE FUNCTION stop_entity(p_url text, p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
BEGIN
    PERFORM 1 FROM entity_dispatch_state d
      WHERE d.tenant_id = p_tenant AND d.entity_url = p_url FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW001: entity % not found', p_url USING ERRCODE = 'PW001';
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
-- spawn_entity creates an entity, its dispatch row and its main stream.
-- The URL is checked here too (psql callers). With no runner named, the
-- entity type's default dispatch policy decides: its first target of type
-- runner (runnerId or runner_id); none = any enabled runner.
CREATE OR REPLACE FUNCTION spawn_entity(p_url text, p_runner_id text DEFAULT NULL,
                                        p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_stream text := '/v1/stream' || p_url || '/main';
    v_runner text := p_runner_id;
BEGIN
    PERFORM pw_check_entity_url(p_url);
    IF v_runner IS NULL THEN
        SELECT coalesce(t.value ->> 'runnerId', t.value ->> 'runner_id') INTO v_runner
          FROM entity_types et,
               jsonb_array_elements(CASE WHEN jsonb_typeof(et.default_dispatch_policy -> 'targets') = 'array'
                                         THEN et.default_dispatch_policy -> 'targets' ELSE '[]' END)
                 WITH ORDINALITY AS t(value, i)
         WHERE et.tenant_id = p_tenant AND et.name = split_part(p_url, '/', 2)
           AND jsonb_typeof(t.value) = 'object' AND t.value ->> 'type' = 'runner'
           AND coalesce(t.value ->> 'runnerId', t.value ->> 'runner_id') IS NOT NULL
         ORDER BY t.i
         LIMIT 1;
    END IF;
    IF EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_stream) THEN
        RAISE EXCEPTION 'PW002: stream % exists already', v_stream USING ERRCODE = 'PW002';
    END IF;
    BEGIN
        INSERT INTO entities (tenant_id, url, status, main_stream, runner_id, created_at, updated_at)
        VALUES (p_tenant, p_url, 'idle', v_stream, v_runner, v_now, v_now);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'PW002: entity % exists already', p_url USING ERRCODE = 'PW002';
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
-- claim with a live lease holds the entity (its release re-queues). Inbox
-- keys sort by time: msg-in-<unix ms>-<random>.
CREATE OR REPLACE FUNCTION send_to_entity(p_url text, p_payload jsonb, p_from text DEFAULT NULL,
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
        RAISE EXCEPTION 'PW001: entity % not found', p_url USING ERRCODE = 'PW001';
    END IF;
    SELECT e.status, e.main_stream INTO v_status, v_stream FROM entities e
     WHERE e.tenant_id = p_tenant AND e.url = p_url;
    IF v_status IN ('stopping', 'stopped') THEN
        RAISE EXCEPTION 'PW003: entity % is %', p_url, v_status USING ERRCODE = 'PW003';
    END IF;
    v_event := jsonb_build_object(
        'type', 'inbox',
        'key', 'msg-in-' || (extract(epoch FROM v_now) * 1000)::bigint || '-'
               || substr(replace(gen_random_uuid()::text, '-', ''), 1, 12),
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
-- pw_check_entity_url raises INVALID_REQUEST unless p_url is /{type}/{id}
-- with type [a-z][a-z0-9_-]{0,63} and id [A-Za-z0-9._~-]{1,128}.
CREATE OR REPLACE FUNCTION pw_check_entity_url(p_url text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_url IS NULL OR p_url !~ '^/[a-z][a-z0-9_-]{0,63}/[A-Za-z0-9._~-]{1,128}$' THEN
        RAISE EXCEPTION 'PW008: entity url % must be /{type}/{id}: type [a-z][a-z0-9_-]{0,63}, id [A-Za-z0-9._~-]{1,128}',
            coalesce(quote_literal(p_url), 'NULL') USING ERRCODE = 'PW008';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- register_runner registers a runner, or restarts a registered one: the
-- token hash is replaced (the old token stops working), label and kind are
-- updated, admin status, claims and wake stream are kept. The runner's wake
-- stream is created when missing and given the events of the queued wakes
-- it may claim. created says which of the two happened.
CREATE OR REPLACE FUNCTION register_runner(p_id text, p_label text, p_kind text, p_token_hash bytea,
                                p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (created boolean, id text, label text, kind text, admin_status text,
               last_seen_at timestamptz, liveness_lease_expires_at timestamptz, diagnostics jsonb,
               created_at timestamptz, updated_at timestamptz,
               wake_stream text, wake_stream_offset text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_path    text := pw_wake_stream(p_id);
    v_created boolean;
    v_ct      text;
    v_r       runners%ROWTYPE;
BEGIN
    IF p_id IS NULL OR p_id !~ '^[A-Za-z0-9._~-]{1,128}$' THEN
        RAISE EXCEPTION 'PW008: runner id % must match [A-Za-z0-9._~-]{1,128}', coalesce(quote_literal(p_id), 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    IF p_token_hash IS NULL THEN
        RAISE EXCEPTION 'PW008: token hash is required' USING ERRCODE = 'PW008';
    END IF;
    INSERT INTO runners AS r (tenant_id, id, label, kind, token_hash, created_at, updated_at)
    VALUES (p_tenant, p_id, coalesce(p_label, ''), coalesce(p_kind, ''), p_token_hash, v_now, v_now)
    ON CONFLICT (tenant_id, id) DO UPDATE
       SET token_hash = EXCLUDED.token_hash,
           label = coalesce(p_label, r.label), kind = coalesce(p_kind, r.kind),
           updated_at = v_now
    RETURNING (r.xmax = 0) INTO v_created;
    SELECT r.* INTO v_r FROM runners r WHERE r.tenant_id = p_tenant AND r.id = p_id;

    SELECT s.content_type INTO v_ct FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_path;
    IF NOT FOUND THEN
        INSERT INTO streams (tenant_id, path, content_type, accessed_at, created_at, updated_at)
        VALUES (p_tenant, v_path, 'application/json', v_now, v_now, v_now);
    ELSIF pw_media_type(v_ct) <> 'application/json' THEN
        RAISE EXCEPTION 'PW011: stream % exists with content type %, not a wake stream', v_path, v_ct
            USING ERRCODE = 'PW011';
    END IF;
    PERFORM pw_backfill_wake_events(p_tenant, p_id, v_now);

    RETURN QUERY SELECT v_created, v_r.id, v_r.label, v_r.kind, v_r.admin_status, v_r.last_seen_at,
                        v_r.liveness_lease_expires_at, v_r.diagnostics, v_r.created_at, v_r.updated_at,
                        v_path, pw_wake_stream_offset(p_tenant, p_id);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- set_runner_admin_status enables or disables a runner. An enabled runner
-- gets the events of the queued wakes it may claim that its wake stream
-- lacks (wakes for any runner queued while it was disabled).
CREATE OR REPLACE FUNCTION set_runner_admin_status(p_id text, p_admin_status text,
                                        p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF runners
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
BEGIN
    IF p_admin_status IS NULL OR p_admin_status NOT IN ('enabled', 'disabled') THEN
        RAISE EXCEPTION 'PW008: admin status must be enabled or disabled, got %', coalesce(p_admin_status, 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    UPDATE runners r SET admin_status = p_admin_status, updated_at = v_now
     WHERE r.tenant_id = p_tenant AND r.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW004: runner % not found', p_id USING ERRCODE = 'PW004';
    END IF;
    IF p_admin_status = 'enabled' THEN
        PERFORM pw_backfill_wake_events(p_tenant, p_id, v_now);
    END IF;
    RETURN QUERY SELECT * FROM runners r WHERE r.tenant_id = p_tenant AND r.id = p_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- purge_history deletes finished history older than p_older_than (measured
-- back from p_now): claims that are no longer active (released, expired,
-- failed) and wakes that are completed, expired or superseded. One call
-- deletes at most p_batch rows of each table, oldest first, walking the
-- partial indexes consumer_claims_finished_idx and wakes_finished_idx, and
-- skipping rows another transaction holds locked. It is one short
-- transaction; a caller (the sweeper) repeats it while a count equals
-- p_batch. Active claims, queued and claimed wakes are never touched.
-- A done for a claim purged here gets CLAIM_NOT_FOUND instead of the
-- idempotent released = false: keep the age well above any retry window.
CREATE OR REPLACE FUNCTION purge_history(p_older_than interval, p_batch integer DEFAULT 1000,
                              p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (claims_deleted integer, wakes_deleted integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz := coalesce(p_now, now()) - p_older_than;
    v_claims integer;
    v_wakes  integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'PW008: retention age must be zero or more, got %', p_older_than USING ERRCODE = 'PW008';
    END IF;
    IF p_batch IS NULL OR p_batch <= 0 THEN
        RAISE EXCEPTION 'PW008: batch must be positive, got %', p_batch USING ERRCODE = 'PW008';
    END IF;

    -- The batch is picked through the partial index and locked, then
    -- deleted by ctid (a Tid Scan: a join back to the table by key can be
    -- planned as a hash join over the whole table). The locks pin the
    -- ctids; the DELETE re-checks the guard all the same.
    DELETE FROM consumer_claims c
     WHERE c.ctid = ANY (ARRAY(
               SELECT k.ctid FROM consumer_claims k
                WHERE k.tenant_id = p_tenant AND k.status <> 'active' AND k.updated_at < v_cutoff
                ORDER BY k.updated_at
                LIMIT p_batch
                FOR UPDATE SKIP LOCKED))
       AND c.tenant_id = p_tenant AND c.status <> 'active' AND c.updated_at < v_cutoff;
    GET DIAGNOSTICS v_claims = ROW_COUNT;

    DELETE FROM wakes w
     WHERE w.ctid = ANY (ARRAY(
               SELECT k.ctid FROM wakes k
                WHERE k.tenant_id = p_tenant AND k.status IN ('completed', 'expired', 'superseded')
                  AND k.finished_at < v_cutoff
                ORDER BY k.finished_at
                LIMIT p_batch
                FOR UPDATE SKIP LOCKED))
       AND w.tenant_id = p_tenant AND w.status IN ('completed', 'expired', 'superseded')
       AND w.finished_at < v_cutoff;
    GET DIAGNOSTICS v_wakes = ROW_COUNT;

    RETURN QUERY SELECT v_claims, v_wakes;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- purge_wake_events deletes the events of finished wakes (completed,
-- expired, superseded, or already purged) older than p_older_than, with
-- their wake-stream messages; at most p_batch a call. The newest message of
-- a wake stream is kept, so a reader behind never finds its whole remaining
-- range gone. Offsets are never reused: the stream's tail is untouched.
CREATE OR REPLACE FUNCTION purge_wake_events(p_older_than interval, p_batch integer DEFAULT 1000,
                                  p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_cutoff timestamptz := coalesce(p_now, now()) - p_older_than;
    v_n      integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'PW008: retention age must be zero or more, got %', p_older_than USING ERRCODE = 'PW008';
    END IF;
    IF p_batch IS NULL OR p_batch <= 0 THEN
        RAISE EXCEPTION 'PW008: batch must be positive, got %', p_batch USING ERRCODE = 'PW008';
    END IF;
    WITH gone AS (
        DELETE FROM wake_events v
         WHERE v.ctid = ANY (ARRAY(
                   SELECT k.ctid FROM wake_events k
                     LEFT JOIN wakes w ON w.tenant_id = k.tenant_id AND w.wake_id = k.wake_id
                     JOIN streams s ON s.tenant_id = k.tenant_id AND s.path = pw_wake_stream(k.runner_id)
                    WHERE k.tenant_id = p_tenant AND k.created_at < v_cutoff
                      AND (w.wake_id IS NULL OR w.status IN ('completed', 'expired', 'superseded')
                                                AND w.finished_at < v_cutoff)
                      AND k.seq < s.tail_seq
                    ORDER BY k.created_at
                    LIMIT p_batch
                    FOR UPDATE OF k SKIP LOCKED))
        RETURNING v.tenant_id, v.runner_id, v.seq
    )
    DELETE FROM stream_messages m
     USING gone g
     WHERE m.tenant_id = g.tenant_id AND m.path = pw_wake_stream(g.runner_id) AND m.seq = g.seq;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_append appends raw messages to a stream: it locks the stream
-- row (serializing appends per stream), takes the next seqs and inserts the
-- rows. It checks nothing else; callers check content type, closure, owner.
CREATE OR REPLACE FUNCTION pw_stream_append(p_tenant text, p_path text, p_data bytea[], p_now timestamptz)
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
        RAISE EXCEPTION 'PW009: stream % not found', p_path USING ERRCODE = 'PW009';
    END IF;
    INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
    SELECT p_tenant, p_path, v_tail - v_n + u.i, u.d, p_now
      FROM unnest(p_data) WITH ORDINALITY AS u(d, i);
    RETURN v_tail;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_create as in 00003, plus: a soft-deleted path (or an expired
-- stream that forks still read) is a 'conflict' and stays; an expired or
-- soft-deleted stream that nothing reads any more is collected and the path
-- created afresh; an existing fork is a 'conflict' for a plain PUT (its
-- configuration includes its source).
CREATE OR REPLACE FUNCTION pw_stream_create(p_tenant text, p_path text, p_content_type text,
                                            p_ttl_seconds bigint, p_expires_at timestamptz,
                                            p_closed boolean, p_data bytea[], p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, content_type text, tail_seq bigint, closed boolean, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_s   streams%ROWTYPE;
BEGIN
    FOR attempt IN 1..2 LOOP
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_path FOR UPDATE;
        IF FOUND AND v_s.entity_url IS NULL
           AND (v_s.deleted_at IS NOT NULL OR pw_stream_expired(v_s, v_now)) THEN
            IF pw_stream_remove(p_tenant, p_path, v_now) = 'soft_deleted' THEN
                RETURN QUERY SELECT 'conflict'::text, v_s.content_type, v_s.tail_seq, true, v_s.created_at;
                RETURN;
            END IF;
        ELSIF FOUND THEN
            IF v_s.entity_url IS NOT NULL THEN
                RETURN QUERY SELECT 'forbidden'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            ELSIF v_s.forked_from IS NULL
                  AND pw_media_type(v_s.content_type) = pw_media_type(p_content_type)
                  AND v_s.ttl_seconds IS NOT DISTINCT FROM p_ttl_seconds
                  AND v_s.expires_at IS NOT DISTINCT FROM p_expires_at
                  AND v_s.closed = p_closed THEN
                RETURN QUERY SELECT 'exists'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            ELSE
                RETURN QUERY SELECT 'conflict'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            END IF;
            RETURN;
        END IF;
        INSERT INTO streams AS s (tenant_id, path, content_type, ttl_seconds, expires_at,
                                  accessed_at, created_at, updated_at)
        VALUES (p_tenant, p_path, p_content_type, p_ttl_seconds, p_expires_at, v_now, v_now, v_now)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            IF coalesce(cardinality(p_data), 0) > 0 THEN
                PERFORM pw_stream_append(p_tenant, p_path, p_data, v_now);
            END IF;
            UPDATE streams s SET closed = p_closed
             WHERE s.tenant_id = p_tenant AND s.path = p_path
            RETURNING s.* INTO v_s;
            RETURN QUERY SELECT 'created'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        -- A concurrent PUT created it first: compare against that one.
    END LOOP;
    RAISE EXCEPTION '40001: stream % changed concurrently', p_path USING ERRCODE = '40001';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_fork creates the fork p_path of p_source (PUT with
-- Stream-Forked-From), or confirms an identical one. No message of the
-- source is copied: the fork row records its ancestry segments and starts
-- its tail at the fork point.
--   p_offset:      the fork offset as a seq; NULL = the source's tail.
--   p_sub_offset:  Stream-Fork-Sub-Offset (0 = none). For application/json
--                  sources it counts messages past p_offset; every JSON
--                  message has its own offset here, so that is the fork
--                  point p_offset + n (refused past the tail). For other
--                  types it counts bytes of the next message (the next
--                  append): all of them inherits that message, fewer store
--                  that prefix as the fork's first own message (the only
--                  bytes a fork ever copies, at most one message), more are
--                  refused.
--   p_content_type: NULL = the source's; else it must match it.
--   p_ttl_seconds, p_expires_at: both NULL = the source's (protocol table).
-- An existing stream at p_path is 'exists' when it is a fork of the same
-- source, offset and sub-offset (an omitted offset meaning the source's
-- tail now) and any given content type, lifetime and closure match; else
-- 'conflict'. Statuses: created | exists | conflict | forbidden |
-- source_not_found | source_gone | content_type | bad_offset |
-- bad_sub_offset | too_deep.
CREATE OR REPLACE FUNCTION pw_stream_fork(p_tenant text, p_path text, p_source text, p_offset bigint,
                               p_sub_offset bigint, p_content_type text, p_ttl_seconds bigint,
                               p_expires_at timestamptz, p_closed boolean, p_data bytea[],
                               p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, content_type text, tail_seq bigint, closed boolean, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_sub     bigint := coalesce(p_sub_offset, 0);
    v_t       streams%ROWTYPE;
    v_s       streams%ROWTYPE;
    v_own     bigint;
    v_at      bigint;
    v_point   bigint;
    v_msg     bytea;
    v_partial bytea;
    v_src     text;
    v_paths   text[];
    v_upto    bigint[];
BEGIN
    FOR attempt IN 1..2 LOOP
        -- The target path.
        SELECT t.* INTO v_t FROM streams t
         WHERE t.tenant_id = p_tenant AND t.path = p_path FOR UPDATE;
        IF FOUND AND v_t.entity_url IS NULL
           AND (v_t.deleted_at IS NOT NULL OR pw_stream_expired(v_t, v_now)) THEN
            IF pw_stream_remove(p_tenant, p_path, v_now) = 'soft_deleted' THEN
                RETURN QUERY SELECT 'conflict'::text, v_t.content_type, v_t.tail_seq, true, v_t.created_at;
                RETURN;
            END IF;
        ELSIF FOUND THEN
            IF v_t.entity_url IS NOT NULL THEN
                RETURN QUERY SELECT 'forbidden'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            ELSIF v_t.forked_from = p_source AND v_t.fork_sub_offset = v_sub
                  AND v_t.fork_offset = coalesce(p_offset,
                          (SELECT s.tail_seq FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_source))
                  AND (p_content_type IS NULL OR pw_media_type(p_content_type) = pw_media_type(v_t.content_type))
                  AND ((p_ttl_seconds IS NULL AND p_expires_at IS NULL)
                       OR (v_t.ttl_seconds IS NOT DISTINCT FROM p_ttl_seconds
                           AND v_t.expires_at IS NOT DISTINCT FROM p_expires_at))
                  AND v_t.closed = p_closed THEN
                RETURN QUERY SELECT 'exists'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            ELSE
                RETURN QUERY SELECT 'conflict'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            END IF;
            RETURN;
        END IF;

        -- The source: KEY SHARE keeps it from being deleted until commit
        -- (the fork's foreign key would take the same lock) and lets its
        -- appends go on: they only add seqs past the fork point.
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_source FOR KEY SHARE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'source_not_found'::text, ''::text, 0::bigint, false, v_now;
            RETURN;
        END IF;
        IF v_s.deleted_at IS NOT NULL OR (v_s.entity_url IS NULL AND pw_stream_expired(v_s, v_now)) THEN
            RETURN QUERY SELECT CASE WHEN pw_stream_referenced(p_tenant, p_source, v_now)
                                     THEN 'source_gone' ELSE 'source_not_found' END::text,
                                v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        IF p_content_type IS NOT NULL AND pw_media_type(p_content_type) <> pw_media_type(v_s.content_type) THEN
            RETURN QUERY SELECT 'content_type'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        v_at := coalesce(p_offset, v_s.tail_seq);
        IF v_at < 0 OR v_at > v_s.tail_seq THEN
            RETURN QUERY SELECT 'bad_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        v_own := coalesce(v_s.fork_upto[cardinality(v_s.fork_upto)], 0);
        v_point := v_at;
        IF v_sub > 0 AND pw_media_type(v_s.content_type) = 'application/json' THEN
            IF v_at + v_sub > v_s.tail_seq THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            v_point := v_at + v_sub;
        ELSIF v_sub > 0 THEN
            IF v_at + 1 > v_s.tail_seq THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            -- The next message as the source reads it: its own, or an ancestor's.
            v_src := p_source;
            IF v_at + 1 <= v_own THEN
                SELECT g.p INTO v_src
                  FROM unnest(v_s.fork_paths, v_s.fork_upto) WITH ORDINALITY AS g(p, u, i)
                 WHERE g.u >= v_at + 1 ORDER BY g.i LIMIT 1;
            END IF;
            SELECT m.data INTO v_msg FROM stream_messages m
             WHERE m.tenant_id = p_tenant AND m.path = v_src AND m.seq = v_at + 1;
            IF v_msg IS NULL OR v_sub > octet_length(v_msg) THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            IF v_sub = octet_length(v_msg) THEN
                v_point := v_at + 1;
            ELSE
                v_partial := substring(v_msg FROM 1 FOR v_sub::integer);
            END IF;
        END IF;

        -- Ancestry: the source's segments that reach below the fork point
        -- (the last one cut at it), then the source's own part if the fork
        -- point lies in it.
        SELECT coalesce(array_agg(g.p ORDER BY g.i), '{}'), coalesce(array_agg(least(g.u, v_point) ORDER BY g.i), '{}')
          INTO v_paths, v_upto
          FROM unnest(v_s.fork_paths, v_s.fork_upto) WITH ORDINALITY AS g(p, u, i)
         WHERE coalesce(v_s.fork_upto[g.i - 1], 0) < v_point;
        IF v_point > v_own THEN
            v_paths := v_paths || p_source;
            v_upto := v_upto || v_point;
        END IF;
        IF cardinality(v_paths) > pw_fork_max_segments() THEN
            RETURN QUERY SELECT 'too_deep'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;

        INSERT INTO streams AS s (tenant_id, path, content_type, tail_seq, ttl_seconds, expires_at,
                                  accessed_at, created_at, updated_at, forked_from, fork_offset,
                                  fork_sub_offset, fork_paths, fork_upto)
        SELECT p_tenant, p_path, v_s.content_type,
               v_point + CASE WHEN v_partial IS NULL THEN 0 ELSE 1 END,
               CASE WHEN p_ttl_seconds IS NULL AND p_expires_at IS NULL THEN v_s.ttl_seconds ELSE p_ttl_seconds END,
               CASE WHEN p_ttl_seconds IS NULL AND p_expires_at IS NULL THEN v_s.expires_at ELSE p_expires_at END,
               v_now, v_now, v_now, p_source, v_at, v_sub, v_paths, v_upto
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            IF v_partial IS NOT NULL THEN
                INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
                VALUES (p_tenant, p_path, v_point + 1, v_partial, v_now);
            END IF;
            IF coalesce(cardinality(p_data), 0) > 0 THEN
                PERFORM pw_stream_append(p_tenant, p_path, p_data, v_now);
            END IF;
            UPDATE streams s SET closed = p_closed
             WHERE s.tenant_id = p_tenant AND s.path = p_path
            RETURNING s.* INTO v_t;
            RETURN QUERY SELECT 'created'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            RETURN;
        END IF;
        -- A concurrent PUT created the path first: compare against it.
    END LOOP;
    RAISE EXCEPTION '40001: stream % changed concurrently', p_path USING ERRCODE = '40001';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION release_claims(p_consumer_ids text[], p_epochs bigint[], p_acks jsonb[],
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
        RAISE EXCEPTION 'PW008: release_claims: the arrays differ in length' USING ERRCODE = 'PW008';
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
CREATE OR REPLACE FUNCTION claim_next_wakes(p_runner_ids text[], p_lease_ttl_ms integer[],
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
        RAISE EXCEPTION 'PW008: claim_next_wakes: the arrays differ in length' USING ERRCODE = 'PW008';
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
CREATE OR REPLACE FUNCTION pw_stream_writes(p_tenant text, p_paths text[], p_content_types text[],
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
        RAISE EXCEPTION 'PW008: pw_stream_writes: the arrays differ in length' USING ERRCODE = 'PW008';
    END IF;
    FOR i IN 1..v_n LOOP
        IF p_counts[i] IS NULL OR p_counts[i] < 0 THEN
            RAISE EXCEPTION 'PW008: pw_stream_writes: item % has no message count', i USING ERRCODE = 'PW008';
        END IF;
        v_first[i] := v_acc + 1;
        v_acc := v_acc + p_counts[i];
    END LOOP;
    IF v_acc <> coalesce(cardinality(p_data), 0) THEN
        RAISE EXCEPTION 'PW008: pw_stream_writes: the counts add up to %, the data has % messages',
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
-- Back to 00012: the functions as 00002, 00004, 00007, 00008, 00010 and
-- 00012 last defined them (messages without codes, acks beyond the tail
-- clamped, acks of other streams ignored, no CLAIM_SUPERSEDED).
-- +goose StatementBegin
-- pw_parse_offset turns a client offset into a seq: '-1' is the start,
-- otherwise exactly 16 digits as pw_offset makes them.
CREATE OR REPLACE FUNCTION pw_parse_offset(p_offset text) RETURNS bigint
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
CREATE OR REPLACE FUNCTION pw_end_claim(p_tenant text, p_consumer_id text, p_epoch bigint, p_status text,
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
-- heartbeat_claim extends an active claim's lease by its TTL (or by
-- p_lease_ttl_ms when given). A claim that is no longer active, or whose
-- lease has passed, cannot be revived: CLAIM_NOT_ACTIVE. With
-- p_claim_token_hash (the server passes the SHA-256 of the presented claim
-- token) a mismatch is UNAUTHORIZED: one round trip checks and acts.
CREATE OR REPLACE FUNCTION heartbeat_claim(p_consumer_id text, p_epoch bigint,
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
-- claim_request answers a runner's claim request (the wake-callback that
-- recovers a claim's write token, e.g. after a server restart): active is
-- true only when (consumer, epoch) is active, its entity's dispatch slot
-- names it, its lease has not passed at p_now (the database clock when
-- NULL) and, when p_wake_id is given, it is that wake's claim. Otherwise
-- reason says why: not_active, not_in_slot, lease_passed or wrong_wake.
-- An unknown claim is CLAIM_NOT_FOUND; with p_claim_token_hash a mismatch
-- is UNAUTHORIZED. It changes nothing.
CREATE OR REPLACE FUNCTION claim_request(p_consumer_id text, p_epoch bigint, p_wake_id text DEFAULT NULL,
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
-- release_and_claim_next is a done that also claims the runner's next wake,
-- in one transaction: release_claim, then, only if that call released the
-- claim, claim_next_wake for p_runner_id (NULL = the claim's own runner).
-- A steady-state runner cycle is then two commits (append, done) instead of
-- three. The release columns are release_claim's; the next_* columns are
-- claim_next_wake's, all NULL when there is no next wake. A repeated done
-- (released = false) claims nothing: the first call's next claim, if its
-- answer was lost, ends by lease expiry like any unanswered claim.
-- A runner that is unknown or disabled gets no next wake (next_error says
-- why) and its release still commits: the claim runs in a subtransaction.
-- p_claim_token_hash and p_notify are release_claim's.
CREATE OR REPLACE FUNCTION release_and_claim_next(p_consumer_id text, p_epoch bigint, p_acks jsonb DEFAULT '[]',
                                       p_runner_id text DEFAULT NULL, p_lease_ttl_ms integer DEFAULT 30000,
                                       p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                                       p_claim_token_hash bytea DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (released boolean, entity_cleared boolean, claim_status text, entity_url text,
               stream_path text, entity_status text, acked_offset text, queued_wake_id text,
               next_wake_id text, next_consumer_id text, next_epoch bigint, next_entity_url text,
               next_stream_path text, next_acked_offset text, next_claim_token text,
               next_lease_expires_at timestamptz, next_lease_ttl_ms integer, next_error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_r      record;
    v_runner text := p_runner_id;
    v_err    text;
    n_wake   text;
    n_cons   text;
    n_epoch  bigint;
    n_url    text;
    n_path   text;
    n_acked  text;
    n_token  text;
    n_lease  timestamptz;
    n_ttl    integer;
BEGIN
    IF p_lease_ttl_ms IS NULL OR p_lease_ttl_ms <= 0 THEN
        RAISE EXCEPTION 'lease ttl must be positive, got %', p_lease_ttl_ms USING ERRCODE = 'PW008';
    END IF;
    SELECT * INTO v_r FROM release_claim(p_consumer_id, p_epoch, p_acks, v_now, p_tenant,
                                          p_claim_token_hash, p_notify);
    IF v_r.released THEN
        IF v_runner IS NULL THEN
            SELECT c.runner_id INTO v_runner FROM consumer_claims c
             WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        END IF;
        BEGIN
            SELECT n.wake_id, n.consumer_id, n.epoch, n.entity_url, n.stream_path, n.acked_offset,
                   n.claim_token, n.lease_expires_at, n.lease_ttl_ms
              INTO n_wake, n_cons, n_epoch, n_url, n_path, n_acked, n_token, n_lease, n_ttl
              FROM claim_next_wake(v_runner, p_lease_ttl_ms, v_now, p_tenant) n;
        EXCEPTION
            WHEN SQLSTATE 'PW004' THEN v_err := 'RUNNER_NOT_FOUND';
            WHEN SQLSTATE 'PW005' THEN v_err := 'RUNNER_DISABLED';
        END;
    END IF;
    RETURN QUERY SELECT v_r.released, v_r.entity_cleared, v_r.claim_status, v_r.entity_url,
                        v_r.stream_path, v_r.entity_status, v_r.acked_offset, v_r.queued_wake_id,
                        n_wake, n_cons, n_epoch, n_url, n_path, n_acked, n_token, n_lease, n_ttl, v_err;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- stop_entity stops an idle entity at once and marks a running one
-- stopping (its claim's end stops it). A queued wake is superseded.
CREATE OR REPLACE FUNCTION stop_entity(p_url text, p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
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
-- spawn_entity creates an entity, its dispatch row and its main stream.
-- The URL is checked here too (psql callers). With no runner named, the
-- entity type's default dispatch policy decides: its first target of type
-- runner (runnerId or runner_id); none = any enabled runner.
CREATE OR REPLACE FUNCTION spawn_entity(p_url text, p_runner_id text DEFAULT NULL,
                                        p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_stream text := '/v1/stream' || p_url || '/main';
    v_runner text := p_runner_id;
BEGIN
    PERFORM pw_check_entity_url(p_url);
    IF v_runner IS NULL THEN
        SELECT coalesce(t.value ->> 'runnerId', t.value ->> 'runner_id') INTO v_runner
          FROM entity_types et,
               jsonb_array_elements(CASE WHEN jsonb_typeof(et.default_dispatch_policy -> 'targets') = 'array'
                                         THEN et.default_dispatch_policy -> 'targets' ELSE '[]' END)
                 WITH ORDINALITY AS t(value, i)
         WHERE et.tenant_id = p_tenant AND et.name = split_part(p_url, '/', 2)
           AND jsonb_typeof(t.value) = 'object' AND t.value ->> 'type' = 'runner'
           AND coalesce(t.value ->> 'runnerId', t.value ->> 'runner_id') IS NOT NULL
         ORDER BY t.i
         LIMIT 1;
    END IF;
    IF EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_stream) THEN
        RAISE EXCEPTION 'stream % exists already', v_stream USING ERRCODE = 'PW002';
    END IF;
    BEGIN
        INSERT INTO entities (tenant_id, url, status, main_stream, runner_id, created_at, updated_at)
        VALUES (p_tenant, p_url, 'idle', v_stream, v_runner, v_now, v_now);
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
-- claim with a live lease holds the entity (its release re-queues). Inbox
-- keys sort by time: msg-in-<unix ms>-<random>.
CREATE OR REPLACE FUNCTION send_to_entity(p_url text, p_payload jsonb, p_from text DEFAULT NULL,
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
        'key', 'msg-in-' || (extract(epoch FROM v_now) * 1000)::bigint || '-'
               || substr(replace(gen_random_uuid()::text, '-', ''), 1, 12),
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
-- pw_check_entity_url raises INVALID_REQUEST unless p_url is /{type}/{id}
-- with type [a-z][a-z0-9_-]{0,63} and id [A-Za-z0-9._~-]{1,128}.
CREATE OR REPLACE FUNCTION pw_check_entity_url(p_url text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_url IS NULL OR p_url !~ '^/[a-z][a-z0-9_-]{0,63}/[A-Za-z0-9._~-]{1,128}$' THEN
        RAISE EXCEPTION 'entity url % must be /{type}/{id}: type [a-z][a-z0-9_-]{0,63}, id [A-Za-z0-9._~-]{1,128}',
            coalesce(quote_literal(p_url), 'NULL') USING ERRCODE = 'PW008';
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- register_runner registers a runner, or restarts a registered one: the
-- token hash is replaced (the old token stops working), label and kind are
-- updated, admin status, claims and wake stream are kept. The runner's wake
-- stream is created when missing and given the events of the queued wakes
-- it may claim. created says which of the two happened.
CREATE OR REPLACE FUNCTION register_runner(p_id text, p_label text, p_kind text, p_token_hash bytea,
                                p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (created boolean, id text, label text, kind text, admin_status text,
               last_seen_at timestamptz, liveness_lease_expires_at timestamptz, diagnostics jsonb,
               created_at timestamptz, updated_at timestamptz,
               wake_stream text, wake_stream_offset text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_path    text := pw_wake_stream(p_id);
    v_created boolean;
    v_ct      text;
    v_r       runners%ROWTYPE;
BEGIN
    IF p_id IS NULL OR p_id !~ '^[A-Za-z0-9._~-]{1,128}$' THEN
        RAISE EXCEPTION 'runner id % must match [A-Za-z0-9._~-]{1,128}', coalesce(quote_literal(p_id), 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    IF p_token_hash IS NULL THEN
        RAISE EXCEPTION 'token hash is required' USING ERRCODE = 'PW008';
    END IF;
    INSERT INTO runners AS r (tenant_id, id, label, kind, token_hash, created_at, updated_at)
    VALUES (p_tenant, p_id, coalesce(p_label, ''), coalesce(p_kind, ''), p_token_hash, v_now, v_now)
    ON CONFLICT (tenant_id, id) DO UPDATE
       SET token_hash = EXCLUDED.token_hash,
           label = coalesce(p_label, r.label), kind = coalesce(p_kind, r.kind),
           updated_at = v_now
    RETURNING (r.xmax = 0) INTO v_created;
    SELECT r.* INTO v_r FROM runners r WHERE r.tenant_id = p_tenant AND r.id = p_id;

    SELECT s.content_type INTO v_ct FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_path;
    IF NOT FOUND THEN
        INSERT INTO streams (tenant_id, path, content_type, accessed_at, created_at, updated_at)
        VALUES (p_tenant, v_path, 'application/json', v_now, v_now, v_now);
    ELSIF pw_media_type(v_ct) <> 'application/json' THEN
        RAISE EXCEPTION 'stream % exists with content type %, not a wake stream', v_path, v_ct
            USING ERRCODE = 'PW011';
    END IF;
    PERFORM pw_backfill_wake_events(p_tenant, p_id, v_now);

    RETURN QUERY SELECT v_created, v_r.id, v_r.label, v_r.kind, v_r.admin_status, v_r.last_seen_at,
                        v_r.liveness_lease_expires_at, v_r.diagnostics, v_r.created_at, v_r.updated_at,
                        v_path, pw_wake_stream_offset(p_tenant, p_id);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- set_runner_admin_status enables or disables a runner. An enabled runner
-- gets the events of the queued wakes it may claim that its wake stream
-- lacks (wakes for any runner queued while it was disabled).
CREATE OR REPLACE FUNCTION set_runner_admin_status(p_id text, p_admin_status text,
                                        p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF runners
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
BEGIN
    IF p_admin_status IS NULL OR p_admin_status NOT IN ('enabled', 'disabled') THEN
        RAISE EXCEPTION 'admin status must be enabled or disabled, got %', coalesce(p_admin_status, 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    UPDATE runners r SET admin_status = p_admin_status, updated_at = v_now
     WHERE r.tenant_id = p_tenant AND r.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'runner % not found', p_id USING ERRCODE = 'PW004';
    END IF;
    IF p_admin_status = 'enabled' THEN
        PERFORM pw_backfill_wake_events(p_tenant, p_id, v_now);
    END IF;
    RETURN QUERY SELECT * FROM runners r WHERE r.tenant_id = p_tenant AND r.id = p_id;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- purge_history deletes finished history older than p_older_than (measured
-- back from p_now): claims that are no longer active (released, expired,
-- failed) and wakes that are completed, expired or superseded. One call
-- deletes at most p_batch rows of each table, oldest first, walking the
-- partial indexes consumer_claims_finished_idx and wakes_finished_idx, and
-- skipping rows another transaction holds locked. It is one short
-- transaction; a caller (the sweeper) repeats it while a count equals
-- p_batch. Active claims, queued and claimed wakes are never touched.
-- A done for a claim purged here gets CLAIM_NOT_FOUND instead of the
-- idempotent released = false: keep the age well above any retry window.
CREATE OR REPLACE FUNCTION purge_history(p_older_than interval, p_batch integer DEFAULT 1000,
                              p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (claims_deleted integer, wakes_deleted integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz := coalesce(p_now, now()) - p_older_than;
    v_claims integer;
    v_wakes  integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'retention age must be zero or more, got %', p_older_than USING ERRCODE = 'PW008';
    END IF;
    IF p_batch IS NULL OR p_batch <= 0 THEN
        RAISE EXCEPTION 'batch must be positive, got %', p_batch USING ERRCODE = 'PW008';
    END IF;

    -- The batch is picked through the partial index and locked, then
    -- deleted by ctid (a Tid Scan: a join back to the table by key can be
    -- planned as a hash join over the whole table). The locks pin the
    -- ctids; the DELETE re-checks the guard all the same.
    DELETE FROM consumer_claims c
     WHERE c.ctid = ANY (ARRAY(
               SELECT k.ctid FROM consumer_claims k
                WHERE k.tenant_id = p_tenant AND k.status <> 'active' AND k.updated_at < v_cutoff
                ORDER BY k.updated_at
                LIMIT p_batch
                FOR UPDATE SKIP LOCKED))
       AND c.tenant_id = p_tenant AND c.status <> 'active' AND c.updated_at < v_cutoff;
    GET DIAGNOSTICS v_claims = ROW_COUNT;

    DELETE FROM wakes w
     WHERE w.ctid = ANY (ARRAY(
               SELECT k.ctid FROM wakes k
                WHERE k.tenant_id = p_tenant AND k.status IN ('completed', 'expired', 'superseded')
                  AND k.finished_at < v_cutoff
                ORDER BY k.finished_at
                LIMIT p_batch
                FOR UPDATE SKIP LOCKED))
       AND w.tenant_id = p_tenant AND w.status IN ('completed', 'expired', 'superseded')
       AND w.finished_at < v_cutoff;
    GET DIAGNOSTICS v_wakes = ROW_COUNT;

    RETURN QUERY SELECT v_claims, v_wakes;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- purge_wake_events deletes the events of finished wakes (completed,
-- expired, superseded, or already purged) older than p_older_than, with
-- their wake-stream messages; at most p_batch a call. The newest message of
-- a wake stream is kept, so a reader behind never finds its whole remaining
-- range gone. Offsets are never reused: the stream's tail is untouched.
CREATE OR REPLACE FUNCTION purge_wake_events(p_older_than interval, p_batch integer DEFAULT 1000,
                                  p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_cutoff timestamptz := coalesce(p_now, now()) - p_older_than;
    v_n      integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'retention age must be zero or more, got %', p_older_than USING ERRCODE = 'PW008';
    END IF;
    IF p_batch IS NULL OR p_batch <= 0 THEN
        RAISE EXCEPTION 'batch must be positive, got %', p_batch USING ERRCODE = 'PW008';
    END IF;
    WITH gone AS (
        DELETE FROM wake_events v
         WHERE v.ctid = ANY (ARRAY(
                   SELECT k.ctid FROM wake_events k
                     LEFT JOIN wakes w ON w.tenant_id = k.tenant_id AND w.wake_id = k.wake_id
                     JOIN streams s ON s.tenant_id = k.tenant_id AND s.path = pw_wake_stream(k.runner_id)
                    WHERE k.tenant_id = p_tenant AND k.created_at < v_cutoff
                      AND (w.wake_id IS NULL OR w.status IN ('completed', 'expired', 'superseded')
                                                AND w.finished_at < v_cutoff)
                      AND k.seq < s.tail_seq
                    ORDER BY k.created_at
                    LIMIT p_batch
                    FOR UPDATE OF k SKIP LOCKED))
        RETURNING v.tenant_id, v.runner_id, v.seq
    )
    DELETE FROM stream_messages m
     USING gone g
     WHERE m.tenant_id = g.tenant_id AND m.path = pw_wake_stream(g.runner_id) AND m.seq = g.seq;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_append appends raw messages to a stream: it locks the stream
-- row (serializing appends per stream), takes the next seqs and inserts the
-- rows. It checks nothing else; callers check content type, closure, owner.
CREATE OR REPLACE FUNCTION pw_stream_append(p_tenant text, p_path text, p_data bytea[], p_now timestamptz)
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
-- pw_stream_create as in 00003, plus: a soft-deleted path (or an expired
-- stream that forks still read) is a 'conflict' and stays; an expired or
-- soft-deleted stream that nothing reads any more is collected and the path
-- created afresh; an existing fork is a 'conflict' for a plain PUT (its
-- configuration includes its source).
CREATE OR REPLACE FUNCTION pw_stream_create(p_tenant text, p_path text, p_content_type text,
                                            p_ttl_seconds bigint, p_expires_at timestamptz,
                                            p_closed boolean, p_data bytea[], p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, content_type text, tail_seq bigint, closed boolean, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_s   streams%ROWTYPE;
BEGIN
    FOR attempt IN 1..2 LOOP
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_path FOR UPDATE;
        IF FOUND AND v_s.entity_url IS NULL
           AND (v_s.deleted_at IS NOT NULL OR pw_stream_expired(v_s, v_now)) THEN
            IF pw_stream_remove(p_tenant, p_path, v_now) = 'soft_deleted' THEN
                RETURN QUERY SELECT 'conflict'::text, v_s.content_type, v_s.tail_seq, true, v_s.created_at;
                RETURN;
            END IF;
        ELSIF FOUND THEN
            IF v_s.entity_url IS NOT NULL THEN
                RETURN QUERY SELECT 'forbidden'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            ELSIF v_s.forked_from IS NULL
                  AND pw_media_type(v_s.content_type) = pw_media_type(p_content_type)
                  AND v_s.ttl_seconds IS NOT DISTINCT FROM p_ttl_seconds
                  AND v_s.expires_at IS NOT DISTINCT FROM p_expires_at
                  AND v_s.closed = p_closed THEN
                RETURN QUERY SELECT 'exists'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            ELSE
                RETURN QUERY SELECT 'conflict'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            END IF;
            RETURN;
        END IF;
        INSERT INTO streams AS s (tenant_id, path, content_type, ttl_seconds, expires_at,
                                  accessed_at, created_at, updated_at)
        VALUES (p_tenant, p_path, p_content_type, p_ttl_seconds, p_expires_at, v_now, v_now, v_now)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            IF coalesce(cardinality(p_data), 0) > 0 THEN
                PERFORM pw_stream_append(p_tenant, p_path, p_data, v_now);
            END IF;
            UPDATE streams s SET closed = p_closed
             WHERE s.tenant_id = p_tenant AND s.path = p_path
            RETURNING s.* INTO v_s;
            RETURN QUERY SELECT 'created'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        -- A concurrent PUT created it first: compare against that one.
    END LOOP;
    RAISE EXCEPTION 'stream % changed concurrently', p_path USING ERRCODE = '40001';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_fork creates the fork p_path of p_source (PUT with
-- Stream-Forked-From), or confirms an identical one. No message of the
-- source is copied: the fork row records its ancestry segments and starts
-- its tail at the fork point.
--   p_offset:      the fork offset as a seq; NULL = the source's tail.
--   p_sub_offset:  Stream-Fork-Sub-Offset (0 = none). For application/json
--                  sources it counts messages past p_offset; every JSON
--                  message has its own offset here, so that is the fork
--                  point p_offset + n (refused past the tail). For other
--                  types it counts bytes of the next message (the next
--                  append): all of them inherits that message, fewer store
--                  that prefix as the fork's first own message (the only
--                  bytes a fork ever copies, at most one message), more are
--                  refused.
--   p_content_type: NULL = the source's; else it must match it.
--   p_ttl_seconds, p_expires_at: both NULL = the source's (protocol table).
-- An existing stream at p_path is 'exists' when it is a fork of the same
-- source, offset and sub-offset (an omitted offset meaning the source's
-- tail now) and any given content type, lifetime and closure match; else
-- 'conflict'. Statuses: created | exists | conflict | forbidden |
-- source_not_found | source_gone | content_type | bad_offset |
-- bad_sub_offset | too_deep.
CREATE OR REPLACE FUNCTION pw_stream_fork(p_tenant text, p_path text, p_source text, p_offset bigint,
                               p_sub_offset bigint, p_content_type text, p_ttl_seconds bigint,
                               p_expires_at timestamptz, p_closed boolean, p_data bytea[],
                               p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, content_type text, tail_seq bigint, closed boolean, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_sub     bigint := coalesce(p_sub_offset, 0);
    v_t       streams%ROWTYPE;
    v_s       streams%ROWTYPE;
    v_own     bigint;
    v_at      bigint;
    v_point   bigint;
    v_msg     bytea;
    v_partial bytea;
    v_src     text;
    v_paths   text[];
    v_upto    bigint[];
BEGIN
    FOR attempt IN 1..2 LOOP
        -- The target path.
        SELECT t.* INTO v_t FROM streams t
         WHERE t.tenant_id = p_tenant AND t.path = p_path FOR UPDATE;
        IF FOUND AND v_t.entity_url IS NULL
           AND (v_t.deleted_at IS NOT NULL OR pw_stream_expired(v_t, v_now)) THEN
            IF pw_stream_remove(p_tenant, p_path, v_now) = 'soft_deleted' THEN
                RETURN QUERY SELECT 'conflict'::text, v_t.content_type, v_t.tail_seq, true, v_t.created_at;
                RETURN;
            END IF;
        ELSIF FOUND THEN
            IF v_t.entity_url IS NOT NULL THEN
                RETURN QUERY SELECT 'forbidden'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            ELSIF v_t.forked_from = p_source AND v_t.fork_sub_offset = v_sub
                  AND v_t.fork_offset = coalesce(p_offset,
                          (SELECT s.tail_seq FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_source))
                  AND (p_content_type IS NULL OR pw_media_type(p_content_type) = pw_media_type(v_t.content_type))
                  AND ((p_ttl_seconds IS NULL AND p_expires_at IS NULL)
                       OR (v_t.ttl_seconds IS NOT DISTINCT FROM p_ttl_seconds
                           AND v_t.expires_at IS NOT DISTINCT FROM p_expires_at))
                  AND v_t.closed = p_closed THEN
                RETURN QUERY SELECT 'exists'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            ELSE
                RETURN QUERY SELECT 'conflict'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            END IF;
            RETURN;
        END IF;

        -- The source: KEY SHARE keeps it from being deleted until commit
        -- (the fork's foreign key would take the same lock) and lets its
        -- appends go on: they only add seqs past the fork point.
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_source FOR KEY SHARE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'source_not_found'::text, ''::text, 0::bigint, false, v_now;
            RETURN;
        END IF;
        IF v_s.deleted_at IS NOT NULL OR (v_s.entity_url IS NULL AND pw_stream_expired(v_s, v_now)) THEN
            RETURN QUERY SELECT CASE WHEN pw_stream_referenced(p_tenant, p_source, v_now)
                                     THEN 'source_gone' ELSE 'source_not_found' END::text,
                                v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        IF p_content_type IS NOT NULL AND pw_media_type(p_content_type) <> pw_media_type(v_s.content_type) THEN
            RETURN QUERY SELECT 'content_type'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        v_at := coalesce(p_offset, v_s.tail_seq);
        IF v_at < 0 OR v_at > v_s.tail_seq THEN
            RETURN QUERY SELECT 'bad_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        v_own := coalesce(v_s.fork_upto[cardinality(v_s.fork_upto)], 0);
        v_point := v_at;
        IF v_sub > 0 AND pw_media_type(v_s.content_type) = 'application/json' THEN
            IF v_at + v_sub > v_s.tail_seq THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            v_point := v_at + v_sub;
        ELSIF v_sub > 0 THEN
            IF v_at + 1 > v_s.tail_seq THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            -- The next message as the source reads it: its own, or an ancestor's.
            v_src := p_source;
            IF v_at + 1 <= v_own THEN
                SELECT g.p INTO v_src
                  FROM unnest(v_s.fork_paths, v_s.fork_upto) WITH ORDINALITY AS g(p, u, i)
                 WHERE g.u >= v_at + 1 ORDER BY g.i LIMIT 1;
            END IF;
            SELECT m.data INTO v_msg FROM stream_messages m
             WHERE m.tenant_id = p_tenant AND m.path = v_src AND m.seq = v_at + 1;
            IF v_msg IS NULL OR v_sub > octet_length(v_msg) THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            IF v_sub = octet_length(v_msg) THEN
                v_point := v_at + 1;
            ELSE
                v_partial := substring(v_msg FROM 1 FOR v_sub::integer);
            END IF;
        END IF;

        -- Ancestry: the source's segments that reach below the fork point
        -- (the last one cut at it), then the source's own part if the fork
        -- point lies in it.
        SELECT coalesce(array_agg(g.p ORDER BY g.i), '{}'), coalesce(array_agg(least(g.u, v_point) ORDER BY g.i), '{}')
          INTO v_paths, v_upto
          FROM unnest(v_s.fork_paths, v_s.fork_upto) WITH ORDINALITY AS g(p, u, i)
         WHERE coalesce(v_s.fork_upto[g.i - 1], 0) < v_point;
        IF v_point > v_own THEN
            v_paths := v_paths || p_source;
            v_upto := v_upto || v_point;
        END IF;
        IF cardinality(v_paths) > pw_fork_max_segments() THEN
            RETURN QUERY SELECT 'too_deep'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;

        INSERT INTO streams AS s (tenant_id, path, content_type, tail_seq, ttl_seconds, expires_at,
                                  accessed_at, created_at, updated_at, forked_from, fork_offset,
                                  fork_sub_offset, fork_paths, fork_upto)
        SELECT p_tenant, p_path, v_s.content_type,
               v_point + CASE WHEN v_partial IS NULL THEN 0 ELSE 1 END,
               CASE WHEN p_ttl_seconds IS NULL AND p_expires_at IS NULL THEN v_s.ttl_seconds ELSE p_ttl_seconds END,
               CASE WHEN p_ttl_seconds IS NULL AND p_expires_at IS NULL THEN v_s.expires_at ELSE p_expires_at END,
               v_now, v_now, v_now, p_source, v_at, v_sub, v_paths, v_upto
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            IF v_partial IS NOT NULL THEN
                INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
                VALUES (p_tenant, p_path, v_point + 1, v_partial, v_now);
            END IF;
            IF coalesce(cardinality(p_data), 0) > 0 THEN
                PERFORM pw_stream_append(p_tenant, p_path, p_data, v_now);
            END IF;
            UPDATE streams s SET closed = p_closed
             WHERE s.tenant_id = p_tenant AND s.path = p_path
            RETURNING s.* INTO v_t;
            RETURN QUERY SELECT 'created'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            RETURN;
        END IF;
        -- A concurrent PUT created the path first: compare against it.
    END LOOP;
    RAISE EXCEPTION 'stream % changed concurrently', p_path USING ERRCODE = '40001';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION release_claims(p_consumer_ids text[], p_epochs bigint[], p_acks jsonb[],
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
CREATE OR REPLACE FUNCTION claim_next_wakes(p_runner_ids text[], p_lease_ttl_ms integer[],
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
CREATE OR REPLACE FUNCTION pw_stream_writes(p_tenant text, p_paths text[], p_content_types text[],
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

DROP FUNCTION pw_claim_missing(text, text, bigint, bytea);
