-- +goose Up
-- The claim queue in a table of its own. The pick used to walk
-- wakes_queue_idx, a partial index of the wakes table: a claimed wake
-- leaves its entry there until VACUUM, and VACUUM of wakes (the whole
-- history) comes rarely, so every pick walked past the entries of the wakes
-- claimed since (68-143 index pages a pick in `pullwake bench` mode 2,
-- 0.2-1.1 ms; growing with the claim rate). wake_queue holds one row per
-- queued wake, kept by triggers on wakes (so every writer of wakes, psql
-- included, keeps it right), and the sweeper vacuums it every pass: it is
-- small, so that costs little and keeps the head of the queue clean.

CREATE TABLE wake_queue (
    tenant_id  text        NOT NULL DEFAULT 'default',
    wake_id    text        NOT NULL,
    entity_url text        NOT NULL,
    runner_id  text,
    created_at timestamptz NOT NULL,
    -- The claim order, oldest queued wake first, and the table's only
    -- index: with no other index on tenant_id the pick's plan cannot
    -- wander off to a bitmap scan and a sort of the whole queue.
    PRIMARY KEY (tenant_id, created_at, wake_id)
);
-- Vacuumed by the sweeper too; autovacuum as a fallback, by count not size.
ALTER TABLE wake_queue SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000);

INSERT INTO wake_queue (tenant_id, wake_id, entity_url, runner_id, created_at)
SELECT w.tenant_id, w.wake_id, w.entity_url, w.runner_id, w.created_at
  FROM wakes w WHERE w.status = 'queued';

-- +goose StatementBegin
-- pw_wake_queue_sync keeps wake_queue equal to the wakes whose status is
-- 'queued': a wake enters it when it is inserted or set queued, and leaves
-- it when its status changes or it is deleted.
CREATE FUNCTION pw_wake_queue_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'queued' THEN
        DELETE FROM wake_queue q
         WHERE q.tenant_id = OLD.tenant_id AND q.created_at = OLD.created_at AND q.wake_id = OLD.wake_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'queued' THEN
        INSERT INTO wake_queue (tenant_id, wake_id, entity_url, runner_id, created_at)
        VALUES (NEW.tenant_id, NEW.wake_id, NEW.entity_url, NEW.runner_id, NEW.created_at);
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- The WHEN clauses keep the function out of every other change of a wake
-- (a claimed wake completing, a finished one purged).
CREATE TRIGGER wakes_queue_insert AFTER INSERT ON wakes
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION pw_wake_queue_sync();
CREATE TRIGGER wakes_queue_update AFTER UPDATE ON wakes
    FOR EACH ROW WHEN ((OLD.status = 'queued' OR NEW.status = 'queued')
                       AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.wake_id IS DISTINCT FROM NEW.wake_id
                            OR OLD.entity_url IS DISTINCT FROM NEW.entity_url
                            OR OLD.runner_id IS DISTINCT FROM NEW.runner_id
                            OR OLD.created_at IS DISTINCT FROM NEW.created_at))
    EXECUTE FUNCTION pw_wake_queue_sync();
CREATE TRIGGER wakes_queue_delete AFTER DELETE ON wakes
    FOR EACH ROW WHEN (OLD.status = 'queued') EXECUTE FUNCTION pw_wake_queue_sync();

DROP INDEX wakes_queue_idx;

-- The pick must walk the queue's index in order and stop at the first wake
-- it can take. The queue is small, so the planner's estimates can make a
-- bitmap scan of the whole tenant and a sort look cheaper, and a generic
-- plan made while the queue was short is kept while it grows: measured
-- 613 ms a claim with 16,000 queued wakes. No statement of the claim needs a
-- sort, so the function plans without one.

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

-- +goose Down
ALTER FUNCTION claim_next_wake(text, integer, timestamptz, text) RESET enable_sort;
CREATE INDEX wakes_queue_idx ON wakes (tenant_id, created_at, wake_id) WHERE status = 'queued';
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

DROP TRIGGER wakes_queue_delete ON wakes;
DROP TRIGGER wakes_queue_update ON wakes;
DROP TRIGGER wakes_queue_insert ON wakes;
DROP FUNCTION pw_wake_queue_sync();
DROP TABLE wake_queue;
