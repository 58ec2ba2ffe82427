-- +goose Up
-- What Electric's runner runtime needs to drive pullwake unchanged:
--   * a wake stream per runner (a JSON-mode Durable Stream at
--     /v1/stream/runners/{id}/wake) holding one event per queued wake and
--     target runner, written at the commit of the transaction that queued
--     the wake (triggers on wakes, one deferred flush), whichever function
--     or psql statement queued it;
--   * registration that creates that stream and, for an existing runner
--     id, rotates its token (a restart of the same runner);
--   * an entity-type registry whose default dispatch policy names the runner
--     a spawn without runner_id targets;
--   * entity URLs validated in SQL, inbox keys that sort by time.

-- One row per wake event: which wake, for which runner, at which seq of the
-- runner's wake stream. The key makes a second event for the same wake,
-- runner and generation impossible; retention (purge_wake_events) deletes
-- the row with its stream message.
CREATE TABLE wake_events (
    tenant_id  text        NOT NULL DEFAULT 'default',
    wake_id    text        NOT NULL,
    runner_id  text        NOT NULL,
    generation bigint      NOT NULL,
    seq        bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, wake_id, runner_id, generation)
);
-- The resume offset of a runner (oldest event of a still-queued wake) and
-- retention walk events per runner in stream order.
CREATE INDEX wake_events_runner_idx ON wake_events (tenant_id, runner_id, seq);
-- Retention walks events oldest first.
CREATE INDEX wake_events_created_idx ON wake_events (tenant_id, created_at);

CREATE TABLE entity_types (
    tenant_id               text        NOT NULL DEFAULT 'default',
    name                    text        NOT NULL,
    description             text        NOT NULL DEFAULT '',
    creation_schema         jsonb,
    inbox_schemas           jsonb,
    state_schemas           jsonb,
    default_dispatch_policy jsonb,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name),
    CHECK (name ~ '^[a-z][a-z0-9_-]{0,63}$')
);

-- +goose StatementBegin
-- pw_wake_stream is the path of a runner's wake stream.
CREATE FUNCTION pw_wake_stream(p_runner_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT '/v1/stream/runners/' || p_runner_id || '/wake'
$$;
-- +goose StatementEnd

-- Wakes that became queued in the running transaction and whose events
-- are not written yet. A row lives from the queuing statement to the
-- commit of the same transaction (pw_flush_wake_events deletes it), so the
-- table is empty between transactions and need not survive a crash.
CREATE UNLOGGED TABLE wake_event_pending (
    xid       xid8 NOT NULL,
    tenant_id text NOT NULL,
    wake_id   text NOT NULL
);
CREATE INDEX wake_event_pending_xid_idx ON wake_event_pending (xid);

-- +goose StatementBegin
-- pw_lock_wake_targets takes the tenant's wake-target lock (a transaction
-- advisory lock): shared by every flush of wake events, exclusive while a
-- runner is registered or enabled and back-filled. Flushes do not wait on
-- each other; a registration waits for the flushes in progress and they
-- for it.
CREATE FUNCTION pw_lock_wake_targets(p_tenant text, p_exclusive boolean) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_exclusive THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('pullwake.wake_targets.' || p_tenant, 0));
    ELSE
        PERFORM pg_advisory_xact_lock_shared(hashtextextended('pullwake.wake_targets.' || p_tenant, 0));
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_flush_wake_events writes the events of the wakes queued so far in the
-- running transaction: for each wake still queued, one event in the wake
-- stream of each runner it targets (its runner, or every enabled runner
-- when it names none) that lacks it. Event:
--   {"type": "wake", "subscription_id": "runner:{id}", "stream": <main
--    stream>, "generation": <epoch its claim will get>, "ts": <unix ms>}
-- A wake queued and claimed in the same transaction (never claimable by
-- anyone else) gets none. All events of one runner go in one append, and
-- the runners' streams are locked in one order (tenant, runner id), so two
-- flushing transactions never wait on each other crosswise. No NOTIFY: it
-- would hold the cluster-wide notification lock through the commit,
-- serializing every notifying commit; each server watches the tails of the
-- wake streams its live readers wait on instead (server/wakestream.go).
CREATE FUNCTION pw_flush_wake_events() RETURNS integer
LANGUAGE plpgsql AS $$
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
-- pw_wake_pending_trigger records a wake that became queued (inserted
-- queued, or set back to queued) for the flush at commit.
CREATE FUNCTION pw_wake_pending_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO wake_event_pending (xid, tenant_id, wake_id)
    VALUES (pg_current_xact_id(), NEW.tenant_id, NEW.wake_id);
    PERFORM set_config('pullwake.wake_events_pending', 'yes', true);
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_wake_flush_trigger runs at commit, once per recorded wake; the first
-- run flushes them all, the others find nothing pending and return.
CREATE FUNCTION pw_wake_flush_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('pullwake.wake_events_pending', true) = 'yes' THEN
        PERFORM pw_flush_wake_events();
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER wakes_event_insert AFTER INSERT ON wakes
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION pw_wake_pending_trigger();
CREATE TRIGGER wakes_event_requeue AFTER UPDATE ON wakes
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM 'queued' AND NEW.status = 'queued')
    EXECUTE FUNCTION pw_wake_pending_trigger();
-- Deferred to the commit: the events are written after every other write
-- of the transaction, in the same transaction.
CREATE CONSTRAINT TRIGGER wake_event_pending_flush AFTER INSERT ON wake_event_pending
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pw_wake_flush_trigger();

-- +goose StatementBegin
-- pw_backfill_wake_events gives a runner the events of the queued wakes it
-- may claim that its stream lacks (a runner registered, or enabled, after
-- they were queued), now. Returns how many events it wrote (to any runner
-- lacking one).
CREATE FUNCTION pw_backfill_wake_events(p_tenant text, p_runner_id text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
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
-- pw_wake_stream_offset is where a reader of the runner's wake stream
-- starts to see the event of every wake still queued for it: just before
-- the oldest such event, or the tail when there is none.
CREATE FUNCTION pw_wake_stream_offset(p_tenant text, p_runner_id text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT pw_offset(coalesce(
        (SELECT min(v.seq) - 1 FROM wake_events v
           JOIN wakes w ON w.tenant_id = v.tenant_id AND w.wake_id = v.wake_id
          WHERE v.tenant_id = p_tenant AND v.runner_id = p_runner_id AND w.status = 'queued'),
        (SELECT s.tail_seq FROM streams s
          WHERE s.tenant_id = p_tenant AND s.path = pw_wake_stream(p_runner_id)),
        0))
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- register_runner registers a runner, or restarts a registered one: the
-- token hash is replaced (the old token stops working), label and kind are
-- updated, admin status, claims and wake stream are kept. The runner's wake
-- stream is created when missing and given the events of the queued wakes
-- it may claim. created says which of the two happened.
CREATE FUNCTION register_runner(p_id text, p_label text, p_kind text, p_token_hash bytea,
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
CREATE FUNCTION set_runner_admin_status(p_id text, p_admin_status text,
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
-- pw_runner_deleted removes a deleted runner's wake stream (its messages go
-- with it) and its event rows: they belong to the runner.
CREATE FUNCTION pw_runner_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM wake_events v WHERE v.tenant_id = OLD.tenant_id AND v.runner_id = OLD.id;
    DELETE FROM streams s WHERE s.tenant_id = OLD.tenant_id AND s.path = pw_wake_stream(OLD.id)
       AND s.entity_url IS NULL;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

CREATE TRIGGER runners_wake_stream_delete AFTER DELETE ON runners
    FOR EACH ROW EXECUTE FUNCTION pw_runner_deleted();

-- +goose StatementBegin
-- purge_wake_events deletes the events of finished wakes (completed,
-- expired, superseded, or already purged) older than p_older_than, with
-- their wake-stream messages; at most p_batch a call. The newest message of
-- a wake stream is kept, so a reader behind never finds its whole remaining
-- range gone. Offsets are never reused: the stream's tail is untouched.
CREATE FUNCTION purge_wake_events(p_older_than interval, p_batch integer DEFAULT 1000,
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
-- pw_check_entity_url raises INVALID_REQUEST unless p_url is /{type}/{id}
-- with type [a-z][a-z0-9_-]{0,63} and id [A-Za-z0-9._~-]{1,128}.
CREATE FUNCTION pw_check_entity_url(p_url text) RETURNS void
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

-- Runners registered before this migration get their wake stream and the
-- events of the wakes queued now.
INSERT INTO streams (tenant_id, path, content_type, accessed_at, created_at, updated_at)
SELECT r.tenant_id, pw_wake_stream(r.id), 'application/json', now(), now(), now()
  FROM runners r
ON CONFLICT DO NOTHING;
SELECT pw_backfill_wake_events(r.tenant_id, r.id, now()) FROM runners r ORDER BY r.tenant_id, r.id;

-- +goose Down
-- +goose StatementBegin
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
        'key', 'inbox-' || replace(gen_random_uuid()::text, '-', ''),
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
CREATE OR REPLACE FUNCTION spawn_entity(p_url text, p_runner_id text DEFAULT NULL,
                                        p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_stream text := '/v1/stream' || p_url || '/main';
BEGIN
    IF EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_stream) THEN
        RAISE EXCEPTION 'stream % exists already', v_stream USING ERRCODE = 'PW002';
    END IF;
    BEGIN
        INSERT INTO entities (tenant_id, url, status, main_stream, runner_id, created_at, updated_at)
        VALUES (p_tenant, p_url, 'idle', v_stream, p_runner_id, v_now, v_now);
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

DROP FUNCTION pw_check_entity_url(text);
DROP TRIGGER runners_wake_stream_delete ON runners;
DROP FUNCTION pw_runner_deleted();
DROP FUNCTION purge_wake_events(interval, integer, timestamptz, text);
DROP FUNCTION set_runner_admin_status(text, text, timestamptz, text);
DROP FUNCTION register_runner(text, text, text, bytea, timestamptz, text);
DROP FUNCTION pw_wake_stream_offset(text, text);
DROP FUNCTION pw_backfill_wake_events(text, text, timestamptz);
DROP TRIGGER wakes_event_requeue ON wakes;
DROP TRIGGER wakes_event_insert ON wakes;
DROP TRIGGER wake_event_pending_flush ON wake_event_pending;
DROP FUNCTION pw_wake_flush_trigger();
DROP FUNCTION pw_wake_pending_trigger();
DROP FUNCTION pw_flush_wake_events();
DROP FUNCTION pw_lock_wake_targets(text, boolean);
DROP TABLE wake_event_pending;
DELETE FROM streams s WHERE s.path LIKE '/v1/stream/runners/%/wake' AND s.entity_url IS NULL
   AND EXISTS (SELECT 1 FROM runners r WHERE r.tenant_id = s.tenant_id AND s.path = pw_wake_stream(r.id));
DROP FUNCTION pw_wake_stream(text);
DROP TABLE entity_types;
DROP TABLE wake_events;
