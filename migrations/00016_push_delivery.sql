-- +goose Up
-- Push delivery: webhook subscriptions (PUT /__ds/subscriptions/{id}) and
-- entity types whose dispatch policy names a webhook target. A queued wake
-- of an entity without runner whose main stream a push target matches is
-- claimed on the target's behalf (claim_wake_for_push) and POSTed to the
-- target's URL by the servers' delivery worker. The claim is an ordinary
-- claim: its lease, heartbeats, done and the sweeper apply unchanged.
--
-- The claim rule itself is not repeated here: the part of claim_next_wake
-- that claims one picked wake moves into pw_claim_wake, which both
-- claim_next_wake and claim_wake_for_push call.

-- One row per push target. kind 'subscription' rows come from the API;
-- kind 'entity_type' rows mirror entity types whose default dispatch policy
-- has a webhook target (a trigger on entity_types keeps them). Only these
-- rows name URLs the servers ever call, and only admins write them.
CREATE TABLE push_subscriptions (
    tenant_id       text        NOT NULL DEFAULT 'default',
    id              text        NOT NULL,
    kind            text        NOT NULL DEFAULT 'subscription'
                                CHECK (kind IN ('subscription', 'entity_type')),
    pattern         text,
    streams         text[]      NOT NULL DEFAULT '{}',
    webhook_url     text        NOT NULL CHECK (webhook_url ~ '^https?://'),
    lease_ttl_ms    integer     NOT NULL DEFAULT 30000 CHECK (lease_ttl_ms BETWEEN 1000 AND 600000),
    description     text        NOT NULL DEFAULT '',
    -- Delivery health, shared by every server: consecutive failed
    -- deliveries and when the next attempt may start (exponential back-off).
    failures        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    last_error      text,
    last_delivered_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CHECK (pattern IS NOT NULL OR cardinality(streams) > 0)
);

-- +goose StatementBegin
-- pw_glob_regex turns a subscription pattern (stream-root-relative, '/'
-- separated; '*' matches within one segment, '**' matches zero or more
-- segments) into an anchored regular expression over '/' || path.
CREATE FUNCTION pw_glob_regex(p_pattern text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_pattern IS NULL THEN NULL ELSE
        '^' || coalesce(string_agg(
            CASE WHEN seg = '**' THEN '(/[^/]+)*'
                 ELSE '/' || replace(regexp_replace(seg, '([.+?^${}()|\[\]\\])', '\\\1', 'g'), '*', '[^/]*')
            END, '' ORDER BY n), '') || '$'
    END
      FROM unnest(string_to_array(trim(both '/' from p_pattern), '/')) WITH ORDINALITY AS s(seg, n)
$$;
-- +goose StatementEnd

ALTER TABLE push_subscriptions ADD COLUMN path_regex text GENERATED ALWAYS AS (pw_glob_regex(pattern)) STORED;

-- +goose StatementBegin
-- pw_stream_rel is a stream path relative to the stream root, the form
-- subscription patterns and streams[] use: /v1/stream/chat/1/main -> chat/1/main.
CREATE FUNCTION pw_stream_rel(p_path text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(regexp_replace(p_path, '^/+', ''), '^v1/stream/', '')
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_push_target names the one push target of an entity's main stream:
-- the oldest matching subscription, else the entity type's webhook target,
-- else none. One target per entity, so one endpoint per wake.
CREATE FUNCTION pw_push_target(p_tenant text, p_main_stream text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT s.id FROM push_subscriptions s
     WHERE s.tenant_id = p_tenant
       AND (('/' || pw_stream_rel(p_main_stream)) ~ s.path_regex
            OR pw_stream_rel(p_main_stream) = ANY (s.streams))
     ORDER BY s.kind = 'entity_type', s.created_at, s.id
     LIMIT 1
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_claim_wake claims one picked wake (the caller holds its wake_queue
-- entry locked) for p_runner_id: the claim rule of claim_next_wake, shared
-- by claim_wake_for_push. It returns no row when the wake cannot be
-- claimed now: its entity's dispatch row is locked by someone else (never
-- waited for), a claim with a live lease holds the entity, or the entity is
-- stopping or stopped (the wake is superseded then). A claim whose lease
-- lapsed is taken over: pw_end_claim expires it in this transaction.
CREATE FUNCTION pw_claim_wake(p_tenant text, p_wake text, p_url text, p_runner_id text,
                              p_lease_ttl_ms integer, p_now timestamptz)
RETURNS TABLE (wake_id text, consumer_id text, epoch bigint, entity_url text,
               stream_path text, acked_offset text, claim_token text,
               lease_expires_at timestamptz, lease_ttl_ms integer)
LANGUAGE plpgsql AS $$
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

-- +goose StatementBegin
-- claim_next_wake (00007's definition, unchanged in behaviour): the pick
-- stays here, the claim of the picked wake is pw_claim_wake.
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

    -- The pick walks the queue's index in claim order, each probe starting
    -- just past the previous candidate, until a wake can be claimed or the
    -- queue is exhausted: a claimable wake is found however many wakes
    -- ahead of it are locked by other claims (SKIP LOCKED passes them) or
    -- cannot be taken (pw_claim_wake answers nothing for them). Every
    -- probe is one descent of wake_queue_pkey.
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
$$;
-- +goose StatementEnd

-- push_queue: the queued wakes a push target matches, with that target.
-- Matching a wake's entity against every subscription's pattern is done
-- once, when the wake is queued (a trigger on wake_queue) or when the
-- targets change (a statement trigger on push_subscriptions recomputes the
-- queued wakes), never by the delivery worker's polls: a poll is one walk
-- of this table's order index. Kept only for wakes without runner.
CREATE TABLE push_queue (
    tenant_id  text        NOT NULL,
    wake_id    text        NOT NULL,
    target_id  text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, wake_id)
);
CREATE INDEX push_queue_order_idx ON push_queue (tenant_id, created_at, wake_id);

-- +goose StatementBegin
CREATE FUNCTION pw_push_queue_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_target text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM push_queue p WHERE p.tenant_id = OLD.tenant_id AND p.wake_id = OLD.wake_id;
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM push_subscriptions s WHERE s.tenant_id = NEW.tenant_id) THEN
        RETURN NULL;
    END IF;
    SELECT pw_push_target(NEW.tenant_id, e.main_stream) INTO v_target
      FROM entities e WHERE e.tenant_id = NEW.tenant_id AND e.url = NEW.entity_url;
    IF v_target IS NOT NULL THEN
        INSERT INTO push_queue (tenant_id, wake_id, target_id, created_at)
        VALUES (NEW.tenant_id, NEW.wake_id, v_target, NEW.created_at)
        ON CONFLICT (tenant_id, wake_id) DO UPDATE SET target_id = EXCLUDED.target_id;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER wake_queue_push_insert AFTER INSERT ON wake_queue
    FOR EACH ROW WHEN (NEW.runner_id IS NULL) EXECUTE FUNCTION pw_push_queue_sync();
CREATE TRIGGER wake_queue_push_delete AFTER DELETE ON wake_queue
    FOR EACH ROW WHEN (OLD.runner_id IS NULL) EXECUTE FUNCTION pw_push_queue_sync();

-- +goose StatementBegin
-- pw_push_queue_rebuild recomputes push_queue from the queued wakes without
-- runner, after a push target was added, removed or re-configured.
CREATE FUNCTION pw_push_queue_rebuild() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM push_queue;
    INSERT INTO push_queue (tenant_id, wake_id, target_id, created_at)
    SELECT q.tenant_id, q.wake_id, t.id, q.created_at
      FROM wake_queue q
      JOIN entities e ON e.tenant_id = q.tenant_id AND e.url = q.entity_url
     CROSS JOIN LATERAL (SELECT pw_push_target(q.tenant_id, e.main_stream) AS id) t
     WHERE q.runner_id IS NULL AND t.id IS NOT NULL;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER push_subscriptions_changed
    AFTER INSERT OR DELETE OR UPDATE OF pattern, streams, kind, created_at ON push_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION pw_push_queue_rebuild();

-- +goose StatementBegin
-- push_pending lists queued wakes a push target may take now (push_queue,
-- whose targets are not backing off after failed deliveries), oldest
-- first, at most p_limit. It locks and changes nothing;
-- claim_wake_for_push decides.
CREATE FUNCTION push_pending(p_limit integer DEFAULT 16, p_now timestamptz DEFAULT NULL,
                             p_tenant text DEFAULT 'default')
RETURNS TABLE (target_id text, wake_id text)
LANGUAGE sql STABLE AS $$
    SELECT p.target_id, p.wake_id
      FROM push_queue p
      JOIN push_subscriptions s ON s.tenant_id = p.tenant_id AND s.id = p.target_id
     WHERE p.tenant_id = p_tenant
       AND s.next_attempt_at <= coalesce(p_now, now())
     ORDER BY p.created_at, p.wake_id
     LIMIT p_limit
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- claim_wake_for_push claims the queued wake p_wake_id on behalf of push
-- target p_target, through the same claim as claim_next_wake
-- (pw_claim_wake; the claim's runner_id is 'push:' || target). It returns
-- no row when the wake is not queued, is locked by another claim (another
-- server is claiming it: the claim is the lock), targets a runner, is not
-- this target's, or its entity cannot be claimed now. The row names the
-- URL to POST to (read here, from the admin-registered target) and the
-- main stream's tail at the claim (what a synchronous {"done": true}
-- acknowledges).
CREATE FUNCTION claim_wake_for_push(p_target text, p_wake_id text, p_lease_ttl_ms integer DEFAULT NULL,
                                    p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (wake_id text, consumer_id text, epoch bigint, entity_url text,
               stream_path text, acked_offset text, claim_token text,
               lease_expires_at timestamptz, lease_ttl_ms integer,
               webhook_url text, tail_offset text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now  timestamptz := coalesce(p_now, now());
    v_sub  push_subscriptions;
    v_url  text;
    v_main text;
    v_c    record;
BEGIN
    SELECT * INTO v_sub FROM push_subscriptions s WHERE s.tenant_id = p_tenant AND s.id = p_target;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT q.entity_url INTO v_url FROM wake_queue q
     WHERE q.tenant_id = p_tenant AND q.wake_id = p_wake_id AND q.runner_id IS NULL
       FOR UPDATE OF q SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT e.main_stream INTO v_main FROM entities e WHERE e.tenant_id = p_tenant AND e.url = v_url;
    IF v_main IS NULL OR pw_push_target(p_tenant, v_main) IS DISTINCT FROM p_target THEN
        RETURN;
    END IF;
    SELECT * INTO v_c FROM pw_claim_wake(p_tenant, p_wake_id, v_url, 'push:' || p_target,
                                         coalesce(p_lease_ttl_ms, v_sub.lease_ttl_ms), v_now);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    wake_id := v_c.wake_id;
    consumer_id := v_c.consumer_id;
    epoch := v_c.epoch;
    entity_url := v_c.entity_url;
    stream_path := v_c.stream_path;
    acked_offset := v_c.acked_offset;
    claim_token := v_c.claim_token;
    lease_expires_at := v_c.lease_expires_at;
    lease_ttl_ms := v_c.lease_ttl_ms;
    webhook_url := v_sub.webhook_url;
    tail_offset := pw_offset(coalesce((SELECT s.tail_seq FROM streams s
                                        WHERE s.tenant_id = p_tenant AND s.path = v_c.stream_path), 0));
    RETURN NEXT;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- upsert_push_subscription creates subscription p_id or re-confirms it:
-- 'created' (new), 'unchanged' (same configuration), 'conflict' (the id
-- exists with another configuration; nothing changes).
CREATE FUNCTION upsert_push_subscription(p_id text, p_pattern text, p_streams text[], p_webhook_url text,
                                         p_lease_ttl_ms integer, p_description text,
                                         p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (outcome text, subscription push_subscriptions)
LANGUAGE plpgsql AS $$
DECLARE
    v_row push_subscriptions;
BEGIN
    INSERT INTO push_subscriptions (tenant_id, id, kind, pattern, streams, webhook_url, lease_ttl_ms,
                                    description, created_at, updated_at)
    VALUES (p_tenant, p_id, 'subscription', p_pattern, coalesce(p_streams, '{}'), p_webhook_url,
            p_lease_ttl_ms, coalesce(p_description, ''), coalesce(p_now, now()), coalesce(p_now, now()))
    ON CONFLICT (tenant_id, id) DO NOTHING
    RETURNING * INTO v_row;
    IF FOUND THEN
        RETURN QUERY SELECT 'created'::text, v_row;
        RETURN;
    END IF;
    SELECT * INTO v_row FROM push_subscriptions s WHERE s.tenant_id = p_tenant AND s.id = p_id;
    IF v_row.kind = 'subscription' AND v_row.pattern IS NOT DISTINCT FROM p_pattern
       AND v_row.streams = coalesce(p_streams, '{}') AND v_row.webhook_url = p_webhook_url
       AND v_row.lease_ttl_ms = p_lease_ttl_ms AND v_row.description = coalesce(p_description, '') THEN
        RETURN QUERY SELECT 'unchanged'::text, v_row;
    ELSE
        RETURN QUERY SELECT 'conflict'::text, v_row;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- Entity types whose default dispatch policy has a webhook target push:
-- the first such target becomes push target 'entity-type:<name>' over the
-- type's entities' main streams. Only http(s) URLs are taken. Entity-type
-- registration is an admin route, so these URLs are admin-registered too.
CREATE FUNCTION pw_entity_type_push_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_url text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM push_subscriptions s
         WHERE s.tenant_id = OLD.tenant_id AND s.id = 'entity-type:' || OLD.name
           AND (TG_OP = 'DELETE' OR OLD.default_dispatch_policy IS DISTINCT FROM NEW.default_dispatch_policy);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT t.value ->> 'url' INTO v_url
          FROM jsonb_array_elements(CASE WHEN jsonb_typeof(NEW.default_dispatch_policy -> 'targets') = 'array'
                                         THEN NEW.default_dispatch_policy -> 'targets' ELSE '[]' END)
               WITH ORDINALITY AS t(value, n)
         WHERE jsonb_typeof(t.value) = 'object' AND t.value ->> 'type' = 'webhook'
           AND t.value ->> 'url' ~ '^https?://[^\s]+$'
         ORDER BY t.n LIMIT 1;
        IF v_url IS NOT NULL THEN
            INSERT INTO push_subscriptions (tenant_id, id, kind, pattern, webhook_url, description)
            VALUES (NEW.tenant_id, 'entity-type:' || NEW.name, 'entity_type', NEW.name || '/**', v_url,
                    'webhook target of entity type ' || NEW.name)
            ON CONFLICT (tenant_id, id) DO NOTHING;
        END IF;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER entity_types_push_sync
    AFTER INSERT OR UPDATE OR DELETE ON entity_types
    FOR EACH ROW EXECUTE FUNCTION pw_entity_type_push_sync();

-- Types registered before this migration.
INSERT INTO push_subscriptions (tenant_id, id, kind, pattern, webhook_url, description)
SELECT et.tenant_id, 'entity-type:' || et.name, 'entity_type', et.name || '/**', t.value ->> 'url',
       'webhook target of entity type ' || et.name
  FROM entity_types et
  CROSS JOIN LATERAL (
      SELECT x.value FROM jsonb_array_elements(CASE WHEN jsonb_typeof(et.default_dispatch_policy -> 'targets') = 'array'
                                                    THEN et.default_dispatch_policy -> 'targets' ELSE '[]' END)
                          WITH ORDINALITY AS x(value, n)
       WHERE jsonb_typeof(x.value) = 'object' AND x.value ->> 'type' = 'webhook'
         AND x.value ->> 'url' ~ '^https?://[^\s]+$'
       ORDER BY x.n LIMIT 1) t;

-- +goose Down
-- +goose StatementBegin
-- claim_next_wake as 00007 defined it.
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
DROP FUNCTION pw_claim_wake(text, text, text, text, integer, timestamptz);
DROP TRIGGER entity_types_push_sync ON entity_types;
DROP FUNCTION pw_entity_type_push_sync();
DROP FUNCTION upsert_push_subscription(text, text, text[], text, integer, text, timestamptz, text);
DROP FUNCTION claim_wake_for_push(text, text, integer, timestamptz, text);
DROP FUNCTION push_pending(integer, timestamptz, text);
DROP TRIGGER push_subscriptions_changed ON push_subscriptions;
DROP FUNCTION pw_push_queue_rebuild();
DROP TRIGGER wake_queue_push_delete ON wake_queue;
DROP TRIGGER wake_queue_push_insert ON wake_queue;
DROP FUNCTION pw_push_queue_sync();
DROP TABLE push_queue;
DROP TABLE push_subscriptions;
DROP FUNCTION pw_push_target(text, text);
DROP FUNCTION pw_stream_rel(text);
DROP FUNCTION pw_glob_regex(text);
