-- Wake events and the wake-event rule (docs/lifecycle.md, "Wake events").
-- Each runner has a wake stream (a JSON-mode Durable Stream at
-- /v1/stream/runners/{id}/wake) holding one event per queued wake and target
-- runner, written at the commit of the transaction that queued the wake
-- (triggers on wakes, one deferred flush), whichever function or psql
-- statement queued it. Electric's runtime reads that stream and claims
-- exactly once per event it reads.
--
-- The rule: a runner that claims exactly once per wake event it reads, and
-- never otherwise, eventually claims every queued wake addressed to it. So
-- a queued wake keeps an unspent event for as long as it is queued: one is
-- written when it is queued (pw_wake_pending_trigger, pw_flush_wake_events),
-- when a claim that blocked it ends (pw_end_claim), when its runner
-- registers again or is enabled (pw_backfill_wake_events), and by the
-- sweeper's backstop (sweep_wake_events); an event claims its own entity's
-- wake or nothing (claim_wake_for_event). Duplicate events are harmless: a
-- second claim of one wake answers 204.
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

-- pw_wake_stream is the path of a runner's wake stream.
CREATE OR REPLACE FUNCTION pw_wake_stream(p_runner_id text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE STRICT
AS $function$
    SELECT '/v1/stream/runners/' || p_runner_id || '/wake'
$function$;

-- pw_wake_stream_offset is where a reader of the runner's wake stream
-- starts to see the event of every wake still queued for it: just before
-- the oldest such event, or the tail when there is none.
CREATE OR REPLACE FUNCTION pw_wake_stream_offset(p_tenant text, p_runner_id text)
    RETURNS text
    LANGUAGE sql
    STABLE
AS $function$
    SELECT pw_offset(coalesce(
        (SELECT min(v.seq) - 1 FROM wake_events v
           JOIN wakes w ON w.tenant_id = v.tenant_id AND w.wake_id = v.wake_id
          WHERE v.tenant_id = p_tenant AND v.runner_id = p_runner_id AND w.status = 'queued'),
        (SELECT s.tail_seq FROM streams s
          WHERE s.tenant_id = p_tenant AND s.path = pw_wake_stream(p_runner_id)),
        0))
$function$;

-- pw_lock_wake_targets takes the tenant's wake-target lock (a transaction
-- advisory lock): shared by every flush of wake events, exclusive while a
-- runner is registered or enabled and back-filled. Flushes do not wait on
-- each other; a registration waits for the flushes in progress and they
-- for it, so no wake misses the events of a runner that appears meanwhile.
CREATE OR REPLACE FUNCTION pw_lock_wake_targets(p_tenant text, p_exclusive boolean)
    RETURNS void
    LANGUAGE plpgsql
AS $function$
BEGIN
    IF p_exclusive THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('pullwake.wake_targets.' || p_tenant, 0));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(hashtextextended('pullwake.wake_targets.' || p_tenant, 0));
    END IF;
END
$function$;

-- pw_wake_pending_trigger records a wake that became queued (inserted
-- queued, or set back to queued) for the flush at commit.
CREATE OR REPLACE FUNCTION pw_wake_pending_trigger()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO wake_event_pending (xid, tenant_id, wake_id)
    VALUES (pg_current_xact_id(), NEW.tenant_id, NEW.wake_id);
    PERFORM set_config('pullwake.wake_events_pending', 'yes', true);
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER wakes_event_insert AFTER INSERT ON wakes
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION pw_wake_pending_trigger();

CREATE OR REPLACE TRIGGER wakes_event_requeue AFTER UPDATE ON wakes
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM 'queued' AND NEW.status = 'queued')
    EXECUTE FUNCTION pw_wake_pending_trigger();

-- pw_flush_wake_events writes the events of the wakes queued so far in the
-- running transaction: for each wake still queued, one event in the wake
-- stream of each runner it targets (its runner, or every enabled runner
-- when it names none) that lacks one for the wake's generation; a forced
-- pending row (a claim's end, a back-fill, the backstop) is written even
-- when such an event exists, since that one may be spent, and a pending row
-- naming a runner is for that runner alone. Event:
--   {"type": "wake", "subscription_id": "runner:{id}", "stream": <main
--    stream>, "generation": <epoch its claim will get>, "ts": <unix ms>}
-- A wake queued and claimed in the same transaction (never claimable by
-- anyone else) gets none. All events of one runner go in one append, and
-- the runners' streams are locked in one order (tenant, runner id), so two
-- flushing transactions never wait on each other crosswise. No NOTIFY: it
-- would hold the cluster-wide notification lock through the commit,
-- serializing every notifying commit; each server watches the tails of the
-- wake streams its live readers wait on instead (server/wakestream.go).
-- Each pending wake is read by its keys (the wake, its entity and dispatch
-- row, each target's wake stream and events), one statement each: the cost
-- follows the pending wakes and their targets, never the queue (see Plans
-- in lifecycle.sql). Returns how many events it wrote.
CREATE OR REPLACE FUNCTION pw_flush_wake_events()
    RETURNS integer
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_tenants text[];
    v_wakes   text[];
    v_forced  timestamptz[];
    v_only    text[];
    v_url     text;
    v_target  text;
    v_status  text;
    v_created timestamptz;
    v_at      timestamptz;
    v_stream  text;
    v_gen     bigint;
    v_runner  text;
    -- The events to write, one element per (wake, runner).
    e_tenant  text[] := '{}';
    e_runner  text[] := '{}';
    e_wake    text[] := '{}';
    e_created timestamptz[] := '{}';
    e_gen     bigint[] := '{}';
    e_at      timestamptz[] := '{}';
    e_data    bytea[] := '{}';
    v_r       record;
    v_tail    bigint;
    v_n       integer := 0;
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
    FOR i IN 1 .. cardinality(v_wakes) LOOP
        SELECT w.entity_url, w.runner_id, w.status, w.created_at, coalesce(v_forced[i], w.updated_at)
          INTO v_url, v_target, v_status, v_created, v_at
          FROM wakes w
         WHERE w.tenant_id = v_tenants[i] AND w.wake_id = v_wakes[i];
        CONTINUE WHEN v_status IS DISTINCT FROM 'queued';
        SELECT e.main_stream, d.epoch + 1 INTO v_stream, v_gen
          FROM entities e
          JOIN entity_dispatch_state d ON d.tenant_id = e.tenant_id AND d.entity_url = e.url
         WHERE e.tenant_id = v_tenants[i] AND e.url = v_url;
        CONTINUE WHEN NOT FOUND;
        FOR v_runner IN
            SELECT v_target WHERE v_target IS NOT NULL
            UNION ALL
            SELECT r.id FROM runners r
             WHERE v_target IS NULL AND r.tenant_id = v_tenants[i] AND r.admin_status = 'enabled'
        LOOP
            CONTINUE WHEN v_only[i] IS NOT NULL AND v_runner <> v_only[i];
            CONTINUE WHEN NOT EXISTS (SELECT 1 FROM streams s
                                       WHERE s.tenant_id = v_tenants[i] AND s.path = pw_wake_stream(v_runner));
            -- A forced event (wake-event rule) is written even when the
            -- wake had one for this generation: that one may be spent.
            CONTINUE WHEN v_forced[i] IS NULL
                      AND EXISTS (SELECT 1 FROM wake_events v
                                   WHERE v.tenant_id = v_tenants[i] AND v.wake_id = v_wakes[i]
                                     AND v.runner_id = v_runner AND v.generation = v_gen);
            e_tenant := e_tenant || v_tenants[i];
            e_runner := e_runner || v_runner;
            e_wake := e_wake || v_wakes[i];
            e_created := e_created || v_created;
            e_gen := e_gen || v_gen;
            e_at := e_at || v_at;
            e_data := e_data || convert_to(jsonb_build_object(
                'type', 'wake',
                'subscription_id', 'runner:' || v_runner,
                'stream', v_stream,
                'generation', v_gen,
                'ts', (extract(epoch FROM v_at) * 1000)::bigint
            )::text, 'UTF8');
        END LOOP;
    END LOOP;
    FOR v_r IN
        SELECT x.tenant_id, x.runner_id,
               array_agg(x.event ORDER BY x.created_at, x.wake_id) AS data,
               array_agg(x.wake_id ORDER BY x.created_at, x.wake_id) AS wakes,
               array_agg(x.generation ORDER BY x.created_at, x.wake_id) AS gens,
               array_agg(x.queued_at ORDER BY x.created_at, x.wake_id) AS times,
               max(x.queued_at) AS now
          FROM unnest(e_tenant, e_runner, e_wake, e_created, e_gen, e_at, e_data)
                 AS x(tenant_id, runner_id, wake_id, created_at, generation, queued_at, event)
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
$function$;

-- pw_wake_flush_trigger runs at commit, once per recorded wake; the first
-- run flushes them all, the others find nothing pending and return.
CREATE OR REPLACE FUNCTION pw_wake_flush_trigger()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
BEGIN
    IF current_setting('pullwake.wake_events_pending', true) = 'yes' THEN
        PERFORM pw_flush_wake_events();
    END IF;
    RETURN NULL;
END
$function$;

-- Deferred to the commit: the events are written after every other write
-- of the transaction, in the same transaction. A constraint trigger cannot
-- be replaced in place: sqlsource drops it and this file makes it again.
CREATE CONSTRAINT TRIGGER wake_event_pending_flush AFTER INSERT ON wake_event_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pw_wake_flush_trigger();

-- pw_backfill_wake_events gives a runner that registers again (a restart)
-- or is enabled again a new event for each wake queued that it may claim,
-- now: it may have read, and spent, the events it had. The events are
-- forced and for this runner alone; the wake-target lock is taken
-- exclusively (pw_lock_wake_targets). Returns how many events it wrote.
CREATE OR REPLACE FUNCTION pw_backfill_wake_events(
    p_tenant text,
    p_runner_id text,
    p_now timestamp with time zone
)
    RETURNS integer
    LANGUAGE plpgsql
AS $function$
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
$function$;

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
CREATE OR REPLACE FUNCTION claim_wake_for_event(
    p_runner_id text,
    p_stream text,
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
    SET enable_seqscan TO 'off'
AS $function$
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
$function$;

-- sweep_wake_events is the wake-event rule's backstop, run by the sweeper
-- (one instance per tenant at a time): among the p_limit oldest queued
-- wakes queued at least p_min_age ago that an enabled, online runner
-- reporting its read position may take, each that is claimable (no claim
-- with a live lease holds its entity) and has, for some such runner, no
-- event past that position and none written within p_min_age, gets a new
-- event. Returns how many wakes it wrote events for (written at commit).
-- The wakes are read by runner_key (those for any runner, those for each
-- such runner), and each is checked by its keys: a pass reads at most
-- p_limit wakes per such runner and one more, however long the queue is.
CREATE OR REPLACE FUNCTION sweep_wake_events(
    p_min_age interval DEFAULT '00:00:05'::interval,
    p_limit integer DEFAULT 1000,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS integer
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_now  timestamptz := coalesce(p_now, now());
    v_ids  text[];
    v_seqs bigint[];
    v_q    record;
    v_n    integer := 0;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('pullwake.wake_event_sweep.' || p_tenant, 0)) THEN
        RETURN 0;
    END IF;
    -- The runners that get events from the backstop.
    SELECT array_agg(r.id ORDER BY r.id), array_agg(r.wake_stream_read_seq ORDER BY r.id)
      INTO v_ids, v_seqs
      FROM runners r
     WHERE r.tenant_id = p_tenant AND r.admin_status = 'enabled'
       AND r.liveness_lease_expires_at > v_now AND r.wake_stream_read_seq IS NOT NULL;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    FOR v_q IN
        SELECT q.wake_id, q.entity_url, q.runner_id
          FROM unnest(ARRAY[''] || v_ids) AS k(runner_key)
         CROSS JOIN LATERAL (
               SELECT q.wake_id, q.entity_url, q.runner_id, q.created_at FROM wake_queue q
                WHERE q.tenant_id = p_tenant AND q.runner_key = k.runner_key
                  AND q.created_at <= v_now - p_min_age
                ORDER BY q.created_at, q.wake_id
                LIMIT p_limit) q
         ORDER BY q.created_at, q.wake_id
         LIMIT p_limit
    LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM entity_dispatch_state d
                               WHERE d.tenant_id = p_tenant AND d.entity_url = v_q.entity_url
                                 AND d.active_consumer_id IS NOT NULL AND d.active_lease_expires_at > v_now);
        FOR i IN 1 .. cardinality(v_ids) LOOP
            CONTINUE WHEN v_q.runner_id IS NOT NULL AND v_q.runner_id <> v_ids[i];
            CONTINUE WHEN EXISTS (SELECT 1 FROM wake_events v
                                   WHERE v.tenant_id = p_tenant AND v.wake_id = v_q.wake_id AND v.runner_id = v_ids[i]
                                     AND (v.seq > v_seqs[i] OR v.created_at > v_now - p_min_age));
            INSERT INTO wake_event_pending (xid, tenant_id, wake_id, forced_at)
            VALUES (pg_current_xact_id(), p_tenant, v_q.wake_id, v_now);
            v_n := v_n + 1;
            EXIT;
        END LOOP;
    END LOOP;
    IF v_n > 0 THEN
        PERFORM set_config('pullwake.wake_events_pending', 'yes', true);
    END IF;
    RETURN v_n;
END
$function$;
