-- +goose Up
-- What Electric's runner runtime needs to drive pullwake unchanged:
--   * a wake stream per runner (a JSON-mode Durable Stream at
--     /v1/stream/runners/{id}/wake) holding one event per queued wake and
--     target runner, appended by a trigger on wakes in the transaction that
--     queues the wake, whichever function (or psql statement) queued it;
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

-- +goose StatementBegin
-- pw_append_wake_event appends the event of one queued wake to one runner's
-- wake stream, once (the caller holds pw_lock_wake_events): nothing when the runner has no wake stream or already
-- has the event of this wake and generation. The event:
--   {"type": "wake", "subscription_id": "runner:{id}", "stream": <main
--    stream>, "generation": <epoch its claim will get>, "ts": <unix ms>}
-- Live readers on every server wake at commit (pw_notify_stream).
CREATE FUNCTION pw_append_wake_event(p_tenant text, p_wake_id text, p_runner_id text,
                                     p_main_stream text, p_generation bigint, p_now timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_path text := pw_wake_stream(p_runner_id);
    v_seq  bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_path) THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM wake_events v
                WHERE v.tenant_id = p_tenant AND v.wake_id = p_wake_id
                  AND v.runner_id = p_runner_id AND v.generation = p_generation) THEN
        RETURN;
    END IF;
    v_seq := pw_stream_append(p_tenant, v_path, ARRAY[convert_to(jsonb_build_object(
                 'type', 'wake',
                 'subscription_id', 'runner:' || p_runner_id,
                 'stream', p_main_stream,
                 'generation', p_generation,
                 'ts', (extract(epoch FROM p_now) * 1000)::bigint)::text, 'UTF8')], p_now);
    INSERT INTO wake_events (tenant_id, wake_id, runner_id, generation, seq, created_at)
    VALUES (p_tenant, p_wake_id, p_runner_id, p_generation, v_seq, p_now);
    PERFORM pw_notify_stream(p_tenant, v_path);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_lock_wake_events serializes the writers of wake streams of a tenant
-- (a transaction-level advisory lock). Wake streams are written only under
-- it, so a holder never waits for a wake stream's row; it is taken after
-- every other lock of the transaction (at commit, by the deferred trigger
-- below), so it cannot close a cycle with the lifecycle's row locks, as
-- appending to several runners' streams in the middle of a sweep could.
CREATE FUNCTION pw_lock_wake_events(p_tenant text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended('pullwake.wake_events.' || p_tenant, 0))
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_wake_event_trigger runs at commit for every wake that became queued
-- in the transaction (inserted queued, or set back to queued) and is still
-- queued then: its event goes to the wake's runner, or, when the wake names
-- none, to every enabled runner. generation is the epoch the wake's claim
-- will get. A wake queued and claimed in the same transaction was never
-- claimable by anyone else and gets no event.
CREATE FUNCTION pw_wake_event_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_runner_id text;
    v_stream    text;
    v_gen       bigint;
    v_now       timestamptz;
    v_runner    text;
BEGIN
    PERFORM pw_lock_wake_events(NEW.tenant_id);
    SELECT w.runner_id, e.main_stream, d.epoch + 1, w.updated_at
      INTO v_runner_id, v_stream, v_gen, v_now
      FROM wakes w
      JOIN entities e ON e.tenant_id = w.tenant_id AND e.url = w.entity_url
      JOIN entity_dispatch_state d ON d.tenant_id = w.tenant_id AND d.entity_url = w.entity_url
     WHERE w.tenant_id = NEW.tenant_id AND w.wake_id = NEW.wake_id AND w.status = 'queued';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF v_runner_id IS NOT NULL THEN
        PERFORM pw_append_wake_event(NEW.tenant_id, NEW.wake_id, v_runner_id, v_stream, v_gen, v_now);
    ELSE
        FOR v_runner IN
            SELECT r.id FROM runners r
             WHERE r.tenant_id = NEW.tenant_id AND r.admin_status = 'enabled'
             ORDER BY r.id
        LOOP
            PERFORM pw_append_wake_event(NEW.tenant_id, NEW.wake_id, v_runner, v_stream, v_gen, v_now);
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- Deferred to the commit: the events are appended after every other write
-- of the transaction, in the same transaction.
CREATE CONSTRAINT TRIGGER wakes_event_insert AFTER INSERT ON wakes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION pw_wake_event_trigger();
CREATE CONSTRAINT TRIGGER wakes_event_requeue AFTER UPDATE ON wakes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM 'queued' AND NEW.status = 'queued')
    EXECUTE FUNCTION pw_wake_event_trigger();

-- +goose StatementBegin
-- pw_backfill_wake_events gives a runner the events of the queued wakes it
-- may claim that its stream lacks (a runner registered, or enabled, after
-- they were queued). Returns how many it appended.
CREATE FUNCTION pw_backfill_wake_events(p_tenant text, p_runner_id text, p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_r record;
    v_n integer := 0;
BEGIN
    PERFORM pw_lock_wake_events(p_tenant);
    FOR v_r IN
        SELECT w.wake_id, e.main_stream, d.epoch + 1 AS generation
          FROM wakes w
          JOIN entities e ON e.tenant_id = w.tenant_id AND e.url = w.entity_url
          JOIN entity_dispatch_state d ON d.tenant_id = w.tenant_id AND d.entity_url = w.entity_url
         WHERE w.tenant_id = p_tenant AND w.status = 'queued'
           AND (w.runner_id = p_runner_id
                OR w.runner_id IS NULL AND EXISTS (SELECT 1 FROM runners r
                                                    WHERE r.tenant_id = p_tenant AND r.id = p_runner_id
                                                      AND r.admin_status = 'enabled'))
           AND NOT EXISTS (SELECT 1 FROM wake_events v
                            WHERE v.tenant_id = p_tenant AND v.wake_id = w.wake_id
                              AND v.runner_id = p_runner_id AND v.generation = d.epoch + 1)
         ORDER BY w.created_at, w.wake_id
    LOOP
        PERFORM pw_append_wake_event(p_tenant, v_r.wake_id, p_runner_id, v_r.main_stream, v_r.generation, p_now);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
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
DROP FUNCTION purge_wake_events(interval, integer, timestamptz, text);
DROP FUNCTION set_runner_admin_status(text, text, timestamptz, text);
DROP FUNCTION register_runner(text, text, text, bytea, timestamptz, text);
DROP FUNCTION pw_wake_stream_offset(text, text);
DROP FUNCTION pw_backfill_wake_events(text, text, timestamptz);
DROP TRIGGER wakes_event_requeue ON wakes;
DROP TRIGGER wakes_event_insert ON wakes;
DROP FUNCTION pw_wake_event_trigger();
DROP FUNCTION pw_lock_wake_events(text);
DROP FUNCTION pw_append_wake_event(text, text, text, text, bigint, timestamptz);
DELETE FROM streams s WHERE s.path LIKE '/v1/stream/runners/%/wake' AND s.entity_url IS NULL
   AND EXISTS (SELECT 1 FROM runners r WHERE r.tenant_id = s.tenant_id AND s.path = pw_wake_stream(r.id));
DROP FUNCTION pw_wake_stream(text);
DROP TABLE entity_types;
DROP TABLE wake_events;
