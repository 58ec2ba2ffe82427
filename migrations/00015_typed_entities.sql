-- +goose Up
-- Typed entities:
--   * entity_types.revision, bumped by every change of the row: the
--     server compiles a type's JSON Schemas once per revision (and tells a
--     type deleted and registered again by its created_at);
--   * entities.parent (00014) must name an entity of the tenant for any
--     writer, not only spawn_entity_as: a foreign key;
--   * send_to_entity records a typed send's message type in its inbox
--     event (value.message_type).

ALTER TABLE entity_types ADD COLUMN revision bigint NOT NULL DEFAULT 1;

ALTER TABLE entities ADD CONSTRAINT entities_parent_fk
    FOREIGN KEY (tenant_id, parent) REFERENCES entities (tenant_id, url);
-- Children of an entity; also what the foreign key's check uses when a
-- parent row's key is touched.
CREATE INDEX entities_parent_idx ON entities (tenant_id, parent) WHERE parent IS NOT NULL;

DROP FUNCTION send_to_entity(text, jsonb, text, timestamptz, text);

-- +goose StatementBegin
-- send_to_entity appends an inbox event to the entity's main stream and, in
-- the same transaction, queues a wake unless one is queued already or a
-- claim with a live lease holds the entity (its release re-queues). Inbox
-- keys sort by time: msg-in-<unix ms>-<random>. p_message_type, when
-- given, is the event's value.message_type (what Electric's runtime reads;
-- the server checked the payload against the type's inbox schema of that
-- name).
CREATE FUNCTION send_to_entity(p_url text, p_payload jsonb, p_from text DEFAULT NULL,
                               p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                               p_message_type text DEFAULT NULL)
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

-- +goose Down
DROP FUNCTION send_to_entity(text, jsonb, text, timestamptz, text, text);

-- +goose StatementBegin
CREATE FUNCTION send_to_entity(p_url text, p_payload jsonb, p_from text DEFAULT NULL,
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

DROP INDEX entities_parent_idx;
ALTER TABLE entities DROP CONSTRAINT entities_parent_fk;
ALTER TABLE entity_types DROP COLUMN revision;
