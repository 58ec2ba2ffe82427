-- The claim lifecycle (docs/lifecycle.md maps each rule to its function
-- here and to its tests). Memory protects live writes; PostgreSQL
-- decides the claim lifecycle: a claim is claimed, heartbeated, released
-- and expired by these functions alone, each one transaction when called as
-- one statement (from Go or from psql), whatever any server holds in
-- memory.
--
-- Lock order, everywhere: the entity's dispatch row (entity_dispatch_state),
-- then the claim (consumer_claims), then the entity, then the wake, then the
-- stream. claim_next_wake alone locks a queue entry before a dispatch row,
-- and never waits for that row (SKIP LOCKED), so it cannot close a cycle.
--
-- Plans: no cost that grows with the data (SPEC section 6). Every
-- statement of a hot function (claim, heartbeat, release, send, append, the
-- wake-event flush) names the whole key of each row it reads, with the
-- function's arguments or values read before it: a primary key, or the
-- (tenant, entity) of an entity's one queued wake; a join whose key comes
-- from another table's column is two statements. Two kinds of plan could
-- still read a whole table, and are ruled out:
--   * A plan made while the tables were nearly empty (a session's first
--     calls, statistics of empty tables) is a sequential scan, and the
--     session keeps it as its generic plan while the tables grow. These
--     functions run with SET enable_seqscan TO off: each statement uses the
--     index of its key, whatever the statistics say.
--   * consumer_claims_active_lease_idx holds the active claims only; a
--     by-key statement that also said status = 'active' could be answered
--     by reading that whole index (every live claim of the tenant), which
--     looks cheapest when the statistics say live claims are few. The
--     guards of the by-key writes name the statuses of an ended claim
--     instead (status NOT IN ('released', 'expired', 'failed'): the claim
--     has not ended), which that index cannot serve. Likewise a write of a
--     queued wake names its entity too, so wakes_one_queued_idx is read by
--     its whole key when the planner picks it.
-- internal/bench TestHotPathBuffersStayFlat holds them to it: the buffers
-- of each call with 100,000 queued wakes, live claims and ended claims
-- against those on an empty database, with plans cached while the tables
-- were empty, with statistics of empty tables, and after ANALYZE.
--
-- Errors carry SQLSTATEs of class PW, each message starting with its code
-- ('PW006: claim wake-3/2 not found'); the server maps them to HTTP codes
-- (db/errors.go):
--   PW001 ENTITY_NOT_FOUND   PW002 ENTITY_EXISTS    PW003 ENTITY_STOPPED
--   PW004 RUNNER_NOT_FOUND   PW005 RUNNER_DISABLED  PW006 CLAIM_NOT_FOUND
--   PW007 CLAIM_NOT_ACTIVE   PW008 INVALID_REQUEST  PW009 STREAM_NOT_FOUND
--   PW010 RUNNER_EXISTS      PW011 STREAM_CONFLICT  PW012 STREAM_CLOSED
--   PW013 UNAUTHORIZED (a claim token that does not match the claim)
--   PW014 CLAIM_SUPERSEDED (an epoch older than the entity's newest claim)
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

-- pw_claim_wake claims one picked wake (the caller holds its wake_queue
-- entry locked) for p_runner_id: the claim rule (lifecycle rule 2), shared by
-- claim_next_wake, claim_wake_for_event and claim_wake_for_push. In one
-- transaction it bumps the entity's epoch, inserts the active claim with a
-- non-NULL lease, fills the dispatch slot, sets the entity running and the
-- wake claimed; the claim row keeps the hash of the claim token's write
-- secret (pw_write_secret), so a write token can be checked after a restart
-- or on another instance. It returns no row when the wake cannot be claimed
-- now: its entity's dispatch row is locked by someone else (never waited
-- for), a claim with a live lease holds the entity (single flight, rule 1),
-- or the entity is stopping or stopped (the wake is superseded then, rule
-- 7). A claim whose lease lapsed is taken over: pw_end_claim expires it in
-- this transaction.
CREATE OR REPLACE FUNCTION pw_claim_wake(
    p_tenant text,
    p_wake text,
    p_url text,
    p_runner_id text,
    p_lease_ttl_ms integer,
    p_now timestamp with time zone
)
    RETURNS TABLE(
        wake_id text,
        consumer_id text,
        epoch bigint,
        entity_url text,
        stream_path text,
        acked_offset text,
        claim_token text,
        lease_expires_at timestamp with time zone,
        lease_ttl_ms integer
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
    v_lease := p_now + p_lease_ttl_ms * interval '1 millisecond';
    v_token := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');

    -- The common case in one statement: lock the dispatch row without
    -- waiting (the subquery's SKIP LOCKED; the row found keeps its ctid
    -- while we hold it) and fill a free slot of an entity that is idle or
    -- running. A claim never waits for a dispatch lock (someone is
    -- releasing, sending to or sweeping that entity): holding the wake's
    -- queue entry while waiting for it would invert the fixed order and
    -- could deadlock with stop_entity or a sweep.
    UPDATE entity_dispatch_state d
       SET epoch = d.epoch + 1, active_consumer_id = p_wake, active_epoch = d.epoch + 1,
           active_runner_id = p_runner_id, active_claimed_at = p_now,
           active_lease_expires_at = v_lease, outstanding_wake_id = p_wake,
           updated_at = p_now
      FROM entities e
     WHERE d.ctid = (SELECT k.ctid FROM entity_dispatch_state k
                      WHERE k.tenant_id = p_tenant AND k.entity_url = p_url
                        FOR UPDATE SKIP LOCKED)
       AND d.tenant_id = p_tenant AND d.entity_url = p_url
       AND e.tenant_id = p_tenant AND e.url = p_url
       AND d.active_consumer_id IS NULL AND e.status IN ('idle', 'running')
    RETURNING d.epoch, d.acked_offset, e.main_stream INTO v_epoch, v_acked, v_stream;
    IF NOT FOUND THEN
        -- Not the common case: re-check what the pick assumed, under the
        -- lock (again never waited for).
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
             WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake AND w.entity_url = p_url AND w.status = 'queued';
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
        -- The claim's writes, one statement each in the fixed lock order
        -- (dispatch state, claim, entity, wake), each under its guard. We
        -- hold the dispatch row and the wake's queue entry (every change of
        -- a queued wake's status deletes that entry, and only holders of
        -- the dispatch lock change it), so no guard can fail; if one did,
        -- the whole claim rolls back.
        v_epoch := v_depoch + 1;
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
     WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake AND w.entity_url = p_url AND w.status = 'queued';
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
$function$;

-- claim_next_wake (lifecycle rules 1 and 2) hands the runner the oldest queued
-- wake it may take: the wake targets it or any runner, the entity is not
-- stopping or stopped, and no claim with a live lease holds the entity. A
-- claim whose lease lapsed is taken over: pw_end_claim expires it in this
-- transaction. Returns no row when there is no work. The claim token is
-- returned here once; only its hash is kept. An unknown runner is PW004, a
-- disabled one PW005.
--
-- The pick reads two queues in claim order, the wakes for any runner and
-- the wakes addressed to this runner (two ranges of wake_queue_pkey: by
-- runner_key, then in claim order), and takes the older head: wakes
-- addressed to other runners are never read, however many are queued (a
-- disabled runner's, say). A generic plan made while the queue was short
-- is kept while it grows, and the planner's estimates of a small queue can
-- make a scan of the whole tenant and a sort look cheaper (measured: 613 ms
-- a claim with 16,000 queued wakes); no statement of the claim needs a
-- sort or a sequential scan, so the function plans without either (SET
-- enable_sort, enable_seqscan TO off; see Plans above).
CREATE OR REPLACE FUNCTION claim_next_wake(
    p_runner_id text,
    p_lease_ttl_ms integer DEFAULT 30000,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(
        wake_id text,
        consumer_id text,
        epoch bigint,
        entity_url text,
        stream_path text,
        acked_offset text,
        claim_token text,
        lease_expires_at timestamp with time zone,
        lease_ttl_ms integer
    )
    LANGUAGE plpgsql
    SET enable_sort TO 'off'
    SET enable_seqscan TO 'off'
AS $function$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_admin   text;
    -- Each queue's position (its last candidate) and its next candidate
    -- (a_wake, o_wake NULL: none read yet), held locked: a_ the wakes for
    -- any runner, o_ those addressed to this one.
    a_after_t timestamptz := '-infinity';
    a_after_w text := '';
    a_done    boolean := false;
    a_created timestamptz;
    a_wake    text;
    a_url     text;
    o_after_t timestamptz := '-infinity';
    o_after_w text := '';
    o_done    boolean := false;
    o_created timestamptz;
    o_wake    text;
    o_url     text;
    v_wake    text;
    v_url     text;
    v_found   boolean;
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

    -- The pick walks both queues in claim order, each probe starting just
    -- past its queue's previous candidate, and tries the older of the two
    -- candidates, until a wake can be claimed or both queues are exhausted:
    -- a claimable wake is found however many wakes ahead of it are locked
    -- by other claims (SKIP LOCKED passes them) or cannot be taken
    -- (pw_claim_wake answers nothing for them). Every probe is one descent
    -- of wake_queue_pkey; the candidate not tried stays locked until
    -- the commit, as a passed one does.
    LOOP
        IF a_wake IS NULL AND NOT a_done THEN
            SELECT q.wake_id, q.entity_url, q.created_at INTO a_wake, a_url, a_created FROM wake_queue q
             WHERE q.tenant_id = p_tenant AND q.runner_key = ''
               AND (q.created_at, q.wake_id) > (a_after_t, a_after_w)
             ORDER BY q.created_at, q.wake_id
             LIMIT 1
             FOR UPDATE OF q SKIP LOCKED;
            a_done := NOT FOUND;
        END IF;
        IF o_wake IS NULL AND NOT o_done THEN
            SELECT q.wake_id, q.entity_url, q.created_at INTO o_wake, o_url, o_created FROM wake_queue q
             WHERE q.tenant_id = p_tenant AND q.runner_key = p_runner_id
               AND (q.created_at, q.wake_id) > (o_after_t, o_after_w)
             ORDER BY q.created_at, q.wake_id
             LIMIT 1
             FOR UPDATE OF q SKIP LOCKED;
            o_done := NOT FOUND;
        END IF;
        IF a_wake IS NOT NULL AND (o_wake IS NULL OR (a_created, a_wake) < (o_created, o_wake)) THEN
            v_wake := a_wake;
            v_url := a_url;
            a_after_t := a_created;
            a_after_w := a_wake;
            a_wake := NULL;
        ELSIF o_wake IS NOT NULL THEN
            v_wake := o_wake;
            v_url := o_url;
            o_after_t := o_created;
            o_after_w := o_wake;
            o_wake := NULL;
        ELSE
            RETURN;
        END IF;

        v_found := false;
        FOR wake_id, consumer_id, epoch, entity_url, stream_path, acked_offset, claim_token,
            lease_expires_at, lease_ttl_ms IN
            SELECT * FROM pw_claim_wake(p_tenant, v_wake, v_url, p_runner_id, p_lease_ttl_ms, v_now)
        LOOP
            v_found := true;
            RETURN NEXT;
        END LOOP;
        IF v_found THEN
            RETURN;
        END IF;
    END LOOP;
END
$function$;

-- claim_next_wakes claims one wake for each item's runner, as
-- claim_next_wake does (a runner named twice gets two wakes), for group
-- commit; an item with no work gets a row whose wake_id is NULL. Items run
-- by (runner_id, ord): claim_next_wake never waits for a queue entry or a
-- dispatch row. See release_claims for the batch rules.
CREATE OR REPLACE FUNCTION claim_next_wakes(
    p_runner_ids text[],
    p_lease_ttl_ms integer[],
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(
        ord integer,
        err_code text,
        err_message text,
        wake_id text,
        consumer_id text,
        epoch bigint,
        entity_url text,
        stream_path text,
        acked_offset text,
        claim_token text,
        lease_expires_at timestamp with time zone,
        lease_ttl_ms integer
    )
    LANGUAGE plpgsql
AS $function$
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
$function$;

-- heartbeat_claim (lifecycle rule 3) extends an active claim's lease by its
-- TTL (or by p_lease_ttl_ms when given). A claim that is no longer active,
-- or whose lease has passed, cannot be revived: CLAIM_NOT_ACTIVE (PW007).
-- With p_claim_token_hash (the server passes the SHA-256 of the presented
-- claim token) a mismatch is UNAUTHORIZED: one round trip checks and acts.
-- An unknown (consumer, epoch) is CLAIM_NOT_FOUND, or CLAIM_SUPERSEDED when
-- older than the consumer's entity's newest claim (pw_claim_missing).
CREATE OR REPLACE FUNCTION heartbeat_claim(
    p_consumer_id text,
    p_epoch bigint,
    p_lease_ttl_ms integer DEFAULT NULL::integer,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text,
    p_claim_token_hash bytea DEFAULT NULL::bytea
)
    RETURNS TABLE(lease_expires_at timestamp with time zone, entity_url text, stream_path text)
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
       AND c.status NOT IN ('released', 'expired', 'failed')  -- active (see Plans above)
       AND c.lease_expires_at > v_now
    RETURNING c.lease_expires_at, c.stream_path INTO v_lease, v_path;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW007: claim %/% is not active', p_consumer_id, p_epoch USING ERRCODE = 'PW007';
    END IF;
    UPDATE entity_dispatch_state d SET active_lease_expires_at = v_lease, updated_at = v_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
       AND d.active_consumer_id = p_consumer_id AND d.active_epoch = p_epoch;
    RETURN QUERY SELECT v_lease, v_url, v_path;
END
$function$;

-- claim_request (lifecycle rule 8) answers a runner's claim request (the
-- wake-callback that recovers a claim's write token, e.g. after a server
-- restart): active is true only when (consumer, epoch) is active, its
-- entity's dispatch slot names it, its lease has not passed at p_now (the
-- database clock when NULL) and, when p_wake_id is given, it is that wake's
-- claim. Otherwise reason says why: not_active, not_in_slot, lease_passed
-- or wrong_wake. An unknown claim is CLAIM_NOT_FOUND, or CLAIM_SUPERSEDED
-- when older than the consumer's entity's newest claim (pw_claim_missing);
-- with p_claim_token_hash a mismatch is UNAUTHORIZED. It changes nothing.
CREATE OR REPLACE FUNCTION claim_request(
    p_consumer_id text,
    p_epoch bigint,
    p_wake_id text DEFAULT NULL::text,
    p_claim_token_hash bytea DEFAULT NULL::bytea,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(
        active boolean,
        reason text,
        entity_url text,
        stream_path text,
        runner_id text,
        lease_expires_at timestamp with time zone
    )
    LANGUAGE plpgsql
    STABLE
    SET enable_seqscan TO 'off'
AS $function$
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
$function$;

-- pw_claim_missing raises the error of a callback whose (consumer, epoch)
-- names no claim (release_claim, heartbeat_claim and claim_request call it
-- then): CLAIM_SUPERSEDED (PW014) when the consumer has a claim and p_epoch
-- is older than the newest epoch of that claim's entity, provided
-- p_claim_token_hash, when given, is the hash of a claim of that consumer
-- (else UNAUTHORIZED, PW013); CLAIM_NOT_FOUND (PW006) otherwise: a consumer
-- without a claim, or an epoch newer than every claim. It never returns.
CREATE OR REPLACE FUNCTION pw_claim_missing(
    p_tenant text,
    p_consumer_id text,
    p_epoch bigint,
    p_claim_token_hash bytea DEFAULT NULL::bytea
)
    RETURNS void
    LANGUAGE plpgsql
    STABLE
    SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_url    text;
    v_newest bigint;
BEGIN
    SELECT c.entity_url,
           greatest(c.epoch, (SELECT d.epoch FROM entity_dispatch_state d
                               WHERE d.tenant_id = p_tenant AND d.entity_url = c.entity_url))
      INTO v_url, v_newest
      FROM consumer_claims c
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
$function$;

-- release_claim (lifecycle rule 4) ends a claim by its durable identity
-- (consumer, epoch), whatever any server holds in memory, through
-- pw_end_claim: the slot is cleared only if it still names this claim
-- (entity_cleared), and then, in this same transaction, the entity goes idle
-- (or stopped), the wake completes, acked_offset advances to the main-stream
-- ack and a wake is re-queued when a sent message lies past it. A repeated
-- release changes nothing and reports released = false with the claim's
-- current status.
-- p_acks: [{"stream": path, "offset": offset}, ...] ("path" may spell
-- "stream"), checked before anything changes: each names the claim's own
-- stream (with or without the /v1/stream prefix) and an offset of 16 digits
-- no further than its tail; anything else is INVALID_REQUEST naming the ack
-- (the tail only grows, so a retried done's acks pass again). With
-- p_claim_token_hash (the SHA-256 of the token a runner presented) a
-- mismatch is UNAUTHORIZED. An unknown (consumer, epoch) is CLAIM_NOT_FOUND,
-- or CLAIM_SUPERSEDED when older than the consumer's entity's newest claim
-- (pw_claim_missing). It notifies pullwake_claims at commit (rule 6), so a
-- release from psql reaches every server's memory. The server passes
-- p_notify = false and publishes the same notification itself right after
-- the commit, from a transaction that writes nothing.
CREATE OR REPLACE FUNCTION release_claim(
    p_consumer_id text,
    p_epoch bigint,
    p_acks jsonb DEFAULT '[]'::jsonb,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text,
    p_claim_token_hash bytea DEFAULT NULL::bytea,
    p_notify boolean DEFAULT true
)
    RETURNS TABLE(
        released boolean,
        entity_cleared boolean,
        claim_status text,
        entity_url text,
        stream_path text,
        entity_status text,
        acked_offset text,
        queued_wake_id text
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
#variable_conflict use_column
DECLARE
    v_now  timestamptz := coalesce(p_now, now());
    v_acks jsonb := coalesce(p_acks, '[]'::jsonb);
    v_hash bytea;
    v_path text;
    v_url  text;
    v_ack  bigint;
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
    SELECT c.claim_token_hash, c.stream_path, c.entity_url INTO v_hash, v_path, v_url FROM consumer_claims c
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
        -- Walked by index, not by a query: each step is a plain
        -- expression, no statement of its own.
        FOR v_i IN 0 .. jsonb_array_length(v_acks) - 1 LOOP
            v_a := v_acks -> v_i::integer;
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
            -- Every ack names the main stream: the highest one counts.
            v_ack := greatest(v_ack, (v_o #>> '{}')::bigint);
        END LOOP;
    END IF;
    -- The claim's entity and the checked ack go along: pw_end_claim does
    -- not read the claim or the acks again.
    v_r := pw_end_claim(p_tenant, p_consumer_id, p_epoch, 'released', v_acks, v_now, p_notify, v_url, v_ack);
    released := v_r.ended;
    entity_cleared := v_r.entity_cleared;
    claim_status := v_r.claim_status;
    entity_url := v_r.entity_url;
    stream_path := v_r.stream_path;
    entity_status := v_r.entity_status;
    acked_offset := pw_offset(v_r.acked_offset);
    queued_wake_id := v_r.queued_wake_id;
    RETURN NEXT;
END
$function$;

-- release_claims releases each item's claim as release_claim does, for
-- group commit.
--
-- Batches (release_claims, claim_next_wakes, pw_stream_writes): the server
-- gathers the claims, releases and appends that arrive while a batch is in
-- flight and runs them as one statement, one transaction, one commit
-- (internal/groupcommit). Each takes arrays (one element per item) and
-- returns one row per item, in input order (ord = the item's 1-based
-- position), with a per-item outcome instead of an exception: err_code and
-- err_message carry the SQLSTATE and message the single-item function
-- raised for that item (NULL on success), so one bad item never fails its
-- batch-mates. One implementation of each rule: every item is a call of the
-- single-item function inside a BEGIN ... EXCEPTION block, a subtransaction:
-- an item that raises is rolled back alone.
--
-- Lock order. An item's locks stay held until the whole batch commits, so
-- items run sorted by the key of the first row their function locks:
-- release_claims by (entity_url, consumer_id, epoch) (release_claim locks
-- the dispatch row first; entity_url is read from the claim row, which never
-- changes; unknown claims lock nothing and come last). Two batches of one
-- function take their first locks in one order; where a batch meets a
-- writer whose order crosses its own (an expiry pass holding several
-- dispatch rows), PostgreSQL detects the deadlock (40P01) in one item, that
-- item's subtransaction rolls back, the batch commits, and the item reports
-- 40P01 for the server to run again.
--
-- Cost. A subtransaction that writes takes a subtransaction id; more than
-- 64 in one transaction overflow the per-backend cache and slow every other
-- session's snapshots, so the server caps its batches at 64 items.
CREATE OR REPLACE FUNCTION release_claims(
    p_consumer_ids text[],
    p_epochs bigint[],
    p_acks jsonb[],
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text,
    p_claim_token_hashes bytea[] DEFAULT NULL::bytea[],
    p_notify boolean DEFAULT true
)
    RETURNS TABLE(
        ord integer,
        err_code text,
        err_message text,
        released boolean,
        entity_cleared boolean,
        claim_status text,
        entity_url text,
        stream_path text,
        entity_status text,
        acked_offset text,
        queued_wake_id text
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
         ORDER BY (SELECT c.entity_url FROM consumer_claims c
                    WHERE c.tenant_id = p_tenant AND c.consumer_id = u.c AND c.epoch = u.e) NULLS LAST,
                  u.c, u.e, u.i
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
$function$;

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
CREATE OR REPLACE FUNCTION release_and_claim_next(
    p_consumer_id text,
    p_epoch bigint,
    p_acks jsonb DEFAULT '[]'::jsonb,
    p_runner_id text DEFAULT NULL::text,
    p_lease_ttl_ms integer DEFAULT 30000,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text,
    p_claim_token_hash bytea DEFAULT NULL::bytea,
    p_notify boolean DEFAULT true
)
    RETURNS TABLE(
        released boolean,
        entity_cleared boolean,
        claim_status text,
        entity_url text,
        stream_path text,
        entity_status text,
        acked_offset text,
        queued_wake_id text,
        next_wake_id text,
        next_consumer_id text,
        next_epoch bigint,
        next_entity_url text,
        next_stream_path text,
        next_acked_offset text,
        next_claim_token text,
        next_lease_expires_at timestamp with time zone,
        next_lease_ttl_ms integer,
        next_error text
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
$function$;

-- pw_end_claim is the one way a claim ends: a release (release_claim), an
-- expiry (expire_claims) and a takeover of a lapsed claim (pw_claim_wake)
-- all call it. It ends the claim (p_consumer_id, p_epoch) as p_status
-- ('released' or 'expired'):
--   1. lock the entity's dispatch row;
--   2. end the claim under its guard (active, this consumer and epoch; for
--      an expiry also lease_expires_at <= p_now, so a heartbeat that
--      committed first keeps its claim); a claim that is not active is left
--      as it is: ended = false, with its current status;
--   3. only if the dispatch slot still names this claim: clear the slot,
--      advance acked_offset to the main stream's highest ack in p_acks
--      (clamped to the stream's tail, never back) and move the entity with
--      the one CASE: running -> idle, stopping -> stopped (rule 7);
--   4. finish the claim's wake (completed for a release, expired otherwise);
--   5. queue a new wake when the entity is idle and a sent message lies past
--      acked_offset and none is queued; a wake already queued while this
--      claim held the entity gets a new wake event (the wake-event rule:
--      its events may all have been spent by claims answered 204).
-- Notifies pullwake_claims at commit when p_notify (rule 6). Locks, in
-- order: the dispatch row, the claim, the entity, the claim's wake. Callers
-- may hold the dispatch row already; they must hold nothing later in the
-- order (a claim holds the queue entry of the wake it is claiming, which
-- this function never touches: that wake is queued, and not this claim's).
CREATE OR REPLACE FUNCTION pw_end_claim(
    p_tenant text,
    p_consumer_id text,
    p_epoch bigint,
    p_status text,
    p_acks jsonb,
    p_now timestamp with time zone,
    p_notify boolean DEFAULT true,
    p_url text DEFAULT NULL::text,
    p_ack bigint DEFAULT NULL::bigint,
    OUT ended boolean,
    OUT entity_cleared boolean,
    OUT claim_status text,
    OUT entity_url text,
    OUT stream_path text,
    OUT entity_status text,
    OUT acked_offset bigint,
    OUT queued_wake_id text
)
    RETURNS record
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
#variable_conflict use_column
DECLARE
    v_url      text;
    v_path     text;
    v_wake     text;
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
    -- 1. The claim's entity and main-stream ack. release_claim read the
    -- claim and checked its acks already and passes both (p_url, p_ack);
    -- other callers pass neither. A claim's entity never changes, so the
    -- unlocked read is safe. Every ack's offset is parsed (a malformed one
    -- raises PW008 and rolls everything back), the main stream's highest
    -- one counts, clamped to the stream's tail.
    IF p_url IS NOT NULL THEN
        v_url := p_url;
        v_ack := p_ack;
    ELSE
        SELECT c.entity_url, c.stream_path INTO v_url, v_path FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'PW006: claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
        END IF;
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
    END IF;
    entity_url := v_url;

    -- 2. The dispatch row, locked first. When its slot names this claim
    -- (and, for an expiry, the lease it mirrors has passed), one statement
    -- locks it and clears it: no slot names an ended claim, so the claim
    -- is ended below. A wake queued while the claim held the entity stays
    -- outstanding. Otherwise (a retried done, a late one from an older
    -- epoch, a leak being cleaned up) the row is only locked, and the
    -- entity and its slot stay as they are.
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
       AND (p_status = 'released' OR d.active_lease_expires_at <= p_now)
    RETURNING d.acked_offset, d.last_sent_offset, d.outstanding_wake_id INTO v_acked, v_sent, v_queued;
    entity_cleared := FOUND;
    IF NOT entity_cleared THEN
        SELECT d.acked_offset, d.last_sent_offset INTO v_acked, v_sent
          FROM entity_dispatch_state d
         WHERE d.tenant_id = p_tenant AND d.entity_url = v_url
           FOR UPDATE;
    END IF;

    -- The claim, under its guard.
    UPDATE consumer_claims c
       SET status = p_status,
           released_at = CASE WHEN p_status = 'released' THEN p_now ELSE c.released_at END,
           acked_streams = CASE WHEN p_status = 'released' THEN v_acks ELSE c.acked_streams END,
           updated_at = p_now
     WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch
       AND c.status NOT IN ('released', 'expired', 'failed')  -- active (see Plans above)
       AND (p_status = 'released' OR c.lease_expires_at <= p_now)
    RETURNING c.stream_path, c.wake_id INTO v_path, v_wake;
    IF NOT FOUND THEN
        IF entity_cleared THEN
            -- Only a hand edit gets here; nothing of this call stays.
            RAISE EXCEPTION 'PW008: the dispatch slot of % named claim %/%, which is not active',
                v_url, p_consumer_id, p_epoch USING ERRCODE = 'PW008';
        END IF;
        ended := false;
        SELECT c.status, c.stream_path INTO claim_status, stream_path FROM consumer_claims c
         WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'PW006: claim %/% not found', p_consumer_id, p_epoch USING ERRCODE = 'PW006';
        END IF;
        SELECT e.status INTO entity_status FROM entities e WHERE e.tenant_id = p_tenant AND e.url = v_url;
        acked_offset := v_acked;
        RETURN;
    END IF;
    ended := true;
    claim_status := p_status;
    stream_path := v_path;

    -- 3. The entity: the one place a claim's end moves its status.
    IF entity_cleared THEN
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
        -- logged like every event (pw_publish_wake_events writes it). A
        -- wake queued just above gets its event from the queueing itself.
        INSERT INTO wake_event_log (tenant_id, wake_id, forced_at)
        VALUES (p_tenant, v_queued, p_now);
    END IF;

    IF p_notify THEN
        PERFORM pw_notify_claim(p_tenant, p_consumer_id, p_epoch, v_path, p_status);
    END IF;
    entity_status := v_estatus;
    acked_offset := v_acked;
    queued_wake_id := CASE WHEN entity_cleared THEN v_queued END;
END
$function$;

-- expire_claims (lifecycle rule 5) ends every active claim whose lease has
-- passed at p_now, through pw_end_claim (which re-checks the lease under the
-- locks: a heartbeat racing the sweep wins or loses cleanly); a claim
-- holding its entity's slot frees the entity as a release would, without an
-- ack. At most p_limit claims a call, their dispatch rows locked in entity
-- order (two sweeps never lock them crosswise). Returns the claims it
-- expired.
CREATE OR REPLACE FUNCTION expire_claims(
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text,
    p_limit integer DEFAULT 1000
)
    RETURNS TABLE(
        consumer_id text,
        epoch bigint,
        entity_url text,
        stream_path text,
        entity_cleared boolean,
        entity_status text,
        queued_wake_id text
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
$function$;

-- sweep_claims is expire_claims for the servers' sweepers: it runs only if
-- no other sweeper of the tenant holds the sweep lock (a transaction-level
-- advisory lock), so one instance sweeps at a time; the others get no rows.
CREATE OR REPLACE FUNCTION sweep_claims(
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text,
    p_limit integer DEFAULT 1000
)
    RETURNS TABLE(
        consumer_id text,
        epoch bigint,
        entity_url text,
        stream_path text,
        entity_cleared boolean,
        entity_status text,
        queued_wake_id text
    )
    LANGUAGE plpgsql
AS $function$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('pullwake.sweeper.' || p_tenant, 0)) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM expire_claims(p_now, p_tenant, p_limit);
END
$function$;

-- pw_notify_claim tells every server (LISTEN pullwake_claims) that a claim
-- ended, so it can drop the claim's write token (lifecycle rule 6). Delivered
-- at commit.
CREATE OR REPLACE FUNCTION pw_notify_claim(
    p_tenant text,
    p_consumer_id text,
    p_epoch bigint,
    p_stream_path text,
    p_status text
)
    RETURNS void
    LANGUAGE sql
AS $function$
    SELECT pg_notify('pullwake_claims', json_build_object(
        'tenant_id', p_tenant, 'consumer_id', p_consumer_id, 'epoch', p_epoch,
        'stream_path', p_stream_path, 'status', p_status)::text)
$function$;

-- pw_write_secret is the secret part of a claim's write token: the hex
-- SHA-256 of 'write:' and the claim token. Whoever holds the claim token
-- may obtain the write token anyway (the callback's claim request); the
-- write token, sent with every append, does not reveal the claim token.
-- STABLE, as convert_to is: a SQL function whose body is less immutable
-- than its declaration is never inlined, and each claim then parsed and
-- planned the body again (fmgr_sql, a few per cent of a claim's CPU).
CREATE OR REPLACE FUNCTION pw_write_secret(p_claim_token text)
    RETURNS text
    LANGUAGE sql
    STABLE PARALLEL SAFE STRICT
AS $function$
    SELECT encode(sha256(convert_to('write:' || p_claim_token, 'UTF8')), 'hex')
$function$;

-- pw_token_key returns the tenant's write-token signing key (HMAC, shared by
-- every instance: a forged token is refused without a query), creating it
-- on first use (every instance that races here ends with the same key).
CREATE OR REPLACE FUNCTION pw_token_key(p_tenant text DEFAULT 'default'::text)
    RETURNS bytea
    LANGUAGE plpgsql
AS $function$
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
$function$;
