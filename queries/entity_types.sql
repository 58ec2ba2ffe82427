-- Entity types (00008_electric_runtime): Electric's registry of entity
-- kinds. The schemas are stored and returned as given; a type's
-- default_dispatch_policy names the runner a spawn without runner_id targets.

-- name: UpsertEntityType :one
INSERT INTO entity_types AS t (tenant_id, name, description, creation_schema, inbox_schemas,
                               state_schemas, default_dispatch_policy)
VALUES (@tenant_id, @name, @description, sqlc.narg('creation_schema'), sqlc.narg('inbox_schemas'),
        sqlc.narg('state_schemas'), sqlc.narg('default_dispatch_policy'))
ON CONFLICT (tenant_id, name) DO UPDATE
   SET description = EXCLUDED.description, creation_schema = EXCLUDED.creation_schema,
       inbox_schemas = EXCLUDED.inbox_schemas, state_schemas = EXCLUDED.state_schemas,
       default_dispatch_policy = EXCLUDED.default_dispatch_policy, updated_at = now()
RETURNING t.*, (xmax = 0)::boolean AS created;

-- name: GetEntityType :one
SELECT * FROM entity_types WHERE tenant_id = @tenant_id AND name = @name;

-- name: ListEntityTypes :many
SELECT * FROM entity_types WHERE tenant_id = @tenant_id ORDER BY name LIMIT @max_rows;

-- name: DeleteEntityType :execrows
DELETE FROM entity_types WHERE tenant_id = @tenant_id AND name = @name;
