-- +goose Up
-- Typed entities:
--   * entity_types.revision, bumped by every change of the row: the
--     server compiles a type's JSON Schemas once per revision;
--   * entities.parent, the entity that spawned this one: it must exist
--     (checked by spawn_entity, and by a foreign key for any other
--     writer).

ALTER TABLE entity_types ADD COLUMN revision bigint NOT NULL DEFAULT 1;

ALTER TABLE entities ADD COLUMN parent text;
ALTER TABLE entities ADD CONSTRAINT entities_parent_fk
    FOREIGN KEY (tenant_id, parent) REFERENCES entities (tenant_id, url);
-- Children of an entity, and the foreign key's check when a parent row is
-- touched.
CREATE INDEX entities_parent_idx ON entities (tenant_id, parent) WHERE parent IS NOT NULL;

DROP FUNCTION spawn_entity(text, text, timestamptz, text);

-- +goose StatementBegin
-- spawn_entity creates an entity, its dispatch row and its main stream.
-- The URL is checked here too (psql callers). With no runner named, the
-- entity type's default dispatch policy decides: its first target of type
-- runner (runnerId or runner_id); none = any enabled runner. p_parent,
-- when given, must be an existing entity of the tenant (PW015); its row is
-- locked (key share) until the commit, so it cannot go away meanwhile.
CREATE FUNCTION spawn_entity(p_url text, p_runner_id text DEFAULT NULL,
                             p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                             p_parent text DEFAULT NULL)
RETURNS SETOF entities
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_stream text := '/v1/stream' || p_url || '/main';
    v_runner text := p_runner_id;
BEGIN
    PERFORM pw_check_entity_url(p_url);
    IF p_parent IS NOT NULL THEN
        PERFORM 1 FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_parent FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'PW015: parent entity % not found', p_parent USING ERRCODE = 'PW015';
        END IF;
    END IF;
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
        INSERT INTO entities (tenant_id, url, status, main_stream, runner_id, parent, created_at, updated_at)
        VALUES (p_tenant, p_url, 'idle', v_stream, v_runner, p_parent, v_now, v_now);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'PW002: entity % exists already', p_url USING ERRCODE = 'PW002';
    END;
    INSERT INTO entity_dispatch_state (tenant_id, entity_url, updated_at)
    VALUES (p_tenant, p_url, v_now);
    INSERT INTO streams (tenant_id, path, content_type, entity_url, created_at, updated_at)
    VALUES (p_tenant, v_stream, 'application/json', p_url, v_now, v_now);
    RETURN QUERY SELECT * FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_url;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION spawn_entity(text, text, timestamptz, text, text);

-- +goose StatementBegin
CREATE FUNCTION spawn_entity(p_url text, p_runner_id text DEFAULT NULL,
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

DROP INDEX entities_parent_idx;
ALTER TABLE entities DROP CONSTRAINT entities_parent_fk;
ALTER TABLE entities DROP COLUMN parent;
ALTER TABLE entity_types DROP COLUMN revision;
