-- Entity types (00008_electric_runtime): Electric's registry of entity
-- kinds. The schemas are stored and returned as given (checked by the
-- server, internal/schemas); revision counts the changes of a row; a type's
-- default_dispatch_policy names the runner a spawn without runner_id targets.

-- name: UpsertEntityType :one
-- Creates the type (revision 1) or replaces it (revision + 1) when its
-- revision is still expected_revision (NULL: the type must not exist):
-- the server checked the amend rule against that revision, so a change
-- in between returns no row and the server checks again.
INSERT INTO entity_types AS t (tenant_id, name, description, creation_schema, inbox_schemas,
                               state_schemas, default_dispatch_policy)
VALUES (@tenant_id, @name, @description, sqlc.narg('creation_schema'), sqlc.narg('inbox_schemas'),
        sqlc.narg('state_schemas'), sqlc.narg('default_dispatch_policy'))
ON CONFLICT (tenant_id, name) DO UPDATE
   SET description = EXCLUDED.description, creation_schema = EXCLUDED.creation_schema,
       inbox_schemas = EXCLUDED.inbox_schemas, state_schemas = EXCLUDED.state_schemas,
       default_dispatch_policy = EXCLUDED.default_dispatch_policy, updated_at = now(),
       revision = t.revision + 1
 WHERE t.revision = sqlc.narg('expected_revision')::bigint
RETURNING t.*, (xmax = 0)::boolean AS created;

-- name: AmendEntityTypeSchemas :one
-- Stores merged schema maps when the type is still at expected_revision;
-- no row when it changed or is gone (the server reads it again).
UPDATE entity_types AS t
   SET inbox_schemas = sqlc.narg('inbox_schemas'), state_schemas = sqlc.narg('state_schemas'),
       revision = t.revision + 1, updated_at = now()
 WHERE t.tenant_id = @tenant_id AND t.name = @name AND t.revision = @expected_revision
RETURNING t.*;

-- name: GetEntityType :one
SELECT * FROM entity_types WHERE tenant_id = @tenant_id AND name = @name;

-- name: ListEntityTypes :many
SELECT * FROM entity_types WHERE tenant_id = @tenant_id ORDER BY name LIMIT @max_rows;

-- name: DeleteEntityType :execrows
DELETE FROM entity_types WHERE tenant_id = @tenant_id AND name = @name;
