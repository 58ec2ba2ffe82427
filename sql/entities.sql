-- Entities: spawn, send, tags, stop. An entity is a URL (/{type}/{id}) with
-- a status (idle, running, stopping, stopped), a dispatch row
-- (entity_dispatch_state, made with it: the database always knows whether a
-- claim is the entity's active one) and a main stream (/v1/stream<url>/main)
-- that holds its inbox and its State Protocol events.
--
-- Electric's dialect adds tags, a parent and the signal of a stop. Tags are
-- a jsonb object of string values on the entity row; each change appends a
-- State Protocol event to the main stream in the same transaction
-- ({"type": "tag", "key", "value", "headers": {"operation": "insert" |
-- "update" | "delete", "timestamp"}}; a delete has no value; setting a tag to
-- the value it has appends nothing). A stop ends the main stream with a
-- signal event, written when the entity becomes stopped, whatever made it
-- stopped (entities_stopped_signal), so it is the last event the stream
-- holds.
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

-- pw_check_entity_url raises INVALID_REQUEST (PW008) unless p_url is
-- /{type}/{id} with type [a-z][a-z0-9_-]{0,63} and id [A-Za-z0-9._~-]{1,128}:
-- the API's rule for entity URLs, checked in SQL too so that psql callers
-- meet it.
CREATE OR REPLACE FUNCTION pw_check_entity_url(p_url text)
    RETURNS void
    LANGUAGE plpgsql
    IMMUTABLE
AS $function$
BEGIN
    IF p_url IS NULL OR p_url !~ '^/[a-z][a-z0-9_-]{0,63}/[A-Za-z0-9._~-]{1,128}$' THEN
        RAISE EXCEPTION 'PW008: entity url % must be /{type}/{id}: type [a-z][a-z0-9_-]{0,63}, id [A-Za-z0-9._~-]{1,128}',
            coalesce(quote_literal(p_url), 'NULL') USING ERRCODE = 'PW008';
    END IF;
END
$function$;

-- pw_ms_key returns '<prefix>-<unix ms>-<n hex>': event keys that sort by
-- time (inbox messages msg-in-..., signals sig-...).
CREATE OR REPLACE FUNCTION pw_ms_key(p_prefix text, p_now timestamp with time zone, p_hex integer)
    RETURNS text
    LANGUAGE sql
AS $function$
    SELECT p_prefix || '-' || (extract(epoch FROM p_now) * 1000)::bigint || '-'
           || substr(replace(gen_random_uuid()::text, '-', ''), 1, p_hex)
$function$;

-- pw_iso_ms is a time as the State Protocol writes it: ISO 8601 in UTC with
-- milliseconds (2024-01-02T03:04:05.678Z).
CREATE OR REPLACE FUNCTION pw_iso_ms(p_ts timestamp with time zone)
    RETURNS text
    LANGUAGE sql
AS $function$
    SELECT to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$function$;

-- pw_tag_event is the State Protocol event of one tag change: operation
-- insert, update or delete (a delete carries no value).
CREATE OR REPLACE FUNCTION pw_tag_event(
    p_key text,
    p_value text,
    p_operation text,
    p_now timestamp with time zone
)
    RETURNS bytea
    LANGUAGE sql
AS $function$
    SELECT convert_to(jsonb_strip_nulls(jsonb_build_object(
               'type', 'tag', 'key', p_key, 'value', p_value,
               'headers', jsonb_build_object('operation', p_operation, 'timestamp', pw_iso_ms(p_now))))::text, 'UTF8')
$function$;

-- spawn_entity creates an entity, its dispatch row and its main stream, in
-- one transaction. The URL is checked here too (psql callers). With no
-- runner named, the entity type's default dispatch policy decides: its
-- first target of type runner (runnerId or runner_id); none = any enabled
-- runner. An existing URL is ENTITY_EXISTS (PW002).
CREATE OR REPLACE FUNCTION spawn_entity(
    p_url text,
    p_runner_id text DEFAULT NULL::text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS SETOF entities
    LANGUAGE plpgsql
AS $function$
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
$function$;

-- spawn_entity_as spawns (spawn_entity) with tags and a parent, and sends
-- the initial message when one is given (send_to_entity), all in one
-- transaction. The parent must exist (PW001); tags must be an object of
-- non-empty keys and string values (PW008). Each tag appends its 'insert'
-- event.
CREATE OR REPLACE FUNCTION spawn_entity_as(
    p_url text,
    p_runner_id text,
    p_tags jsonb,
    p_parent text,
    p_initial_message jsonb,
    p_from text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS SETOF entities
    LANGUAGE plpgsql
AS $function$
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_tags   jsonb := coalesce(p_tags, '{}'::jsonb);
    v_stream text;
    v_events bytea[];
BEGIN
    IF jsonb_typeof(v_tags) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(v_tags) t WHERE jsonb_typeof(t.value) <> 'string' OR t.key = '') THEN
        RAISE EXCEPTION 'PW008: tags must be an object of non-empty keys and string values' USING ERRCODE = 'PW008';
    END IF;
    IF p_parent IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_parent) THEN
        RAISE EXCEPTION 'PW001: parent entity % not found', p_parent USING ERRCODE = 'PW001';
    END IF;
    SELECT s.main_stream INTO v_stream FROM spawn_entity(p_url, p_runner_id, v_now, p_tenant) s;
    UPDATE entities e SET tags = v_tags, parent = p_parent
     WHERE e.tenant_id = p_tenant AND e.url = p_url;
    SELECT array_agg(pw_tag_event(t.key, t.value #>> '{}', 'insert', v_now) ORDER BY t.key)
      INTO v_events FROM jsonb_each(v_tags) t;
    IF v_events IS NOT NULL THEN
        PERFORM pw_stream_append(p_tenant, v_stream, v_events, v_now);
    END IF;
    IF p_initial_message IS NOT NULL THEN
        PERFORM send_to_entity(p_url, p_initial_message, p_from, v_now, p_tenant);
    END IF;
    RETURN QUERY SELECT * FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_url;
END
$function$;

-- send_to_entity appends an inbox event to the entity's main stream and, in
-- the same transaction, queues a wake unless one is queued already or a
-- claim with a live lease holds the entity (its end re-queues): no sent
-- message is ever left without a wake. A stopping or stopped entity takes
-- no sends (PW003). Inbox keys sort by time: msg-in-<unix ms>-<random>.
-- p_message_type, when given, is the event's value.message_type (what
-- Electric's runtime reads; the server checked the payload against the
-- type's inbox schema of that name). The event's headers.txid is the
-- sending transaction's 32-bit id (pg_current_xact_id()::xid), the txid
-- the send's answer carries: Electric's UI waits for an inbox event with
-- that txid before it reports the send done.
CREATE OR REPLACE FUNCTION send_to_entity(
    p_url text,
    p_payload jsonb,
    p_from text DEFAULT NULL::text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text,
    p_message_type text DEFAULT NULL::text
)
    RETURNS TABLE(msg_offset text, wake_id text)
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
            'status', 'processed')
            || CASE WHEN p_message_type IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('message_type', p_message_type) END,
        'headers', jsonb_build_object('operation', 'insert', 'txid', pg_current_xact_id()::xid::text));
    v_seq := pw_stream_append(p_tenant, v_stream, ARRAY[convert_to(v_event::text, 'UTF8')], v_now);
    UPDATE entity_dispatch_state d SET last_sent_offset = v_seq, updated_at = v_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_url;
    IF NOT (v_d.active_consumer_id IS NOT NULL AND v_d.active_lease_expires_at > v_now) THEN
        v_wake := pw_queue_wake(p_tenant, p_url, v_now);
    END IF;
    RETURN QUERY SELECT pw_offset(v_seq), v_wake;
END
$function$;

-- set_entity_tag sets (p_value not NULL) or removes (p_value NULL) one tag
-- and appends its event to the main stream, in one transaction; a value
-- equal to the current one changes nothing. Tags are capped on every path,
-- as at spawn: at most 64 on an entity, keys of 1 to 256 bytes, values of
-- at most 4096 bytes (PW008, nothing written). PW003 when the entity is
-- stopping or stopped (its tags are final); PW001 when there is no such
-- entity.
CREATE OR REPLACE FUNCTION set_entity_tag(
    p_url text,
    p_key text,
    p_value text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS SETOF entities
    LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_e   entities%ROWTYPE;
    v_op  text;
BEGIN
    IF p_key IS NULL OR p_key = '' OR octet_length(p_key) > 256 THEN
        RAISE EXCEPTION 'PW008: a tag key must be 1 to 256 bytes' USING ERRCODE = 'PW008';
    END IF;
    IF octet_length(p_value) > 4096 THEN
        RAISE EXCEPTION 'PW008: tag %: the value must be at most 4096 bytes', p_key USING ERRCODE = 'PW008';
    END IF;
    -- The dispatch row first, as every lifecycle function locks it.
    PERFORM 1 FROM entity_dispatch_state d
      WHERE d.tenant_id = p_tenant AND d.entity_url = p_url FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW001: entity % not found', p_url USING ERRCODE = 'PW001';
    END IF;
    SELECT e.* INTO v_e FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_url FOR UPDATE;
    IF v_e.status IN ('stopping', 'stopped') THEN
        RAISE EXCEPTION 'PW003: entity % is %: its tags are final', p_url, v_e.status USING ERRCODE = 'PW003';
    END IF;
    IF p_value IS NULL THEN
        IF v_e.tags ? p_key THEN
            v_op := 'delete';
        END IF;
    ELSIF NOT v_e.tags ? p_key THEN
        -- At most 64 tags on an entity, on every path (spawn checks the
        -- same in its own validation).
        IF (SELECT count(*) FROM jsonb_object_keys(v_e.tags)) >= 64 THEN
            RAISE EXCEPTION 'PW008: entity % has 64 tags, the most it may have: delete one first', p_url
                USING ERRCODE = 'PW008';
        END IF;
        v_op := 'insert';
    ELSIF v_e.tags ->> p_key IS DISTINCT FROM p_value THEN
        v_op := 'update';
    END IF;
    IF v_op IS NOT NULL THEN
        UPDATE entities e
           SET tags = CASE WHEN p_value IS NULL THEN e.tags - p_key
                           ELSE e.tags || jsonb_build_object(p_key, p_value) END,
               updated_at = v_now
         WHERE e.tenant_id = p_tenant AND e.url = p_url;
        PERFORM pw_stream_append(p_tenant, v_e.main_stream, ARRAY[pw_tag_event(p_key, p_value, v_op, v_now)], v_now);
        PERFORM pw_notify_stream(p_tenant, v_e.main_stream);
    END IF;
    RETURN QUERY SELECT * FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_url;
END
$function$;

-- stop_entity (lifecycle rule 7) stops an idle entity at once and marks a
-- running one stopping: its claim's end (release or expiry, pw_end_claim)
-- stops it. A queued wake is superseded. A stopping or stopped entity keeps
-- its status.
CREATE OR REPLACE FUNCTION stop_entity(
    p_url text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS SETOF entities
    LANGUAGE plpgsql
AS $function$
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
$function$;

-- kill_entity records the signal (SIGTERM or SIGKILL) and reason of a stop,
-- then stops the entity (stop_entity): an idle entity becomes stopped now,
-- a running one stopping until its claim ends. The signal event is written
-- when the entity becomes stopped (entities_stopped_signal). A stopped
-- entity keeps the signal it stopped with. Returns the status before and
-- after.
CREATE OR REPLACE FUNCTION kill_entity(
    p_url text,
    p_signal text,
    p_reason text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(previous_status text, status text)
    LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    v_now  timestamptz := coalesce(p_now, now());
    v_prev text;
BEGIN
    IF p_signal IS NULL OR p_signal NOT IN ('SIGKILL', 'SIGTERM') THEN
        RAISE EXCEPTION 'PW008: signal % is not SIGKILL or SIGTERM', p_signal USING ERRCODE = 'PW008';
    END IF;
    PERFORM 1 FROM entity_dispatch_state d
      WHERE d.tenant_id = p_tenant AND d.entity_url = p_url FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW001: entity % not found', p_url USING ERRCODE = 'PW001';
    END IF;
    SELECT e.status INTO v_prev FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_url FOR UPDATE;
    IF v_prev <> 'stopped' THEN
        UPDATE entities e SET stop_signal = p_signal, stop_reason = p_reason
         WHERE e.tenant_id = p_tenant AND e.url = p_url;
    END IF;
    RETURN QUERY SELECT v_prev, s.status FROM stop_entity(p_url, v_now, p_tenant) s;
END
$function$;

-- pw_entity_stopped_signal appends the signal event of a stop to the main
-- stream when the entity becomes stopped, in that transaction:
-- {"type": "signal", "key": "sig-<unix ms>-<8 hex>", "value": {"signal",
-- "status": "handled", "sender": "/_electric/server", "timestamp",
-- "reason"?, "previous_state", "new_state": "stopped"}, "headers":
-- {"operation": "insert", "timestamp", "txid"}}. The signal is the one
-- kill_entity recorded (stop_signal), SIGTERM for a plain stop_entity.
CREATE OR REPLACE FUNCTION pw_entity_stopped_signal()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := now();
    v_ev  jsonb;
BEGIN
    v_ev := jsonb_build_object(
        'type', 'signal',
        'key', pw_ms_key('sig', v_now, 8),
        'value', jsonb_strip_nulls(jsonb_build_object(
            'signal', coalesce(NEW.stop_signal, 'SIGTERM'),
            'status', 'handled',
            'sender', '/_electric/server',
            'timestamp', pw_iso_ms(v_now),
            'reason', NEW.stop_reason,
            'previous_state', OLD.status,
            'new_state', 'stopped')),
        'headers', jsonb_build_object('operation', 'insert', 'timestamp', pw_iso_ms(v_now),
                                      'txid', txid_current()::text));
    PERFORM pw_stream_append(NEW.tenant_id, NEW.main_stream, ARRAY[convert_to(v_ev::text, 'UTF8')], v_now);
    PERFORM pw_notify_stream(NEW.tenant_id, NEW.main_stream);
    RETURN NULL;
END
$function$;

-- Whatever makes an entity stopped (stop_entity of an idle entity, the end
-- of a stopping entity's claim, a hand edit) writes the signal event.
CREATE OR REPLACE TRIGGER entities_stopped_signal
    AFTER UPDATE OF status ON entities
    FOR EACH ROW WHEN (NEW.status = 'stopped' AND OLD.status IS DISTINCT FROM 'stopped')
    EXECUTE FUNCTION pw_entity_stopped_signal();
