-- Push delivery: webhook subscriptions (PUT /__ds/subscriptions/{id}) and
-- entity types whose dispatch policy names a webhook target. A queued wake
-- of an entity without runner whose main stream a push target matches is
-- claimed on the target's behalf (claim_wake_for_push) and POSTed to the
-- target's URL by the servers' delivery worker. The claim is an ordinary
-- claim (pw_claim_wake): its lease, heartbeats, done and the sweeper apply
-- unchanged. push_queue mirrors the queued wakes that have a push target.
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

-- pw_glob_regex turns a subscription pattern (stream-root-relative, '/'
-- separated; '*' matches within one segment, '**' matches zero or more
-- segments) into an anchored regular expression over '/' || path.
CREATE OR REPLACE FUNCTION pw_glob_regex(p_pattern text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN p_pattern IS NULL THEN NULL ELSE
        '^' || coalesce(string_agg(
            CASE WHEN seg = '**' THEN '(/[^/]+)*'
                 ELSE '/' || replace(regexp_replace(seg, '([.+?^${}()|\[\]\\])', '\\\1', 'g'), '*', '[^/]*')
            END, '' ORDER BY n), '') || '$'
    END
      FROM unnest(string_to_array(trim(both '/' from p_pattern), '/')) WITH ORDINALITY AS s(seg, n)
$function$;

-- pw_push_target names the one push target of an entity's main stream:
-- the oldest matching subscription, else the entity type's webhook target,
-- else none. One target per entity, so one endpoint per wake.
CREATE OR REPLACE FUNCTION pw_push_target(p_tenant text, p_main_stream text)
    RETURNS text
    LANGUAGE sql
    STABLE
AS $function$
    SELECT s.id FROM push_subscriptions s
     WHERE s.tenant_id = p_tenant
       AND (('/' || pw_stream_rel(p_main_stream)) ~ s.path_regex
            OR pw_stream_rel(p_main_stream) = ANY (s.streams))
     ORDER BY s.kind = 'entity_type', s.created_at, s.id
     LIMIT 1
$function$;

-- pw_push_queue_sync keeps push_queue equal to the queued wakes without
-- runner that have a push target (pw_push_target): such a wake enters it
-- when it enters wake_queue and leaves it when it leaves.
CREATE OR REPLACE FUNCTION pw_push_queue_sync()
    RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_target text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        -- Its whole key in both indexes (push_queue_pkey, push_queue_order_idx:
        -- an entry keeps its queue entry's created_at), whichever the plan reads.
        DELETE FROM push_queue p
         WHERE p.tenant_id = OLD.tenant_id AND p.created_at = OLD.created_at AND p.wake_id = OLD.wake_id;
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
$function$;

CREATE OR REPLACE TRIGGER wake_queue_push_insert AFTER INSERT ON wake_queue
    FOR EACH ROW WHEN (NEW.runner_id IS NULL) EXECUTE FUNCTION pw_push_queue_sync();

CREATE OR REPLACE TRIGGER wake_queue_push_delete AFTER DELETE ON wake_queue
    FOR EACH ROW WHEN (OLD.runner_id IS NULL) EXECUTE FUNCTION pw_push_queue_sync();

-- pw_push_queue_rebuild recomputes push_queue from the queued wakes without
-- runner, after a push target was added, removed or re-configured.
CREATE OR REPLACE FUNCTION pw_push_queue_rebuild()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
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
$function$;

CREATE OR REPLACE TRIGGER push_subscriptions_changed
    AFTER INSERT OR DELETE OR UPDATE OF pattern, streams, kind, created_at ON push_subscriptions
    FOR EACH STATEMENT EXECUTE FUNCTION pw_push_queue_rebuild();

-- pw_entity_type_push_sync: entity types whose default dispatch policy has
-- a webhook target push. The first such target becomes push target
-- 'entity-type:<name>' over the type's entities' main streams. Only
-- http(s) URLs are taken. Entity-type registration is an admin route, so
-- these URLs are admin-registered too.
CREATE OR REPLACE FUNCTION pw_entity_type_push_sync()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
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
$function$;

CREATE OR REPLACE TRIGGER entity_types_push_sync
    AFTER INSERT OR UPDATE OR DELETE ON entity_types
    FOR EACH ROW EXECUTE FUNCTION pw_entity_type_push_sync();

-- upsert_push_subscription creates subscription p_id or re-confirms it:
-- 'created' (new), 'unchanged' (same configuration), 'conflict' (the id
-- exists with another configuration; nothing changes).
CREATE OR REPLACE FUNCTION upsert_push_subscription(
    p_id text,
    p_pattern text,
    p_streams text[],
    p_webhook_url text,
    p_lease_ttl_ms integer,
    p_description text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(outcome text, subscription push_subscriptions)
    LANGUAGE plpgsql
AS $function$
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
$function$;

-- push_pending lists queued wakes a push target may take now (push_queue,
-- whose targets are not backing off after failed deliveries), oldest
-- first, at most p_limit. It locks and changes nothing;
-- claim_wake_for_push decides.
CREATE OR REPLACE FUNCTION push_pending(
    p_limit integer DEFAULT 16,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(target_id text, wake_id text)
    LANGUAGE sql
    STABLE
AS $function$
    SELECT p.target_id, p.wake_id
      FROM push_queue p
      JOIN push_subscriptions s ON s.tenant_id = p.tenant_id AND s.id = p.target_id
     WHERE p.tenant_id = p_tenant
       AND s.next_attempt_at <= coalesce(p_now, now())
     ORDER BY p.created_at, p.wake_id
     LIMIT p_limit
$function$;

-- claim_wake_for_push claims the queued wake p_wake_id on behalf of push
-- target p_target, through the same claim as claim_next_wake
-- (pw_claim_wake; the claim's runner_id is 'push:' || target). It returns
-- no row when the wake is not queued, is locked by another claim (another
-- server is claiming it: the claim is the lock), targets a runner, is not
-- this target's, or its entity cannot be claimed now. The row names the
-- URL to POST to (read here, from the admin-registered target) and the
-- main stream's tail at the claim (what a synchronous {"done": true}
-- acknowledges).
CREATE OR REPLACE FUNCTION claim_wake_for_push(
    p_target text,
    p_wake_id text,
    p_lease_ttl_ms integer DEFAULT NULL::integer,
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
        lease_ttl_ms integer,
        webhook_url text,
        tail_offset text
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
    -- The queue entry by its whole key (a wake for any runner, its
    -- creation time read from the wake, its id).
    SELECT q.entity_url INTO v_url FROM wake_queue q
     WHERE q.tenant_id = p_tenant AND q.runner_key = ''
       AND q.created_at = (SELECT w.created_at FROM wakes w WHERE w.tenant_id = p_tenant AND w.wake_id = p_wake_id)
       AND q.wake_id = p_wake_id
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
$function$;
