-- Wake events and the wake-event rule (docs/lifecycle.md, "Wake events").
-- Each runner has a wake stream (a JSON-mode Durable Stream at
-- /v1/stream/runners/{id}/wake) holding one event per queued wake and target
-- runner, whichever function or psql statement queued it. The queueing
-- transaction only logs the wake (a trigger on wakes inserts a row in
-- wake_event_log: no lock another transaction waits on); after the commit,
-- pw_publish_wake_events turns the log into events, in log order, behind a
-- snapshot fence. Electric's runtime reads that stream and claims exactly
-- once per event it reads.
--
-- The rule: a runner that claims exactly once per wake event it reads, and
-- never otherwise, eventually claims every queued wake addressed to it. So
-- a queued wake keeps an unspent event for as long as it is queued: one is
-- logged when it is queued (pw_wake_pending_trigger), when a claim that
-- blocked it ends (pw_end_claim), when its runner registers again or is
-- enabled (pw_backfill_wake_events), and by the sweeper's backstop
-- (sweep_wake_events), and written by pw_publish_wake_events; an event
-- claims its own entity's wake or nothing (claim_wake_for_event).
-- Duplicate events are harmless: a second claim of one wake answers 204.
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

-- pw_wake_pending_trigger logs a wake that became queued (inserted queued,
-- or set back to queued) in wake_event_log, in the queueing transaction:
-- one insert, no lock that another transaction waits on. The event itself
-- is written when pw_publish_wake_events publishes the log, after the
-- commit; a rolled-back transaction's log rows never become visible, so
-- never become events.
CREATE OR REPLACE FUNCTION pw_wake_pending_trigger()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO wake_event_log (tenant_id, wake_id) VALUES (NEW.tenant_id, NEW.wake_id);
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER wakes_event_insert AFTER INSERT ON wakes
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION pw_wake_pending_trigger();

CREATE OR REPLACE TRIGGER wakes_event_requeue AFTER UPDATE ON wakes
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM 'queued' AND NEW.status = 'queued')
    EXECUTE FUNCTION pw_wake_pending_trigger();

-- pw_publish_wake_events publishes the wake-event log to the runners' wake
-- streams: it takes up to p_limit log rows past the publisher's position
-- (wake_event_publisher), in log order (xid, id), deletes them, and writes
-- their events. Returns how many events it wrote; 0 when there was nothing
-- to publish (then it reads two index entries and writes nothing). The
-- server calls it after its own commits that queue wakes and on a short
-- timer; an operator may call it from psql at any time.
--
-- The fence: only rows whose transaction id lies below the xmin of the
-- publisher's snapshot are taken, that is rows of transactions that have
-- ended, when every transaction that could still add a row earlier in the
-- log order has ended too (a committed transaction's rows are all visible;
-- a rolled-back one's never are). So the log is published as a growing
-- prefix in transaction-id order: the position only moves forward, past
-- rows that were all published, and a transaction that commits late (its
-- id below others' that committed earlier) holds back the rows after it
-- instead of being passed over. The cost: a long-running transaction that
-- holds a transaction id, anywhere on the cluster, delays every wake event
-- queued after it started until it ends (docs/electric.md, Wake streams).
--
-- Publishers are serialized by the lock on the position row: a second one
-- waits, then starts from the first one's new position, so no row is
-- published twice. A position ahead of every transaction id the cluster
-- has handed out (a restore into a new cluster) starts again at 0.
--
-- The events: for each logged wake still queued, one event in the wake
-- stream of each runner it targets (its runner, or every enabled runner
-- when it names none), evaluated now, unless that runner has one for the
-- wake's generation already; a forced row (a claim's end, the backstop)
-- is written even then, since that one may be spent, and a row naming a
-- runner (a back-fill) is for that runner alone. A back-fill row (no wake)
-- stands for every wake queued that its runner may claim. An event's ts
-- is when the wake was queued, or when it was forced if that is later.
-- Event:
--   {"type": "wake", "subscription_id": "runner:{id}", "stream": <main
--    stream>, "generation": <epoch its claim will get>, "ts": <unix ms>}
-- A wake claimed before its row is published (in the same transaction, or
-- by a later one) gets none: it is not claimable by anyone else. All
-- events of one runner in a batch go in one append, in log order; the
-- runners' streams are locked in one order (tenant, runner id). Each wake
-- is read by its keys (the wake; its entity and dispatch row; its
-- targets; each target's events for the generation; each runner's wake
-- stream once per batch), one statement each, never a join a plan could
-- start from the wrong end: the cost follows the batch and its
-- targets, never the queue. A back-fill row reads the queue of its runner
-- (and of any runner): a registration's cost, as before the log.
CREATE OR REPLACE FUNCTION pw_publish_wake_events(p_limit integer DEFAULT 1000)
    RETURNS integer
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
    SET enable_sort TO 'off'
    SET jit TO 'off'
AS $function$
DECLARE
    v_snap    pg_snapshot;
    v_pxid    xid8;
    v_pid     bigint;
    v_fence   xid8;
    b_xid     xid8[];
    b_id      bigint[];
    b_tenant  text[];
    b_wake    text[];
    b_runner  text[];
    b_forced  timestamptz[];
    v_q       record;
    v_url     text;
    v_target  text;
    v_status  text;
    v_at      timestamptz;
    v_stream  text;
    v_gen     bigint;
    v_runner  text;
    v_app     boolean;
    v_forced  timestamptz;
    -- Runners (tenant || ' ' || id) whose wake stream was looked up, and
    -- whether it exists.
    c_key     text[] := '{}';
    c_has     boolean[] := '{}';
    v_i       integer;
    -- The events to write, one element per (wake, runner), in log order.
    e_tenant  text[] := '{}';
    e_runner  text[] := '{}';
    e_wake    text[] := '{}';
    e_ord     integer[] := '{}';
    e_gen     bigint[] := '{}';
    e_at      timestamptz[] := '{}';
    e_data    bytea[] := '{}';
    v_r       record;
    v_tail    bigint;
    v_n       integer := 0;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 THEN
        RAISE EXCEPTION 'PW008: limit must be positive, got %', p_limit USING ERRCODE = 'PW008';
    END IF;
    -- Nothing fenced past the position: done, with no lock and no write.
    v_snap := pg_current_snapshot();
    SELECT p.pos_xid, p.pos_id INTO v_pxid, v_pid FROM wake_event_publisher p WHERE p.singleton;
    IF v_pxid <= pg_snapshot_xmax(v_snap)
       AND NOT EXISTS (SELECT 1 FROM wake_event_log l
                        WHERE (l.xid, l.id) > (v_pxid, v_pid) AND l.xid < pg_snapshot_xmin(v_snap)) THEN
        RETURN 0;
    END IF;

    SELECT p.pos_xid, p.pos_id INTO v_pxid, v_pid FROM wake_event_publisher p WHERE p.singleton FOR UPDATE;
    v_snap := pg_current_snapshot();
    v_fence := pg_snapshot_xmin(v_snap);
    IF v_pxid > pg_snapshot_xmax(v_snap) THEN
        v_pxid := '0'::xid8;
        v_pid := 0;
    END IF;
    WITH d AS (
        DELETE FROM wake_event_log l
         WHERE l.ctid = ANY (ARRAY(
               SELECT k.ctid FROM wake_event_log k
                WHERE (k.xid, k.id) > (v_pxid, v_pid) AND k.xid < v_fence
                ORDER BY k.xid, k.id
                LIMIT p_limit))
        RETURNING l.xid, l.id, l.tenant_id, l.wake_id, l.runner_id, l.forced_at
    )
    SELECT array_agg(d.xid ORDER BY d.xid, d.id), array_agg(d.id ORDER BY d.xid, d.id),
           array_agg(d.tenant_id ORDER BY d.xid, d.id), array_agg(d.wake_id ORDER BY d.xid, d.id),
           array_agg(d.runner_id ORDER BY d.xid, d.id), array_agg(d.forced_at ORDER BY d.xid, d.id)
      INTO b_xid, b_id, b_tenant, b_wake, b_runner, b_forced
      FROM d;
    IF b_xid IS NULL THEN
        RETURN 0;
    END IF;
    -- The new position: past the last row taken, or, when the batch took
    -- every fenced row, the fence itself (every row below it is published).
    IF cardinality(b_xid) < p_limit THEN
        v_pxid := v_fence;
        v_pid := 0;
    ELSE
        v_pxid := b_xid[cardinality(b_xid)];
        v_pid := b_id[cardinality(b_id)];
    END IF;
    UPDATE wake_event_publisher p SET pos_xid = v_pxid, pos_id = v_pid, published_at = clock_timestamp()
     WHERE p.singleton AND (p.pos_xid, p.pos_id) < (v_pxid, v_pid);

    FOR v_q IN
        SELECT r.tenant_id, r.wake_id,
               array_agg(r.only_runner ORDER BY r.ord) AS onlys,
               array_agg(r.forced ORDER BY r.ord) AS forceds
          FROM (SELECT b.tenant_id, b.wake_id, b.runner_id AS only_runner, b.forced_at AS forced,
                       b.ord, NULL::timestamptz AS sub
                  FROM unnest(b_tenant, b_wake, b_runner, b_forced) WITH ORDINALITY
                         AS b(tenant_id, wake_id, runner_id, forced_at, ord)
                 WHERE b.wake_id IS NOT NULL
                UNION ALL
                -- A back-fill: every wake queued that its runner may take
                -- (its own, and those for any runner), in claim order.
                SELECT b.tenant_id, q.wake_id, b.runner_id, b.forced_at, b.ord, q.created_at
                  FROM unnest(b_tenant, b_wake, b_runner, b_forced) WITH ORDINALITY
                         AS b(tenant_id, wake_id, runner_id, forced_at, ord)
                 CROSS JOIN LATERAL (
                       SELECT q.wake_id, q.created_at FROM wake_queue q
                        WHERE q.tenant_id = b.tenant_id AND q.runner_key IN (b.runner_id, '')) q
                 WHERE b.wake_id IS NULL AND b.runner_id IS NOT NULL) r
         GROUP BY r.tenant_id, r.wake_id
         ORDER BY min(r.ord), min(r.sub), r.wake_id
    LOOP
        SELECT w.entity_url, w.runner_id, w.status, w.updated_at
          INTO v_url, v_target, v_status, v_at
          FROM wakes w
         WHERE w.tenant_id = v_q.tenant_id AND w.wake_id = v_q.wake_id;
        CONTINUE WHEN v_status IS DISTINCT FROM 'queued';
        SELECT e.main_stream, d.epoch + 1 INTO v_stream, v_gen
          FROM entities e
          JOIN entity_dispatch_state d ON d.tenant_id = e.tenant_id AND d.entity_url = e.url
         WHERE e.tenant_id = v_q.tenant_id AND e.url = v_url;
        CONTINUE WHEN NOT FOUND;
        FOR v_runner IN
            SELECT v_target WHERE v_target IS NOT NULL
            UNION ALL
            SELECT r.id FROM runners r
             WHERE v_target IS NULL AND r.tenant_id = v_q.tenant_id AND r.admin_status = 'enabled'
        LOOP
            -- The rows of this wake that apply to this runner: those for
            -- every target, and those naming it. Forced when one is.
            v_app := false;
            v_forced := NULL;
            FOR i IN 1 .. cardinality(v_q.onlys) LOOP
                IF v_q.onlys[i] IS NULL OR v_q.onlys[i] = v_runner THEN
                    v_app := true;
                    v_forced := greatest(v_forced, v_q.forceds[i]);
                END IF;
            END LOOP;
            CONTINUE WHEN NOT v_app;
            -- Whether the runner has a wake stream, read once per batch.
            v_i := array_position(c_key, v_q.tenant_id || ' ' || v_runner);
            IF v_i IS NULL THEN
                c_key := c_key || (v_q.tenant_id || ' ' || v_runner);
                c_has := c_has || EXISTS (SELECT 1 FROM streams s
                                           WHERE s.tenant_id = v_q.tenant_id AND s.path = pw_wake_stream(v_runner));
                v_i := cardinality(c_key);
            END IF;
            CONTINUE WHEN NOT c_has[v_i];
            -- A forced event (wake-event rule) is written even when the
            -- wake had one for this generation: that one may be spent.
            CONTINUE WHEN v_forced IS NULL
                      AND EXISTS (SELECT 1 FROM wake_events v
                                   WHERE v.tenant_id = v_q.tenant_id AND v.wake_id = v_q.wake_id
                                     AND v.runner_id = v_runner AND v.generation = v_gen);
            e_tenant := e_tenant || v_q.tenant_id;
            e_runner := e_runner || v_runner;
            e_wake := e_wake || v_q.wake_id;
            e_ord := e_ord || cardinality(e_ord);
            e_gen := e_gen || v_gen;
            e_at := e_at || greatest(v_forced, v_at);
            e_data := e_data || convert_to(jsonb_build_object(
                'type', 'wake',
                'subscription_id', 'runner:' || v_runner,
                'stream', v_stream,
                'generation', v_gen,
                'ts', (extract(epoch FROM greatest(v_forced, v_at)) * 1000)::bigint
            )::text, 'UTF8');
        END LOOP;
    END LOOP;
    FOR v_r IN
        SELECT x.tenant_id, x.runner_id,
               array_agg(x.event ORDER BY x.ord) AS data,
               array_agg(x.wake_id ORDER BY x.ord) AS wakes,
               array_agg(x.generation ORDER BY x.ord) AS gens,
               array_agg(x.queued_at ORDER BY x.ord) AS times
          FROM unnest(e_tenant, e_runner, e_wake, e_ord, e_gen, e_at, e_data)
                 AS x(tenant_id, runner_id, wake_id, ord, generation, queued_at, event)
         GROUP BY x.tenant_id, x.runner_id
         ORDER BY x.tenant_id, x.runner_id
    LOOP
        v_tail := pw_stream_append(v_r.tenant_id, pw_wake_stream(v_r.runner_id), v_r.data, clock_timestamp());
        INSERT INTO wake_events (tenant_id, wake_id, runner_id, generation, seq, created_at)
        SELECT v_r.tenant_id, u.wake_id, v_r.runner_id, u.generation,
               v_tail - cardinality(v_r.wakes) + u.i, u.queued_at
          FROM unnest(v_r.wakes, v_r.gens, v_r.times) WITH ORDINALITY AS u(wake_id, generation, queued_at, i);
        v_n := v_n + cardinality(v_r.wakes);
    END LOOP;
    RETURN v_n;
END
$function$;

-- pw_backfill_wake_events gives a runner that registers again (a restart)
-- or is enabled again a new event for each wake queued that it may claim:
-- it may have read, and spent, the events it had. It logs one back-fill
-- row (forced, for this runner alone); the publisher expands it into the
-- wakes queued when it publishes it. A wake queued by a transaction still
-- open when the runner registered is covered either way: a row is
-- published only after its transaction committed, one publisher at a
-- time, so of the two rows the one published later sees the other's
-- commit (this row then finds the wake queued; the wake's row finds the
-- runner among its targets). No lock is shared with the queueing
-- transactions. Returns 1, the rows logged.
CREATE OR REPLACE FUNCTION pw_backfill_wake_events(
    p_tenant text,
    p_runner_id text,
    p_now timestamp with time zone
)
    RETURNS integer
    LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO wake_event_log (tenant_id, wake_id, runner_id, forced_at)
    VALUES (p_tenant, NULL, p_runner_id, p_now);
    RETURN 1;
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
-- event. Returns how many wakes it logged events for (written when the
-- log is published, pw_publish_wake_events).
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
            INSERT INTO wake_event_log (tenant_id, wake_id, forced_at)
            VALUES (p_tenant, v_q.wake_id, v_now);
            v_n := v_n + 1;
            EXIT;
        END LOOP;
    END LOOP;
    RETURN v_n;
END
$function$;
