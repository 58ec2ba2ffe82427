-- Electric's dialect: entity tags, a parent, and the signal a stop writes.
--
-- Tags are a jsonb object of string values on the entity row. Each change
-- appends a State Protocol event to the entity's main stream in the same
-- transaction (set_entity_tag): {"type": "tag", "key": <tag key>, "value":
-- <tag value>, "headers": {"operation": "insert"|"update"|"delete",
-- "timestamp"}}; a delete has no value. Setting a tag to the value it has
-- changes nothing and appends nothing.
--
-- A stop ends the main stream with a State Protocol signal event, written
-- when the entity becomes stopped, in that transaction, whatever made it
-- stopped: stop_entity of an idle entity, or the end of the claim of a
-- stopping one (release, expiry, force release). The trigger
-- entities_stopped_signal writes it, so the event is the last the stream
-- holds: a stopped entity takes no sends and its write token is gone.
-- {"type": "signal", "key": "sig-<unix ms>-<8 hex>", "value": {"signal",
-- "status": "handled", "sender": "/_electric/server", "timestamp",
-- "reason"?, "previous_state", "new_state": "stopped"}, "headers":
-- {"operation": "insert", "timestamp", "txid"}}. The signal is the one
-- kill_entity recorded (stop_signal), SIGTERM for a plain stop_entity.

-- +goose Up
ALTER TABLE entities
    ADD COLUMN tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN parent      text,
    ADD COLUMN stop_signal text,
    ADD COLUMN stop_reason text;

-- +goose StatementBegin
-- pw_ms_key returns '<prefix>-<unix ms>-<n hex>': keys that sort by time.
CREATE FUNCTION pw_ms_key(p_prefix text, p_now timestamptz, p_hex integer) RETURNS text
LANGUAGE sql AS $$
    SELECT p_prefix || '-' || (extract(epoch FROM p_now) * 1000)::bigint || '-'
           || substr(replace(gen_random_uuid()::text, '-', ''), 1, p_hex)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION pw_iso_ms(p_ts timestamptz) RETURNS text
LANGUAGE sql AS $$
    SELECT to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_tag_event is the State Protocol event of one tag change.
CREATE FUNCTION pw_tag_event(p_key text, p_value text, p_operation text, p_now timestamptz) RETURNS bytea
LANGUAGE sql AS $$
    SELECT convert_to(jsonb_strip_nulls(jsonb_build_object(
               'type', 'tag', 'key', p_key, 'value', p_value,
               'headers', jsonb_build_object('operation', p_operation, 'timestamp', pw_iso_ms(p_now))))::text, 'UTF8')
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- set_entity_tag sets (p_value not NULL) or removes (p_value NULL) one tag
-- and appends its event to the main stream, in one transaction. Refused
-- (PW003) when the entity is stopping or stopped; PW001 when there is no
-- such entity; PW008 for an empty key.
CREATE FUNCTION set_entity_tag(p_url text, p_key text, p_value text,
                               p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_e   entities%ROWTYPE;
    v_op  text;
BEGIN
    IF p_key IS NULL OR p_key = '' THEN
        RAISE EXCEPTION 'PW008: a tag key must not be empty' USING ERRCODE = 'PW008';
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
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- spawn_entity_as spawns (spawn_entity, unchanged) with tags and a parent,
-- and sends the initial message when one is given (send_to_entity), all in
-- one transaction. The parent must exist (PW001); tags must be an object
-- of strings (PW008). Each tag appends its 'insert' event.
CREATE FUNCTION spawn_entity_as(p_url text, p_runner_id text, p_tags jsonb, p_parent text,
                                p_initial_message jsonb, p_from text,
                                p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- kill_entity records the signal and reason of a stop, then stops the
-- entity (stop_entity, unchanged): an idle entity becomes stopped now, a
-- running one stopping until its claim ends. The signal event is written
-- when the entity becomes stopped (entities_stopped_signal). A stopped
-- entity keeps the signal it stopped with. Returns the status before and
-- after.
CREATE FUNCTION kill_entity(p_url text, p_signal text, p_reason text,
                            p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (previous_status text, status text)
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_entity_stopped_signal appends the signal event of a stop when the
-- entity becomes stopped (see the header).
CREATE FUNCTION pw_entity_stopped_signal() RETURNS trigger
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

CREATE TRIGGER entities_stopped_signal
    AFTER UPDATE OF status ON entities
    FOR EACH ROW WHEN (NEW.status = 'stopped' AND OLD.status IS DISTINCT FROM 'stopped')
    EXECUTE FUNCTION pw_entity_stopped_signal();

-- +goose Down
DROP TRIGGER entities_stopped_signal ON entities;
DROP FUNCTION pw_entity_stopped_signal();
DROP FUNCTION kill_entity(text, text, text, timestamptz, text);
DROP FUNCTION spawn_entity_as(text, text, jsonb, text, jsonb, text, timestamptz, text);
DROP FUNCTION set_entity_tag(text, text, text, timestamptz, text);
DROP FUNCTION pw_tag_event(text, text, text, timestamptz);
DROP FUNCTION pw_iso_ms(timestamptz);
DROP FUNCTION pw_ms_key(text, timestamptz, integer);
ALTER TABLE entities DROP COLUMN tags, DROP COLUMN parent, DROP COLUMN stop_signal, DROP COLUMN stop_reason;
