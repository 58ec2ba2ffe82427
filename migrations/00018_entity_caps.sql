-- +goose Up
-- Tags are capped on every path, not only at spawn: at most 64 tags on an
-- entity, keys of 1 to 256 bytes, values of at most 4096 bytes
-- (set_entity_tag; a refused change is PW008, nothing written).

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION set_entity_tag(p_url text, p_key text, p_value text, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone, p_tenant text DEFAULT 'default'::text) RETURNS SETOF public.entities
    LANGUAGE plpgsql
    AS $$
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
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION set_entity_tag(p_url text, p_key text, p_value text, p_now timestamp with time zone DEFAULT NULL::timestamp with time zone, p_tenant text DEFAULT 'default'::text) RETURNS SETOF public.entities
    LANGUAGE plpgsql
    AS $$
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
